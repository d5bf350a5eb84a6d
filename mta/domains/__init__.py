"""Sending domains: DKIM keys, the DNS records to publish, and their verification.

One job: know which domains this server may send for and prove it in DNS
(DKIM, SPF, DMARC, return path) before they are used.

Modules (each states its own API and invariants), lowest first:
    model         states (StrEnum), their state machines, the rows, typed errors
    store         `DomainStore`, the Protocol every domain store implements
    sqlite_store  the embedded default: SQLite + one key file per selector
    records       the records to publish (zone text, JSON)
    spf_record    SPF record syntax and macros (pure)
    spf           an async RFC 7208 evaluator over the Resolver seam
    check         verify a domain's DNS record by record
    service       add / check / rotate / remove / signing_keys / due_checks

Layer: may import core, config, policy, mail, delivery.resolver; imported by
runtime and cli only. Inside the package imports run down the list above,
never back up.

This file re-exports nothing on purpose: importing `mta.domains.records` or
`mta.domains.model` (the CLI does, at start) must not pull in the service
and with it cryptography, dkimpy and dnspython; import from the modules.
"""
