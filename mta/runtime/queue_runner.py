"""The runtime loop that moves work between spool, scheduler and delivery.

One job: lease due recipients from the spool in bounded batches, feed them to
the (pure) scheduler, start a delivery task for each `Batch` it releases,
and record what each attempt settled (mta.policy.outcomes). Its parts, each
in its own module:
    runtime/outbound.py       a batch's OutboundMessages (bodies, VERP)
    policy/outcomes.py        outcome → RecipientUpdate + AddressOutcome (pure)
    runtime/destinations.py   operator suspend/resume/flush
    runtime/dsn.py            the DSNs owed (`runner.dsn`; its pass is the
                              housekeeping job "dsn", runtime/housekeeping.py)

API
    QueueRunner(*, spool, scheduler, transport, sandbox_transport, retry, clock,
                routes, sandbox, mx_port, hostname, batch_size,
                delay_warning_after, max_pending=5000, verp=None,
                bounce_domain_for=None, observer=None)
      .start() / await .stop(timeout) / .poke()
      .reconfigure(cfg)         routes, retry policy, batch size, MX port, the
                                scheduler's limits, the DSN settings and the
                                transport's timeouts of a reloaded config
      await .suspend(name) / .resume(name) / .flush(name) -> int
      await .put_back(works, until)
      .dsn (DsnIssuer), .dsn_wakeup, .scheduler, .routes, .sandbox, .mx_port, .verp
      .gate                     None, or a ConnectGate each batch passes before it
                                connects (a cluster's leases: runtime/cluster_limits.py)
      .after_write              called after each successful record (e.g.
                                wake the webhook deliverers)

Invariants:
- Memory is bounded by `max_pending` + the in-flight window, never by the
  queue: deferred recipients stay in SQLite until due.
- Every leased recipient is either recorded or released; at shutdown,
  in-flight batches get `shutdown_timeout` to finish, then what is left is
  released (a crash instead resets leases at recovery).
- Decisions use `now` from the clock seam; no sleeping inside decisions.
- The observer (core.observe) hears one `recipient_outcome` per recipient
  update once it is recorded (bounced carries the hard/soft class of its
  address outcome), and one `attempt_finished` per batch.
- A failed attempt's status (log line `status=`, the ledger's bounced and
  expired `status`) is `mta.mail.dsn.recipient_status`, the same as the
  DSN's Status: the remote's enhanced code or the one core.reply derives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from mta.config import Config
from mta.core import (Clock, DestinationHealth, Observer, PermFailure, QueuedRecipient,
                      RecipientOutcome, RecipientUpdate, TempFailure)
from mta.core.envelope import AddressOutcome, Destination
from mta.core.logfmt import event
from mta.delivery.transport import OnSettled, OutboundMessage, ProgressTransport, Transport
from mta.mail.bounces.classify import classify
from mta.mail.dsn import recipient_status
from mta.mail.verp import VerpCodec
from mta.policy.outcomes import (Attempt, ReplyVocabulary, Settlement, destination_verdict,
                                 expired_unattempted, put_back, settle)
from mta.policy.retry import RetryPolicy
from mta.policy.routing import destination_for
from mta.runtime.automation import BatchReplies, ReplyRules
from mta.runtime.cluster_limits import ConnectGate
from mta.runtime.destinations import SUSPEND_RECHECK, DestinationControl
from mta.runtime.dsn import DsnIssuer
from mta.runtime.housekeeping import wait_event
from mta.runtime.outbound import Outbound
from mta.runtime.shaping import SAVE_EVERY, Shaping
from mta.scheduler import Batch, Idle, Scheduler, Sleep, Work
from mta.spool import Spool

__all__ = ["QueueRunner", "wait_event"]

log = logging.getLogger("mta.queue")

VOCABULARY = ReplyVocabulary(classify=classify, status=recipient_status)

IDLE_RECHECK = 60.0     # seconds: look at the spool at least this often


class QueueRunner:
    def __init__(self, *, spool: Spool, scheduler: Scheduler, transport: Transport,
                 sandbox_transport: Transport | None, retry: RetryPolicy, clock: Clock,
                 routes: Mapping[str, str], sandbox: bool, mx_port: int, hostname: str,
                 batch_size: int, delay_warning_after: float | None, max_pending: int = 5000,
                 verp: VerpCodec | None = None,
                 bounce_domain_for: Callable[[str], str | None] | None = None,
                 observer: Observer | None = None, shaping: Shaping | None = None):
        self.observer = observer or Observer()
        # Traffic shaping (issue 15): MX sites, pools, rules on replies.
        self.shaping = shaping
        self.rules = ReplyRules(shaping, self, spool, clock, self.observer) if shaping else None
        self._warmup_saved = 0.0
        self.spool, self.scheduler, self.clock = spool, scheduler, clock
        self.transport, self.sandbox_transport = transport, sandbox_transport
        self.routes, self.sandbox, self.mx_port = routes, sandbox, mx_port
        self.batch_size, self.max_pending = batch_size, max_pending
        self.outbound = Outbound(spool, verp, bounce_domain_for)
        self.destinations = DestinationControl(self)
        self.dsn = DsnIssuer(spool=spool, clock=clock, hostname=hostname, retry=retry,
                             delay_warning_after=delay_warning_after,
                             in_flight=self._leased_ids, poke=self.poke)
        self._retry = retry
        self.wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Something may be due that is not leased yet: set by a poke (new
        # mail, an operator's flush), by a wait that ran to its deadline and
        # by a lease that filled its request; cleared by one that did not.
        # A delivery that ends does not set it, so the runner does not run an
        # empty lease (a writer transaction) after each one (issue 12: at C=1
        # that transaction queued before the next acceptance).
        self._maybe_due = True
        self._pokes = 0                     # a poke during a lease keeps _maybe_due
        self._main: asyncio.Task[None] | None = None
        self._leased: dict[tuple[str, int], Work] = {}
        self.after_write: Callable[[], None] = lambda: None   # e.g. wake webhook deliverers
        self.gate: ConnectGate | None = None

    # ---- settings --------------------------------------------------------
    def reconfigure(self, cfg: Config) -> None:
        """Apply a reloaded configuration: the next lease and scheduling pass
        use it; batches in flight finish as they were."""
        d = cfg.delivery
        self.routes = cfg.routes
        self.retry = RetryPolicy.from_config(d)
        self.batch_size = d.batch_size
        self.mx_port = d.smtp_port
        self.scheduler.reconfigure(cfg)
        self.dsn.reconfigure(cfg)
        for transport in (self.transport, self.sandbox_transport):
            if transport is not None:
                transport.reconfigure(cfg)     # its timeouts (delivery/transport.py)

    # `retry` and `delay_warning_after` are shared with the DSN pass: setting
    # them here (as runtime/reload.py did before reconfigure) sets both.
    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self._retry = self.dsn.retry = policy

    @property
    def delay_warning_after(self) -> float | None:
        return self.dsn.delay_warning_after

    @delay_warning_after.setter
    def delay_warning_after(self, seconds: float | None) -> None:
        self.dsn.delay_warning_after = seconds

    @property
    def verp(self) -> VerpCodec | None:
        return self.outbound.verp

    @property
    def dsn_wakeup(self) -> asyncio.Event:
        """Set it to ask for a DSN pass now (e.g. after an operator bounce)."""
        return self.dsn.wakeup

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="queue-runner")

    def poke(self) -> None:
        """New mail was queued: look for due work now."""
        self._maybe_due = True
        self._pokes += 1
        self.wakeup.set()

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self.wakeup.set()
        if self._main:
            await asyncio.gather(self._main, return_exceptions=True)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Whatever is still leased (pending in the scheduler, or cancelled
        # in flight) goes back unattempted; a later start retries it.
        self.scheduler.drain()
        if self._leased:
            await self.spool.release(list(self._leased))
            self._leased.clear()
        if self.shaping is not None:
            try:
                self.shaping.save()
            except OSError as exc:
                event(log, "warmup_save_failed", level=logging.WARNING, error=exc)
        for transport in (self.transport, self.sandbox_transport):
            close = getattr(transport, "close", None)   # test transports may have none
            if close:
                await close()

    async def shaping_tick(self) -> None:
        """Housekeeping (every SHAPING_EVERY s): end the rule actions whose
        time is up; save the warm-up counters every SAVE_EVERY seconds."""
        if self.rules is None or self.shaping is None:
            return
        await self.rules.tick()
        now = self.clock.now()
        if now - self._warmup_saved >= SAVE_EVERY:
            self._warmup_saved = now
            await asyncio.to_thread(self.shaping.save)

    def _leased_ids(self) -> set[str]:
        return {qid for qid, _ in self._leased}

    # ---- main loop -------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._maybe_due:
                    await self._refill()
                decision = self.scheduler.next_batch(self.clock.now())
                for back, due in self.scheduler.take_handed_back():
                    await self.put_back(back, due)      # a metered queue's excess
                if isinstance(decision, Batch):
                    t = asyncio.create_task(self._deliver(decision))
                    self._tasks.add(t)
                    t.add_done_callback(self._task_done)
                    continue
                await self._wait(decision)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Storage trouble while leasing: keep the daemon alive, retry soon.
                log.exception("event=queue_runner_error")
                self._maybe_due = True
                await asyncio.sleep(1.0)

    def _task_done(self, t: asyncio.Task[None]) -> None:
        self._tasks.discard(t)
        self.wakeup.set()
        if not t.cancelled() and t.exception() is not None:
            log.error("event=delivery_task_crashed", exc_info=t.exception())

    async def _wait(self, decision: Sleep | Idle) -> None:
        # Clear before looking: a poke or stop() that lands while we await
        # next_due_at must still wake us (it sets the event after this).
        self.wakeup.clear()
        if self._stopping:
            return
        now = self.clock.now()
        deadline = decision.until if isinstance(decision, Sleep) else now + IDLE_RECHECK
        due = await self.spool.next_due_at()
        if due is not None and self.scheduler.pending_count() < self.max_pending:
            deadline = min(deadline, due)
        timeout = max(0.0, deadline - now)
        if timeout == 0.0:
            timeout = 0.05  # due but nothing leasable (e.g. window full): don't spin
        await wait_event(self.wakeup, min(timeout, IDLE_RECHECK))
        if not self.wakeup.is_set():
            self._maybe_due = True          # the deadline came: look again

    async def _refill(self) -> None:
        room = self.max_pending - self.scheduler.pending_count()
        if room <= 0:
            return
        now = self.clock.now()
        want, pokes = min(room, self.batch_size), self._pokes
        items = await self.spool.lease_due(now, want)
        if len(items) < want and pokes == self._pokes:
            self._maybe_due = False         # nothing more was due when it looked
        if not items:
            return
        works, expired = [], []
        for it in items:
            if self.retry.is_expired(it.received_at, now):
                expired.append(expired_unattempted(it, now))
                event(log, "expired", id=it.queue_id, rcpt=it.address, attempts=it.attempts)
                continue
            # A test key's message is captured, never delivered (issue 13).
            dest = destination_for(it.domain, self.routes, sandbox=self.sandbox or it.test,
                                   mx_port=self.mx_port)
            pool = ""
            if self.shaping is not None:
                dest, pool = await self.shaping.route(it, dest)
            w = Work(it, dest, pool)
            self._leased[(it.queue_id, it.rcpt_idx)] = w
            works.append(w)
        if expired and await self._record(expired):
            for _ in expired:
                self.observer.recipient_outcome("expired")
        held = [w for w in works if self._held(w)]
        if held:
            kept = {w.key for w in held}
            works = [w for w in works if w.key not in kept]
            await self.put_back(held, now + SUSPEND_RECHECK)
        self.scheduler.add(works, now)

    def _held(self, w: Work) -> bool:
        """Suspended: the destination (operator or rule), or the tenant at it."""
        return (self.scheduler.is_suspended(w.destination.name)
                or (self.rules is not None and self.rules.held(w.item, w.destination)))

    # ---- operator control (runtime/destinations.py) ----------------------
    async def suspend(self, name: str) -> None:
        await self.destinations.suspend(name)

    async def resume(self, name: str) -> None:
        await self.destinations.resume(name)

    async def flush(self, name: str) -> int:
        return await self.destinations.flush(name)

    async def put_back(self, works: Sequence[Work], until: float) -> None:
        """Return leased `works` to the spool unattempted, due at `until`."""
        if works:
            await self._record([put_back(w.item, until) for w in works])

    # ---- one batch -------------------------------------------------------
    async def _deliver(self, batch: Batch) -> None:
        gate = self.gate
        if gate is not None and not await gate.before_connect(batch):
            return          # not granted: the gate handed the batch back
        try:
            await self._connect(batch)
        finally:
            if gate is not None:
                await gate.after_close(batch)

    async def _connect(self, batch: Batch) -> None:
        started = self.clock.now()
        t0 = time.monotonic()
        dest = batch.destination if self.shaping is None else self.shaping.connect_as(batch)
        replies = self.rules.batch() if self.rules is not None else None
        messages = await self.outbound.messages(batch)
        works = {(w.item.queue_id, w.item.rcpt_idx): w for group in batch.messages for w in group}
        early: list[asyncio.Future[None]] = []

        def on_settled(qid: str, outcomes: dict[int, RecipientOutcome]) -> None:  # OnSettled
            # Recorded as each transaction ends, not when the whole batch has
            # (up to max_messages_per_connection): a crash then re-sends at
            # most the transaction in flight, not the batch (issue 12).
            done = [works.pop((qid, i)) for i in outcomes if (qid, i) in works]
            if done:
                attempt = Attempt(started=started, duration=time.monotonic() - t0,
                                  now=self.clock.now())
                early.append(asyncio.ensure_future(self._record_settled(
                    [self._settle(w.item, outcomes[w.item.rcpt_idx], attempt, dest, replies)
                     for w in done])))

        outcomes, health = await self._send(dest, messages, on_settled)
        now = self.clock.now()
        elapsed = time.monotonic() - t0
        self.observer.attempt_finished(elapsed, dest.kind, health.value)
        attempt = Attempt(started=started, duration=elapsed, now=now)
        await self._record_settled([
            self._settle(w.item, outcomes.get(qid, {}).get(idx), attempt, dest, replies)
            for (qid, idx), w in works.items()])
        await asyncio.gather(*early)
        handed_back = self.scheduler.complete(batch, health, now)
        if handed_back:
            # A long pause: don't hold that destination's waiting work in
            # memory; it goes back to the spool, due when the pause ends.
            await self.put_back(handed_back, self.scheduler.pause_until(dest.name) or now)
        if replies is not None and replies.fired:
            assert self.rules is not None
            await self.rules.apply(replies.fired)

    async def _record_settled(self, settled: list[Settlement]) -> None:
        if not settled:
            return
        addresses = [s.address for s in settled if s.address is not None]
        if await self._record([s.update for s in settled], addresses):
            for s in settled:
                self.observer.recipient_outcome(s.outcome, s.klass)

    async def _send(self, dest: Destination, messages: list[OutboundMessage],
                    on_settled: OnSettled | None = None
                    ) -> tuple[Mapping[str, Mapping[int, RecipientOutcome]], DestinationHealth]:
        """The transport's outcomes, or the same verdict for every recipient
        when it raised (policy.outcomes.destination_verdict)."""
        transport = self.sandbox_transport if dest.kind == "sandbox" else self.transport
        try:
            if transport is None:
                raise RuntimeError("a sandbox destination without a sandbox transport")
            if on_settled is not None and getattr(transport, "reports_progress", False):
                progress = cast(ProgressTransport, transport)
                report = await progress.deliver(dest, messages, on_settled=on_settled)
            else:
                report = await transport.deliver(dest, messages)
            return report.outcomes, report.health
        except Exception as exc:
            if not isinstance(exc, (PermFailure, TempFailure)):   # not a DNS verdict: a bug
                log.exception("event=delivery_error destination=%s", dest.name)
            outcome, health = destination_verdict(exc)
            return {m.queue_id: {i: outcome for i, _ in m.recipients} for m in messages}, health

    def _settle(self, item: QueuedRecipient, outcome: RecipientOutcome | None,
                attempt: Attempt, dest: Destination,
                replies: BatchReplies | None = None) -> Settlement:
        if replies is not None:          # automation on replies (issue 15)
            outcome = replies.rewrite(item, outcome, dest)
        s = settle(item, outcome, attempt=attempt, retry=self.retry, vocabulary=VOCABULARY)
        u, now = s.update, attempt.now
        fields: dict[str, object] = {
            "id": item.queue_id, "rcpt": item.address, "destination": dest.name,
            "mx": u.remote_host or None, "ip": u.remote_ip or None, "tls": u.tls or "none",
            "tls_policy": u.tls_policy or None,
            "attempt": item.attempts + 1, "delay": f"{now - item.received_at:.3f}s",
            "reply": str(u.reply)}
        if s.status:
            fields["status"] = s.status
        fields["next_attempt"] = f"{u.next_attempt - now:.0f}s" if u.next_attempt else None
        event(log, s.outcome, logging.INFO, **fields)
        return s

    async def _record(self, updates: list[RecipientUpdate],
                      address_outcomes: Sequence[AddressOutcome] = ()) -> bool:
        """Persist `updates`; False when they could not be (then released)."""
        recorded = False
        try:
            await self.spool.record(updates, outcomes=address_outcomes)
            recorded = True
            self.after_write()
        except Exception:
            # The rows stay leased in memory; recovery would reset them. Put
            # them back so a later pass retries (the remote may see a duplicate:
            # the accepted trade-off of docs/ARCHITECTURE.md §4).
            log.exception("event=record_failed count=%d", len(updates))
            await asyncio.sleep(1.0)
            try:
                await self.spool.release([(u.queue_id, u.rcpt_idx) for u in updates])
            except Exception:
                log.exception("event=release_failed")
        finally:
            for u in updates:
                self._leased.pop((u.queue_id, u.rcpt_idx), None)
        self.dsn.note(updates)
        return recorded

