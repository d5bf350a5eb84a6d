"""Tenant isolation of the sending API's resources and of webhooks (issue 14),
end to end: one real daemon (also with a receiver process serving the API,
so the key crosses the channel to the owner), two tenants (acme, beta) and
the default tenant, each with a full-access API key; real HTTP on loopback,
the real spool index, a sink as the recipients' MX, and a real HTTP
webhook receiver on loopback per tenant endpoint.

- domains: each key lists/gets/verifies/deletes only its tenant's; a name
  (or a parent) another tenant owns is 409; create records ownership,
  delete removes it;
- suppressions: each key works on its tenant's list (scope = tenant), which
  the RCPT check of that tenant's mail consults and no other tenant's; the
  global list is the operator's (not shown, not removable here);
- webhooks: an endpoint made by a key gets only its tenant's events (and
  keeps that after a restart); keys see only their tenant's endpoints; a
  config-file endpoint with `tenant` gets that tenant's events only, one
  naming no tenant runs and gets nothing; the test request names the tenant.
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
from mta.runtime.daemon import Daemon
from mta.server.credentials import CredentialStore
from mta.spool import suppression_admin
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.accounts import Receiver
from tests.support.mtahelpers import config_text, free_port, no_verify_context
from tests.support.sink import Sink

PASSWORD = "tenant-password-1"
SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
TENANTS = ("acme", "beta", "default")


class World:
    def __init__(self, state: Path, keys: dict[str, str], text: str, port: int):
        self.state, self.keys, self.text, self.port = state, keys, text, port
        self.d: Daemon | None = None
        self.url = ""

    @contextlib.asynccontextmanager
    async def daemon(self, workers: int = 0):
        text = self.text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        d = Daemon(parse_config(text, "test"), processes=workers > 0)
        await d.start()
        try:
            self.d, self.url = d, d.api.url
            yield d
        finally:
            await d.stop()

    async def http(self, tenant: str, method: str, path: str, **kw) -> tuple[int, dict]:
        h = {"Authorization": f"Bearer {self.keys[tenant]}"}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=h, **kw) as r:
                return r.status, await r.json(content_type=None)

    async def ids(self, tenant: str, path: str) -> list[str]:
        status, body = await self.http(tenant, "GET", path)
        assert status == 200, body
        return [x["id"] for x in body["data"]]

    async def send(self, tenant: str, rcpt: str) -> str:
        status, body = await self.http(tenant, "POST", "/emails", json={
            "from": f"app@{tenant}.test", "to": [rcpt], "subject": "hi", "text": "hello"})
        assert status == 200, body
        return str(body["id"])

    async def smtp(self, user: str, sender: str, rcpt: str) -> str:
        """One SMTP submission as `user`: the reply to RCPT/DATA ("250 …" or the refusal)."""
        body = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hi\r\n"
                f"Date: {email.utils.formatdate()}\r\n\r\nhello\r\n").encode()
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=True,
                                       tls_context=no_verify_context()) as c:
                await c.login(user, PASSWORD)
                await c.sendmail(sender, [rcpt], body)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            (err,) = exc.recipients
            return f"{err.code} {err.message}"
        return "250"


@pytest.fixture
async def sink():
    async with Sink() as s:
        yield s


@pytest.fixture
async def rx():
    async with Receiver() as r:
        yield r


@pytest.fixture
def world(tmp_path, sink, rx) -> World:
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    tenants, creds = SqliteTenants(state), CredentialStore(state / "credentials.json")
    keys = {}
    for t in TENANTS:
        made, keys[t] = StoreKeys(SqliteApiKeys(str(state))).create(f"{t}-key", now=now)
        creds.add(f"{t}-app", PASSWORD)
        if t != "default":
            tenants.add(t, limits={}, policy={}, now=now)
            tenants.own("credential", made.credential, t, now)
            tenants.own("credential", f"{t}-app", t, now)
            tenants.own("domain", f"{t}.test", t, now)
    port = free_port()
    text = config_text(state, port, routes={"*": f"127.0.0.1:{sink.address[1]}"})
    text += (f'[api]\naddress = "127.0.0.1:{free_port()}"\n'
             f'[[webhooks]]\nname = "cfg-beta"\nurl = "{rx.url}/cfg-beta"\n'
             f'secret = "{SECRET}"\ntenant = "beta"\n'
             f'[[webhooks]]\nname = "cfg-ghost"\nurl = "{rx.url}/cfg-ghost"\n'
             f'secret = "{SECRET}"\ntenant = "ghost"\n')
    return World(state, keys, text, port)


async def until(cond, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


# -- domains -----------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 1], ids=["owner", "receiver"])
async def test_domains_are_each_tenants_own(world, workers):
    w, owners = world, SqliteTenants(world.state)
    async with w.daemon(workers):
        for t in TENANTS:
            status, body = await w.http(t, "POST", "/domains", json={"name": f"news.{t}-x.test"})
            assert status == 200 and body["id"] == f"news.{t}-x.test", body
        assert owners.owner("domain", "news.acme-x.test") == "acme"
        assert owners.owner("domain", "news.beta-x.test") == "beta"
        for t in TENANTS:
            assert await w.ids(t, "/domains") == [f"news.{t}-x.test"]
            status, _ = await w.http(t, "GET", f"/domains/news.{t}-x.test")
            assert status == 200
        # another tenant's domain: not found for every read and change
        for method, path in (("GET", ""), ("POST", "/verify"), ("DELETE", "")):
            status, body = await w.http("beta", method, f"/domains/news.acme-x.test{path}")
            assert (status, body["name"]) == (404, "not_found"), (method, path)
            status, _ = await w.http("default", method, f"/domains/news.acme-x.test{path}")
            assert status == 404
        # a name (or a parent) another tenant owns cannot be made
        for t, name in (("beta", "news.acme-x.test"), ("default", "news.beta-x.test"),
                        ("beta", "mail.acme.test"), ("acme", "news.default-x.test")):
            status, body = await w.http(t, "POST", "/domains", json={"name": name})
            assert status == 409 and body["statusCode"] == 409, (t, name, body)
            assert body["name"] == "conflict" and body["message"].startswith("name:"), body
        assert owners.owner("domain", "mail.acme.test") == "default"     # nothing recorded
        # a subdomain of its own domain: the tenant's
        status, _ = await w.http("acme", "POST", "/domains", json={"name": "mail.acme.test"})
        assert status == 200 and owners.owner("domain", "mail.acme.test") == "acme"
        assert await w.ids("acme", "/domains") == ["mail.acme.test", "news.acme-x.test"]
        # delete disowns: the name is free for anyone again
        status, body = await w.http("acme", "DELETE", "/domains/news.acme-x.test")
        assert status == 200 and body["deleted"] is True
        assert owners.owner("domain", "news.acme-x.test") == "default"
        status, _ = await w.http("beta", "POST", "/domains", json={"name": "news.acme-x.test"})
        assert status == 200 and owners.owner("domain", "news.acme-x.test") == "beta"
        assert await w.ids("acme", "/domains") == ["mail.acme.test"]


# -- suppressions ------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 1], ids=["owner", "receiver"])
async def test_suppressions_are_each_tenants_list(world, workers):
    w = world
    suppression_admin.add(str(w.state), "global@rcpt.test", now=time.time())   # the operator's
    async with w.daemon(workers):
        status, body = await w.http("acme", "POST", "/suppressions",
                                    json={"email": "gone@rcpt.test"})
        assert status == 200 and body["scope"] == "acme", body
        assert await w.ids("acme", "/suppressions") == ["gone@rcpt.test"]
        for t in ("beta", "default"):
            assert await w.ids(t, "/suppressions") == []
            for method in ("GET", "DELETE"):
                status, _ = await w.http(t, method, "/suppressions/gone@rcpt.test")
                assert status == 404, (t, method)
        # the same address on beta's list is beta's own entry
        status, body = await w.http("beta", "POST", "/suppressions",
                                    json={"email": "gone@rcpt.test", "reason": "unsubscribe"})
        assert status == 200 and body["scope"] == "beta" and body["reason"] == "unsubscribe"
        status, body = await w.http("acme", "GET", "/suppressions/gone@rcpt.test")
        assert status == 200 and body["reason"] == "manual" and body["scope"] == "acme"
        # the global list: not shown to keys, not removable by them
        for t in TENANTS:
            status, _ = await w.http(t, "GET", "/suppressions/global@rcpt.test")
            assert status == 404
            status, _ = await w.http(t, "DELETE", "/suppressions/global@rcpt.test")
            assert status == 404
        assert [v.scope for v in suppression_admin.get(str(w.state), "global@rcpt.test")] == [""]
        # what the entries do: acme's list refuses acme's mail only
        status, body = await w.http("beta", "DELETE", "/suppressions/gone@rcpt.test")
        assert status == 200 and body["deleted"] is True
        assert (await w.smtp("acme-app", "a@acme.test", "gone@rcpt.test")).startswith("550")
        assert await w.smtp("beta-app", "b@beta.test", "gone@rcpt.test") == "250"
        assert await w.smtp("default-app", "c@plain.test", "gone@rcpt.test") == "250"
        status, _ = await w.http("acme", "DELETE", "/suppressions/gone@rcpt.test")
        assert status == 200
        assert await w.smtp("acme-app", "a@acme.test", "gone@rcpt.test") == "250"
        assert [v.scope for v in suppression_admin.get(str(w.state), "gone@rcpt.test")] == []


# -- webhooks ----------------------------------------------------------------------------

async def test_webhooks_get_and_show_only_their_tenants(world, rx, sink):
    w, owners = world, SqliteTenants(world.state)
    async with w.daemon() as d:
        hooks: dict[str, str] = {}
        for t in TENANTS:
            status, body = await w.http(t, "POST", "/webhooks", json={
                "endpoint": f"{rx.url}/{t}", "events": ["*"]})
            assert status == 200, body
            hooks[t] = body["id"]
            assert owners.owner("webhook", hooks[t]) == t
            assert d.webhooks.deliverers[hooks[t]].cfg.tenant == t
        # listing and reads: a key sees its tenant's; the config file's only the default's
        assert await w.ids("acme", "/webhooks") == [hooks["acme"]]
        assert await w.ids("beta", "/webhooks") == [hooks["beta"]]
        assert await w.ids("default", "/webhooks") == sorted(
            [hooks["default"], "cfg-beta", "cfg-ghost"])
        for method, suffix, doc in (("GET", "", None), ("PATCH", "", {"status": "disabled"}),
                                    ("DELETE", "", None), ("POST", "/test", None)):
            status, body = await w.http("beta", method, f"/webhooks/{hooks['acme']}{suffix}",
                                        json=doc)
            assert (status, body["name"]) == (404, "not_found"), (method, suffix)
            status, _ = await w.http("acme", method, f"/webhooks/cfg-beta{suffix}", json=doc)
            assert status == 404, (method, suffix)
        assert hooks["acme"] in d.webhooks.deliverers              # untouched by beta
        status, body = await w.http("beta", "POST", "/webhooks", json={
            "name": hooks["acme"], "endpoint": f"{rx.url}/x", "events": ["*"]})
        assert status == 409 and "acme" not in body["message"], body
        status, body = await w.http("acme", "POST", "/webhooks", json={
            "name": "cfg-beta", "endpoint": f"{rx.url}/x", "events": ["*"]})
        assert status == 409 and "config" not in body["message"], body

        # events: each tenant's mail reaches its tenant's endpoints only
        sent = {t: await w.send(t, f"to-{t}@rcpt.test") for t in TENANTS}
        for t in TENANTS:
            await until(lambda t=t: {"received", "delivered"} <= {
                e["type"] for e in rx.at(t) if e["queue_id"] == sent[t]})
        await until(lambda: any(e["type"] == "delivered" for e in rx.at("cfg-beta")))
        await asyncio.sleep(0.5)        # time for a stray event to arrive, if one would
        for t in TENANTS:
            got = rx.at(t)
            assert {e["credential"] for e in got} == {f"api:{t}-key"}, (t, got)
            assert {e["queue_id"] for e in got} == {sent[t]}
        assert {e["credential"] for e in rx.at("cfg-beta")} == {"api:beta-key"}
        assert rx.at("cfg-ghost") == []
        ghost = await d.webhooks.deliverers["cfg-ghost"].status()
        assert ghost["running"] and ghost["tenant"] == "ghost" and ghost["lag"] == 0
        assert (await d.webhooks.deliverers["cfg-beta"].status())["tenant"] == "beta"

        # the test request says whose events the endpoint gets
        status, body = await w.http("acme", "POST", f"/webhooks/{hooks['acme']}/test")
        assert status == 200 and body["ok"] is True
        test = [e for e in rx.at("acme") if e["type"] == "test"]
        assert [e["data"]["tenant"] for e in test] == ["acme"]

        # delete disowns
        status, _ = await w.http("beta", "DELETE", f"/webhooks/{hooks['beta']}")
        assert status == 200 and hooks["beta"] not in d.webhooks.deliverers
        assert owners.owner("webhook", hooks["beta"]) == "default"

    rx.got.clear()
    async with w.daemon() as d:         # after a restart: still the tenant's events only
        assert d.webhooks.deliverers[hooks["acme"]].cfg.tenant == "acme"
        assert hooks["beta"] not in d.webhooks.deliverers
        b = await w.send("beta", "again-b@rcpt.test")
        a = await w.send("acme", "again-a@rcpt.test")
        await until(lambda: any(e["queue_id"] == a and e["type"] == "delivered"
                                for e in rx.at("acme")))
        await until(lambda: any(e["queue_id"] == b for e in rx.at("cfg-beta")))
        assert {e["queue_id"] for e in rx.at("acme")} == {a}
