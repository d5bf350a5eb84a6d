"""The console's webhooks: mta.console.pages_webhooks.WebhooksBackend over
the daemon's WebhookService and the endpoints tenants made through the
sending API.

One job: list the endpoints a console viewer may see with their delivery
state (WebhookDeliverer.status: cursor, lag, attempts, last error), send
one a signed test request, and move its cursor (replay), with the
ownership rules of the sending API's /webhooks (runtime/api_webhooks.py).

Public API:
    ConsoleWebhooks     the WebhooksBackend part of ConsoleAccounts
    masked_url(url) -> str    the URL with any password replaced by "***"

Who sees what: the operator every endpoint. A tenant the endpoints it made
(tenant_owned ('webhook', name); a row without one is the default
tenant's); the default tenant also the config file's, which it may test
but not replay (the operator's: 403). Any other name is "not found" (404),
whether it exists or not. A disabled endpoint (its row kept, its deliverer
stopped) is listed as "disabled": it can be tested (a probe of its URL)
but not replayed (409).

Invariants: no signing secret leaves this module (status() has none; the
rows' secrets only sign a probe); URLs are shown masked.
"""

from __future__ import annotations

import re
from typing import Any

from mta.config import WebhookConfig
from mta.console.backend import ConsoleError, Viewer
from mta.runtime.console_accounts_base import AccountsPart, off_loop, ownership
from mta.spool.tenants import DEFAULT_TENANT
from mta.spool.webhook_endpoints import EndpointRow, SqliteWebhookEndpoints
from mta.webhooks import WebhookService
from mta.webhooks.actions import probe

__all__ = ["ConsoleWebhooks", "masked_url"]

CONFIG = "config"
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#@]*@")


def masked_url(url: str) -> str:
    return _PASSWORD.sub(r"\1:***@", url)


def _visible(viewer: Viewer, owner: str) -> bool:
    if viewer.tenant is None:
        return True
    return viewer.tenant == (DEFAULT_TENANT if owner == CONFIG else owner)


def _running(name: str, st: dict[str, Any], owner: str, source: str) -> dict[str, Any]:
    return {"name": name, "url": masked_url(str(st.get("url") or "")), "owner": owner,
            "tenant_filter": st.get("tenant") if source == CONFIG else None, "source": source,
            "enabled": True, "running": bool(st.get("running")), "state": st.get("state"),
            "events": list(st.get("events") or ()), "cursor": st.get("cursor"),
            "last_event_seq": st.get("last_event_seq"), "lag": st.get("lag"),
            "attempts": int(st.get("attempts") or 0), "last_error": st.get("last_error"),
            "failing_since": st.get("failing_since"), "next_attempt": st.get("next_attempt"),
            "oldest_unsent_at": st.get("oldest_unsent_at"), "sent": int(st.get("sent") or 0)}


def _stopped(row: EndpointRow, owner: str) -> dict[str, Any]:
    return {"name": row.name, "url": masked_url(row.url), "owner": owner,
            "tenant_filter": None, "source": "api", "enabled": row.enabled, "running": False,
            "state": "disabled" if not row.enabled else "stopped", "events": list(row.events),
            "cursor": None, "last_event_seq": None, "lag": None, "attempts": 0,
            "last_error": None, "failing_since": None, "next_attempt": None,
            "oldest_unsent_at": None, "sent": 0}


class ConsoleWebhooks(AccountsPart):
    def _wh_service(self) -> WebhookService:
        hooks = self.d.webhooks
        if hooks is None:
            raise ConsoleError(503, "the daemon has not started its webhooks yet")
        return hooks

    def _wh_rows(self) -> tuple[list[EndpointRow], dict[tuple[str, str], str]]:
        """(a worker thread) The API-made endpoints and who owns what."""
        return SqliteWebhookEndpoints(self.root).rows(), ownership(self.root)

    async def webhooks(self, viewer: Viewer) -> list[dict[str, Any]]:
        hooks = self._wh_service()
        rows, owners = await off_loop(self._wh_rows)
        out = []
        for name, deliverer in list(hooks.deliverers.items()):
            api = hooks.added(name)
            owner = owners.get(("webhook", name), DEFAULT_TENANT) if api else CONFIG
            if _visible(viewer, owner):
                out.append(_running(name, await deliverer.status(), owner,
                                    "api" if api else CONFIG))
        for row in rows:
            if row.name in hooks.deliverers:
                continue                # running (or shadowed by the config's name)
            owner = owners.get(("webhook", row.name), DEFAULT_TENANT)
            if _visible(viewer, owner):
                out.append(_stopped(row, owner))
        return out

    async def _wh_find(self, viewer: Viewer, name: str) -> tuple[str, EndpointRow | None]:
        """(owner, the stored row) of an endpoint the viewer may see, else 404."""
        hooks = self._wh_service()
        if name in hooks.deliverers and not hooks.added(name):
            owner, row = CONFIG, None
        else:
            root = self.root

            def read() -> tuple[EndpointRow | None, str]:
                return (SqliteWebhookEndpoints(root).get(name),
                        ownership(root).get(("webhook", name), DEFAULT_TENANT))
            row, owner = await off_loop(read)
            if row is None and name not in hooks.deliverers:
                raise ConsoleError(404, "no such webhook")
        if not _visible(viewer, owner):
            raise ConsoleError(404, "no such webhook")
        return owner, row

    async def webhook_test(self, viewer: Viewer, name: str) -> dict[str, Any]:
        owner, row = await self._wh_find(viewer, name)
        hooks = self._wh_service()
        if name in hooks.deliverers:
            try:
                result = await hooks.test(name)
            except KeyError:            # removed meanwhile
                raise ConsoleError(404, "no such webhook") from None
        else:
            assert row is not None
            cfg = WebhookConfig(name=row.name, url=row.url, events=row.events,
                                secret=row.secret, tenant=owner)
            result = await probe(cfg, self.d.clock)
        return {"ok": bool(result.get("ok")), "status": result.get("status"),
                "error": result.get("error"), "ms": result.get("ms")}

    async def webhook_replay(self, viewer: Viewer, name: str, *,
                             from_seq: int | str | None = None,
                             since: float | None = None) -> dict[str, Any]:
        owner, _ = await self._wh_find(viewer, name)
        if owner == CONFIG and viewer.tenant is not None:
            raise ConsoleError(403, f"webhook {name} is the config file's: replaying it is "
                                    "the operator's")
        hooks = self._wh_service()
        if name not in hooks.deliverers:
            raise ConsoleError(409, f"webhook {name} is disabled: enable it first "
                                    "(PATCH /webhooks/{id} with \"enabled\": true)")
        try:
            st = await hooks.replay(name, from_seq=from_seq, since=since)
        except KeyError:
            raise ConsoleError(404, "no such webhook") from None
        except ValueError as exc:
            raise ConsoleError(422, f"from_seq: {exc}", "from_seq") from None
        return {"cursor": st.get("cursor"), "state": st.get("state")}
