"""Each tenant's reputation, from the ledger: rolling rates, warn, pause.

One job: follow the ledger's final outcomes (delivered, bounced, expired,
complained) with a cursor, keep each tenant's and each sending domain's
rolling window (policy/reputation.py), and act on a tenant's change of
status under its policy: a warning is a `reputation_warning` event (ledger,
and so webhooks), a log line and the metric; a pause is
`reputation_paused`, the tenant's automatic status set to paused in the
store (new submissions refused: runtime/tenants.py) and its queued mail
held (not bounced). Only `mta tenant resume` (or the admin API) clears an
automatic pause.

API
    ReputationTracker(tenants: TenantService, spool, clock, cfg_of)
        await .start()   rebuild from the ledger (at most REBUILD events
                         back: the windows and today's quota counts), then
                         a task that follows it every TICK seconds
        await .stop()
        await .step()    one pass (tests drive it with a fake clock)
        .rates(tenant) -> dict      what `mta tenant show` prints (with the
                                    figures of each sending domain)
        .domain_rates(tenant) -> {domain: Rates}
    In a cluster runtime/cluster_reputation.py subclasses it: where the
    outcomes come from (_outcomes, _last_seq, _follow), whether this node
    acts (_acting), what it does when the tenant rows change (_noticed).

What counts (core/reasons.py is the table): a delivered recipient is a
send; a final bounce whose reason is in LIST_QUALITY (user unknown, host
unknown) is a send that counts toward the bounce rate; any other final
failure (mailbox full, blocked, expired, …) is a send that does not; a
complaint counts toward the complaint rate (complaints / delivered). A
bounce reported by mail after a delivery counts once more as a send: a
known overstatement of the volume, small beside the window. Test mail
(test API keys, never delivered) counts for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from mta.config import Config
from mta.core import Clock, LedgerEvent
from mta.core.logfmt import event
from mta.core.reasons import LIST_QUALITY
from mta.policy.reputation import (Assessment, Rates, ReputationPolicy, RollingRates, assess,
                                   transition)
from mta.runtime.tenants import TenantService, policy_of, tenant_credential
from mta.spool import Spool
from mta.core.stores import OutcomeRow

__all__ = ["ReputationTracker"]

log = logging.getLogger("mta.reputation")

TICK = 2.0
BATCH = 2000
REBUILD = 200_000        # events read back at start, at most
REHOLD = 30.0            # a paused tenant's mail is held again this often
_TYPES = ("delivered", "bounced", "expired", "complained")   # (+ received at start)
_STATUS = {"ok": "ok", "warn": "warn", "paused": "pause"}


def _kind(etype: str, reason: str | None) -> str | None:
    if etype == "delivered":
        return "delivered"
    if etype == "complained":
        return "complaint"
    if etype in ("bounced", "expired"):
        return "bounce" if etype == "bounced" and reason in LIST_QUALITY else "bounce_other"
    return None


class ReputationTracker:
    def __init__(self, tenants: TenantService, spool: Spool, clock: Clock,
                 cfg_of: Callable[[], Config]):
        self.tenants, self.spool, self.clock, self.cfg_of = tenants, spool, clock, cfg_of
        self._rates: dict[str, RollingRates] = {}
        self._domains: dict[str, RollingRates] = {}
        self._last: dict[str, Assessment] = {}
        self._cursor = 0
        self._rehold_at = 0.0
        self._task: asyncio.Task[None] | None = None
        tenants.assessment = self.rates
        tenants.on_resume = self.forget

    async def start(self) -> None:
        last = await self._last_seq()
        self._cursor = max(0, last - REBUILD)
        await self._rebuild(last)
        self._start_task()

    def _start_task(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reputation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.step()
            except Exception:   # logged; the next tick tries again
                log.exception("event=reputation_step_failed")

    async def _rebuild(self, upto: int) -> None:
        """The windows and today's quota counts from the ledger (no actions:
        a status stored before the restart stands)."""
        now = self.clock.now()
        day, hour = now - now % 86400, now - now % 3600
        counts: dict[str, list[int]] = {}
        while self._cursor < upto:
            batch = await self._read(_TYPES + ("received",))
            if not batch:
                break
            for ev, tenant in batch:
                if ev.type == "received" and not ev.test and ev.at >= day:
                    c = counts.setdefault(tenant, [0, 0])
                    c[1] += 1
                    c[0] += ev.at >= hour
        for tenant, (h, d) in counts.items():
            self.tenants.quota_state(tenant).seed(h, d, now)
        event(log, "reputation_rebuilt", tenants=len(self._rates), cursor=self._cursor)

    async def _read(self, types: tuple[str, ...] = _TYPES) -> list[tuple[OutcomeRow, str]]:
        """The next outcomes after the cursor as (row, tenant), fed into the
        windows; the cursor advances. One lean read (ledger.outcomes_after);
        a tenant's policy is worked out once per read."""
        rows = await self._outcomes(types)
        if not rows:
            return []
        self._cursor = rows[-1].seq
        cfg = self.cfg_of()
        policies: dict[str, ReputationPolicy] = {}
        out = []
        for ev in rows:
            tenant = await self.tenants.resolve(ev.credential)
            out.append((ev, tenant))
            kind = None if ev.test else _kind(ev.type, ev.reason)
            if kind is None:
                continue
            policy = policies.get(tenant)
            if policy is None:
                policy = policies[tenant] = policy_of(self.tenants.row(tenant), cfg)
            self._rates.setdefault(tenant, RollingRates(policy.window)).add(kind, ev.at)
            domain = (ev.sender or "").rpartition("@")[2].lower()
            if domain:
                self._domains.setdefault(domain, RollingRates(policy.window)).add(kind, ev.at)
        return out

    async def step(self) -> None:
        """Re-read the tenants, follow the ledger, assess, act."""
        await self.tenants.refresh()
        await self._noticed()
        followed = await self._follow()
        acting = followed and await self._acting()
        cfg, now = self.cfg_of(), self.clock.now()
        for tenant in sorted(set(self._rates) | set(self._last)):
            row = self.tenants.row(tenant)
            rates = self._rates.get(tenant) or RollingRates()
            found = assess(rates.snapshot(now, policy_of(row, cfg)), policy_of(row, cfg))
            self._last[tenant] = found
            if acting:
                await self._act(tenant, _STATUS.get(row.auto_status, "ok"), found)
        if now >= self._rehold_at:
            self._rehold_at = now + REHOLD
            for name in self.tenants.names():
                if not self.tenants.row(name).sending:
                    await self.tenants.hold(name)

    # -- what a cluster changes (runtime/cluster_reputation.py) -----------------------

    async def _outcomes(self, types: tuple[str, ...]) -> Sequence[OutcomeRow]:
        return await self.spool.ledger.outcomes_after(self._cursor, BATCH, types=types)

    async def _last_seq(self) -> int:
        return await self.spool.ledger.last_event_seq()

    async def _follow(self) -> bool:
        """Read the outcomes up to the newest; False: the view is not current."""
        while len(await self._read()) == BATCH:
            pass
        return True

    async def _acting(self) -> bool:
        """Whether this tracker acts on what it assesses (one node does)."""
        return True

    async def _noticed(self) -> None:
        """The tenants were re-read (a cluster looks for changes made elsewhere)."""

    async def _act(self, tenant: str, stored: str, found: Assessment) -> None:
        change = transition(stored, found)
        if change is None:
            return
        status = {"reputation_paused": "paused", "reputation_warning": "warn"}.get(change, "ok")
        await self.tenants.set_auto(tenant, status, found.text)
        await self.spool.ledger.append_events([_event(change, tenant, found, self.clock.now())])
        event(log, change, level=logging.WARNING if status != "ok" else logging.INFO,
              tenant=tenant, metric=found.metric or None, rate=round(found.rate, 6),
              sends=found.sends, text=found.text or None)
        if status == "paused":
            await self.tenants.hold(tenant)

    def forget(self, tenant: str) -> None:
        """An operator resumed the tenant: its window starts over (else the
        same rates would pause it again at the next tick)."""
        self._rates.pop(tenant, None)
        self._last.pop(tenant, None)

    def rates(self, tenant: str) -> dict[str, Any]:
        now, cfg = self.clock.now(), self.cfg_of()
        policy = policy_of(self.tenants.row(tenant), cfg)
        r = (self._rates.get(tenant) or RollingRates()).snapshot(now, policy)
        found = assess(r, policy)
        domains = {d: _figures(x) for d, x in self.domain_rates(tenant).items()}
        return {**_figures(r), "assessment": found.status, "text": found.text,
                "policy": policy.level, "min_volume": policy.min_volume,
                "window": policy.window, "domains": domains}

    def domain_rates(self, tenant: str) -> dict[str, Rates]:
        """The rolling rates of each sending domain the tenant sent from
        (reported, not acted on: the tenant's policy acts on its whole)."""
        now, cfg = self.clock.now(), self.cfg_of()
        policy = policy_of(self.tenants.row(tenant), cfg)
        return {domain: rates.snapshot(now, policy)
                for domain, rates in sorted(self._domains.items())
                if (self.tenants.domain_owner(domain) or "default") == tenant}


def _figures(r: Rates) -> dict[str, Any]:
    return {"sends": r.sends, "delivered": r.delivered, "bounces": r.bounces,
            "complaints": r.complaints, "bounce_rate": r.bounce_rate,
            "complaint_rate": r.complaint_rate}


def _event(etype: str, tenant: str, found: Assessment, at: float) -> LedgerEvent:
    return LedgerEvent(etype, at, credential=tenant_credential(tenant),
                       detail={"tenant": tenant, "metric": found.metric or None,
                               "rate": found.rate, "sends": found.sends, "text": found.text})
