"""The console's sessions and guards (mta.console.app) on a real daemon's
admin server: login with the admin token or a tenant's full-access key,
CSRF on every POST, logout, expiry, the login throttle, security headers,
and that nothing secret reaches a URL, a page or the log."""

from __future__ import annotations

import logging
import re

import aiohttp
import pytest
from yarl import URL

from mta.api.keys import StoreKeys
from mta.console.app import create_console_app
from mta.console.backend import ConsoleParts, Viewer
from mta.console.sessions import LoginThrottle, SessionStore
from mta.core.clock import FakeClock
from mta.admin.http import create_app
from mta.spool.apikeys import SqliteApiKeys
from tests.support.console import console_client, csrf_of
from tests.support.mtahelpers import config_text, free_port, running_daemon

TOKEN = "test-admin-token-0123456789"


@pytest.fixture
async def daemon(tmp_path):
    async with running_daemon(config_text(tmp_path / "state", free_port())) as d:
        yield d


def _key(d, name: str, tenant: str | None, permission: str = "full_access") -> str:
    store = StoreKeys(SqliteApiKeys(str(d.cfg.server.state_dir)))
    _, token = store.create(name, permission=permission, now=d.clock.now())
    return token


async def _tenant_key(d, tenant: str, name: str, permission: str = "full_access") -> str:
    if await d.tenants.show(tenant) is None:
        await d.tenants.add(tenant, {}, {})
    token = _key(d, name, tenant, permission)
    await d.tenants.own("credential", f"api:{name}", tenant)
    return token


async def test_pages_need_a_login_and_keep_the_target(daemon):
    async with console_client(daemon.admin.url, login=False) as c:
        status, _ = await c.get("/messages?state=held")
        assert status == 303
        async with c.http.get(daemon.admin.url + "/console/messages?state=held",
                              allow_redirects=False) as r:
            location = URL(r.headers["Location"])
            assert location.path == "/console/login"
            assert location.query["next"] == "/console/messages?state=held"
        # The bare prefix goes to the console's home.
        async with c.http.get(daemon.admin.url + "/console", allow_redirects=False) as r:
            assert r.status == 308 and r.headers["Location"] == "/console/"
        # Anything but GET without a session is refused outright.
        status, body, _ = await c.post("/logout", {}, csrf=None)
        assert status == 403


async def test_operator_login_logout_and_cookie_flags(daemon, caplog):
    caplog.set_level(logging.DEBUG)
    async with console_client(daemon.admin.url, login=False) as c:
        async with c.http.get(daemon.admin.url + "/console/login") as r:
            pre = csrf_of(await r.text())
            assert "mta_console_login" in r.cookies
        async with c.http.post(daemon.admin.url + "/console/login",
                               data={"token": TOKEN, "_csrf": pre,
                                     "next": "/console/static/console.css"},
                               allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/console/static/console.css"
            cookie = [v for k, v in r.headers.items() if k == "Set-Cookie"
                      and v.startswith("mta_console=")][0]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert "Path=/console/" in cookie and "Secure" not in cookie    # plain HTTP here
        status, page = await c.get("/login")
        assert 'id="viewer"' in page and ">operator<" in page
        csrf = csrf_of(page)
        # Logged in: the header names the operator and offers logout.
        status, body, location = await c.post("/logout", {}, csrf=csrf)
        assert status == 303 and location == "/console/login"
        status, _ = await c.get("/messages")
        assert status == 303                          # the session is gone
    assert TOKEN not in caplog.text


async def test_bad_tokens_and_the_throttle(daemon, caplog):
    caplog.set_level(logging.DEBUG)
    sending = await _tenant_key(daemon, "acme", "acme-send", permission="sending_access")
    async with console_client(daemon.admin.url, login=False) as c:
        for token in ("wrong", sending, TOKEN + "x", "\x00\x01", "é" * 600):
            r = await c.login(token)
            assert r.status in (401, 422), token
        status, page = await c.get("/login")
        assert "id=\"login-form\"" in page
        for _ in range(10):
            r = await c.login("still-wrong")
        r = await c.login(TOKEN)                  # even the right one waits now
        assert r.status == 429
    assert sending not in caplog.text and "still-wrong" not in caplog.text


async def test_login_form_needs_its_csrf_cookie(daemon):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(daemon.admin.url + "/console/login",
                             data={"token": TOKEN, "_csrf": "forged"},
                             allow_redirects=False) as r:
            assert r.status == 403
            assert "mta_console=" not in r.headers.get("Set-Cookie", "")


async def test_tenant_key_logs_in_as_its_tenant(daemon):
    token = await _tenant_key(daemon, "acme", "acme-admin")
    async with console_client(daemon.admin.url, token) as c:
        status, page = await c.get("/login")
        assert 'id="viewer"' in page
        assert "acme (key acme-admin)" in page
        assert token not in page


async def test_posts_without_the_session_csrf_are_refused(daemon):
    async with console_client(daemon.admin.url, TOKEN) as c:
        assert c.csrf
        status, body, _ = await c.post("/logout", {}, csrf=None)
        assert status == 403 and "CSRF" in body
        status, body, _ = await c.post("/logout", {}, csrf="x" * 43)
        assert status == 403
        # A cross-origin form post is refused even with the token.
        async with c.http.post(daemon.admin.url + "/console/logout",
                               data={"_csrf": c.csrf}, headers={"Origin": "https://evil.test"},
                               allow_redirects=False) as r:
            assert r.status == 403
        status, _ = await c.get("/login")
        status, _ = await c.get("/messages")
        assert status != 303                      # still logged in after all that


async def test_security_headers_and_errors_are_html(daemon):
    async with console_client(daemon.admin.url, TOKEN) as c:
        async with c.http.get(daemon.admin.url + "/console/no/such/page") as r:
            assert r.status == 404
            assert r.content_type == "text/html"
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-store"
            assert r.headers["Referrer-Policy"] == "same-origin"
        async with c.http.get(daemon.admin.url + "/console/static/console.css") as r:
            assert r.status == 200 and r.content_type == "text/css"
        async with c.http.get(daemon.admin.url + "/console/static/..%2Fapp.py") as r:
            assert r.status == 404
        # The admin API next door still wants its bearer token.
        async with c.http.get(daemon.admin.url + "/v1/queue/summary") as r:
            assert r.status == 401


@pytest.mark.parametrize("target", ["https://evil.test/", "//evil.test/", "/v1/queue/summary",
                                    "/console/\\evil", "/console/\x00"])
async def test_login_never_redirects_outside_the_console(daemon, target):
    async with console_client(daemon.admin.url, login=False) as c:
        async with c.http.get(daemon.admin.url + "/console/login") as r:
            pre = csrf_of(await r.text())
        async with c.http.post(daemon.admin.url + "/console/login",
                               data={"token": TOKEN, "_csrf": pre, "next": target},
                               allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/"


def test_sessions_expire_idle_and_absolute():
    clock = FakeClock(1000.0)
    store = SessionStore(clock, idle=60, lifetime=300)
    cookie, s = store.create(Viewer(None, "operator"))
    assert store.get(cookie) is s
    clock.advance(59)
    assert store.get(cookie) is s                # touched: idle restarts
    clock.advance(59)
    assert store.get(cookie) is s
    clock.advance(61)
    assert store.get(cookie) is None             # idle too long
    cookie, s = store.create(Viewer(None, "operator"))
    for _ in range(7):
        clock.advance(50)
        store.get(cookie)
    assert store.get(cookie) is None             # past its lifetime though used
    assert store.get("") is None and store.get("x" * 500) is None
    # The store never keeps the cookie value itself.
    cookie, _ = store.create(Viewer("acme", "acme"))
    assert all(cookie.encode() not in k for k in store._sessions)


def test_sessions_are_bounded():
    store = SessionStore(FakeClock(0.0), idle=60, lifetime=300, max_sessions=3)
    cookies = [store.create(Viewer(None, "op"))[0] for _ in range(5)]
    assert len(store) == 3
    assert store.get(cookies[0]) is None and store.get(cookies[4]) is not None


def test_throttle_window():
    clock = FakeClock(0.0)
    t = LoginThrottle(clock, failures=3, window=100)
    for _ in range(3):
        assert t.blocked("a") == 0
        t.failed("a")
    assert t.blocked("a") > 0 and t.blocked("b") == 0
    clock.advance(101)
    assert t.blocked("a") == 0
    t.failed("a")
    t.succeeded("a")
    assert t.blocked("a") == 0


async def test_expired_session_sends_back_to_login(aiohttp_unused_port=None):
    clock = FakeClock(1000.0)

    class Auth:
        def is_admin_token(self, token: bytes) -> bool:
            return token == b"op-token"

        async def tenant_of_key(self, token: str):
            return None

    console = create_console_app(ConsoleParts(auth=Auth()), clock=clock, idle=60, lifetime=600,
                                 pages=[])
    app = create_app(object(), token="op-token", console=console)   # type: ignore[arg-type]
    from aiohttp.test_utils import TestClient, TestServer
    async with TestClient(TestServer(app)) as tc:
        async with console_client(str(tc.make_url("")), "op-token") as c:
            status, page = await c.get("/")
            assert status == 404 and "no pages are enabled" in page
            clock.advance(61)
            status, _ = await c.get("/")
            assert status == 303
            assert re.search(r"name=\"_csrf\"", (await c.get("/login"))[1])


async def test_revoking_its_key_ends_a_tenant_session(daemon, monkeypatch):
    import mta.console.app as console_app
    monkeypatch.setattr(console_app, "KEY_RECHECK", 0.0)
    token = await _tenant_key(daemon, "acme", "acme-admin")
    async with console_client(daemon.admin.url, token) as c:
        status, page = await c.get("/login")
        assert "acme (key acme-admin)" in page
        StoreKeys(SqliteApiKeys(str(daemon.cfg.server.state_dir))).revoke(
            "acme-admin", daemon.clock.now())
        status, page = await c.get("/login")
        assert 'id="viewer"' not in page            # no session any more
        status, _ = await c.get("/keys")
        assert status == 303                         # back to the login page
