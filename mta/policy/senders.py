"""Sender enforcement: may this credential send as this domain? (pure)

One job: decide, for the MAIL FROM domain and each From: header domain of a
submission, whether the authenticated credential may use it and whether the
domain is set up, and say why not in a reply the application can act on.

API
    domain_in_scopes(domain, scopes) -> bool
        "d" allows exactly d; "*.d" allows every subdomain of d (not d).
    normal_scopes(domains) -> tuple[str, ...]
        scopes as stored (IDNA A-labels, lower case, "*." kept, duplicates
        dropped); ValueError naming a bad one. SMTP credentials and API keys
        both store theirs this way.
    SenderPolicy(require_verified, domain_state)
        .check(domain, scopes, where) -> Reply | None   (None = allowed)
        .registration(domain) -> (added domain, state) | None
        domain_state(domain) -> "verified" | "pending" | "failed" | None
        is looked up for the domain, then for each parent (a verified
        example.com covers mail.example.com's From: for alignment purposes).

Rules
  * scopes None (an unscoped credential, issue 2 style) skips the scope test;
    the verification requirement still applies.
  * Trusted-network clients (no credential) are not checked here: they are
    the operator's own hosts, like Postfix's mynetworks.
  * Refusals are 550 5.7.1 and name the domain and the reason; an unverified
    domain's reply tells the operator which command to run: for a domain
    never added (neither it nor a parent), `mta domain add D`; for one added
    but pending or failed, `mta domain check A` with A the domain that was
    added (D itself or the parent covering it).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence

from mta.core.address import AddressError, parse_domain
from mta.core.reply import Reply


def normal_scopes(domains: Sequence[object]) -> tuple[str, ...]:
    out = []
    for d in domains:
        if not isinstance(d, str):
            raise ValueError(f"invalid sending domain {d!r}")
        wild = d.startswith("*.")
        try:
            name = parse_domain(d[2:] if wild else d)
        except AddressError as exc:
            raise ValueError(f"invalid sending domain {d!r}: {exc}") from None
        out.append(f"*.{name}" if wild else name)
    return tuple(dict.fromkeys(out))


def domain_in_scopes(domain: str, scopes: tuple[str, ...]) -> bool:
    for s in scopes:
        if s.startswith("*."):
            if domain.endswith("." + s[2:]):
                return True
        elif domain == s:
            return True
    return False


def _parents(domain: str) -> Iterator[str]:
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        yield ".".join(labels[i:])


@dataclass(frozen=True)
class SenderPolicy:
    require_verified: bool
    domain_state: Callable[[str], str | None]

    def registration(self, domain: str) -> tuple[str, str] | None:
        """(the added domain covering `domain`, its state), or None."""
        for d in _parents(domain):
            state = self.domain_state(d)
            if state is not None:
                return d, state
        return None

    def check(self, domain: str, scopes: tuple[str, ...] | None, where: str) -> Reply | None:
        """`where` names the field for the reply: "MAIL FROM" or "From: header"."""
        domain = domain.lower().rstrip(".")
        if scopes is not None and not domain_in_scopes(domain, scopes):
            return Reply(550, "5.7.1", f"Sender domain {domain} ({where}) is not allowed "
                                       f"for this credential")
        if self.require_verified:
            found = self.registration(domain)
            if found is None:
                return Reply(550, "5.7.1", f"Sender domain {domain} ({where}) is not set up "
                                           f"(never added): run `mta domain add {domain}`")
            added, state = found
            if state != "verified":
                return Reply(550, "5.7.1", f"Sender domain {domain} ({where}) is {state}, "
                                           f"not verified: publish the DNS records of {added} "
                                           f"and run `mta domain check {added}`")
        return None
