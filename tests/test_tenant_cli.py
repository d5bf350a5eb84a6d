"""`mta tenant …` and /v1/tenants end to end (issue 14): the CLI as a real
process, talking to the admin API of a real daemon (its TenantService over
the tenant store in the daemon's state directory), and the store read back
directly as another process would."""

from __future__ import annotations

import asyncio
import json

import pytest

from mta.admin.client import AdminClient, AdminError
from mta.spool.tenants import SqliteTenants
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.test_admin_cli import Cli, _ok

TOKEN = "test-admin-token-0123456789"


@pytest.fixture
async def world(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    text = config_text(state, free_port())
    path = tmp_path / "mta.toml"
    path.write_text(text)
    async with running_daemon(text) as d:
        yield d, Cli(tmp_path, path), SqliteTenants(d.cfg.server.state_dir)


async def test_add_list_show_pause_resume_through_the_daemon(world):
    d, mta, store = world
    rows = json.loads(_ok(await mta("tenant", "list", "--json")))
    assert [t["name"] for t in rows] == ["default"]
    assert rows[0]["status"] == "active" and rows[0]["auto_status"] == "ok"
    out = _ok(await mta("tenant", "add", "acme", "--per-hour", "100", "--rate", "5",
                        "--policy", "strict", "--bounce-warn", "0.02"))
    assert out.startswith("tenant acme added")
    row = store.get("acme")                      # durable, readable by another process
    assert row is not None and row.limits == {"per_hour": 100, "rate": 5.0}
    assert row.policy == {"level": "strict", "bounce_warn": 0.02}
    lines = _ok(await mta("tenant", "list")).splitlines()
    assert [ln.split()[0] for ln in lines[1:-1]] == ["acme", "default"]
    assert "100/h 5/s" in lines[1] and lines[-1] == "-- 2 tenants"
    shown = json.loads(_ok(await mta("tenant", "show", "acme", "--json")))
    assert (shown["name"], shown["limits"], shown["policy"]["level"]) == \
        ("acme", {"per_hour": 100, "rate": 5.0}, "strict")
    out = _ok(await mta("tenant", "show", "acme"))
    assert "limits:     100/h 5/s" in out and "policy:     strict (+1 set)" in out
    out = _ok(await mta("tenant", "pause", "acme", "--reason", "unpaid invoice"))
    assert out.strip() == "tenant acme paused (status paused, auto ok)"
    assert store.get("acme").status == "paused" and not store.get("acme").sending
    assert "status:     paused (unpaid invoice)" in _ok(await mta("tenant", "show", "acme"))
    out = _ok(await mta("tenant", "resume", "acme", "--reason", "paid"))
    assert out.strip() == "tenant acme resumed (status active, auto ok)"
    assert store.get("acme").sending


async def test_refusals_through_the_daemon(world):
    d, mta, store = world
    _ok(await mta("tenant", "add", "acme"))
    for args, wanted in ((("tenant", "add", "acme"), "exists"),
                         (("tenant", "add", "default"), "exists always"),
                         (("tenant", "show", "ghost"), "no tenant named 'ghost'"),
                         (("tenant", "set", "ghost", "--per-day", "5"), "ghost"),
                         (("tenant", "add", "bolt", "--bounce-warn", "0.5",
                           "--bounce-pause", "0.1"), "policy.bounce_pause"),
                         (("tenant", "add", "bolt", "--rate", "0"), "limits.rate"),
                         (("tenant", "pause", "ghost"), "ghost")):
        r = await mta(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("mta: ") and r.stderr.count("\n") == 1, r.stderr
        assert wanted in r.stderr, (args, r.stderr)
    assert [t.name for t in store.rows()] == ["acme", "default"]


async def test_the_admin_api_answers_tenants(world):
    d, mta, store = world
    host, port = d.admin.sockname
    c = AdminClient(f"http://{host}:{port}", TOKEN)

    def work():
        added = c.tenant_add("acme", limits={"per_day": 1000}, policy={"level": "none"})
        with pytest.raises(AdminError) as conflict:
            c.tenant_add("acme")
        with pytest.raises(AdminError) as invalid:
            c.tenant_add("bolt", limits={"per_week": 5})
        paused = c.tenant_pause("acme", "maintenance")
        with pytest.raises(AdminError) as no_reason:
            c.tenant_resume("acme", "")
        return added, conflict.value, invalid.value, paused, no_reason.value, c.tenants()
    added, conflict, invalid, paused, no_reason, listed = await asyncio.to_thread(work)
    assert (added["name"], added["limits"], added["policy"]) == \
        ("acme", {"per_day": 1000}, {"level": "none"})
    assert (conflict.status, conflict.code) == (409, "conflict")
    assert (invalid.status, invalid.code) == (422, "validation_error")
    assert invalid.message.startswith("limits.per_week: unknown key")
    assert (paused["status"], paused["status_reason"]) == ("paused", "maintenance")
    assert no_reason.status == 422 and no_reason.message.startswith("reason:")
    assert [t["name"] for t in listed] == ["acme", "default"]
    assert store.get("bolt") is None


async def test_remove(world):
    d, mta, store = world
    _ok(await mta("tenant", "add", "acme"))
    store.own("domain", "acme.example", "acme", 0.0)
    r = await mta("tenant", "remove", "acme")
    assert r.returncode == 1 and "acme.example" in r.stderr, r.stderr
    store.disown("domain", "acme.example")
    r = await mta("tenant", "remove", "default")
    assert r.returncode == 1 and "cannot be removed" in r.stderr, r.stderr
    assert _ok(await mta("tenant", "remove", "acme")).strip() == "tenant acme removed"
    assert store.get("acme") is None
    r = await mta("tenant", "remove", "acme")
    assert r.returncode == 1 and "no tenant named 'acme'" in r.stderr, r.stderr


async def test_set_changes_only_what_is_given(world):
    d, mta, store = world
    _ok(await mta("tenant", "add", "acme", "--per-hour", "100", "--per-day", "1000",
                  "--bounce-warn", "0.02", "--window", "500"))
    _ok(await mta("tenant", "set", "acme", "--per-day", "5000", "--complaint-warn", "0.002"))
    row = store.get("acme")
    assert row.limits == {"per_hour": 100, "per_day": 5000}
    assert row.policy == {"bounce_warn": 0.02, "window": 500, "complaint_warn": 0.002}
    _ok(await mta("tenant", "set", "acme", "--per-hour", "none", "--window", "none"))
    row = store.get("acme")
    assert row.limits == {"per_day": 5000}
    assert row.policy == {"bounce_warn": 0.02, "complaint_warn": 0.002}
