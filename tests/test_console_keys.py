"""The console's API keys pages (mta.console.pages_keys over
mta.runtime.console_keys) on a real daemon: a new key's token is shown
once and works on the sending API at once; revoking it refuses it there at
once; each tenant sees and revokes only its own keys, never the one its
session logged in with; refusals make nothing; no token reaches a later
page or the log."""

from __future__ import annotations

import logging
import re

import pytest

from mta.console.backend import Viewer
from mta.console.pages_keys import login_key_name
from tests.support.accounts import TOKEN_RE, World, accounts_world

_ID = re.compile(r'id="key-([a-z2-7]{12})"')


@pytest.fixture
async def world(tmp_path, monkeypatch):
    async with accounts_world(tmp_path, monkeypatch) as w:
        yield w


def _new_key(page: str) -> str:
    found = re.search(r'<pre id="new-key"[^>]*>([^<]*)</pre>', page)
    assert found, page
    assert TOKEN_RE.fullmatch(found.group(1)), found.group(1)
    return found.group(1)


def _active(w: World, name: str):
    return [k for k in w.key_rows(False) if k.name == name]


async def test_a_new_key_is_shown_once_works_and_revoking_stops_it(world, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    async with w.console() as c:
        status, page = await c.get("/keys")
        assert 'id="keys"' in page and 'id="create-key"' in page
        for t in ("acme", "beta", "default"):            # the operator sees every tenant's
            assert f"{t}-admin" in page
        status, page, location = await c.post("/keys", {
            "name": "ci deploy", "permission": "sending_access",
            "domains": "acme.test, *.acme.test", "tenant": "acme"})
        assert status == 200 and not location                  # the page itself, no redirect
        token = _new_key(page)
        assert 'data-copy="new-key"' in page and "will not be shown again" in page
        (made,) = _active(w, "ci deploy")
        assert made.permission == "sending_access"
        assert made.domains == ("acme.test", "*.acme.test")
        assert w.owner("credential", "api:ci deploy") == "acme"
        # later pages show the prefix, never the token
        status, page = await c.get("/keys")
        assert made.prefix in page and token not in page
        assert token[len(made.prefix):] not in page
        # the token works on the sending API at once, as acme
        assert await w.send(token) == 200
        status, body = await w.api(token, "GET", "/emails")
        assert status in (401, 403)                            # sending only
        # revoke: confirmation first (a GET changes nothing), then the POST
        status, page = await c.get(f"/keys/{made.id}/confirm-revoke")
        assert status == 200 and 'id="confirm-revoke"' in page and 'id="revoke"' in page
        assert _active(w, "ci deploy")
        status, _, location = await c.post(f"/keys/{made.id}/revoke", {})
        assert status == 303 and location == "/console/keys"
        status, page = await c.get("/keys")
        assert "Revoked the API key ci deploy" in page
        assert f'id="key-{made.id}"' not in page
        status, page = await c.get("/keys?revoked=1")
        assert f'id="key-{made.id}"' in page and "revoked" in page
        assert not _active(w, "ci deploy")
        # refused by the sending API at once (no cache ttl to wait out)
        status, body = await w.api(token, "POST", "/emails", json={
            "from": "app@acme.test", "to": ["x@rcpt.test"], "subject": "s", "text": "t"})
        assert status == 401, body
        # revoking twice: not found
        status, _, _ = await c.post(f"/keys/{made.id}/revoke", {})
        assert status == 404
    assert token not in caplog.text


async def test_a_tenant_sees_makes_and_revokes_only_its_own(world):
    w = world
    beta_id = _active(w, "beta-admin")[0].id
    async with w.console(w.keys["acme"]) as c:
        status, page = await c.get("/keys")
        assert status == 200
        assert set(_ID.findall(page)) == {_active(w, "acme-admin")[0].id}
        assert "beta-admin" not in page and "default-admin" not in page
        assert 'name="tenant"' not in page                   # no tenant choice for a tenant
        # a key it makes is its own, whatever tenant the form names
        status, page, _ = await c.post("/keys", {"name": "acme-ci", "permission": "full_access",
                                                 "tenant": "beta"})
        assert status == 200
        token = _new_key(page)
        assert w.owner("credential", "api:acme-ci") == "acme"
        status, body = await w.api(token, "GET", "/api-keys")
        assert status == 200 and {k["name"] for k in body["data"]} == {"acme-admin", "acme-ci"}
        # another tenant's key: not found, and left alone
        status, _ = await c.get(f"/keys/{beta_id}/confirm-revoke")
        assert status == 404
        status, _, _ = await c.post(f"/keys/{beta_id}/revoke", {})
        assert status == 404
        assert _active(w, "beta-admin")
        # the key of this very session: refused (409), the page says why
        own = _active(w, "acme-admin")[0].id
        status, page = await c.get(f"/keys/{own}/confirm-revoke")
        assert status == 200 and 'id="revoke-own"' in page and 'id="revoke"' not in page
        status, page, _ = await c.post(f"/keys/{own}/revoke", {})
        assert status == 409 and _active(w, "acme-admin")
        # its other key it may revoke
        made = _active(w, "acme-ci")[0]
        status, _, _ = await c.post(f"/keys/{made.id}/revoke", {})
        assert status == 303 and not _active(w, "acme-ci")
        assert await w.send(token) == 401


@pytest.mark.parametrize("form, status, field", [
    ({"name": ""}, 422, "name"),
    ({"name": "x" * 101}, 422, "name"),
    ({"name": "a\x01b"}, 422, "name"),
    ({"name": "tab\tname"}, 422, "name"),
    ({"name": "ok", "permission": "root"}, 422, "permission"),
    ({"name": "ok", "domains": "not a domain!"}, 422, "domains"),
    ({"name": "ok", "domains": "-bad-.test"}, 422, "domains"),
    ({"name": "ok", "domains": " ".join(f"d{i}.test" for i in range(101))}, 422, "domains"),
    ({"name": "ok", "tenant": "nobody"}, 422, "tenant"),
    ({"name": "ok", "tenant": "Not A Tenant"}, 422, "tenant"),
    ({"name": "ok", "tenant": ["a", "b"]}, 422, "tenant"),
    ({"name": "acme-admin"}, 409, "name"),                   # an active key has it
    ({"name": "é" * 5000}, 422, "name"),
])
async def test_refusals_make_nothing(world, form, status, field):
    w = world
    before = len(w.key_rows())
    data = {"permission": "sending_access", **form}
    async with w.console() as c:
        got, page, _ = await c.post("/keys", data)
        assert got == status, page
        assert f"{field}:" in page
        assert not TOKEN_RE.search(page)
    assert len(w.key_rows()) == before


async def test_a_name_another_tenant_used_is_refused_without_naming_it(world):
    w = world
    async with w.console() as c:                             # the operator: beta's "shared"
        status, page, _ = await c.post("/keys", {"name": "shared", "permission": "full_access",
                                                 "tenant": "beta"})
        assert status == 200
        made = _active(w, "shared")[0]
        status, _, _ = await c.post(f"/keys/{made.id}/revoke", {})
        assert status == 303
        # the name stays beta's: the operator is told whose
        status, page, _ = await c.post("/keys", {"name": "shared", "permission": "full_access",
                                                 "tenant": "acme"})
        assert status == 409 and "beta" in page
    before = len(w.key_rows())
    async with w.console(w.keys["acme"]) as c:
        status, page, _ = await c.post("/keys", {"name": "shared", "permission": "full_access"})
        assert status == 409 and "taken" in page and "beta" not in page
    assert len(w.key_rows()) == before
    assert w.owner("credential", "api:shared") == "beta"


async def test_posts_without_csrf_change_nothing(world):
    w = world
    acme = _active(w, "acme-admin")[0]
    before = len(w.key_rows())
    async with w.console() as c:
        status, body, _ = await c.post("/keys", {"name": "sneaky", "permission": "full_access"},
                                       csrf=None)
        assert status == 403 and not TOKEN_RE.search(body)
        status, _, _ = await c.post("/keys", {"name": "sneaky"}, csrf="forged" * 7)
        assert status == 403
        status, _, _ = await c.post(f"/keys/{acme.id}/revoke", {}, csrf=None)
        assert status == 403
    assert len(w.key_rows()) == before and _active(w, "acme-admin")


@pytest.mark.parametrize("path, status", [
    ("/keys?revoked=yes", 400),
    ("/keys?revoked=%00", 400),
    ("/keys/AAAAAAAAAAAA/confirm-revoke", 404),
    ("/keys/short/confirm-revoke", 404),
    ("/keys/" + "a" * 5000 + "/confirm-revoke", 404),
    ("/keys/aaaaaaaaaaaa/confirm-revoke", 404),              # well formed, unknown
    ("/keys/%00%01%02aaaaaaaaa/confirm-revoke", 404),
])
async def test_hostile_urls(world, path, status):
    async with world.console() as c:
        got, page = await c.get(path)
        assert got == status, page
        assert "internal error" not in page


def test_login_key_name_is_the_sessions_key():
    assert login_key_name(Viewer(None, "operator")) is None
    assert login_key_name(Viewer("acme", "acme (key ci (old))", key_name="ci (old)",
                                 key_id="k1")) == "ci (old)"
