"""Crash safety: under load, SIGKILL the daemon at random moments (5 times),
restart it each time, and check that every message that got `250` reaches
the sink at least once. Reports the number of duplicates (the accepted
trade-off: a crash between the remote 250 and recording it re-sends)."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiosmtplib

from tests.support.mtahelpers import config_text, free_port
from tests.support.sink import Sink

ROOT = Path(__file__).resolve().parent.parent
KILLS = 5


def start_daemon(cfg_path: Path, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MTA_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "mta", "serve", "--config", str(cfg_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"))


async def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"daemon did not listen on {port}")


errors: collections.Counter = collections.Counter()


async def client(port: int, acked: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                       use_tls=False, timeout=10) as c:
                while not stop.is_set():
                    tid = uuid.uuid4().hex
                    msg = (f"From: load@sender.test\r\nTo: ok@rcpt.test\r\nSubject: crash {tid}\r\n"
                           f"X-Test-Id: {tid}\r\n\r\n" + ("x" * 76 + "\r\n") * 26).encode()
                    _, resp = await c.sendmail("load@sender.test", ["ok@rcpt.test"], msg)
                    acked.append(tid)  # only after the 250 arrived
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            await asyncio.sleep(0.05)


def test_sigkill_under_load_loses_nothing(tmp_path, report):
    sink = Sink(tls=False).start_in_thread()
    try:
        port = free_port()
        cfg = tmp_path / "mta.toml"
        cfg.write_text(config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                                   routes={"*": f"127.0.0.1:{sink.address[1]}"}))
        log = tmp_path / "daemon.log"
        acked: list[str] = []

        async def scenario():
            stop = asyncio.Event()
            proc = start_daemon(cfg, log)
            await wait_port(port)
            clients = [asyncio.create_task(client(port, acked, stop)) for _ in range(8)]
            rng = random.Random(os.getpid())
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = start_daemon(cfg, log)
                await wait_port(port)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*clients)
            return proc

        proc = asyncio.run(scenario())
        try:
            deadline = time.monotonic() + 90
            want = set(acked)
            while time.monotonic() < deadline:
                got = {m.data.split(b"X-Test-Id: ")[1][:32].decode()
                       for m in list(sink.messages) if b"X-Test-Id: " in m.data}
                if want <= got:
                    break
                time.sleep(0.2)
            counts = collections.Counter(
                m.data.split(b"X-Test-Id: ")[1][:32].decode()
                for m in list(sink.messages) if b"X-Test-Id: " in m.data)
            missing = want - set(counts)
            dups = sum(c - 1 for c in counts.values() if c > 1)
            report(f"crash test: {KILLS} SIGKILLs, {len(want)} messages acknowledged, "
                   f"{len(missing)} lost, {dups} duplicate deliveries, "
                   f"{len(set(counts) - want)} delivered without a 250 seen by the client")
            assert len(want) > 100, f"client errors {dict(errors)}; too little load to mean anything: {len(want)}"
            assert not missing, f"{len(missing)} acknowledged messages never delivered"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        sink.stop_in_thread()
