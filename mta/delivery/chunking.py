"""CHUNKING (RFC 3030): the body as BDAT chunks, written as it is stored.

One job: send a message body with BDAT instead of DATA when the peer offers
CHUNKING. A chunk's length is on its command line, so there is no
dot-stuffing and no terminator: the stored bytes go to the socket untouched
(no pass over the body at all, where DATA scans it for line-start dots).

Public API:
    await write_chunks(group, body, timeout, *, each, lead=b"") -> (written, refusal)
        BDAT <n> per stored piece, LAST on the final one (an empty body is
        "BDAT 0 LAST"; a body without a final CRLF gets one, as over DATA);
        `lead` (commands pipelined before it) goes in the first BDAT's write.
        each=True (no PIPELINING): each chunk's reply is read before the
        next chunk, and the first that is not 2xx stops the body (RFC 3030
        §2: no further chunk after a failed one); it is returned as
        `refusal`. each=False: every chunk is written; the caller reads
        `written` replies (`verdict`).
    await verdict(group, count, timeout) -> SMTPResponse
        reads `count` BDAT replies: the first that is not 2xx, else the last
        (a 421 is returned at once: the peer is closing)

Invariants:
  - LAST goes only on a chunk written after the whole body was read: a body
    source that fails its check raises before it, and the peer, which never
    saw LAST, keeps nothing (the caller drops the connection).
  - Memory: at most two stored pieces (the one held back to learn which is
    last, and the one being read).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiosmtplib import SMTPResponse

from mta.delivery.data import pieces
from mta.delivery.pipeline import Pipeline
from mta.delivery.transport import Body

__all__ = ["write_chunks", "verdict"]


async def _chunks(body: Body) -> AsyncIterator[tuple[bytes, bool]]:
    """(chunk, last): the stored pieces, one held back to know the last."""
    held = b""
    started = False
    async for piece in pieces(body):
        if not piece:
            continue
        if started:
            yield held, False
        held, started = piece, True
    if started and not held.endswith(b"\r\n"):
        # the one copy CHUNKING makes, only for a body without a final CRLF
        held = held + b"\r\n"
    yield held, True


async def write_chunks(group: Pipeline, body: Body, timeout: float | None, *,
                       each: bool, lead: bytes = b"") -> tuple[int, SMTPResponse | None]:
    written = 0
    async for chunk, last in _chunks(body):
        group.write(lead + b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b""))
        lead = b""
        if chunk:
            group.write(chunk)
        written += 1
        await group.drain(timeout)
        if each:
            reply = await group.reply(timeout)
            if not 200 <= reply.code < 300 or last:
                return 0, reply
    return written, None


async def verdict(group: Pipeline, count: int, timeout: float | None) -> SMTPResponse:
    refusal: SMTPResponse | None = None
    reply = SMTPResponse(451, "no BDAT reply")      # count is at least 1
    for _ in range(count):
        reply = await group.reply(timeout)
        if reply.code == 421:
            return reply
        if refusal is None and not 200 <= reply.code < 300:
            refusal = reply
    return refusal or reply
