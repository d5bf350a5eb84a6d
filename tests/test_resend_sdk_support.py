"""The Resend SDK test helpers (tests/support/resend_sdk.py) really reach base_url.

Against a small capture server of our own (aiohttp on 127.0.0.1) — not mta —
so the helpers are proven before the sending API exists: the path, method,
Authorization and body the server records are the ones the test asked for,
and what the SDK hands back is what the server answered. The Python SDK is
synchronous (requests), so its calls run in a thread while the server runs
on the test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest
from aiohttp import web

from tests.support.resend_sdk import node_available, python_resend, requires_node, run_node

KEY = "re_test_0123456789abcdef"


class Capture:
    """Records every request; answers Resend-shaped JSON (or a queued reply)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.replies: list[tuple[int, dict]] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.read()
            self.requests.append({"method": request.method, "path": request.path,
                                  "query": dict(request.query), "headers": request.headers,
                                  "body": json.loads(raw) if raw else None})
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.replies:
                status, body = self.replies.pop(0)
                return web.json_response(body, status=status)
            if request.method == "POST" and request.path == "/emails":
                return web.json_response({"id": f"email-{len(self.requests)}"})
            return web.json_response({"object": "email", "id": request.path.rsplit("/", 1)[-1]})
        finally:
            self.in_flight -= 1


@pytest.fixture
async def capture():
    cap = Capture()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", cap.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cap.base_url = f"http://127.0.0.1:{port}"
    try:
        yield cap
    finally:
        await runner.cleanup()


# --- the Python SDK ---------------------------------------------------------

async def test_python_sdk_reaches_base_url_with_key_and_idempotency(capture):
    import resend

    before = (resend.api_url, resend.api_key)
    params = {"from": "Acme <me@acme.test>", "to": ["a@x.test"], "subject": "hi", "text": "t",
              "attachments": [{"filename": "a.bin", "content": list(b"\x00\xffab")}]}

    def send():
        with python_resend(capture.base_url + "/", KEY) as sdk:
            return sdk.Emails.send(params, {"idempotency_key": "idem-1"})

    result = await asyncio.to_thread(send)
    (req,) = capture.requests
    assert (req["method"], req["path"]) == ("POST", "/emails")
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["Idempotency-Key"] == "idem-1"
    assert req["body"] == params
    assert result["id"] == "email-1"
    assert (resend.api_url, resend.api_key) == before


async def test_python_resend_restores_the_sdk_after_an_error(capture):
    import resend

    before = (resend.api_url, resend.api_key)
    capture.replies.append((422, {"statusCode": 422, "name": "validation_error",
                                  "message": "The `to` field is missing."}))

    def get():
        with python_resend(capture.base_url, KEY) as sdk:
            sdk.Emails.get("e-1")

    with pytest.raises(resend.exceptions.ValidationError) as info:
        await asyncio.to_thread(get)
    assert info.value.code == 422 and "`to`" in info.value.message
    assert [(r["method"], r["path"]) for r in capture.requests] == [("GET", "/emails/e-1")]
    assert (resend.api_url, resend.api_key) == before


# --- the Node SDK -----------------------------------------------------------

def test_node_is_available_where_setup_ran():
    ok, why = node_available()
    if not ok:
        pytest.skip(why)
    assert why == ""


@requires_node
async def test_node_sdk_reaches_base_url_and_sends_buffers_as_base64(capture, monkeypatch):
    # A stray RESEND_BASE_URL in the environment must not win over the option.
    monkeypatch.setenv("RESEND_BASE_URL", "http://127.0.0.1:9")
    payload = bytes(range(256)) * 3
    ops = [{"op": "emails.send",
            "args": {"from": "me@acme.test", "to": "a@x.test", "subject": "s", "text": "t",
                     "attachments": [{"filename": "p.bin",
                                      "content_b64": base64.b64encode(payload).decode()}]},
            "options": {"idempotencyKey": "node-1"}},
           {"op": "emails.get", "args": {"id": "email-1"}}]
    sent, got = await asyncio.to_thread(run_node, capture.base_url, KEY, ops)
    post, get = capture.requests
    assert (post["method"], post["path"]) == ("POST", "/emails")
    assert (get["method"], get["path"]) == ("GET", "/emails/email-1")
    for req in (post, get):
        assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert post["headers"]["Idempotency-Key"] == "node-1"
    (att,) = post["body"]["attachments"]
    assert hashlib.sha256(base64.b64decode(att["content"])).digest() == \
        hashlib.sha256(payload).digest()
    assert sent["data"] == {"id": "email-1"} and sent["error"] is None
    assert got["data"] == {"object": "email", "id": "email-1"}


@requires_node
async def test_node_sdk_switched_by_resend_base_url(capture):
    (res,) = await asyncio.to_thread(run_node, capture.base_url, KEY,
                                     [{"op": "domains.get", "args": {"id": "d-1"}}], via="env")
    assert [(r["method"], r["path"]) for r in capture.requests] == [("GET", "/domains/d-1")]
    assert res["error"] is None and res["data"]["id"] == "d-1"


@requires_node
async def test_node_concurrent_copies_overlap(capture):
    capture.delay = 0.3
    op = {"op": "emails.send", "args": {"from": "me@acme.test", "to": "a@x.test",
                                        "subject": "s", "text": "t"},
          "options": {"idempotencyKey": "same"}, "concurrent": 4}
    (res,) = await asyncio.to_thread(run_node, capture.base_url, KEY, [op])
    assert res["concurrent"] == 4 and len(res["results"]) == 4
    assert len(capture.requests) == 4
    assert {r["headers"]["Idempotency-Key"] for r in capture.requests} == {"same"}
    assert capture.max_in_flight == 4


@requires_node
async def test_node_errors_come_back_as_the_sdk_returns_them(capture):
    body = {"statusCode": 409, "name": "invalid_idempotent_request", "message": "reused"}
    capture.replies.append((409, body))
    ops = [{"op": "emails.cancel", "args": {"id": "e-9"}},
           {"op": "emails.nope"},
           {"op": "apiKeys.remove", "args": {"id": "k-1"}}]
    cancel, unknown, remove = await asyncio.to_thread(run_node, capture.base_url, KEY, ops)
    assert cancel["data"] is None and cancel["error"] == body
    assert "unknown op" in unknown["exception"]
    assert remove["error"] is None
    assert [(r["method"], r["path"]) for r in capture.requests] == [
        ("POST", "/emails/e-9/cancel"), ("DELETE", "/api-keys/k-1")]
