"""Outbound TLS policy for one batch: the operator's override, DANE, MTA-STS (issue 17).

One job: before a batch connects, decide per MX host what its connection
must prove (policy/tlspolicy.py `host_policy`, merged over the batch's
recipient domains), give the SSL context for it, check a DANE peer after the
handshake, and count each negotiation's outcome for TLS-RPT.

API:
    TlsGuard(resolver, settings, *, sts=None, clock=time.time, record=None)
        settings: `[tls]` (TlsSettings); .settings = … on reload (read per batch)
        await .plan(destination, domains, hops) -> TlsPlan
        .context(host_policy, cert=None) -> ssl.SSLContext   verifying (pkix) or not;
                                                   with the egress source's client cert
        .check_dane(plan, host, ssl_object)    raises VerifyFailed (with its RFC 8460 result)
        .outcome(plan, host, ip, result, source="")          one TLS-RPT count per domain
    TlsPlan: .policy(host) -> HostPolicy; .refusal(host) -> str (why a host may not
        be tried); .label(host) -> the policy's name for the attempt's record
    VerifyFailed       a HandshakeFailed whose reason is a certificate check (the
                       connection itself worked: testing mode retries without checking)
    OPPORTUNISTIC      the HostPolicy of a host nothing applies to

Precedence (RFC 7672 §2.2 and the issue): an override from `[tls] policy`,
then DANE (usable TLSA records from an authenticated answer; a failed secure
lookup defers), then MTA-STS (enforce: only matching MX hosts, each with a
valid certificate for its name; testing: deliver and report), else
opportunistic TLS. A batch whose recipients span domains (an MX site
carries several) takes the strictest of each host's policies.

Invariants: nothing is sent in clear to a host whose policy requires TLS;
verification failures are counted for TLS-RPT by their RFC 8460 result
type; the plan's lookups go through the injected Resolver and StsResolver
(tests: a DNS server and a policy server on loopback).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from mta.core.envelope import Destination
from mta.core.observe import Observer
from mta.core.logfmt import event
from mta.delivery import dane
from mta.delivery.mtasts_fetch import StsLookup, StsResolver
from mta.delivery.mx import Hop
from mta.delivery.resolver import DnsError, DnsTempError, Resolver, Tlsa
from mta.delivery.settlement import HandshakeFailed
from mta.policy.mtasts import StsPolicy
from mta.policy.tlspolicy import HostPolicy, host_policy, override_for
from mta.policy.tlsrpt import Outcome

__all__ = ["OPPORTUNISTIC", "TlsGuard", "TlsPlan", "VerifyFailed"]

log = logging.getLogger("mta.delivery")

OPPORTUNISTIC = HostPolicy(policy="opportunistic", require_tls=False, verify="none",
                           enforce=False, allowed=True, names=())
_STRENGTH = {"none": 0, "opportunistic": 1, "may": 1, "encrypt": 2, "mta-sts": 3, "verify": 3,
             "dane": 4, "dane-only": 4}
_VERIFY = {"none": 0, "pkix": 1, "dane": 2}


class TlsSettings(Protocol):
    """What the guard reads of `[tls]` (mta.config.tls.TlsConfig), per batch."""
    @property
    def policy(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def mta_sts(self) -> bool: ...
    @property
    def dane(self) -> bool: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def min_version(self) -> str: ...
    @property
    def ciphers(self) -> str | None: ...


class VerifyFailed(HandshakeFailed):
    """The TLS connection worked but its certificate did not pass; `result`
    is its RFC 8460 result type when the check knows it ("" : map the text)."""

    def __init__(self, reason: str, result: str = ""):
        super().__init__(reason)
        self.result = result


@dataclass
class TlsPlan:
    hosts: dict[str, HostPolicy] = field(default_factory=dict)
    tlsa: dict[str, tuple[Tlsa, ...]] = field(default_factory=dict)
    lookups: dict[str, StsLookup] = field(default_factory=dict)
    dane_state: dict[str, str] = field(default_factory=dict)
    domains: tuple[str, ...] = ()
    counted: bool = True      # False for our own TLS-RPT reports (RFC 8460 §3)

    def policy(self, host: str) -> HostPolicy:
        return self.hosts.get(host.lower().rstrip("."), OPPORTUNISTIC)

    def label(self, host: str) -> str:
        return self.policy(host).policy

    def signature(self) -> tuple[tuple[str, HostPolicy], ...]:
        """Equal for plans that ask the same of every host (batches with
        equal signatures may share connections)."""
        return tuple(sorted(self.hosts.items()))

    def refusal(self, host: str) -> str:
        hp = self.policy(host)
        if hp.verify == "dane" or self.dane_state.get(host) == "bogus":
            return "its TLSA records could not be looked up securely (DANE)" \
                if self.dane_state.get(host) == "bogus" else "it has no usable TLSA records " \
                "and the domain's policy is dane-only"
        return "the domain's MTA-STS policy does not list it"


def _merge(policies: Sequence[HostPolicy]) -> HostPolicy:
    """The strictest of several domains' policies for one host."""
    if len(policies) == 1:
        return policies[0]
    top = max(policies, key=lambda p: (_STRENGTH.get(p.policy, 1), p.enforce))
    verify = max((p.verify for p in policies), key=lambda v: _VERIFY.get(v, 0))
    names = tuple(sorted({n for p in policies for n in p.names}))
    return replace(top, require_tls=any(p.require_tls for p in policies), verify=verify,
                   enforce=any(p.enforce for p in policies),
                   allowed=all(p.allowed for p in policies), names=names)


def _strings(policy: StsPolicy) -> tuple[str, ...]:
    return ("version: STSv1", f"mode: {policy.mode}", *(f"mx: {m}" for m in policy.mx),
            f"max_age: {policy.max_age}")


class TlsGuard:
    def __init__(self, resolver: Resolver, settings: TlsSettings, *,
                 sts: StsResolver | None = None, clock: Callable[[], float] = time.time,
                 record: Callable[[Outcome], None] | None = None,
                 observer: Observer | None = None):
        self.resolver, self.settings, self.sts = resolver, settings, sts
        self.observer = observer or Observer()
        self.clock, self.record = clock, record
        self._contexts: dict[tuple[object, ...], ssl.SSLContext] = {}

    # ---- the plan -------------------------------------------------------------------
    async def plan(self, destination: Destination, domains: Sequence[str],
                   hops: Sequence[Hop]) -> TlsPlan:
        cfg = self.settings
        domains = tuple(sorted({d.lower() for d in domains if d})) or (destination.domain,)
        plan = TlsPlan(domains=domains)
        if destination.kind != "mx":       # a route: only the operator's word applies
            override = override_for(cfg.policy, domains[0]) if domains[0] else None
            for hop in hops:
                plan.hosts[hop.host] = host_policy(override=override, host=hop.host, sts=None,
                                                   sts_error=None, dane="none")
            return plan
        overrides = {d: override_for(cfg.policy, d) for d in domains}
        if cfg.mta_sts and self.sts is not None:
            found = await asyncio.gather(*(self.sts.policy(d) for d in domains))
            plan.lookups = dict(zip(domains, found))
        if cfg.dane and any(o in (None, "dane-only") for o in overrides.values()):
            await self._tlsa(plan, hops, destination.port)
        for hop in hops:
            per_domain = []
            for d in domains:
                lookup = plan.lookups.get(d)
                sts = lookup.policy if lookup is not None else None
                if sts is not None and sts.mode == "none":
                    sts = None
                per_domain.append(host_policy(
                    override=overrides[d], host=hop.host, sts=sts,
                    sts_error=lookup.error if lookup is not None else None,
                    dane=plan.dane_state.get(hop.host, "none")))
            plan.hosts[hop.host] = _merge(per_domain)
        return plan

    async def _tlsa(self, plan: TlsPlan, hops: Sequence[Hop], port: int) -> None:
        async def one(host: str) -> None:
            try:
                answer = await self.resolver.tlsa(f"_{port}._tcp.{host}")
            except DnsTempError as exc:
                plan.dane_state[host] = "bogus"
                event(log, "tlsa_lookup_failed", mx=host, error=exc)
                return
            except DnsError:
                plan.dane_state[host] = "none"
                return
            records = dane.usable(answer.records) if answer.secure else ()
            plan.tlsa[host] = records
            plan.dane_state[host] = "usable" if records else "none"
        await asyncio.gather(*(one(h.host) for h in hops))

    # ---- the connection ---------------------------------------------------------------
    def context(self, hp: HostPolicy, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        """The SSL context for a host's policy (and an egress source's client
        certificate, PEM paths (chain, key))."""
        cfg = self.settings
        verifying = hp.verify == "pkix"
        key = (verifying, cert, cfg.ca_file, cfg.min_version, cfg.ciphers)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if cfg.min_version == "TLSv1.3"
                                   else ssl.TLSVersion.TLSv1_2)
            if cfg.ciphers:
                ctx.set_ciphers(cfg.ciphers)
            if cert is not None:
                ctx.load_cert_chain(cert[0], cert[1] or None)
            if verifying:
                ctx.check_hostname, ctx.verify_mode = True, ssl.CERT_REQUIRED
                if cfg.ca_file:
                    ctx.load_verify_locations(cafile=cfg.ca_file)
                else:
                    ctx.load_default_certs()
            else:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            self._contexts = {**{k: v for k, v in self._contexts.items()
                                 if k[2:] == key[2:]}, key: ctx}
        return ctx

    def check_dane(self, plan: TlsPlan, host: str, ssl_object: ssl.SSLObject) -> None:
        """Raise VerifyFailed unless the server's chain matches the host's
        TLSA records. A chain no record matches is RFC 8460's
        "validation-failure" (the records were valid: not "tlsa-invalid",
        and no CA is involved: not "certificate-not-trusted")."""
        hp = plan.policy(host)
        reason = dane.verify(plan.tlsa.get(host, ()), dane.chain_of(ssl_object),
                             names=hp.names or (host,), now=self.clock())
        if reason is not None:
            result = dane.result_type(reason)
            if result == "certificate-not-trusted":
                result = "validation-failure"
            raise VerifyFailed(f"TLSA check failed: {reason}", result)

    # ---- TLS-RPT ----------------------------------------------------------------------
    def outcome(self, plan: TlsPlan, host: str, ip: str, result: str,
                source: str = "") -> None:
        """Count one negotiation with `host`: a metric, and for TLS-RPT one
        outcome for each of the batch's domains."""
        hp = plan.policy(host)
        self.observer.tls_session(hp.policy, result)
        if self.record is None or not plan.counted:
            return
        for d in plan.domains:
            lookup = plan.lookups.get(d)
            if hp.verify == "dane":
                kind = "tlsa"
                strings = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}"
                                for r in plan.tlsa.get(host, ()))
            elif lookup is not None and lookup.policy is not None \
                    and lookup.policy.mode != "none":
                kind, strings = "sts", _strings(lookup.policy)
            elif lookup is not None and lookup.error:     # a policy we could not get
                kind, strings = "sts", ()
                result = lookup.error.partition(":")[0]
            else:
                kind, strings = "no-policy-found", ()
            try:
                self.record(Outcome(policy_domain=d, policy_type=kind, policy_strings=strings,
                                    mx_host=host, result=result, sending_ip=source,
                                    receiving_ip=ip))
            except Exception as exc:       # counting must never break a delivery
                event(log, "tlsrpt_record_failed", level=logging.WARNING, error=exc)

