"""The inbound (port 25) service: bounces, complaints and postmaster mail in.

API
    InboundMessage(mail_from, rcpts, kinds, body, client_ip, helo, tls)
        one received transaction, handed to `deliver`; frozen
    InboundHandler(cfg, *, hostname, classify_rcpt, deliver, clock, log)
        aiosmtpd hooks: handle_EHLO, handle_MAIL, handle_RCPT, handle_DATA,
                        handle_exception
        called by the protocol: may_transact(server, session) (always True)
        .reconfigure(cfg, listener)   config reload: its ListenerConfig (the
                                      Config has no other key for it)
    InboundSMTP(handler, **kwargs)
        protocol.SubmissionSMTP without AUTH: not advertised, and the AUTH
        command gets "502 5.5.1"
    KINDS = ("bounce", "postmaster", "feedback")

    classify_rcpt(address) -> kind | None
        the runtime's decision of which addresses this MX receives for (VERP
        bounce domains, postmaster@/abuse@ the hostname, feedback-loop
        addresses); None means "not ours".
    await deliver(InboundMessage) -> Reply
        the runtime parses/stores the message; its Reply is the DATA reply
        (250 when it took it; 452 4.3.1 when the postmaster
        capture is full or unwritable, 552 5.3.4 for a message bigger
        than its quota; 451 4.3.0 on other trouble).

Rules
  * Never a relay: a RCPT that classify_rcpt does not claim gets
    "550 5.7.1 <addr>: Relay access denied" and is not part of the
    transaction; a transaction with no accepted RCPT never reaches DATA.
  * No AUTH at all, no trusted networks: anyone may send, but only to us.
  * Addresses are checked as at submission (addresses.py): a non-ASCII one
    outside SMTPUTF8 is 553 5.6.7, whether the non-ASCII is in the local
    part or the domain.
  * MAIL FROM takes any syntactically valid sender, and <> (bounces and
    DSNs come from the null sender); InboundMessage.mail_from is "" for <>.
  * RCPT: max_recipients → 452 4.5.3; <> → 501 5.1.3; a bare "Postmaster"
    (RFC 5321 §4.1.1.3: must be accepted without a domain) means
    postmaster@<hostname>; bad syntax → 501 5.1.3; classify_rcpt raising →
    451 4.3.0 (fail closed, temporarily: the sender retries).
  * DATA: hygiene (bare CR/LF, NUL → 550 5.5.2) → size (552 5.3.4) →
    `deliver`. Its Reply is sent as is; an exception in deliver, or a value
    that is not a Reply, becomes 451 4.3.0 and the session stays usable.
  * The body is handed over exactly as received (after dot-unstuffing): no
    Received: header is added, it is parsed, not relayed.
  * Counted by the protocol (SubmissionSMTP's observer): sessions, and each
    DATA reply as message_received(listener, accepted|rejected|tempfail).
  * Logs: one `event=inbound_received` line per DATA that reached deliver;
    `event=inbound_rejected` for relay attempts and smuggling.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import syntax

from mta.core import Clock, Reply
from mta.core.spill import SpillFile
from mta.server import replies
from mta.server.addresses import check_recipient, check_sender
from mta.server.protocol import SubmissionEnvelope, SubmissionSession, SubmissionSMTP
from mta.server.session import ehlo_lines, session_error

if TYPE_CHECKING:  # server does not import config at run time (ARCHITECTURE §2)
    from mta.config import Config
    from mta.config.sections import ListenerConfig

__all__ = ["KINDS", "InboundHandler", "InboundMessage", "InboundSMTP", "relay_denied"]

KINDS = ("bounce", "postmaster", "feedback")

NO_AUTH = Reply(502, "5.5.1", "AUTH not available: this is an inbound MX, "
                "use the submission service")


def relay_denied(addr: str) -> Reply:
    return Reply(550, "5.7.1", f"<{replies.quote(addr)}>: Relay access denied")


@dataclass(frozen=True)
class InboundMessage:
    mail_from: str               # "" for the null sender <>
    rcpts: tuple[str, ...]
    kinds: tuple[str, ...]       # per rcpt: "bounce" | "postmaster" | "feedback"
    body: bytes
    client_ip: str
    helo: str
    tls: str                     # TLS version ("TLSv1.3"), "" when in clear
    # A message over core.spill.HEAD_BYTES: `body` is its first MiB (the
    # part reports are parsed from) and this SpillFile the rest, open while
    # `deliver` runs (the capture copies it; it is closed afterwards).
    tail: SpillFile | None = None


class InboundSMTP(SubmissionSMTP):
    """The submission protocol adapter (block DATA reader, ESC on every reply)
    with AUTH removed: no mechanisms, and the command is refused outright."""

    def __init__(self, handler: InboundHandler, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self._auth_methods = {}

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(NO_AUTH)


def _tls_version(server: SubmissionSMTP) -> str:
    t = server.transport
    obj = t.get_extra_info("ssl_object") if t is not None else None
    if obj is None:
        return "TLS" if server.tls_active else ""
    return str(obj.version() or "TLS")


class InboundHandler:
    def __init__(self, cfg: ListenerConfig, *, hostname: str,
                 classify_rcpt: Callable[[str], str | None],
                 deliver: Callable[[InboundMessage], Awaitable[Reply]],
                 clock: Clock, log: logging.Logger):
        self.hostname = hostname
        self.classify_rcpt = classify_rcpt
        self.deliver = deliver
        self.clock = clock
        self.log = log
        self.cfg = cfg

    def reconfigure(self, cfg: Config, listener: ListenerConfig) -> None:
        self.cfg = listener

    def may_transact(self, server: SubmissionSMTP, session: SubmissionSession) -> bool:
        return True

    # -- EHLO -----------------------------------------------------------------

    async def handle_EHLO(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do this itself
        return ehlo_lines([r for r in responses if not r[4:].startswith("AUTH")])

    # -- the transaction --------------------------------------------------------

    async def handle_MAIL(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, address: str,
                          mail_options: list[str]) -> str:
        checked = check_sender(address, smtp_utf8=envelope.smtp_utf8)
        if isinstance(checked, Reply):
            return str(checked)
        envelope.mail_from = checked or "<>"  # aiosmtpd treats "" as "no MAIL yet"
        envelope.mail_options.extend(mail_options)
        return str(replies.sender_ok(checked))

    async def handle_RCPT(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if address.lower() == "postmaster":
            address = f"postmaster@{self.hostname}"
        checked = check_recipient(address, smtp_utf8=envelope.smtp_utf8)
        if isinstance(checked, Reply):
            return str(checked)
        try:
            kind = self.classify_rcpt(checked)
        except Exception as exc:  # noqa: BLE001 (fail closed, temporarily: 451)
            self.log.error("event=inbound_classify_failed listener=%s rcpt=<%s> error=%s: %s",
                           self.cfg.name, checked, type(exc).__name__, exc)
            return str(replies.INTERNAL_ERROR)
        if not kind:
            reply = relay_denied(checked)
            self.log.info("event=inbound_rejected reason=relay listener=%s client=%s "
                          "sender=<%s> rcpt=<%s>", self.cfg.name, server.client_ip,
                          "" if envelope.mail_from == "<>" else envelope.mail_from, checked)
            return str(reply)
        envelope.rcpt_tos.append(checked)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.kinds.append(str(kind))
        return str(replies.recipient_ok(checked))

    async def handle_DATA(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope) -> str:
        content: bytes = envelope.original_content or b""
        size = envelope.size
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        refused = envelope.hygiene
        if refused is not None:
            self.log.warning("event=inbound_rejected reason=smuggling listener=%s client=%s "
                             "sender=<%s> reply=%r", self.cfg.name, server.client_ip, sender,
                             str(refused))
            return str(refused)
        if size > self.cfg.max_message_size:
            return str(replies.TOO_BIG)
        kinds = tuple(envelope.kinds)
        msg = InboundMessage(mail_from=sender, rcpts=tuple(envelope.rcpt_tos), kinds=kinds,
                             body=content, client_ip=server.client_ip,
                             helo=session.host_name or "", tls=_tls_version(server),
                             tail=envelope.spill)
        try:
            reply = await self.deliver(msg)
            if not isinstance(reply, Reply):
                raise TypeError(f"deliver returned {type(reply).__name__}, not a Reply")
        except Exception as exc:
            self.log.error("event=inbound_deliver_failed listener=%s client=%s error=%s: %s",
                           self.cfg.name, server.client_ip, type(exc).__name__, exc,
                           exc_info=exc)
            reply = replies.INTERNAL_ERROR
        self.log.info("event=inbound_received listener=%s client=%s helo=%s tls=%s sender=<%s> "
                      "rcpts=%d kinds=%s size=%d reply=%r", self.cfg.name, server.client_ip,
                      replies.quote(msg.helo or "-", 80), msg.tls or "none", sender,
                      len(msg.rcpts), ",".join(sorted(set(kinds))), size, str(reply))
        return str(reply)

    async def handle_exception(self, error: Exception) -> str:
        return session_error(self.log, self.cfg.name, error)
