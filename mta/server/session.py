"""The aiosmtpd handler: per-command policy of the submission service.

API
    SubmissionHandler(cfg, *, hostname, spool, credentials, clock, auth_throttle,
                      log, message_factory=None, sender_policy=None, signer=None,
                      rcpt_check=None, accept_suppressed=False, observer=None,
                      user_throttle=None, auth_turns=None)
        cfg             its listener's ListenerConfig
        spool           seams.SubmissionSpool (enqueue, append_events)
        credentials     credentials.CredentialCheck (verify, domains)
        auth_turns      authcheck.AuthTurns (default: one over auth_throttle
                        and user_throttle in this process; a receiver
                        process passes its owner's, runtime/remote.py)
        signer          seams.Signer; rcpt_check seams.RcptCheck;
        sender_policy   policy.senders.SenderPolicy (a pure value)
    .reconfigure(cfg, listener)   config reload: `listener` (its ListenerConfig)
                                  and the keys of `cfg` (Config, the one in
                                  force) it owns: policy.require_verified_domain
                                  (not in sandbox mode), suppression.on_rcpt
    aiosmtpd hooks: handle_EHLO, handle_AUTH, handle_MAIL, handle_RCPT,
                    handle_DATA, handle_exception
    called by the protocol (seams.SubmissionHooks): may_transact(server,
        session), authenticate(…), refuse_auth(…) (both: authcheck.AuthCheck)
    .trusted(ip) -> bool          a client of the listener's trusted_networks
    ehlo_lines(responses), session_error(log, listener, error)   (inbound too)

Rules (the order inside each hook is the order of the checks):
  * No open relay: MAIL, RCPT and DATA each re-check that the session is
    authenticated or comes from `trusted_networks` (the protocol checks it
    too, before parsing; this is the second lock on the same door).
  * AUTH: refused during a transaction (RFC 4954 §4); refused with 421 and
    the connection closed while the client IP is locked out; otherwise
    authcheck.AuthCheck decides.
  * MAIL/RCPT addresses: addresses.check_sender / check_recipient (the same
    check as the inbound listener's).
  * DATA: hygiene (bare CR/LF, NUL) → size → headers → `spool.enqueue`
    (NewMessage.queue_id is chosen here, so Received: names the real id);
    "250 … queued as <id>" only after enqueue returned (the commit point).
    StorageError → its own 4xx reply; core.Refused (a tenant's guardrail:
    paused, over quota, another tenant's domain) → its reply. Any other
    exception → 451 4.3.0 via
    `handle_exception` (aiosmtpd's default would be a permanent 500).
  * Sending domains (when a SenderPolicy is given): the MAIL FROM domain (at
    MAIL) and every From: header domain (at DATA) must be in the credential's
    scopes and verified, else 550 5.7.1 naming the domain and the reason.
    Then the message is DKIM-signed by `signer.sign` (in a thread) before
    enqueue, when `signer.keys_for` has keys for its From: domain.
  * Refusals at submission are recorded in the ledger (`rejected`, or
    `suppressed` at RCPT) without delaying the reply; unauthenticated relay
    attempts are not (spam would flood it).
  * Counted (observer, core.observe): every failed credential check
    (`auth_failure`), a sender refused by policy at MAIL FROM
    (`message_received(…, "rejected")`; DATA results are counted by the
    protocol), and each suppressed recipient (`recipient_outcome("suppressed")`):
    refused at RCPT, or accepted as suppressed once enqueued.
  * Logs: one `event=received` line per message (`event=duplicate` for an
    idempotent repeat, answered with the original's id); AUTH outcomes
    without secrets (the login name only when it is a valid user name).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult, TLSSetupException

from mta.core import Clock, LedgerEvent, Observer, Refused, Reply, StorageError, new_queue_id
from mta.core.logfmt import event
from mta.core.schedule import parse_schedule
from mta.mail.headers import from_domains, prepare_submission, remove_header
from mta.server.stream import StreamHeaders, tls_flags
from mta.policy.authlimit import AuthThrottle, UserThrottle
from mta.policy.senders import SenderPolicy
from mta.server import replies
from mta.server.addresses import check_recipient, check_sender
from mta.server.authcheck import AuthCheck, AuthTurns
from mta.server.seams import AuthTurns as Turns
from mta.server.credentials import CredentialCheck

if TYPE_CHECKING:  # server does not import config at run time (ARCHITECTURE §2)
    from mta.config import Config
    from mta.config.sections import ListenerConfig
    from mta.server.protocol import (
        SubmissionEnvelope,
        SubmissionSession,
        SubmissionSMTP,
    )
    from mta.server.seams import MessageFactory, RcptCheck, Signer, SubmissionSpool

__all__ = ["SubmissionHandler", "ehlo_lines", "session_error"]

# Extensions aiosmtpd does not advertise itself (it supports PIPELINING by
# reading commands from a stream; ENHANCEDSTATUSCODES is ours, see replies.py).
_EXTRA_EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")


def ehlo_lines(responses: list[str]) -> list[str]:
    """aiosmtpd's EHLO lines → ours: drop "HELP", add our extensions, fix the last dash."""
    words = [r[4:] for r in responses if r[4:] != "HELP"]
    words += [e for e in _EXTRA_EXTENSIONS if e not in words]
    return [f"250-{w}" for w in words[:-1]] + [f"250 {words[-1]}"]


def _default_message_factory() -> MessageFactory:
    # Imported on first use: importing the server (the CLI does, for the
    # credential store) does not load the spool. Not a cycle: the spool
    # never imports the server.
    from mta.spool import NewMessage
    return NewMessage


def scheduled_at(text: str, now: float) -> float | Reply:
    """A `Scheduled-At:` header's time (core.schedule), or the refusal."""
    try:
        return parse_schedule(text, now)
    except ValueError as exc:
        return Reply(550, "5.6.0", f"Scheduled-At: {exc}")


def session_error(log: logging.Logger, listener: str, error: Exception) -> str:
    """An unexpected exception in a session: logged with its traceback, and
    answered 451 4.3.0 (aiosmtpd's default would be a permanent 500)."""
    if isinstance(error, TLSSetupException):  # a client that failed the handshake
        log.info("event=tls_failed listener=%s error=%s", listener, error.__cause__ or error)
        return str(replies.INTERNAL_ERROR)  # not sent: aiosmtpd closes the connection
    log.error("event=session_error listener=%s error=%s: %s", listener,
              type(error).__name__, error, exc_info=error)
    return str(replies.INTERNAL_ERROR)


class SubmissionHandler:
    def __init__(self, cfg: ListenerConfig, *, hostname: str, spool: SubmissionSpool,
                 credentials: CredentialCheck, clock: Clock, auth_throttle: AuthThrottle | None,
                 log: logging.Logger, message_factory: MessageFactory | None = None,
                 sender_policy: SenderPolicy | None = None, signer: Signer | None = None,
                 rcpt_check: RcptCheck | None = None, accept_suppressed: bool = False,
                 observer: Observer | None = None, user_throttle: UserThrottle | None = None,
                 auth_turns: Turns | None = None, stream: StreamHeaders | None = None):
        self.hostname = hostname
        self.stream = stream              # X-Mta-Stream: broadcast (server/stream.py)
        self.offers_requiretls = True     # MAIL FROM … REQUIRETLS after STARTTLS (RFC 8689)
        self.observer = observer or Observer()
        self.rcpt_check = rcpt_check      # (recipient, credential) -> refusal or None
        self.accept_suppressed = accept_suppressed
        self.sender_policy = sender_policy
        self.signer = signer
        self.spool = spool
        self.clock = clock
        self.log = log
        self.credentials = credentials
        if auth_turns is None:
            auth_turns = AuthTurns(clock, auth_throttle, user_throttle)
        self.auth = AuthCheck(listener=cfg.name, credentials=credentials, clock=clock,
                              turns=auth_turns,
                              observer=self.observer, log=log)
        self._message_factory = message_factory
        self._pending: set[asyncio.Future[None]] = set()   # ledger appends in flight
        self._apply(cfg)

    # -- configuration ---------------------------------------------------------

    def _apply(self, cfg: ListenerConfig) -> None:
        self.cfg = cfg
        self.auth.listener = cfg.name
        self._trusted = tuple(ipaddress.ip_network(c, strict=False) for c in cfg.trusted_networks)

    def reconfigure(self, cfg: Config, listener: ListenerConfig) -> None:
        self._apply(listener)
        # The AUTH limits change in place (the failures counted so far stay:
        # a reload must not hand a guesser a fresh budget). Not in _apply: the
        # throttles given to __init__ keep the limits they were built with.
        # (Remote turns: the owner's listener reconfigures its own.)
        throttle = getattr(self.auth.turns, "throttle", None)
        user_throttle = getattr(self.auth.turns, "user_throttle", None)
        if throttle is not None:
            throttle.reconfigure(listener.auth_max_failures, listener.auth_lockout)
        if user_throttle is not None:
            user_throttle.reconfigure(listener.auth_max_failures_per_user,
                                      listener.auth_lockout)
        if self.sender_policy is not None:
            # Sandbox mode may skip domain verification (nothing leaves the
            # machine); credential scopes are enforced in every mode.
            self.sender_policy = dataclasses.replace(
                self.sender_policy, require_verified=(cfg.policy.require_verified_domain
                                                      and cfg.server.mode != "sandbox"))
        self.accept_suppressed = cfg.suppression.on_rcpt == "accept"

    # -- the ledger (issue 6) ---------------------------------------------------

    def _ledger(self, kind: str, session: SubmissionSession, reply: str, *, stage: str,
                sender: str | None = "", recipient: str = "") -> str:
        """Record a refusal at submission in the ledger, without delaying the
        reply; returns the reply."""
        detail = {"reply": reply, "stage": stage, "sender": "" if sender == "<>" else sender,
                  "listener": self.cfg.name}
        ev = LedgerEvent(kind, self.clock.now(), recipient=recipient,
                         credential=session.credential or "", detail=detail)
        task = asyncio.ensure_future(self.spool.append_events([ev]))
        self._pending.add(task)
        task.add_done_callback(self._ledger_done)
        return reply

    def _ledger_done(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("event=ledger_append_failed error=%r", task.exception())

    # -- sending domains (issue 3) -------------------------------------------

    def _enforcing(self, session: SubmissionSession) -> SenderPolicy | None:
        # Trusted-network clients have no credential: they are the operator's
        # own hosts (Postfix mynetworks) and are not scoped.
        return self.sender_policy if session.authenticated else None

    def _sender_refusal(self, session: SubmissionSession, domains: list[str],
                        where: str) -> str | None:
        policy = self._enforcing(session)
        if policy is None:
            return None
        scopes = self.credentials.domains(session.credential or "")
        for domain in domains:
            reply = policy.check(domain, scopes, where)
            if reply is not None:
                self.log.info("event=rejected reason=sender_domain credential=%s domain=%s "
                              "reply=%r", session.credential, domain, str(reply))
                return str(reply)
        return None

    # -- who may send -------------------------------------------------------

    def trusted(self, ip: str) -> bool:
        """`ip` is in the listener's trusted_networks."""
        if not self._trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    def may_transact(self, server: SubmissionSMTP, session: SubmissionSession) -> bool:
        if session.authenticated:
            return True
        if getattr(session, "trusted", None) is None:
            session.trusted = self.trusted(server.client_ip)
        return bool(session.trusted)

    # -- EHLO / AUTH --------------------------------------------------------

    async def handle_EHLO(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do this itself
        # REQUIRETLS (RFC 8689 §4) is offered only inside TLS.
        return ehlo_lines([*responses, "250-REQUIRETLS"] if server.tls_active else responses)

    async def handle_AUTH(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, args: list[str]) -> Any:
        if envelope.mail_from:
            return str(replies.AUTH_IN_TRANSACTION)
        if await self.auth.locked(server):
            await self.auth.lock_out(server)
            return None
        return MISSING

    async def authenticate(self, server: SubmissionSMTP, session: SubmissionSession,
                           mechanism: str, login: bytes, password: bytes) -> AuthResult:
        return await self.auth.authenticate(server, session, mechanism, login, password)

    async def refuse_auth(self, server: SubmissionSMTP, session: SubmissionSession,
                          mechanism: str, reason: str, reply: Reply) -> AuthResult:
        return await self.auth.refuse(server, session, mechanism, reason, reply)

    # -- the transaction ------------------------------------------------------

    async def handle_MAIL(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, address: str,
                          mail_options: list[str]) -> str:
        if not self.may_transact(server, session):
            return str(replies.AUTH_REQUIRED)
        checked = check_sender(address, smtp_utf8=envelope.smtp_utf8)
        if isinstance(checked, Reply):
            return str(checked)
        if checked:
            refused = self._sender_refusal(session, [checked.rpartition("@")[2]], "MAIL FROM")
            if refused is not None:
                self.observer.message_received(self.cfg.name, "rejected")
                return self._ledger("rejected", session, refused, stage="MAIL",
                                    sender=checked)
        envelope.mail_from = checked or "<>"  # aiosmtpd treats "" as "no MAIL yet"
        envelope.mail_options.extend(mail_options)
        return str(replies.sender_ok(checked))

    async def handle_RCPT(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not self.may_transact(server, session):
            return str(replies.AUTH_REQUIRED)
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        checked = check_recipient(address, smtp_utf8=envelope.smtp_utf8)
        if isinstance(checked, Reply):
            return str(checked)
        if self.rcpt_check is not None:
            # Suppressed recipients (hard bounce, complaint, …): refused here so
            # the application learns synchronously, or — on_rcpt = "accept" —
            # accepted and recorded as suppressed, never delivered.
            refusal = await self.rcpt_check(checked, session.credential)
            if refusal is not None:
                event(self.log, "suppressed", rcpt=checked, credential=session.credential or "-",
                      reply=str(refusal))
                if not self.accept_suppressed:
                    self.observer.recipient_outcome("suppressed")
                    return self._ledger("suppressed", session, str(refusal), stage="RCPT",
                                        recipient=checked, sender=envelope.mail_from)
                envelope.suppressed.append((len(envelope.rcpt_tos), str(refusal)))
        envelope.rcpt_tos.append(checked)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.recipient_ok(checked))

    def _protocol_name(self, server: SubmissionSMTP, session: SubmissionSession) -> str:
        if not session.extended_smtp:
            return "SMTP"
        return "ESMTP" + ("S" if server.tls_active else "") + ("A" if session.authenticated else "")

    def _data_refusal(self, server: SubmissionSMTP, session: SubmissionSession,
                      envelope: SubmissionEnvelope, content: bytes) -> str | None:
        """Why the message cannot be taken, as the reply (ledgered), or None.
        The protocol hands over the head of the message (all of it, unless
        it is over core.spill.HEAD_BYTES: then `spill` holds the rest) and
        the hygiene verdict on all of it."""
        sender = envelope.mail_from
        if envelope.hygiene is not None:
            self.log.warning("event=rejected reason=smuggling listener=%s client=%s "
                             "credential=%s reply=%r", self.cfg.name, server.client_ip,
                             session.credential, str(envelope.hygiene))
            return self._ledger("rejected", session, str(envelope.hygiene), stage="DATA",
                                sender=sender)
        if envelope.size > self.cfg.max_message_size:
            return self._ledger("rejected", session, str(replies.TOO_BIG), stage="DATA",
                                sender=sender)
        if self._enforcing(session) is not None:
            domains = from_domains(content)
            if domains is None:
                return self._ledger("rejected", session, str(replies.NO_FROM_DOMAIN),
                                    stage="DATA", sender=sender)
            refused = self._sender_refusal(session, domains, "From: header")
            if refused is not None:
                return self._ledger("rejected", session, refused, stage="DATA", sender=sender)
        return None

    async def handle_DATA(self, server: SubmissionSMTP, session: SubmissionSession,
                          envelope: SubmissionEnvelope) -> str:
        if not self.may_transact(server, session):
            return str(replies.AUTH_REQUIRED)
        content: bytes = envelope.original_content or b""
        refused = self._data_refusal(server, session, envelope, content)
        if refused is not None:
            return refused
        # Idempotency-Key (issue 6): taken off the message (it is for us, not
        # for the recipient) and handed to the spool, which answers a repeat
        # from the same credential with the original queue id.
        content, keys = remove_header(content, "Idempotency-Key")
        idempotency_key = keys[0][:200] if keys and keys[0] else None
        now = self.clock.now()
        # Scheduled-At (issue 13): also for us, not the recipient.
        content, when = remove_header(content, "Scheduled-At")
        not_before = scheduled_at(when[0], now) if when else None
        if isinstance(not_before, Reply):
            return self._ledger("rejected", session, str(not_before), stage="DATA",
                                sender=envelope.mail_from)
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        rcpts = tuple(envelope.rcpt_tos)
        id_hint = new_queue_id(now)
        if self.stream is not None:
            streamed = await self.stream.apply(content, rcpts, session.credential, id_hint)
            if isinstance(streamed, Reply):
                return self._ledger("rejected", session, str(streamed), stage="DATA",
                                    sender=envelope.mail_from)
            content = streamed
        body = prepare_submission(
            content, hostname=self.hostname, helo=session.host_name or "unknown",
            client_ip=server.client_ip, protocol=self._protocol_name(server, session),
            queue_id_hint=id_hint, recipient=rcpts[0] if len(rcpts) == 1 else None,
            now=now, authenticated=bool(session.authenticated))
        body = await self._signed(body, envelope)
        factory = self._message_factory or _default_message_factory()
        spill = envelope.spill
        msg = factory(sender=sender, recipients=rcpts, body=body,
                      credential=session.credential, listener=self.cfg.name,
                      client_ip=server.client_ip, is_dsn=False,
                      # the id named in Received: becomes the queue id
                      queue_id=id_hint,
                      **({"suppressed": tuple(envelope.suppressed)}
                         if envelope.suppressed else {}),
                      **({"idempotency_key": idempotency_key} if idempotency_key else {}),
                      **({"not_before": not_before} if not_before is not None else {}),
                      **({"tls_flags": flags} if (flags := tls_flags(envelope, body)) else {}),
                      # Header work and DKIM change only the header section,
                      # which the spool checks itself (spool.acceptance.body_flags).
                      **({"ascii": envelope.body_ascii, "dot_lines": envelope.body_dots}
                         if envelope.body_dots is not None else {}),
                      **({"tail": spill} if spill is not None else {}))
        try:
            queue_id = await self.spool.enqueue(msg, now)
        except StorageError as exc:
            self.log.error("event=enqueue_failed listener=%s client=%s error=%s reply=%r",
                           self.cfg.name, server.client_ip, exc, str(exc.reply))
            return str(exc.reply)
        except Refused as exc:          # a tenant's guardrail (paused, quota, domain)
            self.observer.message_received(self.cfg.name, "rejected")
            return self._ledger("rejected", session, str(exc.reply), stage="DATA",
                                sender=sender)
        credential = session.credential or "-"
        if queue_id != id_hint:
            # An idempotent repeat: answered with the original's id, nothing new queued.
            event(self.log, "duplicate", id=queue_id, discarded_id=id_hint,
                  idempotency_key=idempotency_key, sender=f"<{sender}>", rcpts=len(rcpts),
                  listener=self.cfg.name, client=server.client_ip, credential=credential)
            return str(replies.queued(queue_id))
        event(self.log, "received", id=queue_id, sender=f"<{sender}>", rcpts=len(rcpts),
              size=len(body) + (spill.length if spill is not None else 0),
              listener=self.cfg.name, client=server.client_ip, credential=credential)
        for _ in envelope.suppressed:
            self.observer.recipient_outcome("suppressed")
        return str(replies.queued(queue_id))

    async def _signed(self, body: bytes, envelope: SubmissionEnvelope) -> bytes:
        """`body` DKIM-signed when the signer has keys for its From: domain.
        Signed once, here, before the commit point: retries never re-sign.
        Off the loop: an RSA signature is CPU work (≈0.5 ms via OpenSSL)."""
        if self.signer is None:
            return body
        domains = from_domains(body)
        if not domains or not self.signer.keys_for(domains[0]):
            return body
        if envelope.spill is None:
            return await asyncio.to_thread(self.signer.sign, body, domains[0])
        return await asyncio.to_thread(self.signer.sign, body, domains[0],
                                       envelope.spill.chunks())

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd calls this without the session; the traceback is what matters.
        return session_error(self.log, self.cfg.name, error)
