"""The group commit's transaction in one hop: BEGIN, every handler and
COMMIT run on the writer connection's own thread.

One job: run a batch's transaction as ONE call on the aiosqlite worker
thread instead of one loop↔thread round trip per statement. Why (issue 12,
measured at C=1 with the daemon under the bench load): an acceptance's
transaction is about eight statements and a delivery's lease + record about
ten; each went thread → loop → thread, and every hop waited for the event
loop to come round, busy as it is with the sessions and the deliveries. The
writer (the one serial resource of the spool) spent 1.6 ms per acceptance
and 3.1 ms per lease + record that way, so at C=1 it, not the disk, set the
pace.

API:
    await run_transaction(conn, body) -> None
        `body(statements)` is the transaction's work: a coroutine function
        whose statements go to `statements` (`Statements`: execute,
        executemany, execute_fetchall, awaited as on an aiosqlite
        connection). It runs inside BEGIN IMMEDIATE … COMMIT on `conn`'s
        thread; on any exception the transaction is rolled back and the
        exception raised here.
    Statements(raw)      the aiosqlite-shaped face of a sqlite3 connection
                         whose statements run at once, in the calling thread.

Invariants:
- The handlers' contract (ops.py): they await nothing but their own
  statements. Those complete without suspending here, so the coroutine runs
  to its end in one step on the worker thread; one that suspends anyway (it
  awaited something else) is a bug: it is closed, the transaction rolled
  back and RuntimeError raised, failing the batch.
- Nothing else uses the writer's connection meanwhile: aiosqlite runs one
  call at a time on its thread, and only the writer task submits to it.
- Uses aiosqlite's `_execute` (run a function on the connection's thread)
  and `_conn` (its sqlite3 connection): the library has no public name for
  either; both have been there since its first releases. The spool tests
  run every handler through here, so a change in them fails loudly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, cast

import aiosqlite

Body = Callable[[aiosqlite.Connection], Coroutine[Any, Any, None]]


class Statements:
    """The statement methods the handlers use, over a sqlite3 connection,
    executed synchronously (awaiting them never suspends)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: sqlite3.Connection):
        self._raw = raw

    # parameters: a sequence or a mapping, as sqlite3 takes them
    async def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        return self._raw.execute(sql, parameters)

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> sqlite3.Cursor:
        return self._raw.executemany(sql, parameters)

    async def execute_fetchall(self, sql: str, parameters: Any = ()) -> list[Any]:
        return self._raw.execute(sql, parameters).fetchall()


def run_to_end(coro: Coroutine[Any, Any, None]) -> None:
    """Drive `coro`, which must not suspend, to its end (its exception
    propagates)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("a spool handler awaited something other than its statements")


def _in_thread(raw: sqlite3.Connection, body: Body) -> None:
    raw.execute("BEGIN IMMEDIATE")
    try:
        # The handlers are typed against aiosqlite's connection (ops.Txn);
        # Statements is the subset of it they use (module docstring).
        run_to_end(body(cast(aiosqlite.Connection, Statements(raw))))
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:     # a failed statement may already have ended it
            raw.execute("ROLLBACK")
        raise


async def run_transaction(conn: aiosqlite.Connection, body: Body) -> None:
    """One transaction running `body`, in one hop to `conn`'s thread."""
    # aiosqlite leaves `_execute` unannotated
    on_thread = cast(Callable[..., Awaitable[None]], conn._execute)
    await on_thread(_in_thread, conn._conn, body)
