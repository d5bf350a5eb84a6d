"""The Tenants pages (operator only): who may send, how close each tenant is
to its limits and thresholds, and pausing or resuming one.

One job: show every tenant's sending status (the operator's pause and the
reputation tracker's, with who paused it and why), its bounce and
complaint rates against its thresholds, its quota use against its limits
and its refused submissions; a tenant's own page with its limits, policy,
domains and keys; pause/resume forms that need a reason.

Public API:
    PART = "accounts"; NAV; routes(backend) -> list[Route]
    TenantsBackend     the Protocol the runtime implements
                       (mta.runtime.console_accounts)
    tenant_name(text, field) -> str        a tenant name, checked (422)
    tenant_field(data, name="tenant") -> str | None   an optional form field

Routes (under /console; every one operator only: a tenant's session gets 404):
    GET  /tenants                 #tenants (rows id "tenant-<name>")
    GET  /tenants/{name}          #tenant-status, #limits, #policy, #owned
                                  (#domains, #keys-count), #refused
    POST /tenants/{name}/pause    reason (required) → 303 /tenants/{name}
    POST /tenants/{name}/resume   reason (required) → 303 /tenants/{name}
    (the pause/resume forms: #pause-<name>, #resume-<name>)

Invariants:
- Pause and resume act as the admin API's do (TenantService: a pause
  holds the tenant's queued mail and refuses its submissions at once; a
  resume clears the operator's and the automatic pause, releases the
  held mail, and both are ledger events with the reason).
- A name that is not a tenant's (or not a tenant name at all) is a 404.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from aiohttp import web
from multidict import MultiDictProxy

from mta.console.backend import ConsoleError, Viewer
from mta.console.render import Route, field, form, redirect, render, viewer

__all__ = ["PART", "NAV", "routes", "TenantsBackend", "tenant_name", "tenant_field"]

PART = "accounts"
NAV = [("Tenants", "/tenants", "operator")]

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class TenantsBackend(Protocol):
    """Tenants for the operator (a tenant's viewer: ConsoleError 404).
    A tenant is a dict: {"name", "sending": bool, "status": "active" |
    "paused" (the operator's), "status_reason", "auto_status": "ok" |
    "warn" | "paused" (the reputation tracker's), "auto_reason",
    "paused_by": "operator" | "reputation" | None, "limits": {"per_hour",
    "per_day", "rate", "burst"} (None: no limit), "usage": {"hour": int,
    "day": int}, "reputation": {"sends": int, "bounce_rate": float,
    "complaint_rate": float} (fractions), "thresholds": {"bounce_warn",
    "bounce_pause", "complaint_warn", "complaint_pause" (fractions),
    "level", "window", "min_volume"}, "refused": {why: count},
    "created": unix time, "updated": unix time}."""

    async def tenants(self, viewer: Viewer) -> list[dict[str, Any]]:
        """Every tenant (the default one too), by name."""

    async def tenant(self, viewer: Viewer, name: str) -> dict[str, Any] | None:
        """One tenant as in `tenants`, plus "policy": {key: value} (its own
        overrides of [reputation]), "domains": [str], "webhooks": [str],
        "credentials": [str] (SMTP users), "keys": int (active API keys),
        "key_names": [str]. None: no such tenant."""

    async def tenant_pause(self, viewer: Viewer, name: str, reason: str) -> dict[str, Any]:
        """Pause its sending (ConsoleError 404: no such tenant)."""

    async def tenant_resume(self, viewer: Viewer, name: str, reason: str) -> dict[str, Any]:
        """Resume it (ConsoleError 404: no such tenant)."""


def tenant_name(text: str, name: str = "tenant") -> str:
    if not TENANT_NAME.fullmatch(text):
        raise ConsoleError(422, f"{name}: a tenant name (a-z, 0-9, '_' and '-', at most "
                                f"63, starting with a letter or digit)", name)
    return text


def tenant_field(data: MultiDictProxy[Any], name: str = "tenant") -> str | None:
    """An optional tenant form field: None when empty, else a checked name."""
    text = field(data, name, max_len=63, required=False)
    return tenant_name(text, name) if text else None


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not TENANT_NAME.fullmatch(name):
        raise ConsoleError(404, "no such tenant")
    return name


def routes(backend: TenantsBackend) -> list[Route]:
    async def listing(request: web.Request) -> web.StreamResponse:
        tenants = await backend.tenants(viewer(request))
        return render(request, "tenants.html", title="Tenants", tenants=tenants)

    async def page(request: web.Request) -> web.StreamResponse:
        found = await backend.tenant(viewer(request), _name(request))
        if found is None:
            raise ConsoleError(404, "no such tenant")
        return render(request, "tenant.html", title=f"Tenant {found['name']}", t=found)

    async def pause(request: web.Request) -> web.StreamResponse:
        name = _name(request)
        reason = field(await form(request), "reason", max_len=300)
        await backend.tenant_pause(viewer(request), name, reason)
        raise redirect(request, f"/tenants/{name}",
                       ok=f"Paused tenant {name}: its submissions are refused and its "
                          "queued mail is held.")

    async def resume(request: web.Request) -> web.StreamResponse:
        name = _name(request)
        reason = field(await form(request), "reason", max_len=300)
        await backend.tenant_resume(viewer(request), name, reason)
        raise redirect(request, f"/tenants/{name}",
                       ok=f"Resumed tenant {name}: it may send again; its held mail "
                          "was released.")

    return [("GET", "/tenants", listing, "operator"),
            ("GET", "/tenants/{name}", page, "operator"),
            ("POST", "/tenants/{name}/pause", pause, "operator"),
            ("POST", "/tenants/{name}/resume", resume, "operator")]
