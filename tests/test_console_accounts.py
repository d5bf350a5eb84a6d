"""What every accounts page of the console (webhooks, tenants, API keys,
templates) shares, on a real daemon: the navigation each viewer gets,
pages that work under the CSP (no inline script or style) at phone width
(responsive tables), an <h1> on each, no secret on any, names escaped, and
every POST refused without the session's CSRF token."""

from __future__ import annotations

import re
import time

import pytest

from mta.spool.templates import SqliteTemplates
from tests.support.accounts import SECRET, TOKEN, accounts_world


@pytest.fixture
async def world(tmp_path, monkeypatch):
    async with accounts_world(tmp_path, monkeypatch) as w:
        status, body = await w.api(w.keys["acme"], "POST", "/webhooks", json={
            "name": "acme-hook", "endpoint": f"{w.rx.url}/h", "events": ["*"]})
        assert status == 200, body
        w.hook_secret = body["signing_secret"]
        status, body = await w.api(w.keys["acme"], "POST", "/api-keys",
                                   json={"name": "<b>bold</b> key"})
        assert status == 200, body
        w.keys["bold"] = body["token"]
        w.tpl = SqliteTemplates(w.state).create("acme", {
            "name": "<script>alert(1)</script>", "html": "<p>{{x}}</p>"}, time.time()).id
        yield w


def _pages(w) -> list[str]:
    key = w.key_rows(False)[0].id
    return ["/webhooks", "/keys", "/keys?revoked=1", f"/keys/{key}/confirm-revoke",
            "/templates", f"/templates/{w.tpl}", "/tenants", "/tenants/acme"]


def _check_page(page: str, secrets: list[str]) -> None:
    assert re.search(r"<h1>[^<]+", page), "no h1"
    assert "style=" not in page, "inline style (the CSP forbids it)"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert "<script>alert(1)</script>" not in page
    for table in re.findall(r"<table[^>]*>", page):
        assert 'class="responsive"' in table, table
    for secret in secrets:
        assert secret not in page


async def test_every_page_renders_safely_for_each_viewer(world):
    w = world
    secrets = [*w.keys.values(), TOKEN, SECRET, w.hook_secret]
    async with w.console() as c:
        for path in _pages(w):
            status, page = await c.get(path)
            assert status == 200, (path, page)
            _check_page(page, secrets)
        status, page = await c.get("/keys")
        assert "&lt;b&gt;bold&lt;/b&gt; key" in page and "<b>bold" not in page
        status, page = await c.get("/templates")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    async with w.console(w.keys["acme"]) as c:
        own = [k.id for k in w.key_rows(False) if k.name == "acme-admin"][0]
        for path in ("/webhooks", "/keys", f"/keys/{own}/confirm-revoke", "/templates",
                     f"/templates/{w.tpl}"):
            status, page = await c.get(path)
            assert status == 200, (path, page)
            _check_page(page, secrets)


async def test_navigation_per_viewer(world):
    w = world
    async with w.console() as c:
        _, page = await c.get("/keys")
        nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', page, re.S).group(1)
        for label, path in (("Webhooks", "/webhooks"), ("Tenants", "/tenants"),
                            ("API keys", "/keys"), ("Templates", "/templates")):
            assert f'href="/console{path}"' in nav and label in nav
    async with w.console(w.keys["beta"]) as c:
        _, page = await c.get("/keys")
        nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', page, re.S).group(1)
        assert 'href="/console/tenants"' not in nav
        for path in ("/webhooks", "/keys", "/templates"):
            assert f'href="/console{path}"' in nav


async def test_every_post_needs_the_csrf_token(world):
    w = world
    acme_key = [k for k in w.key_rows(False) if k.name == "acme-admin"][0]
    posts = [("/keys", {"name": "x", "permission": "full_access"}),
             (f"/keys/{acme_key.id}/revoke", {}),
             ("/tenants/acme/pause", {"reason": "r"}), ("/tenants/acme/resume", {"reason": "r"}),
             ("/webhooks/cfg-hook/test", {}), ("/webhooks/cfg-hook/replay", {"from_seq": "end"}),
             (f"/templates/{w.tpl}/preview", {"variables": "{}"})]
    before = (len(w.key_rows()), await w.d.spool.ledger.webhook_state("cfg-hook"))
    async with w.console() as c:
        for path, data in posts:
            for csrf in (None, "", "forged-" + c.csrf[7:]):
                status, page, _ = await c.post(path, data, csrf=csrf)
                assert status == 403, (path, csrf)
                assert "CSRF" in page
    assert (len(w.key_rows()), await w.d.spool.ledger.webhook_state("cfg-hook")) == before
    assert (await w.d.tenants.show("acme"))["sending"]
    assert not [p for p in w.rx.at("cfg-hook") if p.get("type") == "test"]


def test_the_parts_never_override_each_other():
    from mta.runtime.console_accounts import ConsoleTenants
    from mta.runtime.console_accounts_base import AccountsPart
    from mta.runtime.console_keys import ConsoleKeys
    from mta.runtime.console_templates import ConsoleTemplates
    from mta.runtime.console_webhooks import ConsoleWebhooks
    seen: dict[str, str] = {}
    for part in (ConsoleWebhooks, ConsoleTenants, ConsoleKeys, ConsoleTemplates):
        for name in vars(part):
            if name.startswith("__") or name in vars(AccountsPart):
                continue
            assert name not in seen, f"{part.__name__}.{name} shadows {seen[name]}'s"
            seen[name] = part.__name__
