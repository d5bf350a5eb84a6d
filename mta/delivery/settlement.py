"""What a delivery attempt found out: outcomes per recipient, and why a connection failed.

One job: the bookkeeping and the failure vocabulary the session
(mta.delivery.session) and the transport (mta.delivery.client) share; no I/O.

Public API:
    Peer(host, ip, tls)                   who answered, for outcomes and logs
    Settlement(messages)                  who has an outcome yet: .settle,
                                          .settle_by_reply, .unsettled,
                                          .settle_rest, .in_order
    Lost(stage, cause)                    the connection broke during `stage`
    Throttled(reply)                      the remote said 421
    HandshakeFailed                       STARTTLS failed (retry in clear text)
    describe(exc) -> str                  an error in one line
    remote_reply(exc) -> Reply            an aiosmtplib error's reply
    reply_of(code, message) -> Reply      a reply as received (kept verbatim)
    DELIVERED, DEFERRED, BOUNCED          the RecipientFates

Invariants:
  - A recipient is settled at most once: the first outcome wins.
  - Remote replies are kept verbatim (`Reply.from_remote`); a reply code
    outside 200-599 (unparsable) counts as 451.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiosmtplib import SMTPResponseException

from mta.core.outcome import RecipientFate, RecipientOutcome
from mta.core.reply import Reply
from mta.delivery.transport import OutboundMessage

__all__ = ["Peer", "Settlement", "Lost", "Throttled", "HandshakeFailed", "describe",
           "remote_reply", "reply_of", "DELIVERED", "DEFERRED", "BOUNCED"]

DELIVERED, DEFERRED = RecipientFate.DELIVERED, RecipientFate.DEFERRED
BOUNCED = RecipientFate.BOUNCED


@dataclass(frozen=True)
class Peer:
    host: str = ""
    ip: str = ""
    tls: str = ""
    policy: str = ""          # the TLS policy the connection was made under (issue 17)
    verified: bool = False    # its certificate passed a policy's check (pkix or DANE)
    check: str = ""           # "verified", "failed: <result>" (testing mode), "" none


class Settlement:
    """Who has an outcome yet. Pure bookkeeping, no I/O."""

    def __init__(self, messages: Sequence[OutboundMessage],
                 on_done: Callable[[str, dict[int, RecipientOutcome]], None] | None = None):
        self.outcomes: dict[str, dict[int, RecipientOutcome]] = {m.queue_id: {} for m in messages}
        self._on_done = on_done

    def done(self, msg: OutboundMessage) -> None:
        """`msg`'s transaction is over: every recipient of it has its outcome
        of this attempt; tell `on_done(queue_id, {rcpt index: outcome})` so the
        caller can record them before the next transaction (issue 12)."""
        if self._on_done is not None:
            got = self.outcomes[msg.queue_id]
            self._on_done(msg.queue_id, {i: got[i] for i, _ in msg.recipients if i in got})

    def settle(self, msg: OutboundMessage, idx: int, fate: RecipientFate, reply: Reply,
               peer: Peer) -> None:
        self.outcomes[msg.queue_id].setdefault(
            idx, RecipientOutcome(fate, reply, peer.host, peer.ip, peer.tls, peer.policy,
                                  peer.check))

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


def reply_of(code: int, message: str) -> Reply:
    return Reply.from_remote(code if 200 <= code <= 599 else 451,  # -1: unparsable reply
                             message)


def remote_reply(exc: SMTPResponseException) -> Reply:
    return reply_of(exc.code, exc.message)


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
