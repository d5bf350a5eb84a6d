"""The SMTP client adapter: one batch of messages for one destination → outcomes.

One job: drive aiosmtplib over one or more connections to a destination and
report, for every recipient of every message, what the remote said, plus one
verdict on the destination's health (DESIGN.md §3, "two levels").

Public API:
    OutboundMessage(queue_id, sender, recipients=((rcpt_idx, address), …), body)
    DeliveryReport(outcomes={queue_id: {rcpt_idx: RecipientOutcome}}, health)
    SmtpTransport(hostname=, resolver=, connect_timeout=, command_timeout=)
        await .deliver(destination, messages) -> DeliveryReport

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
  - TLS is opportunistic and unauthenticated (Postfix
    `smtp_tls_security_level = may`): STARTTLS when offered, certificate not
    checked, a failed handshake is retried once in clear text.
  - SIZE (RFC 1870): when the peer advertises a limit and the message is
    larger, its recipients bounce with our own `552 5.3.4 … exceeds the size
    limit N of host[ip] …` and nothing is sent (no MAIL); otherwise MAIL
    FROM carries SIZE=<bytes> whenever SIZE is advertised.
  - Log lines are `event=name key=value …` (mta.core.logfmt.event): text a
    remote chose (replies, error messages) is quoted, never a field of its own.

Known compromises (written down where they live):
  - No PIPELINING: aiosmtplib's protocol parses exactly one reply per
    command (further replies arriving early are discarded), so MAIL/RCPT are
    sent in lock-step. One round trip per recipient; revisit with an own
    protocol class if benchmarks show the latency matters.
  - 8-bit bodies are sent with BODY=8BITMIME when offered and as-is
    otherwise (no 7-bit downgrade), as most MTAs do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Sequence

import aiosmtplib
from aiosmtplib import (SMTPConnectResponseError, SMTPException, SMTPHeloError,
                        SMTPRecipientRefused, SMTPResponseException, SMTPSenderRefused)
from aiosmtplib.email import quote_address

from mta.core.envelope import Destination
from mta.core.errors import PermFailure, StorageError, TempFailure
from mta.core.logfmt import event, fmt_value
from mta.core.outcome import DestinationHealth, RecipientFate, RecipientOutcome
from mta.core.reply import Reply
from mta.delivery.data import body_is_ascii, body_size, send_data
from mta.delivery.mx import Hop, resolve_hops
from mta.delivery.resolver import DnsTempError, NoRecords, NxDomain, Resolver

__all__ = ["OutboundMessage", "DeliveryReport", "SmtpTransport"]

# A mailbox with nothing to parse or quote: it goes on the wire as <it>.
# Anything else goes through aiosmtplib's quote_address (email.utils.parseaddr,
# ~40 µs), which also refuses what cannot be put on a command line.
_PLAIN_MAILBOX = re.compile(r'[^\s<>"()\[\],;:\\@]+@[^\s<>"()\[\],;:\\@]+\Z')


def smtp_path(address: str) -> str:
    """`<address>` for MAIL FROM / RCPT TO: the same as aiosmtplib's
    quote_address (tested), without its parser for plain mailboxes."""
    if _PLAIN_MAILBOX.match(address):
        return f"<{address}>"
    return quote_address(address)

log = logging.getLogger("mta.delivery")

DELIVERED, DEFERRED, BOUNCED = RecipientFate.DELIVERED, RecipientFate.DEFERRED, RecipientFate.BOUNCED
_MAX_DETAIL = 6  # failures named in a 4.4.1 text; the rest are counted


@dataclass(frozen=True)
class OutboundMessage:
    queue_id: str
    sender: str                                  # "" for the null reverse path
    recipients: tuple[tuple[int, str], ...]      # (rcpt_idx, address)
    # CRLF line endings, headers included: bytes, or (a message over
    # core.spill.HEAD_BYTES) the spool's StoredBody, sent in pieces (data.py)
    body: Any


@dataclass
class DeliveryReport:
    outcomes: dict[str, dict[int, RecipientOutcome]] = field(default_factory=dict)
    health: DestinationHealth = DestinationHealth.OK


@dataclass(frozen=True)
class _Peer:
    host: str = ""
    ip: str = ""
    tls: str = ""


class _Ledger:
    """Who has an outcome yet. Pure bookkeeping, no I/O."""

    def __init__(self, messages: Sequence[OutboundMessage]):
        self.outcomes: dict[str, dict[int, RecipientOutcome]] = {m.queue_id: {} for m in messages}

    def settle(self, msg: OutboundMessage, idx: int, fate: RecipientFate, reply: Reply,
               peer: _Peer) -> None:
        self.outcomes[msg.queue_id].setdefault(
            idx, RecipientOutcome(fate, reply, peer.host, peer.ip, peer.tls))

    def settle_by_reply(self, msg: OutboundMessage, idx: int, reply: Reply, peer: _Peer) -> None:
        fate = DELIVERED if reply.is_success else DEFERRED if reply.is_temp else BOUNCED
        self.settle(msg, idx, fate, reply, peer)

    def unsettled(self, msg: OutboundMessage) -> list[tuple[int, str]]:
        done = self.outcomes[msg.queue_id]
        return [(i, a) for i, a in msg.recipients if i not in done]

    def in_order(self, messages: Sequence[OutboundMessage]
                 ) -> dict[str, dict[int, RecipientOutcome]]:
        """The outcomes keyed in message and recipient order (easier to read in logs).
        One queue id may come as several messages (VERP: one per recipient)."""
        out: dict[str, dict[int, RecipientOutcome]] = {}
        for m in messages:
            done = self.outcomes[m.queue_id]
            out.setdefault(m.queue_id, {}).update(
                (i, done[i]) for i, _ in m.recipients if i in done)
        return out

    def settle_rest(self, messages: Sequence[OutboundMessage], fate: RecipientFate,
                    reply: Reply, peer: _Peer = _Peer()) -> None:
        for msg in messages:
            for idx, _ in self.unsettled(msg):
                self.settle(msg, idx, fate, reply, peer)


class _Lost(Exception):
    """The connection broke or timed out; `stage` says during what."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        super().__init__(f"{stage}: {_describe(cause)}")


class _Throttled(Exception):
    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(str(reply))


class _HandshakeFailed(Exception):
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        return f"{exc.code} {' '.join(exc.message.split())}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return text or exc.__class__.__name__


def _remote(exc: SMTPResponseException) -> Reply:
    code = exc.code if 200 <= exc.code <= 599 else 451  # -1: unparsable reply
    return Reply.from_remote(code, exc.message)


def _size_limit(smtp: aiosmtplib.SMTP) -> int:
    """The peer's advertised SIZE limit; 0 when none (absent, "SIZE", "SIZE 0"
    or not a number: RFC 1870 §4, 0 = no fixed maximum)."""
    param = smtp.esmtp_extensions.get("size", "").strip()
    return int(param) if param.isdigit() else 0


def _needs_utf8(address: str) -> bool:
    return not address.isascii()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _tls_context() -> ssl.SSLContext:
    # Opportunistic TLS: encrypt against passive snooping, authenticate no one
    # (most MX certificates do not match the MX name). No CA bundle is loaded
    # because nothing is verified.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Session:
    """One open SMTP connection after EHLO (and STARTTLS when it worked)."""

    def __init__(self, smtp: aiosmtplib.SMTP, peer: _Peer, command_timeout: float):
        self.smtp = smtp
        self.peer = peer
        self.timeout = command_timeout
        self.uses = 0            # transactions sent over this connection
        self.expiry: asyncio.TimerHandle | None = None   # set while parked in the cache

    async def transact(self, msg: OutboundMessage, ledger: _Ledger) -> None:
        """One MAIL/RCPT/DATA transaction; settles what the remote answered.

        Raises _Throttled on a 421 and _Lost when the connection breaks; the
        caller settles whatever is still open.
        """
        smtp, peer = self.smtp, self.peer
        rcpts = ledger.unsettled(msg)
        if not rcpts:
            return
        self.uses += 1
        options: list[str] = []
        size = body_size(msg.body)
        if smtp.supports_extension("size"):
            limit = _size_limit(smtp)
            if limit and size > limit:
                # RFC 1870 §6: the peer would refuse it with 552 (often only
                # after the whole DATA went over the wire): refuse it here.
                too_big = Reply(552, "5.3.4", f"message size {size} exceeds the size "
                                              f"limit {limit} of {peer.host}[{peer.ip}] (its "
                                              f"EHLO SIZE); not sent")
                ledger.settle_rest([msg], BOUNCED, too_big, peer)
                return
            options.append(f"SIZE={size}")
        if smtp.supports_extension("8bitmime") and not await body_is_ascii(msg.body):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if _needs_utf8(msg.sender) or any(_needs_utf8(a) for _, a in rcpts):
            if smtp.supports_extension("smtputf8"):
                options.append("SMTPUTF8")
                encoding = "utf-8"
            else:
                no_utf8 = Reply(553, "5.6.7", f"{peer.host}[{peer.ip}] does not support "
                                              f"SMTPUTF8, needed for a non-ASCII address")
                for idx, addr in rcpts:
                    if _needs_utf8(msg.sender) or _needs_utf8(addr):
                        ledger.settle(msg, idx, BOUNCED, no_utf8, peer)
                rcpts = ledger.unsettled(msg)
                if not rcpts:
                    return

        try:
            # smtp.mail()/rcpt() minus their address parser (smtp_path)
            resp = await smtp.execute_command(
                b"MAIL", b"FROM:" + smtp_path(msg.sender).encode(encoding),
                *(o.encode("ascii") for o in options), timeout=self.timeout)
            if resp.code != 250:
                raise SMTPSenderRefused(resp.code, resp.message, msg.sender)
        except SMTPResponseException as exc:
            reply = _remote(exc)
            if exc.code == 421:
                raise _Throttled(reply) from None
            if not reply.is_success:
                for idx, _ in rcpts:
                    ledger.settle_by_reply(msg, idx, reply, peer)
                await self._rset()
                return
        except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
            bad = Reply(553, "5.1.7", f"sender address cannot be sent over SMTP: {exc}")
            ledger.settle_rest([msg], BOUNCED, bad, peer)
            return
        except (SMTPException, OSError) as exc:
            raise _Lost("MAIL FROM", exc) from None

        accepted: list[int] = []
        for idx, addr in rcpts:
            try:
                resp = await smtp.execute_command(
                    b"RCPT", b"TO:" + smtp_path(addr).encode(encoding), timeout=self.timeout)
                if resp.code not in (250, 251):
                    raise SMTPRecipientRefused(resp.code, resp.message, addr)
                accepted.append(idx)
            except SMTPResponseException as exc:
                reply = _remote(exc)
                if exc.code == 421:
                    raise _Throttled(reply) from None
                if reply.is_success:   # 252 and friends: aiosmtplib only likes 250/251
                    accepted.append(idx)
                else:
                    ledger.settle_by_reply(msg, idx, reply, peer)
            except ValueError as exc:
                ledger.settle(msg, idx, BOUNCED, Reply(553, "5.1.3", f"recipient address "
                                                     f"cannot be sent over SMTP: {exc}"), peer)
            except (SMTPException, OSError) as exc:
                raise _Lost("RCPT TO", exc) from None
        if not accepted:
            await self._rset()
            return

        try:
            # send_data (delivery/data.py) guarantees CRLF line ends and the
            # final CRLF, dot-stuffs every line starting with "." (tested in
            # test_client) and streams a large body in pieces.
            response = await send_data(smtp, msg.body, self.timeout)
            reply = Reply.from_remote(response.code, response.message)
        except SMTPResponseException as exc:
            reply = _remote(exc)
            if exc.code == 421:
                raise _Throttled(reply) from None
        except (SMTPException, OSError, StorageError) as exc:
            # StorageError: the stored body failed its check mid-way; the
            # connection is dropped before the final dot, nothing was accepted.
            raise _Lost("DATA", exc) from None
        if response.code == 421:
            raise _Throttled(reply)
        for idx in accepted:
            ledger.settle_by_reply(msg, idx, reply, peer)
        if not reply.is_success:
            await self._rset()

    async def _rset(self) -> None:
        try:
            await self.smtp.rset(timeout=self.timeout)
        except SMTPResponseException as exc:
            if exc.code == 421:
                raise _Throttled(_remote(exc)) from None
            raise _Lost("RSET", exc) from None  # a session that cannot reset is not reusable
        except (SMTPException, OSError) as exc:
            raise _Lost("RSET", exc) from None

    async def quit(self) -> None:
        try:
            await self.smtp.quit(timeout=self.timeout)
        except (SMTPException, OSError):
            pass  # everything is settled already; a rude goodbye changes nothing
        finally:
            self.close()

    def close(self) -> None:
        self.smtp.close()


class SmtpTransport:
    """Delivers batches; keeps idle connections for `cache_time` seconds so
    the next batch to the same destination skips connect, EHLO and STARTTLS
    (Postfix's connection cache). A cached connection is used for at most
    `max_uses` transactions, and at most `max_idle` are kept per destination."""

    def __init__(self, *, hostname: str, resolver: Resolver, connect_timeout: float,
                 command_timeout: float, cache_time: float = 2.0, max_uses: int = 100,
                 max_idle: int = 20):
        self.hostname = hostname
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.cache_time, self.max_uses, self.max_idle = cache_time, max_uses, max_idle
        self._tls = _tls_context()
        self._idle: dict[str, list[_Session]] = {}

    # ---- connection cache ---------------------------------------------
    def _take_idle(self, name: str) -> _Session | None:
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

    async def _park(self, name: str, session: _Session) -> None:
        sessions = self._idle.setdefault(name, [])
        if (self.cache_time <= 0 or session.uses >= self.max_uses
                or len(sessions) >= self.max_idle or not session.smtp.is_connected):
            await session.quit()
            return
        sessions.append(session)
        session.expiry = asyncio.get_running_loop().call_later(
            self.cache_time, self._expire, name, session)

    def _expire(self, name: str, session: _Session) -> None:
        sessions = self._idle.get(name, [])
        if session in sessions:
            sessions.remove(session)
            session.expiry = None
            asyncio.ensure_future(session.quit())
        if not sessions:
            self._idle.pop(name, None)

    async def close(self) -> None:
        """QUIT every cached connection (daemon shutdown)."""
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session in sessions:
                if session.expiry:
                    session.expiry.cancel()
                await session.quit()

    async def deliver(self, destination: Destination,
                      messages: Sequence[OutboundMessage]) -> DeliveryReport:
        ledger = _Ledger(messages)
        try:
            health = await self._deliver(destination, list(messages), ledger)
        except Exception:
            # A bug here must not lose recipients: defer what is still open.
            log.exception("event=delivery_failed_unexpectedly destination=%s",
                          fmt_value(destination.name))
            health = DestinationHealth.DOWN
        ledger.settle_rest(messages, DEFERRED, Reply(451, "4.3.0", "internal error during "
                                                                   "delivery; will retry"))
        return DeliveryReport(ledger.in_order(messages), health)

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

    async def _deliver(self, destination: Destination, messages: list[OutboundMessage],
                       ledger: _Ledger) -> DestinationHealth:
        try:
            hops = await self._hops(destination)
        except PermFailure as exc:
            ledger.settle_rest(messages, BOUNCED, exc.reply)
            return DestinationHealth.OK  # the domain answered clearly; nothing to back off
        except TempFailure as exc:
            ledger.settle_rest(messages, DEFERRED, exc.reply)
            return DestinationHealth.DOWN

        pending = [m for m in messages if ledger.unsettled(m)]
        lost_once = False
        while pending:
            session = self._take_idle(destination.name)
            reused = session is not None
            if session is None:
                session, failure = await self._open(destination, hops)
            if session is None:
                assert failure is not None
                reply, health = failure
                ledger.settle_rest(pending, DEFERRED, reply)
                return health
            try:
                while pending:
                    try:
                        await session.transact(pending[0], ledger)
                    except _Lost as exc:
                        # A cached connection the remote closed while idle:
                        # nothing of this message was sent, so just reconnect.
                        if reused and exc.stage == "MAIL FROM":
                            session.close()
                            break
                        raise
                    except _Throttled:
                        # An idle-timeout 421 on a cached connection says
                        # nothing about the destination: reconnect.
                        if reused:
                            session.close()
                            break
                        raise
                    reused = False
                    pending.pop(0)
                else:
                    await self._park(destination.name, session)
                    return DestinationHealth.OK
                continue
            except _Throttled as exc:
                session.close()
                event(log, "throttled", destination=destination.name, mx=session.peer.host,
                      ip=session.peer.ip, reply=exc.reply)
                ledger.settle_rest(pending, DEFERRED, exc.reply, session.peer)
                return DestinationHealth.THROTTLING
            except _Lost as exc:
                session.close()
                peer = session.peer
                reply = Reply(451, "4.4.2", f"connection lost with {peer.host}[{peer.ip}] "
                                            f"during {exc}; will retry")
                event(log, "connection_lost", destination=destination.name, mx=peer.host,
                      ip=peer.ip, reply=reply)
                # The message that was in flight is not retried now: it may be
                # what makes the remote hang up.
                ledger.settle_rest(pending[:1], DEFERRED, reply, peer)
                pending = pending[1:]
                if lost_once:
                    ledger.settle_rest(pending, DEFERRED, Reply(
                        451, "4.4.2", f"not attempted: connections to {destination.name} "
                                      f"keep breaking (last: {exc}); will retry"), peer)
                    return DestinationHealth.DOWN
                lost_once = True
                continue
        return DestinationHealth.OK

    async def _open(self, destination: Destination, hops: list[Hop]
                    ) -> tuple[_Session | None, tuple[Reply, DestinationHealth] | None]:
        """Connect to the first host/address that works, in MX order.

        Returns (session, None), or (None, (reply, health)) for the whole batch.
        """
        failures: list[str] = []
        throttled: Reply | None = None
        for hop in hops:
            for ip in hop.addresses:
                try:
                    try:
                        return await self._connect(hop, ip, destination.port, tls=True), None
                    except _HandshakeFailed as exc:
                        event(log, "starttls_failed", mx=hop.host, ip=ip, port=destination.port,
                              error=exc, next="clear_text")
                        return await self._connect(hop, ip, destination.port, tls=False), None
                except _Throttled as exc:
                    throttled = throttled or exc.reply
                    failures.append(f"{hop.host}[{ip}]:{destination.port} said {exc.reply}")
                except SMTPConnectResponseError as exc:
                    if exc.code == 421:
                        throttled = throttled or _remote(exc)
                    failures.append(f"{hop.host}[{ip}]:{destination.port} greeted with "
                                    f"{_describe(exc)}")
                except (SMTPException, OSError, _HandshakeFailed) as exc:
                    failures.append(f"{hop.host}[{ip}]:{destination.port} {_describe(exc)}")
        if throttled is not None:
            return None, (throttled, DestinationHealth.THROTTLING)
        shown = "; ".join(failures[:_MAX_DETAIL])
        if len(failures) > _MAX_DETAIL:
            shown += f"; and {len(failures) - _MAX_DETAIL} more"
        return None, (Reply(451, "4.4.1", f"could not connect to any mail host of "
                                          f"{destination.name}: {shown}; will retry"),
                      DestinationHealth.DOWN)

    async def _connect(self, hop: Hop, ip: str, port: int, *, tls: bool) -> _Session:
        smtp = aiosmtplib.SMTP(hostname=ip, port=port, local_hostname=self.hostname,
                               timeout=self.command_timeout, start_tls=False,
                               validate_certs=False, tls_context=self._tls)
        # connect() covers TCP connect and the 220 greeting.
        await smtp.connect(timeout=self.connect_timeout)
        try:
            await self._hello(smtp)
            version = ""
            if tls and smtp.supports_extension("starttls"):
                version = await self._starttls(smtp, hop)
            return _Session(smtp, _Peer(hop.host, ip, version), self.command_timeout)
        except BaseException:
            smtp.close()
            raise

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo(timeout=self.command_timeout)
        except SMTPHeloError as exc:
            if exc.code == 421:
                raise _Throttled(_remote(exc)) from None
            if not smtp.is_connected:
                raise
            try:
                await smtp.helo(timeout=self.command_timeout)
            except SMTPHeloError as exc2:
                if exc2.code == 421:
                    raise _Throttled(_remote(exc2)) from None
                raise

    async def _starttls(self, smtp: aiosmtplib.SMTP, hop: Hop) -> str:
        """Upgrade the connection; "" when the server declined and we go on in clear."""
        try:
            await smtp.starttls(server_hostname=None if _is_ip(hop.host) else hop.host,
                                timeout=self.command_timeout)
        except SMTPResponseException as exc:
            if exc.code == 421:
                raise _Throttled(_remote(exc)) from None
            if smtp.is_connected:
                return ""  # e.g. 454: the session is still usable in clear text
            raise _HandshakeFailed(_describe(exc)) from None
        except (SMTPException, OSError) as exc:   # ssl.SSLError is an OSError
            raise _HandshakeFailed(_describe(exc)) from None
        ssl_object = smtp.get_transport_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else "TLS"
        await self._hello(smtp)  # RFC 3207: forget pre-TLS extensions, ask again
        return version
