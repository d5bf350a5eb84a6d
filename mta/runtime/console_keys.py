"""The console's API keys: mta.console.pages_keys.KeysBackend over the key
store the sending API and `mta key` use.

One job: list, make and revoke API keys for a console viewer, with the
sending API's store and checks (mta.api.keys: StoreKeys over
spool/apikeys.py's SqliteApiKeys; check_name, check_permission,
check_domains) and the tenant ownership rules of `mta key create
--tenant` (mta.cli.owner).

Public API:
    ConsoleKeys      the KeysBackend part of ConsoleAccounts
    key_json(key, tenant) -> dict    a key as the pages show it (no secret)

Tenants: a key belongs to the tenant owning its credential "api:NAME"
(tenant_owned, kind "credential"; nobody's = the default tenant's). Making
one: the tenant must exist, and "api:NAME" must be free or already that
tenant's (a name once used by a tenant stays its own) — checked first, so
a refusal makes nothing; the ownership is recorded through the daemon's
TenantService (its cache sees the key at once); should that fail, the key
is revoked again. New keys are live keys.

Revoking: the store first, then the sending API's KeyCache and the
console's own (login) cache forget the id: the key is refused at once by
this process. Receiver processes ([server] workers) keep their own caches:
there it stops within their ttl (2 s), as with the API's own DELETE.

Invariants: a token is returned once, by create_key, and never logged;
nothing here logs a key's secret or hash. A tenant's viewer gets only its
own keys; another's id is "not found".
"""

from __future__ import annotations

import logging
from typing import Any

from mta.api.http import key_cache
from mta.api.keys import (ApiKey, KeyNameTaken, StoreKeys, check_domains, check_name,
                          check_permission)
from mta.console.backend import ConsoleError, Viewer
from mta.core.errors import StorageError
from mta.runtime.console_accounts_base import AccountsPart, off_loop, ownership
from mta.runtime.logs import event
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import DEFAULT_TENANT, SqliteTenants, TenantError

__all__ = ["ConsoleKeys", "key_json"]

log = logging.getLogger("mta.console")


def key_json(key: ApiKey, tenant: str) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "prefix": key.prefix,
            "permission": key.permission, "domains": list(key.domains), "mode": key.mode,
            "tenant": tenant, "created": key.created_at, "last_used": key.last_used_at,
            "revoked": key.revoked_at}


def _owners(owned: dict[tuple[str, str], str]) -> dict[str, str]:
    return {name: t for (kind, name), t in owned.items() if kind == "credential"}


def _checked(name: str, permission: str, domains: list[str]) -> tuple[str, str, tuple[str, ...]]:
    """The sending API's checks, each refusal a 422 naming its field."""
    field = "name"
    try:
        name = check_name(name)
        field = "permission"
        permission = check_permission(permission)
        field = "domains"
        return name, permission, check_domains(domains)
    except ValueError as exc:
        raise ConsoleError(422, f"{field}: {exc}", field) from None


class ConsoleKeys(AccountsPart):
    def _key_store(self) -> StoreKeys:
        return StoreKeys(SqliteApiKeys(str(self.root)))

    async def keys(self, viewer: Viewer, *, revoked: bool) -> list[dict[str, Any]]:
        store, root = self._key_store(), self.root

        def read() -> tuple[list[ApiKey], dict[str, str]]:
            return store.list(include_revoked=revoked), _owners(ownership(root))
        keys, owners = await off_loop(read)
        out = []
        for k in keys:
            tenant = owners.get(k.credential, DEFAULT_TENANT)
            if viewer.tenant is None or tenant == viewer.tenant:
                out.append(key_json(k, tenant))
        return out

    async def _key_find(self, viewer: Viewer, key_id: str) -> tuple[ApiKey, str] | None:
        store, root = self._key_store(), self.root

        def read() -> tuple[ApiKey | None, str]:
            found = store.get(key_id)
            if found is None:
                return None, DEFAULT_TENANT
            return found[0], SqliteTenants(root).owner("credential", found[0].credential)
        key, tenant = await off_loop(read)
        if key is None or key.revoked_at is not None:
            return None
        if viewer.tenant is not None and tenant != viewer.tenant:
            return None
        return key, tenant

    async def key(self, viewer: Viewer, key_id: str) -> dict[str, Any] | None:
        found = await self._key_find(viewer, key_id)
        return None if found is None else key_json(*found)

    def _key_free_for(self, viewer: Viewer, name: str, tenant: str) -> None:
        """(a worker thread) The tenant exists and "api:NAME" may be its."""
        tenants = SqliteTenants(self.root)
        if tenants.get(tenant) is None:
            raise ConsoleError(422, f"tenant: no tenant named {tenant!r}", "tenant")
        taken = tenants.ownership().get(("credential", f"api:{name}"))
        if taken is not None and taken != tenant:
            if viewer.operator:
                raise ConsoleError(409, f"name: the credential 'api:{name}' belongs to the "
                                        f"tenant {taken!r} (a key name once used stays its "
                                        "tenant's)", "name")
            raise ConsoleError(409, "name: this key name is taken (a name once used by a "
                                    "tenant stays that tenant's); choose another", "name")

    async def create_key(self, viewer: Viewer, *, name: str, permission: str,
                         domains: list[str], tenant: str) -> dict[str, Any]:
        if viewer.tenant is not None:
            tenant = viewer.tenant
        name, permission, scopes = _checked(name, permission, domains)
        store, now = self._key_store(), self.d.clock.now()

        def make() -> tuple[ApiKey, str]:
            self._key_free_for(viewer, name, tenant)
            return store.create(name, permission=permission, domains=scopes, now=now)
        try:
            made, token = await off_loop(make)
        except KeyNameTaken:
            raise ConsoleError(409, f"name: an active API key named {name!r} exists",
                               "name") from None
        try:
            await self._key_own(made.credential, tenant)
        except (TenantError, StorageError) as exc:
            await off_loop(store.revoke, made.id, self.d.clock.now())
            raise ConsoleError(409, f"tenant: the key could not be given to {tenant!r} "
                                    f"({exc}); nothing was made", "tenant") from None
        event(log, "console_key_created", key=made.prefix, tenant=tenant,
              permission=permission)
        return {"key": key_json(made, tenant), "token": token}

    async def _key_own(self, credential: str, tenant: str) -> None:
        service = self.d.tenants
        if service is not None:
            await service.own("credential", credential, tenant)
        else:
            await off_loop(SqliteTenants(self.root).own, "credential", credential, tenant,
                           self.d.clock.now())

    async def revoke_key(self, viewer: Viewer, key_id: str) -> dict[str, Any]:
        found = await self._key_find(viewer, key_id)
        if found is None:
            raise ConsoleError(404, "no such API key (or it is revoked already)")
        gone = await off_loop(self._key_store().revoke, key_id, self.d.clock.now())
        if gone is None:
            raise ConsoleError(404, "no such API key (or it is revoked already)")
        self._key_forget(key_id)
        event(log, "console_key_revoked", key=gone.prefix, tenant=found[1])
        return key_json(gone, found[1])

    def _key_forget(self, key_id: str) -> None:
        """The sending API's cache and the console's: refused at once here."""
        if self.login_keys is not None:
            self.login_keys.forget(key_id)
        api = self.d.api
        if api is not None:
            key_cache(api.app).forget(key_id)

    async def tenant_names(self, viewer: Viewer) -> list[str]:
        if viewer.tenant is not None:
            return [viewer.tenant]
        rows = await off_loop(SqliteTenants(self.root).rows)
        return [r.name for r in rows]
