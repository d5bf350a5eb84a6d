"""Webhooks end to end (issue 6): the real daemon (a subprocess) follows its
ledger with a signed webhook endpoint on all events while the endpoint fails
in every way (500s, timeouts, connection refused) and recovers, and the
daemon is SIGKILLed and restarted twice: during the outage and while it
catches up.

The guarantee under test is AT LEAST ONCE (README, mta/webhooks/deliverer.py):
every ledger event reaches the receiver with a 2xx at least once; every
request with the same `webhook-id` carries the same body (the id is
`evt_<seq>`); the first arrivals of each message's events are in ledger
order; every signature verifies with the `standardwebhooks` library. The
admin API and the metrics show the endpoint `failing` during the outage
and caught up (lag 0) at the end."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import re
import signal
import time
from pathlib import Path

import aiohttp
import aiosmtplib
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.support.mtahelpers import config_text, free_port
from tests.support.sink import Sink
from tests.test_crash import start_daemon, wait_port

SECRET = "whsec_" + base64.b64encode(b"e2e-webhook-secret-0123456789abcd").decode()
TOKEN = "test-admin-token-0123456789"


class Receiver:
    """A webhook endpoint on 127.0.0.1 whose behaviour the test switches:
    "ok" (204), "500", "hang" (answers after 1.5 s: the daemon's 0.5 s
    timeout fires first) or down (not listening: connection refused)."""

    def __init__(self, port: int):
        self.port, self.mode = port, "ok"
        self.requests: list[tuple[str, dict, bytes]] = []    # (mode answered, headers, body)
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        mode = self.mode
        self.requests.append((mode, {k.lower(): v for k, v in request.headers.items()}, body))
        if mode == "500":
            return web.Response(status=500, text="storm")
        if mode == "hang":
            await asyncio.sleep(1.5)
            return web.Response(status=503)
        return web.Response(status=204)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self.runner:
            await self.runner.cleanup()
            self.runner = None

    def acked(self) -> list[tuple[dict, bytes]]:
        return [(h, b) for mode, h, b in self.requests if mode == "ok"]


def _config(tmp_path: Path, port: int, admin: int, sink_port: int, hook_port: int) -> Path:
    text = config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                       retry="1s", lifetime="60s", routes={"*": f"127.0.0.1:{sink_port}"})
    text = text.replace('log_level = "debug"', 'log_level = "info"')
    text = re.sub(r'(\[admin\]\naddress = "127\.0\.0\.1:)\d+"', rf'\g<1>{admin}"', text)
    assert f'127.0.0.1:{admin}"' in text
    text += ('[ledger]\nwebhook_retry_schedule = "0.2s,0.4s,0.8s"\n'
             'webhook_failing_after = "2s"\n'
             f'[[webhooks]]\nname = "app"\nurl = "http://127.0.0.1:{hook_port}/hook"\n'
             f'events = ["*"]\nsecret = "{SECRET}"\ntimeout = "0.5s"\n')
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return path


async def _submit(port: int, n: int, tag: str) -> list[str]:
    """n messages: most to ok@, every third also to reject@ (a sync bounce
    and a DSN), every fourth to tempfail-1 (deferred, then delivered)."""
    qids = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               use_tls=False, timeout=10) as c:
        for i in range(n):
            rcpts = [f"ok-{tag}{i}@rcpt.test"]
            if i % 3 == 0:
                rcpts.append(f"reject-{tag}{i}@rcpt.test")
            if i % 4 == 0:
                rcpts.append(f"tempfail-1-{tag}{i}@rcpt.test")
            msg = (f"From: app@sender.test\r\nTo: {rcpts[0]}\r\nSubject: {tag} {i}\r\n\r\n"
                   "hello\r\n").encode()
            _, resp = await c.sendmail("app@sender.test", rcpts, msg)
            qids.append(resp.split()[-1])
    return qids


async def _api(session: aiohttp.ClientSession, admin: int, path: str) -> dict:
    async with session.get(f"http://127.0.0.1:{admin}{path}",
                           headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def _metrics(session: aiohttp.ClientSession, admin: int) -> str:
    async with session.get(f"http://127.0.0.1:{admin}/metrics",
                           headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return await r.text()


async def _ledger(session: aiohttp.ClientSession, admin: int) -> list[dict]:
    out, after = [], 0
    while True:
        page = await _api(session, admin, f"/v1/events?after={after}&limit=1000")
        out += page["events"]
        if not page["events"]:
            return out
        after = page["next_after"]


async def _until(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def test_outage_and_sigkills_lose_and_reorder_nothing(tmp_path, report):
    async with Sink(tls=False) as sink:
        port, admin, hook_port = free_port(), free_port(), free_port()
        cfg = _config(tmp_path, port, admin, sink.address[1], hook_port)
        log = tmp_path / "daemon.log"
        rx = Receiver(hook_port)
        await rx.up()
        proc = start_daemon(cfg, log)
        qids: list[str] = []
        try:
            async with aiohttp.ClientSession() as http:
                await wait_port(port)
                await wait_port(admin)
                # phase 1: healthy
                qids += await _submit(port, 8, "a")
                await _until(lambda: len(rx.acked()) >= 8 * 3, 20, "first events")
                # phase 2: a 500 storm, then timeouts, then connection refused
                rx.mode = "500"
                qids += await _submit(port, 6, "b")
                await _until(lambda: sum(m == "500" for m, _, _ in rx.requests) >= 3,
                             10, "500s")
                rx.mode = "hang"
                await _until(lambda: sum(m == "hang" for m, _, _ in rx.requests) >= 2,
                             10, "timeouts")
                await rx.down()
                rx.mode = "ok"
                qids += await _submit(port, 6, "c")

                async def failing():
                    st = (await _api(http, admin, "/v1/webhooks"))["webhooks"][0]
                    refused = "connection failed" in (st["last_error"] or "")
                    return st if st["state"] == "failing" and refused else None
                st = await _until(failing, 15, "the endpoint marked failing, refused")
                assert st["lag"] > 0 and st["attempts"] >= 3, st
                async with http.post(f"http://127.0.0.1:{admin}/v1/webhooks/app/test",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    probe = await r.json()
                assert not probe["ok"] and "connection failed" in probe["error"], probe
                text = await _metrics(http, admin)
                assert 'mta_webhook_failing{webhook="app"} 1.0' in text
                assert 'mta_webhook_requests_total{result="failed",webhook="app"}' in text

                # SIGKILL during the outage; the backlog and the backoff survive
                _kill(proc)
                proc = start_daemon(cfg, log)
                await wait_port(port)
                await wait_port(admin)
                st = (await _api(http, admin, "/v1/webhooks"))["webhooks"][0]
                assert st["state"] == "failing" and st["lag"] > 0, st
                qids += await _submit(port, 6, "d")
                before = len(rx.requests)
                await rx.up()                                   # recovered
                await _until(lambda: len(rx.requests) >= before + 5, 20, "catch-up")
                _kill(proc)                                     # SIGKILL while catching up
                proc = start_daemon(cfg, log)
                await wait_port(port)
                await wait_port(admin)
                qids += await _submit(port, 4, "e")

                # the end: every message finished, every event acknowledged
                async def settled():
                    active = (await _api(http, admin, "/v1/messages"))["messages"]
                    ledger = await _ledger(http, admin)
                    acked = {json.loads(b)["seq"] for _, b in rx.acked()}
                    if not active and {e["seq"] for e in ledger} <= acked:
                        return ledger
                    return None
                ledger = await _until(settled, 60, "every message delivered and every event "
                                                   "acknowledged")
                st = (await _api(http, admin, "/v1/webhooks"))["webhooks"][0]
                assert st["state"] == "active" and st["lag"] == 0 and st["attempts"] == 0, st
                text = await _metrics(http, admin)
                assert 'mta_webhook_failing{webhook="app"} 0.0' in text
                assert 'mta_webhook_lag_events{webhook="app"} 0.0' in text
        finally:
            proc.send_signal(signal.SIGTERM)
            # Off the loop: it runs the sink, which must answer the daemon's QUITs.
            rc = await asyncio.to_thread(proc.wait, 30)
            await rx.down()
        assert rc == 0, log.read_text()[-3000:]

    # --- what the receiver got ------------------------------------------------
    verifier = Webhook(SECRET)
    by_id: dict[str, bytes] = {}
    for _, headers, body in rx.requests:
        verifier.verify(body, headers)              # raises on a bad signature
        obj = json.loads(body)
        assert headers["webhook-id"] == f"evt_{obj['seq']}"
        assert by_id.setdefault(headers["webhook-id"], body) == body, "same id, other content"
    ledger_by_seq = {e["seq"]: e for e in ledger}
    first: dict[int, dict] = {}
    for _, body in rx.acked():
        obj = json.loads(body)
        first.setdefault(obj["seq"], obj)
    assert set(first) == set(ledger_by_seq), "an event never acknowledged"
    for seq, obj in first.items():                  # the payload is the ledger's event
        e = ledger_by_seq[seq]
        assert (obj["type"], obj["queue_id"], obj["recipient"]) == \
            (e["type"], e["queue_id"] or None, e["recipient"] or None)
    per_message: dict[str, list[int]] = collections.defaultdict(list)
    for seq, obj in first.items():                  # dict order = first-arrival order
        per_message[obj["queue_id"]].append(seq)
    for qid, seqs in per_message.items():
        assert seqs == sorted(seqs), f"{qid}: events first arrived out of order {seqs}"
    types = collections.Counter(e["type"] for e in ledger)
    for t in ("received", "queued", "delivered", "deferred", "bounced", "dsn_sent"):
        assert types[t] > 0, f"no {t} event in {types}"
    assert set(qids) <= set(per_message)
    modes = collections.Counter(m for m, _, _ in rx.requests)
    dups = len(rx.acked()) - len(first)
    report(f"webhooks e2e: {len(ledger)} events, {len(rx.requests)} requests "
           f"({dict(modes)}), {dups} duplicate 2xx deliveries (same id and body), "
           f"2 SIGKILLs, 0 lost, 0 reordered per message")


