#!/usr/bin/env python3
"""Throughput benchmark: mta against Postfix, same machine, same run, same load.

    scripts/bench.py [--cells all|KEY,…] [-n 5000] [--repeats 3] [--no-postfix]
                     [--client smtp-source|py] [--workers N] [--port-offset K]
    scripts/bench.py -c 10 -s 20480 [--reply-delay MS]     # one custom cell

The cells (issue 12; keys for --cells): c10-20k (C=10, 20 KiB), c1-1k, c50-1k,
c10-200k (200 KiB, at most 2000 messages), wan (C=10, 20 KiB with the sink
holding every reply back 20 ms, a WAN round trip: pipelining pays it once per
batch), latency (C=10, 20 KiB with the harness's py client, which measures
accept latency p50/p99). The throughput cells use smtp-source when installed.

What it does, per sink profile (no delay; then 20 ms for the wan cell):
  1. starts the shared harness's counting sink (sink-up.sh; 127.0.0.1:2526, or
     :2566 with SINK_REPLY_DELAY_MS=20) and an isolated Postfix relaying to it
     (postfix-up.sh: :2525 from /tmp/pfbench, or :2565 from /tmp/pfbench-wan)
     unless --no-postfix; whatever was already running is used and left running;
  2. starts `mta serve` in its own cpuacct cgroup (cgexec.sh bench-mta) with a
     generated config: a listener on 127.0.0.1:2535 (:2575) with tls = "none"
     and trusted_networks = 127.0.0.0/8 (Postfix runs with mynetworks and no
     TLS: both measured alike), every domain routed to the same sink,
     durability on (it always is), and waits for /readyz;
  3. runs the harness's load.py against each MTA in turn, interleaved (the
     order alternates per repeat), `--repeats` times per cell.
Then prints one ratio table: per cell, end-to-end msg/s and CPU-s per 1000
messages of both with their ratios and whether the goals are met, and the
accept latency p50/p99 row; below it accept rates and the noise gauge (CPU
the rest of the box used). Medians over completed runs; stalled or failed
runs are counted and excluded. `--port-offset K` moves every port (and the
Postfix instance directories) by K, so a second run on the box cannot share
a sink with this one. Loopback only (load.py and sink.py refuse anything else).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (scripts/benchlib.py)
from benchlib import Cell, Record  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


@dataclass(frozen=True)
class Site:
    """One sink profile: its sink, its Postfix instance and its mta daemon."""
    bench: Path
    delay_ms: int
    offset: int = 0

    @property
    def base_port(self) -> int:          # 2525 without delay, 2565 with one
        return (2525 if self.delay_ms == 0 else 2565) + self.offset

    @property
    def postfix_port(self) -> int:
        return self.base_port

    @property
    def sink_port(self) -> int:          # its control port is the next one
        return self.base_port + 1

    @property
    def mta_port(self) -> int:
        return self.base_port + 10

    @property
    def admin_port(self) -> int:
        return self.mta_port + 5000

    @property
    def suffix(self) -> str:
        return ("" if self.delay_ms == 0 else "-wan") + (f"-p{self.offset}" if self.offset else "")

    @property
    def env(self) -> dict[str, str]:
        """What the harness's scripts read (see its README)."""
        return dict(os.environ, SINK_PORT=str(self.sink_port),
                    BENCH_RUN=f"/tmp/bench-run{self.suffix}",
                    SINK_REPLY_DELAY_MS=str(self.delay_ms),
                    PFBENCH_BASE=f"/tmp/pfbench{self.suffix}", SMTPD_PORT=str(self.postfix_port),
                    PFBENCH_CGROUP=f"bench-postfix{self.suffix}")

    @property
    def mta_cgroup(self) -> str:
        return f"bench-mta{self.suffix}"

    @property
    def postfix_cgroup(self) -> str:
        return self.env["PFBENCH_CGROUP"]

    @property
    def queue_cmd(self) -> str:
        return f"PFBENCH_BASE={self.env['PFBENCH_BASE']} {self.bench / 'postfix-queue-count.sh'}"


def mta_config(state: Path, site: Site, workers: int | None) -> str:
    server_extra = f"workers = {workers}\n" if workers is not None else ""
    return f"""
[server]
hostname = "bench.mta.test"
state_dir = "{state}"
mode = "production"
log_level = "warning"
{server_extra}
[[listeners]]
name = "bench"
address = "127.0.0.1:{site.mta_port}"
tls = "none"
trusted_networks = ["127.0.0.0/8"]
max_recipients = 1000

[admin]
address = "127.0.0.1:{site.admin_port}"
token = "{ADMIN_TOKEN}"

[delivery]
concurrency_per_destination = 20

[routes]
"*" = "127.0.0.1:{site.sink_port}"
"""


def sink_running(site: Site) -> bool:
    """Whether this profile's sink runs already; exits when it runs with
    another reply delay (its command line says)."""
    pidf = Path(site.env["BENCH_RUN"]) / "sink.pid"
    try:
        pid = int(pidf.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False
    args = [a.decode() for a in cmdline]
    delay = args[args.index("--reply-delay") + 1] if "--reply-delay" in args else "0"
    if float(delay) != site.delay_ms:
        sys.exit(f"bench: the sink in {pidf} (pid {pid}) holds replies {delay} ms, this cell "
                 f"needs {site.delay_ms} ms; stop it (sink-down.sh) or use --port-offset")
    return True


def postfix_running(site: Site) -> bool:
    etc = Path(site.env["PFBENCH_BASE"]) / "etc"
    return (etc / "main.cf").exists() and subprocess.run(
        ["postfix", "-c", str(etc), "status"], capture_output=True).returncode == 0


def harness(site: Site, script: str, *args: str, check: bool = True) -> None:
    """Run one of the harness's scripts for this profile (its output: not ours)."""
    subprocess.run([str(site.bench / script), *args], cwd=site.bench, env=site.env,
                   stdout=subprocess.DEVNULL, check=check)


@contextlib.contextmanager
def running(site: Site, tmp: Path, postfix: bool, workers: int | None) -> Iterator[None]:
    """The sink, Postfix (if asked) and an mta daemon of this profile, up for
    the block; on the way out stops what this run started, and only that."""
    had_sink = sink_running(site)
    had_postfix = postfix and postfix_running(site)
    daemon = None
    try:
        harness(site, "sink-up.sh")
        if postfix:
            harness(site, "postfix-up.sh")
        state = tmp / f"mta{site.suffix or '-plain'}"
        state.mkdir()
        (state / "mta.toml").write_text(mta_config(state / "state", site, workers))
        cmd, env = benchlib.mta_command(ROOT, "serve", "--config", str(state / "mta.toml"))
        daemon = subprocess.Popen([str(site.bench / "cgexec.sh"), site.mta_cgroup, *cmd], env=env,
                                  stderr=open(state / "mta.log", "wb"), start_new_session=True)
        benchlib.wait_listen(site.mta_port, daemon, f"mta serve (see {state / 'mta.log'})")
        benchlib.wait_http(f"http://127.0.0.1:{site.admin_port}/readyz", timeout=60,
                           token=ADMIN_TOKEN)
        yield
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
            with contextlib.suppress(OSError):   # our cgroup, empty now; cgexec.sh made it
                os.rmdir(f"/sys/fs/cgroup/cpuacct/{site.mta_cgroup}")
        if postfix and not had_postfix:
            harness(site, "postfix-down.sh", "--keep-sink", check=False)
        if not had_sink:
            harness(site, "sink-down.sh", check=False)


def one_run(site: Site, cell: Cell, label: str, args: argparse.Namespace) -> Record:
    port, cgroup = ((site.mta_port, site.mta_cgroup) if label == "mta"
                    else (site.postfix_port, site.postfix_cgroup))
    rec = benchlib.run_load(site.bench, target=f"127.0.0.1:{port}", n=cell.n(args.n), c=cell.c,
                            s=cell.s, client=cell.client or args.client, cgroup=cgroup,
                            label=label, sink=f"127.0.0.1:{site.sink_port}",
                            queue_cmd=site.queue_cmd if label == "postfix" else None,
                            check=False)
    rec["cell"] = cell.key
    lat = rec.get("lat_dot_250_ms") or {}
    print(f"bench: {cell.title:<34} {label:<8} e2e {rec.get('e2e_mps')} msg/s, "
          f"CPU {rec.get('mta_cpu_per_1000')} s/1000"
          + (f", accept p50/p99 {lat.get('p50')}/{lat.get('p99')} ms" if lat else "")
          + ("" if benchlib.completed(rec) else "  (excluded: incomplete or stalled)"),
          file=sys.stderr, flush=True)
    return rec


def header(args: argparse.Namespace, postfix: bool) -> str:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"
    version = out(["postconf", "-d", "-h", "mail_version"]) if postfix else "not run"
    commit = out(["git", "rev-parse", "--short", "HEAD"]) or "(not a git checkout)"
    return (f"mta {commit}, Postfix {version} (harness default profile), {os.cpu_count()} CPUs, "
            f"-n {args.n} (200 KiB: at most 2000), repeats {args.repeats} (median), "
            f"throughput client {args.client}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", help="all (default) or comma-separated keys: "
                    + ", ".join(c.key for c in benchlib.CELLS))
    ap.add_argument("-n", type=int, default=5000, help="messages per run (default 5000)")
    ap.add_argument("-c", type=int, help="a custom cell: concurrent sessions (default 10)")
    ap.add_argument("-s", type=int, help="a custom cell: body bytes (default 20480)")
    ap.add_argument("--reply-delay", type=int, default=0, help="a custom cell: sink delay, ms")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", default="smtp-source" if shutil.which("smtp-source") or
                    Path("/usr/sbin/smtp-source").exists() else "py")
    ap.add_argument("--workers", type=int, help="[server] workers of the mta (default: its own)")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--port-offset", type=int, default=0)
    ap.add_argument("--out", help="also append every run's JSON record to this file")
    ap.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    try:
        cells = benchlib.select_cells(args.cells, c=args.c, s=args.s, delay_ms=args.reply_delay)
    except ValueError as exc:
        sys.exit(f"bench: {exc}")
    bench = Path(args.bench).resolve()
    if not (bench / "load.py").exists():
        sys.exit(f"bench: the shared harness is not at {bench} (use --bench)")
    postfix = not args.no_postfix and Path("/usr/sbin/postfix").exists()
    if not args.no_postfix and not postfix:
        print("bench: Postfix is not installed; measuring mta alone "
              "(apt-get install postfix, see the harness README)", file=sys.stderr)
    labels = ("postfix", "mta") if postfix else ("mta",)
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    results: dict[tuple[str, str], list[Record]] = {}
    for delay in dict.fromkeys(c.delay_ms for c in cells):
        site = Site(bench, delay, args.port_offset)
        with running(site, tmp, postfix, args.workers):
            for i in range(args.repeats):
                for cell in (c for c in cells if c.delay_ms == delay):
                    for label in labels if i % 2 == 0 else labels[::-1]:
                        rec = one_run(site, cell, label, args)
                        results.setdefault((cell.key, label), []).append(rec)
                print(f"bench: sink +{delay} ms: repeat {i + 1}/{args.repeats} done",
                      file=sys.stderr, flush=True)

    med = {k: benchlib.medians(v) for k, v in results.items()}
    print("\n" + header(args, postfix) + "\n")
    print("\n".join(benchlib.ratio_table(cells, med)))
    print("\n" + "\n".join(benchlib.GOAL_LINES))
    print("\n" + "\n".join(benchlib.detail_table(cells, med)))
    lines = [json.dumps(r) for recs in results.values() for r in recs]
    (tmp / "results.jsonl").write_text("\n".join(lines) + "\n")
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")
    print(f"\nraw records: {tmp / 'results.jsonl'} (../shared/bench/summarize.py reads them); "
          f"mta logs: {tmp}/mta*/mta.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
