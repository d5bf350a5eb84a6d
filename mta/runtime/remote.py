"""What a receiver process asks its owner, behind the server's own seams.

One job: give a receiver's listeners the spool, the AUTH throttles, the
suppression check, the session gate and the metrics of the owner process
(ARCHITECTURE §3), each as the seam the server already takes, over the
receiver's Channel (runtime/channel.py). The frames and what the owner does
with them are in runtime/workers.py.

API
    RemoteSpool(channel)            seams.SubmissionSpool: enqueue (a large
                                    message's tail goes first, in CHUNK pieces),
                                    append_events
    RemoteTurns(channel, listener)  authcheck.AuthTurns's async methods
    remote_rcpt_check(channel)      seams.RcptCheck
    HandedGate(channel)             seams.SessionLimits: the owner admitted the
                                    connection (proto.handoff_tag = [conn id,
                                    refusal or None]); release and limits are
                                    told back to it
    ForwardingObserver(channel)     core.Observer whose calls (from any thread)
                                    become notices to the owner's metrics
    message_fields(msg) / reply_value(reply) / reply_from(value)
                                    the plain values the frames carry

Invariants
  * A receiver holds no global state: every limit is counted by the owner.
  * An enqueue whose answer is lost (the owner died) raises StorageError
    (451 4.3.0): the client retries; the message may be queued already
    (duplicates at most what was in flight, never a loss).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mta.core import LedgerEvent, Observer, Refused, Reply, StorageError
from mta.core.spill import CHUNK
from mta.runtime.channel import Channel, ChannelClosed, RemoteError
from mta.server import replies

if TYPE_CHECKING:
    from mta.server.protocol import SubmissionSMTP
    from mta.spool import NewMessage

__all__ = ["ForwardingObserver", "HandedGate", "RemoteSpool", "RemoteTurns", "message_fields",
           "remote_rcpt_check", "reply_from", "reply_value", "OBSERVER_CALLS"]

# The Observer calls a receiver forwards (the owner calls only these).
OBSERVER_CALLS = frozenset(n for n in vars(Observer) if not n.startswith("_")
                           and callable(getattr(Observer, n)))


def reply_value(reply: Reply | None) -> list[Any] | None:
    return None if reply is None else [reply.code, reply.esc, reply.text]


def reply_from(value: Sequence[Any] | None) -> Reply | None:
    return None if value is None else Reply(int(value[0]), str(value[1]), str(value[2]))


def message_fields(msg: NewMessage) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg) if f.name != "tail"}


async def _ask(channel: Channel, op: str, *args: Any) -> Any:
    try:
        return await channel.call(op, *args)
    except ChannelClosed as exc:
        raise StorageError(f"the spool owner went away: {exc}") from exc
    except RemoteError as exc:
        if exc.kind == "storage":
            raise StorageError(str(exc.value[0]), disk_full=bool(exc.value[1])) from None
        if exc.kind == "refused":
            code, esc, text, status, retry_after = exc.value
            raise Refused(Reply(int(code), str(esc), str(text)), int(status),
                          None if retry_after is None else int(retry_after)) from None
        raise


class RemoteSpool:
    def __init__(self, channel: Channel):
        self._channel = channel
        self._xfers = itertools.count(1)

    async def enqueue(self, msg: NewMessage, now: float) -> str:
        xfer = None
        if msg.tail is not None:
            xfer = next(self._xfers)
            try:
                for piece in msg.tail.chunks(CHUNK):
                    self._channel.notify("tail", xfer, piece)
                    await self._channel.drain()
            except ChannelClosed as exc:
                raise StorageError(f"the spool owner went away: {exc}") from exc
        return str(await _ask(self._channel, "enqueue", message_fields(msg), now, xfer))

    async def append_events(self, events: Sequence[LedgerEvent]) -> None:
        await _ask(self._channel, "events", [[e.type, e.at, e.queue_id, e.recipient,
                                              e.credential, e.detail] for e in events])


class RemoteTurns:
    def __init__(self, channel: Channel, listener: str):
        self._channel, self.listener = channel, listener

    async def _turn(self, method: str, *args: Any) -> Any:
        # Fails closed: without the owner there is no budget to ask, and the
        # session's exception handler answers 451 4.3.0.
        return await self._channel.call("turn", self.listener, method, list(args))

    async def locked(self, key: str) -> bool:
        return bool(await self._turn("locked", key))

    async def ip_begin(self, key: str) -> tuple[str, float] | None:
        got = await self._turn("ip_begin", key)
        return None if got is None else (str(got[0]), float(got[1]))

    async def user_begin(self, name: str, key: str) -> str | None:
        got = await self._turn("user_begin", name, key)
        return None if got is None else str(got)

    async def ip_end(self, key: str, ok: bool) -> None:
        await self._turn("ip_end", key, ok)

    async def user_end(self, name: str, key: str, verdict: str | None, ok: bool) -> None:
        await self._turn("user_end", name, key, verdict, ok)

    async def failure(self, key: str) -> None:
        await self._turn("failure", key)


def remote_rcpt_check(channel: Channel) -> Any:
    async def check(address: str, credential: str | None) -> Reply | None:
        return reply_from(await _ask(channel, "rcpt", address, credential))
    return check


class HandedGate:
    def __init__(self, channel: Channel):
        self._channel = channel
        self.sessions: set[SubmissionSMTP] = set()

    def _tell(self, op: str, *args: Any) -> None:
        try:
            self._channel.notify(op, *args)
        except ChannelClosed:
            pass

    def admit(self, proto: SubmissionSMTP) -> Reply | None:
        tag = proto.handoff_tag
        if not isinstance(tag, list) or len(tag) != 2:
            return replies.TOO_MANY_SESSIONS     # not handed by the owner: refuse
        refusal = reply_from(tag[1])
        if refusal is None:
            self.sessions.add(proto)
        return refusal

    def release(self, proto: SubmissionSMTP) -> None:
        self.sessions.discard(proto)
        tag = proto.handoff_tag
        if isinstance(tag, list):
            self._tell("closed", tag[0])

    def limit_hit(self, proto: SubmissionSMTP, reason: str) -> None:
        self._tell("limit", getattr(proto, "listener", ""), proto.client_ip, reason)


class ForwardingObserver(Observer):
    """Every Observer call, told to the owner's metrics (the owner alone
    serves /metrics). DKIM timing is observed from a signing thread: such
    calls hop to the loop first."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop):
        self._channel, self._loop = channel, loop
        self._loop_thread = threading.get_ident()

    def _send(self, name: str, args: tuple[Any, ...]) -> None:
        if threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._send, name, args)
            return
        try:
            self._channel.notify("obs", name, list(args))
        except ChannelClosed:
            pass

    def __getattribute__(self, name: str) -> Any:
        if name in OBSERVER_CALLS:
            send = object.__getattribute__(self, "_send")
            return lambda *args: send(name, args)
        return object.__getattribute__(self, name)
