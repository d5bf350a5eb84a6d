"""Content and compliance end to end (issue 16), on a real daemon over real
sockets: templates made, versioned and sent with the official Resend Python
SDK; broadcast mail with RFC 8058 one-click unsubscribe headers that Perl's
Mail::DKIM (an independent verifier) finds signed, unsubscribed by the RFC's
POST (not by a GET), suppressed on the next send; tracked links that land on
the original URL and record a click (HEAD and scanners labelled bot); a
tampered token answered 404. The sending domain is verified against a real
DNS server on 127.0.0.x; mail goes to a real SMTP sink."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import re
import time
from html import unescape

import aiohttp
import pytest

from mta.config import parse_config
from mta.delivery.resolver import DnsResolver
from mta.domains.records import zone_text
from mta.domains.service import DomainService
from mta.mail.tokens import TokenKey, seal
from mta.runtime.daemon import Daemon
from tests.support.mtahelpers import config_text, free_port
from tests.support.sink import Sink
from tests.test_api_send import make_key
from tests.test_dkim import HAVE_PERL_DKIM, dkimpy_results, perl_results
from tests.test_domains import MultiStringDns, parse_zone
from tests.support.resend_sdk import python_resend

resend = pytest.importorskip("resend", reason="the Resend Python SDK (scripts/setup.sh test)")

DOMAIN = "brand.test"


class OffsetClock:
    """The wall clock, moved forward on demand (the daemon's Clock seam)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


class World:
    def __init__(self, d, sink, dns, state, clock):
        self.d, self.sink, self.dns, self.state, self.clock = d, sink, dns, state, clock
        self.url = d.api.url
        self.public = d.public.url
        self.key = make_key(state, "app")

    async def sdk(self, fn, *args, **kw):
        def call():
            with python_resend(self.url, self.key):
                return fn(*args, **kw)
        return await asyncio.to_thread(call)

    async def http(self, method, path, **kw):
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, **kw,
                                 headers={"Authorization": f"Bearer {self.key}"}) as r:
                return r.status, await r.json(content_type=None)

    async def sdk_send_html(self, html: str, to: str = "olga@rcpt.test") -> str:
        sent = await self.sdk(resend.Emails.send, {
            "from": f"news@{DOMAIN}", "to": to, "subject": "Hello", "html": html})
        return sent["id"]

    async def events(self, queue_id, kind, count=1, timeout=10.0):
        end = time.monotonic() + timeout
        while True:
            found = [e for e in await self.d.spool.ledger.message_events(queue_id)
                     if e.type == kind]
            if len(found) >= count or time.monotonic() > end:
                return found
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def content_world(tmp_path, extra: str = "", processes: bool = False):
    """A daemon with [api], [public] and tracking, its domain verified
    against a real DNS server, delivering to a sink."""
    dns = MultiStringDns({}, host="127.0.0.156", ttl=1).start()
    clock = OffsetClock()
    try:
        async with Sink(tls=False) as sink:
            state = tmp_path / "state"
            text = (config_text(state, free_port(), tls="none", trusted=["127.0.0.0/8"],
                                nameservers=[dns.nameserver], public_ips=["127.0.0.9"],
                                routes={"*": f"127.0.0.1:{sink.address[1]}"})
                    + f'[api]\naddress = "127.0.0.1:{free_port()}"\n'
                    + f'[public]\naddress = "127.0.0.1:{free_port()}"\n'
                    + f'[tracking]\nclicks = ["{DOMAIN}"]\nopens = ["tenant:default"]\n'
                    + extra)
            if processes:
                text = text.replace("[server]\n", "[server]\nworkers = 2\n", 1)
            cfg = parse_config(text, "test")
            svc = DomainService(cfg, DnsResolver(cfg.dns.nameservers, 2.0, cache=False))
            svc.add(DOMAIN)
            dns.zone.update(parse_zone(zone_text(svc.plan(DOMAIN))))
            assert (await svc.check(DOMAIN)).ok
            svc.add("pending.test")              # never published: SPF/DKIM/DMARC fail
            d = Daemon(cfg, clock, processes=processes)
            await d.start()
            try:
                yield World(d, sink, dns, state, clock)
            finally:
                await d.stop()
    finally:
        dns.stop()


@pytest.fixture
async def world(tmp_path):
    async with content_world(tmp_path) as w:
        yield w


def content_metrics(d) -> dict[tuple[str, str], float]:
    """mta_content_events_total by (event, label), as /metrics has it."""
    return {tuple(s.labels.values()): s.value for m in d.metrics.content_events.collect()
            for s in m.samples if s.name.endswith("_total")}


def parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def header_lines(raw: bytes, name: str) -> list[bytes]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [ln for ln in head.split(b"\r\n") if ln.lower().startswith(name.lower() + b":")]


async def test_templates_publish_versions_and_send_with_escaped_variables(world):
    made = await world.sdk(resend.Templates.create, {
        "name": "welcome", "alias": "welcome", "from": f"Brand <hello@{DOMAIN}>",
        "subject": "Welcome {{NAME}}",
        "html": "<p>Hello {{NAME}}</p><p>{{#ITEMS}}<i>{{.}}</i>{{/ITEMS}}</p>",
        "variables": [{"key": "NAME", "type": "string"},
                      {"key": "ITEMS", "type": "list", "fallback_value": []}]})
    tid = made["id"]
    await world.sdk(resend.Templates.publish, tid)
    # A later draft is not what sends use until it is published.
    await world.sdk(resend.Templates.update, {"id": tid, "html": "<p>Draft {{NAME}}</p>"})
    status, preview = await world.http("POST", f"/templates/{tid}/preview",
                                       json={"variables": {"OTHER": 1}})
    assert status == 200
    assert (preview["missing"], preview["undeclared"]) == (["NAME"], [])
    sent = await world.sdk(resend.Emails.send, {
        "to": "ann@rcpt.test", "template": {"id": "welcome", "variables": {
            "NAME": "<b>Ann</b> & co", "ITEMS": ["x<y"]}}})
    (m,) = await world.sink.wait_for(1)
    msg = parsed(m.data)
    assert msg["Subject"] == "Welcome <b>Ann</b> & co"        # no HTML escaping in a subject
    html = msg.get_body(("html",)).get_content()
    assert "Hello &lt;b&gt;Ann&lt;/b&gt; &amp; co" in html and "<i>x&lt;y</i>" in html
    assert "Draft" not in html
    text = msg.get_body(("plain",)).get_content()
    assert "Hello <b>Ann</b> & co" in text                     # derived from the html
    detail = (await world.d.spool.ledger.received_details([sent["id"]]))[sent["id"]]
    assert detail["template"] == {"id": tid, "version": 1}
    status, batch = await world.http("POST", "/emails/batch", json=[
        {"to": f"b{n}@rcpt.test", "template": {"id": "welcome", "variables": {"NAME": f"B{n}"}}}
        for n in (1, 2)])
    assert status == 200 and len(batch["data"]) == 2, batch
    subjects = sorted(parsed(m.data)["Subject"] for m in await world.sink.wait_for(3))
    assert subjects == ["Welcome <b>Ann</b> & co", "Welcome B1", "Welcome B2"]
    # Publishing the draft makes version 2, which the next send uses.
    await world.sdk(resend.Templates.publish, tid)
    status, err = await world.http("POST", "/emails", json={
        "to": "ann@rcpt.test", "template": {"id": tid}})
    assert status == 422 and "NAME" in err["message"] and "template" in err["message"]


async def test_a_hostile_template_is_bounded(world):
    made = await world.sdk(resend.Templates.create, {
        "name": "bomb", "from": f"hello@{DOMAIN}", "subject": "x",
        "html": "{{#L}}{{#L}}{{#L}}{{#L}}0123456789{{/L}}{{/L}}{{/L}}{{/L}}"})
    await world.sdk(resend.Templates.publish, made["id"])
    status, err = await world.http("POST", "/emails", json={
        "to": "ann@rcpt.test", "template": {"id": made["id"], "variables": {
            "L": list(range(1000))}}})
    assert status == 422 and err["message"].startswith("template"), err
    status, err = await world.http("POST", "/templates", json={
        "name": "partial", "html": "{{> secrets}}"})
    assert status == 422 and "partial" in err["message"]


def _unsubscribe_url(raw: bytes) -> str:
    (line,) = header_lines(raw, b"List-Unsubscribe")
    return re.fullmatch(rb"List-Unsubscribe: <(\S+)>", line).group(1).decode()


async def test_broadcast_one_click_unsubscribe(world):
    sent = await world.sdk(resend.Emails.send, {
        "from": f"News <news@{DOMAIN}>", "to": "ann@rcpt.test", "subject": "Weekly",
        "html": "<p>news</p>", "stream": "broadcast", "topic": "weekly"})
    (m,) = await world.sink.wait_for(1)
    # Both headers on single lines, both signed, the signature good.
    assert header_lines(m.data, b"List-Unsubscribe-Post") == \
        [b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"]
    url = _unsubscribe_url(m.data)
    assert url.startswith(world.public + "/u/") and "ann" not in url
    signed = re.findall(rb"\bh=([^;]+)", m.data.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b""))
    assert signed and all(b"list-unsubscribe:list-unsubscribe-post" in
                          h.replace(b" ", b"").lower() for h in signed)
    assert all(dkimpy_results(m.data, world.dns))
    tampered = m.data.replace(url.encode(), url.encode()[:-3] + b"AAA")
    assert not any(dkimpy_results(tampered, world.dns))
    if HAVE_PERL_DKIM:
        results = perl_results(m.data, world.dns)     # (Ed25519: only where Perl has it)
        rsa = [v for k, v in results.items() if k.startswith("rsa-sha256")]
        assert rsa == ["pass"], results
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:                 # a link scanner's GET
            assert r.status == 200 and "method=\"post\"" in (await r.text()).lower()
        assert not await world.events(sent["id"], "unsubscribed", timeout=0.2)
        async with s.post(url[:-4] + "AAAA", data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 404                  # forged
        # A token for another address can only come from our key: one sealed
        # with any other key (naming bob, on this very message) is refused.
        other = seal(TokenKey.generate(), "u", ["default", "bob@rcpt.test", "", sent["id"]])
        async with s.post(f"{world.public}/u/{other}",
                          data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 404
        async with s.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
            assert r.status == 200
    (ev,) = await world.events(sent["id"], "unsubscribed")
    assert (ev.recipient, ev.detail["topic"], ev.detail["method"]) == \
        ("ann@rcpt.test", "weekly", "one-click")
    status, entry = await world.http("GET", "/suppressions/ann@rcpt.test")
    assert status == 200 and entry["reason"] == "unsubscribed" and entry["scope"] == "default"
    status, _ = await world.http("GET", "/suppressions/bob@rcpt.test")
    assert status == 404
    again = await world.sdk(resend.Emails.send, {
        "from": f"news@{DOMAIN}", "to": "ann@rcpt.test", "subject": "Weekly 2",
        "text": "more", "stream": "broadcast"})
    assert await world.events(again["id"], "suppressed")
    await asyncio.sleep(0.3)
    assert len(world.sink.messages) == 1
    assert content_metrics(world.d)[("unsubscribed", "one-click")] == 1


async def test_broadcast_refusals_name_the_field(world):
    base = {"from": f"news@{DOMAIN}", "to": "ann@rcpt.test", "subject": "s", "text": "t",
            "stream": "broadcast"}
    cases = [({"from": "news@pending.test"}, "from: broadcast mail needs a sending domain"),
             ({"to": ["a@rcpt.test", "b@rcpt.test"]}, "to: broadcast mail goes to one"),
             ({"headers": {"List-Unsubscribe": "<mailto:x@y>"}}, "headers.List-Unsubscribe")]
    for change, start in cases:
        status, err = await world.http("POST", "/emails", json={**base, **change})
        assert status == 422 and err["message"].startswith(start), err


async def test_click_tracking_redirects_and_labels_bots(world):
    target = "https://shop.example/item?id=7&ref=mail"
    html = (f'<p><a href="{target.replace("&", "&amp;")}">buy</a> '
            '<a href="https://shop.example/secret" data-mta-notrack>private</a></p>')
    sent = await world.sdk(resend.Emails.send, {
        "from": f"shop@{DOMAIN}", "to": "bob@rcpt.test", "subject": "Offer", "html": html})
    (m,) = await world.sink.wait_for(1)
    body = parsed(m.data).get_body(("html",)).get_content()
    tracked = re.findall(r'href="([^"]+)"', body)
    assert tracked[0].startswith(world.public + "/c/") and unescape(tracked[1]) == \
        "https://shop.example/secret" and "data-mta-notrack" not in body
    assert "/o/" in body                                          # the open pixel
    text = parsed(m.data).get_body(("plain",)).get_content()
    assert target in text                                         # the text part keeps it
    click = unescape(tracked[0])
    await world.events(sent["id"], "delivered")
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/140"}
    async with aiohttp.ClientSession(headers=browser) as s:
        async with s.get(click, allow_redirects=False) as r:       # seconds after delivery
            assert (r.status, r.headers["Location"]) == (302, target)
        async with s.head(click, allow_redirects=False) as r:
            assert r.status == 302
        world.clock.offset += 60                                   # a person, later
        async with s.get(click, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, target)
        async with s.get(click, allow_redirects=False,
                         headers={"User-Agent": "Barracuda Sentinel (EE)"}) as r:
            assert r.status == 302
        async with s.get(click[:-2] + ("AA" if not click.endswith("AA") else "BB"),
                         allow_redirects=False) as r:
            assert r.status == 404                                  # tampered
    clicks = await world.events(sent["id"], "clicked", count=4)
    labels = [(e.detail["bot"], e.detail["label"]) for e in clicks]
    assert labels == [(True, "prefetch"), (True, "head"), (False, None), (True, "scanner")]
    seen = content_metrics(world.d)
    assert [seen.get(("clicked", k)) for k in ("prefetch", "head", "human", "scanner")] == \
        [1, 1, 1, 1]
    assert all(e.detail["url"] == target for e in clicks)
