"""[tls]: outbound transport security (issue 17) — MTA-STS, DANE, overrides, TLS-RPT.

One job: declare the keys that decide how delivery protects a connection, and
check them.

API:
    TlsConfig                          the frozen section
    OVERRIDE_LEVELS                    Postfix's names for a per-domain policy
    (policy.tlspolicy.override_for(cfg.tls.policy, domain): the domain's or a parent's level)

Keys (all live: the delivery reads them per batch):
    policy        {"example.com" = "dane-only" | "verify" | "encrypt" | "may" | "none"}:
                  the operator's word for a recipient domain (and its subdomains),
                  over DANE and MTA-STS
    mta_sts       look up and enforce MTA-STS (RFC 8461) policies (default true)
    dane          use TLSA records the resolver says are authenticated (AD bit;
                  RFC 7672). Default false: the AD bit is only worth trusting from a
                  validating resolver on loopback ([dns] nameservers)
    ca_file       PEM trust anchors for certificate checks (MTA-STS, "verify") and
                  the policy fetch; unset: the system's store
    mta_sts_port  the port policy hosts are fetched on (443; tests use another)
    min_version   "TLSv1.2" (default) or "TLSv1.3"
    ciphers       an OpenSSL cipher list for TLS 1.2 (unset: OpenSSL's default)
    reports       send TLS-RPT reports (RFC 8460) to domains that ask (default true)
    report_contact  the contact-info of our reports (default postmaster@<hostname>)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mta.config.schema import BOOL, INT, STR, Kind, KeyError_, choice
from mta.config.schema import live_key as L

__all__ = ["OVERRIDE_LEVELS", "TlsConfig"]

OVERRIDE_LEVELS = ("dane-only", "verify", "encrypt", "may", "none")
_LEVEL = choice(*OVERRIDE_LEVELS)


def _policy_map(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise KeyError_("must be a table of domain = level")
    out: dict[str, str] = {}
    for domain, level in v.items():
        name = str(domain).strip().lower().rstrip(".")
        if not name or any(c.isspace() or ord(c) < 33 for c in name):
            raise KeyError_(f"{domain!r} is not a domain")
        try:
            out[name] = _LEVEL.parse(level)
        except KeyError_ as exc:
            raise KeyError_(f"{domain}: {exc}") from None
    return tuple(sorted(out.items()))     # hashable: a frozen default, compared on reload


POLICY_MAP = Kind("table of domain = " + " | ".join(repr(c) for c in OVERRIDE_LEVELS),
                  _policy_map, lambda v: dict(v))


@dataclass(frozen=True)
class TlsConfig:
    policy: tuple[tuple[str, str], ...] = L((), "per recipient domain (and its subdomains): "
                                            "dane-only, verify, encrypt, may or none — over "
                                            "DANE and MTA-STS", POLICY_MAP)
    mta_sts: bool = L(True, "look up and enforce MTA-STS policies (RFC 8461)", BOOL)
    dane: bool = L(False, "use DNSSEC-authenticated TLSA records (RFC 7672); needs a "
                   "validating resolver on loopback in [dns] nameservers", BOOL)
    ca_file: str | None = L(None, "PEM trust anchors for certificate checks and MTA-STS "
                            "policy fetches (unset: the system's)", STR, optional=True)
    mta_sts_port: int = L(443, "port of MTA-STS policy hosts", INT, min=1, max=65535)
    min_version: str = L("TLSv1.2", "lowest TLS version offered to mail servers",
                         choice("TLSv1.2", "TLSv1.3"))
    ciphers: str | None = L(None, "OpenSSL cipher list for TLS 1.2 (unset: OpenSSL's)", STR,
                            optional=True)
    reports: bool = L(True, "send daily TLS-RPT reports (RFC 8460) to domains that "
                      "publish _smtp._tls", BOOL)
    report_contact: str | None = L(None, "contact-info of our TLS-RPT reports (unset: "
                                   "postmaster@<hostname>)", STR, optional=True)

