"""Routing: which next hop a recipient domain's mail goes to.

Public API:
    destination_for(domain, routes, *, sandbox, mx_port=25) -> Destination
    parse_hostport(text, default_port=25) -> (host, port)   a next hop (core.hostport)

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

from collections.abc import Mapping

from mta.core.envelope import Destination
from mta.core.hostport import split_hostport

SANDBOX = Destination("sandbox", "sandbox")


def _norm(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


def parse_hostport(text: str, default_port: int = 25) -> tuple[str, int]:
    """A route's next hop: ``"host:port"``, ``"[::1]:25"``, ``"[host]"`` or
    ``"host"`` (mta.core.hostport's grammar, surrounding spaces ignored; the
    port 1-65535); ValueError naming the route otherwise."""
    try:
        host, port = split_hostport(text.strip(), default_port)
    except ValueError as exc:
        raise ValueError(f"bad route {text!r}: {exc}") from None
    if port == 0:
        raise ValueError(f"bad route {text!r}: port 0")
    return host, port


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
