"""Tenants, live: who owns what, whether a tenant may send, its quotas.

One job: the daemon's view of the tenant store (spool/tenants.py) and the
guardrails that act on a submission before its commit point, in the process
that owns the spool (receivers' submissions reach it through the enqueue).

API
    TenantService(state_dir, spool, clock, cfg_of, observer=None)
        await .start() / .stop()     load the store; the reputation tracker
                                     (runtime/reputation.py) runs beside
        await .refresh()             re-read rows and ownership (every
                                     REFRESH seconds by the tracker; at once
                                     after our own writes)
        .tenant_of(credential) -> str          cached ("default" when no
                                               tenant owns it)
        await .resolve(credential) -> str      same, reading the store on a
                                               miss (a credential the CLI
                                               just made)
        .domain_owner(domain) -> str | None    the tenant owning the domain
                                               or its nearest parent
        .owned_domains(tenant) -> [domain]
        await .admit(credential, [(sender, head)], n, now, *, test=False) -> str
            the tenant, or raises core.Refused (module rules below)
        .rcpt_refusal(credential) -> Reply | None   a paused tenant, at RCPT
        operator: list, show, add, update, remove, pause, resume (dicts
        for the admin API; errors are spool.tenants.TenantError)
        await .own(kind, name, credential_or_tenant) ... see `own_for`

Rules (in `admit`, in this order; nothing is queued when one refuses)
  1. A tenant whose operator status is paused, or whose automatic status is
     paused, takes nothing: 550 5.7.1 "… sending paused: <reason>", HTTP 403.
  2. Sending domains: the envelope sender's domain and the From: domain
     must not belong to another tenant (the domain or a parent is owned by
     it), and a tenant other than "default" sends only from domains it
     owns (or their subdomains): 550 5.7.1, HTTP 403.
  3. Quotas (policy/quota.py): n = recipients that will be attempted;
     hourly/daily 452 4.5.3, rate 451 4.7.1, more than a whole limit
     552 5.5.3; HTTP 429 with Retry-After. Test mail (a test API key's,
     never delivered) counts toward no quota.
Counts live in memory and are seeded at start from the ledger's
`received` events (runtime/reputation.py), so a restart does not reset a
day's count; in a cluster, `shared_quota` (runtime/cluster_limits.py)
counts them on Redis for every node instead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mta.config import Config
from mta.core import Clock, LedgerEvent, Refused, Reply
from mta.core.address import AddressError, parse_domain
from mta.core.logfmt import event
from mta.mail.headers import from_domains
from mta.policy.quota import (QuotaLimits, QuotaState, QuotaVerdict, retry_after_seconds,
                              smtp_reply)
from mta.policy.reputation import (TENANT_STATUS, ReputationPolicy, TenantStatus,
                                   Thresholds)
from mta.spool import MessageFilter, Spool
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenant_sql import TENANT_PREFIX
from mta.spool.tenants import DEFAULT_TENANT, SqliteTenants, TenantError, TenantRow

__all__ = ["TenantService", "tenant_credential"]

log = logging.getLogger("mta.tenants")

REFRESH = 2.0        # seconds between re-reads of the store (CLI edits)


def tenant_credential(tenant: str) -> str:
    """The credential of events about a tenant itself (reputation, pauses):
    the tenant's (spool/tenant_sql.py), so its reads and webhooks see them."""
    return TENANT_PREFIX + tenant


def limits_of(row: TenantRow) -> QuotaLimits:
    d = row.limits
    return QuotaLimits(per_hour=d.get("per_hour"), per_day=d.get("per_day"),
                       rate=d.get("rate"), burst=d.get("burst"))


def policy_of(row: TenantRow, cfg: Config) -> ReputationPolicy:
    """The tenant's reputation policy: its own keys over `[reputation]`."""
    r, p = cfg.reputation, row.policy
    t = Thresholds(bounce_warn=p.get("bounce_warn", r.bounce_warn),
                   bounce_pause=p.get("bounce_pause", r.bounce_pause),
                   complaint_warn=p.get("complaint_warn", r.complaint_warn),
                   complaint_pause=p.get("complaint_pause", r.complaint_pause))
    window = int(p.get("window", r.window))
    return ReputationPolicy(level=p.get("level", r.level), thresholds=t, window=window,
                            window_seconds=float(p.get("window_seconds", r.window_span)),
                            min_volume=min(window, int(p.get("min_volume", r.min_volume))))


def _domain(address_or_domain: str) -> str | None:
    d = address_or_domain.rpartition("@")[2]
    if not d:
        return None
    try:
        return parse_domain(d)
    except AddressError:
        return None


class TenantService:
    def __init__(self, state_dir: str | Path, spool: Spool, clock: Clock,
                 cfg_of: Callable[[], Config]):
        self.store = SqliteTenants(state_dir)
        self.spool, self.clock, self.cfg_of = spool, clock, cfg_of
        self._rows: dict[str, TenantRow] = {}
        self._owner: dict[tuple[str, str], str] = {}
        self._any_domain_owned = False      # by a tenant other than the default
        self.quota: dict[str, QuotaState] = {}
        self.refused: dict[tuple[str, str], int] = {}    # (tenant, why) -> count
        self.loaded_at = 0.0
        # The reputation tracker (runtime/reputation.py) sets these.
        self.assessment: Callable[[str], Mapping[str, Any]] = lambda _t: {}
        self.on_resume: Callable[[str], None] = lambda _t: None
        self.user_names: Callable[[], Sequence[str]] = list      # the daemon's credential store
        self.shared_quota: Callable[[str, QuotaLimits, int, float],
                                    Awaitable[QuotaVerdict]] | None = None   # set in a cluster

    # -- cache -----------------------------------------------------------------

    async def refresh(self) -> None:
        rows, owner = await asyncio.to_thread(self._read_all)
        self._rows = {r.name: r for r in rows}
        self._owner = owner
        self._any_domain_owned = any(k == "domain" and t != DEFAULT_TENANT
                                     for (k, _), t in owner.items())
        self.loaded_at = self.clock.now()

    def _read_all(self) -> tuple[list[TenantRow], dict[tuple[str, str], str]]:
        return self.store.rows(), self.store.ownership()

    def names(self) -> list[str]:
        return sorted(self._rows) or [DEFAULT_TENANT]

    def row(self, tenant: str) -> TenantRow:
        found = self._rows.get(tenant) or self._rows.get(DEFAULT_TENANT)
        if found is None:           # not loaded yet: the default as it starts
            found = TenantRow(name=DEFAULT_TENANT, status="active", status_reason="",
                              auto_status="ok", auto_reason="", limits={}, policy={},
                              created=0.0, updated=0.0)
        return found if found.name == tenant else _renamed(found, tenant)

    def tenant_of(self, credential: str | None) -> str:
        if not credential:
            return DEFAULT_TENANT
        if credential.startswith(TENANT_PREFIX):
            return credential[len(TENANT_PREFIX):]
        return self._owner.get(("credential", credential), DEFAULT_TENANT)

    async def resolve(self, credential: str | None) -> str:
        if not credential:
            return DEFAULT_TENANT
        if credential.startswith(TENANT_PREFIX):
            return credential[len(TENANT_PREFIX):]
        found = self._owner.get(("credential", credential))
        if found is None:
            # A credential's owner never changes once recorded (and one used
            # before any record stays the default's), so the answer is kept
            # (until the next refresh replaces the cache).
            found = await asyncio.to_thread(self.store.owner, "credential", credential)
            self._owner[("credential", credential)] = found
        return found

    def domain_owner(self, domain: str) -> str | None:
        """The tenant owning `domain` or its nearest parent (None: nobody)."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            owner = self._owner.get(("domain", ".".join(labels[i:])))
            if owner is not None:
                return owner
        return None

    def owned_domains(self, tenant: str) -> list[str]:
        return sorted(n for (k, n), t in self._owner.items() if k == "domain" and t == tenant)

    # -- the guardrails ----------------------------------------------------------

    def paused_reply(self, tenant: str) -> Reply | None:
        row = self.row(tenant)
        if row.status == "paused":
            why = row.status_reason or "paused by the operator"
        elif row.auto_status == "paused":
            why = row.auto_reason or "reputation"
        else:
            return None
        return Reply(550, "5.7.1", f"tenant {tenant}: sending paused: {why}")

    def rcpt_refusal(self, credential: str | None) -> Reply | None:
        return self.paused_reply(self.tenant_of(credential))

    def _domain_refusal(self, tenant: str, domain: str) -> Reply | None:
        owner = self.domain_owner(domain)
        if owner is not None and owner != tenant:
            return Reply(550, "5.7.1", f"the sending domain {domain} belongs to another "
                                       f"tenant; tenant {tenant} may not send as it")
        if owner is None and tenant != DEFAULT_TENANT:
            return Reply(550, "5.7.1", f"the sending domain {domain} is not one of tenant "
                                       f"{tenant}'s domains (add it: mta domain add {domain} "
                                       f"--tenant {tenant})")
        return None

    async def admit(self, credential: str | None,
                    messages: Sequence[tuple[str, bytes | None]], n: int, now: float, *,
                    test: bool = False) -> str:
        """The tenant of a submission about to be enqueued, or core.Refused
        (module rules). `messages`: (envelope sender, message head or None)
        of each message (one, or an API batch admitted as one); From: is
        read from the head. `n`: the recipients that will be attempted."""
        tenant = await self.resolve(credential)
        paused = self.paused_reply(tenant)
        if paused is not None:
            raise self._refuse(tenant, "paused", paused, 403)
        domains: list[str] = []
        if tenant == DEFAULT_TENANT and not self._any_domain_owned:
            messages = ()       # nobody owns a domain: nothing to check (and no parse)
        for sender, body in messages:
            domains += [d for d in (_domain(sender),) if d]
            if body is not None:
                domains += [d for d in (from_domains(body) or [])[:1] if d]
        for d in dict.fromkeys(domains):
            refusal = self._domain_refusal(tenant, d)
            if refusal is not None:
                raise self._refuse(tenant, "domain", refusal, 403)
        row = self.row(tenant)
        if test or n <= 0 or not any(v is not None for v in row.limits.values()):
            return tenant           # (the common case: no dataclass built per message)
        limits = limits_of(row)
        shared = self.shared_quota
        verdict = (await shared(tenant, limits, n, now) if shared is not None
                   else self.quota_state(tenant).admit(limits, n, now))
        if not verdict.ok:
            raise self._refuse(tenant, verdict.limit or "quota", smtp_reply(verdict, tenant),
                               429, retry_after_seconds(verdict))
        return tenant

    def quota_state(self, tenant: str) -> QuotaState:
        return self.quota.setdefault(tenant, QuotaState())

    def _refuse(self, tenant: str, why: str, reply: Reply, status: int,
                retry_after: int | None = None) -> Refused:
        self.refused[(tenant, why)] = self.refused.get((tenant, why), 0) + 1
        event(log, "tenant_refused", level=logging.INFO, tenant=tenant, why=why,
              reply=str(reply))
        return Refused(reply, status, retry_after)

    # -- ownership -----------------------------------------------------------------

    async def own(self, kind: str, name: str, tenant: str) -> None:
        """Record that `tenant` owns (kind, name): TenantError 404/409."""
        if tenant not in self._rows and tenant != DEFAULT_TENANT:
            await self.refresh()                # one the CLI just added
            if tenant not in self._rows:
                raise TenantError(404, f"no tenant named {tenant!r}", "tenant")
        await asyncio.to_thread(self.store.own, kind, name, tenant, self.clock.now())
        self._owner[(kind, name)] = tenant
        self._any_domain_owned |= kind == "domain" and tenant != DEFAULT_TENANT

    async def disown(self, kind: str, name: str) -> None:
        await asyncio.to_thread(self.store.disown, kind, name)
        self._owner.pop((kind, name), None)

    # -- operator ------------------------------------------------------------------

    def view(self, row: TenantRow) -> dict[str, Any]:
        hour, day = self.quota.get(row.name, QuotaState()).used(self.clock.now())
        owns: dict[str, list[str]] = {"credentials": [], "api_keys": [], "domains": [],
                                      "webhooks": []}
        for (kind, name), t in sorted(self._owner.items()):
            if t != row.name or name == tenant_credential(row.name):
                continue
            if kind == "credential":
                key = "api_keys" if name.startswith("api:") else "credentials"
                owns[key].append(name.removeprefix("api:"))
            else:
                owns[kind + "s"].append(name)
        return {"name": row.name, "sending": row.sending, "status": row.status,
                "status_reason": row.status_reason, "auto_status": row.auto_status,
                "auto_reason": row.auto_reason, "limits": dict(row.limits),
                "policy": dict(row.policy), "usage": {"hour": hour, "day": day},
                "reputation": dict(self.assessment(row.name)), "owns": owns,
                "created": row.created, "updated": row.updated}

    async def list(self) -> list[dict[str, Any]]:
        await self.refresh()
        return [self.view(r) for r in self._rows.values()]

    async def show(self, name: str) -> dict[str, Any] | None:
        await self.refresh()
        row = self._rows.get(name)
        return None if row is None else self.view(row)

    def _checked(self, limits: Mapping[str, Any] | None,
                 policy: Mapping[str, Any] | None, row: TenantRow) -> None:
        """422 for limits or a policy the maths would refuse (naming the field)."""
        try:
            limits_of(_with(row, limits=dict(limits if limits is not None else row.limits)))
        except ValueError as exc:
            raise TenantError(422, f"limits.{exc}", "limits") from None
        try:
            policy_of(_with(row, policy=dict(policy if policy is not None else row.policy)),
                      self.cfg_of())
        except ValueError as exc:
            raise TenantError(422, f"policy.{exc}", "policy") from None

    async def add(self, name: str, limits: Mapping[str, Any],
                  policy: Mapping[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        probe = TenantRow(name=name, status="active", status_reason="", auto_status="ok",
                          auto_reason="", limits={}, policy={}, created=now, updated=now)
        self._checked(limits, policy, probe)
        row = await asyncio.to_thread(self.store.add, name, limits=limits, policy=policy, now=now)
        await self.refresh()
        event(log, "tenant_added", tenant=name)
        return self.view(row)

    async def update(self, name: str, limits: Mapping[str, Any] | None,
                     policy: Mapping[str, Any] | None) -> dict[str, Any]:
        """Keys given replace, a null clears one, keys absent stay."""
        row = await asyncio.to_thread(self.store.get, name)
        if row is None:
            raise TenantError(404, f"no tenant named {name!r}", "name")
        limits = None if limits is None else _merged(row.limits, limits)
        policy = None if policy is None else _merged(row.policy, policy)
        self._checked(limits, policy, row)
        row = await asyncio.to_thread(self.store.update, name, limits=limits, policy=policy,
                                      now=self.clock.now())
        await self.refresh()
        return self.view(row)

    def _active_credentials(self) -> set[str]:
        """The credentials that exist today: SMTP users and active API keys."""
        keys = SqliteApiKeys(self.store.paths.state).rows()
        return set(self.user_names()) | {f"api:{k.name}" for k in keys}

    async def remove(self, name: str) -> None:
        """Refused (409) while the tenant owns a domain, a webhook or a
        credential that exists (spool/tenants.py)."""
        active = await asyncio.to_thread(self._active_credentials)
        await asyncio.to_thread(self.store.remove, name, active_credentials=active)
        self.quota.pop(name, None)
        await self.refresh()
        event(log, "tenant_removed", tenant=name)

    async def pause(self, name: str, reason: str) -> dict[str, Any]:
        now = self.clock.now()
        row = await asyncio.to_thread(self.store.set_status, name, "paused",
                                      reason or "paused by the operator", now)
        await self.refresh()
        await self._record(name, "tenant_paused", {"by": "operator", "reason": row.status_reason})
        await self.hold(name)
        return self.view(row)

    async def resume(self, name: str, reason: str) -> dict[str, Any]:
        """Clears the operator's pause and the automatic one (its warning
        state too: the rates start over), with the reason in the ledger."""
        now = self.clock.now()
        before = self.row(name)
        TENANT_STATUS.move(TenantStatus(before.auto_status), TenantStatus.OK, name)
        await asyncio.to_thread(self.store.set_status, name, "active", "", now)
        row = await asyncio.to_thread(self.store.set_auto, name, "ok", "", now)
        await self.refresh()
        self.on_resume(name)
        await self._record(name, "tenant_resumed", {
            "by": "operator", "reason": reason, "was": {
                "status": before.status, "status_reason": before.status_reason,
                "auto_status": before.auto_status, "auto_reason": before.auto_reason}})
        released = await self.spool.release_messages(
            MessageFilter(tenant=name, state="held"), now)
        event(log, "tenant_resumed", tenant=name, reason=reason, released=released)
        return self.view(row)

    async def set_auto(self, name: str, status: str, reason: str) -> None:
        TENANT_STATUS.move(TenantStatus(self.row(name).auto_status), TenantStatus(status), name)
        await asyncio.to_thread(self.store.set_auto, name, status, reason, self.clock.now())
        await self.refresh()

    async def hold(self, name: str) -> int:
        """Hold the tenant's queued mail (not bounced: `resume` releases it)."""
        held = await self.spool.hold_messages(MessageFilter(tenant=name), self.clock.now())
        if held:
            event(log, "tenant_mail_held", tenant=name, recipients=held)
        return held

    async def _record(self, name: str, etype: str, detail: dict[str, Any]) -> None:
        await self.spool.ledger.append_events([LedgerEvent(
            etype, self.clock.now(), credential=tenant_credential(name),
            detail={"tenant": name, **detail})])


def _merged(old: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    out = {**old, **given}
    return {k: v for k, v in out.items() if v is not None}


def _with(row: TenantRow, **changes: Any) -> TenantRow:
    return replace(row, **changes)


def _renamed(row: TenantRow, name: str) -> TenantRow:
    """An unknown tenant name seen in ownership (a removed tenant): it sends
    like the default would, under its own name."""
    return _with(row, name=name)
