"""The sending API's /openapi.json (issue 13): a valid OpenAPI 3.1 document
(openapi-spec-validator), served without a key, whose paths and methods are
exactly the routes a running daemon's API app serves, and whose schemas the
real answers match: every request below goes over real HTTP to a real daemon
(spool, ledger, DKIM, a real SMTP sink, domains checked against the test DNS
server) and its status must be one the document lists for the operation and
its body must validate against the documented schema.

ApiWorld and Doc are shared with tests/test_api_hostile.py and
tests/test_api_node_sdk.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from mta.api import routes
from mta.api.emails import BATCH_MAX
from mta.api.keys import StoreKeys
from mta.api.openapi import openapi_document
from mta.config import parse_config
from mta.domains.records import txt_strings
from mta.runtime.daemon import Daemon
from mta.spool.apikeys import SqliteApiKeys
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink
from tests.test_domains import MultiStringDns, parse_zone

OK_SEND = {"from": "App <app@acme.test>", "to": "ok@rcpt.test", "subject": "s", "text": "x"}


# -- shared helpers ------------------------------------------------------------------

class Doc:
    """The document, and the checks a test makes against it."""

    def __init__(self) -> None:
        self.doc = openapi_document()

    def operation(self, method: str, template: str) -> dict[str, Any]:
        ops = self.doc["paths"].get(template)
        assert ops is not None and method.lower() in ops, f"{method} {template} not documented"
        return ops[method.lower()]

    def schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A JSON Schema 2020-12 document for `schema`, its $refs resolvable."""
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
                "components": self.doc["components"]}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def request_schema(self, method: str, template: str) -> dict[str, Any] | None:
        body = self.operation(method, template).get("requestBody")
        return None if body is None else body["content"]["application/json"]["schema"]

    def check(self, method: str, template: str, status: int, body: object) -> None:
        """`status` is documented for the operation and `body` matches its schema."""
        responses = self.operation(method, template)["responses"]
        assert str(status) in responses, (method, template, status, body,
                                          sorted(responses))
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(body, self.schema(schema))


class ApiWorld:
    """A daemon with `[api]` on loopback, mail routed to a sink, DNS checks
    against a test DNS server, and three keys (full, sending, test) made in
    the real store before the start."""

    def __init__(self, tmp_path: Path, sink: Sink, dns: MultiStringDns, extra: str = ""):
        self.state = tmp_path / "state"
        self.sink, self.dns = sink, dns
        self.text = (config_text(self.state, free_port(), tls="none", trusted=["127.0.0.0/8"],
                                 nameservers=[dns.nameserver], public_ips=["127.0.0.9"],
                                 routes={"*": f"127.0.0.1:{sink.address[1]}"})
                     + f'[api]\naddress = "127.0.0.1:{free_port()}"\n{extra}')
        store = StoreKeys(SqliteApiKeys(str(self.state)))
        now = time.time()
        self.key = store.create("full", rate_limit=100_000, now=now)[1]
        self.sending = store.create("sender", permission="sending_access",
                                    rate_limit=100_000, now=now)[1]
        self.test_key = store.create("tester", test=True, rate_limit=100_000, now=now)[1]
        self.d: Any = None
        self.url = ""

    @contextlib.asynccontextmanager
    async def running(self, receivers: int = 0):
        """The daemon in this process; with `receivers`, as `mta serve` runs
        it: that many receiver processes build the API's messages."""
        if not receivers:
            async with running_daemon(self.text) as d:
                assert d.api is not None
                self.d, self.url = d, d.api.url
                yield d
            return
        text = self.text.replace("[server]\n", f"[server]\nworkers = {receivers}\n", 1)
        d = Daemon(parse_config(text, "test"), processes=True)
        await d.start()
        try:
            assert d.api is not None and d.receivers is not None
            self.d, self.url = d, d.api.url
            yield d
        finally:
            await d.stop()

    async def http(self, method: str, path: str, *, key: str | None = "default",
                   headers: dict[str, str] | None = None, **kw: Any
                   ) -> tuple[int, Any, dict[str, str]]:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {self.key if key == 'default' else key}"
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url + path, headers=h, **kw) as r:
                raw = await r.read()
                ctype = r.headers.get("Content-Type", "")
                body = await r.json(content_type=None) if ctype.startswith(
                    "application/json") else raw
                return r.status, body, {k.lower(): v for k, v in r.headers.items()}

    def queued(self) -> int:
        """Messages in the spool index (SELECT COUNT(*) FROM messages)."""
        db = sqlite3.connect(f"file:{self.state / 'spool' / 'index.sqlite3'}?mode=ro",
                             uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        finally:
            db.close()

    def publish(self, records: list[dict[str, Any]]) -> None:
        """Put a domain's records (as the API lists them) in the test DNS zone."""
        lines = []
        for r in records:
            if r["type"] == "TXT":
                rdata = " ".join(f'"{s}"' for s in txt_strings(r["value"]))
            elif r["type"] == "MX":
                rdata = f"{r['priority']} {r['value']}."
            else:
                rdata = r["value"]
            lines.append(f"{r['fqdn']}. {r['ttl']} IN {r['type']} {rdata}")
        self.dns.zone.update(parse_zone("\n".join(lines) + "\n"))


@contextlib.asynccontextmanager
async def api_world(tmp_path: Path, dns_host: str, extra: str = ""):
    dns = MultiStringDns({}, host=dns_host, ttl=1).start()
    try:
        async with Sink(tls=False) as sink:
            yield ApiWorld(tmp_path, sink, dns, extra)
    finally:
        dns.stop()


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


# -- the document --------------------------------------------------------------------

def test_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    doc = openapi_document()
    validator.validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert doc is not openapi_document() and doc == openapi_document()


def test_operations_are_complete():
    doc = openapi_document()
    ids = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ids.append(op["operationId"])
            declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert "200" in op["responses"], (method, path)
            if path == "/openapi.json":
                assert op["security"] == []
                continue
            for code in ("401", "429", "500"):
                assert code in op["responses"], (method, path, code)
            assert "Retry-After" in op["responses"]["429"]["headers"]
            assert "RateLimit-Remaining" in op["responses"]["200"]["headers"]
            if "requestBody" in op:
                assert {"413", "422"} <= set(op["responses"]), (method, path)
            for code, resp in op["responses"].items():
                if code != "200":
                    assert resp["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}
    assert len(ids) == len(set(ids))
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"statusCode", "name", "message"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    idem = doc["components"]["parameters"]["IdempotencyKey"]
    assert idem["in"] == "header" and idem["name"] == "Idempotency-Key"
    assert idem["schema"]["maxLength"] == routes.IDEMPOTENCY_KEY_MAX
    batch = doc["paths"]["/emails/batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["maxItems"] == BATCH_MAX


def test_examples_match_their_schemas():
    d = Doc()
    seen = 0
    for name, schema in d.doc["components"]["schemas"].items():
        if "example" in schema:
            jsonschema.validate(schema["example"], d.schema({"$ref": f"#/components/schemas/"
                                                                     f"{name}"}))
            seen += 1
    assert seen >= 8


# -- against a running daemon --------------------------------------------------------

@pytest.fixture
async def world(tmp_path):
    async with api_world(tmp_path, "127.0.0.161") as w:
        async with w.running():
            yield w


async def test_served_without_a_key_and_equal_to_the_document(world):
    status, body, headers = await world.http("GET", "/openapi.json", key=None)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert body == openapi_document()
    status, body, _ = await world.http("GET", "/openapi.json", key="mta_live_bad_token")
    assert status == 200            # a key, even a bad one, is not looked at here


async def test_document_lists_exactly_the_routes_the_daemon_serves(world):
    served = app_routes(world.d.api.app)
    documented = {(m.upper(), p) for p, ops in openapi_document()["paths"].items() for m in ops}
    assert served == documented, (sorted(served - documented), sorted(documented - served))


async def test_real_answers_match_the_documented_schemas(world):
    d, w = Doc(), world
    calls = 0

    async def call(method: str, template: str, path: str | None = None, *,
                   key: str | None = "default", **kw: Any) -> Any:
        nonlocal calls
        status, body, headers = await w.http(method, path or template, key=key, **kw)
        d.check(method, template, status, body)
        if status != 200:
            assert body["statusCode"] == status
        if template != "/openapi.json":
            assert "ratelimit-limit" in headers or status == 401, (method, path, headers)
        calls += 1
        return status, body

    # emails: the documented example itself, a batch, reads, moves
    example = d.resolve(d.request_schema("POST", "/emails"))["example"]
    status, sent = await call("POST", "/emails", json=example,
                              headers={"Idempotency-Key": "ex-1"})
    assert status == 200
    qid = sent["id"]
    batch = d.resolve(d.request_schema("POST", "/emails/batch")["items"])["example"]
    status, out = await call("POST", "/emails/batch", json=[batch, batch])
    assert status == 200 and len(out["data"]) == 2
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    status, sched = await call("POST", "/emails", json={**OK_SEND, "scheduled_at": later})
    await w.sink.wait_for(3, timeout=20)
    assert (await call("GET", "/emails/{id}", f"/emails/{qid}"))[0] == 200
    assert (await call("GET", "/emails/{id}", f"/emails/{sched['id']}"))[1]["last_event"] \
        == "scheduled"
    assert (await call("GET", "/emails", "/emails?limit=2"))[1]["has_more"] is True
    assert (await call("GET", "/emails/{id}/events", f"/emails/{qid}/events"))[0] == 200
    update = d.resolve(d.request_schema("PATCH", "/emails/{id}"))["example"]
    update = {**update, "scheduled_at": (dt.datetime.now(dt.UTC)
                                          + dt.timedelta(hours=3)).isoformat()}
    assert (await call("PATCH", "/emails/{id}", f"/emails/{sched['id']}", json=update))[0] \
        == 200
    assert (await call("POST", "/emails/{id}/cancel", f"/emails/{sched['id']}/cancel"))[0] \
        == 200
    assert (await call("POST", "/emails/{id}/cancel", f"/emails/{sched['id']}/cancel"))[0] \
        == 409
    assert (await call("GET", "/emails/{id}", "/emails/0000000000000000"))[0] == 404
    # errors of every kind the document names
    assert (await call("POST", "/emails", key=None, json=OK_SEND))[0] == 401
    assert (await call("POST", "/emails", key="mta_live_aaaaaaaaaaaa_x", json=OK_SEND))[0] \
        == 401
    assert (await call("GET", "/emails", key=w.sending))[0] == 403
    assert (await call("POST", "/emails", json={**OK_SEND, "to": 5}))[0] == 422
    assert (await call("POST", "/emails", json={**OK_SEND, "subject": "b"},
                       headers={"Idempotency-Key": "ex-1"}))[0] == 409
    assert (await call("POST", "/emails",
                       json={**OK_SEND, "text": "x" * (41 * 1024 * 1024)}))[0] == 413
    # api keys
    example = d.resolve(d.request_schema("POST", "/api-keys"))["example"]
    status, made = await call("POST", "/api-keys", json=example)
    assert status == 200 and made["token"].startswith("mta_live_")
    assert (await call("GET", "/api-keys"))[0] == 200
    assert (await call("DELETE", "/api-keys/{id}", f"/api-keys/{made['id']}"))[0] == 200
    assert (await call("DELETE", "/api-keys/{id}", f"/api-keys/{made['id']}"))[0] == 404
    await _resources(d, w, call)
    assert calls >= 40


async def _resources(d: Doc, w: ApiWorld, call) -> None:
    example = d.resolve(d.request_schema("POST", "/domains"))["example"]
    status, dom = await call("POST", "/domains", json=example)
    assert status == 200 and dom["status"] == "not_started"
    assert (await call("POST", "/domains", json=example))[0] == 409
    assert (await call("POST", "/domains", key=w.test_key, json=example))[0] == 403
    w.publish(dom["records"])
    status, checked = await call("POST", "/domains/{id}/verify", f"/domains/{dom['id']}/verify")
    assert checked["status"] == "verified", checked
    assert (await call("GET", "/domains/{id}", f"/domains/{dom['id']}"))[0] == 200
    assert (await call("GET", "/domains", "/domains?limit=5"))[1]["data"][0]["id"] == dom["id"]
    assert (await call("GET", "/domains", "/domains?color=red"))[0] == 422
    assert (await call("DELETE", "/domains/{id}", f"/domains/{dom['id']}"))[0] == 200
    assert (await call("GET", "/domains/{id}", f"/domains/{dom['id']}"))[0] == 404
    assert (await call("POST", "/domains/{id}/verify", "/domains/gone.test/verify"))[0] == 404

    example = d.resolve(d.request_schema("POST", "/suppressions"))["example"]
    assert (await call("POST", "/suppressions", json=example))[0] == 200
    sid = example["email"]
    assert (await call("GET", "/suppressions/{id}", f"/suppressions/{sid}"))[0] == 200
    assert (await call("GET", "/suppressions", "/suppressions?origin=manual"))[1]["data"]
    assert (await call("DELETE", "/suppressions/{id}", f"/suppressions/{sid}"))[0] == 200
    assert (await call("DELETE", "/suppressions/{id}", f"/suppressions/{sid}"))[0] == 404

    example = d.resolve(d.request_schema("POST", "/webhooks"))["example"]
    example = {**example, "endpoint": "http://127.0.0.1:9/hook"}
    status, hook = await call("POST", "/webhooks", json=example)
    assert status == 200 and hook["signing_secret"].startswith("whsec_")
    hid = hook["id"]
    assert (await call("GET", "/webhooks"))[1]["data"][0]["id"] == hid
    assert (await call("GET", "/webhooks/{id}", f"/webhooks/{hid}"))[0] == 200
    update = d.resolve(d.request_schema("PATCH", "/webhooks/{id}"))["example"]
    update = {**update, "endpoint": "http://127.0.0.1:9/v2"}
    assert (await call("PATCH", "/webhooks/{id}", f"/webhooks/{hid}", json=update))[0] == 200
    status, tested = await call("POST", "/webhooks/{id}/test", f"/webhooks/{hid}/test")
    assert status == 200 and tested["ok"] is False       # nothing listens on port 9
    assert (await call("DELETE", "/webhooks/{id}", f"/webhooks/{hid}"))[0] == 200
    assert (await call("GET", "/webhooks/{id}", f"/webhooks/{hid}"))[0] == 404
    assert (await call("GET", "/openapi.json", key=None))[0] == 200
    await asyncio.sleep(0)


# -- /templates and /verifications (mta.api.openapi_content) -------------------------

def _content_ops(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops
            if p.startswith(("/templates", "/verifications"))}


def _code_in(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(("plain",))
    assert part is not None
    (code,) = re.findall(r"code is (\d+)", part.get_content())
    return code


class _Caller:
    """Requests to the content routes, each answer checked against the document."""

    def __init__(self, d: Doc, w: ApiWorld):
        self.d, self.w = d, w
        self.seen: set[tuple[str, str]] = set()

    async def __call__(self, method: str, template: str, path: str | None = None, *,
                       key: str | None = "default", **kw: Any) -> tuple[int, Any]:
        status, body, headers = await self.w.http(method, path or template, key=key, **kw)
        self.d.check(method, template, status, body)
        if status != 200:
            assert body["statusCode"] == status
        assert "ratelimit-limit" in headers or status == 401, (method, path, headers)
        self.seen.add((method, template))
        return status, body


async def test_template_answers_match_the_documented_schemas(world):
    d, w = Doc(), world
    call = _Caller(d, w)
    example = d.resolve(d.request_schema("POST", "/templates"))["example"]
    status, made = await call("POST", "/templates", json=example)
    assert status == 200, made
    tid = made["id"]
    assert (await call("POST", "/templates", json=example))[0] == 409       # the alias
    assert (await call("POST", "/templates", key=w.test_key, json=example))[0] == 403
    assert (await call("GET", "/templates", key=w.sending))[0] == 403
    assert (await call("POST", "/templates", json={"name": "x"}))[0] == 422
    assert (await call("GET", "/templates", "/templates?limit=0"))[0] == 422
    status, page = await call("GET", "/templates", "/templates?limit=1")
    assert [t["id"] for t in page["data"]] == [tid] and page["has_more"] is False
    status, tpl = await call("GET", "/templates/{id}", "/templates/welcome")   # by alias
    assert (tpl["id"], tpl["status"], tpl["version"]) == (tid, "draft", None)
    assert (await call("POST", "/templates/{id}/preview", f"/templates/{tid}/preview",
                       json={"version": "published"}))[0] == 404
    status, pub = await call("POST", "/templates/{id}/publish", f"/templates/{tid}/publish")
    assert pub == {"id": tid, "object": "template", "version": 1}
    update = d.resolve(d.request_schema("PATCH", "/templates/{id}"))["example"]
    assert (await call("PATCH", "/templates/{id}", f"/templates/{tid}", json=update))[0] == 200
    assert (await call("PUT", "/templates/{id}", f"/templates/{tid}", json=update))[0] == 200
    assert (await call("PATCH", "/templates/{id}", f"/templates/{tid}",
                       json={"reply_to": 5}))[0] == 422
    status, tpl = await call("GET", "/templates/{id}", f"/templates/{tid}")
    assert tpl["has_unpublished_changes"] is True and tpl["version"] == 1
    status, versions = await call("GET", "/templates/{id}/versions",
                                  f"/templates/{tid}/versions")
    assert [v["version"] for v in versions["data"]] == [1]
    preview = d.resolve(d.request_schema("POST", "/templates/{id}/preview"))["example"]
    status, out = await call("POST", "/templates/{id}/preview", f"/templates/{tid}/preview",
                             json=preview)
    assert out["subject"] == "Welcome, Ann" and out["missing"] == ["plan"], out
    status, out = await call("POST", "/templates/{id}/preview", f"/templates/{tid}/preview",
                             json={"version": 1})
    assert out["subject"] == "Hi there", out                  # the fallback, version 1
    assert (await call("POST", "/templates/{id}/preview", f"/templates/{tid}/preview",
                       json={"version": 7}))[0] == 404
    assert (await call("POST", "/templates/{id}/preview", f"/templates/{tid}/preview",
                       json={"version": "x"}))[0] == 422
    test = d.resolve(d.request_schema("POST", "/templates/{id}/test"))["example"]
    status, sent = await call("POST", "/templates/{id}/test", f"/templates/{tid}/test",
                              json=test)
    assert status == 200 and sent["id"], sent
    assert (await call("POST", "/templates/{id}/test", f"/templates/{tid}/test",
                       json={"to": "ok@rcpt.test"}))[0] == 422     # plan has no value
    (m,) = await w.sink.wait_for(1)
    assert b"[Test] Welcome, Ann" in m.data
    status, dup = await call("POST", "/templates/{id}/duplicate", f"/templates/{tid}/duplicate")
    assert status == 200 and dup["id"] != tid
    status, gone = await call("DELETE", "/templates/{id}", f"/templates/{dup['id']}")
    assert gone == {"id": dup["id"], "object": "template", "deleted": True}
    assert (await call("DELETE", "/templates/{id}", f"/templates/{dup['id']}"))[0] == 404
    assert (await call("GET", "/templates/{id}/versions", "/templates/nosuch/versions"))[0] \
        == 404
    assert (await call("POST", "/templates/{id}/duplicate", "/templates/nosuch/duplicate",
                       key=w.test_key))[0] == 403
    assert (await call("POST", "/templates/{id}/publish", "/templates/nosuch/publish"))[0] \
        == 404
    # the documented bounds are the API's: one past each is a 422 naming the field
    props = d.resolve(d.request_schema("POST", "/templates"))["properties"]
    top = props["name"]["maxLength"]
    for body, field in ((dict(example, alias=None, name="n" * (top + 1)), "name"),
                        (dict(example, alias=None, reply_to=["a@acme.test"] * (
                            props["reply_to"]["oneOf"][1]["maxItems"] + 1)), "reply_to")):
        status, err = await call("POST", "/templates", json=body)
        assert status == 422 and err["message"].startswith(field), err
    status, _ = await call("POST", "/templates", json=dict(example, alias=None, name="n" * top))
    assert status == 200
    assert call.seen == {op for op in _content_ops(d.doc) if op[1].startswith("/templates")}


async def test_verification_answers_match_the_documented_schemas(world):
    d, w = Doc(), world
    call = _Caller(d, w)
    example = d.resolve(d.request_schema("POST", "/verifications"))["example"]
    status, v = await call("POST", "/verifications", key=w.sending, json=example)
    assert status == 200 and (v["status"], v["sends"]) == ("pending", 1), v
    vid = v["id"]
    status, err = await call("POST", "/verifications", key=w.sending, json=example)
    assert status == 429 and "resend in" in err["message"], err   # the pending one, resent
    assert (await call("POST", "/verifications/{id}/resend", f"/verifications/{vid}/resend",
                       key=w.sending))[0] == 429                    # the resend cooldown
    assert (await call("POST", "/verifications", json={"from": "a@acme.test"}))[0] == 422
    (m,) = await w.sink.wait_for(1)
    code = _code_in(m.data)
    assert (await call("GET", "/verifications/{id}", f"/verifications/{vid}",
                       key=w.sending))[0] == 403
    status, got = await call("GET", "/verifications/{id}", f"/verifications/{vid}")
    assert got["email_id"] and code not in str(got)
    check = d.resolve(d.request_schema("POST", "/verifications/{id}/check"))["example"]
    wrong = {**check, "code": "x" if code != "x" else "y"}
    status, r = await call("POST", "/verifications/{id}/check", f"/verifications/{vid}/check",
                           key=w.sending, json=wrong)
    assert (r["valid"], r["status"]) == (False, "pending") and r["attempts_remaining"] >= 1
    assert (await call("POST", "/verifications/{id}/check", f"/verifications/{vid}/check",
                       json={}))[0] == 422
    status, r = await call("POST", "/verifications/{id}/check", f"/verifications/{vid}/check",
                           json={"code": code})
    assert (r["valid"], r["status"], r["attempts_remaining"]) == (True, "verified", 0), r
    assert (await call("POST", "/verifications/{id}/resend",
                       f"/verifications/{vid}/resend"))[0] == 409
    nobody = "vrf_" + "0" * 20
    assert (await call("GET", "/verifications/{id}", f"/verifications/{nobody}"))[0] == 404
    assert (await call("POST", "/verifications/{id}/check", f"/verifications/{nobody}/check",
                       json={"code": "1"}))[0] == 404
    # the documented bounds are the API's
    props = d.resolve(d.request_schema("POST", "/verifications"))["properties"]
    for field, value in (("to", "a" * (props["to"]["oneOf"][0]["maxLength"] + 1)),
                         ("template", "t" * (props["template"]["maxLength"] + 1)),
                         ("locale", "l" * (props["locale"]["maxLength"] + 1))):
        status, err = await call("POST", "/verifications", json={**example, field: value})
        assert status == 422 and err["message"].startswith(field), err
    assert call.seen == {op for op in _content_ops(d.doc)
                         if op[1].startswith("/verifications")}
