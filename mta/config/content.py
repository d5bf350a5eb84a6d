"""The content-and-compliance sections: [public], [tracking], [verification] (issue 16).

One job: declare the keys of the public listener (one-click unsubscribe,
click and open tracking), of tracking's opt-in and of one-time codes, and
check what only makes sense across keys (`content_checks`).

API:
    PublicConfig, BroadcastConfig, TrackingConfig, VerificationConfig   frozen dataclasses
    default_stream(cfg, credential) -> "broadcast" | "transactional"   (no header or field)
    content_checks(cfg) -> [error, …]                   cross-key checks
    VerificationTenantConfig                           [[verification_tenant]]
    verification_limits(cfg, tenant) -> {digits, ttl, max_attempts, resend_cooldown,
                                         max_sends}   the tenant's one-time-code limits
    tracks(cfg.tracking, kind, tenant, domain) -> bool  kind "clicks" | "opens"
    public_base(cfg) -> str | None                      the base URL of links (None: off)

Invariants: the public listener serves only the unsubscribe, click and open
endpoints, never the API; it is off unless `address` is set; a non-loopback
address needs TLS (cert + key) or `behind_tls_proxy`, and `base_url` (what
links in mail carry) must be https unless its host is loopback (tokens
travel in it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mta.config.schema import BOOL, DURATION, HOSTPORT, INT, STR, STR_LIST, host_of
from mta.config.schema import key as K
from mta.core.hostport import is_loopback
from mta.config.schema import live_key as L

if TYPE_CHECKING:
    from mta.config.sections import Config

__all__ = ["BroadcastConfig", "PublicConfig", "TrackingConfig", "VerificationConfig",
           "VerificationTenantConfig", "content_checks", "default_stream", "public_base",
           "tracks", "verification_limits"]


@dataclass(frozen=True)
class PublicConfig:
    """The public HTTP listener: one-click unsubscribe and tracking only."""
    address: str | None = K(None, "\"host:port\" of the public listener (unsubscribe, click "
                            "and open endpoints; unset: off, and broadcast mail is refused)",
                            HOSTPORT, optional=True)
    base_url: str | None = K(None, "the URL mail links carry, as the internet reaches this "
                             "listener (e.g. \"https://mail.example.com\"); default: "
                             "http://<address> (loopback only)", STR, optional=True)
    cert: str | None = K(None, "PEM certificate chain path: serve over HTTPS", STR,
                         optional=True)
    key: str | None = K(None, "PEM private key path (with cert)", STR, optional=True)
    behind_tls_proxy: bool = K(False, "a TLS-terminating proxy sits in front: allows a "
                               "non-loopback address without cert/key", BOOL)


@dataclass(frozen=True)
class BroadcastConfig:
    """Broadcast mail by default, per credential (a message may still say otherwise)."""
    credentials: tuple[str, ...] = L((), "credentials whose mail is broadcast unless it says "
                                     "transactional: API keys as \"api:NAME\", SMTP users "
                                     "by name", STR_LIST, max=1000)


def default_stream(cfg: Config, credential: str | None) -> str:
    """"broadcast" for a credential [broadcast] lists, else "transactional"."""
    return "broadcast" if credential and credential in cfg.broadcast.credentials \
        else "transactional"


@dataclass(frozen=True)
class TrackingConfig:
    """Click and open tracking: off unless opted in, per tenant or sending domain."""
    clicks: tuple[str, ...] = L((), "tenants (\"tenant:NAME\"), sending domains, or \"*\" "
                                "whose html links are rewritten through the public listener",
                                STR_LIST, max=1000)
    opens: tuple[str, ...] = L((), "the same for the open pixel (opens are an estimate: "
                               "image proxies and privacy protection fetch it)",
                               STR_LIST, max=1000)


@dataclass(frozen=True)
class VerificationConfig:
    """One-time codes (POST /verifications); a tenant's limits may override each."""
    digits: int = L(6, "digits of a code", INT, min=4, max=10)
    ttl: float = L(600.0, "how long a code is valid", DURATION, min=60, max=86400)
    max_attempts: int = L(5, "checks of one verification before it fails", INT, min=1, max=20)
    resend_cooldown: float = L(30.0, "least time between two sends of one verification",
                               DURATION, min=0, max=3600)
    max_sends: int = L(5, "sends of one verification (the first included)", INT, min=1,
                       max=20)


@dataclass(frozen=True)
class VerificationTenantConfig:
    """[[verification_tenant]]: one tenant's own one-time-code limits (unset: [verification]'s)."""
    tenant: str = L("", "the tenant's name", STR)
    digits: int | None = L(None, "digits of a code", INT, min=4, max=10, optional=True)
    ttl: float | None = L(None, "how long a code is valid", DURATION, min=60, max=86400,
                          optional=True)
    max_attempts: int | None = L(None, "checks before it fails", INT, min=1, max=20,
                                 optional=True)
    resend_cooldown: float | None = L(None, "least time between two sends", DURATION, min=0,
                                      max=3600, optional=True)
    max_sends: int | None = L(None, "sends of one verification", INT, min=1, max=20,
                              optional=True)


def verification_limits(cfg: Config, tenant: str) -> dict[str, float]:
    """[verification] with the tenant's [[verification_tenant]] laid over it."""
    base = cfg.verification
    out: dict[str, float] = {k: getattr(base, k) for k in _OTP_KEYS}
    for t in cfg.verification_tenant:
        if t.tenant == tenant:
            out.update({k: getattr(t, k) for k in _OTP_KEYS if getattr(t, k) is not None})
    return out


_OTP_KEYS = ("digits", "ttl", "max_attempts", "resend_cooldown", "max_sends")


def tracks(t: TrackingConfig, kind: str, tenant: str, domain: str) -> bool:
    """Whether mail of `tenant` from `domain` gets `kind` ("clicks" or
    "opens") tracking: "*", "tenant:NAME", the domain or a parent of it."""
    names = t.clicks if kind == "clicks" else t.opens
    if not names:
        return False
    if "*" in names or f"tenant:{tenant}" in names:
        return True
    labels = domain.lower().split(".")
    return any(".".join(labels[i:]) in names for i in range(len(labels) - 1))


def content_checks(cfg: Config) -> list[str]:
    p, errors = cfg.public, []
    names = [t.tenant for t in cfg.verification_tenant]
    for i, name in enumerate(names):
        if not name or names.count(name) > 1:
            errors.append(f"verification_tenant[{i}].tenant: a tenant's name, once")
    if (p.cert is None) != (p.key is None):
        errors.append("public: set both cert and key, or neither")
    if p.address is None:
        for kind in ("clicks", "opens"):
            if getattr(cfg.tracking, kind):
                errors.append(f"tracking.{kind}: tracking needs the public listener "
                              "(set public.address)")
        return errors
    if p.cert is None and not p.behind_tls_proxy and not is_loopback(host_of(p.address)):
        errors.append(f"public.address: {p.address} is not a loopback address: set "
                      "public.cert and public.key, or public.behind_tls_proxy = true")
    if cfg.api.address == p.address or (cfg.admin.enabled and cfg.admin.address == p.address):
        errors.append(f"public.address: {p.address} is taken by the admin or sending API")
    if p.base_url is not None:
        u = urlsplit(p.base_url)
        if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment \
                or any(c.isspace() or ord(c) < 32 for c in p.base_url):
            errors.append(f"public.base_url: {p.base_url!r} is not an http(s) URL without "
                          "query or fragment")
        elif u.scheme == "http" and not is_loopback(u.hostname):
            errors.append("public.base_url: must be https (unsubscribe and click tokens "
                          "travel in it) unless its host is loopback")
    elif not is_loopback(host_of(p.address)):
        errors.append("public.base_url: required when public.address is not loopback "
                      "(the URL the internet reaches this listener by)")
    return errors


def public_base(cfg: Config) -> str | None:
    """The base URL links in mail carry, without a trailing "/"; None: off."""
    p = cfg.public
    if p.address is None:
        return None
    if p.base_url is not None:
        return p.base_url.rstrip("/")
    scheme = "https" if p.cert else "http"
    return f"{scheme}://{p.address}"
