"""The sending API's templates over the template store, each call scoped to
the tenant of the request's key.

One job: implement mta.api.templates.TemplateBackend over
mta.spool.templates.SqliteTemplates (every store call in a worker thread),
send a template's test through the daemon's sending path, and hand the send
path a published version.

Public API:
    RuntimeTemplates(store, tenant_of, clock, send_test)
        the TemplateBackend (every method takes the request's ApiKey first)
        await .published(credential, ref, version=None) -> dict | None
            for the send path (not a route): {"id", "version", "name", "from",
            "subject", "reply_to", "html", "text", "variables"} of the latest
            published version (or the one given) of the credential's tenant's
            template; plain JSON (msgpack-safe); None: no such template or
            version, or never published
    template_json(row), list_item(row), version_json(version)   the API's shapes
        (the CLI prints the same)
    stored_content(row_or_version) -> TemplateContent   what mail.templating
        renders (the spool may not import mail, so the store's rows cannot
        make it themselves)
    tenant_of(credential) -> str, or an awaitable of it (TenantService.resolve:
        "default" for a credential no tenant owns)
    send_test(key, doc) -> email id: the daemon's POST /emails path with a
        JSON doc {"from", "to", "subject", "html", "text"?, "reply_to"?}

Errors: an alias in use is 409 conflict; a refused field, MAX_TEMPLATES or a
render that fails is 422 naming the field ("template" for a render bound);
a storage error 503 with retry-after. Never a template's content in a log.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mta.api.http import ApiError
from mta.api.keys import ApiKey
from mta.core import Clock
from mta.core.errors import StorageError
from mta.mail.templating import (Rendered, RenderLimit, TemplateContent, TemplateError,
                                 parse_variables, render)
from mta.runtime.api_webhooks import iso, unavailable
from mta.spool.templates import (SqliteTemplates, TemplateExists, TemplateRefused, TemplateRow,
                                 TemplateVersion)

__all__ = ["RuntimeTemplates", "list_item", "stored_content", "template_json", "version_json"]

Json = dict[str, Any]
R = TypeVar("R")
TenantOf = Callable[[str], str | Awaitable[str]]
SendTest = Callable[[ApiKey, Json], Awaitable[str]]


def template_json(row: TemplateRow) -> Json:
    return {"object": "template", "id": row.id, "name": row.name, "alias": row.alias,
            "status": row.status, "from": row.sender, "subject": row.subject,
            "reply_to": list(row.reply_to) or None, "html": row.html, "text": row.text,
            "variables": [dict(v) for v in row.variables], "created_at": iso(row.created),
            "updated_at": iso(row.updated), "published_at": iso(row.published_at),
            "version": row.published_version or None,
            "has_unpublished_changes": row.unpublished,
            # the Resend SDKs' names for the same two facts
            "has_unpublished_versions": row.unpublished,
            "current_version_id": (f"{row.id}.v{row.published_version}"
                                   if row.published_version else None)}


def list_item(row: TemplateRow) -> Json:
    return {"id": row.id, "name": row.name, "alias": row.alias, "status": row.status,
            "published_at": iso(row.published_at), "created_at": iso(row.created),
            "updated_at": iso(row.updated)}


def version_json(v: TemplateVersion) -> Json:
    return {"object": "template_version", "template_id": v.template_id, "version": v.version,
            "from": v.sender, "subject": v.subject, "reply_to": list(v.reply_to) or None,
            "html": v.html, "text": v.text, "variables": [dict(x) for x in v.variables],
            "published_at": iso(v.published_at)}


def stored_content(obj: TemplateRow | TemplateVersion) -> TemplateContent:
    return TemplateContent(subject=obj.subject or "", html=obj.html, text=obj.text,
                           variables=parse_variables([dict(v) for v in obj.variables]))


def _render_strict(content: TemplateContent, data: Json) -> Rendered:
    try:
        return render(content, data, strict=True)
    except RenderLimit as exc:
        raise ApiError(422, "validation_error", f"template: {exc}") from None
    except TemplateError as exc:
        raise ApiError(422, "validation_error", f"{exc.field}: {exc.reason}") from None


class RuntimeTemplates:
    def __init__(self, store: SqliteTemplates, tenant_of: TenantOf, clock: Clock,
                 send_test: SendTest):
        self.store, self.clock = store, clock
        self._tenant_of, self._send_test = tenant_of, send_test

    async def _tenant(self, credential: str) -> str:
        tenant = self._tenant_of(credential)
        return await tenant if inspect.isawaitable(tenant) else tenant

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        """A store call in a worker thread, its refusals as the API's errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except TemplateExists as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except TemplateRefused as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        except StorageError as exc:
            raise unavailable(exc) from None

    # -- reads ----------------------------------------------------------------------------

    async def templates(self, key: ApiKey, limit: int, after: str | None,
                        before: str | None) -> tuple[builtins.list[Json], bool]:
        rows, more = await self._call(self.store.list, await self._tenant(key.credential),
                                      limit, after, before)
        return [list_item(r) for r in rows], more

    async def template(self, key: ApiKey, ref: str) -> Json | None:
        row = await self._call(self.store.get, await self._tenant(key.credential), ref)
        return None if row is None else template_json(row)

    async def template_version(self, key: ApiKey, ref: str,
                               version: int | None) -> Json | None:
        v = await self._call(self.store.version, await self._tenant(key.credential), ref,
                             version)
        return None if v is None else version_json(v)

    async def template_versions(self, key: ApiKey, ref: str) -> builtins.list[Json] | None:
        vs = await self._call(self.store.versions, await self._tenant(key.credential), ref)
        return None if vs is None else [version_json(v) for v in vs]

    # -- changes --------------------------------------------------------------------------

    async def create_template(self, key: ApiKey, fields: Json) -> Json:
        row = await self._call(self.store.create, await self._tenant(key.credential), fields,
                               self.clock.now())
        return template_json(row)

    async def update_template(self, key: ApiKey, ref: str, fields: Json) -> Json | None:
        row = await self._call(self.store.update, await self._tenant(key.credential), ref,
                               fields, self.clock.now())
        return None if row is None else template_json(row)

    async def remove_template(self, key: ApiKey, ref: str) -> str | None:
        tenant = await self._tenant(key.credential)
        row = await self._call(self.store.get, tenant, ref)
        if row is None or not await self._call(self.store.delete, tenant, row.id):
            return None
        return row.id

    async def publish_template(self, key: ApiKey, ref: str) -> Json | None:
        v = await self._call(self.store.publish, await self._tenant(key.credential), ref,
                             self.clock.now())
        return None if v is None else {"id": v.template_id, "object": "template",
                                       "version": v.version}

    async def duplicate_template(self, key: ApiKey, ref: str) -> Json | None:
        row = await self._call(self.store.duplicate, await self._tenant(key.credential), ref,
                               self.clock.now())
        return None if row is None else template_json(row)

    async def send_test(self, key: ApiKey, ref: str, to: str, sender: str | None,
                        data: Json) -> str | None:
        """The draft rendered strictly (a variable without a value and
        without a fallback is a 422), sent to `to` through the send path."""
        row = await self._call(self.store.get, await self._tenant(key.credential), ref)
        if row is None:
            return None
        sender = sender or row.sender
        if not sender:
            raise ApiError(422, "missing_required_field",
                           "from: required (the template has no from address)")
        out = await asyncio.to_thread(_render_strict, stored_content(row), data)
        doc: Json = {"from": sender, "to": [to], "subject": f"[Test] {out.subject or row.name}"}
        for part in ("html", "text"):
            if getattr(out, part) is not None:
                doc[part] = getattr(out, part)
        if row.reply_to:
            doc["reply_to"] = list(row.reply_to)
        return await self._send_test(key, doc)

    # -- the send path ----------------------------------------------------------------------

    async def published(self, credential: str, ref: str,
                        version: int | None = None) -> Json | None:
        tenant = await self._tenant(credential)

        def read() -> tuple[TemplateRow, TemplateVersion] | None:
            row = self.store.get(tenant, ref)
            v = None if row is None else self.store.version(tenant, row.id, version)
            return None if row is None or v is None else (row, v)
        found = await self._call(read)
        if found is None:
            return None
        row, v = found
        return {"id": row.id, "version": v.version, "name": row.name, "from": v.sender,
                "subject": v.subject, "reply_to": list(v.reply_to), "html": v.html,
                "text": v.text, "variables": [dict(x) for x in v.variables]}
