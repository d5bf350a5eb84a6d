"""`mta user …` and `mta queue list` through the real console entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mta(tmp_path, *args, stdin=None, env=None, state=True):
    e = dict(os.environ, MTA_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT),
             MTA_DEFAULT_CONFIG=str(tmp_path / "no-default.toml"))  # hermetic: not /etc/mta
    for k in ("MTA_CONFIG", "MTA_LISTEN") + (() if state else ("MTA_STATE_DIR",)):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "mta", *args], input=stdin, env=e,
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


def test_version(tmp_path):
    from importlib.metadata import version
    r = mta(tmp_path, "--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"mta {version('mta')}\n", "")
    assert r.stdout == "mta 0.1.0\n"


def test_short_password_on_stdin_is_refused(tmp_path):
    r = mta(tmp_path, "user", "add", "app", "--password-stdin", stdin="hunter2\n")
    assert r.returncode == 1
    assert "mta: password is too short: use at least 12 characters (this one has 7)" in r.stderr
    assert "app" not in mta(tmp_path, "user", "list").stdout
    assert mta(tmp_path, "user", "add", "app", "--password-stdin",
               stdin="twelve-chars\n").returncode == 0
    r = mta(tmp_path, "user", "passwd", "app", "--password-stdin", stdin="short\n")
    assert r.returncode == 1 and "too short" in r.stderr


def test_generated_password_starts_with_a_letter_or_digit(tmp_path):
    r = mta(tmp_path, "user", "add", "app1")
    pw = r.stdout.split("password=")[1].strip()
    assert pw[0].isalnum() and len(pw) == 24


# ---- which config and state (issue 10 item 13) ------------------------------

def test_every_command_says_which_config_and_state_it_used(tmp_path):
    r = mta(tmp_path, "user", "list", "--json", state=False)
    assert r.returncode == 0 and json.loads(r.stdout) == []      # stdout stays clean
    assert r.stderr == (f"mta: config (embedded sandbox default), state ./var/mta "
                        f"({tmp_path}/var/mta)\n")
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "daemon-state"}"\n')
    r = mta(tmp_path, "domain", "list", "--config", str(cfg), state=False)
    assert r.returncode == 0
    assert r.stderr == f"mta: config {cfg}, state {tmp_path / 'daemon-state'}\n"
    r = mta(tmp_path, "config", "check", "--json", env={"MTA_CONFIG": str(cfg)})
    assert json.loads(r.stdout)["server"]["state_dir"] == str(tmp_path / "state")
    assert r.stderr.startswith(f"mta: config {cfg}, state {tmp_path / 'state'}\n")


def test_the_default_config_file_is_used_when_it_exists(tmp_path):
    """Without --config or MTA_CONFIG, /etc/mta/mta.toml (here: the file
    MTA_DEFAULT_CONFIG names) decides the store, so `mta user add` writes
    where the daemon reads, not into ./var/mta."""
    default = tmp_path / "etc-mta.toml"
    default.write_text(f'[server]\nstate_dir = "{tmp_path / "daemon-state"}"\n')
    env = {"MTA_DEFAULT_CONFIG": str(default)}
    r = mta(tmp_path, "user", "add", "app1", env=env, state=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"mta: config {default}, state {tmp_path / 'daemon-state'}\n")
    assert (tmp_path / "daemon-state" / "credentials.json").exists()
    assert not (tmp_path / "var").exists()
    # --config and MTA_CONFIG still come first
    other = tmp_path / "other.toml"
    other.write_text(f'[server]\nstate_dir = "{tmp_path / "other-state"}"\n')
    for extra_env, args in (({}, ["--config", str(other)]), ({"MTA_CONFIG": str(other)}, [])):
        r = mta(tmp_path, "user", "list", *args, env={**env, **extra_env}, state=False)
        assert r.stderr.startswith(f"mta: config {other}, "), r.stderr
    # a default file that cannot be read is an error, never the sandbox store
    default.unlink()
    default.mkdir()
    r = mta(tmp_path, "user", "list", env=env, state=False)
    assert r.returncode == 1
    assert r.stderr == (f"mta: config {default}: cannot read: Is a directory (the default "
                        "config file; pass --config PATH to use another)\n")
