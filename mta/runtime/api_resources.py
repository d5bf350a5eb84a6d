"""The sending API's resources over the running daemon's parts, each scoped
to the tenant of the request's key.

One job: implement mta.api.resources.ResourceBackend — domains and the
suppression list here, webhook endpoints in mta.runtime.api_webhooks — with
the services the CLI and the admin API already drive.

Public API:
    RuntimeResources(daemon)            the ResourceBackend (every method
                                        takes the request's ApiKey first)
    ResourceDaemon, add_stored_webhooks  (from api_webhooks, re-exported)

The key's tenant: `daemon.tenants.resolve(key.credential)` ("default" for a
key no named tenant owns, and for every key of a daemon without tenants).

Domains: DomainService (behind `daemon.domains`, the DomainCache) adds,
checks and removes; `verify` asks `[dns] nameservers` through an uncached
resolver (what was just published counts). After a change the cache is re-read and the receiver
processes are told, so the sender policy and DKIM signing follow at once.
A record's status is that of the domain's last check when the API ran it
(`verify`); after a periodic check (or a restart) it follows the domain's
stored state: not_started (never checked), pending, verified, failed. The
records listed are those the domain's own zone holds (DKIM, SPF, DMARC,
the return path's MX and SPF); the server's A/AAAA and PTR reminders are
`mta domain show`'s. Tenants: a key sees (lists, gets, verifies, deletes)
the domains its tenant owns — the domain or its nearest owned parent
(TenantService.domain_owner), as the sending rules decide — and the
default tenant's keys those nobody else owns. Creating records the
ownership ('domain', name) for the key's tenant (409 when the name or a
parent is another tenant's; nothing is made); deleting removes it.

Suppressions: the key's tenant's list (scope = the tenant's name: what the
RCPT check consults for that tenant's mail, beside the global list),
through spool.suppression_admin in a worker thread (the daemon's writer and
these calls take turns at SQLite's lock, as with `mta suppression`). The
global list (scope "") is the operator's (CLI, admin API): not shown or
changed here. An added entry is noted to the daemon's RCPT lookup, so the
very next RCPT sees it.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from typing import Any

from mta.api.http import ApiError
from mta.api.keys import ApiKey
from mta.core.envelope import AddressOutcome
from mta.core.errors import StorageError
from mta.core.stores import SuppressionView
from mta.domains.check import CheckResult
from mta.domains.model import Domain, DomainState
from mta.domains.records import DnsRecord
from mta.domains.service import DomainError, DomainService
from mta.runtime.api_webhooks import (ResourceDaemon, WebhookResources, add_stored_webhooks, iso,
                                      unavailable)
from mta.runtime.logs import event
from mta.spool import suppression_admin
from mta.spool.tenants import DEFAULT_TENANT, TenantError

__all__ = ["ResourceDaemon", "RuntimeResources", "add_stored_webhooks"]

log = logging.getLogger("mta.api")
Json = dict[str, Any]

_RECORD = {"dkim": "DKIM", "spf": "SPF", "dmarc": "DMARC", "return-path": "ReturnPath"}
_ORIGIN = {"hard_bounce": "bounce", "soft_bounce": "bounce", "complaint": "complaint",
           "manual": "manual", "unsubscribe": "manual",
           "unsubscribed": "manual"}


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
            "created_at": iso(v.created), "reason": v.reason, "scope": v.scope or "global",
            "expires_at": iso(v.expires), "reply": v.reply or None}



class RuntimeResources(WebhookResources):
    def __init__(self, daemon: ResourceDaemon):
        super().__init__(daemon)
        self._checks: dict[str, CheckResult] = {}     # the last API-run check per domain

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

    def _domain_tenant(self, name: str) -> str:
        """The tenant whose domain `name` is (by itself or a parent)."""
        tenants = self.d.tenants
        owner = None if tenants is None else tenants.domain_owner(name)
        return owner or DEFAULT_TENANT

    def _domain_json(self, d: Domain) -> Json:
        svc, check = self._service(), self._checks.get(d.name)
        if check is not None and (d.last_checked or 0.0) > check.checked_at:
            check = None              # the daemon's periodic check ran since
        records = [_record(r, d, check) for r in svc.plan(d).records() if r.purpose in _RECORD]
        return {"object": "domain", "id": d.name, "name": d.name, "status": _domain_status(d),
                "created_at": iso(d.created), "region": "local", "records": records,
                "last_checked_at": iso(d.last_checked), "failure_reason": d.failure_reason}

    def _find(self, name: str, tenant: str) -> Json | None:
        if self._domain_tenant(name) != tenant:
            return None
        d = self._service().store.get(name)
        return None if d is None else self._domain_json(d)

    async def _changed(self) -> None:
        assert self.d.domains is not None
        await self.d.domains.refresh()
        if self.d.receivers is not None:
            self.d.receivers.refresh_domains()

    async def domains(self, key: ApiKey) -> builtins.list[Json]:
        tenant = await self.tenant_of_key(key)

        def read() -> builtins.list[Json]:
            return sorted((self._domain_json(d) for d in self._service().list()
                           if self._domain_tenant(d.name) == tenant),
                          key=lambda j: str(j["id"]))
        return await asyncio.to_thread(read)

    async def domain(self, key: ApiKey, name: str) -> Json | None:
        return await asyncio.to_thread(self._find, name, await self.tenant_of_key(key))

    async def add_domain(self, key: ApiKey, name: str) -> Json:
        tenant = await self.tenant_of_key(key)
        svc = self._service()
        owner = None if self.d.tenants is None else self.d.tenants.domain_owner(name)
        if owner not in (None, tenant):       # the name or a parent is another tenant's
            raise ApiError(409, "conflict", f"name: the domain {name} belongs to another tenant")
        if await asyncio.to_thread(svc.store.get, name) is not None:
            raise ApiError(409, "conflict", f"name: the domain {name} exists")
        await self._own_domain(name, tenant)
        try:
            d = await asyncio.to_thread(svc.add, name)
        except DomainError as exc:
            await self._disown_domain(name)
            raise ApiError(422, "validation_error", f"name: {exc}") from None
        self._checks.pop(name, None)
        await self._changed()
        event(log, "api_domain_added", domain=name, tenant=tenant)
        return await asyncio.to_thread(self._domain_json, d)

    async def _own_domain(self, name: str, tenant: str) -> None:
        if self.d.tenants is None:
            return
        try:
            await self.d.tenants.own("domain", name, tenant)
        except TenantError as exc:
            raise ApiError(409, "conflict", f"name: the domain {name} belongs to another "
                           "tenant" if exc.status == 409 else f"tenant: {exc}") from None
        except StorageError as exc:
            raise unavailable(exc) from None

    async def _disown_domain(self, name: str) -> None:
        if self.d.tenants is None:
            return
        try:
            await self.d.tenants.disown("domain", name)
        except StorageError as exc:
            event(log, "domain_disown_failed", logging.WARNING, domain=name, error=str(exc))

    async def verify_domain(self, key: ApiKey, name: str) -> Json | None:
        tenant = await self.tenant_of_key(key)
        svc = self._service()
        if self._domain_tenant(name) != tenant \
                or await asyncio.to_thread(svc.store.get, name) is None:
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
        return await asyncio.to_thread(self._find, name, tenant)

    async def remove_domain(self, key: ApiKey, name: str) -> bool:
        tenant = await self.tenant_of_key(key)
        if self._domain_tenant(name) != tenant:
            return False
        try:
            await asyncio.to_thread(self._service().remove, name)
        except DomainError:
            return False
        await self._disown_domain(name)
        self._checks.pop(name, None)
        await self._changed()
        event(log, "api_domain_removed", domain=name, tenant=tenant)
        return True

    # -- suppressions (the key's tenant's list) ---------------------------------------

    async def suppressions(self, key: ApiKey, limit: int, after: str | None,
                           before: str | None, origin: str | None
                           ) -> tuple[builtins.list[Json], bool]:
        # One bounded range read of the tenant's list (suppression_admin.page).
        scope = await self.tenant_of_key(key)
        reasons = None if origin is None else tuple(
            r for r, o in _ORIGIN.items() if o == origin) or ("",)
        views, more = await asyncio.to_thread(
            suppression_admin.page, self._state_dir, scope=scope, reasons=reasons,
            after=after, before=before, limit=limit, now=self.d.clock.now())
        return [_suppression(v) for v in views], more

    async def _entry(self, address: str, scope: str) -> SuppressionView | None:
        try:
            views = await asyncio.to_thread(suppression_admin.get, self._state_dir, address)
        except suppression_admin.SuppressionAdminError:
            return None
        now = self.d.clock.now()
        return next((v for v in views if v.scope == scope and v.is_active(now)), None)

    async def suppression(self, key: ApiKey, address: str) -> Json | None:
        found = await self._entry(address, await self.tenant_of_key(key))
        return None if found is None else _suppression(found)

    async def suppress(self, key: ApiKey, address: str, reason: str) -> Json:
        scope = await self.tenant_of_key(key)
        found = await self._entry(address, scope)
        if found is not None:
            return _suppression(found)        # Resend: the existing entry, not an error
        now = self.d.clock.now()
        try:
            made = await asyncio.to_thread(suppression_admin.add, self._state_dir, address,
                                           reason=reason, scope=scope, now=now)
        except suppression_admin.SuppressionAdminError as exc:
            raise unavailable(exc) from None
        if self.d.spool is not None:
            # The RCPT lookup skips the table while it believes it empty; an
            # outcome that may add an entry is how it learns otherwise.
            self.d.spool.suppressions.note([AddressOutcome(made.address, "hard", now,
                                                           scope=scope)])
        event(log, "api_suppression_added", address=made.address, reason=reason, scope=scope)
        return _suppression(made)

    async def unsuppress(self, key: ApiKey, address: str) -> bool:
        scope = await self.tenant_of_key(key)
        try:
            gone = await asyncio.to_thread(suppression_admin.remove, self._state_dir, address,
                                           scope)
        except suppression_admin.SuppressionAdminError as exc:
            raise unavailable(exc) from None
        if gone:
            event(log, "api_suppression_removed", address=address, scope=scope)
        return gone
