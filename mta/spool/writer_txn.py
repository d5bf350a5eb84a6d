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
    await on_thread(conn, fn, *args) -> fn(*args)
        one call of the blocking `fn` on `conn`'s own thread, one hop: the
        writer runs a whole batch there (its segment append + fdatasync,
        then `transaction`), so the loop is not visited between the two
    transaction(raw, body) -> None      (blocking, on the connection's thread)
        `body(statements)` is the transaction's work: a coroutine function
        whose statements go to `statements` (reads.Statements: execute,
        executemany, execute_fetchall, awaited as on an aiosqlite
        connection). It runs inside BEGIN IMMEDIATE … COMMIT on `raw`; on
        any exception the transaction is rolled back and the exception
        raised here.
    await run_transaction(conn, body) -> None   `transaction` in one hop
    SqliteStatements(raw)  the reads.Statements face of a sqlite3 connection
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
from typing import Any, TypeVar, cast

import aiosqlite

from mta.spool.reads import Statements

T = TypeVar("T")
Body = Callable[[Statements], Coroutine[Any, Any, None]]


class SqliteStatements:
    """reads.Statements over a sqlite3 connection, executed synchronously
    (awaiting them never suspends)."""

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


def transaction(raw: sqlite3.Connection, body: Body) -> None:
    """BEGIN IMMEDIATE, `body`'s statements, COMMIT, in the calling thread
    (the connection's own: `on_thread`)."""
    raw.execute("BEGIN IMMEDIATE")
    try:
        run_to_end(body(SqliteStatements(raw)))
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:     # a failed statement may already have ended it
            raw.execute("ROLLBACK")
        raise


async def on_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on `conn`'s thread, in one hop; nothing else runs on the
    connection meanwhile. `fn` may use `conn`'s sqlite3 connection (raw)."""
    # aiosqlite leaves `_execute` unannotated
    execute = cast(Callable[..., Awaitable[T]], conn._execute)
    return await execute(fn, *args)


def raw_connection(conn: aiosqlite.Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `conn`, for functions run by `on_thread`
    (only there: it belongs to that thread)."""
    return conn._conn


async def run_transaction(conn: aiosqlite.Connection, body: Body) -> None:
    """One transaction running `body`, in one hop to `conn`'s thread."""
    await on_thread(conn, transaction, raw_connection(conn), body)
