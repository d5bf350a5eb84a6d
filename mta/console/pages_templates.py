"""The Templates pages: the viewer's email templates, their versions, and
a preview rendered as a send would render it.

One job: list the templates a viewer may see (a tenant: its own; the
operator: every tenant's, with a tenant column and filter), show one with
its draft, its declared variables and its published versions, and render
a preview of the draft or a version with variables given as JSON — the
same lenient render as the sending API's POST /templates/{id}/preview
(mail/templating.py, bounded): a variable without a value renders empty
and is listed as missing; names used but not declared are listed too.

Public API:
    PART = "accounts"; NAV; routes(backend) -> list[Route]
    TemplatesBackend   the Protocol the runtime implements
                       (mta.runtime.console_templates)
    parse_variables_json(text) -> dict    the preview's variables (422)

Routes (under /console):
    GET  /templates[?tenant=T][&after=ID]   #templates (rows id "tpl-<id>"),
                                            50 a page newest first, #next-page;
                                            tenant: the operator's filter
    GET  /templates/{id}                    #template (the draft), #variables,
                                            #versions, the form #preview-form
    POST /templates/{id}/preview            variables (a JSON object, at most
                                            64 KiB), version ("draft",
                                            "published" or a number) → the
                                            template page with #preview:
                                            #preview-subject, #preview-text,
                                            #preview-html (the html as escaped
                                            source), #preview-frame (a sandboxed
                                            iframe of it), #preview-missing,
                                            #preview-undeclared
    ({id}: a template id; a tenant may also use its alias)

Invariants:
- Template content and rendered output reach the page only as text
  (autoescaped): the html is shown as source in a <pre>, and in an
  <iframe sandbox srcdoc> — no scripts, an opaque origin, and the
  console's CSP inherited (no remote images, no inline styles loaded).
- The preview is a POST: variables may hold personal data and never go in
  a URL; its answer is the page itself (200), not a redirect.
- Another tenant's template is a 404, as is a malformed id.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.pages_tenants import tenant_name
from mta.console.render import Route, field, form, render, viewer

__all__ = ["PART", "NAV", "routes", "TemplatesBackend", "parse_variables_json"]

PART = "accounts"
NAV = [("Templates", "/templates", "any")]

PAGE_SIZE = 50
MAX_VARIABLES_TEXT = 64 * 1024       # what the API's preview takes too
_REF = re.compile(r"[a-z0-9_-]{1,64}")
_ID = re.compile(r"tpl_[0-9a-f]{20}")


class TemplatesBackend(Protocol):
    """Templates as a viewer may see them (another tenant's: None / 404).
    A listed template: {"id", "tenant", "name", "alias" | None, "status":
    "draft" | "published", "version": int | None (published), "created",
    "updated", "published_at" (unix times or None)}."""

    async def templates(self, viewer: Viewer, *, tenant: str | None, limit: int,
                        after: str | None) -> tuple[list[dict[str, Any]], bool]:
        """A page newest first and whether more follow; `tenant` filters
        (the operator's; a tenant's viewer always gets its own). ConsoleError
        422 "after" when the cursor is not a template in the listing."""

    async def template(self, viewer: Viewer, ref: str) -> dict[str, Any] | None:
        """One template (by id; a tenant's viewer also by alias): the listed
        fields plus "from", "subject", "reply_to": [str], "html", "text"
        (None: derived from html), "variables": [{"key", "type",
        "fallback_value"?}], "unpublished": bool, "versions": [{"version",
        "published_at", "from", "subject"}] newest first."""

    async def preview(self, viewer: Viewer, ref: str, variables: dict[str, Any],
                      version: int | str | None) -> dict[str, Any]:
        """A lenient render of the draft (version "draft"), the latest
        published version (None) or version n → {"version": "draft" | n,
        "subject", "html" | None, "text" | None, "missing": [str],
        "undeclared": [str]}. ConsoleError 404 (no such template or
        version), 422 (variables of the wrong type or too big, or a render
        past its bounds: naming the field)."""


def parse_variables_json(text: str) -> dict[str, Any]:
    """The preview form's variables: a JSON object (empty text: {})."""
    if not text.strip():
        return {}
    if len(text.encode("utf-8", "surrogatepass")) > MAX_VARIABLES_TEXT:
        raise ConsoleError(422, f"variables: at most {MAX_VARIABLES_TEXT // 1024} KiB",
                           "variables")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not valid JSON"
        raise ConsoleError(422, f"variables: not a JSON object ({why})", "variables") \
            from None
    if not isinstance(value, dict):
        raise ConsoleError(422, "variables: must be a JSON object ({\"name\": value, …})",
                           "variables")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _refill(raw: object) -> str:
    """What the variables field shows again after a refusal: what was sent,
    when it is text of a sane size without control characters."""
    if isinstance(raw, str) and len(raw) <= MAX_VARIABLES_TEXT \
            and all(c.isprintable() or c in "\t\r\n" for c in raw):
        return raw
    return "{}"


def _version(text: str) -> int | str | None:
    if text in ("", "draft"):
        return "draft"
    if text == "published":
        return None
    if text.isascii() and text.isdigit() and len(text) <= 6 and int(text) >= 1:
        return int(text)
    raise ConsoleError(422, "version: \"draft\", \"published\" or a version number",
                       "version")


def _ref(request: web.Request) -> str:
    ref = request.match_info["id"]
    if not _REF.fullmatch(ref):
        raise ConsoleError(404, "no such template")
    return ref


def _query(request: web.Request) -> tuple[str | None, str | None]:
    """(tenant, after) of the list's query string (400 naming the field)."""
    tenant = request.query.get("tenant", "") or None
    after = request.query.get("after", "") or None
    if tenant is not None:
        if viewer(request).tenant is not None:
            tenant = None                   # a tenant always sees its own
        else:
            try:
                tenant = tenant_name(tenant)
            except ConsoleError as exc:
                raise ConsoleError(400, exc.message, "tenant") from None
    if after is not None and not _ID.fullmatch(after):
        raise ConsoleError(400, "after: a template id (tpl_…)", "after")
    return tenant, after


def routes(backend: TemplatesBackend) -> list[Route]:
    async def listing(request: web.Request) -> web.StreamResponse:
        tenant, after = _query(request)
        items, more = await backend.templates(viewer(request), tenant=tenant,
                                              limit=PAGE_SIZE, after=after)
        return render(request, "templates.html", title="Templates", items=items, more=more,
                      tenant=tenant or "", after=after)

    async def page(request: web.Request) -> web.StreamResponse:
        found = await backend.template(viewer(request), _ref(request))
        if found is None:
            raise ConsoleError(404, "no such template")
        return render(request, "template.html", title=f"Template {found['name']}",
                      tpl=found, preview=None, preview_error=None, variables_text="{}",
                      version="draft")

    async def preview(request: web.Request) -> web.StreamResponse:
        v, ref = viewer(request), _ref(request)
        found = await backend.template(v, ref)
        if found is None:
            raise ConsoleError(404, "no such template")
        data = await form(request)
        raw = data.get("variables", "")
        page_of: dict[str, Any] = {
            "title": f"Template {found['name']}", "tpl": found, "version": "draft",
            "variables_text": _refill(raw)}
        try:
            text = field(data, "variables", max_len=MAX_VARIABLES_TEXT, required=False)
            version_text = field(data, "version", max_len=40, required=False)
            page_of["version"] = version_text or "draft"
            result = await backend.preview(v, ref, parse_variables_json(text),
                                           _version(version_text))
        except ConsoleError as exc:
            if exc.status != 422:
                raise
            return render(request, "template.html", 422, preview=None,
                          preview_error=exc.message, **page_of)
        return render(request, "template.html", preview=result, preview_error=None,
                      **page_of)

    return [("GET", "/templates", listing, "any"),
            ("GET", "/templates/{id}", page, "any"),
            ("POST", "/templates/{id}/preview", preview, "any")]
