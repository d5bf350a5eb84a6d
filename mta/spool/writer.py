"""Group commit: the one task that writes to the spool.

One job: turn many concurrent requests into few fsyncs and transactions.

API: `Writer(conn, store, stats, rules=None)`; `start()`; `await submit(kind,
payload)` returns the op's result; `await stop()` drains what is queued,
then exits. Kinds: ENQUEUE (payload `PendingMessage`, result its queue id),
LEASE ((now, limit) → list[QueuedRecipient]), RELEASE (list of (id, idx)),
RECORD ((list of RecipientUpdate, list of AddressOutcome)), ASYNC
(`AsyncReport` → bool: False when the recipient is unknown), RECLAIM
(None → segments unlinked), STEER (`SteerOp` → recipients moved: the
operator moves of filters.py), EVENTS (list of LedgerEvent → None), PRUNE
(`PruneOp` → rows deleted), WEBHOOK ((name, {field: value}) → None).
Address outcomes (suppression, suppressions.py) are applied in the same
transaction as the recipient rows they came with.

The ledger (issue 6): every op that changes a recipient or message writes
its events (the `events` table, index.py) in the same transaction, so the
ledger and the queue never disagree; a rolled-back batch leaves neither.
Event rows are one executemany per kind of op per batch; an event about an
existing recipient takes its address and the message's credential from the
rows in the same INSERT … SELECT (no read round trip). Within a transaction
events are written in the order their changes are applied, so seq order is
each message's true order.
  ENQUEUE  received (+ queued | suppressed per recipient, idx order);
           a DSN's mark: dsn_sent per marked recipient of the ORIGINAL;
           an idempotent duplicate: received with duplicate_of, nothing else
  RECORD   deferred | delivered | bounced | expired | suppressed per update
           that moves a recipient (EVENT_OF_STATE); none for a put-back
           (QUEUED, counts_attempt=False) or an ignored update (already final)
  ASYNC    bounced (sync=false) when the recipient moved; complained when an
           outcome is a complaint
  STEER    held | released | bounced (by=operator) | deleted per moved
           recipient (EVENT_OF_MOVE; retry writes none)
  EVENTS   the caller's events as given (no state change: rejected, suppressed at RCPT)

Idempotent submission: an ENQUEUE with an idempotency key whose (credential,
key) row is younger than its window (or was inserted earlier in the same
batch: one writer, so racing duplicates meet here) inserts nothing and
resolves with the ORIGINAL queue id; its body is already in the segment, as
unreferenced garbage (like S3's orphans, reclaimed with its segment).

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
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import aiosqlite

from mta.core.logfmt import event
from mta.core.envelope import (BOUNCED, DELIVERED, QUEUED, AddressOutcome, QueuedRecipient,
                               RecipientUpdate)
from mta.core.errors import StorageError
from mta.spool import filters, index
from mta.spool.suppressions import RulesLike, apply_outcomes
from mta.spool.faults import storage_error
from mta.spool.segments import BodyStore

log = logging.getLogger("mta.spool")

ENQUEUE, LEASE, RELEASE, RECORD, RECLAIM = "enqueue", "lease", "release", "record", "reclaim"
ASYNC, STEER = "async", "steer"
EVENTS, PRUNE, WEBHOOK = "events", "prune", "webhook"
MAX_BATCH = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024
_KEY_CHUNK = 400   # (credential, key) pairs per lookup, well under SQLite's variable limit
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
    received_detail: str = "{}"           # JSON of the `received` event
    idempotency_key: str | None = None
    idempotency_window: float = 86400.0
    tail: Any = None                      # core.spill.SpillFile: the body past `body`

    @property
    def size(self) -> int:
        return len(self.body) + (self.tail.length if self.tail is not None else 0)


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
    event_detail: dict | None = None   # merged into the bounced/complained event


@dataclass(frozen=True, slots=True)
class SteerOp:
    """An operator move (index.OPERATOR_MOVES) of the recipients a filter selects."""
    action: str                 # hold | release | retry | bounce | delete
    filter: filters.MessageFilter
    now: float
    reply: str | None = None    # bounce: the wire reply the DSN will quote


@dataclass(frozen=True, slots=True)
class PruneOp:
    """Delete at most `batch` rows older than `before` from `table`."""
    table: str                  # "events" | "idempotency"
    before: float
    batch: int


@dataclass(slots=True)
class SpoolStats:
    """Counters for tests and metrics (a batch = one writer wake-up)."""
    batches: int = 0
    commits: int = 0          # SQLite transactions committed
    fsyncs: int = 0           # body-store append+fdatasync calls
    ops: int = 0
    enqueued: int = 0
    duplicates: int = 0       # idempotent repeats answered with the original id
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
            size = first.payload.size if first.kind == ENQUEUE else 0
            while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES and not self._queue.empty():
                op = self._queue.get_nowait()
                if op is _STOP:
                    stopping = True
                    break
                batch.append(op)
                if op.kind == ENQUEUE:
                    size += op.payload.size
            try:
                await self._commit(batch)
            except BaseException as exc:   # a bug here must not wedge every future caller
                log.exception("event=spool_batch_failed")
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
                    [(op.payload.queue_id, op.payload.body, op.payload.tail) for op in enqueues])
                stats.fsyncs += 1
            except Exception as exc:
                err = storage_error(exc, "writing message bodies")
                event(log, "spool_write_failed", logging.ERROR, error=err)
                stats.failed_batches += 1
                for op in enqueues:
                    _fail(op, err)
                enqueues = []

        db_ops = enqueues + others
        if db_ops:
            try:
                ids, results = await self._transaction(enqueues, locations, others)
            except Exception as exc:
                err = storage_error(exc, "committing the spool index")
                event(log, "spool_commit_failed", logging.ERROR, error=err)
                stats.failed_batches += 1
                for op in db_ops:
                    _fail(op, err)
            else:
                stats.commits += 1
                for op, qid in zip(enqueues, ids):
                    if qid == op.payload.queue_id:
                        stats.enqueued += 1
                    else:
                        stats.duplicates += 1
                    _resolve(op, qid)
                for op, result in zip(others, results):
                    _resolve(op, result)

        for op in reclaims:
            try:
                _resolve(op, await self._reclaim())
            except Exception as exc:
                _fail(op, storage_error(exc, "reclaiming segments"))

    async def _transaction(self, enqueues: list[_Op], locations,
                           others: list[_Op]) -> tuple[list[str], list[Any]]:
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
            ids: list[str] = []
            if enqueues:
                ids = await self._insert(enqueues, locations, touched)
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
            appended = [e for op in others if op.kind == EVENTS for e in op.payload]
            if appended:
                await conn.executemany(index.SQL_APPEND_EVENT, [
                    (e.at, e.type, e.queue_id, e.recipient, e.credential or "",
                     json.dumps(e.detail)) for e in appended])
            for op in others:
                if op.kind == WEBHOOK:
                    name, fields = op.payload
                    await conn.execute(index.set_webhook_sql(tuple(fields)), (name, *fields.values()))
                elif op.kind == PRUNE:
                    known[id(op)] = await self._prune(op.payload)
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
        return ids, results

    async def _insert(self, enqueues: list[_Op], locations, touched: set[str]) -> list[str]:
        """Insert the batch's messages with their events; returns each op's
        queue id (the original's, for an idempotent duplicate)."""
        conn = self._conn
        keys = await self._idempotency_lookup([op.payload for op in enqueues])
        messages, recipients, suppressed, dsn_sent, delay_sent = [], [], [], [], []
        received, dups, dsn_events, keys_put, ids = [], [], [], [], []
        for op, (segment, offset, length) in zip(enqueues, locations):
            m: PendingMessage = op.payload
            cred = m.credential or ""
            at = m.received_at
            if m.idempotency_key is not None:
                k = (cred, m.idempotency_key)
                hit = keys.get(k)
                if hit is not None and hit[1] >= at - m.idempotency_window:
                    orig = hit[0]
                    ids.append(orig)
                    detail = json.loads(m.received_detail)
                    detail["duplicate_of"] = orig
                    detail["discarded_id"] = m.queue_id
                    dups.append((at, "received", orig, "", cred, json.dumps(detail)))
                    event(log, "idempotent_repeat", discarded_id=m.queue_id, id=orig,
                          idempotency_key=m.idempotency_key, credential=cred)
                    continue
                keys[k] = (m.queue_id, at)   # a later duplicate in this batch finds it
                keys_put.append((cred, m.idempotency_key, m.queue_id, at))
            ids.append(m.queue_id)
            messages.append((m.queue_id, m.sender, at, m.size, segment, offset, length,
                             m.credential, m.listener, m.client_ip, int(m.is_dsn), m.dsn_for))
            received.append((at, "received", m.queue_id, "", cred, m.received_detail))
            why = dict(m.suppressed)
            for idx, address in enumerate(m.recipients):
                domain = address.rpartition("@")[2]
                if idx in why:
                    suppressed.append((m.queue_id, idx, address, domain, at, why[idx], at))
                else:
                    recipients.append((m.queue_id, idx, address, domain, at, at))
            if why:
                touched.add(m.queue_id)   # all suppressed → done (and body dead) at once
            if m.dsn_mark is not None:
                orig, idxs, kind = m.dsn_mark
                target = dsn_sent if kind == "failure" else delay_sent
                target.extend((orig, i) for i in idxs)
                touched.add(orig)
                dsn_events.extend((at, "dsn_sent", json.dumps(
                    {"rcpt_idx": i, "dsn_queue_id": m.queue_id, "kind": kind}), orig, i)
                    for i in idxs)
        if messages:
            await conn.executemany(index.SQL_INSERT_MESSAGE, messages)
        if recipients:
            await conn.executemany(index.SQL_INSERT_RECIPIENT, recipients)
        if suppressed:
            await conn.executemany(index.SQL_INSERT_SUPPRESSED_RECIPIENT, suppressed)
        if dsn_sent:
            await conn.executemany(index.SQL_MARK_DSN_SENT, dsn_sent)
        if delay_sent:
            await conn.executemany(index.SQL_MARK_DELAY_SENT, delay_sent)
        if keys_put:
            await conn.executemany(index.SQL_IDEMPOTENCY_PUT, keys_put)
        # Events: received, then each message's queued/suppressed built by
        # SQLite from the rows just inserted (one bound row per message, not
        # per recipient), then the duplicates' received.
        if received:
            await conn.executemany(index.SQL_INSERT_EVENT, received)
            await conn.executemany(index.SQL_ENQUEUE_RCPT_EVENTS,
                                   [(at, qid, cred) for at, _, qid, _, cred, _ in received])
        if dups:
            await conn.executemany(index.SQL_INSERT_EVENT, dups)
        if dsn_events:
            await conn.executemany(index.SQL_RCPT_EVENT, dsn_events)
        return ids

    async def _idempotency_lookup(self, pending: list[PendingMessage]) -> dict:
        """(credential, key) → (queue id, created) of the keys this batch
        names that the index holds (expired or not: the caller checks the
        window). One SELECT per batch that has keys; none otherwise."""
        pairs = list(dict.fromkeys((m.credential or "", m.idempotency_key)
                                   for m in pending if m.idempotency_key is not None))
        found: dict = {}
        for i in range(0, len(pairs), _KEY_CHUNK):
            chunk = pairs[i:i + _KEY_CHUNK]
            sql = index.SQL_IDEMPOTENCY_LOOKUP.format(pairs=",".join(["(?, ?)"] * len(chunk)))
            for cred, key, qid, created in await self._conn.execute_fetchall(
                    sql, [x for pair in chunk for x in pair]):
                found[(cred, key)] = (qid, created)
        return found

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
        events = _record_events(updates, now)
        if events:
            # Before the updates, under their own guard (state = 'queued'):
            # an update SQL_RECORD will ignore writes no event.
            await self._conn.executemany(index.SQL_RECORD_EVENT, events)
        cur = await self._conn.executemany(index.SQL_RECORD, rows)
        if cur.rowcount != len(rows):
            # Final states are terminal (index.STATE_TRANSITIONS): a late or
            # duplicate report for a finished recipient is kept as an attempt
            # row but does not move the recipient.
            event(log, "updates_ignored", logging.WARNING, ignored=len(rows) - cur.rowcount,
                  of=len(rows), why="unknown or already final")

    async def _record_async(self, r: AsyncReport, touched: set[str]) -> bool:
        conn = self._conn
        rows = await conn.execute_fetchall(index.SQL_RECIPIENT_FOR_EVENT, (r.queue_id, r.rcpt_idx))
        if not rows:
            event(log, "async_report_ignored", logging.WARNING, kind=r.attempt_state,
                  id=r.queue_id, rcpt_idx=r.rcpt_idx, why="unknown recipient")
            return False
        old, address, cred = rows[0]
        await conn.execute(index.SQL_INSERT_ASYNC_ATTEMPT,
                           (r.queue_id, r.rcpt_idx, r.at, r.attempt_state, r.reply, r.detail))
        events = []
        base = {"rcpt_idx": r.rcpt_idx, "reply": r.reply, "diagnostic": r.detail}
        if r.state and r.state in index.ASYNC_TRANSITIONS.get(old, ()):
            await conn.execute(index.SQL_ASYNC_BOUNCE, (r.reply, time.time(), r.queue_id, r.rcpt_idx))
            touched.add(r.queue_id)
            event(log, "async_bounce", id=r.queue_id, rcpt_idx=r.rcpt_idx, previous=old,
                  state=r.state)
            events.append(("bounced", {**base, "sync": False, "previous_state": old,
                                       **(r.event_detail or {})}))
        elif r.state:
            event(log, "async_bounce_kept", id=r.queue_id, rcpt_idx=r.rcpt_idx, already=old)
        if any(o.kind == "complaint" for o in r.outcomes):
            events.append(("complained", {**base, "feedback_type": None, **(r.event_detail or {})}))
        if events:
            await conn.executemany(index.SQL_INSERT_EVENT, [
                (r.at, etype, r.queue_id, address, cred, json.dumps(detail))
                for etype, detail in events])
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
            event(log, "operator_move", logging.DEBUG, id=mid, rcpt_idx=idx, previous=old,
                  state=to, action=op.action)
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
        etype = index.EVENT_OF_MOVE.get(op.action)
        if etype is not None and pairs:
            # After the update, for the rows now in the target state: the ones that moved.
            extra = {"reply": op.reply} if op.action == "bounce" else {}
            await conn.executemany(index.SQL_MOVE_EVENT, [
                (now, etype, json.dumps({"rcpt_idx": idx, "by": "operator", "previous_state": old,
                                         **extra}), mid, idx, to)
                for mid, idx, old in rows])
        moved = cur.rowcount if pairs else 0
        event(log, "operator_steer", action=op.action, recipients=moved,
              previous="/".join(sorted(froms)), state=to)
        return moved

    async def _prune(self, op: PruneOp) -> int:
        sql = index.SQL_PRUNE_EVENTS if op.table == "events" else index.SQL_PRUNE_IDEMPOTENCY
        cur = await self._conn.execute(sql, (op.before, op.batch))
        return cur.rowcount

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


def _record_events(updates: Sequence[RecipientUpdate], now: float) -> list[tuple]:
    """SQL_RECORD_EVENT params for the updates that move a recipient. The
    statement's guard sees the state before the batch; an update after one
    that already made its recipient final in this same list is skipped here
    (SQL_RECORD will ignore it), and attempts counts what earlier updates of
    the list added."""
    out = []
    final: set[tuple[str, int]] = set()
    incs: dict[tuple[str, int], int] = {}
    for u in updates:
        key = (u.queue_id, u.rcpt_idx)
        if key in final:
            continue
        inc = incs[key] = incs.get(key, 0) + (1 if u.counts_attempt else 0)
        if u.state != QUEUED:
            final.add(key)
        elif not u.counts_attempt:
            continue   # a put-back: no attempt, no change worth an event
        etype = index.EVENT_OF_STATE.get(u.state)
        if etype is None:
            continue
        reply = u.reply
        detail: dict[str, Any] = {"rcpt_idx": u.rcpt_idx,
                                  "reply": str(reply) if reply is not None else None}
        if u.state in (QUEUED, DELIVERED, BOUNCED):
            detail.update(remote_host=u.remote_host, remote_ip=u.remote_ip, tls=u.tls or None)
        if u.state == QUEUED:
            detail["next_attempt"] = u.next_attempt
        elif u.state == BOUNCED:
            detail.update(sync=True, status=(reply.esc or None) if reply is not None else None,
                          diagnostic=reply.text if reply is not None else None)
        if u.event_detail:
            detail.update(u.event_detail)
        at = u.attempted_at + u.duration if u.attempted_at else now
        out.append((at, etype, json.dumps(detail), u.queue_id, u.rcpt_idx, inc))
    return out


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
