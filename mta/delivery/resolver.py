"""The DNS seam of delivery: MX and address lookups behind a small Protocol.

One job: ask DNS for MX and A/AAAA records without blocking the event loop,
and turn every DNS outcome into one of four typed answers, so the MX logic
(`mta.delivery.mx`) never sees a dnspython exception.

Public API:
    MxRecord(preference, host)                 host lower-case, no trailing dot;
                                               the root "." stays "."
    NxDomain, NoRecords, NullMx, DnsTempError  the typed answers (DnsError base)
    Tlsa(usage, selector, mtype, data)         one TLSA record (RFC 6698), data raw bytes
    TlsaAnswer(records, secure)                what tlsa() found; secure = the AD bit
    Resolver                                   Protocol: mx(domain), addresses(host),
                                               txt(name), tlsa(name)
    DnsResolver(nameservers=(), timeout=5.0)   dnspython's asyncresolver

Invariants:
  - `mx()` returns a non-empty list, or raises NxDomain (the name does not
    exist), NoRecords (it exists but has no MX), NullMx (RFC 7505: a single
    MX "." — the domain says it takes no mail) or DnsTempError (SERVFAIL,
    timeout, refused, …: anything that may heal by itself).
  - `addresses()` returns A records then AAAA records (IPv4 first: IPv6
    reachability is the less common case on servers), or raises as above.
    An IP literal is returned as itself without a query.
  - `txt()` returns one str per TXT record, its character-strings joined
    without separators (RFC 7208 3.3, RFC 6376 3.6.2.2), decoded as UTF-8
    with replacement; it raises like `mx()` (never NullMx).
  - `tlsa()` (name "_25._tcp.<mx host>") asks with the AD flag set, so a
    validating resolver (the operator's, on loopback: Postfix's trust model)
    says whether it authenticated the answer: `secure` is the response's AD
    bit. NXDOMAIN and NODATA are not errors: `records` is () and `secure`
    tells a secure denial (no DANE: normal policy) from an insecure one.
    SERVFAIL (what a validating resolver answers for bogus data) and
    timeouts raise DnsTempError: the caller defers, never falls back.
    Secure means what the configured resolver says: it must be a
    validating one the operator trusts (loopback), as with Postfix.
  - Tests use DnsResolver pointed at tests/support/dnsserver.py on 127.0.0.x,
    or a fake at this Protocol; never the system resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mta.core.hostport import split_ip_port

__all__ = ["MxRecord", "Tlsa", "TlsaAnswer", "DnsError", "NxDomain", "NoRecords", "NullMx",
           "DnsTempError", "Resolver", "DnsResolver", "parse_nameserver", "ip_literal"]


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    host: str


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type, and the
    association data as raw bytes (not hex). mta.delivery.dane decides which
    are usable and whether a certificate chain matches."""
    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TlsaAnswer:
    records: tuple[Tlsa, ...]
    secure: bool  # the validating resolver set AD: authenticated data (or denial)


class DnsError(Exception):
    """Base of the typed DNS answers; the message names the query."""


class NxDomain(DnsError):
    """The name does not exist (NXDOMAIN)."""


class NoRecords(DnsError):
    """The name exists but has no records of the asked type (NODATA)."""


class NullMx(DnsError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


class DnsTempError(DnsError):
    """SERVFAIL, timeout or another failure that may go away by itself."""


class Resolver(Protocol):
    async def mx(self, domain: str) -> list[MxRecord]: ...

    async def addresses(self, host: str) -> list[str]: ...

    async def txt(self, name: str) -> list[str]: ...

    async def tlsa(self, name: str) -> TlsaAnswer: ...


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"127.0.0.153:5353"`` / ``"10.0.0.1"`` / ``"::1"`` / ``"[::1]:53"`` → (ip, port);
    ValueError on a name: nameservers must be IPs (core.hostport.split_ip_port)."""
    return split_ip_port(text, 53)


def ip_literal(host: str) -> str | None:
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if h.lower().startswith("ipv6:"):
        h = h[5:]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return None


class DnsResolver:
    """Non-blocking lookups with dnspython's `dns.asyncresolver`.

    `timeout` is per query and server; a lookup as a whole gives up after
    `timeout` times the number of servers (at least once, at most three
    times), so one dead server among several is tolerated.
    """

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0, *,
                 cache: bool = True):
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(*parse_nameserver(ns))
                             for ns in nameservers]
        else:
            # Production default: the system's /etc/resolv.conf (read once, here).
            r = dns.asyncresolver.Resolver(configure=True)
        r.timeout = timeout
        r.lifetime = timeout * max(1, min(3, len(r.nameservers)))
        if cache:
            # Respects record TTLs; saves a lookup per batch to a busy domain.
            r.cache = dns.resolver.Cache()
        # Every query asks for the AD bit (RFC 6840 §5.7: a validating
        # resolver sets AD in its answer only when the query had AD or DO);
        # AD rather than DO, so answers carry no RRSIGs we would ignore. Only
        # tlsa() reads it; the other lookups are unaffected by the flag.
        r.flags = dns.flags.RD | dns.flags.AD
        self._resolver = r

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        qname = dns.name.from_text(name)  # absolute: no search list, ever
        what = f"{rdtype} {name}"
        try:
            return await self._resolver.resolve(qname, rdtype, search=False,
                                                raise_on_no_answer=True)
        except dns.resolver.NXDOMAIN:
            raise NxDomain(f"{what}: name does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise NoRecords(f"{what}: no {rdtype} records") from None
        except dns.exception.DNSException as exc:
            raise self._temp_error(what, exc) from None

    def _temp_error(self, what: str, exc: dns.exception.DNSException) -> DnsTempError:
        if isinstance(exc, dns.resolver.NoNameservers):
            return DnsTempError(f"{what}: no nameserver answered usefully "
                                f"(SERVFAIL or refused): {exc}")
        if isinstance(exc, dns.exception.Timeout):
            return DnsTempError(f"{what}: DNS timeout after {self._resolver.lifetime:g}s")
        return DnsTempError(f"{what}: {exc.__class__.__name__}: {exc}")

    async def mx(self, domain: str) -> list[MxRecord]:
        answer = await self._query(domain, "MX")
        records = [MxRecord(int(rr.preference), rr.exchange.to_text(omit_final_dot=True).lower()
                            or ".") for rr in answer]
        if len(records) == 1 and records[0].host == ".":
            raise NullMx(f"MX {domain}: null MX (RFC 7505), the domain accepts no mail")
        return records

    async def addresses(self, host: str) -> list[str]:
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        # Both families at once: the slower lookup should not add to the faster.
        a, aaaa = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"),
                                       return_exceptions=True)
        for result in (a, aaaa):
            if isinstance(result, BaseException) and not isinstance(result, DnsError):
                raise result
        found = [rr.address for res in (a, aaaa) if not isinstance(res, BaseException)
                 for rr in res]
        if found:
            return found  # one family failing temporarily is fine if the other answered
        if isinstance(a, NxDomain):
            raise a
        temp = [r for r in (a, aaaa) if isinstance(r, DnsTempError)]
        if temp:
            raise temp[0]
        raise NoRecords(f"A/AAAA {host}: no address records")

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, "TXT")
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer]

    async def tlsa(self, name: str) -> TlsaAnswer:
        qname = dns.name.empty
        try:
            qname = dns.name.from_text(name)
            answer = await self._resolver.resolve(qname, "TLSA", search=False,
                                                raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            # The denial is as trustworthy as the AD bit on its response.
            responses = exc.kwargs.get("responses") or {}
            return TlsaAnswer((), _authenticated(responses.get(qname)))
        except dns.exception.DNSException as exc:
            raise self._temp_error(f"TLSA {name}", exc) from None
        records = tuple(Tlsa(int(rr.usage), int(rr.selector), int(rr.mtype), bytes(rr.cert))
                        for rr in answer.rrset or ())
        return TlsaAnswer(records, _authenticated(answer.response))


def _authenticated(response: dns.message.Message | None) -> bool:
    return response is not None and bool(response.flags & dns.flags.AD)
