"""One-time codes, template test sends, broadcast over SMTP, opens and the
content routes in receiver processes, end to end (issue 16) on a real daemon:
the code arrives by real SMTP at the sink and is checked through the API; it
never appears in the ledger or a log line; a tenant's own limits apply."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from html import unescape

import aiohttp
import aiohttp.web
import aiosmtplib
import pytest

from tests.test_api_send import make_key
from tests.test_e2e_content import (DOMAIN, World, content_metrics, content_world,
                                    header_lines, parsed)

pytestmark = pytest.mark.slow

LIMITS = ('[verification]\nresend_cooldown = "0s"\nmax_sends = 2\nmax_attempts = 3\n'
          '[[verification_tenant]]\ntenant = "default"\ndigits = 8\n')


@pytest.fixture
async def world(tmp_path):
    async with content_world(tmp_path, LIMITS) as w:
        yield w


def _code(raw: bytes) -> str:
    text = parsed(raw).get_body(("plain",)).get_content()
    (code,) = re.findall(r"\b\d{8}\b", text)
    return code


async def _all_events(w: World) -> str:
    """Every ledger event of the run, as text."""
    events = await w.d.spool.ledger.events_after(0, 10_000)
    return json.dumps([[e.type, e.recipient, e.detail] for e in events])


async def test_a_code_is_sent_resent_the_same_and_checked(world, caplog):
    caplog.set_level(logging.DEBUG)
    status, v = await world.http("POST", "/verifications", json={
        "to": "ann@rcpt.test", "from": f"Brand <codes@{DOMAIN}>", "channel": "email"})
    assert status == 200 and v["status"] == "pending" and v["sends"] == 1, v
    (m,) = await world.sink.wait_for(1)
    code = _code(m.data)                                  # 8 digits: the tenant's own
    assert code not in parsed(m.data)["Subject"]
    status, again = await world.http("POST", f"/verifications/{v['id']}/resend")
    assert status == 200 and again["id"] == v["id"] and again["sends"] == 2
    (_, m2) = await world.sink.wait_for(2)
    assert _code(m2.data) == code                         # same code within its validity
    status, err = await world.http("POST", f"/verifications/{v['id']}/resend")
    assert status == 429, err                             # max_sends = 2
    wrong = "0" * 8 if code != "0" * 8 else "1" * 8
    status, r = await world.http("POST", f"/verifications/{v['id']}/check",
                                 json={"code": wrong})
    assert (status, r["valid"], r["attempts_remaining"]) == (200, False, 2)
    status, r = await world.http("POST", f"/verifications/{v['id']}/check",
                                 json={"code": code})
    assert (status, r["valid"], r["status"]) == (200, True, "verified")
    ledger = await _all_events(world)
    assert "verification_sent" in ledger and "verification_checked" in ledger
    assert code not in ledger
    assert code not in caplog.text
    seen = content_metrics(world.d)
    assert (seen[("verification_sent", "first")], seen[("verification_sent", "resend")],
            seen[("verification_checked", "wrong_code")],
            seen[("verification_checked", "verified")]) == (1, 1, 1, 1)


async def test_a_template_test_send_and_a_code_in_a_subject_refused(world):
    status, made = await world.http("POST", "/templates", json={
        "name": "otp", "from": f"codes@{DOMAIN}", "subject": "Code {{code}}",
        "html": "<p>{{code}} ({{minutes}} min)</p>",
        "variables": [{"key": "code"}, {"key": "minutes", "type": "number"}]})
    assert status == 200, made
    status, sent = await world.http("POST", f"/templates/{made['id']}/test", json={
        "to": "dev@rcpt.test", "variables": {"code": "42", "minutes": 5}})
    assert status == 200, sent
    (m,) = await world.sink.wait_for(1)
    assert parsed(m.data)["Subject"] == "[Test] Code 42"
    await world.http("POST", f"/templates/{made['id']}/publish")
    status, err = await world.http("POST", "/verifications", json={
        "to": "ann@rcpt.test", "template": made["id"]})
    assert status == 422 and "subject" in err["message"], err


async def test_broadcast_over_smtp_and_an_open_labelled(world):
    msg = (f"From: News <news@{DOMAIN}>\r\nTo: carl@rcpt.test\r\nSubject: Weekly\r\n"
           "X-Mta-Stream: broadcast\r\nX-Mta-Topic: weekly\r\n"
           "List-Unsubscribe: <mailto:old@example.com>\r\n"
           "Content-Type: text/plain\r\n\r\nnews\r\n").encode()
    smtp_port = world.d.cfg.listeners[0].address.rsplit(":", 1)[1]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=int(smtp_port)) as c:
        await c.sendmail(f"news@{DOMAIN}", ["carl@rcpt.test"], msg)
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await c.sendmail(f"news@{DOMAIN}", ["a@rcpt.test", "b@rcpt.test"], msg)
        assert info.value.code == 550 and "5.5.3" in info.value.message
    (m,) = await world.sink.wait_for(1)
    assert b"X-Mta-Stream" not in m.data and b"mailto:old" not in m.data
    (line,) = header_lines(m.data, b"List-Unsubscribe")
    assert line.startswith(f"List-Unsubscribe: <{world.public}/u/".encode())
    assert header_lines(m.data, b"List-Unsubscribe-Post")
    sent = await world.sdk_send_html("<p>hello</p>")
    (_, m2) = await world.sink.wait_for(2)
    pixel = unescape(re.search(r'src="([^"]+/o/[^"]+)"',
                               parsed(m2.data).get_body(("html",)).get_content()).group(1))
    async with aiohttp.ClientSession() as s:
        async with s.get(pixel, headers={"User-Agent": "Mozilla/5.0 (via ggpht.com "
                                                      "GoogleImageProxy)"}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/gif"
    (ev,) = await world.events(sent, "opened")
    assert ev.detail["estimate"] is True and ev.detail["label"] == "proxy"


async def test_content_routes_in_receiver_processes(tmp_path):
    async with content_world(tmp_path, processes=True) as w:
        status, made = await w.http("POST", "/templates", json={
            "name": "hi", "from": f"hi@{DOMAIN}", "subject": "Hi {{N}}", "html": "<b>{{N}}</b>"})
        assert status == 200, made
        status, _ = await w.http("POST", f"/templates/{made['id']}/publish")
        assert status == 200
        status, prev = await w.http("POST", f"/templates/{made['id']}/preview",
                                    json={"variables": {"N": "<x>"}})
        assert status == 200 and prev["html"] == "<b>&lt;x&gt;</b>", prev
        status, sent = await w.http("POST", "/emails", json={
            "to": "z@rcpt.test", "template": {"id": made["id"], "variables": {"N": "Zed"}}})
        assert status == 200, sent
        (m,) = await w.sink.wait_for(1)
        assert parsed(m.data)["Subject"] == "Hi Zed"
        status, v = await w.http("POST", "/verifications", json={
            "to": "y@rcpt.test", "from": f"codes@{DOMAIN}"})
        assert status == 200 and v["sends"] == 1, v
        await w.sink.wait_for(2)
        await asyncio.sleep(0)


async def test_a_broadcast_key_and_the_unsubscribe_webhook(tmp_path):
    """[broadcast] credentials makes a key's mail broadcast unless it says
    otherwise; the one-click unsubscription reaches a webhook endpoint."""
    got: list[dict] = []

    async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
        got.append(json.loads(await request.read()))
        return aiohttp.web.Response(status=204)

    app = aiohttp.web.Application()
    app.router.add_post("/hook", hook)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    extra = ('[broadcast]\ncredentials = ["api:news"]\n[[webhooks]]\nname = "app"\n'
             f'url = "http://127.0.0.1:{port}/hook"\n'
             'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nevents = ["unsubscribed"]\n')
    try:
        async with content_world(tmp_path, extra) as w:
            w.key = make_key(w.state, "news")
            base = {"from": f"news@{DOMAIN}", "to": "dora@rcpt.test", "subject": "s",
                    "text": "t"}
            status, plain = await w.http("POST", "/emails", json={**base,
                                                                  "stream": "transactional"})
            status, sent = await w.http("POST", "/emails", json=base)
            assert status == 200, sent
            m1, m2 = await w.sink.wait_for(2)
            by_subject = {m.data.count(b"List-Unsubscribe:"): m for m in (m1, m2)}
            assert set(by_subject) == {0, 1}        # the key's default, and the override
            url = re.search(rb"List-Unsubscribe: <(\S+)>", by_subject[1].data).group(1)
            async with aiohttp.ClientSession() as s:
                async with s.post(url.decode(), data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got and got[0]["type"] == "unsubscribed", got
            assert (got[0]["recipient"], got[0]["credential"], got[0]["data"]["tenant"]) == \
                ("dora@rcpt.test", "api:news", "default")
    finally:
        await runner.cleanup()
