"""The account tables' store of record in a cluster (issue 19).

One job: hold every node's changes to its account tables (tenants and what
they own, API keys, templates and their versions, webhook endpoints made
through the API) in one PostgreSQL table, so that a row made, changed or
deleted through any node reaches every other node. Each node keeps its own
tables in its spool index (the read path: fast, and working while
PostgreSQL is down); runtime/cluster_accounts.py pushes the node's local
changes here and pulls the others' back. The mechanism of suppressions.py,
generic over tables.

API
    MIGRATIONS
    Change = (local_seq, op, tbl, pk, row, ukey)   one local change: op
        "upsert" | "delete" | "seed" (a row the node held before it joined:
        written only where PostgreSQL has no row of that key, nor a live
        row of that unique key); pk a JSON array, row a JSON object (opaque
        here), ukey the row's unique key beyond pk (None: none)
    Row = (tbl, pk, row, deleted, seq)
    await push(conn, origin, writer, changes, now) -> int   as
        suppressions.push: one transaction, the writer's high-water mark
        makes a retried batch harmless; returns the highest local_seq recorded
    await pull(conn, after, origin, limit) -> (rows, pruned_through)
    await sweep(conn, after_key, limit) -> rows   live rows in (tbl, pk) order
    await high_water(conn) -> int
    await prune(conn, before) -> int              tombstones older than `before`
    TOMBSTONE_DAYS

Invariants
- One row per (tbl, pk): its latest write (PostgreSQL's latest write wins).
  A deletion is a tombstone (deleted = TRUE) kept TOMBSTONE_DAYS.
- At most one live row per (tbl, ukey) (a partial unique index): a write
  whose unique key a live row of another pk holds first makes that row a
  tombstone, with the lower seq, so every node applying changes in seq
  order never meets the collision (an active API key's name, a tenant's
  template alias: the latest wins, the other is removed).
- seq is drawn under the advisory lock ACCOUNTS_LOCK, so seq order is
  commit order; `pruned_through` as in suppressions.py.
- One table for every account table: one seq, one cursor and one pull per
  node for all of them, their changes in commit order across tables (a
  template before its versions, a tenant before what it owns), and a new
  shared table needs no migration. The row stays text (SQLite's JSON): a
  \\u0000 escape that jsonb refuses cannot wedge the outbox, and the one
  thing PostgreSQL must see inside a row, its unique key, is a column.
- tbl and pk collate "C" (byte order), SQLite's, so key ranges agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mta.cluster.db import Migration
from mta.cluster.feed import Feed, pg_text

__all__ = ["ACCOUNTS_LOCK", "MIGRATIONS", "TOMBSTONE_DAYS", "high_water", "prune", "pull",
           "push", "sweep"]

# pg_advisory_xact_lock key: "mta-acct" in ASCII, as a bigint.
ACCOUNTS_LOCK = 0x6D74612D61636374
TOMBSTONE_DAYS = 30

MIGRATIONS = [Migration("accounts", 1, """
CREATE SEQUENCE account_seq;
CREATE TABLE account_rows (
    tbl      TEXT COLLATE "C" NOT NULL,
    pk       TEXT COLLATE "C" NOT NULL,
    row      TEXT NOT NULL DEFAULT '',
    ukey     TEXT,
    deleted  BOOLEAN NOT NULL DEFAULT FALSE,
    origin   TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    changed  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tbl, pk)
);
CREATE INDEX account_rows_seq ON account_rows (seq);
CREATE UNIQUE INDEX account_rows_ukey ON account_rows (tbl, ukey)
    WHERE ukey IS NOT NULL AND NOT deleted;
CREATE TABLE account_writers (
    writer  TEXT PRIMARY KEY,
    origin  TEXT NOT NULL,
    through BIGINT NOT NULL,
    at      DOUBLE PRECISION NOT NULL
);
CREATE TABLE account_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO account_meta (name, value) VALUES ('pruned_through', 0);
""")]

_COLS = "tbl, pk, row, deleted, seq"

# Params: tbl, pk, row, ukey, origin, now.
_UPSERT = (
    "INSERT INTO account_rows (tbl, pk, row, ukey, deleted, origin, seq, changed) "
    "VALUES ($1, $2, $3, $4, FALSE, $5, nextval('account_seq'), $6) "
    "ON CONFLICT (tbl, pk) DO UPDATE SET row = excluded.row, ukey = excluded.ukey, "
    "deleted = FALSE, origin = excluded.origin, seq = excluded.seq, changed = excluded.changed")
# Only where there is no row of the key, nor a live one of the unique key.
_SEED = (
    "INSERT INTO account_rows (tbl, pk, row, ukey, deleted, origin, seq, changed) "
    "SELECT $1::text, $2::text, $3::text, $4::text, FALSE, $5::text, nextval('account_seq'), "
    "$6::float8 WHERE NOT EXISTS "
    "(SELECT 1 FROM account_rows WHERE tbl = $1 AND (pk = $2 OR (ukey = $4 AND NOT deleted)))")
# Params: tbl, pk, origin, now.
_TOMBSTONE = (
    "INSERT INTO account_rows (tbl, pk, row, deleted, origin, seq, changed) "
    "VALUES ($1, $2, '', TRUE, $3, nextval('account_seq'), $4) "
    "ON CONFLICT (tbl, pk) DO UPDATE SET row = '', ukey = NULL, deleted = TRUE, "
    "origin = excluded.origin, seq = excluded.seq, changed = excluded.changed")
# Params: tbl, ukey, pk, origin, now: the live row of another pk holding ukey.
_DISPLACE = (
    "UPDATE account_rows SET row = '', ukey = NULL, deleted = TRUE, origin = $4, "
    "seq = nextval('account_seq'), changed = $5 "
    "WHERE tbl = $1 AND ukey = $2 AND pk <> $3 AND NOT deleted")


def _statements(changes: Sequence[Sequence[Any]], through: int, origin: str,
                now: float) -> list[tuple[str, tuple[Any, ...]]]:
    out: list[tuple[str, tuple[Any, ...]]] = []
    for seq, op, tbl, pk, row, ukey in changes:
        if seq <= through:
            continue
        key = (pg_text(tbl), pg_text(pk))
        if op == "delete" or row is None:
            out.append((_TOMBSTONE, (*key, origin, now)))
            continue
        uk = None if ukey is None else pg_text(ukey)
        if op == "seed":
            out.append((_SEED, (*key, pg_text(row), uk, origin, now)))
            continue
        if uk is not None:
            out.append((_DISPLACE, (key[0], uk, key[1], origin, now)))
        out.append((_UPSERT, (*key, pg_text(row), uk, origin, now)))
    return out


FEED = Feed("account_rows", ("tbl", "pk"), _COLS, "account_writers", "account_meta",
            ACCOUNTS_LOCK)


async def push(conn: Any, origin: str, writer: str, changes: Sequence[Sequence[Any]],
               now: float) -> int:
    return await FEED.push(conn, origin, writer, changes, now, _statements)


pull, sweep, high_water, prune = FEED.pull, FEED.sweep, FEED.high_water, FEED.prune
