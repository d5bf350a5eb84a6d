"""The shared event ledger: every node's events, one global order.

One job: hold the events each node forwards from its local ledger (the
spool's, which stays the write path and the buffer while the database is
away) in one PostgreSQL table with a global `seq`, and answer the reads the
API, the admin API and the webhooks make of it; keep the webhook
endpoints' cursors and the leases that let one node at a time deliver an
endpoint.

API
    MIGRATIONS                       tables events, webhook_cursors, webhook_leases
    LEDGER_LOCK                      the advisory lock inserters hold
    await insert_batch(conn, node, [(EventView, tenant), …]) -> int  rows new
        (the EventView's seq is the node's local seq; repeats are ignored)
    await events_after(conn, after, limit, *, types=None, recipient=None,
                       credential=None, tenant=None) -> [EventView]  global seq order
    await message_events(conn, queue_id) -> [EventView]              seq order
    await outcomes_after(conn, after, limit, types) -> [OutcomeRow]  global seq order:
        lean rows for the reputation tracker (core.stores.OutcomeRow:
        seq, at, type, credential, detail's reason, the message's sender
        from its `received` event or None, test)
    await request_replay(conn, name, cursor) / await take_replays(conn, names) -> {name: cursor}
        a replay asked on a node that does not deliver the endpoint, applied
        by the one that does (each taken once)
    await message_node(conn, queue_id) -> str | None   the node that received it
        (forwarded its "received" event; else its first event's node)
    await last_seq(conn) -> int       the newest committed seq (0: none)
    await node_count(conn, node) -> int   events forwarded by `node`
    await prune(conn, before, batch) -> int   oldest first; never the newest row
    await webhook_state(conn, name) -> dict | None
    await set_webhook_state(conn, name, fields) -> None   (fields ⊂ WEBHOOK_FIELDS)
    await take_lease(conn, name, owner, ttl) -> bool   take or renew (the
        database's clock decides expiry: node clocks may differ)
    await release_lease(conn, name, owner) -> None
    await leases(conn) -> {name: (owner, seconds left)}

Invariants
- Seqs are assigned under LEDGER_LOCK (a transaction-level advisory lock)
  held until commit, so they become visible in seq order: a reader paging
  with `events_after(cursor)` never misses an event, and "fewer than limit
  came back" means nothing matches up to a `last_seq` read before the call.
  Seqs are unique and increase; gaps (repeats skipped) are allowed.
- (node, local_seq) is unique: forwarding a batch again is harmless, so the
  forwarder is at-least-once and the table exactly-once.
- Within a batch, seqs follow the local seqs (one node's events of one
  message keep their order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mta.cluster.db import Migration
from mta.core.stores import EventView, OutcomeRow

__all__ = ["LEDGER_LOCK", "MIGRATIONS", "WEBHOOK_FIELDS", "events_after", "insert_batch",
           "last_seq", "leases", "message_events", "message_node", "node_count",
           "outcomes_after", "prune",
           "release_lease", "set_webhook_state", "take_lease", "webhook_state", "request_replay",
           "take_replays"]

# pg_advisory_xact_lock key: "mta-led" in ASCII, as a bigint.
LEDGER_LOCK = 0x6D74612D6C6564

MIGRATIONS = [Migration("ledger", 1, """
CREATE SEQUENCE events_seq;
CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    node       TEXT NOT NULL,
    local_seq  BIGINT NOT NULL,
    at         DOUBLE PRECISION NOT NULL,
    type       TEXT NOT NULL,
    queue_id   TEXT NOT NULL DEFAULT '',
    recipient  TEXT NOT NULL DEFAULT '',
    credential TEXT NOT NULL DEFAULT '',
    tenant     TEXT NOT NULL DEFAULT 'default',
    detail     JSON NOT NULL,
    tags       JSON,
    test       BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (node, local_seq)
);
CREATE INDEX events_by_message ON events (queue_id, seq);
CREATE INDEX events_by_type ON events (type, seq);
CREATE INDEX events_at ON events (at);
CREATE TABLE webhook_cursors (
    name          TEXT PRIMARY KEY,
    cursor        BIGINT NOT NULL DEFAULT 0,
    failing_since DOUBLE PRECISION,
    next_attempt  DOUBLE PRECISION,
    attempts      INT NOT NULL DEFAULT 0,
    last_error    TEXT,
    state         TEXT NOT NULL DEFAULT 'ok'
);
CREATE TABLE webhook_leases (
    name    TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
)"""), Migration("ledger", 2, """
ALTER TABLE webhook_cursors ADD COLUMN replay_from BIGINT""")]

_COLS = "seq, at, type, queue_id, recipient, credential, detail, tags, test"

_INSERT = """
INSERT INTO events (seq, node, local_seq, at, type, queue_id, recipient, credential,
                    tenant, detail, tags, test)
SELECT nextval('events_seq'), $1, u.l, u.a, u.t, u.q, u.r, u.c, u.tn, u.d::json, u.g::json, u.x
FROM unnest($2::bigint[], $3::float8[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::bool[])
     WITH ORDINALITY AS u(l, a, t, q, r, c, tn, d, g, x, o)
ORDER BY u.o
ON CONFLICT (node, local_seq) DO NOTHING"""
# (Volatile target-list functions run after the sort: nextval follows u.o.)

WEBHOOK_FIELDS = ("cursor", "failing_since", "next_attempt", "attempts", "last_error", "state")
_NOW = "extract(epoch FROM clock_timestamp())"


async def insert_batch(conn: Any, node: str, rows: Sequence[tuple[EventView, str]]) -> int:
    """Insert one node's events (seq = its local seq) with their tenants, in
    one transaction under LEDGER_LOCK; rows already present are skipped."""
    if not rows:
        return 0
    cols: list[list[Any]] = [[] for _ in range(10)]
    for e, tenant in sorted(rows, key=lambda r: r[0].seq):
        values = (e.seq, float(e.at), e.type, e.queue_id or "", e.recipient or "",
                  e.credential or "", tenant, json.dumps(e.detail if e.detail is not None
                                                         else {}),
                  None if e.tags is None else json.dumps(e.tags), bool(e.test))
        for col, v in zip(cols, values):
            col.append(v)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LEDGER_LOCK)
        status = await conn.execute(_INSERT, node, *cols)
    return int(str(status).rsplit(" ", 1)[-1])


def _view(r: Mapping[str, Any]) -> EventView:
    detail = json.loads(r["detail"]) if r["detail"] else {}
    return EventView(seq=int(r["seq"]), at=float(r["at"]), type=r["type"],
                     queue_id=r["queue_id"], recipient=r["recipient"],
                     credential=r["credential"], detail=detail,
                     tags=None if r["tags"] is None else json.loads(r["tags"]),
                     test=bool(r["test"]))


async def events_after(conn: Any, after: int, limit: int, *,
                       types: Sequence[str] | None = None, recipient: str | None = None,
                       credential: str | None = None,
                       tenant: str | None = None) -> list[EventView]:
    """Up to `limit` events with seq > `after`, in seq order, optionally only
    of `types` ([]: none), to `recipient`, of `credential`, of `tenant` (the
    tenant the forwarding node saw own the credential)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if types is not None and not types:
        return []
    where: list[str] = ["seq > $1"]
    params: list[Any] = [int(after)]
    for col, value in (("recipient", recipient), ("credential", credential),
                       ("tenant", tenant)):
        if value is not None:
            params.append(value)
            where.append(f"{col} = ${len(params)}")
    if types is not None:
        params.append(list(dict.fromkeys(types)))
        where.append(f"type = ANY(${len(params)}::text[])")
    params.append(int(limit))
    rows = await conn.fetch(f"SELECT {_COLS} FROM events WHERE {' AND '.join(where)} "
                            f"ORDER BY seq LIMIT ${len(params)}", *params)
    return [_view(r) for r in rows]


async def message_events(conn: Any, queue_id: str) -> list[EventView]:
    rows = await conn.fetch(f"SELECT {_COLS} FROM events WHERE queue_id = $1 ORDER BY seq",
                            queue_id)
    return [_view(r) for r in rows]


async def message_node(conn: Any, queue_id: str) -> str | None:
    v = await conn.fetchval("SELECT node FROM events WHERE queue_id = $1 "
                            "ORDER BY (type <> 'received'), seq LIMIT 1", queue_id)
    return None if v is None else str(v)


_OUTCOMES = """
SELECT e.seq, e.at, e.type, e.credential, e.detail->>'reason' AS reason,
       CASE WHEN e.queue_id = '' THEN NULL ELSE
         (SELECT r.detail->>'sender' FROM events r WHERE r.queue_id = e.queue_id
          AND r.type = 'received' ORDER BY r.seq LIMIT 1) END AS sender, e.test
FROM events e WHERE e.seq > $1 AND e.type = ANY($2::text[]) ORDER BY e.seq LIMIT $3"""


async def outcomes_after(conn: Any, after: int, limit: int,
                         types: Sequence[str]) -> list[OutcomeRow]:
    """Up to `limit` events of `types` after `after`, in global seq order,
    as the reputation tracker reads them (every node's)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    rows = await conn.fetch(_OUTCOMES, int(after), list(dict.fromkeys(types)), int(limit))
    return [OutcomeRow(int(r["seq"]), float(r["at"]), r["type"], r["credential"] or "",
                    r["reason"], r["sender"], bool(r["test"])) for r in rows]


async def last_seq(conn: Any) -> int:
    return int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events"))


async def node_count(conn: Any, node: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events WHERE node = $1", node))


async def prune(conn: Any, before: float, batch: int) -> int:
    """Delete at most `batch` of the oldest events with at < `before`,
    keeping the newest row (so `last_seq` never goes down)."""
    status = await conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < $1 "
        "AND seq < (SELECT MAX(seq) FROM events) ORDER BY at LIMIT $2)", float(before),
        int(batch))
    return int(str(status).rsplit(" ", 1)[-1])


# -- webhook cursors and leases ---------------------------------------------------------

async def webhook_state(conn: Any, name: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT name, {', '.join(WEBHOOK_FIELDS)} FROM webhook_cursors "
                              "WHERE name = $1", name)
    return None if row is None else dict(row)


async def set_webhook_state(conn: Any, name: str, fields: Mapping[str, Any]) -> None:
    """Create or update `name`'s row: the given fields change, the others
    keep their value (or the defaults for a new row)."""
    bad = [f for f in fields if f not in WEBHOOK_FIELDS]
    if bad:
        raise ValueError(f"unknown webhook state fields {bad}")
    names = list(fields)
    if not names:
        await conn.execute("INSERT INTO webhook_cursors (name) VALUES ($1) "
                           "ON CONFLICT (name) DO NOTHING", name)
        return
    cols = ", ".join(["name", *names])
    marks = ", ".join(f"${i}" for i in range(1, len(names) + 2))
    sets = ", ".join(f"{f} = excluded.{f}" for f in names)
    await conn.execute(f"INSERT INTO webhook_cursors ({cols}) VALUES ({marks}) "
                       f"ON CONFLICT (name) DO UPDATE SET {sets}", name,
                       *(fields[f] for f in names))


async def take_lease(conn: Any, name: str, owner: str, ttl: float) -> bool:
    """Take endpoint `name` for `owner` for `ttl` seconds, or renew it: True
    when `owner` holds it now (free, expired, or already its own)."""
    got = await conn.fetchval(
        f"INSERT INTO webhook_leases (name, owner, expires) VALUES ($1, $2, {_NOW} + $3) "
        "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
        f"WHERE webhook_leases.owner = excluded.owner OR webhook_leases.expires < {_NOW} "
        "RETURNING owner", name, owner, float(ttl))
    return bool(got == owner)


async def release_lease(conn: Any, name: str, owner: str) -> None:
    await conn.execute("UPDATE webhook_leases SET expires = 0 WHERE name = $1 AND owner = $2",
                       name, owner)


async def leases(conn: Any) -> dict[str, tuple[str, float]]:
    rows = await conn.fetch(f"SELECT name, owner, expires - {_NOW} AS left FROM webhook_leases")
    return {r["name"]: (r["owner"], float(r["left"])) for r in rows}


async def request_replay(conn: Any, name: str, cursor: int) -> None:
    """Ask the node delivering `name` to move its cursor to `cursor` (a
    replay made on another node: runtime/cluster_ledger.py)."""
    await conn.execute("INSERT INTO webhook_cursors (name, cursor, replay_from) "
                       "VALUES ($1, $2, $2) ON CONFLICT (name) DO UPDATE SET "
                       "replay_from = excluded.replay_from", name, cursor)


async def take_replays(conn: Any, names: Sequence[str]) -> dict[str, int]:
    """The replays asked for `names`, each taken once (cleared)."""
    rows = await conn.fetch(
        "UPDATE webhook_cursors w SET replay_from = NULL FROM "
        "(SELECT name, replay_from FROM webhook_cursors WHERE name = ANY($1::text[]) "
        "AND replay_from IS NOT NULL FOR UPDATE) r "
        "WHERE w.name = r.name RETURNING r.name, r.replay_from", list(names))
    return {r["name"]: int(r["replay_from"]) for r in rows}
