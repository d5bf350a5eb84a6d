"""The console's accounts backend: webhooks, tenants, API keys, templates.

One job: the one object behind the console's `accounts` pages
(mta.console.pages_webhooks, pages_tenants, pages_keys, pages_templates),
made of one part per group (runtime/console_webhooks.py, console_keys.py,
console_templates.py) and the tenants part, here: the operator's view of
the TenantService (runtime/tenants.py), and pause/resume as the admin API
does them (RuntimeAdmin.tenant_pause/tenant_resume call the same methods).

Public API:
    ConsoleAccounts(daemon, login_keys=None)
        WebhooksBackend + TenantsBackend + KeysBackend + TemplatesBackend;
        `login_keys`: the console's KeyCache (runtime/console.py), which
        forgets a key this backend revokes
    ConsoleTenants     the TenantsBackend part

Tenants: every method is the operator's (a tenant's viewer: 404, though
the routes are operator-only already). A tenant's thresholds are its
policy laid over [reputation] (runtime.tenants.policy_of); "paused_by" is
"operator" when the operator paused it, else "reputation" when the
tracker did. Refused counts are this process's since it started.

Invariants: the parts share only the daemon and the state directory
(console_accounts_base.AccountsPart); their private helpers carry the
part's prefix (_wh_, _key_, _tpl_, _tn_), so one part never overrides
another's in the combined class. A TenantError is the page's refusal (its
status and message), a storage error a 503.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mta.api.keys import KeyCache
from mta.console.backend import ConsoleError, Viewer
from mta.core.errors import StorageError
from mta.runtime.console_accounts_base import AccountsDaemon, AccountsPart, off_loop, \
    operator_only
from mta.runtime.console_keys import ConsoleKeys
from mta.runtime.console_templates import ConsoleTemplates
from mta.runtime.console_webhooks import ConsoleWebhooks
from mta.runtime.tenants import TenantService, policy_of
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import TenantError, TenantRow

__all__ = ["ConsoleAccounts", "ConsoleTenants"]


def _paused_by(view: Mapping[str, Any]) -> str | None:
    if view.get("status") == "paused":
        return "operator"
    if view.get("auto_status") == "paused":
        return "reputation"
    return None


class ConsoleTenants(AccountsPart):
    def _tn_service(self) -> TenantService:
        service = self.d.tenants
        if service is None:
            raise ConsoleError(404, "this daemon has no tenants")
        return service

    def _tn_thresholds(self, row: TenantRow) -> dict[str, Any]:
        cfg = self.d.cfg
        try:
            policy = policy_of(row, cfg)
        except ValueError:              # a stored policy the maths refuses: the defaults
            policy = policy_of(dataclasses.replace(row, policy={}), cfg)
        t = policy.thresholds
        return {"bounce_warn": t.bounce_warn, "bounce_pause": t.bounce_pause,
                "complaint_warn": t.complaint_warn, "complaint_pause": t.complaint_pause,
                "level": policy.level, "window": policy.window,
                "min_volume": policy.min_volume}

    def _tn_json(self, service: TenantService, view: Mapping[str, Any]) -> dict[str, Any]:
        name = str(view["name"])
        rep = view.get("reputation") or {}
        return {"name": name, "sending": bool(view.get("sending")),
                "status": view.get("status"), "status_reason": view.get("status_reason") or "",
                "auto_status": view.get("auto_status"),
                "auto_reason": view.get("auto_reason") or "", "paused_by": _paused_by(view),
                "limits": dict(view.get("limits") or {}), "usage": dict(view.get("usage") or {}),
                "reputation": {"sends": int(rep.get("sends") or 0),
                               "bounce_rate": float(rep.get("bounce_rate") or 0.0),
                               "complaint_rate": float(rep.get("complaint_rate") or 0.0)},
                "thresholds": self._tn_thresholds(service.row(name)),
                "refused": {why: n for (who, why), n in service.refused.items() if who == name},
                "created": view.get("created"), "updated": view.get("updated")}

    async def tenants(self, viewer: Viewer) -> list[dict[str, Any]]:
        operator_only(viewer)
        service = self._tn_service()
        views = await self._tn_call(service.list())
        return sorted((self._tn_json(service, v) for v in views), key=lambda t: t["name"])

    async def tenant(self, viewer: Viewer, name: str) -> dict[str, Any] | None:
        operator_only(viewer)
        service = self._tn_service()
        view = await self._tn_call(service.show(name))
        if view is None:
            return None
        owns = view.get("owns") or {}
        names = set(owns.get("api_keys") or ())
        active = await off_loop(SqliteApiKeys(str(self.root)).rows)
        live = sorted(k.name for k in active if k.name in names)
        return {**self._tn_json(service, view), "policy": dict(view.get("policy") or {}),
                "domains": list(owns.get("domains") or ()),
                "webhooks": list(owns.get("webhooks") or ()),
                "credentials": list(owns.get("credentials") or ()),
                "keys": len(live), "key_names": live}

    async def _tn_call(self, pending: Any) -> Any:
        """Await a TenantService call, its refusals as the page's."""
        try:
            return await pending
        except TenantError as exc:
            raise ConsoleError(exc.status, exc.message, exc.field) from None
        except StorageError as exc:
            raise ConsoleError(503, f"the tenant store cannot be used now ({exc})") from None

    async def _tn_known(self, name: str) -> TenantService:
        service = self._tn_service()
        if await self._tn_call(service.show(name)) is None:
            raise ConsoleError(404, "no such tenant")
        return service

    async def tenant_pause(self, viewer: Viewer, name: str, reason: str) -> dict[str, Any]:
        operator_only(viewer)
        service = await self._tn_known(name)
        view = await self._tn_call(service.pause(name, reason))
        return self._tn_json(service, view)

    async def tenant_resume(self, viewer: Viewer, name: str, reason: str) -> dict[str, Any]:
        operator_only(viewer)
        service = await self._tn_known(name)
        view = await self._tn_call(service.resume(name, reason))
        return self._tn_json(service, view)


class ConsoleAccounts(ConsoleWebhooks, ConsoleTenants, ConsoleKeys, ConsoleTemplates):
    """The console's `accounts` part (mta.console.backend.ConsoleParts)."""

    def __init__(self, daemon: AccountsDaemon, login_keys: KeyCache | None = None):
        self._setup(daemon, login_keys)
