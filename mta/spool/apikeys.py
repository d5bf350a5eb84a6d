"""The durable store of API keys: the `api_keys` table of the spool index.

One job: keep API key rows (never a token, only its hash) in the spool's
index file, readable and writable from the daemon and from a short-lived
process (`mta key …`) at the same time. The rows are plain data: building
`mta.api.keys.ApiKey` from them is the API layer's business
(`mta.api.keys.StoreKeys` adapts this class to its `KeyStore`).

API (synchronous; `state_dir` is the daemon's server.state_dir):
    SqliteApiKeys(state_dir)
        .get(key_id) -> ApiKeyRow | None
        .rows(include_revoked=False) -> list[ApiKeyRow]      oldest first
        .insert(*, id, name, hash, permission, domains, test, rate_limit, created)
            -> ApiKeyRow; ApiKeyConflict (column "id" or "name") when the id
            exists or an active (not revoked) key has the name
        .revoke(id_or_name, now) -> ApiKeyRow | None   the active key with that
            id, else with that name; None when there is none
        .touch(key_id, now, every=60.0)   last_used = now, unless it was set
            less than `every` seconds ago (coarse: a write a minute per key)
    ApiKeyRow            the frozen row (domains a tuple, test a bool)
    ApiKeyStoreError     a core.StorageError: cannot open or write the index,
                         or refusing to create one (message for humans)
    ApiKeyConflict       a KeyError (str() is the message), `.column`
    API_KEYS_SCHEMA      the table and its partial unique index on name

Invariants (the approach of suppression_admin.py):
- Plain stdlib sqlite3 on the same WAL file as the daemon, busy_timeout 5 s,
  one short transaction per call, a new connection per call (so any thread
  may call: the daemon calls through `asyncio.to_thread`). It never takes
  the spool's flock and never runs recovery.
- Reads never create anything: no index (or no table yet) reads as empty.
  Writes create the index file (mode 0600) holding only this table when it
  does not exist yet, but refuse when segment files exist without an index
  (the spool's refuse-to-start state S11).
- Names are unique among active keys, enforced by the schema (a partial
  unique index), so two processes creating the same name cannot both win.
  A revoked key keeps its row (and its name may be reused).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mta.core.errors import StorageError
from mta.spool.sidetable import SideTable, missing_table

__all__ = ["API_KEYS_SCHEMA", "ApiKeyConflict", "ApiKeyRow", "ApiKeyStoreError",
           "SqliteApiKeys"]

API_KEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL,       -- SHA-256 hex of the whole token
    permission  TEXT NOT NULL,
    domains     TEXT NOT NULL,       -- JSON list; [] = any domain
    test        INTEGER NOT NULL,
    rate_limit  REAL NOT NULL,       -- requests/s; 0 = the daemon's default
    created     REAL NOT NULL,
    revoked     REAL,
    last_used   REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name)
    WHERE revoked IS NULL;
"""

_COLUMNS = "id, name, hash, permission, domains, test, rate_limit, created, revoked, last_used"
_SQL_GET = f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?"
_SQL_ACTIVE_ID = f"SELECT {_COLUMNS} FROM api_keys WHERE id = ? AND revoked IS NULL"
_SQL_ACTIVE_NAME = f"SELECT {_COLUMNS} FROM api_keys WHERE name = ? AND revoked IS NULL"
_SQL_ALL = f"SELECT {_COLUMNS} FROM api_keys ORDER BY created, id"
_SQL_ACTIVE = f"SELECT {_COLUMNS} FROM api_keys WHERE revoked IS NULL ORDER BY created, id"
_SQL_INSERT = f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)"
_SQL_REVOKE = "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL"
_SQL_TOUCH = ("UPDATE api_keys SET last_used = ? WHERE id = ? AND revoked IS NULL "
              "AND (last_used IS NULL OR last_used <= ?)")


class ApiKeyStoreError(StorageError):
    pass


class ApiKeyConflict(KeyError):
    """An id that exists, or a name an active key has; `column` says which."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    id: str
    name: str
    hash: str
    permission: str
    domains: tuple[str, ...]
    test: bool
    rate_limit: float
    created: float
    revoked: float | None
    last_used: float | None


def _row(r: Sequence[Any]) -> ApiKeyRow:
    domains = json.loads(r[4]) if r[4] else []
    return ApiKeyRow(id=r[0], name=r[1], hash=r[2], permission=r[3],
                     domains=tuple(str(d) for d in domains), test=bool(r[5]),
                     rate_limit=float(r[6]), created=float(r[7]),
                     revoked=None if r[8] is None else float(r[8]),
                     last_used=None if r[9] is None else float(r[9]))


class SqliteApiKeys(SideTable):
    SCHEMA = API_KEYS_SCHEMA
    WHAT = "the API keys"
    ERROR = ApiKeyStoreError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[ApiKeyRow]:
        return self._rows(sql, params, _row)

    # -- reads -------------------------------------------------------------------

    def get(self, key_id: str) -> ApiKeyRow | None:
        rows = self._read(_SQL_GET, (key_id,))
        return rows[0] if rows else None

    def rows(self, include_revoked: bool = False) -> list[ApiKeyRow]:
        return self._read(_SQL_ALL if include_revoked else _SQL_ACTIVE)

    # -- writes ------------------------------------------------------------------

    def insert(self, *, id: str, name: str, hash: str, permission: str,
               domains: Sequence[str], test: bool, rate_limit: float,
               created: float) -> ApiKeyRow:
        row = ApiKeyRow(id=id, name=name, hash=hash, permission=permission,
                        domains=tuple(domains), test=bool(test), rate_limit=float(rate_limit),
                        created=float(created), revoked=None, last_used=None)
        with self._db(write=True) as db:
            assert db is not None
            if db.execute(_SQL_GET, (id,)).fetchone() is not None:
                raise ApiKeyConflict("id", f"an API key with id {id!r} exists")
            if db.execute(_SQL_ACTIVE_NAME, (name,)).fetchone() is not None:
                raise ApiKeyConflict("name", f"an API key named {name!r} exists "
                                             "(revoke it first, or choose another name)")
            db.execute(_SQL_INSERT, (id, name, hash, permission, json.dumps(list(domains)),
                                     int(bool(test)), float(rate_limit), float(created)))
        return row

    def revoke(self, id_or_name: str, now: float) -> ApiKeyRow | None:
        if not self.paths.index.exists():
            return None
        with self._db(write=True) as db:
            assert db is not None
            r = (db.execute(_SQL_ACTIVE_ID, (id_or_name,)).fetchone()
                 or db.execute(_SQL_ACTIVE_NAME, (id_or_name,)).fetchone())
            if r is None:
                return None
            db.execute(_SQL_REVOKE, (now, r[0]))
            old = _row(r)
        return replace(old, revoked=float(now))

    def touch(self, key_id: str, now: float, every: float = 60.0) -> None:
        if not self.paths.index.exists():
            return
        with self._db(write=False) as db:
            if db is None:
                return
            try:
                db.execute(_SQL_TOUCH, (now, key_id, now - every))
            except sqlite3.OperationalError as exc:
                if not missing_table(exc):
                    raise
