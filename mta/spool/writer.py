"""Group commit: the one task that writes to the spool.

One job: turn many concurrent requests into few fsyncs and transactions.
What each kind of op writes is its handler's (the table `HANDLERS`); this
module only batches, syncs, commits and answers.

API: `Writer(conn, store, stats, rules=None, *, sync_index=None,
checkpointer=None)`; `start()`; `await submit(kind, payload)` returns the
op's result; `await stop()` drains what is queued, then exits. `sync_index`
(blocking, run in a thread) makes every commit so far durable
(index.sync_wal); `checkpointer` (index.SqliteCheckpointer) takes the
checkpoints off the writer's connection (wal.py). `writer.wal`: the WAL
upkeep. Kinds and payloads are ops.py's:
  ENQUEUE  PendingMessage -> its queue id            acceptance.insert
  RELEASE  [(id, idx), …] -> None                    attempts.release
  RECORD   (updates, outcomes) -> None               attempts.record
  ASYNC    AsyncReport -> bool                       attempts.record_async
  STEER    SteerOp -> recipients moved               steering.steer
  EVENTS   [LedgerEvent, …] -> None                  ledger.append
  WEBHOOK  WebhookUpdate -> None                     ledger.set_webhook
  PRUNE    PruneOp -> rows deleted                   ledger.prune
  LEASE    (now, limit) -> [QueuedRecipient]         attempts.lease
  RECLAIM  None -> segments unlinked                 (the body store, after COMMIT,
                                                     once `sync_index` has run)

One batch = everything waiting when the writer wakes (up to MAX_BATCH ops
or MAX_BATCH_BYTES of bodies). Steps 1 and 2 run as ONE call on the SQLite
connection's thread (`_Hop`, writer_txn.on_thread): one hop off the event
loop and back per batch, so neither the append's return nor any statement
waits for a loop busy with sessions and deliveries (issue 12, C=1):
  1. all new records (envelope + body, replay.envelope) go to the store in
     ONE append + fdatasync (store.append_now, in that thread): the batch's
     one fsync;
  2. then all ops run in ONE SQLite transaction (BEGIN IMMEDIATE … COMMIT
     with synchronous=NORMAL: the WAL is written, not fsynced; see
     `_Hop._body`): each kind's handler in HANDLERS order gets all ops of
     its kind, in submission order; then done/body_live are recomputed for
     every message a handler touched;
  3. then, back on the loop, every future is resolved. Nothing is
     acknowledged before 1 and 2.
Within a transaction events are written in the order their changes are
applied (HANDLERS order), so seq order is each message's true order.
The WAL upkeep (wal.py) runs beside the writer: the WAL is fsynced
WAL_SYNC_INTERVAL after the first commit it does not cover, so a power loss
takes at most about that much of the index's history (acceptances come back
from the log: crash state S4p; the rest is redone, as S6 says), and
checkpoints run on a connection of their own, not in the writer's COMMITs
(only when the WAL outgrows its bound does the writer run one, between two
batches).

Invariants:
- Only this task writes; so leases never overlap, and reclaim never races an
  append (it runs after the batch's hop has returned, with the live set
  read on this connection; the store's lock would hold it back anyway).
- A failed body append fails only that batch's enqueues; a failed
  transaction is rolled back and fails every op of the batch, each with
  `StorageError` (disk_full when ENOSPC/EDQUOT/SQLITE_FULL). The writer keeps
  serving later batches either way.
- Records of a failed transaction stay in the segment past its mark: the
  next batch committed there moves the mark past them (garbage, reclaimed
  with the segment); a restart before that replays them (crash state S3r,
  __init__.py: the client got 451, the message may come back).
- A segment is unlinked only after `sync_index`: the index state that
  made it dead must not be undone by a power loss once its records are gone.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite

from mta.core.errors import StorageError
from mta.core.logfmt import event
from mta.spool import acceptance, attempts, ledger, queue_sql, replay, steering
from mta.spool.faults import storage_error
from mta.spool.ops import (
    ASYNC,
    ENQUEUE,
    EVENTS,
    LEASE,
    PRUNE,
    RECLAIM,
    RECORD,
    RELEASE,
    STEER,
    WEBHOOK,
    Handler,
    Placed,
    Txn,
)
from mta.spool.reads import Statements, fetchall
from mta.spool.segments import BodyStore, Location
from mta.spool.suppressions import RulesLike
from mta.spool.wal import Checkpointer, WalUpkeep
from mta.spool.writer_txn import Body, on_thread, raw_connection, transaction

log = logging.getLogger("mta.spool")

MAX_BATCH = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024

# The ops that run inside the batch's transaction, in this order.
HANDLERS: tuple[tuple[str, Handler], ...] = (
    (ENQUEUE, acceptance.insert),
    (RELEASE, attempts.release),
    (RECORD, attempts.record),
    (ASYNC, attempts.record_async),
    (STEER, steering.steer),
    (EVENTS, ledger.append),
    (WEBHOOK, ledger.set_webhook),
    (PRUNE, ledger.prune),
    (LEASE, attempts.lease),
)
_IN_TRANSACTION = frozenset(kind for kind, _ in HANDLERS)


@dataclass(slots=True)
class SpoolStats:
    """Counters for tests and metrics (a batch = one writer wake-up)."""
    batches: int = 0
    commits: int = 0          # SQLite transactions committed
    fsyncs: int = 0           # body-store append+fdatasync calls
    wal_syncs: int = 0        # fsyncs of the index's WAL (interval, reclaim)
    checkpoints: int = 0      # background checkpoints (wal.py)
    inline_checkpoints: int = 0   # checkpoints the writer had to run itself
    ops: int = 0
    enqueued: int = 0
    duplicates: int = 0       # idempotent repeats answered with the original id
    max_batch: int = 0
    failed_batches: int = 0


class _Wake:
    """The queue item that wakes an idle writer when WAL upkeep needs its
    connection (wal.py: an inline checkpoint)."""


_WAKE = _Wake()


class _Op:
    __slots__ = ("future", "kind", "payload", "result")

    def __init__(self, kind: str, payload: Any, future: asyncio.Future[Any]):
        self.kind, self.payload, self.future = kind, payload, future
        self.result: Any = None


class Writer:
    def __init__(self, conn: aiosqlite.Connection, store: BodyStore, stats: SpoolStats,
                 rules: RulesLike | None = None, *,
                 sync_index: Callable[[], None] | None = None,
                 checkpointer: Checkpointer | None = None):
        self._conn = conn
        self._store = store
        self._stats = stats
        self._rules = rules
        self._sync_index = sync_index
        self._checkpoints_beside = checkpointer is not None
        # None: stop; _WAKE: WAL upkeep is due (no op)
        self._queue: asyncio.Queue[_Op | _Wake | None] = asyncio.Queue()
        self.wal = WalUpkeep(sync_index, checkpointer, lambda: self._queue.put_nowait(_WAKE),
                             stats)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mta-spool-writer")

    async def submit(self, kind: str, payload: Any) -> Any:
        if self._closing:
            raise StorageError("spool is closed")
        if kind not in _IN_TRANSACTION and kind != RECLAIM:
            raise ValueError(f"unknown spool op {kind!r}")
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._queue.put_nowait(_Op(kind, payload, fut))
        # A cancelled caller (client hung up) does not cancel the write: the op
        # is already in a batch whose other members depend on it committing.
        return await asyncio.shield(fut)

    async def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    # -- the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        # Every transaction of this connection commits without fsync from
        # here on: the record of truth of an acceptance is its segment
        # record (the package docstring, "Commit point"; S4p).
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        if self._checkpoints_beside:
            await self._conn.execute("PRAGMA wal_autocheckpoint=0")
        stopping = False
        while not stopping:
            first = await self._next()
            if first is None:
                break
            batch, stopping = self._gather(first)
            try:
                await self._commit(batch)
            except BaseException as exc:   # a bug here must not wedge every future caller
                log.exception("event=spool_batch_failed")
                err = storage_error(exc, "spool writer")
                for op in batch:
                    _fail(op, err)
                if isinstance(exc, asyncio.CancelledError):
                    raise
        await self.wal.close()
        # Anyone who raced stop() gets an answer instead of hanging.
        while not self._queue.empty():
            late = self._queue.get_nowait()
            if isinstance(late, _Op):
                _fail(late, StorageError("spool is closed"))

    async def _next(self) -> _Op | None:
        """The next op; first the WAL upkeep that is due (wal.py wakes an
        idle writer for it)."""
        while True:
            await self.wal.between_batches(self._conn)
            item = await self._queue.get()
            if not isinstance(item, _Wake):
                return item

    def _gather(self, first: _Op) -> tuple[list[_Op], bool]:
        """The batch `first` opens: what is waiting, within the limits; and
        whether stop() was found."""
        batch = [first]
        size = first.payload.size if first.kind == ENQUEUE else 0
        while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES and not self._queue.empty():
            op = self._queue.get_nowait()
            if op is None:
                return batch, True
            if isinstance(op, _Wake):
                continue          # the upkeep runs before the next batch anyway
            batch.append(op)
            if op.kind == ENQUEUE:
                size += op.payload.size
        return batch, False

    def _failed(self, ops: list[_Op], exc: BaseException, doing: str, name: str) -> None:
        """A step of the hop failed: log it once, fail its ops (StorageError)."""
        err = storage_error(exc, doing)
        event(log, name, logging.ERROR, error=err)
        self._stats.failed_batches += 1
        for op in ops:
            _fail(op, err)

    async def _commit(self, batch: list[_Op]) -> None:
        stats = self._stats
        stats.batches += 1
        stats.ops += len(batch)
        stats.max_batch = max(stats.max_batch, len(batch))
        # Steps 1 and 2 in one hop on the connection's thread (_Hop.run).
        hop = _Hop(batch, self._store, self._rules)
        await on_thread(self._conn, hop.run, raw_connection(self._conn))
        if hop.append_error is not None:
            self._failed(hop.enqueues, hop.append_error, "writing message bodies",
                         "spool_write_failed")
        elif hop.enqueues:
            stats.fsyncs += 1
        if hop.txn_error is not None:
            self._failed(hop.db_ops, hop.txn_error, "committing the spool index",
                         "spool_commit_failed")
        elif hop.db_ops:
            stats.commits += 1
            self.wal.committed()
            for op in hop.db_ops:
                if op.kind == ENQUEUE:
                    if op.result == op.payload.queue_id:
                        stats.enqueued += 1
                    else:
                        stats.duplicates += 1
                _resolve(op, op.result)
        for op in batch:
            if op.kind == RECLAIM:
                try:
                    _resolve(op, await self._reclaim())
                except Exception as exc:
                    _fail(op, storage_error(exc, "reclaiming segments"))

    async def _reclaim(self) -> int:
        rows = await fetchall(self._conn, queue_sql.SQL_LIVE_SEGMENTS)
        unlinked = await self._store.reclaim({r[0] for r in rows},
                                             before_unlink=self._sync_before_unlink)
        return unlinked

    def _sync_before_unlink(self) -> None:
        """In the store's thread, before it unlinks dead segments (S9)."""
        if self._sync_index is not None:
            self._sync_index()
            self._stats.wal_syncs += 1


class _Hop:
    """Steps 1 and 2 of one batch, run by `run` on the writer connection's
    thread in one hop (writer_txn.on_thread): the loop is not visited
    between the fdatasync and BEGIN, nor between the statements. Touches no
    future and no counter (those are the loop's: `_commit` reads the
    outcome here); the store's appends and reclaims are serialised (the
    writer awaits this hop before it reclaims; segments.py's lock)."""

    __slots__ = ("append_error", "db_ops", "enqueues", "ops", "rules", "store", "txn_error")

    def __init__(self, batch: list[_Op], store: BodyStore, rules: RulesLike | None):
        self.ops, self.store, self.rules = batch, store, rules
        self.enqueues = [op for op in batch if op.kind == ENQUEUE]
        self.db_ops: list[_Op] = []
        self.append_error: Exception | None = None
        self.txn_error: Exception | None = None

    def run(self, raw: sqlite3.Connection) -> None:
        placed = self._append()
        self.db_ops = [op for op in self.ops if op.kind != RECLAIM
                       and (op.kind != ENQUEUE or id(op) in placed)]
        if self.db_ops:
            try:
                transaction(raw, self._body(placed))
            except Exception as exc:
                self.txn_error = exc

    def _append(self) -> dict[int, Placed]:
        """Step 1: every new body in one append + fdatasync. Returns where
        each went (by id of its op); on failure (`append_error`) nothing:
        the batch's other ops still commit."""
        if not self.enqueues:
            return {}
        try:
            locations: list[Location] = self.store.append_now(
                [(op.payload.queue_id, op.payload.body, op.payload.tail,
                  replay.envelope(op.payload)) for op in self.enqueues])
        except Exception as exc:
            self.append_error = exc
            return {}
        return {id(op): Placed(op.payload, *loc) for op, loc in zip(self.enqueues, locations)}

    def _body(self, placed: dict[int, Placed]) -> Body:
        """Step 2: every op's handler, in one transaction; results land in
        `op.result`."""
        # synchronous=NORMAL (set in Writer._run): no fsync in the COMMIT. An
        # acceptance is already durable in its record (step 1), which
        # recovery replays if a power loss takes this commit (S4p). Leases
        # are reset by recovery anyway, and a lost delivery record only
        # re-sends (the accepted duplicate of ARCHITECTURE §4, like Postfix
        # not fsyncing its queue file unlink). A process crash loses
        # nothing: the WAL frames are in the page cache. `Writer.wal` fsyncs
        # them within WAL_SYNC_INTERVAL.
        by_kind: dict[str, list[_Op]] = {}
        for op in self.db_ops:
            by_kind.setdefault(op.kind, []).append(op)
        rules = self.rules

        async def body(conn: Statements) -> None:
            txn = Txn(conn, rules)
            for kind, handler in HANDLERS:
                mine = by_kind.get(kind)
                if not mine:
                    continue
                payloads = [placed[id(op)] if kind == ENQUEUE else op.payload for op in mine]
                for op, result in zip(mine, await handler(txn, payloads), strict=True):
                    op.result = result
            if txn.touched:
                await conn.executemany(queue_sql.SQL_RECOMPUTE_FLAGS,
                                       [(mid,) for mid in txn.touched])

        return body


def _consume(fut: asyncio.Future[Any]) -> None:
    # If the caller was cancelled nobody awaits the shielded future; fetching
    # the exception here keeps asyncio from logging it as never retrieved
    # (the writer has already logged the batch failure).
    if not fut.cancelled():
        fut.exception()


def _resolve(op: _Op, result: Any) -> None:
    if not op.future.done():
        op.future.set_result(result)


def _fail(op: _Op, exc: BaseException) -> None:
    if not op.future.done():
        # One exception object per waiter: raising a shared instance in many
        # tasks would tangle their tracebacks.
        if isinstance(exc, StorageError):
            exc = StorageError(str(exc), disk_full=exc.disk_full)
        op.future.set_exception(exc)
