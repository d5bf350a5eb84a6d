"""The syntax of what the admin API and the `mta` CLI take from operators.

One job: say whether a destination name, queue id, webhook name or integer
parameter is well formed, and normalise it, before anything acts on it.
Whether it names something that exists is the backend's question (404).

Public API:
    parse_destination(text) -> (kind, name)   kind: "sandbox" | "domain" |
                                              "literal" | "route"; name normalised
    check_queue_id(text) -> str
    check_webhook_name(text) -> str
    parse_uint(text, lo, hi) -> int           ASCII digits only, lo <= n <= hi
    has_control(text) -> bool
    INT64_MAX, MAX_DESTINATION, MAX_QUEUE_ID, MAX_WEBHOOK_NAME
Every check raises ValueError whose message says what is wrong (without
the field name: the caller adds it) and never echoes more than 60 characters
of the input.

A destination name is what `mta queue summary` shows and delivery uses
(mta.policy.routing):
    "sandbox"               everything, in sandbox mode
    a domain                mail delivered by MX; LDH labels, at most 253
                            characters, U-labels converted to A-labels,
                            lower-cased, a trailing dot dropped
    "[ip]" ("[IPv6:ip]")    a recipient domain literal, delivered to that IP
    "[host]:port"           a configured route (smarthost); host an IP address
                            or a host name, port 1-65535
Nothing else: no spaces, control characters, "/", "%", or more than
MAX_DESTINATION characters.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from mta.core.address import AddressError, parse_domain

__all__ = ["parse_destination", "check_queue_id", "check_webhook_name", "parse_uint",
           "has_control", "INT64_MAX", "MAX_DESTINATION", "MAX_QUEUE_ID", "MAX_WEBHOOK_NAME"]

INT64_MAX = 2**63 - 1            # SQLite's INTEGER; ledger sequence numbers live here
MAX_DESTINATION = 270            # "[" + 253-character host + "]:65535"
MAX_QUEUE_ID = 64                # ids are 16 characters (mta.core.ids); room for others
MAX_WEBHOOK_NAME = 200

_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,%d}" % MAX_QUEUE_ID)
_DIGITS = re.compile(r"[0-9]{1,25}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _show(text: str) -> str:
    """The input for an error message: repr'd (control characters escaped), cut."""
    return repr(text if len(text) <= 60 else text[:60] + "…")


def has_control(text: str) -> bool:
    """True if `text` holds a control, format, surrogate or unassigned-private
    character (Unicode category C*), e.g. NUL, ESC, CR, LF, DEL, U+202E."""
    return any(unicodedata.category(c)[0] == "C" for c in text)


def parse_uint(text: str, lo: int, hi: int) -> int:
    """An integer written in ASCII digits (no sign, space, "_" or other
    scripts' digits) from lo to hi."""
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        raise ValueError(f"must be an integer from {lo} to {hi}")
    n = int(text)
    if not lo <= n <= hi:
        raise ValueError(f"must be an integer from {lo} to {hi}")
    return n


def check_queue_id(text: str) -> str:
    if not isinstance(text, str) or not _QUEUE_ID.fullmatch(text):
        raise ValueError(f"{_show(str(text))} is not a queue id (letters and digits, "
                         f"at most {MAX_QUEUE_ID})")
    return text


def check_webhook_name(text: str) -> str:
    if not isinstance(text, str) or not text:
        raise ValueError("must be a webhook name")
    if len(text) > MAX_WEBHOOK_NAME:
        raise ValueError(f"is too long ({len(text)} characters, at most {MAX_WEBHOOK_NAME})")
    if has_control(text):
        raise ValueError(f"{_show(text)} contains control characters")
    return text


def _host_name(host: str) -> str:
    """A route's host name: LDH labels (underscores tolerated, as in config)."""
    h = host.lower()
    if not h or len(h) > 253 or not all(_HOST_LABEL.fullmatch(lab) for lab in h.split(".")):
        raise ValueError("bad host")
    return h


def _literal(inner: str) -> str:
    """The inside of a domain literal "[…]": an IPv4 address or "IPv6:" + IPv6."""
    ip = inner[5:] if inner.lower().startswith("ipv6:") else inner
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError("bad address literal") from None
    if addr.version == 6 and ip is inner:
        raise ValueError("an IPv6 literal is written [IPv6:addr]")
    return inner


def parse_destination(text: str) -> tuple[str, str]:
    """(kind, normalised name) of a destination name; ValueError if it
    cannot be one (see the module docstring for the grammar)."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be a destination name (a domain, \"[host]:port\" or \"sandbox\")")
    if len(text) > MAX_DESTINATION:
        raise ValueError(f"is too long ({len(text)} characters, at most {MAX_DESTINATION})")
    if has_control(text) or any(c.isspace() for c in text):
        raise ValueError(f"{_show(text)} contains spaces or control characters")
    if text.lower() == "sandbox":
        return "sandbox", "sandbox"
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{_show(text)}: '[' without ']'")
        inner, rest = text[1:end], text[end + 1:]
        if rest == "":
            try:
                return "literal", "[" + _literal(inner).lower() + "]"
            except ValueError as exc:
                raise ValueError(f"{_show(text)}: {exc}") from None
        port = rest[1:]
        if not rest.startswith(":") or not _DIGITS.fullmatch(port) \
                or not 0 < int(port) < 65536:
            raise ValueError(f"{_show(text)} is not \"[host]:port\" (port 1-65535)")
        try:
            host = str(ipaddress.ip_address(inner))
        except ValueError:
            try:
                host = _host_name(inner)
            except ValueError:
                raise ValueError(f"{_show(text)}: the host is not an IP address or a "
                                 "host name") from None
        return "route", f"[{host}]:{int(port)}"
    if "," in text and not any(c in text for c in "[]:/\\%@"):
        # an MX site (issue 15): its MX host names, sorted, joined with ","
        try:
            return "site", ",".join(sorted({parse_domain(h) for h in text.split(",")}))
        except AddressError:
            raise ValueError(f"{_show(text)} is not an MX site (host names joined with "
                             "\",\")") from None
    if any(c in text for c in "[]:/\\%@"):
        raise ValueError(f"{_show(text)} is not a domain, \"[host]:port\" or \"sandbox\"")
    try:
        return "domain", parse_domain(text)
    except AddressError:
        raise ValueError(f"{_show(text)} is not a valid domain") from None
