"""Start-up failures end the process at once with one line naming what is
wrong (issue 10 item 10): a port in use, a certificate that cannot be read,
a state directory that cannot be written; SIGTERM during start-up works."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mta.config import parse_config
from mta.runtime.daemon import Daemon
from tests.support.mtahelpers import config_text, free_port

ROOT = Path(__file__).resolve().parent.parent


def _serve(conf: Path, timeout: float = 20) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTA_STATE_DIR", None)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config", str(conf)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)        # a hang is the bug: show what it printed
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"mta serve did not exit within {timeout}s (rc={proc.returncode}):\n{err}")
    return proc.returncode, err, time.monotonic() - t0


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_port_in_use_is_one_line_and_exit_1(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    conf = tmp_path / "mta.toml"
    conf.write_text(config_text(tmp_path / "state", port))
    try:
        rc, err, took = _serve(conf)
    finally:
        busy.close()
    assert rc == 1, err
    assert _last_line(err) == (f"mta: cannot start: listener submission: cannot listen on "
                               f"127.0.0.1:{port}: Address already in use (EADDRINUSE)")
    assert "Traceback" not in err


def test_admin_port_in_use(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    text = config_text(tmp_path / "state", free_port())
    text = "\n".join(f'address = "127.0.0.1:{port}"' if line.startswith("address") and
                     prev == "[admin]" else line
                     for prev, line in zip([""] + text.splitlines(), text.splitlines()))
    conf = tmp_path / "mta.toml"
    conf.write_text(text + "\n")
    try:
        rc, err, _ = _serve(conf)
    finally:
        busy.close()
    assert rc == 1, err
    assert f"admin API: cannot listen on 127.0.0.1:{port}: Address already in use" in \
        _last_line(err)
    assert "Traceback" not in err


@pytest.mark.parametrize("which", ["cert", "key"])
def test_missing_certificate_names_the_path(tmp_path, which):
    from mta.runtime.tls import ensure_self_signed
    cert, key = ensure_self_signed(tmp_path / "tls", "localhost")
    paths = {"cert": cert, "key": key}
    paths[which] = tmp_path / f"missing-{which}.pem"
    text = config_text(tmp_path / "state", free_port()).replace(
        'tls = "starttls"', f'tls = "starttls"\ncert = "{paths["cert"]}"\nkey = "{paths["key"]}"')
    conf = tmp_path / "mta.toml"
    conf.write_text(text)
    rc, err, _ = _serve(conf)
    assert rc == 1, err
    assert str(paths[which]) in err and "Traceback" not in err


def test_unwritable_state_dir_names_it(tmp_path):
    if os.geteuid() == 0:
        # root writes anywhere; a path under a regular file fails for anyone
        state = tmp_path / "a-file" / "state"
        (tmp_path / "a-file").write_text("")
    else:
        state = tmp_path / "ro" / "state"
        (tmp_path / "ro").mkdir(mode=0o500)
    conf = tmp_path / "mta.toml"
    conf.write_text(config_text(state, free_port()))
    rc, err, _ = _serve(conf)
    assert rc == 1, err
    assert f"state directory {state}" in _last_line(err) and "Traceback" not in err


async def test_sigterm_during_start_stops_at_once(tmp_path, monkeypatch):
    """A start step that hangs (a slow disk, DNS) does not hold SIGTERM back."""
    from mta.runtime import domains
    entered = asyncio.Event()

    async def slow_refresh(self):
        entered.set()
        await asyncio.sleep(3600)
    monkeypatch.setattr(domains.DomainCache, "refresh", slow_refresh)
    before = set(threading.enumerate())
    d = Daemon(parse_config(config_text(tmp_path / "state", free_port()), "test"))
    task = asyncio.ensure_future(d.run())
    await asyncio.wait_for(entered.wait(), 10)
    os.kill(os.getpid(), signal.SIGTERM)        # the daemon's own handler
    await asyncio.wait_for(task, 10)            # returned, not hung
    assert d.stopping and not d.ready
    # the spool's SQLite worker threads are gone: nothing keeps the process alive
    for _ in range(100):
        left = [t for t in set(threading.enumerate()) - before if t.is_alive()
                and not t.daemon and not t.name.startswith("asyncio_")]  # (executor: the loop's)
        if not left:
            break
        await asyncio.sleep(0.02)
    assert left == []


def test_open_files_limit_is_raised_for_the_sessions_allowed(tmp_path):
    """Item 2: a shell's soft limit of 1024 open files is below what
    max_sessions allows (accept() then fails and clients vanish unlogged):
    the daemon raises it towards the hard limit, and says when it cannot."""
    import resource
    from mta.runtime.daemon import raise_fd_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard open-files limit here is {hard}: nothing to raise it to")
    cfg = parse_config(config_text(tmp_path / "state", free_port()), "test")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        now, want = raise_fd_limit(cfg)
        assert want == 1000 + 512                 # one listener, max_sessions 1000
        assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
