"""Sending domains as values: their states, the legal moves, the rows a store returns.

One job: the vocabulary every other module of the package (and a store of
any kind) shares: which states a domain and a DKIM selector can be in, which
moves between them are legal, and the frozen rows that carry them.

Public API:
    DomainState: PENDING, VERIFIED, FAILED          (enum.StrEnum)
    SelectorStatus: PENDING, ACTIVE, RETIRING, REMOVED
    DOMAIN_TRANSITIONS, SELECTOR_TRANSITIONS        the tables
    DOMAIN_MACHINE, SELECTOR_MACHINE                core.statemachine.StateMachine over them
    selector_subject(domain, selector) -> str       how a selector is named in logs and errors
    Domain, Selector                                frozen rows (Domain.selectors sorted)
    NewKey(selector, algorithm, private_pem, status)  a key entering a store
    DomainExists, UnknownDomain                     a store's typed errors

State machines (one checked, logged move each: core.statemachine):
    domain    pending  -> pending | verified        (checks until DNS is right)
              verified -> verified | failed         (daily re-check; DNS broke)
              failed   -> failed | verified         (fixed)
    selector  pending  -> active                    (its record verified)
              active   -> retiring                  (a newer key took over)
              retiring -> removed                   (after retire_at: row and key gone)
    A move logs ``event=transition machine=domain subject=<domain> from=… to=…``
    (selector: ``subject=<selector>._domainkey.<domain>``); an illegal one
    raises core.statemachine.IllegalTransition naming the subject and move.

Invariants:
  - States are StrEnum members: they equal, and are stored as, their strings.
  - "removed" is never stored: a selector that reaches it no longer exists.
  - Stdlib and core only: a store implementation imports this, never the
    other way round.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from mta.core.errors import MtaError
from mta.core.statemachine import StateMachine

__all__ = ["DOMAIN_MACHINE", "DOMAIN_TRANSITIONS", "SELECTOR_MACHINE", "SELECTOR_TRANSITIONS",
           "Domain", "DomainExists", "DomainState", "NewKey", "Selector", "SelectorStatus",
           "UnknownDomain", "selector_subject"]

log = logging.getLogger("mta.domains")


class DomainState(enum.StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    FAILED = "failed"


class SelectorStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRING = "retiring"
    REMOVED = "removed"


DOMAIN_TRANSITIONS: Mapping[DomainState, frozenset[DomainState]] = {
    DomainState.PENDING: frozenset({DomainState.PENDING, DomainState.VERIFIED}),
    DomainState.VERIFIED: frozenset({DomainState.VERIFIED, DomainState.FAILED}),
    DomainState.FAILED: frozenset({DomainState.FAILED, DomainState.VERIFIED}),
}

SELECTOR_TRANSITIONS: Mapping[SelectorStatus, frozenset[SelectorStatus]] = {
    SelectorStatus.PENDING: frozenset({SelectorStatus.ACTIVE}),
    SelectorStatus.ACTIVE: frozenset({SelectorStatus.RETIRING}),
    SelectorStatus.RETIRING: frozenset({SelectorStatus.REMOVED}),
    SelectorStatus.REMOVED: frozenset(),
}

DOMAIN_MACHINE = StateMachine("domain", DOMAIN_TRANSITIONS, log)
SELECTOR_MACHINE = StateMachine("selector", SELECTOR_TRANSITIONS, log)


def selector_subject(domain: str, selector: str) -> str:
    """A selector named as its DNS record is: `<selector>._domainkey.<domain>`."""
    return f"{selector}._domainkey.{domain}"


class DomainExists(MtaError):
    pass


class UnknownDomain(MtaError):
    pass


class NewKey(NamedTuple):
    """A DKIM key handed to a store; its private half stays there from then on."""
    selector: str
    algorithm: str          # "rsa-sha256" | "ed25519-sha256"
    private_pem: bytes
    status: SelectorStatus


@dataclass(frozen=True, slots=True)
class Selector:
    domain: str
    selector: str
    algorithm: str
    created: float
    status: SelectorStatus
    retire_at: float | None
    key_path: str           # where the store keeps the private key (shown, never read here)

    def to_dict(self) -> dict[str, Any]:
        return {"selector": self.selector, "algorithm": self.algorithm,
                "created": self.created, "status": self.status.value,
                "retire_at": self.retire_at, "key_path": self.key_path}


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    state: DomainState
    created: float
    last_checked: float | None
    failure_reason: str | None
    next_check: float | None
    check_attempts: int
    selectors: tuple[Selector, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.name, "state": self.state.value, "created": self.created,
                "last_checked": self.last_checked, "failure_reason": self.failure_reason,
                "next_check": self.next_check, "check_attempts": self.check_attempts,
                "selectors": [s.to_dict() for s in self.selectors]}
