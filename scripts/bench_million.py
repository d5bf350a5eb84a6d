#!/usr/bin/env python3
"""Delivery with a million messages queued: rate and memory (issue 12).

    .venv/bin/python scripts/bench_million.py [-n 1000000] [--domains 5000] [--size 2048]
                                              [--low 50000] [--window 20000]
                                              [--concurrency 20] [--port-offset K]

1. Fills a fresh spool offline with `-n` messages (`--size` bytes each, one
   recipient each, spread over `--domains` domains) through the Spool API
   (`Spool.enqueue`, the acceptance path's own commit: group-committed and
   fsynced) while no daemon runs, so nothing is delivered while it fills:
   the cheapest honest way to have them all queued at once.
2. Starts the harness's counting sink (sink.py, 127.0.0.1:2586, its own
   process) and `mta serve` on that spool, every domain routed to the sink
   (`[routes] "*"`), so the daemon's whole delivery side runs: scheduler,
   leases, body reads, SMTP to the sink, attempt records.
3. Polls the sink's counter and the daemon's RSS and CPU (process tree) ten
   times a second until every message has arrived, then compares two windows
   of `--window` deliveries: one just after the start (about `-n` queued) and
   one from when `--low` were left (about 50,000 queued). Prints the delivery
   rate, RSS and CPU-s per 1000 of both and their ratio, a line per tenth of
   the run (RSS should stay flat) and the peak RSS.

Goals (issue 12): RSS < 500 MB at 1,000,000 queued; the delivery rate at 1M
the same as at 50k. A full run fills ~2.7 GB in the system temp dir (~2-3 min)
and delivers for several minutes; `-n 50000` is a quick check (the windows
shrink: `--low` is at most n/2, a window at most `--low`/2). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import benchlib  # noqa: E402  (scripts/benchlib.py)

RSS_GOAL = 500 * 1000 * 1000
MB = 1000 * 1000


class Sample(NamedTuple):
    t: float            # time.time()
    delivered: int      # messages the sink has counted
    rss_main: int       # bytes, the daemon's main process
    rss_tree: int       # bytes, the daemon and every process under it
    cpu: float          # CPU seconds of the tree so far


class Window(NamedTuple):
    start: int          # deliveries before it
    end: int            # deliveries at its end


def windows(n: int, low: int, window: int) -> tuple[Window, Window]:
    """The window just after the start (skipping a quarter window of warm-up:
    first connections) and the one that begins when `low` are left queued;
    `low` at most n/2 and the window at most low/2, so a small run works."""
    low = max(2, min(low, n // 2))
    w = max(1, min(window, low // 2))
    skip = w // 4
    return Window(skip, skip + w), Window(n - low, n - low + w)


def time_at(samples: list[Sample], count: int) -> float:
    """When the sink reached `count` deliveries, interpolated between polls."""
    prev = samples[0]
    for s in samples:
        if s.delivered >= count:
            if s.delivered == prev.delivered:
                return s.t
            share = (count - prev.delivered) / (s.delivered - prev.delivered)
            return prev.t + (s.t - prev.t) * share
        prev = s
    raise ValueError(f"never reached {count} deliveries")


def measure(samples: list[Sample], w: Window) -> dict[str, float]:
    """Rate (msg/s), peak RSS (main and tree) and CPU-s per 1000 over a window."""
    t0, t1 = time_at(samples, w.start), time_at(samples, w.end)
    inside = [s for s in samples if t0 <= s.t <= t1] or [min(samples, key=lambda s: abs(s.t - t1))]
    cpu0 = min(samples, key=lambda s: abs(s.t - t0)).cpu
    cpu1 = min(samples, key=lambda s: abs(s.t - t1)).cpu
    return {"rate": (w.end - w.start) / (t1 - t0) if t1 > t0 else float("nan"),
            "rss_main": max(s.rss_main for s in inside),
            "rss_tree": max(s.rss_tree for s in inside),
            "cpu_per_1000": (cpu1 - cpu0) / (w.end - w.start) * 1000}


# -- the daemon's process tree from /proc ------------------------------------------------------


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _usage(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds incl. reaped children) of one process; 0s if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0.0
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmRSS:")), 0)
    tck = os.sysconf("SC_CLK_TCK")
    return rss, sum(int(x) for x in stat[11:15]) / tck      # utime stime cutime cstime


_TREE: dict[int, tuple[float, list[int]]] = {}


def sample(pid: int, ctl_port: int) -> Sample:
    # The /proc walk for the tree costs a few ms: once a second is enough
    # (workers are long-lived); each process's usage is read every time.
    at, pids = _TREE.get(pid, (0.0, []))
    if time.time() - at > 1.0:
        pids = _tree(pid)
        _TREE[pid] = (time.time(), pids)
    usage = [_usage(p) for p in pids]
    delivered = int(benchlib.sink_stats(ctl_port)["messages"])
    return Sample(time.time(), delivered, usage[0][0], sum(u[0] for u in usage),
                  sum(u[1] for u in usage))


# -- filling the spool -------------------------------------------------------------------------


def message(size: int) -> bytes:
    head = (b"From: bench@sender.test\r\nTo: queued@bench.test\r\nSubject: queued\r\n"
            b"Message-ID: <queued@bench.test>\r\n\r\n")
    line = b"0123456789abcdef" * 4 + b"\r\n"
    body = (line * (size // len(line) + 1))[:max(0, size - len(head) - 2)]
    return head + body + b"\r\n"


async def fill(state: Path, n: int, domains: int, size: int) -> None:
    from mta.spool import NewMessage, Spool
    spool = await Spool.open(state, now=time.time())
    body, batch, t0 = message(size), 1000, time.time()
    try:
        for start in range(0, n, batch):
            await asyncio.gather(*(spool.enqueue(NewMessage(
                sender="bench@sender.test", recipients=(f"u{i}@d{i % domains}.test",),
                body=body), time.time()) for i in range(start, min(n, start + batch))))
            if (start + batch) % 100_000 == 0:
                print(f"bench_million: {start + batch} queued ({time.time() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
    finally:
        await spool.close()


# -- the run -----------------------------------------------------------------------------------


def config(state: Path, port: int, sink_port: int, concurrency: int) -> str:
    return f"""
[server]
hostname = "bench.mta.test"
state_dir = "{state}"
mode = "production"
log_level = "warning"
[[listeners]]
name = "bench"
address = "127.0.0.1:{port}"
tls = "none"
trusted_networks = ["127.0.0.0/8"]
[admin]
address = "127.0.0.1:{port + 1}"
token = "bench-admin-token-0123456789abcdef"
[delivery]
concurrency_per_destination = {concurrency}
[routes]
"*" = "127.0.0.1:{sink_port}"
"""


def watch(daemon: subprocess.Popen[bytes], ctl: int, n: int, stall: float) -> list[Sample]:
    """Samples ten times a second until the sink has `n` or nothing moves for `stall` s."""
    samples = [sample(daemon.pid, ctl)]
    moved = time.time()
    while samples[-1].delivered < n and daemon.poll() is None:
        time.sleep(0.1)
        s = sample(daemon.pid, ctl)
        if s.delivered != samples[-1].delivered:
            moved = s.t
        samples.append(s)
        if s.t - moved > stall:
            print(f"bench_million: no delivery for {stall:.0f} s at {s.delivered}/{n}",
                  file=sys.stderr)
            break
    return samples


def report(samples: list[Sample], n: int, args: argparse.Namespace, started: float,
           fill_s: float, hwm: int) -> int:
    first = next((s.t for s in samples if s.delivered > 0), float("nan"))
    print(f"\n{n} messages of {args.size} B to {args.domains} domains, queued offline in "
          f"{fill_s:.0f} s; daemon start to first delivery {first - started:.1f} s; "
          f"concurrency {args.concurrency}")
    step = max(1, n // 10)
    print("\n| delivered | queued | msg/s since last line | RSS daemon MB | RSS tree MB |")
    print("|---|---|---|---|---|")
    last = None
    for mark in range(step, n + 1, step):
        if samples[-1].delivered < mark:
            break
        t = time_at(samples, mark)
        s = min(samples, key=lambda x: abs(x.t - t))
        rate = "" if last is None else f"{step / (t - last):.0f}"
        print(f"| {mark} | {n - mark} | {rate} | {s.rss_main / MB:.0f} | {s.rss_tree / MB:.0f} |")
        last = t
    if samples[-1].delivered < n:
        print(f"\nincomplete: {samples[-1].delivered} of {n} delivered")
        return 1
    hi, lo = windows(n, args.low, args.window)
    a, b = measure(samples, hi), measure(samples, lo)
    print("\n| window | queued during it | msg/s | RSS daemon MB | RSS tree MB | CPU-s /1000 |")
    print("|---|---|---|---|---|---|")
    for w, m in ((hi, a), (lo, b)):
        print(f"| deliveries {w.start}-{w.end} | {n - w.start} to {n - w.end} | {m['rate']:.0f} "
              f"| {m['rss_main'] / MB:.0f} | {m['rss_tree'] / MB:.0f} | {m['cpu_per_1000']:.2f} |")
    peak = max(s.rss_tree for s in samples)
    print(f"\nrate at {n - hi.start} queued / at {n - lo.start} queued: "
          f"{a['rate'] / b['rate']:.2f}x (goal: the same, 1.0x)")
    print(f"peak RSS: daemon {hwm / MB:.0f} MB (VmHWM), tree {peak / MB:.0f} MB (sampled); "
          f"goal < {RSS_GOAL / MB:.0f} MB at 1,000,000 queued: "
          f"{'met' if max(hwm, peak) < RSS_GOAL else 'not met'}")
    return 0


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1_000_000, help="messages queued (default 1,000,000)")
    ap.add_argument("--domains", type=int, default=5000)
    ap.add_argument("--size", type=int, default=2048, help="message bytes (default 2048)")
    ap.add_argument("--low", type=int, default=50_000, help="the second window starts when "
                    "this many are left (default 50,000; at most n/2)")
    ap.add_argument("--window", type=int, default=20_000, help="deliveries per window")
    ap.add_argument("--concurrency", type=int, default=20,
                    help="[delivery] concurrency_per_destination (everything is one route)")
    ap.add_argument("--stall", type=float, default=60.0)
    ap.add_argument("--port-offset", type=int, default=0,
                    help="sink on 2586+K (ctl +1), mta on 2588+K (admin +1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (spool, logs)")
    ap.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    bench = Path(args.bench).resolve()
    sink_port, port = 2586 + args.port_offset, 2588 + args.port_offset
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-million-"))
    state = tmp / "state"
    t0 = time.time()
    asyncio.run(fill(state, args.n, args.domains, args.size))
    fill_s = time.time() - t0
    (tmp / "mta.toml").write_text(config(state, port, sink_port, args.concurrency))
    sink = subprocess.Popen([sys.executable, str(bench / "sink.py"), "--port", str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "sink.log", "wb"))
    daemon = None
    try:
        benchlib.wait_listen(sink_port + 1, sink, "sink.py")
        benchlib.sink_stats(sink_port + 1, "RESET")
        started = time.time()
        cmd, env = benchlib.mta_command(ROOT, "serve", "--config", str(tmp / "mta.toml"))
        daemon = subprocess.Popen(cmd, env=env, stderr=open(tmp / "mta.log", "wb"))
        samples = watch(daemon, sink_port + 1, args.n, args.stall)
        if daemon.poll() is not None:
            log = (tmp / "mta.log").read_text(errors="replace").strip().splitlines()[-5:]
            sys.exit(f"bench_million: mta serve exited ({daemon.returncode}): " + "\n".join(log))
        hwm = vm_hwm(daemon.pid)
        return report(samples, args.n, args, started, fill_s, hwm)
    finally:
        for proc in (daemon, sink):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
