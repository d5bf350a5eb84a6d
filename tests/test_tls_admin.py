"""Operator tools for outbound TLS (issue 17): the admin routes /v1/tls,
/v1/tls/{domain}, /v1/tls/purge and `mta tls show|purge|list`.

Through a real daemon (in process, tests.support.mtahelpers.running_daemon)
whose `[dns]` is a real DNS server on 127.0.0.153 (tests/support/dnsserver.py)
and whose MTA-STS fetches go to a real HTTPS policy host on 127.0.0.1 with a
trustme CA (`[tls] ca_file`, `mta_sts_port`): a show fetches and caches the
policy (the policy host sees one request, the index keeps the row), the list
shows it, a purge drops it from memory and the table (the next show fetches
again), the override comes from `[tls] policy`, bad domains are 422 naming
`domain` before anything is looked up, and the CLI prints each answer (run
in process: `mta.cli.main.main`, the admin client in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from mta.admin.handlers import ROUTES, tls_domain
from mta.admin.http import create_app
from mta.admin.openapi import openapi_document
from mta.admin.openapi_tls import OVERRIDE_LEVELS
from mta.admin.params import ApiError
from mta.cli.main import main
from mta.config.tls import OVERRIDE_LEVELS as CONFIG_LEVELS
from mta.spool.mtasts_cache import SqliteStsCache
from tests.support.dnsserver import DnsServer
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.test_admin_http import FakeBackend

TOKEN = "test-admin-token-0123456789"           # config_text's [admin] token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmx: *.backup.sts.test\n" \
          "max_age: 604800\n"
TESTING = "version: STSv1\nmode: testing\nmx: mx.other.test\nmax_age: 86400\n"
STS_DOMAINS = ("sts.test", "other.test", "broken.test")     # each publishes a TXT record


class PolicyHost:
    """HTTPS on 127.0.0.1: `policies[domain]` for mta-sts.<domain>, else 404;
    `fetches` lists the Host of every request."""

    def __init__(self, policies: dict[str, str]):
        self.policies = policies
        self.fetches: list[str] = []

    def hits(self, domain: str) -> int:
        return self.fetches.count(f"mta-sts.{domain}")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].lower()
        self.fetches.append(host)
        body = self.policies.get(host.removeprefix("mta-sts."))
        if body is None or request.path != "/.well-known/mta-sts.txt":
            return web.Response(status=404, text="no policy here")
        return web.Response(text=body, content_type="text/plain")


@dataclass
class World:
    admin: str              # http://host:port of the daemon's admin API
    config: Path            # the daemon's config file (for the CLI)
    state: Path
    host: PolicyHost
    dns: DnsServer

    def cached(self, domain: str):
        return SqliteStsCache(self.state).get(domain)


@contextlib.asynccontextmanager
async def _policy_server(ca: trustme.CA, host: PolicyHost) -> AsyncIterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(f"mta-sts.{d}" for d in STS_DOMAINS)).configure_cert(ctx)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", host.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _zone() -> dict[str, dict[str, list]]:
    zone: dict[str, dict[str, list]] = {}
    for d in STS_DOMAINS:
        zone[f"_mta-sts.{d}"] = {"TXT": ["v=STSv1; id=20240101"]}
        zone[f"mta-sts.{d}"] = {"A": ["127.0.0.1"]}
    zone["plain.test"] = {"TXT": ["v=spf1 -all"]}
    return zone


@pytest.fixture
async def world(tmp_path) -> AsyncIterator[World]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # broken.test publishes a TXT record, but its policy host answers 404
    host = PolicyHost({"sts.test": ENFORCE, "other.test": TESTING})
    async with contextlib.AsyncExitStack() as stack:
        dns = await stack.enter_async_context(DnsServer(_zone()))
        port = await stack.enter_async_context(_policy_server(ca, host))
        state = tmp_path / "state"
        text = (config_text(state, free_port(), nameservers=[dns.nameserver])
                + f'[tls]\nca_file = "{ca_file}"\nmta_sts_port = {port}\n'
                + 'policy = { "override.test" = "encrypt", "sts.test" = "verify" }\n')
        config = tmp_path / "mta.toml"
        config.write_text(text)
        daemon = await stack.enter_async_context(running_daemon(text))
        yield World(admin=f"http://{daemon.cfg.admin.address}", config=config, state=state,
                    host=host, dns=dns)


async def _call(session: ClientSession, world: World, method: str, path: str,
                status: int = 200, **kw) -> dict:
    async with session.request(method, world.admin + path, headers=AUTH, **kw) as resp:
        body = await resp.json()
        assert resp.status == status, (resp.status, body)
        return body


def _schema_check(name: str, value: object) -> None:
    import jsonschema
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$ref": f"#/components/schemas/{name}",
              "components": openapi_document()["components"]}
    jsonschema.validate(value, schema)


# ----------------------------------------------------------------- the routes

async def test_show_fetches_and_caches_list_shows_it_purge_drops_it(world):
    async with ClientSession() as s:
        before = time.time()
        shown = await _call(s, world, "GET", "/v1/tls/STS.test.")
        sts = shown["mta_sts"]
        assert shown["domain"] == "sts.test" and shown["error"] is None
        assert shown["override"] == "verify"                # [tls] policy names it
        assert {k: sts[k] for k in ("id", "mode", "mx", "max_age")} == {
            "id": "20240101", "mode": "enforce", "mx": ["mx.sts.test", "*.backup.sts.test"],
            "max_age": 604800}
        assert before - 1 <= sts["fetched_at"] <= time.time() + 1
        assert sts["expires_at"] == sts["fetched_at"] + 604800
        _schema_check("TlsDomain", shown)
        assert world.host.hits("sts.test") == 1
        row = world.cached("sts.test")                      # durable: the index's table
        assert row is not None and row.policy_id == "20240101" and "enforce" in row.policy_text

        again = await _call(s, world, "GET", "/v1/tls/sts.test")
        assert again == shown and world.host.hits("sts.test") == 1     # the cache answered

        listed = await _call(s, world, "GET", "/v1/tls")
        assert listed == {"policies": [{"domain": "sts.test", "id": "20240101",
                                        "mode": "enforce", "expires_at": sts["expires_at"]}]}
        for p in listed["policies"]:
            _schema_check("StsCached", p)

        assert await _call(s, world, "POST", "/v1/tls/purge", json={"domain": "Sts.Test"}) \
            == {"domain": "sts.test", "purged": True}
        assert world.cached("sts.test") is None
        assert await _call(s, world, "GET", "/v1/tls") == {"policies": []}
        assert await _call(s, world, "POST", "/v1/tls/purge", json={"domain": "sts.test"}) \
            == {"domain": "sts.test", "purged": False}

        refetched = await _call(s, world, "GET", "/v1/tls/sts.test")
        assert world.host.hits("sts.test") == 2                 # memory was dropped too
        assert refetched["mta_sts"]["id"] == "20240101"
        assert refetched["mta_sts"]["fetched_at"] >= sts["fetched_at"]
        assert world.cached("sts.test") is not None


async def test_show_override_testing_mode_fetch_error_and_no_policy(world):
    async with ClientSession() as s:
        other = await _call(s, world, "GET", "/v1/tls/other.test")
        assert other["override"] is None and other["error"] is None
        assert other["mta_sts"]["mode"] == "testing"
        assert other["mta_sts"]["mx"] == ["mx.other.test"]

        broken = await _call(s, world, "GET", "/v1/tls/broken.test")
        assert broken["mta_sts"] is None and world.host.hits("broken.test") == 1
        assert broken["error"].startswith("sts-policy-fetch-error: ") and "404" in broken["error"]
        _schema_check("TlsDomain", broken)

        plain = await _call(s, world, "GET", "/v1/tls/mail.override.test")
        assert plain == {"domain": "mail.override.test", "override": "encrypt",
                         "mta_sts": None, "error": None}        # a parent's level applies
        assert ("_mta-sts.mail.override.test", "TXT") in world.dns.queries

        listed = await _call(s, world, "GET", "/v1/tls")
        assert [(p["domain"], p["mode"]) for p in listed["policies"]] == [
            ("other.test", "testing")]                          # a failed fetch caches nothing


async def test_bad_input_is_refused_before_any_lookup(world):
    async with ClientSession() as s:
        for raw in ("%5B127.0.0.1%5D", "192.0.2.1", "a..b", "bad_label.test", "-x.test",
                    "x" * 64 + ".test", "%1B.test"):
            body = await _call(s, world, "GET", f"/v1/tls/{raw}", 422)
            assert body["error"]["code"] == "validation_error", raw
            assert body["error"]["message"].startswith("domain: "), (raw, body)
        for payload, field in (({}, "domain"), ({"domain": 5}, "domain"),
                               ({"domain": ""}, "domain"), ({"domain": "[::1]"}, "domain"),
                               ({"domain": "a.test", "force": True}, "force")):
            body = await _call(s, world, "POST", "/v1/tls/purge", 422, json=payload)
            assert body["error"]["message"].startswith(f"{field}: "), (payload, body)
        body = await _call(s, world, "POST", "/v1/tls/purge", 400, data=b"[1]")
        assert body["error"]["code"] == "invalid_body"
        body = await _call(s, world, "GET", "/v1/tls/sts.test?fresh=1", 400)
        assert "fresh" in body["error"]["message"]
        async with s.get(world.admin + "/v1/tls") as resp:      # no token
            assert resp.status == 401
    names = {name for name, _ in world.dns.queries}
    assert not any(n.startswith("_mta-sts.") for n in names), names
    assert world.host.fetches == []


async def test_a_backend_without_tls_answers_501():
    async with TestClient(TestServer(create_app(FakeBackend(), token=TOKEN))) as c:
        for method, path, kw in (("GET", "/v1/tls", {}), ("GET", "/v1/tls/a.test", {}),
                                 ("POST", "/v1/tls/purge", {"json": {"domain": "a.test"}})):
            resp = await c.request(method, path, headers=AUTH, **kw)
            body = await resp.json()
            assert resp.status == 501, (path, body)
            assert body["error"]["message"] == "this server has no outbound TLS policy"


def test_tls_domain_normalises_names_and_refuses_the_rest():
    assert tls_domain("Example.COM.") == "example.com"
    assert tls_domain("bücher.example") == "xn--bcher-kva.example"
    for bad in (None, 3, "", "  ", "[192.0.2.1]", "2001:db8::1", "10.0.0.1", "a b.test",
                "a\x00.test", "x." * 200):
        with pytest.raises(ApiError) as e:
            tls_domain(bad)
        assert (e.value.status, e.value.field) == (422, "domain"), bad


def test_openapi_describes_the_tls_routes():
    validator = pytest.importorskip("openapi_spec_validator")
    doc = openapi_document()
    validator.validate(doc)
    for method, path in (("GET", "/v1/tls"), ("GET", "/v1/tls/{domain}"),
                         ("POST", "/v1/tls/purge")):
        assert (method, path) in ROUTES
        assert {"200", "401", "500", "501"} <= set(doc["paths"][path][method.lower()]
                                                   ["responses"]), path
    assert {"400", "422"} <= set(doc["paths"]["/v1/tls/purge"]["post"]["responses"])
    assert OVERRIDE_LEVELS == CONFIG_LEVELS


# -------------------------------------------------------------------- the CLI

async def _mta(capsys, *args: str) -> tuple[int, str, str]:
    """`mta ARGS` in process (the daemon serves on this loop: a thread)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    first, _, rest = err.partition("\n")
    assert first.startswith("mta: config ")            # every command says which config
    return code, out, rest


async def test_cli_show_list_purge(world, capsys):
    cfg = str(world.config)
    code, out, err = await _mta(capsys, "tls", "show", "sts.test", "--config", cfg)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == ["domain    sts.test", "override  verify ([tls] policy)",
                         "mta-sts   mode enforce, id 20240101, max_age 604800 (7d)"]
    assert lines[3] == "  mx      mx.sts.test, *.backup.sts.test"
    assert lines[4].startswith("  fetched 20") and lines[4].endswith(("(now)", "s ago)"))
    assert lines[5].startswith("  expires 20")
    assert "(in 6d23h)" in lines[5] or "(in 7d)" in lines[5], lines[5]
    assert len(lines) == 6 and world.host.hits("sts.test") == 1

    code, out, _ = await _mta(capsys, "tls", "show", "broken.test", "--json", "--config", cfg)
    data = json.loads(out)
    assert code == 0 and data["mta_sts"] is None and data["override"] is None
    assert data["error"].startswith("sts-policy-fetch-error")
    code, out, _ = await _mta(capsys, "tls", "show", "broken.test", "--config", cfg)
    assert out.splitlines()[1:3] == [
        "override  - (none: DANE, then MTA-STS, else opportunistic TLS)", "mta-sts   none"]
    assert out.splitlines()[3].startswith("error     sts-policy-fetch-error: ")

    code, out, _ = await _mta(capsys, "tls", "list", "--config", cfg)
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows[0] == ["DOMAIN", "ID", "MODE", "EXPIRES"]
    assert rows[1][:3] == ["sts.test", "20240101", "enforce"] and len(rows) == 2
    code, out, _ = await _mta(capsys, "tls", "list", "--json", "--config", cfg)
    assert [p["domain"] for p in json.loads(out)] == ["sts.test"]

    code, out, _ = await _mta(capsys, "tls", "purge", "sts.test", "--config", cfg)
    assert (code, out) == (0, "purged the cached MTA-STS policy of sts.test: the next "
                              "delivery fetches it again\n")
    assert world.cached("sts.test") is None
    code, out, _ = await _mta(capsys, "tls", "purge", "sts.test", "--json", "--config", cfg)
    assert json.loads(out) == {"domain": "sts.test", "purged": False}
    code, out, _ = await _mta(capsys, "tls", "purge", "sts.test", "--config", cfg)
    assert out == "no MTA-STS policy cached for sts.test (nothing to purge)\n"
    code, out, _ = await _mta(capsys, "tls", "list", "--config", cfg)
    assert out == "no cached MTA-STS policies\n"
    await _mta(capsys, "tls", "show", "sts.test", "--config", cfg)
    assert world.host.hits("sts.test") == 2                    # fetched again after the purge


async def test_cli_errors_are_one_line(world, capsys, tmp_path):
    cfg = str(world.config)
    for args in (("show", "[127.0.0.1]"), ("purge", "not a domain")):
        code, out, err = await _mta(capsys, "tls", *args, "--config", cfg)
        assert code == 1 and out == "" and err.count("\n") == 1, (args, err)
        assert err.startswith("mta: domain: ") and "is not a domain name" in err
    down = tmp_path / "down.toml"
    down.write_text(world.config.read_text().replace(
        world.admin.removeprefix("http://"), f"127.0.0.1:{free_port()}"))
    code, out, err = await _mta(capsys, "tls", "list", "--config", str(down))
    assert code == 1 and "is not reachable" in err and err.count("\n") == 1
    assert "Traceback" not in err
