"""Attempts: the writer's handlers for leasing recipients and recording
what delivery (or a report by mail) said about them.

One job: run LEASE, RELEASE, RECORD and ASYNC ops inside the batch's
transaction: the recipient rows, their attempts rows, the address outcomes
(suppressions.apply_outcomes) and the ledger events, all in that one
transaction (crash state S6, __init__.py).

API (handlers: `await h(txn, [payload, …]) -> [result, …]`, see ops.py):
    lease          (now, limit) -> list[QueuedRecipient]  (leased=1 in the same txn)
    release        [(queue id, idx), …] -> None
    record         (updates, outcomes) -> None
    record_async   AsyncReport -> bool (False: unknown recipient, nothing written)
    recipient_moves(updates, states) -> [Move]   pure: which updates move
                   which recipient from what to what
    record_events(updates, now) -> SQL_RECORD_EVENT params   pure
    async_report(queue_id, rcpt_idx, *, state, reply, …) -> AsyncReport   pure

The record path (RECIPIENT_MACHINE, core/envelope.py): the states of the
recipients a batch names are read in its transaction; a recorded update
applies only to a recipient that is queued when its turn comes (an attempt
is made from `queued`: a lease); each such move is checked and logged
``old -> new`` (DEBUG: it is every delivery's). An update for a recipient
that is unknown, held or already final is kept as an attempts row but moves
nothing (``event=updates_ignored``, WARNING). SQL_RECORD keeps its own
``state = 'queued'`` guard: the durable truth, whatever was read.

Events: RECORD writes deferred | delivered | bounced | expired | suppressed
per update that moves a recipient (ledger_sql.EVENT_OF_STATE); none for a
put-back (QUEUED, counts_attempt=False) or an ignored update. ASYNC writes
bounced (sync=false) when the recipient moved (ASYNC_BOUNCE_MACHINE, INFO),
complained when an outcome is a complaint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from mta.core.envelope import (
    ASYNC_BOUNCE_MACHINE,
    BOUNCED,
    DELIVERED,
    QUEUED,
    RECIPIENT_MACHINE,
    AddressOutcome,
    QueuedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mta.core.logfmt import event
from mta.core.reply import Reply
from mta.spool import ledger_sql, queue_sql
from mta.spool.ops import AsyncReport, RecordPayload, Txn
from mta.spool.reads import Statements, fetchall
from mta.spool.suppressions import apply_outcomes

log = logging.getLogger("mta.spool")

_PAIR_CHUNK = 400   # (message_id, rcpt_idx) pairs per read, under SQLite's variable limit
RcptKey = tuple[str, int]
_STATES = frozenset(s.value for s in RecipientState)


class Move(NamedTuple):
    queue_id: str
    rcpt_idx: int
    old: RecipientState
    new: RecipientState


# -- leases ----------------------------------------------------------------------

async def lease(txn: Txn, payloads: list[tuple[float, int]]) -> list[list[QueuedRecipient]]:
    return [await _lease(txn.conn, now, limit) for now, limit in payloads]


async def _lease(conn: Statements, now: float, limit: int) -> list[QueuedRecipient]:
    rows = await fetchall(conn, queue_sql.SQL_LEASE_SELECT, (now, limit))
    if not rows:
        return []
    await conn.executemany(queue_sql.SQL_LEASE_SET, [(r[0], r[1]) for r in rows])
    return [QueuedRecipient(queue_id=r[0], rcpt_idx=r[1], address=r[2], domain=r[3],
                            sender=r[4], attempts=r[5], received_at=r[6],
                            next_attempt=r[7], size=r[8], test=bool(r[9]),
                            tenant=r[10], listener=r[11] or "", tls_flags=r[12] or 0)
            for r in rows]


async def release(txn: Txn, payloads: list[list[RcptKey]]) -> list[None]:
    pairs = [pair for payload in payloads for pair in payload]
    if pairs:
        await txn.conn.executemany(queue_sql.SQL_RELEASE, pairs)
    return [None] * len(payloads)


# -- records ---------------------------------------------------------------------

async def record(txn: Txn, payloads: list[RecordPayload]) -> list[None]:
    """Every RECORD op of the batch: all updates first, then all outcomes."""
    updates = [u for updates, _ in payloads for u in updates]
    if updates:
        await _record(txn, updates)
    outcomes = [o for _, outcomes in payloads for o in outcomes]
    if outcomes:
        await apply_outcomes(txn.conn, outcomes, txn.rules)
    return [None] * len(payloads)


def recipient_moves(updates: Sequence[RecipientUpdate], states: dict[RcptKey, str]) -> list[Move]:
    """The moves `updates`, applied in order, make from `states` (each
    recipient's state before the batch; a missing key is an unknown
    recipient): an update moves its recipient only while it is queued.
    A deferral is the self-move queued -> queued."""
    now = dict(states)
    moves = []
    for u in updates:
        key = (u.queue_id, u.rcpt_idx)
        old = now.get(key)
        if old != QUEUED:
            continue
        moves.append(Move(u.queue_id, u.rcpt_idx, QUEUED, RecipientState(u.state)))
        now[key] = u.state
    return moves


async def _states(conn: Statements, keys: list[RcptKey]) -> dict[RcptKey, str]:
    out: dict[RcptKey, str] = {}
    for i in range(0, len(keys), _PAIR_CHUNK):
        chunk = keys[i:i + _PAIR_CHUNK]
        sql = queue_sql.SQL_STATES_OF.format(pairs=",".join(["(?, ?)"] * len(chunk)))
        for mid, idx, state in await fetchall(conn, sql, [x for key in chunk for x in key]):
            out[(mid, idx)] = state
    return out


async def _record(txn: Txn, updates: Sequence[RecipientUpdate]) -> None:
    conn = txn.conn
    now = time.time()   # bookkeeping only (updated_at), never a decision
    states = await _states(conn, list(dict.fromkeys((u.queue_id, u.rcpt_idx) for u in updates)))
    for m in recipient_moves(updates, states):
        RECIPIENT_MACHINE.move(m.old, m.new, f"{m.queue_id}/{m.rcpt_idx}", level=logging.DEBUG)
    attempts, rows = [], []
    for u in updates:
        reply = str(u.reply) if u.reply is not None else None
        inc = 1 if u.counts_attempt else 0
        # The attempt's TLS as `queue show` prints it: "TLSv1.3 (dane)".
        tls = (f"{u.tls or 'none'} ({u.tls_policy}{', ' + u.tls_check if u.tls_check else ''})"
               if u.tls_policy else u.tls)
        if inc:
            attempts.append((u.queue_id, u.rcpt_idx, u.attempted_at, u.duration, u.state, reply,
                             u.remote_host, u.remote_ip, tls))
        rows.append((u.state, inc, u.next_attempt, reply, inc, u.remote_host, inc, tls,
                     u.attempted_at or now, u.queue_id, u.rcpt_idx))
        txn.touched.add(u.queue_id)
    if attempts:
        await conn.executemany(queue_sql.SQL_INSERT_ATTEMPT, attempts)
    events = record_events(updates, now)
    if events:
        # Before the updates, under their own guard (state = 'queued'):
        # an update SQL_RECORD will ignore writes no event.
        await conn.executemany(ledger_sql.SQL_RECORD_EVENT, events)
    cur = await conn.executemany(queue_sql.SQL_RECORD, rows)
    if cur.rowcount != len(rows):
        # Final states are terminal (RECIPIENT_MACHINE): a late or duplicate
        # report for a finished recipient is kept as an attempt row but
        # does not move the recipient.
        event(log, "updates_ignored", logging.WARNING, ignored=len(rows) - cur.rowcount,
              of=len(rows), why="unknown or already final")


def record_events(updates: Sequence[RecipientUpdate], now: float) -> list[tuple[Any, ...]]:
    """SQL_RECORD_EVENT params for the updates that move a recipient. The
    statement's guard sees the state before the batch; an update after one
    that already made its recipient final in this same list is skipped here
    (SQL_RECORD will ignore it), and attempts counts what earlier updates of
    the list added."""
    out = []
    final: set[RcptKey] = set()
    incs: dict[RcptKey, int] = {}
    for u in updates:
        key = (u.queue_id, u.rcpt_idx)
        if key in final:
            continue
        inc = incs[key] = incs.get(key, 0) + (1 if u.counts_attempt else 0)
        if u.state != QUEUED:
            final.add(key)
        elif not u.counts_attempt:
            continue   # a put-back: no attempt, no change worth an event
        etype = ledger_sql.EVENT_OF_STATE.get(u.state)
        if etype is None:
            continue
        at = u.attempted_at + u.duration if u.attempted_at else now
        out.append((at, etype, json.dumps(_event_detail(u)), u.queue_id, u.rcpt_idx, inc))
    return out


def _event_detail(u: RecipientUpdate) -> dict[str, Any]:
    reply = u.reply
    detail: dict[str, Any] = {"rcpt_idx": u.rcpt_idx,
                              "reply": str(reply) if reply is not None else None}
    if u.state in (QUEUED, DELIVERED, BOUNCED):
        detail.update(remote_host=u.remote_host, remote_ip=u.remote_ip, tls=u.tls or None)
        if u.tls_policy:
            detail["tls_policy"] = u.tls_policy
        if u.tls_check:
            detail["tls_check"] = u.tls_check
    if u.state == QUEUED:
        detail["next_attempt"] = u.next_attempt
    elif u.state == BOUNCED:
        detail.update(sync=True, status=(reply.esc or None) if reply is not None else None,
                      diagnostic=reply.text if reply is not None else None)
    if u.event_detail:
        detail.update(u.event_detail)
    return detail


# -- reports that arrived by mail ------------------------------------------------

def async_report(queue_id: str, rcpt_idx: int, *, state: str, reply: Reply | None,
                 detail: str, at: float, outcomes: tuple[AddressOutcome, ...],
                 event_detail: dict[str, Any] | None) -> AsyncReport:
    """The ASYNC payload of `Spool.record_async` (its docstring says what
    it writes); `state` is "bounced" or "" (ValueError otherwise)."""
    if state not in (BOUNCED, ""):
        raise ValueError(f"record_async state must be 'bounced' or '', not {state!r}")
    if state:
        kind = "async_bounce"
    elif any(o.kind == "complaint" for o in outcomes):
        kind = "complaint"
    else:
        kind = "async_report"
    extra = {"status": (reply.esc or None) if reply is not None else None, **(event_detail or {})}
    return AsyncReport(queue_id=queue_id, rcpt_idx=int(rcpt_idx), state=state,
                       attempt_state=kind, reply=str(reply) if reply is not None else None,
                       detail=detail, at=at, outcomes=outcomes, event_detail=extra)


async def record_async(txn: Txn, payloads: list[AsyncReport]) -> list[bool]:
    return [await _record_async(txn, r) for r in payloads]


async def _record_async(txn: Txn, r: AsyncReport) -> bool:
    conn = txn.conn
    rows = await fetchall(conn, queue_sql.SQL_RECIPIENT_FOR_EVENT, (r.queue_id, r.rcpt_idx))
    if not rows:
        event(log, "async_report_ignored", logging.WARNING, kind=r.attempt_state,
              id=r.queue_id, rcpt_idx=r.rcpt_idx, why="unknown recipient")
        return False
    old, address, cred = rows[0]
    await conn.execute(queue_sql.SQL_INSERT_ASYNC_ATTEMPT,
                       (r.queue_id, r.rcpt_idx, r.at, r.attempt_state, r.reply, r.detail))
    events = []
    base = {"rcpt_idx": r.rcpt_idx, "reply": r.reply, "diagnostic": r.detail}
    prev = RecipientState(old) if old in _STATES else None   # None: not a state we know
    if r.state and prev is not None and ASYNC_BOUNCE_MACHINE.can(prev, BOUNCED):
        ASYNC_BOUNCE_MACHINE.move(prev, BOUNCED, f"{r.queue_id}/{r.rcpt_idx}")
        await conn.execute(queue_sql.SQL_ASYNC_BOUNCE,
                           (r.reply, time.time(), r.queue_id, r.rcpt_idx))
        txn.touched.add(r.queue_id)
        events.append(("bounced", {**base, "sync": False, "previous_state": old,
                                   **(r.event_detail or {})}))
    elif r.state:
        event(log, "async_bounce_kept", id=r.queue_id, rcpt_idx=r.rcpt_idx, already=old)
    if any(o.kind == "complaint" for o in r.outcomes):
        events.append(("complained", {**base, "feedback_type": None, **(r.event_detail or {})}))
    if events:
        await conn.executemany(ledger_sql.SQL_INSERT_EVENT, [
            (r.at, etype, r.queue_id, address, cred, json.dumps(detail))
            for etype, detail in events])
    if r.outcomes:
        await apply_outcomes(conn, r.outcomes, txn.rules)
    return True
