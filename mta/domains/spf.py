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
    parse_record(text) -> SpfRecord        pure syntax check (raises SpfSyntaxError)
    select_record(txts) -> str | None      the one "v=spf1" record among TXT values
    expand(macro_string, ctx) -> str       the macro language of RFC 7208 §7

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
import re
import urllib.parse
from dataclasses import dataclass, field

from mta.delivery.resolver import DnsTempError, NoRecords, NullMx, NxDomain, Resolver

__all__ = ["RESULTS", "SpfOutcome", "SpfRecord", "SpfSyntaxError", "check_host",
           "parse_record", "select_record", "expand", "MacroContext"]

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_COUNTED = {"include", "a", "mx", "ptr", "exists"}
_TOPLABEL = re.compile(r"(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9-]*[a-z0-9])\.?$", re.I)
_MODIFIER_NAME = re.compile(r"[a-z][a-z0-9_.-]*$", re.I)
_CIDR = re.compile(r"(?P<spec>.*?)(?:/(?P<c4>0|[1-9][0-9]?))?(?://(?P<c6>0|[1-9][0-9]{0,2}))?$",
                   re.S)
_MACRO = re.compile(r"%\{(?P<letter>[a-zA-Z])(?P<digits>[0-9]*)(?P<rev>[rR]?)"
                    r"(?P<delims>[.\-+,/_=]*)\}")


class SpfSyntaxError(ValueError):
    """The record (or a macro in it) does not parse: a permerror."""


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


@dataclass(frozen=True, slots=True)
class Directive:
    qualifier: str          # "+", "-", "~", "?"
    mechanism: str          # one of _MECHANISMS
    spec: str | None        # domain-spec (macro string) or the ip network text
    cidr4: int | None = None
    cidr6: int | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class SpfRecord:
    directives: tuple[Directive, ...]
    redirect: str | None = None
    exp: str | None = None
    has_all: bool = False


@dataclass(slots=True)
class MacroContext:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str                 # local@domain (local is "postmaster" when unknown)
    domain: str                 # the <domain> of the current check_host()
    helo: str = "unknown"


# ---- syntax ----

def select_record(txts: list[str]) -> str | None:
    """The SPF record among a name's TXT values; >1 is a permerror (§4.5)."""
    found = [t for t in txts if t[:6].lower() == "v=spf1" and (len(t) == 6 or t[6] == " ")]
    if len(found) > 1:
        raise SpfSyntaxError(f"{len(found)} SPF records published (exactly one allowed)")
    return found[0] if found else None


def _check_domain_spec(spec: str, term: str) -> None:
    if not spec:
        raise SpfSyntaxError(f"{term!r}: empty domain")
    if "%" in spec:
        _validate_macro_string(spec, term)
        if spec.endswith("}"):
            return  # domain-end may be a macro-expand
    labels = spec.rstrip(".").split(".")
    if len(labels) < 2 or not _TOPLABEL.match(labels[-1]):
        raise SpfSyntaxError(f"{term!r}: {spec!r} is not a domain name")


def _validate_macro_string(s: str, term: str) -> None:
    i = 0
    while i < len(s):
        if s[i] != "%":
            if not (0x21 <= ord(s[i]) <= 0x7e):
                raise SpfSyntaxError(f"{term!r}: invalid character {s[i]!r}")
            i += 1
            continue
        nxt = s[i + 1:i + 2]
        if nxt in ("%", "_", "-"):
            i += 2
            continue
        m = _MACRO.match(s, i)
        if not m or m.group("letter").lower() not in "slodiphv":
            raise SpfSyntaxError(f"{term!r}: bad macro at {s[i:i + 12]!r}")
        i = m.end()


def _parse_directive(term: str) -> Directive:
    qualifier = "+"
    body = term
    if body[0] in _QUALIFIERS:
        qualifier, body = body[0], body[1:]
    name, sep, arg = body.partition(":")
    # a/24 and mx//64 carry a cidr without a ':'
    if not sep and "/" in name:
        name, arg = name.split("/", 1)
        arg = "/" + arg
        sep = ""
    name = name.lower()
    if name not in _MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    if name == "all":
        if sep or arg:
            raise SpfSyntaxError(f"{term!r}: 'all' takes no argument")
        return Directive(qualifier, name, None, text=term)
    if name in ("ip4", "ip6"):
        if not sep:
            raise SpfSyntaxError(f"{term!r}: {name} needs an address")
        addr, slash, length = arg.partition("/")
        limit = 32 if name == "ip4" else 128
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise SpfSyntaxError(f"{term!r}: {addr!r} is not an IP address") from None
        if ip.version != (4 if name == "ip4" else 6):
            raise SpfSyntaxError(f"{term!r}: {addr!r} is not an IPv{name[-1]} address")
        if slash and not (length.isdigit() and (length == "0" or length[0] != "0")
                          and int(length) <= limit):
            raise SpfSyntaxError(f"{term!r}: bad prefix length /{length}")
        n = int(length) if slash else limit
        return Directive(qualifier, name, addr, n if name == "ip4" else None,
                         n if name == "ip6" else None, text=term)
    if name in ("include", "exists"):
        if not sep:
            raise SpfSyntaxError(f"{term!r}: {name} needs a domain")
        _check_domain_spec(arg, term)
        return Directive(qualifier, name, arg, text=term)
    if name == "ptr":
        if sep:
            _check_domain_spec(arg, term)
        return Directive(qualifier, name, arg if sep else None, text=term)
    # a / mx [":" domain-spec] [ dual-cidr-length ]
    m = _CIDR.match(arg)
    assert m is not None
    spec, c4, c6 = m.group("spec"), m.group("c4"), m.group("c6")
    if sep and spec:
        _check_domain_spec(spec, term)
    elif sep or spec:
        raise SpfSyntaxError(f"{term!r}: bad argument")
    if c4 is not None and int(c4) > 32 or c6 is not None and int(c6) > 128:
        raise SpfSyntaxError(f"{term!r}: bad prefix length")
    return Directive(qualifier, name, spec or None, int(c4) if c4 else None,
                     int(c6) if c6 else None, text=term)


def parse_record(text: str) -> SpfRecord:
    """Parse one "v=spf1 …" record; raise SpfSyntaxError on any bad term."""
    if text[:6].lower() != "v=spf1" or (len(text) > 6 and text[6] != " "):
        raise SpfSyntaxError("not an SPF record (must start with \"v=spf1 \")")
    directives: list[Directive] = []
    redirect = exp = None
    for term in text[6:].split(" "):
        if not term:
            continue
        name, eq, value = term.partition("=")
        if eq and _MODIFIER_NAME.match(name) and ":" not in name and "/" not in name:
            lname = name.lower()
            if lname in ("redirect", "exp"):
                if (redirect if lname == "redirect" else exp) is not None:
                    raise SpfSyntaxError(f"{lname}= appears more than once")
                _check_domain_spec(value, term)
                if lname == "redirect":
                    redirect = value
                else:
                    exp = value
            elif "%" in value:
                _validate_macro_string(value, term)  # unknown modifiers are ignored (§6)
            continue
        directives.append(_parse_directive(term))
    return SpfRecord(tuple(directives), redirect, exp,
                     any(d.mechanism == "all" for d in directives))


# ---- macros (§7) ----

def _macro_value(letter: str, ctx: MacroContext) -> str:
    local, _, sdomain = ctx.sender.rpartition("@")
    if letter == "s":
        return ctx.sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return sdomain
    if letter == "d":
        return ctx.domain
    if letter == "i":
        if ctx.ip.version == 4:
            return str(ctx.ip)
        return ".".join(ctx.ip.exploded.replace(":", ""))
    if letter == "p":
        return "unknown"
    if letter == "v":
        return "in-addr" if ctx.ip.version == 4 else "ip6"
    if letter == "h":
        return ctx.helo
    raise SpfSyntaxError(f"macro letter {letter!r} not allowed here")


def expand(s: str, ctx: MacroContext) -> str:
    """Expand a macro-string; a domain result longer than 253 loses left labels."""
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1:i + 2]
        if nxt == "%":
            out.append("%")
        elif nxt == "_":
            out.append(" ")
        elif nxt == "-":
            out.append("%20")
        else:
            m = _MACRO.match(s, i)
            if not m:
                raise SpfSyntaxError(f"bad macro at {s[i:i + 12]!r}")
            letter = m.group("letter")
            value = _macro_value(letter.lower(), ctx)
            delims = m.group("delims") or "."
            parts = re.split("[" + re.escape(delims) + "]", value)
            if m.group("rev"):
                parts.reverse()
            if m.group("digits"):
                n = int(m.group("digits"))
                if n == 0:
                    raise SpfSyntaxError("macro transformer of 0 labels")
                parts = parts[-n:]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="")
            out.append(value)
            i = m.end()
            continue
        i += 2
    result = "".join(out)
    while len(result) > 253 and "." in result:
        result = result.split(".", 1)[1]
    return result


# ---- evaluation ----

@dataclass
class _Evaluation:
    resolver: Resolver
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
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

    async def _addresses(self, name: str, version: int, term: str) -> list:
        try:
            addrs = await self.resolver.addresses(name)
        except (NxDomain, NoRecords):
            self.void(f"{term} ({name})")
            return []
        except DnsTempError as exc:
            raise _Temp(str(exc)) from None
        return [a for a in map(ipaddress.ip_address, addrs) if a.version == version]

    def _in(self, addrs: list, d: Directive) -> bool:
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
                return _QUALIFIERS[d.qualifier], f"{domain}: {d.text}"
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
