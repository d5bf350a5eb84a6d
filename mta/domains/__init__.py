"""Sending domains: DKIM keys, the DNS records to publish, and their verification.

One job: know which domains this server may send for and prove it in DNS
(DKIM, SPF, DMARC, return path) before they are used.

Modules (each states its own API and invariants):
    store     SQLite state + key files; the domain / selector state machines
    records   the records to publish (zone text, JSON)
    spf       an async RFC 7208 evaluator over the Resolver seam
    check     verify a domain's DNS record by record
    service   add / check / rotate / remove / signing_keys / due_checks

Layer: may import core, config, policy, mail, delivery.resolver; imported by
runtime and cli only.
"""

from mta.domains.check import CheckEntry, CheckResult, check_domain
from mta.domains.records import DnsRecord, DomainPlan, SelectorKey
from mta.domains.service import DomainError, DomainService, decide, next_check_delay
from mta.domains.store import Domain, DomainState, DomainStore, Selector, SelectorStatus

__all__ = ["CheckEntry", "CheckResult", "check_domain", "DnsRecord", "DomainPlan", "SelectorKey",
           "DomainError", "DomainService", "decide", "next_check_delay", "Domain",
           "DomainState", "DomainStore", "Selector", "SelectorStatus"]
