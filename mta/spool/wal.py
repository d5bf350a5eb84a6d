"""The index's WAL upkeep: when its commits become durable, and when its
frames are copied into the database file, both off the acceptance path.

One job: since issue 12 the writer commits with synchronous=NORMAL (no
fsync; the segment record is an acceptance's record of truth). Two things
SQLite did on the commit path then need a home:
  * durability of the rest (attempt records, moves, cursors): the WAL is
    fsynced WAL_SYNC_INTERVAL after the first commit it does not cover, in
    a worker thread while the writer goes on (an fsync needs no lock: it
    covers every frame written before it starts);
  * checkpoints: SQLite's automatic one runs inside a COMMIT every 1000
    pages and, in NORMAL mode, first fsyncs all the WAL written since the
    last sync (megabytes: measured, it put ~2% of acceptances at 5-9 ms).
    The writer's connection has it off; a checkpoint (PASSIVE: it never
    waits for, nor blocks, the writer or readers) runs on its own
    connection in a worker thread after CHECKPOINT_EVERY commits or
    CHECKPOINT_INTERVAL seconds with commits (big group-commit batches
    write many frames per commit), while the writer goes on. Its fsyncs
    compete with the segments' for the disk, so they are kept rare
    (measured at C=1: every 32 commits put the append's p99 at 3.5 ms,
    every 256 at 1.9 ms, against 1 ms with no checkpoint beside it).
    SQLite restarts the WAL only when a write begins after a checkpoint
    copied all of it, which one running beside a busy writer rarely has
    (measured at C=1: commits land while it runs), so once the WAL holds
    WAL_FRAMES_MAX frames the writer runs one itself between two batches
    (cheap: the background ones copied nearly all), and the next write
    restarts the WAL: at C=1 about one acceptance in 1500 waits for it,
    instead of one in 50 for SQLite's own.

API:
    upkeep = WalUpkeep(sync_index, checkpointer, wake, counters, *, sync_interval,
                       checkpoint_every)
    upkeep.committed()              after each COMMIT (loop thread; never blocks)
    await upkeep.between_batches(conn)   what must run on the writer's connection,
                                    between two batches (an inline checkpoint);
                                    `wake()` is called when it falls due while
                                    the writer is idle
    await upkeep.close()            waits for a sync or checkpoint in flight
    counters (the writer's SpoolStats): wal_syncs, checkpoints, inline_checkpoints

Invariants:
- Nothing here can make a commit less durable than SQLite's NORMAL mode
  makes it: a checkpoint copies only committed frames, after fsyncing the
  WAL (SQLite's own order), and a failed fsync or checkpoint is logged and
  retried later, never hidden as success.
- At most one checkpoint and one WAL fsync run at a time; the
  checkpoint's connection is used by one thread at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import aiosqlite

from mta.core.logfmt import event
from mta.spool.faults import storage_error

log = logging.getLogger("mta.spool")

WAL_SYNC_INTERVAL = 1.0   # seconds a commit may stay only in the page cache
CHECKPOINT_EVERY = 256    # commits between two background checkpoints …
CHECKPOINT_INTERVAL = 1.0  # … or seconds, when there were commits
WAL_FRAMES_MAX = 16384    # frames (~64 MiB) past which the writer checkpoints itself


class Checkpointer(Protocol):
    def run(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint (blocking): (busy, frames in the WAL, frames copied)."""
        ...

    def close(self) -> None: ...


class Counters(Protocol):
    wal_syncs: int
    checkpoints: int
    inline_checkpoints: int


class WalUpkeep:
    def __init__(self, sync_index: Callable[[], None] | None,
                 checkpointer: Checkpointer | None, wake: Callable[[], None],
                 counters: Counters, *, sync_interval: float = WAL_SYNC_INTERVAL,
                 checkpoint_every: int = CHECKPOINT_EVERY):
        self._sync_index = sync_index
        self._checkpointer = checkpointer
        self._wake = wake
        self._counters = counters
        self.sync_interval = sync_interval
        self.checkpoint_every = checkpoint_every
        self._timer: asyncio.TimerHandle | None = None   # runs while commits are unsynced
        self._sync: asyncio.Future[None] | None = None   # a WAL fsync in flight
        self._commits = 0                                # since the last checkpoint started
        self._checkpoint_at = 0.0                        # when it started (loop time)
        self._checkpoint: asyncio.Future[tuple[int, int, int]] | None = None
        self._inline_due = False

    def committed(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is None and self._sync_index is not None:
            self._timer = loop.call_later(self.sync_interval, self._timer_fired)
        self._commits += 1
        if self._checkpointer is None or self._checkpoint is not None:
            return
        now = loop.time()
        if (self._commits >= self.checkpoint_every
                or now - self._checkpoint_at >= CHECKPOINT_INTERVAL):
            self._commits, self._checkpoint_at = 0, now
            self._checkpoint = loop.run_in_executor(None, self._checkpointer.run)
            self._checkpoint.add_done_callback(self._checkpoint_done)

    def _timer_fired(self) -> None:
        self._timer = None
        if self._sync is not None:      # still running (a slow disk): try again later
            self._timer = asyncio.get_running_loop().call_later(self.sync_interval,
                                                                self._timer_fired)
            return
        assert self._sync_index is not None
        self._sync = asyncio.get_running_loop().run_in_executor(None, self._sync_index)
        self._sync.add_done_callback(self._sync_done)

    def _sync_done(self, fut: asyncio.Future[None]) -> None:
        self._sync = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            # The commits stay valid (a SIGKILL cannot take them); a power
            # loss may, as before the sync. Retried after the next commit.
            event(log, "spool_wal_sync_failed", logging.ERROR,
                  error=storage_error(exc, "syncing the index"))
        else:
            self._counters.wal_syncs += 1

    def _checkpoint_done(self, fut: asyncio.Future[tuple[int, int, int]]) -> None:
        self._checkpoint = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            event(log, "spool_checkpoint_failed", logging.ERROR,
                  error=storage_error(exc, "checkpointing the index"))
            # The WAL must not grow unseen: the writer tries one itself.
            self._inline_due = True
            self._wake()
            return
        self._counters.checkpoints += 1
        _, frames, _ = fut.result()
        if frames > WAL_FRAMES_MAX:
            self._inline_due = True
            self._wake()

    async def between_batches(self, conn: aiosqlite.Connection) -> None:
        if self._inline_due:
            self._inline_due = False
            try:
                # fetched: a stepped PRAGMA left pending would keep the next COMMIT
                # from ending ("SQL statements in progress")
                await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:
                event(log, "spool_checkpoint_failed", logging.ERROR,
                      error=storage_error(exc, "checkpointing the index"))
            else:
                self._counters.inline_checkpoints += 1

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        running = [f for f in (self._checkpoint, self._sync) if f is not None]
        if running:
            await asyncio.wait(running)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
