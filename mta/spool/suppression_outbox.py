"""The suppression list's outbox in the spool index, for a cluster (issue 19).

One job: record every change to the local `suppressions` table durably, in
the transaction that makes it, whoever the writer is (the spool writer's
bounce-made entries, `suppression_admin` add/remove/import, the console,
the public unsubscribe, the sending API): triggers on the table fill
`cluster_suppression_outbox`, so no writer changes. The cluster runtime
(runtime/cluster_suppressions.py) pushes the outbox to PostgreSQL and
writes the other nodes' changes back through `apply_remote` / `apply_sweep`.

API (synchronous, plain sqlite3 like suppression_admin.py; `path` is the
index file, `SpoolPaths.of(state_dir).index`):
    install(path) -> writer id       tables + triggers (idempotent); the
                                     first install queues every entry already
                                     held as a "seed" change
    read_batch(path, limit) -> [(seq, op, address, scope, reason, queue_id,
                                 reply, created, expires)]   oldest first
    delete_through(path, seq) -> int     forget pushed changes
    cursor(path) -> int              the pull cursor (-1: never synced)
    apply_remote(path, rows, cursor) -> int    rows (address, scope, reason,
        queue_id, reply, created, expires, deleted, …) written, the cursor set
    apply_sweep(path, lo, hi, rows, cursor=None) -> int   make the keys in
        (lo, hi] (None: open end) hold exactly `rows`' live entries
    OUTBOX_SCHEMA

Invariants
- A change and its outbox row commit together (the triggers); a row leaves
  the outbox only after PostgreSQL has it (`delete_through`).
- `apply_remote` / `apply_sweep` write pulled rows and, in the same
  transaction, delete the outbox rows their own writes made: a pulled
  change is never pushed back (no echo).
- A key with a change still in the outbox is left alone by both: that
  change is pushed next and becomes PostgreSQL's latest write, so skipping
  the older remote one keeps the local copy equal to the store of record.
- Writes take SQLite's write lock at once (BEGIN IMMEDIATE), so no other
  writer's outbox rows interleave with the ones `apply_*` deletes.
- The cursor lives in the index: a rebuilt index starts over with a full
  sweep and a new writer id.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from mta.spool import index
from mta.spool.suppressions import SQL_SUPPRESS_REPLACE, SQL_UNSUPPRESS, SUPP_COLS

__all__ = ["OUTBOX_SCHEMA", "apply_remote", "apply_sweep", "connect", "cursor",
           "delete_through", "install", "read_batch", "write_txn"]

_OUT_COLS = "op, address, scope, reason, queue_id, reply, created, expires"
_NEW = "NEW.address, NEW.scope, NEW.reason, NEW.queue_id, NEW.reply, NEW.created, NEW.expires"
_INSERT_OUT = f"INSERT INTO cluster_suppression_outbox ({_OUT_COLS}) VALUES "

OUTBOX_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cluster_suppression_outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    op       TEXT NOT NULL,            -- upsert | delete | seed
    address  TEXT NOT NULL,
    scope    TEXT NOT NULL,
    reason   TEXT NOT NULL DEFAULT '',
    queue_id TEXT NOT NULL DEFAULT '',
    reply    TEXT NOT NULL DEFAULT '',
    created  REAL NOT NULL DEFAULT 0,
    expires  REAL
);
CREATE INDEX IF NOT EXISTS cluster_suppression_outbox_key
    ON cluster_suppression_outbox (address, scope);
CREATE TABLE IF NOT EXISTS cluster_suppression_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS cluster_suppression_ins AFTER INSERT ON suppressions BEGIN
    {_INSERT_OUT}('upsert', {_NEW});
END;
CREATE TRIGGER IF NOT EXISTS cluster_suppression_upd AFTER UPDATE ON suppressions BEGIN
    {_INSERT_OUT.replace(' VALUES ', ' ')}SELECT 'delete', OLD.address, OLD.scope, '', '', '',
        OLD.created, NULL WHERE OLD.address IS NOT NEW.address OR OLD.scope IS NOT NEW.scope;
    {_INSERT_OUT}('upsert', {_NEW});
END;
CREATE TRIGGER IF NOT EXISTS cluster_suppression_del AFTER DELETE ON suppressions BEGIN
    {_INSERT_OUT}('delete', OLD.address, OLD.scope, '', '', '', OLD.created, NULL);
END;
"""

_OUTBOX, _STATE = "cluster_suppression_outbox", "cluster_suppression_state"
_PENDING = "SELECT 1 FROM cluster_suppression_outbox WHERE address = ? AND scope = ? LIMIT 1"
_SET = "INSERT OR REPLACE INTO cluster_suppression_state (name, value) VALUES (?, ?)"
_GET = "SELECT value FROM cluster_suppression_state WHERE name = ?"


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(os.fspath(path), timeout=5.0, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def write_txn(db: sqlite3.Connection, fn: Any, *args: Any) -> Any:
    """`fn(db, *args)` in one BEGIN IMMEDIATE transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        out = fn(db, *args)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return out


def install(path: Path) -> str:
    with closing(connect(path)) as db:
        # executescript commits first, so the script opens the transaction
        # itself: the triggers and the seed commit together.
        db.executescript("BEGIN IMMEDIATE;" + index.SUPPRESSION_SCHEMA + OUTBOX_SCHEMA)
        try:
            writer = _seed(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return writer


def _seed(db: sqlite3.Connection) -> str:
    """The writer id; the first time, every entry held is queued as a seed."""
    row = db.execute(_GET, ("writer",)).fetchone()
    if row is not None:
        return str(row[0])
    db.execute(f"INSERT INTO cluster_suppression_outbox ({_OUT_COLS}) "
               f"SELECT 'seed', {SUPP_COLS} FROM suppressions ORDER BY address, scope")
    writer = uuid.uuid4().hex
    db.execute(_SET, ("writer", writer))
    db.execute(_SET, ("cursor", "-1"))
    return writer


def read_batch(path: Path, limit: int) -> list[tuple[Any, ...]]:
    with closing(connect(path)) as db:
        return [tuple(r) for r in db.execute(
            f"SELECT seq, {_OUT_COLS} FROM cluster_suppression_outbox ORDER BY seq LIMIT ?",
            (limit,))]


def delete_outbox_through(path: Path, outbox: str, seq: int) -> int:
    """Forget `outbox`'s rows up to `seq` (pushed): shared by account_outbox.py."""
    with closing(connect(path)) as db:
        return int(db.execute(f"DELETE FROM {outbox} WHERE seq <= ?", (seq,)).rowcount)


def state_cursor(path: Path, state: str) -> int:
    """The pull cursor kept in table `state` (-1: never pulled)."""
    with closing(connect(path)) as db:
        row = db.execute(f"SELECT value FROM {state} WHERE name = 'cursor'").fetchone()
        return -1 if row is None else int(row[0])


def delete_through(path: Path, seq: int) -> int:
    return delete_outbox_through(path, _OUTBOX, seq)


def cursor(path: Path) -> int:
    return state_cursor(path, _STATE)


def _pending(db: sqlite3.Connection, address: str, scope: str) -> bool:
    return db.execute(_PENDING, (address, scope)).fetchone() is not None


def _put(db: sqlite3.Connection, row: Sequence[Any]) -> bool:
    """Write one pulled row unless the key has a local change pending;
    True when an entry was written (not removed)."""
    address, scope, reason, queue_id, reply, created, expires, deleted = row[:8]
    if _pending(db, address, scope):
        return False
    if deleted:
        db.execute(SQL_UNSUPPRESS, (address, scope))
        return False
    db.execute(SQL_SUPPRESS_REPLACE, (address, scope, reason, queue_id, reply, created, expires))
    return True


def apply_pulled(path: Path, outbox: str, state: str,
                 write: Callable[[sqlite3.Connection], int], new_cursor: int | None) -> int:
    """`write(db)` (pulled rows into the local tables) in one transaction
    that then forgets the outbox rows those writes made (no echo) and stores
    the pull cursor (None: leave it); shared by account_outbox.py."""
    def run(db: sqlite3.Connection) -> int:
        before = int(db.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {outbox}").fetchone()[0])
        n = int(write(db))
        db.execute(f"DELETE FROM {outbox} WHERE seq > ?", (before,))
        if new_cursor is not None:
            db.execute(f"INSERT OR REPLACE INTO {state} (name, value) VALUES ('cursor', ?)",
                       (str(new_cursor),))
        return n
    with closing(connect(path)) as db:
        return int(write_txn(db, run))


def apply_remote(path: Path, rows: Sequence[Sequence[Any]], new_cursor: int) -> int:
    return apply_pulled(path, _OUTBOX, _STATE, lambda db: sum(_put(db, r) for r in rows),
                        new_cursor)


def apply_sweep(path: Path, lo: tuple[str, str] | None, hi: tuple[str, str] | None,
                rows: Sequence[Sequence[Any]], new_cursor: int | None = None) -> int:
    """Rows are PostgreSQL's live entries with keys in (lo, hi], in key
    order; a local entry in that range that is not among them (and has no
    change pending) is removed, one that differs is replaced."""
    where: list[str] = []
    params: list[str] = []
    if lo is not None:
        where.append("(address, scope) > (?, ?)")
        params.extend(lo)
    if hi is not None:
        where.append("(address, scope) <= (?, ?)")
        params.extend(hi)
    sql = (f"SELECT {SUPP_COLS} FROM suppressions"
           + (f" WHERE {' AND '.join(where)}" if where else ""))

    def write(db: sqlite3.Connection) -> int:
        local = {(r[0], r[1]): tuple(r) for r in db.execute(sql, params)}
        added = 0
        for r in rows:
            key = (r[0], r[1])
            if local.pop(key, None) != tuple(r[:7]):
                added += _put(db, (*r[:7], False))
        for address, scope in local:
            if not _pending(db, address, scope):
                db.execute(SQL_UNSUPPRESS, (address, scope))
        return added
    return apply_pulled(path, _OUTBOX, _STATE, write, new_cursor)
