"""A scripted SMTP sink for end-to-end tests (aiosmtpd, real loopback sockets, STARTTLS).

One job: play a remote MX whose behaviour is chosen by the recipient's local
part, and record what it received, so delivery code is tested against real
SMTP over real sockets (docs/ARCHITECTURE.md §8 item 10).

Script (by local part, case-insensitive prefix):
    ok…           250 (so does any local part not listed here)
    tempfail-N…   451 4.7.1 the first N times that address is tried, then 250
                  (counted per full address, across connections)
    reject…       550 5.1.1 <addr>: Recipient address rejected: User unknown
    throttle…     421 4.7.0 at RCPT ("slow down")
    slow…         wait before answering DATA: 2 s, or slow-<ms>… milliseconds
    drop…         read the DATA, then close the connection without a reply

Public API:
    Sink(host="127.0.0.1", port=0, tls=True)   tls: True (trustme cert), False
                                                (no STARTTLS), "broken" (STARTTLS
                                                offered, handshake always fails)
    await sink.start() / await sink.stop(), or `async with Sink() as sink:`
    sink.start_in_thread() / sink.stop_in_thread()   own loop in a thread
    sink.messages: list[SinkMessage]   completed transactions (DATA answered 250)
    sink.connections, sink.transactions, sink.rcpt_attempts[address]
    await sink.wait_for(count, timeout) / sink.wait_for_sync(count, timeout)
    sink.ca: trustme.CA whose certificate signs the sink's (for verifying clients)

Invariants: listens on loopback only; `messages` only holds transactions the
sink answered with 250, in the order it answered them; `data` is the content
after dot-unstuffing, exactly as aiosmtpd received it.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import re
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field

import trustme
from aiosmtpd.smtp import SMTP

__all__ = ["Sink", "SinkMessage"]

_TEMPFAIL = re.compile(r"^tempfail-(\d+)")
_SLOW = re.compile(r"^slow-(\d+)")


@dataclass
class SinkMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: str | None          # e.g. "TLSv1.3", None when clear text
    peer: tuple
    connection: int          # 1-based number of the connection that carried it
    mail_options: list[str] = field(default_factory=list)
    helo: str = ""


class _Handler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        sink = self.sink
        key = address.lower()
        sink.rcpt_attempts[key] += 1
        local = address.rsplit("@", 1)[0].lower()
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("throttle"):
            return "421 4.7.0 sink.test Error: too many connections from you, slow down"
        m = _TEMPFAIL.match(local)
        if m and sink.rcpt_attempts[key] <= int(m.group(1)):
            return (f"451 4.7.1 <{address}>: Recipient address rejected: "
                    f"greylisted, try again later")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        sink = self.sink
        locals_ = [a.rsplit("@", 1)[0].lower() for a in envelope.rcpt_tos]
        if any(lp.startswith("drop") for lp in locals_):
            sink.dropped += 1
            server.transport.close()
            # aiosmtpd cancels this handler when it sees the connection lost;
            # until then make sure no reply is ever pushed.
            await asyncio.Event().wait()
        for lp in locals_:
            if lp.startswith("slow"):
                m = _SLOW.match(lp)
                await asyncio.sleep(int(m.group(1)) / 1000 if m else sink.slow_default)
                break
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        sink.transactions += 1
        sink.messages.append(SinkMessage(
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            tls=ssl_object.version() if ssl_object is not None else None,
            peer=session.peer, connection=getattr(server, "sink_connection", 0),
            mail_options=list(envelope.mail_options), helo=session.host_name or ""))
        return f"250 2.0.0 Ok: queued as SINK{sink.transactions:05d}"


class Sink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool | str = True, *,
                 hostname: str = "sink.test", slow_default: float = 2.0,
                 smtputf8: bool = True):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the sink listens on loopback only, not {host}")
        self.host, self.port, self.tls = host, port, tls
        self.hostname = hostname
        self.slow_default = slow_default
        self.smtputf8 = smtputf8
        self.messages: list[SinkMessage] = []
        self.connections = 0
        self.transactions = 0
        self.dropped = 0
        self.rcpt_attempts: collections.Counter[str] = collections.Counter()
        self.ca = trustme.CA()
        self._tls_context = self._make_tls_context() if tls else None
        self._server: asyncio.AbstractServer | None = None
        self._protocols: set[SMTP] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _make_tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(self.hostname, "localhost", self.host).configure_cert(ctx)
        if self.tls == "broken":
            # Offer STARTTLS but only speak a protocol no modern client accepts,
            # so the handshake fails after "220 Ready to start TLS".
            with warnings.catch_warnings():  # deprecated on purpose: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                ctx.maximum_version = ssl.TLSVersion.TLSv1
        return ctx

    def _protocol(self) -> SMTP:
        self.connections += 1
        proto = SMTP(_Handler(self), hostname=self.hostname, tls_context=self._tls_context,
                     enable_SMTPUTF8=self.smtputf8, decode_data=False,
                     loop=asyncio.get_running_loop())
        proto.sink_connection = self.connections  # type: ignore[attr-defined]
        self._protocols.add(proto)
        return proto

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # ---- async mode: serve on the running loop ----

    async def start(self) -> "Sink":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.close()
        self._protocols.clear()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> "Sink":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until at least `count` messages were received; raise TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink got {len(self.messages)} of {count} messages "
                                   f"in {timeout}s")
            await asyncio.sleep(0.02)
        return self.messages

    # ---- thread mode: for tests that run the daemon as a subprocess ----

    def start_in_thread(self) -> "Sink":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-sink",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(10)
        return self

    def stop_in_thread(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def wait_for_sync(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink got {len(self.messages)} of {count} messages "
                                   f"in {timeout}s")
            time.sleep(0.02)
        return self.messages
