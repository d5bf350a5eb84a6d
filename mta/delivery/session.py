"""One open SMTP connection: MAIL/RCPT/DATA transactions over aiosmtplib.

One job: send one message per transaction over a connected, greeted
aiosmtplib client and settle each recipient by what the remote answered;
raise when the connection itself (not a recipient) is the problem. Opening
connections, choosing hosts and judging the destination is the transport's
(mta.delivery.client).

Public API:
    Peer(host, ip, tls)                   who answered, for outcomes and logs
    Settlement(messages)                  who has an outcome yet (no I/O)
    Session(smtp, peer, command_timeout)  await .transact(msg, settlement),
                                          await .quit(), .close(), .uses
    Lost(stage, cause)                    the connection broke during `stage`
    Throttled(reply)                      the remote said 421
    HandshakeFailed                       STARTTLS failed (retry in clear text)
    smtp_path(address) -> "<address>"     as aiosmtplib's quote_address
    describe(exc) -> str, remote_reply(exc) -> Reply

Invariants:
  - A transaction settles a recipient at most once (the first outcome
    wins) and leaves unsettled only what a raised Lost/Throttled interrupts;
    the transport settles those.
  - Remote replies are kept verbatim (`Reply.from_remote`); a reply code
    outside 200-599 (unparsable) counts as 451.
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
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (SMTPException, SMTPRecipientRefused, SMTPResponseException,
                        SMTPSenderRefused)
from aiosmtplib.email import quote_address

from mta.core.address import PLAIN_MAILBOX
from mta.core.errors import StorageError
from mta.core.outcome import RecipientFate, RecipientOutcome
from mta.core.reply import Reply
from mta.delivery.data import body_is_ascii, body_size, send_data
from mta.delivery.transport import OutboundMessage

__all__ = ["Peer", "Settlement", "Session", "Lost", "Throttled", "HandshakeFailed",
           "smtp_path", "describe", "remote_reply", "DELIVERED", "DEFERRED", "BOUNCED"]

DELIVERED, DEFERRED = RecipientFate.DELIVERED, RecipientFate.DEFERRED
BOUNCED = RecipientFate.BOUNCED

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


@dataclass(frozen=True)
class Peer:
    host: str = ""
    ip: str = ""
    tls: str = ""


class Settlement:
    """Who has an outcome yet. Pure bookkeeping, no I/O."""

    def __init__(self, messages: Sequence[OutboundMessage]):
        self.outcomes: dict[str, dict[int, RecipientOutcome]] = {m.queue_id: {} for m in messages}

    def settle(self, msg: OutboundMessage, idx: int, fate: RecipientFate, reply: Reply,
               peer: Peer) -> None:
        self.outcomes[msg.queue_id].setdefault(
            idx, RecipientOutcome(fate, reply, peer.host, peer.ip, peer.tls))

    def settle_by_reply(self, msg: OutboundMessage, idx: int, reply: Reply, peer: Peer) -> None:
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
                    reply: Reply, peer: Peer = Peer()) -> None:
        for msg in messages:
            for idx, _ in self.unsettled(msg):
                self.settle(msg, idx, fate, reply, peer)


def describe(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        return f"{exc.code} {' '.join(exc.message.split())}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = " ".join(str(exc).split())
    return text or exc.__class__.__name__


def remote_reply(exc: SMTPResponseException) -> Reply:
    code = exc.code if 200 <= exc.code <= 599 else 451  # -1: unparsable reply
    return Reply.from_remote(code, exc.message)


class Lost(Exception):
    """The connection broke or timed out; `stage` says during what."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        super().__init__(f"{stage}: {describe(cause)}")


class Throttled(Exception):
    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(str(reply))


class HandshakeFailed(Exception):
    pass


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
        """One MAIL/RCPT/DATA transaction; settles what the remote answered.

        Raises Throttled on a 421 and Lost when the connection breaks; the
        caller settles whatever is still open.
        """
        if not settlement.unsettled(msg):
            return
        self.uses += 1
        envelope = await self._envelope(msg, settlement)
        if envelope is None:
            return
        options, encoding = envelope
        rcpts = settlement.unsettled(msg)
        if not await self._mail(msg, options, encoding, rcpts, settlement):
            return
        accepted = await self._rcpts(msg, rcpts, encoding, settlement)
        if not accepted:
            await self._rset()
            return
        await self._data(msg, accepted, settlement)

    async def _envelope(self, msg: OutboundMessage, settlement: Settlement
                        ) -> tuple[list[str], str] | None:
        """(MAIL FROM parameters, address encoding), or None when nothing is
        left to send: too big for the peer, or every recipient needs an
        SMTPUTF8 the peer lacks (those are settled here)."""
        smtp, peer = self.smtp, self.peer
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
                settlement.settle_rest([msg], BOUNCED, too_big, peer)
                return None
            options.append(f"SIZE={size}")
        if smtp.supports_extension("8bitmime") and not await body_is_ascii(msg.body):
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

    async def _mail(self, msg: OutboundMessage, options: list[str], encoding: str,
                    rcpts: list[tuple[int, str]], settlement: Settlement) -> bool:
        """MAIL FROM; False when the sender was refused (recipients settled)."""
        try:
            # smtp.mail()/rcpt() minus their address parser (smtp_path)
            resp = await self.smtp.execute_command(
                b"MAIL", b"FROM:" + smtp_path(msg.sender).encode(encoding),
                *(o.encode("ascii") for o in options), timeout=self.timeout)
            if resp.code != 250:
                raise SMTPSenderRefused(resp.code, resp.message, msg.sender)
        except SMTPResponseException as exc:
            reply = remote_reply(exc)
            if exc.code == 421:
                raise Throttled(reply) from None
            if not reply.is_success:
                for idx, _ in rcpts:
                    settlement.settle_by_reply(msg, idx, reply, self.peer)
                await self._rset()
                return False
        except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
            bad = Reply(553, "5.1.7", f"sender address cannot be sent over SMTP: {exc}")
            settlement.settle_rest([msg], BOUNCED, bad, self.peer)
            return False
        except (SMTPException, OSError) as exc:
            raise Lost("MAIL FROM", exc) from None
        return True

    async def _rcpts(self, msg: OutboundMessage, rcpts: list[tuple[int, str]], encoding: str,
                     settlement: Settlement) -> list[int]:
        """RCPT TO for each recipient; the indexes the remote accepted."""
        accepted: list[int] = []
        for idx, addr in rcpts:
            try:
                resp = await self.smtp.execute_command(
                    b"RCPT", b"TO:" + smtp_path(addr).encode(encoding), timeout=self.timeout)
                if resp.code not in (250, 251):
                    raise SMTPRecipientRefused(resp.code, resp.message, addr)
                accepted.append(idx)
            except SMTPResponseException as exc:
                reply = remote_reply(exc)
                if exc.code == 421:
                    raise Throttled(reply) from None
                if reply.is_success:   # 252 and friends: aiosmtplib only likes 250/251
                    accepted.append(idx)
                else:
                    settlement.settle_by_reply(msg, idx, reply, self.peer)
            except ValueError as exc:
                settlement.settle(msg, idx, BOUNCED, Reply(553, "5.1.3", f"recipient address "
                                  f"cannot be sent over SMTP: {exc}"), self.peer)
            except (SMTPException, OSError) as exc:
                raise Lost("RCPT TO", exc) from None
        return accepted

    async def _data(self, msg: OutboundMessage, accepted: list[int],
                    settlement: Settlement) -> None:
        """DATA; its one reply settles every accepted recipient."""
        try:
            # send_data (delivery/data.py) guarantees CRLF line ends and the
            # final CRLF, dot-stuffs every line starting with "." (tested in
            # test_client) and streams a large body in pieces.
            response = await send_data(self.smtp, msg.body, self.timeout)
            reply = Reply.from_remote(response.code, response.message)
        except SMTPResponseException as exc:
            reply = remote_reply(exc)
            if exc.code == 421:
                raise Throttled(reply) from None
        except (SMTPException, OSError, StorageError) as exc:
            # StorageError: the stored body failed its check mid-way; the
            # connection is dropped before the final dot, nothing was accepted.
            raise Lost("DATA", exc) from None
        else:
            if response.code == 421:
                raise Throttled(reply)
        for idx in accepted:
            settlement.settle_by_reply(msg, idx, reply, self.peer)
        if not reply.is_success:
            await self._rset()

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
