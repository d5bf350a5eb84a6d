"""Pipelined commands (RFC 2920): one write, the replies read back in order.

One job: let a session send a group of commands in one write and read their
replies one by one, over the connection aiosmtplib opened. aiosmtplib's
protocol parses exactly one reply per command and drops what arrives while
a parsed reply waits to be picked up, so it cannot read a pipelined group.
While a group's replies are read, the transport is handed to a `Pipeline`
(asyncio's public `transport.set_protocol`), which hands it back after: the
aiosmtplib client stays the client, and outside a group its protocol works
as before.

Public API:
    ReplyParser()                 pure: .feed(bytes), .next() -> SMTPResponse | None,
                                  .pending -> bool (bytes or replies not yet read)
    ReplyError                    a reply that cannot be parsed (the stream is lost)
    command(verb, *args) -> bytes one command line; ValueError on a control
                                  character (aiosmtplib's own injection check)
    pipelined(smtp) -> Pipeline   a context manager: inside, .write(bytes),
                                  .drain(timeout), await .reply(timeout)

Invariants:
  - Replies are parsed exactly as aiosmtplib parses them (code, the text of
    every line joined by "\\n"), and returned in the order they came; a reply
    that arrived before the connection broke is still returned, the loss is
    raised after it.
  - Nothing the peer sends during a group is dropped; bytes past the last
    reply a session expects are its to judge (`pending`): the stream is
    then out of step and the connection must not be reused.
  - The transport is always handed back to aiosmtplib's protocol on leaving
    the group, and a lost connection reaches that protocol too (its client
    then knows it is closed). Flow control is forwarded, so aiosmtplib's
    drain keeps working while the group's body goes out.
"""

from __future__ import annotations

import asyncio
from typing import cast
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import aiosmtplib
from aiosmtplib import (SMTPException, SMTPReadTimeoutError, SMTPResponse,
                        SMTPServerDisconnected)
from aiosmtplib.protocol import SMTPProtocol

from mta.delivery.data import drain

__all__ = ["ReplyParser", "ReplyError", "Pipeline", "command", "pipelined"]

MAX_LINE = 8192                 # aiosmtplib's limits (protocol.MAX_LINE_LENGTH …)
MAX_REPLY = MAX_LINE * 4
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")   # aiosmtplib's COMMAND_INJECTION_REGEX


class ReplyError(SMTPException):
    """The peer sent something that is not an SMTP reply."""


def command(verb: bytes, *args: bytes) -> bytes:
    """`verb args…CRLF`; raises ValueError when an argument carries a control
    character (CR, LF, NUL…), as aiosmtplib's execute_command does: an
    address must never smuggle a second command into the group."""
    for arg in args:
        if _CONTROL.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join((verb, *args)) + b"\r\n"


class ReplyParser:
    """Bytes in, replies out (no I/O)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._text = bytearray()           # the reply being read: its text so far
        self._open = False                 # a continuation line ("250-…") was read

    @property
    def pending(self) -> bool:
        return bool(self._buffer or self._replies or self._open)

    def next(self) -> SMTPResponse | None:
        return self._replies.popleft() if self._replies else None

    def feed(self, data: bytes) -> None:
        """Parse what `data` completes; raises ReplyError on garbage."""
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            self._line(bytes(self._buffer[start:end + 1]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            raise ReplyError("Response too long")

    def _line(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            raise ReplyError("Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", errors="ignore").strip()
            raise ReplyError(f"Malformed SMTP response line: {text}") from None
        if self._text:
            self._text += b"\n"
        self._text += line[4:].strip(b" \t\r\n")
        if len(self._text) > MAX_REPLY:
            raise ReplyError("Response too long")
        self._open = line[3:4] == b"-"
        if not self._open:
            self._replies.append(SMTPResponse(code, self._text.decode("utf-8", "surrogateescape")))
            self._text = bytearray()


class Pipeline(asyncio.Protocol):
    """Stands in for aiosmtplib's protocol on the transport during a group."""

    def __init__(self, inner: SMTPProtocol, transport: asyncio.WriteTransport):
        self.inner, self.transport = inner, transport
        self.parser = ReplyParser()
        self._failure: SMTPException | None = None
        self._wake: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol: what the transport calls --------------------
    def data_received(self, data: bytes) -> None:
        if self._failure is None:
            try:
                self.parser.feed(data)
            except ReplyError as exc:
                self._failure = exc
        self._notify()

    def eof_received(self) -> bool:
        self._failure = self._failure or SMTPServerDisconnected("Unexpected EOF received")
        self._notify()
        return False                      # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._failure = self._failure or SMTPServerDisconnected("Connection lost")
        self._notify()
        self.inner.connection_lost(exc)   # aiosmtplib's client learns it is closed

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # ---- what the session calls --------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def drain(self, timeout: float | None) -> None:
        await drain(self.inner, timeout)

    async def reply(self, timeout: float | None) -> SMTPResponse:
        """The next reply in order; raises SMTPServerDisconnected, ReplyError
        or SMTPReadTimeoutError once no reply is left to return."""
        while True:
            reply = self.parser.next()
            if reply is not None:
                return reply
            if self._failure is not None:
                raise self._failure
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake
            except TimeoutError:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from None
            finally:
                self._wake = None

    @property
    def pending(self) -> bool:
        """Bytes or replies the session has not read (out of step if so)."""
        return self.parser.pending


@contextmanager
def pipelined(smtp: aiosmtplib.SMTP) -> Iterator[Pipeline]:
    protocol = smtp.protocol
    transport = protocol.transport if protocol is not None else None
    if protocol is None or transport is None or transport.is_closing():
        raise SMTPServerDisconnected("Server not connected")
    # Not isinstance(asyncio.WriteTransport): uvloop's transports implement the
    # interface without subclassing it (the daemon runs on uvloop).
    if not (hasattr(transport, "set_protocol") and hasattr(transport, "write")):
        raise SMTPServerDisconnected(f"cannot pipeline over {type(transport).__name__}")
    transport = cast(asyncio.WriteTransport, transport)
    group = Pipeline(protocol, transport)
    transport.set_protocol(group)
    try:
        yield group
    finally:
        if transport.get_protocol() is group:
            transport.set_protocol(protocol)
