"""The sending API's resources over the running daemon's parts, each scoped
to the tenant of the request's key.

One job: implement mta.api.resources.ResourceBackend — domains and the
suppression list here, webhook endpoints in mta.runtime.api_webhooks — with
the services the CLI and the admin API already drive.

Public API:
    RuntimeResources(daemon)            the ResourceBackend (every method
                                        takes the request's ApiKey first),
                                        each a thin wrapper over a method by
                                        tenant the console calls too:
        domain_rows(tenant) / domain_row(name, tenant)   (blocking; tenant
            None: the operator, every domain)  .domain_tenant(name)
        .last_check(domain) -> CheckResult | None   .service()
        await add_domain_as(tenant, name, source) -> Domain        (ApiError)
        await verify_domain_as(tenant, name) -> CheckResult | None
        await remove_domain_as(tenant, name, source) -> bool
        await entry(address, scope) / suppress_in(scope, address, reason, source)
            -> (entry, new) / unsuppress_in(scope, address) -> bool
        .noted(address, scope, now)      tell the RCPT lookup of an addition
    domain_status(d), record_check(r, d, check) -> (status, why),
    record_json(r, d, check), published(svc, d), ORIGIN   the shapes, shared
    ResourceDaemon, add_stored_webhooks  (from api_webhooks, re-exported)

The key's tenant: `daemon.tenants.resolve(key.credential)` ("default" for a
key no named tenant owns, and for every key of a daemon without tenants).

Domains: DomainService (behind `daemon.domains`, the DomainCache) adds,
checks and removes; `verify` asks `[dns] nameservers` through an uncached
resolver (what was just published counts). After a change the cache is re-read and the receiver
processes are told, so the sender policy and DKIM signing follow at once.
A record's status is that of the domain's last check when the API ran it
(`verify`, or the console's "check now": both share it, per daemon); after a
periodic check (or a restart) it follows the domain's stored state:
not_started (never checked), pending, verified, failed. The
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
import weakref
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

__all__ = ["ORIGIN", "ResourceDaemon", "RuntimeResources", "add_stored_webhooks", "domain_status",
           "published", "record_check", "record_json"]

log = logging.getLogger("mta.api")
Json = dict[str, Any]

_RECORD = {"dkim": "DKIM", "spf": "SPF", "dmarc": "DMARC", "return-path": "ReturnPath"}
ORIGIN = {"hard_bounce": "bounce", "soft_bounce": "bounce", "complaint": "complaint",
          "manual": "manual", "unsubscribe": "manual", "unsubscribed": "manual"}


# -- JSON shapes (the console's domain page shares the record statuses) ----------------

def domain_status(d: Domain) -> str:
    """not_started (never checked), pending, verified or failed."""
    if d.state is DomainState.PENDING and d.last_checked is None:
        return "not_started"
    return d.state.value


def record_check(r: DnsRecord, d: Domain, check: CheckResult | None
                 ) -> tuple[str, str | None]:
    """A record's status from `check` (the last check run here, or None:
    the domain's stored state) and, when it is not verified, why — the
    check's words for each failing entry ("no TXT record at …")."""
    entries = [] if check is None else [
        e for e in check.entries if e.name == r.purpose and e.record == r.name.rstrip(".")]
    if not entries:
        return (domain_status(d) if check is None else "not_started"), None
    why = "; ".join(e.reason for e in entries if not e.ok) or None
    if all(e.ok for e in entries):
        return "verified", None
    if all(e.ok or e.temporary for e in entries):
        return "temporary_failure", why
    return ("failed" if d.state is DomainState.FAILED else "pending"), why


def record_json(r: DnsRecord, d: Domain, check: CheckResult | None) -> Json:
    """One record to publish as the API shows it: record, name ("@" or
    relative), fqdn, type, ttl, status, value (MX: the host, and priority),
    required."""
    fqdn = r.name.rstrip(".")
    name = "@" if fqdn == d.name else fqdn.removesuffix("." + d.name)
    out: Json = {"record": _RECORD[r.purpose], "name": name, "fqdn": fqdn, "type": r.type,
                 "ttl": str(r.ttl), "status": record_check(r, d, check)[0], "value": r.value,
                 "required": r.required}
    if r.type == "MX":
        priority, _, host = r.value.partition(" ")
        out["priority"], out["value"] = int(priority), host.rstrip(".")
    return out


def published(svc: DomainService, d: Domain) -> builtins.list[DnsRecord]:
    """The records of the domain's own zone (no A/AAAA/PTR reminders)."""
    return [r for r in svc.plan(d).records() if r.purpose in _RECORD]


def _suppression(v: SuppressionView) -> Json:
    return {"object": "suppression", "id": v.address, "email": v.address,
            "origin": ORIGIN.get(v.reason, "manual"), "source_id": v.queue_id or None,
            "created_at": iso(v.created), "reason": v.reason, "scope": v.scope or "global",
            "expires_at": iso(v.expires), "reply": v.reply or None}


# The last check run through these resources (API verify, console "check
# now"), per daemon: the API's and the console's instances share it.
_LAST_CHECKS: weakref.WeakKeyDictionary[Any, dict[str, CheckResult]] = \
    weakref.WeakKeyDictionary()


class RuntimeResources(WebhookResources):
    """The ResourceBackend (key-based methods), over tenant-based ones the
    console calls too (tenant None: the operator, every domain)."""

    def __init__(self, daemon: ResourceDaemon):
        super().__init__(daemon)
        self._checks = _LAST_CHECKS.setdefault(daemon, {})

    @property
    def _state_dir(self) -> str:
        return self.d.cfg.server.state_dir

    # -- domains, by tenant ----------------------------------------------------------

    def service(self) -> DomainService:
        cache = self.d.domains
        assert cache is not None, "the daemon has not started its domains"
        svc = cache.service
        assert isinstance(svc, DomainService)
        return svc

    def domain_tenant(self, name: str) -> str:
        """The tenant whose domain `name` is (by itself or a parent)."""
        tenants = self.d.tenants
        owner = None if tenants is None else tenants.domain_owner(name)
        return owner or DEFAULT_TENANT

    def last_check(self, d: Domain) -> CheckResult | None:
        """The check run here, unless the daemon's periodic one ran since."""
        check = self._checks.get(d.name)
        if check is not None and (d.last_checked or 0.0) > check.checked_at:
            return None
        return check

    def _domain_json(self, d: Domain) -> Json:
        svc, check = self.service(), self.last_check(d)
        records = [record_json(r, d, check) for r in published(svc, d)]
        return {"object": "domain", "id": d.name, "name": d.name, "status": domain_status(d),
                "created_at": iso(d.created), "region": "local", "records": records,
                "last_checked_at": iso(d.last_checked), "failure_reason": d.failure_reason}

    def domain_rows(self, tenant: str | None) -> builtins.list[Domain]:
        """The domains `tenant` sees (None: all), by name (blocking: a thread)."""
        return sorted((d for d in self.service().list()
                       if tenant is None or self.domain_tenant(d.name) == tenant),
                      key=lambda d: d.name)

    def domain_row(self, name: str, tenant: str | None) -> Domain | None:
        """Domain `name` if `tenant` sees it (blocking: a thread)."""
        if tenant is not None and self.domain_tenant(name) != tenant:
            return None
        return self.service().store.get(name)

    def _find(self, name: str, tenant: str | None) -> Json | None:
        d = self.domain_row(name, tenant)
        return None if d is None else self._domain_json(d)

    async def _changed(self) -> None:
        assert self.d.domains is not None
        await self.d.domains.refresh()
        if self.d.receivers is not None:
            self.d.receivers.refresh_domains()

    async def add_domain_as(self, tenant: str, name: str, source: str = "api") -> Domain:
        """Create `name` for `tenant` (ownership recorded first): ApiError 409
        (exists, another tenant's, no such tenant), 422 (refused), 503."""
        svc = self.service()
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
        event(log, f"{source}_domain_added", domain=name, tenant=tenant)
        return d

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

    async def verify_domain_as(self, tenant: str | None, name: str) -> CheckResult | None:
        """Check `name`'s DNS now (None: not `tenant`'s, or no such domain)."""
        svc = self.service()
        if await asyncio.to_thread(self.domain_row, name, tenant) is None:
            return None
        # The check's own service over the same store: its default resolver
        # asks `[dns] nameservers` without a cache (the daemon's resolver
        # caches, and would keep answering "no record" for a while after
        # the operator published it).
        checker = DomainService(self.d.cfg, clock=self.d.clock, store=svc.store)
        try:
            self._checks[name] = result = await checker.check(name)
        except DomainError:              # removed meanwhile
            return None
        await self._changed()
        return result

    async def remove_domain_as(self, tenant: str | None, name: str,
                               source: str = "api") -> bool:
        owner = self.domain_tenant(name)
        if tenant is not None and owner != tenant:
            return False
        try:
            await asyncio.to_thread(self.service().remove, name)
        except DomainError:
            return False
        await self._disown_domain(name)
        self._checks.pop(name, None)
        await self._changed()
        event(log, f"{source}_domain_removed", domain=name, tenant=owner)
        return True

    # -- domains, by key (the HTTP API) ------------------------------------------------

    async def domains(self, key: ApiKey) -> builtins.list[Json]:
        tenant = await self.tenant_of_key(key)

        def read() -> builtins.list[Json]:
            return [self._domain_json(d) for d in self.domain_rows(tenant)]
        return await asyncio.to_thread(read)

    async def domain(self, key: ApiKey, name: str) -> Json | None:
        return await asyncio.to_thread(self._find, name, await self.tenant_of_key(key))

    async def add_domain(self, key: ApiKey, name: str) -> Json:
        d = await self.add_domain_as(await self.tenant_of_key(key), name)
        return await asyncio.to_thread(self._domain_json, d)

    async def verify_domain(self, key: ApiKey, name: str) -> Json | None:
        tenant = await self.tenant_of_key(key)
        if await self.verify_domain_as(tenant, name) is None:
            return None
        return await asyncio.to_thread(self._find, name, tenant)

    async def remove_domain(self, key: ApiKey, name: str) -> bool:
        return await self.remove_domain_as(await self.tenant_of_key(key), name)

    # -- suppressions, by scope ("" global, else a tenant's list) ---------------------

    async def entry(self, address: str, scope: str) -> SuppressionView | None:
        """The active entry of `address` in `scope`, if any."""
        try:
            views = await asyncio.to_thread(suppression_admin.get, self._state_dir, address)
        except suppression_admin.SuppressionAdminError:
            return None
        now = self.d.clock.now()
        return next((v for v in views if v.scope == scope and v.is_active(now)), None)

    def noted(self, address: str, scope: str, now: float) -> None:
        """Tell the daemon's RCPT lookup an entry was added: it skips the
        table while it believes it empty; an outcome that may add an entry
        is how it learns otherwise."""
        if self.d.spool is not None:
            self.d.spool.suppressions.note([AddressOutcome(address, "hard", now, scope=scope)])

    async def suppress_in(self, scope: str, address: str, reason: str,
                          source: str = "api") -> tuple[SuppressionView, bool]:
        """(the entry, whether it is new): an address already listed in
        `scope` keeps its entry (Resend's answer: the existing one)."""
        found = await self.entry(address, scope)
        if found is not None:
            return found, False
        now = self.d.clock.now()
        try:
            made = await asyncio.to_thread(suppression_admin.add, self._state_dir, address,
                                           reason=reason, scope=scope, now=now)
        except suppression_admin.SuppressionAdminError as exc:
            raise unavailable(exc) from None
        self.noted(made.address, scope, now)
        event(log, f"{source}_suppression_added", address=made.address, reason=reason,
              scope=scope)
        return made, True

    async def unsuppress_in(self, scope: str, address: str) -> bool:
        try:
            return await asyncio.to_thread(suppression_admin.remove, self._state_dir, address,
                                           scope)
        except suppression_admin.SuppressionAdminError as exc:
            raise unavailable(exc) from None

    # -- suppressions, by key (the key's tenant's list) -------------------------------

    async def suppressions(self, key: ApiKey, limit: int, after: str | None,
                           before: str | None, origin: str | None
                           ) -> tuple[builtins.list[Json], bool]:
        # One bounded range read of the tenant's list (suppression_admin.page).
        scope = await self.tenant_of_key(key)
        reasons = None if origin is None else tuple(
            r for r, o in ORIGIN.items() if o == origin) or ("",)
        views, more = await asyncio.to_thread(
            suppression_admin.page, self._state_dir, scope=scope, reasons=reasons,
            after=after, before=before, limit=limit, now=self.d.clock.now())
        return [_suppression(v) for v in views], more

    async def suppression(self, key: ApiKey, address: str) -> Json | None:
        found = await self.entry(address, await self.tenant_of_key(key))
        return None if found is None else _suppression(found)

    async def suppress(self, key: ApiKey, address: str, reason: str) -> Json:
        made, _ = await self.suppress_in(await self.tenant_of_key(key), address, reason)
        return _suppression(made)

    async def unsuppress(self, key: ApiKey, address: str) -> bool:
        scope = await self.tenant_of_key(key)
        gone = await self.unsuppress_in(scope, address)
        if gone:
            event(log, "api_suppression_removed", address=address, scope=scope)
        return gone
