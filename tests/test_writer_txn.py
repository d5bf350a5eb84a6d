"""The spool writer's transaction runs in one hop on its connection's thread
(spool/writer_txn.py): a batch commits without the event loop coming round
between its statements; a handler that suspends, or raises, is rolled back.
Real SQLite files, a real Spool."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiosqlite
import pytest

from mta.spool import NewMessage, Spool
from mta.spool.writer_txn import run_transaction

T0 = 1_700_000_000.0


def leased_rows(state: Path) -> int:
    with sqlite3.connect(state / "spool" / "index.sqlite3", timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM recipients WHERE leased = 1").fetchone()[0])


async def test_a_batch_commits_while_the_event_loop_is_blocked(tmp_path):
    """The lease's transaction (BEGIN, SELECT, UPDATE, COMMIT) completes while
    the loop is stuck in a callback: no statement waits for a loop turn.
    When each statement was its own loop round trip, the COMMIT could not
    happen until the loop was free again."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        await s.enqueue(NewMessage(sender="a@example.test", recipients=("b@x.test",),
                                   body=b"Subject: s\r\n\r\nhi\r\n"), T0)
        lease = asyncio.create_task(s.lease_due(T0 + 1, 10))
        for _ in range(3):         # the writer takes the op and hands the batch to its thread
            await asyncio.sleep(0)
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

    async def body(tx: aiosqlite.Connection) -> None:
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
    async def body(tx: aiosqlite.Connection) -> None:
        await tx.execute("INSERT INTO t VALUES (1)")
        await tx.execute("INSERT INTO nowhere VALUES (1)")

    with pytest.raises(sqlite3.OperationalError):
        await run_transaction(conn, body)
    assert await _rows(conn) == []
    assert not conn.in_transaction


async def test_a_body_that_awaits_anything_else_is_refused_and_rolled_back(conn):
    """ops.py's contract: handlers await only their statements. One that
    suspends cannot run on the connection's thread: it fails the batch."""
    async def body(tx: aiosqlite.Connection) -> None:
        await tx.execute("INSERT INTO t VALUES (1)")
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited something other than its statements"):
        await run_transaction(conn, body)
    assert await _rows(conn) == []
    await run_transaction(conn, _insert_two)     # the connection still serves
    assert await _rows(conn) == [2]


async def _insert_two(tx: aiosqlite.Connection) -> None:
    await tx.execute("INSERT INTO t VALUES (2)")
