"""The admin API's tenant routes and `mta tenant …` (issue 14), over a
backend built on the real tenant store (SQLite in tmp_path), served by a
real AdminServer on loopback. The daemon's TenantService end to end is
tests/test_tenant_cli.py; here: what the HTTP layer validates (422 naming
the field), how store refusals map (404/409/422, the message starting with
the field), the admin API's error shape kept, 501 without
tenants, the client, and the CLI's options, table, --json and one-line
errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mta.admin import params
from mta.admin.backend import TenantBackend
from mta.admin.client import AdminClient, AdminError
from mta.admin.http import AdminServer, create_app
from mta.admin.params import ApiError
from mta.spool.tenants import SqliteTenants, TenantError
from tests.test_admin_cli import Cli, _config, _ok
from tests.test_admin_http import FakeBackend

TOKEN = "cli-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_700_000_000.0


class StoreTenants(FakeBackend):
    """FakeBackend plus the TenantBackend methods over a real SqliteTenants;
    update merges (keys given replace, null clears), as the contract says."""

    def __init__(self, state_dir):
        super().__init__()
        self.store = SqliteTenants(state_dir)
        self.active: set[str] = set()

    def _json(self, row) -> dict:
        return {"name": row.name, "status": row.status, "status_reason": row.status_reason,
                "auto_status": row.auto_status, "auto_reason": row.auto_reason,
                "sending": row.sending, "limits": row.limits, "policy": row.policy,
                "created": row.created}

    def _get(self, name):
        row = self.store.get(name)
        if row is None:
            raise TenantError(404, f"no tenant named {name!r}", "name")
        return row

    async def tenants(self):
        return [self._json(r) for r in self.store.rows()]

    async def tenant(self, name):
        row = self.store.get(name)
        return None if row is None else self._json(row)

    async def tenant_add(self, name, limits, policy):
        self.calls.append(("tenant_add", dict(name=name, limits=limits, policy=policy)))
        return self._json(self.store.add(name, limits=limits, policy=policy, now=T0))

    async def tenant_update(self, name, limits, policy):
        self.calls.append(("tenant_update", dict(name=name, limits=limits, policy=policy)))
        row = self._get(name)

        def merged(old, new):
            if new is None:
                return None
            return {k: v for k, v in {**old, **new}.items() if v is not None}
        return self._json(self.store.update(name, limits=merged(row.limits, limits),
                                            policy=merged(row.policy, policy), now=T0 + 1))

    async def tenant_remove(self, name):
        self.store.remove(name, active_credentials=self.active)

    async def tenant_pause(self, name, reason):
        return self._json(self.store.set_status(name, "paused", reason, T0 + 2))

    async def tenant_resume(self, name, reason):
        self.store.set_status(name, "active", reason, T0 + 3)
        return self._json(self.store.set_auto(name, "ok", "", T0 + 3))


@pytest.fixture
def backend(tmp_path):
    return StoreTenants(tmp_path / "tenants")


@pytest.fixture
async def client(backend):
    async with TestClient(TestServer(create_app(backend, token=TOKEN))) as c:
        yield c


async def _call(client, method, path, body=None, status=200):
    kwargs = {"headers": AUTH}
    if body is not None:
        kwargs["data"] = body if isinstance(body, (str, bytes)) else json.dumps(body)
    resp = await client.request(method, path, **kwargs)
    data = await resp.json()
    assert resp.status == status, (resp.status, data)
    if status >= 400:                  # the admin API's one error shape
        assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}, data
    return data


# --------------------------------------------------------------- params

def _raises(fn, *args, field, status=422, **kwargs):
    with pytest.raises(ApiError) as e:
        fn(*args, **kwargs)
    assert (e.value.status, e.value.field) == (status, field), e.value.message
    if field:
        assert e.value.message.startswith(field)
    return e.value


def test_limits_shapes_and_bounds():
    assert params.tenant_limits({"per_hour": 10, "per_day": None, "rate": 2.5, "burst": 3}) \
        == {"per_hour": 10, "per_day": None, "rate": 2.5, "burst": 3}
    assert params.tenant_limits({"rate": 2}) == {"rate": 2}
    assert params.tenant_limits({}) == {}
    for bad in ({"per_hour": 0}, {"per_hour": -1}, {"per_hour": 1.5}, {"per_hour": "5"},
                {"per_hour": True}, {"per_hour": 2 ** 64}):
        _raises(params.tenant_limits, bad, field="limits.per_hour")
    for bad in (0, -1, "1", float("inf"), 1e400, False):
        _raises(params.tenant_limits, {"rate": bad}, field="limits.rate")
    _raises(params.tenant_limits, {"burst": 0}, field="limits.burst")
    e = _raises(params.tenant_limits, {"per_minute": 5}, field="limits.per_minute")
    assert "unknown key" in e.message and "per_hour" in e.message
    _raises(params.tenant_limits, [1], field="limits")


def test_policy_shapes_and_bounds():
    good = {"level": "strict", "bounce_warn": 0.05, "bounce_pause": 0.1,
            "complaint_warn": 0.001, "complaint_pause": 1, "window": 2000,
            "window_seconds": 86400, "min_volume": 0}
    assert params.tenant_policy(good) == good
    assert params.tenant_policy({"level": None}) == {"level": None}
    _raises(params.tenant_policy, {"level": "lenient"}, field="policy.level")
    for key in ("bounce_warn", "bounce_pause", "complaint_warn", "complaint_pause"):
        for bad in (0, -0.1, 1.01, "0.5", True):
            _raises(params.tenant_policy, {key: bad}, field=f"policy.{key}")
    e = _raises(params.tenant_policy, {"bounce_warn": 0.2, "bounce_pause": 0.1},
                field="policy.bounce_pause")
    assert "bounce_warn" in e.message
    _raises(params.tenant_policy, {"complaint_warn": 0.5, "complaint_pause": 0.1},
            field="policy.complaint_pause")
    _raises(params.tenant_policy, {"window": 0}, field="policy.window")
    _raises(params.tenant_policy, {"window": 10 ** 7}, field="policy.window")
    _raises(params.tenant_policy, {"window_seconds": 0}, field="policy.window_seconds")
    _raises(params.tenant_policy, {"min_volume": -1}, field="policy.min_volume")
    _raises(params.tenant_policy, {"window": 10, "min_volume": 11}, field="policy.min_volume")
    _raises(params.tenant_policy, {"bounce": 0.1}, field="policy.bounce")


def test_bodies_of_add_update_and_reasons():
    assert params.tenant_add({"name": "acme", "limits": {"per_hour": 5, "rate": None}}) == \
        ("acme", {"per_hour": 5}, {})                 # null on create: not set
    _raises(params.tenant_add, {}, field="name")
    _raises(params.tenant_add, {"name": 7}, field="name")
    _raises(params.tenant_add, {"name": "Acme"}, field="name")
    _raises(params.tenant_add, {"name": "a" * 64}, field="name")
    _raises(params.tenant_add, {"name": "acme", "quota": {}}, field="quota")
    _raises(params.tenant_add, {"name": "acme", "limits": "lots"}, field="limits")
    assert params.tenant_update({"limits": {"per_hour": None}}) == ({"per_hour": None}, None)
    assert params.tenant_update({"policy": {"level": "none"}}) == (None, {"level": "none"})
    _raises(params.tenant_update, {}, field=None)
    _raises(params.tenant_update, {"name": "x"}, field="name")
    assert params.tenant_reason({}, required=False) == ""
    assert params.tenant_reason({"reason": " unpaid "}, required=False) == "unpaid"
    for bad in ({}, {"reason": ""}, {"reason": "   "}, {"reason": 5}):
        _raises(params.tenant_reason, bad, required=True, field="reason")
    assert params.tenant_reason({"reason": "x" * 500}, required=True) == "x" * 500
    _raises(params.tenant_reason, {"reason": "x" * 501}, required=True, field="reason")
    _raises(params.tenant_reason, {"reason": "a\x1bb"}, required=True, field="reason")
    _raises(params.tenant_reason, {"why": "x"}, required=False, field="why")


# ----------------------------------------------------------------- HTTP

async def test_routes_create_read_update_pause_remove(client, backend):
    assert isinstance(backend, TenantBackend)
    data = await _call(client, "GET", "/v1/tenants")
    assert [t["name"] for t in data["tenants"]] == ["default"]
    t = await _call(client, "POST", "/v1/tenants", {"name": "acme", "limits": {
        "per_hour": 100, "rate": 5}, "policy": {"level": "strict"}})
    assert (t["name"], t["limits"], t["policy"]) == \
        ("acme", {"per_hour": 100, "rate": 5}, {"level": "strict"})
    assert backend.calls[-1] == ("tenant_add", {"name": "acme", "limits": {
        "per_hour": 100, "rate": 5}, "policy": {"level": "strict"}})
    assert (await _call(client, "GET", "/v1/tenants/acme"))["limits"]["per_hour"] == 100
    t = await _call(client, "PATCH", "/v1/tenants/acme",
                    {"limits": {"per_hour": None, "per_day": 9}})
    assert t["limits"] == {"rate": 5, "per_day": 9} and t["policy"] == {"level": "strict"}
    assert backend.calls[-1][1]["policy"] is None
    t = await _call(client, "POST", "/v1/tenants/acme/pause", {"reason": "unpaid"})
    assert (t["status"], t["status_reason"], t["sending"]) == ("paused", "unpaid", False)
    t = await _call(client, "POST", "/v1/tenants/acme/pause", "")     # no body: no reason
    assert t["status"] == "paused"
    t = await _call(client, "POST", "/v1/tenants/acme/resume", {"reason": "paid"})
    assert t["status"] == "active" and t["sending"]
    assert await _call(client, "DELETE", "/v1/tenants/acme") == {"name": "acme",
                                                                 "deleted": True}
    assert backend.store.get("acme") is None


async def test_refusals_carry_status_code_and_field(client, backend):
    await _call(client, "POST", "/v1/tenants", {"name": "acme"})
    err = (await _call(client, "POST", "/v1/tenants", {"name": "acme"}, status=409))["error"]
    assert err == {"code": "conflict", "message": "name: a tenant named 'acme' exists"}
    err = (await _call(client, "POST", "/v1/tenants",
                       {"name": "bolt", "limits": {"per_hour": 0}}, status=422))["error"]
    assert err["code"] == "validation_error"
    assert err["message"].startswith("limits.per_hour: must be a whole number from 1")
    assert backend.store.get("bolt") is None           # refused before the backend
    err = (await _call(client, "POST", "/v1/tenants", {"name": "Bolt"}, status=422))["error"]
    assert err["message"].startswith("name: bad tenant name 'Bolt'")
    err = (await _call(client, "GET", "/v1/tenants/ghost", status=404))["error"]
    assert err == {"code": "not_found", "message": "name: no tenant named 'ghost'"}
    err = (await _call(client, "PATCH", "/v1/tenants/ghost", {"limits": {}},
                       status=404))["error"]
    assert "ghost" in err["message"]
    err = (await _call(client, "GET", "/v1/tenants/Not.A.Name", status=400))["error"]
    assert err["code"] == "invalid_parameter" and err["message"].startswith("name ")
    err = (await _call(client, "POST", "/v1/tenants", "[1]", status=400))["error"]
    assert err["code"] == "invalid_body"
    err = (await _call(client, "DELETE", "/v1/tenants/default", status=409))["error"]
    assert "cannot be removed" in err["message"]
    backend.store.own("domain", "acme.example", "acme", T0)
    err = (await _call(client, "DELETE", "/v1/tenants/acme", status=409))["error"]
    assert "acme.example" in err["message"]
    err = (await _call(client, "POST", "/v1/tenants/acme/resume", {}, status=422))["error"]
    assert err["message"].startswith("reason: is required")
    err = (await _call(client, "PATCH", "/v1/tenants/acme", {}, status=422))["error"]
    assert err["code"] == "validation_error" and err["message"].startswith("nothing to change")


async def test_a_backend_without_tenants_answers_501():
    app = create_app(FakeBackend(), token=TOKEN)
    async with TestClient(TestServer(app)) as c:
        for method, path, body in (("GET", "/v1/tenants", None),
                                   ("POST", "/v1/tenants", {"name": "acme"}),
                                   ("GET", "/v1/tenants/acme", None),
                                   ("POST", "/v1/tenants/acme/resume", {"reason": "x"})):
            err = (await _call(c, method, path, body, status=501))["error"]
            assert err["code"] == "not_implemented"
        resp = await c.get("/v1/tenants")                 # no token: 401 first
        assert resp.status == 401


# ------------------------------------------------------------ client, CLI

@pytest.fixture
async def server(backend):
    srv = AdminServer(SimpleNamespace(address="127.0.0.1:0", metrics_require_token=False),
                      backend, TOKEN)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
def mta(tmp_path, server):
    host, port = server.sockname
    return Cli(tmp_path, _config(tmp_path, f"{host}:{port}"))


async def test_client_methods(server, backend):
    import asyncio
    c = AdminClient(server.url, TOKEN)

    def work():
        c.tenant_add("acme", limits={"per_day": 5})
        c.tenant_update("acme", policy={"level": "none"})
        c.tenant_pause("acme")
        c.tenant_resume("acme", "ok now")
        names = [t["name"] for t in c.tenants()]
        shown = c.tenant("acme")
        with pytest.raises(AdminError) as e:
            c.tenant("ghost")
        c.tenant_remove("acme")
        return names, shown, e.value
    names, shown, err = await asyncio.to_thread(work)
    assert names == ["acme", "default"]
    assert (shown["limits"], shown["policy"], shown["status"]) == \
        ({"per_day": 5}, {"level": "none"}, "active")
    assert err.status == 404 and "ghost" in err.message
    assert backend.store.get("acme") is None


async def test_cli_add_list_show_set_pause_resume_remove(mta, backend):
    out = _ok(await mta("tenant", "add", "acme", "--per-hour", "100", "--rate", "2.5",
                        "--burst", "5", "--policy", "strict", "--bounce-warn", "0.02",
                        "--window-seconds", "7d"))
    assert out.startswith("tenant acme added")
    row = backend.store.get("acme")
    assert row.limits == {"per_hour": 100, "rate": 2.5, "burst": 5}
    assert row.policy == {"level": "strict", "bounce_warn": 0.02, "window_seconds": 604800}
    out = _ok(await mta("tenant", "list"))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AUTO", "LIMITS", "POLICY"]
    assert lines[1].split()[:3] == ["acme", "active", "ok"]
    assert "100/h 2.5/s burst 5" in lines[1] and "strict (+2 set)" in lines[1]
    assert lines[2].split()[:3] == ["default", "active", "ok"] and "unlimited" in lines[2]
    assert lines[-1] == "-- 2 tenants"
    rows = json.loads(_ok(await mta("tenant", "list", "--json")))
    assert [t["name"] for t in rows] == ["acme", "default"]
    out = _ok(await mta("tenant", "set", "acme", "--per-hour", "none", "--per-day", "1000",
                        "--policy", "default"))
    row = backend.store.get("acme")
    assert row.limits == {"per_day": 1000, "rate": 2.5, "burst": 5}
    assert row.policy == {"bounce_warn": 0.02, "window_seconds": 604800}
    assert backend.calls[-1][1]["limits"] == {"per_hour": None, "per_day": 1000}
    out = _ok(await mta("tenant", "show", "acme"))
    assert "limits:     1000/d 2.5/s burst 5" in out and "bounce_warn: 0.02" in out
    assert "created:    2023-11-14 22:13:20Z" in out and "sending:    yes" in out
    out = _ok(await mta("tenant", "pause", "acme", "--reason", "unpaid invoice"))
    assert out.strip() == "tenant acme paused (status paused, auto ok)"
    assert "paused (unpaid invoice)" in _ok(await mta("tenant", "show", "acme"))
    shown = json.loads(_ok(await mta("tenant", "resume", "acme", "--reason", "paid",
                                     "--json")))
    assert shown["status"] == "active"
    assert _ok(await mta("tenant", "remove", "acme")).strip() == "tenant acme removed"
    assert backend.store.get("acme") is None


async def test_cli_errors_are_one_line_and_exit_1(mta, backend):
    for args, wanted in ((("tenant", "show", "ghost"), "no tenant named 'ghost'"),
                         (("tenant", "add", "Bad"), "name:"),
                         (("tenant", "add", "acme", "--per-hour", "0"), "limits.per_hour"),
                         (("tenant", "set", "acme"), "nothing to change"),
                         (("tenant", "remove", "default"), "cannot be removed")):
        r = await mta(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("mta: ")
        assert wanted in r.stderr, (args, r.stderr)
        assert r.stdout == ""
    r = await mta("tenant", "add", "acme", "--per-hour", "lots")
    assert r.returncode == 2 and "'lots' is not a whole number" in r.stderr
    r = await mta("tenant", "resume", "acme")             # --reason is required
    assert r.returncode == 2
    r = await mta("tenant", "add", "acme", "--policy", "lenient")
    assert r.returncode == 2
    assert backend.store.get("acme") is None
