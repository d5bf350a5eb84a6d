"""The sending API with receiver processes (`[server] workers = 2`, issue
13): the owner serves HTTP, a receiver builds each request's messages
(validation, MIME, DKIM: runtime/api_build.py), the owner commits them.
Refusals come back from the receiver unchanged; a receiver that dies does
not fail a request (the owner builds it itself)."""

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
        d = Daemon(parse_config(text, "test"), processes=True)
        await d.start()
        try:
            assert d.receivers is not None and len(d.receivers.pids) == 2
            calls: list[str] = []
            real = d.receivers.call_any

            async def counted(op, *args):
                got = await real(op, *args)
                calls.append(got[0] if got else "none")
                return got
            d.receivers.call_any = counted

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
            assert calls == ["ok", "error", "error"]          # all three built remotely
            await sink.wait_for(1, timeout=30)
            msg = email.message_from_bytes(sink.messages[0].data, policy=email.policy.default)
            assert msg["Subject"] == "Grüße" and body["id"] in msg["Received"]
            part = [p for p in msg.walk() if p.get_filename() == "b.bin"][0]
            assert hashlib.sha256(part.get_content()).digest() == hashlib.sha256(blob).digest()
            # a receiver dies: requests keep working (the other one, or the owner)
            for pid in d.receivers.pids:
                os.kill(pid, signal.SIGKILL)
            results = await asyncio.gather(*(post({**ok, "subject": f"after {i}"})
                                             for i in range(6)))
            assert all(s == 200 for s, _ in results), results
            await sink.wait_for(7, timeout=30)
        finally:
            await d.stop()
