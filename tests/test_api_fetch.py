"""Remote attachments (issue 13): refused unless the operator allows the
host; fetched from an allowed host without following redirects, 200 only,
within the size limit (a local HTTP server on 127.0.0.1 plays the host)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import os

from aiohttp import web

from tests.test_api_send import Env, api_config, running_daemon
from tests.support.sink import Sink

PAYLOAD = os.urandom(30_000)


async def _files(port_holder: list[int]) -> web.AppRunner:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/pdf")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{port_holder[0]}/blob")

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_get("/moved", moved)
    app.router.add_get("/missing", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_holder.append(runner.addresses[0][1])
    return runner


async def test_remote_attachments(tmp_path):
    port: list[int] = []
    files = await _files(port)
    try:
        async with Sink(tls=False) as sink:
            state = tmp_path / "state"
            text = api_config(state, sink.address[1], 'attachment_hosts = ["127.0.0.1"]\n')
            async with running_daemon(text) as d:
                env = Env(d, sink, state)
                base = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "f",
                        "text": "see attached"}
                url = f"http://127.0.0.1:{port[0]}"
                status, body, _ = await env.http("POST", "/emails", json={
                    **base, "attachments": [{"filename": "r.pdf", "path": f"{url}/blob"}]})
                assert status == 200, body
                for path, why in (("/moved", "302"), ("/missing", "404")):
                    status, body, _ = await env.http("POST", "/emails", json={
                        **base, "attachments": [{"filename": "r.pdf", "path": url + path}]})
                    assert status == 422 and "attachments[0].path" in body["message"], body
                    assert why in body["message"]
                status, body, _ = await env.http("POST", "/emails", json={
                    **base, "attachments": [{"filename": "r.pdf",
                                             "path": "http://localhost.invalid/x"}]})
                assert status == 422 and "not fetched" in body["message"]
                await sink.wait_for(1, timeout=20)
                await asyncio.sleep(0.3)
                assert len(sink.messages) == 1
                msg = email.message_from_bytes(sink.messages[0].data,
                                               policy=email.policy.default)
                part = [p for p in msg.walk() if p.get_filename() == "r.pdf"][0]
                assert part.get_content_type() == "application/pdf"
                assert hashlib.sha256(part.get_content()).digest() == \
                    hashlib.sha256(PAYLOAD).digest()
    finally:
        await files.cleanup()


def test_plain_http_only_from_a_loopback_host():
    import pytest

    from mta.api.emails import ValidationError, parse_email
    base = {"from": "a@acme.test", "to": "ok@rcpt.test", "subject": "f", "text": "x"}
    hosts = frozenset({"files.example", "127.0.0.1"})
    with pytest.raises(ValidationError, match="use https"):
        parse_email({**base, "attachments": [{"path": "http://files.example/a.pdf"}]},
                    fetch_hosts=hosts)
    for url in ("https://files.example/a.pdf", "http://127.0.0.1:8000/a.pdf"):
        req = parse_email({**base, "attachments": [{"path": url}]}, fetch_hosts=hosts)
        assert req.remote_attachments == ((0, url),)
