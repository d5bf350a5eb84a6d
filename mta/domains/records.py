"""The DNS records a sending domain must publish, as values, zone text and JSON.

One job: from what we know about a domain (its DKIM selectors and keys) and
the server (public IPs, host name), say exactly which records to publish.
`check.py` verifies the same `DomainPlan` against DNS, so what we print and
what we check can never disagree (the host and PTR records below are
reminders about the server, shared by every domain: not checked).

Public API:
    SelectorKey(selector, algorithm, status, txt)     one DKIM key, txt = "v=DKIM1; k=…; p=…"
    DomainPlan(domain, selectors, public_ips, hostname, bounce_subdomain, dmarc_rua)
        .bounce_domain, .records() -> list[DnsRecord]
    DnsRecord(name, type, value, purpose, ttl, selector, required, note)
        .zone_line() / .to_dict()
    spf_value(public_ips, all_qualifier) / dmarc_value(domain, rua) / txt_strings(value)
    zone_text(plan) -> str       `NAME TTL IN TYPE VALUE`, one record per line, ";" comments
    records_json(plan) -> list[dict]

What we publish, and why:
  - DKIM: `<selector>._domainkey.<domain>. TXT "v=DKIM1; k=rsa|ed25519; p=…"`
    for every selector we hold (active, pending after a rotation, retiring
    during the grace period). d= of our signatures is the domain itself, so
    DKIM is DMARC-aligned in strict and relaxed mode.
  - SPF at <domain>: `v=spf1 ip4:… ip6:… ~all`. "~all", not "-all": the
    apex often has other senders (office mail, a CRM) the operator must merge
    in; a softfail does not get their mail rejected while DMARC is p=none.
    If the domain already has an SPF record, add our ip4:/ip6: terms to it
    instead: two "v=spf1" records are a permerror for everyone.
  - Return path `bounce.<domain>` (label from `[domains] bounce_subdomain`):
    `MX 10 <server.hostname>.` so bounces sent to the VERP envelope sender
    come back to us (the bounces issue builds on this), and its own SPF
    `v=spf1 ip4:… ip6:… -all` ("-all": nobody else ever uses this name).
    It is relaxed-aligned with <domain> for DMARC (same organisational
    domain), so DMARC must not say aspf=s.
  - The server itself: `<server.hostname>. A <ip>` per IPv4 and `AAAA <ip>`
    per IPv6 address of `[server] public_ips` (the return path's MX points
    at that name, and receivers check that the name resolves to the
    sending address), and per address a PTR reminder: the reverse DNS of
    the address must name server.hostname (forward-confirmed reverse DNS;
    many receivers refuse mail without it). The PTR is set by whoever owns
    the address block (the hosting provider), never in the domain's zone,
    so zone_text prints it as a comment.
  - DMARC at `_dmarc.<domain>`: `v=DMARC1; p=none; rua=mailto:<rua>`; rua is
    `[domains] dmarc_rua`, else `dmarc@<domain>` (the customer reads its own
    reports; a rua in another domain needs that domain to authorise it,
    RFC 7489 §7.1). p=none starts in monitoring mode, as RFC 7489 §6.7 advises.
  - TXT values longer than 255 bytes (RSA-2048 keys) are split into several
    quoted strings in one record; DNS joins them (RFC 7208 §3.3, RFC 6376
    §3.6.2.2). Names are absolute, ending in a dot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_TTL",
    "DnsRecord",
    "DomainPlan",
    "SelectorKey",
    "dmarc_value",
    "records_json",
    "spf_value",
    "txt_strings",
    "zone_text",
]

DEFAULT_TTL = 3600


@dataclass(frozen=True, slots=True)
class SelectorKey:
    selector: str
    algorithm: str      # "rsa-sha256" | "ed25519-sha256"
    status: str         # "active" | "pending" | "retiring"
    txt: str            # the DKIM TXT value for its public key
    retire_at: float | None = None


@dataclass(frozen=True, slots=True)
class DnsRecord:
    name: str           # absolute, ends with "."
    type: str           # "TXT" | "MX" | "A" | "AAAA" | "PTR"
    value: str          # TXT: the unquoted text; MX: "10 host."; A/AAAA: the address;
                        # PTR: "host."
    purpose: str        # "dkim" | "spf" | "dmarc" | "return-path" | "host" | "ptr"
    ttl: int = DEFAULT_TTL
    selector: str | None = None
    required: bool = True
    note: str = ""

    def rdata(self) -> str:
        if self.type == "TXT":
            return " ".join(_quote(s) for s in txt_strings(self.value))
        return self.value

    def zone_line(self) -> str:
        return f"{self.name} {self.ttl} IN {self.type} {self.rdata()}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = "IN"
        d["rdata"] = self.rdata()
        return d


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def txt_strings(value: str) -> list[str]:
    """Split a TXT value into ≤255-byte character-strings (ASCII values assumed)."""
    raw = value.encode("utf-8")
    if not raw:
        return [""]
    return [raw[i:i + 255].decode("utf-8", "replace") for i in range(0, len(raw), 255)]


def spf_value(public_ips: Sequence[str], all_qualifier: str = "~") -> str:
    terms = ["v=spf1"]
    for ip in public_ips:
        addr = ipaddress.ip_address(ip)
        terms.append(f"ip{addr.version}:{addr}")
    terms.append(f"{all_qualifier}all")
    return " ".join(terms)


def dmarc_value(domain: str, rua: str | None) -> str:
    return f"v=DMARC1; p=none; rua=mailto:{rua or f'dmarc@{domain}'}"


def _abs(name: str) -> str:
    return name.rstrip(".") + "."


@dataclass(frozen=True)
class DomainPlan:
    domain: str
    selectors: tuple[SelectorKey, ...]
    public_ips: tuple[str, ...]
    hostname: str
    bounce_subdomain: str = "bounce"
    dmarc_rua: str | None = None

    @property
    def bounce_domain(self) -> str:
        return f"{self.bounce_subdomain}.{self.domain}"

    def dkim_name(self, selector: str) -> str:
        return f"{selector}._domainkey.{self.domain}"

    def records(self) -> list[DnsRecord]:
        out = []
        for s in self.selectors:
            note = {"active": "signing key",
                    "pending": "new key (rotation): signing switches once it verifies",
                    "retiring": "old key: keep published until the grace period ends"}[s.status]
            out.append(DnsRecord(_abs(self.dkim_name(s.selector)), "TXT", s.txt, "dkim",
                                 selector=s.selector, required=s.status == "active",
                                 note=f"DKIM {s.algorithm} {note}"))
        out.append(DnsRecord(_abs(self.domain), "TXT", spf_value(self.public_ips, "~"), "spf",
                             note="SPF: merge the ip4:/ip6: terms into an existing record"))
        out.append(DnsRecord(_abs(f"_dmarc.{self.domain}"), "TXT",
                             dmarc_value(self.domain, self.dmarc_rua), "dmarc",
                             note="DMARC: start with p=none; keep aspf relaxed"))
        out.append(DnsRecord(_abs(self.bounce_domain), "MX", f"10 {_abs(self.hostname)}",
                             "return-path", note="return path: bounces come back to this server"))
        out.append(DnsRecord(_abs(self.bounce_domain), "TXT", spf_value(self.public_ips, "-"),
                             "spf", note="SPF of the return path (envelope sender domain)"))
        addrs = [ipaddress.ip_address(ip) for ip in self.public_ips]
        for a in addrs:
            out.append(DnsRecord(_abs(self.hostname), "A" if a.version == 4 else "AAAA", str(a),
                                 "host", required=False,
                                 note=f"the server: {self.hostname} (the return path's MX) must "
                                      f"resolve to each sending address (once for all domains)"))
        for a in addrs:
            out.append(DnsRecord(_abs(a.reverse_pointer), "PTR", _abs(self.hostname), "ptr",
                                 required=False,
                                 note=f"reverse DNS of {a} must name {self.hostname}: ask the "
                                      f"owner of the address (your hosting provider); not in "
                                      f"this zone"))
        return out


def zone_text(plan: DomainPlan) -> str:
    lines = [f"; DNS records for {plan.domain}: publish all of them, then run "
             f"`mta domain check {plan.domain}`"]
    if not plan.public_ips:
        lines.append("; WARNING: [server] public_ips is empty, so the SPF records authorise "
                     "nobody; set it and run `mta domain show` again")
    for r in plan.records():
        lines.append(f"; {r.note}")
        lines.append(f"; {r.zone_line()}" if r.type == "PTR" else r.zone_line())
    return "\n".join(lines) + "\n"


def records_json(plan: DomainPlan) -> list[dict[str, Any]]:
    return [r.to_dict() for r in plan.records()]
