"""Operator moves: hold, release, retry, bounce, delete (issue 5), reschedule (issue 13).

One job: the writer's STEER handler: move the recipients a `MessageFilter`
selects, inside the batch's transaction, each move checked and logged by
`core.envelope.RECIPIENT_MACHINE`, with its attempts rows and ledger
events.

API:
    OPERATOR_MOVES   action -> OperatorMove(froms, to, event, apply):
                     the states it moves from, the one it moves to, the
                     ledger event each moved recipient gets (None: retry),
                     and the statements that make it
    await steer(txn, [SteerOp, …]) -> [recipients moved, …]

Invariants:
- Leased (in-flight) recipients are never moved: their attempt's record
  decides their fate, and the operator repeats the action afterwards if
  still needed. Targets are read and updated in the same transaction
  (nothing else writes), and each UPDATE re-checks state and lease anyway.
- Every (from, to) of the table is a move RECIPIENT_MACHINE allows
  (checked at import: a bad table is a bug here, not at run time).
- Logging: one ``event=operator_steer`` line per call (INFO), and the
  ``event=transition`` line of every moved recipient: INFO when the call
  moves at most LOG_EACH_MAX of them, DEBUG beyond (a hold of a whole
  domain must not flood the log).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mta.core.envelope import BOUNCED, DELETED, HELD, QUEUED, RECIPIENT_MACHINE, RecipientState
from mta.core.logfmt import event
from mta.spool import filters, ledger_sql, queue_sql
from mta.spool.ops import SteerOp, Txn
from mta.spool.reads import fetchall

log = logging.getLogger("mta.spool")

LOG_EACH_MAX = 100
Pairs = list[tuple[str, int]]
Apply = Callable[[Txn, Pairs, SteerOp], Awaitable[int]]


async def _hold(txn: Txn, pairs: Pairs, op: SteerOp) -> int:
    cur = await txn.conn.executemany(queue_sql.SQL_OP_HOLD, [(op.now, *p) for p in pairs])
    return cur.rowcount


async def _release(txn: Txn, pairs: Pairs, op: SteerOp) -> int:
    cur = await txn.conn.executemany(queue_sql.SQL_OP_RELEASE,
                                     [(op.now, op.now, *p) for p in pairs])
    return cur.rowcount


async def _retry(txn: Txn, pairs: Pairs, op: SteerOp) -> int:
    cur = await txn.conn.executemany(queue_sql.SQL_OP_RETRY, [(op.now, op.now, *p) for p in pairs])
    return cur.rowcount


async def _reschedule(txn: Txn, pairs: Pairs, op: SteerOp) -> int:
    at = op.now if op.at is None else op.at
    cur = await txn.conn.executemany(queue_sql.SQL_OP_RESCHEDULE,
                                     [(at, op.now, *p) for p in pairs])
    await txn.conn.executemany(queue_sql.SQL_OP_RESCHEDULE_MESSAGE,
                               [(at, mid) for mid in dict.fromkeys(m for m, _ in pairs)])
    return cur.rowcount


async def _bounce(txn: Txn, pairs: Pairs, op: SteerOp) -> int:
    conn = txn.conn
    cur = await conn.executemany(queue_sql.SQL_OP_BOUNCE, [(op.reply, op.now, *p) for p in pairs])
    await conn.executemany(queue_sql.SQL_INSERT_OPERATOR_ATTEMPT,
                           [(*p, op.now, BOUNCED, op.reply) for p in pairs])
    # hold/release/retry stay within the pending states, so done and
    # body_live cannot change; bounce and delete can end a message.
    txn.touched.update(mid for mid, _ in pairs)
    return cur.rowcount


async def _delete(txn: Txn, pairs: Pairs, op: SteerOp) -> int:
    conn = txn.conn
    cur = await conn.executemany(queue_sql.SQL_OP_DELETE, [(op.now, *p) for p in pairs])
    await conn.executemany(queue_sql.SQL_INSERT_OPERATOR_ATTEMPT,
                           [(*p, op.now, DELETED, None) for p in pairs])
    # A deleted message owes nobody a DSN, not even for recipients that
    # bounced before: that is what lets its body die now. Messages named by
    # id lose their owed DSN even when nothing was pending.
    dead = {m for m, _ in pairs} | set(op.filter.ids)
    await conn.executemany(queue_sql.SQL_OP_CANCEL_DSN, [(mid,) for mid in dead])
    txn.touched.update(dead)
    return cur.rowcount


@dataclass(frozen=True)
class OperatorMove:
    froms: frozenset[RecipientState]
    to: RecipientState
    event: str | None
    apply: Apply


OPERATOR_MOVES: dict[str, OperatorMove] = {
    "hold": OperatorMove(frozenset({QUEUED}), HELD, "held", _hold),
    "release": OperatorMove(frozenset({HELD}), QUEUED, "released", _release),
    "retry": OperatorMove(frozenset({QUEUED}), QUEUED, None, _retry),
    "reschedule": OperatorMove(frozenset({QUEUED}), QUEUED, "rescheduled", _reschedule),
    "bounce": OperatorMove(frozenset({QUEUED, HELD}), BOUNCED, "bounced", _bounce),
    "delete": OperatorMove(frozenset({QUEUED, HELD}), DELETED, "deleted", _delete),
}
for _move in OPERATOR_MOVES.values():
    for _old in _move.froms:
        RECIPIENT_MACHINE.check(_old, _move.to)


async def steer(txn: Txn, payloads: list[SteerOp]) -> list[int]:
    return [await _steer(txn, op) for op in payloads]


async def _steer(txn: Txn, op: SteerOp) -> int:
    """One operator move inside the batch's transaction."""
    move = OPERATOR_MOVES.get(op.action)
    if move is None:
        raise ValueError(f"unknown operator action {op.action!r}")
    sql, params = filters.targets_sql(op.filter, move.froms)
    rows = await fetchall(txn.conn, sql, params)
    if not rows and not (op.action == "delete" and op.filter.ids):
        return 0
    level = logging.INFO if len(rows) <= LOG_EACH_MAX else logging.DEBUG
    for mid, idx, old in rows:
        RECIPIENT_MACHINE.move(RecipientState(old), move.to, f"{mid}/{idx}", level=level)
    pairs = [(mid, idx) for mid, idx, _ in rows]
    # Applied even without pairs: a delete by id cancels owed DSNs anyway.
    moved = await move.apply(txn, pairs, op)
    moved = moved if pairs else 0
    if move.event is not None and pairs:
        # After the update, for the rows now in the target state: the ones that moved.
        extra: dict[str, object] = {"reply": op.reply} if op.action == "bounce" else {}
        if op.action == "reschedule":
            extra["scheduled_at"] = op.at
        await txn.conn.executemany(ledger_sql.SQL_MOVE_EVENT, [
            (op.now, move.event, json.dumps({"rcpt_idx": idx, "by": "operator",
                                             "previous_state": old, **extra}), mid, idx, move.to)
            for mid, idx, old in rows])
    event(log, "operator_steer", action=op.action, recipients=moved,
          previous="/".join(sorted(move.froms)), state=move.to)
    return moved
