"""The DSNs the daemon owes senders: found, built and queued.

One job: after outcomes are recorded, build one report per message with
unreported final failures once none of its recipients is in flight (spool
`dsn_candidates`: the failures of one delivery pass share a DSN; recipients
still being retried do not hold it back), plus delay warnings when
`[delivery] delay_warning_after` is set, and enqueue each in the same
transaction that marks those recipients notified (spool `dsn_for`). Each
recipient's Last-Attempt-Date is its own last attempt (from the message's
attempts). The pass runs as the housekeeping job "dsn" (runtime/
housekeeping.py), at once when `wakeup` is set.

API
    DsnIssuer(spool, clock, hostname, retry, delay_warning_after,
              in_flight=lambda: set(), poke=lambda: None)
      .wakeup                 asyncio.Event: set it to ask for a pass now
      .note(updates)          the queue runner recorded these updates: wake
                              the pass when they may complete an owed DSN
      await .run() -> int     one pass; the number of DSNs queued
      .reconfigure(cfg)       retry policy and delay_warning_after of a
                              reloaded configuration

Invariants
  * A DSN is owed once a message with a failed recipient has none in
    flight; `note` remembers such messages so the pass runs when their last
    leased recipient is recorded (whatever its fate), not at the next timer
    tick. After a restart the first pass catches up on what was owed.
  * A DSN is queued with sender <> (it never gets a DSN or VERP itself), and
    its enqueue marks the original's recipients in the same transaction: a
    crash never sends one twice or loses one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from mta.config import Config
from mta.core import BOUNCED, EXPIRED, Clock, RecipientUpdate
from mta.core.logfmt import event
from mta.core.spill import HEAD_BYTES
from mta.mail.dsn import build_dsn
from mta.policy.retry import RetryPolicy
from mta.spool import DsnMark, NewMessage, Spool

__all__ = ["DsnIssuer"]

log = logging.getLogger("mta.queue")

CANDIDATES_PER_PASS = 100


class DsnIssuer:
    def __init__(self, *, spool: Spool, clock: Clock, hostname: str, retry: RetryPolicy,
                 delay_warning_after: float | None,
                 in_flight: Callable[[], set[str]] = set,
                 poke: Callable[[], None] = lambda: None):
        self.spool, self.clock, self.hostname = spool, clock, hostname
        self.retry, self.delay_warning_after = retry, delay_warning_after
        self.in_flight, self.poke = in_flight, poke
        self.wakeup = asyncio.Event()
        self._owing: set[str] = set()

    def reconfigure(self, cfg: Config) -> None:
        self.retry = RetryPolicy.from_config(cfg.delivery)
        self.delay_warning_after = cfg.delivery.delay_warning_after

    def note(self, updates: Iterable[RecipientUpdate]) -> None:
        wake = False
        for u in updates:
            if u.state in (BOUNCED, EXPIRED):
                self._owing.add(u.queue_id)
                wake = True
            elif u.queue_id in self._owing:
                wake = True
        if wake:
            self.wakeup.set()

    async def run(self) -> int:
        sent = 0
        now = self.clock.now()
        batches = [("failure", await self.spool.dsn_candidates(CANDIDATES_PER_PASS))]
        if self.delay_warning_after is not None:
            batches.append(("delay", await self.spool.delay_candidates(
                now, self.delay_warning_after, CANDIDATES_PER_PASS)))
        # Messages whose recipients are all out of flight need no wake-up
        # from a later record: if they owe a DSN, this pass (or the one a
        # record since has asked for) finds them.
        self._owing &= self.in_flight()
        for kind, cands in batches:
            for c in cands:
                self._owing.discard(c.queue_id)
                original = await self.spool.read_body(c.queue_id, limit=HEAD_BYTES)
                body = build_dsn(original=original, candidate=c, reporting_mta=self.hostname,
                                 queue_id=c.queue_id, now=now, kind=kind,
                                 retry_until=(self.retry.expires_at(c.received_at)
                                              if kind == "delay" else None),
                                 last_attempts=await self._last_attempts(c.queue_id))
                qid = await self.spool.enqueue(
                    NewMessage(sender="", recipients=(c.sender,), body=body, is_dsn=True,
                               listener="dsn"),
                    now, dsn_for=DsnMark(c.queue_id, tuple(r.rcpt_idx for r in c.recipients), kind))
                event(log, "dsn_queued", id=qid, original=c.queue_id, kind=kind, to=c.sender,
                      recipients=",".join(r.address for r in c.recipients))
                sent += 1
        if sent:
            self.poke()
        return sent

    async def _last_attempts(self, queue_id: str) -> dict[int, float]:
        """rcpt_idx -> time of its last delivery attempt (operator moves and
        reports that came back by mail are not attempts)."""
        view = await self.spool.get_message(queue_id)
        last: dict[int, float] = {}
        for a in view.attempts if view is not None else ():
            if not a.detail and a.at > last.get(a.rcpt_idx, 0.0):
                last[a.rcpt_idx] = a.at
        return last
