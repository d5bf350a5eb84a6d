"""The Domains pages: sending domains, the DNS records each must publish, checks.

One job: list the viewer's sending domains, add one, show the records to
publish with each one's status from the last check (and why it fails),
run the check now, show the DKIM rotation state, and delete a domain
behind a confirmation page — over the `DomainsBackend` below.

Public API:
    PART = "domains"   NAV   routes(backend) -> [Route]
    DomainsBackend     the Protocol of `ConsoleParts.domains` (with
                       mta.console.pages_suppressions.SuppressionsBackend;
                       the runtime's is mta.runtime.console_domains)

Routes (under /console; every one "any": a tenant works on its own domains):
    GET  /domains                         #domains (a row "domain-<name>" each),
                                          form #add-domain (name; operator: tenant)
    POST /domains                         adds, runs a first check, 303 to its page
    GET  /domains/{name}                  #domain-status, #domain-reason, #records
                                          (row "rec-<i>": "rec-<i>-name",
                                          "rec-<i>-value", "rec-<i>-status",
                                          "rec-<i>-reason"; copy buttons), form
                                          #check-form (button #check-now),
                                          #rotation, link #delete
    POST /domains/{name}/check            runs the DNS check, 303 back with a notice
    GET  /domains/{name}/confirm-delete   form #confirm-delete (button #delete-confirm)
    POST /domains/{name}/delete           deletes, 303 to /domains

Invariants:
- Ownership is the sending API's (mta.runtime.api_resources): a tenant
  sees and acts on the domains it owns; another tenant's domain, like an
  unknown or malformed name in a path, is 404. The operator sees every
  domain with its tenant and adds for any tenant ("default" unless told).
- A name to add is checked here (an RFC 1035 name one can send from, at
  most 253 characters, no control characters): else 422 naming `name`.
- The first check after an add is the page's: the records then show what
  is missing at once ("no TXT record at …"); "Check now" runs it again.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.render import NavItem, Route, field, form, redirect, render, viewer
from mta.core.address import AddressError, parse_domain

__all__ = ["PART", "NAV", "routes", "DomainsBackend"]

PART = "domains"
NAV: list[NavItem] = [("Domains", "/domains", "any")]

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
Json = dict[str, Any]


class DomainsBackend(Protocol):
    """The sending domains as `viewer` may see them (tenant None: all).
    Refusals are ConsoleError (409 exists or another tenant's, 422 refused,
    503 storage)."""

    async def domains(self, viewer: Viewer) -> list[Json]:
        """By name: [{"name", "tenant", "status" (not_started | pending |
        verified | failed), "last_checked" (Unix seconds or None),
        "selectors" (the active DKIM selectors, [str])}]."""

    async def domain(self, viewer: Viewer, name: str) -> Json | None:
        """{"name", "tenant", "status", "created", "last_checked",
        "next_check", "failure_reason" (str | None: the last failing check's),
        "records": [{"type", "fqdn", "name" ("@" or relative), "value" (MX:
        the host), "priority" (MX) | None, "ttl", "required", "note",
        "status" (not_started | pending | verified | failed |
        temporary_failure), "reason" (why it fails, or None)}],
        "selectors": [{"selector", "algorithm", "key" ("RSA 2048 bits"),
        "status" (active | pending | retiring), "created", "retire_at"}],
        "rotation_grace" (seconds)}; None: unknown or not the viewer's."""

    async def domain_tenants(self, viewer: Viewer) -> list[str]:
        """The tenants a domain may be added for: the operator's choice
        (every tenant, "default" first); a tenant: only itself."""

    async def add_domain(self, viewer: Viewer, name: str, tenant: str) -> str:
        """Create `name` (a checked domain name) for `tenant` as the API's
        POST /domains does (keys, ownership); the stored name."""

    async def check_domain(self, viewer: Viewer, name: str) -> Json | None:
        """Check the DNS now: {"status", "ok" (every required record
        passes), "failing" (records failing)}; None: not found."""

    async def remove_domain(self, viewer: Viewer, name: str) -> bool:
        """Delete the domain and its keys; False: not found."""


def _name(value: str) -> str | None:
    """A domain name one can send from, normalised; None if it is not."""
    if len(value) > 253 or any(ord(c) < 33 or ord(c) == 127 for c in value):
        return None
    try:
        name = parse_domain(value)
    except AddressError:
        return None
    if name.startswith("[") or "." not in name:
        return None
    return name


def _path_name(request: web.Request) -> str:
    name = _name(request.match_info.get("name", ""))
    if name is None:
        raise ConsoleError(404, "no such domain")
    return name


def routes(backend: DomainsBackend) -> list[Route]:
    async def listing(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        return render(request, "domains.html", title="Domains",
                      domains=await backend.domains(v),
                      tenants=await backend.domain_tenants(v))

    async def add(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        data = await form(request)
        raw = field(data, "name", max_len=253)
        name = _name(raw)
        if name is None:
            raise ConsoleError(422, "name: not a domain name one can send from "
                                    "(like news.example.com)", "name")
        tenant = field(data, "tenant", max_len=63, required=False) or (
            v.tenant or "default")
        if v.tenant is not None and tenant != v.tenant:
            raise ConsoleError(404, "no such tenant", "tenant")
        if not _TENANT.fullmatch(tenant) or tenant not in await backend.domain_tenants(v):
            raise ConsoleError(422, "tenant: no such tenant", "tenant")
        made = await backend.add_domain(v, name, tenant)
        checked = await backend.check_domain(v, made)
        note = "" if checked is None or checked["ok"] else (
            " Publish the records below, then use Check now.")
        raise redirect(request, f"/domains/{made}", ok=f"Domain {made} added.{note}")

    async def page(request: web.Request) -> web.StreamResponse:
        found = await backend.domain(viewer(request), _path_name(request))
        if found is None:
            raise ConsoleError(404, "no such domain")
        return render(request, "domain.html", title=found["name"], d=found)

    async def check(request: web.Request) -> web.StreamResponse:
        name = _path_name(request)
        result = await backend.check_domain(viewer(request), name)
        if result is None:
            raise ConsoleError(404, "no such domain")
        if result["ok"]:
            raise redirect(request, f"/domains/{name}",
                           ok=f"Checked {name}: every required record is right.")
        n = result["failing"]
        raise redirect(request, f"/domains/{name}",
                       error=f"Checked {name}: {n} record{'s' if n != 1 else ''} "
                             "not right yet (see below).")

    async def confirm(request: web.Request) -> web.StreamResponse:
        found = await backend.domain(viewer(request), _path_name(request))
        if found is None:
            raise ConsoleError(404, "no such domain")
        return render(request, "domain_delete.html", title=f"Delete {found['name']}",
                      d=found)

    async def delete(request: web.Request) -> web.StreamResponse:
        name = _path_name(request)
        if not await backend.remove_domain(viewer(request), name):
            raise ConsoleError(404, "no such domain")
        raise redirect(request, "/domains", ok=f"Domain {name} deleted: its keys are gone; "
                                               "its DNS records may be removed.")

    return [("GET", "/domains", listing, "any"), ("POST", "/domains", add, "any"),
            ("GET", "/domains/{name}", page, "any"),
            ("POST", "/domains/{name}/check", check, "any"),
            ("GET", "/domains/{name}/confirm-delete", confirm, "any"),
            ("POST", "/domains/{name}/delete", delete, "any")]
