"""The sending API's webhook endpoints, each its creator's tenant's.

One job: the /webhooks half of the ResourceBackend (mta.api.resources) over
the daemon's WebhookService and the spool index's webhook_endpoints table,
scoped to the tenant of the request's key; and load the API-made endpoints
at the daemon's start. mta.runtime.api_resources builds on it.

Public API:
    ResourceDaemon                   what the resources need of the daemon
    WebhookResources(daemon)         webhooks, webhook, add_webhook,
                                     update_webhook, remove_webhook,
                                     test_webhook (each takes the ApiKey
                                     first); .tenant_of_key(key) -> str
    await add_stored_webhooks(cfg, service) -> int
        the daemon's start: hand every enabled endpoint of webhook_endpoints
        to the WebhookService beside the config file's, each filtered to
        its owner's tenant (a name the config file uses is skipped, with a
        warning)
    iso(t), unavailable(exc)         shared with api_resources

Tenants: an endpoint made with a key belongs to the key's tenant (the
tenant_owned row ('webhook', name), recorded when it is made, removed when
it is deleted) and its deliverer gets only that tenant's events
(WebhookConfig.tenant). A key sees, changes and tests only its tenant's
endpoints; another tenant's name is "not found". A row without an
ownership row (made before tenants) is the default tenant's. The config
file's endpoints are the operator's: only the default tenant's keys see
and test them (never change them: 409). Names are one namespace: a name
another tenant uses is a 409 (no more is said about it).

Lifecycle: an endpoint made here is a row of webhook_endpoints and a
deliverer of the WebhookService (add_endpoint) started at once, its cursor
at the ledger's end (replay "end": a name used before starts fresh). A
disabled one keeps its row and its deliverer is stopped; enabling it again
starts at the ledger's end (the events of its disabled time are not sent).
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import logging
import secrets
from typing import Any, Protocol

from mta.api.http import ApiError
from mta.api.keys import ApiKey
from mta.config import Config, WebhookConfig
from mta.core import Clock
from mta.core.errors import StorageError
from mta.runtime.domains import DomainCache
from mta.runtime.logs import event
from mta.runtime.tenants import TenantService
from mta.spool import Spool
from mta.spool.tenants import DEFAULT_TENANT, SqliteTenants, TenantError
from mta.spool.webhook_endpoints import (EndpointExists, EndpointRow, SqliteWebhookEndpoints,
                                         WebhookEndpointStoreError)
from mta.webhooks import WebhookService
from mta.webhooks.actions import probe, replay
from mta.webhooks.wire import new_secret

__all__ = ["ResourceDaemon", "WebhookResources", "add_stored_webhooks", "iso", "unavailable"]

log = logging.getLogger("mta.api")
Json = dict[str, Any]


class ResourceDaemon(Protocol):
    cfg: Config
    clock: Clock
    spool: Spool | None
    domains: DomainCache | None
    webhooks: WebhookService | None
    tenants: TenantService | None
    receivers: Any


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def unavailable(exc: Exception) -> ApiError:
    return ApiError(503, "service_unavailable", f"The mail server cannot do this now ({exc}); "
                    "retry later", {"retry-after": "30"})


def _endpoint_cfg(row: EndpointRow, tenant: str) -> WebhookConfig:
    return WebhookConfig(name=row.name, url=row.url, events=row.events, secret=row.secret,
                         tenant=tenant)


async def add_stored_webhooks(cfg: Config, service: WebhookService) -> int:
    state_dir = cfg.server.state_dir

    def read() -> tuple[list[EndpointRow], dict[tuple[str, str], str]]:
        return SqliteWebhookEndpoints(state_dir).rows(), SqliteTenants(state_dir).ownership()
    try:
        rows, owners = await asyncio.to_thread(read)
    except StorageError as exc:       # no endpoint runs without knowing whose it is
        event(log, "webhook_endpoints_unreadable", logging.ERROR, error=str(exc))
        return 0
    added = 0
    for row in rows:
        if not row.enabled:
            continue
        if row.name in service.deliverers:
            event(log, "webhook_endpoint_shadowed", logging.WARNING, webhook=row.name,
                  hint="the config file has a webhook of this name; the API's is not run")
            continue
        service.add_endpoint(_endpoint_cfg(row, owners.get(("webhook", row.name),
                                                           DEFAULT_TENANT)))
        added += 1
    return added


class WebhookResources:
    def __init__(self, daemon: ResourceDaemon):
        self.d = daemon
        self.endpoints = SqliteWebhookEndpoints(daemon.cfg.server.state_dir)
        self._webhook_lock = asyncio.Lock()

    async def tenant_of_key(self, key: ApiKey) -> str:
        """The tenant owning the key's credential (read from the store on a
        cache miss: a key just given to a tenant by the CLI counts at once)."""
        tenants = self.d.tenants
        return DEFAULT_TENANT if tenants is None else await tenants.resolve(key.credential)

    def _hooks(self) -> WebhookService:
        assert self.d.webhooks is not None, "the daemon has not started its webhooks"
        return self.d.webhooks

    def _configured(self, name: str) -> bool:
        hooks = self._hooks()
        return name in hooks.deliverers and not hooks.added(name)

    async def _webhook_owner(self, name: str) -> str:
        tenants = self.d.tenants
        if tenants is None:
            return DEFAULT_TENANT
        return await asyncio.to_thread(tenants.store.owner, "webhook", name)

    async def _mine(self, name: str, tenant: str) -> bool:
        """Whether the key's tenant may see endpoint `name` (existing or not)."""
        if self._configured(name):
            return tenant == DEFAULT_TENANT
        return await self._webhook_owner(name) == tenant

    async def _delivery(self, name: str) -> Json | None:
        d = self._hooks().deliverers.get(name)
        if d is None:
            return None
        st = await d.status()
        return {k: st.get(k) for k in ("state", "attempts", "last_error", "failing_since",
                                       "lag", "sent")}

    async def _webhook_json(self, row: EndpointRow | None, name: str) -> Json:
        if row is None or self._configured(name):
            cfg = self._hooks().deliverers[name].cfg
            return {"object": "webhook", "id": name, "name": name, "endpoint": cfg.url,
                    "events": list(cfg.events), "status": "enabled", "created_at": None,
                    "signing_secret": None, "source": "config",
                    "delivery": await self._delivery(name)}
        return {"object": "webhook", "id": name, "name": name, "endpoint": row.url,
                "events": list(row.events), "status": "enabled" if row.enabled else "disabled",
                "created_at": iso(row.created), "signing_secret": row.secret, "source": "api",
                "delivery": await self._delivery(name)}

    async def webhooks(self, key: ApiKey) -> builtins.list[Json]:
        tenant = await self.tenant_of_key(key)
        tenants = self.d.tenants
        rows = {r.name: r for r in await asyncio.to_thread(self.endpoints.rows)}
        owners = {} if tenants is None else await asyncio.to_thread(tenants.store.ownership)
        names = {n for n in rows if owners.get(("webhook", n), DEFAULT_TENANT) == tenant}
        if tenant == DEFAULT_TENANT:
            names |= {n for n in self._hooks().deliverers if self._configured(n)}
        return [await self._webhook_json(rows.get(n), n) for n in sorted(names)]

    async def webhook(self, key: ApiKey, name: str) -> Json | None:
        if not await self._mine(name, await self.tenant_of_key(key)):
            return None
        row = await asyncio.to_thread(self.endpoints.get, name)
        if row is None and not self._configured(name):
            return None
        return await self._webhook_json(row, name)

    def _refuse_configured(self, name: str, tenant: str) -> None:
        if not self._configured(name):
            return
        if tenant != DEFAULT_TENANT:
            raise ApiError(409, "conflict", f"name: a webhook named {name!r} exists")
        raise ApiError(409, "conflict", f"webhook {name!r} is defined in the config file; "
                       "change it there (and reload)")

    async def add_webhook(self, key: ApiKey, name: str | None, url: str,
                          events: tuple[str, ...]) -> Json:
        tenant = await self.tenant_of_key(key)
        now = self.d.clock.now()
        async with self._webhook_lock:
            name = name or f"wh_{secrets.token_hex(8)}"
            self._refuse_configured(name, tenant)
            row = EndpointRow(name=name, url=url, events=events, secret=new_secret(),
                              enabled=True, created=now, updated=now)
            try:
                await asyncio.to_thread(self.endpoints.insert, row)
            except EndpointExists:
                raise ApiError(409, "conflict", f"name: a webhook named {name!r} exists") \
                    from None
            except WebhookEndpointStoreError as exc:
                raise unavailable(exc) from None
            await self._own(name, tenant)
            await self._start(row, tenant)
        event(log, "api_webhook_added", webhook=name, url=url, tenant=tenant)
        return await self._webhook_json(row, name)

    async def _own(self, name: str, tenant: str) -> None:
        """Record the new endpoint as the tenant's; on a refusal the row goes."""
        if self.d.tenants is None:
            return
        try:
            await self.d.tenants.own("webhook", name, tenant)
        except (TenantError, StorageError) as exc:
            await asyncio.to_thread(self.endpoints.delete, name)
            if isinstance(exc, StorageError):
                raise unavailable(exc) from None
            if exc.status == 409:        # the name is another tenant's (said no further)
                raise ApiError(409, "conflict", f"name: a webhook named {name!r} exists") \
                    from None
            raise ApiError(409, "conflict", f"tenant: {exc}") from None

    async def _start(self, row: EndpointRow, tenant: str) -> None:
        assert self.d.spool is not None
        await replay(self.d.spool.ledger, row.name, from_seq="end")
        self._hooks().add_endpoint(_endpoint_cfg(row, tenant))

    async def update_webhook(self, key: ApiKey, name: str, *, url: str | None,
                             events: tuple[str, ...] | None,
                             enabled: bool | None) -> Json | None:
        tenant = await self.tenant_of_key(key)
        if not await self._mine(name, tenant):
            return None
        self._refuse_configured(name, tenant)
        hooks = self._hooks()
        async with self._webhook_lock:
            try:
                row = await asyncio.to_thread(self.endpoints.update, name, url=url,
                                              events=events, enabled=enabled,
                                              now=self.d.clock.now())
            except WebhookEndpointStoreError as exc:
                raise unavailable(exc) from None
            if row is None:
                return None
            if not row.enabled:
                await hooks.remove_endpoint(name)
            elif hooks.added(name):
                await hooks.update_endpoint(_endpoint_cfg(row, tenant))
            else:
                await self._start(row, tenant)
        event(log, "api_webhook_updated", webhook=name, enabled=row.enabled)
        return await self._webhook_json(row, name)

    async def remove_webhook(self, key: ApiKey, name: str) -> bool:
        tenant = await self.tenant_of_key(key)
        if not await self._mine(name, tenant):
            return False
        self._refuse_configured(name, tenant)
        async with self._webhook_lock:
            try:
                gone = await asyncio.to_thread(self.endpoints.delete, name)
            except WebhookEndpointStoreError as exc:
                raise unavailable(exc) from None
            if gone:
                await self._hooks().remove_endpoint(name)
                await self._disown(name)
        if gone:
            event(log, "api_webhook_removed", webhook=name, tenant=tenant)
        return gone

    async def _disown(self, name: str) -> None:
        """The name is free again (a row left by a failure here only keeps
        the name the same tenant's: logged, not an error for the client)."""
        if self.d.tenants is None:
            return
        try:
            await self.d.tenants.disown("webhook", name)
        except StorageError as exc:
            event(log, "webhook_disown_failed", logging.WARNING, webhook=name, error=str(exc))

    async def test_webhook(self, key: ApiKey, name: str) -> Json | None:
        tenant = await self.tenant_of_key(key)
        if not await self._mine(name, tenant):
            return None
        hooks = self._hooks()
        if name in hooks.deliverers:
            result = await hooks.test(name)
        else:
            row = await asyncio.to_thread(self.endpoints.get, name)
            if row is None:
                return None
            result = await probe(_endpoint_cfg(row, tenant), self.d.clock)
        return {"object": "webhook_test", "id": name, "endpoint": result["url"],
                "ok": result["ok"], "status_code": result["status"], "error": result["error"],
                "ms": result["ms"]}
