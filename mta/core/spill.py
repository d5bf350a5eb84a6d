"""A message's bytes past its in-memory head, kept in a private temporary file.

One job: let a large message pass from the SMTP session to the spool without
being held in memory (issue 10 item 3). The server keeps the first
`HEAD_BYTES` of a message in memory (the whole header section must fit
there: every header operation works on that head) and writes the rest here as
it arrives; the spool copies it into a segment in bounded chunks; DKIM hashes
it in chunks. A message under HEAD_BYTES never touches a spill file.

API
    HEAD_BYTES                       the in-memory part of a message (1 MiB)
    CHUNK                            read/copy unit (1 MiB)
    SpillFile(directory)             an anonymous file (O_TMPFILE, else a
                                     created-and-unlinked one) mode 0600
    .write(data)                     append (blocking write to the page cache)
    .length                          bytes written
    .is_ascii                        True while every byte written was < 0x80
    .dot_lines                       True once a line starting inside the file
                                     starts with ".": a "<CRLF>." anywhere, across
                                     writes too, or a "." as its first byte (the
                                     file may continue a line: counted, on the
                                     safe side); False: no line does (what
                                     delivery's dot-stuffing would double)
    .chunks(size=CHUNK)              iterate its bytes from the start (pread:
                                     safe from any thread, may be repeated)
    .copy_to(fd, offset) -> crc32    write all of it to `fd` at `offset`, in
                                     CHUNK pieces; returns their crc32
                                     continuing from `crc` (keyword)
    .close()                         idempotent; the file vanishes with it
    join(head, tail) -> bytes        head + tail's bytes (tests, small tails)

Invariants
  * The file has no name while in use (O_TMPFILE) or is unlinked right after
    creation, so a crash leaves nothing behind and nothing else can open it.
  * Memory held is independent of the file's size: reads and copies go in
    CHUNK pieces.
  * `is_ascii` and `dot_lines` describe every byte written, so the spool
    records them with the message and delivery never scans the tail again
    (issue 12); each costs one C-level scan of a block as it is written.
  * Stdlib only (ARCHITECTURE §2: core).
"""

from __future__ import annotations

import os
import tempfile
import zlib
from typing import Iterator

__all__ = ["HEAD_BYTES", "CHUNK", "SpillFile", "join"]

HEAD_BYTES = 1024 * 1024
CHUNK = 1024 * 1024


class SpillFile:
    def __init__(self, directory: str | os.PathLike[str]):
        self.length = 0
        self.is_ascii = True
        self.dot_lines = False
        self._end = b"\r\n"           # the last two bytes written (a line start at first)
        self._fd: int | None = None
        flag = getattr(os, "O_TMPFILE", 0)
        if flag:
            try:
                self._fd = os.open(directory, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError:
                self._fd = None      # a filesystem without O_TMPFILE: fall back
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="spill-", dir=directory)
            os.unlink(path)
            self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("spill file is closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_ascii and not (_isascii(data) if isinstance(data, memoryview)
                                  else data.isascii()):
            self.is_ascii = False
        if data and not self.dot_lines:
            self._track_dots(data)
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.length)
            self.length += n
            view = view[n:]

    def _track_dots(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, memoryview):
            data = data.tobytes()      # rare (no caller today): a copy, not a Python loop
        if b"\r\n." in self._end + data[:2] or b"\r\n." in data:
            self.dot_lines = True
        self._end = bytes(data[-2:] if len(data) >= 2 else (self._end + data)[-2:])

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        fd, pos = self.fd, 0
        while pos < self.length:
            data = os.pread(fd, min(size, self.length - pos), pos)
            if not data:
                raise OSError(f"spill file ended at {pos} of {self.length} bytes")
            pos += len(data)
            yield data

    def copy_to(self, fd: int, offset: int, *, crc: int = 0) -> int:
        pos = offset
        for data in self.chunks():
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, pos)
                pos += n
                view = view[n:]
            crc = zlib.crc32(data, crc)
        return crc

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:  # a session torn down mid-way must not leak the fd
        self.close()

    def __repr__(self) -> str:
        return f"SpillFile(length={self.length})"


def _isascii(view: memoryview) -> bool:
    step = 65536
    return all(bytes(view[i:i + step]).isascii() for i in range(0, len(view), step))


def join(head: bytes, tail: SpillFile | None) -> bytes:
    if tail is None:
        return head
    return head + b"".join(tail.chunks())
