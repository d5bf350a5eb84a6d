"""Per-destination queues, concurrency windows and destination health.

Pure (ARCHITECTURE §2): never awaits, never reads a clock; `now` is an argument
and decisions are returned as values (KumoMTA `timeq`'s Items/Sleep/Empty).

Public API:
    Work(item, destination)                 one recipient ready for an attempt
    Batch(destination, messages, token)     one SMTP connection's worth of work
    Sleep(until) / Idle()
    Scheduler(*, concurrency, max_messages_per_connection,
              max_recipients_per_transaction, backoff, hold_max=60.0)
    Scheduler.from_config(cfg)              the limits of cfg.delivery (DeliverySettings)
      .reconfigure(cfg)                     apply a reloaded config's limits: the next
                                            next_batch uses them; batches in flight
                                            finish as they were
      .add(works, now)
      .next_batch(now) -> Batch | Sleep | Idle
      .complete(batch, health, now) -> list[Work]
      .drain(destination_name=None) -> list[Work]
      .suspend(name) -> list[Work] / .resume(name) / .is_suspended(name) / .flush(name, now)
      .pause_until(name) -> float | None    when the destination's backoff pause ends
      .pending_count() / .inflight_count() / .destination_states()

next_batch: round-robin over destinations (least recently served first) that
have pending work and a free slot in their window — `concurrency` when
ACTIVE, 1 while PROBING, 0 while PAUSED. Returns
  Batch  — start one connection now;
  Sleep  — nothing can start before `until` (a pause ends then);
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


@dataclass(frozen=True)
class Work:
    item: QueuedRecipient
    destination: Destination

    @property
    def key(self) -> tuple[str, int]:
        return (self.item.queue_id, self.item.rcpt_idx)


@dataclass(frozen=True)
class Batch:
    destination: Destination
    messages: tuple[tuple[Work, ...], ...]
    token: int

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
    pending: OrderedDict[str, list[Work]] = field(default_factory=OrderedDict)
    npending: int = 0
    state: DestState = DestState.ACTIVE
    streak: int = 0
    paused_until: float | None = None
    epoch: int = 0          # bumped on every state change
    connections: int = 0    # batches in flight
    ninflight: int = 0      # recipients in flight


@dataclass(frozen=True)
class _Flight:
    name: str
    epoch: int
    keys: frozenset[tuple[str, int]]


class Scheduler:
    def __init__(self, *, concurrency: int, max_messages_per_connection: int,
                 max_recipients_per_transaction: int, backoff: tuple[float, ...],
                 hold_max: float = 60.0):
        self._set_limits(concurrency, max_messages_per_connection,
                         max_recipients_per_transaction, backoff)
        self.hold_max = hold_max
        self._dests: OrderedDict[str, _Dest] = OrderedDict()
        self._inflight: dict[int, _Flight] = {}
        self._held: set[tuple[str, int]] = set()
        self._npending = 0
        self._ninflight = 0
        self._next_token = 1
        # Operator suspension is not a health state: a suspended destination
        # keeps its health (and backoff) and gets no batches until resumed.
        self._suspended: set[str] = set()

    @classmethod
    def from_config(cls, cfg: SchedulerConfig, hold_max: float = 60.0) -> Scheduler:
        d = cfg.delivery
        return cls(concurrency=d.concurrency_per_destination,
                   max_messages_per_connection=d.max_messages_per_connection,
                   max_recipients_per_transaction=d.max_recipients_per_transaction,
                   backoff=tuple(d.destination_backoff), hold_max=hold_max)

    def reconfigure(self, cfg: SchedulerConfig) -> None:
        """Apply the limits of a reloaded configuration. Windows and batch
        sizes change from the next `next_batch`; pauses already running keep
        their end; batches in flight finish as they were dispatched."""
        d = cfg.delivery
        self._set_limits(d.concurrency_per_destination, d.max_messages_per_connection,
                         d.max_recipients_per_transaction, d.destination_backoff)

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
        for w in works:
            if w.key in self._held:
                continue
            d = self._dests.get(w.destination.name)
            if d is None:
                d = self._dests[w.destination.name] = _Dest(w.destination)
            d.pending.setdefault(w.item.queue_id, []).append(w)
            d.npending += 1
            self._npending += 1
            self._held.add(w.key)

    def next_batch(self, now: float) -> Batch | Sleep | Idle:
        wake: float | None = None
        for name, d in self._dests.items():
            if not d.npending or name in self._suspended:
                continue
            if d.state is DestState.PAUSED:
                assert d.paused_until is not None
                if now < d.paused_until:
                    wake = d.paused_until if wake is None else min(wake, d.paused_until)
                    continue
                self._move(d, DestState.PROBING)
                d.paused_until = None
            if d.connections < self._window(d):
                batch = self._take(d)
                self._dests.move_to_end(name)   # round robin: served goes last
                return batch
        return Idle() if wake is None else Sleep(wake)

    def _window(self, d: _Dest) -> int:
        return {DestState.ACTIVE: self.concurrency, DestState.PROBING: 1,
                DestState.PAUSED: 0}[d.state]

    def _take(self, d: _Dest) -> Batch:
        free = self._window(d) - d.connections
        share = math.ceil(len(d.pending) / free)     # messages for this connection
        budget = self.max_messages                   # transactions for this connection
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
        d.ninflight += n
        self._ninflight += n
        token, self._next_token = self._next_token, self._next_token + 1
        self._inflight[token] = _Flight(d.destination.name, d.epoch,
                                        frozenset(w.key for t in txns for w in t))
        return Batch(d.destination, tuple(txns), token)

    # -- results ----------------------------------------------------------
    def complete(self, batch: Batch, health: DestinationHealth, now: float) -> list[Work]:
        flight = self._inflight.pop(batch.token, None)
        if flight is None:
            raise ValueError(f"batch {batch.token} is not in flight")
        d = self._dests[flight.name]
        d.connections -= 1
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
        self._forget_if_idle(d)
        return handed_back

    def _move(self, d: _Dest, new: DestState) -> None:
        d.state = DESTINATION.move(d.state, new, subject=d.destination.name)
        d.epoch += 1

    def drain(self, destination_name: str | None = None) -> list[Work]:
        names = list(self._dests) if destination_name is None else [destination_name]
        out: list[Work] = []
        for name in names:
            d = self._dests.get(name)
            if d is not None:
                out.extend(self._drain_one(d))
                self._forget_if_idle(d)
        return out

    def _drain_one(self, d: _Dest) -> list[Work]:
        out = [w for works in d.pending.values() for w in works]
        d.pending.clear()
        d.npending = 0
        self._npending -= len(out)
        self._held.difference_update(w.key for w in out)
        return out

    def _forget_if_idle(self, d: _Dest) -> None:
        # Unhealthy destinations are remembered so a new message does not
        # open `concurrency` connections to a host we know is down.
        if not d.npending and not d.connections and d.state is DestState.ACTIVE:
            del self._dests[d.destination.name]

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
        d = self._dests.get(name)
        if d is not None and d.state is DestState.PAUSED:
            d.paused_until = now

    def pause_until(self, name: str) -> float | None:
        """When the backoff pause of destination `name` ends (None: it is not
        paused, or not known)."""
        d = self._dests.get(name)
        return d.paused_until if d is not None else None

    # -- read model -------------------------------------------------------
    def pending_count(self) -> int:
        return self._npending

    def inflight_count(self) -> int:
        return self._ninflight

    def destination_states(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {
            name: {"state": d.state.value, "pending": d.npending, "inflight": d.ninflight,
                   "connections": d.connections, "paused_until": d.paused_until,
                   "streak": d.streak, "suspended": name in self._suspended}
            for name, d in self._dests.items()}
        for name in self._suspended - set(out):
            out[name] = {"state": "active", "pending": 0, "inflight": 0, "connections": 0,
                         "paused_until": None, "streak": 0, "suspended": True}
        return out
