"""The sending API with receiver processes (`[server] workers = 2`, issue
13): the owner accepts and hands each connection to a receiver, which serves
HTTP and builds the request's messages (validation, MIME, DKIM:
runtime/api_build.py); the owner commits them and answers what needs its
spool (api_remote.py). Refusals reach the client unchanged; reads and keys
work through a receiver; receivers that die do not fail later requests."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import os
import signal
import time

import aiohttp
import pytest

from mta.api.keys import StoreKeys
from mta.config import parse_config
from mta.runtime.daemon import Daemon
from mta.spool.apikeys import SqliteApiKeys
from tests.support.mtahelpers import config_text, free_port
from tests.support.sink import Sink

pytestmark = pytest.mark.slow


async def test_receivers_build_api_messages(tmp_path):
    async with Sink(tls=False) as sink:
        state = tmp_path / "state"
        text = config_text(state, free_port(), tls="none", trusted=["127.0.0.0/8"],
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        text = text.replace("[server]\n", "[server]\nworkers = 2\n", 1)
        text += f'[api]\naddress = "127.0.0.1:{free_port()}"\n'
        keys = StoreKeys(SqliteApiKeys(str(state)))
        _, token = keys.create("app", now=time.time())
        _, pinned = keys.create("pinned", domains=["other.test"], now=time.time())
        _, slow = keys.create("slow", rate_limit=3, now=time.time())
        _, fast = keys.create("fast", rate_limit=100_000, now=time.time())
        d = Daemon(parse_config(text, "test"), processes=True)
        await d.start()
        try:
            assert d.receivers is not None and len(d.receivers.pids) == 2
            ops: list[str] = []
            real = d.receivers.api_serve

            async def counted(op, args):
                ops.append(op)
                return await real(op, args)
            d.receivers.api_serve = counted

            async def post(body, key=token):
                async with aiohttp.ClientSession() as s:
                    async with s.post(d.api.url + "/emails", json=body,
                                      headers={"Authorization": f"Bearer {key}"}) as r:
                        return r.status, await r.json()

            blob = os.urandom(20_000)
            ok = {"from": "Team <a@acme.test>", "to": "ok@rcpt.test", "subject": "Grüße",
                  "text": "hi", "attachments": [{"filename": "b.bin", "content": list(blob)}]}
            status, body = await post(ok)
            assert status == 200, body
            status, bad = await post({**ok, "to": ["ok@rcpt.test", "nope"]})
            assert status == 422 and bad["message"].startswith("to[1]:"), bad
            status, refused = await post(ok, key=pinned)
            assert status == 403 and "acme.test" in refused["message"]
            # served by receivers: each asked the owner's rate limiter; only the
            # good one reached the owner's commit
            assert ops.count("api_rate") == 3 and ops.count("api_commit") == 1, ops
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{d.api.url}/emails/{body['id']}",
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                    got = await r.json()
            assert r.status == 200 and got["subject"] == "Grüße", got
            assert "api_call" in ops
            # with an Idempotency-Key the owner handles the send (it sees every
            # keyed request) and has a receiver build it ("api_build")
            async with aiohttp.ClientSession() as s:
                ids = []
                for _ in range(2):
                    async with s.post(d.api.url + "/emails", json=ok, headers={
                            "Authorization": f"Bearer {token}", "Idempotency-Key": "k1"}) as r:
                        assert r.status == 200
                        ids.append((await r.json())["id"])
            assert ids[0] == ids[1] and ops.count("api_call") >= 3
            await sink.wait_for(1, timeout=30)
            msg = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
            assert msg["Subject"] == "Grüße" and body["id"] in msg["Received"]
            part = [p for p in msg.walk() if p.get_filename() == "b.bin"][0]
            assert hashlib.sha256(part.get_content()).digest() == hashlib.sha256(blob).digest()
            # one rate budget per key across the receivers: 3/s is 3 of 10 at once
            async with aiohttp.ClientSession() as s:
                async def listing(key):
                    async with s.get(f"{d.api.url}/emails",
                                     headers={"Authorization": f"Bearer {key}"}) as r:
                        await r.read()
                        return r.status
                t0 = time.monotonic()
                codes = await asyncio.gather(*(listing(slow) for _ in range(10)))
                refill = int((time.monotonic() - t0) * 3)       # tokens back meanwhile
                assert set(codes) == {200, 429}, codes
                assert 3 <= codes.count(200) <= 3 + refill, (codes, refill)
                # a fast key's tokens are leased a few at a time: fewer round trips
                before = ops.count("api_rate")
                for _ in range(30):
                    assert await listing(fast) == 200
                assert ops.count("api_rate") - before <= 6, ops.count("api_rate") - before
            # receivers die: once the owner has seen it, requests keep working
            # (the owner serves them until restarted receivers are ready). A
            # connection handed over just as its receiver dies is lost, as an
            # SMTP session's is: the client retries.
            killed = set(d.receivers.pids)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if killed.isdisjoint(d.receivers.pids):
                    break
                await asyncio.sleep(0.05)
            results = await asyncio.gather(*(post({**ok, "subject": f"after {i}"})
                                             for i in range(6)))
            assert all(s == 200 for s, _ in results), results
            await sink.wait_for(8, timeout=30)
        finally:
            await d.stop()
