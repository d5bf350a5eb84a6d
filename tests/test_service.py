"""mta as a systemd service: sd_notify, SIGHUP reload, the unit, install.sh.

Real parts only: `mta serve` runs as a subprocess on free loopback ports, the
test plays systemd's `$NOTIFY_SOCKET` with a Unix datagram socket, messages go
over real SMTP to a scripted sink, and the unit is checked by Debian's
`systemd-analyze`. The daemon subprocesses run under the seccomp rule systemd
installs for `MemoryDenyWriteExecute=yes` (when libseccomp is available), so
the unit's claim that CPython/uvloop/cryptography work with it is tested.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import trustme

from mta.config import load_config
from mta.runtime import notify as notify_mod
from mta.runtime.daemon import Daemon
from mta.runtime.reload import reload
from tests.support.sink import Sink

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "mta.service"
INSTALL = ROOT / "scripts" / "install.sh"
MSG = (b"From: app@example.com\r\nTo: someone@example.org\r\nSubject: reload\r\n\r\n"
       b"Hello while reloading.\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_text(state: Path, port: int, routes: dict[str, str], *, max_recipients=1000,
                cert: Path | None = None, key: Path | None = None, extra: str = "") -> str:
    lines = [
        "[server]", 'hostname = "mta.test"', f'state_dir = "{state}"', 'mode = "production"',
        'shutdown_timeout = "5s"', 'log_level = "info"',
        "[[listeners]]", 'name = "submission"', f'address = "127.0.0.1:{port}"',
        'tls = "starttls"', 'trusted_networks = ["127.0.0.0/8"]',
        f"max_recipients = {max_recipients}",
    ]
    if cert:
        lines += [f'cert = "{cert}"', f'key = "{key}"']
    lines += [extra,
              "[delivery]", 'retry_schedule = "1s,2s"', 'connect_timeout = "3s"',
              'command_timeout = "10s"', 'destination_backoff = "0.2s,0.5s"',
              "[policy]", "require_verified_domain = false",
              "[admin]", "enabled = false",
              "[routes]"]
    lines += [f'"{d}" = "{hop}"' for d, hop in routes.items()]
    return "\n".join(lines) + "\n"


# ---- MemoryDenyWriteExecute= as systemd 252 implements it (seccomp) ---------

class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _mdwe_filter():
    """A preexec_fn loading systemd's MemoryDenyWriteExecute seccomp rules
    (src/shared/seccomp-util.c: mmap W+X, mprotect/pkey_mprotect +X, shmat
    SHM_EXEC → EPERM), or None without libseccomp. Built here, loaded in the
    child: the child only makes one library call between fork and exec."""
    name = ctypes.util.find_library("seccomp")
    if not name:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, eperm, masked_eq = 0x7FFF0000, 0x00050000 | 1, 7
    ctx = lib.seccomp_init(allow)
    prot_w, prot_x, shm_exec = 0x2, 0x4, 0o100000
    for sysname, arg, mask in (("mmap", 2, prot_w | prot_x), ("mprotect", 2, prot_x),
                               ("pkey_mprotect", 2, prot_x), ("shmat", 2, shm_exec)):
        nr = lib.seccomp_syscall_resolve_name(sysname.encode())
        cmp = (_ArgCmp * 1)(_ArgCmp(arg, masked_eq, mask, mask))
        if nr < 0 or lib.seccomp_rule_add_array(ctx, eperm, nr, 1, cmp) != 0:
            return None

    def preexec() -> None:
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")
    return preexec


MDWE = _mdwe_filter()


def test_mdwe_filter_is_effective():
    if MDWE is None:
        pytest.skip("libseccomp not found: cannot emulate MemoryDenyWriteExecute=")
    code = ("import mmap\ntry:\n mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE|mmap.PROT_EXEC)\n"
            "except PermissionError:\n print('denied')\nelse:\n print('allowed')")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=MDWE, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "denied", out


# ---- the daemon as systemd sees it ------------------------------------------

class Notifications:
    """Plays systemd's notify socket: collects datagrams in a thread."""

    def __init__(self, address: str):
        self.env = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def wait(self, predicate, timeout=20.0, proc=None) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for m in self.messages[seen:]:
                seen += 1
                if predicate(m):
                    return m
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"mta exited with {proc.returncode}")
            time.sleep(0.01)
        raise AssertionError(f"no matching notification in {timeout}s; got {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


def start_mta(cfg_path: Path, notify_socket: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket, PYTHONPATH=str(ROOT))
    env.pop("MTA_CONFIG", None)
    env.pop("MTA_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config", str(cfg_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
                            preexec_fn=MDWE)


def stop_mta(proc: subprocess.Popen, log_path: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("mta did not stop on SIGTERM:\n" + log_path.read_text())


def test_notify_is_a_no_op_without_socket(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_mod.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify_mod.notify("READY=1") is False          # logged at debug, not raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify_mod.notify("READY=1") is False


def test_notify_abstract_socket(monkeypatch):
    name = f"@mta-test-{uuid.uuid4().hex}"
    n = Notifications(name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        assert notify_mod.notify("STATUS=hello") is True
        n.wait(lambda m: m == "STATUS=hello", timeout=5)
    finally:
        n.close()


def test_ready_only_after_listener_accepts_and_stopping_on_sigterm(tmp_path):
    port = free_port()
    cfg = tmp_path / "mta.toml"
    cfg.write_text(config_text(tmp_path / "state", port, {"*": "127.0.0.1:9"}))
    sock_path = tmp_path / "notify.sock"          # a filesystem socket, as systemd's
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(30)
    log = tmp_path / "mta.log"
    proc = start_mta(cfg, str(sock_path), log)
    try:
        first = srv.recv(4096).decode()
        # The first thing systemd hears is READY=1 (nothing before it) …
        fields = _fields(first)
        assert fields.get("READY") == "1", first
        assert fields.get("MAINPID") == str(proc.pid)
        # … and at that moment the listener accepts: one attempt, no retry.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.settimeout(5)
            assert c.recv(512).startswith(b"220 "), "no SMTP greeting right after READY=1"
        assert "event=listening" in log.read_text()
        # Known race outside this test's subject (queue_runner._wait clears
        # its wakeup after an await, so a stop requested in the runner's first
        # milliseconds waits out its 60 s idle timer): let it settle first.
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stopping = _fields(srv.recv(4096).decode())
        assert stopping.get("STOPPING") == "1"
        assert stop_mta(proc, log) == 0
    finally:
        stop_mta(proc, log)
        srv.close()


class Client(threading.Thread):
    """Sends one-recipient messages in a loop, 20 per connection, and records
    every accepted recipient and every failure."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.accepted: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as s:
                    for _ in range(20):
                        if self.stop.is_set():
                            break
                        n += 1
                        rcpt = f"flow-{n}@example.org"
                        refused = s.sendmail("app@example.com", [rcpt], MSG)
                        assert not refused, refused
                        self.accepted.append(rcpt)
                        time.sleep(0.005)
            except Exception as exc:   # any refusal or drop is a failure of the reload
                self.failures.append(f"message {n}: {exc!r}")
                time.sleep(0.1)

    def count_after(self, extra: int, timeout=20.0) -> None:
        target = len(self.accepted) + extra
        deadline = time.monotonic() + timeout
        while len(self.accepted) < target:
            assert time.monotonic() < deadline, f"messages stopped flowing: {self.failures}"
            time.sleep(0.02)


def _wait_log(log: Path, pattern: str, count: int = 1, timeout=20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged {count}x:\n{log.read_text()}")


def _three_rcpts(port: int) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        rc = [f"lim-{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(3)]
        return s.sendmail("app@example.com", rc, MSG)


def _verified_starttls(port: int, ca: trustme.CA) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=ctx)


def test_sighup_reload_valid_then_invalid_while_messages_flow(tmp_path, report):
    sink, sink2 = Sink(tls=False).start_in_thread(), Sink(tls=False).start_in_thread()
    port = free_port()
    state = tmp_path / "state"
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    routes = {"*": f"127.0.0.1:{sink.port}"}
    cfg = tmp_path / "mta.toml"
    cfg.write_text(config_text(state, port, routes))
    notes = Notifications(f"@mta-test-{uuid.uuid4().hex}")
    log = tmp_path / "mta.log"
    proc = start_mta(cfg, notes.env, log)
    client = Client(port)
    try:
        notes.wait(lambda m: "READY=1" in m, proc=proc)
        # Before: the self-signed certificate, so a verifying client fails;
        # 3 recipients are fine; routed.test has no route of its own.
        with pytest.raises(ssl.SSLError):
            _verified_starttls(port, ca)
        assert _three_rcpts(port) == {}
        client.start()
        client.count_after(30)

        # 1. A valid change: new route, lower max_recipients, a real certificate.
        cfg.write_text(config_text(state, port, dict(routes, **{
            "routed.test": f"127.0.0.1:{sink2.port}"}), max_recipients=2, cert=cert, key=key))
        before = len(notes.messages)
        proc.send_signal(signal.SIGHUP)
        text = _wait_log(log, r"event=reloaded ")
        line = re.search(r"event=reloaded .*", text).group(0)
        assert "routes" in line and "listeners.submission.max_recipients" in line, line
        assert "listeners.submission.cert" in line, line
        assert "restart_needed" not in line, line
        notes.wait(lambda m: "RELOADING=1" in m and "MONOTONIC_USEC=" in m, proc=proc)
        notes.wait(lambda m: "READY=1" in m and notes.messages.index(m) > before, proc=proc)
        client.count_after(30)
        # The change is in force for new sessions:
        _verified_starttls(port, ca)                       # the new certificate
        refused = _three_rcpts(port)                       # max_recipients = 2
        assert len(refused) == 1 and list(refused.values())[0][0] == 452, refused
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:   # the new route
            s.sendmail("app@example.com", ["someone@routed.test"], MSG)
        got = sink2.wait_for_sync(1, timeout=20)
        assert got[0].rcpt_tos == ["someone@routed.test"]

        # 2. An invalid config: refused, every error logged, old one in force.
        cfg.write_text(config_text(state, port, routes, max_recipients=0,
                                   extra="bogus_key = 1"))
        proc.send_signal(signal.SIGHUP)
        text = _wait_log(log, r"event=reload_refused .*errors=2")
        refusals = re.findall(r"event=reload_refused .*", text)
        assert any("listeners[0].max_recipients" in r for r in refusals), refusals
        assert any("listeners[0].bogus_key: unknown key" in r for r in refusals), refusals
        client.count_after(30)
        assert len(_three_rcpts(port)) == 1                # still 2
        _verified_starttls(port, ca)                       # still the new certificate
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:   # still routed
            s.sendmail("app@example.com", ["again@routed.test"], MSG)
        sink2.wait_for_sync(2, timeout=20)

        # 3. A certificate that cannot be loaded is refused the same way.
        cfg.write_text(config_text(state, port, routes, cert=tmp_path / "missing.pem",
                                   key=key))
        proc.send_signal(signal.SIGHUP)
        _wait_log(log, r"event=reload_refused .*listeners\[0\]\.cert: cannot load")
        client.count_after(20)
        _verified_starttls(port, ca)
        assert proc.poll() is None
    finally:
        client.stop.set()
        client.join(30)
        rc = stop_mta(proc, log)
        notes.close()
    try:
        assert rc == 0, log.read_text()
        assert client.failures == [], client.failures
        assert any("STOPPING=1" in m for m in notes.messages)
        # Nothing accepted was lost: every accepted recipient reached the sink.
        sink.wait_for_sync(len(client.accepted), timeout=60)
        delivered = {r for m in sink.messages for r in m.rcpt_tos}
        missing = set(client.accepted) - delivered
        assert not missing, f"{len(missing)} accepted messages never delivered"
        report(f"SIGHUP test: {len(client.accepted)} messages accepted across 3 reloads "
               f"(1 applied, 2 refused), 0 refused by SMTP, 0 lost")
    finally:
        sink.stop_in_thread()
        sink2.stop_in_thread()


def test_reload_in_process_keeps_config_on_error(tmp_path, monkeypatch):
    """reload() directly: a refusal returns False and keeps daemon.cfg; an
    unchanged file reloads as a no-op."""
    port = free_port()
    cfg_path = tmp_path / "mta.toml"
    cfg_path.write_text(config_text(tmp_path / "state", port, {"*": "127.0.0.1:9"}))
    monkeypatch.delenv("MTA_STATE_DIR", raising=False)

    async def go():
        d = Daemon(load_config(str(cfg_path)))
        await d.start()
        try:
            old = d.cfg
            assert await reload(d) is True
            assert d.cfg == old
            old = d.cfg
            cfg_path.write_text("[server]\nmode = \"nonsense\"\n")
            assert await reload(d) is False
            assert d.cfg is old
            cfg_path.write_text(config_text(tmp_path / "state", port, {"*": "127.0.0.1:9"},
                                            extra='max_message_size = "1MiB"'))
            assert await asyncio.gather(reload(d), reload(d)) == [True, True]  # serialised
            assert d.listeners[0].cfg.max_message_size == 1024 * 1024
            assert d.runner.routes == d.cfg.routes
            # [[webhooks]] are compared by name and applied live
            base = config_text(tmp_path / "state", port, {"*": "127.0.0.1:9"})
            hook = ('[[webhooks]]\nname = "{n}"\nurl = "http://127.0.0.1:9/{n}"\n'
                    'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n')
            cfg_path.write_text(base + hook.format(n="a"))
            assert await reload(d) is True
            assert list(d.webhooks.deliverers) == ["a"]
            first = d.webhooks.deliverers["a"]
            assert first._task is not None
            cfg_path.write_text(base + hook.format(n="a").replace("/a", "/a2")
                                + hook.format(n="b"))
            assert await reload(d) is True
            assert list(d.webhooks.deliverers) == ["a", "b"]
            assert d.webhooks.deliverers["a"] is not first and first._task is None
            assert d.webhooks.deliverers["a"].cfg.url.endswith("/a2")
            assert all(x._task is not None for x in d.webhooks.deliverers.values())
            assert [s["name"] for s in await d.webhooks.statuses()] == ["a", "b"]
            cfg_path.write_text(base)
            assert await reload(d) is True and d.webhooks.deliverers == {}
        finally:
            await d.stop()

    asyncio.run(go())


# ---- the unit file and the installer ----------------------------------------

def _need_systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is missing (scripts/setup.sh test installs Debian's "
                    "systemd package when run as root)")
    return exe


@pytest.fixture(scope="module")
def installed(staged_installs):
    """install.sh into a DESTDIR (shared with test_install.py: tests/support/
    staged.py); the idempotency test runs it a second time."""
    staged = staged_installs.get(None)
    return staged.dest, staged.env, staged.first


def test_install_into_destdir_is_idempotent_and_keeps_config(installed):
    dest, env, first = installed
    conf = dest / "etc/mta/mta.toml"
    unit = dest / "etc/systemd/system/mta.service"
    mta = dest / "opt/mta/venv/bin/mta"
    assert conf.read_text() == (ROOT / "conf/mta.toml").read_text()
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    assert unit.read_text() == UNIT.read_text()           # default prefix: unchanged
    assert "systemctl daemon-reload && systemctl enable --now mta" in first.stdout
    assert "skipping the mta user" in first.stdout        # DESTDIR: machine untouched
    # the staged venv's scripts name their final place (/opt/mta/venv/bin/python,
    # issue 10 item 19): run its interpreter from the staging tree instead
    out = subprocess.run([str(dest / "opt/mta/venv/bin/python"), "-m", "mta", "config", "check",
                          "--config", str(conf)],
                         env=dict(env, MTA_STATE_DIR=str(dest / "var/lib/mta")),
                         capture_output=True, text=True, timeout=60)
    assert "server" in out.stdout + out.stderr, out
    conf.write_text(conf.read_text() + "\n# edited by the operator\n")
    edited = conf.read_text()
    unit_mtime = unit.stat().st_mtime_ns
    second = subprocess.run(["sh", str(INSTALL)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert conf.read_text() == edited                     # never overwritten
    assert "keeping existing" in second.stdout
    assert "is up to date" in second.stdout and unit.stat().st_mtime_ns == unit_mtime
    assert mta.exists()


def test_install_with_prefix_rewrites_execstart(staged_installs, tmp_path):
    dest = staged_installs.get("/srv/mta").dest       # shared with test_install.py
    unit = (dest / "etc/systemd/system/mta.service").read_text()
    assert "\nExecStart=/srv/mta/venv/bin/mta serve\n" in unit
    assert (dest / "srv/mta/venv/bin/mta").exists()
    env = dict(os.environ, DESTDIR=str(tmp_path))
    bad = subprocess.run(["sh", str(INSTALL), "--prefix", "relative"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2


def _unit_for_destdir(installed, tmp_path) -> Path:
    """systemd-analyze verify checks that ExecStart exists: point it at the
    DESTDIR venv (the only change to the installed unit)."""
    dest, _, _ = installed
    text = (dest / "etc/systemd/system/mta.service").read_text()
    text = text.replace("ExecStart=/opt/mta/venv/bin/mta",
                        f"ExecStart={dest}/opt/mta/venv/bin/mta")
    unit = tmp_path / "mta.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify(installed, tmp_path):
    exe = _need_systemd_analyze()
    unit = _unit_for_destdir(installed, tmp_path)
    out = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stdout + out.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "User=mta", "Group=mta",
                 "StateDirectory=mta", "ConfigurationDirectory=mta",
                 "Environment=MTA_CONFIG=/etc/mta/mta.toml MTA_STATE_DIR=/var/lib/mta",
                 "ExecStart=/opt/mta/venv/bin/mta serve", "ExecReload=/bin/kill -HUP $MAINPID",
                 "Restart=on-failure", "LimitNOFILE=65536",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "PrivateDevices=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "SystemCallFilter=@system-service", "SystemCallArchitectures=native",
                 "UMask=0077"):
        assert f"\n{line}\n" in text, line


def test_systemd_analyze_security_exposure(installed, tmp_path, report):
    exe = _need_systemd_analyze()
    unit = _unit_for_destdir(installed, tmp_path)
    out = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for mta\.service: ([0-9.]+) (\w+)", out.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline unavailable: {out.stderr.strip()}")
    report(f"systemd-analyze security mta.service: exposure {m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= 2.0, out.stdout


# ---- stopping never hangs on a swallowed cancellation --------------------------

async def test_wait_event_passes_a_cancellation_on():
    """The queue runner's and the DSN loop's waits: a cancel that lands as the
    event fires must still stop the loop around them. asyncio.wait_for
    swallowed it in ~9 of 10 of these interleavings (Python 3.11), and
    Daemon.stop() then waited forever on the DSN loop (a CI hang)."""
    from mta.runtime.queue_runner import wait_event

    async def loop_like(ev: asyncio.Event):
        while True:
            await wait_event(ev, 10.0)
            ev.clear()

    stuck = 0
    for i in range(60):
        ev = asyncio.Event()
        task = asyncio.create_task(loop_like(ev))
        for _ in range(i % 5):
            await asyncio.sleep(0)
        ev.set()
        for _ in range(i % 3):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.5)
        if not done:
            stuck += 1
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            assert task.cancelled()
    assert stuck == 0, f"{stuck} of 60 cancellations were swallowed"

    ev = asyncio.Event()                      # and the timeout still works
    t0 = asyncio.get_running_loop().time()
    await wait_event(ev, 0.05)
    assert asyncio.get_running_loop().time() - t0 >= 0.04
