"""Per-destination queues, concurrency windows and destination health.

Pure (ARCHITECTURE §2): never awaits, never reads a clock; `now` is an argument
and decisions are returned as values (KumoMTA `timeq`'s Items/Sleep/Empty).

Public API:
    Work(item, destination, pool="")        one recipient ready for an attempt;
                                            .queue: its queue (queue_name)
    queue_name(destination, pool="")        "NAME" or "NAME@POOL"
    Batch(destination, messages, token, source)
                                            one SMTP connection's worth of work,
                                            from egress `source` (limits.Source)
    Sleep(until) / Idle()
    Scheduler(*, concurrency, max_messages_per_connection,
              max_recipients_per_transaction, backoff, hold_max=60.0, shaper=None)
    Scheduler.from_config(cfg, shaper=None) the limits of cfg.delivery (DeliverySettings)
      .reconfigure(cfg)                     a reloaded config's limits, replanned, for
                                            the next batches (in flight: unchanged)
      .replan(name=None)                    the shaper's limits again (None: all)
      .limiter                              the shaping state (limits.Limiter)
      .add(works, now)
      .next_batch(now) -> Batch | Sleep | Idle
      .complete(batch, health, now) -> list[Work]
      .drain(destination_name=None) -> list[Work]
      .suspend(name) -> list[Work] / .resume(name) / .is_suspended(name) / .flush(name, now)
      .pause_until(name) -> float | None    when the destination's backoff pause ends
      .take_handed_back() -> [(works, due)] a metered queue's excess (see _metered)
      .pending_count() / .inflight_count() / .destination_states()

Queues: one per destination and egress pool (issue 15: a destination is a
domain, an MX site several domains share, a route or the sandbox). Each
queue has a `Plan` from the shaper (limits.py: connections per source,
deliveries per connection, GCRA message and connection rates, a provider's
limits across its sites, warm-up per source); without a shaper every plan
is empty and the [delivery] limits apply as before.

next_batch: round-robin over queues (least recently served first) that
have pending work and a free slot in their window — the plan's
connection_limit or `concurrency` per source when ACTIVE, 1 in all while
PROBING, 0 while PAUSED — and whose rates and warm-up allow a connection
now (limits.Limiter.admit). Returns
  Batch  — start one connection now;
  Sleep  — nothing can start before `until` (a pause ends, a rate or a
           warm-up slot opens then);
  Idle   — nothing can start until add() or complete() is called (no pending
           work, or every destination with pending work has a full window).

A batch groups recipients by queue_id; each inner tuple is one SMTP
transaction of at most max_recipients_per_transaction recipients, and a
batch holds at most max_messages_per_connection transactions. When several
slots are free the pending messages are spread over them (ceil(messages /
free slots) per connection) rather than serialised on one connection.

complete: frees the slot and applies DestinationHealth (state.py, the
`DESTINATION` state machine of mta.core.statemachine). A bad
batch pauses the destination for backoff[min(streak-1, len-1)], streak being
the number of consecutive bad batches including this one. Only a batch
dispatched since the destination's last state change moves the state: when a
destination with 20 connections open goes down, the 20 failures are one
event, not a streak of 20. When a pause is at least `hold_max` long, the
destination's pending work is handed back (the runtime puts it back into the
spool without counting an attempt) so a dead destination cannot fill the
in-memory window and starve healthy ones; shorter pauses keep it here.

Invariants:
  * a recipient (queue_id, rcpt_idx) is held at most once (pending or in
    flight); adding it again is ignored;
  * memory is what the runtime added and has not seen completed/drained;
    healthy destinations with nothing pending or in flight are forgotten.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mta.core.envelope import Destination, QueuedRecipient
from mta.core.outcome import DestinationHealth
from mta.scheduler.limits import (DEFAULT_SOURCE, Grant, Limiter, Plan, Shaper, Source,
                                  plan_state)
from mta.scheduler.state import DESTINATION, DestState


class DeliverySettings(Protocol):
    """The keys of `[delivery]` the scheduler owns (mta.config's
    DeliveryConfig has them; the scheduler may not import config)."""
    @property
    def concurrency_per_destination(self) -> int: ...
    @property
    def max_messages_per_connection(self) -> int: ...
    @property
    def max_recipients_per_transaction(self) -> int: ...
    @property
    def destination_backoff(self) -> Sequence[float]: ...


class SchedulerConfig(Protocol):
    """A whole configuration as the scheduler reads it (mta.config.Config)."""
    @property
    def delivery(self) -> DeliverySettings: ...


def queue_name(destination: str, pool: str = "") -> str:
    """The scheduler's queue of a destination for an egress pool: the
    destination's name for the default pool, "NAME@POOL" otherwise."""
    return f"{destination}@{pool}" if pool else destination


@dataclass(frozen=True)
class Work:
    item: QueuedRecipient
    destination: Destination
    pool: str = ""            # egress pool ("" = the default one)

    @property
    def key(self) -> tuple[str, int]:
        return (self.item.queue_id, self.item.rcpt_idx)

    @property
    def queue(self) -> str:
        return queue_name(self.destination.name, self.pool)


@dataclass(frozen=True)
class Batch:
    destination: Destination
    messages: tuple[tuple[Work, ...], ...]
    token: int
    source: Source = DEFAULT_SOURCE     # the egress source the connection binds

    def works(self) -> list[Work]:
        return [w for txn in self.messages for w in txn]


@dataclass(frozen=True)
class Sleep:
    until: float


@dataclass(frozen=True)
class Idle:
    pass


@dataclass
class _Dest:
    destination: Destination
    queue: str
    pool: str
    plan: Plan
    pending: OrderedDict[str, list[Work]] = field(default_factory=OrderedDict)
    npending: int = 0
    state: DestState = DestState.ACTIVE
    streak: int = 0
    paused_until: float | None = None
    epoch: int = 0          # bumped on every state change
    connections: int = 0    # batches in flight
    ninflight: int = 0      # recipients in flight
    busy: dict[str, int] = field(default_factory=dict)   # connections per source


@dataclass(frozen=True)
class _Flight:
    name: str               # the queue
    epoch: int
    keys: frozenset[tuple[str, int]]
    source: str
    plan: Plan


class Scheduler:
    def __init__(self, *, concurrency: int, max_messages_per_connection: int,
                 max_recipients_per_transaction: int, backoff: tuple[float, ...],
                 hold_max: float = 60.0, shaper: Shaper | None = None):
        self._set_limits(concurrency, max_messages_per_connection,
                         max_recipients_per_transaction, backoff)
        self.hold_max = hold_max
        self.limiter = Limiter(shaper)
        self._dests: OrderedDict[str, _Dest] = OrderedDict()
        self._inflight: dict[int, _Flight] = {}
        self._held: set[tuple[str, int]] = set()
        self._npending = 0
        self._ninflight = 0
        self._next_token = 1
        # Operator suspension is not a health state: a suspended destination
        # keeps its health (and backoff) and gets no batches until resumed.
        self._suspended: set[str] = set()
        self._handed_back: list[tuple[list[Work], float]] = []

    @classmethod
    def from_config(cls, cfg: SchedulerConfig, hold_max: float = 60.0,
                    shaper: Shaper | None = None) -> Scheduler:
        d = cfg.delivery
        return cls(concurrency=d.concurrency_per_destination,
                   max_messages_per_connection=d.max_messages_per_connection,
                   max_recipients_per_transaction=d.max_recipients_per_transaction,
                   backoff=tuple(d.destination_backoff), hold_max=hold_max, shaper=shaper)

    def replan(self, name: str | None = None) -> None:
        """Ask the shaper again for the limits of destination `name` (every
        queue when None): after a reload or an automation action. Batches
        in flight keep the plan they started with."""
        shaper = self.limiter.shaper
        for d in self._dests.values():
            if name is None or d.destination.name == name:
                d.plan = shaper.plan(d.destination) if shaper else Plan()

    def reconfigure(self, cfg: SchedulerConfig) -> None:
        """Apply the limits of a reloaded configuration. Windows and batch
        sizes change from the next `next_batch`; pauses already running keep
        their end; batches in flight finish as they were dispatched."""
        d = cfg.delivery
        self._set_limits(d.concurrency_per_destination, d.max_messages_per_connection,
                         d.max_recipients_per_transaction, d.destination_backoff)
        self.replan()

    def _set_limits(self, concurrency: int, max_messages: int, max_rcpts: int,
                    backoff: Iterable[float]) -> None:
        backoff = tuple(backoff)
        if min(concurrency, max_messages, max_rcpts) < 1:
            raise ValueError("scheduler limits must be >= 1")
        if not backoff or any(b <= 0 for b in backoff):
            raise ValueError(f"backoff must be non-empty and positive: {backoff!r}")
        self.concurrency = concurrency
        self.max_messages = max_messages
        self.max_rcpts = max_rcpts
        self.backoff = backoff

    # -- adding and taking work -------------------------------------------
    def add(self, works: Iterable[Work], now: float) -> None:
        shaper = self.limiter.shaper
        for w in works:
            if w.key in self._held:
                continue
            queue = w.queue
            d = self._dests.get(queue)
            if d is None:
                plan = shaper.plan(w.destination) if shaper else Plan()
                d = self._dests[queue] = _Dest(w.destination, queue, w.pool, plan)
            d.pending.setdefault(w.item.queue_id, []).append(w)
            d.npending += 1
            self._npending += 1
            self._held.add(w.key)

    def next_batch(self, now: float) -> Batch | Sleep | Idle:
        wake: float | None = None
        for name, d in self._dests.items():
            if not d.npending or self._is_held(d):
                continue
            if d.state is DestState.PAUSED:
                assert d.paused_until is not None
                if now < d.paused_until:
                    wake = d.paused_until if wake is None else min(wake, d.paused_until)
                    continue
                self._move(d, DestState.PROBING)
                d.paused_until = None
            grant = self.limiter.admit(
                name, d.plan, d.pool, d.busy, window=self.concurrency,
                probing=d.state is DestState.PROBING, max_messages=self.max_messages, now=now)
            if isinstance(grant, Grant):
                batch = self._take(d, grant, now)
                self._dests.move_to_end(name)   # round robin: served goes last
                return batch
            if grant is not None:
                wake = grant if wake is None else min(wake, grant)
                self._metered(d, grant, now)
        return Idle() if wake is None else Sleep(wake)

    def _metered(self, d: _Dest, until: float, now: float) -> None:
        """A rate or a warm-up holds queue `d` back until `until`: keep in
        memory only what may go within hold_max seconds; the rest is handed
        back (take_handed_back), due when it could go, so a slow site never
        fills the runner's lease window and starves the others."""
        keep: int | None = 0
        due = until
        if until - now < self.hold_max:
            keep, due = self.limiter.within(d.plan, self.hold_max), now + self.hold_max
        if keep is None or d.npending <= keep:
            return
        back: list[Work] = []
        for qid in reversed(list(d.pending)):       # the newest messages go back first
            if d.npending - len(back) <= keep:
                break
            back.extend(d.pending.pop(qid))
        d.npending -= len(back)
        self._npending -= len(back)
        self._held.difference_update(w.key for w in back)
        self._handed_back.append((back, due))

    def take_handed_back(self) -> list[tuple[list[Work], float]]:
        """Work next_batch handed back (a metered queue's excess), each list
        with when it is due: the runtime returns it to the spool."""
        out, self._handed_back = self._handed_back, []
        return out

    def _is_held(self, d: _Dest) -> bool:
        return d.queue in self._suspended or d.destination.name in self._suspended

    def _window(self, d: _Dest) -> int:
        if d.state is DestState.ACTIVE:
            return d.plan.connection_limit or self.concurrency
        return 1 if d.state is DestState.PROBING else 0

    def _queues_of(self, name: str) -> list[str]:
        """The queues of destination `name` (one per egress pool), or the
        queue called `name`."""
        if name in self._dests:
            return [name]
        return [q for q, d in self._dests.items() if d.destination.name == name]

    def _take(self, d: _Dest, grant: Grant, now: float) -> Batch:
        free = max(1, self._window(d) - d.connections)
        # messages for this connection: spread over the free slots, unless a
        # rate or warm-up metered them (then one connection carries them)
        share = grant.messages if grant.metered else math.ceil(len(d.pending) / free)
        budget = max(1, grant.messages)              # transactions for this connection
        txns: list[tuple[Work, ...]] = []
        while share and budget and d.pending:
            qid, works = next(iter(d.pending.items()))
            while works and budget:
                txns.append(tuple(works[:self.max_rcpts]))
                del works[:self.max_rcpts]
                budget -= 1
            if not works:
                del d.pending[qid]
                share -= 1
        n = sum(len(t) for t in txns)
        d.npending -= n
        self._npending -= n
        d.connections += 1
        source = grant.source.name
        d.busy[source] = d.busy.get(source, 0) + 1
        self.limiter.charge(d.queue, d.plan, grant, len(txns), now)
        d.ninflight += n
        self._ninflight += n
        token, self._next_token = self._next_token, self._next_token + 1
        self._inflight[token] = _Flight(d.queue, d.epoch,
                                        frozenset(w.key for t in txns for w in t),
                                        source, d.plan)
        return Batch(d.destination, tuple(txns), token, grant.source)

    # -- results ----------------------------------------------------------
    def complete(self, batch: Batch, health: DestinationHealth, now: float) -> list[Work]:
        flight = self._inflight.pop(batch.token, None)
        if flight is None:
            raise ValueError(f"batch {batch.token} is not in flight")
        d = self._dests[flight.name]
        d.connections -= 1
        d.busy[flight.source] -= 1
        if not d.busy[flight.source]:
            del d.busy[flight.source]
        self.limiter.release(flight.plan)
        d.ninflight -= len(flight.keys)
        self._ninflight -= len(flight.keys)
        self._held -= flight.keys
        handed_back: list[Work] = []
        if flight.epoch == d.epoch:   # stale results (sent before the last change) don't count
            if health is DestinationHealth.OK:
                d.streak = 0
                if d.state is DestState.PROBING:
                    self._move(d, DestState.ACTIVE)
            else:
                d.streak += 1
                pause = self.backoff[min(d.streak - 1, len(self.backoff) - 1)]
                self._move(d, DestState.PAUSED)
                d.paused_until = now + pause
                if pause >= self.hold_max:
                    handed_back = self._drain_one(d)
        self._forget_if_idle(d, now)
        return handed_back

    def _move(self, d: _Dest, new: DestState) -> None:
        d.state = DESTINATION.move(d.state, new, subject=d.destination.name)
        d.epoch += 1

    def drain(self, destination_name: str | None = None) -> list[Work]:
        names = list(self._dests) if destination_name is None else \
            self._queues_of(destination_name)
        out: list[Work] = []
        for name in names:
            d = self._dests.get(name)
            if d is not None:
                out.extend(self._drain_one(d))
                self._forget_if_idle(d, None)
        return out

    def _drain_one(self, d: _Dest) -> list[Work]:
        out = [w for works in d.pending.values() for w in works]
        d.pending.clear()
        d.npending = 0
        self._npending -= len(out)
        self._held.difference_update(w.key for w in out)
        return out

    def _forget_if_idle(self, d: _Dest, now: float | None) -> None:
        # Unhealthy destinations are remembered so a new message does not
        # open `concurrency` connections to a host we know is down.
        if not d.npending and not d.connections and d.state is DestState.ACTIVE:
            del self._dests[d.queue]
            if now is not None:
                self.limiter.forget(d.queue, now)

    # -- operator control -------------------------------------------------
    def suspend(self, name: str) -> list[Work]:
        """Stop releasing batches for `name`; returns its pending work (the
        runtime puts it back in the spool). In-flight batches finish."""
        self._suspended.add(name)
        return self.drain(name)

    def resume(self, name: str) -> None:
        self._suspended.discard(name)

    def is_suspended(self, name: str) -> bool:
        return name in self._suspended

    def flush(self, name: str, now: float) -> None:
        """End a backoff pause now: the next batch probes the destination."""
        for q in self._queues_of(name):
            d = self._dests[q]
            if d.state is DestState.PAUSED:
                d.paused_until = now

    def pause_until(self, name: str) -> float | None:
        """When the backoff pause of destination `name` ends (None: it is not
        paused, or not known)."""
        ends = [self._dests[q].paused_until for q in self._queues_of(name)]
        return max((e for e in ends if e is not None), default=None)

    # -- read model -------------------------------------------------------
    def pending_count(self) -> int:
        return self._npending

    def inflight_count(self) -> int:
        return self._ninflight

    def destination_states(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {
            name: {"state": d.state.value, "pending": d.npending, "inflight": d.ninflight,
                   "connections": d.connections, "paused_until": d.paused_until,
                   "streak": d.streak, "suspended": self._is_held(d),
                   **plan_state(d.plan, d.pool, d.busy)}
            for name, d in self._dests.items()}
        for name in self._suspended - set(out):
            out[name] = {"state": "active", "pending": 0, "inflight": 0, "connections": 0,
                         "paused_until": None, "streak": 0, "suspended": True}
        return out
