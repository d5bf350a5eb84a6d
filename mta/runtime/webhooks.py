"""Signed webhooks: each `[[webhooks]]` endpoint follows the ledger with a
durable cursor and receives its events as Standard Webhooks requests.

One job: turn ledger events (the spool's `event_payloads_after`: payloads
built by SQLite) into signed HTTP
POSTs, in sequence order, retrying until the endpoint answers 2xx.

Public API
    sign(secret, msg_id, timestamp, payload) -> "v1,<base64 sig>"
    new_secret() -> "whsec_<base64 of 32 random bytes>"
    event_json(event) -> dict          the payload object of one ledger event
    WebhookDeliverer(cfg, *, spool, clock, schedule, failing_after,
                     ssl_context=None, poll_interval=5.0)
        start() / await stop() / poke() / await status() -> dict
        await replay(from_seq=None, since=None) -> dict   (the running-daemon way)
    WebhookService(configs, *, spool, clock, ledger_cfg)  one deliverer per endpoint:
        start() / await stop() / poke() / await statuses() -> list[dict]
        await reconfigure(configs)   SIGHUP: start/stop/restart changed endpoints
        await replay(name, from_seq=, since=) -> dict (KeyError: unknown name)
        await test(name) -> {name, url, ok, status, error, ms} (KeyError: unknown name)
        daemon: WebhookService(cfg.webhooks, spool=spool, clock=clock,
                               ledger_cfg=cfg.ledger); poke() after ledger writes;
        admin backend: webhooks() -> statuses(), webhook_replay(...) -> replay(...),
                       webhook_test(name) -> test(name)
    status dict: name url events credential batch_size cursor failing_since
        next_attempt attempts last_error state last_event_seq lag running sent
        oldest_unsent_at (time of the oldest matching event not yet acknowledged)
    observer (core.Observer): webhook_request(name, "ok" | "failed") per POST
    async replay(spool, name, *, from_seq=None, since=None) -> dict   (spool only)
    async first_seq_since(spool, since) -> int | None
    async send_test(cfg, clock, *, ssl_context=None) -> (status | None, error | None)
    async probe(cfg, clock, *, ssl_context=None) -> {name, url, ok, status, error, ms}

Wire format (Standard Webhooks, https://www.standardwebhooks.com/)
    POST <url> (HTTP/1.1, one keep-alive connection: runtime/hookhttp.py),
    content-type: application/json, user-agent: mta-webhooks/1
    webhook-id:        "evt_<seq>" for a single event, "evt_<first>-<last>" for a
                       batch; the SAME id on every retry of the same content
    webhook-timestamp: unix seconds at send time
    webhook-signature: "v1,<base64(HMAC-SHA256(key, f'{id}.{timestamp}.' + body))>"
                       where key = base64-decode(secret minus "whsec_")
    body, batch_size 1: one event object; batch_size > 1: a JSON array of 1..N
    event objects. An event object:
        {"type": "delivered",               # one of config.EVENT_TYPES ("test" for
                                            #   `mta webhooks test`)
         "seq": 1234,                       # ledger sequence number (unique, increasing)
         "timestamp": "2026-01-02T03:04:05.678Z",   # when the event happened (UTC)
         "queue_id": "…" | null, "recipient": "…" | null, "credential": "…" | null,
                                            # (the ledger's "" becomes null)
         "data": {…}}                       # the event's detail (see README vocabulary)

Delivery guarantee: AT LEAST ONCE, in strict ledger-sequence order (hence
per-message order). Each endpoint has a cursor (the last seq acknowledged),
stored in the index via `spool.set_webhook_state`. Only a 2xx advances it;
any other status, a timeout or a connection error keeps it, so the same
events are sent again later with the same webhook-id (receivers deduplicate
on webhook-id, or on `seq`). A crash between the 2xx and persisting the
cursor resends the last request — same id. Caveat for batch_size > 1: a
batch is pinned (same events, same id) across retries within one process;
after a daemon restart a not-yet-acknowledged batch may be recomposed with
more events (a different id), so batch receivers should deduplicate on `seq`.

Retries: the waits of `[ledger] webhook_retry_schedule` (default 5s, 30s, 2m,
10m, 30m, 1h, 2h, 4h; the last repeats, forever). An endpoint failing
continuously for longer than `webhook_failing_after` (default 3d) goes to
state "failing" (its backlog is kept, retried every last-step wait) until a
2xx, or an operator's replay, puts it back to "active". States: "active"
(possibly with attempts > 0 and last_error: retrying), "failing".

A new endpoint starts at the ledger's current end (the cursor defaults to
`last_event_seq()` on its first start): it gets events from its creation on;
`mta webhooks replay NAME --from SEQ | --since TIME` goes back (or, with a
SEQ past the backlog, drops it).

Filters: `events` (types; "*" = all) and `credential` are passed to
`event_payloads_after`; when nothing matches, the cursor jumps to the ledger end that
was read before the fetch (events commit in sequence order), so a narrow
endpoint does not rescan the ledger.

Invariants: one request in flight per endpoint; the loop never busy-loops
(it sleeps until poked, until the next attempt is due, or `poll_interval`);
the secret never appears in logs, state or errors; redirects are not
followed (a 3xx is a failure).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
import base64
import hashlib
import hmac
import json
import logging
import secrets
import ssl
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from mta.core.observe import Observer
from mta.runtime.hookhttp import Endpoint
from mta.runtime.logs import event as log_event

PREFETCH = 100     # ledger events read ahead per query
SAVE_EVERY = 0.5   # seconds: how often an advancing cursor is stored (see _advance)

log = logging.getLogger("mta.webhooks")

__all__ = ["sign", "new_secret", "event_json", "encode_body", "webhook_id", "WebhookDeliverer",
           "WebhookService", "replay", "first_seq_since", "send_test", "probe", "ACTIVE", "FAILING"]

ACTIVE, FAILING = "active", "failing"
USER_AGENT = "mta-webhooks/1"
POLL_INTERVAL = 5.0


# --------------------------------------------------------------------- signing

def _key(secret: str) -> bytes:
    s = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    key = base64.b64decode(s + "=" * (-len(s) % 4))
    if not key:
        raise ValueError("empty webhook secret")
    return key


class Signer:
    """`sign` for one secret, with the key decoded and the HMAC keyed once."""

    def __init__(self, secret: str):
        self._mac = hmac.new(_key(secret), digestmod=hashlib.sha256)

    def __call__(self, msg_id: str, timestamp: int, payload: bytes) -> str:
        mac = self._mac.copy()
        mac.update(f"{msg_id}.{int(timestamp)}.".encode())
        mac.update(payload)
        return "v1," + base64.b64encode(mac.digest()).decode()


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes) -> str:
    """The `webhook-signature` header value: "v1,<base64 HMAC-SHA256>"."""
    return Signer(secret)(msg_id, timestamp, payload)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --------------------------------------------------------------------- payload

def _iso(at: Any) -> Any:
    """Milliseconds, rounded as SQLite's strftime('%f') rounds them (the
    spool builds the same payload in SQL: index.EVENT_PAYLOAD_COLS)."""
    if isinstance(at, (int, float)):
        ms = int(float(at) * 1000.0 + 0.5)
        dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return at   # already a string (or None)


def event_json(ev: Any) -> dict:
    """The payload object of one ledger event (an EventView). The deliverer
    sends the same object built by the spool (`event_payloads_after`)."""
    return {"type": ev.type, "seq": ev.seq, "timestamp": _iso(ev.at),
            "queue_id": ev.queue_id or None, "recipient": ev.recipient or None,
            "credential": ev.credential or None, "data": ev.detail or {}}


def webhook_id(events: Sequence[tuple[int, bytes]]) -> str:
    """evt_<seq> for one (seq, payload), evt_<first>-<last> for a batch."""
    first, last = events[0][0], events[-1][0]
    return f"evt_{first}" if len(events) == 1 else f"evt_{first}-{last}"


def encode_body(payloads: Sequence[tuple[int, bytes]], batch: bool) -> bytes:
    """The request body: the one payload, or (batch) a JSON array of them."""
    if not batch:
        return payloads[0][1]
    return b"[" + b",".join(p for _, p in payloads) + b"]"


def _types(cfg: Any) -> list[str] | None:
    events = tuple(cfg.events or ())
    return None if not events or "*" in events else list(events)


async def _post(endpoint: Endpoint, signer: Signer, msg_id: str, body: bytes,
                clock: Any) -> tuple[int | None, str | None]:
    """One signed POST. (status, None) on 2xx; (status, error) on another
    status; (None, error) on a timeout or a connection failure."""
    ts = int(clock.now())
    return await endpoint.post((("webhook-id", msg_id), ("webhook-timestamp", str(ts)),
                                ("webhook-signature", signer(msg_id, ts, body))), body)


# --------------------------------------------------------------------- deliverer

def _state_dict(st: dict | None) -> dict:
    st = dict(st or {})
    return {"cursor": int(st.get("cursor") or 0), "failing_since": st.get("failing_since"),
            "next_attempt": st.get("next_attempt"), "attempts": int(st.get("attempts") or 0),
            "last_error": st.get("last_error"),
            # the spool's default for a new row is "ok": anything but failing is active
            "state": FAILING if st.get("state") == FAILING else ACTIVE}


class WebhookDeliverer:
    """Follows the ledger for one endpoint. Call `poke()` (from the event
    loop) after appending events; otherwise it polls every `poll_interval`."""

    def __init__(self, cfg: Any, *, spool: Any, clock: Any, schedule: Sequence[float],
                 failing_after: float,
                 ssl_context: ssl.SSLContext | None = None,
                 poll_interval: float = POLL_INTERVAL, observer: Observer | None = None):
        if not schedule:
            raise ValueError("empty webhook retry schedule")
        self.cfg, self.spool, self.clock = cfg, spool, clock
        self.name = cfg.name
        self.schedule = tuple(float(s) for s in schedule)
        self.failing_after = float(failing_after)
        self.poll_interval = poll_interval
        self._ssl_context = ssl_context
        self.observer = observer or Observer()
        self._endpoint: Endpoint | None = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()          # one send+persist, or one replay, at a time
        self._wake = asyncio.Event()         # new events (poke)
        self._kick = asyncio.Event()         # state changed (replay): cut a backoff short
        self._state: dict | None = None
        self._pinned: tuple[int, int] | None = None   # (cursor, last seq) of a failed batch
        # (seq, payload) read ahead of the cursor, in seq order: one ledger
        # query per PREFETCH events instead of one per request.
        self._buffer: deque[tuple[int, bytes]] = deque()
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
                await self._save()
            except Exception:   # the spool may be closing: at-least-once covers it
                log.exception("event=webhook_cursor_not_saved name=%s", self.name)
        if self._endpoint is not None:
            await self._endpoint.close()
            self._endpoint = None

    def poke(self) -> None:
        self._wake.set()

    # ---- state ---------------------------------------------------------
    async def _load(self) -> dict:
        st = await self.spool.webhook_state(self.name)
        if st is None:
            st = _state_dict({"cursor": await self.spool.last_event_seq(), "state": ACTIVE})
            await self.spool.set_webhook_state(self.name, **st)
            log_event(log, "webhook_created", webhook=self.name, cursor=st["cursor"])
        return _state_dict(st)

    async def _save(self, **changes: Any) -> None:
        assert self._state is not None
        self._state.update(changes)
        await self.spool.set_webhook_state(self.name, **self._state)
        self._dirty, self._saved_at = False, time.monotonic()

    async def _advance(self, **changes: Any) -> None:
        """After a 2xx: move the cursor in memory, store it at most every
        SAVE_EVERY seconds (and when idle, on failure, on stop). A crash in
        between resends those events with the same webhook-id: the
        at-least-once guarantee, for one writer transaction per 0.5 s instead
        of one per event."""
        assert self._state is not None
        self._state.update(changes)
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY:
            await self._save()

    async def status(self) -> dict:
        """For the admin API and metrics (never the secret)."""
        st = _state_dict(await self.spool.webhook_state(self.name)) \
            if self._state is None else dict(self._state)
        oldest = None
        try:
            last = await self.spool.last_event_seq()
            if last > st["cursor"]:
                first = await self.spool.events_after(st["cursor"], 1, types=_types(self.cfg),
                                                      credential=self.cfg.credential)
                oldest = first[0].at if first else None
        except Exception:
            last = None
        return {"name": self.name, "url": self.cfg.url, "events": list(self.cfg.events),
                "credential": self.cfg.credential, "batch_size": self.cfg.batch_size,
                **st, "last_event_seq": last, "oldest_unsent_at": oldest,
                "lag": None if last is None else max(0, last - st["cursor"]),
                "running": self._task is not None and not self._task.done(),
                "sent": self.sent}

    async def replay(self, from_seq: int | str | None = None,
                     since: float | None = None) -> dict:
        """Move the cursor (back, or forward past a backlog) while running."""
        async with self._lock:
            st = await replay(self.spool, self.name, from_seq=from_seq, since=since)
            self._state, self._pinned = _state_dict(st), None
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
            if st["next_attempt"] is not None and now < st["next_attempt"]:
                # backing off: new events do not cut the wait short, a replay does
                self._wake.clear()
                if self._kick.is_set():
                    self._kick.clear()
                    return 0
                return min(st["next_attempt"] - now, self.poll_interval)
            self._kick.clear()
            self._wake.clear()
            buf, size = self._buffer, self.cfg.batch_size
            while buf and buf[0][0] <= st["cursor"]:
                buf.popleft()
            if len(buf) < size:
                buf.extend(await self.spool.event_payloads_after(
                    buf[-1][0] if buf else st["cursor"], max(PREFETCH, size),
                    types=_types(self.cfg), credential=self.cfg.credential))
            events = [buf[i] for i in range(min(size, len(buf)))]
            if not events:
                # Read the ledger's end, then look once more: an event committed
                # before `top` was read is seen by this second fetch, so skipping
                # to `top` (nothing matched our filters up to it) loses nothing.
                top = await self.spool.last_event_seq()
                if top > st["cursor"]:
                    events = await self.spool.event_payloads_after(
                        st["cursor"], size, types=_types(self.cfg),
                        credential=self.cfg.credential)
            if not events:
                if top > st["cursor"] and st["attempts"] == 0:
                    await self._save(cursor=top)   # nothing matched up to top: skip it
                elif self._dirty:
                    await self._save()             # idle: store the cursor now
                return self.poll_interval
            if self._pinned and self._pinned[0] == st["cursor"]:
                events = [e for e in events if e[0] <= self._pinned[1]] or events
            body = encode_body(events, size > 1)
            msg_id = webhook_id(events)
            if self._endpoint is None:
                self._endpoint = Endpoint(self.cfg.url, timeout=self.cfg.timeout,
                                          ssl_context=self._ssl_context, user_agent=USER_AGENT)
            status, error = await _post(self._endpoint, self._signer, msg_id, body, self.clock)
            now = self.clock.now()
            self.observer.webhook_request(self.name, "ok" if error is None else "failed")
            if error is None:
                recovered = st["state"] != ACTIVE or st["attempts"] > 0
                self._pinned = None
                if recovered:
                    await self._save(cursor=events[-1][0], attempts=0, failing_since=None,
                                     next_attempt=None, last_error=None, state=ACTIVE)
                else:
                    await self._advance(cursor=events[-1][0])
                self.sent += 1
                if recovered:
                    log_event(log, "webhook_recovered", webhook=self.name, webhook_id=msg_id,
                              status=status)
                return 0
            self._pinned = (st["cursor"], events[-1][0])
            attempts = st["attempts"] + 1
            failing_since = st["failing_since"] if st["failing_since"] is not None else now
            state = FAILING if now - failing_since >= self.failing_after else st["state"]
            wait = self.schedule[-1] if state == FAILING else \
                self.schedule[min(attempts - 1, len(self.schedule) - 1)]
            if state == FAILING and st["state"] != FAILING:
                log_event(log, "webhook_failing", logging.ERROR, webhook=self.name,
                          since=failing_since, attempts=attempts, error=error)
            log_event(log, "webhook_deferred", logging.WARNING, webhook=self.name,
                      webhook_id=msg_id, status=status, error=error, attempts=attempts,
                      retry_in=f"{wait:g}s")
            await self._save(attempts=attempts, failing_since=failing_since,
                             next_attempt=now + wait, last_error=error, state=state)
            return wait


class WebhookService:
    """Every configured endpoint's deliverer, for the daemon and the admin API."""

    def __init__(self, configs: Iterable[Any], *, spool: Any, clock: Any, ledger_cfg: Any,
                 ssl_context: ssl.SSLContext | None = None,
                 poll_interval: float = POLL_INTERVAL, observer: Observer | None = None):
        self._kw = dict(spool=spool, clock=clock, schedule=ledger_cfg.webhook_retry_schedule,
                        failing_after=ledger_cfg.webhook_failing_after, ssl_context=ssl_context,
                        observer=observer, poll_interval=poll_interval)
        self.deliverers = {c.name: WebhookDeliverer(c, **self._kw) for c in configs}
        self._started = False

    def start(self) -> None:
        self._started = True
        for d in self.deliverers.values():
            d.start()

    async def reconfigure(self, configs: Iterable[Any]) -> None:
        """SIGHUP: stop the endpoints that were removed or changed (each
        stores its cursor), then start the changed and added ones; a changed
        one resumes from its stored cursor (same name), an added one at the
        ledger's end."""
        new = {c.name: c for c in configs}
        gone = [n for n, d in self.deliverers.items() if new.get(n) != d.cfg]
        await asyncio.gather(*(self.deliverers.pop(n).stop() for n in gone))
        for name, cfg in new.items():
            if name not in self.deliverers:
                d = self.deliverers[name] = WebhookDeliverer(cfg, **self._kw)
                if self._started:
                    d.start()
        # keep the configured order (statuses, metrics)
        self.deliverers = {n: self.deliverers[n] for n in new}

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.deliverers.values()))

    def poke(self) -> None:
        for d in self.deliverers.values():
            d.poke()

    async def statuses(self) -> list[dict]:
        return [await d.status() for d in self.deliverers.values()]

    async def replay(self, name: str, *, from_seq: int | str | None = None,
                     since: float | None = None) -> dict:
        return await self.deliverers[name].replay(from_seq=from_seq, since=since)

    async def test(self, name: str) -> dict:
        """`send_test` to endpoint `name` (KeyError: unknown name) →
        {name, url, ok, status, error, ms}."""
        d = self.deliverers[name]
        return await probe(d.cfg, d.clock, ssl_context=d._ssl_context)


# --------------------------------------------------------------------- replay

async def first_seq_since(spool: Any, since: float) -> int | None:
    """The first ledger seq whose event happened at/after `since` (None: none).
    Binary search with events_after(x, 1) — O(log n) queries; relies on event
    times increasing with seq (they are appended in time order)."""
    last = await spool.last_event_seq()
    lo, hi = 0, last          # answer in (lo, hi], or None
    found: int | None = None
    while lo < hi:
        mid = (lo + hi) // 2
        evs = await spool.events_after(mid, 1)
        if not evs:
            hi = mid
            continue
        e = evs[0]
        if _at(e.at) >= since:
            found, hi = e.seq, mid     # e is the first event after mid; look before it
        else:
            lo = e.seq                 # every event ≤ e.seq is before `since`
    return found


def _at(at: Any) -> float:
    if isinstance(at, (int, float)):
        return float(at)
    return datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()


async def replay(spool: Any, name: str, *, from_seq: int | str | None = None,
                 since: float | None = None) -> dict:
    """Set the endpoint's cursor so delivery resumes with event `from_seq`
    (inclusive; "end": after the ledger's last event, dropping the backlog) or with the first event at/after `since` (unix time); the
    state becomes active with no pending backoff. With nothing at/after
    `since`, the cursor moves to the ledger's end. Returns the new state.
    Use `WebhookDeliverer.replay` while that endpoint's deliverer runs."""
    if (from_seq is None) == (since is None):
        raise ValueError("give exactly one of from_seq or since")
    last = await spool.last_event_seq()
    if from_seq == "end":
        cursor = last                  # drop the backlog: new events only
    elif from_seq is not None:
        cursor = max(0, min(int(from_seq) - 1, last))
    else:
        first = await first_seq_since(spool, float(since))
        cursor = last if first is None else first - 1
    st = {"cursor": cursor, "failing_since": None, "next_attempt": None, "attempts": 0,
          "last_error": None, "state": ACTIVE}
    await spool.set_webhook_state(name, **st)
    log_event(log, "webhook_replay", webhook=name, cursor=cursor)
    return st


# --------------------------------------------------------------------- test

async def send_test(cfg: Any, clock: Any, *, ssl_context: ssl.SSLContext | None = None
                    ) -> tuple[int | None, str | None]:
    """One signed {"type": "test", …} request to the endpoint (does not touch
    the ledger or the cursor). Returns (status, error); error None on 2xx."""
    obj = {"type": "test", "seq": 0, "timestamp": _iso(clock.now()), "queue_id": None,
           "recipient": None, "credential": cfg.credential,
           "data": {"message": "mta webhook test", "webhook": cfg.name}}
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    body = encode_body([(0, payload)], cfg.batch_size > 1)
    msg_id = f"test_{secrets.token_hex(8)}"
    endpoint = Endpoint(cfg.url, timeout=cfg.timeout, ssl_context=ssl_context,
                        user_agent=USER_AGENT)
    try:
        return await _post(endpoint, Signer(cfg.secret), msg_id, body, clock)
    finally:
        await endpoint.close()


async def probe(cfg: Any, clock: Any, *, ssl_context: ssl.SSLContext | None = None) -> dict:
    """`send_test`, timed: {name, url, ok, status, error, ms} (the API's and
    `mta webhooks test --json`'s answer)."""
    t0 = time.monotonic()
    status, error = await send_test(cfg, clock, ssl_context=ssl_context)
    return {"name": cfg.name, "url": cfg.url, "ok": error is None, "status": status,
            "error": error, "ms": round((time.monotonic() - t0) * 1000)}
