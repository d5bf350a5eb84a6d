"""The body store: append-only segment files, synced once per batch.

One job: put message bodies on disk durably and give them back.

API (`BodyStore` is the interface the writer and recovery code against, so a
different store can replace segments when a benchmark says so):

    store.append_now([(queue_id, head, tail, envelope), ...])
        -> [(segment, offset, length), ...]
        (blocking, in the calling thread: the writer runs it on its SQLite
        connection's thread, right before the batch's BEGIN, so an
        acceptance costs one hop off the event loop, not two)
        one v2 record per item (records.py): the envelope block, then the
        body = head + the bytes of `tail` (a core.spill.SpillFile, or None),
        copied in 1 MiB pieces, so a large message never sits in memory whole
    await store.append_many(items) -> the same, run on the store's thread
    await store.read(segment, offset, length, queue_id=None) -> bytes
    store.read_prefix(segment, offset, limit) -> bytes   (sync) the first bytes
    store.stored(segment, offset, length, queue_id) -> StoredBody
        the same record read in pieces, crc-checked at the end (large bodies)
    await store.reclaim(live_segments, before_unlink=None) -> int   # files unlinked
    scan_segments(directory) -> {segment: size}      # sync, for recovery

Record format: records.py (v2 = envelope block + v1 record; v1 segments
written before issue 12 stay readable). `offset` is where the record's v1
header starts (after a v2 record's envelope block); `length` is the body
length; `offset + HEADER.size + length` is the record's end.

Invariants:
- `append_many` returns only after ONE fdatasync covering the whole batch
  (envelopes and bodies), and after the directory fsync when the batch
  created a new segment file.
- Appends go to the current segment only; after any write/sync error the
  segment is abandoned and the next batch opens a fresh one (after a failed
  fsync the page cache state is unknown, so we never append there again).
  A freshly opened store never appends to an existing file.
- Segment numbers are never reused (`first_number` is above every number on
  disk or in the index).
- All file I/O runs off the event loop: `append_now` in its caller's
  thread (the writer connection's), `append_many` and the unlinks of
  `reclaim` on the store's one dedicated thread (so an fsync never queues
  behind unrelated work in the default pool), reads through
  `asyncio.to_thread`.
- Appends and reclaims never overlap, whichever threads they run on: each
  holds the store's lock (`_serial`) throughout. (The writer never asks for
  both at once anyway: it awaits each step of a batch; the lock keeps that
  true for any caller. Overlapping, a reclaim could see a segment just
  created by an append's rotation before it became `current`, and unlink it.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from mta.core.errors import StorageError
from mta.core.files import fsync_dir
from mta.core.logfmt import event
from mta.core.spill import SpillFile
from mta.spool.records import HEADER, envelope_block
from mta.spool.records import V1 as MAGIC
from mta.spool.records import qid_bytes as _qid_bytes

log = logging.getLogger("mta.spool")

SEGMENT_MAX_BYTES = 64 * 1024 * 1024
CHUNK = 1024 * 1024       # read unit of StoredBody (core.spill.CHUNK)
SUFFIX = ".seg"

Location = tuple[int, int, int]
# (queue id, head, tail, envelope): tail is a core.spill.SpillFile holding
# the body's bytes past `head` (None: the body is all in `head`); envelope
# the bytes of the record's envelope block (replay.envelope)
Item = tuple[str, bytes, SpillFile | None, bytes]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]


class BodyStore(Protocol):
    def append_now(self, items: Sequence[Item]) -> list[Location]: ...
    async def append_many(self, items: Sequence[Item]) -> list[Location]: ...
    async def read(self, segment: int, offset: int, length: int,
                   queue_id: str | None = None) -> bytes: ...
    async def reclaim(self, live_segments: set[int],
                      before_unlink: Callable[[], None] | None = None) -> int: ...
    def close(self) -> None: ...


def segment_name(number: int) -> str:
    return f"{number:08d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    stem, dot, ext = name.partition(".")
    if dot and "." + ext == SUFFIX and len(stem) == 8 and stem.isdigit():
        return int(stem)
    return None


def scan_segments(directory: str | os.PathLike[str]) -> dict[int, int]:
    """{segment number: file size} for every segment file in `directory`."""
    out: dict[int, int] = {}
    with os.scandir(directory) as it:
        for entry in it:
            number = parse_segment_name(entry.name)
            if number is not None:
                out[number] = entry.stat().st_size
    return out


class StoredBody:
    """A stored body read in pieces (issue 10 item 3): what delivery gets for
    a message over core.spill.HEAD_BYTES instead of its bytes.

    .size                          the body length
    .iter_chunks(size=CHUNK)       sync generator (worker threads)
    async .chunks(size=CHUNK)      async generator: each pread in a thread
    async .is_ascii() -> bool      one pass over the pieces
    Both generators check the record header first and the crc32 after the
    last piece: a body that does not match raises StorageError before the
    caller has seen its end (so an SMTP client can drop the connection
    instead of sending the final dot). Memory: one piece."""

    def __init__(self, path: Path, segment: int, offset: int, length: int, queue_id: str):
        self.path, self.segment, self.offset = path, segment, offset
        self.size = length
        self.queue_id = queue_id

    def __repr__(self) -> str:
        return f"StoredBody({self.queue_id}, {self.size} bytes)"

    def _open(self) -> tuple[int, int]:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.pread(fd, HEADER.size, self.offset)
            if len(head) < HEADER.size:
                raise StorageError(f"segment {self.segment}: record at {self.offset} is truncated")
            magic, qid, length, crc = HEADER.unpack(head)
            if magic != MAGIC or length != self.size:
                raise StorageError(f"segment {self.segment}: no record header at {self.offset}")
            if qid != _qid_bytes(self.queue_id):
                raise StorageError(f"segment {self.segment}: record at {self.offset} belongs to "
                                   f"{qid.rstrip(bytes(1)).decode('ascii', 'replace')}, "
                                   f"not {self.queue_id}")
        except BaseException:
            os.close(fd)
            raise
        return fd, crc

    def _piece(self, fd: int, pos: int, size: int) -> bytes:
        data = os.pread(fd, min(size, self.size - pos), self.offset + HEADER.size + pos)
        if not data:
            raise StorageError(f"segment {self.segment}: record at {self.offset} is truncated "
                               f"({pos} of {self.size} bytes)")
        return data

    def _check(self, crc: int, want: int) -> None:
        if crc != want:
            raise StorageError(f"segment {self.segment}: record at {self.offset} fails its crc32")

    def iter_chunks(self, size: int = CHUNK) -> Generator[bytes, None, None]:
        fd, want = self._open()
        try:
            pos, crc = 0, 0
            while pos < self.size:
                data = self._piece(fd, pos, size)
                pos += len(data)
                crc = zlib.crc32(data, crc)
                if pos == self.size:
                    self._check(crc, want)
                yield data
        finally:
            os.close(fd)

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        gen = self.iter_chunks(size)       # each step (a pread) in a worker thread
        try:
            while (piece := await asyncio.to_thread(next, gen, None)) is not None:
                yield piece
        finally:
            gen.close()

    async def is_ascii(self) -> bool:
        def scan() -> bool:
            return all(piece.isascii() for piece in self.iter_chunks())
        return await asyncio.to_thread(scan)


class SegmentStore:
    """`BodyStore` over append-only segment files in one directory."""

    def __init__(self, directory: str | os.PathLike[str], *, first_number: int,
                 max_bytes: int = SEGMENT_MAX_BYTES):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._next_number = max(first_number, 1)
        self._current: int | None = None   # segment number appends go to
        self._fd: int | None = None
        self._size = 0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mta-spool-seg")
        self._serial = threading.Lock()    # appends and reclaims, one at a time

    @property
    def current(self) -> int | None:
        return self._current

    # -- appends (the writer's) ---------------------------------------------------

    def append_now(self, items: Sequence[Item]) -> list[Location]:
        with self._serial:
            return self._append_sync(items)

    async def append_many(self, items: Sequence[Item]) -> list[Location]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self.append_now, items)

    def _append_sync(self, items: Sequence[Item]) -> list[Location]:
        if self._fd is None or self._size >= self.max_bytes:
            self._rotate()
        fd, number, start = self._fd, self._current, self._size
        assert fd is not None and number is not None
        parts: list[bytes] = []
        locations: list[Location] = []
        pos = start          # where the next record goes
        flushed = start      # where `parts` start
        try:
            for queue_id, body, tail, envelope in items:
                block = envelope_block(envelope)
                parts.append(block)
                pos += len(block)
                if tail is None:
                    parts.append(HEADER.pack(MAGIC, _qid_bytes(queue_id), len(body),
                                             zlib.crc32(body)))
                    parts.append(body)
                    locations.append((number, pos, len(body)))
                    pos += HEADER.size + len(body)
                    continue
                # A large message: its tail is copied from the spill file in
                # CHUNK pieces behind the head, then the header (with the crc
                # of both, known only now) goes in front of them.
                _pwrite_all(fd, b"".join(parts), flushed)
                parts = []
                length = len(body) + tail.length
                crc = tail.copy_to(fd, pos + HEADER.size + len(body), crc=zlib.crc32(body))
                _pwrite_all(fd, HEADER.pack(MAGIC, _qid_bytes(queue_id), length, crc) + body, pos)
                locations.append((number, pos, length))
                pos += HEADER.size + length
                flushed = pos
            _pwrite_all(fd, b"".join(parts), flushed)
            os.fdatasync(fd)
        except BaseException:
            # Unknown bytes may sit past `start`; abandon this file (see invariants).
            self._abandon()
            raise
        self._size = pos
        return locations

    def _rotate(self) -> None:
        self._abandon()
        while True:
            number = self._next_number
            self._next_number += 1
            path = self.directory / segment_name(number)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue  # never reuse a number, even one we did not expect on disk
            break
        try:
            # The directory entry must be durable before any row points at it.
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._current, self._size = fd, number, 0
        event(log, "segment_new", level=logging.DEBUG, path=path)

    def _abandon(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._current, self._size = None, None, 0

    # -- reads (any thread) ----------------------------------------------------

    async def read(self, segment: int, offset: int, length: int,
                   queue_id: str | None = None) -> bytes:
        return await asyncio.to_thread(self.read_sync, segment, offset, length, queue_id)

    def read_sync(self, segment: int, offset: int, length: int,
                  queue_id: str | None = None) -> bytes:
        """Read and verify one record. FileNotFoundError propagates (the caller
        knows whether the body was supposed to be live); any other mismatch is
        a StorageError."""
        path = self.directory / segment_name(segment)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            want = HEADER.size + length
            data = os.pread(fd, want, offset)
            while len(data) < want:
                more = os.pread(fd, want - len(data), offset + len(data))
                if not more:
                    raise StorageError(f"segment {segment}: record at {offset} is truncated "
                                       f"({len(data)} of {want} bytes)")
                data += more
        finally:
            os.close(fd)
        magic, qid, hlen, crc = HEADER.unpack_from(data)
        body = data[HEADER.size:]
        if magic != MAGIC or hlen != length:
            raise StorageError(f"segment {segment}: no record header at {offset}")
        if queue_id is not None and qid != _qid_bytes(queue_id):
            raise StorageError(f"segment {segment}: record at {offset} belongs to "
                               f"{qid.rstrip(bytes(1)).decode('ascii', 'replace')}, not {queue_id}")
        if zlib.crc32(body) != crc:
            raise StorageError(f"segment {segment}: record at {offset} fails its crc32")
        return body

    def read_prefix(self, segment: int, offset: int, limit: int) -> bytes:
        """The first `limit` bytes of a record's body (no crc check: a part)."""
        with open(self.directory / segment_name(segment), "rb") as f:
            f.seek(offset + HEADER.size)
            return f.read(limit)

    def stored(self, segment: int, offset: int, length: int, queue_id: str) -> StoredBody:
        return StoredBody(self.directory / segment_name(segment), segment, offset, length,
                          queue_id)

    # -- reclaim / recovery ------------------------------------------------------

    async def reclaim(self, live_segments: set[int],
                      before_unlink: Callable[[], None] | None = None) -> int:
        """Unlink every segment but the live ones and the current one;
        `before_unlink` runs (in the store's thread) first, when there is
        one to unlink: the writer makes the index durable with it (S9)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._reclaim_sync, set(live_segments),
                                          before_unlink)

    def _reclaim_sync(self, live: set[int], before_unlink: Callable[[], None] | None) -> int:
        with self._serial:
            return self._reclaim_dead(live, before_unlink)

    def _reclaim_dead(self, live: set[int], before_unlink: Callable[[], None] | None) -> int:
        dead = [n for n in self.scan() if n not in live and n != self._current]
        if dead and before_unlink is not None:
            before_unlink()
        removed = 0
        for number in dead:
            self.unlink(number)
            removed += 1
        # No directory fsync: if an unlink is lost in a crash, recovery redoes it.
        return removed

    def scan(self) -> dict[int, int]:
        return scan_segments(self.directory)

    def unlink(self, number: int) -> None:
        try:
            os.unlink(self.directory / segment_name(number))
        except FileNotFoundError:
            pass
        event(log, "segment_removed", segment=segment_name(number))

    def close(self) -> None:
        self._abandon()
        self._io.shutdown(wait=True)
