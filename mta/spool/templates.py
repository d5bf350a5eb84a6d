"""Tenants' email templates: the `templates` and `template_versions` tables
of the spool index.

One job: keep each tenant's templates — the editable draft and the
immutable versions published from it — readable and writable from the
daemon and from a short-lived process (`mta template …`) at the same time.
The content is plain data here (strings, a JSON list of variables): what it
means and whether it renders is mail/templating.py's business, applied by
the callers (the API's routes, the CLI) before they store anything.

API (synchronous; `state_dir` is the daemon's server.state_dir; every
method takes the tenant first and sees only that tenant's rows):
    SqliteTemplates(state_dir)
        .create(tenant, fields, now) -> TemplateRow        a new draft, never published
        .get(tenant, ref) -> TemplateRow | None            ref: an id or an alias
        .list(tenant, limit, after=None, before=None) -> (rows, has_more)
            newest first (created, then id); after/before: an id from a page
        .update(tenant, ref, fields, now) -> TemplateRow | None    the draft only
        .publish(tenant, ref, now) -> TemplateVersion | None
        .duplicate(tenant, ref, now) -> TemplateRow | None   name + " (copy)", no alias
        .delete(tenant, ref) -> bool                       its versions go with it
        .version(tenant, ref, n=None) -> TemplateVersion | None   None: the latest
        .versions(tenant, ref) -> list[TemplateVersion] | None     newest first
    fields: a mapping of some of FIELDS: name (str, required to create),
        alias (str | None), sender (str | None), subject (str | None),
        reply_to (list of str), html (str, required to create), text (str |
        None: None = derive from html, "" = no text part), variables (a JSON
        list, Resend's [{key, type, fallback_value}])
    TemplateRow      the frozen draft row; .status "draft" | "published"
    TemplateVersion  the frozen published version
    TemplateExists   a KeyError: the alias is the tenant's already (str() says so)
    TemplateRefused  a ValueError: .field, .reason, str() "field: reason" (a bad
                     alias or field, an unknown cursor, MAX_TEMPLATES reached)
    TemplateStoreError   a core.StorageError (cannot open or write the index)
    TEMPLATE_ID = ^tpl_[0-9a-f]{20}$;  ALIAS = ^[a-z0-9_-]{1,64}$;  MAX_TEMPLATES,
    MAX_VERSIONS = 1000 (per tenant; per template)

Invariants:
- The approach of apikeys.py (spool/sidetable.py): stdlib sqlite3 on the
  index's WAL file, one short transaction per call (BEGIN IMMEDIATE for a
  write: a read-modify-write such as publish is atomic across processes);
  reads create nothing.
- Every statement filters on the tenant: another tenant's id or alias is
  "no such template". Aliases are unique per tenant (a partial unique index
  backs the check) and never look like an id, so a ref is unambiguous.
- Versions are immutable: rows of template_versions are only inserted
  (version = published_version + 1) and deleted with their template.
  Publishing a draft equal to the latest version makes no new version: it
  answers the latest one. The versioned content is sender, subject,
  reply_to, html, text and variables; name and alias are labels, changed at
  once and never versioned (so renaming does not make a template a draft).
- `unpublished` is 1 while the draft differs from the latest version (or
  nothing was published): status is "published" only when it is 0.
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mta.core.errors import StorageError
from mta.spool.sidetable import SideTable

__all__ = ["ALIAS", "FIELDS", "MAX_TEMPLATES", "MAX_VERSIONS", "TEMPLATES_SCHEMA", "TEMPLATE_ID",
           "SqliteTemplates", "TemplateExists", "TemplateRefused", "TemplateRow",
           "TemplateStoreError", "TemplateVersion"]

TEMPLATES_SCHEMA = """
CREATE TABLE IF NOT EXISTS templates (
    id                 TEXT PRIMARY KEY,        -- tpl_ + 20 hex digits
    tenant             TEXT NOT NULL,
    name               TEXT NOT NULL,
    alias              TEXT,
    sender             TEXT,
    subject            TEXT,
    reply_to           TEXT NOT NULL,           -- JSON list of addresses
    html               TEXT NOT NULL,
    text               TEXT,                    -- NULL: derive from html
    variables          TEXT NOT NULL,           -- JSON [{key, type, fallback_value}]
    created            REAL NOT NULL,
    updated            REAL NOT NULL,
    published_version  INTEGER NOT NULL,        -- 0: never published
    published_at       REAL,
    unpublished        INTEGER NOT NULL         -- 1: the draft differs from the latest version
);
CREATE UNIQUE INDEX IF NOT EXISTS templates_alias ON templates(tenant, alias)
    WHERE alias IS NOT NULL;
CREATE INDEX IF NOT EXISTS templates_order ON templates(tenant, created, id);
CREATE TABLE IF NOT EXISTS template_versions (
    tenant        TEXT NOT NULL,
    template_id   TEXT NOT NULL,
    version       INTEGER NOT NULL,
    sender        TEXT,
    subject       TEXT,
    reply_to      TEXT NOT NULL,
    html          TEXT NOT NULL,
    text          TEXT,
    variables     TEXT NOT NULL,
    published_at  REAL NOT NULL,
    PRIMARY KEY (template_id, version)
);
"""

TEMPLATE_ID = re.compile(r"tpl_[0-9a-f]{20}")
ALIAS = re.compile(r"[a-z0-9_-]{1,64}")
MAX_TEMPLATES = 1000
MAX_VERSIONS = 1000
FIELDS = ("name", "alias", "sender", "subject", "reply_to", "html", "text", "variables")
_CONTENT = ("sender", "subject", "reply_to", "html", "text", "variables")
_NAME_MAX = 255
_COPY = " (copy)"

_COLUMNS = ("id, tenant, name, alias, sender, subject, reply_to, html, text, variables, "
            "created, updated, published_version, published_at, unpublished")
_VCOLUMNS = ("tenant, template_id, version, sender, subject, reply_to, html, text, variables, "
             "published_at")
# A ref: the id, else the alias (an alias never looks like an id).
_SQL_GET = (f"SELECT {_COLUMNS} FROM templates WHERE tenant = ? AND (id = ? OR alias = ?) "
            "ORDER BY id = ? DESC LIMIT 1")
_SQL_ALIAS = "SELECT id FROM templates WHERE tenant = ? AND alias = ? AND id != ?"
_SQL_COUNT = "SELECT COUNT(*) FROM templates WHERE tenant = ?"
_SQL_INSERT = f"INSERT INTO templates ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_SQL_UPDATE = ("UPDATE templates SET name = ?, alias = ?, sender = ?, subject = ?, reply_to = ?, "
               "html = ?, text = ?, variables = ?, updated = ?, unpublished = ? "
               "WHERE tenant = ? AND id = ?")
_SQL_PUBLISHED = ("UPDATE templates SET published_version = ?, published_at = ?, unpublished = 0 "
                  "WHERE tenant = ? AND id = ?")
_SQL_VINSERT = f"INSERT INTO template_versions ({_VCOLUMNS}) VALUES ({', '.join('?' * 10)})"
_SQL_VGET = (f"SELECT {_VCOLUMNS} FROM template_versions WHERE tenant = ? AND template_id = ? "
             "AND version = ?")
_SQL_VALL = (f"SELECT {_VCOLUMNS} FROM template_versions WHERE tenant = ? AND template_id = ? "
             "ORDER BY version DESC")
_SQL_DELETE = "DELETE FROM templates WHERE tenant = ? AND id = ?"
_SQL_VDELETE = "DELETE FROM template_versions WHERE tenant = ? AND template_id = ?"
_SQL_CURSOR = "SELECT created, id FROM templates WHERE tenant = ? AND id = ?"
_SQL_PAGE = f"SELECT {_COLUMNS} FROM templates WHERE tenant = ?"


class TemplateStoreError(StorageError):
    pass


class TemplateExists(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the alias is taken"


class TemplateRefused(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    tenant: str
    template_id: str
    version: int
    sender: str | None
    subject: str | None
    reply_to: tuple[str, ...]
    html: str
    text: str | None
    variables: tuple[dict[str, Any], ...]
    published_at: float


@dataclass(frozen=True, slots=True)
class TemplateRow:
    id: str
    tenant: str
    name: str
    alias: str | None
    sender: str | None
    subject: str | None
    reply_to: tuple[str, ...]
    html: str
    text: str | None
    variables: tuple[dict[str, Any], ...]
    created: float
    updated: float
    published_version: int          # 0: never published
    published_at: float | None
    unpublished: bool               # the draft differs from the latest version

    @property
    def status(self) -> str:
        return "published" if self.published_version and not self.unpublished else "draft"


def _json_list(text: str) -> tuple[Any, ...]:
    value = json.loads(text) if text else []
    return tuple(value) if isinstance(value, list) else ()


def _row(r: Sequence[Any]) -> TemplateRow:
    return TemplateRow(id=r[0], tenant=r[1], name=r[2], alias=r[3], sender=r[4], subject=r[5],
                       reply_to=tuple(str(a) for a in _json_list(r[6])), html=r[7], text=r[8],
                       variables=_json_list(r[9]), created=float(r[10]), updated=float(r[11]),
                       published_version=int(r[12]),
                       published_at=None if r[13] is None else float(r[13]),
                       unpublished=bool(r[14]))


def _version(r: Sequence[Any]) -> TemplateVersion:
    return TemplateVersion(tenant=r[0], template_id=r[1], version=int(r[2]), sender=r[3],
                           subject=r[4], reply_to=tuple(str(a) for a in _json_list(r[5])),
                           html=r[6], text=r[7], variables=_json_list(r[8]),
                           published_at=float(r[9]))


def _canon(sender: object, subject: object, reply_to: Sequence[Any], html: object,
           text: object, variables: Sequence[Any]) -> tuple[Any, ...]:
    """Versioned content as stored and compared (JSON text for the lists)."""
    return (sender, subject, json.dumps(list(reply_to)), html, text,
            json.dumps(list(variables), sort_keys=True))


def _content(obj: TemplateRow | TemplateVersion) -> tuple[Any, ...]:
    return _canon(obj.sender, obj.subject, obj.reply_to, obj.html, obj.text, obj.variables)


# -- field checks -----------------------------------------------------------------------

def _text(field: str, value: object, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TemplateRefused(field, "must be a string" + (" or null" if optional else ""))
    return value


def _name(value: object) -> str:
    name = _text("name", value, optional=False)
    assert name is not None
    if not name.strip() or len(name) > _NAME_MAX:
        raise TemplateRefused("name", f"1 to {_NAME_MAX} characters, not all blank")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise TemplateRefused("name", "contains control characters")
    return name


def _alias(value: object) -> str | None:
    alias = _text("alias", value, optional=True)
    if alias is None:
        return None
    if not ALIAS.fullmatch(alias):
        raise TemplateRefused("alias", "1 to 64 of a-z, 0-9, '_' and '-'")
    if TEMPLATE_ID.fullmatch(alias):
        raise TemplateRefused("alias", "must not look like a template id (tpl_…)")
    return alias


def _checked(fields: Mapping[str, object], base: Mapping[str, object]) -> dict[str, object]:
    """`base` with `fields` laid over it, each checked (TemplateRefused)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise TemplateRefused(unknown[0][:40], f"unknown field (known: {', '.join(FIELDS)})")
    out = {**base, **fields}
    for field in ("name", "html"):
        if field not in out:
            raise TemplateRefused(field, "required")
    out["name"] = _name(out["name"])
    out["alias"] = _alias(out.get("alias"))
    out["html"] = _text("html", out["html"], optional=False)
    for field in ("sender", "subject", "text"):
        out[field] = _text(field, out.get(field), optional=True)
    reply_to = out.get("reply_to") or []
    if not isinstance(reply_to, (list, tuple)) or not all(isinstance(a, str) for a in reply_to):
        raise TemplateRefused("reply_to", "must be a list of strings")
    out["reply_to"] = json.dumps(list(reply_to))
    variables = out.get("variables") or []
    if not isinstance(variables, (list, tuple)) or not all(isinstance(v, dict)
                                                           for v in variables):
        raise TemplateRefused("variables", "must be a list of objects")
    try:
        out["variables"] = json.dumps(list(variables), allow_nan=False)
    except (TypeError, ValueError):
        raise TemplateRefused("variables", "must be plain JSON") from None
    return out


def _stored(row: TemplateRow) -> dict[str, object]:
    """A row's fields in the vocabulary of `fields` (for laying changes over)."""
    return {"name": row.name, "alias": row.alias, "sender": row.sender, "subject": row.subject,
            "reply_to": list(row.reply_to), "html": row.html, "text": row.text,
            "variables": list(row.variables)}


class SqliteTemplates(SideTable):
    SCHEMA = TEMPLATES_SCHEMA
    WHAT = "the templates"
    ERROR = TemplateStoreError

    # -- reads ----------------------------------------------------------------------------

    def get(self, tenant: str, ref: str) -> TemplateRow | None:
        rows = self._rows(_SQL_GET, (tenant, ref, ref, ref), _row)
        return rows[0] if rows else None

    def list(self, tenant: str, limit: int, after: str | None = None,
             before: str | None = None) -> tuple[builtins.list[TemplateRow], bool]:
        """A page newest first: `limit` rows after the row `after` (older
        ones) or the `limit` rows just before `before` (newer ones)."""
        if limit < 1:
            raise TemplateRefused("limit", "at least 1")
        if after is not None and before is not None:
            raise TemplateRefused("before", "give after or before, not both")
        sql, params = _SQL_PAGE, [tenant]
        cursor_field, cursor = ("before", before) if before is not None else ("after", after)
        if cursor is not None:
            found = self._rows(_SQL_CURSOR, (tenant, cursor), tuple)
            if not found:
                raise TemplateRefused(cursor_field, "no template with this id")
            sql += f" AND (created, id) {'>' if before is not None else '<'} (?, ?)"
            params += [found[0][0], found[0][1]]
        order = "ASC" if before is not None else "DESC"
        sql += f" ORDER BY created {order}, id {order} LIMIT ?"
        rows = self._rows(sql, (*params, limit + 1), _row)
        more = len(rows) > limit
        rows = rows[:limit]
        return (rows[::-1] if before is not None else rows), more

    def version(self, tenant: str, ref: str, n: int | None = None) -> TemplateVersion | None:
        row = self.get(tenant, ref)
        if row is None or not row.published_version:
            return None
        found = self._rows(_SQL_VGET, (tenant, row.id, row.published_version if n is None
                                       else n), _version)
        return found[0] if found else None

    def versions(self, tenant: str, ref: str) -> builtins.list[TemplateVersion] | None:
        row = self.get(tenant, ref)
        if row is None:
            return None
        return self._rows(_SQL_VALL, (tenant, row.id), _version)

    # -- writes ---------------------------------------------------------------------------

    def _find(self, db: sqlite3.Connection, tenant: str, ref: str) -> TemplateRow | None:
        r = db.execute(_SQL_GET, (tenant, ref, ref, ref)).fetchone()
        return None if r is None else _row(r)

    def _insert(self, db: sqlite3.Connection, tenant: str, f: Mapping[str, object],
                now: float) -> TemplateRow:
        count = db.execute(_SQL_COUNT, (tenant,)).fetchone()[0]
        if count >= MAX_TEMPLATES:
            raise TemplateRefused("templates", f"at most {MAX_TEMPLATES} templates per "
                                               "tenant: delete one first")
        template_id = "tpl_" + secrets.token_hex(10)
        self._free_alias(db, tenant, f["alias"], template_id)
        db.execute(_SQL_INSERT, (template_id, tenant, f["name"], f["alias"], f["sender"],
                                 f["subject"], f["reply_to"], f["html"], f["text"],
                                 f["variables"], now, now, 0, None, 1))
        found = self._find(db, tenant, template_id)
        assert found is not None
        return found

    @staticmethod
    def _free_alias(db: sqlite3.Connection, tenant: str, alias: object,
                    template_id: str) -> None:
        if alias is not None and db.execute(_SQL_ALIAS, (tenant, alias, template_id)
                                            ).fetchone() is not None:
            raise TemplateExists(f"alias: a template with alias {alias!r} exists")

    def create(self, tenant: str, fields: Mapping[str, object], now: float) -> TemplateRow:
        checked = _checked(fields, {})
        with self._db(write=True) as db:
            assert db is not None
            return self._insert(db, tenant, checked, now)

    def duplicate(self, tenant: str, ref: str, now: float) -> TemplateRow | None:
        if not self.paths.index.exists():
            return None
        with self._db(write=True) as db:
            assert db is not None
            row = self._find(db, tenant, ref)
            if row is None:
                return None
            name = row.name[:_NAME_MAX - len(_COPY)] + _COPY
            return self._insert(db, tenant, _checked({"name": name, "alias": None},
                                                     _stored(row)), now)

    def update(self, tenant: str, ref: str, fields: Mapping[str, object],
               now: float) -> TemplateRow | None:
        """Lay `fields` over the draft; None when there is no such template."""
        if not self.paths.index.exists():
            return None
        with self._db(write=True) as db:
            assert db is not None
            row = self._find(db, tenant, ref)
            if row is None:
                return None
            f = _checked(fields, _stored(row))
            self._free_alias(db, tenant, f["alias"], row.id)
            latest = None if not row.published_version else db.execute(
                _SQL_VGET, (tenant, row.id, row.published_version)).fetchone()
            new = _canon(f["sender"], f["subject"], json.loads(str(f["reply_to"])), f["html"],
                         f["text"], json.loads(str(f["variables"])))
            unpublished = latest is None or _content(_version(latest)) != new
            db.execute(_SQL_UPDATE, (f["name"], f["alias"], *new, now, int(unpublished),
                                     tenant, row.id))
            return self._find(db, tenant, row.id)

    def publish(self, tenant: str, ref: str, now: float) -> TemplateVersion | None:
        """The draft as a new version; the latest one when the draft equals
        it; None when there is no such template."""
        if not self.paths.index.exists():
            return None
        with self._db(write=True) as db:
            assert db is not None
            row = self._find(db, tenant, ref)
            if row is None:
                return None
            if row.published_version and not row.unpublished:
                latest = db.execute(_SQL_VGET, (tenant, row.id, row.published_version)
                                    ).fetchone()
                if latest is not None:
                    return _version(latest)
            n = row.published_version + 1
            if n > MAX_VERSIONS:        # each may hold 512 KiB: growth stays bounded
                raise TemplateRefused("version", f"at most {MAX_VERSIONS} versions: "
                                                 "duplicate the template to go on")
            version = TemplateVersion(tenant=tenant, template_id=row.id, version=n,
                                      sender=row.sender, subject=row.subject,
                                      reply_to=row.reply_to, html=row.html, text=row.text,
                                      variables=row.variables, published_at=now)
            db.execute(_SQL_VINSERT, (tenant, row.id, n, *_content(version), now))
            db.execute(_SQL_PUBLISHED, (n, now, tenant, row.id))
            return version

    def delete(self, tenant: str, ref: str) -> bool:
        if not self.paths.index.exists():
            return False
        with self._db(write=True) as db:
            assert db is not None
            row = self._find(db, tenant, ref)
            if row is None:
                return False
            db.execute(_SQL_VDELETE, (tenant, row.id))
            return db.execute(_SQL_DELETE, (tenant, row.id)).rowcount > 0
