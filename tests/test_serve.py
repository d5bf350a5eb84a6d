"""`mta serve` as a new user runs it: the embedded default (sandbox) in a
fresh directory prints a credential, accepts mail over STARTTLS + AUTH,
captures it in the sandbox maildir, lists it, and exits 0 on SIGTERM."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.mtahelpers import no_verify_context

ROOT = Path(__file__).resolve().parent.parent


def _port_open(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def fresh_dir(tmp_path):
    for port in (2525, 8025):
        if _port_open(port):
            pytest.skip(f"127.0.0.1:{port} is in use by another process; the embedded default "
                        "needs it (submission 2525, admin API 8025)")
    return tmp_path


def test_embedded_default_sandbox_roundtrip(fresh_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               MTA_DEFAULT_CONFIG=str(fresh_dir / "no-default.toml"))   # not /etc/mta
    env.pop("MTA_CONFIG", None)
    env.pop("MTA_STATE_DIR", None)
    env.pop("MTA_LISTEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "mta", "serve"], cwd=fresh_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "created the first credential" in line, line + proc.stderr.read()
        password = line.split("password=")[1].split()[0]
        cred = (fresh_dir / "var/mta/initial-credential.txt").read_text()
        assert f"password={password}" in cred
        assert oct((fresh_dir / "var/mta/initial-credential.txt").stat().st_mode & 0o777) == "0o600"
        for _ in range(100):
            if _port_open(2525):
                break
            time.sleep(0.1)
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
            s.ehlo()
            assert not s.has_extn("auth")           # no AUTH before TLS
            s.starttls(context=no_verify_context())
            s.ehlo()
            assert "PLAIN" in s.esmtp_features["auth"]
            s.login("test", password)
            s.sendmail("app@example.com", ["someone@example.org"],
                       b"From: app@example.com\r\nTo: someone@example.org\r\nSubject: hi\r\n\r\nHi!\r\n")
        new = fresh_dir / "var/mta/sandbox/new"
        for _ in range(100):
            if new.exists() and list(new.iterdir()):
                break
            time.sleep(0.1)
        files = list(new.iterdir())
        assert len(files) == 1
        captured = files[0].read_bytes()
        assert b"Subject: hi" in captured and b"Received: from" in captured
        listing = subprocess.run([sys.executable, "-m", "mta", "queue", "list", "--all", "--json"],
                                 cwd=fresh_dir, env=env, capture_output=True, text=True)
        assert '"state": "delivered"' in listing.stdout, listing.stderr
        # The README's next step: the console, logged in with var/mta/admin-token.
        page = _console_page(fresh_dir, "/console/messages?recipient=someone@example.org")
        assert 'id="messages"' in page and "someone@example.org" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read()
    assert rc == 0, err
    assert "event=received" in err and "event=delivered" in err and "event=stopped" in err
    assert password not in err  # secrets never logged
    assert (f"event=starting version=0.1.0 config=\"(embedded sandbox default)\" "
            f"state_dir={fresh_dir}/var/mta mode=sandbox") in err
    assert "mta: config" not in err           # serve logs it as an event line instead


def _console_page(fresh_dir, path: str) -> str:
    """GET a console page as a person would: log in through the form first."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPCookieProcessor(jar))
    base = "http://127.0.0.1:8025"
    with opener.open(base + "/console/login", timeout=10) as r:
        csrf = re.search(r'name="_csrf" value="([^"]+)"', r.read().decode()).group(1)
    token = (fresh_dir / "var/mta/admin-token").read_text().strip()
    form = urllib.parse.urlencode({"token": token, "_csrf": csrf}).encode()
    with opener.open(base + "/console/login", data=form, timeout=10) as r:
        assert "/login" not in r.url
    with opener.open(base + path, timeout=10) as r:
        return r.read().decode()


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MTA_DEFAULT_CONFIG=str(tmp_path / "none.toml"))
    for k in ("MTA_CONFIG", "MTA_STATE_DIR", "MTA_LISTEN"):
        env.pop(k, None)
    return env


def _wait_for(proc, lines, needle, timeout=30.0):
    """Read stderr lines until one contains `needle` (they are kept in `lines`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} in:\n" + "".join(lines))


def test_listen_moves_the_submission_listener_and_survives_a_reload(tmp_path):
    """Issue 10 item 14: `mta serve --listen HOST:PORT` for a sandbox next to a
    running daemon; the address is kept when SIGHUP re-reads the config."""
    from tests.support.mtahelpers import free_port
    port, admin = free_port(), free_port()
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[server]\nhostname = "localhost"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'mode = "sandbox"\n[[listeners]]\nname = "submission"\n'
                   f'address = "127.0.0.1:2525"\ntls = "starttls"\n'
                   f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config", str(cfg),
                             "--listen", f"127.0.0.1:{port}"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        line = _wait_for(proc, lines, "event=listening listener=submission")
        assert f"address=127.0.0.1:{port} " in line
        _wait_for(proc, lines, "event=ready")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            assert s.ehlo()[0] == 250 and s.has_extn("starttls")
        proc.send_signal(signal.SIGHUP)
        line = _wait_for(proc, lines, "event=reloaded")
        assert "restart_needed" not in line, line        # the override is still in force
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            assert s.noop()[0] == 250
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = "".join(lines) + proc.stderr.read()
    assert rc == 0, err
    assert f"event=starting version=0.1.0 config={cfg} state_dir={tmp_path / 'state'} " \
           "mode=sandbox" in err
    assert ":2525" not in err.split("event=starting", 1)[1].replace(str(cfg), "")


@pytest.mark.parametrize("listeners, why", [
    ('[[listeners]]\nname = "a"\naddress = "127.0.0.1:2600"\n'
     '[[listeners]]\nname = "b"\naddress = "127.0.0.1:2601"\n',
     "has 2 submission listeners (a, b)"),
    ('[[listeners]]\nname = "in"\naddress = "127.0.0.1:2600"\nrole = "inbound"\n',
     "has no submission listener"),
])
def test_listen_refuses_when_ambiguous(tmp_path, listeners, why):
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\nmode = "sandbox"\n'
                   + listeners)
    r = subprocess.run([sys.executable, "-m", "mta", "serve", "--config", str(cfg), "--listen",
                        "127.0.0.1:2999"], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == (f"mta: --listen: the configuration {cfg} {why}; --listen "
                        "replaces the address of exactly one (edit the listeners' addresses "
                        "instead)\n")
    assert not (tmp_path / "state").exists()             # nothing was started
