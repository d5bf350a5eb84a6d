"""The ledger (issue 6): events, webhook cursors, pruning, idempotency keys.

One job: `Ledger`, the facade beside `Spool` (`spool.ledger`) for the
``events``, ``webhook_state`` and ``idempotency`` tables, and the writer's
handlers that change them on their own (EVENTS, PRUNE, WEBHOOK). It is
the embedded default of the core.stores `EventLedger`, `WebhookCursors`
and `IdempotencyKeys` seams.

API:
    ledger = Ledger(writer, read)          (made by Spool.open)
    await ledger.append_events([LedgerEvent, ...])        # events with no state change
    await ledger.events_after(after_seq, limit, *, types=None, recipient=None,
                              credential=None, tenant=None) -> [EventView]   # seq order
    await ledger.event_payloads_after(after_seq, limit, *, types=None,
                                      credential=None, tenant=None) -> [(seq, bytes)]
    await ledger.outcomes_after(after_seq, limit, *, types) -> [OutcomeRow]
                                      # lean rows for the reputation tracker
    await ledger.message_events(queue_id, *, after=0, limit=None) -> [EventView]
    await ledger.last_event_seq() -> int
    await ledger.idempotent_id(credential, key) -> (queue id, created) | None
    await ledger.received_details([queue id, …]) -> {queue id: received detail}
    await ledger.prune_events(before, batch=1000) / prune_idempotency(before, batch=1000) -> n
    await ledger.webhook_state(name) -> dict | None;  await ledger.webhook_states() -> [dict]
    await ledger.set_webhook_state(name, *, cursor=None, failing_since=UNSET, …)
  handlers (ops.py): append, prune, set_webhook

Invariants:
- Every change to a recipient or message writes its events in the same
  transaction, by the handler that makes the change (acceptance.py,
  attempts.py, steering.py; the package docstring, "The ledger"). Only
  events with no state change come through `append_events`.
- A reader that pages with `events_after(cursor)` never misses an event:
  seqs are assigned by the one writer at commit, so every seq up to the
  newest visible one is visible (none commits later with a smaller seq).
- Reads use the reader connection (committed rows only); writes go through
  the group-commit writer, committed with synchronous=NORMAL (a power loss
  may lose the newest, a SIGKILL cannot; the writer fsyncs the WAL within
  WAL_SYNC_INTERVAL; an acceptance's events come back by replay, S4p).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from mta.core.envelope import LedgerEvent
from mta.core.stores import UNSET, EventView, OutcomeRow, Unset
from mta.spool import ledger_sql
from mta.spool.ops import EVENTS, PRUNE, WEBHOOK, PruneOp, Submitter, Txn, WebhookUpdate
from mta.spool.reads import ReadSide, Row, fetchall

__all__ = ["UNSET", "Ledger", "append", "prune", "set_webhook"]


class Ledger:
    def __init__(self, writer: Submitter, read: ReadSide):
        self._writer = writer
        self._read = read

    # -- writes (through the group-commit writer) ------------------------------------

    async def append_events(self, events: Sequence[LedgerEvent]) -> None:
        """Append events that go with no state change (`rejected` at
        submission, `suppressed` refused at RCPT): they share the next
        batch's transaction. An empty credential is filled with the
        message's when queue_id names one."""
        events = list(events)
        for e in events:
            if not isinstance(e, LedgerEvent):
                raise TypeError(f"expected a LedgerEvent, got {type(e).__name__}")
            json.dumps(e.detail)   # fail here, in the caller, not in the batch
        if events:
            await self._writer.submit(EVENTS, events)

    async def prune_events(self, before: float, batch: int = 1000) -> int:
        """Delete at most `batch` of the oldest events with at < `before`;
        returns how many. Small batches keep the writer (and so every
        enqueue) waiting only briefly: call again, with a pause, while it
        returns `batch`."""
        return await self._prune("events", before, batch)

    async def prune_idempotency(self, before: float, batch: int = 1000) -> int:
        """Delete at most `batch` idempotency keys created before `before`
        (keys past their window are already ignored; this only frees space)."""
        return await self._prune("idempotency", before, batch)

    async def _prune(self, table: str, before: float, batch: int) -> int:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        n: int = await self._writer.submit(PRUNE, PruneOp(table, float(before), int(batch)))
        return n

    async def set_webhook_state(self, name: str, *, cursor: int | None = None,
                                failing_since: float | None | Unset = UNSET,
                                next_attempt: float | None | Unset = UNSET,
                                attempts: int | Unset = UNSET,
                                last_error: str | None | Unset = UNSET,
                                state: str | Unset = UNSET) -> None:
        """Create or update the delivery state of webhook `name`. Fields left
        out keep their value (a new row starts at cursor 0, attempts 0,
        state "ok", the others None); pass None to clear failing_since,
        next_attempt or last_error. cursor=None leaves the cursor alone; any
        int sets it (also backwards: replay). Committed with
        synchronous=NORMAL: a power loss may forget the last cursor advance,
        so events are re-sent (with the same webhook-id)."""
        given: tuple[tuple[str, object], ...] = (
            ("cursor", cursor), ("failing_since", failing_since), ("next_attempt", next_attempt),
            ("attempts", attempts), ("last_error", last_error), ("state", state))
        fields = {k: v for k, v in given if v is not UNSET and not (k == "cursor" and v is None)}
        for k in ("cursor", "attempts", "state"):
            if k in fields and fields[k] is None:
                raise ValueError(f"webhook state {k} cannot be None")
        await self._writer.submit(WEBHOOK, WebhookUpdate(str(name), fields))

    # -- reads (reader connection: committed data only) ------------------------------

    async def events_after(self, after_seq: int, limit: int, *,
                           types: Sequence[str] | None = None, recipient: str | None = None,
                           credential: str | None = None,
                           tenant: str | None = None) -> list[EventView]:
        """Up to `limit` events with seq > `after_seq`, in seq order,
        optionally only of `types`, to exact address `recipient`, of
        `credential` ("" = events without one), of `tenant` (the owner of
        the event's credential). Resume with the last seq
        returned. When fewer than `limit` come back, no event matching the
        filters exists up to `last_event_seq()` read BEFORE this call, so a
        filtered consumer may move its cursor there (instead of rescanning
        unmatched events)."""
        wanted = _event_types(limit, types)
        if wanted == []:
            return []
        return await self._read(_events_after, int(after_seq), int(limit), wanted, recipient,
                                credential, tenant)

    async def event_payloads_after(self, after_seq: int, limit: int, *,
                                   types: Sequence[str] | None = None,
                                   credential: str | None = None,
                                   tenant: str | None = None) -> list[tuple[int, bytes]]:
        """`events_after`, as (seq, the event's webhook payload object as
        compact UTF-8 JSON) built by SQLite on the reader thread: the webhook
        sender's read, with no per-event work on the event loop."""
        wanted = _event_types(limit, types)
        if wanted == []:
            return []
        return await self._read(_payloads_after, int(after_seq), int(limit), wanted, credential,
                                tenant)

    async def message_events(self, queue_id: str, *, after: int = 0,
                             limit: int | None = None) -> list[EventView]:
        """Every event of one message, in seq order (the `queue show` timeline);
        with `after` / `limit`, only up to `limit` of those with seq > after
        (the console's live timeline polls so)."""
        if after == 0 and limit is None:
            return await self._read(_message_events, queue_id)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return await self._read(_message_events_after, queue_id, int(after),
                                -1 if limit is None else int(limit))

    async def received_details(self, queue_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{queue id: its `received` event's detail} for these messages (one
        read; an id without one is absent)."""
        return await self._read(_received_details, list(dict.fromkeys(queue_ids)))

    async def idempotent_id(self, credential: str, key: str) -> tuple[str, float] | None:
        """(queue id, created) an Idempotency-Key made for `credential`
        (expired or not: the caller checks the window), or None."""
        return await self._read(_idempotent_id, credential, key)

    async def outcomes_after(self, after_seq: int, limit: int, *,
                             types: Sequence[str]) -> list[OutcomeRow]:
        """Up to `limit` events of `types` (of ledger_sql.OUTCOME_TYPES) after
        `after_seq`, in seq order, as lean rows for the reputation tracker:
        (seq, at, type, credential, detail's reason, the message's sender or
        None, its test mark)."""
        bad = [t for t in types if t not in ledger_sql.OUTCOME_TYPES]
        if bad or not types:
            raise ValueError(f"outcome types are some of {ledger_sql.OUTCOME_TYPES}, not {bad}")
        sql = ledger_sql.SQL_OUTCOMES_AFTER.format(
            types=", ".join(f"'{t}'" for t in dict.fromkeys(types)))
        return await self._read(_outcomes_after, sql, int(after_seq), int(limit))

    async def last_event_seq(self) -> int:
        """The newest seq ever committed (0 when none); pruning never lowers it."""
        return await self._read(_last_event_seq)

    async def webhook_state(self, name: str) -> dict[str, Any] | None:
        """{name, cursor, failing_since, next_attempt, attempts, last_error,
        state} of webhook `name`, or None before its first set_webhook_state."""
        return await self._read(_webhook_state, name)

    async def webhook_states(self) -> list[dict[str, Any]]:
        """`webhook_state` of every stored name, by name."""
        return await self._read(_webhook_states)


async def _outcomes_after(conn: aiosqlite.Connection, sql: str, after: int,
                          limit: int) -> list[OutcomeRow]:
    return [OutcomeRow(int(r[0]), float(r[1]), str(r[2]), str(r[3] or ""),
                       None if r[4] is None else str(r[4]), r[5], r[6] == 1)
            for r in await fetchall(conn, sql, (after, limit))]


def _event_types(limit: int, types: Sequence[str] | None) -> list[str] | None:
    """The ledger reads' argument check: types deduplicated ([] matches
    nothing), or None for every type."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return None if types is None else list(dict.fromkeys(types))


# -- the writer's handlers (ops.py) -------------------------------------------------

async def append(txn: Txn, payloads: list[list[LedgerEvent]]) -> list[None]:
    """EVENTS: the caller's events as given, one executemany for the batch."""
    events = [e for payload in payloads for e in payload]
    await txn.conn.executemany(ledger_sql.SQL_APPEND_EVENT, [
        (e.at, e.type, e.queue_id, e.recipient, e.credential or "", json.dumps(e.detail))
        for e in events])
    return [None] * len(payloads)


async def set_webhook(txn: Txn, payloads: list[WebhookUpdate]) -> list[None]:
    for u in payloads:
        await txn.conn.execute(ledger_sql.set_webhook_sql(tuple(u.fields)),
                               (u.name, *u.fields.values()))
    return [None] * len(payloads)


async def prune(txn: Txn, payloads: list[PruneOp]) -> list[int]:
    out = []
    for op in payloads:
        sql = (ledger_sql.SQL_PRUNE_EVENTS if op.table == "events"
               else ledger_sql.SQL_PRUNE_IDEMPOTENCY)
        cur = await txn.conn.execute(sql, (op.before, op.batch))
        out.append(cur.rowcount)
    return out


# -- the reads (each takes the reader connection) ------------------------------------

def _event(row: Row) -> EventView:
    seq, at, etype, queue_id, recipient, credential, detail, tags, test = row
    try:
        parsed = json.loads(detail) if detail else {}
    except ValueError:
        parsed = {"raw": detail}   # never hide an event behind a bad detail
    return EventView(seq=seq, at=at, type=etype, queue_id=queue_id, recipient=recipient,
                     credential=credential, detail=parsed,
                     tags=json.loads(tags) if tags is not None else None, test=test == 1)


async def _events_after(conn: aiosqlite.Connection, after: int, limit: int,
                        types: list[str] | None, recipient: str | None,
                        credential: str | None, tenant: str | None) -> list[EventView]:
    sql, params = ledger_sql.events_after_sql(after, limit, types, recipient, credential,
                                              tenant=tenant)
    return [_event(r) for r in await fetchall(conn, sql, params)]


async def _payloads_after(conn: aiosqlite.Connection, after: int, limit: int,
                          types: list[str] | None, credential: str | None,
                          tenant: str | None) -> list[tuple[int, bytes]]:
    sql, params = ledger_sql.events_after_sql(after, limit, types, None, credential,
                                              cols=ledger_sql.EVENT_PAYLOAD_COLS, tenant=tenant)
    return [(seq, payload) for seq, payload in await fetchall(conn, sql, params)]


async def _message_events(conn: aiosqlite.Connection, queue_id: str) -> list[EventView]:
    return [_event(r) for r in await fetchall(conn, ledger_sql.SQL_MESSAGE_EVENTS, (queue_id,))]


async def _message_events_after(conn: aiosqlite.Connection, queue_id: str, after: int,
                                limit: int) -> list[EventView]:
    return [_event(r) for r in await fetchall(conn, ledger_sql.SQL_MESSAGE_EVENTS_AFTER,
                                              (queue_id, after, limit))]


async def _received_details(conn: aiosqlite.Connection,
                            ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        sql = ledger_sql.SQL_RECEIVED_OF.format(ids=",".join("?" * len(chunk)))
        for qid, detail in await fetchall(conn, sql, chunk):
            if qid not in out:
                try:
                    parsed = json.loads(detail) if detail else {}
                except ValueError:
                    parsed = {}
                out[qid] = parsed if isinstance(parsed, dict) else {}
    return out


async def _idempotent_id(conn: aiosqlite.Connection, credential: str,
                         key: str) -> tuple[str, float] | None:
    rows = await fetchall(conn, ledger_sql.SQL_IDEMPOTENCY_GET, (credential, key))
    return (str(rows[0][0]), float(rows[0][1])) if rows else None


async def _last_event_seq(conn: aiosqlite.Connection) -> int:
    rows = await fetchall(conn, ledger_sql.SQL_LAST_EVENT_SEQ)
    return (rows[0][0] or 0) if rows else 0


def _webhook(row: Row) -> dict[str, Any]:
    return dict(zip(("name", *ledger_sql.WEBHOOK_FIELDS), row))


async def _webhook_state(conn: aiosqlite.Connection, name: str) -> dict[str, Any] | None:
    rows = await fetchall(conn, ledger_sql.SQL_WEBHOOK_STATE, (name,))
    return _webhook(rows[0]) if rows else None


async def _webhook_states(conn: aiosqlite.Connection) -> list[dict[str, Any]]:
    return [_webhook(r) for r in await fetchall(conn, ledger_sql.SQL_WEBHOOK_STATES)]
