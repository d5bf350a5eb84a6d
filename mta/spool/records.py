"""The segment record format: v1 (a body) and v2 (an envelope and a body).

One job: the bytes of one record in a segment file, and walking them.
segments.py writes and reads bodies with it; recovery scans what lies past
a segment's mark with it (the package docstring, S1/S3/S4p).

Format (big endian)::

    v1 record  = HEADER + body
    HEADER     = magic b"MTA1" | queue id (16 bytes ASCII) | body length u64 | crc32(body) u32
    v2 record  = ENVELOPE + envelope bytes + v1 record
    ENVELOPE   = magic b"MTA2" | envelope length u32 | crc32(envelope) u32

A v2 record is a v1 record behind an envelope block (what the ENQUEUE op
writes, encoded by replay.py), so the body part is byte for byte the old
format: an index row's (offset, length) point at the v1 header in both,
`offset + HEADER.size + length` is the end of the record in both, and
every body reader is the same. A segment is written by one version only
(a store never appends to an existing file).

API:
    HEADER, ENVELOPE, V1, V2, MAX_ENVELOPE
    qid_bytes(queue_id) -> the 16 header bytes of a queue id
    envelope_block(envelope) -> ENVELOPE + envelope
    iter_records(path) -> (offset, queue_id, length, crc_ok), …   forensics
    scan(path, start) -> Scan(records, end, stop)
        the whole v2 records from `start` on, up to the first byte that does
        not begin one (end of file, a torn or corrupt record, a v1 record)

Invariants:
- `scan` returns a record only when its envelope and its body both match
  their crc32 (replay.py then checks that its queue id is the envelope's):
  a record torn by a crash (written, not synced: its batch was never
  acknowledged) is never returned, and nothing after it is either.
- Memory: `scan` holds one body piece (CHUNK) at a time, and the envelopes.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

V1 = b"MTA1"
V2 = b"MTA2"
HEADER = struct.Struct(">4s16sQI")
ENVELOPE = struct.Struct(">4sII")
MAX_ENVELOPE = 64 * 1024 * 1024   # a bound for scanning garbage, far above any envelope
CHUNK = 1024 * 1024


def qid_bytes(queue_id: str) -> bytes:
    return queue_id.encode("ascii", "replace")[:16].ljust(16, b"\0")


def envelope_block(envelope: bytes) -> bytes:
    return ENVELOPE.pack(V2, len(envelope), zlib.crc32(envelope)) + envelope


@dataclass(frozen=True, slots=True)
class LoggedRecord:
    """A whole v2 record found by `scan`: `offset` is its v1 header's (what
    an index row stores), `end` the first byte after it."""
    offset: int
    length: int
    queue_id: str
    envelope: bytes

    @property
    def end(self) -> int:
        return self.offset + HEADER.size + self.length


@dataclass(frozen=True, slots=True)
class Scan:
    records: tuple[LoggedRecord, ...]
    end: int        # after the last whole record (`start` when none)
    stop: str       # why it stopped: "eof" | "v1" | "torn" | "corrupt"


def _body_crc_ok(f: BinaryIO, length: int, want: int) -> bool:
    crc, left = 0, length
    while left:
        piece = f.read(min(CHUNK, left))
        if not piece:
            return False
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    return crc == want


def _read_v2(f: BinaryIO, pos: int, size: int) -> tuple[LoggedRecord | None, str]:
    """The whole v2 record at `pos` (the file positioned there), or None and
    why not."""
    head = f.read(ENVELOPE.size)
    if len(head) < ENVELOPE.size:
        return None, "torn"
    magic, env_len, env_crc = ENVELOPE.unpack(head)
    if magic == V1:
        return None, "v1"
    if magic != V2 or env_len > MAX_ENVELOPE or pos + ENVELOPE.size + env_len > size:
        return None, "torn" if magic == V2 else "corrupt"
    envelope = f.read(env_len)
    if len(envelope) < env_len or zlib.crc32(envelope) != env_crc:
        return None, "torn"
    header = f.read(HEADER.size)
    if len(header) < HEADER.size:
        return None, "torn"
    hmagic, qid, length, crc = HEADER.unpack(header)
    offset = pos + ENVELOPE.size + env_len
    if hmagic != V1 or offset + HEADER.size + length > size:
        return None, "torn"
    if not _body_crc_ok(f, length, crc):
        return None, "torn"
    queue_id = qid.rstrip(b"\0").decode("ascii", "replace")
    return LoggedRecord(offset, length, queue_id, envelope), ""


def scan(path: str | os.PathLike[str], start: int) -> Scan:
    """The whole v2 records of the segment at `path` from byte `start` (a
    record boundary: a mark, or the end of a record a row points at)."""
    records: list[LoggedRecord] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = start
        while True:
            if pos >= size:
                return Scan(tuple(records), pos, "eof")
            f.seek(pos)
            record, why = _read_v2(f, pos, size)
            if record is None:
                return Scan(tuple(records), pos, why)
            records.append(record)
            pos = record.end


def iter_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, int, bool]]:
    """Yield (offset, queue_id, length, crc_ok) for each record, v1 or v2
    (offset: its v1 header's, what a row stores), until the first byte that
    does not begin one (a torn or garbage tail)."""
    with open(path, "rb") as f:
        pos = 0
        while True:
            f.seek(pos)
            head = f.read(HEADER.size)
            if head[:4] == V2 and len(head) >= ENVELOPE.size:
                _, env_len, _ = ENVELOPE.unpack_from(head)
                pos += ENVELOPE.size + env_len
                f.seek(pos)
                head = f.read(HEADER.size)
            if len(head) < HEADER.size:
                return
            magic, qid, length, crc = HEADER.unpack(head)
            if magic != V1:
                return
            body = f.read(length)
            if len(body) < length:
                return
            queue_id = qid.rstrip(b"\0").decode("ascii", "replace")
            yield pos, queue_id, length, zlib.crc32(body) == crc
            pos += HEADER.size + length
