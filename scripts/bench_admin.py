#!/usr/bin/env python3
"""Does listing a big queue through the admin API slow delivery?

    scripts/bench_admin.py [--queued 100000] [-n 3000] [-c 10] [--bench ../shared/bench]

1. Builds a spool with `--queued` messages, all held (so they stay queued and
   listable without being delivered), through the Spool API directly.
2. Starts `mta serve` on it (plain SMTP on 127.0.0.1:2535, trusted loopback,
   every domain routed to the shared harness's counting sink on :2526, admin
   API on 127.0.0.1:8026).
3. Runs the harness's load.py (N messages, C sessions) twice: alone, and while
   a client pages through all queued messages via GET /v1/messages
   (limit 1000, following the cursor) in a loop.
Prints the page latency (p50/p99), pages/s, and end-to-end msg/s of both load
runs with their ratio. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (scripts/benchlib.py)
TOKEN = "bench-admin-token-0123456789abcdef"


async def build_spool(state: Path, count: int) -> None:
    from mta.spool import MessageFilter, NewMessage, Spool
    spool = await Spool.open(state, now=time.time())
    body = (b"From: bench@sender.test\r\nSubject: queued\r\n\r\n" + b"x" * 1000 + b"\r\n")
    batch = 500
    for start in range(0, count, batch):
        await asyncio.gather(*(spool.enqueue(NewMessage(
            sender="bench@sender.test", recipients=(f"u{i}@held{i % 50}.test",), body=body),
            time.time()) for i in range(start, min(count, start + batch))))
    held = await spool.hold_messages(MessageFilter(), time.time())
    await spool.close()
    print(f"bench_admin: {count} messages queued and held ({held} recipients)", file=sys.stderr)


def page_loop(stop: threading.Event, latencies: list[float], once: bool = False) -> None:
    """Page through every held message; `once`: a single full pass (what an
    operator does), else again and again until stopped (a hostile client)."""
    cursor = None
    while not stop.is_set():
        url = "http://127.0.0.1:8026/v1/messages?state=held&limit=1000"
        if cursor:
            url += "&cursor=" + cursor
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.load(r)
        latencies.append(time.perf_counter() - t0)
        cursor = body.get("next_cursor")
        if cursor is None and once:
            return


def run_load(bench: Path, n: int, c: int) -> dict:
    return benchlib.run_load(bench, target="127.0.0.1:2535", n=n, c=c, s=20480, client="py")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    a = ap.parse_args()
    bench = Path(a.bench).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-admin-"))
    t0 = time.time()
    asyncio.run(build_spool(tmp / "state", a.queued))
    print(f"bench_admin: spool built in {time.time() - t0:.1f}s", file=sys.stderr)
    cfg = tmp / "mta.toml"
    cfg.write_text(benchlib.daemon_config(tmp / "state", admin_port=8026, token=TOKEN))
    subprocess.run([str(bench / "sink-up.sh")], check=True, cwd=bench, capture_output=True)
    daemon = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mta"), "serve", "--config", str(cfg)],
                              stderr=open(tmp / "mta.log", "wb"))
    try:
        benchlib.wait_http("http://127.0.0.1:8026/healthz")
        alone = run_load(bench, a.n, a.c)
        results = {}
        for mode in ("one pass", "continuous"):
            stop, lat = threading.Event(), []
            t = threading.Thread(target=page_loop, args=(stop, lat, mode == "one pass"),
                                 daemon=True)
            t1 = time.time()
            t.start()
            load = run_load(bench, a.n, a.c)
            stop.set()
            t.join(timeout=120)
            results[mode] = (load, lat, time.time() - t1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        subprocess.run([str(bench / "sink-down.sh")], cwd=bench, capture_output=True)
    print(f"\nqueued (held) messages: {a.queued}; load N={a.n} C={a.c} S=20 KiB (py client)")
    print(f"delivery alone: {alone['e2e_mps']:.0f} msg/s end to end")
    for mode, (load, lat, elapsed) in results.items():
        lat.sort()
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        print(f"listing, {mode}: {len(lat)} pages of 1000 "
              f"(page latency p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms); delivery meanwhile "
              f"{load['e2e_mps']:.0f} msg/s (ratio {load['e2e_mps'] / alone['e2e_mps']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
