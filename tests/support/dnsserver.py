"""A small authoritative DNS server for tests (dnspython wire format, real sockets).

One job: answer A / AAAA / MX (and CNAME / TXT / TLSA) queries from a Python
dict so MX resolution is tested against a real server through the resolver's
configurable nameservers, never the system resolver; for DANE it also plays
the part of a validating resolver (the AD bit, SERVFAIL for bogus data).

Public API:
    DnsServer(zone, host="127.0.0.153", port=0, *, servfail=(), timeout=(), ttl=60,
              ad_zones=(), bogus=())
        zone      {"example.test": {"MX": [(10, "mx1.example.test")],
                                    "A": ["127.0.0.1"], "AAAA": ["::1"]}, ...}
                  null MX is {"MX": [(0, ".")]}
                  TXT values are strings of any length (longer than 255
                  characters they are served as several character-strings
                  of one record, as a DKIM RSA key must be)
                  TLSA values are (usage, selector, mtype, data) with data
                  bytes or hex, or the presentation text "3 1 1 ab12…":
                  {"_25._tcp.mx1.example.test": {"TLSA": [(3, 1, 1, digest)]}}
        servfail  names answered with SERVFAIL
        timeout   names never answered at all (the query is dropped)
        ad_zones  zones "signed and validated": an answer (NXDOMAIN and NODATA
                  too) for a name at or under one of them, and for every CNAME
                  target it follows, carries the AD flag — only when the query
                  asked (AD flag or EDNS DO bit), as RFC 6840 §5.7 says a
                  validating resolver does
        bogus     names whose data fails validation: SERVFAIL, as a validating
                  resolver answers; with the CD flag, the data without AD
    async with DnsServer(...) as dns: ...          # serves on the running loop
    dns.start() / dns.stop()                       # serves from a thread (sync tests)
    dns.nameserver -> "127.0.0.153:PORT"           # for DnsResolver / DnsConfig
    dns.queries -> list[(name, rdtype)]            # every query seen, in order

Invariants: answers are authoritative (AA set). An unknown name is NXDOMAIN; a
known name without records of the asked type is NOERROR with an empty answer
(RFC 2308 NODATA). UDP and TCP listen on the same port. Only loopback
addresses are accepted for `host` (tests never talk to anything else).
`zone`, `ad_zones` and `bogus` are read on every query, so a test may mutate
them while the server runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import threading
from typing import Iterable, Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer"]


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: "DnsServer"):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    def __init__(self, zone: Mapping[str, Mapping[str, list]], host: str = "127.0.0.153",
                 port: int = 0, *, servfail: Iterable[str] = (), timeout: Iterable[str] = (),
                 ttl: int = 60, ad_zones: Iterable[str] = (), bogus: Iterable[str] = ()):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test DNS server must listen on loopback, not {host}")
        self.zone = zone
        self.host = host
        self.port = port
        self.servfail = {_norm(n) for n in servfail}
        self.timeout = {_norm(n) for n in timeout}
        self.ad_zones = {_norm(n) for n in ad_zones}
        self.bogus = {_norm(n) for n in bogus}
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    # ---- the protocol logic: bytes in, bytes (or silence) out ----

    def _records(self, name: str) -> Mapping[str, list] | None:
        for key, value in self.zone.items():
            if _norm(key) == name:
                return value
        return None

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # garbage: a real server would FORMERR; silence is fine for tests
        if not query.question:
            return None
        q = query.question[0]
        name = _norm(q.name.to_text())
        self.queries.append((name, dns.rdatatype.to_text(q.rdtype)))
        if name in self.timeout:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        dnssec_ok = bool(query.ednsflags & dns.flags.DO)
        if dnssec_ok:
            response.ednsflags |= dns.flags.DO
        checking_disabled = bool(query.flags & dns.flags.CD)
        if name in self.servfail or (name in self.bogus and not checking_disabled):
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        names = self._fill(response, q.name, q.rdtype)
        secure = all(self._signed(n) for n in names) and not (self.bogus & set(names))
        if secure and (query.flags & dns.flags.AD or dnssec_ok):
            response.flags |= dns.flags.AD
        return response.to_wire()

    def _signed(self, name: str) -> bool:
        return any(name == z or name.endswith("." + z) for z in self.ad_zones)

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, qtype: int) -> list[str]:
        """Put the answer for (qname, qtype) in `response`; return every name
        it looked at (qname and the CNAME targets followed)."""
        name = _norm(qname.to_text())
        records = self._records(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return [name]
        rdtype = dns.rdatatype.to_text(qtype)
        owner, names = qname, [name]
        for _ in range(8):  # follow in-zone CNAMEs, as a recursive server would
            values = records.get(rdtype) or []
            if not values and rdtype != "CNAME" and records.get("CNAME"):
                target = self._rdata_text("CNAME", records["CNAME"][0])
                response.answer.append(dns.rrset.from_text_list(
                    owner, self.ttl, dns.rdataclass.IN, "CNAME", [target]))
                owner = dns.name.from_text(target)
                names.append(_norm(target))
                records = self._records(_norm(target)) or {}
                continue
            if values:
                texts = [self._rdata_text(rdtype, v) for v in values]
                response.answer.append(dns.rrset.from_text_list(
                    owner, self.ttl, dns.rdataclass.IN, rdtype, texts))
            break
        return names

    @staticmethod
    def _rdata_text(rdtype: str, value) -> str:
        if rdtype == "MX":
            pref, host = value
            host = host if host.endswith(".") else host + "."
            return f"{int(pref)} {host}"
        if rdtype == "CNAME":
            return value if value.endswith(".") else value + "."
        if rdtype == "TLSA" and not isinstance(value, str):
            usage, selector, mtype, data = value
            hexdata = data.hex() if isinstance(data, (bytes, bytearray)) else str(data)
            return f"{int(usage)} {int(selector)} {int(mtype)} {hexdata}"
        if rdtype == "TXT":
            # One TXT record may hold several <character-string>s of at most
            # 255 octets each (RFC 1035 §3.3.14); verifiers join them, so a
            # long value (an RSA-2048 DKIM key) is cut into 255-octet pieces.
            text = str(value)
            chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
            return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"'
                            for c in chunks)
        return str(value)

    # ---- I/O ----

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length))
                if reply is None:
                    continue  # "timeout" names: say nothing, keep the connection open
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_writers.discard(writer)
            writer.close()

    async def astart(self) -> "DnsServer":
        loop = asyncio.get_running_loop()
        # UDP first on the asked (or an ephemeral) port, then TCP on the same
        # port; with an ephemeral port the TCP one may be taken, so retry.
        for _ in range(20):
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port))
            port = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._handle_tcp, self.host, port)
            except OSError:
                self._udp.close()
                if self.port:
                    raise
                continue
            self.port = port
            return self
        raise OSError(f"could not bind UDP+TCP on {self.host}")

    async def astop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for w in list(self._tcp_writers):
                w.close()
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> "DnsServer":
        return await self.astart()

    async def __aexit__(self, *exc) -> None:
        await self.astop()

    # ---- thread mode, for tests that run the daemon as a subprocess ----

    def start(self) -> "DnsServer":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-dns",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.astart(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.astop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
