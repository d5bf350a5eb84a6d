"""`mta queue …` and `mta destination …` through the real console entry point,
talking to a real AdminServer on a loopback port with the in-memory backend
of test_admin_http (the daemon end-to-end tests are elsewhere)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mta.admin.http import AdminServer
from mta.admin.token import ensure_token
from tests.test_admin_http import FakeBackend, _message

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "cli-test-token-0123456789"


def _config(tmp_path: Path, address: str, token: str | None = TOKEN) -> Path:
    path = tmp_path / "mta.toml"
    lines = ["[server]", f'state_dir = "{tmp_path / "state"}"', "", "[admin]",
             f'address = "{address}"']
    if token:
        lines.append(f'token = "{token}"')
    path.write_text("\n".join(lines) + "\n")
    return path


class Cli:
    def __init__(self, tmp_path: Path, config: Path):
        self.tmp_path, self.config = tmp_path, config

    async def __call__(self, *args: str, config: Path | None = None,
                       binary: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for k in ("MTA_CONFIG", "MTA_STATE_DIR", "http_proxy", "HTTP_PROXY"):
            env.pop(k, None)
        cmd = [sys.executable, "-m", "mta", *args, "--config", str(config or self.config)]
        # The server runs on this event loop: run the CLI in a thread.
        r = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True,
                                    text=not binary, cwd=self.tmp_path, timeout=60)
        # Every command first says which config and state dir it used
        # (issue 10 item 13, tested in test_cli); these tests read what follows.
        first, _, rest = (r.stderr or "").partition("\n") if not binary else ("", "", "")
        if first.startswith("mta: config "):
            r.stderr = rest
        return r


@pytest.fixture
def backend():
    b = FakeBackend(n=30, page_cap=7)      # short pages: the CLI must follow the cursor
    b.add(_message(900, state="delivered"))
    b.add(_message(901, sender="", domain="bounce.example"))
    return b


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


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


# ------------------------------------------------------------------ list

async def test_queue_list_table_and_json_follow_every_page(mta, backend):
    out = _ok(await mta("queue", "list"))
    assert "M00000" in out and "M00029" in out and "M00901" in out and "M00900" not in out
    assert "user3@example.org" in out and "(451 4.7.1 try later)" in out
    assert "(DSN)" in out and out.rstrip().endswith("-- 31 message(s)")
    rows = json.loads(_ok(await mta("queue", "list", "--json")))
    assert [m["id"] for m in rows] == sorted(k for k, m in backend.messages.items()
                                             if not m["done"])
    pages = [c for c in backend.calls if c[0] == "list_messages"]
    assert len(pages) >= 2 * 5                     # 31 messages, pages of 7, twice
    rows = json.loads(_ok(await mta("queue", "list", "--json", "--all")))
    assert "M00900" in [m["id"] for m in rows]
    assert backend.calls[-1][1]["state"] == "all"


async def test_queue_list_filters_and_limit(mta, backend):
    rows = json.loads(_ok(await mta("queue", "list", "--json", "--domain", "example.org",
                                    "--sender", "app@example.com", "--state", "deferred")))
    assert len(rows) == 15 and all(m["recipients"][0]["domain"] == "example.org" for m in rows)
    first, second = backend.calls[0][1], backend.calls[1][1]
    assert first == dict(state="deferred", domain="example.org", sender="app@example.com",
                         recipient=None, limit=1000, cursor=None)
    # the next page asks only for what --limit (default 1000) still allows
    assert second["limit"] == 1000 - 7 and second["cursor"]
    out = _ok(await mta("queue", "list", "--limit", "10"))
    assert "-- 10 message(s) (more may match" in out
    assert max(c[1]["limit"] for c in backend.calls if c[0] == "list_messages") <= 1000
    rows = json.loads(_ok(await mta("queue", "list", "--json", "--limit", "0")))
    assert len(rows) == 31
    out = _ok(await mta("queue", "list", "--recipient", "nobody@nowhere.example"))
    assert out.strip() == "No matching messages"
    r = await mta("queue", "list", "--state", "frozen")
    assert r.returncode == 2


async def test_queue_list_bad_filter_is_the_apis_message(mta):
    r = await mta("queue", "list", "--domain", "not a domain")
    assert r.returncode == 1 and r.stderr.startswith("mta: domain: invalid domain")


async def test_queue_list_empty(tmp_path):
    srv = AdminServer(SimpleNamespace(address="127.0.0.1:0"), FakeBackend(), TOKEN)
    await srv.start()
    try:
        cli = Cli(tmp_path, _config(tmp_path, f"127.0.0.1:{srv.sockname[1]}"))
        assert _ok(await cli("queue", "list")).strip() == "Mail queue is empty"
        assert json.loads(_ok(await cli("queue", "list", "--json"))) == []
        assert _ok(await cli("queue", "summary")).strip() == "Mail queue is empty"
    finally:
        await srv.stop()


# --------------------------------------------------------- summary, show

async def test_queue_summary_is_a_qshape_table(mta):
    out = _ok(await mta("queue", "summary"))
    lines = out.splitlines()
    assert lines[0].split() == ["DESTINATION", "STATE", "TOTAL", "HELD", "5m", "10m", "20m",
                                "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+"]
    assert lines[1].split()[:3] == ["TOTAL", "31", "0"]
    row = next(line.split() for line in lines if line.startswith("example.net "))
    assert row[1:4] == ["throttled", "15", "0"]
    assert "example.org: 451 4.7.1 try later" in out
    rows = json.loads(_ok(await mta("queue", "summary", "--json")))
    assert {r["destination"] for r in rows} == {"example.org", "example.net", "bounce.example"}


async def test_queue_show_envelope_recipients_attempts_and_body(mta):
    out = _ok(await mta("queue", "show", "M00004"))
    assert "*** ENVELOPE ***" in out and "id:        M00004" in out
    assert "sender:    <app@example.com>" in out
    assert "queued     user4@example.net  attempts=1  next " in out
    assert "last: 451 4.7.1 try later  (mx.example.org)" in out
    assert "mx.example.org [192.0.2.1] tls=TLSv1.3" in out and "0.2s" in out
    body = (await mta("queue", "show", "M00004", "--body", binary=True)).stdout
    assert body == b"From: app@example.com\r\nSubject: m4\r\n\r\nbody 4\r\n"
    m = json.loads(_ok(await mta("queue", "show", "M00004", "--json")))
    assert m["id"] == "M00004" and m["attempts"][0]["remote_host"] == "mx.example.org"
    m = json.loads(_ok(await mta("queue", "show", "M00004", "--json", "--body")))
    assert m["body"].startswith("From: app@example.com")
    r = await mta("queue", "show", "NOPE")
    assert r.returncode == 1 and r.stderr == "mta: no message 'NOPE' in the queue\n"


# --------------------------------------------------------------- actions

async def test_queue_actions_by_id(mta, backend):
    out = _ok(await mta("queue", "hold", "M00001", "M00002"))
    assert out.splitlines() == ["M00001: held (1 recipient(s))", "M00002: held (1 recipient(s))"]
    assert backend.messages["M00001"]["held"] and backend.messages["M00002"]["held"]
    r = await mta("queue", "release", "M00001", "NOPE", "M00002")
    assert r.returncode == 1 and "mta: NOPE: no message 'NOPE' in the queue" in r.stderr
    assert not backend.messages["M00001"]["held"] and not backend.messages["M00002"]["held"]
    res = json.loads(_ok(await mta("queue", "bounce", "M00003", "--json")))
    assert res == [{"id": "M00003", "action": "bounce", "affected": 1}]
    r = await mta("queue", "retry", "M00003")                 # bounced: 409
    assert r.returncode == 1 and "no queued recipient" in r.stderr
    _ok(await mta("queue", "delete", "M00005"))
    assert "M00005" not in backend.messages


async def test_queue_bulk_actions(mta, backend):
    out = _ok(await mta("queue", "hold", "--domain", "example.net"))
    assert out.strip() == "held: 15 recipient(s) in 15 message(s)"
    assert backend.calls[-1] == ("bulk_action", "hold", dict(
        state=None, domain="example.net", sender=None, recipient=None, all=False))
    res = json.loads(_ok(await mta("queue", "release", "--all", "--json")))
    assert res["action"] == "release" and backend.calls[-1][2]["all"] is True
    _ok(await mta("queue", "delete", "--all", "--state", "held"))
    assert backend.calls[-1][2] == dict(state="held", domain=None, sender=None, recipient=None,
                                        all=True)
    n = len(backend.calls)
    for args in (("queue", "hold"), ("queue", "hold", "M00001", "--all"),
                 ("queue", "bounce", "M00001", "--domain", "example.org")):
        r = await mta(*args)
        assert r.returncode == 2 and r.stderr.startswith("mta: queue "), args
    assert len(backend.calls) == n


async def test_destination_commands(mta, backend):
    out = _ok(await mta("destination", "suspend", "example.org"))
    assert out.strip() == "destination example.org: suspended (now suspended)"
    assert backend.destinations["example.org"] == "suspended"
    res = json.loads(_ok(await mta("destination", "resume", "example.org", "--json")))
    assert res == {"destination": "example.org", "action": "resume", "state": "active",
                   "requested": "example.org"}
    _ok(await mta("destination", "flush", "[smart.example]:2525"))
    assert backend.calls[-1] == ("destination_action", "[smart.example]:2525", "flush")
    r = await mta("destination", "flush", "refused.example")
    assert r.returncode == 1 and "refused.example" in r.stderr
    r = await mta("destination", "explode", "example.org")
    assert r.returncode == 2


async def test_destination_of_a_routed_domain_says_where_it_acted(mta, backend):
    # issue 10 item 16: the routed domain's destination is its route
    out = _ok(await mta("destination", "suspend", "Routed.Example"))
    assert out.strip() == ("routed.example is routed to [10.0.0.1]:25; suspended "
                           "[10.0.0.1]:25 (now suspended)")
    assert backend.calls[-1] == ("destination_action", "routed.example", "suspend")
    assert backend.destinations["[10.0.0.1]:25"] == "suspended"
    res = json.loads(_ok(await mta("destination", "resume", "routed.example", "--json")))
    assert res == {"destination": "[10.0.0.1]:25", "action": "resume", "state": "active",
                   "requested": "routed.example"}
    r = await mta("destination", "suspend", "[192.0.2.9]:25")       # no such route: 404
    assert r.returncode == 1
    assert r.stderr == "mta: no destination '[192.0.2.9]:25': it is not a configured route\n"


@pytest.mark.parametrize("name", ["../../etc", "a\x01b", "x" * 3000, "exa mple.org",
                                  "[10.0.0.1]:0", "[10.0.0.1]:99999", "[bad host]:25",
                                  "*", "user@example.org", "example.org/x", "[nope]",
                                  "\x1b[2Jexample.org"])
async def test_destination_refuses_invalid_names_before_asking(mta, backend, name):
    n = len(backend.calls)
    r = await mta("destination", "suspend", name)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("mta: invalid destination: ") and r.stderr.count("\n") == 1
    assert "\x1b" not in r.stderr and "\x00" not in r.stderr
    assert len(backend.calls) == n                 # the daemon was never asked


# ------------------------------------------------------------ connection

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args", [("queue", "list"), ("queue", "summary"),
                                  ("queue", "show", "M1"), ("queue", "hold", "--all"),
                                  ("destination", "suspend", "example.org")])
async def test_a_stopped_daemon_is_a_clear_error(tmp_path, args):
    port = _closed_port()
    cli = Cli(tmp_path, _config(tmp_path, f"127.0.0.1:{port}"))
    r = await cli(*args)
    assert r.returncode == 1
    assert r.stderr == (f"mta: the daemon's admin API at 127.0.0.1:{port} is not reachable "
                        "(is mta running?)\n")
    assert TOKEN not in r.stderr + r.stdout


async def test_token_from_the_state_dir_and_wrong_tokens(tmp_path, server, backend):
    host, port = server.sockname
    # no token in the config: the CLI reads state_dir/admin-token
    cfg = _config(tmp_path, f"{host}:{port}", token=None)
    cli = Cli(tmp_path, cfg)
    r = await cli("queue", "summary")
    assert r.returncode == 1 and "no admin token" in r.stderr
    stored = ensure_token(tmp_path / "state")
    srv = AdminServer(SimpleNamespace(address="127.0.0.1:0"), backend, stored)
    await srv.start()
    try:
        cli = Cli(tmp_path, _config(tmp_path, f"127.0.0.1:{srv.sockname[1]}", token=None))
        assert "example.org" in _ok(await cli("queue", "summary"))
    finally:
        await srv.stop()
    wrong = Cli(tmp_path, _config(tmp_path, f"{host}:{port}", token="x" * 24))
    r = await wrong("queue", "list")
    assert r.returncode == 1 and r.stderr == "mta: the bearer token is not valid\n"
