"""The DATA stream: read up to the terminating "<CRLF>.<CRLF>", keep the
message's head in memory and the rest in a spill file, check it on the way.

API
    DataBody(spill_dir)             what arrives, dot-unstuffed and checked
        .feed(chunk) / .finish()    bytes as read / after the terminator
        .head                       the first piece (all of a message under
                                    HEAD_BYTES), bytes
        .spill                      a core.spill.SpillFile with the rest, or None
        .size                       content bytes (unstuffed)
        .refusal                    hygiene.check_data's verdict on all of it, or
                                    HEADER_TOO_BIG when the header section does
                                    not end in the head
        .line_too_long              a line over 1000 octets (RFC 5321 4.5.3.1.6)
        .ascii                      every content byte is 7-bit
        .dot_lines                  a content line may start with "." (False:
                                    none does); both for NewMessage (issue 12)
        .discard()                  drop what is stored (idempotent)
    await read_data(reader, body, limit) -> bool
        feed `body` from `reader` up to the end of the data; False when the
        data was over `limit` bytes (0: no limit): drained to its end, not stored

Why a block reader: aiosmtpd reads the data stream line by line
(`readuntil(CRLF)`), a third of the daemon's CPU at 20 KB messages. This reads
up to each ".<CRLF>" and accepts it as the end only when it starts a line (the
data's start, or right after a CRLF) — so it never reads past the terminator
(pipelined commands stay in the reader) and a bare LF before "." does not end
the data (SMTP smuggling; the handler then rejects the bare LF). The results
are aiosmtpd's: dot-unstuffing, "500 Line too long" over 1000 bytes, "552"
over the size limit.

Invariants
  * Memory stays about HEAD_BYTES per session whatever the message size
    (issue 10 item 3): pieces past the head go to the spill file.
  * Pieces are cut just before a CRLF: a "<CRLF>." to unstuff, a CRLF pair
    for the hygiene counts and a line's length never straddle two pieces
    (the piece after a cut starts with that CRLF). A message that fits in
    one piece is processed as one: one copy, one replace.
  * `ascii` and `dot_lines` cost no pass of their own (issue 12: the spool
    stores them with the message, so delivery neither scans nor dot-stuffs
    the body again): `dot_lines` is whether unstuffing removed any dot —
    a client stuffs every line that starts with "." (so True means some
    line does; a client that sent "<CRLF>.x" unstuffed makes it True too,
    the safe side) — or the data began with one; a cut never splits a
    "<CRLF>." (below). `ascii` is one isascii of the head piece, the spill
    file's `is_ascii` for the rest.
  * No I/O but the reader's and the spill file's; no policy.
"""

from __future__ import annotations

import asyncio
import tempfile

from mta.core import Reply
from mta.core.spill import HEAD_BYTES, SpillFile
from mta.server import replies
from mta.server.hygiene import check_data

__all__ = ["DataBody", "read_data"]


class DataBody:
    """DATA as it arrives → `head` + `spill`, checked piece by piece."""

    def __init__(self, spill_dir: str | None):
        self.spill_dir = spill_dir or tempfile.gettempdir()
        self.buf = bytearray()
        self.head = b""
        self.spill: SpillFile | None = None
        self.size = 0                   # bytes of content (unstuffed)
        self.refusal: Reply | None = None
        self.line_too_long = False
        self._started = False           # the first piece is out (leading dot handled)
        self._line = 0                  # length of the unfinished last line so far
        self.dot_lines = False          # unstuffing removed a dot: a line starts with one
        self._head_ascii = True

    @property
    def ascii(self) -> bool:
        return self._head_ascii and (self.spill is None or self.spill.is_ascii)

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) >= HEAD_BYTES:
            # (not inside the last 3 bytes: they may be the terminating ".\r\n")
            cut = self.buf.rfind(b"\r\n", 0, len(self.buf) - 3)
            if cut <= 0:                # a megabyte without a line end
                self.line_too_long = True
                self.buf.clear()
                return
            piece = bytes(memoryview(self.buf)[:cut])
            del self.buf[:cut]
            self._piece(piece, final=False)

    def finish(self) -> None:
        del self.buf[-3:]               # the terminating ".\r\n"
        piece = bytes(self.buf)
        self.buf = bytearray()
        self._piece(piece, final=True)

    def _piece(self, piece: bytes, *, final: bool) -> None:
        if self.line_too_long or self._overlong(piece):
            return
        # RFC 5321 4.5.2: remove the leading dot of every line that has one.
        if not self._started:
            self._started = True
            if piece.startswith(b"."):
                piece = piece[1:]
                self.dot_lines = True   # "..": the first line starts with "."
            # past HEAD_BYTES every header operation works on the head alone:
            # its header section must end inside it
            if not final and not (piece.startswith(b"\r\n") or b"\r\n\r\n" in piece):
                self.refusal = replies.HEADER_TOO_BIG
        size = len(piece)
        piece = piece.replace(b"\r\n.", b"\r\n")
        if len(piece) != size:
            self.dot_lines = True
        if self.refusal is None:
            self.refusal = check_data(piece)
        self.size += len(piece)
        if not self.head:
            self.head = piece
            self._head_ascii = piece.isascii()
        else:
            if self.spill is None:
                self.spill = SpillFile(self.spill_dir)
            self.spill.write(piece)

    def _overlong(self, piece: bytes) -> bool:
        """Track the length of the line in progress; True (and everything
        dropped) once a line is over 1000 octets."""
        if len(piece) + self._line > 1001:
            lines = piece.split(b"\n")
            first = self._line + len(lines[0])
            if len(lines) == 1:
                self._line = first
            else:
                self._line = len(lines[-1])
                first = max(first, max(map(len, lines[1:])))
            if first > 1000:
                self.line_too_long = True
                self.discard()
                return True
        else:
            nl = piece.rfind(b"\n")
            self._line = self._line + len(piece) if nl < 0 else len(piece) - nl - 1
        return False

    def discard(self) -> None:
        self.buf.clear()
        if self.spill is not None:
            self.spill.close()
            self.spill = None


async def read_data(reader: asyncio.StreamReader, body: DataBody, limit: int) -> bool:
    """Feed `body` up to the end of the data (the terminator stays in
    `body.buf` for `finish`); False when it was over `limit` bytes."""
    size = 0
    too_much = False
    tail = b""  # the last two bytes of the stream read so far
    while True:
        try:
            chunk = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as e:
            chunk = await reader.read(e.consumed)
            ended = False
        else:
            # The "." ends the data only at the start of a line.
            before = chunk[-5:-3] if len(chunk) >= 5 else (tail + chunk[:-3])[-2:]
            ended = (size == 0 and len(chunk) == 3) or before == b"\r\n"
        size += len(chunk)
        tail = chunk[-2:] if len(chunk) >= 2 else (tail + chunk)[-2:]
        if limit and size > limit + 3:
            too_much = True
            body.discard()   # keep draining, stop storing
        elif not too_much:
            body.feed(chunk)
        if ended:
            return not too_much
