"""Named documents every node shares, latest write wins: the sending domains
(with their sealed DKIM keys) and the SMTP AUTH credentials (issue 19).

One job: hold, per kind, one JSON document per name in PostgreSQL, each
write stamped with a sequence number in commit order, so a node can push
its local changes and pull everyone else's by cursor. What a document
holds is the caller's business (runtime/cluster_domains.py,
runtime/cluster_credentials.py); this module never opens one.

API
    MIGRATIONS                  tables sending_domains, smtp_credentials,
                                cluster_meta
    TABLES                      the kinds: "sending_domains", "smtp_credentials"
    Change = (op, name, doc)    op "upsert" | "seed" | "delete"; doc: JSON text
                                (None for "delete"). A "seed" is a document the
                                node held before it ever synced that name: it
                                is written only where the cluster has no live
                                document of that name
    Row = (name, doc, deleted, seq, origin)
    await push(conn, table, origin, changes, now) -> [bool]   one transaction;
        per change whether it was recorded (False: a seed that lost)
    await pull(conn, table, after, origin, limit) -> [Row]    seq > after, in
        seq order, tombstones included, except rows whose latest write came
        from `origin` (None: every origin)
    await fetch(conn, table, names) -> [Row]
    await cluster_secret_id(conn, key_id) -> str   the cluster's secret id:
        the first node to ask records its own

Invariants
- One row per name: its latest write. A removal is a tombstone (deleted,
  doc '{}'), kept: documents are few (domains, users), and a node that was
  away for a long time still learns of the removal by cursor.
- Every write takes the table's advisory lock for its transaction before
  drawing its seq, so seq order is commit order: a reader paging by seq
  never misses a change committed behind it.
- Nothing here holds a secret in clear: DKIM private keys arrive sealed
  (cluster/secrets.py), credentials as scrypt hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mta.cluster.db import Migration

__all__ = ["MIGRATIONS", "TABLES", "cluster_secret_id", "fetch", "pull", "push"]

TABLES = ("sending_domains", "smtp_credentials")
# pg_advisory_xact_lock keys: "mta-doms" and "mta-cred" in ASCII, as bigints.
_LOCKS = {"sending_domains": 0x6D74612D646F6D73, "smtp_credentials": 0x6D74612D63726564}


def _table_sql(table: str) -> str:
    return f"""
CREATE TABLE {table} (
    name    TEXT COLLATE "C" PRIMARY KEY,
    doc     JSONB NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    origin  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    changed DOUBLE PRECISION NOT NULL
);
CREATE INDEX {table}_seq ON {table} (seq);
"""


MIGRATIONS = [
    Migration("sending_domains", 1, "CREATE SEQUENCE IF NOT EXISTS document_seq;"
              + _table_sql("sending_domains")),
    Migration("smtp_credentials", 1, "CREATE SEQUENCE IF NOT EXISTS document_seq;"
              + _table_sql("smtp_credentials")),
    Migration("cluster_meta", 1, "CREATE TABLE cluster_meta (key TEXT PRIMARY KEY, "
              "value TEXT NOT NULL)"),
]

Change = tuple[str, str, str | None]
Row = tuple[str, str | None, bool, int, str]


def _table(table: str) -> str:
    if table not in _LOCKS:
        raise ValueError(f"not a shared document table: {table!r}")
    return table


async def push(conn: Any, table: str, origin: str, changes: Sequence[Change],
               now: float) -> list[bool]:
    t = _table(table)
    out: list[bool] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCKS[t])
        for op, name, doc in changes:
            if op == "delete":
                await conn.execute(
                    f"UPDATE {t} SET deleted = TRUE, doc = '{{}}', origin = $2, "
                    "seq = nextval('document_seq'), changed = $3 WHERE name = $1 AND NOT deleted",
                    name, origin, now)
                out.append(True)
                continue
            if op not in ("upsert", "seed"):
                raise ValueError(f"unknown change {op!r}")
            only_dead = f" WHERE {t}.deleted" if op == "seed" else ""
            status = await conn.execute(
                f"INSERT INTO {t} (name, doc, deleted, origin, seq, changed) "
                "VALUES ($1, $2::jsonb, FALSE, $3, nextval('document_seq'), $4) "
                "ON CONFLICT (name) DO UPDATE SET doc = EXCLUDED.doc, deleted = FALSE, "
                "origin = EXCLUDED.origin, seq = EXCLUDED.seq, changed = EXCLUDED.changed"
                + only_dead, name, doc, origin, now)
            out.append(status.endswith(" 1"))
    return out


def _rows(records: Sequence[Any]) -> list[Row]:
    return [(r["name"], None if r["deleted"] else r["doc"], bool(r["deleted"]), int(r["seq"]),
             r["origin"]) for r in records]


async def pull(conn: Any, table: str, after: int, origin: str | None, limit: int) -> list[Row]:
    t = _table(table)
    records = await conn.fetch(
        f"SELECT name, doc::text AS doc, deleted, seq, origin FROM {t} WHERE seq > $1 "
        "AND ($2::text IS NULL OR origin <> $2) ORDER BY seq LIMIT $3", after, origin, limit)
    return _rows(records)


async def fetch(conn: Any, table: str, names: Sequence[str]) -> list[Row]:
    t = _table(table)
    records = await conn.fetch(
        f"SELECT name, doc::text AS doc, deleted, seq, origin FROM {t} "
        "WHERE name = ANY($1::text[]) ORDER BY seq", list(names))
    return _rows(records)


async def cluster_secret_id(conn: Any, key_id: str) -> str:
    await conn.execute("INSERT INTO cluster_meta (key, value) VALUES ('secret_id', $1) "
                       "ON CONFLICT (key) DO NOTHING", key_id)
    return str(await conn.fetchval("SELECT value FROM cluster_meta WHERE key = 'secret_id'"))
