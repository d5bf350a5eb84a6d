"""What the benchmark scripts share. Loopback only.

Harness plumbing: `daemon_config` (the side benchmarks' mta config),
`wait_http`, `run_load` (one run of the shared harness's load.py, which prints
one JSON record), `sink_stats` (the counting sink's control port).

The comparison bench.py prints (pure, tested in tests/test_bench_scripts.py):
`CELLS` (the cells of issue 12), `select_cells`, `medians` (per cell and MTA,
over the runs that completed) and `ratio_table` (mta vs Postfix, with the
issue's goals: end-to-end >= 1.5x, CPU per message <= 0.6x, accept p99 <=
Postfix's).
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Record = dict[str, Any]    # one load.py JSON record

GOAL_E2E = 1.5       # mta end-to-end msg/s >= 1.5x Postfix's
GOAL_CPU = 0.6       # mta CPU-s per message <= 0.6x Postfix's
GOAL_LINES = ("goals (issue 12): end-to-end >= 1.5x Postfix in every cell; "
              "CPU-s per 1000 messages <= 0.6x Postfix; accept p99 <= Postfix's",)


def daemon_config(state: Path | str, *, admin_port: int, token: str) -> str:
    """The mta config the side benchmarks (admin, webhooks) run: plain SMTP on
    127.0.0.1:2535 for trusted loopback, the admin API on `admin_port`, every
    domain routed to the harness's sink on 127.0.0.1:2526. Append tables to it."""
    return f"""
[server]
hostname = "bench.mta.test"
state_dir = "{state}"
log_level = "warning"
[[listeners]]
name = "bench"
address = "127.0.0.1:2535"
tls = "none"
trusted_networks = ["127.0.0.0/8"]
[admin]
address = "127.0.0.1:{admin_port}"
token = "{token}"
[routes]
"*" = "127.0.0.1:2526"
"""


def mta_command(root: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `mta ARGS` from the tree at `root`
    (its venv's interpreter, its own code first on the path, whatever the venv
    has installed)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return [str(root / ".venv" / "bin" / "python"), "-m", "mta", *args], env


def wait_listen(port: int, proc: subprocess.Popen[bytes], what: str,
                timeout: float = 60.0) -> None:
    """Until something listens on 127.0.0.1:`port`, or exit (naming `what`)
    when `proc` exits first or the time is up."""
    prog = Path(sys.argv[0]).stem
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"{prog}: {what} exited ({proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"{prog}: {what} does not listen on 127.0.0.1:{port}")


def wait_http(url: str, timeout: float = 30.0, token: str | None = None) -> None:
    """Until `url` answers 2xx (the daemon's /healthz, or /readyz with the
    admin `token`), or exit."""
    end = time.time() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.time() < end:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1)
            return
        except OSError:          # refused, or an HTTPError (503: not ready yet)
            time.sleep(0.1)
    sys.exit(f"bench: {url} did not answer within {timeout:.0f}s")


def run_load(bench: Path, *, target: str, n: int, c: int, s: int, client: str,
             cgroup: str | None = None, label: str = "mta", sink: str | None = None,
             queue_cmd: str | None = None, check: bool = True) -> Record:
    """One load.py run. `check`: exit when it fails; else return its record
    (load.py prints it even for a stalled run) or {"error": …}."""
    cmd = [sys.executable, str(bench / "load.py"), "--target", target, "-n", str(n),
           "-c", str(c), "-s", str(s), "-r", "1", "--client", client, "--label", label]
    if cgroup:
        cmd += ["--mta-cgroup", cgroup]
    if sink:
        cmd += ["--sink", sink]
    if queue_cmd:
        cmd += ["--queue-cmd", queue_cmd]
    out = subprocess.run(cmd, cwd=bench, capture_output=True, text=True)
    if out.returncode != 0 and check:
        print(out.stderr, file=sys.stderr)
        sys.exit(f"bench: load.py failed for {label}")
    lines = out.stdout.strip().splitlines()
    try:
        return dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {"label": label, "n": n, "c": c, "s": s, "client": client,
                "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}


def sink_stats(ctl_port: int, command: str = "STATS") -> Record:
    """One command on the counting sink's control port (one JSON line back)."""
    with socket.create_connection(("127.0.0.1", ctl_port), timeout=5) as so:
        so.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = so.recv(65536)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf))


# -- the cells of issue 12 and the comparison table ------------------------------------------


@dataclass(frozen=True)
class Cell:
    key: str                    # --cells name
    title: str                  # row label in the table
    c: int                      # concurrent client sessions
    s: int                      # body bytes
    n_cap: int | None = None    # at most this many messages (200 KiB: -n 2000)
    client: str | None = None   # None: the throughput client (smtp-source when installed)
    delay_ms: int = 0           # the sink holds every reply back this long (a WAN round trip)
    latency: bool = False       # its accept latency p50/p99 is the latency row

    def n(self, n: int) -> int:
        return min(n, self.n_cap) if self.n_cap else n


CELLS: tuple[Cell, ...] = (
    Cell("c10-20k", "C=10, 20 KiB", 10, 20480),
    Cell("c1-1k", "C=1, 1 KiB", 1, 1024),
    Cell("c50-1k", "C=50, 1 KiB", 50, 1024),
    Cell("c10-200k", "C=10, 200 KiB", 10, 204800, n_cap=2000),
    Cell("wan", "C=10, 20 KiB, sink replies +20 ms", 10, 20480, delay_ms=20),
    Cell("latency", "C=10, 20 KiB, py client", 10, 20480, client="py", latency=True),
)


def select_cells(spec: str | None, *, c: int | None = None, s: int | None = None,
                 delay_ms: int = 0) -> list[Cell]:
    """`--cells` ("all" or comma-separated keys) or, when -c or -s is given,
    the one custom cell they describe (C=10, 20 KiB for the one not given)."""
    if c is not None or s is not None:
        if spec:
            raise ValueError("give --cells or -c/-s (a custom cell), not both")
        c, s = c or 10, s or 20480
        return [Cell("custom", f"C={c}, {s} B" + (f", sink +{delay_ms} ms" if delay_ms else ""),
                     c, s, delay_ms=delay_ms)]
    if not spec or spec == "all":
        return list(CELLS)
    by_key = {cell.key: cell for cell in CELLS}
    unknown = [k for k in spec.split(",") if k.strip() not in by_key]
    if unknown:
        raise ValueError(f"unknown cell(s) {', '.join(unknown)}; "
                         f"known: all, {', '.join(by_key)}")
    return [by_key[k.strip()] for k in spec.split(",")]


def completed(rec: Record) -> bool:
    """A run that counts: every message accepted and delivered, nothing stalled."""
    return (not rec.get("error") and not rec.get("stalled") and bool(rec.get("e2e_mps"))
            and rec.get("accepted") == rec.get("n"))


def _median(values: list[float | None]) -> float:
    got = [float(v) for v in values if v is not None]
    return statistics.median(got) if got else math.nan


def medians(recs: list[Record]) -> dict[str, float]:
    """Medians over the completed runs: accept and e2e msg/s, CPU-s per 1000,
    accept latency p50/p99 (ms, py client), and the CPU the rest of the box
    used (cores: other tenants, kernel threads) as a noise gauge."""
    ok = [r for r in recs if completed(r)]
    lat = [r.get("lat_dot_250_ms") or {} for r in ok]
    return {
        "n": float(recs[0].get("n") or 0) if recs else math.nan,
        "runs": float(len(ok)), "failed": float(len(recs) - len(ok)),
        "accept": _median([r.get("accept_mps") for r in ok]),
        "e2e": _median([r.get("e2e_mps") for r in ok]),
        "cpu": _median([r.get("mta_cpu_per_1000") for r in ok]),
        "p50": _median([x.get("p50") for x in lat]),
        "p99": _median([x.get("p99") for x in lat]),
        "rest": _median([(r["host_busy_s"] - (r.get("mta_cpu_s") or 0) - r["sink_cpu_s"]
                          - r["client_cpu_s"]) / r["wall_s"] for r in ok if r.get("wall_s")]),
    }


def _f(v: float, nd: int = 0) -> str:
    return "–" if math.isnan(v) else f"{v:.{nd}f}"


def _x(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def verdict(e2e_ratio: float, cpu_ratio: float) -> str:
    """Whether a cell meets the goals; names the ones it misses."""
    if math.isnan(e2e_ratio) or math.isnan(cpu_ratio):
        return "–"
    missed = [name for name, bad in (("e2e", e2e_ratio < GOAL_E2E), ("CPU", cpu_ratio > GOAL_CPU))
              if bad]
    return "met" if not missed else "short: " + ", ".join(missed)


def ratio_table(cells: list[Cell], med: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    """The markdown lines of the comparison: one row per cell (end-to-end msg/s
    and CPU-s per 1000 for both, their ratios, the goal), then the accept
    latency row of each latency cell. `med[(cell key, "mta"|"postfix")]`."""
    nan: dict[str, float] = {k: math.nan for k in ("e2e", "cpu", "p50", "p99", "runs")}
    out = ["| cell | mta e2e msg/s | Postfix e2e msg/s | e2e ratio | CPU-s/1000 mta "
           "| CPU-s/1000 Postfix | CPU ratio | goal |",
           "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        m, p = med.get((cell.key, "mta"), nan), med.get((cell.key, "postfix"), nan)
        re, rc = _x(m["e2e"], p["e2e"]), _x(m["cpu"], p["cpu"])
        out.append(f"| {cell.title} | {_f(m['e2e'])} | {_f(p['e2e'])} | {_f(re, 2)}x "
                   f"| {_f(m['cpu'], 2)} | {_f(p['cpu'], 2)} | {_f(rc, 2)}x | {verdict(re, rc)} |")
    for cell in (c for c in cells if c.latency):
        m, p = med.get((cell.key, "mta"), nan), med.get((cell.key, "postfix"), nan)
        r99 = _x(m["p99"], p["p99"])
        goal = "–" if math.isnan(r99) else ("met" if r99 <= 1 else "short: p99")
        out.append(f"| accept latency p50/p99 ms ({cell.title}) | {_f(m['p50'], 1)} / "
                   f"{_f(m['p99'], 1)} | {_f(p['p50'], 1)} / {_f(p['p99'], 1)} "
                   f"| p99 {_f(r99, 2)}x | | | | {goal} |")
    return out


def detail_table(cells: list[Cell], med: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    """Accept rates, runs counted, and the rest-of-box noise gauge per cell and MTA."""
    out = ["| cell | MTA | n | runs (failed) | accept msg/s | e2e msg/s | rest of box cores |",
           "|---|---|---|---|---|---|---|"]
    for cell in cells:
        for label in ("mta", "postfix"):
            m = med.get((cell.key, label))
            if m is None:
                continue
            out.append(f"| {cell.title} | {label} | {_f(m['n'])} | {int(m['runs'])} "
                       f"({int(m['failed'])}) | {_f(m['accept'])} | {_f(m['e2e'])} "
                       f"| {_f(m['rest'], 2)} |")
    return out
