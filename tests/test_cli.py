"""`mta user …` and `mta queue list` through the real console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mta(tmp_path, *args, stdin=None):
    env = dict(os.environ, MTA_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    env.pop("MTA_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mta", *args], input=stdin, env=env,
                          capture_output=True, text=True, cwd=tmp_path)


def test_user_lifecycle(tmp_path):
    r = mta(tmp_path, "user", "add", "app1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("user=app1 password=")
    generated = r.stdout.split("password=")[1].strip()
    assert len(generated) >= 20
    r = mta(tmp_path, "user", "add", "app2", "--password-stdin", stdin="hunter2-long\n")
    assert r.returncode == 0 and "hunter2" not in r.stdout
    creds = (tmp_path / "state" / "credentials.json")
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    text = creds.read_text()
    assert generated not in text and "hunter2-long" not in text   # stored hashed
    from mta.server.credentials import CredentialStore
    store = CredentialStore(creds)
    assert store.verify("app1", generated) and store.verify("app2", "hunter2-long")

    r = mta(tmp_path, "user", "list", "--json")
    assert [u["name"] for u in json.loads(r.stdout)] == ["app1", "app2"]
    r = mta(tmp_path, "user", "add", "app1")
    assert r.returncode == 1 and "app1" in r.stderr
    r = mta(tmp_path, "user", "passwd", "app2", "--password-stdin", stdin="new-password-9\n")
    assert r.returncode == 0
    assert CredentialStore(creds).verify("app2", "new-password-9")
    assert not CredentialStore(creds).verify("app2", "hunter2-long")
    r = mta(tmp_path, "user", "remove", "app1")
    assert r.returncode == 0
    r = mta(tmp_path, "user", "list")
    assert "app1" not in r.stdout and "app2" in r.stdout
    r = mta(tmp_path, "user", "remove", "nobody")
    assert r.returncode == 1 and "nobody" in r.stderr
    r = mta(tmp_path, "user", "add", "bad name!")
    assert r.returncode == 1
    r = mta(tmp_path, "user", "add", "scoped", "--domain", "a.example", "--domain", "*.b.example")
    assert r.returncode == 0, r.stderr
    assert CredentialStore(creds).domains("scoped") == ("a.example", "*.b.example")
    r = mta(tmp_path, "user", "list")
    assert "a.example,*.b.example" in r.stdout
    r = mta(tmp_path, "user", "add", "badscope", "--domain", "no domain")
    assert r.returncode == 1 and "invalid sending domain" in r.stderr


def test_queue_list_without_a_daemon_is_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:          # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[admin]\naddress = "127.0.0.1:{port}"\n')
    r = mta(tmp_path, "queue", "list", "--config", str(cfg))
    assert r.returncode == 1
    assert f"127.0.0.1:{port} is not reachable (is mta running?)" in r.stderr


def test_usage_errors_exit_2(tmp_path):
    r = mta(tmp_path, "frobnicate")
    assert r.returncode == 2
