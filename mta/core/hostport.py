"""Socket addresses written as text: "host:port", "[host]:port", "[host]", "host".

One job: the one grammar every part uses to read an address from config or
an operator — listener and admin binds, route next hops, the admin client's
URL — so a value the config accepts is a value each user can split.

Public API:
    split_hostport(text, default_port=None) -> (host, port)
    split_ip_port(text, default_port) -> (ip, port)   an IP address, port optional
                                           (a bare IPv6 address needs no brackets)
    format_hostport(host, port) -> str     "[::1]:25" / "mx.example:25"
    is_loopback(host) -> bool              "localhost" or a loopback IP address

Grammar (nothing is stripped: a space is an error, not ignored):
    "host:port"       host without ":" (a name or an IPv4 address)
    "[host]:port"     brackets around any host; required for IPv6
    "[host]", "host"  only with a default_port
    port              ASCII digits, 0-65535 (0: "any free port" for a bind;
                      callers that need a real port check port > 0)
Invariants: the host returned is never empty and has no brackets; an
unbracketed host with more than one ":" ("::1:25") is refused as ambiguous;
every refusal is a ValueError whose message says what is wrong without
repeating the input (the caller names the field and shows the value).
"""

from __future__ import annotations

import ipaddress

__all__ = ["split_hostport", "split_ip_port", "format_hostport", "is_loopback"]


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

MAX_PORT = 65535


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_PORT:
        raise ValueError("the port is not a number from 0 to 65535")
    return int(text)


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of `text` (see the module docstring); ValueError if it is
    not one, or has no port and there is no default_port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("'[' without ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("only \":port\" may follow ']'")
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address needs brackets: [addr]:port")
    else:
        host, sep, after = text.partition(":")
        port = after if sep else None
    if not host:
        raise ValueError("empty host")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise ValueError("a space or control character in the host")
    if port is None:
        if default_port is None:
            raise ValueError("no port")
        return host, default_port
    return host, _port(port)


def split_ip_port(text: str, default_port: int) -> tuple[str, int]:
    """(ip, port) of "10.0.0.1", "::1", "10.0.0.1:5353" or "[::1]:5353" (a DNS
    server: a bare address takes `default_port`); ValueError when the host is
    not an IP address or the text is not host:port."""
    try:
        ipaddress.ip_address(text)
        return text, default_port
    except ValueError:
        pass
    host, port = split_hostport(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("the host is not an IP address") from None
    return host, port


def format_hostport(host: str, port: int) -> str:
    """The text `split_hostport` reads back: IPv6 (any ":" in host) bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
