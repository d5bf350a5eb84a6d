"""The cluster's shared limits, wired into the daemon (issue 19): tenant
quotas and connection leases on Redis (mta/cluster/limits.py).

One job: when the node is in a cluster, make the tenant guardrail count a
tenant's quota for the whole cluster, and make a batch hold a lease on each
shaping connection limit of its site before it connects, so the limit holds
against the remote for every node together.

API
    await wire(node)              (runtime/cluster.py WIRINGS) sets
                                  node.d.tenants.shared_quota,
                                  node.d.runner.gate and
                                  node.d.runner.shaping.leased
    QuotaHook(node, quota)        await hook(tenant, limits, n, now) -> QuotaVerdict
    ConnectGate                   Protocol the queue runner calls
        await .before_connect(batch) -> bool   False: not granted, the batch
                                  was handed back (the runner drops it)
        await .after_close(batch)
    LeaseGate(node, leases, ttl=LEASE_TTL)      the cluster's ConnectGate
        .held() -> int            batches holding leases now
        .handed_back              batches not granted so far (a counter)
    lease_keys(plan, batch) -> [(key, limit)]

Rules:
  * Quota: a tenant with limits is counted on Redis (the same semantics as
    policy/quota.py, every node's submissions together). Redis unreachable:
    such a tenant's submission is refused with SMTP 451 4.3.0 / HTTP 429 and
    Retry-After (come back later: never a 5xx, nothing queued); a tenant
    without limits never touches Redis. Each admission copies the cluster's
    counts into the tenant's local QuotaState, which the operator's views
    read.
  * Leases: a batch to an "mx" site whose plan sets `connection_limit`
    takes a lease on "site:<site>|<source>" (sources are named alike on
    every node: "default" is one source for the cluster, the conservative
    reading), and one on "provider:<name>" when the provider's total
    `connection_limit` is set. Not all granted: those taken are released,
    the scheduler's slot is freed and the batch goes back to the spool due
    in RETRY (+ jitter) seconds — no delivery attempt counted, no deferral
    recorded. Granted: renewed every ttl/3 while the connection lives,
    released when it closes (a connection under a leased limit is never
    kept idle for a later batch: runtime/shaping.py `leased`); a dead
    node's leases lapse after `ttl`.
  * Redis unreachable for a lease: the node's own (scheduler's) limit
    applies alone and delivery goes on (degraded mode, logged once per
    outage); while the node's heartbeat says Redis is down, Redis is not
    asked at all.
  * Known approximation: a batch handed back has been charged to the
    scheduler's local rates (connection and message GCRA) and, when it was
    probing, counts as a good probe.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

import redis.exceptions

from mta.cluster.limits import Leases, SharedQuota
from mta.core import DestinationHealth, Refused, Reply
from mta.core.logfmt import event
from mta.policy.quota import QuotaLimits, QuotaVerdict
from mta.scheduler import Batch
from mta.scheduler.limits import Plan

__all__ = ["LEASE_TTL", "RETRY", "ConnectGate", "LeaseGate", "QuotaHook", "lease_keys",
           "wire"]

log = logging.getLogger("mta.cluster")

LEASE_TTL = 30.0        # seconds a connection lease lives unless renewed
RETRY = 0.25            # seconds before a batch refused a lease is tried again
QUOTA_RETRY = 5         # Retry-After while the quota cannot be counted

# What a Redis call raises when Redis is unreachable (runtime/cluster.py has
# the same tuple; this module may not import it).
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
    asyncio.TimeoutError)


class ConnectGate(Protocol):
    async def before_connect(self, batch: Batch) -> bool: ...

    async def after_close(self, batch: Batch) -> None: ...


class QuotaHook:
    def __init__(self, node: Any, quota: SharedQuota):
        self.node, self.quota = node, quota

    async def __call__(self, tenant: str, limits: QuotaLimits, n: int,
                       now: float) -> QuotaVerdict:
        if not self.node.redis_available:
            raise self._unavailable(tenant, "redis down")
        try:
            verdict, hour, day = await self.quota.admit_counts(tenant, limits, n, now)
        except REDIS_DOWN as exc:
            self.node.redis_down(exc)
            raise self._unavailable(tenant, str(exc)) from None
        self.node.redis_up()
        self.node.d.tenants.quota_state(tenant).seed(hour, day, now)    # the operator's view
        return verdict

    def _unavailable(self, tenant: str, why: str) -> Refused:
        tenants = self.node.d.tenants
        key = (tenant, "quota_unavailable")
        tenants.refused[key] = tenants.refused.get(key, 0) + 1
        reply = Reply(451, "4.3.0", f"tenant {tenant}: its quota cannot be counted now "
                                    f"(shared limits unreachable); try again later")
        event(log, "tenant_refused", level=logging.INFO, tenant=tenant,
              why="quota_unavailable", reply=str(reply), error=why[:200])
        return Refused(reply, 429, QUOTA_RETRY)


def lease_keys(plan: Plan, batch: Batch) -> list[tuple[str, int]]:
    """The cluster-wide connection limits a batch needs a lease on."""
    if batch.destination.kind != "mx":
        return []
    out: list[tuple[str, int]] = []
    if plan.connection_limit is not None:
        out.append((f"site:{batch.destination.name}|{batch.source.name}",
                    plan.connection_limit))
    if plan.provider and plan.provider_connection_limit is not None:
        out.append((f"provider:{plan.provider}", plan.provider_connection_limit))
    return out


class LeaseGate:
    def __init__(self, node: Any, leases: Leases, ttl: float = LEASE_TTL):
        self.node, self.leases, self.ttl = node, leases, ttl
        self._held: dict[int, tuple[list[tuple[str, str]], asyncio.Task[None]]] = {}
        self._local = False     # degraded: logged once per outage
        self.handed_back = 0

    def held(self) -> int:
        return len(self._held)

    def _keys(self, batch: Batch) -> list[tuple[str, int]]:
        shaping = self.node.d.runner.shaping
        if shaping is None:
            return []
        return lease_keys(shaping.plan(batch.destination), batch)

    async def before_connect(self, batch: Batch) -> bool:
        keys = self._keys(batch)
        if not keys:
            return True
        if not self.node.redis_available:
            self._degraded(batch, "redis down")
            return True
        now = self.node.d.clock.now()
        got: list[tuple[str, str]] = []
        try:
            for key, limit in keys:
                lease = await self.leases.acquire(key, limit, self.node.name, self.ttl, now)
                if lease is None:
                    for k, taken in got:
                        await self.leases.release(k, taken)
                    await self._hand_back(batch, key)
                    return False
                got.append((key, lease))
        except REDIS_DOWN as exc:
            self.node.redis_down(exc)
            self._degraded(batch, str(exc))     # leases taken lapse by themselves
            return True
        self.node.redis_up()
        self._local = False
        renew = asyncio.create_task(self._renew(got), name=f"lease-renew-{batch.token}")
        self._held[batch.token] = (got, renew)
        return True

    async def after_close(self, batch: Batch) -> None:
        held = self._held.pop(batch.token, None)
        if held is None:
            return
        got, renew = held
        renew.cancel()
        try:
            for key, lease in got:
                await self.leases.release(key, lease)
        except REDIS_DOWN as exc:
            self.node.redis_down(exc)           # they lapse after ttl

    async def _hand_back(self, batch: Batch, key: str) -> None:
        runner = self.node.d.runner
        now = self.node.d.clock.now()
        runner.scheduler.complete(batch, DestinationHealth.OK, now)
        self.handed_back += 1
        due = now + RETRY * (1.0 + random.random())
        event(log, "connection_lease_wait", level=logging.DEBUG, key=key,
              destination=batch.destination.name, recipients=len(batch.works()))
        await runner.put_back(batch.works(), due)

    def _degraded(self, batch: Batch, why: str) -> None:
        if not self._local:
            event(log, "connection_leases_local", level=logging.WARNING,
                  destination=batch.destination.name, error=why[:200])
        self._local = True

    async def _renew(self, got: list[tuple[str, str]]) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            now = self.node.d.clock.now()
            for key, lease in got:
                try:
                    if not await self.leases.renew(key, lease, self.ttl, now):
                        event(log, "connection_lease_lost", level=logging.WARNING, key=key)
                except REDIS_DOWN as exc:
                    self.node.redis_down(exc)


async def wire(node: Any) -> None:
    d = node.d
    if d.tenants is not None:
        d.tenants.shared_quota = QuotaHook(node, SharedQuota(node.redis))
    if d.runner is not None:
        d.runner.gate = LeaseGate(node, Leases(node.redis))
        if d.runner.shaping is not None:
            d.runner.shaping.leased = True      # no idle connection outlives its lease
