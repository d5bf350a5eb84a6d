"""The aiosmtpd handler: per-command policy of the submission service.

API
    SubmissionHandler(cfg, *, hostname, spool, credentials, clock, auth_throttle,
                      log, message_factory=None, ..., observer=Observer())
    aiosmtpd hooks: handle_EHLO, handle_AUTH, handle_MAIL, handle_RCPT,
                    handle_DATA, handle_exception
    called by protocol.SubmissionSMTP: may_transact(server, session),
                    authenticate(server, session, mechanism, login, password)

Rules (the order inside each hook is the order of the checks):
  * No open relay: MAIL, RCPT and DATA each re-check that the session is
    authenticated or comes from `trusted_networks` (the protocol checks it
    too, before parsing; this is the second lock on the same door).
  * AUTH: refused during a transaction (RFC 4954 §4); refused with 421 and
    the connection closed while the client IP is locked out by the
    AuthThrottle; otherwise the reply (success or 535) is delayed by the
    throttle's delay, on success too, so a guesser cannot tell early.
  * DATA: hygiene (bare CR/LF, NUL) → size → headers → `spool.enqueue`
    (NewMessage.queue_id is chosen here, so Received: names the real id);
    "250 … queued as <id>" only after enqueue returned (the commit point).
    StorageError → its own 4xx reply. Any other exception → 451 4.3.0 via
    `handle_exception` (aiosmtpd's default would be a permanent 500).
  * Sending domains (when a SenderPolicy is given): the MAIL FROM domain (at
    MAIL) and every From: header domain (at DATA) must be in the credential's
    scopes and verified, else 550 5.7.1 naming the domain and the reason.
    Then the message is DKIM-signed by `signer.sign` (in a thread) before
    enqueue, when `signer.keys_for` has keys for its From: domain.
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
import ipaddress
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Sequence

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, Session, TLSSetupException

from mta.core.logfmt import event
from mta.core import (AddressError, Clock, LedgerEvent, Observer, Reply, StorageError, new_queue_id,
                      parse_address)
from mta.mail.headers import from_domains, prepare_submission, remove_header
from mta.policy.authlimit import FREE, GO, LOCKED, WAIT, UserThrottle, throttle_key
from mta.policy.senders import SenderPolicy
from mta.server import replies
from mta.server.credentials import CredentialStore, valid_username
from mta.server.hygiene import check_data

if TYPE_CHECKING:  # server does not import config at run time (DESIGN §2)
    from mta.config.sections import ListenerConfig

__all__ = ["SubmissionHandler", "Signer", "ehlo_lines"]


class Signer(Protocol):
    """DKIM signing as the submission path needs it (the runtime's DomainCache)."""

    def keys_for(self, domain: str) -> Sequence[Any]: ...

    def sign(self, message: bytes, domain: str, tail: Any = None) -> bytes: ...

AUTH_WAIT = 30.0   # longest wait for a turn to have a password checked

# Extensions aiosmtpd does not advertise itself (it supports PIPELINING by
# reading commands from a stream; ENHANCEDSTATUSCODES is ours, see replies.py).
_EXTRA_EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")


def ehlo_lines(responses: list[str]) -> list[str]:
    """aiosmtpd's EHLO lines → ours: drop "HELP", add our extensions, fix the last dash."""
    words = [r[4:] for r in responses if r[4:] != "HELP"]
    words += [e for e in _EXTRA_EXTENSIONS if e not in words]
    return [f"250-{w}" for w in words[:-1]] + [f"250 {words[-1]}"]


def _default_message_factory() -> Callable[..., Any]:
    # Imported on first use: the spool package may import things the server
    # does not need at import time (and is developed alongside this one).
    from mta.spool import NewMessage
    return NewMessage


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
    def __init__(self, cfg: ListenerConfig, *, hostname: str, spool: Any,
                 credentials: CredentialStore, clock: Clock, auth_throttle: Any,
                 log: logging.Logger, message_factory: Callable[..., Any] | None = None,
                 sender_policy: SenderPolicy | None = None,
                 signer: Signer | None = None,
                 rcpt_check: Callable[[str, str | None], Awaitable[Reply | None]] | None = None,
                 accept_suppressed: bool = False, observer: Observer = Observer(),
                 user_throttle: UserThrottle | None = None):
        self.hostname = hostname
        self.user_throttle = user_throttle
        self._auth_ended: dict[str, asyncio.Event] = {}   # throttle key -> a check ended
        self._pending: set[asyncio.Future] = set()   # ledger appends in flight
        self.observer = observer
        self.rcpt_check = rcpt_check      # (recipient, credential) -> refusal or None
        self.accept_suppressed = accept_suppressed
        self.sender_policy = sender_policy
        # .keys_for(From: domain) -> keys (cheap, on the loop: an unsigned
        # message pays no thread hop); .sign(message, domain) -> signed message
        self.signer = signer
        self.spool = spool
        self.clock = clock
        self.throttle = auth_throttle
        self.log = log
        self._message_factory = message_factory
        self.update(cfg, credentials)

    # -- the ledger (issue 6) ---------------------------------------------------

    def _ledger(self, kind: str, session: Session, reply: str, *, stage: str,
                sender: str = "", recipient: str = "") -> str:
        """Record a refusal at submission (`rejected`, or `suppressed` at RCPT)
        in the ledger, without delaying the reply; returns the reply.
        Unauthenticated relay attempts are not recorded (spam would flood it)."""
        append = getattr(self.spool, "append_events", None)
        if append is not None:
            event = LedgerEvent(kind, self.clock.now(), recipient=recipient,
                                credential=session.credential or "",
                                detail={"reply": reply, "stage": stage,
                                        "sender": "" if sender == "<>" else sender,
                                        "listener": self.cfg.name})
            task = asyncio.ensure_future(append([event]))
            self._pending.add(task)
            task.add_done_callback(self._ledger_done)
        return reply

    def _ledger_done(self, task: asyncio.Future) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("event=ledger_append_failed error=%r", task.exception())

    # -- sending domains (issue 3) -------------------------------------------

    def _enforcing(self, session: Session) -> bool:
        # Trusted-network clients have no credential: they are the operator's
        # own hosts (Postfix mynetworks) and are not scoped.
        return self.sender_policy is not None and bool(session.authenticated)

    def _sender_refusal(self, session: Session, domains: list[str], where: str) -> str | None:
        if not self._enforcing(session):
            return None
        scopes = self.credentials.domains(session.credential)
        for domain in domains:
            reply = self.sender_policy.check(domain, scopes, where)
            if reply is not None:
                self.log.info("event=rejected reason=sender_domain credential=%s domain=%s "
                              "reply=%r", session.credential, domain, str(reply))
                return str(reply)
        return None

    def update(self, cfg: ListenerConfig, credentials: CredentialStore) -> None:
        self.cfg = cfg
        self.credentials = credentials
        self._trusted = tuple(ipaddress.ip_network(c, strict=False) for c in cfg.trusted_networks)

    # -- who may send -------------------------------------------------------

    def _is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._trusted)

    def may_transact(self, server: Any, session: Session) -> bool:
        if session.authenticated:
            return True
        if getattr(session, "trusted", None) is None:
            session.trusted = self._is_trusted(server.client_ip)
        return bool(session.trusted)

    # -- EHLO / AUTH --------------------------------------------------------

    async def handle_EHLO(self, server: Any, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do this itself
        return ehlo_lines(responses)

    async def handle_AUTH(self, server: Any, session: Session, envelope: Envelope,
                          args: list[str]) -> Any:
        if envelope.mail_from:
            return str(replies.AUTH_IN_TRANSACTION)
        if self.throttle is not None and self.throttle.check(throttle_key(server.client_ip),
                                                             self.clock.now()) is None:
            await self._lock_out(server)
            return None
        return MISSING

    async def _lock_out(self, server: Any) -> None:
        self.log.warning("event=auth_locked_out listener=%s client=%s",
                         self.cfg.name, server.client_ip)
        await server.push(replies.AUTH_LOCKED)
        if server.transport is not None:
            server.transport.close()

    async def _begin(self, key: str, begin: Callable[[], Any]) -> Any:
        """Ask a throttle's begin() until it says something else than WAIT
        (a check running for the same key ended), for at most AUTH_WAIT s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AUTH_WAIT
        while True:
            result = begin()
            if (result[0] if isinstance(result, tuple) else result) != WAIT:
                return result
            ev = self._auth_ended.setdefault(key, asyncio.Event())
            try:
                async with asyncio.timeout_at(deadline):
                    await ev.wait()
            except TimeoutError:
                return (LOCKED, 0.0) if isinstance(result, tuple) else LOCKED

    def _ended(self, key: str) -> None:
        ev = self._auth_ended.pop(key, None)
        if ev is not None:
            ev.set()

    async def authenticate(self, server: Any, session: Session, mechanism: str,
                           login: bytes, password: bytes) -> AuthResult:
        ip = server.client_ip
        key = throttle_key(ip)
        delay = 0.0
        try:
            name = login.decode("utf-8")
        except UnicodeError:
            name = ""
        shown = name if valid_username(name) else "<invalid>"
        ip_go = False
        if self.throttle is not None:
            # Checks in flight count against the limit (issue 10 item 1): N
            # parallel connections cannot get more checks than the budget.
            verdict, delay = await self._begin(
                "ip " + key, lambda: self.throttle.begin(key, self.clock.now()))
            if verdict == LOCKED:
                await self._lock_out(server)
                return AuthResult(success=False, handled=True)
            ip_go = True
        user_verdict = None
        try:
            if self.user_throttle is not None and valid_username(name):
                user_verdict = await self._begin(
                    "user " + name, lambda: self.user_throttle.begin(name, key, self.clock.now()))
                if user_verdict == LOCKED:
                    # Locked by guesses from elsewhere: no password check.
                    self.log.warning("event=auth_failed listener=%s client=%s mechanism=%s "
                                     "credential=%s reason=user_locked", self.cfg.name, ip,
                                     mechanism, shown)
                    self.observer.auth_failure(self.cfg.name)
                    self._end_ip(key, ip_go, ok=False)
                    ip_go = False
                    if delay > 0:
                        await asyncio.sleep(delay)
                    return AuthResult(success=False, handled=False,
                                      message=str(replies.AUTH_USER_LOCKED))
            ok = await asyncio.to_thread(self.credentials.verify, login, password)
        except BaseException:
            self._end_ip(key, ip_go, ok=False)
            self._end_user(name, key, user_verdict, ok=False)
            raise
        self._end_ip(key, ip_go, ok=ok)
        self._end_user(name, key, user_verdict, ok=ok)
        if delay > 0:
            await asyncio.sleep(delay)
        if ok:
            session.credential = name
            self.log.info("event=auth_ok listener=%s client=%s mechanism=%s credential=%s",
                          self.cfg.name, ip, mechanism, shown)
            return AuthResult(success=True, auth_data=name, message=str(replies.AUTH_OK))
        self.log.info("event=auth_failed listener=%s client=%s mechanism=%s credential=%s",
                      self.cfg.name, ip, mechanism, shown)
        self.observer.auth_failure(self.cfg.name)
        if self.throttle is not None and self.throttle.check(key, self.clock.now()) is None:
            await self._lock_out(server)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=str(replies.AUTH_INVALID))

    def _end_ip(self, key: str, began: bool, *, ok: bool) -> None:
        if began:
            self.throttle.end(key, self.clock.now(), ok)
            self._ended("ip " + key)

    def _end_user(self, name: str, key: str, verdict: str | None, *, ok: bool) -> None:
        if verdict in (GO, FREE):
            self.user_throttle.end(name, key, self.clock.now(), ok, counted=verdict == GO)
            self._ended("user " + name)

    async def refuse_auth(self, server: Any, session: Session, mechanism: str, reason: str,
                          reply: Reply) -> AuthResult:
        """An AUTH exchange refused before any password check (an overlong or
        malformed response, an authorization identity): counted as a failed
        AUTH for the client, answered with `reply` (or 421 once locked)."""
        ip = server.client_ip
        self.log.info("event=auth_failed listener=%s client=%s mechanism=%s reason=%s",
                      self.cfg.name, ip, mechanism, reason)
        self.observer.auth_failure(self.cfg.name)
        if self.throttle is not None:
            key = throttle_key(ip)
            self.throttle.failure(key, self.clock.now())
            if self.throttle.check(key, self.clock.now()) is None:
                await self._lock_out(server)
                return AuthResult(success=False, handled=True)
        await server.push(reply)
        return AuthResult(success=False, handled=True)

    # -- the transaction ------------------------------------------------------

    def _check_address(self, address: str, envelope: Envelope, *, sender: bool) -> Any:
        """Parsed address, or the Reply refusing it."""
        if sender and address == "<>":
            return ""
        try:
            address.encode("utf-8")  # aiosmtpd hands over undecodable bytes as surrogates
            parsed = parse_address(address)
        except (AddressError, UnicodeError) as exc:
            why = str(exc) if isinstance(exc, AddressError) else "not UTF-8"
            return (replies.bad_sender if sender else replies.bad_recipient)(address, why)
        if not address.isascii() and not envelope.smtp_utf8:
            return replies.NEED_SMTPUTF8
        return str(parsed)

    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if not self.may_transact(server, session):
            return str(replies.AUTH_REQUIRED)
        checked = self._check_address(address, envelope, sender=True)
        if not isinstance(checked, str):
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

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.may_transact(server, session):
            return str(replies.AUTH_REQUIRED)
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if address == "<>":
            return str(replies.NULL_RECIPIENT)
        checked = self._check_address(address, envelope, sender=False)
        if not isinstance(checked, str):
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
                suppressed = getattr(envelope, "suppressed", None)
                if suppressed is None:
                    suppressed = envelope.suppressed = []
                suppressed.append((len(envelope.rcpt_tos), str(refusal)))
        envelope.rcpt_tos.append(checked)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.recipient_ok(checked))

    def _protocol_name(self, server: Any, session: Session) -> str:
        if not session.extended_smtp:
            return "SMTP"
        return "ESMTP" + ("S" if server.tls_active else "") + ("A" if session.authenticated else "")

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if not self.may_transact(server, session):
            return str(replies.AUTH_REQUIRED)
        # The protocol hands over the head of the message (all of it, unless
        # it is over core.spill.HEAD_BYTES: then `spill` holds the rest) and
        # the hygiene verdict on all of it.
        content: bytes = envelope.original_content or b""
        spill = getattr(envelope, "spill", None)
        size = getattr(envelope, "size", len(content))
        refused = envelope.hygiene if hasattr(envelope, "hygiene") else check_data(content)
        if refused is not None:
            self.log.warning("event=rejected reason=smuggling listener=%s client=%s "
                             "credential=%s reply=%r", self.cfg.name, server.client_ip,
                             session.credential, str(refused))
            return self._ledger("rejected", session, str(refused), stage="DATA",
                                sender=envelope.mail_from)
        if size > self.cfg.max_message_size:
            return self._ledger("rejected", session, str(replies.TOO_BIG), stage="DATA",
                                sender=envelope.mail_from)
        if self._enforcing(session):
            domains = from_domains(content)
            if domains is None:
                return self._ledger("rejected", session, str(replies.NO_FROM_DOMAIN),
                                    stage="DATA", sender=envelope.mail_from)
            refused = self._sender_refusal(session, domains, "From: header")
            if refused is not None:
                return self._ledger("rejected", session, refused, stage="DATA",
                                    sender=envelope.mail_from)

        # Idempotency-Key (issue 6): taken off the message (it is for us, not
        # for the recipient) and handed to the spool, which answers a repeat
        # from the same credential with the original queue id.
        content, keys = remove_header(content, "Idempotency-Key")
        idempotency_key = keys[0][:200] if keys and keys[0] else None
        now = self.clock.now()
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        rcpts = tuple(envelope.rcpt_tos)
        id_hint = new_queue_id(now)
        body = prepare_submission(
            content, hostname=self.hostname, helo=session.host_name or "unknown",
            client_ip=server.client_ip, protocol=self._protocol_name(server, session),
            queue_id_hint=id_hint, recipient=rcpts[0] if len(rcpts) == 1 else None,
            now=now, authenticated=bool(session.authenticated))
        if self.signer is not None:
            # Signed once, here, before the commit point: retries never re-sign.
            # Off the loop: an RSA signature is CPU work (≈0.5 ms via OpenSSL).
            domains = from_domains(body)
            if domains and self.signer.keys_for(domains[0]):
                if spill is None:
                    body = await asyncio.to_thread(self.signer.sign, body, domains[0])
                else:
                    body = await asyncio.to_thread(self.signer.sign, body, domains[0],
                                                   spill.chunks())
        factory = self._message_factory or _default_message_factory()
        msg = factory(sender=sender, recipients=rcpts, body=body,
                      credential=session.credential, listener=self.cfg.name,
                      client_ip=server.client_ip, is_dsn=False,
                      # the id named in Received: becomes the queue id
                      queue_id=id_hint,
                      **({"suppressed": tuple(envelope.suppressed)}
                         if getattr(envelope, "suppressed", None) else {}),
                      **({"idempotency_key": idempotency_key} if idempotency_key else {}),
                      **({"tail": spill} if spill is not None else {}))
        try:
            queue_id = await self.spool.enqueue(msg, now)
        except StorageError as exc:
            self.log.error("event=enqueue_failed listener=%s client=%s error=%s reply=%r",
                           self.cfg.name, server.client_ip, exc, str(exc.reply))
            return str(exc.reply)
        if queue_id != id_hint:
            # An idempotent repeat: answered with the original's id, nothing new queued.
            event(self.log, "duplicate", id=queue_id, discarded_id=id_hint,
                  idempotency_key=idempotency_key, sender=f"<{sender}>", rcpts=len(rcpts),
                  listener=self.cfg.name, client=server.client_ip,
                  credential=session.credential or "-")
            return str(replies.queued(queue_id))
        event(self.log, "received", id=queue_id, sender=f"<{sender}>", rcpts=len(rcpts),
              size=len(body) + (spill.length if spill is not None else 0), listener=self.cfg.name, client=server.client_ip,
              credential=session.credential or "-")
        for _ in getattr(envelope, "suppressed", None) or ():
            self.observer.recipient_outcome("suppressed")
        return str(replies.queued(queue_id))

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd calls this without the session; the traceback is what matters.
        return session_error(self.log, self.cfg.name, error)
