#!/usr/bin/env python3
"""Peak memory of the daemon while large messages arrive at once (issue 10 item 3).

Starts `mta serve` (sandbox mode: every accepted message is then "delivered"
into a maildir, so the delivery path is measured too), then N clients submit
one S MiB message each at the same moment over STARTTLS + AUTH (or, with
--inbound, unauthenticated to postmaster@ on an inbound listener), waits
until every message is delivered, and prints the daemon's peak RSS (VmHWM)
next to its RSS before the load and the payload that was in flight.

    .venv/bin/python scripts/bench_memory.py -n 16 -s 24
    .venv/bin/python scripts/bench_memory.py -n 20 -s 9.9 --inbound

Loopback only. Goal (issue 10): under 300 MB peak for 16 x 24 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "bench", "bench-password-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The daemon's receiver processes ([server] workers)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"mta.runtime.receiver" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(int(child))
            except OSError:
                continue
    return out


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def message(i: int, size: int) -> bytes:
    head = (f"From: bench@example.com\r\nTo: sink@example.net\r\nSubject: big {i}\r\n"
            f"Message-ID: <big{i}@bench.test>\r\n\r\n").encode()
    line = b"%08d " % i + b"0123456789abcdef" * 4 + b"\r\n"
    return head + line * (size // len(line) + 1)


def submit(port: int, body: bytes, inbound: bool, barrier: threading.Barrier,
           errors: list) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as s:
            s.starttls(context=ctx)
            if not inbound:
                s.login(USER, PASSWORD)
            barrier.wait()
            s.sendmail("" if inbound else "bench@example.com",
                       ["postmaster@bench.mta.test" if inbound else "sink@example.net"], body)
    except Exception as exc:   # reported at the end
        errors.append(repr(exc))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("-s", type=float, default=24.0, help="message size in MiB (default 24)")
    ap.add_argument("--inbound", action="store_true",
                    help="unauthenticated mail to postmaster@ on an inbound listener")
    args = ap.parse_args()
    size = int(args.s * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="mta-bench-mem-") as tmp:
        state = Path(tmp) / "state"
        port, admin = free_port(), free_port()
        role = 'role = "inbound"' if args.inbound else ""
        conf = Path(tmp) / "mta.toml"
        conf.write_text(f"""
[server]
hostname = "bench.mta.test"
state_dir = "{state}"
mode = "sandbox"
log_level = "warning"
[[listeners]]
name = "bench"
address = "127.0.0.1:{port}"
tls = "starttls"
{role}
max_message_size = "{size + 1024 * 1024}"
[admin]
address = "127.0.0.1:{admin}"
token = "bench-admin-token-0123456789"
[bounces]
capture_max_bytes = "{(args.n + 1) * (size + 65536)}"
""")
        env = dict(os.environ, PYTHONPATH=str(ROOT), MTA_CONFIG=str(conf))
        if not args.inbound:
            subprocess.run([sys.executable, "-m", "mta", "user", "add", USER, "--password-stdin"],
                           input=PASSWORD + "\n", text=True, env=env, check=True,
                           capture_output=True)
        proc = subprocess.Popen([sys.executable, "-m", "mta", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(0.5)
            before = status(proc.pid)["VmRSS"]
            bodies = [message(i, size) for i in range(args.n)]
            barrier = threading.Barrier(args.n)
            errors: list[str] = []
            threads = [threading.Thread(target=submit, args=(port, b, args.inbound, barrier,
                                                            errors)) for b in bodies]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.monotonic() - t0
            where = state / ("inbound" if args.inbound else "sandbox") / "new"
            def body_hash(data: bytes) -> str:   # after the header block: headers are added
                return hashlib.sha256(data.split(b"\r\n\r\n", 1)[1]).hexdigest()
            want = {body_hash(b) for b in bodies}
            deadline = time.monotonic() + 300
            got: set[str] = set()
            while time.monotonic() < deadline:
                files = list(where.iterdir()) if where.exists() else []
                if len(files) >= args.n - len(errors):
                    got = {body_hash(f.read_bytes()) for f in files}
                    break
                time.sleep(0.2)
            peak = status(proc.pid)["VmHWM"]
            kids = children(proc.pid)
            kid_peaks = [status(k)["VmHWM"] for k in kids]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        mib = 1024 * 1024
        print(f"mta {'inbound' if args.inbound else 'submission'}: {args.n} x {args.s:g} MiB "
              f"at once ({args.n * size / mib:.0f} MiB in flight), accepted in {took:.1f} s")
        print(f"  RSS before: {before / mib:.0f} MiB   peak RSS (VmHWM): {peak / mib:.0f} MiB   "
              f"growth: {(peak - before) / mib:.0f} MiB "
              f"({(peak - before) / (args.n * size):.2f} x the payload)")
        if kid_peaks:
            print(f"  receiver processes ({len(kid_peaks)}): peak RSS (VmHWM) "
                  + ", ".join(f"{k / mib:.0f}" for k in kid_peaks)
                  + f" MiB; all processes together at most {(peak + sum(kid_peaks)) / mib:.0f} MiB")
        print(f"  delivered byte-exact: {len(got & want)} of {args.n}"
              + (f"   client errors: {len(errors)}: {errors[:3]}" if errors else ""))
        return 0 if not errors and len(got & want) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
