"""Routing: which next hop a recipient domain's mail goes to.

Public API:
    destination_for(domain, routes, *, sandbox, mx_port=25) -> Destination
    parse_hostport(text, default_port=25) -> (host, port)

Order of decision (first match wins):
  1. sandbox mode       → Destination("sandbox", "sandbox"): nothing leaves the host
  2. routes[domain]     → kind "route" to the configured "host:port"
  3. routes["*"]        → kind "route" (a smarthost for every domain)
  4. otherwise          → kind "mx": look up the domain's MX, deliver on `mx_port`

Invariants: domain and route keys match case-insensitively and ignore a
trailing dot. A route's Destination carries no domain and is named
"[host]:port", so every domain sent through one smarthost shares one queue
and one concurrency window (Postfix's relayhost behaves the same way).
"""

from __future__ import annotations

from typing import Mapping

from mta.core.envelope import Destination

SANDBOX = Destination("sandbox", "sandbox")


def _norm(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def parse_hostport(text: str, default_port: int = 25) -> tuple[str, int]:
    """Split ``"host:port"``, ``"[::1]:25"``, ``"[host]"`` or ``"host"``."""
    s = text.strip()
    host, port = s, ""
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"bad route {text!r}: missing ']'")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad route {text!r}")
            port = rest[1:]
    elif s.count(":") == 1:
        host, port = s.split(":")
    elif s.count(":") > 1:
        raise ValueError(f"bad route {text!r}: write IPv6 addresses as \"[addr]:port\"")
    if not host:
        raise ValueError(f"bad route {text!r}: empty host")
    if port == "":
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad route {text!r}: bad port")
    return host, int(port)


def destination_for(domain: str, routes: Mapping[str, str], *, sandbox: bool,
                    mx_port: int = 25) -> Destination:
    if sandbox:
        return SANDBOX
    dom = _norm(domain)
    target = routes.get(dom)
    if target is None:  # keys as the operator wrote them ("Example.COM.")
        target = next((v for k, v in routes.items() if k != "*" and _norm(k) == dom), None)
    if target is None:
        target = routes.get("*")
    if target is not None:
        host, port = parse_hostport(target)
        return Destination(f"[{host}]:{port}", "route", host=host, port=port)
    return Destination(dom, "mx", domain=dom, port=mx_port)
