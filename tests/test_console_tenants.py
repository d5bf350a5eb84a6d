"""The console's Tenants pages (mta.console.pages_tenants over
mta.runtime.console_accounts) on a real daemon: the list and a tenant's
page show status, rates against thresholds and quota use; pausing with a
reason refuses the tenant's sending at once, resuming lets it send again;
only the operator sees or uses any of it; refusals change nothing."""

from __future__ import annotations

import pytest

from tests.support.accounts import accounts_world


@pytest.fixture
async def world(tmp_path, monkeypatch):
    async with accounts_world(tmp_path, monkeypatch) as w:
        yield w


async def test_pause_refuses_sending_and_resume_allows_it(world):
    w = world
    assert await w.send(w.keys["acme"]) == 200
    async with w.console() as c:
        status, page = await c.get("/tenants")
        assert status == 200 and 'id="tenants"' in page
        for t in ("acme", "beta", "default"):
            assert f'id="tenant-{t}"' in page
        assert 'id="pause-acme"' in page and 'id="resume-acme"' not in page
        status, _, location = await c.post("/tenants/acme/pause",
                                           {"reason": "complaints from <Yahoo> & co"})
        assert status == 303 and location == "/console/tenants/acme"
        # refused at once on the sending API (403, the reason in its message)
        status, body = await w.api(w.keys["acme"], "POST", "/emails", json={
            "from": "app@acme.test", "to": ["x@rcpt.test"], "subject": "s", "text": "t"})
        assert status == 403 and "complaints from <Yahoo> & co" in body["message"]
        assert await w.send(w.keys["beta"], "app@beta.test") == 200      # beta is not paused
        status, page = await c.get("/tenants/acme")
        assert "Paused tenant acme" in page
        assert 'id="tenant-paused"' in page and "paused by operator" in page
        assert "complaints from &lt;Yahoo&gt; &amp; co" in page
        assert 'id="resume-acme"' in page and 'id="pause-acme"' not in page
        status, page = await c.get("/tenants")
        assert 'id="tenant-acme-paused"' in page
        status, _, _ = await c.post("/tenants/acme/resume", {"reason": "cleaned the list"})
        assert status == 303
    assert await w.send(w.keys["acme"]) == 200
    row = await w.d.tenants.show("acme")
    assert row["status"] == "active" and row["sending"]


async def test_a_tenants_page_shows_limits_policy_domains_and_keys(world):
    w = world
    await w.d.tenants.update("acme", {"per_hour": 100, "per_day": 1000},
                             {"bounce_warn": 0.04, "bounce_pause": 0.09})
    assert await w.send(w.keys["acme"]) == 200
    async with w.console() as c:
        status, page = await c.get("/tenants/acme")
        assert status == 200
        for element in ("tenant-status", "limits", "policy", "owned", "domains", "refused"):
            assert f'id="{element}"' in page, element
        assert "1 used of 100" in page and "1 used of 1000" in page
        assert "warn 4.00%" in page and "pause 9.00%" in page
        assert "bounce_warn = 0.04" in page
        assert "<code>acme.test</code>" in page
        assert '<span id="keys-count">1</span>' in page and "acme-admin" in page
        status, page = await c.get("/tenants")
        assert "1 / 100" in page
        status, page = await c.get("/tenants/default")
        assert status == 200 and "Tenant default" in page


@pytest.mark.parametrize("path, data, status", [
    ("/tenants/acme/pause", {}, 422),                            # a reason is required
    ("/tenants/acme/pause", {"reason": "   "}, 422),
    ("/tenants/acme/pause", {"reason": "x" * 301}, 422),
    ("/tenants/acme/pause", {"reason": "bad\x00byte"}, 422),
    ("/tenants/nobody/pause", {"reason": "r"}, 404),
    ("/tenants/ACME/pause", {"reason": "r"}, 404),
    ("/tenants/" + "a" * 70 + "/pause", {"reason": "r"}, 404),
    ("/tenants/%00/pause", {"reason": "r"}, 404),
])
async def test_refused_pauses_change_nothing(world, path, data, status):
    w = world
    async with w.console() as c:
        got, page, _ = await c.post(path, data)
        assert got == status, page
        assert "internal error" not in page
    assert (await w.d.tenants.show("acme"))["sending"]
    assert await w.send(w.keys["acme"]) == 200


async def test_only_the_operator(world):
    w = world
    async with w.console(w.keys["acme"]) as c:
        status, page = await c.get("/keys")
        assert 'href="/console/tenants"' not in page             # not in its navigation
        for path in ("/tenants", "/tenants/acme", "/tenants/beta"):
            status, _ = await c.get(path)
            assert status == 404, path
        for path in ("/tenants/beta/pause", "/tenants/acme/pause"):
            status, _, _ = await c.post(path, {"reason": "mine now"})
            assert status == 404
    async with w.console() as c:                                  # and without the CSRF token
        status, _, _ = await c.post("/tenants/beta/pause", {"reason": "x"}, csrf=None)
        assert status == 403
        status, page = await c.get("/keys")
        assert 'href="/console/tenants"' in page
    assert (await w.d.tenants.show("beta"))["sending"]
    assert (await w.d.tenants.show("acme"))["sending"]
