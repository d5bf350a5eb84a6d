"""The console's Domains (and Suppressions) pages over the running daemon.

One job: implement mta.console.pages_domains.DomainsBackend with the
sending API's code (mta.runtime.api_resources.RuntimeResources: the same
ownership rules, the same add/check/remove path, the same record
statuses), seen by a console viewer instead of an API key; the
Suppressions half is mta.runtime.console_suppressions's.

Public API:
    ConsoleDomains(daemon)    ConsoleParts.domains: DomainsBackend and
                              SuppressionsBackend in one object
    key_text(algorithm, txt) -> str   "RSA 2048 bits" / "Ed25519" (a DKIM TXT value)

Viewer: tenant None (the operator) sees every domain and adds for any
tenant; a tenant sees and changes only the domains it owns (the API's
rule: the domain or its nearest owned parent), others are "not found".

Invariants:
- The store, key files and plan are read in a worker thread, never on
  the event loop; the DNS check is the API's `verify` (an uncached
  resolver over `[dns] nameservers`), and its result is the one the API's
  GET /domains shows too (RuntimeResources shares it per daemon).
- A refusal of the shared code (ApiError 409/422/503) reaches the page as
  a ConsoleError with the same status and words.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mta.api.http import ApiError
from mta.console.backend import ConsoleError, Viewer
from mta.domains.check import parse_tags
from mta.domains.model import Domain, SelectorStatus
from mta.runtime.api_resources import (ResourceDaemon, RuntimeResources, domain_status,
                                       published, record_check, record_json)
from mta.runtime.console_suppressions import ConsoleSuppressions

__all__ = ["ConsoleDomains", "key_text"]

Json = dict[str, Any]


def key_text(algorithm: str, txt: str) -> str:
    """What kind of key a DKIM record publishes: "RSA 2048 bits", "Ed25519"."""
    if algorithm == "ed25519-sha256":
        return "Ed25519 (256 bits)"
    try:
        key = load_der_public_key(base64.b64decode(parse_tags(txt)["p"], validate=True))
    except (KeyError, ValueError, binascii.Error, UnsupportedAlgorithm):
        return "RSA"
    return f"RSA {key.key_size} bits" if isinstance(key, rsa.RSAPublicKey) else "RSA"


def _field(message: str) -> str | None:
    name = message.partition(":")[0]
    return name if name in ("name", "tenant") else None


class ConsoleDomains(ConsoleSuppressions):
    def __init__(self, daemon: ResourceDaemon):
        super().__init__(RuntimeResources(daemon))

    # -- reads (in a worker thread) ------------------------------------------------------

    def _row(self, d: Domain) -> Json:
        return {"name": d.name, "tenant": self.r.domain_tenant(d.name),
                "status": domain_status(d), "last_checked": d.last_checked,
                "selectors": [s.selector for s in d.selectors
                              if s.status is SelectorStatus.ACTIVE]}

    def _records(self, d: Domain) -> list[Json]:
        svc, check = self.r.service(), self.r.last_check(d)
        out = []
        for rec in published(svc, d):
            shown = record_json(rec, d, check)
            status, why = record_check(rec, d, check)
            out.append({"type": rec.type, "fqdn": shown["fqdn"], "name": shown["name"],
                        "value": shown["value"], "priority": shown.get("priority"),
                        "ttl": rec.ttl, "required": rec.required, "note": rec.note,
                        "status": status, "reason": why})
        return out

    def _detail(self, name: str, tenant: str | None) -> Json | None:
        d = self.r.domain_row(name, tenant)
        if d is None:
            return None
        plan = self.r.service().plan(d)
        keys = {k.selector: key_text(k.algorithm, k.txt) for k in plan.selectors}
        return {**self._row(d), "created": d.created, "next_check": d.next_check,
                "failure_reason": d.failure_reason, "records": self._records(d),
                "selectors": [{"selector": s.selector, "algorithm": s.algorithm,
                               "key": keys.get(s.selector, s.algorithm),
                               "status": s.status.value, "created": s.created,
                               "retire_at": s.retire_at} for s in d.selectors],
                "rotation_grace": self.r.d.cfg.domains.rotation_grace}

    # -- DomainsBackend ------------------------------------------------------------------

    async def domains(self, viewer: Viewer) -> list[Json]:
        def read() -> list[Json]:
            return [self._row(d) for d in self.r.domain_rows(viewer.tenant)]
        return await asyncio.to_thread(read)

    async def domain(self, viewer: Viewer, name: str) -> Json | None:
        return await asyncio.to_thread(self._detail, name, viewer.tenant)

    async def domain_tenants(self, viewer: Viewer) -> list[str]:
        return [viewer.tenant] if viewer.tenant is not None else await self._tenant_names()

    async def add_domain(self, viewer: Viewer, name: str, tenant: str) -> str:
        if viewer.tenant is not None and tenant != viewer.tenant:
            raise ConsoleError(404, "no such tenant", "tenant")
        try:
            d = await self.r.add_domain_as(tenant, name, source="console")
        except ApiError as exc:
            raise ConsoleError(exc.status, exc.message, _field(exc.message)) from None
        return d.name

    async def check_domain(self, viewer: Viewer, name: str) -> Json | None:
        result = await self.r.verify_domain_as(viewer.tenant, name)
        if result is None:
            return None
        d = await asyncio.to_thread(self.r.domain_row, name, viewer.tenant)
        return {"status": "not_started" if d is None else domain_status(d), "ok": result.ok,
                "failing": len(result.failures)}

    async def remove_domain(self, viewer: Viewer, name: str) -> bool:
        return await self.r.remove_domain_as(viewer.tenant, name, source="console")
