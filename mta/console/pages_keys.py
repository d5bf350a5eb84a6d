"""The API keys pages: the viewer's keys, a new key shown once, revocation.

One job: list the sending API's keys a viewer may see (a tenant: its own;
the operator: every tenant's, with a tenant column), make one (its token
shown once, on the answer to the POST), and revoke one behind a
confirmation page.

Public API:
    PART = "accounts"; NAV; routes(backend) -> list[Route]
    KeysBackend        the Protocol the runtime implements
                       (mta.runtime.console_keys)
    login_key_name(viewer) -> str | None   the name of the key a tenant's
                       session logged in with (from the label the app writes)

Routes (under /console):
    GET  /keys[?revoked=1]            #keys (rows id "key-<id>"; revoked ones too
                                      with ?revoked=1), the form #create-key
    POST /keys                        name, permission (full_access |
                                      sending_access), domains (optional,
                                      separated by commas or spaces; "*.d" for
                                      d's subdomains), tenant (operator only;
                                      default "default") → key_created.html,
                                      200: the token in #new-key, its copy
                                      button #copy-new-key
    GET  /keys/{id}/confirm-revoke    #confirm-revoke, its button #revoke
    POST /keys/{id}/revoke            → 303 /keys with a notice

Invariants:
- A token appears once: in the answer to the POST that made it (never
  cached: the app sends no-store), never in a URL, a redirect, a log or a
  later page. Lists show the prefix (mta_live_<id>) only.
- A tenant sees and revokes only its own keys: another tenant's key id is
  a 404, as is a malformed id or a key already revoked.
- A tenant cannot revoke the key its session logged in with (409: it would
  leave a live session behind a dead key; log in with another full-access
  key, or ask the operator). The operator may revoke any key.
- New keys are live keys (the sending API's `mta_live_…`); a key's tenant
  is the owner of its credential "api:NAME", recorded as the sending API
  and `mta key create --tenant` record it.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.pages_tenants import tenant_field
from mta.console.render import Route, field, form, redirect, render, viewer

__all__ = ["PART", "NAV", "routes", "KeysBackend", "login_key_name"]

PART = "accounts"
NAV = [("API keys", "/keys", "any")]

PERMISSIONS = ("full_access", "sending_access")
_KEY_ID = re.compile(r"[a-z2-7]{12}")
_MAX_DOMAINS = 100


class KeysBackend(Protocol):
    """API keys as a viewer may see them. A key is a dict: {"id", "name",
    "prefix" ("mta_live_<id>"), "permission", "domains": [str] ([] = any),
    "mode" ("live" | "test"), "tenant", "created": unix time,
    "last_used": unix time | None, "revoked": unix time | None} — never a
    token nor its hash."""

    async def keys(self, viewer: Viewer, *, revoked: bool) -> list[dict[str, Any]]:
        """The viewer's keys (the operator: every tenant's), oldest first;
        the revoked ones too when `revoked`."""

    async def key(self, viewer: Viewer, key_id: str) -> dict[str, Any] | None:
        """One active key of the viewer's (None: unknown, revoked, or
        another tenant's)."""

    async def create_key(self, viewer: Viewer, *, name: str, permission: str,
                         domains: list[str], tenant: str) -> dict[str, Any]:
        """A new live key for `tenant` (for a tenant's viewer: always its
        own) → {"key": the key, "token": the whole token, shown once}.
        ConsoleError 422 (a bad name, domain or tenant, naming the field),
        409 (an active key has the name, or the name is another tenant's)."""

    async def revoke_key(self, viewer: Viewer, key_id: str) -> dict[str, Any]:
        """Revoke it now: the sending API refuses it at once. → the key.
        ConsoleError 404 as for `key`."""

    async def tenant_names(self, viewer: Viewer) -> list[str]:
        """The tenants a new key may be given to (a tenant: itself)."""


def login_key_name(v: Viewer) -> str | None:
    """The key a tenant's session logged in with (None: the operator)."""
    return v.key_name


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["id"]
    if not _KEY_ID.fullmatch(key_id):
        raise ConsoleError(404, "no such API key")
    return key_id


def _domains(text: str) -> list[str]:
    found = [d for d in re.split(r"[\s,]+", text) if d]
    if len(found) > _MAX_DOMAINS:
        raise ConsoleError(422, f"domains: at most {_MAX_DOMAINS}", "domains")
    return found


def _revoked_query(request: web.Request) -> bool:
    value = request.query.get("revoked", "")
    if value not in ("", "0", "1"):
        raise ConsoleError(400, "revoked: 1 or 0", "revoked")
    return value == "1"


def routes(backend: KeysBackend) -> list[Route]:
    async def listing(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        revoked = _revoked_query(request)
        keys = await backend.keys(v, revoked=revoked)
        return render(request, "keys.html", title="API keys", keys=keys, revoked=revoked,
                      tenants=await backend.tenant_names(v), permissions=PERMISSIONS,
                      login_key=login_key_name(v))

    async def create(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        data = await form(request)
        name = field(data, "name", max_len=100)
        permission = field(data, "permission", max_len=40)
        if permission not in PERMISSIONS:
            raise ConsoleError(422, f"permission: one of {', '.join(PERMISSIONS)}",
                               "permission")
        domains = _domains(field(data, "domains", max_len=4000, required=False))
        tenant = v.tenant if v.tenant is not None else tenant_field(data) or "default"
        made = await backend.create_key(v, name=name, permission=permission,
                                        domains=domains, tenant=tenant)
        return render(request, "key_created.html", title="API key created",
                      key=made["key"], token=made["token"])

    async def confirm(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        key = await backend.key(v, _key_id(request))
        if key is None:
            raise ConsoleError(404, "no such API key (or it is revoked already)")
        return render(request, "key_revoke.html", title="Revoke API key", key=key,
                      own=key["name"] == login_key_name(v))

    async def revoke(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        key_id = _key_id(request)
        key = await backend.key(v, key_id)
        if key is None:
            raise ConsoleError(404, "no such API key (or it is revoked already)")
        if key["name"] == login_key_name(v):
            raise ConsoleError(409, "this is the key this session logged in with: log in "
                                    "with another full-access key to revoke it")
        done = await backend.revoke_key(v, key_id)
        raise redirect(request, "/keys", ok=f"Revoked the API key {done['name']} "
                                             f"({done['prefix']}).")

    return [("GET", "/keys", listing, "any"), ("POST", "/keys", create, "any"),
            ("GET", "/keys/{id}/confirm-revoke", confirm, "any"),
            ("POST", "/keys/{id}/revoke", revoke, "any")]
