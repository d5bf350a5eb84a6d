"""The durable store of tenants and of what each owns: the `tenants` and
`tenant_owned` tables of the spool index.

One job: keep the tenant rows (operator status, automatic status, limits and
reputation policy as JSON) and the ownership of named things (SMTP/API
credentials, sending domains, webhook endpoints), readable and writable from
the daemon and from a short-lived process at the same time. What the limits
and policy mean is the runtime's business (`mta.runtime.tenants`); this
module stores dicts.

API (synchronous; `state_dir` is the daemon's server.state_dir):
    DEFAULT_TENANT = "default"   owns everything no named tenant owns
    TENANT_NAME                  compiled ^[a-z0-9][a-z0-9_-]{0,62}$
    check_name(name) -> str      ValueError naming the rule
    TenantError(status, message, field=None)   .status 404 unknown, 409
        conflict or busy, 422 invalid; .field; .message; str() = message
    TenantRow(name, status, status_reason, auto_status, auto_reason, limits,
        policy, created, updated)  frozen; .sending: operator status active
        and the automatic status not paused
    SqliteTenants(state_dir)
        .get(name) -> TenantRow | None     .rows() -> [TenantRow] by name
        .add(name, *, limits, policy, now) -> TenantRow
        .update(name, *, limits=None, policy=None, now) -> TenantRow
        .remove(name, *, active_credentials) -> None
        .set_status(name, status, reason, now) -> TenantRow   active|paused
        .set_auto(name, auto_status, reason, now) -> TenantRow   ok|warn|paused
        .own(kind, name, tenant, now)       .disown(kind, name)
        .owner(kind, name) -> str           .owned(tenant, kind=None) -> [(kind, name)]
        .ownership() -> {(kind, name): tenant}
    OWNED_KINDS = ("credential", "domain", "webhook")   an API key's
        credential is "api:KEYNAME"
    TenantStoreError     a core.StorageError (cannot open or write the index)
    TENANTS_SCHEMA

Invariants (the approach of apikeys.py: spool/sidetable.py):
- Plain stdlib sqlite3 on the index's WAL file, one short transaction per
  call, a new connection per call; reads create nothing.
- "default" always exists: without a row it reads as active, ok, {} limits
  and policy, created 0; its row is created by its first write (update,
  set_status, set_auto). It cannot be added or removed.
- Ownership is first come, for good, for credentials: once (credential, X)
  has a row, no other tenant may own X, and the row is never deleted
  (disown refuses credentials; remove keeps them), so a credential's history
  stays attributed to the tenant that used it. Ownership by "default" is a
  row too: a name the default tenant used cannot be taken by a named tenant
  later. Domains and webhooks may be disowned (deleted, then added again by
  anyone). A tenant re-added under a removed tenant's name gets its kept
  credential rows back.
- remove refuses (409 busy) while the tenant owns a domain or a webhook, or
  a credential the caller names as still existing (`active_credentials`:
  the SMTP user names and "api:NAME" of active keys).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mta.core.errors import MtaError, StorageError
from mta.spool.sidetable import SideTable

__all__ = ["DEFAULT_TENANT", "OWNED_KINDS", "TENANTS_SCHEMA", "TENANT_NAME", "SqliteTenants",
           "TenantError", "TenantRow", "TenantStoreError", "check_name"]

DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
OWNED_KINDS = ("credential", "domain", "webhook")
STATUSES = ("active", "paused")
AUTO_STATUSES = ("ok", "warn", "paused")

TENANTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name          TEXT PRIMARY KEY,
    status        TEXT NOT NULL DEFAULT 'active',   -- operator: active | paused
    status_reason TEXT NOT NULL DEFAULT '',
    auto_status   TEXT NOT NULL DEFAULT 'ok',       -- automatic: ok | warn | paused
    auto_reason   TEXT NOT NULL DEFAULT '',
    limits        TEXT NOT NULL DEFAULT '{}',       -- JSON object
    policy        TEXT NOT NULL DEFAULT '{}',       -- JSON object
    created       REAL,
    updated       REAL
);
CREATE TABLE IF NOT EXISTS tenant_owned (
    kind     TEXT NOT NULL,       -- credential | domain | webhook
    name     TEXT NOT NULL,
    tenant   TEXT NOT NULL,
    created  REAL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX IF NOT EXISTS tenant_owned_tenant ON tenant_owned(tenant, kind, name);
"""

_COLUMNS = ("name, status, status_reason, auto_status, auto_reason, limits, policy, "
            "created, updated")
_SQL_GET = f"SELECT {_COLUMNS} FROM tenants WHERE name = ?"
_SQL_ALL = f"SELECT {_COLUMNS} FROM tenants ORDER BY name"
_SQL_INSERT = ("INSERT INTO tenants (name, limits, policy, created, updated) "
               "VALUES (?, ?, ?, ?, ?)")
_SQL_OWNER = "SELECT tenant FROM tenant_owned WHERE kind = ? AND name = ?"
_SQL_OWNED = "SELECT kind, name FROM tenant_owned WHERE tenant = ? ORDER BY kind, name"
_SQL_OWNED_KIND = ("SELECT kind, name FROM tenant_owned WHERE tenant = ? AND kind = ? "
                   "ORDER BY kind, name")
_SQL_OWNERSHIP = "SELECT kind, name, tenant FROM tenant_owned"


class TenantStoreError(StorageError):
    pass


class TenantError(MtaError):
    """A refused tenant operation: `status` 404 (unknown), 409 (conflict or
    busy) or 422 (invalid); `field` the input at fault, when one is."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_name(name: str) -> str:
    if not isinstance(name, str) or TENANT_NAME.fullmatch(name) is None:
        raise ValueError(f"bad tenant name {name!r}: 1 to 63 characters of a-z, 0-9, '_' "
                         "and '-', starting with a letter or a digit")
    return name


@dataclass(frozen=True, slots=True)
class TenantRow:
    name: str
    status: str
    status_reason: str
    auto_status: str
    auto_reason: str
    limits: dict[str, Any]
    policy: dict[str, Any]
    created: float
    updated: float

    @property
    def sending(self) -> bool:
        return self.status == "active" and self.auto_status != "paused"


def _default_row() -> TenantRow:
    return TenantRow(name=DEFAULT_TENANT, status="active", status_reason="",
                     auto_status="ok", auto_reason="", limits={}, policy={},
                     created=0.0, updated=0.0)


def _obj(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _row(r: Sequence[Any]) -> TenantRow:
    return TenantRow(name=r[0], status=r[1], status_reason=r[2], auto_status=r[3],
                     auto_reason=r[4], limits=_obj(r[5]), policy=_obj(r[6]),
                     created=float(r[7] or 0.0), updated=float(r[8] or 0.0))


def _json(field: str, value: Mapping[str, Any]) -> str:
    if not isinstance(value, Mapping):
        raise TenantError(422, f"{field} must be a JSON object", field)
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TenantError(422, f"{field} is not JSON: {exc}", field) from exc


def _valid_name(name: str) -> str:
    try:
        return check_name(name)
    except ValueError as exc:
        raise TenantError(422, str(exc), "name") from exc


def _check_kind(kind: str) -> None:
    if kind not in OWNED_KINDS:
        raise ValueError(f"bad ownership kind {kind!r}: one of {', '.join(OWNED_KINDS)}")


def _unknown(name: str) -> TenantError:
    return TenantError(404, f"no tenant named {name!r}", "name")


class SqliteTenants(SideTable):
    SCHEMA = TENANTS_SCHEMA
    WHAT = "the tenants"
    ERROR = TenantStoreError

    # -- reads -------------------------------------------------------------------

    def get(self, name: str) -> TenantRow | None:
        rows = self._rows(_SQL_GET, (name,), _row)
        if rows:
            return rows[0]
        return _default_row() if name == DEFAULT_TENANT else None

    def rows(self) -> list[TenantRow]:
        rows = self._rows(_SQL_ALL, (), _row)
        if all(r.name != DEFAULT_TENANT for r in rows):
            rows.append(_default_row())
            rows.sort(key=lambda r: r.name)
        return rows

    def owner(self, kind: str, name: str) -> str:
        _check_kind(kind)
        found = self._rows(_SQL_OWNER, (kind, name), lambda r: str(r[0]))
        return found[0] if found else DEFAULT_TENANT

    def owned(self, tenant: str, kind: str | None = None) -> list[tuple[str, str]]:
        if kind is None:
            return self._rows(_SQL_OWNED, (tenant,), lambda r: (str(r[0]), str(r[1])))
        _check_kind(kind)
        return self._rows(_SQL_OWNED_KIND, (tenant, kind), lambda r: (str(r[0]), str(r[1])))

    def ownership(self) -> dict[tuple[str, str], str]:
        rows = self._rows(_SQL_OWNERSHIP, (), lambda r: ((str(r[0]), str(r[1])), str(r[2])))
        return dict(rows)

    # -- tenant writes -------------------------------------------------------------

    def add(self, name: str, *, limits: Mapping[str, Any], policy: Mapping[str, Any],
            now: float) -> TenantRow:
        _valid_name(name)
        limits_json, policy_json = _json("limits", limits), _json("policy", policy)
        if name == DEFAULT_TENANT:
            raise TenantError(409, f"the tenant {name!r} exists always", "name")
        with self._db(write=True) as db:
            assert db is not None
            if db.execute(_SQL_GET, (name,)).fetchone() is not None:
                raise TenantError(409, f"a tenant named {name!r} exists", "name")
            db.execute(_SQL_INSERT, (name, limits_json, policy_json, now, now))
            return _row(db.execute(_SQL_GET, (name,)).fetchone())

    def _write_row(self, db: sqlite3.Connection, name: str, now: float) -> None:
        """Make sure `name` has a row (creating the default's); 404 for
        an unknown other name."""
        if db.execute(_SQL_GET, (name,)).fetchone() is not None:
            return
        if name != DEFAULT_TENANT:
            raise _unknown(name)
        db.execute(_SQL_INSERT, (name, "{}", "{}", 0.0, now))

    def _set(self, name: str, now: float, columns: dict[str, Any]) -> TenantRow:
        with self._db(write=True) as db:
            assert db is not None
            self._write_row(db, name, now)
            sets = "".join(f"{c} = ?, " for c in columns)
            db.execute(f"UPDATE tenants SET {sets}updated = ? WHERE name = ?",
                       (*columns.values(), now, name))
            return _row(db.execute(_SQL_GET, (name,)).fetchone())

    def update(self, name: str, *, limits: Mapping[str, Any] | None = None,
               policy: Mapping[str, Any] | None = None, now: float) -> TenantRow:
        columns: dict[str, Any] = {}
        if limits is not None:
            columns["limits"] = _json("limits", limits)
        if policy is not None:
            columns["policy"] = _json("policy", policy)
        return self._set(name, now, columns)

    def set_status(self, name: str, status: str, reason: str, now: float) -> TenantRow:
        if status not in STATUSES:
            raise TenantError(422, f"bad status {status!r}: one of {', '.join(STATUSES)}",
                              "status")
        return self._set(name, now, {"status": status, "status_reason": str(reason)})

    def set_auto(self, name: str, auto_status: str, reason: str, now: float) -> TenantRow:
        if auto_status not in AUTO_STATUSES:
            raise TenantError(422, f"bad automatic status {auto_status!r}: one of "
                                   f"{', '.join(AUTO_STATUSES)}", "auto_status")
        return self._set(name, now, {"auto_status": auto_status, "auto_reason": str(reason)})

    def remove(self, name: str, *, active_credentials: set[str] | frozenset[str]) -> None:
        if name == DEFAULT_TENANT:
            raise TenantError(409, f"the tenant {name!r} cannot be removed", "name")
        if not self.paths.index.exists():
            raise _unknown(name)
        with self._db(write=True) as db:
            assert db is not None
            if db.execute(_SQL_GET, (name,)).fetchone() is None:
                raise _unknown(name)
            busy = [f"{kind} {thing}" for kind, thing in db.execute(_SQL_OWNED, (name,))
                    if kind != "credential" or thing in active_credentials]
            if busy:
                shown = ", ".join(busy[:5]) + (f" and {len(busy) - 5} more"
                                               if len(busy) > 5 else "")
                raise TenantError(409, f"the tenant {name!r} still owns {shown}: "
                                       "remove or reassign those first", "name")
            db.execute("DELETE FROM tenants WHERE name = ?", (name,))

    # -- ownership writes ------------------------------------------------------------

    def own(self, kind: str, name: str, tenant: str, now: float) -> None:
        _check_kind(kind)
        with self._db(write=True) as db:
            assert db is not None
            if tenant != DEFAULT_TENANT and \
                    db.execute(_SQL_GET, (tenant,)).fetchone() is None:
                raise _unknown(tenant)
            r = db.execute(_SQL_OWNER, (kind, name)).fetchone()
            if r is not None:
                if r[0] != tenant:
                    raise TenantError(409, f"the {kind} {name!r} belongs to the tenant "
                                           f"{r[0]!r}", kind)
                return
            db.execute("INSERT INTO tenant_owned (kind, name, tenant, created) "
                       "VALUES (?, ?, ?, ?)", (kind, name, tenant, now))

    def disown(self, kind: str, name: str) -> None:
        _check_kind(kind)
        if kind == "credential":
            raise ValueError("a credential's ownership is kept for good (its history "
                             "stays attributed); only domains and webhooks can be disowned")
        if not self.paths.index.exists():
            return
        with self._db(write=True) as db:
            assert db is not None
            db.execute("DELETE FROM tenant_owned WHERE kind = ? AND name = ?", (kind, name))
