"""The operator surface against a running daemon (issue 5): the admin API
needs its token; filters and pagination; suspend a destination → nothing is
delivered → hold → resume → still nothing → release → delivered; retry now;
bounce → DSN; and /metrics after a known load (parsed, and promtool)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mta.server.credentials import CredentialStore
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_e2e import wait_until

TOKEN = "test-admin-token-0123456789"
SENDER = "app@sender.test"


@pytest.fixture
async def world(tmp_path):
    async with Sink() as sink:
        port = free_port()
        text = config_text(tmp_path / "state", port, retry="1h",
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        (tmp_path / "state").mkdir()
        CredentialStore(tmp_path / "state" / "credentials.json").add("app", "app-password-1")
        async with running_daemon(text) as d:
            d.port = port
            base = d.admin.url
            async with aiohttp.ClientSession(
                    base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                yield d, sink, http


async def submit(d, rcpts):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login("app", "app-password-1")
        _, resp = await c.sendmail(SENDER, rcpts, b"From: app@sender.test\r\n\r\nhi\r\n")
        return resp.split()[-1]


async def api(http, method, path, **kw):
    async with http.request(method, path, **kw) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_token_required(world):
    d, sink, http = world
    async with aiohttp.ClientSession(base_url=d.admin.url) as anon:
        async with anon.get("/v1/messages") as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"]
        async with anon.get("/healthz") as r:
            assert r.status == 200
        async with anon.get("/readyz") as r:       # only /healthz and /metrics are open
            assert r.status == 401
    status, body = await api(http, "GET", "/readyz")
    assert status == 200, body


async def test_filters_and_pagination(world):
    d, sink, http = world
    dest = f"[127.0.0.1]:{sink.address[1]}"
    assert (await api(http, "POST", f"/v1/destinations/{dest}/suspend"))[0] == 200
    ids = [await submit(d, [f"ok-{i}@page.test"]) for i in range(5)]
    other = await submit(d, ["ok@other.test"])
    seen, cursor = [], None
    while True:
        params = {"domain": "page.test", "limit": "2"} | ({"cursor": cursor} if cursor else {})
        status, body = await api(http, "GET", "/v1/messages", params=params)
        assert status == 200, body
        seen += [m["id"] for m in body["messages"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == ids and other not in seen
    status, body = await api(http, "GET", "/v1/messages", params={"recipient": "ok@other.test"})
    assert [m["id"] for m in body["messages"]] == [other]
    status, body = await api(http, "GET", "/v1/messages", params={"limit": "0"})
    assert status == 400 and body["error"]["code"]
    status, summary = await api(http, "GET", "/v1/queue/summary")
    row = next(r for r in summary["destinations"] if r["destination"] == dest)
    assert row["state"] == "suspended" and row["recipients"] == 6


async def test_suspend_hold_resume_release(world):
    d, sink, http = world
    dest = f"[127.0.0.1]:{sink.address[1]}"
    assert (await api(http, "POST", f"/v1/destinations/{dest}/suspend"))[0] == 200
    qid = await submit(d, ["ok-held@rcpt.test"])
    await asyncio.sleep(1.0)
    assert not sink.messages                                   # suspended: nothing leaves
    status, body = await api(http, "POST", f"/v1/messages/{qid}/hold")
    assert status == 200 and body["affected"] == 1
    assert (await api(http, "POST", f"/v1/destinations/{dest}/resume"))[0] == 200
    await asyncio.sleep(1.0)
    assert not sink.messages                                   # held: still nothing
    status, body = await api(http, "GET", f"/v1/messages/{qid}")
    assert body["recipients"][0]["state"] == "held"
    assert (await api(http, "POST", f"/v1/messages/{qid}/release"))[1]["affected"] == 1
    (m,) = await sink.wait_for(1)
    assert m.rcpt_tos == ["ok-held@rcpt.test"]


async def test_retry_now_and_bounce_with_dsn(world):
    d, sink, http = world
    retry_id = await submit(d, ["tempfail-1@rcpt.test"])
    bounce_id = await submit(d, ["tempfail-9@rcpt.test"])

    async def both_deferred():
        vs = [await d.spool.get_message(q) for q in (retry_id, bounce_id)]
        return all(v.attempts for v in vs) or None
    await wait_until(both_deferred)                        # next attempts are 1 h away
    assert (await api(http, "POST", f"/v1/messages/{retry_id}/retry"))[1]["affected"] == 1
    await wait_until(lambda: _delivered_to(sink, "tempfail-1@rcpt.test"))
    assert (await api(http, "POST", f"/v1/messages/{bounce_id}/bounce"))[1]["affected"] == 1
    dsn = await wait_until(lambda: _dsn(sink), timeout=15)
    text = dsn.data.decode()
    assert "Final-Recipient: rfc822; tempfail-9@rcpt.test" in text and "Action: failed" in text
    status, body = await api(http, "DELETE", "/v1/messages/NOSUCHID0000000")
    assert status == 404 and body["error"]["code"]


async def _delivered_to(sink, rcpt):
    return any(rcpt in m.rcpt_tos for m in sink.messages) or None


async def _dsn(sink):
    return next((m for m in sink.messages if m.mail_from == ""), None)


def _values(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_after_known_load(world, tmp_path):
    d, sink, http = world
    await submit(d, [f"ok-{i}@m.test" for i in range(3)] + ["reject-1@m.test", "reject-2@m.test"])
    await wait_until(lambda: _dsn(sink), timeout=15)          # the DSN for the two rejects
    await sink.wait_for(2)
    async with aiohttp.ClientSession(base_url=d.admin.url) as anon:   # /metrics needs no token
        async with anon.get("/metrics") as r:
            assert r.status == 200
            text = await r.text()
    v = _values(text)
    assert v[("mta_recipients_total", (("class", ""), ("outcome", "delivered")))] >= 4  # 3 + the DSN
    assert v[("mta_recipients_total", (("class", "hard"), ("outcome", "bounced")))] == 2
    assert v[("mta_messages_received_total", (("listener", "submission"), ("result", "accepted")))] == 1
    assert ("mta_queue_recipients", (("state", "queued"),)) in v
    assert v[("mta_spool_filesystem_free_bytes", ())] > 0
    if shutil.which("promtool"):
        (tmp_path / "m.txt").write_text(text)
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
