"""The sending API's resources over the running daemon's parts.

One job: implement mta.api.resources.ResourceBackend — domains, the
suppression list and webhook endpoints — with the services the CLI and the
admin API already drive, and load the API-made webhook endpoints at start.

Public API:
    RuntimeResources(daemon)            the ResourceBackend
    await add_stored_webhooks(cfg, service) -> int
        the daemon's start: hand every enabled endpoint of the spool index's
        webhook_endpoints table (mta.spool.webhook_endpoints) to the
        WebhookService beside the config file's (a name the config file
        uses is skipped, with a warning)

Domains: DomainService (behind `daemon.domains`, the DomainCache) adds,
checks and removes; `verify` asks `[dns] nameservers` through an uncached
resolver (what was just published counts). After a change the cache is re-read and the receiver
processes are told, so the sender policy and DKIM signing follow at once.
A record's status is that of the domain's last check when the API ran it
(`verify`); after a periodic check (or a restart) it follows the domain's
stored state: not_started (never checked), pending, verified, failed. The
records listed are those the domain's own zone holds (DKIM, SPF, DMARC,
the return path's MX and SPF); the server's A/AAAA and PTR reminders are
`mta domain show`'s.

Suppressions: the global list (scope ""), through spool.suppression_admin
in a worker thread (the daemon's writer and these calls take turns at
SQLite's lock, as with `mta suppression`). An added entry is noted to the
daemon's RCPT lookup, so the very next RCPT sees it.

Webhooks: an endpoint made here is a row of webhook_endpoints and a
deliverer of the WebhookService (add_endpoint) started at once, its cursor
at the ledger's end (replay "end": a name used before starts fresh). A
disabled one keeps its row and its deliverer is stopped; enabling it again
starts at the ledger's end (the events of its disabled time are not sent).
Config-file endpoints are listed and testable, never changed here.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import logging
import secrets
from typing import Any, Protocol

from mta.api.http import ApiError
from mta.config import Config, WebhookConfig
from mta.core import Clock
from mta.core.envelope import AddressOutcome
from mta.core.stores import SuppressionView
from mta.domains.check import CheckResult
from mta.domains.model import Domain, DomainState
from mta.domains.records import DnsRecord
from mta.domains.service import DomainError, DomainService
from mta.runtime.domains import DomainCache
from mta.runtime.logs import event
from mta.spool import Spool, suppression_admin
from mta.spool.webhook_endpoints import (EndpointExists, EndpointRow, SqliteWebhookEndpoints,
                                         WebhookEndpointStoreError)
from mta.webhooks import WebhookService
from mta.webhooks.actions import probe, replay
from mta.webhooks.wire import new_secret

__all__ = ["ResourceDaemon", "RuntimeResources", "add_stored_webhooks"]

log = logging.getLogger("mta.api")
Json = dict[str, Any]

_RECORD = {"dkim": "DKIM", "spf": "SPF", "dmarc": "DMARC", "return-path": "ReturnPath"}
_ORIGIN = {"hard_bounce": "bounce", "soft_bounce": "bounce", "complaint": "complaint",
           "manual": "manual", "unsubscribe": "manual"}


class _Receivers(Protocol):
    def refresh_domains(self) -> None: ...


class ResourceDaemon(Protocol):
    cfg: Config
    clock: Clock
    spool: Spool | None
    domains: DomainCache | None
    webhooks: WebhookService | None
    receivers: Any


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def _unavailable(exc: Exception) -> ApiError:
    return ApiError(503, "service_unavailable", f"The mail server cannot do this now ({exc}); "
                    "retry later", {"retry-after": "30"})


def _endpoint_cfg(row: EndpointRow) -> WebhookConfig:
    return WebhookConfig(name=row.name, url=row.url, events=row.events, secret=row.secret)


async def add_stored_webhooks(cfg: Config, service: WebhookService) -> int:
    try:
        rows = await asyncio.to_thread(SqliteWebhookEndpoints(cfg.server.state_dir).rows)
    except WebhookEndpointStoreError as exc:
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
        service.add_endpoint(_endpoint_cfg(row))
        added += 1
    return added


# -- JSON shapes ---------------------------------------------------------------------

def _domain_status(d: Domain) -> str:
    if d.state is DomainState.PENDING and d.last_checked is None:
        return "not_started"
    return d.state.value


def _record_status(r: DnsRecord, d: Domain, check: CheckResult | None) -> str:
    entries = [] if check is None else [
        e for e in check.entries if e.name == r.purpose and e.record == r.name.rstrip(".")]
    if not entries:
        return _domain_status(d) if check is None else "not_started"
    if all(e.ok for e in entries):
        return "verified"
    if all(e.ok or e.temporary for e in entries):
        return "temporary_failure"
    return "failed" if d.state is DomainState.FAILED else "pending"


def _record(r: DnsRecord, d: Domain, check: CheckResult | None) -> Json:
    fqdn = r.name.rstrip(".")
    name = "@" if fqdn == d.name else fqdn.removesuffix("." + d.name)
    out: Json = {"record": _RECORD[r.purpose], "name": name, "fqdn": fqdn, "type": r.type,
                 "ttl": str(r.ttl), "status": _record_status(r, d, check), "value": r.value,
                 "required": r.required}
    if r.type == "MX":
        priority, _, host = r.value.partition(" ")
        out["priority"], out["value"] = int(priority), host.rstrip(".")
    return out


def _suppression(v: SuppressionView) -> Json:
    return {"object": "suppression", "id": v.address, "email": v.address,
            "origin": _ORIGIN.get(v.reason, "manual"), "source_id": v.queue_id or None,
            "created_at": _iso(v.created), "reason": v.reason, "scope": "global",
            "expires_at": _iso(v.expires), "reply": v.reply or None}


class RuntimeResources:
    def __init__(self, daemon: ResourceDaemon):
        self.d = daemon
        self.endpoints = SqliteWebhookEndpoints(daemon.cfg.server.state_dir)
        self._checks: dict[str, CheckResult] = {}     # the last API-run check per domain
        self._webhook_lock = asyncio.Lock()

    @property
    def _state_dir(self) -> str:
        return self.d.cfg.server.state_dir

    # -- domains -------------------------------------------------------------------

    def _service(self) -> DomainService:
        cache = self.d.domains
        assert cache is not None, "the daemon has not started its domains"
        svc = cache.service
        assert isinstance(svc, DomainService)
        return svc

    def _domain_json(self, d: Domain) -> Json:
        svc, check = self._service(), self._checks.get(d.name)
        if check is not None and (d.last_checked or 0.0) > check.checked_at:
            check = None              # the daemon's periodic check ran since
        records = [_record(r, d, check) for r in svc.plan(d).records() if r.purpose in _RECORD]
        return {"object": "domain", "id": d.name, "name": d.name, "status": _domain_status(d),
                "created_at": _iso(d.created), "region": "local", "records": records,
                "last_checked_at": _iso(d.last_checked), "failure_reason": d.failure_reason}

    def _find(self, name: str) -> Json | None:
        svc = self._service()
        d = svc.store.get(name)
        return None if d is None else self._domain_json(d)

    async def _changed(self) -> None:
        assert self.d.domains is not None
        await self.d.domains.refresh()
        if self.d.receivers is not None:
            self.d.receivers.refresh_domains()

    async def domains(self) -> builtins.list[Json]:
        def read() -> builtins.list[Json]:
            return sorted((self._domain_json(d) for d in self._service().list()),
                          key=lambda j: str(j["id"]))
        return await asyncio.to_thread(read)

    async def domain(self, name: str) -> Json | None:
        return await asyncio.to_thread(self._find, name)

    async def add_domain(self, name: str) -> Json:
        svc = self._service()
        if await asyncio.to_thread(svc.store.get, name) is not None:
            raise ApiError(409, "conflict", f"name: the domain {name} exists")
        try:
            d = await asyncio.to_thread(svc.add, name)
        except DomainError as exc:
            raise ApiError(422, "validation_error", f"name: {exc}") from None
        self._checks.pop(name, None)
        await self._changed()
        event(log, "api_domain_added", domain=name)
        return await asyncio.to_thread(self._domain_json, d)

    async def verify_domain(self, name: str) -> Json | None:
        svc = self._service()
        if await asyncio.to_thread(svc.store.get, name) is None:
            return None
        # The check's own service over the same store: its default resolver
        # asks `[dns] nameservers` without a cache (the daemon's resolver
        # caches, and would keep answering "no record" for a while after
        # the operator published it).
        checker = DomainService(self.d.cfg, clock=self.d.clock, store=svc.store)
        try:
            self._checks[name] = await checker.check(name)
        except DomainError:              # removed meanwhile
            return None
        await self._changed()
        return await asyncio.to_thread(self._find, name)

    async def remove_domain(self, name: str) -> bool:
        svc = self._service()
        try:
            await asyncio.to_thread(svc.remove, name)
        except DomainError:
            return False
        self._checks.pop(name, None)
        await self._changed()
        event(log, "api_domain_removed", domain=name)
        return True

    # -- suppressions (the global list) ---------------------------------------------

    async def suppressions(self, limit: int, after: str | None, before: str | None,
                           origin: str | None) -> tuple[builtins.list[Json], bool]:
        # One bounded range read of the global list (suppression_admin.page).
        reasons = None if origin is None else tuple(
            r for r, o in _ORIGIN.items() if o == origin) or ("",)
        views, more = await asyncio.to_thread(
            suppression_admin.page, self._state_dir, scope="", reasons=reasons, after=after,
            before=before, limit=limit, now=self.d.clock.now())
        return [_suppression(v) for v in views], more

    async def _global(self, address: str) -> SuppressionView | None:
        try:
            views = await asyncio.to_thread(suppression_admin.get, self._state_dir, address)
        except suppression_admin.SuppressionAdminError:
            return None
        now = self.d.clock.now()
        return next((v for v in views if v.scope == "" and v.is_active(now)), None)

    async def suppression(self, address: str) -> Json | None:
        found = await self._global(address)
        return None if found is None else _suppression(found)

    async def suppress(self, address: str, reason: str) -> Json:
        found = await self._global(address)
        if found is not None:
            return _suppression(found)        # Resend: the existing entry, not an error
        now = self.d.clock.now()
        try:
            made = await asyncio.to_thread(suppression_admin.add, self._state_dir, address,
                                           reason=reason, now=now)
        except suppression_admin.SuppressionAdminError as exc:
            raise _unavailable(exc) from None
        if self.d.spool is not None:
            # The RCPT lookup skips the table while it believes it empty; an
            # outcome that may add an entry is how it learns otherwise.
            self.d.spool.suppressions.note([AddressOutcome(made.address, "hard", now)])
        event(log, "api_suppression_added", address=made.address, reason=reason)
        return _suppression(made)

    async def unsuppress(self, address: str) -> bool:
        try:
            gone = await asyncio.to_thread(suppression_admin.remove, self._state_dir, address, "")
        except suppression_admin.SuppressionAdminError as exc:
            raise _unavailable(exc) from None
        if gone:
            event(log, "api_suppression_removed", address=address)
        return gone

    # -- webhooks ------------------------------------------------------------------

    def _hooks(self) -> WebhookService:
        assert self.d.webhooks is not None, "the daemon has not started its webhooks"
        return self.d.webhooks

    def _configured(self, name: str) -> bool:
        hooks = self._hooks()
        return name in hooks.deliverers and not hooks.added(name)

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
                "created_at": _iso(row.created), "signing_secret": row.secret, "source": "api",
                "delivery": await self._delivery(name)}

    async def webhooks(self) -> builtins.list[Json]:
        rows = {r.name: r for r in await asyncio.to_thread(self.endpoints.rows)}
        names = sorted({*rows, *(n for n in self._hooks().deliverers if self._configured(n))})
        return [await self._webhook_json(rows.get(n), n) for n in names]

    async def webhook(self, name: str) -> Json | None:
        row = await asyncio.to_thread(self.endpoints.get, name)
        if row is None and not self._configured(name):
            return None
        return await self._webhook_json(row, name)

    def _refuse_configured(self, name: str) -> None:
        if self._configured(name):
            raise ApiError(409, "conflict", f"webhook {name!r} is defined in the config file; "
                           "change it there (and reload)")

    async def add_webhook(self, name: str | None, url: str, events: tuple[str, ...]) -> Json:
        now = self.d.clock.now()
        async with self._webhook_lock:
            name = name or f"wh_{secrets.token_hex(8)}"
            self._refuse_configured(name)
            row = EndpointRow(name=name, url=url, events=events, secret=new_secret(),
                              enabled=True, created=now, updated=now)
            try:
                await asyncio.to_thread(self.endpoints.insert, row)
            except EndpointExists:
                raise ApiError(409, "conflict", f"name: a webhook named {name!r} exists") \
                    from None
            except WebhookEndpointStoreError as exc:
                raise _unavailable(exc) from None
            await self._start(row)
        event(log, "api_webhook_added", webhook=name, url=url)
        return await self._webhook_json(row, name)

    async def _start(self, row: EndpointRow) -> None:
        assert self.d.spool is not None
        await replay(self.d.spool.ledger, row.name, from_seq="end")
        self._hooks().add_endpoint(_endpoint_cfg(row))

    async def update_webhook(self, name: str, *, url: str | None, events: tuple[str, ...] | None,
                             enabled: bool | None) -> Json | None:
        self._refuse_configured(name)
        hooks = self._hooks()
        async with self._webhook_lock:
            try:
                row = await asyncio.to_thread(self.endpoints.update, name, url=url,
                                              events=events, enabled=enabled,
                                              now=self.d.clock.now())
            except WebhookEndpointStoreError as exc:
                raise _unavailable(exc) from None
            if row is None:
                return None
            if not row.enabled:
                await hooks.remove_endpoint(name)
            elif hooks.added(name):
                await hooks.update_endpoint(_endpoint_cfg(row))
            else:
                await self._start(row)
        event(log, "api_webhook_updated", webhook=name, enabled=row.enabled)
        return await self._webhook_json(row, name)

    async def remove_webhook(self, name: str) -> bool:
        self._refuse_configured(name)
        async with self._webhook_lock:
            try:
                gone = await asyncio.to_thread(self.endpoints.delete, name)
            except WebhookEndpointStoreError as exc:
                raise _unavailable(exc) from None
            if gone:
                await self._hooks().remove_endpoint(name)
        if gone:
            event(log, "api_webhook_removed", webhook=name)
        return gone

    async def test_webhook(self, name: str) -> Json | None:
        hooks = self._hooks()
        if name in hooks.deliverers:
            result = await hooks.test(name)
        else:
            row = await asyncio.to_thread(self.endpoints.get, name)
            if row is None:
                return None
            result = await probe(_endpoint_cfg(row), self.d.clock)
        return {"object": "webhook_test", "id": name, "endpoint": result["url"],
                "ok": result["ok"], "status_code": result["status"], "error": result["error"],
                "ms": result["ms"]}
