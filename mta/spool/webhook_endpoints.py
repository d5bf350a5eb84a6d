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
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mta.core.errors import StorageError
from mta.spool.layout import SpoolPaths

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


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(os.fspath(path), timeout=5.0, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


class SqliteWebhookEndpoints:
    def __init__(self, state_dir: str | os.PathLike[str]):
        self.paths = SpoolPaths.of(state_dir)

    def _create_index(self) -> None:
        path, segments = self.paths.index, self.paths.segments
        if segments.is_dir() and any(segments.glob("*.seg")):
            raise WebhookEndpointStoreError(
                f"{path} is missing but {segments} holds message segments: the spool needs "
                "repair (see `mta serve`'s error); not creating an index here")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    @contextmanager
    def _db(self, *, write: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection (None for a read when there is no index); a write
        gets the schema and an immediate transaction, committed on exit."""
        path = self.paths.index
        if not path.exists():
            if not write:
                yield None
                return
            self._create_index()
        try:
            db = _connect(path)
        except sqlite3.Error as exc:
            raise WebhookEndpointStoreError(f"cannot open {path}: {exc}") from exc
        with closing(db):
            try:
                if write:
                    db.executescript(WEBHOOK_ENDPOINTS_SCHEMA)
                    db.execute("BEGIN IMMEDIATE")
                yield db
                if db.in_transaction:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise WebhookEndpointStoreError(
                    f"cannot use the webhook endpoints in {path}: {exc}") from exc
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[EndpointRow]:
        with self._db(write=False) as db:
            if db is None:
                return []
            try:
                return [_row(r) for r in db.execute(sql, params)]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):     # no endpoint was ever made
                    return []
                raise WebhookEndpointStoreError(f"cannot read the webhook endpoints: {exc}") \
                    from exc

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
