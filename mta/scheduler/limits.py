"""Traffic shaping inside the scheduler: which source may open the next
connection to a queue, and for how many messages (issue 15).

Pure, like the rest of scheduler/: `now` is an argument; the runtime's
`Shaper` (runtime/shaping.py) supplies the limits as values and the
warm-up counters as objects this module reads and charges.

Public API:
    Source(name, address="", ehlo="")   an egress source ("default": the OS
                                        picks the address, the EHLO is the
                                        server's host name)
    DEFAULT_SOURCE
    Plan(connection_limit=None, max_deliveries=None, message_rate=None,
         connection_rate=None, provider="", provider_connection_limit=None,
         provider_message_rate=None)    one queue's limits; None = the
                                        [delivery] default (connections,
                                        deliveries) or unlimited (rates)
    Warmup                              Protocol: a source's warm-up
                                        (mta.policy.warmup.Warmup has it)
    Shaper                              Protocol: .plan(destination),
                                        .sources(pool), .spill(pool),
                                        .warmup(source) -> Warmup | None
    Grant(source, messages, metered)    a connection may start now, carrying
                                        at most `messages` transactions
                                        (metered: a rate or warm-up cut it)
    Limiter(shaper)
      .admit(queue, plan, pool, sources_busy, *, window, probing, max_messages,
             now) -> Grant | float | None
                                        Grant; or the time a limit opens
                                        (float); or None (a connection
                                        window is full: wait for a batch)
      .charge(queue, plan, grant, messages, now) / .release(plan)
      .forget(queue, now)               drop idle rate state of a queue
      Limiter.within(plan, seconds) -> int | None   messages its rates let go
                                        in that time (None: unlimited)
    plan_state(plan, pool, busy) -> dict   a queue's shaping, for destination_states

Rules:
  * Per source (KumoMTA's (source, site) ready queue): `connection_limit`
    connections, `connection_rate` new connections and `message_rate`
    messages (GCRA). A probing destination has one connection in all.
  * Per provider, across its sites and sources: `provider_connection_limit`
    and `provider_message_rate`.
  * Warm-up: a source whose warm-up allows nothing now is skipped; when
    the pool has a warming source, warming sources go first (their day's
    volume is what the schedule wants), and the warm ones take the rest
    only when the pool allows spill; otherwise the rest waits (deferred,
    never bounced).
  * Among the sources that may go, round robin per pool, so a pool's
    sources share the work.
  * Rate state outlives an idle queue until it is back to a fresh bucket
    (forget): a queue that empties and refills cannot reset its rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mta.core.envelope import Destination
from mta.policy.gcra import Gcra, RateSpec

__all__ = ["DEFAULT_SOURCE", "Grant", "Limiter", "Plan", "Shaper", "Source", "plan_state"]


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    address: str = ""
    ehlo: str = ""


DEFAULT_SOURCE = Source("default")


@dataclass(frozen=True, slots=True)
class Plan:
    connection_limit: int | None = None
    max_deliveries: int | None = None
    message_rate: RateSpec | None = None
    connection_rate: RateSpec | None = None
    provider: str = ""
    provider_connection_limit: int | None = None
    provider_message_rate: RateSpec | None = None


class Warmup(Protocol):
    """A source's warm-up as the scheduler reads it (mta.policy.warmup.Warmup)."""
    def cap(self, now: float) -> int | None: ...
    def allowed(self, now: float) -> int | None: ...
    def next_slot(self, now: float) -> float | None: ...
    def consume(self, n: int, now: float) -> None: ...


class Shaper(Protocol):
    def plan(self, destination: Destination) -> Plan:
        """The limits of the queue `destination` names."""

    def sources(self, pool: str) -> Sequence[Source]:
        """The pool's sources, never empty ("" = the default pool)."""

    def spill(self, pool: str) -> bool:
        """May warm sources take what the pool's warming sources cannot?"""

    def warmup(self, source: str) -> Warmup | None:
        """The source's warm-up, None when it is warm (no schedule)."""


@dataclass(frozen=True, slots=True)
class Grant:
    source: Source
    messages: int
    metered: bool = False     # a rate or warm-up set `messages`: send them on
                              # this one connection rather than spread them


@dataclass
class _Provider:
    connections: int = 0
    rate: Gcra | None = None


def _turned(items: list[tuple[Source, Warmup | None]],
            turn: int) -> list[tuple[Source, Warmup | None]]:
    if len(items) < 2:
        return items
    k = turn % len(items)
    return items[k:] + items[:k]


def _wake(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


class Limiter:
    def __init__(self, shaper: Shaper | None = None):
        self.shaper = shaper
        self._rates: dict[str, dict[tuple[str, str], Gcra]] = {}   # queue → (source, kind)
        self._providers: dict[str, _Provider] = {}
        self._rr: dict[str, int] = {}      # pool → grants so far (round robin)
        self._sweep_at = 1024

    def _gcra(self, queue: str, source: str, kind: str, spec: RateSpec) -> Gcra:
        rates = self._rates.setdefault(queue, {})
        g = rates.get((source, kind))
        if g is None:
            g = rates[(source, kind)] = Gcra(spec)
        elif g.rate != spec:
            g.reconfigure(spec)
        return g

    def _provider(self, plan: Plan) -> _Provider | None:
        if not plan.provider:
            return None
        p = self._providers.get(plan.provider)
        if p is None:
            p = self._providers[plan.provider] = _Provider()
        spec = plan.provider_message_rate
        if spec is None:
            p.rate = None
        elif p.rate is None:
            p.rate = Gcra(spec)
        elif p.rate.rate != spec:
            p.rate.reconfigure(spec)
        return p

    def sources(self, queue: str, pool: str, now: float) -> list[tuple[Source, Warmup | None]]:
        """The pool's sources in the order they may be tried, each with its
        warm-up: warming sources first when the pool has any (and only those
        unless it may spill); round robin inside each group, turned by every
        grant in the pool (whatever the queue: a pool's sources share its
        traffic)."""
        if self.shaper is None:
            return [(DEFAULT_SOURCE, None)]
        out: list[tuple[Source, Warmup | None]] = [
            (s, self.shaper.warmup(s.name)) for s in self.shaper.sources(pool)]
        turn = self._rr.get(pool, 0)
        warming = [p for p in out if p[1] is not None and p[1].cap(now) is not None]
        if not warming:
            return _turned(out, turn)
        warm = [p for p in out if p[1] is None or p[1].cap(now) is None]
        if not self.shaper.spill(pool):
            return _turned(warming, turn)
        return _turned(warming, turn) + _turned(warm, turn)

    def admit(self, queue: str, plan: Plan, pool: str, busy: dict[str, int], *, window: int,
              probing: bool, max_messages: int, now: float) -> Grant | float | None:
        provider = self._provider(plan)
        if provider is not None and plan.provider_connection_limit is not None \
                and provider.connections >= plan.provider_connection_limit:
            return None
        if probing and sum(busy.values()) >= 1:
            return None
        per_source = 1 if probing else (plan.connection_limit or window)
        wake: float | None = None
        full = True
        for source, warmup in self.sources(queue, pool, now):
            if busy.get(source.name, 0) >= per_source:
                continue
            full = False
            room = max_messages if plan.max_deliveries is None else plan.max_deliveries
            size = room
            if warmup is not None:
                allowed = warmup.allowed(now)
                if allowed is not None:
                    if allowed < 1:
                        wake = _wake(wake, warmup.next_slot(now) or now + 1.0)
                        continue
                    room = min(room, allowed)
            if plan.connection_rate is not None:
                g = self._gcra(queue, source.name, "connection", plan.connection_rate)
                if g.available(now) < 1:
                    wake = _wake(wake, g.next_free(now))
                    continue
            if plan.message_rate is not None:
                g = self._gcra(queue, source.name, "message", plan.message_rate)
                avail = g.available(now)
                if avail < 1:
                    wake = _wake(wake, g.next_free(now))
                    continue
                room = min(room, avail)
            if provider is not None and provider.rate is not None:
                avail = provider.rate.available(now)
                if avail < 1:
                    wake = _wake(wake, provider.rate.next_free(now))
                    continue
                room = min(room, avail)
            self._rr[pool] = self._rr.get(pool, 0) + 1
            return Grant(source, room, metered=room < size)
        if full:
            return None
        return wake

    def charge(self, queue: str, plan: Plan, grant: Grant, messages: int, now: float) -> None:
        """A connection started with `messages` transactions on grant.source."""
        name = grant.source.name
        if plan.connection_rate is not None:
            self._gcra(queue, name, "connection", plan.connection_rate).admit(now, 1)
        if plan.message_rate is not None and messages:
            self._gcra(queue, name, "message", plan.message_rate).admit(now, messages)
        provider = self._provider(plan)
        if provider is not None:
            provider.connections += 1
            if provider.rate is not None and messages:
                provider.rate.admit(now, messages)
        if self.shaper is not None and messages:
            warmup = self.shaper.warmup(name)
            if warmup is not None:
                warmup.consume(messages, now)

    def release(self, plan: Plan) -> None:
        """A connection charged under `plan` ended."""
        if plan.provider:
            p = self._providers.get(plan.provider)
            if p is not None and p.connections > 0:
                p.connections -= 1

    def forget(self, queue: str, now: float) -> None:
        """The queue is idle: drop its rate state once it is as good as new
        (a fresh bucket is the same state). Queues left with a running
        bucket are swept later, when there are many of them."""
        self._prune(queue, now)
        if len(self._rates) > self._sweep_at:
            for name in list(self._rates):
                self._prune(name, now)
            self._sweep_at = max(1024, 2 * len(self._rates))

    def _prune(self, queue: str, now: float) -> None:
        rates = self._rates.get(queue)
        if rates is None:
            return
        for key in [k for k, g in rates.items() if g.available(now) >= g.burst]:
            del rates[key]
        if not rates:
            del self._rates[queue]

    @staticmethod
    def within(plan: Plan, seconds: float) -> int | None:
        """How many messages the plan's rates let go in `seconds` (None: no
        rate limits them)."""
        rates = [r for r in (plan.message_rate, plan.provider_message_rate) if r is not None]
        if not rates:
            return None
        return min(Gcra(r).burst + math.ceil(r.per_second * seconds) for r in rates)

    def provider_connections(self) -> dict[str, int]:
        return {name: p.connections for name, p in self._providers.items() if p.connections}


def plan_state(plan: Plan, pool: str, busy: Mapping[str, int]) -> dict[str, object]:
    """What shaping adds to a queue's destination_states() entry (nothing
    when it is unshaped): its limits, provider, pool, connections per source."""
    out: dict[str, object] = {}
    if plan != Plan():
        out["limits"] = {k: v if isinstance(v, int) else str(v)
                         for k, v in (("connection_limit", plan.connection_limit),
                                      ("max_deliveries", plan.max_deliveries),
                                      ("message_rate", plan.message_rate),
                                      ("connection_rate", plan.connection_rate))
                         if v is not None}
        if plan.provider:
            out["provider"] = plan.provider
    if pool:
        out["pool"] = pool
    if busy and set(busy) != {DEFAULT_SOURCE.name}:
        out["sources"] = dict(busy)
    return out
