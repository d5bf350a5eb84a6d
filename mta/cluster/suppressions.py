"""The suppression list's store of record in a cluster (issue 19).

One job: hold every node's suppression changes in one PostgreSQL table so
that an entry added (or removed) through any node reaches every other node.
Each node keeps its own copy in its spool index (the per-RCPT check stays a
local read, and works while PostgreSQL is down); runtime/cluster_suppressions.py
pushes the node's local changes here and pulls the others' back.

API
    MIGRATIONS
    Change = (local_seq, op, address, scope, reason, queue_id, reply, created, expires)
        one local change, op "upsert" | "delete" | "seed" (an entry the node
        held before it joined: written only where PostgreSQL has no row)
    Row = (address, scope, reason, queue_id, reply, created, expires, deleted, seq)
    await push(conn, origin, writer, changes, now) -> int
        apply `changes` in one transaction; returns the highest local_seq now
        recorded (the caller may forget its changes up to it). `writer` names
        the local outbox (node + index instance): a change at or below the
        writer's recorded high-water mark was pushed already and is skipped,
        so a retry after a crash between the PostgreSQL commit and the local
        delete never replays an old change over a newer one.
    await pull(conn, after, origin, limit) -> (rows, pruned_through)
        changes with seq > after, in seq order, tombstones included, except
        those whose latest write came from `origin` (None: every origin)
    await sweep(conn, after_key, limit) -> rows   live rows in key order
                                                  after (address, scope)
    await high_water(conn) -> int                 the newest seq
    await prune(conn, before) -> int              tombstones older than `before`
    TOMBSTONE_DAYS
    pg_text, execute_runs  re-exported from cluster/feed.py (the feed's
                           mechanics, shared with accounts.py)

Invariants
- One row per (address, scope): its latest write (PostgreSQL's latest write
  wins). A removal is a tombstone row (deleted = TRUE) kept TOMBSTONE_DAYS.
- Every write takes the advisory lock SUPPRESSION_LOCK for its transaction
  before drawing its seq, so seq order is commit order: a reader paging by
  seq never misses a change committed behind it.
- `pruned_through` (suppression_meta) is the highest seq of a pruned
  tombstone: a reader whose cursor is below it may have missed a removal
  and must re-read the whole list (`sweep`). `pull` reads it in the same
  snapshot as the rows.
- address and scope collate "C" (byte order of UTF-8), SQLite's order, so
  a key range means the same on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mta.cluster.db import Migration
from mta.cluster.feed import Feed, execute_runs, pg_text

__all__ = ["MIGRATIONS", "SUPPRESSION_LOCK", "TOMBSTONE_DAYS", "execute_runs", "high_water",
           "pg_text", "prune", "pull", "push", "sweep"]

# pg_advisory_xact_lock key: "mta-supp" in ASCII, as a bigint.
SUPPRESSION_LOCK = 0x6D74612D73757070
TOMBSTONE_DAYS = 30

MIGRATIONS = [Migration("suppressions", 1, """
CREATE SEQUENCE suppression_seq;
CREATE TABLE suppressions (
    address  TEXT COLLATE "C" NOT NULL,
    scope    TEXT COLLATE "C" NOT NULL DEFAULT '',
    reason   TEXT NOT NULL,
    queue_id TEXT NOT NULL DEFAULT '',
    reply    TEXT NOT NULL DEFAULT '',
    created  DOUBLE PRECISION NOT NULL,
    expires  DOUBLE PRECISION,
    deleted  BOOLEAN NOT NULL DEFAULT FALSE,
    origin   TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    changed  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (address, scope)
);
CREATE INDEX suppressions_seq ON suppressions (seq);
CREATE TABLE suppression_writers (
    writer  TEXT PRIMARY KEY,
    origin  TEXT NOT NULL,
    through BIGINT NOT NULL,
    at      DOUBLE PRECISION NOT NULL
);
CREATE TABLE suppression_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO suppression_meta (name, value) VALUES ('pruned_through', 0);
""")]

_COLS = "address, scope, reason, queue_id, reply, created, expires, deleted, seq"

# Params: address, scope, reason, queue_id, reply, created, expires, origin, now.
_UPSERT = (
    "INSERT INTO suppressions (address, scope, reason, queue_id, reply, created, expires, "
    "deleted, origin, seq, changed) VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, $8, "
    "nextval('suppression_seq'), $9) ON CONFLICT (address, scope) DO UPDATE SET "
    "reason = excluded.reason, queue_id = excluded.queue_id, reply = excluded.reply, "
    "created = excluded.created, expires = excluded.expires, deleted = FALSE, "
    "origin = excluded.origin, seq = excluded.seq, changed = excluded.changed")
# Only where there is no row (live or tombstone): the cluster's word stands.
_SEED = _UPSERT.split(" ON CONFLICT")[0] + " ON CONFLICT (address, scope) DO NOTHING"
# Params: address, scope, origin, now.
_TOMBSTONE = (
    "INSERT INTO suppressions (address, scope, reason, created, deleted, origin, seq, changed) "
    "VALUES ($1, $2, '', $4, TRUE, $3, nextval('suppression_seq'), $4) "
    "ON CONFLICT (address, scope) DO UPDATE SET deleted = TRUE, origin = excluded.origin, "
    "seq = excluded.seq, changed = excluded.changed")


def _statements(changes: Sequence[Sequence[Any]], through: int, origin: str,
                now: float) -> list[tuple[str, tuple[Any, ...]]]:
    out: list[tuple[str, tuple[Any, ...]]] = []
    for seq, op, address, scope, reason, queue_id, reply, created, expires in changes:
        if seq <= through:
            continue
        key = (pg_text(address), pg_text(scope))
        if op == "delete":
            out.append((_TOMBSTONE, (*key, origin, now)))
        else:
            row = (*key, pg_text(reason), pg_text(queue_id), pg_text(reply), float(created),
                   None if expires is None else float(expires), origin, now)
            out.append((_SEED if op == "seed" else _UPSERT, row))
    return out


FEED = Feed("suppressions", ("address", "scope"), _COLS, "suppression_writers",
            "suppression_meta", SUPPRESSION_LOCK)


async def push(conn: Any, origin: str, writer: str, changes: Sequence[Sequence[Any]],
               now: float) -> int:
    return await FEED.push(conn, origin, writer, changes, now, _statements)


pull, sweep, high_water, prune = FEED.pull, FEED.sweep, FEED.high_water, FEED.prune
