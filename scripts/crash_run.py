#!/usr/bin/env python3
"""Crash run: SIGKILL mta at random moments under load; nothing acknowledged may be lost.

    scripts/crash_run.py [--workers N] [--kills 24] [--clients 8] [--size 2048]
                         [--gap 0.2,2.0] [--seed S] [--concurrency 20]
                         [--per-connection 100] [--tree DIR] [--keep]

One job: show issue 12's "0 acknowledged messages lost, duplicates ≤ what
was in flight" for the multi-process daemon, outside the test suite (a run
takes about 2 minutes and loads both cores). What it does:
  1. starts a sink (this script with --sink, its own process on 127.0.0.1)
     that appends to a file, fsynced before each 250, every message's token
     and arrival time and when each connection opened and closed; and
     `mta serve` (in its own session, so its process group is the owner and
     its receivers) with a generated config in a temporary state dir: one
     listener (tls none, trusted 127.0.0.0/8), every domain routed to the
     sink, short retry and backoff, the admin API for /readyz and the queue.
     `--workers` sets `[server] workers` (left out: the daemon's default);
     `--tree` runs the daemon from another source tree (e.g. a `git archive`
     of a commit) with this checkout's venv;
  2. runs K asyncio SMTP clients (aiosmtplib), each sending messages that
     carry a unique token (header and body); a token is ACKED only once the
     250 after DATA arrived; an error or a 4xx drops it (in flight, never
     acked) and the client goes on with a new token, reconnecting as needed;
  3. kills, 0.2–2 s apart, one of: a random receiver (a child of the owner
     whose command line holds mta.runtime.receiver; we restart nothing, the
     owner must, and the script waits up to 10 s to see a new one), the
     owner alone, or the whole process group; after the last two it checks
     that no receiver outlives its owner by 5 s (reported; survivors are
     then killed by pid) and restarts `mta serve` on the same state dir,
     waiting for /readyz and every receiver. Kinds come shuffled, an equal
     share each (8 each at the default 24 kills); without receivers
     (`--workers 0`) only owner and group kills are made;
  4. stops the load, waits until the daemon's queue is empty (admin API),
     stops it with SIGTERM (exit 0 expected), and reads the sink's file.
Prints one summary: kills by kind, acked, delivered, lost (acked, never
delivered), duplicates (extra deliveries, each charged to the owner/group
kill it straddles), per such kill its duplicates against the deliveries in
flight then (made on sink connections the killed daemon had open, or closed
in the second before: what it may not have recorded yet), delivered but
never acked (in flight at a kill: allowed), and the most submissions in
flight at one kill. Exit 1 when anything acked was lost, a kill's
duplicates exceed its deliveries in flight, a duplicate straddles no kill, a
receiver outlived its owner or was not replaced, or SIGTERM did not end the
daemon cleanly; exit 2 when the run itself broke (the daemon did not come
up, the queue did not drain). Loopback only. The processes it kills are its
own children and their children, by pid or by their process group.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "crash-admin-token-0123456789abcdef"
TOKEN_RE = re.compile(rb"X-Crash-Token: ([0-9a-f]{32})")
KINDS = ("receiver", "owner", "group")


# ---------------------------------------------------------------- the sink

def run_sink(path: Path) -> None:
    """The sink process: SMTP on 127.0.0.1 (port printed on stdout). Appends
    to `path`, fsynced, one line per event: `O conn time` and `C conn time`
    when a connection opens and closes, `D token time conn` for each message
    before its 250, so the file holds exactly what the sink acknowledged."""
    from aiosmtpd.smtp import SMTP  # noqa: PLC0415  (only the sink needs it)

    out = open(path, "ab", buffering=0)
    numbers = iter(range(1, 1 << 62))

    def note(*words: object) -> None:
        out.write((" ".join(map(str, words)) + "\n").encode())
        os.fsync(out.fileno())

    class Handler:
        def __init__(self, conn: int):
            self.conn = conn

        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            m = TOKEN_RE.search(getattr(envelope, "content", b"") or b"")
            note("D", m.group(1).decode() if m else "-", f"{time.time():.6f}", self.conn)
            return "250 2.0.0 Ok: recorded"

    class Connection(SMTP):
        def __init__(self, conn: int):
            super().__init__(Handler(conn), hostname="sink.crash.test", decode_data=False)
            self.crash_conn = conn

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            note("O", self.crash_conn, f"{time.time():.6f}")
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            note("C", self.crash_conn, f"{time.time():.6f}")
            super().connection_lost(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Connection(next(numbers)), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@dataclass
class SinkLog:
    """What the sink recorded: deliveries (token, time, connection) and when
    each connection opened and closed."""
    deliveries: list[tuple[str, float, int]] = field(default_factory=list)
    opened: dict[int, float] = field(default_factory=dict)
    closed: dict[int, float] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> SinkLog:
        log = cls()
        for line in path.read_text().splitlines():
            kind, *words = line.split()
            if kind == "D":
                log.deliveries.append((words[0], float(words[1]), int(words[2])))
            elif kind == "O":
                log.opened[int(words[0])] = float(words[1])
            elif kind == "C":
                log.closed[int(words[0])] = float(words[1])
        return log

    def in_flight_at(self, at: float, grace: float = 1.0) -> int:
        """Deliveries a daemon killed at `at` may not have recorded: those on
        the connections it had open then (or closed in the `grace` before:
        a batch is recorded just after its connection ends). An upper
        bound: a cached connection also carries batches already recorded."""
        conns = {c for c, t in self.opened.items()
                 if t < at and self.closed.get(c, float("inf")) > at - grace}
        return sum(1 for _, _, c in self.deliveries if c in conns)


# ---------------------------------------------------------------- the daemon

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mta_config(state: Path, port: int, admin_port: int, sink_port: int,
               args: argparse.Namespace) -> str:
    server_extra = f"workers = {args.workers}\n" if args.workers is not None else ""
    return f"""
[server]
hostname = "crash.mta.test"
state_dir = "{state}"
mode = "production"
log_level = "info"
shutdown_timeout = "5s"
{server_extra}
[[listeners]]
name = "crash"
address = "127.0.0.1:{port}"
tls = "none"
trusted_networks = ["127.0.0.0/8"]

[admin]
address = "127.0.0.1:{admin_port}"
token = "{ADMIN_TOKEN}"

[delivery]
retry_schedule = "1s,2s,5s"
destination_backoff = "0.2s,0.5s,1s"
connect_timeout = "3s"
concurrency_per_destination = {args.concurrency}
max_messages_per_connection = {args.per_connection}

[routes]
"*" = "127.0.0.1:{sink_port}"
"""


def expected_receivers(workers: int | None) -> int:
    """How many receivers `[server] workers` starts (mta/runtime/workers.py's
    resolve_workers: -1 or absent is one per CPU, none on one CPU)."""
    if workers is not None and workers >= 0:
        return workers
    cpus = len(os.sched_getaffinity(0))
    return cpus if cpus > 1 else 0


def pid_info(pid: int) -> tuple[int, str] | None:
    """(parent pid, command line) of a live process, None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else (int(fields[1]), cmd)


def receivers_of(owner: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = pid_info(int(entry))
            if info and info[0] == owner and "mta.runtime.receiver" in info[1]:
                found.append(int(entry))
    return sorted(found)


def alive(pid: int) -> bool:
    return pid_info(pid) is not None


@dataclass
class Daemon:
    cfg: Path
    log: Path
    admin_port: int
    workers: int
    tree: Path = ROOT          # the mta source it runs (PYTHONPATH and cwd)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.tree))
        env.pop("MTA_STATE_DIR", None)
        env.pop("MTA_CONFIG", None)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mta", "serve", "--config", str(self.cfg)], env=env,
                cwd=self.tree, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def api(self, path: str) -> tuple[int, object]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    async def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until /readyz said ready and every receiver is up."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RunBroken(f"mta serve exited ({self.proc.returncode}); see {self.log}")
            try:
                status, _ = await asyncio.to_thread(self.api, "/readyz")
            except OSError:
                status = 0
            if status == 200 and len(receivers_of(self.pid)) >= self.workers:
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        raise RunBroken(f"mta serve not ready after {timeout:.0f} s; see {self.log}")

    def queued(self) -> int:
        _, body = self.api("/v1/messages?limit=1000")
        return len(body["messages"]) if isinstance(body, dict) else -1


class RunBroken(Exception):
    """The run could not go on (the daemon did not come up): exit 2."""


# ---------------------------------------------------------------- the load

@dataclass
class Load:
    port: int
    size: int
    acked: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)     # attempted, never acked
    in_flight: set[str] = field(default_factory=set)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def message(self, token: str) -> bytes:
        line = ("x" * 76 + "\r\n")
        body = line * max(1, self.size // len(line))
        return (f"From: load@sender.test\r\nTo: ok@rcpt.test\r\nSubject: crash {token}\r\n"
                f"X-Crash-Token: {token}\r\n\r\ntoken {token}\r\n{body}").encode()

    async def client(self) -> None:
        import aiosmtplib  # noqa: PLC0415
        while not self.stop.is_set():
            try:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False,
                                           use_tls=False, timeout=30) as smtp:
                    while not self.stop.is_set():
                        await self.send_one(smtp)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)

    async def send_one(self, smtp: object) -> None:
        token = uuid.uuid4().hex
        self.in_flight.add(token)
        try:
            await smtp.sendmail("load@sender.test", ["ok@rcpt.test"],  # type: ignore[attr-defined]
                                self.message(token))
        except BaseException:
            self.dropped.append(token)
            raise
        finally:
            self.in_flight.discard(token)
        self.acked.append(token)     # only after the 250 that ended DATA


# ---------------------------------------------------------------- the kills

@dataclass
class Kill:
    kind: str
    at: float                  # time.time(), comparable with the sink's stamps
    submissions_in_flight: int
    note: str = ""
    ready_at: float = 0.0      # when the restarted daemon was ready (owner/group kills)


@dataclass
class Killer:
    daemon: Daemon
    load: Load
    rng: random.Random
    kills: list[Kill] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)   # receivers that outlived an owner
    receiver_restart_s: list[float] = field(default_factory=list)
    orphan_exit_s: list[float] = field(default_factory=list)  # owner killed → receivers gone
    not_restarted: int = 0
    ready_s: list[float] = field(default_factory=list)

    async def kill(self, kind: str) -> None:
        if kind == "receiver":
            await self.kill_receiver()
        else:
            await self.kill_owner(group=kind == "group")

    def record(self, kind: str, note: str = "") -> None:
        self.kills.append(Kill(kind, time.time(), len(self.load.in_flight), note))

    async def kill_receiver(self) -> None:
        owner = self.daemon.pid
        t0 = time.monotonic()
        while not (pids := receivers_of(owner)) and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        if not pids:
            raise RunBroken("no receiver to kill within 10 s")
        victim = self.rng.choice(pids)
        os.kill(victim, signal.SIGKILL)
        self.record("receiver", f"pid {victim}")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:       # the owner must start a new one
            now = receivers_of(owner)
            if victim not in now and len(now) >= self.daemon.workers:
                self.receiver_restart_s.append(time.monotonic() - t0)
                return
            await asyncio.sleep(0.05)
        self.not_restarted += 1
        self.kills[-1].note += " (not restarted within 10 s)"

    async def kill_owner(self, *, group: bool) -> None:
        owner = self.daemon.pid
        before = receivers_of(owner)
        if group:
            os.killpg(owner, signal.SIGKILL)    # its own session: owner + receivers
        else:
            os.kill(owner, signal.SIGKILL)
        self.record("group" if group else "owner")
        assert self.daemon.proc is not None
        await asyncio.to_thread(self.daemon.proc.wait)
        t0 = time.monotonic()
        while (left := [p for p in before if alive(p)]) and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.02)
        if before and not group:
            self.orphan_exit_s.append(time.monotonic() - t0)
        if left:
            self.survivors.extend(left)
            self.kills[-1].note += f" receivers {left} outlived the owner by 5 s"
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        self.daemon.start()
        self.ready_s.append(await self.daemon.wait_ready())
        self.kills[-1].ready_at = time.time()

    async def run(self, schedule: list[str], gap: tuple[float, float]) -> None:
        for kind in schedule:
            await asyncio.sleep(self.rng.uniform(*gap))
            await self.kill(kind)


def kill_schedule(n: int, kinds: tuple[str, ...], rng: random.Random) -> list[str]:
    """An equal share of each kind (the remainder drawn at random), shuffled."""
    out = [kinds[i % len(kinds)] for i in range(n - n % len(kinds))]
    out += rng.sample(kinds, n % len(kinds))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- the verdict

@dataclass
class Verdict:
    lines: list[str]
    failed: bool


def duplicates_by_kill(dups: dict[str, list[float]], restarts: list[Kill]
                       ) -> tuple[collections.Counter[int], list[str]]:
    """Each extra delivery charged to the first owner/group kill it straddles:
    the earlier delivery made before that daemon's successor was ready (the
    killed one's, or answered by the sink after it died), the later one
    after the kill. Tokens with an extra delivery no kill explains come back
    in the list."""
    per_kill: collections.Counter[int] = collections.Counter()
    unexplained = []
    for token, ts in dups.items():
        for first, second in zip(ts, ts[1:]):
            i = next((i for i, k in enumerate(restarts)
                      if first < k.ready_at and k.at < second), None)
            if i is None:
                unexplained.append(token)
            else:
                per_kill[i] += 1
    return per_kill, unexplained


def judge(load: Load, killer: Killer, sink: SinkLog, args: argparse.Namespace) -> Verdict:
    acked = set(load.acked)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for token, at, _ in sink.deliveries:
        times[token].append(at)
    times.pop("-", None)
    lost = acked - set(times)
    dups = {t: sorted(ts) for t, ts in times.items() if len(ts) > 1}
    unacked = set(times) - acked
    restarts = [k for k in killer.kills if k.kind != "receiver"]
    per_kill, unexplained = duplicates_by_kill(dups, restarts)
    # What a killed owner may have delivered and not recorded yet: measured
    # at the sink, and the most the config allows (a batch, one connection's
    # messages, is recorded when it ends).
    flight = [sink.in_flight_at(k.at) for k in restarts]
    bound = args.concurrency * args.per_connection
    over = [f"{restarts[i].kind} kill #{i + 1}: {n} duplicates > {flight[i]} deliveries in flight"
            for i, n in per_kill.items() if n > flight[i]]
    by_kind = collections.Counter(k.kind for k in killer.kills)
    in_flight = [k.submissions_in_flight for k in killer.kills]
    lines = [
        "kills: " + ", ".join(f"{kind} {by_kind[kind]}" for kind in KINDS)
        + f" ({len(killer.kills)} in all)",
        f"messages acked: {len(acked)}   delivered (distinct tokens): {len(times)}   "
        f"sink transactions: {len(sink.deliveries)}",
        f"LOST (acked, never delivered): {len(lost)}",
        f"duplicates: {len(dups)} tokens, {sum(len(ts) - 1 for ts in dups.values())} extra "
        f"deliveries; explained by no kill: {len(unexplained)}",
        "per owner/group kill, duplicates / deliveries in flight at the sink: "
        + " ".join(f"{per_kill[i]}/{flight[i]}" for i in range(len(restarts))),
        f"most duplicates at one kill: {max(per_kill.values(), default=0)}; most deliveries in "
        f"flight: {max(flight, default=0)} (config bound: {args.concurrency} connections x "
        f"{args.per_connection} messages a batch = {bound})",
        f"delivered but never acked (in flight at a kill): {len(unacked)} "
        f"of {len(load.dropped)} submissions that got no 250",
        f"submissions in flight at a kill: max {max(in_flight, default=0)}, "
        f"sum {sum(in_flight)}",
        f"receivers that outlived their owner: {len(killer.survivors)}; receiver kills the owner "
        f"did not repair within 10 s: {killer.not_restarted}",
    ]
    if killer.receiver_restart_s:
        lines.append(f"receiver back after a kill: max {max(killer.receiver_restart_s):.2f} s")
    if killer.orphan_exit_s:
        lines.append(f"receivers gone after their owner was killed: max "
                     f"{max(killer.orphan_exit_s):.2f} s")
    if killer.ready_s:
        ready = sorted(killer.ready_s)
        lines.append(f"ready after a restart: median {ready[len(ready) // 2]:.2f} s, "
                     f"max {ready[-1]:.2f} s")
    lines.append(f"client errors: {dict(load.errors)}")
    lines += [f"LOST {t}" for t in sorted(lost)[:20]]
    lines += [f"OVER {o}" for o in over]
    lines += [f"UNEXPLAINED duplicate {t} at {dups[t]}" for t in unexplained[:20]]
    failed = bool(lost or over or unexplained or killer.survivors or killer.not_restarted)
    return Verdict(lines, failed)


# ---------------------------------------------------------------- the run

async def drain(daemon: Daemon, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await asyncio.to_thread(daemon.queued) == 0:
            return time.monotonic() - t0
        await asyncio.sleep(0.5)
    raise RunBroken(f"the queue did not drain in {timeout:.0f} s")


async def scenario(args: argparse.Namespace, daemon: Daemon, load: Load,
                   killer: Killer) -> list[str]:
    daemon.start()
    await daemon.wait_ready()
    kinds = KINDS if daemon.workers > 0 else KINDS[1:]
    schedule = kill_schedule(args.kills, kinds, killer.rng)
    clients = [asyncio.create_task(load.client()) for _ in range(args.clients)]
    t0 = time.monotonic()
    try:
        await killer.run(schedule, args.gap)
        await asyncio.sleep(1.0)
    finally:
        load.stop.set()
        done, pending = await asyncio.wait(clients, timeout=30)
        for task in pending:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    load_s = time.monotonic() - t0
    drained = await drain(daemon, args.drain_timeout)
    return [f"load: {args.clients} clients for {load_s:.1f} s; queue drained "
            f"{drained:.1f} s after the load stopped"]


def stop_daemon(daemon: Daemon) -> tuple[list[str], bool]:
    """SIGTERM the daemon: (what happened, whether it exited 0 and took its
    receivers with it)."""
    if daemon.proc is None or daemon.proc.poll() is not None:
        return [], True
    before = receivers_of(daemon.pid)
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        rc = daemon.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        return ["SIGTERM: mta serve did not exit in 60 s (killed)"], False
    time.sleep(0.5)
    left = [p for p in before if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    said = f"SIGTERM: mta serve exited {rc}" + (f"; receivers {left} left behind" if left else "")
    return [said], rc == 0 and not left


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=None,
                   help="[server] workers (0: the single-process daemon; left out: the "
                        "daemon's default, one receiver per CPU)")
    p.add_argument("--kills", type=int, default=24)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--size", type=int, default=2048, help="body bytes per message")
    p.add_argument("--concurrency", type=int, default=20,
                   help="[delivery] concurrency_per_destination (the daemon's default: 20)")
    p.add_argument("--per-connection", type=int, default=100,
                   help="[delivery] max_messages_per_connection (the daemon's default: 100)")
    p.add_argument("--gap", type=lambda s: tuple(float(x) for x in s.split(",")),
                   default=(0.2, 2.0), help="seconds between kills, MIN,MAX")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--tree", type=Path, default=ROOT,
                   help="the mta source tree the daemon runs (default: this checkout; e.g. a "
                        "`git archive` of a commit, to compare)")
    p.add_argument("--sink", type=Path, help=argparse.SUPPRESS)   # internal: be the sink
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.sink:
        run_sink(args.sink)
        return 0
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    tmp = Path(tempfile.mkdtemp(prefix="mta-crash-"))
    sink_file = tmp / "sink.tokens"
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(sink_file)],
                            stdout=subprocess.PIPE, stderr=open(tmp / "sink.log", "ab"))
    assert sink.stdout is not None
    sink_port = int(sink.stdout.readline())
    port, admin_port = free_port(), free_port()
    cfg = tmp / "mta.toml"
    cfg.write_text(mta_config(tmp / "state", port, admin_port, sink_port, args))
    daemon = Daemon(cfg, tmp / "daemon.log", admin_port, expected_receivers(args.workers),
                    args.tree.resolve())
    load = Load(port, args.size)
    killer = Killer(daemon, load, random.Random(seed))
    print(f"crash_run: seed {seed}, workers {args.workers} ({daemon.workers} receivers), "
          f"{args.kills} kills, "
          f"{args.clients} clients, {args.size} B bodies, mta from {args.tree}, dir {tmp}",
          flush=True)
    broken = None
    head: list[str] = []
    stopped = False
    try:
        head = asyncio.run(scenario(args, daemon, load, killer))
    except RunBroken as exc:
        broken = str(exc)
    finally:
        stop_lines, stopped = stop_daemon(daemon)
        head += stop_lines
        time.sleep(0.5)
        sink.terminate()
        sink.wait()
    verdict = judge(load, killer, SinkLog.read(sink_file), args)
    print("\n".join(head + verdict.lines))
    if broken:
        print(f"RUN BROKEN: {broken}\n(the figures above are of an unfinished run: what the "
              "daemon did not get to deliver shows as lost)")
        print(f"(kept {tmp})")
        return 2
    verdict.failed |= not stopped
    if verdict.failed or args.keep:
        print(f"(kept {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT: " + ("FAIL" if verdict.failed else "ok"))
    return 1 if verdict.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
