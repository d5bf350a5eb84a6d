"""The Suppressions pages: search, add, remove (with a note), export and import.

One job: the suppression lists as the viewer may see them — search a page
at a time, add an address, remove one behind a page asking why, export a
list as CSV and import one — over the `SuppressionsBackend` below.

Public API:
    PART = "domains"   NAV   routes(backend) -> [Route]
    SuppressionsBackend  the Protocol (ConsoleParts.domains implements it
                         beside pages_domains.DomainsBackend; the runtime's
                         is mta.runtime.console_domains.ConsoleDomains)
    MANUAL_REASONS       the reasons a person may give an added entry

Routes (under /console; all "any", scoped below):
    GET  /suppressions?q=&scope=&reason=&after=&after_scope=
        form #search; table #suppressions (row "sup-<i>": "sup-<i>-address",
        a "Remove…" link each); #next (the next page); forms #add-suppression
        and #import-suppressions; link #export
    POST /suppressions                  address, reason, scope → 303 to its search
    GET  /suppressions/remove?address=&scope=   form #remove-suppression (note)
    POST /suppressions/remove           address, scope, note (required) → 303
    GET  /suppressions/export?scope=    CSV attachment (suppression_csv)
    POST /suppressions/import           multipart `file` or text `csv`, scope →
                                        result page: #import-added,
                                        #import-present, #import-invalid,
                                        #import-errors (the first invalid lines)

Search: `q` that is a whole address matches exactly (a primary-key seek);
anything else is a substring of the address (case-insensitive for ASCII:
one pass in key order that stops when a page is full, at worst ~20 ms per
100,000 entries; mta.spool.suppression_search). Pages of 50 by keyset
(after, after_scope: the last row shown). `reason`: one of
SUPPRESSION_REASONS; `scope`: see below.

Scopes: "" is the global list (shown "global"), a tenant's name its list.
The operator picks one (`scope=*`, or none given: every list); a tenant
always works on its own list, and naming any other scope is 404.
Adding and importing: the operator into the global list or a tenant's.

Invariants:
- Every query and form value is checked here: too long, control
  characters, not an address, an unknown reason or scope → 422 naming the
  field (a tenant's foreign scope: 404); nothing is changed then.
- Imports are bounded: MAX_IMPORT_BYTES (1 MiB) and MAX_IMPORT_ROWS
  (10,000) — beyond, 413/422 with the limit named, nothing imported.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.render import NavItem, Route, field, form, redirect, render, viewer
from mta.console.suppression_csv import (MAX_IMPORT_BYTES, MAX_IMPORT_ROWS, Row, export_lines,
                                         parse_import)
from mta.core.address import AddressError, parse_address
from mta.core.envelope import SUPPRESSION_REASONS

__all__ = ["PART", "NAV", "routes", "SuppressionsBackend", "MANUAL_REASONS"]

PART = "domains"
NAV: list[NavItem] = [("Suppressions", "/suppressions", "any")]
MANUAL_REASONS = ("manual", "unsubscribe", "hard_bounce", "complaint")
PAGE = 50
_EXPORT_BATCH = 2000
_SCOPE = re.compile(r"[\x21-\x7e]{1,64}")
Json = dict[str, Any]


class SuppressionsBackend(Protocol):
    """The suppression lists as `viewer` may see them. A scope the viewer
    may not use is ConsoleError 404 (a tenant) or 422; storage trouble 503."""

    async def suppression_scopes(self, viewer: Viewer) -> list[str]:
        """The lists the viewer may add to: the operator "" (global) then
        every tenant ("default" first); a tenant only its own."""

    async def suppressions(self, viewer: Viewer, scope: str | None, q: str,
                           reason: str | None, after: tuple[str, str] | None,
                           limit: int) -> tuple[list[Json], bool]:
        """Active entries in (address, scope) order after `after`, at most
        `limit`, and whether more follow: [{"address", "scope" ("" global),
        "reason", "origin" (bounce | complaint | manual), "created",
        "expires" (Unix seconds; None never), "queue_id", "reply"}].
        scope None: every list (the operator's only)."""

    async def suppress(self, viewer: Viewer, scope: str, address: str, reason: str) -> bool:
        """Add (a checked address); True if new, False if it was listed."""

    async def unsuppress(self, viewer: Viewer, scope: str, address: str, note: str) -> bool:
        """Remove, noting why; False: the address is not on that list."""

    async def import_suppressions(self, viewer: Viewer, scope: str,
                                  rows: list[Row]) -> tuple[int, int]:
        """Add each (address, reason, created, expires) unless listed:
        (added, already present)."""


def _text(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ConsoleError(422, f"{name}: expected text", name)
    text = value.strip()
    if len(text) > max_len:
        raise ConsoleError(422, f"{name}: at most {max_len} characters", name)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConsoleError(422, f"{name}: control characters are not allowed", name)
    return text


def _address(value: str, name: str = "address") -> str:
    try:
        return str(parse_address(_text(value, name, 320)))
    except AddressError:
        raise ConsoleError(422, f"{name}: not an email address", name) from None


def _scope(v: Viewer, given: Any) -> str | None:
    """The list a search asks for (None: every list, the operator's
    default), or 404 (a tenant naming another) / 422."""
    if v.tenant is not None:
        if given not in (None, v.tenant):
            raise ConsoleError(404, "no such suppression list", "scope")
        return v.tenant
    if given is None or given == "*":
        return None
    scope = _text(given, "scope", 64)
    if scope and not _SCOPE.fullmatch(scope):
        raise ConsoleError(422, "scope: not a list name", "scope")
    return scope


def _one_scope(v: Viewer, given: Any) -> str:
    """The one list a change or an export is for: a tenant's own; the
    operator's choice, the global list ("") when none is given."""
    scope = _scope(v, "" if given is None and v.tenant is None else given)
    if scope is None:
        raise ConsoleError(422, "scope: choose one list (global or a tenant's)", "scope")
    return scope


def _reason(value: str | None) -> str | None:
    if not value:
        return None
    if value not in SUPPRESSION_REASONS:
        raise ConsoleError(422, f"reason: one of {', '.join(SUPPRESSION_REASONS)}", "reason")
    return value


def _query(request: web.Request) -> tuple[str | None, str, str | None, tuple[str, str] | None]:
    """(scope, q, reason, after) of a search, checked."""
    q = request.query
    scope = _scope(viewer(request), q.get("scope"))
    text = _text(q.get("q", ""), "q", 320)
    reason = _reason(_text(q.get("reason", ""), "reason", 32))
    after = None
    if q.get("after"):
        after = (_text(q["after"], "after", 400), _text(q.get("after_scope", ""),
                                                         "after_scope", 64))
    return scope, text, reason, after


def _list_path(scope: str | None, q: str = "") -> str:
    params = {"scope": "*" if scope is None else scope}
    if q:
        params["q"] = q
    return "/suppressions?" + urlencode(params)


def routes(backend: SuppressionsBackend) -> list[Route]:
    async def listing(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        scope, q, reason, after = _query(request)
        rows, more = await backend.suppressions(v, scope, q, reason, after, PAGE)
        next_url = None
        if more and rows:
            params = {k: x for k, x in (("q", q), ("reason", reason or "")) if x}
            params.update(scope="*" if scope is None else scope, after=rows[-1]["address"],
                          after_scope=rows[-1]["scope"])
            next_url = "/suppressions?" + urlencode(params)
        scopes = await backend.suppression_scopes(v)
        return render(request, "suppressions.html", title="Suppressions", rows=rows,
                      next_url=next_url, scope=scope, q=q, reason=reason, paged=after is not None,
                      scopes=scopes, reasons=SUPPRESSION_REASONS, manual=MANUAL_REASONS,
                      first_url=_list_path(scope, q), max_rows=MAX_IMPORT_ROWS,
                      max_kib=MAX_IMPORT_BYTES // 1024)

    async def add(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        data = await form(request)
        address = _address(field(data, "address", max_len=320))
        reason = field(data, "reason", max_len=32, required=False) or "manual"
        if reason not in MANUAL_REASONS:
            raise ConsoleError(422, f"reason: one of {', '.join(MANUAL_REASONS)}", "reason")
        scope = _one_scope(v, data.get("scope"))
        new = await backend.suppress(v, scope, address, reason)
        where = scope or "global"
        raise redirect(request, _list_path(scope, address),
                       ok=f"{address} suppressed ({where} list)." if new else
                       f"{address} was already on the {where} list (unchanged).")

    return [("GET", "/suppressions", listing, "any"), ("POST", "/suppressions", add, "any"),
            *_remove_routes(backend), *_csv_routes(backend)]


def _remove_routes(backend: SuppressionsBackend) -> list[Route]:
    async def confirm(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        address = _address(request.query.get("address", ""))
        scope = _one_scope(v, request.query.get("scope"))
        rows, _ = await backend.suppressions(v, scope, address, None, None, 1)
        if not rows:
            raise ConsoleError(404, f"{address} is not on the {scope or 'global'} list")
        return render(request, "suppressions_remove.html", title="Remove a suppression",
                      e=rows[0])

    async def remove(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        data = await form(request)
        address = _address(field(data, "address", max_len=320))
        scope = _one_scope(v, data.get("scope"))
        note = field(data, "note", max_len=500)
        if not await backend.unsuppress(v, scope, address, note):
            raise ConsoleError(404, f"{address} is not on the {scope or 'global'} list")
        raise redirect(request, _list_path(scope),
                       ok=f"{address} removed from the {scope or 'global'} list: "
                          "mail to it is accepted again.")

    return [("GET", "/suppressions/remove", confirm, "any"),
            ("POST", "/suppressions/remove", remove, "any")]


def _csv_routes(backend: SuppressionsBackend) -> list[Route]:
    async def export(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        scope = _one_scope(v, request.query.get("scope"))
        label = re.sub(r"[^A-Za-z0-9_-]", "_", scope) or "global"
        name = f"suppressions-{label}-{time.strftime('%Y%m%d', time.gmtime())}.csv"
        response = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"'})
        rows, more = await backend.suppressions(v, scope, "", None, None, _EXPORT_BATCH)
        await response.prepare(request)
        await response.write(export_lines(rows, header=True).encode("utf-8"))
        while more and rows:
            after = (rows[-1]["address"], rows[-1]["scope"])
            rows, more = await backend.suppressions(v, scope, "", None, after, _EXPORT_BATCH)
            await response.write(export_lines(rows).encode("utf-8"))
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        data = await form(request)
        scope = _one_scope(v, data.get("scope"))
        text = await _upload_text(data.get("file"), data.get("csv"))
        try:
            plan = parse_import(text, time.time())
        except ValueError as exc:
            raise ConsoleError(422, f"csv: {exc}; nothing imported", "file") from None
        added, present = await backend.import_suppressions(v, scope, plan.rows)
        return render(request, "suppressions_import.html", title="Import result",
                      scope=scope, added=added, present=present, plan=plan,
                      back=_list_path(scope))

    return [("GET", "/suppressions/export", export, "any"),
            ("POST", "/suppressions/import", upload, "any")]


async def _upload_text(upload: Any, pasted: Any) -> str:
    """The CSV text of the form: the file if one was chosen, else the textarea."""
    if isinstance(upload, web.FileField):
        raw = await asyncio.to_thread(upload.file.read, MAX_IMPORT_BYTES + 1)
        if raw:
            if len(raw) > MAX_IMPORT_BYTES:
                raise ConsoleError(413, f"file: at most {MAX_IMPORT_BYTES // 1024} KiB; "
                                        "split the file", "file")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConsoleError(422, "file: not UTF-8 text (save the CSV as UTF-8)",
                                   "file") from None
    if isinstance(pasted, str) and pasted.strip():
        if len(pasted.encode("utf-8", "surrogatepass")) > MAX_IMPORT_BYTES:
            raise ConsoleError(413, f"csv: at most {MAX_IMPORT_BYTES // 1024} KiB", "csv")
        return pasted
    raise ConsoleError(422, "file: choose a CSV file or paste its lines", "file")
