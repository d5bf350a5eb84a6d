"""The sending API's domains, suppressions and webhooks (issue 13), over real
HTTP against a real daemon: the official Resend SDKs (Python in-process, Node
through tests/sdk/node/run.mjs) and a plain aiohttp client; DNS checks
against the project's test DNS server on 127.0.0.158; webhook events at a
real HTTP receiver on loopback, signatures checked with `standardwebhooks`;
the endpoint store in the real spool index."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from mta.api.keys import StoreKeys
from mta.config import WebhookConfig, parse_config
from mta.domains.records import txt_strings
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.webhook_endpoints import EndpointExists, EndpointRow, SqliteWebhookEndpoints, \
    WebhookEndpointStoreError
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.resend_sdk import python_resend, requires_node, run_node
from tests.support.sink import Sink
from tests.test_domains import MultiStringDns, parse_zone

resend = pytest.importorskip("resend", reason="the Resend Python SDK (pip install resend: "
                                              "scripts/setup.sh test installs it)")

CFG_SECRET = "whsec_" + base64.b64encode(b"config-file-webhook-secret-01234").decode()


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers 204 and keeps every request."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []    # path, headers, body
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.got.append((request.path, {k.lower(): v for k, v in request.headers.items()},
                         await request.read()))
        return web.Response(status=204)

    async def __aenter__(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def at(self, path: str) -> list[tuple[dict[str, str], bytes, dict]]:
        """What reached `path`: (headers, body, the body parsed)."""
        return [(h, b, json.loads(b)) for p, h, b in self.got if p == path]


class World:
    def __init__(self, tmp_path: Path, dns: MultiStringDns, sink: Sink, rx: Receiver):
        self.state = tmp_path / "state"
        self.smtp_port = free_port()
        self.text = (config_text(self.state, self.smtp_port, tls="none",
                                 trusted=["127.0.0.0/8"], nameservers=[dns.nameserver],
                                 routes={"*": f"127.0.0.1:{sink.address[1]}"},
                                 public_ips=["127.0.0.9"])
                     + f'[api]\naddress = "127.0.0.1:{free_port()}"\n'
                     + f'[[webhooks]]\nname = "cfg-hook"\nurl = "{rx.url}/config"\n'
                     + f'events = ["delivered"]\nsecret = "{CFG_SECRET}"\n')
        self.dns, self.sink, self.rx = dns, sink, rx
        keys = StoreKeys(SqliteApiKeys(str(self.state)))
        now = time.time()
        self.key = keys.create("admin", rate_limit=1000, now=now)[1]
        self.sending = keys.create("sender", permission="sending_access", now=now)[1]
        self.test_key = keys.create("tester", test=True, now=now)[1]
        self.d = None
        self.url = ""

    @contextlib.asynccontextmanager
    async def daemon(self):
        async with running_daemon(self.text) as d:
            self.d = d
            self.url = d.api.url
            yield d

    async def sdk(self, fn, *args, key: str | None = None):
        def call():
            with python_resend(self.url, key or self.key):
                return fn(*args)
        return await asyncio.to_thread(call)

    async def http(self, method: str, path: str, *, key: str | None = "default",
                   **kw) -> tuple[int, dict]:
        headers = {}
        if key is not None:
            headers["Authorization"] = f"Bearer {self.key if key == 'default' else key}"
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=headers, **kw) as r:
                assert r.headers["Content-Type"].startswith("application/json")
                return r.status, await r.json()

    async def submit(self, rcpt: str, subject: str = "hi") -> str:
        msg = f"From: app@sender.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhello\r\n"
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.smtp_port, start_tls=False,
                                   use_tls=False, timeout=10) as c:
            _, resp = await c.sendmail("app@sender.test", [rcpt], msg.encode())
        return resp.split()[-1]


@pytest.fixture
async def world(tmp_path):
    dns = MultiStringDns({}, host="127.0.0.158", ttl=1).start()
    try:
        async with Sink(tls=False) as sink, Receiver() as rx:
            yield World(tmp_path, dns, sink, rx)
    finally:
        dns.stop()


async def until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


def zone_of(records: list[dict]) -> str:
    """The zone text an operator would publish from the API's records."""
    lines = []
    for r in records:
        if r["type"] == "TXT":
            rdata = " ".join(f'"{s}"' for s in txt_strings(r["value"]))
        elif r["type"] == "MX":
            rdata = f"{r['priority']} {r['value']}."
        else:
            rdata = r["value"]
        lines.append(f"{r['fqdn']}. {r['ttl']} IN {r['type']} {rdata}")
    return "\n".join(lines) + "\n"


# -- domains ---------------------------------------------------------------------------

async def test_domains_create_verify_list_get_delete(world):
    async with world.daemon() as d:
        made = await world.sdk(resend.Domains.create, {"name": "Brand.Test", "region": "eu-west-1"})
        assert made["id"] == made["name"] == "brand.test" and made["status"] == "not_started"
        assert made["created_at"] and made["region"] == "local"
        kinds = {(r["record"], r["type"]) for r in made["records"]}
        assert {("DKIM", "TXT"), ("SPF", "TXT"), ("DMARC", "TXT"), ("ReturnPath", "MX")} <= kinds
        assert all(r["status"] == "not_started" for r in made["records"])
        mx = next(r for r in made["records"] if r["type"] == "MX")
        assert mx["priority"] == 10 and mx["value"] == "mta.test" and mx["name"] == "bounce"
        assert d.domains.state("brand.test") == "pending"      # the sender policy sees it

        # nothing published yet: the check fails, each record says so
        await world.sdk(resend.Domains.verify, "brand.test")
        got = await world.sdk(resend.Domains.get, "brand.test")
        assert got["status"] == "pending" and got["object"] == "domain"
        assert {r["status"] for r in got["records"] if r["required"]} == {"pending"}

        world.dns.zone.update(parse_zone(zone_of(made["records"])))
        verified = await world.sdk(resend.Domains.verify, "brand.test")
        assert verified["object"] == "domain" and verified["id"] == "brand.test"
        got = await world.sdk(resend.Domains.get, "brand.test")
        assert got["status"] == "verified", (got["failure_reason"], got["records"])
        assert [r["status"] for r in got["records"]] == ["verified"] * len(got["records"])
        assert d.domains.state("brand.test") == "verified"

        listed = await world.sdk(resend.Domains.list)
        assert [x["id"] for x in listed["data"]] == ["brand.test"] and not listed["has_more"]

        gone = await world.sdk(resend.Domains.remove, "brand.test")
        assert gone["deleted"] is True and gone["object"] == "domain"
        with pytest.raises(resend.exceptions.ResendError) as ei:
            await world.sdk(resend.Domains.get, "brand.test")
        assert ei.value.code == 404 and ei.value.error_type == "not_found"
        assert d.domains.state("brand.test") is None


@requires_node
async def test_domains_with_the_node_sdk(world):
    async with world.daemon():
        out = await asyncio.to_thread(run_node, world.url, world.key, [
            {"op": "domains.create", "args": {"name": "node.test"}},
            {"op": "domains.list", "args": {}},
            {"op": "domains.get", "args": {"id": "node.test"}},
            {"op": "domains.verify", "args": {"id": "node.test"}},
            {"op": "domains.remove", "args": {"id": "node.test"}},
            {"op": "domains.get", "args": {"id": "node.test"}}])
        assert [o["error"] for o in out[:5]] == [None] * 5, out
        assert out[0]["data"]["records"] and out[1]["data"]["data"][0]["id"] == "node.test"
        assert out[3]["data"]["id"] == "node.test" and out[4]["data"]["deleted"] is True
        assert out[5]["error"]["statusCode"] == 404


# -- suppressions ----------------------------------------------------------------------

async def test_suppressions_add_list_remove_and_the_smtp_path(world):
    async with world.daemon():
        await world.submit("blocked@rcpt.test")          # not suppressed yet: accepted
        added = await world.sdk(resend.Suppressions.add, {"email": "blocked@rcpt.test"})
        assert added["object"] == "suppression" and added["id"] == "blocked@rcpt.test"
        # issue 14: a key works on its tenant's list ("default" here), not the global one
        assert added["origin"] == "manual" and added["scope"] == "default"
        again = await world.sdk(resend.Suppressions.add, {"email": "blocked@rcpt.test"})
        assert again["id"] == added["id"] and again["created_at"] == added["created_at"]
        status, body = await world.http("POST", "/suppressions",
                                        json={"email": "other@rcpt.test", "reason": "unsubscribe"})
        assert status == 200 and body["reason"] == "unsubscribe"

        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as ei:
            await world.submit("blocked@rcpt.test")     # at once, not after a recheck
        assert ei.value.recipients[0].code == 550

        page = await world.sdk(resend.Suppressions.list, {"limit": 1})
        assert [x["email"] for x in page["data"]] == ["blocked@rcpt.test"] and page["has_more"]
        page = await world.sdk(resend.Suppressions.list, {"limit": 1, "after": "blocked@rcpt.test"})
        assert [x["email"] for x in page["data"]] == ["other@rcpt.test"] and not page["has_more"]
        one = await world.sdk(resend.Suppressions.get, "blocked@rcpt.test")
        assert one["email"] == "blocked@rcpt.test"

        gone = await world.sdk(resend.Suppressions.remove, "blocked@rcpt.test")
        assert gone["deleted"] is True
        await world.submit("blocked@rcpt.test")          # accepted again
        status, body = await world.http("DELETE", "/suppressions/blocked@rcpt.test")
        assert status == 404 and body["name"] == "not_found"
        status, body = await world.http("GET", "/suppressions")
        assert [x["email"] for x in body["data"]] == ["other@rcpt.test"]


async def test_suppressions_page_through_a_long_list(world):
    """Pages are bounded reads: 250 entries of the key's tenant's list
    ("default"; beside them a global one, another scope's and an expired
    one, none listed) walk forward and back exactly once each, origin
    filters."""
    from mta.spool import suppression_admin
    now = time.time()
    for i in range(250):
        suppression_admin.add(str(world.state), f"u{i:03d}@rcpt.test", now=now, scope="default",
                              reason="hard_bounce" if i % 5 == 0 else "manual")
    suppression_admin.add(str(world.state), "scoped@rcpt.test", scope="app1", now=now)
    suppression_admin.add(str(world.state), "global@rcpt.test", now=now)     # the operator's
    suppression_admin.add(str(world.state), "old@rcpt.test", scope="default", expires=now - 10,
                          now=now - 100)
    async with world.daemon():
        seen, after = [], None
        while True:
            query = "?limit=100" + (f"&after={after}" if after else "")
            status, body = await world.http("GET", "/suppressions" + query)
            assert status == 200 and len(body["data"]) <= 100
            seen += [x["email"] for x in body["data"]]
            if not body["has_more"]:
                break
            after = seen[-1]
        assert seen == [f"u{i:03d}@rcpt.test" for i in range(250)]
        status, body = await world.http("GET", "/suppressions?limit=3&before=u100@rcpt.test")
        assert [x["email"] for x in body["data"]] == ["u097@rcpt.test", "u098@rcpt.test",
                                                      "u099@rcpt.test"] and body["has_more"]
        status, body = await world.http("GET", "/suppressions?limit=100&origin=bounce")
        assert [x["email"] for x in body["data"]] == [f"u{i:03d}@rcpt.test"
                                                      for i in range(0, 250, 5)]


# -- webhooks --------------------------------------------------------------------------

async def test_webhook_delivers_signed_events_and_survives_a_restart(world):
    rx = world.rx
    async with world.daemon() as d:
        made = await world.sdk(resend.Webhooks.create, {
            "endpoint": f"{rx.url}/api", "events": ["email.sent", "delivered"],
            "name": "app-hook"})
        secret = made["signing_secret"]
        assert made["id"] == "app-hook" and secret.startswith("whsec_")
        assert made["events"] == ["received", "delivered"] and made["status"] == "enabled"
        qid = await world.submit("someone@rcpt.test")
        await until(lambda: {e["type"] for _, _, e in rx.at("/api")
                             if e["queue_id"] == qid} == {"received", "delivered"})
        for headers, body, _ in rx.at("/api"):
            assert Webhook(secret).verify(body, headers)["queue_id"] == qid

        # a reload keeps the API's endpoint beside the config file's
        await d.webhooks.reconfigure(d.cfg.webhooks)
        assert set(d.webhooks.deliverers) == {"cfg-hook", "app-hook"}

    rx.got.clear()
    async with world.daemon():
        got = await world.sdk(resend.Webhooks.get, "app-hook")
        assert got["signing_secret"] == secret and got["endpoint"] == f"{rx.url}/api"
        qid = await world.submit("again@rcpt.test")
        await until(lambda: any(e["queue_id"] == qid and e["type"] == "received"
                                for _, _, e in rx.at("/api")))
        headers, body, _ = rx.at("/api")[0]
        assert Webhook(secret).verify(body, headers)["queue_id"] == qid   # nothing old resent


async def test_webhook_update_disable_test_and_delete(world):
    rx = world.rx
    async with world.daemon() as d:
        made = await world.sdk(resend.Webhooks.create, {
            "endpoint": f"{rx.url}/one", "events": ["received"]})
        hook_id, secret = made["id"], made["signing_secret"]
        assert hook_id.startswith("wh_")
        upd = await world.sdk(resend.Webhooks.update, {"webhook_id": hook_id, "status": "disabled"})
        assert upd["object"] == "webhook" and upd["id"] == hook_id
        assert hook_id not in d.webhooks.deliverers
        qid = await world.submit("quiet@rcpt.test")
        await until(lambda: any(e["queue_id"] == qid for _, _, e in rx.at("/config")))
        assert rx.at("/one") == []                       # disabled: nothing sent

        await world.sdk(resend.Webhooks.update, {"webhook_id": hook_id, "status": "enabled",
                                                 "endpoint": f"{rx.url}/two"})
        got = await world.sdk(resend.Webhooks.get, hook_id)
        assert got["status"] == "enabled" and got["endpoint"].endswith("/two")
        status, body = await world.http("POST", f"/webhooks/{hook_id}/test")
        assert status == 200 and body["ok"] is True and body["status_code"] == 204
        (headers, raw, _), = rx.at("/two")               # only the test: the disabled time's
        assert Webhook(secret).verify(raw, headers)["type"] == "test"      # events are not sent

        listed = await world.sdk(resend.Webhooks.list)
        assert {w["id"] for w in listed["data"]} == {hook_id, "cfg-hook"}
        gone = await world.sdk(resend.Webhooks.remove, hook_id)
        assert gone["deleted"] is True and hook_id not in d.webhooks.deliverers
        status, _ = await world.http("GET", f"/webhooks/{hook_id}")
        assert status == 404
        assert await asyncio.to_thread(SqliteWebhookEndpoints(world.state).rows) == []


async def test_config_file_webhook_is_listed_never_taken_or_changed(world):
    async with world.daemon():
        status, body = await world.http("GET", "/webhooks/cfg-hook")
        assert status == 200 and body["source"] == "config" and body["signing_secret"] is None
        status, body = await world.http("POST", "/webhooks", json={
            "name": "cfg-hook", "endpoint": f"{world.rx.url}/x", "events": ["*"]})
        assert status == 409 and "config file" in body["message"]
        for method in ("PATCH", "DELETE"):
            status, body = await world.http(method, "/webhooks/cfg-hook", json={})
            assert status == 409 and "config file" in body["message"]
        status, body = await world.http("POST", "/webhooks/cfg-hook/test")
        assert status == 200 and body["ok"] is True
        status, body = await world.http("GET", "/webhooks")
        assert [w["id"] for w in body["data"]] == ["cfg-hook"]


# -- who may ---------------------------------------------------------------------------

async def test_sending_keys_refused_test_keys_read_only(world):
    async with world.daemon():
        for method, path in (("GET", "/domains"), ("POST", "/suppressions"),
                             ("GET", "/webhooks"), ("DELETE", "/domains/x.test")):
            status, body = await world.http(method, path, key=world.sending, json={})
            assert (status, body["name"]) == (403, "restricted_api_key"), (method, path)
        with pytest.raises(resend.exceptions.ResendError) as ei:
            await world.sdk(resend.Domains.list, key=world.sending)
        assert ei.value.code == 403
        status, body = await world.http("GET", "/domains", key=world.test_key)
        assert status == 200 and body["data"] == []
        for method, path, doc in (("POST", "/domains", {"name": "t.test"}),
                                  ("POST", "/suppressions", {"email": "a@b.test"}),
                                  ("POST", "/webhooks", {"endpoint": "http://127.0.0.1:9/",
                                                         "events": ["*"]}),
                                  ("DELETE", "/suppressions/a@b.test", None)):
            status, body = await world.http(method, path, key=world.test_key, json=doc)
            assert (status, body["name"]) == (403, "restricted_api_key"), (method, path)
            assert "Test API keys cannot change live settings" in body["message"]
        status, body = await world.http("GET", "/domains")
        assert body["data"] == []


BAD = [
    ("POST", "/domains", {}, "name: required"),
    ("POST", "/domains", {"name": 5}, "name: must be a string"),
    ("POST", "/domains", {"name": "not a domain"}, "name:"),
    ("POST", "/domains", {"name": "localhost"}, "name:"),
    ("POST", "/domains", {"name": "ok.test", "region": ["x"]}, "region:"),
    ("POST", "/domains", ["name"], "body: must be a JSON object"),
    ("POST", "/suppressions", {"email": "nope"}, "email:"),
    ("POST", "/suppressions", {"email": "a@b.test", "reason": "spite"}, "reason:"),
    ("POST", "/suppressions", {"email": "a@b.test\r\nX: y"}, "email: contains control"),
    ("POST", "/webhooks", {"events": ["*"]}, "endpoint: required"),
    ("POST", "/webhooks", {"endpoint": "http://127.0.0.1:9/"}, "events: required"),
    ("POST", "/webhooks", {"endpoint": "ftp://x.test/", "events": ["*"]}, "endpoint:"),
    ("POST", "/webhooks", {"endpoint": "http://:99999/", "events": ["*"]}, "endpoint:"),
    ("POST", "/webhooks", {"endpoint": "http://h.test/", "events": ["viewed"]}, "events:"),
    ("POST", "/webhooks", {"endpoint": "http://h.test/", "events": []}, "events:"),
    ("POST", "/webhooks", {"endpoint": "http://h.test/", "events": "*"}, "events:"),
    ("POST", "/webhooks", {"endpoint": "http://h.test/", "events": ["*"], "name": "a b"},
     "name:"),
    ("PATCH", "/webhooks/cfg-hook", {"status": "paused"}, "status:"),
    ("GET", "/domains?limit=0", None, "limit:"),
    ("GET", "/domains?limit=x", None, "limit:"),
    ("GET", "/suppressions?origin=spite", None, "origin:"),
    ("GET", "/suppressions?after=a&before=b", None, "before:"),
    ("GET", "/webhooks?colour=red", None, "colour:"),
]


async def test_bad_inputs_are_422_naming_the_field(world):
    async with world.daemon() as d:
        for method, path, doc, message in BAD:
            status, body = await world.http(method, path, json=doc)
            assert status == 422, (method, path, doc, body)
            assert body["statusCode"] == 422 and body["message"].startswith(message), body
        status, body = await world.http("POST", "/domains", data=b"{not json")
        assert status == 422 and body["message"].startswith("body:")
        for path in ("/domains/nothere.test", "/domains/%00", "/suppressions/x@nothere.test",
                     "/suppressions/not-an-address", "/webhooks/nothere", "/webhooks/a%20b"):
            status, body = await world.http("GET", path)
            assert (status, body["name"]) == (404, "not_found"), path
        for path in ("/domains", "/suppressions", "/webhooks"):      # nothing was made
            status, body = await world.http("GET", path)
            assert [x["id"] for x in body["data"]] in ([], ["cfg-hook"]), (path, body)
        assert set(d.webhooks.deliverers) == {"cfg-hook"}
        status, body = await world.http("POST", "/domains", json={"name": "dup.test"})
        assert status == 200
        status, body = await world.http("POST", "/domains", json={"name": "dup.test"})
        assert status == 409 and "exists" in body["message"]


# -- the store ---------------------------------------------------------------------------

def test_endpoint_store(tmp_path):
    store = SqliteWebhookEndpoints(tmp_path)
    assert store.rows() == [] and store.get("a") is None and not store.delete("a")
    assert store.update("a", url="http://x.test/", now=1.0) is None
    assert not (tmp_path / "spool").exists()              # reads and misses create nothing
    row = EndpointRow("a", "http://x.test/", ("received",), CFG_SECRET, True, 1.0, 1.0)
    assert store.insert(row) == row
    with pytest.raises(EndpointExists):
        store.insert(row)
    new = store.update("a", events=("*",), enabled=False, now=2.0)
    assert new == EndpointRow("a", "http://x.test/", ("*",), CFG_SECRET, False, 1.0, 2.0)
    assert SqliteWebhookEndpoints(tmp_path).rows() == [new]
    assert store.delete("a") and store.rows() == []


def test_endpoint_store_refuses_to_create_an_index_beside_segments(tmp_path):
    seg = tmp_path / "spool" / "segments"
    seg.mkdir(parents=True)
    (seg / "00000001.seg").write_bytes(b"x")
    with pytest.raises(WebhookEndpointStoreError, match="needs repair"):
        SqliteWebhookEndpoints(tmp_path).insert(
            EndpointRow("a", "http://x.test/", ("*",), CFG_SECRET, True, 1.0, 1.0))


async def test_stored_endpoints_at_start_and_a_config_that_takes_a_name(world):
    store = SqliteWebhookEndpoints(world.state)
    for name, enabled in (("cfg-hook", True), ("off", False), ("late", True)):
        store.insert(EndpointRow(name, f"{world.rx.url}/{name}", ("*",), CFG_SECRET, enabled,
                                 1.0, 1.0))
    async with world.daemon() as d:
        hooks = d.webhooks
        assert hooks.deliverers["cfg-hook"].cfg.url.endswith("/config")   # the config's wins
        assert "off" not in hooks.deliverers and hooks.added("late")
        await hooks.reconfigure([*d.cfg.webhooks, WebhookConfig(
            name="late", url=f"{world.rx.url}/cfg2", secret=CFG_SECRET)])
        assert hooks.deliverers["late"].cfg.url.endswith("/cfg2") and not hooks.added("late")
        status, body = await world.http("GET", "/webhooks/late")
        assert status == 200 and body["source"] == "config"
        await hooks.reconfigure(d.cfg.webhooks)          # and gone again with the config's
        assert list(hooks.deliverers) == ["cfg-hook"]


def test_config_webhook_checks_unchanged():
    text = (f'[[webhooks]]\nname = "a"\nurl = "ftp://x.test/"\nsecret = "{CFG_SECRET}"\n'
            f'[[webhooks]]\nname = "a"\nurl = "http://x.test/"\nsecret = "nope"\n')
    with pytest.raises(Exception) as ei:
        parse_config(text, "t")
    msg = str(ei.value)
    assert "webhooks[0].url: 'ftp://x.test/' is not an http(s) URL" in msg
    assert "webhooks[1].name: 'a' is used by more than one webhook" in msg
    assert "webhooks[1].secret: must be whsec_<base64>" in msg
