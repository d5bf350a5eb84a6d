"""One endpoint's delivery loop: follow the ledger from a durable cursor and
POST its events, signed, in sequence order, until the endpoint answers 2xx.

Public API
    WebhookDeliverer(cfg, *, spool, clock, schedule, failing_after,
                     ssl_context=None, poll_interval=5.0, observer=None)
        spool: a store.WebhookStore (the ledger + the cursors)
        start() / await stop() / poke() / await status() -> dict
        await replay(from_seq=None, since=None) -> dict   (the running-daemon way)
    status dict: name url events credential tenant batch_size cursor failing_since
        next_attempt attempts last_error state last_event_seq lag running sent
        oldest_unsent_at (time of the oldest matching event not yet acknowledged)
    observer (core.Observer): webhook_request(name, "ok" | "failed") per POST
    PREFETCH, SAVE_EVERY, POLL_INTERVAL

Delivery guarantee: AT LEAST ONCE, in strict ledger-sequence order (hence
per-message order). The cursor (the last seq acknowledged) is stored through
`set_webhook_state`. Only a 2xx advances it; any other status, a timeout or
a connection error keeps it, so the same events are sent again later with
the same webhook-id (receivers deduplicate on webhook-id, or on `seq`). A
crash between the 2xx and storing the cursor resends the last request —
same id. Caveat for batch_size > 1: a batch is pinned (same events, same id)
across retries within one process; after a daemon restart a not-yet-
acknowledged batch may be recomposed with more events (a different id), so
batch receivers should deduplicate on `seq`.

Retries and states: `state.next_retry` decides (the waits of `[ledger]
webhook_retry_schedule`, the last repeating forever; "failing" after
`webhook_failing_after`); the loop only applies the decision. A state change
is checked by `state.ENDPOINT_STATES` (its transition line is DEBUG: the
operator's lines are event=webhook_failing (ERROR) and event=webhook_recovered,
which say more — since, attempts, error).

A new endpoint starts at the ledger's current end (the cursor defaults to
`last_event_seq()` on its first start): it gets events from its creation on;
a replay goes back (or, with a SEQ past the backlog, drops it).

Filters: `events` (types; "*" = all), `credential` and `tenant` (only the
events of that tenant's credentials: a tenant named here that does not
exist yet simply matches nothing until it does) are passed to
`event_payloads_after`; when nothing matches, the cursor jumps to the ledger
end that was read before the fetch (events commit in sequence order), so a
narrow endpoint does not rescan the ledger.

Invariants: one request in flight per endpoint; the loop never busy-loops
(it sleeps until poked, until the next attempt is due, or `poll_interval`);
the secret never appears in logs, state or errors; redirects are not
followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mta.config.sections import WebhookConfig
from mta.core.clock import Clock
from mta.core.logfmt import event as log_event
from mta.core.observe import Observer
from mta.webhooks.actions import replay as replay_cursor
from mta.webhooks.hookhttp import Endpoint
from mta.webhooks.state import (
    ENDPOINT_STATES,
    CursorState,
    EndpointState,
    after_failure,
    after_success,
    next_retry,
)
from mta.webhooks.store import WebhookStore
from mta.webhooks.wire import USER_AGENT, Signer, encode_body, signed_headers, webhook_id

__all__ = ["POLL_INTERVAL", "PREFETCH", "SAVE_EVERY", "WebhookDeliverer"]

PREFETCH = 100       # ledger events read ahead per query
SAVE_EVERY = 0.5     # seconds: how often an advancing cursor is stored (see _advance)
POLL_INTERVAL = 5.0

log = logging.getLogger("mta.webhooks")

Payload = tuple[int, bytes]   # (seq, the event's JSON payload)


def event_types(cfg: WebhookConfig) -> list[str] | None:
    """The `types` filter of an endpoint (None: every type)."""
    events = tuple(cfg.events or ())
    return None if not events or "*" in events else list(events)


class WebhookDeliverer:
    """Follows the ledger for one endpoint. Call `poke()` (from the event
    loop) after appending events; otherwise it polls every `poll_interval`."""

    def __init__(self, cfg: WebhookConfig, *, spool: WebhookStore, clock: Clock,
                 schedule: Sequence[float], failing_after: float,
                 ssl_context: ssl.SSLContext | None = None,
                 poll_interval: float = POLL_INTERVAL, observer: Observer | None = None):
        if not schedule:
            raise ValueError("empty webhook retry schedule")
        self.cfg, self.spool, self.clock = cfg, spool, clock
        self.name = cfg.name
        self.schedule = tuple(float(s) for s in schedule)
        self.failing_after = float(failing_after)
        self.poll_interval = poll_interval
        self.ssl_context = ssl_context
        self.observer = observer or Observer()
        self._endpoint: Endpoint | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()          # one send+persist, or one replay, at a time
        self._wake = asyncio.Event()         # new events (poke)
        self._kick = asyncio.Event()         # state changed (replay): cut a backoff short
        self._state: CursorState | None = None
        self._pinned: tuple[int, int] | None = None   # (cursor, last seq) of a failed batch
        # (seq, payload) read ahead of the cursor, in seq order: one ledger
        # query per PREFETCH events instead of one per request.
        self._buffer: deque[Payload] = deque()
        self._signer = Signer(cfg.secret)
        self.sent = 0                        # requests acknowledged (2xx), for metrics
        self._dirty = False                  # in-memory cursor ahead of the stored one
        self._saved_at = 0.0

    # ---- lifecycle -----------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"webhook:{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._dirty and self._state is not None:
            try:
                await self._save(self._state)
            except Exception:   # the spool may be closing: at-least-once covers it
                log.exception("event=webhook_cursor_not_saved name=%s", self.name)
        if self._endpoint is not None:
            await self._endpoint.close()
            self._endpoint = None

    def poke(self) -> None:
        self._wake.set()

    # ---- state ---------------------------------------------------------
    async def _load(self) -> CursorState:
        row = await self.spool.webhook_state(self.name)
        if row is None:
            st = CursorState(cursor=await self.spool.last_event_seq())
            await self.spool.set_webhook_state(self.name, **st.fields())
            log_event(log, "webhook_created", webhook=self.name, cursor=st.cursor)
            return st
        return CursorState.stored(row)

    async def _save(self, st: CursorState) -> None:
        if self._state is not None and st.state != self._state.state:
            ENDPOINT_STATES.move(self._state.state, st.state, self.name, level=logging.DEBUG)
        self._state = st
        await self.spool.set_webhook_state(self.name, **st.fields())
        self._dirty, self._saved_at = False, time.monotonic()

    async def _advance(self, st: CursorState) -> None:
        """After a 2xx: move the cursor in memory, store it at most every
        SAVE_EVERY seconds (and when idle, on failure, on stop). A crash in
        between resends those events with the same webhook-id: the
        at-least-once guarantee, for one writer transaction per 0.5 s instead
        of one per event."""
        self._state = st
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY:
            await self._save(st)

    async def status(self) -> dict[str, Any]:
        """For the admin API and metrics (never the secret)."""
        st = (CursorState.stored(await self.spool.webhook_state(self.name))
              if self._state is None else self._state).fields()
        oldest = None
        last: int | None
        try:
            last = await self.spool.last_event_seq()
            if last > st["cursor"]:
                first = await self.spool.events_after(st["cursor"], 1, types=event_types(self.cfg),
                                                      credential=self.cfg.credential,
                                                      tenant=self.cfg.tenant)
                oldest = first[0].at if first else None
        except Exception:  # noqa: BLE001  a status answers even while the store fails
            last = None
        return {"name": self.name, "url": self.cfg.url, "events": list(self.cfg.events),
                "credential": self.cfg.credential, "tenant": self.cfg.tenant,
                "batch_size": self.cfg.batch_size,
                **st, "last_event_seq": last, "oldest_unsent_at": oldest,
                "lag": None if last is None else max(0, last - st["cursor"]),
                "running": self._task is not None and not self._task.done(),
                "sent": self.sent}

    async def replay(self, from_seq: int | str | None = None,
                     since: float | None = None) -> dict[str, Any]:
        """Move the cursor (back, or forward past a backlog) while running."""
        async with self._lock:
            st = await replay_cursor(self.spool, self.name, from_seq=from_seq, since=since)
            new = CursorState.stored(st)
            if self._state is not None and self._state.state != new.state:
                ENDPOINT_STATES.move(self._state.state, new.state, self.name,
                                     level=logging.DEBUG)
            self._state, self._pinned = new, None
            self._buffer.clear()
        self._kick.set()
        self._wake.set()
        return st

    # ---- the loop ------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                delay = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=webhook_loop_error name=%s", self.name)
                delay = self.poll_interval
            if delay > 0:
                await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Until poked or kicked, or `delay` seconds."""
        waiters = [asyncio.ensure_future(self._wake.wait()),
                   asyncio.ensure_future(self._kick.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _step(self) -> float:
        """One round; returns how long to wait before the next (0: at once)."""
        async with self._lock:
            if self._state is None:
                self._state = await self._load()
            st = self._state
            now = self.clock.now()
            if not st.due(now):
                assert st.next_attempt is not None
                # backing off: new events do not cut the wait short, a replay does
                self._wake.clear()
                if self._kick.is_set():
                    self._kick.clear()
                    return 0
                return min(st.next_attempt - now, self.poll_interval)
            self._kick.clear()
            self._wake.clear()
            events = await self._next_events(st)
            if not events:
                return self.poll_interval
            return await self._send(st, events)

    async def _next_events(self, st: CursorState) -> list[Payload]:
        """The events of the next request (the pinned batch again after a
        failure); [] when there is nothing to send — having skipped the
        cursor past events no filter matched, or stored an idle cursor."""
        buf, size = self._buffer, self.cfg.batch_size
        while buf and buf[0][0] <= st.cursor:
            buf.popleft()
        if len(buf) < size:
            buf.extend(await self.spool.event_payloads_after(
                buf[-1][0] if buf else st.cursor, max(PREFETCH, size),
                types=event_types(self.cfg), credential=self.cfg.credential,
                tenant=self.cfg.tenant))
        events = [buf[i] for i in range(min(size, len(buf)))]
        if not events:
            # Read the ledger's end, then look once more: an event committed
            # before `top` was read is seen by this second fetch, so skipping
            # to `top` (nothing matched our filters up to it) loses nothing.
            top = await self.spool.last_event_seq()
            if top > st.cursor:
                events = list(await self.spool.event_payloads_after(
                    st.cursor, size, types=event_types(self.cfg),
                    credential=self.cfg.credential, tenant=self.cfg.tenant))
            if not events:
                if top > st.cursor and st.attempts == 0:
                    await self._save(replace(st, cursor=top))   # nothing matched up to top
                elif self._dirty:
                    await self._save(st)                        # idle: store the cursor now
                return []
        if self._pinned and self._pinned[0] == st.cursor:
            events = [e for e in events if e[0] <= self._pinned[1]] or events
        return events

    async def _send(self, st: CursorState, events: list[Payload]) -> float:
        """POST `events` once and apply the outcome; the wait before the next round."""
        size = self.cfg.batch_size
        body = encode_body(events, size > 1)
        msg_id = webhook_id(events)
        if self._endpoint is None:
            self._endpoint = Endpoint(self.cfg.url, timeout=self.cfg.timeout,
                                      ssl_context=self.ssl_context, user_agent=USER_AGENT)
        headers = signed_headers(self._signer, msg_id, int(self.clock.now()), body)
        status, error = await self._endpoint.post(headers, body)
        now = self.clock.now()
        self.observer.webhook_request(self.name, "ok" if error is None else "failed")
        if error is None:
            await self._acknowledged(st, events[-1][0], msg_id, status)
            return 0
        self._pinned = (st.cursor, events[-1][0])
        return await self._failed(st, now, msg_id, status, error)

    async def _acknowledged(self, st: CursorState, cursor: int, msg_id: str,
                            status: int | None) -> None:
        self._pinned = None
        if st.retrying:
            await self._save(after_success(st, cursor))
        else:
            await self._advance(after_success(st, cursor))
        self.sent += 1
        if st.retrying:
            log_event(log, "webhook_recovered", webhook=self.name, webhook_id=msg_id,
                      status=status)

    async def _failed(self, st: CursorState, now: float, msg_id: str, status: int | None,
                      error: str) -> float:
        decision = next_retry(st, now, self.schedule, self.failing_after)
        if decision.state == EndpointState.FAILING and st.state != EndpointState.FAILING:
            log_event(log, "webhook_failing", logging.ERROR, webhook=self.name,
                      since=decision.failing_since, attempts=decision.attempts, error=error)
        log_event(log, "webhook_deferred", logging.WARNING, webhook=self.name,
                  webhook_id=msg_id, status=status, error=error, attempts=decision.attempts,
                  retry_in=f"{decision.wait:g}s")
        await self._save(after_failure(st, decision, error))
        return decision.wait
