"""A world for the console's accounts pages (webhooks, tenants, API keys,
templates): one real in-process daemon with the sending API, the admin
server and its console, two named tenants (acme, beta) and the default
one, each with a full-access API key; a sink as every recipient's MX and a
webhook receiver on loopback (a config-file endpoint posts to it).

`accounts_world(tmp_path, monkeypatch)` yields a World; `await
world.console(token)` is a logged-in console client (tests/support/
console.py's, with its CSRF token read from the keys page, so it works
whatever page "/" is).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mta.api.keys import StoreKeys
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.console import ConsoleClient, console_client, csrf_of
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink

TOKEN = "test-admin-token-0123456789"
SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
TOKEN_RE = re.compile(r"mta_live_[a-z2-7]{12}_[A-Za-z0-9_-]{32}")


class Receiver:
    """Webhook endpoints on 127.0.0.1: POST /<path> answers `status[path]`
    (default 204) and keeps (path, the decoded JSON payload)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.status: dict[str, int] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path.lstrip("/")
        self.got.append((path, json.loads(await request.read())))
        return web.Response(status=self.status.get(path, 204))

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def at(self, path: str) -> list[Any]:
        return [p for where, p in self.got if where == path]


class World:
    def __init__(self, d: Any, state: Path, keys: dict[str, str], rx: Receiver, sink: Sink):
        self.d, self.state, self.keys, self.rx, self.sink = d, state, keys, rx, sink

    @property
    def admin(self) -> str:
        return str(self.d.admin.url)

    async def api(self, token: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """A sending-API request with `token` → (status, JSON body)."""
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.d.api.url + path,
                                 headers={"Authorization": f"Bearer {token}"}, **kw) as r:
                return r.status, await r.json(content_type=None)

    async def send(self, token: str, sender: str = "app@acme.test") -> int:
        status, _ = await self.api(token, "POST", "/emails", json={
            "from": sender, "to": ["someone@rcpt.test"], "subject": "hi", "text": "hello"})
        return status

    def key_rows(self, include_revoked: bool = True) -> list[Any]:
        return StoreKeys(SqliteApiKeys(str(self.state))).list(include_revoked)

    def owner(self, kind: str, name: str) -> str:
        return SqliteTenants(self.state).owner(kind, name)

    @contextlib.asynccontextmanager
    async def console(self, token: str = TOKEN) -> AsyncIterator[ConsoleClient]:
        async with console_client(self.admin, login=False) as c:
            async with c.http.get(c.base + "/console/login") as r:
                pre = csrf_of(await r.text())
            async with c.http.post(c.base + "/console/login",
                                   data={"token": token, "_csrf": pre},
                                   allow_redirects=False) as r:
                assert r.status == 303, f"login failed: {r.status}"
            status, page = await c.get("/keys")
            assert status == 200, page
            c.csrf = csrf_of(page)
            yield c


def _seed(state: Path) -> dict[str, str]:
    """acme and beta (each owning <name>.test) and a full-access key for
    each tenant, the default one included."""
    now = time.time()
    tenants, store = SqliteTenants(state), StoreKeys(SqliteApiKeys(str(state)))
    keys = {}
    for t in ("acme", "beta", "default"):
        made, keys[t] = store.create(f"{t}-admin", now=now)
        if t != "default":
            tenants.add(t, limits={}, policy={}, now=now)
            tenants.own("domain", f"{t}.test", t, now)
        tenants.own("credential", made.credential, t, now)
    return keys


@contextlib.asynccontextmanager
async def accounts_world(tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    state = tmp_path / "state"
    state.mkdir()
    keys = _seed(state)
    async with Sink() as sink, Receiver() as rx:
        text = config_text(state, free_port(), routes={"*": f"127.0.0.1:{sink.address[1]}"})
        text += (f'[api]\naddress = "127.0.0.1:{free_port()}"\n'
                 f'[[webhooks]]\nname = "cfg-hook"\nurl = "{rx.url}/cfg-hook"\n'
                 f'secret = "{SECRET}"\n')
        async with running_daemon(text) as d:
            yield World(d, state, keys, rx, sink)


async def until(cond: Any, timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)
