"""A receiver process: runs SMTP submission sessions for its owner.

One job: the per-message CPU work of submission (SMTP parsing, TLS, the
password check, policy, header work, DKIM) in a process of its own, so the
daemon uses every core (ARCHITECTURE §3). `mta serve` (the owner) starts
`[server] workers` of these with `python -m mta.runtime.receiver RPC_FD
PASS_FD INDEX`: RPC_FD is its Channel to the owner, PASS_FD the socket the
owner passes accepted connections over (runtime/channel.py), INDEX its
number, which its log lines carry (logger name `mta.server@receiver-INDEX`).

Life
  1. the owner sends "config" (the Config in force, pickled: the owner's
     command line may have changed it); the receiver builds one listener per
     submission listener with the owner's seams (runtime/remote.py) and its
     own DKIM keys and domain states (re-read on "domains", sent after each
     of the owner's domain ticks, and on each "config"), answers "ready";
  2. each connection passed is adopted by its listener (the owner admitted
     it); every message is committed by the owner before its 250; the
     owner's sending API asks it to build messages ("api_build":
     runtime/api_build.py) so that CPU work leaves the owner too, and hands
     it sending-API connections (tag API_CONN: api_remote.py serves them);
  3. "stop" [grace], SIGTERM or SIGINT: the listeners stop (sessions inside
     DATA get `grace` seconds), then the process exits; it also exits when
     the owner's channel closes (the owner died: nothing can be committed).
SIGHUP is ignored: reloads come from the owner as "config".
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
from typing import Any

from mta.config import Config
from mta.core import SystemClock
from mta.delivery.resolver import DnsResolver
from mta.domains.service import DomainService
from mta.policy.senders import SenderPolicy
from mta.api.http import Adopted
from mta.runtime.api_build import BuildRefused, build, key_of
from mta.runtime.api_remote import API_CONN, receiver_api
from mta.runtime.channel import Channel, open_channel, recv_fds
from mta.runtime.domains import DomainCache
from mta.runtime.logs import event, setup_logging
from mta.runtime.paths import state_paths
from mta.runtime.remote import (ForwardingObserver, HandedGate, RemoteSpool, RemoteTurns,
                                remote_rcpt_check)
from mta.runtime.startup import tls_context
from mta.runtime.users import open_credentials
from mta.server.stream import StreamHeaders
from mta.server.listener import SubmissionListener

__all__ = ["Receiver", "main"]

log = logging.getLogger("mta.receiver")


class Receiver:
    def __init__(self, rpc_fd: int, pass_fd: int, *, index: int = 0):
        self.index = index
        self._rpc_sock = socket.socket(fileno=rpc_fd)
        self._pass = socket.socket(fileno=pass_fd)
        self._pass.setblocking(False)
        self._cfg: asyncio.Future[Config] | None = None
        self._stop = asyncio.Event()
        self._grace = 5.0
        self.listeners: dict[str, SubmissionListener] = {}
        self.domains: DomainCache | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._channel: Channel | None = None
        self.cfg: Config | None = None
        self.api: Adopted | None = None      # the sending API's share (api_remote.py)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._cfg = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        channel = await open_channel(self._rpc_sock, notice=self._notice, serve=self._serve,
                                     name="owner")
        self._channel = channel
        closed = asyncio.ensure_future(channel.closed())
        stopped = asyncio.ensure_future(self._stop.wait())
        first: list[asyncio.Future[Any]] = [self._cfg, closed, stopped]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not self._cfg.done() or self._stop.is_set():
            stopped.cancel()
            channel.close()
            return                                   # the owner went away first
        cfg = self._cfg.result()
        await self._build(cfg, channel)
        loop.add_reader(self._pass.fileno(), self._on_passed)
        channel.notify("ready", os.getpid())
        await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        loop.remove_reader(self._pass.fileno())
        # The owner may be gone: sessions cannot commit then, close them now.
        grace = self._grace if not channel.is_closed else 0.0
        await asyncio.gather(*(lst.stop(grace) for lst in self.listeners.values()))
        if self.api is not None:
            await self.api.close()
        for task in self._tasks:
            task.cancel()
        channel.close()

    async def _build(self, cfg: Config, channel: Channel) -> None:
        self.cfg = cfg
        setup_logging(cfg.server.log_level)
        tag = f"@receiver-{self.index}"

        def tagged(record: logging.LogRecord) -> bool:
            # The owner's and the receivers' lines share stderr: say whose.
            if not record.name.endswith(tag):
                record.name += tag
            return True
        for handler in logging.getLogger().handlers:
            handler.addFilter(tagged)
        loop = asyncio.get_running_loop()
        paths = state_paths(cfg)
        clock = SystemClock()
        observer = ForwardingObserver(channel, loop)
        resolver = DnsResolver(cfg.dns.nameservers, timeout=cfg.dns.timeout)
        self.domains = DomainCache(DomainService(cfg, resolver=resolver, clock=clock), clock,
                                   observer=observer)
        await self.domains.refresh()
        credentials = open_credentials(paths["credentials"])
        sender_policy = SenderPolicy(
            require_verified=cfg.policy.require_verified_domain and cfg.server.mode != "sandbox",
            domain_state=self.domains.state)
        spool, rcpt_check, gate = RemoteSpool(channel), remote_rcpt_check(channel), \
            HandedGate(channel)
        for lcfg in cfg.listeners:
            if lcfg.role != "submission":
                continue                       # inbound sessions stay in the owner
            ctx = tls_context(lcfg, paths, cfg.server.hostname) if lcfg.tls != "none" else None
            self.listeners[lcfg.name] = SubmissionListener(
                lcfg, hostname=cfg.server.hostname, spool=spool, credentials=credentials,
                tls_context=ctx, clock=clock, auth_turns=RemoteTurns(channel, lcfg.name),
                gate=gate, sender_policy=sender_policy, signer=self.domains,
                rcpt_check=rcpt_check, spill_dir=str(paths["incoming"]),
                accept_suppressed=cfg.suppression.on_rcpt == "accept", observer=observer,
                stream=StreamHeaders(self._config, self.domains, paths["public_key"]))
        if cfg.api.address is not None:
            self.api = await receiver_api(channel, cfg_of=self._config, domains=self.domains,
                                          clock=clock)

    def _config(self) -> Config:
        assert self.cfg is not None
        return self.cfg

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_domains(self) -> None:
        if self.domains is not None:
            try:
                await self.domains.refresh()
            except Exception as exc:
                event(log, "domains_refresh_failed", level=logging.WARNING, error=exc)

    # ---- from the owner -------------------------------------------------------
    async def _serve(self, op: str, args: list[Any]) -> Any:
        if op == "api_build" and self.cfg is not None and self.domains is not None:
            return await self._api_build(self.cfg, self.domains, *args)
        raise LookupError(f"unknown request {op!r}")

    @staticmethod
    async def _api_build(cfg: Config, domains: DomainCache, raw: bytes, batch: bool,
                         key: list[Any], client_ip: str, now: float,
                         secure: bool) -> list[Any]:
        """A sending API request's messages (runtime/api_build.py), built
        here so the CPU work leaves the owner: ["ok", [built, …]] or
        ["error", status, name, message]."""
        policy = SenderPolicy(
            require_verified=cfg.policy.require_verified_domain and cfg.server.mode != "sandbox",
            domain_state=domains.state)
        try:
            built = await build(bytes(raw), batch=bool(batch), key=key_of(key),
                                client_ip=str(client_ip), now=float(now), cfg=cfg,
                                secure=bool(secure), sender_policy=policy, signer=domains)
        except BuildRefused as exc:
            return ["error", exc.status, exc.name, exc.message]
        return ["ok", built]

    def _notice(self, op: str, args: list[Any]) -> None:
        if op == "config":
            cfg = pickle.loads(args[0])
            if self._cfg is not None and not self._cfg.done():
                self._cfg.set_result(cfg)
            else:
                self._spawn(self._reconfigure(cfg))
        elif op == "domains":
            self._spawn(self._refresh_domains())
        elif op == "stop":
            self._grace = float(args[0])
            self._stop.set()

    async def _reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        logging.getLogger().setLevel(cfg.server.log_level.upper())
        paths = state_paths(cfg)
        for name, lst in self.listeners.items():
            lcfg = next((lc for lc in cfg.listeners if lc.name == name), None)
            if lcfg is None:
                continue
            try:
                ctx = tls_context(lcfg, paths, cfg.server.hostname) if lcfg.tls != "none" else None
                lst.reconfigure(cfg, tls_context=ctx)
            except Exception as exc:   # the owner checked the same files: rare
                event(log, "reload_failed", level=logging.ERROR, listener=name, error=exc)
        if self.domains is not None:
            await self.domains.reconfigure(cfg)

    def _on_passed(self) -> None:
        got = recv_fds(self._pass)
        if got is None:
            self._stop.set()                   # the owner closed its end
            return
        for fd, payload in got:
            sock = socket.socket(fileno=fd)
            name, conn_id, refusal = payload
            if name == API_CONN:
                if self.api is not None:
                    self.api.adopt(sock)           # HTTP: no session gate to tell
                else:
                    sock.close()
                continue
            lst = self.listeners.get(name)
            if lst is None:                    # cannot happen: close it, tell the owner
                sock.close()
                self._closed(conn_id, refusal)
                continue
            self._spawn(self._adopt(lst, sock, [conn_id, refusal]))

    async def _adopt(self, lst: SubmissionListener, sock: socket.socket, tag: list[Any]) -> None:
        try:
            await lst.adopt(sock, tag)
        except (OSError, asyncio.TimeoutError) as exc:   # e.g. a failed implicit TLS handshake
            log.info("event=adopt_failed listener=%s error=%s", lst.cfg.name, exc)
            sock.close()
            self._closed(tag[0], tag[1])

    def _closed(self, conn_id: int, refusal: Any) -> None:
        """A connection that never became a session: the owner's gate counted
        it (unless it refused it) and must hear it ended."""
        if refusal is None and self._channel is not None and not self._channel.is_closed:
            self._channel.notify("closed", conn_id)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m mta.runtime.receiver RPC_FD PASS_FD INDEX (started by mta serve)",
              file=sys.stderr)
        return 2
    receiver = Receiver(int(argv[1]), int(argv[2]), index=int(argv[3]))
    try:
        import uvloop
        uvloop.run(receiver.run())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(receiver.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
