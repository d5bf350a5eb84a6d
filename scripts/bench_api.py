#!/usr/bin/env python3
"""HTTP API submissions/s against SMTP submissions/s: same daemon, same run (issue 13).

    scripts/bench_api.py [-n 2000] [--repeats 3] [--json] [--workers N] [--no-sdk]

Starts `mta serve` (a subprocess, config and state in a temp dir, `[server]
workers` as the default unless --workers) with plain SMTP for trusted
loopback clients (no AUTH, no TLS: how scripts/bench.py measures SMTP too),
the sending API on loopback over plain HTTP, `require_verified_domain =
false`, and every domain routed to a counting SMTP sink (this script with
--sink, its own process). Makes the API key first with `mta key create bench
--rate-limit 1000000 --json` against the bench's state dir. Every port is
a free one picked at start, so it can run beside other benchmarks.

The message: 20 KiB with one attachment (random bytes, base64), the same
for both protocols. The HTTP request is a POST /emails JSON body; the SMTP
message is what the API builds from that body (mta.api.emails.parse_email,
then mta.mail.compose), built once here and sent as those bytes. Both bodies
are encoded once, up front, so the clients do little per message.

Cells: C = 1 and 10 concurrent clients, -n messages each, HTTP and SMTP
interleaved (the order alternates per repeat), after a short warm-up of
both. Between runs the script waits until the sink has every message (a run
counts only its accepts; its deliveries do not spill into the next run).
  HTTP client (--client): "raw" (default) HTTP/1.1 written and read with
    asyncio streams on one keep-alive connection per simulated client, as
    light as the SMTP client, so the servers are compared and not the
    clients; "aiohttp": one ClientSession (one keep-alive connection) per
    simulated client;
  SMTP client: asyncio streams, one connection per simulated client,
    MAIL/RCPT/DATA pipelined (RFC 2920), then the body;
  Python SDK line (unless --no-sdk): the official `resend` package at C=1,
    which opens a new connection per call (requests.request).
Accept latency: request sent → response (HTTP), MAIL sent → the 250 after
the body (SMTP). Prints msgs/s per cell (median over the repeats), the ratio
HTTP/SMTP, p50/p99 accept latency (over every message of the cell), and the
goal of issue 13 (the API accepts at least as many messages per second as
SMTP); --json prints one JSON document instead. Exit 1 when any request
failed or a message did not reach the sink. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import benchlib  # noqa: E402  (scripts/benchlib.py)

TOKEN = "bench-api-admin-token-0123456789abcdef"
SENDER, RECIPIENT = "bench@sender.test", "user@rcpt.test"
CONCURRENCY = (1, 10)
GOAL_LINE = ("goal (issue 13): the API accepts at least as many messages per second as "
             "SMTP (HTTP/SMTP >= 1.00 in every cell)")


# -- the message ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    params: dict[str, Any]     # the POST /emails body
    http_body: bytes           # params as JSON, encoded once
    mime: bytes                # what the API builds from params (compose), CRLF line ends
    smtp_data: bytes           # mime dot-stuffed, with the final ".\r\n"


def params_for(attachment: bytes) -> dict[str, Any]:
    return {"from": f"Bench <{SENDER}>", "to": [RECIPIENT], "subject": "bench_api",
            "text": "A benchmark message with one attachment.\n",
            "attachments": [{"filename": "report.bin",
                             "content": base64.b64encode(attachment).decode()}]}


def mime_of(params: dict[str, Any]) -> bytes:
    """The message the API builds from `params`: its parser, then compose."""
    from mta.api.emails import parse_email
    from mta.mail.compose import compose
    req = parse_email(params)
    return compose(req.composition, message_id="bench-api@bench.mta.test", date=time.time())


def dot_stuff(mime: bytes) -> bytes:
    """DATA's bytes: a leading "." doubled on every line, then ".\\r\\n"."""
    body = mime if mime.endswith(b"\r\n") else mime + b"\r\n"
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


def message(size: int = 20480, seed: int = 13) -> Message:
    """A message of `size` bytes (±1 base64 line) with one attachment of
    random bytes: the attachment is sized so the composed MIME hits `size`."""
    rng = random.Random(seed)
    raw = min(max(0, int((size - 600) * 0.74)), 64 * 1024 * 1024)
    for _ in range(4):                      # converge: base64 is 4/3 plus line breaks
        mime = mime_of(params_for(rng.randbytes(raw)))
        raw = max(0, raw + int((size - len(mime)) * 0.74))
    params = params_for(rng.randbytes(raw))
    mime = mime_of(params)
    return Message(params, json.dumps(params).encode(), mime, dot_stuff(mime))


# -- the counting sink (--sink: its own process) -------------------------------------------


class SinkSession(asyncio.Protocol):
    """A lean SMTP server that accepts everything and counts it: EHLO
    (PIPELINING only), MAIL, RCPT, DATA, RSET, NOOP, QUIT; pipelined
    commands are answered in order."""
    counts = {"messages": 0, "bytes": 0}

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buf, self.in_data, self.scanned = transport, bytearray(), False, 0
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            if self.in_data:
                end = 0 if self.buf.startswith(b".\r\n") else self.buf.find(
                    b"\r\n.\r\n", max(0, self.scanned - 4))
                if end < 0:
                    self.scanned = len(self.buf)
                    break
                cut = 3 if end == 0 else end + 5
                self.counts["messages"] += 1
                self.counts["bytes"] += 0 if end == 0 else end + 2
                del self.buf[:cut]
                self.in_data, self.scanned = False, 0
                out.append(b"250 2.0.0 ok\r\n")
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            verb = bytes(self.buf[:4]).upper()
            del self.buf[:nl + 2]
            out.append(self._reply(verb))
            if verb == b"QUIT":
                self.transport.write(b"".join(out))
                self.transport.close()
                return
        if out:
            self.transport.write(b"".join(out))

    def _reply(self, verb: bytes) -> bytes:
        if verb == b"EHLO":
            return b"250-sink\r\n250 PIPELINING\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == b"QUIT":
            return b"221 bye\r\n"
        if verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            return b"250 ok\r\n"
        return b"502 5.5.2 not implemented\r\n"


class SinkControl(asyncio.Protocol):
    """benchlib.sink_stats's line protocol: STATS → one JSON line."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.strip().upper().startswith(b"STATS"):
            self.transport.write(json.dumps(SinkSession.counts).encode() + b"\n")
        self.transport.close()


def serve_sink() -> None:
    """`--sink`: listen on two loopback ports, print "PORT CTL_PORT", serve until killed."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        smtp = await loop.create_server(SinkSession, "127.0.0.1", 0)
        ctl = await loop.create_server(SinkControl, "127.0.0.1", 0)
        print(smtp.sockets[0].getsockname()[1], ctl.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    _run(main())


def _run(coro: Any) -> Any:
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- the clients ---------------------------------------------------------------------------


@dataclass
class Run:
    """One run: `n` messages over `c` clients with one protocol."""
    proto: str
    c: int
    n: int
    seconds: float = 0.0
    ok: int = 0
    failed: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)     # seconds, one per accepted message

    @property
    def mps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    def fail(self, why: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or why


async def _drive(run: Run, client: Any) -> Run:
    """Start `run.c` clients; each takes messages until `run.n` are taken."""
    left = [run.n]

    def take() -> bool:
        if left[0] <= 0:
            return False
        left[0] -= 1
        return True
    t0 = time.perf_counter()
    results = await asyncio.gather(*(client(run, take) for _ in range(run.c)),
                                   return_exceptions=True)
    run.seconds = time.perf_counter() - t0
    for r in results:
        if isinstance(r, BaseException):     # a client died: what it did not send failed
            run.fail(f"{type(r).__name__}: {r}")
    run.failed += max(0, run.n - run.ok - run.failed)
    return run


async def http_run(url: str, key: str, msg: Message, c: int, n: int) -> Run:
    import aiohttp
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def client(run: Run, take: Any) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            while take():
                t = time.perf_counter()
                async with s.post(url + "/emails", data=msg.http_body, headers=headers) as r:
                    answer = await r.read()
                if r.status == 200 and b'"id"' in answer:
                    run.ok += 1
                    run.latencies.append(time.perf_counter() - t)
                else:
                    run.fail(f"HTTP {r.status}: {answer[:200]!r}")
    return await _drive(Run("http", c, n), client)


async def http_raw_run(port: int, key: str, msg: Message, c: int, n: int) -> Run:
    """HTTP/1.1 POSTs on one keep-alive connection per client, written and
    read with plain asyncio streams: a client as light as the SMTP one
    below, so the two protocols' servers are compared, not the clients."""
    request = (f"POST /emails HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(msg.http_body)}\r\n\r\n").encode() + msg.http_body

    async def client(run: Run, take: Any) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while take():
                t = time.perf_counter()
                writer.write(request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                if status[9:12] == b"200" and b'"id"' in answer:
                    run.ok += 1
                    run.latencies.append(time.perf_counter() - t)
                else:
                    run.fail(f"HTTP {status.strip()!r}: {answer[:200]!r}")
        finally:
            writer.close()
    return await _drive(Run("http", c, n), client)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply (its last line)."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return line


async def smtp_run(port: int, msg: Message, c: int, n: int) -> Run:
    envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()

    async def client(run: Run, take: Any) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _reply(reader)
            writer.write(b"EHLO bench.client\r\n")
            await _reply(reader)
            while take():
                t = time.perf_counter()
                writer.write(envelope)
                replies = [await _reply(reader) for _ in range(3)]
                if [r[:3] for r in replies] != [b"250", b"250", b"354"]:
                    run.fail(f"SMTP {b' | '.join(r.strip() for r in replies)!r}")
                    writer.write(b"RSET\r\n")
                    await _reply(reader)
                    continue
                writer.write(msg.smtp_data)
                final = await _reply(reader)
                if final[:3] == b"250":
                    run.ok += 1
                    run.latencies.append(time.perf_counter() - t)
                else:
                    run.fail(f"SMTP {final.strip()!r}")
            writer.write(b"QUIT\r\n")
            await _reply(reader)
        finally:
            writer.close()
    return await _drive(Run("smtp", c, n), client)


def sdk_run(url: str, key: str, msg: Message, n: int) -> Run:
    """The official Python SDK at C=1: `resend.Emails.send`, a new
    connection per call (requests.request)."""
    import resend
    resend.api_url, resend.api_key = url, key
    os.environ["NO_PROXY"] = ",".join(filter(None, (os.environ.get("NO_PROXY"), "127.0.0.1")))
    run = Run("sdk", 1, n)
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        try:
            sent = resend.Emails.send(msg.params)
        except Exception as exc:     # the SDK raises its own errors for any 4xx/5xx
            run.fail(f"{type(exc).__name__}: {exc}")
            continue
        if sent.get("id"):
            run.ok += 1
            run.latencies.append(time.perf_counter() - t)
        else:
            run.fail(f"no id in {sent!r}")
    run.seconds = time.perf_counter() - t0
    return run


# -- summaries (pure; tests/test_bench_scripts.py) -----------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank of the sorted values; nan when none."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarise(runs: list[Run]) -> dict[str, float]:
    """Median msg/s over the runs, p50/p99 accept latency (ms) over every
    message of them, runs and failed requests counted."""
    lat = [x for r in runs for x in r.latencies]
    rates = [r.mps for r in runs if not math.isnan(r.mps)]
    return {"mps": statistics.median(rates) if rates else math.nan,
            "p50_ms": percentile(lat, 0.50) * 1000, "p99_ms": percentile(lat, 0.99) * 1000,
            "runs": float(len(runs)), "messages": float(sum(r.ok for r in runs)),
            "failed": float(sum(r.failed for r in runs))}


def _f(v: float, nd: int = 0) -> str:
    return "–" if math.isnan(v) else f"{v:.{nd}f}"


def ratio(http: dict[str, float], smtp: dict[str, float]) -> float:
    a, b = http["mps"], smtp["mps"]
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def table(cells: dict[int, dict[str, dict[str, float]]],
          sdk: dict[str, float] | None = None) -> list[str]:
    """The markdown lines: one row per cell (`cells[c]["http"|"smtp"]`,
    summaries), the goal per cell, then the SDK line."""
    out = ["| clients | HTTP msg/s | SMTP msg/s | HTTP/SMTP | HTTP p50/p99 ms "
           "| SMTP p50/p99 ms | goal |",
           "|---|---|---|---|---|---|---|"]
    for c, cell in sorted(cells.items()):
        h, s = cell["http"], cell["smtp"]
        r = ratio(h, s)
        goal = "–" if math.isnan(r) else ("met" if r >= 1.0 else "short")
        out.append(f"| C={c} | {_f(h['mps'])} | {_f(s['mps'])} | {_f(r, 2)}x "
                   f"| {_f(h['p50_ms'], 1)} / {_f(h['p99_ms'], 1)} "
                   f"| {_f(s['p50_ms'], 1)} / {_f(s['p99_ms'], 1)} | {goal} |")
    if sdk is not None:
        out.append(f"Python SDK (resend, requests: a new connection per call), C=1: "
                   f"{_f(sdk['mps'])} msg/s, p50/p99 {_f(sdk['p50_ms'], 1)} / "
                   f"{_f(sdk['p99_ms'], 1)} ms")
    return out


# -- the daemon ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    smtp: int
    api: int
    admin: int
    sink: int


def daemon_config(state: Path, ports: Ports, workers: int | None) -> str:
    """The bench's mta config: plain SMTP for trusted loopback, the API on
    loopback, no verified domain needed, everything routed to the sink."""
    return f"""[server]
hostname = "bench.mta.test"
state_dir = "{state}"
log_level = "warning"
{f"workers = {workers}" if workers is not None else ""}
[[listeners]]
name = "bench"
address = "127.0.0.1:{ports.smtp}"
tls = "none"
trusted_networks = ["127.0.0.0/8"]
[api]
address = "127.0.0.1:{ports.api}"
[admin]
address = "127.0.0.1:{ports.admin}"
token = "{TOKEN}"
[policy]
require_verified_domain = false
[routes]
"*" = "127.0.0.1:{ports.sink}"
"""


def create_key(cfg: Path) -> str:
    cmd, env = benchlib.mta_command(ROOT, "key", "create", "bench", "--rate-limit", "1000000",
                                    "--json", "--config", str(cfg))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench_api: mta key create failed: {out.stderr.strip()}")
    return str(json.loads(out.stdout)["token"])


def wait_delivered(ctl_port: int, total: int, timeout: float) -> int:
    """Until the sink has `total` messages (or the time is up); returns its count."""
    end = time.time() + timeout
    got = 0
    while time.time() < end:
        got = int(benchlib.sink_stats(ctl_port)["messages"])
        if got >= total:
            return got
        time.sleep(0.05)
    return got


# -- main ------------------------------------------------------------------------------------


def args_of(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="messages per cell and protocol")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--workers", type=int, default=None,
                    help="[server] workers (default: the daemon's default, one per CPU)")
    ap.add_argument("--no-sdk", action="store_true", help="skip the Python SDK line")
    ap.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                    help="HTTP client: plain asyncio streams, as light as the SMTP client "
                         "(default), or aiohttp")
    ap.add_argument("--warmup", type=int, default=50, help="messages per protocol first")
    a = ap.parse_args(argv)
    if a.n < 1 or a.repeats < 1 or a.warmup < 0:
        ap.error("-n and --repeats must be at least 1, --warmup at least 0")
    return a


def measure(a: argparse.Namespace, msg: Message, ports: Ports, ctl: int,
            key: str) -> tuple[dict[int, dict[str, list[Run]]], list[Run], int, int]:
    """Every run: (runs per cell and protocol, SDK runs, messages sent, delivered)."""
    url = f"http://127.0.0.1:{ports.api}"
    sent = 0

    def settle(count: int) -> None:
        nonlocal sent
        sent += count
        wait_delivered(ctl, sent, 60 + count / 20)
    def http(c: int, n: int) -> Run:
        return _run(http_run(url, key, msg, c, n) if a.client == "aiohttp"
                    else http_raw_run(ports.api, key, msg, c, n))
    if a.warmup:
        http(1, a.warmup)
        _run(smtp_run(ports.smtp, msg, 1, a.warmup))
        settle(2 * a.warmup)
    runs: dict[int, dict[str, list[Run]]] = {c: {"http": [], "smtp": []} for c in CONCURRENCY}
    sdk: list[Run] = []
    for rep in range(a.repeats):
        for c in CONCURRENCY:
            for proto in (("http", "smtp") if rep % 2 == 0 else ("smtp", "http")):
                run = (http(c, a.n) if proto == "http"
                       else _run(smtp_run(ports.smtp, msg, c, a.n)))
                runs[c][proto].append(run)
                settle(run.ok)
                if not a.json:
                    print(f"bench_api: repeat {rep + 1} C={c} {proto}: {run.mps:.0f} msg/s"
                          + (f", {run.failed} failed ({run.first_error})" if run.failed else ""),
                          file=sys.stderr)
        if not a.no_sdk:
            sdk.append(sdk_run(url, key, msg, a.n))
            settle(sdk[-1].ok)
    return runs, sdk, sent, int(benchlib.sink_stats(ctl)["messages"])


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--sink"]:
        serve_sink()
        return 0
    a = args_of(argv)
    if not a.no_sdk:
        try:
            import resend  # noqa: F401
        except ImportError:
            print("bench_api: the resend package is not installed: no SDK line",
                  file=sys.stderr)
            a.no_sdk = True
    msg = message()
    tmp = Path(tempfile.mkdtemp(prefix="mta-bench-api-"))
    sink = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE,
                            text=True)
    assert sink.stdout is not None
    sink_port, ctl = (int(p) for p in sink.stdout.readline().split())
    ports = Ports(free_port(), free_port(), free_port(), sink_port)
    cfg = tmp / "mta.toml"
    cfg.write_text(daemon_config(tmp / "state", ports, a.workers))
    key = create_key(cfg)
    cmd, env = benchlib.mta_command(ROOT, "serve", "--config", str(cfg))
    with open(tmp / "mta.log", "wb") as log:
        daemon = subprocess.Popen(cmd, env=env, stderr=log, stdout=subprocess.DEVNULL)
    try:
        benchlib.wait_http(f"http://127.0.0.1:{ports.admin}/readyz", 60, token=TOKEN)
        benchlib.wait_listen(ports.api, daemon, "mta serve (api)")
        runs, sdk, sent, delivered = measure(a, msg, ports, ctl, key)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        sink.kill()
        sink.wait()
    code = report(a, msg, runs, sdk, sent, delivered, tmp)
    if code == 0:
        shutil.rmtree(tmp, ignore_errors=True)       # the spool: hundreds of MB at -n 2000
    else:
        print(f"bench_api: failed; the daemon's log and state are kept in {tmp}",
              file=sys.stderr)
    return code


def report(a: argparse.Namespace, msg: Message, runs: dict[int, dict[str, list[Run]]],
           sdk: list[Run], sent: int, delivered: int, tmp: Path) -> int:
    cells = {c: {p: summarise(rs) for p, rs in by.items()} for c, by in runs.items()}
    sdk_sum = summarise(sdk) if sdk else None
    failed = int(sum(s["failed"] for cell in cells.values() for s in cell.values())
                 + (sdk_sum["failed"] if sdk_sum else 0))
    errors = sorted({r.first_error for by in runs.values() for rs in by.values() for r in rs
                     if r.first_error} | {r.first_error for r in sdk if r.first_error})
    workers = "default (one per CPU)" if a.workers is None else str(a.workers)
    if a.json:
        doc = {"n": a.n, "repeats": a.repeats, "workers": a.workers, "cpus": os.cpu_count(),
               "http_client": a.client,
               "message_bytes": len(msg.mime), "http_body_bytes": len(msg.http_body),
               "cells": [{"c": c, "http": cell["http"], "smtp": cell["smtp"],
                          "ratio": ratio(cell["http"], cell["smtp"])}
                         for c, cell in sorted(cells.items())],
               "sdk": sdk_sum, "failed": failed, "errors": errors, "sent": sent,
               "delivered": delivered}
        print(json.dumps(doc, allow_nan=True))
    else:
        print(f"\nbench_api: -n {a.n} per cell and protocol, --repeats {a.repeats} (median "
              f"msg/s; latency over every message), workers {workers}, {os.cpu_count()} CPUs")
        print(f"message: {len(msg.mime)} bytes MIME with one attachment (HTTP body "
              f"{len(msg.http_body)} bytes of JSON); the same message over both")
        print("HTTP client: " + ("aiohttp with keep-alive, one ClientSession per simulated "
                                 "client" if a.client == "aiohttp" else
                                 "asyncio streams, one keep-alive connection per simulated "
                                 "client (as light as the SMTP client)")
              + "; plain HTTP on loopback")
        print("SMTP client: asyncio, one connection per simulated client, pipelined "
              "envelope; plain SMTP, trusted loopback (no AUTH)")
        print()
        print("\n".join(table(cells, sdk_sum)))
        print(GOAL_LINE)
        print(f"sent {sent} (warm-up included), at the sink {delivered}; failed requests "
              f"{failed}" + (f": {'; '.join(errors)}" if errors else ""))
    return 1 if failed or delivered < sent else 0


if __name__ == "__main__":
    sys.exit(main())
