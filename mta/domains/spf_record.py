"""SPF (RFC 7208) records as values: the syntax of "v=spf1 …" and its macro language.

One job: turn a published TXT value into an `SpfRecord` (or say exactly
which term is wrong), and expand the macro strings of RFC 7208 §7. Pure: no
DNS, no I/O; `spf.check_host` evaluates what this parses.

Public API:
    parse_record(text) -> SpfRecord        pure syntax check (raises SpfSyntaxError)
    select_record(txts) -> str | None      the one "v=spf1" record among TXT values
    expand(macro_string, ctx) -> str       the macro language of RFC 7208 §7
    SpfRecord(directives, redirect, exp, has_all), Directive(qualifier, mechanism,
        spec, cidr4, cidr6, text), MacroContext(ip, sender, domain, helo)
    SpfSyntaxError                         ValueError: the record is a permerror
    QUALIFIERS                             "+" -> "pass", "-" -> "fail", …

Invariants:
  - parse_record accepts exactly RFC 7208 §12's grammar: unknown mechanisms,
    a repeated redirect=/exp=, bad prefix lengths, a domain-spec whose last
    label is not a top label, and malformed macros are all SpfSyntaxError.
  - Unknown modifiers are ignored (§6) but their macros must still parse.
  - expand never touches DNS; a result longer than 253 characters loses
    labels on the left (§7.3). The %{p} macro expands to "unknown" (see
    spf.py on "ptr").
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

__all__ = ["QUALIFIERS", "Directive", "MacroContext", "SpfRecord", "SpfSyntaxError", "expand",
           "parse_record", "select_record"]

QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_TOPLABEL = re.compile(r"(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9-]*[a-z0-9])\.?$",
                       re.IGNORECASE)
_MODIFIER_NAME = re.compile(r"[a-z][a-z0-9_.-]*$", re.IGNORECASE)
_CIDR = re.compile(r"(?P<spec>.*?)(?:/(?P<c4>0|[1-9][0-9]?))?(?://(?P<c6>0|[1-9][0-9]{0,2}))?$",
                   re.DOTALL)
_MACRO = re.compile(r"%\{(?P<letter>[a-zA-Z])(?P<digits>[0-9]*)(?P<rev>[rR]?)"
                    r"(?P<delims>[.\-+,/_=]*)\}")


class SpfSyntaxError(ValueError):
    """The record (or a macro in it) does not parse: a permerror."""


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
    if body[0] in QUALIFIERS:
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
