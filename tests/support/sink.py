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
    ts04…         421 4.7.0 [TS04] at RCPT, as Yahoo defers a sender (the
                  first time that address is tried; 250 after)
    slow…         wait before answering DATA: 2 s, or slow-<ms>… milliseconds
    drop…         read the DATA, then close the connection without a reply
  and by the sender's local part:
    reject…       550 5.7.1 at MAIL FROM (every RCPT and DATA then get 503)

Public API:
    Sink(host="127.0.0.1", port=0, tls=True)   tls: True (trustme cert), False
                                                (no STARTTLS), "broken" (STARTTLS
                                                offered, handshake always fails)
        pipelining=False    advertise PIPELINING (RFC 2920); aiosmtpd reads
                            commands in order whatever arrived, so it copes
        chunking=False      advertise CHUNKING and accept BDAT (RFC 3030): our
                            own minimal reader, aiosmtpd has none
        reply_delay=0.0     hold every reply back this many seconds after the
                            input that asked for it arrived, in order, like a
                            WAN round trip (the bench sink's --reply-delay)
        tls_context=None    an ssl.SSLContext (Purpose.CLIENT_AUTH, certificate
                            loaded) used for STARTTLS instead of the trustme
                            one: an expired, wrong-name or self-signed
                            certificate (tests/support/tlsworld.py); needs a
                            true `tls` (ValueError with tls=False)
    await sink.start() / await sink.stop(), or `async with Sink() as sink:`
    sink.start_in_thread() / sink.stop_in_thread()   own loop in a thread
    sink.messages: list[SinkMessage]   completed transactions (DATA answered 250)
    sink.connections, sink.transactions, sink.rcpt_attempts[address]
    sink.open_now / sink.max_open   connections open now / the most at once
    sink.peers          the client address of each connection, in order
    sink.round_trips    times the client sent something after the sink had
                        answered since its last input: the client waited for a
                        reply (the greeting's answer, EHLO, counts as one)
    sink.mail_depths    per MAIL: the commands that had arrived when it was
                        answered, MAIL included (1 = lock-step; 2 + RCPTs =
                        MAIL, RCPTs and DATA in one write)
    sink.bdat_chunks    per BDAT: (size, last)
    await sink.wait_for(count, timeout) / sink.wait_for_sync(count, timeout)
    sink.ca: trustme.CA whose certificate signs the sink's (for verifying clients)

Invariants: listens on loopback only; `messages` only holds transactions the
sink answered with 250, in the order it answered them; `data` is the content
after dot-unstuffing (or the BDAT chunks joined), exactly as received.
Counting round trips is exact only with a reply delay longer than a
client's burst of writes (a reply that overtakes the rest of a burst looks
like a turn): tests that count use one.
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
from aiosmtpd.smtp import SMTP, syntax

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


def _waiting(buffer: bytes) -> int:
    """Complete commands in `buffer` (a BDAT's chunk skipped, nothing after DATA)."""
    count, pos = 0, 0
    while (end := buffer.find(b"\n", pos)) >= 0:
        line, pos = buffer[pos:end], end + 1
        count += 1
        verb, _, arg = line.strip().partition(b" ")
        if verb.upper() == b"DATA":
            break
        if verb.upper() == b"BDAT" and arg.split()[:1] and arg.split()[0].isdigit():
            pos += int(arg.split()[0])
    return count


class _SinkSMTP(SMTP):
    """aiosmtpd's server plus what the tests measure: round trips, pipelined
    depth, the reply delay, and BDAT."""

    def __init__(self, sink: "Sink", *args, **kw):
        super().__init__(*args, **kw)
        self.sink = sink
        self._answered = True       # the greeting is an answer the client waits for
        self._last_input = 0.0
        self._due = 0.0
        self._mail_pending = False
        self._chunks: list[bytes] = []
        self._chunk_failed = False

    async def _mail_requiretls(self, arg):
        # REQUIRETLS (RFC 8689), when offered: aiosmtpd refuses parameters it
        # does not know, so take it off and note it in the envelope's options.
        seen = bool(self.sink.requiretls and arg
                    and re.search(r"(?i)[ \t]REQUIRETLS\b", arg))
        if seen:
            arg = re.sub(r"(?i)[ \t]+REQUIRETLS\b", "", arg)
        await super().smtp_MAIL(arg)
        if seen and self.envelope is not None and self.envelope.mail_from:
            self.envelope.mail_options.append("REQUIRETLS")

    def connection_made(self, transport) -> None:
        sink = self.sink
        if not getattr(self, "_counted", False):   # STARTTLS calls it again
            self._counted = True
            sink.open_now += 1
            sink.max_open = max(sink.max_open, sink.open_now)
            peer = transport.get_extra_info("peername")
            sink.peers.append(peer[0] if peer else "")
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        self.sink.open_now -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._answered:
            self.sink.round_trips += 1
            self._answered = False
        self._last_input = time.monotonic()
        super().data_received(data)

    async def push(self, status) -> None:
        delay = self.sink.reply_delay
        if delay:
            self._due = max(self._last_input + delay, self._due)
            wait = self._due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if self._mail_pending:
            self._mail_pending = False
            buffered = bytes(self._reader._buffer)  # type: ignore[attr-defined]
            self.sink.mail_depths.append(1 + _waiting(buffered))
        self._answered = True
        await super().push(status)

    async def smtp_MAIL(self, arg):
        self._mail_pending = True
        self._chunks, self._chunk_failed = [], False
        await self._mail_requiretls(arg)

    async def smtp_RSET(self, arg):
        self._chunks, self._chunk_failed = [], False
        await super().smtp_RSET(arg)

    @syntax("BDAT size [LAST]")
    async def smtp_BDAT(self, arg):
        words = (arg or "").split()
        if (not words or not words[0].isdigit() or len(words) > 2
                or (len(words) == 2 and words[1].upper() != "LAST")):
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
            self.transport.close()          # the chunk's length is unknown: out of step
            return
        size, last = int(words[0]), len(words) == 2
        chunk = await self._reader.readexactly(size)   # read even when refused (§2)
        self.sink.bdat_chunks.append((size, last))
        envelope = self.envelope
        if not envelope.mail_from:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not envelope.rcpt_tos:
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if self._chunk_failed:
            await self.push("503 5.5.1 Error: an earlier chunk failed")
            return
        self._chunks.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 Ok: {size} octets")
            return
        envelope.original_content = envelope.content = b"".join(self._chunks)
        self._chunks = []
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


class _Handler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        extra = ((["250-PIPELINING"] if self.sink.pipelining else [])
                 + (["250-CHUNKING"] if self.sink.chunking else [])
                 + (["250-REQUIRETLS"] if self.sink.requiretls and server._tls_protocol
                    else []))
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.rsplit("@", 1)[0].lower().startswith("reject"):
            return f"550 5.7.1 <{address}>: Sender address rejected: Access denied"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        sink = self.sink
        key = address.lower()
        sink.rcpt_attempts[key] += 1
        local = address.rsplit("@", 1)[0].lower()
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.startswith("throttle"):
            return "421 4.7.0 sink.test Error: too many connections from you, slow down"
        if local.startswith("ts04") and sink.rcpt_attempts[key] == 1:
            peer = session.peer[0] if session.peer else "127.0.0.1"
            return (f"421 4.7.0 [TS04] Messages from {peer} temporarily deferred due to "
                    "unexpected volume or user complaints - 4.16.55.1; see "
                    "https://postmaster.yahooinc.com/error-codes")
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
                 smtputf8: bool = True, pipelining: bool = False, chunking: bool = False,
                 reply_delay: float = 0.0, requiretls: bool = False, tls_context: ssl.SSLContext | None = None):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the sink listens on loopback only, not {host}")
        if tls_context is not None and not tls:
            raise ValueError("tls_context: given, but tls=False offers no STARTTLS")
        self.host, self.port, self.tls = host, port, tls
        self.hostname = hostname
        self.slow_default = slow_default
        self.smtputf8 = smtputf8
        self.pipelining, self.chunking, self.reply_delay = pipelining, chunking, reply_delay
        self.requiretls = requiretls   # offer REQUIRETLS inside TLS (RFC 8689); may change live
        self.round_trips = 0
        self.mail_depths: list[int] = []
        self.bdat_chunks: list[tuple[int, bool]] = []
        self.messages: list[SinkMessage] = []
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.peers: list[str] = []
        self.transactions = 0
        self.dropped = 0
        self.rcpt_attempts: collections.Counter[str] = collections.Counter()
        self.ca = trustme.CA()
        self._tls_context = (tls_context if tls_context is not None
                             else self._make_tls_context() if tls else None)
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
        proto = _SinkSMTP(self, _Handler(self), hostname=self.hostname,
                          tls_context=self._tls_context, enable_SMTPUTF8=self.smtputf8,
                          decode_data=False, loop=asyncio.get_running_loop())
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
