"""Templates across tenants, for the operator: a page of every tenant's
templates and the owner of a template id.

One job: the two reads of the `templates` table (spool/templates.py) that
cross the tenant boundary — which `SqliteTemplates` never does, each of
its calls being one tenant's — for the web console's operator (its tenant
viewers use the same page, filtered to their tenant).

API (synchronous; `state_dir` is the daemon's server.state_dir):
    TemplateIndex(state_dir)
        .page(tenant, limit, after=None) -> (list[TemplateListing], has_more)
            newest first (created, then id); tenant None: every tenant's;
            after: the id of the last row of the previous page
            (TemplateRefused "after" when that id is not in the listing)
        .tenant_of(template_id) -> str | None      None: no such template
    TemplateListing     frozen: id, tenant, name, alias, status, created,
                        updated, published_version, published_at

Invariants: reads only (nothing is ever created: no index, or no table
yet, reads as empty); plain stdlib sqlite3 through SideTable, a short
connection per call (call it from a worker thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mta.spool.sidetable import SideTable
from mta.spool.templates import TEMPLATES_SCHEMA, TemplateRefused, TemplateStoreError

__all__ = ["TemplateIndex", "TemplateListing"]

_COLUMNS = ("id, tenant, name, alias, created, updated, published_version, published_at, "
            "unpublished")
_SQL_OWNER = "SELECT tenant FROM templates WHERE id = ?"
_SQL_CURSOR = "SELECT created, id FROM templates WHERE id = ?"


@dataclass(frozen=True, slots=True)
class TemplateListing:
    id: str
    tenant: str
    name: str
    alias: str | None
    created: float
    updated: float
    published_version: int
    published_at: float | None
    unpublished: bool

    @property
    def status(self) -> str:
        return "published" if self.published_version and not self.unpublished else "draft"


def _listing(r: Sequence[Any]) -> TemplateListing:
    return TemplateListing(id=str(r[0]), tenant=str(r[1]), name=str(r[2]), alias=r[3],
                           created=float(r[4]), updated=float(r[5]),
                           published_version=int(r[6]),
                           published_at=None if r[7] is None else float(r[7]),
                           unpublished=bool(r[8]))


class TemplateIndex(SideTable):
    SCHEMA = TEMPLATES_SCHEMA
    WHAT = "the templates"
    ERROR = TemplateStoreError

    def page(self, tenant: str | None, limit: int,
             after: str | None = None) -> tuple[list[TemplateListing], bool]:
        if limit < 1:
            raise TemplateRefused("limit", "at least 1")
        where: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if after is not None:
            cursor_sql = _SQL_CURSOR + (" AND tenant = ?" if tenant is not None else "")
            found = self._rows(cursor_sql, (after, tenant) if tenant is not None else (after,),
                               tuple)
            if not found:
                raise TemplateRefused("after", "no template with this id")
            where.append("(created, id) < (?, ?)")
            params += [found[0][0], found[0][1]]
        sql = f"SELECT {_COLUMNS} FROM templates"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        rows = self._rows(sql, (*params, limit + 1), _listing)
        return rows[:limit], len(rows) > limit

    def tenant_of(self, template_id: str) -> str | None:
        found = self._rows(_SQL_OWNER, (template_id,), lambda r: str(r[0]))
        return found[0] if found else None
