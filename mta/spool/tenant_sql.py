"""Which tenant a row belongs to, in SQL.

One job: the one SQL expression that names the tenant of a credential
column (`messages.credential`, `events.credential`), so every read that is
scoped to a tenant (the sending API's lists, webhook endpoints of a tenant,
operator moves of a tenant's mail) decides alike.

API:
    tenant_of(column) -> str    an SQL expression: the tenant owning the
                                credential in `column`, "default" when no
                                tenant owns it (no row, '' or NULL); NAME
                                for "tenant:NAME" (events about a tenant)
    DEFAULT_TENANT              "default" (spool/tenants.py's)

Invariants: ownership lives in the index's `tenant_owned` table
(spool/tenants.py), kind 'credential'; a credential's owner never changes
once recorded (its history stays its tenant's), so a message's tenant is
decided by its credential alone. The lookup is a primary-key probe per row.
"""

from __future__ import annotations

from mta.spool.tenants import DEFAULT_TENANT

__all__ = ["DEFAULT_TENANT", "TENANT_PREFIX", "tenant_of"]

TENANT_PREFIX = "tenant:"


def tenant_of(column: str) -> str:
    # "tenant:NAME" is the credential of events about tenant NAME itself
    # (runtime/tenants.py tenant_credential): its own, whatever the table says.
    return (f"CASE WHEN {column} LIKE '{TENANT_PREFIX}%' THEN substr({column}, "
            f"{len(TENANT_PREFIX) + 1}) ELSE COALESCE((SELECT o.tenant FROM tenant_owned o "
            f"WHERE o.kind = 'credential' AND o.name = {column}), '{DEFAULT_TENANT}') END")
