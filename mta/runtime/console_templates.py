"""The console's templates: mta.console.pages_templates.TemplatesBackend
over the template store, previews rendered as the sending API renders them.

One job: list and show the templates a console viewer may see (a tenant
its own; the operator every tenant's, through spool/template_index.py)
and render a preview of a template's draft or of one of its versions with
mail/templating.py's lenient render — the code behind the sending API's
POST /templates/{id}/preview (mta.api.templates.preview_json), bounded
(MAX_ITERATIONS, MAX_OUTPUT_BYTES, MAX_RENDER_SECONDS) and off the loop.

Public API:
    ConsoleTemplates    the TemplatesBackend part of ConsoleAccounts

Invariants: every store call and every render runs in a worker thread;
another tenant's template (or a ref that is none) is "not found"; a
template's content never reaches a log.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mta.console.backend import ConsoleError, Viewer
from mta.mail.templating import RenderLimit, TemplateError, render
from mta.runtime.api_templates import stored_content
from mta.runtime.console_accounts_base import AccountsPart, off_loop
from mta.spool.template_index import TemplateIndex, TemplateListing
from mta.spool.templates import (TEMPLATE_ID, SqliteTemplates, TemplateRefused, TemplateRow,
                                 TemplateVersion)

__all__ = ["ConsoleTemplates"]


def _listed(t: TemplateListing | TemplateRow) -> dict[str, Any]:
    return {"id": t.id, "tenant": t.tenant, "name": t.name, "alias": t.alias,
            "status": t.status, "version": t.published_version or None,
            "created": t.created, "updated": t.updated, "published_at": t.published_at}


def _shown(row: TemplateRow, versions: list[TemplateVersion]) -> dict[str, Any]:
    return {**_listed(row), "from": row.sender, "subject": row.subject,
            "reply_to": list(row.reply_to), "html": row.html, "text": row.text,
            "variables": [dict(v) for v in row.variables], "unpublished": row.unpublished,
            "versions": [{"version": v.version, "published_at": v.published_at,
                          "from": v.sender, "subject": v.subject} for v in versions]}


class ConsoleTemplates(AccountsPart):
    async def templates(self, viewer: Viewer, *, tenant: str | None, limit: int,
                        after: str | None) -> tuple[list[dict[str, Any]], bool]:
        if viewer.tenant is not None:
            tenant = viewer.tenant
        try:
            rows, more = await off_loop(TemplateIndex(self.root).page, tenant, limit, after)
        except TemplateRefused as exc:
            raise ConsoleError(400, str(exc), exc.field) from None
        return [_listed(r) for r in rows], more

    async def _tpl_tenant(self, viewer: Viewer, ref: str) -> str | None:
        """The tenant whose template `ref` may be: the viewer's own; for the
        operator the owner of the id (an alias names nothing: aliases are
        per tenant)."""
        if viewer.tenant is not None:
            return viewer.tenant
        if not TEMPLATE_ID.fullmatch(ref):
            return None
        return await off_loop(TemplateIndex(self.root).tenant_of, ref)

    async def template(self, viewer: Viewer, ref: str) -> dict[str, Any] | None:
        tenant = await self._tpl_tenant(viewer, ref)
        if tenant is None:
            return None
        store = SqliteTemplates(self.root)

        def read() -> tuple[TemplateRow, list[TemplateVersion]] | None:
            row = store.get(tenant, ref)
            return None if row is None else (row, store.versions(tenant, row.id) or [])
        found = await off_loop(read)
        return None if found is None else _shown(*found)

    async def preview(self, viewer: Viewer, ref: str, variables: dict[str, Any],
                      version: int | str | None) -> dict[str, Any]:
        tenant = await self._tpl_tenant(viewer, ref)
        if tenant is None:
            raise ConsoleError(404, "no such template")
        store = SqliteTemplates(self.root)

        def read() -> TemplateRow | TemplateVersion | None:
            if version == "draft":
                return store.get(tenant, ref)
            return store.version(tenant, ref, None if version is None else int(version))
        source = await off_loop(read)
        if source is None:
            what = "template" if version == "draft" else "published version of this template"
            raise ConsoleError(404, f"no such {what}")
        try:
            out = await asyncio.to_thread(_render, source, variables)
        except RenderLimit as exc:
            raise ConsoleError(422, f"template: {exc.reason}", "template") from None
        except TemplateError as exc:
            raise ConsoleError(422, f"{exc.field}: {exc.reason}", exc.field) from None
        return {"version": "draft" if isinstance(source, TemplateRow) else source.version,
                **out}


def _render(source: TemplateRow | TemplateVersion, data: dict[str, Any]) -> dict[str, Any]:
    """(a worker thread) The lenient render the API's preview makes."""
    out = render(stored_content(source), data, strict=False)
    return {"subject": out.subject, "html": out.html, "text": out.text,
            "missing": list(out.missing), "undeclared": list(out.undeclared)}
