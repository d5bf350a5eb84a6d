"""The cluster's shared traffic shaping, wired in (issue 19): site and
provider rates, automation-rule actions and warm-up usage on Redis
(mta/cluster/shaping.py).

One job: in a cluster, make a site's or provider's message (and
connection) rate and an egress source's warm-up budget hold for every node
together — checked as a batch is about to connect, after its connection
leases — and make an automation action that fires on one node (or its
lift) apply on every node.

API
    await wire(node)              (runtime/cluster.py WIRINGS, after
                                  cluster_limits.wire) wraps
                                  node.d.runner.gate in a ShapingGate, sets
                                  node.d.runner.rules.share to an ActionSync
                                  and adds the job "cluster_shaping" (SYNC_EVERY)
    ShapingGate(node, inner, rates, warmups)     a ConnectGate
        .rate_waits               batches a shared rate or warm-up sent back
        .held() / .handed_back    the lease gate's (runtime/cluster_limits.py)
    ActionSync(node, rules, actions)              runtime/automation.ActionShare
        await .fired(fired) / await .lifted(lifted)   publish (the rule's node)
        await .sync()             one poll: adopt, lift, re-publish
    rate_items(plan, batch) -> [(key, RateSpec, n)]

Rules
  * Rates: a batch to an "mx" site takes n = its transactions from
    "site:<site>|<source>:message" (the plan's message_rate, an automation
    rule's slower rate included), 1 from "site:<site>|<source>:connection"
    (connection_rate) and n from "provider:<name>:message" (the provider's
    total message rate) — all or nothing. Not admitted: its leases are
    released, the scheduler's slot freed and the batch goes back to the
    spool due when the rates allow it: no attempt counted, no deferral.
  * Warm-up: a batch from a source with a warm-up schedule takes n of the
    source's day on Redis (the same smoothing, a day's count and the
    sending days shared by every node naming the source alike; distinct
    names never meet); the node's counters become the cluster's. Refused:
    handed back, due at the source's next slot.
  * Known approximation: rates are taken before the warm-up; a batch the
    warm-up refuses has used its rate tokens (slower, never faster). The
    local scheduler has charged its own rates and warm-up already (as for
    a lease refused: runtime/cluster_limits.py).
  * Actions: a firing here is published at once (a key per action, TTL its
    end); every node polls each SYNC_EVERY seconds and applies what it
    lacks through ReplyRules.adopt (the local rule's own path, no ledger
    event: the firing node wrote the one event, and writes its expiry); a
    lift here leaves a tombstone every node applies through
    ReplyRules.lift_adopted (the lifting node wrote the one event). An
    action Redis lacks (Redis restarted, or down when it fired) is
    re-published by whichever node holds it.
  * Redis unreachable: the node's own scheduler limits and its own actions
    apply alone (logged once per outage); lifts made meanwhile are retried.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import redis.exceptions

from mta.cluster.shaping import SharedActions, SharedRates, SharedWarmup, reconcile
from mta.core import DestinationHealth
from mta.core.logfmt import event
from mta.policy.automation import Fired
from mta.policy.gcra import RateSpec
from mta.policy.warmup import Warmup, WarmupState
from mta.runtime.cluster_limits import REDIS_DOWN, ConnectGate
from mta.runtime.housekeeping import Job
from mta.scheduler import Batch
from mta.scheduler.limits import Plan

__all__ = ["SYNC_EVERY", "ActionSync", "ShapingGate", "rate_items", "wire"]

log = logging.getLogger("mta.cluster")

SYNC_EVERY = 1.0        # seconds between polls of the shared actions
DAY = 86400


def rate_items(plan: Plan, batch: Batch) -> list[tuple[str, RateSpec, int]]:
    """The cluster-wide rates a batch draws from."""
    if batch.destination.kind != "mx":
        return []
    n = len(batch.messages)
    site = f"site:{batch.destination.name}|{batch.source.name}"
    out: list[tuple[str, RateSpec, int]] = []
    if plan.message_rate is not None:
        out.append((f"{site}:message", plan.message_rate, n))
    if plan.connection_rate is not None:
        out.append((f"{site}:connection", plan.connection_rate, 1))
    if plan.provider and plan.provider_message_rate is not None:
        out.append((f"provider:{plan.provider}:message", plan.provider_message_rate, n))
    return out


class ShapingGate:
    def __init__(self, node: Any, inner: ConnectGate | None, rates: SharedRates,
                 warmups: SharedWarmup):
        self.node, self.inner, self.rates, self.warmups = node, inner, rates, warmups
        self.rate_waits = 0         # batches a shared rate or warm-up sent back
        self._local = False

    def held(self) -> int:
        """Batches holding connection leases now (the lease gate's)."""
        return int(getattr(self.inner, "held", lambda: 0)())

    @property
    def handed_back(self) -> int:
        """Batches the lease gate sent back (runtime/cluster_limits.py)."""
        return int(getattr(self.inner, "handed_back", 0))

    async def before_connect(self, batch: Batch) -> bool:
        if self.inner is not None and not await self.inner.before_connect(batch):
            return False
        shaping = self.node.d.runner.shaping
        if shaping is None:
            return True
        items = rate_items(shaping.plan(batch.destination), batch)
        warmup = shaping.warmup(batch.source.name)
        if not items and warmup is None:
            return True
        if not self.node.redis_available:
            self._degraded(batch, "redis down")
            return True
        now = self.node.d.clock.now()
        try:
            wait = await self.rates.take(items, now)
            due = now + wait if wait > 0 else None
            if due is None and warmup is not None:
                due = await self._warmup(batch, warmup, now)
        except REDIS_DOWN as exc:
            self.node.redis_down(exc)
            self._degraded(batch, str(exc))
            return True
        except redis.exceptions.RedisError as exc:      # a script error: local limits
            self._degraded(batch, str(exc))
            return True
        self.node.redis_up()
        self._local = False
        if due is None:
            return True
        if self.inner is not None:
            await self.inner.after_close(batch)       # its leases go back at once
        await self._hand_back(batch, due)
        return False

    async def after_close(self, batch: Batch) -> None:
        if self.inner is not None:
            await self.inner.after_close(batch)

    async def _warmup(self, batch: Batch, warmup: Warmup, now: float) -> float | None:
        """Take the batch from its source's shared day; None: admitted,
        else when to try again. The node's counters become the cluster's."""
        if warmup.cap(now) is None:
            return None                               # warm: nothing to share
        n, st, day = len(batch.messages), warmup.state, math.floor(now / DAY)
        share = Warmup(warmup.schedule, WarmupState(st.sending_days, day, 0)).allowed(now)
        floor = max(0, st.used - n) if st.day == day else 0
        ok, used, days, at = await self.warmups.take(batch.source.name, day, n, share,
                                                     st.sending_days, floor)
        if at == day:
            st.sending_days, st.day, st.used = days, day, used
        if ok:
            return None
        return warmup.next_slot(now) or now + 1.0

    async def _hand_back(self, batch: Batch, due: float) -> None:
        runner = self.node.d.runner
        now = self.node.d.clock.now()
        runner.scheduler.complete(batch, DestinationHealth.OK, now)
        self.rate_waits += 1
        event(log, "shaping_rate_wait", level=logging.DEBUG,
              destination=batch.destination.name, source=batch.source.name,
              wait=f"{due - now:.2f}s", recipients=len(batch.works()))
        await runner.put_back(batch.works(), max(due, now))

    def _degraded(self, batch: Batch, why: str) -> None:
        if not self._local:
            event(log, "shaping_rates_local", level=logging.WARNING,
                  destination=batch.destination.name, error=why[:200])
        self._local = True


class ActionSync:
    def __init__(self, node: Any, rules: Any, actions: SharedActions):
        self.node, self.rules, self.actions = node, rules, actions
        # lifted here: id -> (the lifted action's until, written to Redis yet)
        self._lifted: dict[str, tuple[float, bool]] = {}

    async def fired(self, fired: list[Fired]) -> None:
        if not self.node.redis_available:
            return                  # the first poll after Redis returns publishes them
        now = self.node.d.clock.now()
        try:
            for f in fired:
                self._lifted.pop(f.id, None)
                await self.actions.publish(f, self.node.name, now)
        except REDIS_DOWN as exc:
            self.node.redis_down(exc)

    async def lifted(self, lifted: list[Fired]) -> None:
        for f in lifted:            # before any await: no poll may re-adopt them
            self._lifted[f.id] = (max(f.until, self._lifted.get(f.id, (0.0, False))[0]),
                                  False)
        if self.node.redis_available:
            await self._write_lifts(self.node.d.clock.now())

    async def _write_lifts(self, now: float) -> None:
        for ident, (until, written) in list(self._lifted.items()):
            if until <= now:
                del self._lifted[ident]
            elif not written:
                try:
                    await self.actions.lift(ident, until, now)
                except REDIS_DOWN as exc:
                    self.node.redis_down(exc)
                    return
                self._lifted[ident] = (until, True)

    async def sync(self) -> None:
        """One poll: adopt what other nodes fired, end what they lifted,
        publish what Redis lacks."""
        if not self.node.redis_available:
            return                  # the heartbeat's ping says when it is back
        now = self.node.d.clock.now()
        try:
            await self._write_lifts(now)
            shared, lifted, _ = await self.actions.snapshot(now)
        except REDIS_DOWN as exc:
            self.node.redis_down(exc)
            return
        for ident, (until, _) in self._lifted.items():
            lifted[ident] = max(until, lifted.get(ident, 0.0))
        now = self.node.d.clock.now()
        local = {f.id: f for f in self.rules.automation.active(now)}
        plan = reconcile(local, shared, lifted, now)
        adopt = [f for f in plan.adopt if not (f.id in lifted and f.until <= lifted[f.id])]
        if adopt:
            await self.rules.adopt(adopt)
        if plan.lift:
            await self.rules.lift_adopted(plan.lift)
        if plan.publish:
            await self.fired(plan.publish)


async def wire(node: Any) -> None:
    d = node.d
    runner = d.runner
    if runner is None or runner.shaping is None:
        return
    runner.gate = ShapingGate(node, runner.gate, SharedRates(node.redis),
                              SharedWarmup(node.redis))
    if runner.rules is not None:
        sync = ActionSync(node, runner.rules, SharedActions(node.redis))
        runner.rules.share = sync
        node.add_job(Job("cluster_shaping", SYNC_EVERY, sync.sync))
