"""SPF (RFC 7208) `check_host()`: may this IP send mail for this domain?

One job: evaluate a domain's published SPF policy for one client IP over the
`Resolver` seam, asynchronously, and say which term decided and why.

Why our own: pyspf, the usual choice, is synchronous (it would block the
event loop or need a thread per evaluation), does its own DNS through
pydns/dnspython outside our `Resolver` seam (so tests could not point it at
the configured nameservers the same way as delivery), and has had no release
since 2020; checkdmarc wraps it and adds network calls of its own. The RFC
algorithm is small; this is it.

Public API:
    check_host(resolver, ip, domain, sender=None, *, helo=None,
               max_lookups=10, max_void_lookups=2) -> SpfOutcome   (async)
    SpfOutcome(result, reason, lookups, void_lookups, term)
        result is one of RESULTS: "pass", "fail", "softfail", "neutral",
        "none", "permerror", "temperror"
    (the record syntax and macros: spf_record.py)

Invariants:
  - Terms are evaluated left to right; the first matching mechanism decides;
    modifiers (redirect=, exp=) are considered after every mechanism, and
    redirect= is ignored when the record has an "all" (RFC 7208 §6.1).
  - include, a, mx, ptr, exists and redirect each count one DNS lookup,
    shared across the whole evaluation including nested records; the 11th
    is a permerror (§4.6.4). An mx with more than 10 hosts is a permerror.
    A lookup that finds nothing (NXDOMAIN or NODATA) is "void"; the third
    void lookup is a permerror (§4.6.4, default limit 2).
  - Any DnsTempError ends the evaluation with temperror (§5); an included
    record that is none/permerror makes the includer permerror (§5.2).
  - exp= is syntax-checked but never fetched: we only need the verdict.
  - Known compromise: "ptr" (and the %{p} macro) need reverse DNS, which the
    Resolver seam does not offer; "ptr" counts its lookup and never matches
    (§5.5 says it SHOULD NOT be used), %{p} expands to "unknown" (§7.3 allows
    that when the name cannot be validated).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mta.delivery.resolver import DnsTempError, NoRecords, NullMx, NxDomain, Resolver
from mta.domains.spf_record import (QUALIFIERS, Directive, MacroContext, SpfRecord, SpfSyntaxError,
                                    expand, parse_record, select_record)

__all__ = ["RESULTS", "SpfOutcome", "check_host"]

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_COUNTED = {"include", "a", "mx", "ptr", "exists"}
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Perm(Exception):
    pass


class _Temp(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    result: str
    reason: str
    lookups: int = 0
    void_lookups: int = 0
    term: str | None = None     # the term that decided, e.g. "-all" or "ip4:192.0.2.0/24"

    @property
    def ok(self) -> bool:
        return self.result == "pass"


# ---- evaluation ----

@dataclass
class _Evaluation:
    resolver: Resolver
    ip: _IP
    sender: str
    helo: str
    max_lookups: int
    max_void: int
    lookups: int = 0
    voids: int = 0
    trail: list[str] = field(default_factory=list)

    def count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:
            raise _Perm(f"more than {self.max_lookups} DNS lookups (RFC 7208 4.6.4); "
                        f"the {self.lookups}th is {term!r}")

    def void(self, what: str) -> None:
        self.voids += 1
        if self.voids > self.max_void:
            raise _Perm(f"more than {self.max_void} void DNS lookups (RFC 7208 4.6.4), "
                        f"last: {what}")

    async def _addresses(self, name: str, version: int, term: str) -> list[_IP]:
        try:
            addrs = await self.resolver.addresses(name)
        except (NxDomain, NoRecords):
            self.void(f"{term} ({name})")
            return []
        except DnsTempError as exc:
            raise _Temp(str(exc)) from None
        return [a for a in map(ipaddress.ip_address, addrs) if a.version == version]

    def _in(self, addrs: list[_IP], d: Directive) -> bool:
        plen = d.cidr4 if self.ip.version == 4 else d.cidr6
        if plen is None:
            plen = self.ip.max_prefixlen
        net = ipaddress.ip_network(f"{self.ip}/{plen}", strict=False)
        return any(a in net for a in addrs)

    async def record(self, domain: str) -> SpfRecord | None:
        try:
            txts = await self.resolver.txt(domain)
        except (NxDomain, NoRecords):
            return None
        except DnsTempError as exc:
            raise _Temp(str(exc)) from None
        try:
            text = select_record(txts)
            return parse_record(text) if text is not None else None
        except SpfSyntaxError as exc:
            raise _Perm(f"{domain}: {exc}") from None

    async def check(self, domain: str) -> tuple[str, str]:
        """(result, deciding term); raises _Perm / _Temp."""
        rec = await self.record(domain)
        if rec is None:
            return "none", f"{domain}: no SPF record"
        ctx = MacroContext(self.ip, self.sender, domain, self.helo)
        for d in rec.directives:
            if await self.matches(d, ctx, domain):
                return QUALIFIERS[d.qualifier], f"{domain}: {d.text}"
        if rec.redirect is not None and not rec.has_all:
            self.count(f"redirect={rec.redirect}")
            target = self._domain(rec.redirect, ctx)
            self.trail.append(f"redirect={target}")
            result, term = await self.check(target)
            if result == "none":
                raise _Perm(f"redirect={target}: target has no SPF record")
            return result, term
        return "neutral", f"{domain}: no mechanism matched (default ?all)"

    def _domain(self, spec: str, ctx: MacroContext) -> str:
        try:
            return expand(spec, ctx).rstrip(".").lower()
        except SpfSyntaxError as exc:
            raise _Perm(str(exc)) from None

    async def matches(self, d: Directive, ctx: MacroContext, domain: str) -> bool:
        m = d.mechanism
        if m == "all":
            return True
        if m in ("ip4", "ip6"):
            ip = self.ip
            if ip.version != (4 if m == "ip4" else 6):
                return False
            plen = d.cidr4 if m == "ip4" else d.cidr6
            return ip in ipaddress.ip_network(f"{d.spec}/{plen}", strict=False)
        if m in _COUNTED:
            self.count(d.text)
        target = self._domain(d.spec, ctx) if d.spec else domain
        if m == "include":
            self.trail.append(f"include:{target}")
            try:
                result, _ = await self.check(target)
            except _Perm as exc:
                raise _Perm(f"include:{target}: {exc}") from None
            if result == "none":
                raise _Perm(f"include:{target}: no SPF record there")
            return result == "pass"
        if m == "a":
            return self._in(await self._addresses(target, self.ip.version, d.text), d)
        if m == "exists":
            return bool(await self._addresses(target, 4, d.text))
        if m == "mx":
            try:
                mxs = await self.resolver.mx(target)
            except (NxDomain, NoRecords):
                self.void(f"{d.text} ({target})")
                return False
            except NullMx:
                return False
            except DnsTempError as exc:
                raise _Temp(str(exc)) from None
            if len(mxs) > 10:
                raise _Perm(f"{d.text}: {target} has {len(mxs)} MX hosts (at most 10)")
            for mx in mxs:
                if self._in(await self._addresses(mx.host, self.ip.version, d.text), d):
                    return True
            return False
        # ptr: no reverse DNS at the seam; see the module docstring.
        return False


async def check_host(resolver: Resolver, ip: str, domain: str, sender: str | None = None, *,
                     helo: str | None = None, max_lookups: int = 10,
                     max_void_lookups: int = 2) -> SpfOutcome:
    """RFC 7208 §4 check_host(ip, domain, sender) → SpfOutcome (never raises on DNS)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    domain = domain.rstrip(".").lower()
    ev = _Evaluation(resolver, addr, sender or f"postmaster@{domain}", helo or "unknown",
                     max_lookups, max_void_lookups)
    try:
        result, term = await ev.check(domain)
    except _Perm as exc:
        return SpfOutcome("permerror", str(exc), ev.lookups, ev.voids)
    except _Temp as exc:
        return SpfOutcome("temperror", f"DNS: {exc}", ev.lookups, ev.voids)
    via = f" via {' -> '.join(ev.trail)}" if ev.trail else ""
    reason = f"{result} for {addr}: {term}{via}" if result != "none" else term
    return SpfOutcome(result, reason, ev.lookups, ev.voids, term.split(": ", 1)[-1])
