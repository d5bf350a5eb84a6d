"""The frames between the owner and its receiver processes (ARCHITECTURE §3).

One job: carry requests, replies and one-way notices between two processes
over a Unix stream socket, as length-prefixed msgpack frames, and carry
accepted connections (file descriptors, SCM_RIGHTS) over a second,
datagram-like socket.

API
    Channel(reader, writer, *, serve=None, notice=None, name="")
        serve(op, args) -> awaitable result: answers the peer's requests,
                        each in its own task (a slow one holds no other)
        notice(op, args): the peer's one-way notices, handled in order
                        (a large message's pieces arrive before its request)
    await .call(op, *args) -> result      RemoteError / ChannelClosed on failure
    .notify(op, *args)                    no reply; ordered with calls
    await .drain()                        back-pressure after many notices
    .start() / await .closed() / .close()
    open_channel(sock, **kw) -> Channel   over a connected socket
    send_fd(sock, fd, payload) -> bool    one connection and its tag; False:
                                          the socket is full (retry later)
    recv_fds(sock) -> [(fd, payload)]     what is waiting ([] nothing; None: EOF)
    RemoteError(kind, value)              the peer's handler raised: kind
                                          "refused" (value [code, esc, text,
                                          status, retry_after]: core.Refused),
                                          "storage" (value [message, disk_full]:
                                          a StorageError) or "error" (a repr)

Invariants
  * A frame is at most MAX_FRAME bytes; a bigger one closes the channel (the
    peer is our own process: that is a bug, not input).
  * When the channel closes every call still waiting raises ChannelClosed.
  * The peer is trusted (our own child or parent, same user); still, nothing
    here evaluates what it receives: msgpack carries plain values only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from mta.core import Refused, StorageError

__all__ = ["Channel", "ChannelClosed", "RemoteError", "open_channel", "recv_fds", "send_fd",
           "MAX_FRAME"]

log = logging.getLogger("mta.channel")

MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")
_CALL, _REPLY, _NOTICE = 0, 1, 2

Serve = Callable[[str, list[Any]], Awaitable[Any]]
Notice = Callable[[str, list[Any]], None]


class ChannelClosed(ConnectionError):
    """The other process went away (or the channel was closed)."""


class RemoteError(Exception):
    def __init__(self, kind: str, value: Any):
        super().__init__(f"{kind}: {value}")
        self.kind, self.value = kind, value


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(data)) + data


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 serve: Serve | None = None, notice: Notice | None = None, name: str = ""):
        self._reader, self._writer = reader, writer
        self._serve, self._notice, self.name = serve, notice, name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reading: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reading = asyncio.ensure_future(self._read())

    @property
    def is_closed(self) -> bool:
        return self._done.done()

    async def closed(self) -> None:
        await asyncio.shield(self._done)

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(f"channel {self.name} closed"))
        self._waiting.clear()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()

    # ---- sending -----------------------------------------------------------
    def _send(self, frame: list[Any]) -> None:
        if self._done.done() or self._writer.is_closing():
            raise ChannelClosed(f"channel {self.name} closed")
        self._writer.write(_pack(frame))

    async def call(self, op: str, *args: Any) -> Any:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send([_CALL, rid, op, list(args)])
        self._waiting[rid] = fut
        return await fut

    def notify(self, op: str, *args: Any) -> None:
        self._send([_NOTICE, op, list(args)])

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._finish()
            raise ChannelClosed(str(exc)) from exc

    # ---- receiving ---------------------------------------------------------
    async def _read(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(4)
                (n,) = _LEN.unpack(head)
                if n > MAX_FRAME:
                    log.error("event=channel_frame_too_big channel=%s bytes=%d", self.name, n)
                    break
                frame = msgpack.unpackb(await self._reader.readexactly(n), raw=False,
                                        use_list=True, strict_map_key=False)
                self._dispatch(frame)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if not self._writer.is_closing():
                self._writer.close()
            self._finish()

    def _dispatch(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == _REPLY:
            _, rid, ok, value = frame
            fut = self._waiting.pop(rid, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(RemoteError(value[0], value[1]))
        elif kind == _NOTICE:
            if self._notice is not None:
                try:
                    self._notice(frame[1], frame[2])
                except Exception:
                    log.exception("event=channel_notice_failed channel=%s op=%s",
                                  self.name, frame[1])
        elif kind == _CALL:
            task = asyncio.ensure_future(self._answer(frame[1], frame[2], frame[3]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, rid: int, op: str, args: list[Any]) -> None:
        try:
            if self._serve is None:
                raise LookupError(f"no requests served here ({op})")
            reply = [_REPLY, rid, True, await self._serve(op, args)]
        except StorageError as exc:
            reply = [_REPLY, rid, False, ["storage", [str(exc), exc.disk_full]]]
        except Refused as exc:       # a guardrail said no: the peer answers it
            r = exc.reply
            reply = [_REPLY, rid, False, ["refused", [r.code, r.esc, r.text, exc.status,
                                                      exc.retry_after]]]
        except Exception as exc:  # the peer gets it as a RemoteError, we log it
            log.exception("event=channel_request_failed channel=%s op=%s", self.name, op)
            reply = [_REPLY, rid, False, ["error", repr(exc)]]
        try:
            self._send(reply)
        except ChannelClosed:
            pass


async def open_channel(sock: socket.socket, **kw: Any) -> Channel:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2 ** 20)
    ch = Channel(reader, writer, **kw)
    ch.start()
    return ch


# ---- accepted connections (SCM_RIGHTS) ---------------------------------------

def send_fd(sock: socket.socket, fd: int, payload: Any) -> bool:
    try:
        socket.send_fds(sock, [msgpack.packb(payload, use_bin_type=True)], [fd])
    except (BlockingIOError, InterruptedError):
        return False
    return True


def recv_fds(sock: socket.socket) -> list[tuple[int, Any]] | None:
    out: list[tuple[int, Any]] = []
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:
            return out or None
        if not data and not fds:
            return out or None          # EOF: the owner went away
        payload = msgpack.unpackb(data, raw=False)
        for extra in fds[1:]:           # never more than one; do not leak
            os.close(extra)
        if fds:
            out.append((fds[0], payload))
