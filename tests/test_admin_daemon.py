"""The admin API of the real daemon against hostile and mistaken input (issue
10): every route of /v1/openapi.json swept with hostile path, query, body and
header values (item 6: no 5xx, no traceback, no raw control byte in the log,
nothing junk saved); destinations of routed domains (item 16, API and CLI);
/readyz and the spool's free disk space (item 4), through the free-space seam
and for real (statvfs of the test's filesystem).

Requests go byte for byte over loopback sockets (tests.test_admin_http.raw_http)
so no client library repairs the hostile values on the way."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest

from mta.admin.inputs import parse_destination
from mta.runtime.admin import DEFAULT_MIN_FREE_SPACE, filesystem_free_bytes
from mta.server.credentials import CredentialStore
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_admin_http import raw_http

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-admin-token-0123456789"
AUTH = b"Authorization: Bearer " + TOKEN.encode()


@pytest.fixture
async def world(tmp_path):
    async with Sink() as sink:
        port = free_port()
        text = config_text(tmp_path / "state", port, retry="1h",
                           routes={"routed.test": f"127.0.0.1:{sink.address[1]}"})
        (tmp_path / "state").mkdir()
        CredentialStore(tmp_path / "state" / "credentials.json").add("app", "app-password-1")
        (tmp_path / "mta.toml").write_text(text)
        async with running_daemon(text) as d:
            d.port, d.config_path = port, tmp_path / "mta.toml"
            yield d, sink


async def call(d, method: str, target: str | bytes, *headers: bytes, body: bytes | None = None,
               auth: bool = True):
    if isinstance(target, str):
        target = target.encode()
    extra = ([AUTH] if auth else []) + list(headers)
    if body is not None:
        extra += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    head = (method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(h + b"\r\n" for h in extra) + b"Connection: close\r\n\r\n")
    return await raw_http(d.admin.sockname[1], head, body or b"")


async def api(d, method: str, path: str, body: bytes | None = None):
    status, _, payload = await call(d, method, path, body=body)
    return status, json.loads(payload)


# ------------------------------------------------------ the sweep (item 6)

# Already percent-encoded: what an attacker can put in a request target.
HOSTILE = [
    "..%2f..%2fetc%2fpasswd", "%2e%2e", "%00", "a%00b", "%1b%5b31mred", "%0d%0aX-Injected:%201",
    "%7f", "A" * 3000, "%ff%fe%fd", "%C0%AF", "%ED%A0%80", "%E2%80%AEtxt", "%C2%B2", "%D9%A3",
    "-1", "-0", "+5", "1e3", "0x10", "1.5", "NaN", "Infinity", "99999999999999999999999",
    "9223372036854775808", "18446744073709551616", "%20", "%22%27%3C%3E", "*", "%5B%5D",
    "%5B::1%5D:0", "%5B127.0.0.1%5D%3A99999", "%5B%00%5D", "null", "%25", "%", "%zz",
    "x%40y", "%3Cscript%3E", "a,b,,c", "delivered%2C%00",
]
BENIGN_PATH = {"id": "0000000000000000", "name": "sweep.test"}
BAD_AUTH = [b"Authorization: Bearer \xe9\xe9\xe9\xe9", "Authorization: Bearer éééé".encode(),
            b"Authorization: Bearer \xff\xfe", b"Authorization: \xff\xfe",
            b"Authorization: Bearer", b"Authorization: Bearer  ",
            b"Authorization: bearer " + TOKEN.encode() + b" extra",
            b"Authorization: Bearer " + b"\xc3\xa9" * 2000]
JUNK_VALUES = [None, True, -1, 10**30, 2**63, 1.5, 1e308, "", "\x00", "\x1b[2J",
               "x" * 5000, [], {}, "end", "a@b.example\r\nX: y"]
RAW_BODIES = [b"[" * 30_000, b"{" * 30_000, b"\xff\xfe\x00", b'"string"', b"[]", b"null",
              b"1" * 5000, b'{"x": NaN}', b'{"from": Infinity}', b'{"since": -Infinity}',
              b'{"domain": "' + b"\\ud800" + b'"}']


def _operations(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def _fill(path: str, **values: str) -> str:
    for name, default in BENIGN_PATH.items():
        path = path.replace("{" + name + "}", values.get(name, default))
    return path


def _check(status: int, headers: dict, payload: bytes, where) -> dict | None:
    assert status < 500 or (status == 503 and "/readyz" in str(where)), (where, status, payload)
    assert status != 501, where
    assert headers.get("content-type", "").startswith("application/json"), (where, payload)
    body = json.loads(payload)
    if status >= 400:
        assert set(body["error"]) == {"code", "message"} and body["error"]["message"], where
    return body


async def test_sweep_every_route_with_hostile_values(world, caplog):
    d, _ = world
    status, doc = await api(d, "GET", "/v1/openapi.json")
    assert status == 200
    counts = {"requests": 0, "400": 0}
    with caplog.at_level(logging.DEBUG):
        for method, path, op in _operations(doc):
            params = op.get("parameters", [])
            targets = []
            for p in (p for p in params if p["in"] == "path"):
                targets += [(_fill(path, **{p["name"]: v}), p["name"]) for v in HOSTILE]
            for p in (p for p in params if p["in"] == "query"):
                targets += [(f"{_fill(path)}?{p['name']}={v}", p["name"]) for v in HOSTILE]
            body = b"{}" if op.get("requestBody") else None
            for target, field in targets:
                status, headers, payload = await call(d, method, target, body=body)
                counts["requests"] += 1
                out = _check(status, headers, payload, (method, target[:80]))
                if status == 400:
                    counts["400"] += 1
                    if out["error"]["code"] in ("invalid_parameter", "invalid_filter",
                                                "invalid_cursor"):
                        assert field in out["error"]["message"], (method, target[:80], out)
            for header in BAD_AUTH:
                status, headers, payload = await call(d, method, _fill(path), header,
                                                      auth=False, body=body)
                counts["requests"] += 1
                if path in ("/healthz", "/metrics"):
                    assert status == 200, (method, path)
                    continue
                _check(status, headers, payload, (method, path, header[:30]))
                assert status == 401, (method, path, header[:30])
            if op.get("requestBody"):
                props = op["requestBody"]["content"]["application/json"]["schema"]
                props = props.get("properties") or doc["components"]["schemas"][
                    props["$ref"].rsplit("/", 1)[1]]["properties"]
                bodies = RAW_BODIES + [json.dumps({k: v}).encode() for k in props
                                       for v in JUNK_VALUES] + [b'{"domain": "' + b"x" * 70_000
                                                                + b'"}']
                for raw in bodies:
                    status, headers, payload = await call(d, method, _fill(path), body=raw)
                    counts["requests"] += 1
                    _check(status, headers, payload, (method, path, raw[:40]))
    assert counts["requests"] > 1000 and counts["400"] > 500, counts
    # No traceback and no raw control byte reached the log.
    assert not [r for r in caplog.records if r.exc_info], \
        [r.getMessage() for r in caplog.records if r.exc_info][:3]
    assert not [r.getMessage() for r in caplog.records
                if any(ord(c) < 0x20 or ord(c) == 0x7f for c in r.getMessage())]
    # Nothing junk was saved: every destination the daemon knows is a valid name.
    status, summary = await api(d, "GET", "/v1/queue/summary")
    for row in summary["destinations"]:
        assert parse_destination(row["destination"])[1] == row["destination"], row
    for name in d.runner.scheduler.destination_states():
        assert parse_destination(name)[1] == name and len(name) <= 270, name


async def test_requests_that_are_not_http_get_a_400_and_a_log_line(world, caplog):
    d, _ = world
    with caplog.at_level(logging.DEBUG):
        for head in (b"GET /v1/messages?limit=\xd9\xa3 HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"GET /v1/\x1b[2J\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                     b"GET / HTTP/1.1\r\nHost: x\r\nX\x01: y\r\n\r\n"):
            status, _, _ = await raw_http(d.admin.sockname[1], head)
            assert status == 400
        await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.exc_info]
    assert sum("event=admin_bad_http" in r.getMessage() for r in caplog.records) == 4
    assert not any(c in caplog.text for c in "\x1b\x00\x01\x16")


# ---------------------------------------- destinations of routed domains (item 16)

async def submit(d, rcpts):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login("app", "app-password-1")
        _, resp = await c.sendmail("app@sender.test", rcpts, b"From: app@sender.test\r\n\r\nhi\r\n")
        return resp.split()[-1]


async def test_suspending_a_routed_domain_suspends_its_route(world):
    d, sink = world
    route = f"[127.0.0.1]:{sink.address[1]}"
    status, body = await api(d, "POST", "/v1/destinations/Routed.Test./suspend")
    assert status == 200, body
    assert body == {"destination": route, "action": "suspend", "state": "suspended",
                    "requested": "routed.test"}
    assert d.runner.scheduler.is_suspended(route)
    assert not d.runner.scheduler.is_suspended("routed.test")       # the old, silent no-op
    await submit(d, ["ok@routed.test"])
    await asyncio.sleep(1.0)
    assert not sink.messages                            # really suspended: nothing left
    status, body = await api(d, "POST", "/v1/destinations/routed.test/resume")
    assert status == 200 and body["destination"] == route and body["state"] == "active"
    (m,) = await sink.wait_for(1)
    assert m.rcpt_tos == ["ok@routed.test"]
    # a domain without a route is its own (MX) destination, mail or not
    status, body = await api(d, "POST", "/v1/destinations/other.test/suspend")
    assert (status, body["destination"], body["requested"]) == (200, "other.test", "other.test")
    # names no mail can go to are refused, and nothing is saved for them
    for name in ("%5B10.9.9.9%5D%3A25", "sandbox"):
        status, body = await api(d, "POST", f"/v1/destinations/{name}/suspend")
        assert status == 404 and body["error"]["code"] == "not_found", body
    assert "[10.9.9.9]:25" in (await api(d, "POST", "/v1/destinations/%5B10.9.9.9%5D%3A25/"
                                                    "flush"))[1]["error"]["message"]
    assert set(d.runner.scheduler.destination_states()) <= {route, "other.test"}


async def _cli(d, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("MTA_CONFIG", "MTA_STATE_DIR", "http_proxy", "HTTP_PROXY"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "mta", *args, "--config", str(d.config_path)]
    return await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True,
                                   text=True, timeout=60)


async def test_the_cli_says_where_a_routed_domain_goes(world):
    d, sink = world
    route = f"[127.0.0.1]:{sink.address[1]}"
    r = await _cli(d, "destination", "suspend", "routed.test")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"routed.test is routed to {route}; suspended {route} (now suspended)\n"
    assert d.runner.scheduler.is_suspended(route)
    r = await _cli(d, "destination", "flush", route)
    assert r.returncode == 0 and r.stdout == f"destination {route}: flushed (now suspended)\n"
    r = await _cli(d, "destination", "resume", "[10.9.9.9]:25")
    assert r.returncode == 1 and "is not a configured route" in r.stderr
    r = await _cli(d, "destination", "suspend", "../../etc")
    assert r.returncode == 1 and "mta: invalid destination: " in r.stderr
    assert set(d.runner.scheduler.destination_states()) == {route}


# ------------------------------------------------------ /readyz and the disk (item 4)

def _set_min_free_space(d, value: int) -> None:
    """Set [server] min_free_space on the running daemon, as a reload would."""
    d.cfg = dataclasses.replace(d.cfg, server=dataclasses.replace(d.cfg.server,
                                                                  min_free_space=value))


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))


async def test_readyz_reports_the_disk_through_the_seam(world):
    d, _ = world
    status, body = await api(d, "GET", "/readyz")
    assert status == 200 and body["ready"] is True, body
    assert body["min_free_space"] == DEFAULT_MIN_FREE_SPACE
    assert body["spool_free_bytes"] > DEFAULT_MIN_FREE_SPACE
    seen = []
    d.admin.backend.free_space = lambda path: seen.append(path) or 0     # a full disk
    status, body = await api(d, "GET", "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["spool_free_bytes"] == 0 and body["min_free_space"] == DEFAULT_MIN_FREE_SPACE
    assert body["reason"].startswith("disk: ") and "min_free_space" in body["reason"]
    assert body["error"] == {"code": "not_ready", "message": body["reason"]}
    assert seen[0] == os.path.join(d.cfg.server.state_dir, "spool")
    _, _, metrics = await call(d, "GET", "/metrics")
    assert _metric(metrics.decode(), "mta_spool_filesystem_free_bytes") == 0
    d.admin.backend.free_space = lambda path: DEFAULT_MIN_FREE_SPACE      # exactly enough
    assert (await api(d, "GET", "/readyz"))[0] == 200
    _set_min_free_space(d, 0)                                             # 0: no check
    d.admin.backend.free_space = lambda path: 0
    assert (await api(d, "GET", "/readyz"))[0] == 200


async def test_readyz_reports_the_disk_for_real(world):
    d, _ = world
    spool = os.path.join(d.cfg.server.state_dir, "spool")
    free = filesystem_free_bytes(spool)
    _set_min_free_space(d, free + 2**40)          # more than this filesystem has free
    status, body = await api(d, "GET", "/readyz")
    assert status == 503 and body["reason"].startswith("disk: "), body
    assert abs(body["spool_free_bytes"] - free) < 2**30
    _, _, metrics = await call(d, "GET", "/metrics")
    assert abs(_metric(metrics.decode(), "mta_spool_filesystem_free_bytes") - free) < 2**30
    _set_min_free_space(d, 1)
    status, body = await api(d, "GET", "/readyz")
    assert status == 200 and body["ready"] is True and body["min_free_space"] == 1
