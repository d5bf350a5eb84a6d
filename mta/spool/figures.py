"""Aggregates for the console's overview: event counts per time bucket, and
the queue's figures, for everyone or for one tenant.

One job: the grouped reads a dashboard makes over the ledger (``events``)
and the queue (``recipients``, ``messages``), on the reader connection
(committed rows only), the grouping done by SQLite, each read bounded by
what it reports on (the window's events, the pending recipients), never
by the history kept.

API:
    figures = spool.figures                  (made by Spool.open)
    await figures.event_counts(since, *, bucket=60, after_seq=0, upto_seq,
                               tenant=None) -> [(bucket index, type, n)]
        events of SERIES_TYPES with at >= since and after_seq < seq <=
        upto_seq, counted per (floor(at / bucket), type)
    await figures.queue(tenant=None) -> {"queued", "held", "held_messages",
        "oldest_queued_at", "domains": [{"domain", "recipients", "held",
        "deferred", "last_error", "last_error_at", "oldest_received_at"}]}
    SERIES_TYPES     the event types event_counts counts

Invariants:
- Every statement is bounded: event_counts walks the index on (at, type)
  over the window (after_seq = 0; a tenant's looks up each row's
  credential), or the primary key over the seqs after a cursor
  (incremental). `queue` is one grouped pass over the pending recipients
  (recipients_due: each one's row, and for a tenant its message), then
  at most two statements whose plans the pass's counts choose so that
  each visits no more than the held or the queued recipients (`_queue`).
  A tenant is its credential's owner (spool/tenant_sql.py), so a tenant's
  figures are decided as its API reads are.
- Counting by seq range is exact: seqs are assigned at commit by the one
  writer, so every event up to a seq read before (ledger.last_event_seq)
  is visible, and a later call with after_seq = that seq counts each event
  once, whatever its `at`.
- Several statements of one call each see their own snapshot (the reader
  runs in autocommit): a figure may lag another by the writes committed
  in between (milliseconds), never count a row twice within a statement.
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

# The whole window: the (at, type) index over the window ("+type", "+seq":
# not events_by_type, nor the primary key, which would walk the whole
# history); covering for everyone's, a lookup of each row's credential for
# a tenant's. Params: bucket, since, upto[, tenant].
_COUNTS_WINDOW = ("SELECT CAST(at / ?1 AS INTEGER), type, COUNT(*) FROM events "
                  "WHERE at >= ?2 AND +type IN (" + _TYPES + ") AND +seq <= ?3{tenant} "
                  "GROUP BY 1, 2")
# After a cursor: the primary key (or events_by_type) from after_seq ("+at":
# not the window's index). Params: bucket, since, upto, after[, tenant].
_COUNTS_AFTER = ("SELECT CAST(at / ?1 AS INTEGER), type, COUNT(*) FROM events "
                 "WHERE seq > ?4 AND seq <= ?3 AND +at >= ?2 AND type IN (" + _TYPES
                 + "){tenant} GROUP BY 1, 2")

# -- the queue (pending recipients: queued or held) --------------------------------
# One grouped pass per recipient domain (recipients_due by state, each
# pending recipient's row read once): waiting, held, "held first" (held
# recipients that are their message's recipient 0 — every message has one
# — so the messages whose recipient 0 is held are counted without a
# DISTINCT), deferred (queued after an attempt), and the latest reply of a
# deferred recipient (MAX over "updated_at (fixed width) || reply", as
# queue_sql's SQL_DOMAIN_SUMMARY finds it). Everyone's never reads a
# message; a tenant's joins each recipient to its message for the
# credential (no index names a tenant's mail), and so also gets, in the
# same pass, each domain's oldest message and oldest with a queued
# recipient. Param (a tenant's): tenant.
_DEFERRED = "r.state = 'queued' AND r.attempts > 0"
_DOMAIN_COLS = ("r.domain, COUNT(*), SUM(r.state = 'held'), "
                "SUM(r.state = 'held' AND r.rcpt_idx = 0), "
                f"SUM({_DEFERRED}), MAX(CASE WHEN {_DEFERRED} AND r.last_reply IS NOT NULL "
                f"THEN printf('%0{STAMP_WIDTH}.6f', r.updated_at) || r.last_reply END)")
_PENDING = "r.state IN ('queued', 'held')"
_JOIN = " JOIN messages m ON m.id = r.message_id"
_TENANT = f"{tenant_of('m.credential')} = ?1"
_DOMAINS_ALL = (f"SELECT {_DOMAIN_COLS}, NULL, NULL FROM recipients r "
                f"WHERE {_PENDING} GROUP BY r.domain")
_DOMAINS_TENANT = (f"SELECT {_DOMAIN_COLS}, MIN(m.received_at), "
                   "MIN(CASE WHEN r.state = 'queued' THEN m.received_at END) "
                   f"FROM recipients r{_JOIN} WHERE {_PENDING} AND {_TENANT} "
                   "GROUP BY r.domain")
# The other messages with a held recipient: those whose recipient 0 is not
# held. One primary-key seek per held recipient past its message's first
# ("+f.state": not recipients_due), a DISTINCT over the few found. Run only
# when some held recipient is not a recipient 0. {join}/{tenant}: _JOIN and
# " AND " _TENANT for a tenant's (param ?1), else empty.
_HELD_ELSEWHERE = ("SELECT COUNT(DISTINCT r.message_id) FROM recipients r{join} "
                   "WHERE r.state = 'held' AND r.rcpt_idx > 0{tenant} AND NOT EXISTS "
                   "(SELECT 1 FROM recipients f WHERE f.message_id = r.message_id "
                   "AND f.rcpt_idx = 0 AND +f.state = 'held')")
# Everyone's oldest message with a queued recipient, by the plan with fewer
# rows to visit (_queue picks it by the counts of the pass): per queued
# recipient a primary-key probe of its message (visits the queued ones) ...
_OLDEST_BY_RECIPIENTS = ("SELECT MIN(m.received_at) FROM recipients r "
                         "JOIN messages m ON m.id = r.message_id WHERE r.state = 'queued'")
# ... or messages_pending in received_at order, stopping at the first with
# a queued recipient, found by its own recipients' primary key ("+r.state":
# never a walk of recipients_due per message); the messages passed over
# have only held recipients (visits at most the held messages).
_OLDEST_BY_MESSAGES = ("SELECT m.received_at FROM messages m WHERE m.done = 0 AND EXISTS "
                       "(SELECT 1 FROM recipients r WHERE r.message_id = m.id "
                       "AND +r.state = 'queued') ORDER BY m.received_at LIMIT 1")


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
        return await self._read(_event_counts, sql.format(tenant=scope), params)

    async def queue(self, tenant: str | None = None) -> dict[str, Any]:
        """The pending recipients (of `tenant`, or everyone's): {"queued": n,
        "held": n, "held_messages": messages with a held recipient,
        "oldest_queued_at": received_at of the oldest message with a queued
        recipient, or None, "domains": [per recipient domain, in no order:
        {"domain", "recipients" (queued or held), "held", "deferred" (queued
        after an attempt), "last_error" (the latest reply of a deferred
        recipient, or None), "last_error_at" (when it came, or None),
        "oldest_received_at" (a tenant's: its oldest message; everyone's:
        None, not read)}]}."""
        return await self._read(_queue, tenant)


async def _event_counts(conn: aiosqlite.Connection, sql: str,
                        params: list[object]) -> list[tuple[int, str, int]]:
    return [(int(b), str(t), int(n)) for b, t, n in await fetchall(conn, sql, params)]


async def _queue(conn: aiosqlite.Connection, tenant: str | None) -> dict[str, Any]:
    """The grouped pass first; then, only when its counts say they are
    needed, the held messages whose recipient 0 is not held, and (everyone's)
    the oldest queued message by the cheaper walk: over the queued
    recipients when they are no more than the held ones, else over the
    pending messages in age order (those passed over have only held
    recipients)."""
    params: tuple[object, ...] = () if tenant is None else (tenant,)
    rows = await fetchall(conn, _DOMAINS_ALL if tenant is None else _DOMAINS_TENANT, params)
    domains, oldest = [], None
    total = held = held_first = 0
    for domain, n, h, first, deferred, stamped, received, queued_at in rows:
        total, held, held_first = total + int(n), held + int(h or 0), held_first + int(first or 0)
        if queued_at is not None and (oldest is None or queued_at < oldest):
            oldest = queued_at
        domains.append({"domain": domain, "recipients": int(n), "held": int(h or 0),
                        "deferred": int(deferred or 0),
                        "last_error": stamped[STAMP_WIDTH:] if stamped else None,
                        "last_error_at": float(stamped[:STAMP_WIDTH]) if stamped else None,
                        "oldest_received_at": None if received is None else float(received)})
    queued, held_messages = total - held, held_first
    if held > held_first:
        scoped = {"join": _JOIN, "tenant": f" AND {_TENANT}"} if tenant is not None else \
            {"join": "", "tenant": ""}
        (more,), = await fetchall(conn, _HELD_ELSEWHERE.format(**scoped), params)
        held_messages += int(more)
    if tenant is None and queued:
        found = await fetchall(conn, _OLDEST_BY_RECIPIENTS if queued <= held
                               else _OLDEST_BY_MESSAGES)
        oldest = found[0][0] if found else None
    return {"queued": queued, "held": held, "held_messages": held_messages,
            "oldest_queued_at": None if oldest is None else float(oldest), "domains": domains}
