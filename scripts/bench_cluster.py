#!/usr/bin/env python3
"""Aggregate throughput of 1, 2 and 3 cluster nodes on this machine (issue 19).

    scripts/bench_cluster.py [-n 3000] [-c 10] [--repeats 2] [--json]

Starts a real PostgreSQL and Redis on loopback ports in temporary
directories (tests/support/engines.py: Debian's postgresql and redis-server,
which `scripts/setup.sh test` installs), the lean counting sink of
scripts/bench_api.py (its own process), and then, per scenario, `mta serve`
processes (plain SMTP for trusted loopback, `[server] workers = 0`: one
process per node, so a node's CPU is one process's) all routed to that sink:

  sqlite      one node without [cluster]: the embedded default (the baseline)
  cluster-1   one node in a cluster (fresh database and Redis db)
  cluster-2   two nodes, the load split evenly between them
  cluster-3   three nodes

Load: `-c` SMTP clients in all (split across the nodes), MAIL/RCPT/DATA
pipelined, `-n` messages of 20 KiB in all per run (scripts/bench_api.py's
client and message). Accept rate = messages acknowledged / time to
acknowledge them all; end to end = messages at the sink / time until the
sink has them all. CPU: utime + stime read from /proc of every node
process, of every postgres process of the bench's server and of
redis-server, before and after the run (CPU-ms per message). The line the
issue asks for: the CPU per message the shared engines add on a node
(cluster-1's node CPU/msg minus sqlite's), and what PostgreSQL and Redis
themselves burn per message. Expect the 2-core ceiling: more nodes on the
same two cores share them. Loopback only. Exit 1 when a message failed or
did not reach the sink.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from bench_api import free_port, message, smtp_run, wait_delivered  # noqa: E402
from tests.support.engines import (MISSING_ENGINES, PostgresServer,  # noqa: E402
                                   RedisServer)

TICKS = os.sysconf("SC_CLK_TCK")
SCENARIOS = (("sqlite", 1, False), ("cluster-1", 1, True), ("cluster-2", 2, True),
             ("cluster-3", 3, True))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime
    return total / TICKS


def postgres_pids(pg: PostgresServer) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                if b"postgres" in cmd and (str(pg.data).encode() in cmd
                                           or _parent_is_postmaster(d, pg)):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _parent_is_postmaster(d: Path, pg: PostgresServer) -> bool:
    pidfile = pg.data / "postmaster.pid"
    try:
        master = pidfile.read_text().split()[0]
        ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[1]
        return ppid == master
    except (OSError, IndexError):
        return False


def redis_pids(rds: RedisServer) -> list[int]:
    proc = getattr(rds, "_proc", None)
    return [proc.pid] if proc is not None else []


def node_config(state: Path, smtp: int, admin: int, sink: int, cluster: str) -> str:
    return f"""[server]
hostname = "bench.mta.test"
state_dir = "{state}"
log_level = "warning"
workers = 0
[[listeners]]
name = "bench"
address = "127.0.0.1:{smtp}"
tls = "none"
trusted_networks = ["127.0.0.0/8"]
[admin]
address = "127.0.0.1:{admin}"
token = "bench-cluster-admin-token-0123456789"
[policy]
require_verified_domain = false
[routes]
"*" = "127.0.0.1:{sink}"
{cluster}"""


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    smtp: int


def start_nodes(tmp: Path, k: int, sink: int, cluster: str) -> list[Node]:
    nodes = []
    for i in range(k):
        state = tmp / f"node{i}"
        state.mkdir()
        smtp, admin = free_port(), free_port()
        extra = cluster.replace("NODE", f"n{i}") if cluster else ""
        cfg = state / "mta.toml"
        cfg.write_text(node_config(state / "state", smtp, admin, sink, extra))
        cmd, env = benchlib.mta_command(ROOT, "serve", "--config", str(cfg))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(state / "log", "wb"))
        benchlib.wait_listen(smtp, proc, f"node {i}")
        benchlib.wait_http(f"http://127.0.0.1:{admin}/readyz", 60,
                           token="bench-cluster-admin-token-0123456789")
        nodes.append(Node(proc, smtp))
    return nodes


def stop_nodes(nodes: list[Node]) -> None:
    for n in nodes:
        n.proc.send_signal(signal.SIGTERM)
    for n in nodes:
        try:
            n.proc.wait(30)
        except subprocess.TimeoutExpired:
            n.proc.kill()


async def load(nodes: list[Node], n: int, c: int) -> tuple[int, int, str, float]:
    msg = message(20480)
    share = [n // len(nodes) + (1 if i < n % len(nodes) else 0) for i in range(len(nodes))]
    cs = [max(1, c // len(nodes)) for _ in nodes]
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(smtp_run(node.smtp, msg, ci, ni)
                                  for node, ci, ni in zip(nodes, cs, share)))
    seconds = time.perf_counter() - t0
    errors = [r.first_error for r in runs if r.first_error]
    return (sum(r.ok for r in runs), sum(r.failed for r in runs),
            errors[0] if errors else "", seconds)


def one_run(a: argparse.Namespace, name: str, k: int, clustered: bool, pg: PostgresServer,
            rds: RedisServer, sink: tuple[int, int], sent_before: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mta-bench-cluster-") as tmp:
        cluster = ""
        if clustered:
            secret = Path(tmp) / "cluster-secret"        # one key for every node
            secret.write_text(os.urandom(32).hex())
            cluster = (f'[cluster]\ndatabase = "{pg.new_database()}"\n'
                       f'redis = "{rds.new_db()}"\nnode = "NODE"\nsecret_file = "{secret}"\n')
        nodes = start_nodes(Path(tmp), k, sink[0], cluster)
        try:
            asyncio.run(load(nodes, min(200, a.n), a.c))          # warm-up
            sent = sent_before + min(200, a.n)
            wait_delivered(sink[1], sent, 120)
            pids = [nd.proc.pid for nd in nodes]
            engines = postgres_pids(pg) + redis_pids(rds)
            node0, eng0 = cpu_seconds(pids), cpu_seconds(engines)
            t0 = time.perf_counter()
            ok, failed, err, accept_s = asyncio.run(load(nodes, a.n, a.c))
            got = wait_delivered(sink[1], sent + ok, 120 + a.n / 20) - sent
            e2e_s = time.perf_counter() - t0
            node_cpu, eng_cpu = cpu_seconds(pids) - node0, cpu_seconds(engines) - eng0
        finally:
            stop_nodes(nodes)
    return {"scenario": name, "nodes": k, "ok": ok, "failed": failed, "error": err,
            "delivered": got, "accept_mps": ok / accept_s, "e2e_mps": got / e2e_s,
            "node_cpu_ms_per_msg": 1000 * node_cpu / max(1, ok),
            "engine_cpu_ms_per_msg": 1000 * eng_cpu / max(1, ok),
            "sent_total": sent + ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=3000, help="messages per run, over all nodes")
    ap.add_argument("-c", type=int, default=10, help="SMTP clients per run, over all nodes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if MISSING_ENGINES:
        sys.exit(f"bench_cluster: {MISSING_ENGINES}")
    pg, rds = PostgresServer().start(), RedisServer().start()
    sink_proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_api.py"),
                                  "--sink"], stdout=subprocess.PIPE)
    assert sink_proc.stdout is not None
    sink = tuple(int(p) for p in sink_proc.stdout.readline().split())
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SCENARIOS}
    sent, bad = 0, False
    try:
        for rep in range(a.repeats):
            order = SCENARIOS if rep % 2 == 0 else tuple(reversed(SCENARIOS))
            for name, k, clustered in order:
                r = one_run(a, name, k, clustered, pg, rds, (sink[0], sink[1]), sent)
                sent = r.pop("sent_total")
                runs[name].append(r)
                bad |= bool(r["failed"]) or r["delivered"] < r["ok"]
                print(f"bench_cluster: repeat {rep + 1} {name}: accept {r['accept_mps']:.0f}"
                      f" msg/s, e2e {r['e2e_mps']:.0f} msg/s, node CPU "
                      f"{r['node_cpu_ms_per_msg']:.2f} ms/msg, engines "
                      f"{r['engine_cpu_ms_per_msg']:.2f} ms/msg"
                      + (f", {r['failed']} failed ({r['error']})" if r["failed"] else ""),
                      file=sys.stderr)
    finally:
        sink_proc.kill()
        pg.destroy()
        rds.destroy()
    print(report(a, runs) if not a.json else json.dumps(runs, indent=1))
    return 1 if bad else 0


def report(a: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> str:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])
    lines = [f"bench_cluster: -n {a.n} -c {a.c}, {a.repeats} repeats (medians), "
             f"{os.cpu_count()} CPUs, 20 KiB messages",
             f"{'scenario':<10} {'nodes':>5} {'accept msg/s':>13} {'e2e msg/s':>10} "
             f"{'node CPU ms/msg':>16} {'engines CPU ms/msg':>19}"]
    for name, k, _ in SCENARIOS:
        lines.append(f"{name:<10} {k:>5} {med(name, 'accept_mps'):>13.0f} "
                     f"{med(name, 'e2e_mps'):>10.0f} {med(name, 'node_cpu_ms_per_msg'):>16.2f} "
                     f"{med(name, 'engine_cpu_ms_per_msg'):>19.2f}")
    base = med("sqlite", "node_cpu_ms_per_msg")
    added = med("cluster-1", "node_cpu_ms_per_msg") - base
    lines.append(f"shared engines' cost per message on a node: {added:+.2f} CPU-ms "
                 f"({100 * added / base:+.0f}% of the SQLite node's {base:.2f}), plus "
                 f"{med('cluster-1', 'engine_cpu_ms_per_msg'):.2f} CPU-ms in PostgreSQL and "
                 "Redis themselves")
    for name in ("cluster-2", "cluster-3"):
        lines.append(f"{name}: e2e {med(name, 'e2e_mps') / med('cluster-1', 'e2e_mps'):.2f}x "
                     "cluster-1 (same 2 cores)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
