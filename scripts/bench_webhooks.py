#!/usr/bin/env python3
"""What does a webhook endpoint subscribed to every event cost delivery?

    scripts/bench_webhooks.py [-n 5000] [-c 10] [-s 20480] [--repeats 2] [--bench ../shared/bench]

Runs the shared harness's load.py against `mta serve` (plain SMTP on
127.0.0.1:2535, trusted loopback, every domain routed to the harness's
counting sink) twice per repeat, interleaved: without webhooks, and with one
[[webhooks]] endpoint (events = ["*"], batch_size 1) pointing at a receiver on
127.0.0.1 that answers 204 (a lean keep-alive receiver: its own process,
uvloop, no framework). Prints
end-to-end msg/s and CPU-s/1000 of each, the ratio, and how many webhook
requests the receiver got. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (scripts/benchlib.py)
received = {"requests": 0}


class Receiver(asyncio.Protocol):
    """A lean keep-alive HTTP/1.1 endpoint answering 204 to every POST, and
    the count so far to `GET /count`. An application's receiver would run on
    its own machine; here it shares the two cores, so it is kept cheap: its
    own process, uvloop, no framework. Requests must carry Content-Length."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, bytearray()

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"content-length:")
            j = head.find(b"\r\n", i)
            length = int(head[i + 15:j if j > 0 else len(head)]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[:end + 4 + length]
            if head.startswith(b"get /count"):
                text = str(received["requests"]).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(text), text))
                continue
            received["requests"] += 1
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def serve_receiver() -> None:
    """`--receiver`: listen on 127.0.0.1, print the port, serve until killed."""
    import uvloop

    async def main():
        server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    uvloop.run(main())


def start_receiver() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE,
                            text=True)
    return proc, int(proc.stdout.readline())


def receiver_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as r:
        return int(r.read())


def config(state: Path, hook_port: int | None) -> str:
    text = benchlib.daemon_config(state, admin_port=8027,
                                  token="bench-webhooks-token-0123456789")
    if hook_port:
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        text += (f'[[webhooks]]\nname = "bench"\nurl = "http://127.0.0.1:{hook_port}/hook"\n'
                 f'events = ["*"]\nsecret = "{secret}"\n')
    return text


def run_once(bench: Path, tmp: Path, hook_port: int | None, a) -> dict:
    state = Path(tempfile.mkdtemp(dir=tmp))
    cfg = state / "mta.toml"
    cfg.write_text(config(state / "state", hook_port))
    daemon = subprocess.Popen([str(bench / "cgexec.sh"), "bench-mta-hooks",
                               str(ROOT / ".venv" / "bin" / "mta"), "serve", "--config", str(cfg)],
                              stderr=open(state / "mta.log", "wb"))
    try:
        benchlib.wait_http("http://127.0.0.1:8027/healthz")
        client = "smtp-source" if Path("/usr/sbin/smtp-source").exists() else "py"
        return benchlib.run_load(bench, target="127.0.0.1:2535", n=a.n, c=a.c, s=a.s,
                                 client=client, cgroup="bench-mta-hooks")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def main() -> int:
    if sys.argv[1:] == ["--receiver"]:
        serve_receiver()
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("-s", type=int, default=20480)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    a = ap.parse_args()
    bench = Path(a.bench).resolve()
    receiver, hook_port = start_receiver()
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-hooks-"))
    subprocess.run([str(bench / "sink-up.sh")], check=True, cwd=bench, capture_output=True)
    results: dict[str, list[dict]] = {"no webhooks": [], "webhook on all events": []}
    try:
        for _ in range(a.repeats):
            results["no webhooks"].append(run_once(bench, tmp, None, a))
            results["webhook on all events"].append(run_once(bench, tmp, hook_port, a))
    finally:
        subprocess.run([str(bench / "sink-down.sh")], cwd=bench, capture_output=True)
    print(f"\nN={a.n} C={a.c} S={a.s} repeats={a.repeats} (median)")
    med = {k: (statistics.median(r["e2e_mps"] for r in v),
               statistics.median(r["mta_cpu_per_1000"] or 0 for r in v)) for k, v in results.items()}
    for k, (e2e, cpu) in med.items():
        print(f"  {k:<22} {e2e:7.0f} e2e msg/s  {cpu:5.2f} CPU-s/1000")
    base, hooks = med["no webhooks"][0], med["webhook on all events"][0]
    print(f"  ratio with/without: {hooks / base:.2f} (goal >= 0.85); webhook requests received: "
          f"{receiver_count(hook_port)}")
    receiver.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
