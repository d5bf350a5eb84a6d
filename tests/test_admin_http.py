"""The admin HTTP API (mta.admin.http) against an in-memory backend.

`FakeBackend` implements the AdminBackend protocol over plain dicts: enough
to drive every route and to record what the HTTP layer passed down. The
end-to-end tests against the real daemon live elsewhere; here we check
auth, status codes, the JSON error shape, parameter validation, bulk filter
rules, the OpenAPI document and the urllib client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mta.admin.backend import ActionRefused, AdminBackend, NotFound
from mta.core.qshape import AGE_BUCKETS, age_bucket
from mta.admin.client import AdminClient, AdminError, AdminUnavailable, base_url, read_token
from mta.admin.http import ROUTES, AdminServer, create_app
from mta.admin.openapi import openapi_document
from mta.admin.token import ensure_token, token_path

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_800_000_000.0


# ------------------------------------------------------------------ fake

def _message(i: int, *, domain: str = "example.org", sender: str = "app@example.com",
             state: str = "queued", held: bool = False) -> dict:
    mid = f"M{i:05d}"
    return {
        "id": mid, "sender": sender, "received_at": NOW - 3600 + i, "size": 1000 + i,
        "is_dsn": sender == "", "held": held, "done": state != "queued",
        "recipients": [{"index": 0, "address": f"user{i}@{domain}", "domain": domain,
                        "state": state, "attempts": 1,
                        "next_attempt": NOW + 300 if state == "queued" else None,
                        "last_reply": "451 4.7.1 try later" if state == "queued" else "",
                        "last_remote": "mx.example.org"}],
        "attempts": [{"recipient": f"user{i}@{domain}", "at": NOW - 60, "duration": 0.25,
                      "remote_host": "mx.example.org", "remote_ip": "192.0.2.1",
                      "tls": "TLSv1.3", "reply": "451 4.7.1 try later", "state": "deferred"}],
        "body": f"From: app@example.com\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode(),
    }


class FakeBackend:
    """AdminBackend over dicts. `page_cap` makes pages shorter than asked, as a
    real backend may; `calls` records (method, args) for assertions."""

    def __init__(self, n: int = 0, page_cap: int | None = None):
        self.messages: dict[str, dict] = {}
        for i in range(n):
            m = _message(i, domain="example.org" if i % 2 else "example.net")
            self.messages[m["id"]] = m
        self.destinations: dict[str, str] = {"example.org": "active", "example.net": "throttled"}
        self.page_cap = page_cap
        self.ready = (True, "")
        self.calls: list[tuple] = []
        self.fail: Exception | None = None

    def add(self, m: dict) -> None:
        self.messages[m["id"]] = m

    def _maybe_fail(self):
        if self.fail is not None:
            raise self.fail

    async def health(self) -> None:
        self._maybe_fail()

    async def readiness(self):
        return self.ready

    async def queue_summary(self):
        self._maybe_fail()
        out = {}
        for m in self.messages.values():
            for r in m["recipients"]:
                if r["state"] != "queued":
                    continue
                d = out.setdefault(r["domain"], {
                    "destination": r["domain"], "recipients": 0, "held": 0, "oldest_age": 0.0,
                    "age_buckets": {b: 0 for b in AGE_BUCKETS}, "last_error": r["last_reply"],
                    "state": self.destinations.get(r["domain"], "active")})
                age = NOW - m["received_at"]
                if m["held"]:
                    d["held"] += 1
                    continue
                d["recipients"] += 1
                d["oldest_age"] = max(d["oldest_age"], age)
                d["age_buckets"][age_bucket(age)] += 1
        return sorted(out.values(), key=lambda d: -d["recipients"])

    def _match(self, m, state, domain, sender, recipient) -> bool:
        rs = m["recipients"]
        if state in (None, "active") and m["done"]:
            return False
        if state == "held" and not m["held"]:
            return False
        if state not in (None, "active", "all", "held", "deferred") and \
                not any(r["state"] == state for r in rs):
            return False
        if state == "deferred" and not any(r["state"] == "queued" and r["attempts"] for r in rs):
            return False
        if domain is not None and not any(r["domain"] == domain for r in rs):
            return False
        if sender is not None and m["sender"] != sender:
            return False
        if recipient is not None and not any(r["address"] == recipient for r in rs):
            return False
        return True

    async def list_messages(self, *, state, domain, sender, recipient, limit, cursor):
        self.calls.append(("list_messages", dict(state=state, domain=domain, sender=sender,
                                                  recipient=recipient, limit=limit,
                                                  cursor=cursor)))
        after = ""
        if cursor is not None:
            if not cursor.startswith("after:"):
                raise ValueError("unknown cursor format")
            after = cursor[len("after:"):]
        ids = [k for k in sorted(self.messages) if k > after
               and self._match(self.messages[k], state, domain, sender, recipient)]
        n = min(limit, self.page_cap or limit)
        page = [self._view(self.messages[k]) for k in ids[:n]]
        nxt = f"after:{ids[n - 1]}" if len(ids) > n else None
        return page, nxt

    @staticmethod
    def _view(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in ("attempts", "body")}

    async def get_message(self, message_id):
        m = self.messages.get(message_id)
        return None if m is None else {k: v for k, v in m.items() if k != "body"}

    async def message_body(self, message_id):
        m = self.messages.get(message_id)
        return None if m is None else m["body"]

    async def message_action(self, message_id, action):
        self.calls.append(("message_action", message_id, action))
        m = self.messages[message_id]           # KeyError -> 404
        if action == "retry" and m["done"]:
            raise ActionRefused(f"{message_id} has no queued recipient")
        affected = self._apply(m, action)
        return {"id": message_id, "action": action, "affected": affected}

    def _apply(self, m: dict, action: str) -> int:
        queued = [r for r in m["recipients"] if r["state"] == "queued"]
        if action == "hold":
            m["held"] = True
        elif action == "release":
            m["held"] = False
        elif action == "bounce":
            for r in queued:
                r["state"] = "bounced"
            m["done"] = True
        elif action == "delete":
            del self.messages[m["id"]]
        return len(queued)

    async def bulk_action(self, action, *, state, domain, sender, recipient, all):
        self.calls.append(("bulk_action", action, dict(state=state, domain=domain, sender=sender,
                                                       recipient=recipient, all=all)))
        hits = [m for m in list(self.messages.values())
                if self._match(m, state, domain, sender, recipient)]
        affected = sum(self._apply(m, action) for m in hits)
        return {"action": action, "affected": affected, "messages": len(hits)}

    # a routed domain resolves to its route, as the daemon's backend does
    ROUTES = {"routed.example": "[10.0.0.1]:25"}

    async def destination_action(self, name, action):
        self.calls.append(("destination_action", name, action))
        if name == "refused.example":
            raise KeyError(name)
        if name == "[192.0.2.9]:25":
            raise NotFound("no destination '[192.0.2.9]:25': it is not a configured route")
        dest = self.ROUTES.get(name, name)
        state = {"suspend": "suspended", "resume": "active"}.get(
            action, self.destinations.get(dest, "active"))
        self.destinations[dest] = state
        return {"destination": dest, "action": action, "state": state, "requested": name}

    # the ledger and webhooks: enough to reach every route
    async def events_after(self, after, limit, *, types=None, recipient=None):
        self.calls.append(("events_after", after, limit, types, recipient))
        return [{"seq": after + 1, "type": "queued"}][:limit]

    async def message_events(self, message_id):
        self.calls.append(("message_events", message_id))
        return None if message_id not in self.messages else [{"seq": 1, "type": "queued"}]

    async def webhooks(self):
        return [{"name": "hook"}]

    async def webhook_replay(self, name, *, from_seq=None, since=None):
        self.calls.append(("webhook_replay", name, from_seq, since))
        if name != "hook":
            raise KeyError(name)
        return {"cursor": 0}

    async def webhook_test(self, name):
        self.calls.append(("webhook_test", name))
        if name != "hook":
            raise KeyError(name)
        return {"name": name, "ok": True}

    async def metrics(self):
        return (b"# HELP mta_up 1 when up\n# TYPE mta_up gauge\nmta_up 1\n",
                "text/plain; version=0.0.4; charset=utf-8")


# -------------------------------------------------------------- fixtures

@pytest.fixture
def backend():
    b = FakeBackend(n=250)
    b.add(_message(900, state="delivered"))
    b.add(_message(901, sender="", domain="bounce.example"))
    return b


@pytest.fixture
async def client(backend):
    app = create_app(backend, token=TOKEN, metrics_require_token=False)
    async with TestClient(TestServer(app)) as c:
        yield c


def _concrete(path: str) -> str:
    return path.replace("{id}", "M00001").replace("{name}", "example.org")


async def _error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) >= {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# ------------------------------------------------------------------ auth

async def test_every_route_but_healthz_and_metrics_needs_the_token(client):
    for method, path in ROUTES:
        resp = await client.request(method, _concrete(path), json={"all": True})
        if path in ("/healthz", "/metrics"):
            assert resp.status == 200, (method, path)
            continue
        await _error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)


async def test_wrong_token_and_wrong_scheme_are_401(client):
    for headers in ({"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer "},
                    {"Authorization": TOKEN}):
        resp = await client.get("/v1/queue/summary", headers=headers)
        await _error(resp, 401, "unauthorized")
        assert "invalid_token" in resp.headers["WWW-Authenticate"]
    resp = await client.get("/v1/queue/summary", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status == 200                 # the scheme is case-insensitive


async def test_unknown_route_is_401_before_404(client):
    await _error(await client.get("/v1/nope"), 401)
    await _error(await client.get("/v1/nope", headers=AUTH), 404, "not_found")
    await _error(await client.get("/healthz/extra", headers=AUTH), 404, "not_found")


async def test_metrics_require_token(backend):
    app = create_app(backend, token=TOKEN, metrics_require_token=True)
    async with TestClient(TestServer(app)) as c:
        await _error(await c.get("/metrics"), 401)
        assert (await c.get("/metrics", headers=AUTH)).status == 200
        assert (await c.get("/healthz")).status == 200


def test_an_empty_token_is_refused(backend):
    with pytest.raises(ValueError):
        create_app(backend, token="", metrics_require_token=False)


# ---------------------------------------------------------------- health

async def test_healthz_readyz_metrics(client, backend):
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["ready"] is True
    backend.ready = (False, "recovery in progress")
    resp = await client.get("/readyz", headers=AUTH)
    body = await resp.json()
    assert resp.status == 503
    assert body["ready"] is False and body["reason"] == "recovery in progress"
    assert body["error"] == {"code": "not_ready", "message": "recovery in progress"}
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "mta_up 1" in await resp.text()


async def test_a_backend_crash_is_a_generic_500_and_a_logged_traceback(client, backend, caplog):
    backend.fail = RuntimeError("secret internal detail")
    with caplog.at_level(logging.DEBUG):
        err = await _error(await client.get("/v1/queue/summary", headers=AUTH), 500, "internal")
        await _error(await client.get("/healthz"), 500, "internal")
    assert "secret internal detail" not in err["message"]
    assert "secret internal detail" in caplog.text and "Traceback" in caplog.text
    assert TOKEN not in caplog.text


# ----------------------------------------------------------------- queue

async def test_queue_summary(client):
    resp = await client.get("/v1/queue/summary", headers=AUTH)
    assert resp.status == 200
    rows = (await resp.json())["destinations"]
    by = {r["destination"]: r for r in rows}
    assert by["example.org"]["recipients"] == 125 and by["example.net"]["recipients"] == 125
    assert by["example.net"]["state"] == "throttled"
    assert list(by["example.org"]["age_buckets"]) == list(AGE_BUCKETS)
    assert sum(by["example.org"]["age_buckets"].values()) == 125


def test_age_buckets_follow_qshape():
    assert AGE_BUCKETS == ("5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m",
                           "1280m", "1280m+")
    assert [age_bucket(s) for s in (0, 299.9, 300, 599, 600, 1280 * 60 - 1, 1280 * 60, 1e9)] \
        == ["5m", "5m", "10m", "10m", "20m", "1280m", "1280m+", "1280m+"]


async def test_list_defaults_and_pages_through_everything(client, backend):
    resp = await client.get("/v1/messages", headers=AUTH)
    page = await resp.json()
    assert resp.status == 200 and set(page) == {"messages", "next_cursor"}
    assert len(page["messages"]) == 100 and page["next_cursor"]
    assert backend.calls[-1] == ("list_messages", dict(state=None, domain=None, sender=None,
                                                        recipient=None, limit=100, cursor=None))
    seen, cursor = [], None
    while True:
        params = {"limit": "70"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/v1/messages", params=params, headers=AUTH)).json()
        seen += [m["id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    active = sorted(k for k, m in backend.messages.items() if not m["done"])
    assert seen == active and len(seen) == 251       # 250 + the DSN; not the delivered one


async def test_list_empty_parameters_mean_unset(client, backend):
    resp = await client.get("/v1/messages?state=&domain=&sender=&recipient=&limit=&cursor=",
                            headers=AUTH)
    assert resp.status == 200
    assert backend.calls[-1][1] == dict(state=None, domain=None, sender=None, recipient=None,
                                         limit=100, cursor=None)


async def test_list_filters_are_normalised_and_passed_down(client, backend):
    resp = await client.get("/v1/messages", headers=AUTH, params={
        "state": "all", "domain": "Example.ORG.", "sender": "<app@EXAMPLE.com>",
        "recipient": "user1@Example.Org", "limit": "1000"})
    assert resp.status == 200
    assert backend.calls[-1][1] == dict(state="all", domain="example.org",
                                         sender="app@example.com",
                                         recipient="user1@example.org", limit=1000, cursor=None)
    assert [m["id"] for m in (await resp.json())["messages"]] == ["M00001"]
    resp = await client.get("/v1/messages", headers=AUTH, params={"sender": "<>"})
    assert backend.calls[-1][1]["sender"] == ""
    assert [m["id"] for m in (await resp.json())["messages"]] == ["M00901"]
    resp = await client.get("/v1/messages", headers=AUTH, params={"state": "delivered"})
    assert [m["id"] for m in (await resp.json())["messages"]] == ["M00900"]


@pytest.mark.parametrize("query,code", [
    ("limit=0", "invalid_parameter"), ("limit=1001", "invalid_parameter"),
    ("limit=-1", "invalid_parameter"), ("limit=ten", "invalid_parameter"),
    ("limit=1.5", "invalid_parameter"), ("limit=1&limit=2", "invalid_parameter"),
    ("stat=held", "invalid_parameter"), ("state=frozen", "invalid_filter"),
    ("domain=not a domain", "invalid_filter"), ("sender=no-at-sign", "invalid_filter"),
    ("recipient=<>", "invalid_filter"), ("cursor=garbage", "invalid_cursor"),
])
async def test_list_rejects_bad_parameters(client, backend, query, code):
    before = len(backend.calls)
    await _error(await client.get(f"/v1/messages?{query}", headers=AUTH), 400, code)
    if code != "invalid_cursor":
        assert len(backend.calls) == before         # refused before reaching the backend


async def test_get_message_and_body(client):
    resp = await client.get("/v1/messages/M00003", headers=AUTH)
    m = await resp.json()
    assert resp.status == 200 and m["id"] == "M00003"
    assert m["recipients"][0]["state"] == "queued" and m["recipients"][0]["attempts"] == 1
    assert m["attempts"][0]["remote_ip"] == "192.0.2.1" and m["attempts"][0]["tls"] == "TLSv1.3"
    resp = await client.get("/v1/messages/M00003/body", headers=AUTH)
    assert resp.status == 200 and resp.content_type == "message/rfc822"
    assert await resp.read() == b"From: app@example.com\r\nSubject: m3\r\n\r\nbody 3\r\n"
    await _error(await client.get("/v1/messages/NOPE", headers=AUTH), 404, "not_found")
    await _error(await client.get("/v1/messages/NOPE/body", headers=AUTH), 404, "not_found")


# --------------------------------------------------------------- actions

async def test_message_actions(client, backend):
    for action in ("hold", "release", "retry", "bounce"):
        resp = await client.post(f"/v1/messages/M00005/{action}", headers=AUTH)
        assert resp.status == 200
        assert await resp.json() == {"id": "M00005", "action": action, "affected": 1}
    assert backend.messages["M00005"]["recipients"][0]["state"] == "bounced"
    # bounced → done: a retry is refused with 409
    await _error(await client.post("/v1/messages/M00005/retry", headers=AUTH), 409, "conflict")
    resp = await client.delete("/v1/messages/M00006", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["action"] == "delete"
    assert "M00006" not in backend.messages
    await _error(await client.delete("/v1/messages/M00006", headers=AUTH), 404, "not_found")
    await _error(await client.post("/v1/messages/NOPE/hold", headers=AUTH), 404, "not_found")
    assert ("message_action", "NOPE", "hold") in backend.calls


async def test_wrong_methods_are_405_with_allow(client):
    err = await _error(await client.get("/v1/messages/M00001/hold", headers=AUTH), 405,
                       "method_not_allowed")
    assert "POST" in err["message"]
    resp = await client.put("/v1/messages/M00001", headers=AUTH)
    await _error(resp, 405, "method_not_allowed")
    assert {"GET", "DELETE"} <= set(resp.headers["Allow"].replace(" ", "").split(","))
    await _error(await client.post("/v1/queue/summary", headers=AUTH), 405)
    await _error(await client.post("/v1/messages/M00001/frobnicate", headers=AUTH), 404)


async def test_bulk_needs_a_filter_or_all(client, backend):
    for body in (None, {}, {"state": None, "domain": ""}, {"all": False}):
        kw = {} if body is None else {"json": body}
        await _error(await client.post("/v1/messages/hold", headers=AUTH, **kw), 400,
                     "empty_filter")
    assert not [c for c in backend.calls if c[0] == "bulk_action"]
    resp = await client.post("/v1/messages/hold", headers=AUTH, json={"domain": "Example.NET"})
    body = await resp.json()
    assert resp.status == 200 and body == {"action": "hold", "affected": 125, "messages": 125}
    assert backend.calls[-1] == ("bulk_action", "hold", dict(state=None, domain="example.net",
                                                             sender=None, recipient=None,
                                                             all=False))
    resp = await client.post("/v1/messages/release", headers=AUTH, json={"all": True})
    assert resp.status == 200 and backend.calls[-1][2]["all"] is True
    resp = await client.post("/v1/messages/delete", headers=AUTH,
                             json={"state": "held", "all": True})
    assert resp.status == 200 and backend.calls[-1][2]["state"] == "held"


@pytest.mark.parametrize("raw,code", [
    (b'{"all": "yes"}', "invalid_filter"), (b'{"bogus": 1, "all": true}', "invalid_filter"),
    (b'{"state": "frozen"}', "invalid_filter"), (b'{"domain": 5}', "invalid_filter"),
    (b'{"sender": "nope"}', "invalid_filter"), (b"not json", "invalid_body"),
    (b"[1, 2]", "invalid_body"), (b"\xff\xfe", "invalid_body"),
])
async def test_bulk_rejects_bad_bodies(client, backend, raw, code):
    await _error(await client.post("/v1/messages/bounce", headers=AUTH | {
        "Content-Type": "application/json"}, data=raw), 400, code)
    assert not [c for c in backend.calls if c[0] == "bulk_action"]


async def test_bulk_body_too_large_is_413(client):
    big = json.dumps({"domain": "x" * 100_000}).encode()
    await _error(await client.post("/v1/messages/hold", headers=AUTH, data=big), 413,
                 "too_large")


async def test_destination_actions(client, backend):
    for action, state in (("suspend", "suspended"), ("resume", "active"), ("flush", "active")):
        resp = await client.post(f"/v1/destinations/example.org/{action}", headers=AUTH)
        assert resp.status == 200
        assert await resp.json() == {"destination": "example.org", "action": action,
                                     "state": state, "requested": "example.org"}
    # a smarthost destination: "[host]:port", percent-encoded in the path
    resp = await client.post("/v1/destinations/%5Bsmart.example%5D%3A2525/suspend", headers=AUTH)
    assert resp.status == 200 and backend.calls[-1] == ("destination_action",
                                                        "[smart.example]:2525", "suspend")
    # unknown names are allowed (mail may come later) unless the backend refuses
    assert (await client.post("/v1/destinations/new.example/suspend", headers=AUTH)).status == 200
    await _error(await client.post("/v1/destinations/refused.example/flush", headers=AUTH), 404)


# --------------------------------------------------------------- openapi

def _app_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":            # aiohttp adds HEAD to every GET
            continue
        out.add((route.method, route.resource.canonical))
    return out


def test_openapi_matches_the_routes_exactly():
    app = create_app(FakeBackend(), token=TOKEN)
    doc = openapi_document()
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == _app_routes(app)
    assert documented == set(ROUTES) and len(ROUTES) == len(set(ROUTES))
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, \
                (method, path)
            assert "200" in op["responses"] and op.get("operationId"), (method, path)
            if path != "/healthz":
                assert "401" in op["responses"], (method, path)
    assert doc["openapi"].startswith("3.1")


def test_openapi_document_is_valid():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(openapi_document())


async def test_openapi_is_served(client):
    resp = await client.get("/v1/openapi.json", headers=AUTH)
    assert resp.status == 200 and await resp.json() == openapi_document()


def test_the_fake_satisfies_the_protocol():
    assert isinstance(FakeBackend(), AdminBackend)


# ------------------------------------------------- real server + client

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_admin_server_and_client_over_loopback(backend, caplog):
    cfg = SimpleNamespace(address="127.0.0.1:0", metrics_require_token=True)
    server = AdminServer(cfg, backend, TOKEN)
    with caplog.at_level(logging.DEBUG):
        await server.start()
        try:
            host, port = server.sockname
            assert host == "127.0.0.1" and port > 0
            assert TOKEN not in repr(server)
            c = AdminClient(server.url, TOKEN, timeout=5)
            assert await asyncio.to_thread(c.health) == {"status": "ok"}
            assert (await asyncio.to_thread(c.readiness))["ready"] is True
            backend.ready = (False, "spool not writable")
            assert await asyncio.to_thread(c.readiness) == {"ready": False,
                                                             "reason": "spool not writable"}
            assert "mta_up 1" in await asyncio.to_thread(c.metrics)
            assert (await asyncio.to_thread(c.queue_summary))[0]["destination"]
            ids = [m["id"] for m in await asyncio.to_thread(
                lambda: list(c.iter_messages(page_size=90, domain="example.org")))]
            assert len(ids) == 125 and ids == sorted(ids)
            assert (await asyncio.to_thread(c.get_message, "M00001"))["id"] == "M00001"
            assert (await asyncio.to_thread(c.message_body, "M00001")).startswith(b"From:")
            assert (await asyncio.to_thread(c.message_action, "M00001", "hold"))["affected"] == 1
            assert (await asyncio.to_thread(c.message_action, "M00001", "delete"))["id"]
            r = await asyncio.to_thread(lambda: c.bulk_action("retry", domain="example.net"))
            assert r["messages"] == 125
            r = await asyncio.to_thread(c.destination_action, "[smart.example]:2525", "suspend")
            assert r["destination"] == "[smart.example]:2525" and r["state"] == "suspended"
            with pytest.raises(AdminError) as exc:
                await asyncio.to_thread(c.get_message, "NOPE")
            assert (exc.value.status, exc.value.code) == (404, "not_found")
            wrong = AdminClient(server.url, "wrong-token-xxxxxxxx", timeout=5)
            assert await asyncio.to_thread(wrong.health) == {"status": "ok"}   # open
            for call in (wrong.queue_summary, wrong.metrics,       # metrics_require_token
                         AdminClient(server.url, None, timeout=5).metrics):
                with pytest.raises(AdminError) as exc:
                    await asyncio.to_thread(call)
                assert (exc.value.status, exc.value.code) == (401, "unauthorized")
            assert "no admin token" in exc.value.message          # the token-less client
        finally:
            await server.stop()
    assert TOKEN not in caplog.text


async def test_client_reports_an_unreachable_daemon_by_address():
    port = _closed_port()
    c = AdminClient(base_url(f"127.0.0.1:{port}"), TOKEN, timeout=2)
    with pytest.raises(AdminUnavailable) as exc:
        await asyncio.to_thread(c.queue_summary)
    assert str(exc.value) == (f"the daemon's admin API at 127.0.0.1:{port} is not reachable "
                              "(is mta running?)")
    assert TOKEN not in str(exc.value)


def test_base_url_maps_wildcards_to_loopback():
    assert base_url("127.0.0.1:8025") == "http://127.0.0.1:8025"
    assert base_url("0.0.0.0:8025") == "http://127.0.0.1:8025"
    assert base_url("[::]:8025") == "http://[::1]:8025"
    assert base_url("[::1]:9") == "http://[::1]:9"
    assert base_url("localhost:1") == "http://localhost:1"


def test_ensure_token_creates_it_once_0600(tmp_path):
    state = tmp_path / "state"
    t1 = ensure_token(state)
    assert len(t1) >= 40
    p = token_path(state)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert ensure_token(state) == t1
    cfg = SimpleNamespace(admin=SimpleNamespace(token=None), server=SimpleNamespace(
        state_dir=str(state)))
    assert read_token(cfg) == t1
    cfg.admin.token = "from-the-config-file"
    assert read_token(cfg) == "from-the-config-file"
    cfg = SimpleNamespace(admin=SimpleNamespace(token=None), server=SimpleNamespace(
        state_dir=str(tmp_path / "nowhere")))
    assert read_token(cfg) is None


# ------------------------------------- hostile input (issue 10 item 6)
# Each of these was a 500 (or silently accepted) before: they must be 4xx
# with the JSON error naming the field, and never reach the backend.

async def raw_http(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request written byte for byte (no client library fixes it up) to
    127.0.0.1:port; -> (status, headers lower-cased, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def _head(method: str, target: bytes, *headers: bytes, length: int | None = None) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    if length is not None:
        extra += b"Content-Length: %d\r\n" % length
    return (method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + extra + b"Connection: close\r\n\r\n")


RAW_AUTH = b"Authorization: Bearer " + TOKEN.encode()


@pytest.fixture
async def served(backend):
    server = AdminServer(SimpleNamespace(address="127.0.0.1:0", metrics_require_token=False),
                         backend, TOKEN)
    await server.start()
    try:
        yield server.sockname[1]
    finally:
        await server.stop()


@pytest.mark.parametrize("header", [
    "Authorization: Bearer éééé".encode("latin-1"),          # surrogate-escaped by aiohttp
    "Authorization: Bearer éééé".encode(),
    b"Authorization: Bearer \xff\xfe\x80",
    b"Authorization: Bearer " + TOKEN.encode() + b"\xe9",
    "Authorization: Bäarer ".encode() + TOKEN.encode(),
    b"Authorization: Bearer " + b"A" * 4000,
])
async def test_any_token_bytes_are_a_plain_401(served, header, caplog):
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await raw_http(served, _head("GET", b"/v1/queue/summary", header))
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "unauthorized"
    assert "invalid_token" in headers["www-authenticate"]
    assert "Traceback" not in caplog.text


async def test_two_authorization_headers_are_refused(served):
    status, _, _ = await raw_http(served, _head("GET", b"/v1/queue/summary", RAW_AUTH,
                                               b"Authorization: Bearer nope"))
    assert status == 401
    status, _, _ = await raw_http(served, _head("GET", b"/v1/queue/summary", RAW_AUTH))
    assert status == 200                        # the raw-bytes check accepts the right token


@pytest.mark.parametrize("path,field", [
    ("/v1/events?after=99999999999999999999999", "after"),      # OverflowError in SQLite
    ("/v1/events?after=9223372036854775808", "after"),
    ("/v1/events?after=-1", "after"), ("/v1/events?after=%C2%B2", "after"),   # "²".isdigit()
    ("/v1/events?after=%D9%A3", "after"), ("/v1/events?after=1e3", "after"),  # "٣" -> 3
    ("/v1/events?after=+1", "after"), ("/v1/events?after=%201", "after"),
    ("/v1/events?after=1&after=2", "after"), ("/v1/events?limit=0", "limit"),
    ("/v1/events?limit=%C2%B2", "limit"), ("/v1/events?limit=-5", "limit"),
    ("/v1/events?type=delivred", "type"), ("/v1/events?type=%00", "type"),
    ("/v1/events?recipient=a%00b@x.example", "recipient"), ("/v1/events?bogus=1", "bogus"),
    ("/v1/events?recipient=nobody", "recipient"),
    ("/v1/messages?limit=%C2%B2", "limit"), ("/v1/messages?limit=%D9%A3", "limit"),
    ("/v1/messages?limit=99999999999999999999999", "limit"),
    ("/v1/messages?domain=%5B%00%5D", "domain"), ("/v1/messages?domain=%5Bnope%5D", "domain"),
    ("/v1/messages?domain=" + "a" * 400, "domain"),
    ("/v1/messages?sender=%22%00%22@x.example", "sender"),
    ("/v1/messages?recipient=%1b%5b31m@x.example", "recipient"),
    ("/v1/messages?cursor=%00", "cursor"), ("/v1/messages?cursor=" + "A" * 600, "cursor"),
    ("/v1/messages/M0%00001", "id"), ("/v1/messages/..%2f..%2fetc", "id"),
    ("/v1/messages/" + "A" * 3000, "id"), ("/v1/messages/%ff%fe/body", "id"),
    ("/v1/messages/a%20b/events", "id"),
])
async def test_bad_query_and_path_values_are_400_naming_the_field(client, backend, path, field):
    before = len(backend.calls)
    resp = await client.get(path, headers=AUTH)
    err = await _error(resp, 400)
    assert field in err["message"], err
    assert len(backend.calls) == before          # refused before reaching the backend


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/messages/M0%00001/hold"), ("DELETE", "/v1/messages/%0d%0a"),
    ("POST", "/v1/destinations/..%2f..%2fetc/suspend"),
    ("POST", "/v1/destinations/a%00b/suspend"),
    ("POST", "/v1/destinations/" + "a" * 3000 + "/suspend"),
    ("POST", "/v1/destinations/exa%20mple.org/resume"),
    ("POST", "/v1/destinations/%5B10.0.0.1%5D%3A0/flush"),
    ("POST", "/v1/destinations/%5B10.0.0.1%5D%3A99999999999999999999/flush"),
    ("POST", "/v1/destinations/%5Bbad%20host%5D%3A25/suspend"),
    ("POST", "/v1/destinations/example.org%1b%5b2J/suspend"),
    ("POST", "/v1/destinations/*/suspend"),
    ("POST", "/v1/webhooks/a%00b/test"), ("POST", "/v1/webhooks/" + "w" * 300 + "/replay"),
])
async def test_bad_names_are_400_and_nothing_is_done(client, backend, method, path):
    before = len(backend.calls)
    err = await _error(await client.request(method, path, headers=AUTH, json={"from": 1}), 400,
                       "invalid_parameter")
    assert err["message"].split()[0].rstrip(":") in ("id", "name"), err
    assert len(backend.calls) == before
    assert set(backend.destinations) == {"example.org", "example.net"}     # nothing suspended


@pytest.mark.parametrize("raw", [
    b"[" * 60_000,                                       # RecursionError in json
    b'{"domain": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    b'{"domain": "x.example", "all": NaN}', b'{"domain": Infinity}',
    b'{"domain": "\\u0000.example"}', b'{"recipient": "a@b.example\\r\\nX: y"}',
    b'{"domain": ["x.example"]}', b'{"sender": {"a": 1}}', b'{"state": 1e999}',
    b'{"domain": 1' + b"0" * 5000 + b"}",                # int() digit limit
])
async def test_bulk_hostile_bodies_are_400(client, backend, raw):
    await _error(await client.post("/v1/messages/hold", headers=AUTH | {
        "Content-Type": "application/json"}, data=raw), 400)
    assert not [c for c in backend.calls if c[0] == "bulk_action"]


@pytest.mark.parametrize("body", [
    {"from": 10**30}, {"from": 2**63}, {"from": -1}, {"from": 1.5}, {"from": True},
    {"from": "start"}, {"from": [1]}, {"since": -1}, {"since": 1e300}, {"since": "yesterday"},
    {"since": True}, {"from": 1, "since": 2}, {}, {"from": 1, "extra": 2},
])
async def test_webhook_replay_refuses_bad_bodies(client, backend, body):
    await _error(await client.post("/v1/webhooks/hook/replay", headers=AUTH, json=body), 400,
                 "invalid_body")
    for raw in (b'{"since": NaN}', b'{"since": Infinity}', b'{"from": -Infinity}'):
        await _error(await client.post("/v1/webhooks/hook/replay", data=raw, headers=AUTH), 400,
                     "invalid_body")
    assert not [c for c in backend.calls if c[0] == "webhook_replay"]


async def test_good_values_still_pass(client, backend):
    resp = await client.get("/v1/events", headers=AUTH, params={
        "after": str(2**63 - 1), "limit": "1000", "type": "delivered,bounced",
        "recipient": "User@Example.ORG"})
    assert resp.status == 200, await resp.text()
    assert backend.calls[-1] == ("events_after", 2**63 - 1, 1000, ["delivered", "bounced"],
                                 "User@example.org")
    resp = await client.post("/v1/webhooks/hook/replay", headers=AUTH, json={"from": 2**63 - 1})
    assert resp.status == 200
    resp = await client.post("/v1/webhooks/hook/replay", headers=AUTH, json={"since": 1.5e9})
    assert resp.status == 200
    resp = await client.post("/v1/webhooks/hook/replay", headers=AUTH, json={"from": "end"})
    assert resp.status == 200
    await _error(await client.post("/v1/webhooks/nope/test", headers=AUTH), 404, "not_found")
    await _error(await client.get("/v1/messages/NOPE/events", headers=AUTH), 404, "not_found")


async def test_destination_names_are_normalised_and_routed_domains_resolved(client, backend):
    resp = await client.post("/v1/destinations/Example.ORG./suspend", headers=AUTH)
    assert resp.status == 200 and backend.calls[-1] == ("destination_action", "example.org",
                                                        "suspend")
    resp = await client.post("/v1/destinations/routed.example/suspend", headers=AUTH)
    assert await resp.json() == {"destination": "[10.0.0.1]:25", "action": "suspend",
                                 "state": "suspended", "requested": "routed.example"}
    assert backend.destinations["[10.0.0.1]:25"] == "suspended"
    resp = await client.post("/v1/destinations/b%C3%BCcher.example/flush", headers=AUTH)
    assert resp.status == 200
    assert backend.calls[-1][1] == "xn--bcher-kva.example"
    resp = await client.post("/v1/destinations/SANDBOX/flush", headers=AUTH)
    assert resp.status == 200 and backend.calls[-1][1] == "sandbox"
    resp = await client.post("/v1/destinations/%5BSmart.Example%5D%3A02525/flush", headers=AUTH)
    assert resp.status == 200 and backend.calls[-1][1] == "[smart.example]:2525"
    err = await _error(await client.post("/v1/destinations/%5B192.0.2.9%5D%3A25/suspend",
                                         headers=AUTH), 404, "not_found")
    assert "not a configured route" in err["message"]


async def test_a_client_controlled_path_reaches_the_log_escaped(client, backend, caplog):
    backend.fail = RuntimeError("boom")
    with caplog.at_level(logging.DEBUG):
        await _error(await client.get("/v1/nope%1b%5b2J%0d%0aevent=forged", headers=AUTH), 404)
        await _error(await client.get("/healthz?x=%1b", headers=AUTH), 500)
    assert "/v1/nope" in caplog.text
    assert not any(c in caplog.text for c in "\x1b\r\x00")
    assert "\nevent=forged" not in caplog.text


@pytest.mark.parametrize("head", [
    b"GET /v1/messages?limit=\xd9\xa3 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,    # a TLS ClientHello
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
])
async def test_unparseable_http_is_400_and_one_log_line(served, head, caplog):
    with caplog.at_level(logging.DEBUG):
        status, _, _ = await raw_http(served, head)
        await asyncio.sleep(0.05)
    assert status == 400
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert any("event=admin_bad_http" in r.getMessage() for r in caplog.records)
    assert not any(c in caplog.text for c in "\x1b\x01\x16\x00")


async def test_readyz_carries_the_backends_details(client, backend):
    backend.ready = (True, "", {"spool_free_bytes": 123, "min_free_space": 100})
    resp = await client.get("/readyz", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "spool_free_bytes": 123, "min_free_space": 100}
    backend.ready = (False, "disk: low", {"spool_free_bytes": 5, "min_free_space": 100})
    resp = await client.get("/readyz", headers=AUTH)
    body = await resp.json()
    assert resp.status == 503 and body["spool_free_bytes"] == 5 and body["reason"] == "disk: low"
    assert body["error"] == {"code": "not_ready", "message": "disk: low"}


def test_event_types_are_the_configs():
    # One vocabulary (core.envelope): the API's ?type= and the config's events.
    from mta.admin import params
    from mta.config import EVENT_TYPES as CONFIG_EVENT_TYPES
    assert params.EVENT_TYPES == CONFIG_EVENT_TYPES


def test_openapi_lists_the_400s():
    doc = openapi_document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            takes_input = bool(op.get("parameters") or op.get("requestBody"))
            assert ("400" in op["responses"]) == takes_input, (method, path)
