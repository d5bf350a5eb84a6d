"""Crash recovery: bring index and segment files back to a consistent state.

One job: run once in `Spool.open`, before the writer starts, one branch per
crash state of the table in `mta/spool/__init__.py`, and count what each
branch did in a `RecoveryReport`.

API:
    check_index_present(index_path, segment_dir)      # S11: raises StorageError
    await recover(conn, segment_dir, *, index_created=False, sync_index=None)
        -> RecoveryReport;  `sync_index` (blocking) makes the index durable
        before anything is unlinked (index.sync_wal)

Order: the log past each segment's mark is scanned and its whole v2 records
replayed (S1, S3, S3r, S4p: replay.py) in one transaction; then leases and
flags (S5, S6); then bodies checked (S10); then, after `sync_index`, dead
segments unlinked (S9) and torn tails cut (S1).

Invariants:
- Never drops a committed message: a row whose body is missing or short is
  reported (`corrupt`), not deleted or bounced.
- Never loses an acknowledged one: every whole v2 record past its
  segment's mark is indexed (or answered as the duplicate it was) before
  anything is cut or unlinked.
- Never truncates or unlinks bytes a committed row references: tails are
  cut after the last whole record past the mark, never before the mark or
  the furthest record end of *any* row in that segment, and only segments
  without a body_live=1 row are unlinked.
- Idempotent: a crash during recovery is just another crash; running it
  again reaches the same state (the replay commits its rows with the marks
  past them, in one transaction).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from mta.core.errors import StorageError
from mta.core.logfmt import event
from mta.spool import queue_sql
from mta.spool.reads import fetchall
from mta.spool.records import HEADER, LoggedRecord, scan
from mta.spool.replay import replay
from mta.spool.segments import scan_segments, segment_name

log = logging.getLogger("mta.spool")

CORRUPT_LIST_MAX = 1000   # ids kept in the report; corrupt_count has the total


@dataclass
class RecoveryReport:
    index_created: bool = False      # fresh spool (no index before open)
    replayed: int = 0                # S3/S3r/S4p: messages indexed again from the log
    replay_duplicates: int = 0       # S4p: idempotent repeats answered again
    replay_skipped: int = 0          # records past a mark whose id is indexed (expected 0)
    replay_unreadable: int = 0       # whole records whose envelope does not decode
    leased_reset: int = 0            # S5: recipients whose lease died with the process
    flags_fixed: int = 0             # S6: messages whose done/body_live disagreed
    corrupt: tuple[str, ...] = ()    # S10: live messages whose body is missing or short
    corrupt_count: int = 0
    segments_removed: int = 0        # S1-S3 orphans and S9 dead segments unlinked
    tails_truncated: int = 0         # S1: segments cut back to their last whole record
    tail_bytes_truncated: int = 0
    segments_live: int = 0
    next_segment: int = 1            # first number the body store may use
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["corrupt"] = list(self.corrupt)
        return d


def check_index_present(index_path: Path, segment_dir: Path) -> bool:
    """S11. Returns True when the index is about to be created fresh."""
    if index_path.exists():
        return False
    if segment_dir.is_dir() and scan_segments(segment_dir):
        raise StorageError(
            f"{index_path} is missing but {segment_dir} holds segment files: refusing to start, "
            "because recovery would treat every body as garbage. Restore the index, or move "
            "the segments aside to start an empty spool.")
    return True


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def recover(conn: aiosqlite.Connection, segment_dir: Path, *,
                  index_created: bool = False,
                  sync_index: Callable[[], None] | None = None) -> RecoveryReport:
    started = time.monotonic()
    report = RecoveryReport(index_created=index_created)
    files = await asyncio.to_thread(scan_segments, segment_dir)
    cut = await _replay_log(conn, segment_dir, files, report)
    await _reset(conn, report)
    live = {r[0] for r in await fetchall(conn, queue_sql.SQL_LIVE_SEGMENTS)}
    max_db = 0
    for sql in (queue_sql.SQL_MAX_SEGMENT, queue_sql.SQL_MAX_MARKED):
        max_db = max(max_db, (await fetchall(conn, sql))[0][0] or 0)
    report.segments_live = len(live)
    await _check_bodies(conn, live, files, report)
    dead = sorted(seg for seg in files if seg not in live)
    if sync_index is not None and dead:
        # S9: unlink only once the index state that killed them is durable.
        await asyncio.to_thread(sync_index)
    for seg in dead:
        await asyncio.to_thread(_unlink, segment_dir / segment_name(seg))
        report.segments_removed += 1
    if report.segments_removed:
        event(log, "recovery_segments_removed", segments=report.segments_removed)
    await _cut_tails(segment_dir, live, files, cut, report)
    # Numbers are never reused, not even those of files already unlinked
    # (a reused number would inherit a stale mark).
    report.next_segment = max([max_db, *files.keys()], default=0) + 1
    report.duration = time.monotonic() - started
    return report


async def _replay_log(conn: aiosqlite.Connection, segment_dir: Path, files: dict[int, int],
                      report: RecoveryReport) -> dict[int, int]:
    """S1, S3, S3r, S4p: scan every segment past its mark (the later of
    its segment_marks row and the end of the furthest record a row points
    at), replay the whole v2 records found, in log order, in one transaction that also moves the
    marks past them. Returns {segment: where its whole records end}."""
    marks: dict[int, int] = {
        seg: end for seg, end in await fetchall(conn, queue_sql.SQL_INDEXED_MARKS)}
    ends: dict[int, int] = {
        seg: end for seg, end in await fetchall(conn, queue_sql.SQL_SEGMENT_ENDS, (HEADER.size,))}
    cut: dict[int, int] = {}
    found: list[tuple[int, LoggedRecord]] = []
    scanned: dict[int, int] = {}
    for seg, size in sorted(files.items()):
        start = max(marks.get(seg, 0), ends.get(seg, 0))
        cut[seg] = start
        if start >= size:
            continue
        result = await asyncio.to_thread(scan, segment_dir / segment_name(seg), start)
        cut[seg] = result.end
        if result.records:
            found.extend((seg, rec) for rec in result.records)
            scanned[seg] = result.end
    if not found:
        return cut
    await conn.execute("BEGIN IMMEDIATE")
    try:
        counts = await replay(conn, found)
        await conn.executemany(queue_sql.SQL_MARK_INDEXED, list(scanned.items()))
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    report.replayed, report.replay_duplicates = counts.replayed, counts.duplicates
    report.replay_skipped, report.replay_unreadable = counts.skipped, counts.unreadable
    event(log, "recovery_replayed", logging.WARNING, records=len(found),
          messages=counts.replayed, duplicates=counts.duplicates, skipped=counts.skipped,
          unreadable=counts.unreadable, segments=len(scanned))
    return cut


async def _reset(conn: aiosqlite.Connection, report: RecoveryReport) -> None:
    """S5 + S6: one transaction, so a crash here leaves the old (equally valid) state."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        report.leased_reset = (await conn.execute(queue_sql.SQL_RESET_LEASES)).rowcount
        report.flags_fixed = (await conn.execute(queue_sql.SQL_RECOMPUTE_ALL_FLAGS)).rowcount
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    if report.leased_reset:
        event(log, "recovery_leases_reset", recipients=report.leased_reset)
    if report.flags_fixed:
        event(log, "recovery_flags_fixed", logging.WARNING, messages=report.flags_fixed)


async def _check_bodies(conn: aiosqlite.Connection, live: set[int], files: dict[int, int],
                        report: RecoveryReport) -> None:
    """S10: live rows pointing at a missing file or past its end."""
    corrupt: list[str] = []
    for seg in sorted(live):
        size = files.get(seg, -1)
        rows = await fetchall(conn, queue_sql.SQL_LIVE_IN_SEGMENT_PAST, (seg, HEADER.size, size))
        if rows:
            what = "is missing" if size < 0 else f"is only {size} bytes"
            event(log, "recovery_bodies_lost", logging.ERROR, segment=segment_name(seg),
                  problem=what, messages=len(rows), ids=",".join(r[0] for r in rows[:20]),
                  note="kept in the queue, reported as corrupt")
            report.corrupt_count += len(rows)
            corrupt.extend(r[0] for r in rows[:max(0, CORRUPT_LIST_MAX - len(corrupt))])
    report.corrupt = tuple(corrupt)


async def _cut_tails(segment_dir: Path, live: set[int], files: dict[int, int],
                     cut: dict[int, int], report: RecoveryReport) -> None:
    """S1: what follows the last whole record (a torn record, a v1 orphan)."""
    for seg in sorted(live & files.keys()):
        end = cut.get(seg, 0)
        if files[seg] > end:
            await asyncio.to_thread(_truncate, segment_dir / segment_name(seg), end)
            report.tails_truncated += 1
            report.tail_bytes_truncated += files[seg] - end
            event(log, "recovery_tail_cut", logging.WARNING, segment=segment_name(seg),
                  bytes=files[seg] - end)
