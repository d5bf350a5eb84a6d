"""The admin API's traffic shaping routes, their client and the `mta warmup` /
`mta shaping` / `mta queue summary` / `mta config check` commands (issue 15).

Over a fake backend (tests.test_admin_http's FakeBackend plus the three
shaping methods) served by the real aiohttp app: the answers' shapes, the
lift body checked before the backend sees it (422 naming `target`), 404
when a lift matches nothing, 501 without shaping, the OpenAPI document
(valid, and the answers match its schemas). Then the CLI against that fake,
and against a real daemon with two [[egress]] sources on 127.0.0.2 and
127.0.0.3 (warm-up day 1 cap 50 for the warming one, "warm" for the
other; the shipped provider table)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mta.admin.backend import ShapingBackend
from mta.admin.client import AdminClient, AdminError
from mta.admin.handlers import MAX_LIFT_TARGET, ROUTES
from mta.admin.http import AdminServer, create_app
from mta.admin.openapi import openapi_document
from mta.admin.openapi_shaping import LIMIT_KEYS
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.test_admin_cli import Cli, _config, _ok
from tests.test_admin_http import FakeBackend, _message

TOKEN = "cli-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = time.time()       # the CLI prints "in 59m" against the wall clock: near it
YAHOO = "mta5.am0.yahoodns.net,mta6.am0.yahoodns.net,mta7.am0.yahoodns.net"


def _action(scope: str, key: str, action: str, rule: str, until: float, reason: str) -> dict:
    return {"id": f"{scope}:{key}:{action}", "scope": scope, "key": key, "action": action,
            "rule": rule, "since": NOW - 60, "until": until, "reason": reason}


ACTIONS = [
    _action("site", YAHOO, "suspend", "yahoo: TS04 deferral", NOW + 3570,
            "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred"),
    _action("tenant", "acme@google", "suspend_tenant", "gmail: 4.7.28 rate limit on a "
            "sender domain", NOW + 7200, "421 4.7.28 DKIM domain rate limited"),
]
WARMUP = [
    {"source": "ip2", "address": "127.0.0.2", "pool": "default", "schedule": "50*1.5",
     "day": 1, "cap": 50, "used": 3, "allowed_now": 7, "warm": False},
    {"source": "ip3", "address": "127.0.0.3", "pool": "default", "schedule": None,
     "day": None, "cap": None, "used": None, "allowed_now": None, "warm": True},
]
TABLE = {"version": "2026-12-07.1", "default": {"tls": "opportunistic"},
         "providers": [{"name": "yahoo", "match": [".yahoodns.net"], "domains": ["yahoo.com"],
                        "site": {"connection_limit": 10, "max_deliveries_per_connection": 20},
                        "total": {}, "rules": [{"name": "yahoo: TS04 deferral",
                                                "match": r"\[(IP)?TSS?04\]",
                                                "action": "suspend", "duration": "2h"}]},
                       {"name": "microsoft", "match": [".olc.protection.outlook.com"],
                        "domains": [], "site": {"connection_limit": 5},
                        "total": {"connection_limit": 500}, "rules": []}],
         "sites": {"mx.example.net": {"max_message_rate": "100/m"}},
         "domains": {"solo.example": {"mx_rollup": False}}, "rules": []}


class ShapingFake(FakeBackend):
    """FakeBackend plus the ShapingBackend methods over lists; a summary row
    carries the actions that concern it, as the daemon's does."""

    def __init__(self) -> None:
        super().__init__()
        self.actions = [dict(a) for a in ACTIONS]

    async def shaping(self):
        return {"table": TABLE, "mx_rollup": True, "pools": {"default": ["ip2", "ip3"]},
                "actions": self.actions, "warmup": WARMUP}

    async def warmup(self):
        return WARMUP

    async def shaping_lift(self, target):
        self.calls.append(("shaping_lift", target))
        lifted = [a for a in self.actions if target in (a["id"], a["key"])]
        self.actions = [a for a in self.actions if a not in lifted]
        return lifted

    async def queue_summary(self):
        rows = await super().queue_summary()
        for r in rows:          # both rows show the tenant's action: printed once
            r["actions"] = self.actions[:1] if r["destination"] == "example.org" else []
            r["actions"] += [a for a in self.actions if a["scope"] == "tenant"]
        return rows


class NoShaping(FakeBackend):
    """A daemon without shaping: the methods exist and refuse."""

    async def shaping(self):
        raise NotImplementedError("this daemon has no traffic shaping")

    warmup = shaping

    async def shaping_lift(self, target):
        raise NotImplementedError     # no message: the route says it


@pytest.fixture
def backend():
    b = ShapingFake()
    b.add(_message(1, domain="example.org"))
    b.add(_message(2, domain="example.net"))
    return b


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


# ----------------------------------------------------------------- HTTP

async def test_routes_answer_shaping_warmup_and_lift(client, backend):
    assert isinstance(backend, ShapingBackend)
    data = await _call(client, "GET", "/v1/shaping")
    assert data == {"table": TABLE, "mx_rollup": True, "pools": {"default": ["ip2", "ip3"]},
                    "actions": ACTIONS, "warmup": WARMUP}
    assert await _call(client, "GET", "/v1/warmup") == {"sources": WARMUP}
    # by id: that action only; by key: every action on it; surrounding blanks go
    lifted = await _call(client, "POST", "/v1/shaping/lift", {"target": ACTIONS[1]["id"]})
    assert lifted == {"lifted": [ACTIONS[1]]}
    lifted = await _call(client, "POST", "/v1/shaping/lift", {"target": f" {YAHOO} "})
    assert lifted == {"lifted": [ACTIONS[0]]}
    assert [c for c in backend.calls if c[0] == "shaping_lift"] == \
        [("shaping_lift", ACTIONS[1]["id"]), ("shaping_lift", YAHOO)]
    # nothing left to lift: 404 saying what was asked
    err = (await _call(client, "POST", "/v1/shaping/lift", {"target": YAHOO},
                       status=404))["error"]
    assert err["code"] == "not_found"
    assert err["message"].startswith("target: no action in force matches") and YAHOO in \
        err["message"]
    assert (await _call(client, "GET", "/v1/shaping"))["actions"] == []
    resp = await client.get("/v1/shaping")              # no token: 401
    assert resp.status == 401


async def test_the_lift_body_is_checked_before_the_backend(client, backend):
    for body, starts in (({}, "target: is required"), ({"target": ""}, "target: is required"),
                         ({"target": "   "}, "target: is required"),
                         ({"target": 5}, "target: is required"),
                         ({"target": None}, "target: is required"),
                         ({"target": ["x"]}, "target: is required"),
                         ({"target": "x" * (MAX_LIFT_TARGET + 1)}, "target: is too long"),
                         ({"target": "a\x1bb"}, "target: contains control"),
                         ({"target": "a\r\nb"}, "target: contains control"),
                         ({"target": "a\u202eb"}, "target: contains control"),
                         ({"target": "x", "force": True}, "force: unknown key")):
        err = (await _call(client, "POST", "/v1/shaping/lift", body, status=422))["error"]
        assert err["code"] == "validation_error" and err["message"].startswith(starts), \
            (body, err)
    err = (await _call(client, "POST", "/v1/shaping/lift", "", status=422))["error"]
    assert err["message"].startswith("target: is required")        # no body at all
    for raw in ("[1]", "not json", '{"target": NaN}'):
        err = (await _call(client, "POST", "/v1/shaping/lift", raw, status=400))["error"]
        assert err["code"] == "invalid_body"
    assert not [c for c in backend.calls if c[0] == "shaping_lift"]
    # the longest target allowed reaches the backend (which matches nothing)
    await _call(client, "POST", "/v1/shaping/lift", {"target": "x" * MAX_LIFT_TARGET},
                status=404)
    assert backend.calls[-1] == ("shaping_lift", "x" * MAX_LIFT_TARGET)


@pytest.mark.parametrize("make", [FakeBackend, NoShaping])
async def test_without_shaping_every_route_is_501(make):
    async with TestClient(TestServer(create_app(make(), token=TOKEN))) as c:
        for method, path, body in (("GET", "/v1/shaping", None), ("GET", "/v1/warmup", None),
                                   ("POST", "/v1/shaping/lift", {"target": "x"})):
            err = (await _call(c, method, path, body, status=501))["error"]
            assert err["code"] == "not_implemented" and "shaping" in err["message"]
        # the body is still checked first
        await _call(c, "POST", "/v1/shaping/lift", {}, status=422)


# -------------------------------------------------------------- openapi

def _schema_check(doc: dict, name: str, value: object) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.validate(value, schema)


def test_openapi_describes_the_shaping_routes():
    validator = pytest.importorskip("openapi_spec_validator")
    doc = openapi_document()
    validator.validate(doc)
    for method, path in (("GET", "/v1/shaping"), ("POST", "/v1/shaping/lift"),
                         ("GET", "/v1/warmup")):
        assert (method, path) in ROUTES
        op = doc["paths"][path][method.lower()]
        assert {"200", "401", "500", "501"} <= set(op["responses"]), path
    lift = doc["paths"]["/v1/shaping/lift"]["post"]
    assert {"400", "404", "422"} <= set(lift["responses"])
    target = lift["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "target"]
    assert (target["minLength"], target["maxLength"]) == (1, MAX_LIFT_TARGET)
    summary = doc["components"]["schemas"]["DestinationSummary"]["properties"]
    assert summary["actions"]["items"] == {"$ref": "#/components/schemas/ShapingAction"}
    from mta.policy.shaping import LIMIT_KEYS as POLICY_LIMIT_KEYS
    assert LIMIT_KEYS == POLICY_LIMIT_KEYS


async def test_the_answers_match_the_document(client):
    doc = openapi_document()
    _schema_check(doc, "Shaping", await _call(client, "GET", "/v1/shaping"))
    for row in (await _call(client, "GET", "/v1/warmup"))["sources"]:
        _schema_check(doc, "WarmupSource", row)
    for row in (await _call(client, "GET", "/v1/queue/summary"))["destinations"]:
        _schema_check(doc, "DestinationSummary", row)
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError):    # the schemas do check
        _schema_check(doc, "ShapingAction", {**ACTIONS[0], "scope": "planet"})


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
    c = AdminClient(server.url, TOKEN)

    def work():
        shown, rows = c.shaping(), c.warmup()
        lifted = c.shaping_lift(YAHOO)
        with pytest.raises(AdminError) as e:
            c.shaping_lift(YAHOO)
        return shown, rows, lifted, e.value
    shown, rows, lifted, err = await asyncio.to_thread(work)
    assert shown["table"] == TABLE and shown["actions"] == ACTIONS
    assert rows == WARMUP and lifted == [ACTIONS[0]]
    assert err.status == 404 and YAHOO in err.message


# "in 59m50s" when the test runs at once; later in a long run, less (NOW is
# taken when the module is imported): any positive time left matches.
_UNTIL = r"until \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in (\d+h)?(\d+m)?(\d+s)?\)"


async def test_cli_shaping_show_and_lift(mta, backend):
    out = _ok(await mta("shaping", "show"))
    lines = out.splitlines()
    assert lines[0] == "shaping table 2026-12-07.1, mx_rollup on"
    assert lines[1] == "default: tls=opportunistic"
    header = next(i for i, line in enumerate(lines) if line.startswith("PROVIDER"))
    assert lines[header].split() == ["PROVIDER", "MATCH", "PER", "SITE", "PROVIDER", "TOTAL",
                                     "RULES"]
    assert lines[header + 1].split() == ["yahoo", ".yahoodns.net", "conn=10",
                                         "msgs/conn=20", "-", "1"]
    assert lines[header + 2].split() == ["microsoft", ".olc.protection.outlook.com",
                                         "conn=5", "conn=500", "0"]
    assert "site mx.example.net: rate=100/m" in lines
    assert "domain solo.example: - (own queue: mx_rollup off)" in lines
    assert "rules for every site: 0" in lines
    assert "pools: default (ip2, ip3)" in lines
    at = lines.index("Actions in force:")
    assert re.fullmatch(rf"  {re.escape(YAHOO)}  suspend  {_UNTIL}  rule \"yahoo: TS04 "
                        r"deferral\": 421 4\.7\.0 \[TSS04\] Messages from 127\.0\.0\.2 "
                        r"temporarily deferred", lines[at + 1]), lines[at + 1]
    assert lines[at + 2] == f"    id site:{YAHOO}:suspend"
    assert lines[at + 3].startswith("  acme@google  suspend_tenant  until ")
    assert json.loads(_ok(await mta("shaping", "show", "--json")))["actions"] == ACTIONS

    out = _ok(await mta("shaping", "lift", "tenant:acme@google:suspend_tenant"))
    assert out == ('lifted acme@google  suspend_tenant  (rule "gmail: 4.7.28 rate limit on a '
                   'sender domain", id tenant:acme@google:suspend_tenant)\n')
    assert json.loads(_ok(await mta("shaping", "lift", YAHOO, "--json"))) == [ACTIONS[0]]
    assert _ok(await mta("shaping", "show")).rstrip().endswith("no actions in force")
    r = await mta("shaping", "lift", YAHOO)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"mta: nothing lifted: no action in force matches {YAHOO!r} (give an "
                        "action id, a site, or tenant@provider: see `mta shaping show`)\n")
    r = await mta("shaping", "lift", "a\x1bb")
    assert r.returncode == 1 and r.stderr.startswith("mta: target: contains control")
    assert "Traceback" not in r.stderr


async def test_cli_queue_summary_lists_the_actions_once(mta, backend):
    out = _ok(await mta("queue", "summary"))
    lines = out.splitlines()
    at = lines.index("Shaping rules in force:")
    assert len(lines) == at + 3                       # each action once, though on 2 rows
    assert re.fullmatch(rf"  {re.escape(YAHOO)}  suspend  {_UNTIL}  rule \"yahoo: TS04 "
                        r"deferral\": 421 .*", lines[at + 1]), lines[at + 1]
    assert lines[at + 2].startswith("  acme@google  suspend_tenant  until ")
    rows = json.loads(_ok(await mta("queue", "summary", "--json")))
    assert rows[0]["actions"] and rows[0]["actions"][0]["id"] == ACTIONS[0]["id"]
    backend.actions = []
    assert "Shaping rules in force" not in _ok(await mta("queue", "summary"))


async def test_cli_warmup_status_table_and_json(mta):
    lines = _ok(await mta("warmup", "status")).splitlines()
    assert [line.split() for line in lines] == [
        ["SOURCE", "ADDRESS", "POOL", "DAY", "CAP", "USED", "NOW"],
        ["ip2", "127.0.0.2", "default", "1", "50", "3", "7"],
        ["ip3", "127.0.0.3", "default", "-", "warm", "-", "-"]]
    assert json.loads(_ok(await mta("warmup", "status", "--json"))) == WARMUP


async def test_cli_without_shaping_or_daemon_is_one_line(tmp_path):
    srv = AdminServer(SimpleNamespace(address="127.0.0.1:0", metrics_require_token=False),
                      NoShaping(), TOKEN)
    await srv.start()
    try:
        host, port = srv.sockname
        cli = Cli(tmp_path, _config(tmp_path, f"{host}:{port}"))
        for args in (("warmup", "status"), ("shaping", "show"), ("shaping", "lift", "x")):
            r = await cli(*args)
            assert r.returncode == 1 and r.stderr in (
                "mta: this daemon has no traffic shaping\n",
                "mta: this server has no traffic shaping\n"), (args, r.stderr)
    finally:
        await srv.stop()
    r = await Cli(tmp_path, _config(tmp_path, f"127.0.0.1:{free_port()}"))("warmup", "status")
    assert r.returncode == 1 and "is not reachable" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------- a real daemon

EGRESS = ('[[egress]]\nname = "ip2"\naddress = "127.0.0.2"\npool = "default"\n'
          'warmup = "50*1.5"\n\n[[egress]]\nname = "ip3"\naddress = "127.0.0.3"\n'
          'pool = "default"\n')


async def test_cli_against_a_daemon_with_two_sources(tmp_path):
    text = config_text(tmp_path / "state", free_port()) + EGRESS
    (tmp_path / "state").mkdir()
    config = tmp_path / "mta.toml"
    config.write_text(text)
    cli = Cli(tmp_path, config)
    async with running_daemon(text):
        rows = [line.split() for line in _ok(await cli("warmup", "status")).splitlines()]
        assert rows[0] == ["SOURCE", "ADDRESS", "POOL", "DAY", "CAP", "USED", "NOW"]
        # day 1 of "50*1.5": cap 50, spread over the (wall clock's) day
        assert rows[1][:6] == ["ip2", "127.0.0.2", "default", "1", "50", "0"], rows
        assert 3 <= int(rows[1][6]) <= 50, rows
        assert rows[2:] == [["ip3", "127.0.0.3", "default", "-", "warm", "-", "-"]]
        out = _ok(await cli("shaping", "show"))
        providers = [line.split()[0] for line in out.splitlines()
                     if line.split() and line.split()[0] in ("google", "yahoo", "microsoft")]
        assert providers == ["google", "yahoo", "microsoft"]
        assert "mx_rollup on" in out and "pools: default (ip2, ip3)" in out
        assert out.rstrip().endswith("no actions in force")
        data = json.loads(_ok(await cli("shaping", "show", "--json")))
        _schema_check(openapi_document(), "Shaping", data)
        assert [r["source"] for r in data["warmup"]] == ["ip2", "ip3"]
        r = await cli("shaping", "lift", "nothing.example")
        assert r.returncode == 1 and "nothing lifted" in r.stderr
        assert "Mail queue is empty" in _ok(await cli("queue", "summary"))


# --------------------------------------------------------- config check

async def test_config_check_reports_shaping_problems(tmp_path):
    cli = Cli(tmp_path, _config(tmp_path, "127.0.0.1:8025"))
    good = tmp_path / "good.toml"
    good.write_text(_config(tmp_path, "127.0.0.1:8025").read_text() + EGRESS)
    r = await cli("config", "check", config=good)
    assert r.returncode == 0, r.stderr

    bogus = tmp_path / "bogus.toml"
    bogus.write_text(good.read_text().replace('"50*1.5"', '"bogus"'))
    r = await cli("config", "check", config=bogus)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == f"configuration errors in {bogus}:"
    assert lines[1].startswith("  egress[0].warmup: warm-up 'bogus': write a list")

    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[provider.google]\nconection_limit = 3\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text() + f'\n[shaping]\nfile = "{shaping}"\n')
    r = await cli("config", "check", config=bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines()[1:2] == [        # (then the usual warnings)
        f"  shaping: {shaping}: provider.google.conection_limit: unknown key (expected one "
        "of match, domains, provider, automation, connection_limit, "
        "max_deliveries_per_connection, max_message_rate, max_connection_rate, tls, "
        "connect_timeout, command_timeout)"]
    assert "Traceback" not in r.stderr
