"""The DNS seam of delivery: MX and address lookups behind a small Protocol.

One job: ask DNS for MX and A/AAAA records without blocking the event loop,
and turn every DNS outcome into one of four typed answers, so the MX logic
(`mta.delivery.mx`) never sees a dnspython exception.

Public API:
    MxRecord(preference, host)                 host lower-case, no trailing dot;
                                               the root "." stays "."
    NxDomain, NoRecords, NullMx, DnsTempError  the typed answers (DnsError base)
    Resolver                                   Protocol: mx(domain), addresses(host),
                                               txt(name)
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
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mta.core.hostport import split_ip_port

__all__ = ["MxRecord", "DnsError", "NxDomain", "NoRecords", "NullMx", "DnsTempError",
           "Resolver", "DnsResolver", "parse_nameserver", "ip_literal"]


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    host: str


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
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"{what}: no nameserver answered usefully "
                               f"(SERVFAIL or refused): {exc}") from None
        except dns.exception.Timeout:
            raise DnsTempError(f"{what}: DNS timeout after {self._resolver.lifetime:g}s") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{what}: {exc.__class__.__name__}: {exc}") from None

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
