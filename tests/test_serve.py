"""`mta serve` as a new user runs it: the embedded default (sandbox) in a
fresh directory prints a credential, accepts mail over STARTTLS + AUTH,
captures it in the sandbox maildir, lists it, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
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
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTA_CONFIG", None)
    env.pop("MTA_STATE_DIR", None)
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
