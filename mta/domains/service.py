"""Sending domains as operations: add, check, rotate, remove, and the keys to sign with.

One job: tie the store, the key generator, the record plan and the DNS check
together, and decide what a check result means for a domain's state.

Public API:
    DomainService(cfg, resolver=None, clock=SystemClock(), store=None)
        store: a `store.DomainStore`; None = the embedded default
        (`sqlite_store.SqliteDomainStore` under `[server] state_dir`)
        .add(domain, selector=None, algorithm="both") -> Domain
        .remove(domain)  .list() -> [Domain]  .show(domain) -> dict
        .plan(domain) -> DomainPlan                 (records to publish: records.py)
        await .check(domain) -> CheckResult         (runs the check, applies `decide`)
        .rotate(domain, selector=None) -> Domain
        .signing_keys(domain) -> [mta.mail.dkim.SigningKey]
        .due_checks(now) -> [domain]                (for the daemon's timer)
    SendingDomains (Protocol)   what the daemon's domain cache needs of the
                                service: list, get, signing_keys, due_checks, check
    decide(domain, result, now, cfg) -> Decision     pure: the state change a check implies
    next_check_delay(attempts, schedule) -> seconds  pure: the backoff
    default_selector(now, taken) / selector_names(base, algorithm)
    DomainError

Selectors: with `--selector S` (default S = "mta" + UTC yyyymm, then
"mta202501b", "…c" if taken) the RSA key is S and the Ed25519 key is S-ed,
so one name identifies a key generation. `--algorithm` rsa | ed25519 | both.

Check schedule (the daemon calls `due_checks(now)` then `check`):
    pending / failed: after the n-th failing check in a row, wait
        `[domains] check_schedule`[n-1] (1m, 5m, 15m, 1h, 6h, 1d, 1d, …).
    verified: re-check after `recheck_verified` (1d); a failure flips it to
        failed with the reason (logged), unless every failure was a DNS
        timeout/SERVFAIL, which keeps it verified and retries on the schedule.
Rotation: `rotate` adds a pending selector per algorithm in use, published
alongside the old. A check that finds a pending selector's record correct
promotes it to active and moves the old active key of that algorithm to
retiring (retire_at = now + rotation_grace); signing follows `active`, so it
switches exactly then. A retiring key past retire_at is deleted (row and
file) by the next check. Time comes from the injected clock, never inline.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mta.config.sections import Config
from mta.core.address import AddressError, parse_domain
from mta.core.clock import Clock, SystemClock
from mta.core.errors import MtaError
from mta.delivery.resolver import DnsResolver, Resolver
from mta.domains.check import CheckResult, check_domain
from mta.domains.model import Domain, DomainState, NewKey, SelectorStatus, UnknownDomain
from mta.domains.records import DomainPlan, SelectorKey
from mta.domains.sqlite_store import SqliteDomainStore
from mta.domains.store import DomainStore
from mta.mail.dkim import SigningKey, generate_key

__all__ = ["ALGORITHMS", "Decision", "DomainError", "DomainService", "SendingDomains", "decide",
           "default_selector", "next_check_delay", "selector_names"]

log = logging.getLogger("mta.domains")

ALGORITHMS = {"rsa": ("rsa-sha256",), "ed25519": ("ed25519-sha256",),
              "both": ("rsa-sha256", "ed25519-sha256")}
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,50}[a-z0-9])?$")


class DomainError(MtaError):
    """A command cannot be done as asked; the message says what to do instead."""


def next_check_delay(attempts: int, schedule: Sequence[float]) -> float:
    """Wait after the `attempts`-th failing check in a row (≥1); the last entry repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def selector_names(base: str, algorithm: str) -> list[tuple[str, str]]:
    """[(selector, algorithm)]: RSA gets `base`, Ed25519 gets `base-ed`."""
    return [(base if alg == "rsa-sha256" else f"{base}-ed", alg)
            for alg in ALGORITHMS[algorithm]]


def default_selector(now: float, taken: set[str]) -> str:
    base = "mta" + time.strftime("%Y%m", time.gmtime(now))
    for suffix in [""] + [chr(c) for c in range(ord("b"), ord("z") + 1)]:
        cand = base + suffix
        if cand not in taken and f"{cand}-ed" not in taken:
            return cand
    raise DomainError("no free default selector this month; pass --selector")


@dataclass(frozen=True)
class Decision:
    state: DomainState
    failure_reason: str | None
    next_check: float
    check_attempts: int
    promote: tuple[str, ...] = ()                          # pending -> active
    retire: tuple[str, ...] = ()                           # active -> retiring
    delete: tuple[str, ...] = ()                           # retiring, expired
    log: list[str] = field(default_factory=list)


def decide(domain: Domain, result: CheckResult, now: float, cfg: Config) -> Decision:
    """The state change one check result implies (pure)."""
    dc = cfg.domains
    notes: list[str] = []
    if result.ok:
        state, reason, attempts = DomainState.VERIFIED, None, 0
        nxt = now + dc.recheck_verified
    elif domain.state is DomainState.VERIFIED and result.temporary:
        # A timeout is not proof the DNS broke: stay verified, look again soon.
        state, reason, attempts = DomainState.VERIFIED, result.reason, domain.check_attempts + 1
        nxt = now + next_check_delay(attempts, dc.check_schedule)
    else:
        state = (DomainState.PENDING if domain.state is DomainState.PENDING
                 else DomainState.FAILED)
        reason = result.reason
        attempts = 1 if domain.state is DomainState.VERIFIED else domain.check_attempts + 1
        nxt = now + next_check_delay(attempts, dc.check_schedule)
        if domain.state is DomainState.VERIFIED:
            notes.append(f"domain {domain.name}: verified -> failed: {reason}")
    promote: list[str] = []
    retire: list[str] = []
    for sel in domain.selectors:
        if sel.status is not SelectorStatus.PENDING:
            continue
        if all(e.ok for e in result.entry("dkim", sel.selector)):
            promote.append(sel.selector)
            retire += [o.selector for o in domain.selectors
                       if o.status is SelectorStatus.ACTIVE and o.algorithm == sel.algorithm]
    delete = [s.selector for s in domain.selectors if s.status is SelectorStatus.RETIRING
              and s.retire_at is not None and s.retire_at <= now]
    return Decision(state, reason, nxt, attempts, tuple(promote), tuple(retire), tuple(delete),
                    notes)


class SendingDomains(Protocol):
    """The sending domains as the daemon's domain cache reads and re-checks them."""

    def list(self) -> builtins.list[Domain]: ...

    def get(self, domain: str) -> Domain: ...

    def signing_keys(self, domain: str) -> builtins.list[SigningKey]: ...

    def due_checks(self, now: float) -> builtins.list[str]: ...

    async def check(self, domain: str) -> CheckResult: ...

    def reconfigure(self, cfg: Config) -> None: ...


class DomainService:
    def __init__(self, cfg: Config, resolver: Resolver | None = None,
                 clock: Clock | None = None, store: DomainStore | None = None):
        self.cfg = cfg
        self.store: DomainStore = store or SqliteDomainStore(cfg.server.state_dir)
        self._resolver = resolver
        self.clock = clock or SystemClock()

    def reconfigure(self, cfg: Config) -> None:
        """A reload: check schedules, DMARC rua and the SPF addresses are read
        per call from `cfg`; the store and resolver stay those it was made with."""
        self.cfg = cfg

    @property
    def resolver(self) -> Resolver:
        if self._resolver is None:
            self._resolver = DnsResolver(self.cfg.dns.nameservers, self.cfg.dns.timeout,
                                         cache=False)  # a check must see the zone as it is now
        return self._resolver

    # ---- names ----

    @staticmethod
    def _name(domain: str) -> str:
        try:
            name = parse_domain(domain)
        except AddressError as exc:
            raise DomainError(str(exc)) from None
        if name.startswith("[") or "." not in name:
            raise DomainError(f"{domain!r} is not a domain name one can send from")
        return name

    @staticmethod
    def _check_selector(selector: str) -> str:
        s = selector.strip().lower()
        if not _SELECTOR.match(s):
            raise DomainError(f"selector {selector!r}: use letters, digits and '-' "
                              "(one DNS label)")
        return s

    # ---- commands ----

    def add(self, domain: str, selector: str | None = None, algorithm: str = "both") -> Domain:
        name = self._name(domain)
        if algorithm not in ALGORITHMS:
            raise DomainError(f"algorithm {algorithm!r}: use rsa, ed25519 or both")
        if self.store.get(name) is not None:
            raise DomainError(f"domain {name} already exists (`mta domain show {name}`)")
        now = self.clock.now()
        base = self._check_selector(selector) if selector else default_selector(now, set())
        keys = [NewKey(sel, alg, generate_key(alg)[0], SelectorStatus.ACTIVE)
                for sel, alg in selector_names(base, algorithm)]
        return self.store.add_domain(name, now, keys)

    def remove(self, domain: str) -> None:
        try:
            self.store.remove(self._name(domain))
        except UnknownDomain as exc:
            raise DomainError(str(exc)) from None

    def list(self) -> builtins.list[Domain]:
        return self.store.list()

    def _require(self, name: str) -> Domain:
        d = self.store.get(name)
        if d is None:
            raise DomainError(f"no such domain {name} (add it with `mta domain add {name}`)")
        return d

    def get(self, domain: str) -> Domain:
        return self._require(self._name(domain))

    def plan(self, domain: str | Domain) -> DomainPlan:
        d = domain if isinstance(domain, Domain) else self.get(domain)
        keys = tuple(SelectorKey(s.selector, s.algorithm, s.status.value,
                                 self.store.public_key(s), s.retire_at) for s in d.selectors)
        sc, dc = self.cfg.server, self.cfg.domains
        return DomainPlan(d.name, keys, tuple(sc.public_ips), sc.hostname, dc.bounce_subdomain,
                          dc.dmarc_rua)

    def show(self, domain: str) -> dict[str, Any]:
        d = self.get(domain)
        out = d.to_dict()
        out["records"] = [r.to_dict() for r in self.plan(d).records()]
        return out

    def rotate(self, domain: str, selector: str | None = None) -> Domain:
        d = self.get(domain)
        if any(s.status is SelectorStatus.PENDING for s in d.selectors):
            pend = ", ".join(s.selector for s in d.selectors if s.status is SelectorStatus.PENDING)
            raise DomainError(f"a rotation of {d.name} is already in progress (pending: {pend}); "
                              f"publish its records and run `mta domain check {d.name}`")
        algs = sorted({s.algorithm for s in d.selectors if s.status is SelectorStatus.ACTIVE},
                      key=("rsa-sha256", "ed25519-sha256").index)
        if not algs:
            raise DomainError(f"{d.name} has no active key to rotate")
        now = self.clock.now()
        taken = {s.selector for s in d.selectors}
        base = self._check_selector(selector) if selector else default_selector(now, taken)
        names = [(base if a == "rsa-sha256" else f"{base}-ed", a) for a in algs]
        clash = [n for n, _ in names if n in taken]
        if clash:
            raise DomainError(f"selector {', '.join(clash)} already exists for {d.name}")
        for sel, alg in names:
            self.store.add_selector(d.name, NewKey(sel, alg, generate_key(alg)[0],
                                                   SelectorStatus.PENDING), now)
        return self.get(d.name)

    async def check(self, domain: str) -> CheckResult:
        """Check DNS now and apply the outcome to the domain's state."""
        d = await asyncio.to_thread(self._require, self._name(domain))
        plan = await asyncio.to_thread(self.plan, d)
        now = self.clock.now()
        result = await check_domain(self.resolver, plan, now)
        await asyncio.to_thread(self._apply, d, decide(d, result, now, self.cfg), now)
        return result

    def _apply(self, d: Domain, dec: Decision, now: float) -> None:
        for line in dec.log:
            log.warning("%s", line)
        for sel in dec.promote:
            self.store.set_selector_status(d.name, sel, SelectorStatus.ACTIVE)
        for sel in dec.retire:
            self.store.set_selector_status(d.name, sel, SelectorStatus.RETIRING,
                                           retire_at=now + self.cfg.domains.rotation_grace)
        for sel in dec.delete:
            self.store.delete_selector(d.name, sel)
        self.store.set_state(d.name, dec.state, now=now, failure_reason=dec.failure_reason,
                             next_check=dec.next_check, check_attempts=dec.check_attempts)

    def signing_keys(self, domain: str) -> builtins.list[SigningKey]:
        """The keys to sign with now: the active ones (RSA first); [] for unknown domains."""
        return sorted(self.store.signing_keys(self._name(domain)),
                      key=lambda k: (k.algorithm != "rsa-sha256", k.selector))

    def due_checks(self, now: float) -> builtins.list[str]:
        return self.store.due(now)
