"""Two tenants on one daemon, end to end (issue 14): over real loopback
sockets (SMTP with STARTTLS and AUTH, the sending API through the official
Resend Python SDK and raw HTTP, the inbound listener for complaints), real
SQLite files, a scripted sink as the recipients' MX, and a fake clock (our
own seam) for the quota windows.

- isolation: a tenant's credential cannot send as the other's domain (or a
  domain it does not own); a key cannot see the other tenant's emails or
  keys; a hard bounce suppresses in the tenant that sent only;
- quotas: the hourly quota refuses (SMTP 452 4.5.3, API 429 + retry-after),
  nothing queued is dropped, and the next hour admits again;
- a complaint storm (ARF reports to the inbound listener) pauses one tenant
  (SMTP 550 5.7.1 at RCPT with the rate in the text, API 403), holds its
  queued mail, while the other keeps sending; `resume` records its reason
  in the ledger and releases the held mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from mta.api.keys import StoreKeys
from mta.config.loader import parse_config
from mta.core.clock import FakeClock
from mta.runtime.daemon import Daemon
from mta.server.credentials import CredentialStore
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.mtahelpers import config_text, free_port, no_verify_context
from tests.support.resend_sdk import python_resend
from tests.support.sink import Sink
from tests.test_e2e import wait_until

resend = pytest.importorskip("resend", reason="the Resend Python SDK (pip install resend: "
                                              "scripts/setup.sh test installs it)")

VERP_DOMAIN = "bounces.mta.test"
PASSWORD = "tenant-password-1"


class World:
    def __init__(self, d: Daemon, sink: Sink, state: Path, clock: FakeClock, keys: dict):
        self.d, self.sink, self.state, self.clock, self.keys = d, sink, state, clock, keys
        self.url = d.api.url

    async def smtp(self, user: str, sender: str, rcpts: list[str], *, from_: str | None = None,
                   subject: str = "hi"):
        """Submit one message as `user`; (refused recipients, reply)."""
        body = (f"From: {from_ or sender}\r\nTo: {rcpts[0]}\r\nSubject: {subject}\r\n"
                f"Date: {email.utils.formatdate()}\r\n\r\nhello\r\n").encode()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=True,
                                   tls_context=no_verify_context()) as c:
            await c.login(user, PASSWORD)
            return await c.sendmail(sender, rcpts, body)

    async def smtp_error(self, user: str, sender: str, rcpts: list[str], **kw) -> str:
        try:
            await self.smtp(user, sender, rcpts, **kw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            (err,) = exc.recipients
            return f"{err.code} {err.message}"
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
        raise AssertionError("the submission was accepted")

    async def sdk_send(self, tenant: str, **params) -> str:
        def call():
            with python_resend(self.url, self.keys[tenant]) as r:
                return r.Emails.send(params)["id"]
        return await asyncio.to_thread(call)

    async def http(self, tenant: str, method: str, path: str, **kw):
        h = {"Authorization": f"Bearer {self.keys[tenant]}"}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=h, **kw) as r:
                return r.status, await r.json(content_type=None), dict(r.headers)


@pytest.fixture
async def world(tmp_path):
    async with make_world(tmp_path) as w:
        yield w


@pytest.fixture
async def world_with_receivers(tmp_path):
    """The same, with one receiver process serving SMTP sessions and API
    connections (the guardrails answer from the owner over the channel)."""
    async with make_world(tmp_path, workers=1) as w:
        yield w


@contextlib.asynccontextmanager
async def make_world(tmp_path, workers: int = 0):
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    clock = FakeClock(now)
    creds = CredentialStore(state / "credentials.json")
    tenants = SqliteTenants(state)
    keys = {}
    tenants.add("acme", limits={"per_hour": 6}, policy={"min_volume": 10, "window": 50},
                now=now)
    tenants.add("beta", limits={}, policy={"min_volume": 10, "window": 50}, now=now)
    for t in ("acme", "beta"):
        creds.add(f"{t}-app", PASSWORD)
        tenants.own("credential", f"{t}-app", t, now)
        tenants.own("domain", f"{t}.test", t, now)
        made, keys[t] = StoreKeys(SqliteApiKeys(str(state))).create(f"{t}-key", now=now)
        tenants.own("credential", made.credential, t, now)
    async with Sink() as sink:
        port, inbound = free_port(), free_port()
        text = config_text(state, port, routes={"*": f"127.0.0.1:{sink.address[1]}"},
                           retry="1h", lifetime="5d")
        text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        text += (f'\n[bounces]\ndomain = "{VERP_DOMAIN}"\nfeedback_addresses = ["fbl@mta.test"]\n'
                 f'[[listeners]]\nname = "inbound"\naddress = "127.0.0.1:{inbound}"\n'
                 f'role = "inbound"\ntls = "starttls"\n'
                 f'[api]\naddress = "127.0.0.1:{free_port()}"\n')
        d = Daemon(parse_config(text, "test"), clock=clock, processes=workers > 0)
        await d.start()
        try:
            w = World(d, sink, state, clock, keys)
            w.port, w.inbound = port, inbound
            yield w
        finally:
            await d.stop()


async def test_a_tenant_sends_only_as_its_own_domains(world):
    w = world
    errors, reply = await w.smtp("acme-app", "news@acme.test", ["ok-1@rcpt.test"])
    assert errors == {} and reply.startswith("2.0.0") or "queued" in reply
    got = await w.smtp_error("acme-app", "news@beta.test", ["ok-2@rcpt.test"])
    assert got.startswith("550") and "5.7.1" in got and "belongs to another tenant" in got
    got = await w.smtp_error("acme-app", "news@acme.test", ["ok-3@rcpt.test"],
                             from_="ceo@beta.test")
    assert got.startswith("550") and "beta.test" in got
    got = await w.smtp_error("beta-app", "x@elsewhere.test", ["ok-4@rcpt.test"])
    assert got.startswith("550") and "not one of tenant beta's domains" in got
    # The API: the same rule, Resend's error shape.
    status, body, _ = await w.http("beta", "POST", "/emails", json={
        "from": "x@acme.test", "to": ["ok-5@rcpt.test"], "subject": "s", "text": "t"})
    assert status == 403 and "belongs to another tenant" in body["message"]
    (m,) = await w.sink.wait_for(1)
    assert m.rcpt_tos == ["ok-1@rcpt.test"]


async def test_keys_see_only_their_tenants_emails_and_keys(world):
    w = world
    a = await w.sdk_send("acme", **{"from": "app@acme.test", "to": ["ok-a@rcpt.test"],
                                    "subject": "acme", "text": "hi"})
    b = await w.sdk_send("beta", **{"from": "app@beta.test", "to": ["ok-b@rcpt.test"],
                                    "subject": "beta", "text": "hi"})
    assert (await w.http("acme", "GET", f"/emails/{a}"))[0] == 200
    status, body, _ = await w.http("beta", "GET", f"/emails/{a}")
    assert status == 404 and body["name"] == "not_found"
    assert (await w.http("beta", "GET", f"/emails/{a}/events"))[0] == 404
    assert (await w.http("beta", "POST", f"/emails/{a}/cancel"))[0] == 404
    _, listed, _ = await w.http("acme", "GET", "/emails")
    assert [e["id"] for e in listed["data"]] == [a]
    _, listed, _ = await w.http("beta", "GET", "/emails")
    assert [e["id"] for e in listed["data"]] == [b]
    _, keys, _ = await w.http("beta", "GET", "/api-keys")
    assert [k["name"] for k in keys["data"]] == ["beta-key"]
    # A key made with beta's key is beta's.
    status, made, _ = await w.http("beta", "POST", "/api-keys", json={"name": "beta-2"})
    assert status in (200, 201)
    assert w.d.tenants.tenant_of("api:beta-2") == "beta"
    _, keys, _ = await w.http("acme", "GET", "/api-keys")
    assert [k["name"] for k in keys["data"]] == ["acme-key"]
    assert (await w.http("acme", "DELETE", f"/api-keys/{made['id']}"))[0] == 404
    # A name that is another tenant's credential: 409, and no key is left
    # behind (its token was never shown to anyone).
    await w.d.tenants.own("credential", "api:taken", "beta")
    status, body, _ = await w.http("acme", "POST", "/api-keys", json={"name": "taken"})
    assert status == 409 and "taken" in body["message"]
    live = StoreKeys(SqliteApiKeys(str(w.d.cfg.server.state_dir))).list()
    assert "taken" not in [k.name for k in live]


async def test_a_hard_bounce_suppresses_in_the_tenant_that_sent(world):
    w = world
    rcpt = "reject-gone@rcpt.test"
    await w.smtp("acme-app", "app@acme.test", [rcpt])

    async def suppressed():
        return await w.d.spool.suppressions.suppressed(rcpt, "acme")
    entry = await wait_until(suppressed)
    assert entry.scope == "acme" and entry.reason == "hard_bounce"
    got = await w.smtp_error("acme-app", "app@acme.test", [rcpt])
    assert got.startswith("550") and "suppressed" in got
    # beta may still write to the address: its own list does not have it.
    assert await w.d.spool.suppressions.suppressed(rcpt, "beta") is None
    errors, _ = await w.smtp("beta-app", "app@beta.test", [rcpt])
    assert errors == {}


async def test_hourly_quota_refuses_then_recovers_at_the_next_hour(world):
    w = world
    for i in range(4):
        await w.smtp("acme-app", "app@acme.test", [f"ok-q{i}@rcpt.test"])
    # Two recipients fit the six; the third message's two do not.
    await w.sdk_send("acme", **{"from": "app@acme.test", "to": ["ok-q4@rcpt.test",
                                                                 "ok-q5@rcpt.test"],
                                "subject": "s", "text": "t"})
    got = await w.smtp_error("acme-app", "app@acme.test", ["ok-q6@rcpt.test"])
    assert got.startswith("452") and "4.5.3" in got and "hourly quota (6 messages)" in got
    status, body, headers = await w.http("acme", "POST", "/emails", json={
        "from": "app@acme.test", "to": ["ok-q7@rcpt.test"], "subject": "s", "text": "t"})
    assert status == 429 and body["name"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 3600
    assert "hourly quota" in body["message"]
    # beta has no quota; nothing of acme's already queued is dropped.
    errors, _ = await w.smtp("beta-app", "app@beta.test", ["ok-b@rcpt.test"])
    assert errors == {}
    await w.sink.wait_for(7)
    assert sorted(r for m in w.sink.messages for r in m.rcpt_tos if "-q" in r) == \
        [f"ok-q{i}@rcpt.test" for i in range(6)]
    rejected = await w.d.spool.ledger.events_after(0, 100, types=["rejected"],
                                                   tenant="acme")
    assert [(e.detail["stage"], e.detail["reply"][:9]) for e in rejected] == \
        [("DATA", "452 4.5.3"), ("API", "452 4.5.3")]
    assert await w.d.spool.ledger.events_after(0, 100, types=["rejected"], tenant="beta") == []
    w.clock.advance(3600)                       # the next hour's window
    errors, _ = await w.smtp("acme-app", "app@acme.test", ["ok-q8@rcpt.test"])
    assert errors == {}
    refusals = dict(w.d.tenants.refused)
    assert refusals[("acme", "per_hour")] == 2


async def test_guardrails_answer_through_receiver_processes(world_with_receivers):
    w = world_with_receivers
    assert w.d.receivers is not None and len(w.d.receivers.pids) == 1
    got = await w.smtp_error("acme-app", "news@beta.test", ["ok-1@rcpt.test"])
    assert got.startswith("550") and "belongs to another tenant" in got
    await w.sdk_send("acme", **{"from": "app@acme.test", "to": [f"ok-r{i}@rcpt.test"
                                                                 for i in range(6)],
                                "subject": "s", "text": "t"})
    got = await w.smtp_error("acme-app", "app@acme.test", ["ok-r7@rcpt.test"])
    assert got.startswith("452 4.5.3") or (got.startswith("452") and "4.5.3" in got)
    status, body, headers = await w.http("acme", "POST", "/emails", json={
        "from": "app@acme.test", "to": ["ok-r8@rcpt.test"], "subject": "s", "text": "t"})
    assert status == 429 and int(headers["Retry-After"]) >= 1
    await w.d.tenants.pause("acme", "billing")
    got = await w.smtp_error("acme-app", "app@acme.test", ["ok-r9@rcpt.test"])
    assert got.startswith("550") and "sending paused: billing" in got


def _arf(rcpt: str) -> bytes:
    b = "arf-boundary"
    returned = f"From: app@acme.test\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhello\r\n"
    return (f"From: feedback@isp.test\r\nTo: fbl@mta.test\r\nSubject: complaint\r\n"
            f"Date: {email.utils.formatdate()}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=feedback-report; "
            f"boundary=\"{b}\"\r\n\r\n"
            f"--{b}\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
            f"--{b}\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n"
            f"Original-Rcpt-To: <{rcpt}>\r\n\r\n"
            f"--{b}\r\nContent-Type: message/rfc822\r\n\r\n{returned}\r\n--{b}--\r\n").encode()


async def test_a_complaint_storm_pauses_one_tenant_and_resume_releases(world):
    w = world
    d = w.d
    await d.tenants.update("acme", {"per_hour": None}, None)     # no quota in this story
    await d.reputation.stop()       # the test takes its steps itself (no tick in between)
    rcpts = [f"ok-s{i}@rcpt.test" for i in range(12)]
    for r in rcpts:
        await w.smtp("acme-app", "app@acme.test", [r])
    await w.sink.wait_for(12)
    # A recipient the MX defers stays queued (retry in an hour).
    await w.smtp("acme-app", "app@acme.test", ["tempfail-9@rcpt.test"])
    await wait_until(lambda: _deferred(d, "tempfail-9@rcpt.test"))
    verps = {r: next(m.mail_from for m in w.sink.messages if r in m.rcpt_tos)
             for r in rcpts[:3]}
    for r, verp in verps.items():              # three complaints: 25% of 12 delivered
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=w.inbound, start_tls=True,
                                   tls_context=no_verify_context()) as c:
            await c.sendmail("", [verp], _arf(r))
    await wait_until(lambda: _complaints(d, 3))
    await d.reputation.step()
    row = d.tenants.row("acme")
    assert row.auto_status == "paused" and not row.sending
    assert row.auto_reason.startswith("complaint rate 25.00% over the last 12 messages")
    got = await w.smtp_error("acme-app", "app@acme.test", ["ok-late@rcpt.test"])
    assert got.startswith("550") and "5.7.1" in got
    assert "sending paused: complaint rate 25.00% over the last 12 messages" in got
    status, body, _ = await w.http("acme", "POST", "/emails", json={
        "from": "app@acme.test", "to": ["ok-late@rcpt.test"], "subject": "s", "text": "t"})
    assert status == 403 and "sending paused" in body["message"]
    # Its queued mail is held, not bounced; beta keeps sending.
    view = await d.spool.get_message(await _qid_of(d, "tempfail-9@rcpt.test"))
    assert view.recipients[0].state == "held"
    errors, _ = await w.smtp("beta-app", "app@beta.test", ["ok-beta@rcpt.test"])
    assert errors == {}
    shown = await d.tenants.show("acme")
    assert shown["reputation"]["complaints"] == 3 and shown["reputation"]["delivered"] == 12
    assert shown["reputation"]["domains"]["acme.test"]["complaint_rate"] == 0.25
    events = await d.spool.ledger.events_after(0, 100, types=["reputation_paused"],
                                               tenant="acme")
    assert [e.detail["tenant"] for e in events] == ["acme"]
    assert events[0].detail["metric"] == "complaint"
    # acme's key sees the event (its tenant's), beta's webhooks-to-be do not.
    assert await d.spool.ledger.events_after(0, 100, types=["reputation_paused"],
                                             tenant="beta") == []
    # The operator resumes with a reason: recorded, held mail released.
    await d.tenants.resume("acme", "list cleaned; complainers suppressed")
    assert d.tenants.row("acme").sending
    (ev,) = await d.spool.ledger.events_after(0, 100, types=["tenant_resumed"])
    assert ev.detail["reason"] == "list cleaned; complainers suppressed"
    assert ev.detail["was"]["auto_status"] == "paused"
    view = await d.spool.get_message(view.id)
    assert view.recipients[0].state == "queued"
    await d.reputation.step()                  # the window starts over: not paused again
    assert d.tenants.row("acme").sending
    errors, _ = await w.smtp("acme-app", "app@acme.test", ["ok-after@rcpt.test"])
    assert errors == {}


async def _deferred(d, rcpt):
    qid = await _qid_of(d, rcpt)
    if qid is None:
        return None
    v = await d.spool.get_message(qid)
    return v if v.recipients[0].attempts >= 1 else None


async def _qid_of(d, rcpt):
    for v in await d.spool.list_messages(include_done=True):
        if any(r.address == rcpt for r in v.recipients):
            return v.id
    return None


async def _complaints(d, n):
    events = await d.spool.ledger.events_after(0, 100, types=["complained"])
    return events if len(events) >= n else None


async def test_a_bounce_rate_at_the_warn_level_warns_and_keeps_sending(world):
    """1 user-unknown bounce in 20 sends = 5%: standard's warning (a ledger
    event the tenant's webhooks get), not a pause; a full mailbox would not
    count (core.reasons.LIST_QUALITY)."""
    w = world
    d = w.d
    await d.tenants.update("acme", {"per_hour": None}, None)
    await d.reputation.stop()
    for i in range(19):
        await w.smtp("acme-app", "app@acme.test", [f"ok-w{i}@rcpt.test"])
    await w.smtp("acme-app", "app@acme.test", ["reject-w@rcpt.test"])

    async def settled():
        got = await d.spool.ledger.events_after(0, 200, types=["delivered", "bounced"],
                                                tenant="acme")
        return got if len(got) == 20 else None
    events = await wait_until(settled)
    (bounced,) = [e for e in events if e.type == "bounced"]
    assert bounced.detail["reason"] == "user_unknown"
    await d.reputation.step()
    row = d.tenants.row("acme")
    assert row.auto_status == "warn" and row.sending
    assert row.auto_reason == "bounce rate 5.00% over the last 20 messages"
    (ev,) = await d.spool.ledger.events_after(0, 100, types=["reputation_warning"],
                                              tenant="acme")
    assert ev.detail["metric"] == "bounce" and ev.detail["sends"] == 20
    errors, _ = await w.smtp("acme-app", "app@acme.test", ["ok-still@rcpt.test"])
    assert errors == {}
