"""Tenants, API keys, templates and API-made webhook endpoints for the whole
cluster (issue 19).

One job: keep this node's account tables (the spool index: tenants,
tenant_owned, api_keys, templates, template_versions, webhook_endpoints,
the read path of every part, usable while PostgreSQL is down) in step with
the cluster's store of record (cluster/accounts.py), and make the daemon's
caches see what was pulled. Every local writer's change lands in the
index's outbox by trigger (spool/account_outbox.py); the sync is the
suppression list's (runtime/cluster_suppressions.py, subclassed: push,
then pull by seq, or a full sweep for a new or late node).

API
    await wire(node)      install the outbox, add the jobs "cluster_accounts"
                          (every SYNC_EVERY s) and "cluster_accounts_prune";
                          the sync is then `node.account_sync`
    ClusterAccounts(node, index_path, writer)   a ClusterSuppressions
        await .tick()     push, pull, then refresh what the pulled rows touch
    await follow_webhooks(daemon, names)   the WebhookService runs exactly
        the enabled stored endpoints among `names` (None: every name), each
        added, restarted with new settings or a new owner, or removed

Caches, after a pull that changed rows (the next tick retries a refresh
that failed):
- tenants / tenant_owned: `TenantService.refresh()` (status, limits,
  ownership of credentials and domains);
- api_keys: the sending API's key cache forgets each pulled id (a revoked
  key is refused at once, a new one known at once; receiver processes'
  caches expire within their ttl, 2 s);
- webhook_endpoints / tenant_owned ("webhook", name): follow_webhooks for
  those names. In a cluster the service delivers from the shared ledger,
  each endpoint on the node holding its lease (runtime/cluster_ledger.py):
  an endpoint added here is only made known; the lease decides where it
  runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from mta.api.http import key_cache
from mta.cluster import accounts as shared
from mta.config import WebhookConfig
from mta.runtime.cluster_suppressions import PRUNE_EVERY, SYNC_EVERY, ClusterSuppressions
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.spool import account_outbox as outbox
from mta.spool.layout import SpoolPaths
from mta.spool.tenants import DEFAULT_TENANT, SqliteTenants
from mta.spool.webhook_endpoints import EndpointRow, SqliteWebhookEndpoints

__all__ = ["ClusterAccounts", "follow_webhooks", "wire"]

log = logging.getLogger("mta.cluster")

_ALL = "*"          # a sweep changed rows: refresh every cache


class ClusterAccounts(ClusterSuppressions):
    local: ClassVar[ModuleType] = outbox
    store: ClassVar[ModuleType] = shared
    NAME: ClassVar[str] = "cluster_accounts"

    def __init__(self, node: Any, index_path: Path, writer: str):
        super().__init__(node, index_path, writer)
        self.touched: dict[str, set[str]] = {}      # table -> pks pulled, not yet refreshed

    def _noted(self, n: int, rows: list[tuple[Any, ...]]) -> None:
        if n:
            for r in rows:
                self.touched.setdefault(str(r[0]), set()).add(str(r[1]))

    async def sweep(self) -> int:
        n = await super().sweep()
        if n:                           # rows removed by a sweep are not among `rows`
            self.touched.setdefault(_ALL, set())
        return n

    async def tick(self) -> None:
        try:
            await super().tick()
        finally:
            if self.touched:
                touched, self.touched = self.touched, {}
                try:
                    await self.refresh(touched)
                except BaseException:
                    for tbl, pks in touched.items():
                        self.touched.setdefault(tbl, set()).update(pks)
                    raise

    async def refresh(self, touched: dict[str, set[str]]) -> None:
        d = self.node.d
        every = _ALL in touched
        if d.tenants is not None and (every or touched.keys() & {"tenants", "tenant_owned"}):
            await d.tenants.refresh()
        api = getattr(d, "api", None)
        if api is not None:
            cache = key_cache(api.app)
            if every:
                cache.forget()
            for pk in touched.get("api_keys", ()):
                cache.forget(str(json.loads(pk)[0]))
        names = {str(json.loads(pk)[0]) for pk in touched.get("webhook_endpoints", ())}
        names |= {str(k[1]) for k in map(json.loads, touched.get("tenant_owned", ()))
                  if k[0] == "webhook"}
        if names or every:
            await follow_webhooks(d, None if every else names)


def _endpoint_cfg(row: EndpointRow, tenant: str) -> WebhookConfig:
    return WebhookConfig(name=row.name, url=row.url, events=row.events, secret=row.secret,
                         tenant=tenant)


async def follow_webhooks(daemon: Any, names: set[str] | None) -> None:
    service = getattr(daemon, "webhooks", None)
    if service is None:
        return
    state_dir = daemon.cfg.server.state_dir

    def read() -> tuple[dict[str, EndpointRow], dict[tuple[str, str], str]]:
        store = SqliteWebhookEndpoints(state_dir)
        if names is None:
            rows = {r.name: r for r in store.rows()}
        else:
            rows = {n: r for n in names if (r := store.get(n)) is not None}
        return rows, SqliteTenants(state_dir).ownership()
    rows, owners = await asyncio.to_thread(read)
    if names is None:
        names = set(rows) | {n for n in service.deliverers if service.added(n)}
    for name in sorted(names):
        if name in service.deliverers and not service.added(name):
            continue                    # the config file's: the API's never runs
        row = rows.get(name)
        if row is None or not row.enabled:
            if service.added(name):
                await service.remove_endpoint(name)
                event(log, "cluster_webhook_stopped", webhook=name)
            continue
        cfg = _endpoint_cfg(row, owners.get(("webhook", name), DEFAULT_TENANT))
        if not service.added(name):
            service.add_endpoint(cfg)
            event(log, "cluster_webhook_added", webhook=name, tenant=cfg.tenant)
        elif service.deliverers[name].cfg != cfg:
            await service.update_endpoint(cfg)
            event(log, "cluster_webhook_updated", webhook=name, tenant=cfg.tenant)


async def wire(node: Any) -> None:
    index_path = SpoolPaths.of(node.d.cfg.server.state_dir).index
    writer = await asyncio.to_thread(outbox.install, index_path)
    sync = ClusterAccounts(node, index_path, writer)
    node.account_sync = sync
    node.add_job(Job("cluster_accounts", SYNC_EVERY, sync.tick, pause_after_failure=10.0))
    node.add_job(Job("cluster_accounts_prune", PRUNE_EVERY, sync.prune))
