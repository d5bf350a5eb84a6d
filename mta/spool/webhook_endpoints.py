"""Webhook endpoints made through the sending API: the `webhook_endpoints`
table of the spool index.

One job: keep the endpoints that `POST /webhooks` creates (the config
file's `[[webhooks]]` are not here) so that they survive a restart: the
daemon reads them at start and hands each enabled one to its
WebhookService beside the configured ones.

API (synchronous; `state_dir` is the daemon's server.state_dir):
    SqliteWebhookEndpoints(state_dir)
        .rows() -> list[EndpointRow]               oldest first
        .get(name) -> EndpointRow | None
        .insert(row) -> EndpointRow    EndpointExists when the name is taken
        .update(name, *, url=None, events=None, enabled=None, now) -> EndpointRow | None
        .delete(name) -> bool
    EndpointRow(name, url, events, secret, enabled, created, updated)   frozen
    EndpointExists        a KeyError: the name is taken
    WebhookEndpointStoreError   a core.StorageError (cannot open or write the
                                index, or refusing to create one)
    WEBHOOK_ENDPOINTS_SCHEMA

Invariants (the approach of suppression_admin.py and apikeys.py):
- Plain stdlib sqlite3 on the same WAL file as the daemon, busy_timeout
  5 s, one short transaction per call, a new connection per call (any
  thread may call: the daemon calls through `asyncio.to_thread`). It never
  takes the spool's flock and never runs recovery. The table is the
  endpoints' settings only; each endpoint's delivery cursor is the ledger's
  `webhook_state` row of the same name, as for configured endpoints.
- Reads never create anything: no index (or no table yet) reads as empty.
  Writes create the index file (mode 0600) holding only this table when it
  does not exist yet, but refuse when segment files exist without an index
  (the spool's refuse-to-start state S11).
- The secret is stored as given (the deliverer needs it to sign); the
  index file is the state directory's, mode 0600, like the API key hashes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mta.core.errors import StorageError
from mta.spool.sidetable import SideTable

__all__ = ["WEBHOOK_ENDPOINTS_SCHEMA", "EndpointExists", "EndpointRow",
           "SqliteWebhookEndpoints", "WebhookEndpointStoreError"]

WEBHOOK_ENDPOINTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    name     TEXT PRIMARY KEY,
    url      TEXT NOT NULL,
    events   TEXT NOT NULL,       -- JSON list of ledger event types, or ["*"]
    secret   TEXT NOT NULL,       -- whsec_<base64>
    enabled  INTEGER NOT NULL,
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
"""

_COLUMNS = "name, url, events, secret, enabled, created, updated"
_SQL_GET = f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE name = ?"
_SQL_ALL = f"SELECT {_COLUMNS} FROM webhook_endpoints ORDER BY created, name"
_SQL_INSERT = f"INSERT INTO webhook_endpoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_SQL_UPDATE = ("UPDATE webhook_endpoints SET url = ?, events = ?, enabled = ?, updated = ? "
               "WHERE name = ?")
_SQL_DELETE = "DELETE FROM webhook_endpoints WHERE name = ?"


class WebhookEndpointStoreError(StorageError):
    pass


class EndpointExists(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the webhook name is taken"


@dataclass(frozen=True, slots=True)
class EndpointRow:
    name: str
    url: str
    events: tuple[str, ...]
    secret: str
    enabled: bool
    created: float
    updated: float


def _row(r: Sequence[Any]) -> EndpointRow:
    events = json.loads(r[2]) if r[2] else []
    return EndpointRow(name=r[0], url=r[1], events=tuple(str(e) for e in events), secret=r[3],
                       enabled=bool(r[4]), created=float(r[5]), updated=float(r[6]))


class SqliteWebhookEndpoints(SideTable):
    SCHEMA = WEBHOOK_ENDPOINTS_SCHEMA
    WHAT = "the webhook endpoints"
    ERROR = WebhookEndpointStoreError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[EndpointRow]:
        return self._rows(sql, params, _row)

    # -- reads -------------------------------------------------------------------

    def rows(self) -> list[EndpointRow]:
        return self._read(_SQL_ALL)

    def get(self, name: str) -> EndpointRow | None:
        rows = self._read(_SQL_GET, (name,))
        return rows[0] if rows else None

    # -- writes ------------------------------------------------------------------

    def insert(self, row: EndpointRow) -> EndpointRow:
        with self._db(write=True) as db:
            assert db is not None
            if db.execute(_SQL_GET, (row.name,)).fetchone() is not None:
                raise EndpointExists(f"a webhook named {row.name!r} exists")
            db.execute(_SQL_INSERT, (row.name, row.url, json.dumps(list(row.events)),
                                     row.secret, int(row.enabled), row.created, row.updated))
        return row

    def update(self, name: str, *, url: str | None = None,
               events: Sequence[str] | None = None, enabled: bool | None = None,
               now: float) -> EndpointRow | None:
        """Change the fields given; None when there is no such endpoint."""
        if not self.paths.index.exists():
            return None
        with self._db(write=True) as db:
            assert db is not None
            r = db.execute(_SQL_GET, (name,)).fetchone()
            if r is None:
                return None
            old = _row(r)
            new = replace(old, url=old.url if url is None else url,
                          events=old.events if events is None else tuple(events),
                          enabled=old.enabled if enabled is None else enabled, updated=now)
            db.execute(_SQL_UPDATE, (new.url, json.dumps(list(new.events)), int(new.enabled),
                                     new.updated, name))
        return new

    def delete(self, name: str) -> bool:
        if not self.paths.index.exists():
            return False
        with self._db(write=True) as db:
            assert db is not None
            return db.execute(_SQL_DELETE, (name,)).rowcount > 0
