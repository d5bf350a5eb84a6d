"""The console's backends over the running daemon, and its app.

One job: build `mta.console.app`'s application for the admin server — the
login check (the admin token's digest; the API key store, full-access keys
only, resolved to their tenant) and one backend per group of pages, each
in its own module (mta.runtime.console_*); in a cluster, the cluster's
(runtime/console_cluster.py: the node label, the Cluster page, messages
other nodes hold).

Public API:
    build_console(daemon, token) -> (web.Application, ConsoleParts) | None
                                            (None: [admin] console = false)
    RuntimeAuth(token, keys, tenant_of)     the console's Authenticator
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mta.admin.http import token_digest, token_matches
from mta.api.keys import KeyCache, StoreKeys
from mta.console.app import create_console_app
from mta.console.backend import ConsoleParts
from mta.console.pages import ALL_PAGES
from mta.runtime.console_accounts import ConsoleAccounts
from mta.runtime.console_cluster import console_cluster
from mta.runtime.console_domains import ConsoleDomains
from mta.runtime.console_messages import ConsoleMessages
from mta.runtime.console_overview import ConsoleOverview
from mta.runtime.paths import state_paths
from mta.spool.apikeys import SqliteApiKeys

__all__ = ["build_console", "RuntimeAuth"]


class RuntimeAuth:
    """The admin token (compared as the admin API compares it) or a live
    full-access API key, whose tenant `tenant_of(credential)` names."""

    def __init__(self, token: str, keys: KeyCache,
                 tenant_of: Callable[[str], Awaitable[str]]):
        self._digest = token_digest(token)
        self._keys = keys
        self._tenant_of = tenant_of

    def is_admin_token(self, token: bytes) -> bool:
        return token_matches(token, self._digest)

    async def tenant_of_key(self, token: str) -> tuple[str, str, str] | None:
        key = await self._keys.authenticate_async(token)
        if key is None or key.permission != "full_access" or key.revoked_at is not None:
            return None
        return await self._tenant_of(key.credential), key.name, key.id

    async def key_live(self, key_id: str) -> bool:
        found = await asyncio.to_thread(self._keys.store.get, key_id)
        return (found is not None and found[0].revoked_at is None
                and found[0].permission == "full_access")


def build_console(daemon: Any, token: str) -> tuple[web.Application, ConsoleParts] | None:
    cfg = daemon.cfg
    if not cfg.admin.console:
        return None
    root = state_paths(cfg)["root"]
    keys = KeyCache(StoreKeys(SqliteApiKeys(str(root))), daemon.clock)

    async def tenant_of(credential: str) -> str:
        tenants = daemon.tenants
        return "default" if tenants is None else await tenants.resolve(credential)

    parts = ConsoleParts(auth=RuntimeAuth(token, keys, tenant_of),
                         overview=ConsoleOverview(daemon), messages=ConsoleMessages(daemon),
                         domains=ConsoleDomains(daemon),
                         accounts=ConsoleAccounts(daemon, keys),
                         cluster=console_cluster(daemon))
    app = create_console_app(parts, clock=daemon.clock, idle=cfg.admin.console_session_idle,
                             lifetime=cfg.admin.console_session_lifetime, pages=ALL_PAGES)
    return app, parts
