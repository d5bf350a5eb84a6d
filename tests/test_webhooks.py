"""Signed webhooks (mta.webhooks, `mta webhooks …`) against a real
aiohttp receiver on 127.0.0.1 and an in-memory ledger with the spool's API.

The receiver's view is the Standard Webhooks reference library
(`standardwebhooks`): every request it gets must verify with it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from mta.config.sections import EVENT_TYPES, WebhookConfig
from mta.core import SystemClock
from mta.core.observe import Observer
from mta.webhooks import (WebhookDeliverer, WebhookService, event_json, first_seq_since,
                          new_secret, replay, send_test, sign)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SCHEDULE = (0.05, 0.1, 0.2)


# ---------------------------------------------------------------- the fakes

@dataclass
class EventView:
    seq: int
    at: float
    type: str
    queue_id: str
    recipient: str | None
    credential: str | None
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(seq=self.seq, at=self.at, type=self.type, queue_id=self.queue_id,
                    recipient=self.recipient, credential=self.credential, detail=self.detail)


class FakeSpool:
    """The ledger part of the spool's API, in memory."""

    def __init__(self):
        self.events: list[EventView] = []
        self.states: dict[str, dict] = {}
        self.state_log: dict[str, list[str]] = {}    # every state written, per endpoint
        self.fetches = 0

    def append(self, n: int, *, start_at: float | None = None, step: float = 1.0,
               messages: int = 5) -> list[EventView]:
        out = []
        for _ in range(n):
            seq = len(self.events) + 1
            at = time.time() if start_at is None else start_at + (seq - 1) * step
            ev = EventView(seq=seq, at=at, type=EVENT_TYPES[seq % len(EVENT_TYPES)],
                           queue_id=f"Q{seq % messages}", recipient=f"r{seq % messages}@x.example",
                           credential="alice" if seq % 2 else "bob", detail={"n": seq})
            self.events.append(ev)
            out.append(ev)
        return out

    async def events_after(self, after_seq, limit, *, types=None, recipient=None,
                           credential=None, tenant=None):
        self.fetches += 1
        out = []
        for e in self.events:
            if e.seq <= after_seq or (types and e.type not in types):
                continue
            if (recipient and e.recipient != recipient) or (credential and e.credential != credential):
                continue
            out.append(e)
            if len(out) >= limit:
                break
        return out

    async def event_payloads_after(self, after_seq, limit, *, types=None, credential=None,
                                   tenant=None):
        evs = await self.events_after(after_seq, limit, types=types, credential=credential)
        return [(e.seq, json.dumps(event_json(e), separators=(",", ":")).encode()) for e in evs]

    async def last_event_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    async def webhook_state(self, name):
        st = self.states.get(name)
        return None if st is None else dict(st)

    async def set_webhook_state(self, name, **changes):
        st = self.states.setdefault(name, {"cursor": 0, "failing_since": None,
                                           "next_attempt": None, "attempts": 0,
                                           "last_error": None, "state": "active"})
        st.update(changes)
        log = self.state_log.setdefault(name, [])
        if not log or log[-1] != st["state"]:
            log.append(st["state"])


class Receiver:
    """An endpoint on 127.0.0.1. `script` decides the next requests' fate:
    "500", "hang" (answers after `hang` seconds: the sender times out), or
    anything else/empty: 200. Every request is recorded before it is answered."""

    def __init__(self):
        self.got: list[tuple[dict, bytes]] = []
        self.script: list[str] = []
        self.hang = 0.6
        self.port = 0
        self.runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(({k.lower(): v for k, v in request.headers.items()}, body))
        self.arrived.set()
        fate = self.script.pop(0) if self.script else "ok"
        if fate == "500":
            return web.Response(status=500, text="internal   error\nbusy")
        if fate == "hang":
            await asyncio.sleep(self.hang)
        return web.Response(status=204)

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def bodies(self) -> list[Any]:
        return [json.loads(b) for _, b in self.got]

    def seqs(self) -> list[int]:
        out = []
        for data in self.bodies():
            out.extend(e["seq"] for e in (data if isinstance(data, list) else [data]))
        return out

    def verify_all(self, secret: str = SECRET) -> None:
        w = Webhook(secret)
        for headers, body in self.got:
            w.verify(body, headers)          # raises on a bad signature


@pytest.fixture
async def rx():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def until(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _cfg(url: str, **kw) -> WebhookConfig:
    kw.setdefault("timeout", 0.3)
    return WebhookConfig(name=kw.pop("name", "app"), url=url, secret=SECRET, **kw)


def _deliverer(spool, cfg, **kw) -> WebhookDeliverer:
    kw.setdefault("schedule", SCHEDULE)
    kw.setdefault("failing_after", 60.0)
    kw.setdefault("poll_interval", 0.2)
    return WebhookDeliverer(cfg, spool=spool, clock=SystemClock(), **kw)


# ---------------------------------------------------------------- signing

def test_sign_matches_the_reference_library_and_spec():
    body = b'{"type":"delivered","seq":1}'
    sig = sign(SECRET, "evt_1", 1_700_000_000, body)
    from datetime import datetime, timezone
    ref = Webhook(SECRET).sign("evt_1", datetime.fromtimestamp(1_700_000_000, tz=timezone.utc),
                               body.decode())
    assert sig == ref and sig.startswith("v1,")
    # the spec's own test vector (standard-webhooks README / libraries' tests)
    vec = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
               1614265330, b'{"test": 2432232314}')
    assert vec == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_new_secret_form():
    s = new_secret()
    assert s.startswith("whsec_")
    assert 24 <= len(base64.b64decode(s[6:], validate=True)) <= 32
    assert new_secret() != s
    Webhook(s)   # the library accepts it


def test_event_json_shape():
    ev = EventView(7, 1_700_000_000.25, "delivered", "Q1", "a@x.example", "alice",
                   {"remote_host": "mx.x.example", "tls": "TLSv1.3"})
    assert event_json(ev) == {"type": "delivered", "seq": 7,
                              "timestamp": "2023-11-14T22:13:20.250Z", "queue_id": "Q1",
                              "recipient": "a@x.example", "credential": "alice",
                              "tags": None, "test": False,
                              "data": {"remote_host": "mx.x.example", "tls": "TLSv1.3"}}


async def test_the_spools_sql_payload_is_event_json(tmp_path):
    """The deliverer sends what SQLite builds (index.EVENT_PAYLOAD_COLS): it
    must be exactly event_json of the same event: null for "", ms rounding,
    non-ASCII, nested details, and filters."""
    from mta.core.envelope import LedgerEvent
    from mta.spool.spool import Spool
    spool = await Spool.open(tmp_path / "state", now=time.time())
    try:
        ats = [1_700_000_000.0, 1_700_000_000.2495, 1_700_000_000.9996, 1_799_999_999.123456]
        await spool.ledger.append_events([
            LedgerEvent(type="rejected" if i % 2 else "suppressed", at=at,
                        recipient=f"rü{i}@x.example" if i else "",
                        credential="alice" if i % 2 else "",
                        detail={"reply": "550 5.7.1 «no»", "n": i, "nested": {"a": [1, None]}}
                        if i else {})
            for i, at in enumerate(ats)])
        views = await spool.ledger.events_after(0, 10)
        sql = await spool.ledger.event_payloads_after(0, 10)
        assert [s for s, _ in sql] == [v.seq for v in views] and len(views) == 4
        for v, (_, payload) in zip(views, sql):
            assert json.loads(payload) == event_json(v), payload
        only = await spool.ledger.event_payloads_after(0, 10, types=["rejected"], credential="alice")
        assert [s for s, _ in only] == [v.seq for v in views if v.type == "rejected"]
        assert json.loads(sql[0][1])["data"] == {} and json.loads(sql[0][1])["recipient"] is None
    finally:
        await spool.close()


# ---------------------------------------------------------------- durable delivery

async def test_outage_500s_timeout_refused_then_recovery(rx):
    """50 events over 5 messages through 3×500, a timeout, and the endpoint
    down (connection refused) long enough to be marked failing: every event
    arrives at least once, in seq order, duplicates with the same webhook-id,
    every signature verifies; the state goes active → failing → active."""
    spool = FakeSpool()
    d = _deliverer(spool, _cfg(rx.url), failing_after=1.0)
    d.start()
    try:
        await until(lambda: "app" in spool.states, what="state created")
        assert spool.states["app"]["cursor"] == 0
        rx.script = ["500", "500", "500", "hang"]
        spool.append(20)
        d.poke()
        await until(lambda: "timeout" in (spool.states["app"]["last_error"] or ""),
                    what="3×500, then a timeout")
        assert spool.states["app"]["attempts"] == 4 and spool.states["app"]["cursor"] == 0
        await rx.stop()                                   # down: connection refused
        spool.append(20)
        d.poke()
        await until(lambda: spool.states["app"]["state"] == "failing", timeout=10,
                    what="failing")
        st = spool.states["app"]
        assert st["cursor"] < 40 and st["attempts"] >= 5
        assert "connection failed" in st["last_error"]
        assert st["next_attempt"] - time.time() <= SCHEDULE[-1] + 0.05   # last step repeats
        spool.append(10)
        d.poke()
        await asyncio.sleep(0.3)
        await rx.start()                                  # same port
        await until(lambda: spool.states["app"]["cursor"] == 50, timeout=10, what="caught up")
    finally:
        await d.stop()
    st = spool.states["app"]
    assert st["state"] == "active" and st["attempts"] == 0 and st["last_error"] is None
    assert spool.state_log["app"] == ["active", "failing", "active"]

    rx.verify_all()
    seqs = rx.seqs()
    assert sorted(set(seqs)) == list(range(1, 51))        # nothing lost
    assert seqs == sorted(seqs)                          # never reordered (retries repeat)
    assert len(seqs) > 50                                 # the 500s/hang were resent…
    by_id: dict[str, bytes] = {}
    for headers, body in rx.got:                          # …with the same id and content
        assert by_id.setdefault(headers["webhook-id"], body) == body
        assert headers["content-type"] == "application/json"
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    first = json.loads(rx.got[0][1])
    assert rx.got[0][0]["webhook-id"] == "evt_1" and first["seq"] == 1
    assert sum(1 for h, _ in rx.got if h["webhook-id"] == "evt_1") == 5   # 3×500, hang, ok
    for q in {f"Q{i}" for i in range(5)}:                 # per-message order
        mine = [b["seq"] for b in rx.bodies() if b["queue_id"] == q]
        assert mine == sorted(mine) and len(set(mine)) == 10


async def test_cursor_persists_across_restart(rx):
    spool = FakeSpool()
    spool.append(3)                       # before the endpoint existed: not sent
    d1 = _deliverer(spool, _cfg(rx.url))
    d1.start()
    await until(lambda: "app" in spool.states)
    assert spool.states["app"]["cursor"] == 3
    spool.append(10)
    d1.poke()
    await until(lambda: spool.states["app"]["cursor"] == 13)
    await d1.stop()
    spool.append(10)                      # while "the daemon" is down
    d2 = _deliverer(spool, _cfg(rx.url))
    d2.start()
    try:
        await until(lambda: spool.states["app"]["cursor"] == 23, what="resumed")
    finally:
        await d2.stop()
    assert rx.seqs() == list(range(4, 24))   # exactly once here: no failures
    rx.verify_all()


async def test_restart_during_backoff_keeps_the_backlog_and_the_id(rx):
    spool = FakeSpool()
    d1 = _deliverer(spool, _cfg(rx.url), schedule=(0.5,))
    d1.start()
    await until(lambda: "app" in spool.states)
    rx.script = ["500"]
    spool.append(3)
    d1.poke()
    await until(lambda: spool.states["app"]["attempts"] == 1)
    await d1.stop()
    d2 = _deliverer(spool, _cfg(rx.url), schedule=(0.5,))
    d2.start()
    try:
        await until(lambda: spool.states["app"]["cursor"] == 3)
    finally:
        await d2.stop()
    ids = [h["webhook-id"] for h, _ in rx.got]
    assert ids == ["evt_1", "evt_1", "evt_2", "evt_3"]


async def test_filters_by_type_and_credential(rx):
    spool = FakeSpool()
    cfg = _cfg(rx.url, events=("delivered", "bounced"), credential="alice")
    d = _deliverer(spool, cfg)
    d.start()
    try:
        await until(lambda: "app" in spool.states)
        spool.append(60)
        d.poke()
        want = [e.seq for e in spool.events
                if e.type in ("delivered", "bounced") and e.credential == "alice"]
        assert want
        await until(lambda: len(rx.got) == len(want))
        # nothing matching: the cursor skips ahead
        spool.events.append(EventView(seq=61, at=time.time(), type="queued", queue_id="Q1",
                                      recipient="r1@x.example", credential="bob", detail={}))
        d.poke()
        await until(lambda: spool.states["app"]["cursor"] == 61)
    finally:
        await d.stop()
    assert rx.seqs() == want
    assert all(b["credential"] == "alice" and b["type"] in ("delivered", "bounced")
               for b in rx.bodies())


async def test_batches_are_arrays_and_a_failed_batch_is_pinned(rx):
    spool = FakeSpool()
    d = _deliverer(spool, _cfg(rx.url, batch_size=4), schedule=(0.3,))
    d.start()
    try:
        await until(lambda: "app" in spool.states)
        spool.append(10)
        d.poke()
        await until(lambda: spool.states["app"]["cursor"] == 10)
        assert [h["webhook-id"] for h, _ in rx.got] == ["evt_1-4", "evt_5-8", "evt_9-10"]
        assert all(isinstance(b, list) for b in rx.bodies())
        assert [len(b) for b in rx.bodies()] == [4, 4, 2]
        # a failed batch of 2 is retried as the same 2 events even though more arrived
        rx.got.clear()
        rx.script = ["500"]
        spool.append(2)
        d.poke()
        await until(lambda: len(rx.got) == 1)
        spool.append(3)
        d.poke()
        await until(lambda: spool.states["app"]["cursor"] == 15)
    finally:
        await d.stop()
    assert [h["webhook-id"] for h, _ in rx.got] == ["evt_11-12", "evt_11-12", "evt_13-15"]
    assert rx.got[0][1] == rx.got[1][1]
    rx.verify_all()


async def test_replay_moves_the_cursor_back(rx):
    spool = FakeSpool()
    t0 = 1_800_000_000.0
    d = _deliverer(spool, _cfg(rx.url))
    d.start()
    try:
        await until(lambda: "app" in spool.states)
        spool.append(10, start_at=t0, step=60)
        d.poke()
        await until(lambda: spool.states["app"]["cursor"] == 10)
        st = await d.replay(from_seq=3)
        assert st["cursor"] == 2 and st["state"] == "active"
        await until(lambda: len(rx.got) == 18)
        assert rx.seqs() == list(range(1, 11)) + list(range(3, 11))
    finally:
        await d.stop()
    # with the deliverer stopped: the spool-level helper, by time
    assert await first_seq_since(spool, t0 + 5 * 60) == 6
    assert await first_seq_since(spool, t0 + 5 * 60 - 1) == 6
    assert await first_seq_since(spool, 0) == 1
    assert await first_seq_since(spool, t0 + 10 * 60) is None
    st = await replay(spool, "app", since=t0 + 5 * 60 - 30)
    assert st["cursor"] == 5
    rx.got.clear()
    d = _deliverer(spool, _cfg(rx.url))
    d.start()
    try:
        await until(lambda: spool.states["app"]["cursor"] == 10)
    finally:
        await d.stop()
    assert rx.seqs() == [6, 7, 8, 9, 10]
    assert (await replay(spool, "app", since=t0 + 3600))["cursor"] == 10   # nothing: the end
    assert (await replay(spool, "app", from_seq=999))["cursor"] == 10      # drops the backlog
    with pytest.raises(ValueError):
        await replay(spool, "app")


async def test_replay_clears_failing_and_cuts_the_backoff(rx):
    spool = FakeSpool()
    d = _deliverer(spool, _cfg(rx.url), schedule=(0.05, 30.0), failing_after=0.01)
    d.start()
    try:
        await until(lambda: "app" in spool.states)
        rx.script = ["500", "500"]
        spool.append(2)
        d.poke()
        await until(lambda: spool.states["app"]["state"] == "failing")
        st = spool.states["app"]
        assert st["attempts"] == 2 and 29 < st["next_attempt"] - time.time() <= 30
        spool.append(1)
        d.poke()                          # new events do not cut a backoff short
        await asyncio.sleep(0.3)
        assert len(rx.got) == 2
        await d.replay(from_seq=2)        # a replay does (and drops event 1 here)
        await until(lambda: spool.states["app"]["cursor"] == 3)
    finally:
        await d.stop()
    assert spool.state_log["app"] == ["active", "failing", "active"]
    assert rx.seqs() == [1, 1, 2, 3]


async def test_idle_deliverer_does_not_busy_loop(rx):
    spool = FakeSpool()
    d = _deliverer(spool, _cfg(rx.url), poll_interval=0.2)
    d.start()
    try:
        await asyncio.sleep(1.0)
    finally:
        await d.stop()
    assert spool.fetches <= 8           # ~1 per poll_interval


async def test_service_statuses_and_replay(rx):
    spool = FakeSpool()
    ledger = SimpleNamespace(webhook_retry_schedule=SCHEDULE, webhook_failing_after=60.0)
    svc = WebhookService([_cfg(rx.url, name="a"), _cfg(rx.url, name="b", events=("bounced",))],
                         spool=spool, clock=SystemClock(), ledger_cfg=ledger, poll_interval=0.2)
    svc.start()
    try:
        await until(lambda: {"a", "b"} <= set(spool.states))
        spool.append(5)
        svc.poke()
        await until(lambda: spool.states["a"]["cursor"] == 5 and spool.states["b"]["cursor"] == 5)
        rows = await svc.statuses()
        assert [r["name"] for r in rows] == ["a", "b"]
        assert rows[0]["state"] == "active" and rows[0]["lag"] == 0 and rows[0]["running"]
        assert all("secret" not in r and SECRET not in json.dumps(r) for r in rows)
        with pytest.raises(KeyError):
            await svc.replay("nope", from_seq=1)
    finally:
        await svc.stop()


async def test_reconfigure_changes_an_endpoint_without_losing_events(rx):
    """SIGHUP's WebhookService.reconfigure: a changed endpoint restarts from
    its stored cursor (nothing skipped, nothing reordered), an added one
    starts at the ledger's end, a removed one stops."""
    spool = FakeSpool()
    ledger = SimpleNamespace(webhook_retry_schedule=SCHEDULE, webhook_failing_after=60.0)
    svc = WebhookService([_cfg(rx.url)], spool=spool, clock=SystemClock(), ledger_cfg=ledger,
                         poll_interval=0.2)
    rx2 = Receiver()
    await rx2.start()
    svc.start()
    try:
        await until(lambda: "app" in spool.states)
        spool.append(10)
        svc.poke()
        await until(lambda: len(rx.got) == 10, what="10 events")
        rx.script = ["500"] * 1000                     # failing while it is reconfigured
        spool.append(5)
        svc.poke()
        await until(lambda: spool.states["app"]["attempts"] >= 1, what="a failure")
        await svc.reconfigure([_cfg(rx.url, timeout=0.4), _cfg(rx2.url, name="new")])
        assert list(svc.deliverers) == ["app", "new"]
        assert svc.deliverers["app"].cfg.timeout == 0.4
        await until(lambda: "new" in spool.states, what="the added endpoint's cursor")
        assert spool.states["new"]["cursor"] == 15
        rx.script = []
        spool.append(3)
        svc.poke()
        await until(lambda: spool.states["app"]["cursor"] == 18, what="app caught up")
        await until(lambda: spool.states.get("new", {}).get("cursor") == 18, what="new")
        await svc.reconfigure([_cfg(rx.url, timeout=0.4)])
        assert list(svc.deliverers) == ["app"]
    finally:
        await svc.stop()
        await rx2.stop()
    first_arrivals = list(dict.fromkeys(rx.seqs()))
    assert first_arrivals == list(range(1, 19))        # nothing skipped or reordered
    assert len(rx.seqs()) > 18                         # 15 was sent (500) before and after
    assert rx2.seqs() == [16, 17, 18]                  # the added one: from the ledger's end
    rx.verify_all()
    rx2.verify_all()


async def test_send_test(rx):
    status, error = await send_test(_cfg(rx.url), SystemClock())
    assert (status, error) == (204, None)
    rx.verify_all()
    (headers, body), = rx.got
    assert json.loads(body)["type"] == "test" and headers["webhook-id"].startswith("test_")
    rx.script = ["500"]
    assert (await send_test(_cfg(rx.url), SystemClock()))[0] == 500
    port = rx.port
    await rx.stop()
    status, error = await send_test(_cfg(f"http://127.0.0.1:{port}/hook"), SystemClock())
    assert status is None and "connection failed" in error


async def test_against_the_real_spool(tmp_path, rx):
    """The same loop over the real index (ledger + webhook_state table)."""
    from mta.core.envelope import LedgerEvent
    from mta.spool.spool import Spool
    spool = await Spool.open(tmp_path / "state", now=time.time())
    try:
        calls: list[tuple[str, str]] = []

        class Recorder(Observer):
            def webhook_request(self, webhook, result):
                calls.append((webhook, result))

        d = _deliverer(spool.ledger, _cfg(rx.url, events=("rejected", "suppressed")),
                       observer=Recorder())
        d.start()
        await until(lambda: len(rx.got) == 0 and d._state is not None)
        rx.script = ["500"]
        t0 = time.time() - 30
        await spool.ledger.append_events([
            LedgerEvent(type="rejected" if i % 2 else "suppressed", at=t0 + i,
                        queue_id="", recipient=f"r{i}@x.example", detail={"i": i})
            for i in range(6)])
        st = await d.status()            # nothing sent yet: the oldest unsent is the first
        assert st["lag"] == 6 and st["oldest_unsent_at"] == pytest.approx(t0)
        d.poke()
        await until(lambda: len(rx.got) == 7, what="6 events + 1 retry")
        await until(lambda: len(calls) == 7, what="7 observed requests")
        assert calls == [("app", "failed")] + [("app", "ok")] * 6
        st = await d.status()
        assert st["lag"] == 0 and st["oldest_unsent_at"] is None and st["sent"] == 6
        await d.stop()
        st = await spool.ledger.webhook_state("app")
        assert st["cursor"] == await spool.ledger.last_event_seq() and st["state"] == "active"
        assert st["attempts"] == 0 and st["last_error"] is None
    finally:
        await spool.close()
    rx.verify_all()
    bodies = rx.bodies()
    assert [b["data"]["i"] for b in bodies] == [0, 0, 1, 2, 3, 4, 5]
    assert bodies[0]["credential"] is None and bodies[0]["queue_id"] is None
    assert bodies[0]["timestamp"].endswith("Z")


# ---------------------------------------------------------------- the CLI

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, admin: str, url: str) -> Path:
    p = tmp_path / "mta.toml"
    p.write_text(f"""
[server]
state_dir = "{tmp_path / 'state'}"

[admin]
address = "{admin}"
token = "tok-0123456789abcdef"

[[webhooks]]
name = "app"
url = "{url}"
secret = "{SECRET}"
events = ["delivered", "bounced"]
credential = "alice"
""")
    return p


async def mta(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("MTA_CONFIG", "MTA_STATE_DIR", "http_proxy", "HTTP_PROXY"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "mta", *args, "--config", str(config)]
    return await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True,
                                   text=True, cwd=tmp_path, timeout=60)


async def test_cli_without_daemon(tmp_path, rx):
    cfg = _config(tmp_path, f"127.0.0.1:{_free_port()}", rx.url)
    r = await mta(tmp_path, cfg, "webhooks", "secret")
    assert r.returncode == 0 and r.stdout.startswith("whsec_")
    Webhook(r.stdout.strip())
    r = await mta(tmp_path, cfg, "webhooks", "list")
    assert r.returncode == 0, r.stderr
    assert "app\t" in r.stdout and rx.url in r.stdout and "events=delivered,bounced" in r.stdout
    assert "is mta running?" in r.stderr and SECRET not in r.stdout
    rows = json.loads((await mta(tmp_path, cfg, "webhooks", "list", "--json")).stdout)
    assert rows[0]["name"] == "app" and rows[0]["state"] is None
    r = await mta(tmp_path, cfg, "webhooks", "replay", "app", "--from", "3")
    assert r.returncode == 1 and "is mta running?" in r.stderr and "start it first" in r.stderr
    r = await mta(tmp_path, cfg, "webhooks", "replay", "nope", "--from", "3")
    assert r.returncode == 1 and "no webhook 'nope'" in r.stderr
    r = await mta(tmp_path, cfg, "webhooks", "replay", "app")
    assert r.returncode == 2
    r = await mta(tmp_path, cfg, "webhooks", "test", "app")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("app: HTTP 204")
    rx.verify_all()
    rx.script = ["500"]
    r = await mta(tmp_path, cfg, "webhooks", "test", "app", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == 500


async def test_cli_through_the_admin_api(tmp_path, rx):
    from mta.admin.http import AdminServer
    spool = FakeSpool()
    ledger = SimpleNamespace(webhook_retry_schedule=SCHEDULE, webhook_failing_after=60.0)
    svc = WebhookService([_cfg(rx.url)], spool=spool, clock=SystemClock(), ledger_cfg=ledger,
                         poll_interval=0.2)

    class Backend:                      # what the lead's AdminBackend will expose
        async def webhooks(self):
            return await svc.statuses()

        async def webhook_replay(self, name, *, from_seq=None, since=None):
            return await svc.replay(name, from_seq=from_seq, since=since)

        async def webhook_test(self, name):
            return await svc.test(name)

    srv = AdminServer(SimpleNamespace(address="127.0.0.1:0", metrics_require_token=False),
                      Backend(), "tok-0123456789abcdef")
    await srv.start()
    svc.start()
    try:
        cfg = _config(tmp_path, f"127.0.0.1:{srv.sockname[1]}", rx.url)
        t0 = time.time() - 3600
        await until(lambda: "app" in spool.states)
        spool.append(6, start_at=t0, step=60)
        svc.poke()
        await until(lambda: spool.states["app"]["cursor"] == 6)
        r = await mta(tmp_path, cfg, "webhooks", "list")
        assert r.returncode == 0 and "active  cursor 6  lag 0" in r.stdout, r.stdout + r.stderr
        r = await mta(tmp_path, cfg, "webhooks", "replay", "app", "--from", "4")
        assert r.returncode == 0 and "replaying from event 4" in r.stdout, r.stderr
        await until(lambda: len(rx.got) == 9)
        r = await mta(tmp_path, cfg, "webhooks", "replay", "app", "--since",
                      time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + 5 * 60 - 10)))
        assert r.returncode == 0 and "replaying from event 6" in r.stdout, r.stderr
        await until(lambda: len(rx.got) == 10)
        r = await mta(tmp_path, cfg, "webhooks", "replay", "app", "--since", "2h")
        assert r.returncode == 0 and "replaying from event 1" in r.stdout, r.stderr
        await until(lambda: len(rx.got) == 16)
        r = await mta(tmp_path, cfg, "webhooks", "replay", "app", "--since", "yesterday")
        assert r.returncode == 1 and "is not a time" in r.stderr
        # drop a backlog: the endpoint fails, events pile up, the operator skips them
        rx.script = ["500"] * 1000          # failing until the operator acts
        spool.append(4)
        svc.poke()
        await until(lambda: spool.states["app"]["attempts"] >= 1, what="a failure")
        r = await mta(tmp_path, cfg, "webhooks", "replay", "app", "--end")
        assert r.returncode == 0 and "backlog dropped, next event 11" in r.stdout, r.stderr
        assert spool.states["app"]["cursor"] == 10 and spool.states["app"]["attempts"] == 0
        rx.script = []
        n = len(rx.got)
        spool.append(1)
        svc.poke()
        await until(lambda: len(rx.got) == n + 1, what="the next new event")
        assert json.loads(rx.got[-1][1])["seq"] == 11
        base, auth = f"http://127.0.0.1:{srv.sockname[1]}", {
            "Authorization": "Bearer tok-0123456789abcdef"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/webhooks/app/test", headers=auth) as resp:
                got = await resp.json()
                assert resp.status == 200 and got["ok"] and got["status"] == 204, got
            async with http.post(f"{base}/v1/webhooks/nope/test", headers=auth) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "not_found"
        test_bodies = [b for b in rx.bodies() if b["type"] == "test"]
        assert len(test_bodies) == 1 and test_bodies[0]["data"]["webhook"] == "app"
        assert rx.got[-1][0]["webhook-id"].startswith("test_")
    finally:
        await svc.stop()
        await srv.stop()
    seqs = rx.seqs()
    assert seqs[:16] == [1, 2, 3, 4, 5, 6, 4, 5, 6, 6, 1, 2, 3, 4, 5, 6]
    assert set(seqs[16:-2]) == {7} and seqs[-2:] == [11, 0]   # 7 failed, dropped; 0: the test
    rx.verify_all()


def test_parse_time():
    from mta.cli.webhooks_cmd import parse_time
    assert parse_time("1700000000", 0) == 1_700_000_000
    assert parse_time("2h", 10_000) == 10_000 - 7200
    assert parse_time("2023-11-14T22:13:20Z", 0) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20", 0) == 1_700_000_000
    with pytest.raises(ValueError):
        parse_time("soon", 0)
