"""What the benchmark scripts share: waiting for the daemon, and one run of
the shared harness's load.py (which prints one JSON record). Loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


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


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until `url` answers (the daemon's /healthz), or exit."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: {url} did not answer within {timeout:.0f}s")


def run_load(bench: Path, *, target: str, n: int, c: int, s: int, client: str,
             cgroup: str | None = None, label: str = "mta") -> dict:
    cmd = [sys.executable, str(bench / "load.py"), "--target", target, "-n", str(n),
           "-c", str(c), "-s", str(s), "-r", "1", "--client", client, "--label", label]
    if cgroup:
        cmd += ["--mta-cgroup", cgroup]
    out = subprocess.run(cmd, cwd=bench, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        sys.exit(f"bench: load.py failed for {label}")
    return json.loads(out.stdout.strip().splitlines()[-1])
