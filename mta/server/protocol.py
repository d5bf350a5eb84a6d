"""The aiosmtpd protocol subclass: wire-level fixes, no policy.

API
    SubmissionSMTP(handler, *, implicit_tls: bool, registry=None,
                   observer=Observer(), listener="", **aiosmtpd_kwargs)
        .in_data          True while a DATA command is being received/handled
        .tls_active       the session is inside TLS (STARTTLS or implicit)
        .client_ip        peer address as a string
        .close_for_shutdown(reply)
        registry          optional set the instance is in while connected
        observer          told session_opened/closed(listener) once per
                          connection (STARTTLS calls connection_made twice:
                          counted once) and message_received(listener, result)
                          for every final DATA reply (core.observe)

What it changes in aiosmtpd's `SMTP` (and why):
  * `push` gives every reply an enhanced status code (replies.with_esc);
    aiosmtpd's own texts mostly lack one. EHLO/HELO lines, the greeting,
    334 challenges and 354 are exempt (RFC 2034).
  * AUTH PLAIN / LOGIN are parsed here but *decided* by the handler
    (`handler.authenticate`, async: the scrypt check runs in a thread and
    the brute-force delay is awaited). aiosmtpd's own authenticator hook is
    synchronous, so it cannot be used. An aborted/garbled exchange gets one
    reply, not two (aiosmtpd 1.4 sends a 501 and then a 535).
  * `check_auth_needed` asks the handler (`may_transact`): an authenticated
    session or a trusted network. aiosmtpd's own `auth_required` flag is off,
    because it knows nothing of trusted networks.
  * MAIL/RCPT with an address aiosmtpd cannot parse get 501 5.1.7 / 5.1.3
    naming the address, instead of aiosmtpd's bare "553 malformed address".
  * A failed DATA (exception) resets the transaction, so the next MAIL works.
  * Each instance owns its `command_size_limits` (aiosmtpd keeps it on the
    class, so EHLO in one session changed limits in all of them).
  * `_getaddr` answers the common `<dot-atom@dot-atom>` form with one regex
    and gives every other form to aiosmtpd's parser. aiosmtpd's builds a
    typing.Protocol class and runs the email header parser on every MAIL and
    RCPT (~60 µs, 4 times per message); the result is the same (tested
    against aiosmtpd's own on a table of addresses).

Invariants: nothing here accepts mail or decides who may send; the handler
(session.py) does. Implicit-TLS sessions report `tls_active` from the first
byte.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import re
import tempfile
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax

from mta.core import Observer, Reply
from mta.core.address import PLAIN_MAILBOX
from mta.core.spill import HEAD_BYTES, SpillFile
from mta.server.hygiene import check_data
from mta.core.observe import result_of
from mta.server import replies

__all__ = ["SubmissionSMTP", "SubmissionSession"]

# <dot-atom@dot-atom> (ASCII), then anything (ESMTP parameters): the form
# nearly every client sends; everything else goes to aiosmtpd's parser.
# RFC 4954 §4: AUTH exchange lines of up to 12288 octets must be accepted.
AUTH_LINE_LIMIT = 12288
AUTH_DRAIN_LIMIT = 64 * 1024   # past this without a line end: close, do not read on

_SIMPLE_PATH = re.compile(rf"[ \t]*<((?:{PLAIN_MAILBOX}))>")


class _DataBody:
    """DATA as it arrives → `head` (bytes in memory) + `spill` (a SpillFile
    with the rest, only for messages over HEAD_BYTES), dot-unstuffed, with
    the hygiene check (`refusal`) and the 1000-octet line check
    (`line_too_long`) done piece by piece, so memory stays about HEAD_BYTES
    per session whatever the message size (issue 10 item 3).

    Pieces are cut just before a CRLF: a "<CRLF>." to unstuff, a CRLF pair
    for the hygiene counts and a line's length never straddle two pieces
    (the piece after a cut starts with that CRLF). A message that fits in
    one piece is processed exactly as before: one copy, one replace."""

    def __init__(self, spill_dir: str | None):
        self.spill_dir = spill_dir or tempfile.gettempdir()
        self.buf = bytearray()
        self.head = b""
        self.spill: SpillFile | None = None
        self.size = 0                   # bytes of content (unstuffed)
        self.refusal: Reply | None = None
        self.line_too_long = False
        self._started = False           # the first piece is out (leading dot handled)
        self._line = 0                  # length of the unfinished last line so far

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) >= HEAD_BYTES:
            # (not inside the last 3 bytes: they may be the terminating ".\r\n")
            cut = self.buf.rfind(b"\r\n", 0, len(self.buf) - 3)
            if cut <= 0:                # a megabyte without a line end
                self.line_too_long = True
                self.buf.clear()
                return
            piece = bytes(memoryview(self.buf)[:cut])
            del self.buf[:cut]
            self._piece(piece, final=False)

    def finish(self) -> None:
        del self.buf[-3:]               # the terminating ".\r\n"
        piece = bytes(self.buf)
        self.buf = bytearray()
        self._piece(piece, final=True)

    def _piece(self, piece: bytes, *, final: bool) -> None:
        if self.line_too_long:
            return
        if len(piece) + self._line > 1001:
            lines = piece.split(b"\n")
            first = self._line + len(lines[0])
            if len(lines) == 1:
                self._line = first
            else:
                self._line = len(lines[-1])
                first = max(first, max(map(len, lines[1:])))
            if first > 1000:
                self.line_too_long = True
                self.discard()
                return
        else:
            nl = piece.rfind(b"\n")
            self._line = self._line + len(piece) if nl < 0 else len(piece) - nl - 1
        # RFC 5321 4.5.2: remove the leading dot of every line that has one.
        if not self._started:
            self._started = True
            if piece.startswith(b"."):
                piece = piece[1:]
            # past HEAD_BYTES every header operation works on the head alone:
            # its header section must end inside it
            if not final and not (piece.startswith(b"\r\n") or b"\r\n\r\n" in piece):
                self.refusal = replies.HEADER_TOO_BIG
        piece = piece.replace(b"\r\n.", b"\r\n")
        if self.refusal is None:
            self.refusal = check_data(piece)
        self.size += len(piece)
        if not self.head:
            self.head = piece
        else:
            if self.spill is None:
                self.spill = SpillFile(self.spill_dir)
            self.spill.write(piece)

    def discard(self) -> None:
        self.buf.clear()
        if self.spill is not None:
            self.spill.close()
            self.spill = None


class SubmissionSession(Session):
    """aiosmtpd's Session plus what our policy needs to know."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.credential: str | None = None   # AUTH identity once authenticated
        self.trusted: bool | None = None     # cached trusted-network decision


class SubmissionSMTP(SMTP):
    def __init__(self, handler: Any, *, implicit_tls: bool = False,
                 gate: Any = None, observer: Observer = Observer(), listener: str = "",
                 junk_limit: int = 0, transaction_timeout: float = 0.0,
                 spill_dir: str | None = None, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.spill_dir = spill_dir
        self.observer, self.listener = observer, listener
        self._counted_open = False
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        self.implicit_tls = implicit_tls
        self.in_data = False
        self._raw_250 = False
        self._auth_mechanism = ""
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
        if self._admitted:
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
        super()._set_post_data_state()

    def _stop_transaction_timer(self) -> None:
        if getattr(self, "_txn_timer", None) is not None:
            self._txn_timer.cancel()
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

    @property
    def tls_active(self) -> bool:
        if self._tls_protocol is not None:
            return True
        t = self.transport
        return self.implicit_tls or (t is not None and t.get_extra_info("ssl_object") is not None)

    @property
    def client_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return str(peer or "")

    def close_for_shutdown(self, reply: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(str(reply).encode() + b"\r\n")
            finally:
                self.transport.close()

    # -- replies ----------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, Reply):
            status = str(status)
        elif isinstance(status, str) and not (self._raw_250 and status.startswith("250")):
            status = replies.with_esc(status)
        await super().push(status)

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
        if self.event_handler.may_transact(self, self.session):
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
        bad = self._unparsable(arg, "FROM:")
        if (bad is not None and self.session.host_name
                and self.event_handler.may_transact(self, self.session)):
            await self.push(replies.bad_sender(bad))
            return
        await super().smtp_MAIL(arg)
        if (self.envelope is not None and self.envelope.mail_from and self._txn_timer is None
                and self._transaction_timeout):
            self._txn_timer = self.loop.call_later(self._transaction_timeout,
                                                   self._transaction_expired)

    async def smtp_RCPT(self, arg: str | None) -> None:
        bad = self._unparsable(arg, "TO:")
        if (bad is not None and self.session.host_name and self.envelope.mail_from
                and self.event_handler.may_transact(self, self.session)):
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
        """aiosmtpd's DATA with a block reader instead of one await per line.

        aiosmtpd reads the data stream line by line (`readuntil(CRLF)`), a
        third of the daemon's CPU at 20 KB messages. This reads up to each
        ".<CRLF>" and accepts it as the end only when it starts a line (the
        data's start, or right after a CRLF) — so it never reads past the
        terminator (pipelined commands stay in the reader) and a bare LF
        before "." does not end the data (SMTP smuggling; the handler then
        rejects the bare LF). Same results as aiosmtpd's loop: dot-unstuffing,
        "500 Line too long" over 1000 bytes, "552" over the size limit.
        """
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
        limit = self.data_size_limit
        body = _DataBody(self.spill_dir)
        size = 0
        too_much = False
        reader = self._reader
        tail = b""  # the last two bytes of the stream read so far
        try:
            while True:
                try:
                    chunk = await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as e:
                    chunk = await reader.read(e.consumed)
                    ended = False
                except asyncio.CancelledError:
                    self._writer.close()
                    raise
                else:
                    # The "." ends the data only at the start of a line.
                    before = chunk[-5:-3] if len(chunk) >= 5 else (tail + chunk[:-3])[-2:]
                    ended = (size == 0 and len(chunk) == 3) or before == b"\r\n"
                size += len(chunk)
                tail = chunk[-2:] if len(chunk) >= 2 else (tail + chunk)[-2:]
                if limit and size > limit + 3:
                    too_much = True
                    body.discard()   # keep draining, stop storing
                elif not too_much:
                    body.feed(chunk)
                if ended:
                    break
            if too_much:
                self._set_post_data_state()
                self.observer.message_received(self.listener, "rejected")
                await self.push("552 Error: Too much mail data")
                return
            body.finish()
            if body.line_too_long:
                self._set_post_data_state()
                self.observer.message_received(self.listener, "rejected")
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
                return
            env = self.envelope
            env.content = env.original_content = body.head
            env.spill = body.spill        # the bytes past the head (large messages)
            env.size = body.size
            env.hygiene = body.refusal    # hygiene.check_data of the whole content
            try:
                status = await self._call_handler_hook("DATA")
            except Exception:
                # aiosmtpd answers it with handle_exception's 451 4.3.0.
                self.observer.message_received(self.listener, "tempfail")
                raise
        finally:
            body.discard()               # the spill file is gone with the transaction
        self._set_post_data_state()
        status = "250 OK" if status is MISSING else status
        result = result_of(str(status))
        if result == "accepted":
            self._junk = 0
        self.observer.message_received(self.listener, result)
        await self.push(status)

    # -- AUTH mechanisms: parse here, decide in the handler ----------------

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        """aiosmtpd's challenge with a bounded answer line: an answer over
        AUTH_LINE_LIMIT bytes gets "500 5.5.6" (RFC 4954 §4), counts as a
        failed AUTH and is drained to its end, so the next line is read as a
        command again (aiosmtpd's readline raised, answered 451 with a
        traceback, and read the rest of the line as commands)."""
        if isinstance(challenge, str):
            challenge = challenge.encode()
        await self.push(b"334 " + (base64.b64encode(challenge) if encode_to_b64 else challenge))
        line = await self._auth_line()
        if line is None:
            return MISSING
        blob = line.strip()
        if blob == b"*":   # RFC 4954: the client cancels
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _auth_line(self) -> bytes | None:
        """One AUTH answer line, or None when it was refused (replied already)."""
        buf = bytearray()
        drained = 0
        while True:
            try:
                part = await self._reader.readuntil(b"\n")
                ended = True
            except asyncio.LimitOverrunError as e:
                part = await self._reader.read(e.consumed)
                ended = False
            except asyncio.IncompleteReadError:
                return None                      # the client went away
            if drained or len(buf) + len(part) > AUTH_LINE_LIMIT:
                drained += len(part)             # too long: keep reading, stop storing
                buf.clear()
                if not ended and drained > AUTH_DRAIN_LIMIT:
                    break
            else:
                buf += part
            if ended:
                break
        if not drained:
            return bytes(buf)
        await self.event_handler.refuse_auth(
            self, self.session, self._auth_mechanism, "line_too_long", replies.AUTH_LINE_TOO_LONG)
        if not ended and self.transport is not None:
            self.transport.close()               # no end in sight: do not read on
        return None

    async def _response(self, challenge: bytes) -> bytes | None:
        """Send a 334 challenge and return the decoded answer (None: replied already)."""
        blob = await self.challenge_auth(challenge, encode_to_b64=True)
        return None if blob is MISSING else blob

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        self._auth_mechanism = "PLAIN"
        if len(args) == 1:
            blob = await self._response(b"")
            if blob is None:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await self.push(replies.AUTH_BAD_PLAIN)
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid != login:
            # RFC 4616: acting as another identity needs authorization we do
            # not grant; refusing beats silently ignoring it.
            return await self.event_handler.refuse_auth(self, self.session, "PLAIN", "authzid",
                                                        replies.AUTH_AUTHZID)
        return await self.event_handler.authenticate(self, self.session, "PLAIN", login, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        self._auth_mechanism = "LOGIN"
        if len(args) == 1:
            login = await self._response(b"Username:")
            if login is None:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push(replies.AUTH_BAD_BASE64)
                return AuthResult(success=False, handled=True)
        password = await self._response(b"Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self.event_handler.authenticate(self, self.session, "LOGIN", login, password)
