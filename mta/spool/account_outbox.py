"""The account tables' outbox in the spool index, for a cluster (issue 19).

One job: record every change to the index's account tables — tenants,
tenant_owned, api_keys, templates, template_versions, webhook_endpoints —
durably, in the transaction that makes it, whoever the writer is (the
daemon, the admin and sending APIs, the console, `mta …` commands): triggers
on each table fill `cluster_account_outbox` with the table's name, the
primary key and the row as JSON, so no writer changes. The cluster runtime
(runtime/cluster_accounts.py) pushes the outbox to PostgreSQL
(cluster/accounts.py) and writes the other nodes' changes back through
`apply_remote` / `apply_sweep`. The design, and the plumbing, of
spool/suppression_outbox.py, generic over tables.

API (synchronous, plain sqlite3; `path` is the index file):
    TABLES: {table: Table(pk, unique, local)}   what is shared, and how
    install(path) -> writer id       the tables, the outbox, the triggers
                                     (re-made from the live schema each time);
                                     the rows of a table never seen before are
                                     queued as "seed" changes
    read_batch(path, limit) -> [(seq, op, tbl, pk, row, ukey)]   oldest first;
        op upsert | delete | seed; pk a JSON array, row a JSON object (None
        for a delete), ukey the row's unique key (unique_key) or None
    delete_through(path, seq) -> int     forget pushed changes
    cursor(path) -> int              the pull cursor (-1: never synced)
    apply_remote(path, rows, cursor) -> int    rows (tbl, pk, row, deleted, …)
        written, in order; returns the local rows changed; the cursor set
    apply_sweep(path, lo, hi, rows, cursor=None) -> int   make the keys
        (tbl, pk) in (lo, hi] (None: open end) hold exactly `rows`
    unique_key(tbl, row) -> str | None   the value of the table's unique
        constraint beyond its primary key, None when the row is outside it

Invariants
- A change and its outbox row commit together (the triggers). A column in
  `Table.local` (api_keys.last_used: a write a minute per key) is neither
  sent nor watched: changing only it makes no outbox row, and a pulled row
  leaves it as it is here.
- Pulled rows are applied without echo (their outbox rows are deleted in
  the same BEGIN IMMEDIATE transaction) and never over a key with a local
  change still queued: that change is pushed next and becomes PostgreSQL's
  latest write.
- Unique constraints beyond the key (an active key's name, a tenant's
  template alias): a pulled row that collides with a local row removes it
  (PostgreSQL keeps one live row per unique key: its latest write), unless
  the local row has a change queued (then the pulled row waits: the local
  one wins when pushed). A pulled row this schema cannot hold is skipped,
  never wedging the pull.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mta.spool.apikeys import API_KEYS_SCHEMA
from mta.spool.suppression_outbox import (apply_pulled, connect, delete_outbox_through,
                                          state_cursor)
from mta.spool.templates import TEMPLATES_SCHEMA
from mta.spool.tenants import TENANTS_SCHEMA
from mta.spool.webhook_endpoints import WEBHOOK_ENDPOINTS_SCHEMA

__all__ = ["OUTBOX_SCHEMA", "TABLES", "Table", "Unique", "apply_remote", "apply_sweep",
           "cursor", "delete_through", "install", "read_batch", "unique_key"]

log = logging.getLogger("mta.cluster")


@dataclass(frozen=True, slots=True)
class Unique:
    """A unique index beyond the primary key: `cols` equal, each not NULL,
    among rows whose `null` columns are NULL (a partial index)."""
    cols: tuple[str, ...]
    null: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Table:
    pk: tuple[str, ...]
    unique: Unique | None = None
    local: tuple[str, ...] = ()


TABLES: dict[str, Table] = {
    "api_keys": Table(("id",), Unique(("name",), null=("revoked",)), local=("last_used",)),
    "template_versions": Table(("template_id", "version")),
    "templates": Table(("id",), Unique(("tenant", "alias"))),
    "tenant_owned": Table(("kind", "name")),
    "tenants": Table(("name",)),
    "webhook_endpoints": Table(("name",)),
}
_SCHEMAS = TENANTS_SCHEMA + API_KEYS_SCHEMA + TEMPLATES_SCHEMA + WEBHOOK_ENDPOINTS_SCHEMA

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS cluster_account_outbox (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    op   TEXT NOT NULL,            -- upsert | delete | seed
    tbl  TEXT NOT NULL,
    pk   TEXT NOT NULL,            -- JSON array of the primary key's values
    row  TEXT                      -- JSON object of the shared columns; NULL: delete
);
CREATE INDEX IF NOT EXISTS cluster_account_outbox_key ON cluster_account_outbox (tbl, pk);
CREATE TABLE IF NOT EXISTS cluster_account_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

_OUTBOX, _STATE = "cluster_account_outbox", "cluster_account_state"
_OUT = "INSERT INTO cluster_account_outbox (op, tbl, pk, row)"
_PENDING = "SELECT 1 FROM cluster_account_outbox WHERE tbl = ? AND pk = ? LIMIT 1"
_SET = "INSERT OR REPLACE INTO cluster_account_state (name, value) VALUES (?, ?)"
_GET = "SELECT value FROM cluster_account_state WHERE name = ?"


def _columns(db: sqlite3.Connection, tbl: str) -> list[str]:
    """The table's shared columns, in schema order."""
    local = TABLES[tbl].local
    return [str(r[1]) for r in db.execute(f"PRAGMA table_info({tbl})") if r[1] not in local]


def _pk(tbl: str, prefix: str = "") -> str:
    return f"json_array({', '.join(prefix + c for c in TABLES[tbl].pk)})"


def _obj(cols: Sequence[str], prefix: str = "") -> str:
    pairs = ", ".join(f"'{c}', {prefix}{c}" for c in cols)
    return f"json_object({pairs})"


def _triggers(db: sqlite3.Connection, tbl: str) -> str:
    cols = _columns(db, tbl)
    name = f"cluster_account_{tbl}"
    upsert = f"{_OUT} VALUES ('upsert', '{tbl}', {_pk(tbl, 'NEW.')}, {_obj(cols, 'NEW.')});"
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in cols)
    return f"""
DROP TRIGGER IF EXISTS {name}_ins;
DROP TRIGGER IF EXISTS {name}_upd;
DROP TRIGGER IF EXISTS {name}_del;
CREATE TRIGGER {name}_ins AFTER INSERT ON {tbl} BEGIN {upsert} END;
CREATE TRIGGER {name}_upd AFTER UPDATE ON {tbl} WHEN {changed} BEGIN
    {_OUT} SELECT 'delete', '{tbl}', {_pk(tbl, 'OLD.')}, NULL
        WHERE {_pk(tbl, 'OLD.')} IS NOT {_pk(tbl, 'NEW.')};
    {upsert}
END;
CREATE TRIGGER {name}_del AFTER DELETE ON {tbl} BEGIN
    {_OUT} VALUES ('delete', '{tbl}', {_pk(tbl, 'OLD.')}, NULL);
END;
"""


def install(path: Path) -> str:
    with closing(connect(path)) as db:
        db.executescript(_SCHEMAS + OUTBOX_SCHEMA)          # idempotent
        # executescript commits first, so the script opens the transaction
        # itself: the triggers (made from the live schema) and the seed
        # commit together.
        db.executescript("BEGIN IMMEDIATE;" + "".join(_triggers(db, t) for t in TABLES))
        try:
            writer = _seed(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return writer


def _seed(db: sqlite3.Connection) -> str:
    """The writer id; each table never seen before has its rows queued as
    seeds (and, on an index that synced before, makes the next pull a full
    sweep: rows of it pulled earlier were skipped)."""
    row = db.execute(_GET, ("writer",)).fetchone()
    writer = uuid.uuid4().hex if row is None else str(row[0])
    fresh = [t for t in TABLES if db.execute(_GET, (f"seeded:{t}",)).fetchone() is None]
    for t in fresh:
        db.execute(f"{_OUT} SELECT 'seed', '{t}', {_pk(t)}, {_obj(_columns(db, t))} "
                   f"FROM {t} ORDER BY {', '.join(TABLES[t].pk)}")
        db.execute(_SET, (f"seeded:{t}", "1"))
    if row is None or fresh:
        db.execute(_SET, ("writer", writer))
        db.execute(_SET, ("cursor", "-1"))
    return writer


def unique_key(tbl: str, row: dict[str, Any] | None) -> str | None:
    t = TABLES.get(tbl)
    if t is None or t.unique is None or row is None:
        return None
    values = [row.get(c) for c in t.unique.cols]
    if any(v is None for v in values) or any(row.get(c) is not None for c in t.unique.null):
        return None
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def read_batch(path: Path, limit: int) -> list[tuple[Any, ...]]:
    with closing(connect(path)) as db:
        rows = db.execute("SELECT seq, op, tbl, pk, row FROM cluster_account_outbox "
                          "ORDER BY seq LIMIT ?", (limit,)).fetchall()
    return [(*r, unique_key(r[2], None if r[4] is None else json.loads(r[4]))) for r in rows]


def delete_through(path: Path, seq: int) -> int:
    return delete_outbox_through(path, _OUTBOX, seq)


def cursor(path: Path) -> int:
    return state_cursor(path, _STATE)


def _pending(db: sqlite3.Connection, tbl: str, pk: str) -> bool:
    return db.execute(_PENDING, (tbl, pk)).fetchone() is not None


def _key_where(tbl: str) -> str:
    return " AND ".join(f"{c} = ?" for c in TABLES[tbl].pk)


def _delete(db: sqlite3.Connection, tbl: str, pk: str) -> int:
    return int(db.execute(f"DELETE FROM {tbl} WHERE {_key_where(tbl)}",
                          json.loads(pk)).rowcount)


def _collisions(db: sqlite3.Connection, tbl: str, pk: str, data: dict[str, Any]) -> list[str]:
    """Keys of local rows the pulled row collides with on a unique index."""
    u = TABLES[tbl].unique
    if u is None or unique_key(tbl, data) is None:
        return []
    where = " AND ".join([*(f"{c} = ?" for c in u.cols), *(f"{c} IS NULL" for c in u.null),
                          f"{_pk(tbl)} IS NOT ?"])
    return [str(r[0]) for r in db.execute(f"SELECT {_pk(tbl)} FROM {tbl} WHERE {where}",
                                          [*(data[c] for c in u.cols), pk])]


def _upsert(db: sqlite3.Connection, tbl: str, pk: str, data: dict[str, Any]) -> int:
    shared = [c for c in _columns(db, tbl) if c in data]
    keys = TABLES[tbl].pk
    values = {**data, **dict(zip(keys, json.loads(pk), strict=True))}
    cols = list(dict.fromkeys([*keys, *shared]))
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys) or None
    conflict = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
    db.execute(f"INSERT INTO {tbl} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT ({', '.join(keys)}) {conflict}", [values[c] for c in cols])
    return 1


def _put(db: sqlite3.Connection, tbl: str, pk: str, row: str | None, deleted: bool) -> int:
    """Write one pulled row unless its key (or a row it collides with) has
    a local change queued -> local rows changed."""
    if tbl not in TABLES or _pending(db, tbl, pk):
        return 0
    if deleted or row is None:
        return _delete(db, tbl, pk)
    data = json.loads(row)
    others = _collisions(db, tbl, pk, data)
    if any(_pending(db, tbl, o) for o in others):
        return 0
    db.execute("SAVEPOINT put")
    try:
        n = sum(_delete(db, tbl, o) for o in others) + _upsert(db, tbl, pk, data)
    except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError, KeyError) as exc:
        db.execute("ROLLBACK TO put")
        db.execute("RELEASE put")
        log.warning("event=cluster_account_row_skipped table=%s error=%s", tbl,
                    str(exc)[:200])
        return 0
    db.execute("RELEASE put")
    return n


def apply_remote(path: Path, rows: Sequence[Sequence[Any]], new_cursor: int) -> int:
    return apply_pulled(path, _OUTBOX, _STATE,
                        lambda db: sum(_put(db, r[0], r[1], r[2], bool(r[3])) for r in rows),
                        new_cursor)


def _local_range(db: sqlite3.Connection, lo: tuple[str, str] | None,
                 hi: tuple[str, str] | None) -> dict[tuple[str, str], str]:
    """{(tbl, pk): row JSON} of the local rows with keys in (lo, hi]."""
    out: dict[tuple[str, str], str] = {}
    for tbl in sorted(TABLES):
        if (lo is not None and tbl < lo[0]) or (hi is not None and tbl > hi[0]):
            continue
        where, params = [], []
        if lo is not None and tbl == lo[0]:
            where.append(f"{_pk(tbl)} > ?")
            params.append(lo[1])
        if hi is not None and tbl == hi[0]:
            where.append(f"{_pk(tbl)} <= ?")
            params.append(hi[1])
        sql = (f"SELECT {_pk(tbl)}, {_obj(_columns(db, tbl))} FROM {tbl}"
               + (f" WHERE {' AND '.join(where)}" if where else ""))
        out.update(((tbl, str(r[0])), str(r[1])) for r in db.execute(sql, params))
    return out


def apply_sweep(path: Path, lo: tuple[str, str] | None, hi: tuple[str, str] | None,
                rows: Sequence[Sequence[Any]], new_cursor: int | None = None) -> int:
    """Rows are PostgreSQL's live rows with keys in (lo, hi], in key order;
    a local row in that range that is not among them (and has no change
    queued) is removed, one that differs is replaced."""
    def write(db: sqlite3.Connection) -> int:
        local = _local_range(db, lo, hi)
        changed = 0
        for r in rows:
            mine = local.pop((r[0], r[1]), None)
            if mine is None or json.loads(mine) != json.loads(r[2]):
                changed += _put(db, r[0], r[1], r[2], False)
        for tbl, pk in local:
            if not _pending(db, tbl, pk):
                changed += _delete(db, tbl, pk)
        return changed
    return apply_pulled(path, _OUTBOX, _STATE, write, new_cursor)
