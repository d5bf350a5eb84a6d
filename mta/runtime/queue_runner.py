"""The runtime loop that moves work between spool, scheduler and delivery.

One job: lease due recipients from the spool in bounded batches, feed them to
the (pure) scheduler, start a delivery task for each `Batch` it releases,
turn each `DeliveryReport` into `RecipientUpdate`s with the retry policy, and
record them. It also owes senders their DSNs: after outcomes are recorded,
`dsn_pass` builds one report per message with unreported final failures
once none of its recipients is in flight (spool `dsn_candidates`: the
failures of one delivery pass share a DSN; recipients still being retried
do not hold it back), and enqueues it in the same transaction that marks
those recipients notified (spool `dsn_for`). Each recipient's
Last-Attempt-Date is its own last attempt (from the message's attempts).

Invariants:
- Memory is bounded by `max_pending` + the in-flight window, never by the
  queue: deferred recipients stay in SQLite until due.
- Every leased recipient is either recorded or released; at shutdown,
  in-flight batches get `shutdown_timeout` to finish, then what is left is
  released (a crash instead resets leases at recovery).
- Decisions use `now` from the clock seam; no sleeping inside decisions.
- The observer (core.observe) hears one `recipient_outcome` per recipient
  update once it is recorded (bounced carries the hard/soft class of
  `_address_outcome`), and one `attempt_finished` per batch.
- A failed attempt's status (log line `status=`, the ledger's bounced and
  expired `status`) is `mta.mail.dsn.recipient_status`, the same as the
  DSN's Status: the remote's enhanced code or the one core.reply derives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol, Sequence

from mta.core.spill import HEAD_BYTES
from mta.core import (AddressOutcome, BOUNCED, DELIVERED, EXPIRED, QUEUED, Clock, DestinationHealth,
                      Observer, PermFailure, RecipientFate, RecipientOutcome, RecipientUpdate,
                      Reply, TempFailure)
from mta.core.envelope import Destination
from mta.delivery.client import DeliveryReport, OutboundMessage
from mta.mail.bounces.classify import classify
from mta.mail.dsn import build_dsn, recipient_status
from mta.mail.verp import VerpCodec
from mta.policy.retry import RetryPolicy
from mta.policy.routing import destination_for
from mta.runtime.logs import event
from mta.scheduler import Batch, Idle, Scheduler, Sleep, Work
from mta.spool import DsnMark, MessageFilter, NewMessage, Spool

log = logging.getLogger("mta.queue")

# recipient state after an attempt → the observer's outcome name
_OBSERVED = {DELIVERED: "delivered", BOUNCED: "bounced", EXPIRED: "expired", QUEUED: "deferred"}

SUSPEND_RECHECK = 60.0   # seconds between looks at a suspended destination's recipients


class Transport(Protocol):
    async def deliver(self, destination: Destination,
                      messages: Sequence[OutboundMessage]) -> DeliveryReport: ...


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds pass.

    Not asyncio.wait_for(event.wait(), timeout): in Python 3.11 it swallows
    a cancellation that lands while the event fires (it returns the result
    instead; gh-86296), and a loop around it then never stops: the daemon's
    stop() waited forever on the DSN loop (seen in CI).
    asyncio.timeout() passes the cancellation on."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


class QueueRunner:
    def __init__(self, *, spool: Spool, scheduler: Scheduler, transport: Transport,
                 sandbox_transport: Transport | None, retry: RetryPolicy, clock: Clock,
                 routes, sandbox: bool, mx_port: int, hostname: str, batch_size: int,
                 delay_warning_after: float | None, max_pending: int = 5000,
                 verp: VerpCodec | None = None,
                 bounce_domain_for: Callable[[str], str | None] | None = None,
                 observer: Observer = Observer()):
        self.observer = observer
        self.spool, self.scheduler, self.retry, self.clock = spool, scheduler, retry, clock
        self.transport, self.sandbox_transport = transport, sandbox_transport
        self.routes, self.sandbox, self.mx_port = routes, sandbox, mx_port
        self.hostname, self.batch_size, self.max_pending = hostname, batch_size, max_pending
        self.delay_warning_after = delay_warning_after
        # VERP: each recipient's transaction carries its own return path,
        # b+<token>@<bounce domain of the sender's domain> (None: no VERP).
        self.verp = verp
        self.bounce_domain_for = bounce_domain_for or (lambda sender: None)
        self.wakeup = asyncio.Event()
        self.dsn_wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._main: asyncio.Task | None = None
        self._dsn: asyncio.Task | None = None
        self._leased: dict[tuple[str, int], Work] = {}
        self._owing: set[str] = set()
        self.after_write: Callable[[], None] = lambda: None   # e.g. wake webhook deliverers

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="queue-runner")
        self._dsn = asyncio.create_task(self._dsn_loop(), name="dsn-loop")

    def poke(self) -> None:
        """New mail was queued: look for due work now."""
        self.wakeup.set()

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self.wakeup.set()
        if self._main:
            await asyncio.gather(self._main, return_exceptions=True)
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._dsn:
            self._dsn.cancel()
            await asyncio.gather(self._dsn, return_exceptions=True)
        # Whatever is still leased (pending in the scheduler, or cancelled
        # in flight) goes back unattempted; a later start retries it.
        self.scheduler.drain()
        if self._leased:
            await self.spool.release(list(self._leased))
            self._leased.clear()
        for t in (self.transport, self.sandbox_transport):
            close = getattr(t, "close", None)
            if close:
                await close()

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    # ---- main loop -------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._refill()
                decision = self.scheduler.next_batch(self.clock.now())
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
                await asyncio.sleep(1.0)

    def _task_done(self, t: asyncio.Task) -> None:
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
        deadline = decision.until if isinstance(decision, Sleep) else now + 60.0
        due = await self.spool.next_due_at()
        if due is not None and self.scheduler.pending_count() < self.max_pending:
            deadline = min(deadline, due)
        timeout = max(0.0, deadline - now)
        if timeout == 0.0:
            timeout = 0.05  # due but nothing leasable (e.g. window full): don't spin
        await wait_event(self.wakeup, min(timeout, 60.0))

    async def _refill(self) -> None:
        room = self.max_pending - self.scheduler.pending_count()
        if room <= 0:
            return
        now = self.clock.now()
        items = await self.spool.lease_due(now, min(room, self.batch_size))
        if not items:
            return
        works, expired = [], []
        for it in items:
            if self.retry.is_expired(it.received_at, now):
                # Keep the last remote reply as the diagnostic when there was
                # one: "expired after 451 greylisted" tells the sender why.
                expired.append(RecipientUpdate(
                    it.queue_id, it.rcpt_idx, EXPIRED, counts_attempt=False, attempted_at=now,
                    reply=None if it.attempts else Reply(
                        451, "4.4.7", "Message expired: delivery time limit exceeded "
                                      "before any attempt succeeded")))
                event(log, "expired", id=it.queue_id, rcpt=it.address, attempts=it.attempts)
                continue
            dest = destination_for(it.domain, self.routes, sandbox=self.sandbox,
                                   mx_port=self.mx_port)
            w = Work(it, dest)
            self._leased[(it.queue_id, it.rcpt_idx)] = w
            works.append(w)
        if expired and await self._record(expired):
            for _ in expired:
                self.observer.recipient_outcome("expired")
        held = [w for w in works if self.scheduler.is_suspended(w.destination.name)]
        if held:
            works = [w for w in works if not self.scheduler.is_suspended(w.destination.name)]
            await self._put_back(held, now + SUSPEND_RECHECK)
        self.scheduler.add(works, now)

    # ---- operator control ------------------------------------------------
    async def suspend(self, name: str) -> None:
        """No new deliveries to destination `name` until `resume`; its
        waiting recipients go back to the spool (re-checked every
        SUSPEND_RECHECK seconds, no attempt counted)."""
        back = self.scheduler.suspend(name)
        await self._put_back(back, self.clock.now() + SUSPEND_RECHECK)

    async def resume(self, name: str) -> None:
        self.scheduler.resume(name)
        await self.flush(name)

    async def flush(self, name: str) -> int:
        """Attempt the destination's queued recipients now (postqueue -s)."""
        now = self.clock.now()
        self.scheduler.flush(name, now)
        count = 0
        for domain in self._domains_of(name):
            count += await self.spool.retry_messages(MessageFilter(domain=domain), now)
        self.poke()
        return count

    def _domains_of(self, name: str) -> list[str | None]:
        """Recipient domains whose mail goes to destination `name` (None = all:
        the smarthost route "*" goes there)."""
        if name == "sandbox" and self.sandbox:
            return [None]                  # sandbox mode: every domain goes there
        if not name.startswith("[") or name.endswith("]"):   # a domain, or a literal [ip]
            return [name]
        out: list[str | None] = []
        for domain in self.routes:
            dest = destination_for("x.invalid" if domain == "*" else domain, self.routes,
                                   sandbox=False, mx_port=self.mx_port)
            if dest.name == name:
                if domain == "*":
                    return [None]
                out.append(domain)
        return out

    async def _put_back(self, works: list[Work], until: float) -> None:
        if works:
            await self._record([RecipientUpdate(w.item.queue_id, w.item.rcpt_idx, QUEUED,
                                                next_attempt=until, counts_attempt=False)
                                for w in works])

    # ---- one batch -------------------------------------------------------
    async def _deliver(self, batch: Batch) -> None:
        started = self.clock.now()
        t0 = time.monotonic()
        dest = batch.destination
        messages = []
        for group in batch.messages:
            first = group[0].item
            try:
                # A large body is read in pieces while it is sent (memory
                # stays bounded however big and however many: issue 10 item 3).
                body = (await self.spool.open_body(first.queue_id) if first.size > HEAD_BYTES
                        else await self.spool.read_body(first.queue_id))
            except Exception as exc:  # missing/corrupt body: keep the rows, retry later
                event(log, "body_unreadable", logging.ERROR, id=first.queue_id, error=repr(exc))
                body = None
            if body is None:
                continue
            bounce_domain = (self.bounce_domain_for(first.sender)
                             if self.verp is not None and first.sender else None)
            if bounce_domain:
                # DSNs (sender <>) never get one: they must not bounce back.
                messages.extend(OutboundMessage(
                    queue_id=first.queue_id,
                    sender=self.verp.encode(first.queue_id, w.item.rcpt_idx, bounce_domain),
                    recipients=((w.item.rcpt_idx, w.item.address),), body=body) for w in group)
            else:
                messages.append(OutboundMessage(
                    queue_id=first.queue_id, sender=first.sender,
                    recipients=tuple((w.item.rcpt_idx, w.item.address) for w in group),
                    body=body))
        transport = self.sandbox_transport if dest.kind == "sandbox" else self.transport
        try:
            report = await transport.deliver(dest, messages)
            outcomes, health = report.outcomes, report.health
        except (PermFailure, TempFailure) as exc:
            # Destination-level verdicts (null MX, NXDOMAIN, DNS SERVFAIL).
            fate = RecipientFate.BOUNCED if isinstance(exc, PermFailure) else RecipientFate.DEFERRED
            health = DestinationHealth.OK if fate is RecipientFate.BOUNCED else DestinationHealth.DOWN
            outcomes = {m.queue_id: {i: RecipientOutcome(fate, exc.reply) for i, _ in m.recipients}
                        for m in messages}
        except Exception:
            log.exception("event=delivery_error destination=%s", dest.name)
            health = DestinationHealth.DOWN
            reply = Reply(451, "4.3.0", "Local delivery error, will retry")
            outcomes = {m.queue_id: {i: RecipientOutcome(RecipientFate.DEFERRED, reply)
                                     for i, _ in m.recipients} for m in messages}
        now = self.clock.now()
        elapsed = time.monotonic() - t0
        self.observer.attempt_finished(elapsed, dest.kind, health.value)
        updates, address_outcomes = [], []
        observed: list[tuple[str, str]] = []   # (outcome, class) per update
        for group in batch.messages:
            for w in group:
                it = w.item
                oc = outcomes.get(it.queue_id, {}).get(it.rcpt_idx)
                local = oc is None or not oc.remote_host
                if oc is None:  # body unreadable or the transport said nothing: retry later
                    oc = RecipientOutcome(RecipientFate.DEFERRED,
                                          Reply(451, "4.3.0", "Local error reading the message, will retry"))
                update = self._update_for(it, oc, now, started, elapsed, dest)
                updates.append(update)
                klass = ""
                if not local or oc.fate is not RecipientFate.DEFERRED:
                    address_outcomes.append(self._address_outcome(it, oc, now))
                    if update.state == BOUNCED:
                        klass = address_outcomes[-1].kind   # "hard" | "soft"
                observed.append((_OBSERVED.get(update.state, update.state), klass))
        if await self._record(updates, address_outcomes):
            for outcome, klass in observed:
                self.observer.recipient_outcome(outcome, klass)
        handed_back = self.scheduler.complete(batch, health, now)
        if handed_back:
            # A long pause: don't hold that destination's waiting work in
            # memory; it goes back to the spool, due when the pause ends.
            until = self.scheduler.destination_states().get(dest.name, {}).get("paused_until") or now
            await self._record([RecipientUpdate(w.item.queue_id, w.item.rcpt_idx, QUEUED,
                                                next_attempt=until, counts_attempt=False,
                                                reply=None) for w in handed_back])

    def _update_for(self, it, oc: RecipientOutcome, now: float, started: float,
                    elapsed: float, dest: Destination) -> RecipientUpdate:
        common = dict(reply=oc.reply, attempted_at=started, duration=elapsed,
                      remote_host=oc.remote_host, remote_ip=oc.remote_ip, tls=oc.tls)
        if oc.fate is RecipientFate.DELIVERED:
            state, nxt = DELIVERED, None
        elif oc.fate is RecipientFate.BOUNCED:
            state, nxt = BOUNCED, None
        else:
            nxt = self.retry.after_temp_failure(it.received_at, it.attempts + 1, now)
            state = EXPIRED if nxt is None else QUEUED
        reply = oc.reply
        status = klass = reason = None
        if state != DELIVERED:
            klass, reason = classify(reply.esc or None, reply.code, reply.text, command="RCPT")
            status = recipient_status(state, reply, reason=reason)
        event(log, {DELIVERED: "delivered", BOUNCED: "bounced", EXPIRED: "expired",
                    QUEUED: "deferred"}[state],
              id=it.queue_id, rcpt=it.address, destination=dest.name,
              mx=oc.remote_host or None, ip=oc.remote_ip or None, tls=oc.tls or "none",
              attempt=it.attempts + 1, delay=f"{now - it.received_at:.3f}s",
              reply=str(reply), **({"status": status} if status else {}),
              next_attempt=(f"{nxt - now:.0f}s" if nxt else None))
        detail = None
        if state in (BOUNCED, EXPIRED):
            # The ledger's bounced/expired events carry the verdict in the
            # vocabulary of bounces that arrive by mail (sync=true here).
            detail = {"class": klass if state == BOUNCED else "soft", "reason":
                      reason if state == BOUNCED else "expired", "status": status,
                      "sync": True}
        return RecipientUpdate(it.queue_id, it.rcpt_idx, state, next_attempt=nxt,
                               event_detail=detail, **common)

    @staticmethod
    def _address_outcome(it, oc: RecipientOutcome, now: float) -> AddressOutcome:
        """What this attempt says about the address, for suppression: the
        same classifier as for bounces that arrive by mail (one vocabulary).
        Deferrals count as soft failures; our own connection trouble does not
        (it says nothing about the address)."""
        if oc.fate is RecipientFate.DELIVERED:
            return AddressOutcome(it.address, "delivered", now, it.queue_id)
        reply = oc.reply
        klass, _reason = classify(reply.esc or None, reply.code, reply.text, command="RCPT")
        kind = "hard" if oc.fate is RecipientFate.BOUNCED and klass == "hard" else "soft"
        return AddressOutcome(it.address, kind, now, it.queue_id, str(reply))

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
            # the accepted trade-off of DESIGN.md §3).
            log.exception("event=record_failed count=%d", len(updates))
            await asyncio.sleep(1.0)
            try:
                await self.spool.release([(u.queue_id, u.rcpt_idx) for u in updates])
            except Exception:
                log.exception("event=release_failed")
        finally:
            for u in updates:
                self._leased.pop((u.queue_id, u.rcpt_idx), None)
        # A DSN is owed once a message with a failed recipient has none in
        # flight; remember such messages so the pass runs when their last
        # leased recipient is recorded (whatever its fate), not at the next
        # timer tick. (After a restart the first pass of the DSN loop
        # catches up on what was owed.)
        wake = False
        for u in updates:
            if u.state in (BOUNCED, EXPIRED):
                self._owing.add(u.queue_id)
                wake = True
            elif u.queue_id in self._owing:
                wake = True
        if wake:
            self.dsn_wakeup.set()
        return recorded

    # ---- DSNs ------------------------------------------------------------
    async def _dsn_loop(self) -> None:
        # Also the housekeeping loop: segment files whose messages are all
        # finished are unlinked here (the spool never does it on its own).
        last_reclaim = 0.0
        self.dsn_wakeup.set()  # first pass at once: catch up after a restart
        while True:
            now = time.monotonic()
            if now - last_reclaim >= 30.0:
                last_reclaim = now
                try:
                    n = await self.spool.reclaim()
                    if n:
                        event(log, "segments_reclaimed", count=n)
                except Exception:
                    log.exception("event=reclaim_failed")
            await wait_event(self.dsn_wakeup, 10.0)
            self.dsn_wakeup.clear()
            try:
                await self.dsn_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=dsn_pass_failed")
                await asyncio.sleep(5.0)

    async def dsn_pass(self) -> int:
        sent = 0
        now = self.clock.now()
        batches = [("failure", await self.spool.dsn_candidates(100))]
        if self.delay_warning_after is not None:
            batches.append(("delay", await self.spool.delay_candidates(
                now, self.delay_warning_after, 100)))
        # Messages whose recipients are all out of flight need no wake-up
        # from a later record: if they owe a DSN, this pass (or the one a
        # record since has asked for) finds them.
        in_flight = {qid for qid, _ in self._leased}
        self._owing &= in_flight
        for kind, cands in batches:
            for c in cands:
                self._owing.discard(c.queue_id)
                original = await self.spool.read_body(c.queue_id, limit=HEAD_BYTES)
                dsn_id_hint = c.queue_id
                body = build_dsn(original=original, candidate=c, reporting_mta=self.hostname,
                                 queue_id=dsn_id_hint, now=now, kind=kind,
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
