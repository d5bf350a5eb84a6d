"""`mta serve` with `[server] workers = 2` (ARCHITECTURE §3, issue 12): the
owner accepts, two receiver processes run the sessions; mail goes through,
a killed receiver is restarted and nothing acknowledged is lost, the session
and AUTH limits hold across both receivers, a reload reaches them, metrics
count their sessions, and they never outlive their owner."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.mtahelpers import config_text, free_port, no_verify_context
from tests.support.sink import Sink

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-admin-token-0123456789"

pytestmark = pytest.mark.slow


def receivers(pid: int) -> set[int]:
    """The owner's receiver children."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"mta.runtime.receiver" in cmd:
                out.add(int(child))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    def __init__(self, tmp: Path, *, listener_extra: str = "", routes=None, tls="none",
                 trusted=("127.0.0.0/8",)):
        self.port = free_port()
        self.cfg = tmp / "mta.toml"
        self.log = tmp / "daemon.log"
        text = config_text(tmp / "state", self.port, tls=tls, trusted=trusted, routes=routes)
        text = text.replace("[server]\n", "[server]\nworkers = 2\n", 1)
        self.text = text.replace('[[listeners]]\nname = "submission"\n',
                                 '[[listeners]]\nname = "submission"\n' + listener_extra, 1)
        self.cfg.write_text(self.text)
        self.admin = int(self.text.split('[admin]\naddress = "127.0.0.1:')[1].split('"')[0])
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("MTA_STATE_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config",
                                      str(self.cfg)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), start_new_session=True)
        wait_for(lambda: "event=ready" in self.log.read_text() or self.proc.poll() is not None,
                 60, "the daemon to be ready")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def metric(self, name: str) -> float:
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=40)


async def send(port: int, n: int, acked: list[str], *, tolerate: bool = False) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               timeout=20) as c:
        for _ in range(n):
            tid = uuid.uuid4().hex
            msg = (f"From: app@sender.test\r\nTo: ok@rcpt.test\r\nSubject: w {tid}\r\n"
                   f"X-Test-Id: {tid}\r\n\r\nhello\r\n").encode()
            try:
                await c.sendmail("app@sender.test", ["ok@rcpt.test"], msg)
            except (aiosmtplib.SMTPException, OSError):
                if not tolerate:
                    raise
                return
            acked.append(tid)


def delivered(sink: Sink) -> set[str]:
    return {m.data.split(b"X-Test-Id: ")[1][:32].decode()
            for m in list(sink.messages) if b"X-Test-Id: " in m.data}


def test_receivers_run_sessions_and_a_killed_one_is_restarted(tmp_path):
    sink = Sink(tls=False).start_in_thread()
    d = Daemon(tmp_path, routes={"*": f"127.0.0.1:{sink.address[1]}"})
    try:
        first = wait_for(lambda: len(receivers(d.proc.pid)) == 2 and receivers(d.proc.pid),
                         30, "two receivers")
        acked: list[str] = []

        async def load(conns: int, per: int, tolerate: bool = False):
            await asyncio.gather(*(send(d.port, per, acked, tolerate=tolerate)
                                   for _ in range(conns)))

        asyncio.run(load(4, 10))
        assert len(acked) == 40
        # Counted in the owner's /metrics from the receivers' sessions.
        accepted = 'mta_messages_received_total{listener="submission",result="accepted"}'
        assert d.metric(accepted) == 40
        received = [line for line in d.log.read_text().splitlines() if "event=received" in line]
        assert len(received) == 40
        # Each line says which receiver logged it; the load went to both.
        assert {line.split()[2] for line in received} == {"mta.server@receiver-0",
                                                          "mta.server@receiver-1"}
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim), 10, "the receiver to die")
        again = wait_for(lambda: len(receivers(d.proc.pid)) == 2 and receivers(d.proc.pid),
                         30, "a new receiver")
        assert victim not in again and (again & first)      # one replaced, the other kept
        wait_for(lambda: "event=receiver_ready index=" in d.log.read_text().split(
            "event=receiver_exited")[-1], 30, "the new receiver to be ready")
        asyncio.run(load(4, 5))
        wait_for(lambda: set(acked) <= delivered(sink), 60, "every acknowledged message")
        assert d.metric("mta_smtp_sessions_open") == 0
    finally:
        rc = d.stop()
        sink.stop_in_thread()
    assert rc == 0, d.log.read_text()[-3000:]
    assert not any(alive(p) for p in again)


async def _greeting(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    return await asyncio.wait_for(r.readline(), 20), w


async def _wrong_login(port: int) -> str:
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                        tls_context=no_verify_context(), timeout=30)
    try:
        await c.connect()
        await c.ehlo()
        await c.auth_plain("test", "not-the-password")     # one attempt per connection
    except aiosmtplib.SMTPAuthenticationError as exc:
        return str(exc.code)
    except aiosmtplib.SMTPResponseException as exc:
        return str(exc.code)
    except (aiosmtplib.SMTPServerDisconnected, OSError):
        return "closed"
    finally:
        c.close()
    return "235"


def test_session_and_auth_limits_hold_across_receivers(tmp_path):
    d = Daemon(tmp_path, tls="starttls", trusted=(),
               listener_extra="max_sessions_per_ip = 6\nauth_max_failures = 3\n")
    try:
        async def sessions():
            got = await asyncio.gather(*(_greeting(d.port) for _ in range(10)))
            codes = sorted(line[:3] for line, _ in got)
            for _, w in got:
                w.close()
            return codes

        codes = asyncio.run(sessions())
        assert codes.count(b"220") == 6 and codes.count(b"421") == 4, codes
        wait_for(lambda: d.metric("mta_smtp_sessions_open") == 0, 20, "sessions to close")

        async def guesses():
            return await asyncio.gather(*(_wrong_login(d.port) for _ in range(6)))

        replies = asyncio.run(guesses())
        # Six parallel guesses spread over two receivers: one budget of 3 password
        # checks for the client IP, kept by the owner (per process it would be 6).
        assert replies.count("535") <= 3, replies
        assert replies.count("235") == 0, replies
        checks = [line for line in d.log.read_text().splitlines()
                  if "event=auth_failed" in line and "reason=" not in line]
        assert len(checks) <= 3, checks
        assert d.metric('mta_auth_failures_total{listener="submission"}') >= 3
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_reload_reaches_receivers(tmp_path):
    sink = Sink(tls=False).start_in_thread()
    d = Daemon(tmp_path, routes={"*": f"127.0.0.1:{sink.address[1]}"})
    big = b"From: app@sender.test\r\nSubject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 100

    async def submit(body: bytes) -> int:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=False,
                                   timeout=20) as c:
            try:
                await c.sendmail("app@sender.test", ["ok@rcpt.test"], body)
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code
            return 250

    try:
        assert asyncio.run(submit(big)) == 250
        d.cfg.write_text(d.text.replace('[[listeners]]\nname = "submission"\n',
                                        '[[listeners]]\nname = "submission"\n'
                                        'max_message_size = 2048\n', 1))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=reloaded" in d.log.read_text(), 20, "the reload")
        # Both receivers (least-busy dispatch alternates) refuse it now.
        codes = [asyncio.run(submit(big)) for _ in range(4)]
        assert codes == [552] * 4, codes
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
        sink.stop_in_thread()


def test_receivers_do_not_outlive_their_owner(tmp_path):
    d = Daemon(tmp_path)
    kids = wait_for(lambda: len(receivers(d.proc.pid)) == 2 and receivers(d.proc.pid),
                    30, "two receivers")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    wait_for(lambda: not any(alive(p) for p in kids), 15, "the receivers to exit")


def test_sigterm_to_the_whole_group_stops_everything_once(tmp_path):
    """systemd's stop signals every process of the unit: the receivers stop
    themselves and are not restarted; the owner exits 0."""
    d = Daemon(tmp_path)
    kids = wait_for(lambda: len(receivers(d.proc.pid)) == 2 and receivers(d.proc.pid),
                    30, "two receivers")
    os.killpg(d.proc.pid, signal.SIGTERM)
    assert d.proc.wait(timeout=40) == 0, d.log.read_text()[-3000:]
    wait_for(lambda: not any(alive(p) for p in kids), 15, "the receivers to exit")
    log = d.log.read_text().split("event=stopping", 1)[1]
    assert "event=receiver_started" not in log and "event=receiver_exited" not in log, log


def test_a_domain_added_while_running_reaches_the_receivers(tmp_path):
    """`mta domain add` writes the store; the owner's periodic domain tick
    (housekeeping DOMAINS_EVERY) re-reads it and tells the receivers, which
    then sign that domain's mail (their DKIM keys are their own copies)."""
    from mta.runtime.housekeeping import DOMAINS_EVERY
    sink = Sink(tls=False).start_in_thread()
    d = Daemon(tmp_path, routes={"*": f"127.0.0.1:{sink.address[1]}"})

    async def submit(subject: str) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, timeout=20) as c:
            await c.sendmail("a@example.com", ["b@example.org"],
                             f"From: a@example.com\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())

    try:
        asyncio.run(submit("before"))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-m", "mta", "domain", "add", "example.com",
                              "--config", str(d.cfg)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        time.sleep(DOMAINS_EVERY + 3)           # one tick of the owner's housekeeping
        asyncio.run(submit("after"))
        wait_for(lambda: len(sink.messages) == 2, 30, "both delivered")
        signed = {m.data.split(b"Subject: ")[1].split(b"\r\n")[0]: b"DKIM-Signature:" in m.data
                  for m in sink.messages}
        assert signed == {b"before": False, b"after": True}, signed
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
        sink.stop_in_thread()
