"""Aggregates for the console's overview: event counts per time bucket, and
the queue's figures, for everyone or for one tenant.

One job: the grouped reads a dashboard makes over the ledger (``events``)
and the queue (``recipients``, ``messages``), on the reader connection
(committed rows only): one statement each (two for everyone's queue
figures), the grouping done by SQLite.

API:
    figures = spool.figures                  (made by Spool.open)
    await figures.event_counts(since, *, bucket=60, after_seq=0, upto_seq,
                               tenant=None) -> [(bucket index, type, n)]
        events of SERIES_TYPES with at >= since and after_seq < seq <=
        upto_seq, counted per (floor(at / bucket), type)
    await figures.queue_figures(tenant=None) -> {"queued", "held",
        "held_messages", "oldest_queued_at"}
    await figures.domain_deferrals(tenant, limit) -> [{"domain", "recipients",
        "held", "deferred", "oldest_received_at", "last_error"}]
    SERIES_TYPES     the event types event_counts counts

Invariants:
- Every statement is bounded: event_counts walks the index on (at, type)
  over the window (after_seq = 0), or the primary key over the seqs after a
  cursor (incremental); the queue reads walk pending recipients only
  (recipients_due), and a tenant's filter is spool/tenant_sql.py's, so a
  tenant's figures are decided as its API reads are.
- Counting by seq range is exact: seqs are assigned at commit by the one
  writer, so every event up to a seq read before (ledger.last_event_seq)
  is visible, and a later call with after_seq = that seq counts each event
  once, whatever its `at`.
"""

from __future__ import annotations

from typing import Any

import aiosqlite

from mta.spool.queue_sql import STAMP_WIDTH
from mta.spool.reads import ReadSide, fetchall
from mta.spool.tenant_sql import tenant_of

__all__ = ["Figures", "SERIES_TYPES"]

# What a dashboard plots: recipients accepted into the queue (queued, at
# enqueue), delivered, deferred, bounced, expired, complained.
SERIES_TYPES = ("queued", "delivered", "deferred", "bounced", "expired", "complained")
_TYPES = ", ".join(f"'{t}'" for t in SERIES_TYPES)

# The whole window: everyone's walks the (at, type) index alone, covering
# ("+type", "+seq": not events_by_type, nor the primary key over the whole
# table); a tenant's needs each row's credential, and walks events_by_type.
# Params: bucket, since, upto[, tenant].
_COUNTS_WINDOW = ("SELECT CAST(at / ?1 AS INTEGER), type, COUNT(*) FROM events "
                  "WHERE at >= ?2 AND {plus}type IN (" + _TYPES + ") AND +seq <= ?3{tenant} "
                  "GROUP BY 1, 2")
# After a cursor: the primary key (or events_by_type) from after_seq ("+at":
# not the window's index). Params: bucket, since, upto, after[, tenant].
_COUNTS_AFTER = ("SELECT CAST(at / ?1 AS INTEGER), type, COUNT(*) FROM events "
                 "WHERE seq > ?4 AND seq <= ?3 AND +at >= ?2 AND {plus}type IN (" + _TYPES
                 + "){tenant} GROUP BY 1, 2")

# Pending recipients (recipients_due, covering: message_id is in its key).
_QUEUE_ALL = ("SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(state = 'held'), 0), "
              "COUNT(DISTINCT CASE WHEN state = 'held' THEN message_id END) "
              "FROM recipients WHERE state IN ('queued', 'held')")
# The oldest message with a queued recipient: messages_pending in received_at
# order, stopping at the first.
_OLDEST_QUEUED = ("SELECT m.received_at FROM messages m WHERE m.done = 0 AND EXISTS "
                  "(SELECT 1 FROM recipients r WHERE r.message_id = m.id "
                  "AND r.state = 'queued') ORDER BY m.received_at LIMIT 1")
_QUEUE_TENANT = (
    "SELECT COALESCE(SUM(r.state = 'queued'), 0), COALESCE(SUM(r.state = 'held'), 0), "
    "COUNT(DISTINCT CASE WHEN r.state = 'held' THEN r.message_id END), "
    "MIN(CASE WHEN r.state = 'queued' THEN m.received_at END) "
    "FROM recipients r JOIN messages m ON m.id = r.message_id "
    f"WHERE r.state IN ('queued', 'held') AND {tenant_of('m.credential')} = ?1")
# Per recipient domain of pending recipients (queue_sql's SQL_DOMAIN_SUMMARY,
# with deferred counted and an optional tenant): the most deferred first.
_DEFERRALS = (
    "SELECT r.domain, COUNT(*), SUM(r.state = 'held'), "
    "SUM(r.state = 'queued' AND r.attempts > 0), MIN(m.received_at), "
    "MAX(CASE WHEN r.state = 'queued' AND r.attempts > 0 AND r.last_reply IS NOT NULL "
    f"THEN printf('%0{STAMP_WIDTH}.6f', r.updated_at) || r.last_reply END) "
    "FROM recipients r JOIN messages m ON m.id = r.message_id "
    "WHERE r.state IN ('queued', 'held'){tenant} "
    "GROUP BY r.domain ORDER BY 4 DESC, 2 DESC, r.domain LIMIT ?1")


class Figures:
    def __init__(self, read: ReadSide):
        self._read = read

    async def event_counts(self, since: float, *, bucket: int = 60, after_seq: int = 0,
                           upto_seq: int, tenant: str | None = None
                           ) -> list[tuple[int, str, int]]:
        """(floor(at / bucket), type, count) of the events of SERIES_TYPES
        with at >= `since` and `after_seq` < seq <= `upto_seq`, of `tenant`
        (the owner of the event's credential) or of everyone (None)."""
        if bucket < 1:
            raise ValueError(f"bucket must be at least 1 second, not {bucket}")
        params: list[object] = [int(bucket), float(since), int(upto_seq)]
        sql = _COUNTS_AFTER if after_seq > 0 else _COUNTS_WINDOW
        if after_seq > 0:
            params.append(int(after_seq))
        scope = ""
        if tenant is not None:
            scope = f" AND {tenant_of('credential')} = ?{len(params) + 1}"
            params.append(tenant)
        plus = "+" if tenant is None and after_seq <= 0 else ""
        return await self._read(_event_counts, sql.format(plus=plus, tenant=scope), params)

    async def queue_figures(self, tenant: str | None = None) -> dict[str, Any]:
        """Pending recipients: {"queued": n, "held": n, "held_messages":
        messages with a held recipient, "oldest_queued_at": received_at of
        the oldest message with a queued recipient, or None}."""
        return await self._read(_queue_figures, tenant)

    async def domain_deferrals(self, tenant: str | None, limit: int) -> list[dict[str, Any]]:
        """Per recipient domain of pending recipients (of `tenant`, or
        everyone's): {"domain", "recipients", "held", "deferred" (queued after
        an attempt), "oldest_received_at", "last_error" (the latest reply of a
        deferred recipient, or None)}; the most deferred first, at most
        `limit`."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        params: list[object] = [int(limit)]
        scope = ""
        if tenant is not None:
            scope = f" AND {tenant_of('m.credential')} = ?2"
            params.append(tenant)
        return await self._read(_domain_deferrals, _DEFERRALS.format(tenant=scope), params)


async def _event_counts(conn: aiosqlite.Connection, sql: str,
                        params: list[object]) -> list[tuple[int, str, int]]:
    return [(int(b), str(t), int(n)) for b, t, n in await fetchall(conn, sql, params)]


async def _queue_figures(conn: aiosqlite.Connection, tenant: str | None) -> dict[str, Any]:
    if tenant is None:
        (queued, held, held_messages), = await fetchall(conn, _QUEUE_ALL)
        rows = await fetchall(conn, _OLDEST_QUEUED)
        oldest = rows[0][0] if rows else None
    else:
        (queued, held, held_messages, oldest), = await fetchall(conn, _QUEUE_TENANT, (tenant,))
    return {"queued": int(queued), "held": int(held), "held_messages": int(held_messages),
            "oldest_queued_at": None if oldest is None else float(oldest)}


async def _domain_deferrals(conn: aiosqlite.Connection, sql: str,
                            params: list[object]) -> list[dict[str, Any]]:
    out = []
    for domain, n, held, deferred, oldest, stamped in await fetchall(conn, sql, params):
        out.append({"domain": domain, "recipients": int(n), "held": int(held or 0),
                    "deferred": int(deferred or 0), "oldest_received_at": oldest,
                    "last_error": stamped[STAMP_WIDTH:] if stamped else None})
    return out
