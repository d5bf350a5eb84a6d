"""Sending a message body over SMTP DATA in pieces, with bounded memory.

One job: the DATA command for a body that is either bytes (a message under
core.spill.HEAD_BYTES, read whole) or a body source read in pieces (the
spool's StoredBody: `.size`, `async .chunks()`, `async .is_ascii()`), so a
24 MiB message costs one 1 MiB piece of memory per delivery instead of the
four or five whole copies aiosmtplib's `data()` makes (line-end regex,
dot-stuffing regex, terminator concatenation, transport buffer).

API
    body_size(body) -> int
    await body_is_ascii(body) -> bool
    await send_data(smtp, body, timeout) -> SMTPResponse
        DATA, the dot-stuffed body, the terminator, the final reply (any
        code: the caller judges it). Raises SMTPDataError when DATA is not
        answered 354, SMTPTimeoutError when the peer stops reading for
        `timeout` seconds, aiosmtplib's errors and OSError otherwise; the
        caller must not reuse the connection after an exception (it may be
        mid-body: drop it).
    stuff(previous, piece) -> bytes
        `piece` dot-stuffed (RFC 5321 §4.5.2), given the two bytes the stream
        so far ends with (b"\\r\\n" at the start of the data)

Invariants
  * Bytes on the wire are exactly aiosmtplib's for a CRLF-clean body: every
    "." that starts a line doubled, a final CRLF added when the body lacks
    one, then ".\\r\\n" (tested against a real server, piece boundaries
    anywhere). A bytes body with a bare CR or LF (not from our server, whose
    hygiene refuses them) gets aiosmtplib's line-end normalisation first.
  * Back-pressure: after each piece we wait until the transport's buffer
    drains (aiosmtplib's protocol flow control), bounded by `timeout`.
  * A body source that fails its check (crc) raises before the terminator is
    written, so the peer never accepts a damaged message.
"""

from __future__ import annotations

import asyncio
from typing import cast
from collections.abc import AsyncIterator

from aiosmtplib import SMTP, SMTPDataError, SMTPResponse, SMTPTimeoutError
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings

from mta.delivery.transport import Body

__all__ = ["body_size", "body_is_ascii", "send_data", "stuff"]

PIECE = 1024 * 1024          # a bytes body is written in pieces of this size too
_LOW_WATER = 64 * 1024       # fallback drain: wait until the buffer is below this


def body_size(body: Body) -> int:
    return len(body) if isinstance(body, (bytes, bytearray)) else int(body.size)


async def body_is_ascii(body: Body) -> bool:
    if isinstance(body, (bytes, bytearray)):
        return body.isascii()
    return bool(await body.is_ascii())


def stuff(previous: bytes, piece: bytes) -> bytes:
    out = piece.replace(b"\r\n.", b"\r\n..")
    # a line start that straddles the boundary with the piece before
    if piece.startswith(b".") and previous.endswith(b"\r\n"):
        return b"." + out
    if piece.startswith(b"\n.") and previous.endswith(b"\r"):
        return b"\n." + out[1:]
    return out


async def _pieces(body: Body) -> AsyncIterator[bytes]:
    if isinstance(body, (bytes, bytearray)):
        data = bytes(body)
        if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
            data = normalize_message_line_endings(data)
        for i in range(0, len(data), PIECE):
            yield data[i:i + PIECE]
        return
    gen = body.chunks()
    try:
        async for piece in gen:
            yield piece
    finally:
        aclose = getattr(gen, "aclose", None)   # an async generator: close it now
        if aclose is not None:
            await aclose()


async def _drain(protocol: SMTPProtocol, timeout: float | None) -> None:
    try:
        async with asyncio.timeout(timeout):
            helper = getattr(protocol, "_drain_helper", None)
            if helper is not None:
                await helper()
                return
            # no flow control hook: poll the buffer
            transport = cast(asyncio.WriteTransport | None, protocol.transport)
            while transport is not None and transport.get_write_buffer_size() > _LOW_WATER:
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise SMTPTimeoutError("Timed out writing the message to the server") from None


async def send_data(smtp: SMTP, body: Body, timeout: float | None) -> SMTPResponse:
    start = await smtp.execute_command(b"DATA", timeout=timeout)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPDataError(451, "connection lost before the message was sent")
    previous = b"\r\n"                       # the data starts at a line start
    async for piece in _pieces(body):
        if not piece:
            continue
        protocol.write(stuff(previous, piece))
        previous = piece[-2:] if len(piece) >= 2 else (previous + piece)[-2:]
        await _drain(protocol, timeout)
    protocol.write(b".\r\n" if previous == b"\r\n" else b"\r\n.\r\n")
    # read_response marks a reply as expected before it yields: nothing the
    # peer sends after the terminator can be missed.
    return await protocol.read_response(timeout=timeout)
