"""The SMTP client adapter: one batch of messages for one destination → outcomes.

One job: drive aiosmtplib over one or more connections to a destination and
report, for every recipient of every message, what the remote said, plus one
verdict on the destination's health (docs/ARCHITECTURE.md §4, "two levels").

Public API:
    SmtpTransport(hostname=, resolver=, connect_timeout=, command_timeout=, guard=None)
        await .deliver(destination, messages, *, on_settled=None) -> DeliveryReport
            on_settled(queue_id, {rcpt index: outcome}) is called as each
            message's transaction ends, so the caller can record it before
            the next one (`reports_progress` says a transport does this)
        .reconfigure(cfg)     the [delivery] timeouts, for the next connections
        await .close()        QUIT the cached connections (together, QUIT_TIMEOUT at most)
    OutboundMessage, DeliveryReport   (mta.delivery.transport, re-exported)
    smtp_path(address)                (mta.delivery.session, re-exported)

The transactions themselves (MAIL/RCPT/DATA, PIPELINING, CHUNKING, SIZE,
SMTPUTF8) are mta.delivery.session's; this module opens connections, walks the MX hosts,
caches idle connections and judges the destination.

Invariants:
  - Every recipient of every message gets exactly one outcome, whatever
    happens (an internal bug defers with 451 4.3.0 rather than losing one).
    Only cancellation escapes `deliver` — the caller then knows nothing was
    recorded and puts the batch back.
  - Remote replies are kept verbatim (`Reply.from_remote`); our own replies
    (4.4.1 no connection, 4.4.2 connection lost, 5.6.7 SMTPUTF8) say which
    host and what failed.
  - Health: OK when a connection carried the batch (even if every recipient
    was refused — one 550 is not the destination's fault); THROTTLING on any
    421; DOWN when nothing connected, DNS failed temporarily, or a second
    connection was lost after a first one dropped.
  - TLS follows the batch's plan (issue 17, `guard`: delivery/tlsguard.py
    decides per MX host — the operator's [tls] policy, DANE, MTA-STS, else
    opportunistic; delivery/connect.py opens the connection under it): a
    host whose policy requires TLS never gets clear text (the batch defers
    with 451 4.7.5), nor does any host when the destination's options
    require TLS (the shaping table's `tls = "required"`). Opportunistic TLS
    is unauthenticated; a failed handshake is retried once in clear text.
    Without a guard every host is opportunistic.
  - Egress (issue 15): a destination's `options.source` is the local
    address each connection binds (MX addresses of the other IP family are
    skipped), `options.ehlo` the name it greets with; idle connections are
    cached per destination *and* source; `options.max_uses` caps the
    transactions per connection, cached reuse included.
  - Log lines are `event=name key=value …` (mta.core.logfmt.event): text a
    remote chose (replies, error messages) is quoted, never a field of its own.

Known compromises (written down where they live):
  - 8-bit bodies are sent with BODY=8BITMIME when offered and as-is
    otherwise (no 7-bit downgrade), as most MTAs do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence


from mta.core.envelope import Destination
from mta.core.errors import PermFailure, TempFailure
from mta.core.logfmt import event, fmt_value
from mta.core.outcome import DestinationHealth, RecipientOutcome
from mta.core.reply import Reply
from mta.delivery.mx import Hop, resolve_hops
from mta.delivery.resolver import DnsTempError, NoRecords, NxDomain, Resolver
from mta.delivery.connect import Connector
from mta.delivery.session import Session, smtp_path
from mta.delivery.tlsguard import TlsGuard, TlsPlan
from mta.delivery.settlement import (BOUNCED, DEFERRED, Lost, Settlement,
                                     Throttled)
from mta.delivery.transport import DeliveryReport, OutboundMessage, TransportConfig

__all__ = ["OutboundMessage", "DeliveryReport", "SmtpTransport", "smtp_path"]

log = logging.getLogger("mta.delivery")

_RANK = {DestinationHealth.OK: 0, DestinationHealth.DOWN: 1, DestinationHealth.THROTTLING: 2}
QUIT_TIMEOUT = 2.0   # seconds a shutdown waits for the cached connections' QUIT replies


class SmtpTransport:
    """Delivers batches; keeps idle connections for `cache_time` seconds so
    the next batch to the same destination skips connect, EHLO and STARTTLS
    (Postfix's connection cache). A cached connection is used for at most
    `max_uses` transactions, and at most `max_idle` are kept per destination."""

    def __init__(self, *, hostname: str, resolver: Resolver, connect_timeout: float,
                 command_timeout: float, cache_time: float = 2.0, max_uses: int = 100,
                 max_idle: int = 20, guard: TlsGuard | None = None):
        self.hostname = hostname
        self.resolver = resolver
        self.guard = guard            # outbound TLS policy (issue 17); None: opportunistic
        self.connector = Connector(hostname=hostname, connect_timeout=connect_timeout,
                                   command_timeout=command_timeout, guard=guard)
        self.cache_time, self.max_uses, self.max_idle = cache_time, max_uses, max_idle
        self._idle: dict[str, list[Session]] = {}

    @property
    def connect_timeout(self) -> float:
        return self.connector.connect_timeout

    @property
    def command_timeout(self) -> float:
        return self.connector.command_timeout

    def reconfigure(self, cfg: TransportConfig) -> None:
        """Apply a reloaded configuration's [delivery] timeouts: connections
        opened from now on use them (those in the cache keep theirs until
        they close). The host name stays the running process's."""
        self.connector.connect_timeout = cfg.delivery.connect_timeout
        self.connector.command_timeout = cfg.delivery.command_timeout
        tls = getattr(cfg, "tls", None)           # [tls]: read per batch (issue 17)
        if self.guard is not None and tls is not None:
            self.guard.settings = tls

    # ---- connection cache ---------------------------------------------
    def _take_idle(self, name: str) -> Session | None:
        sessions = self._idle.get(name)
        while sessions:
            session = sessions.pop()
            if session.expiry:
                session.expiry.cancel()
                session.expiry = None
            if session.smtp.is_connected:
                return session
            session.close()
        return None

    async def _park(self, name: str, session: Session, max_uses: int = 0) -> None:
        sessions = self._idle.setdefault(name, [])
        if (self.cache_time <= 0 or session.uses >= (max_uses or self.max_uses)
                or len(sessions) >= self.max_idle or not session.smtp.is_connected):
            await session.quit()
            return
        sessions.append(session)
        session.expiry = asyncio.get_running_loop().call_later(
            self.cache_time, self._expire, name, session)

    def _expire(self, name: str, session: Session) -> None:
        sessions = self._idle.get(name, [])
        if session in sessions:
            sessions.remove(session)
            session.expiry = None
            asyncio.ensure_future(session.quit())
        if not sessions:
            self._idle.pop(name, None)

    async def close(self, timeout: float = QUIT_TIMEOUT) -> None:
        """QUIT every cached connection (daemon shutdown): all at once, for
        at most `timeout` seconds, then closed. One at a time, a remote that
        never answers QUIT held the shutdown a command timeout per cached
        connection (20 s for two, seen in CI)."""
        idle, self._idle = self._idle, {}
        sessions = [s for ss in idle.values() for s in ss]
        for session in sessions:
            if session.expiry:
                session.expiry.cancel()
        if not sessions:
            return
        quits = [asyncio.ensure_future(s.quit()) for s in sessions]
        _done, pending = await asyncio.wait(quits, timeout=timeout)
        for t in pending:
            t.cancel()              # Session.quit closes the connection either way
        await asyncio.gather(*quits, return_exceptions=True)

    # deliver() takes on_settled: each message's outcomes as its transaction ends.
    reports_progress = True

    async def deliver(self, destination: Destination, messages: Sequence[OutboundMessage], *,
                      on_settled: Callable[[str, dict[int, RecipientOutcome]], None] | None = None
                      ) -> DeliveryReport:
        settlement = Settlement(messages, on_settled)
        try:
            health = await self._deliver(destination, list(messages), settlement)
        except Exception:
            # A bug here must not lose recipients: defer what is still open.
            log.exception("event=delivery_failed_unexpectedly destination=%s",
                          fmt_value(destination.name))
            health = DestinationHealth.DOWN
        settlement.settle_rest(messages, DEFERRED, Reply(451, "4.3.0", "internal error during "
                                                                   "delivery; will retry"))
        return DeliveryReport(settlement.in_order(messages), health)

    async def _hops(self, destination: Destination) -> list[Hop]:
        if destination.kind == "mx":
            return await resolve_hops(destination.domain, self.resolver)
        if destination.kind == "route":
            host = destination.host
            try:
                addrs = await self.resolver.addresses(host)
            except (NxDomain, NoRecords, DnsTempError) as exc:
                # A configured relay that does not resolve is an operator
                # problem: defer (and let them fix it), never bounce.
                raise TempFailure(Reply(451, "4.4.3", f"route host {host} for "
                                                      f"{destination.name} does not resolve: "
                                                      f"{exc}")) from None
            return [Hop(host, tuple(addrs), 0)]
        raise ValueError(f"SmtpTransport cannot deliver to a {destination.kind!r} destination")

    @staticmethod
    def _cache_key(destination: Destination) -> str:
        """Idle connections are per destination and per egress source."""
        source = destination.options.source
        return f"{destination.name}|{source}" if source else destination.name

    async def _deliver(self, destination: Destination, messages: list[OutboundMessage],
                       settlement: Settlement) -> DestinationHealth:
        try:
            hops = await self._hops(destination)
        except PermFailure as exc:
            settlement.settle_rest(messages, BOUNCED, exc.reply)
            return DestinationHealth.OK  # the domain answered clearly; nothing to back off
        except TempFailure as exc:
            settlement.settle_rest(messages, DEFERRED, exc.reply)
            return DestinationHealth.DOWN

        pending = [m for m in messages if settlement.unsettled(m)]
        worst = DestinationHealth.OK
        for plan, group in await self._plans(destination, hops, pending):
            health = await self._run(destination, hops, plan, group, settlement)
            if _RANK[health] > _RANK[worst]:
                worst = health
        return worst

    async def _plans(self, destination: Destination, hops: list[Hop],
                     pending: list[OutboundMessage]
                     ) -> list[tuple[TlsPlan, list[OutboundMessage]]]:
        """The batch split by TLS plan: each recipient domain's policy is its
        own (RFC 8461 §5), so recipients of domains whose plans differ (an MX
        site carries several) go over different connections — a message to
        both is sent once per plan, each time to its own recipients."""
        if self.guard is None:
            return [(TlsPlan(), pending)]
        # Our TLS-RPT reports go whatever the policies say, uncounted (RFC 8460
        # §5.3.1, §3), and so does mail whose sender said "TLS-Required: No"
        # (RFC 8689 §5.2).
        reports = [m for m in pending if m.tls_report or m.tls_optional]
        pending = [m for m in pending if not (m.tls_report or m.tls_optional)]
        out = [(TlsPlan(counted=False), reports)] if reports else []
        plans: dict[str, TlsPlan] = {}
        # Keyed by the message object, not its queue id: VERP makes one
        # transaction per recipient of a queue id, each with its own sender.
        groups: dict[object, tuple[TlsPlan, dict[int, tuple[OutboundMessage,
                                                            list[tuple[int, str]]]]]] = {}
        for m in pending:
            for idx, rcpt in m.recipients:
                domain = rcpt.rpartition("@")[2].lower()
                if domain not in plans:
                    plans[domain] = await self.guard.plan(destination, (domain,), hops)
                plan = plans[domain]
                by_msg = groups.setdefault(plan.signature(), (plan, {}))[1]
                by_msg.setdefault(id(m), (m, []))[1].append((idx, rcpt))
        return out + [(plan, [m if len(rcpts) == len(m.recipients)
                              else dataclasses.replace(m, recipients=tuple(rcpts))
                              for m, rcpts in by_msg.values()])
                      for plan, by_msg in groups.values()]

    async def _run(self, destination: Destination, hops: list[Hop], plan: TlsPlan,
                   pending: list[OutboundMessage], settlement: Settlement
                   ) -> DestinationHealth:
        lost_once = False
        key = self._cache_key(destination)
        if plan.hosts:        # a connection carries only mail its plan was made for
            key = f"{key}|{hash(plan.signature())}"
        while pending:
            session = self._take_idle(key)
            reused = session is not None
            if session is None:
                session, failure = await self.connector.open(destination, hops, plan)
            if session is None:
                assert failure is not None
                reply, health, peer = failure
                settlement.settle_rest(pending, DEFERRED, reply, peer)
                return health
            try:
                if await self._send(session, pending, settlement, reused=reused):
                    if destination.options.keep_idle:
                        await self._park(key, session, destination.options.max_uses)
                    else:
                        await session.quit()
                    return DestinationHealth.OK
            except Throttled as exc:
                session.close()
                event(log, "throttled", destination=destination.name, mx=session.peer.host,
                      ip=session.peer.ip, reply=exc.reply)
                settlement.settle_rest(pending, DEFERRED, exc.reply, session.peer)
                return DestinationHealth.THROTTLING
            except Lost as exc:
                session.close()
                peer = session.peer
                reply = Reply(451, "4.4.2", f"connection lost with {peer.host}[{peer.ip}] "
                                            f"during {exc}; will retry")
                event(log, "connection_lost", destination=destination.name, mx=peer.host,
                      ip=peer.ip, reply=reply)
                # The message that was in flight is not retried now: it may be
                # what makes the remote hang up.
                settlement.settle_rest(pending[:1], DEFERRED, reply, peer)
                pending = pending[1:]
                if lost_once:
                    settlement.settle_rest(pending, DEFERRED, Reply(
                        451, "4.4.2", f"not attempted: connections to {destination.name} "
                                      f"keep breaking (last: {exc}); will retry"), peer)
                    return DestinationHealth.DOWN
                lost_once = True
        return DestinationHealth.OK

    @staticmethod
    async def _send(session: Session, pending: list[OutboundMessage], settlement: Settlement,
                    *, reused: bool) -> bool:
        """Send `pending` over `session`, removing each message once sent:
        True when all went; False when a cached connection turned out dead
        before anything of a message was sent (closed: reconnect). Raises
        Throttled and Lost for the caller to judge."""
        while pending:
            try:
                await session.transact(pending[0], settlement)
            except Lost as exc:
                # A cached connection the remote closed while idle:
                # nothing of this message was sent, so just reconnect.
                if reused and exc.stage == "MAIL FROM":
                    session.close()
                    return False
                raise
            except Throttled:
                # An idle-timeout 421 on a cached connection says
                # nothing about the destination: reconnect.
                if reused:
                    session.close()
                    return False
                raise
            reused = False
            settlement.done(pending.pop(0))
        return True
