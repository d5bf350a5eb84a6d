"""The aiosmtpd protocol subclass: wire-level fixes, no policy.

API
    SubmissionSMTP(handler, *, implicit_tls=False, gate=None, observer=None,
                   listener="", junk_limit=0, transaction_timeout=0.0,
                   spill_dir=None, **aiosmtpd_kwargs)
        handler           seams.SubmissionHooks (+ aiosmtpd's handle_* hooks)
        .in_data          True while a DATA command is being received/handled
        .tls_active       the session is inside TLS (STARTTLS or implicit)
        .client_ip        peer address as a string
        .current_session()    the session (SubmissionSession) while connected
        .auth_mechanism   the mechanism of the AUTH exchange in progress
        .close_for_shutdown(reply)
        gate              the listener's seams.SessionLimits: asked to admit
                          the connection before the greeting (a 421 instead
                          of it when refused; its refusal(), if any, at each
                          MAIL FROM too), told when it closes or a limit closed it
        observer          told session_opened/closed(listener) once per
                          connection (STARTTLS calls connection_made twice:
                          counted once) and message_received(listener, result)
                          for every final DATA reply (core.observe)
    SubmissionSession     aiosmtpd's Session + credential, trusted
    SubmissionEnvelope    aiosmtpd's Envelope + what DATA hands the handler:
                          spill, size, hygiene (data.DataBody), and the
                          recipients accepted as suppressed

What it changes in aiosmtpd's `SMTP` (and why):
  * `push` gives every reply an enhanced status code (replies.with_esc);
    aiosmtpd's own texts mostly lack one. EHLO/HELO lines, the greeting,
    334 challenges and 354 are exempt (RFC 2034).
  * AUTH PLAIN / LOGIN are parsed in sasl.py but *decided* by the handler
    (`handler.authenticate`, async: see sasl.py).
  * `check_auth_needed` asks the handler (`may_transact`): an authenticated
    session or a trusted network. aiosmtpd's own `auth_required` flag is off,
    because it knows nothing of trusted networks.
  * MAIL/RCPT with an address aiosmtpd cannot parse get 501 5.1.7 / 5.1.3
    naming the address, instead of aiosmtpd's bare "553 malformed address".
  * DATA is read in blocks (data.py), not line by line; a failed DATA
    (exception) resets the transaction, so the next MAIL works.
  * Each instance owns its `command_size_limits` (aiosmtpd keeps it on the
    class, so EHLO in one session changed limits in all of them).
  * `_getaddr` answers the common `<dot-atom@dot-atom>` form with one regex
    and gives every other form to aiosmtpd's parser. aiosmtpd's builds a
    typing.Protocol class and runs the email header parser on every MAIL and
    RCPT (~60 µs, 4 times per message); the result is the same (tested
    against aiosmtpd's own on a table of addresses).
  * Session limits: junk commands (NOOP, RSET, VRFY, HELP, EHLO/HELO) past
    `junk_limit` and a transaction past `transaction_timeout` close the
    session with a 421; a byte received inside DATA resets the idle timer.

Invariants: nothing here accepts mail or decides who may send; the handler
(session.py) does. Implicit-TLS sessions report `tls_active` from the first
byte.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, syntax

from mta.core import Observer, Reply
from mta.core.address import PLAIN_MAILBOX
from mta.core.observe import result_of
from mta.core.spill import SpillFile
from mta.server import replies, sasl
from mta.server.data import DataBody, read_data
from mta.server.stream import take_requiretls

if TYPE_CHECKING:
    from mta.server.seams import SessionHooks, SessionLimits, SubmissionHooks

__all__ = ["SubmissionEnvelope", "SubmissionSMTP", "SubmissionSession"]

# <dot-atom@dot-atom> (ASCII), then anything (ESMTP parameters): the form
# nearly every client sends; everything else goes to aiosmtpd's parser.
_SIMPLE_PATH = re.compile(rf"[ \t]*<((?:{PLAIN_MAILBOX}))>")


class SubmissionSession(Session):
    """aiosmtpd's Session plus what our policy needs to know."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.credential: str | None = None   # AUTH identity once authenticated
        self.trusted: bool | None = None     # cached trusted-network decision


class SubmissionEnvelope(Envelope):
    """aiosmtpd's Envelope (one per transaction) plus what DATA hands over."""

    def __init__(self) -> None:
        super().__init__()
        self.spill: SpillFile | None = None    # the bytes past the head (large messages)
        self.size = 0                          # content bytes, head + spill
        self.hygiene: Reply | None = None      # hygiene.check_data of the whole content
        # (rcpt index, refusal text) of recipients accepted as suppressed
        self.suppressed: list[tuple[int, str]] = []
        self.kinds: list[str] = []             # inbound: per rcpt, the classify_rcpt kind
        self.requiretls = False                # MAIL FROM … REQUIRETLS (RFC 8689)
        # What the DATA reader learnt on the way (issue 12): every byte 7-bit,
        # some line starts with "." (None: not known, the spool looks).
        self.body_ascii: bool | None = None
        self.body_dots: bool | None = None


class SubmissionSMTP(SMTP):
    event_handler: SubmissionHooks
    envelope: SubmissionEnvelope | None

    # Set by SubmissionListener.adopt: what the owner process said about this
    # connection, read by a receiver's gate (runtime/remote.py).
    handoff_tag: object = None

    def __init__(self, handler: SessionHooks, *, implicit_tls: bool = False,
                 gate: SessionLimits | None = None, observer: Observer | None = None,
                 listener: str = "", junk_limit: int = 0, transaction_timeout: float = 0.0,
                 spill_dir: str | None = None, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.spill_dir = spill_dir
        self.observer, self.listener = observer or Observer(), listener
        self._counted_open = False
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        self.implicit_tls = implicit_tls
        self.in_data = False
        self._raw_250 = False
        self.auth_mechanism = ""
        self._gate = gate          # the listener's session limits (admit/release)
        self._admitted = False
        self._refusal: Reply | None = None
        self._junk_limit = junk_limit
        self._junk = 0
        self._transaction_timeout = transaction_timeout
        self._txn_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this again after STARTTLS: the same session.
        first = not (self.transport is not None and self._original_transport is not None)
        super().connection_made(transport)
        if not first:
            return
        if self._gate is not None:
            self._refusal = self._gate.admit(self)
            self._admitted = self._refusal is None
        if not self._counted_open and self._refusal is None:
            self._counted_open = True
            self.observer.session_opened(self.listener)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted and self._gate is not None:
            self._admitted = False
            self._gate.release(self)
        if self._counted_open:
            self._counted_open = False
            self.observer.session_closed(self.listener)
        self._stop_transaction_timer()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            # Over a session limit: one 421 instead of the greeting, then close
            # (RFC 5321 §3.1 allows 421 in place of 220).
            await self.push(self._refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    # -- limits on what a session may hold --------------------------------

    def data_received(self, data: bytes) -> None:
        if self.in_data:
            # Idle means no bytes, not "DATA takes long": aiosmtpd resets its
            # timer per command only, which cut off a slow upload idle_timeout
            # after the DATA command (transaction_timeout bounds the total).
            self._reset_timeout()
        super().data_received(data)

    def _set_post_data_state(self) -> None:
        self._stop_transaction_timer()
        super()._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd: unannotated

    def _stop_transaction_timer(self) -> None:
        timer = getattr(self, "_txn_timer", None)   # (None before __init__ ran)
        if timer is not None:
            timer.cancel()
            self._txn_timer = None

    def _transaction_expired(self) -> None:
        self._txn_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._gate is not None:
            self._gate.limit_hit(self, "transaction_timeout")
        self.close_for_shutdown(replies.TRANSACTION_TIMEOUT)

    async def _junk_command(self) -> bool:
        """Count a command that moves no mail; True when the session is over
        its budget (421 sent, closing). Any valid command resets aiosmtpd's
        idle timer, so without this a NOOP every few minutes held a session
        forever (Postfix: smtpd_junk_command_limit)."""
        self._junk += 1
        if not self._junk_limit or self._junk <= self._junk_limit:
            return False
        if self._gate is not None:
            self._gate.limit_hit(self, "junk_commands")
        await self.push(replies.TOO_MANY_JUNK)
        if self.transport is not None:
            self.transport.close()
        return True

    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_VRFY(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk_command():
            await super().smtp_HELP(arg)

    # -- state ------------------------------------------------------------

    def _create_session(self) -> Session:
        return SubmissionSession(self.loop)

    def _create_envelope(self) -> Envelope:
        return SubmissionEnvelope()

    def current_session(self) -> SubmissionSession:
        """The session, typed (a method: aiosmtpd inspects every attribute
        of the instance before it is connected)."""
        assert isinstance(self.session, SubmissionSession)
        return self.session

    @property
    def tls_active(self) -> bool:
        if self._tls_protocol is not None:
            return True
        t = self.transport
        return self.implicit_tls or (t is not None and t.get_extra_info("ssl_object") is not None)

    @property
    def client_ip(self) -> str:
        # aiosmtpd annotates `peer` as str, but it holds the transport's
        # peername: a tuple (host, port, ...) for TCP.
        peer: object = self.session.peer if self.session is not None else None
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return str(peer or "")

    def close_for_shutdown(self, reply: Reply) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            try:
                cast(asyncio.WriteTransport, t).write(str(reply).encode() + b"\r\n")
            finally:
                t.close()

    # -- replies ----------------------------------------------------------

    async def push(self, status: str | bytes | Reply) -> None:
        if isinstance(status, bytes):
            await super().push(status)
        elif isinstance(status, Reply):
            await super().push(str(status))
        elif self._raw_250 and status.startswith("250"):
            await super().push(status)
        else:
            await super().push(replies.with_esc(status))

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._junk_command():
            return
        self._raw_250 = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_250 = False

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._junk_command():
            return
        self._raw_250 = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_250 = False

    # -- who may send -------------------------------------------------------

    async def check_auth_needed(self, caller_method: str) -> bool:
        if caller_method not in ("MAIL", "RCPT", "DATA", "VRFY"):
            return False
        if self.event_handler.may_transact(self, self.current_session()):
            return False
        await self.push(replies.AUTH_REQUIRED)
        return True

    # -- MAIL / RCPT: name the address aiosmtpd could not parse ------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _SIMPLE_PATH.match(arg) if arg else None
        if m is None:
            return super()._getaddr(arg)
        rest = arg[m.end():].lstrip(" \t")      # as the header parser eats CFWS…
        if rest.startswith("("):
            return super()._getaddr(arg)       # …including comments: leave those to it
        addr = m.group(1)
        if self.local_part_limit and addr.index("@") > self.local_part_limit:
            return None, None
        return addr, rest

    def _unparsable(self, arg: str | None, keyword: str) -> str | None:
        if arg is None:
            return None
        rest = self._strip_command_keyword(keyword, arg)
        if rest is None:
            return None
        address, _ = self._getaddr(rest)
        return rest.split(" ", 1)[0] if address is None else None

    async def smtp_MAIL(self, arg: str | None) -> None:
        refusal = getattr(self._gate, "refusal", None)   # a draining node: 421, then closed
        if refusal is not None and (reply := refusal()) is not None:
            self.close_for_shutdown(reply)
            return
        arg, requiretls = take_requiretls(arg)
        if requiretls and not (self.tls_active
                               and getattr(self.event_handler, "offers_requiretls", False)):
            # RFC 8689 §4.1: only where we offered it, which is after STARTTLS.
            await self.push("530 5.7.10 REQUIRETLS needs a TLS session (STARTTLS first)"
                            if not self.tls_active else
                            "555 5.5.4 MAIL FROM parameter REQUIRETLS not supported here")
            return
        bad = self._unparsable(arg, "FROM:")
        session = self.current_session()
        if (bad is not None and session.host_name
                and self.event_handler.may_transact(self, session)):
            await self.push(replies.bad_sender(bad))
            return
        await super().smtp_MAIL(arg)
        if requiretls and isinstance(self.envelope, SubmissionEnvelope) \
                and self.envelope.mail_from:
            self.envelope.requiretls = True
        if (self.envelope is not None and self.envelope.mail_from and self._txn_timer is None
                and self._transaction_timeout):
            self._txn_timer = self.loop.call_later(self._transaction_timeout,
                                                   self._transaction_expired)

    async def smtp_RCPT(self, arg: str | None) -> None:
        bad = self._unparsable(arg, "TO:")
        session = self.current_session()
        if (bad is not None and session.host_name and self.envelope is not None
                and self.envelope.mail_from and self.event_handler.may_transact(self, session)):
            await self.push(replies.bad_recipient(bad))
            return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await self._data(arg)
        except Exception:
            # The transaction is over whatever happened; without this the
            # next MAIL would get "503 nested MAIL command".
            self._set_post_data_state()
            raise
        finally:
            self.in_data = False

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA with data.read_data's block reader instead of one
        await per line (same results: dot-unstuffing, "500 Line too long"
        over 1000 bytes, "552" over the size limit)."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = DataBody(self.spill_dir)
        try:
            status = await self._receive(body)
        finally:
            body.discard()               # the spill file is gone with the transaction
        self._set_post_data_state()
        status = "250 OK" if status is MISSING else status
        result = result_of(str(status))
        if result == "accepted":
            self._junk = 0
        self.observer.message_received(self.listener, result)
        await self.push(status)

    async def _receive(self, body: DataBody) -> Any:
        """Read the data into `body` and hand it to the handler's DATA hook;
        its reply (or the refusal of an oversized or overlong message)."""
        assert self._reader is not None and self.envelope is not None
        try:
            fits = await read_data(self._reader, body, self.data_size_limit or 0)
        except asyncio.CancelledError:
            if self._writer is not None:
                self._writer.close()
            raise
        if fits:
            body.finish()
        if not fits or body.line_too_long:
            return ("552 Error: Too much mail data" if not fits
                    else "500 Line too long (see RFC5321 4.5.3.1.6)")
        env = self.envelope
        env.content = env.original_content = body.head
        env.spill = body.spill        # the bytes past the head (large messages)
        env.size = body.size
        env.hygiene = body.refusal    # hygiene.check_data of the whole content
        env.body_ascii, env.body_dots = body.ascii, body.dot_lines
        try:
            return await self._call_handler_hook("DATA")
        except Exception:
            # aiosmtpd answers it with handle_exception's 451 4.3.0.
            self.observer.message_received(self.listener, "tempfail")
            raise

    # -- AUTH mechanisms: parsed in sasl.py, decided in the handler ---------

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        return await sasl.challenge(self, challenge, encode_to_b64)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await sasl.plain(self, args)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await sasl.login(self, args)
