"""Group commit: the one task that writes to the spool.

One job: turn many concurrent requests into few fsyncs and transactions.

API: `Writer(conn, store, stats, rules=None)`; `start()`; `await submit(kind,
payload)` returns the op's result; `await stop()` drains what is queued,
then exits. Kinds: ENQUEUE (payload `PendingMessage`, result its queue id),
LEASE ((now, limit) → list[QueuedRecipient]), RELEASE (list of (id, idx)),
RECORD ((list of RecipientUpdate, list of AddressOutcome)), ASYNC
(`AsyncReport` → bool: False when the recipient is unknown), RECLAIM
(None → segments unlinked), STEER (`SteerOp` → recipients moved: the
operator moves of filters.py). Address outcomes (suppression, suppressions.py)
are applied in the same transaction as the recipient rows they came with.

One batch = everything waiting when the writer wakes (up to MAX_BATCH ops
or MAX_BATCH_BYTES of bodies):
  1. all new bodies go to the store in ONE append + fdatasync;
  2. all ops run in ONE SQLite transaction (BEGIN IMMEDIATE … COMMIT, and
     COMMIT fsyncs the WAL: synchronous=FULL — for batches with enqueues;
     batches of only leases/releases/records commit with NORMAL, no fsync,
     see `_transaction`);
  3. then every future is resolved. Nothing is acknowledged before 1 and 2.

Invariants:
- Only this task writes; so leases never overlap, and reclaim never races an
  append (it runs between batches, with the live set read on this
  connection).
- A failed body append fails only that batch's enqueues; a failed
  transaction is rolled back and fails every op of the batch, each with
  `StorageError` (disk_full when ENOSPC/EDQUOT/SQLITE_FULL). The writer keeps
  serving later batches either way.
- Orphan bodies of a failed transaction stay in the segment as garbage;
  recovery and reclaim deal with them (crash states S1–S3, __init__.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import aiosqlite

from mta.core.envelope import AddressOutcome, QueuedRecipient, RecipientUpdate
from mta.core.errors import StorageError
from mta.spool import filters, index
from mta.spool.suppressions import RulesLike, apply_outcomes
from mta.spool.faults import storage_error
from mta.spool.segments import BodyStore

log = logging.getLogger("mta.spool")

ENQUEUE, LEASE, RELEASE, RECORD, RECLAIM = "enqueue", "lease", "release", "record", "reclaim"
ASYNC, STEER = "async", "steer"
MAX_BATCH = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024
_STOP = object()


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An enqueue request with its id already chosen (NewMessage + metadata)."""
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    received_at: float
    credential: str | None
    listener: str
    client_ip: str
    is_dsn: bool
    dsn_for: str | None = None            # original queue id when this is a DSN
    dsn_mark: tuple[str, tuple[int, ...], str] | None = None   # (queue id, idxs, kind)
    suppressed: tuple[tuple[int, str], ...] = ()   # (rcpt idx, reply): inserted final


@dataclass(frozen=True, slots=True)
class AsyncReport:
    """A bounce or complaint that arrived by mail (Spool.record_async)."""
    queue_id: str
    rcpt_idx: int
    state: str                  # "bounced" | "" (recipient state unchanged)
    attempt_state: str          # what the attempts row says: async_bounce | complaint | …
    reply: str | None
    detail: str
    at: float
    outcomes: tuple[AddressOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class SteerOp:
    """An operator move (index.OPERATOR_MOVES) of the recipients a filter selects."""
    action: str                 # hold | release | retry | bounce | delete
    filter: filters.MessageFilter
    now: float
    reply: str | None = None    # bounce: the wire reply the DSN will quote


@dataclass(slots=True)
class SpoolStats:
    """Counters for tests and metrics (a batch = one writer wake-up)."""
    batches: int = 0
    commits: int = 0          # SQLite transactions committed
    fsyncs: int = 0           # body-store append+fdatasync calls
    ops: int = 0
    enqueued: int = 0
    max_batch: int = 0
    failed_batches: int = 0


class _Op:
    __slots__ = ("kind", "payload", "future")

    def __init__(self, kind: str, payload: Any, future: asyncio.Future):
        self.kind, self.payload, self.future = kind, payload, future


class Writer:
    def __init__(self, conn: aiosqlite.Connection, store: BodyStore, stats: SpoolStats,
                 rules: RulesLike | None = None):
        self._conn = conn
        self._store = store
        self._stats = stats
        self._rules = rules
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._sync = "FULL"   # what index.connect() set

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mta-spool-writer")

    async def submit(self, kind: str, payload: Any) -> Any:
        if self._closing:
            raise StorageError("spool is closed")
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
        self._queue.put_nowait(_STOP)
        if self._task is not None:
            await self._task

    # -- the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            size = len(first.payload.body) if first.kind == ENQUEUE else 0
            while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES and not self._queue.empty():
                op = self._queue.get_nowait()
                if op is _STOP:
                    stopping = True
                    break
                batch.append(op)
                if op.kind == ENQUEUE:
                    size += len(op.payload.body)
            try:
                await self._commit(batch)
            except BaseException as exc:   # a bug here must not wedge every future caller
                log.exception("spool writer: batch failed unexpectedly")
                err = storage_error(exc, "spool writer")
                for op in batch:
                    _fail(op, err)
                if isinstance(exc, asyncio.CancelledError):
                    raise
        # Anyone who raced stop() gets an answer instead of hanging.
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if op is not _STOP:
                _fail(op, StorageError("spool is closed"))

    async def _commit(self, batch: list[_Op]) -> None:
        stats = self._stats
        stats.batches += 1
        stats.ops += len(batch)
        stats.max_batch = max(stats.max_batch, len(batch))

        enqueues = [op for op in batch if op.kind == ENQUEUE]
        others = [op for op in batch if op.kind not in (ENQUEUE, RECLAIM)]
        reclaims = [op for op in batch if op.kind == RECLAIM]

        locations: list[tuple[int, int, int]] = []
        if enqueues:
            try:
                locations = await self._store.append_many(
                    [(op.payload.queue_id, op.payload.body) for op in enqueues])
                stats.fsyncs += 1
            except Exception as exc:
                err = storage_error(exc, "writing message bodies")
                log.error("spool: %s", err)
                stats.failed_batches += 1
                for op in enqueues:
                    _fail(op, err)
                enqueues = []

        db_ops = enqueues + others
        if db_ops:
            try:
                results = await self._transaction(enqueues, locations, others)
            except Exception as exc:
                err = storage_error(exc, "committing the spool index")
                log.error("spool: %s", err)
                stats.failed_batches += 1
                for op in db_ops:
                    _fail(op, err)
            else:
                stats.commits += 1
                stats.enqueued += len(enqueues)
                for op in enqueues:
                    _resolve(op, op.payload.queue_id)
                for op, result in zip(others, results):
                    _resolve(op, result)

        for op in reclaims:
            try:
                _resolve(op, await self._reclaim())
            except Exception as exc:
                _fail(op, storage_error(exc, "reclaiming segments"))

    async def _transaction(self, enqueues: list[_Op], locations, others: list[_Op]) -> list[Any]:
        conn = self._conn
        # Only an acceptance (or a DSN with its mark) must be durable before
        # we answer: a batch without enqueues commits with synchronous=NORMAL
        # (no fsync). Leases are reset by recovery anyway, and a lost
        # delivery record only re-sends (the accepted duplicate of DESIGN §3,
        # like Postfix not fsyncing its queue file unlink). A process crash
        # loses nothing either way: the WAL frames are in the page cache; and
        # the next FULL commit fsyncs the WAL up to and including them.
        sync = "FULL" if enqueues else "NORMAL"
        if sync != self._sync:
            await conn.execute(f"PRAGMA synchronous={sync}")
            self._sync = sync
        await conn.execute("BEGIN IMMEDIATE")
        try:
            touched: set[str] = set()
            if enqueues:
                await self._insert(enqueues, locations, touched)
            results = []
            # Ops of one kind share one executemany; leases need their own SELECT.
            releases = [pair for op in others if op.kind == RELEASE for pair in op.payload]
            if releases:
                await conn.executemany(index.SQL_RELEASE, releases)
            updates = [u for op in others if op.kind == RECORD for u in op.payload[0]]
            if updates:
                await self._record(updates, touched)
            outcomes = [o for op in others if op.kind == RECORD for o in op.payload[1]]
            if outcomes:
                await apply_outcomes(conn, outcomes, self._rules)
            known = {id(op): await self._record_async(op.payload, touched)
                     for op in others if op.kind == ASYNC}
            for op in others:
                if op.kind == STEER:
                    known[id(op)] = await self._steer(op.payload, touched)
            if touched:
                await conn.executemany(index.SQL_RECOMPUTE_FLAGS, [(mid,) for mid in touched])
            for op in others:
                if op.kind == LEASE:
                    results.append(await self._lease(*op.payload))
                else:
                    results.append(known.get(id(op)))
            await conn.execute("COMMIT")
        except BaseException:
            try:
                await conn.execute("ROLLBACK")
            except Exception:   # the failed statement may already have ended the txn
                pass
            raise
        return results

    async def _insert(self, enqueues: list[_Op], locations, touched: set[str]) -> None:
        messages, recipients, suppressed, dsn_sent, delay_sent = [], [], [], [], []
        for op, (segment, offset, length) in zip(enqueues, locations):
            m: PendingMessage = op.payload
            messages.append((m.queue_id, m.sender, m.received_at, len(m.body), segment, offset, length,
                             m.credential, m.listener, m.client_ip, int(m.is_dsn), m.dsn_for))
            why = dict(m.suppressed)
            for idx, address in enumerate(m.recipients):
                domain = address.rpartition("@")[2]
                if idx in why:
                    suppressed.append((m.queue_id, idx, address, domain, m.received_at, why[idx],
                                       m.received_at))
                else:
                    recipients.append((m.queue_id, idx, address, domain, m.received_at, m.received_at))
            if why:
                touched.add(m.queue_id)   # all suppressed → done (and body dead) at once
            if m.dsn_mark is not None:
                orig, idxs, kind = m.dsn_mark
                target = dsn_sent if kind == "failure" else delay_sent
                target.extend((orig, i) for i in idxs)
                touched.add(orig)
        conn = self._conn
        await conn.executemany(index.SQL_INSERT_MESSAGE, messages)
        await conn.executemany(index.SQL_INSERT_RECIPIENT, recipients)
        if suppressed:
            await conn.executemany(index.SQL_INSERT_SUPPRESSED_RECIPIENT, suppressed)
        if dsn_sent:
            await conn.executemany(index.SQL_MARK_DSN_SENT, dsn_sent)
        if delay_sent:
            await conn.executemany(index.SQL_MARK_DELAY_SENT, delay_sent)

    async def _record(self, updates: Sequence[RecipientUpdate], touched: set[str]) -> None:
        now = time.time()   # bookkeeping only (updated_at), never a decision
        attempts, rows = [], []
        for u in updates:
            reply = str(u.reply) if u.reply is not None else None
            inc = 1 if u.counts_attempt else 0
            if inc:
                attempts.append((u.queue_id, u.rcpt_idx, u.attempted_at, u.duration, u.state, reply,
                                 u.remote_host, u.remote_ip, u.tls))
            rows.append((u.state, inc, u.next_attempt, reply, inc, u.remote_host, inc, u.tls,
                         u.attempted_at or now, u.queue_id, u.rcpt_idx))
            touched.add(u.queue_id)
        if attempts:
            await self._conn.executemany(index.SQL_INSERT_ATTEMPT, attempts)
        cur = await self._conn.executemany(index.SQL_RECORD, rows)
        if cur.rowcount != len(rows):
            # Final states are terminal (index.STATE_TRANSITIONS): a late or
            # duplicate report for a finished recipient is kept as an attempt
            # row but does not move the recipient.
            log.warning("spool: %d of %d recipient updates ignored (unknown or already final)",
                        len(rows) - cur.rowcount, len(rows))

    async def _record_async(self, r: AsyncReport, touched: set[str]) -> bool:
        conn = self._conn
        rows = await conn.execute_fetchall(index.SQL_RECIPIENT_STATE, (r.queue_id, r.rcpt_idx))
        if not rows:
            log.warning("spool: asynchronous %s for unknown recipient %s/%d ignored",
                        r.attempt_state, r.queue_id, r.rcpt_idx)
            return False
        old = rows[0][0]
        await conn.execute(index.SQL_INSERT_ASYNC_ATTEMPT,
                           (r.queue_id, r.rcpt_idx, r.at, r.attempt_state, r.reply, r.detail))
        if r.state and r.state in index.ASYNC_TRANSITIONS.get(old, ()):
            await conn.execute(index.SQL_ASYNC_BOUNCE, (r.reply, time.time(), r.queue_id, r.rcpt_idx))
            touched.add(r.queue_id)
            log.info("spool: %s/%d %s -> %s (asynchronous bounce)", r.queue_id, r.rcpt_idx, old, r.state)
        elif r.state:
            log.info("spool: asynchronous bounce for %s/%d kept as an attempt: already %s",
                     r.queue_id, r.rcpt_idx, old)
        if r.outcomes:
            await apply_outcomes(conn, r.outcomes, self._rules)
        return True

    async def _steer(self, op: SteerOp, touched: set[str]) -> int:
        """One operator move inside the batch's transaction. Targets are read
        and updated in the same transaction (nothing else writes), and each
        UPDATE re-checks state and lease anyway."""
        conn = self._conn
        froms, to = index.OPERATOR_MOVES[op.action]
        sql, params = filters.targets_sql(op.filter, froms)
        rows = await conn.execute_fetchall(sql, params)
        if not rows and not (op.action == "delete" and op.filter.ids):
            return 0
        for mid, idx, old in rows:
            index.check_transition(old, to)
            log.debug("spool: %s/%d %s -> %s (operator %s)", mid, idx, old, to, op.action)
        pairs = [(mid, idx) for mid, idx, _ in rows]
        now = op.now
        if op.action == "hold":
            cur = await conn.executemany(index.SQL_OP_HOLD, [(now, *p) for p in pairs])
        elif op.action == "release":
            cur = await conn.executemany(index.SQL_OP_RELEASE, [(now, now, *p) for p in pairs])
        elif op.action == "retry":
            cur = await conn.executemany(index.SQL_OP_RETRY, [(now, now, *p) for p in pairs])
        elif op.action == "bounce":
            cur = await conn.executemany(index.SQL_OP_BOUNCE, [(op.reply, now, *p) for p in pairs])
            await conn.executemany(index.SQL_INSERT_OPERATOR_ATTEMPT,
                                   [(*p, now, to, op.reply) for p in pairs])
        elif op.action == "delete":
            cur = await conn.executemany(index.SQL_OP_DELETE, [(now, *p) for p in pairs])
            await conn.executemany(index.SQL_INSERT_OPERATOR_ATTEMPT,
                                   [(*p, now, to, None) for p in pairs])
            # A deleted message owes nobody a DSN, not even for recipients
            # that bounced before: that is what lets its body die now. Messages
            # named by id lose their owed DSN even when nothing was pending.
            dead = {m for m, _ in pairs} | set(op.filter.ids)
            await conn.executemany(index.SQL_OP_CANCEL_DSN, [(mid,) for mid in dead])
            touched.update(dead)
        else:
            raise ValueError(f"unknown operator action {op.action!r}")
        if op.action == "bounce":
            # hold/release/retry stay within the pending states, so done and
            # body_live cannot change; bounce and delete can end a message.
            touched.update(mid for mid, _ in pairs)
        moved = cur.rowcount if pairs else 0
        log.info("spool: operator %s: %d recipients %s -> %s", op.action, moved,
                 "/".join(sorted(froms)), to)
        return moved

    async def _lease(self, now: float, limit: int) -> list[QueuedRecipient]:
        rows = await self._conn.execute_fetchall(index.SQL_LEASE_SELECT, (now, limit))
        if not rows:
            return []
        await self._conn.executemany(index.SQL_LEASE_SET, [(r[0], r[1]) for r in rows])
        return [QueuedRecipient(queue_id=r[0], rcpt_idx=r[1], address=r[2], domain=r[3],
                                sender=r[4], attempts=r[5], received_at=r[6],
                                next_attempt=r[7], size=r[8]) for r in rows]

    async def _reclaim(self) -> int:
        rows = await self._conn.execute_fetchall(index.SQL_LIVE_SEGMENTS)
        return await self._store.reclaim({r[0] for r in rows})


def _consume(fut: asyncio.Future) -> None:
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
