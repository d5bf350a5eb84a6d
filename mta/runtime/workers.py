"""The owner's side of the receiver processes (ARCHITECTURE §3).

One job: start `[server] workers` receiver processes (runtime/receiver.py),
hand them the connections the owner's listeners accept, answer what they ask
(commit a message, a ledger event, a suppression check, an AUTH turn) with
the owner's one spool, throttles and gates, take their metrics, and keep them
running: a receiver that dies is restarted.

API
    resolve_workers(cfg) -> int      `[server] workers` (-1: one per CPU when
                                     there are two or more, else 0)
    Receivers(count, *, cfg, spool, rcpt_check, observer, spill_dir)
        spool       the owner's seams.SubmissionSpool (enqueue, append_events)
        .listeners  name -> the owner's SubmissionListener (started with
                    handoff=.handoff): its gate and AUTH turns are the ones
                    that count
    await .start(timeout=30)         spawn all, return when every one is
                                     ready (RuntimeError if one is not)
    .handoff(listener, sock, handed, refusal)
                                     give an accepted connection to the
                                     least busy receiver (SCM_RIGHTS)
    .reconfigure(cfg)                send the Config in force to every one
    .begin_stop()                    from now on a receiver that exits stays down
    .refresh_domains()               every receiver re-reads domains and keys
    .hand_api(sock) -> bool          a sending-API connection to a ready receiver
                                     (False: none now); .api_serve answers their
                                     API requests (set by runtime/api.py)
    await .call_any(op, *args)       one ready receiver (round robin) does `op`
                                     (the sending API's "api_build"); None: none ready
    await .stop(grace)               "stop" to every one, wait for their exit
                                     (killed past grace + 5 s)
    .pids                            the live receivers' pids

Invariants
  * A receiver answers 250 only after the owner's enqueue returned (its
    commit point): killing a receiver loses nothing acknowledged.
  * Every admitted connection is released from its gate exactly once: when
    the receiver says the session closed, or when the receiver dies.
  * Connections accepted while no receiver is ready wait for one (at most
    MAX_WAITING, then 421 4.3.2 and close).
"""

from __future__ import annotations

import asyncio
import collections
import copyreg
import io
import itertools
import logging
import os
import pickle
import socket
import sys
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mta.core import LedgerEvent, Observer, Reply
from mta.core.spill import SpillFile
from mta.runtime.api_remote import API_CONN
from mta.runtime.channel import Channel, open_channel, send_fd
from mta.runtime.logs import event
from mta.runtime.remote import OBSERVER_CALLS, reply_value
from mta.server.listener import Handed, SubmissionListener
from mta.spool import NewMessage

if TYPE_CHECKING:
    from mta.config import Config
    from mta.server.seams import SubmissionSpool

__all__ = ["Receivers", "resolve_workers"]

log = logging.getLogger("mta.workers")

MAX_WAITING = 1000
TURNS = frozenset({"locked", "ip_begin", "user_begin", "ip_end", "user_end", "failure"})
UNAVAILABLE = b"421 4.3.2 Service not available, try again later\r\n"


def resolve_workers(cfg: Config) -> int:
    n = cfg.server.workers
    if n >= 0:
        return n
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus if cpus and cpus > 1 else 0


@dataclass(eq=False)
class _Proc:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    pass_sock: socket.socket | None = None
    ready: bool = False
    started: float = 0.0
    conns: dict[int, tuple[SubmissionListener, Handed]] = field(default_factory=dict)
    tails: dict[int, SpillFile] = field(default_factory=dict)
    queue: collections.deque[tuple[socket.socket, list[Any]]] = field(
        default_factory=collections.deque)
    open: collections.Counter[str] = field(default_factory=collections.Counter)
    up: asyncio.Event = field(default_factory=asyncio.Event)


def config_bytes(cfg: Config) -> bytes:
    """The Config as a receiver takes it (pickle: our own frozen dataclasses,
    between our own processes; its read-only mappings go as dicts)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[types.MappingProxyType] = lambda m: (read_only, (dict(m),))
    pickler.dump(cfg)
    return buf.getvalue()


def read_only(mapping: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    return types.MappingProxyType(mapping)


def _plain(value: Any) -> Any:
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


class Receivers:
    def __init__(self, count: int, *, cfg: Config, spool: SubmissionSpool,
                 rcpt_check: Callable[[str, str | None], Awaitable[Reply | None]],
                 observer: Observer, spill_dir: str):
        self.cfg, self.spool, self.rcpt_check = cfg, spool, rcpt_check
        self.observer, self.spill_dir = observer, spill_dir
        self.listeners: dict[str, SubmissionListener] = {}
        self._procs = [_Proc(i) for i in range(count)]
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        # The sending API's answers to receivers (api_remote.OwnerApi.serve),
        # set by runtime/api.py when the API is on.
        self.api_serve: Callable[[str, list[Any]], Awaitable[Any]] | None = None
        # True: the owner serves new API connections itself (a draining
        # cluster node: its app answers 421; runtime/admin_cluster.py).
        self.keep_api: Callable[[], bool] = lambda: False
        self._stopping = False
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self._procs
                if p.process is not None and p.process.returncode is None]

    # ---- life -------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        for p in self._procs:
            await self._spawn(p)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(p.up.wait() for p in self._procs))
        except TimeoutError:
            raise RuntimeError(f"receiver processes not ready within {timeout:g} s") from None

    async def _spawn(self, p: _Proc) -> None:
        loop = asyncio.get_running_loop()
        rpc, rpc_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds, fds_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            p.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mta.runtime.receiver", str(rpc_child.fileno()),
                str(fds_child.fileno()), str(p.index),
                pass_fds=(rpc_child.fileno(), fds_child.fileno()))
        finally:
            rpc_child.close()
            fds_child.close()
        fds.setblocking(False)
        p.pass_sock, p.ready, p.started, p.up = fds, False, loop.time(), asyncio.Event()
        p.channel = await open_channel(rpc, name=f"receiver-{p.index}",
                                       serve=lambda op, args: self._serve(p, op, args),
                                       notice=lambda op, args: self._notice(p, op, args))
        p.channel.notify("config", config_bytes(self.cfg))
        event(log, "receiver_started", index=p.index, pid=p.process.pid)
        task = asyncio.ensure_future(self._watch(p))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, p: _Proc) -> None:
        assert p.process is not None
        code = await p.process.wait()
        self._cleanup(p)
        if self._stopping:
            return
        event(log, "receiver_exited", level=logging.WARNING, index=p.index,
              pid=p.process.pid, code=code)
        loop = asyncio.get_running_loop()
        if loop.time() - p.started < 1.0:
            await asyncio.sleep(1.0)        # dying at start: do not spin
        if not self._stopping:
            await self._spawn(p)

    def _cleanup(self, p: _Proc) -> None:
        """A receiver ended: its sessions are gone (release them), its
        half-sent messages too (they were never acknowledged)."""
        p.ready = False
        if p.channel is not None:
            p.channel.close()
        waiting = [(sock, payload, p.conns.pop(payload[1], None)) for sock, payload in p.queue]
        p.queue.clear()
        for lst, handed in p.conns.values():
            lst.gate.release(handed)    # type: ignore[arg-type]
        p.conns.clear()
        for listener, n in p.open.items():
            for _ in range(n):
                self.observer.session_closed(listener)
        p.open.clear()
        for spill in p.tails.values():
            spill.close()
        p.tails.clear()
        if p.pass_sock is not None:
            asyncio.get_running_loop().remove_writer(p.pass_sock.fileno())
            p.pass_sock.close()
            p.pass_sock = None
        for sock, payload, entry in waiting:   # never adopted: to another receiver
            self._dispatch(sock, payload, entry)

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        data = config_bytes(cfg)
        for p in self._procs:
            if p.channel is not None and not p.channel.is_closed:
                p.channel.notify("config", data)

    def hand_api(self, sock: socket.socket) -> bool:
        """A sending-API connection to a ready receiver (in turn); False
        when none can take it now (the caller serves it itself)."""
        ready = [p for p in self._procs if p.ready and p.pass_sock is not None and not p.queue]
        if self._stopping or not ready or self.keep_api():
            return False
        p = ready[next(self._turn) % len(ready)]
        assert p.pass_sock is not None
        try:
            handed = send_fd(p.pass_sock, sock.fileno(), [API_CONN, 0, None])
        except OSError:          # it died and the owner has not heard yet: serve it here
            return False
        if handed:
            sock.close()
        return handed

    async def call_any(self, op: str, *args: Any) -> Any:
        """Ask one ready receiver (in turn) to do `op` (e.g. the sending
        API's "api_build"); None when none is ready (the caller does it
        itself). ChannelClosed/RemoteError as Channel.call."""
        ready = [p for p in self._procs if p.ready and p.channel is not None
                 and not p.channel.is_closed]
        if not ready:
            return None
        p = ready[next(self._turn) % len(ready)]
        assert p.channel is not None
        return await p.channel.call(op, *args)

    def refresh_domains(self) -> None:
        """Every receiver re-reads the sending domains and DKIM keys (after
        the owner's periodic tick, which ran the DNS checks)."""
        for p in self._procs:
            if p.channel is not None and not p.channel.is_closed:
                p.channel.notify("domains")

    def begin_stop(self) -> None:
        """The daemon is leaving (its signal handler): a receiver that exits
        from now on (systemd signals the whole control group) is not
        restarted."""
        self._stopping = True

    async def stop(self, grace: float) -> None:
        self._stopping = True
        for p in self._procs:
            if p.channel is not None and not p.channel.is_closed:
                p.channel.notify("stop", grace)
        procs = [p.process for p in self._procs if p.process is not None]
        try:
            async with asyncio.timeout(grace + 5.0):
                await asyncio.gather(*(proc.wait() for proc in procs))
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            await asyncio.gather(*(proc.wait() for proc in procs))
        for p in self._procs:
            self._cleanup(p)
        for task in list(self._watchers):
            task.cancel()

    # ---- connections ------------------------------------------------------
    def handoff(self, lst: SubmissionListener, sock: socket.socket, handed: Handed,
                refusal: Reply | None) -> None:
        cid = next(self._ids)
        self._dispatch(sock, [lst.cfg.name, cid, reply_value(refusal)],
                       (lst, handed) if refusal is None else None)

    def _dispatch(self, sock: socket.socket, payload: list[Any],
                  entry: tuple[SubmissionListener, Handed] | None = None) -> None:
        cid = payload[1]
        alive = [p for p in self._procs if p.pass_sock is not None]
        ready = [p for p in alive if p.ready] or alive
        if self._stopping or not ready or sum(len(p.queue) for p in alive) >= MAX_WAITING:
            self._refuse(sock, entry)
            return
        p = min(ready, key=lambda q: len(q.conns) + len(q.queue))
        if entry is not None:
            p.conns[cid] = entry
        if p.ready and not p.queue and p.pass_sock is not None \
                and send_fd(p.pass_sock, sock.fileno(), payload):
            sock.close()
            return
        p.queue.append((sock, payload))
        if p.ready and len(p.queue) == 1 and p.pass_sock is not None:
            asyncio.get_running_loop().add_writer(p.pass_sock.fileno(), self._flush, p)

    @staticmethod
    def _refuse(sock: socket.socket, entry: tuple[SubmissionListener, Handed] | None) -> None:
        if entry is not None:
            entry[0].gate.release(entry[1])   # type: ignore[arg-type]
        try:
            sock.send(UNAVAILABLE)
        except OSError:
            pass
        sock.close()

    def _flush(self, p: _Proc) -> None:
        while p.queue and p.pass_sock is not None:
            sock, payload = p.queue[0]
            if not send_fd(p.pass_sock, sock.fileno(), payload):
                return                      # still full: the writer callback stays
            p.queue.popleft()
            sock.close()
        if p.pass_sock is not None:
            asyncio.get_running_loop().remove_writer(p.pass_sock.fileno())

    # ---- what receivers ask ---------------------------------------------------
    async def _serve(self, p: _Proc, op: str, args: list[Any]) -> Any:
        if op.startswith("api_") and self.api_serve is not None:
            return await self.api_serve(op, args)      # the sending API (api_remote.py)
        if op == "enqueue":
            fields, now, xfer = args
            tail = p.tails.pop(xfer, None) if xfer is not None else None
            try:
                msg = NewMessage(**{k: _plain(v) for k, v in fields.items()}, tail=tail)
                return await self.spool.enqueue(msg, float(now))
            finally:
                if tail is not None:
                    tail.close()
        if op == "events":
            await self.spool.append_events([LedgerEvent(*e) for e in args[0]])
            return None
        if op == "rcpt":
            return reply_value(await self.rcpt_check(args[0], args[1]))
        if op == "turn":
            name, method, margs = args
            if method not in TURNS:
                raise LookupError(f"no AUTH turn {method!r}")
            turns = self.listeners[name].handler.auth.turns  # type: ignore[union-attr]
            got = await getattr(turns, method)(*margs)
            return list(got) if isinstance(got, tuple) else got
        raise LookupError(f"unknown request {op!r}")

    def _notice(self, p: _Proc, op: str, args: list[Any]) -> None:
        if op == "tail":
            spill = p.tails.get(args[0])
            if spill is None:
                spill = p.tails[args[0]] = SpillFile(self.spill_dir)
            spill.write(args[1])
        elif op == "obs":
            name, oargs = args
            if name in OBSERVER_CALLS:
                if name == "session_opened":
                    p.open[oargs[0]] += 1
                elif name == "session_closed":
                    p.open[oargs[0]] -= 1
                getattr(self.observer, name)(*oargs)
        elif op == "closed":
            entry = p.conns.pop(args[0], None)
            if entry is not None:
                entry[0].gate.release(entry[1])   # type: ignore[arg-type]
        elif op == "limit":
            lst = self.listeners.get(args[0])
            if lst is not None:
                lst.gate.limit_hit(Handed(str(args[1])), str(args[2]))  # type: ignore[arg-type]
        elif op == "ready":
            p.ready = True
            p.up.set()
            event(log, "receiver_ready", index=p.index, pid=args[0])
            if p.queue and p.pass_sock is not None:
                asyncio.get_running_loop().add_writer(p.pass_sock.fileno(), self._flush, p)
