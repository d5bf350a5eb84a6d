"""The console's Webhooks page (mta.console.pages_webhooks over
mta.runtime.console_webhooks) on a real daemon with a real receiver: the
list shows each endpoint's owner, state, lag and last error (never a
secret); "Send test" and "Replay" reach the receiver; a tenant sees and
acts on its own endpoints only; bad replay values and CSRF-less posts
change nothing."""

from __future__ import annotations

import re

import pytest

from mta.runtime.console_webhooks import masked_url
from tests.support.accounts import SECRET, World, accounts_world, until


@pytest.fixture
async def world(tmp_path, monkeypatch):
    async with accounts_world(tmp_path, monkeypatch) as w:
        secrets = []
        for tenant, name in (("acme", "acme-hook"), ("beta", "beta-hook"), ("acme", "acme-off")):
            status, body = await w.api(w.keys[tenant], "POST", "/webhooks", json={
                "name": name, "endpoint": f"{w.rx.url}/{name}", "events": ["*"]})
            assert status == 200, body
            secrets.append(body["signing_secret"])
        status, _ = await w.api(w.keys["acme"], "PATCH", "/webhooks/acme-off",
                                json={"status": "disabled"})
        assert status == 200
        w.rx.status["beta-hook"] = 503
        w.secrets = secrets
        yield w


def _row(page: str, name: str) -> str:
    """The table row of endpoint `name`."""
    found = re.search(r'<tr id="webhook-(\d+)" data-name="' + re.escape(name) + r'">(.*?)</tr>',
                      page, re.S)
    assert found, name
    return found.group(0)


def _cell(row: str, what: str) -> str:
    found = re.search(r'id="webhook-\d+-' + what + r'">([^<]*)<', row)
    assert found, what
    return found.group(1).strip()


def _seqs(w: World, path: str) -> list[int]:
    return [p["seq"] for p in w.rx.at(path) if p.get("type") != "test"]


async def test_the_list_shows_owner_state_lag_and_errors(world):
    w = world
    assert await w.send(w.keys["acme"]) == 200
    assert await w.send(w.keys["beta"], "app@beta.test") == 200
    await until(lambda: _seqs(w, "acme-hook") and w.rx.at("beta-hook"))
    async with w.console() as c:
        status, page = await c.get("/webhooks")
        assert status == 200 and 'id="webhooks"' in page
        for secret in (*w.secrets, SECRET):
            assert secret not in page
        cfg, acme, beta, off = (_row(page, n) for n in ("cfg-hook", "acme-hook", "beta-hook",
                                                        "acme-off"))
        assert "config file" in cfg and ">acme<" in acme and ">beta<" in beta
        assert _cell(off, "state") == "disabled" and _cell(off, "lag") == "—"
        # beta's endpoint answers 503: it keeps its cursor, so it lags, with the error
        assert _cell(beta, "state") == "active" and int(_cell(beta, "lag")) >= 1
        assert "503" in beta and "failed in a row" in beta
        assert 'id="replay-' in acme and 'id="skip-' in acme and 'id="test-' in acme
        assert 'id="replay-' not in off                   # a disabled one cannot be replayed
        assert f"{w.rx.url}/acme-hook" in acme


async def test_send_test_and_replay_reach_the_receiver(world):
    w = world
    assert await w.send(w.keys["acme"]) == 200
    first = await until(lambda: _seqs(w, "acme-hook"))
    async with w.console() as c:
        status, _, location = await c.post("/webhooks/acme-hook/test", {})
        assert status == 303 and location == "/console/webhooks"
        tests = [p for p in w.rx.at("acme-hook") if p.get("type") == "test"]
        assert len(tests) == 1
        status, page = await c.get("/webhooks")
        assert "Test request to acme-hook: HTTP 204" in page
        # a failing endpoint's test: the notice says how it failed
        await c.post("/webhooks/beta-hook/test", {})
        status, page = await c.get("/webhooks")
        assert "Test request to beta-hook failed" in page and "503" in page
        # replay from a sequence number: the same events again
        count = len(_seqs(w, "acme-hook"))
        status, _, _ = await c.post("/webhooks/acme-hook/replay", {"from_seq": str(first[0])})
        assert status == 303
        await until(lambda: len(_seqs(w, "acme-hook")) >= 2 * count)
        assert _seqs(w, "acme-hook")[count:][:len(first)] == first
        status, page = await c.get("/webhooks")
        assert f"will resend from ledger event {first[0]}" in page
        # replay since a time (before everything): again
        count = len(_seqs(w, "acme-hook"))
        status, _, _ = await c.post("/webhooks/acme-hook/replay", {"since": "2000-01-01T00:00"})
        assert status == 303
        await until(lambda: len(_seqs(w, "acme-hook")) > count)
        # skip the backlog of the failing one: its lag drops to 0
        status, _, _ = await c.post("/webhooks/beta-hook/replay", {"from_seq": "end"})
        status, page = await c.get("/webhooks")
        assert "Webhook beta-hook skipped its backlog" in page
        assert _cell(_row(page, "beta-hook"), "lag") == "0"


async def test_a_tenant_sees_and_acts_on_its_own_only(world):
    w = world
    async with w.console(w.keys["acme"]) as c:
        status, page = await c.get("/webhooks")
        assert 'data-name="acme-hook"' in page and 'data-name="acme-off"' in page
        assert "beta-hook" not in page and "cfg-hook" not in page
        for name in ("beta-hook", "cfg-hook", "nope"):
            status, _, _ = await c.post(f"/webhooks/{name}/test", {})
            assert status == 404, name
            status, _, _ = await c.post(f"/webhooks/{name}/replay", {"from_seq": "1"})
            assert status == 404, name
        assert not w.rx.at("beta-hook") and not w.rx.at("cfg-hook")
        # its disabled endpoint: a test probes its URL, a replay is refused
        status, _, _ = await c.post("/webhooks/acme-off/test", {})
        assert status == 303 and [p["type"] for p in w.rx.at("acme-off")] == ["test"]
        status, page, _ = await c.post("/webhooks/acme-off/replay", {"from_seq": "1"})
        assert status == 409 and "disabled" in page
    async with w.console(w.keys["default"]) as c:     # the default tenant: the config's too
        status, page = await c.get("/webhooks")
        assert 'data-name="cfg-hook"' in page and "acme-hook" not in page
        status, _, _ = await c.post("/webhooks/cfg-hook/test", {})
        assert status == 303
        status, _, _ = await c.post("/webhooks/cfg-hook/replay", {"from_seq": "end"})
        assert status == 403


@pytest.mark.parametrize("data", [
    {"from_seq": "abc"}, {"from_seq": "-1"}, {"from_seq": "1e5"}, {"from_seq": "9" * 20},
    {"from_seq": "１２"}, {"from_seq": "1", "since": "2024-01-01"}, {},
    {"since": "yesterday"}, {"since": "2024-13-45"}, {"since": "9" * 14}, {"since": "-5"},
    {"since": "2024-01-01\x00"}, {"from_seq": "x" * 10000},
])
async def test_bad_replays_change_nothing(world, data):
    w = world
    before = await w.d.spool.ledger.webhook_state("acme-hook")
    async with w.console() as c:
        status, page, _ = await c.post("/webhooks/acme-hook/replay", data)
        assert status == 422, page
        assert "internal error" not in page
    assert await w.d.spool.ledger.webhook_state("acme-hook") == before


async def test_posts_without_csrf_do_nothing(world):
    w = world
    async with w.console() as c:
        status, _, _ = await c.post("/webhooks/acme-hook/test", {}, csrf=None)
        assert status == 403
        status, _, _ = await c.post("/webhooks/acme-hook/replay", {"from_seq": "end"},
                                    csrf=None)
        assert status == 403
        for path in ("/webhooks/%00/test", "/webhooks/" + "x" * 300 + "/test"):
            status, _, _ = await c.post(path, {})
            assert status == 404
    assert not [p for p in w.rx.at("acme-hook") if p.get("type") == "test"]


def test_masked_url():
    assert masked_url("https://u:pw@h.test/x?y=1") == "https://u:***@h.test/x?y=1"
    assert masked_url("https://h.test/a@b") == "https://h.test/a@b"
    assert masked_url("https://u@h.test/") == "https://u@h.test/"
    assert masked_url("http://:secret@h.test") == "http://:***@h.test"
