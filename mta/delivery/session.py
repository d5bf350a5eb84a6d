"""One open SMTP connection: MAIL/RCPT/DATA transactions over aiosmtplib.

One job: send one message per transaction over a connected, greeted
aiosmtplib client and settle each recipient by what the remote answered;
raise when the connection itself (not a recipient) is the problem. Opening
connections, choosing hosts and judging the destination is the transport's
(mta.delivery.client); the outcome bookkeeping is mta.delivery.settlement's.

Public API:
    Session(smtp, peer, command_timeout)  await .transact(msg, settlement),
                                          await .quit(), .close(), .uses
    smtp_path(address) -> "<address>"     as aiosmtplib's quote_address

How a transaction goes, by what the peer's EHLO offers:
    PIPELINING (RFC 2920)   MAIL, every RCPT and DATA in one write, the replies
                            read in order (mta.delivery.pipeline); the body
                            only after DATA's 354. One round trip for the
                            envelope instead of 2 + recipients.
    CHUNKING (RFC 3030)     the body as BDAT chunks, as stored, no dot-stuffing
                            (mta.delivery.chunking); with PIPELINING a body
                            held in memory (under core.spill.HEAD_BYTES) rides
                            in the envelope's write: one round trip in all.
    neither                 one command, one reply (aiosmtplib's execute_command).

Invariants:
  - A transaction settles a recipient at most once (the first outcome
    wins) and leaves unsettled only what a raised Lost/Throttled interrupts;
    the transport settles those. The outcomes are the same whichever way the
    commands went: a refused MAIL settles every recipient by its reply (the
    503s that follow it are read and dropped), each RCPT reply settles its
    recipient, the reply that ends the data settles the accepted ones; no
    recipient accepted means no body over DATA (BDAT in the envelope's write
    has sent it: the price of its round trip).
  - A 421 anywhere raises Throttled; a connection that breaks, times out or
    answers out of step (more replies than commands) raises Lost.
  - Every command line is checked for control characters before anything is
    written (no address can smuggle a command into a pipelined group).
  - SIZE (RFC 1870): a message larger than the peer's advertised limit
    bounces here with 552 5.3.4 and nothing is sent; otherwise MAIL FROM
    carries SIZE=<bytes> whenever SIZE is advertised.
  - A non-ASCII address needs SMTPUTF8: without it, the recipients it
    concerns bounce with 553 5.6.7.
  - After a refused transaction the session is RSET before reuse; a session
    that cannot RSET is Lost.
"""

from __future__ import annotations

import asyncio
import re

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponse, SMTPResponseException
from aiosmtplib.email import quote_address

from mta.core.address import PLAIN_MAILBOX
from mta.core.errors import StorageError
from mta.core.reply import Reply
from mta.delivery.chunking import verdict, write_chunks
from mta.delivery.data import body_is_ascii, body_size, send_body, send_data
from mta.delivery.pipeline import Pipeline, ReplyError, command, pipelined
from mta.delivery.settlement import (BOUNCED, Lost, Peer, Settlement, Throttled, remote_reply,
                                     reply_of)
from mta.delivery.transport import OutboundMessage

__all__ = ["Session", "smtp_path"]

Args = tuple[bytes, ...]        # one command: verb and arguments

# A plain ASCII mailbox (core.address): nothing to parse or quote, it goes on
# the wire as <it>. Anything else goes through aiosmtplib's quote_address
# (email.utils.parseaddr, ~40 µs), which also refuses what cannot be put on
# a command line.
_PLAIN_MAILBOX = re.compile(PLAIN_MAILBOX)


def smtp_path(address: str) -> str:
    """`<address>` for MAIL FROM / RCPT TO: the same as aiosmtplib's
    quote_address (tested), without its parser for plain mailboxes."""
    if _PLAIN_MAILBOX.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def _size_limit(smtp: aiosmtplib.SMTP) -> int:
    """The peer's advertised SIZE limit; 0 when none (absent, "SIZE", "SIZE 0"
    or not a number: RFC 1870 §4, 0 = no fixed maximum)."""
    param = smtp.esmtp_extensions.get("size", "").strip()
    return int(param) if param.isdigit() else 0


def _needs_utf8(address: str) -> bool:
    return not address.isascii()


class Session:
    """One open SMTP connection after EHLO (and STARTTLS when it worked)."""

    def __init__(self, smtp: aiosmtplib.SMTP, peer: Peer, command_timeout: float):
        self.smtp = smtp
        self.peer = peer
        self.timeout = command_timeout
        self.uses = 0            # transactions sent over this connection
        self.expiry: asyncio.TimerHandle | None = None   # set while parked in the cache

    async def transact(self, msg: OutboundMessage, settlement: Settlement) -> None:
        """One MAIL/RCPT/DATA (or BDAT) transaction; settles what the remote
        answered.

        Raises Throttled on a 421 and Lost when the connection breaks; the
        caller settles whatever is still open.
        """
        if not settlement.unsettled(msg):
            return
        self.uses += 1
        envelope = await self._envelope(msg, settlement)
        if envelope is None:
            return
        commands = self._commands(msg, *envelope, settlement)
        if commands is None:
            return
        if self.smtp.supports_extension("pipelining"):
            await self._pipelined(msg, *commands, settlement)
        else:
            await self._lockstep(msg, *commands, settlement)

    async def _envelope(self, msg: OutboundMessage, settlement: Settlement
                        ) -> tuple[list[str], str] | None:
        """(MAIL FROM parameters, address encoding), or None when nothing is
        left to send: too big for the peer, or every recipient needs an
        SMTPUTF8 the peer lacks (those are settled here)."""
        smtp, peer = self.smtp, self.peer
        options: list[str] = []
        if msg.requiretls:
            # RFC 8689 §5: only over TLS a policy verified (MTA-STS, DANE or
            # the operator's verify), to a server that offers REQUIRETLS.
            if not (peer.verified and smtp.supports_extension("requiretls")):
                why = ("does not offer REQUIRETLS" if peer.verified else
                       f"was reached without verified TLS (policy {peer.policy or 'none'})")
                settlement.settle_rest([msg], BOUNCED, Reply(
                    550, "5.7.30", f"REQUIRETLS support required: {peer.host}[{peer.ip}] "
                                   f"{why}; not sent"), peer)
                return None
            options.append("REQUIRETLS")
        size = body_size(msg.body)
        if smtp.supports_extension("size"):
            limit = _size_limit(smtp)
            if limit and size > limit:
                # RFC 1870 §6: the peer would refuse it with 552 (often only
                # after the whole DATA went over the wire): refuse it here.
                too_big = Reply(552, "5.3.4", f"message size {size} exceeds the size "
                                              f"limit {limit} of {peer.host}[{peer.ip}] (its "
                                              f"EHLO SIZE); not sent")
                settlement.settle_rest([msg], BOUNCED, too_big, peer)
                return None
            options.append(f"SIZE={size}")
        if smtp.supports_extension("8bitmime") and not (
                msg.ascii if msg.ascii is not None else await body_is_ascii(msg.body)):
            options.append("BODY=8BITMIME")
        rcpts = settlement.unsettled(msg)
        if not (_needs_utf8(msg.sender) or any(_needs_utf8(a) for _, a in rcpts)):
            return options, "ascii"
        if smtp.supports_extension("smtputf8"):
            return options + ["SMTPUTF8"], "utf-8"
        no_utf8 = Reply(553, "5.6.7", f"{peer.host}[{peer.ip}] does not support "
                                      f"SMTPUTF8, needed for a non-ASCII address")
        for idx, addr in rcpts:
            if _needs_utf8(msg.sender) or _needs_utf8(addr):
                settlement.settle(msg, idx, BOUNCED, no_utf8, peer)
        return (options, "ascii") if settlement.unsettled(msg) else None

    def _commands(self, msg: OutboundMessage, options: list[str], encoding: str,
                  settlement: Settlement) -> tuple[Args, list[tuple[int, Args]]] | None:
        """MAIL FROM and one RCPT TO per open recipient, each checked (an
        address that cannot go on a command line bounces here: 553); None
        when nothing is left to send."""
        try:
            # aiosmtplib's mail()/rcpt() minus their address parser (smtp_path)
            mail = (b"MAIL", b"FROM:" + smtp_path(msg.sender).encode(encoding),
                    *(o.encode("ascii") for o in options))
            command(*mail)
        except ValueError as exc:
            bad = Reply(553, "5.1.7", f"sender address cannot be sent over SMTP: {exc}")
            settlement.settle_rest([msg], BOUNCED, bad, self.peer)
            return None
        rcpts: list[tuple[int, Args]] = []
        for idx, addr in settlement.unsettled(msg):
            try:
                rcpt = (b"RCPT", b"TO:" + smtp_path(addr).encode(encoding))
                command(*rcpt)
                rcpts.append((idx, rcpt))
            except ValueError as exc:
                settlement.settle(msg, idx, BOUNCED, Reply(553, "5.1.3", f"recipient address "
                                  f"cannot be sent over SMTP: {exc}"), self.peer)
        return (mail, rcpts) if rcpts else None

    # ---- judging replies (the same whichever way the commands went) ------
    @staticmethod
    def _judged(resp: SMTPResponse) -> Reply:
        reply = reply_of(resp.code, resp.message)
        if resp.code == 421:
            raise Throttled(reply)
        return reply

    def _mail_reply(self, resp: SMTPResponse, msg: OutboundMessage, rcpts: list[int],
                    settlement: Settlement) -> bool:
        """True when MAIL was accepted; else its reply settles every recipient."""
        reply = self._judged(resp)
        if not reply.is_success:
            for idx in rcpts:
                settlement.settle_by_reply(msg, idx, reply, self.peer)
        return reply.is_success

    def _rcpt_reply(self, resp: SMTPResponse, msg: OutboundMessage, idx: int,
                    settlement: Settlement) -> bool:
        """True when the recipient was accepted (any 2xx: aiosmtplib only
        likes 250/251, a 252 is as good); else its reply settles it."""
        reply = self._judged(resp)
        if not reply.is_success:
            settlement.settle_by_reply(msg, idx, reply, self.peer)
        return reply.is_success

    async def _settle_data(self, resp: SMTPResponse, msg: OutboundMessage, accepted: list[int],
                           settlement: Settlement) -> None:
        """The reply that ends the data settles every accepted recipient."""
        reply = self._judged(resp)
        for idx in accepted:
            settlement.settle_by_reply(msg, idx, reply, self.peer)
        if not reply.is_success:
            await self._rset()

    # ---- one command, one reply (no PIPELINING) --------------------------
    async def _lockstep(self, msg: OutboundMessage, mail: Args, rcpts: list[tuple[int, Args]],
                        settlement: Settlement) -> None:
        if not self._mail_reply(await self._command("MAIL FROM", mail), msg,
                                [idx for idx, _ in rcpts], settlement):
            await self._rset()
            return
        accepted = [idx for idx, rcpt in rcpts if self._rcpt_reply(
            await self._command("RCPT TO", rcpt), msg, idx, settlement)]
        if not accepted:
            await self._rset()
            return
        if self.smtp.supports_extension("chunking"):
            try:
                with pipelined(self.smtp) as group:
                    final = await self._bdat(group, msg, each=True)
            except (SMTPException, OSError) as exc:
                raise Lost("BDAT", exc) from None
        else:
            final = await self._data(msg)
        await self._settle_data(final, msg, accepted, settlement)

    async def _command(self, stage: str, args: Args) -> SMTPResponse:
        try:
            return await self.smtp.execute_command(*args, timeout=self.timeout)
        except SMTPResponseException as exc:       # e.g. an unparsable reply (-1: 451)
            return SMTPResponse(exc.code, exc.message)
        except (SMTPException, OSError) as exc:
            raise Lost(stage, exc) from None

    async def _data(self, msg: OutboundMessage) -> SMTPResponse:
        try:
            # send_data (delivery/data.py) guarantees the final CRLF,
            # dot-stuffs every line starting with "." (tested in test_client)
            # and streams a large body in pieces.
            return await send_data(self.smtp, msg.body, self.timeout,
                                   stuffing=msg.dot_lines is not False)
        except SMTPResponseException as exc:       # DATA refused before 354
            return SMTPResponse(exc.code, exc.message)
        except (SMTPException, OSError, StorageError) as exc:
            # StorageError: the stored body failed its check mid-way; the
            # connection is dropped before the final dot, nothing was accepted.
            raise Lost("DATA", exc) from None

    async def _bdat(self, group: Pipeline, msg: OutboundMessage, *, each: bool) -> SMTPResponse:
        """The body as BDAT chunks over `group`; the reply that settles it."""
        try:
            written, final = await write_chunks(group, msg.body, self.timeout, each=each)
            final = final or await verdict(group, written, self.timeout)
        except (SMTPException, OSError, StorageError) as exc:
            raise Lost("BDAT", exc) from None   # StorageError: no LAST went out
        self._in_step(group, final, "BDAT")
        return final

    # ---- PIPELINING: the envelope in one write ---------------------------
    async def _pipelined(self, msg: OutboundMessage, mail: Args, rcpts: list[tuple[int, Args]],
                         settlement: Settlement) -> None:
        chunking = self.smtp.supports_extension("chunking")
        # A body held in memory goes with the envelope over BDAT (RFC 3030
        # §4.2): one round trip, and if every recipient is refused the peer
        # reads and drops it. A body read in pieces waits for the replies.
        in_group = chunking and isinstance(msg.body, (bytes, bytearray))
        envelope = b"".join(command(*args) for args in (mail, *(r for _, r in rcpts)))
        try:
            with pipelined(self.smtp) as group:
                written = 0
                if in_group:
                    written, _ = await write_chunks(group, msg.body, self.timeout, each=False,
                                                    lead=envelope)
                else:
                    group.write(envelope + (b"" if chunking else b"DATA\r\n"))
                accepted = await self._replies(group, msg, rcpts, settlement)
                if chunking:
                    final = (await self._bdat(group, msg, each=False) if accepted and not written
                             else await self._verdict(group, written))
                else:
                    final = await self._data_reply(group, bool(accepted))
        except (SMTPException, OSError) as exc:    # writing the group
            raise Lost("MAIL FROM", exc) from None
        if not accepted:
            if final is not None:
                self._judged(final)                # a 421 still throttles
            await self._rset()
            return
        assert final is not None
        if final.code == 354:
            final = await self._body(msg)
        await self._settle_data(final, msg, accepted, settlement)

    async def _replies(self, group: Pipeline, msg: OutboundMessage,
                       rcpts: list[tuple[int, Args]], settlement: Settlement) -> list[int]:
        """The envelope's replies, in order: the recipients accepted. After a
        refused MAIL every RCPT reply is still read (503 …) and dropped; a
        421 among them throttles all the same."""
        mail_ok = self._mail_reply(await self._reply(group, "MAIL FROM"), msg,
                                   [idx for idx, _ in rcpts], settlement)
        accepted: list[int] = []
        for idx, _ in rcpts:
            resp = await self._reply(group, "RCPT TO")
            if not mail_ok:
                self._judged(resp)
            elif self._rcpt_reply(resp, msg, idx, settlement):
                accepted.append(idx)
        return accepted

    async def _data_reply(self, group: Pipeline, accepted: bool) -> SMTPResponse:
        """DATA's reply: 354 (the body follows once the group is over) or a
        refusal (503/554 when no recipient was accepted). A peer that says
        354 to a transaction without recipients gets the empty message ended
        at once (RFC 2920 §3.1), and that reply is returned instead."""
        resp = await self._reply(group, "DATA")
        if resp.code == 354 and not accepted:
            group.write(b".\r\n")
            resp = await self._reply(group, "DATA")
        self._in_step(group, resp, "DATA")
        return resp

    async def _verdict(self, group: Pipeline, written: int) -> SMTPResponse | None:
        if not written:
            return None
        try:
            final = await verdict(group, written, self.timeout)
        except (SMTPException, OSError) as exc:
            raise Lost("BDAT", exc) from None
        self._in_step(group, final, "BDAT")
        return final

    async def _reply(self, group: Pipeline, stage: str) -> SMTPResponse:
        try:
            return await group.reply(self.timeout)
        except (SMTPException, OSError) as exc:
            raise Lost(stage, exc) from None

    @staticmethod
    def _in_step(group: Pipeline, last: SMTPResponse, stage: str) -> None:
        """After the last reply a group expects, nothing may be left unread
        (unless it was a 421: the peer is leaving anyway)."""
        if group.pending and last.code != 421:
            raise Lost(stage, ReplyError("the peer sent more replies than commands"))

    async def _body(self, msg: OutboundMessage) -> SMTPResponse:
        """The body after a pipelined DATA's 354, then its reply."""
        protocol = self.smtp.protocol
        try:
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            return await send_body(protocol, msg.body, self.timeout,
                                   stuffing=msg.dot_lines is not False)
        except (SMTPException, OSError, StorageError) as exc:
            raise Lost("DATA", exc) from None

    async def _rset(self) -> None:
        try:
            await self.smtp.rset(timeout=self.timeout)
        except SMTPResponseException as exc:
            if exc.code == 421:
                raise Throttled(remote_reply(exc)) from None
            raise Lost("RSET", exc) from None  # a session that cannot reset is not reusable
        except (SMTPException, OSError) as exc:
            raise Lost("RSET", exc) from None

    async def quit(self) -> None:
        try:
            await self.smtp.quit(timeout=self.timeout)
        except (SMTPException, OSError):
            pass  # everything is settled already; a rude goodbye changes nothing
        finally:
            self.close()

    def close(self) -> None:
        self.smtp.close()
