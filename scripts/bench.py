#!/usr/bin/env python3
"""Throughput benchmark: mta against Postfix, same machine, same run, same load.

    scripts/bench.py [-n 5000] [-c 10] [-s 20480] [--repeats 2] [--no-postfix]
                     [--client smtp-source|py] [--bench ../shared/bench]

What it does:
  1. starts the shared harness's counting sink on 127.0.0.1:2526 (sink-up.sh);
  2. starts Postfix from the harness (postfix-up.sh, :2525) unless --no-postfix
     or Postfix is not installed (apt-get install postfix; see the harness README);
  3. starts `mta serve` inside the cpuacct cgroup `bench-mta` (cgexec.sh) with
     a generated config: a listener on 127.0.0.1:2535 with tls = "none" and
     trusted_networks = 127.0.0.0/8 (Postfix's side runs with mynetworks and no
     TLS, so both are measured the same way), every domain routed to the sink,
     durability on (it always is);
  4. runs the harness's load.py against each target in turn, interleaved,
     `--repeats` times, and prints accepted msg/s, end-to-end msg/s and MTA
     CPU-seconds per 1000 messages for each, plus the ratio mta / postfix.

Only loopback addresses are used (load.py and sink.py refuse anything else).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (scripts/benchlib.py)
MTA_PORT = 2535


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"bench: nothing listens on 127.0.0.1:{port}")


def mta_config(state: Path, sink_port: int) -> str:
    return f"""
[server]
hostname = "bench.mta.test"
state_dir = "{state}"
mode = "production"
log_level = "warning"

[[listeners]]
name = "bench"
address = "127.0.0.1:{MTA_PORT}"
tls = "none"
trusted_networks = ["127.0.0.0/8"]
max_recipients = 1000

[delivery]
concurrency_per_destination = 20

[routes]
"*" = "127.0.0.1:{sink_port}"
"""


def run_load(bench: Path, target: str, cgroup: str, args, label: str) -> dict:
    return benchlib.run_load(bench, target=target, n=args.n, c=args.c, s=args.s,
                             client=args.client, cgroup=cgroup, label=label)


def pick(rec: dict, *names: str) -> float:
    for n in names:
        if rec.get(n) is not None:
            return float(rec[n])
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("-s", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--client", default="smtp-source" if shutil.which("smtp-source") or
                    Path("/usr/sbin/smtp-source").exists() else "py")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    args = ap.parse_args()
    bench = Path(args.bench).resolve()
    if not (bench / "load.py").exists():
        sys.exit(f"bench: the shared harness is not at {bench} (use --bench)")
    postfix = not args.no_postfix and Path("/usr/sbin/postfix").exists()
    if not args.no_postfix and not postfix:
        print("bench: Postfix is not installed; measuring mta alone "
              "(apt-get install postfix, see the harness README)", file=sys.stderr)

    subprocess.run([str(bench / "sink-up.sh")], check=True, cwd=bench)
    if postfix:
        subprocess.run([str(bench / "postfix-up.sh")], check=True, cwd=bench)
    state = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    cfg = state / "mta.toml"
    cfg.write_text(mta_config(state / "state", 2526))
    mta_bin = ROOT / ".venv" / "bin" / "mta"
    daemon = subprocess.Popen([str(bench / "cgexec.sh"), "bench-mta", str(mta_bin), "serve",
                               "--config", str(cfg)], stderr=open(state / "mta.log", "wb"))
    results: dict[str, list[dict]] = {"mta": [], "postfix": []}
    try:
        wait_port(MTA_PORT)
        for i in range(args.repeats):
            if postfix:
                results["postfix"].append(run_load(bench, "127.0.0.1:2525", "bench-postfix",
                                                   args, "postfix"))
            results["mta"].append(run_load(bench, f"127.0.0.1:{MTA_PORT}", "bench-mta", args, "mta"))
            print(f"bench: repeat {i + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        if postfix:
            subprocess.run([str(bench / "postfix-down.sh"), "--keep-sink"], cwd=bench)
        subprocess.run([str(bench / "sink-down.sh")], cwd=bench)

    def med(recs, *keys):
        vals = [pick(r, *keys) for r in recs]
        return statistics.median(vals) if vals else float("nan")

    print(f"\nN={args.n} C={args.c} S={args.s} client={args.client} repeats={args.repeats} "
          f"(median)\n")
    print(f"| MTA | accept msg/s | end-to-end msg/s | MTA CPU-s /1000 msg |")
    print(f"|---|---|---|---|")
    rows = {}
    for name, recs in results.items():
        if not recs:
            continue
        rows[name] = (med(recs, "accept_mps"), med(recs, "e2e_mps"),
                      med(recs, "mta_cpu_per_1000", "mta_cpu_s_per_1000"))
        a, e, c = rows[name]
        print(f"| {name} | {a:.0f} | {e:.0f} | {c:.2f} |")
    if "postfix" in rows:
        (a1, e1, c1), (a0, e0, c0) = rows["mta"], rows["postfix"]
        print(f"\nratio mta/postfix: accept {a1 / a0:.2f}x, end-to-end {e1 / e0:.2f}x, "
              f"CPU per message {c1 / c0:.2f}x (lower is better)")
    print(json.dumps({"args": vars(args), "results": results}), file=open(state / "results.json", "w"))
    print(f"\nraw records: {state / 'results.json'}; mta log: {state / 'mta.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
