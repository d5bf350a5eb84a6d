"""One listener: the socket and the lifecycle of its sessions.

API
    SubmissionListener(cfg, *, hostname, spool, credentials, tls_context, clock,
                       auth_throttle=None, user_throttle=None, log=None,
                       message_factory=None, sender_policy=None, signer=None,
                       rcpt_check=None, accept_suppressed=False,
                       inbound_classify=None, inbound_deliver=None,
                       observer=None, spill_dir=None, auth_turns=None, gate=None)
        cfg.role chooses the service: "submission" (session.SubmissionHandler,
        needs spool and credentials; the other arguments are its seams, typed
        in seams.py and credentials.CredentialCheck) or "inbound"
        (inbound.InboundHandler on inbound.InboundSMTP: no AUTH; needs
        inbound_classify and inbound_deliver, see inbound.py;
        spool/credentials/auth/sender arguments are ignored). A missing hook
        is a ListenerSetupError (a ConfigError and a ValueError).
        observer (core.observe) is told about sessions, messages received
        and AUTH failures, labelled with cfg.name.
        auth_turns: the AUTH throttles (authcheck.AuthTurns; a receiver
        passes its owner's); gate: the session limits (seams.SessionLimits;
        default SessionGate here, a receiver passes its owner's).
        spill_dir: where a message's bytes past core.spill.HEAD_BYTES are
        kept while it is received (anonymous files; default: the system's
        temporary directory). Memory per session stays about HEAD_BYTES.
    await .start(handoff=None)
                            bind cfg.address (port 0 allowed) and accept;
                            with `handoff` (the owner of receiver processes,
                            ARCHITECTURE §3) each accepted connection is
                            admitted by `.gate` here and given to
                            handoff(listener, sock, handed, refusal): no
                            session runs in this process; the owner calls
                            .gate.release(handed) when the receiver says the
                            session ended
    await .adopt(sock, tag) a receiver process: run a session on a socket the
                            owner accepted (implicit TLS handshakes here);
                            `tag` reaches the gate given as `gate=` (the
                            owner's verdict) as proto.handoff_tag
    .sockname               (host, port) actually bound
    await .stop(grace=5.0)  stop accepting; sessions inside DATA get `grace`
                            seconds to finish; every session is then closed
                            (idle ones get "421 4.3.2" first)
    .reconfigure(cfg, *, tls_context)
                            config reload, `cfg` the Config in force (the
                            reloaded one, with the keys that need a restart,
                            e.g. server.mode, as the process runs them): the
                            listener's own section (by name; none: nothing
                            changes) and the TLS context loaded for it; the
                            handler takes its keys (handler.reconfigure).
                            New sessions use the new values; the bound
                            address, TLS mode and role do not change
                            (restart for that: logged, the old ones stay)
    .trusted(ip) -> bool    a client of trusted_networks (submission only)
    .refusal                () -> Reply | None, or None: asked (via .gate.refusal())
                            before each new connection and each MAIL FROM; a Reply
                            refuses it (a draining node, runtime/admin_cluster.py)

Invariants
  * tls="starttls" and tls="implicit" need a TLS context (ConfigError
    otherwise): a submission listener never silently runs without the TLS
    it was configured with. Implicit TLS wraps the socket from the first byte.
  * aiosmtpd's own logger ("mail.log") is raised to WARNING on start unless
    the operator configured it: at INFO it logs every command line and at
    DEBUG every DATA line (message content). aiosmtpd ≥ 1.4 masks the AUTH
    initial response and does not log challenge answers, but content has no
    place in the log either.
  * Only this module touches sockets; policy lives in session.py.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mta.core import Clock, ConfigError, Observer, Reply
from mta.core.hostport import split_hostport
from mta.policy.authlimit import AuthThrottle, UserThrottle
from mta.policy.senders import SenderPolicy
from mta.server import replies
from mta.server.credentials import CredentialCheck
from mta.server.inbound import InboundHandler, InboundMessage, InboundSMTP
from mta.server.protocol import SubmissionSMTP
from mta.server.stream import StreamHeaders
from mta.server.session import SubmissionHandler

if TYPE_CHECKING:  # server does not import config at run time (ARCHITECTURE §2)
    from mta.config import Config
    from mta.config.sections import ListenerConfig
    from mta.server.seams import AuthTurns as Turns
    from mta.server.seams import (MessageFactory, RcptCheck, SessionLimits, Signer,
                                  SubmissionSpool)

# The owner's hand-off: (listener, accepted socket, its stand-in in the gate,
# the gate's refusal or None) -> a receiver process runs the session.
Handoff = Callable[["SubmissionListener", socket.socket, "Handed", "Reply | None"], None]

__all__ = ["ListenerSetupError", "SubmissionListener"]


class ListenerSetupError(ConfigError, ValueError):
    """The listener was built without what its role needs."""

_IDENT = "ESMTP mta"


def _bind_address(text: str) -> tuple[str, int]:
    """(host, port) to bind: the config's one host:port grammar (core.hostport)."""
    try:
        return split_hostport(text)
    except ValueError as exc:
        raise ConfigError(f"listener address {text!r} is not host:port ({exc})") from None


def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for host:port, as loop.create_server would bind them
    (every address the name resolves to; IPv6 ones v6-only)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:   # one port for every address, as create_server would not
                break
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def _quiet_aiosmtpd_logger() -> None:
    lg = logging.getLogger("mail.log")
    if lg.level == logging.NOTSET or lg.level < logging.WARNING:
        lg.setLevel(logging.WARNING)


class Handed:
    """A connection the owner accepted and handed to a receiver process, as
    its SessionGate counts it (the gate only reads `client_ip`)."""

    __slots__ = ("client_ip",)

    def __init__(self, client_ip: str):
        self.client_ip = client_ip


class SessionGate:
    """The listener's session limits: `admit` is asked once per connection
    (before the greeting), `release` when it closes. Over `max_sessions`
    on the listener, or `max_sessions_per_ip` from one client (clients in
    trusted_networks are exempt from the per-IP limit), the connection gets
    a 421 instead of the greeting. Each limit that bites is counted
    (observer.session_refused(listener, reason)) and logged, at most one
    line per reason per second with the number left out."""

    LOG_EVERY = 1.0

    def __init__(self, listener: SubmissionListener):
        self.listener = listener
        self.sessions: set[SubmissionSMTP] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, tuple[float, int]] = {}   # reason -> (last log, not logged)

    def refusal(self) -> Reply | None:
        """The listener's answer to any new connection or MAIL FROM now (None: go on)."""
        hook = self.listener.refusal
        return None if hook is None else hook()

    def admit(self, proto: SubmissionSMTP) -> Reply | None:
        cfg = self.listener.cfg
        ip = proto.client_ip
        refused = self.refusal()
        if refused is not None:
            return refused
        if len(self.sessions) >= cfg.max_sessions:
            self.limit_hit(proto, "max_sessions")
            return replies.TOO_MANY_SESSIONS
        if (self.per_ip[ip] >= cfg.max_sessions_per_ip
                and not self.listener.trusted(ip)):
            self.limit_hit(proto, "max_sessions_per_ip")
            return replies.TOO_MANY_FROM_IP
        self.sessions.add(proto)
        self.per_ip[ip] += 1
        return None

    def release(self, proto: SubmissionSMTP) -> None:
        self.sessions.discard(proto)
        ip = proto.client_ip
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def limit_hit(self, proto: SubmissionSMTP, reason: str) -> None:
        lst = self.listener
        lst.observer.session_refused(lst.cfg.name, reason)
        now = time.monotonic()
        last, skipped = self._logged.get(reason, (0.0, 0))
        if now - last < self.LOG_EVERY:
            self._logged[reason] = (last, skipped + 1)
            return
        self._logged[reason] = (now, 0)
        lst.log.warning("event=session_limit listener=%s client=%s reason=%s sessions=%d "
                        "from_client=%d not_logged=%d", lst.cfg.name, proto.client_ip, reason,
                        len(self.sessions), self.per_ip.get(proto.client_ip, 0), skipped)


class SubmissionListener:
    def __init__(self, cfg: ListenerConfig, *, hostname: str,
                 spool: SubmissionSpool | None = None,
                 credentials: CredentialCheck | None = None,
                 tls_context: ssl.SSLContext | None, clock: Clock,
                 auth_throttle: AuthThrottle | None = None,
                 user_throttle: UserThrottle | None = None,
                 log: logging.Logger | None = None,
                 message_factory: MessageFactory | None = None,
                 sender_policy: SenderPolicy | None = None, signer: Signer | None = None,
                 rcpt_check: RcptCheck | None = None, accept_suppressed: bool = False,
                 inbound_classify: Callable[[str], str | None] | None = None,
                 inbound_deliver: Callable[[InboundMessage], Awaitable[Reply]] | None = None,
                 observer: Observer | None = None, spill_dir: str | None = None,
                 auth_turns: Turns | None = None, gate: SessionLimits | None = None,
                 stream: StreamHeaders | None = None):
        self.observer = observer = observer or Observer()
        self.spill_dir = spill_dir   # where DATA past core.spill.HEAD_BYTES goes
        self.log = log or logging.getLogger("mta.server")
        self.hostname = hostname
        self._check_tls(cfg, tls_context)
        self.cfg = cfg
        self.tls_context = tls_context
        self.handler: SubmissionHandler | InboundHandler
        if cfg.role == "inbound":
            if inbound_classify is None or inbound_deliver is None:
                raise ListenerSetupError(f"listener {cfg.name!r}: role = \"inbound\" needs "
                                         "inbound_classify and inbound_deliver")
            self._protocol_class: type[SubmissionSMTP] = InboundSMTP
            self.handler = InboundHandler(cfg, hostname=hostname, classify_rcpt=inbound_classify,
                                          deliver=inbound_deliver, clock=clock, log=self.log)
        else:
            if spool is None or credentials is None:
                raise ListenerSetupError(f"listener {cfg.name!r}: role = \"{cfg.role}\" needs "
                                         "a spool and a credential store")
            if auth_throttle is None:
                auth_throttle = AuthThrottle(cfg.auth_max_failures, cfg.auth_lockout)
            if user_throttle is None:
                user_throttle = UserThrottle(cfg.auth_max_failures_per_user, cfg.auth_lockout)
            self._protocol_class = SubmissionSMTP
            self.handler = SubmissionHandler(cfg, hostname=hostname, spool=spool,
                                             credentials=credentials, clock=clock,
                                             auth_throttle=auth_throttle,
                                             user_throttle=user_throttle, log=self.log,
                                             message_factory=message_factory,
                                             sender_policy=sender_policy, signer=signer,
                                             rcpt_check=rcpt_check,
                                             accept_suppressed=accept_suppressed,
                                             observer=observer, auth_turns=auth_turns,
                                             stream=stream)
        self.refusal: Callable[[], Reply | None] | None = None   # e.g. a draining node
        self._server: asyncio.Server | None = None
        self._lsocks: list[socket.socket] = []     # handoff mode (the owner)
        self._adopting = False                     # receiver mode
        self.gate = SessionGate(self)
        # A receiver's gate is its owner's (runtime/remote.py); the sessions
        # this process runs are in `self._sessions` either way.
        self._gate: SessionLimits = gate if gate is not None else self.gate
        self._sessions: set[SubmissionSMTP] = getattr(self._gate, "sessions", self.gate.sessions)

    @staticmethod
    def _check_tls(cfg: ListenerConfig, tls_context: ssl.SSLContext | None) -> None:
        if cfg.tls in ("starttls", "implicit") and tls_context is None:
            raise ConfigError(f"listener {cfg.name!r}: tls = \"{cfg.tls}\" needs a TLS "
                              "certificate (cert/key), none was loaded")

    # -- lifecycle ----------------------------------------------------------

    def _make_protocol(self) -> SubmissionSMTP:
        cfg = self.cfg
        implicit = cfg.tls == "implicit"
        proto = self._protocol_class(
            self.handler,
            implicit_tls=implicit,
            gate=self._gate,
            observer=self.observer,
            listener=cfg.name,
            junk_limit=cfg.max_junk_commands,
            transaction_timeout=cfg.transaction_timeout,
            spill_dir=self.spill_dir,
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.hostname,
            ident=_IDENT,
            tls_context=self.tls_context if cfg.tls == "starttls" else None,
            require_starttls=False,
            timeout=cfg.idle_timeout,
            auth_required=False,       # SubmissionSMTP.check_auth_needed decides
            # Inside implicit TLS every session is encrypted; aiosmtpd only
            # knows about STARTTLS, so tell it not to insist.
            auth_require_tls=(cfg.require_tls_for_auth and not implicit
                              or cfg.role == "inbound"),  # inbound: AUTH never offered
            loop=asyncio.get_running_loop(),
        )
        return proto

    async def start(self, handoff: Handoff | None = None) -> None:
        """Bind and accept. With `handoff` (the owner of receiver processes)
        each accepted connection is admitted by the gate here and handed on;
        no session runs in this process."""
        if self._server is not None or self._lsocks:
            raise RuntimeError("listener already started")
        _quiet_aiosmtpd_logger()
        host, port = _bind_address(self.cfg.address)
        loop = asyncio.get_running_loop()
        if handoff is not None:
            self._lsocks = _bind(host, port, self.cfg.listen_backlog)
            for lsock in self._lsocks:
                loop.add_reader(lsock.fileno(), self._accept, lsock, handoff)
            return
        self._server = await loop.create_server(
            self._make_protocol, host, port,
            ssl=self.tls_context if self.cfg.tls == "implicit" else None,
            reuse_address=True, backlog=self.cfg.listen_backlog)

    def _accept(self, lsock: socket.socket, handoff: Handoff) -> None:
        for _ in range(64):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: stop accepting for a second (the socket
                # stays readable; retrying at once would spin), as asyncio does.
                self.log.warning("event=accept_failed listener=%s error=%s", self.cfg.name, exc)
                loop = asyncio.get_running_loop()
                loop.remove_reader(lsock.fileno())
                loop.call_later(1.0, self._resume_accept, lsock, handoff)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handed = Handed(str(addr[0]))
            handoff(self, conn, handed, self.gate.admit(handed))   # type: ignore[arg-type]

    def _resume_accept(self, lsock: socket.socket, handoff: Handoff) -> None:
        if lsock in self._lsocks:        # not stopped meanwhile
            asyncio.get_running_loop().add_reader(lsock.fileno(), self._accept, lsock, handoff)

    async def adopt(self, sock: socket.socket, tag: object) -> None:
        """Run a session on `sock`, accepted and admitted by the owner (a
        receiver process); `tag` goes to the protocol as `handoff_tag`, for
        the gate this listener was given."""
        self._adopting = True
        loop = asyncio.get_running_loop()

        def factory() -> SubmissionSMTP:
            proto = self._make_protocol()
            proto.handoff_tag = tag
            return proto

        sock.setblocking(False)
        await loop.connect_accepted_socket(
            factory, sock, ssl=self.tls_context if self.cfg.tls == "implicit" else None)

    @property
    def sockname(self) -> tuple[str, int]:
        if self._lsocks:
            name = self._lsocks[0].getsockname()
        elif self._server is None or not self._server.sockets:
            raise RuntimeError("listener not started")
        else:
            name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    def trusted(self, ip: str) -> bool:
        return isinstance(self.handler, SubmissionHandler) and self.handler.trusted(ip)

    async def stop(self, grace: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        if self._lsocks:
            for lsock in self._lsocks:
                loop.remove_reader(lsock.fileno())
                lsock.close()
            self._lsocks = []
            self.log.info("event=stopped listener=%s", self.cfg.name)
            return
        if self._server is None and not self._adopting:
            return
        if self._server is not None:
            self._server.close()
        deadline = loop.time() + grace
        while any(s.in_data for s in self._sessions) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for s in list(self._sessions):
            s.close_for_shutdown(replies.SHUTTING_DOWN)
        # Let connection_lost run for the closed transports.
        for _ in range(20):
            if not self._sessions:
                break
            await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None
        self._adopting = False
        self.log.info("event=stopped listener=%s", self.cfg.name)

    def reconfigure(self, cfg: Config, *, tls_context: ssl.SSLContext | None) -> None:
        lcfg = next((lc for lc in cfg.listeners if lc.name == self.cfg.name), None)
        if lcfg is None:
            return                      # removed: it runs as it was until a restart
        lcfg = self._settle(lcfg, tls_context)
        self.handler.reconfigure(cfg, lcfg)

    def _settle(self, lcfg: ListenerConfig, tls_context: ssl.SSLContext | None) -> ListenerConfig:
        """Take `lcfg` (but the keys that need a restart) and `tls_context` for new sessions."""
        if (lcfg.address != self.cfg.address or lcfg.tls != self.cfg.tls
                or lcfg.role != self.cfg.role):
            self.log.warning("event=reload_ignored listener=%s reason=\"address/tls/role "
                             "change needs a restart\"", self.cfg.name)
            lcfg = dataclasses.replace(lcfg, address=self.cfg.address, tls=self.cfg.tls,
                                       role=self.cfg.role)
        self._check_tls(lcfg, tls_context)
        self.cfg = lcfg
        self.tls_context = tls_context
        return lcfg

