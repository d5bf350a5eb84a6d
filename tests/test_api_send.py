"""The sending API end to end, driven by the official Resend Python SDK
(issue 13): a real daemon with `[api]` on loopback, mail delivered to a real
SMTP sink, keys made in the real store. The SDK is synchronous (requests),
so its calls run in a thread."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import hashlib
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest

from mta.api.keys import StoreKeys
from mta.spool.apikeys import SqliteApiKeys
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.resend_sdk import python_resend
from tests.support.sink import Sink

resend = pytest.importorskip("resend", reason="the Resend Python SDK (pip install resend: "
                                              "scripts/setup.sh test installs it)")


def api_config(state: Path, sink_port: int, extra: str = "") -> str:
    return (config_text(state, free_port(), tls="none", trusted=["127.0.0.0/8"],
                        routes={"*": f"127.0.0.1:{sink_port}"})
            + f'[api]\naddress = "127.0.0.1:{free_port()}"\n{extra}')


def make_key(state: Path, name: str, **kw) -> str:
    _, token = StoreKeys(SqliteApiKeys(str(state))).create(name, now=time.time(), **kw)
    return token


class Env:
    def __init__(self, daemon, sink, state):
        self.d, self.sink, self.state = daemon, sink, state
        self.url = daemon.api.url
        self.key = make_key(state, "app")

    async def sdk(self, fn, *args, key: str | None = None, **kw):
        def call():
            with python_resend(self.url, key or self.key):
                return fn(*args, **kw)
        return await asyncio.to_thread(call)

    async def http(self, method: str, path: str, *, key: str | None = "default",
                   headers: dict | None = None, **kw) -> tuple[int, dict, dict]:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {self.key if key == 'default' else key}"
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=h, **kw) as r:
                body = await r.json(content_type=None)
                return r.status, body, {k.lower(): v for k, v in r.headers.items()}


@pytest.fixture
async def env(tmp_path):
    async with Sink(tls=False) as sink:
        state = tmp_path / "state"
        async with running_daemon(api_config(state, sink.address[1])) as d:
            yield Env(d, sink, state)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


async def test_send_with_attachments_inline_tags_cc_bcc(env):
    blob = os.urandom(50_000)
    png = bytes(range(256)) * 10
    params = {
        "from": "Acme Team <team@acme.test>", "to": ["ok-1@rcpt.test"],
        "cc": "ok-2@rcpt.test", "bcc": ["ok-3@rcpt.test"], "reply_to": "help@acme.test",
        "subject": "Welcome, Zoë", "html": '<p>Hello <b>there</b> <img src="cid:logo"></p>',
        "headers": {"X-Entity-Ref-ID": "123"},
        "tags": [{"name": "category", "value": "welcome"}],
        "attachments": [
            {"filename": "data.bin", "content": list(blob)},
            {"filename": "notes.txt", "content": base64.b64encode(b"hello notes").decode()},
            {"filename": "logo.png", "content": list(png), "content_id": "logo"}]}
    sent = await env.sdk(resend.Emails.send, params)
    qid = sent["id"]
    await env.sink.wait_for(1, timeout=20)
    m = env.sink.messages[0]
    assert sorted(m.rcpt_tos) == ["ok-1@rcpt.test", "ok-2@rcpt.test", "ok-3@rcpt.test"]
    msg = email.message_from_bytes(m.data, policy=email.policy.default)
    assert msg["Bcc"] is None and "ok-3@rcpt.test" not in m.data.decode("latin-1")
    assert msg["Subject"] == "Welcome, Zoë" and msg["X-Entity-Ref-ID"] == "123"
    assert msg["From"].addresses[0].display_name == "Acme Team"
    assert msg["Reply-To"] == "help@acme.test" and msg["Cc"] == "ok-2@rcpt.test"
    assert qid in msg["Received"]
    got = {p.get_filename(): p.get_content() for p in msg.walk() if p.get_filename()}
    assert sha(got["data.bin"]) == sha(blob)
    assert got["notes.txt"] in (b"hello notes", "hello notes")
    assert sha(got["logo.png"]) == sha(png)
    inline = [p for p in msg.walk() if p.get_filename() == "logo.png"][0]
    assert inline["Content-ID"] == "<logo>"
    text = msg.get_body(("plain",))
    assert text is not None and "Hello there" in text.get_content()
    # the ledger and the API know the tags; the id is the queue id
    got_email = await env.sdk(resend.Emails.get, qid)
    assert got_email["id"] == qid and got_email["object"] == "email"
    assert got_email["tags"] == [{"name": "category", "value": "welcome"}]
    assert got_email["subject"] == "Welcome, Zoë" and got_email["bcc"] == ["ok-3@rcpt.test"]
    assert "<b>there</b>" in got_email["html"]
    for _ in range(100):
        got_email = await env.sdk(resend.Emails.get, qid)
        if got_email["last_event"] == "delivered":
            break
        await asyncio.sleep(0.1)
    assert got_email["last_event"] == "delivered"
    events = (await env.http("GET", f"/emails/{qid}/events"))[1]["data"]
    assert [e["type"] for e in events][:2] == ["received", "queued"]
    assert events[0]["detail"]["tags"] == [{"name": "category", "value": "welcome"}]
    view = await env.d.spool.get_message(qid)
    assert view.credential == "api:app"


async def test_idempotency_sequential_and_different_body(env):
    p = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "once", "text": "hi"}
    first = await env.sdk(resend.Emails.send, p, {"idempotency_key": "order-1"})
    again = await env.sdk(resend.Emails.send, p, {"idempotency_key": "order-1"})
    assert first["id"] == again["id"]
    with pytest.raises(resend.exceptions.ResendError) as exc:
        await env.sdk(resend.Emails.send, {**p, "subject": "twice"},
                      {"idempotency_key": "order-1"})
    assert exc.value.code == 409
    await env.sink.wait_for(1, timeout=20)
    await asyncio.sleep(0.5)
    assert len(env.sink.messages) == 1


async def test_idempotency_concurrent(env):
    body = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "c", "text": "hi"}
    results = await asyncio.gather(*(
        env.http("POST", "/emails", json=body, headers={"Idempotency-Key": "k-conc"})
        for _ in range(8)))
    ids = {r[1]["id"] for r in results if r[0] == 200}
    assert len(ids) == 1
    assert all(r[0] == 200 or (r[0] == 409 and r[1]["name"] ==
                               "concurrent_idempotent_requests") for r in results)
    await env.sink.wait_for(1, timeout=20)
    await asyncio.sleep(0.5)
    assert len(env.sink.messages) == 1


async def test_batch(env):
    items = [{"from": "a@acme.test", "to": f"ok-{i}@rcpt.test", "subject": f"b{i}",
              "text": "hi"} for i in range(5)]
    stats = env.d.spool.stats
    before = (stats.fsyncs, stats.enqueued)
    out = await env.sdk(resend.Batch.send, items)
    ids = [x["id"] for x in out["data"]]
    assert len(set(ids)) == 5
    # one durable commit for the batch: its five bodies in one append + fsync
    # (deliveries may have added their own transactions since)
    assert stats.enqueued - before[1] == 5 and stats.fsyncs - before[0] == 1
    await env.sink.wait_for(5, timeout=20)
    status, body, _ = await env.http("POST", "/emails/batch",
                                     json=items[:2] + [{"from": "a@acme.test"}])
    assert status == 422 and "[2]" in body["message"]


async def test_scheduled_cancel_and_reschedule(env):
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    p = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "later", "text": "hi",
         "scheduled_at": later}
    one = (await env.sdk(resend.Emails.send, p))["id"]
    two = (await env.sdk(resend.Emails.send, p))["id"]
    got = await env.sdk(resend.Emails.get, one)
    assert got["last_event"] == "scheduled" and got["scheduled_at"] is not None
    await env.sdk(resend.Emails.cancel, one)
    assert (await env.sdk(resend.Emails.get, one))["last_event"] == "canceled"
    # cancelling again: nothing left to cancel
    status, body, _ = await env.http("POST", f"/emails/{one}/cancel")
    assert status == 409
    now = dt.datetime.now(dt.UTC).isoformat()
    await env.sdk(resend.Emails.update, {"id": two, "scheduled_at": now})
    await env.sink.wait_for(1, timeout=20)
    assert env.sink.messages[0].rcpt_tos == ["ok@rcpt.test"]
    await asyncio.sleep(0.3)
    assert len(env.sink.messages) == 1       # the cancelled one never went


async def test_list_emails_pages_newest_first(env):
    ids = [(await env.http("POST", "/emails", json={
        "from": "a@acme.test", "to": "ok@rcpt.test", "subject": str(i), "text": "x"}))[1]["id"]
        for i in range(5)]
    page = await env.sdk(resend.Emails.list, {"limit": 3})
    assert [e["id"] for e in page["data"]] == ids[::-1][:3] and page["has_more"]
    rest = await env.sdk(resend.Emails.list, {"limit": 3, "after": page["data"][-1]["id"]})
    assert [e["id"] for e in rest["data"]] == ids[::-1][3:] and not rest["has_more"]


async def test_test_keys_capture_and_see_only_test_data(env):
    test_key = make_key(env.state, "ci", test=True)
    assert test_key.startswith("mta_test_")
    sent = await env.sdk(resend.Emails.send, {"from": "a@acme.test", "to": "ok@rcpt.test",
                                              "subject": "t", "text": "x"}, key=test_key)
    qid = sent["id"]
    sandbox = env.state / "sandbox" / "new"
    for _ in range(100):
        if sandbox.is_dir() and any(sandbox.iterdir()):
            break
        await asyncio.sleep(0.1)
    files = list(sandbox.iterdir())
    assert len(files) == 1 and qid.encode() in files[0].read_bytes()
    assert env.sink.messages == []
    # a live key does not see it; the test key does, marked test
    status, _, _ = await env.http("GET", f"/emails/{qid}")
    assert status == 404
    status, body, _ = await env.http("GET", f"/emails/{qid}", key=test_key)
    assert status == 200 and body["test"] is True
    status, body, _ = await env.http("GET", "/emails", key=test_key)
    assert [e["id"] for e in body["data"]] == [qid]
    events = (await env.http("GET", f"/emails/{qid}/events", key=test_key))[1]["data"]
    assert events[0]["detail"]["test"] is True


async def test_error_statuses(env):
    ok = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "s", "text": "x"}
    status, body, _ = await env.http("POST", "/emails", key=None, json=ok)
    assert (status, body["name"], body["statusCode"]) == (401, "missing_api_key", 401)
    status, body, _ = await env.http("POST", "/emails", key="mta_live_aaaaaaaaaaaa_x", json=ok)
    assert (status, body["name"]) == (401, "invalid_api_key")
    sending = make_key(env.state, "sender", permission="sending_access")
    assert (await env.http("POST", "/emails", key=sending, json=ok))[0] == 200
    status, body, _ = await env.http("GET", "/emails", key=sending)
    assert (status, body["name"]) == (403, "restricted_api_key")
    status, body, _ = await env.http("GET", "/emails/0000000000000000")
    assert (status, body["name"]) == (404, "not_found")
    status, body, _ = await env.http("GET", "/nowhere")
    assert status == 404
    status, body, _ = await env.http("POST", "/emails", json={**ok, "to": "not-an-address"})
    assert status == 422 and "to" in body["message"]
    with pytest.raises(resend.exceptions.ResendError) as exc:
        await env.sdk(resend.Emails.send, {**ok, "subject": "a\r\nBcc: x@evil.test"})
    assert exc.value.code == 422
    status, body, _ = await env.http("POST", "/emails", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert status == 422
    big = {**ok, "text": "x" * (41 * 1024 * 1024)}
    status, body, _ = await env.http("POST", "/emails", json=big)
    assert (status, body["name"]) == (413, "payload_too_large")
    pinned = make_key(env.state, "pinned", domains=["other.test"])
    status, body, _ = await env.http("POST", "/emails", key=pinned, json=ok)
    assert status == 403 and "acme.test" in body["message"]
    slow = make_key(env.state, "slow", rate_limit=1)
    codes = [(await env.http("GET", "/emails", key=slow)) for _ in range(3)]
    limited = [c for c in codes if c[0] == 429]
    assert limited and limited[0][1]["name"] == "rate_limit_exceeded"
    assert int(limited[0][2]["retry-after"]) >= 1 and "ratelimit-limit" in limited[0][2]
    # nothing of the refused requests was queued, and the daemon is fine
    await env.sink.wait_for(1, timeout=20)
    await asyncio.sleep(0.3)
    assert len(env.sink.messages) == 1
    assert (await env.http("GET", "/emails"))[0] == 200


async def test_api_keys_resource(env):
    made = (await env.http("POST", "/api-keys", json={"name": "ci-sender",
                                                      "permission": "sending_access"}))[1]
    assert made["token"].startswith("mta_live_") and made["permission"] == "sending_access"
    listed = (await env.http("GET", "/api-keys"))[1]["data"]
    assert {k["name"] for k in listed} >= {"app", "ci-sender"}
    assert all("token" not in k and made["token"] not in json.dumps(k) for k in listed)
    ok = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "s", "text": "x"}
    assert (await env.http("POST", "/emails", key=made["token"], json=ok))[0] == 200
    status, body, _ = await env.http("DELETE", f"/api-keys/{made['id']}")
    assert status == 200 and body["deleted"] is True
    assert (await env.http("POST", "/emails", key=made["token"], json=ok))[0] == 401
