"""The spool writer's batch runs in one hop on its connection's thread
(spool/writer.py `_Hop`, spool/writer_txn.py): the segment append + fdatasync
and the transaction complete without the event loop coming round between
them or between the statements; a handler that suspends, or raises, is
rolled back; a failed append fails only its batch's enqueues; the store never
reclaims while it appends. Real SQLite files, real segment files, a real
Spool."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import aiosqlite
import pytest

from mta.core import StorageError
from mta.spool import NewMessage, Spool, segments
from mta.spool.reads import Statements
from mta.spool.segments import SegmentStore, scan_segments
from mta.spool.writer_txn import run_transaction

T0 = 1_700_000_000.0


def leased_rows(state: Path) -> int:
    with sqlite3.connect(state / "spool" / "index.sqlite3", timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM recipients WHERE leased = 1").fetchone()[0])


def message_rows(state: Path) -> int:
    with sqlite3.connect(state / "spool" / "index.sqlite3", timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def new_message(n: int = 0) -> NewMessage:
    return NewMessage(sender="a@example.test", recipients=("b@x.test",),
                      body=b"Subject: s%d\r\n\r\nhi\r\n" % n)


async def test_an_acceptance_appends_and_commits_while_the_event_loop_is_blocked(tmp_path):
    """An enqueue's whole batch (segment append + fdatasync, BEGIN, rows,
    COMMIT) completes while the loop is stuck in a callback: the append
    does not return to the loop before the transaction starts. When the
    append ran on the store's thread and came back through the loop, the
    rows could not be committed until the loop was free again."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        enqueue = asyncio.create_task(s.enqueue(new_message(), T0))
        # Until the writer has handed the batch to its thread. Spin on sleep(0)
        # (never a timed sleep, which could let the whole batch finish with
        # the loop free) against a deadline, not a count: on a loaded machine
        # the writer's earlier hops to its thread take many loop turns.
        deadline = time.monotonic() + 10
        while not s.stats.batches and time.monotonic() < deadline:
            await asyncio.sleep(0)
        assert s.stats.batches == 1
        seen, deadline = 0, time.monotonic() + 10
        while not seen and time.monotonic() < deadline:   # blocks the loop (on purpose)
            seen = message_rows(tmp_path)
            time.sleep(0.01)
        assert seen == 1, "the acceptance did not commit while the event loop was blocked"
        qid = await enqueue
        assert await s.read_body(qid) == new_message().body
        assert s.stats.fsyncs == 1 and s.stats.commits == 1
    finally:
        await s.close()


async def test_a_failed_append_fails_only_the_enqueues_of_its_batch(tmp_path, monkeypatch):
    """The lease in the same batch as an enqueue whose append fails (disk
    full) still commits; the enqueue gets StorageError (452), no rows."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        await s.enqueue(new_message(1), T0)

        def full(items):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(s._store, "_append_sync", full)
        batches = s.stats.batches
        failed, leased = await asyncio.gather(s.enqueue(new_message(2), T0),
                                              s.lease_due(T0 + 1, 10), return_exceptions=True)
        assert s.stats.batches == batches + 1            # one batch held both
        assert isinstance(failed, StorageError) and failed.disk_full
        assert [r.address for r in leased] == ["b@x.test"]
        assert leased_rows(tmp_path) == 1 and message_rows(tmp_path) == 1
        assert s.stats.failed_batches == 1 and s.stats.commits == 2
    finally:
        await s.close()


def test_the_store_never_reclaims_while_it_appends(tmp_path, monkeypatch):
    """A reclaim asked for while an append is creating a new segment (its
    directory fsync) waits for the append: run in between, it would take the
    new segment, not yet `current` nor live, for dead and unlink it."""
    store = SegmentStore(tmp_path, first_number=1)
    reclaimed: list[int] = []
    real_fsync_dir = segments.fsync_dir

    def fsync_dir_then_reclaim(path):
        real_fsync_dir(path)
        t = threading.Thread(target=lambda: reclaimed.append(store._reclaim_sync(set(), None)))
        t.start()
        t.join(0.5)            # a reclaim that does not wait finishes (and unlinks) by now
        assert not reclaimed, "reclaim ran while the append was creating its segment"

    monkeypatch.setattr(segments, "fsync_dir", fsync_dir_then_reclaim)
    try:
        [(number, offset, length)] = store.append_now([("Q" * 16, b"body", None, b"{}")])
        monkeypatch.setattr(segments, "fsync_dir", real_fsync_dir)
        deadline = time.monotonic() + 10
        while not reclaimed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reclaimed == [0]                       # the current segment is never dead
        assert scan_segments(tmp_path) == {number: os.path.getsize(tmp_path / "00000001.seg")}
        assert store.read_sync(number, offset, length) == b"body"
    finally:
        store.close()


async def test_a_batch_commits_while_the_event_loop_is_blocked(tmp_path):
    """The lease's transaction (BEGIN, SELECT, UPDATE, COMMIT) completes while
    the loop is stuck in a callback: no statement waits for a loop turn.
    When each statement was its own loop round trip, the COMMIT could not
    happen until the loop was free again."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        await s.enqueue(NewMessage(sender="a@example.test", recipients=("b@x.test",),
                                   body=b"Subject: s\r\n\r\nhi\r\n"), T0)
        batches = s.stats.batches
        lease = asyncio.create_task(s.lease_due(T0 + 1, 10))
        deadline = time.monotonic() + 10   # the writer takes the op, hands the batch to its thread
        while s.stats.batches == batches and time.monotonic() < deadline:
            await asyncio.sleep(0)
        assert s.stats.batches == batches + 1
        seen, deadline = 0, time.monotonic() + 10
        while not seen and time.monotonic() < deadline:   # blocks the loop (on purpose)
            seen = leased_rows(tmp_path)
            time.sleep(0.01)
        assert seen == 1, "the lease did not commit while the event loop was blocked"
        assert [r.address for r in await lease] == ["b@x.test"]
    finally:
        await s.close()


@pytest.fixture
async def conn(tmp_path):
    c = await aiosqlite.connect(tmp_path / "t.sqlite3", isolation_level=None)
    await c.execute("CREATE TABLE t (x INTEGER)")
    yield c
    await c.close()


async def _rows(c: aiosqlite.Connection) -> list[int]:
    return [r[0] for r in await c.execute_fetchall("SELECT x FROM t ORDER BY x")]


async def test_statements_commit_and_return_rows(conn):
    got: list[list[int]] = []

    async def body(tx: Statements) -> None:
        cur = await tx.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        assert cur.rowcount == 2
        await tx.execute("INSERT INTO t VALUES (:x)", {"x": 3})
        got.append([r[0] for r in await tx.execute_fetchall("SELECT x FROM t WHERE x > ?",
                                                             (1,))])

    await run_transaction(conn, body)
    assert got == [[2, 3]]
    assert await _rows(conn) == [1, 2, 3]
    assert not conn.in_transaction


async def test_a_failing_body_is_rolled_back(conn):
    async def body(tx: Statements) -> None:
        await tx.execute("INSERT INTO t VALUES (1)")
        await tx.execute("INSERT INTO nowhere VALUES (1)")

    with pytest.raises(sqlite3.OperationalError):
        await run_transaction(conn, body)
    assert await _rows(conn) == []
    assert not conn.in_transaction


async def test_a_body_that_awaits_anything_else_is_refused_and_rolled_back(conn):
    """ops.py's contract: handlers await only their statements. One that
    suspends cannot run on the connection's thread: it fails the batch."""
    async def body(tx: Statements) -> None:
        await tx.execute("INSERT INTO t VALUES (1)")
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited something other than its statements"):
        await run_transaction(conn, body)
    assert await _rows(conn) == []
    await run_transaction(conn, _insert_two)     # the connection still serves
    assert await _rows(conn) == [2]


async def _insert_two(tx: Statements) -> None:
    await tx.execute("INSERT INTO t VALUES (2)")
