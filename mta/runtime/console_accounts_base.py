"""What the console's accounts backend (webhooks, tenants, API keys,
templates) shares: the daemon it reads, and store calls off the loop.

One job: the `AccountsDaemon` Protocol the parts of
`mta.runtime.console_accounts.ConsoleAccounts` are written against, and
the helpers each of them uses.

Public API:
    AccountsDaemon     cfg, clock, spool, webhooks, tenants, api (the
                       daemon's; None until started, or when switched off)
    AccountsPart       the base of each part: .d (the daemon), .root (its
                       state directory), .login_keys (the console's KeyCache)
    await off_loop(fn, *args) -> result    a store call in a worker thread;
                       a StorageError becomes ConsoleError 503
    operator_only(viewer)    ConsoleError 404 for a tenant's viewer
    ownership(root) -> {(kind, name): tenant}    the tenant store's, read as is

Invariants: nothing here touches SQLite on the event loop; a storage
failure is a page saying so (503), never a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mta.api.http import ApiServer
from mta.api.keys import KeyCache
from mta.config import Config
from mta.console.backend import ConsoleError, Viewer
from mta.core import Clock
from mta.core.errors import StorageError
from mta.runtime.paths import state_paths
from mta.runtime.tenants import TenantService
from mta.spool import Spool
from mta.spool.tenants import SqliteTenants
from mta.webhooks import WebhookService

__all__ = ["AccountsDaemon", "AccountsPart", "off_loop", "operator_only", "ownership"]

R = TypeVar("R")


class AccountsDaemon(Protocol):
    """What the accounts backend reads of the daemon (runtime.daemon.Daemon)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def spool(self) -> Spool | None: ...
    @property
    def webhooks(self) -> WebhookService | None: ...
    @property
    def tenants(self) -> TenantService | None: ...
    @property
    def api(self) -> ApiServer | None: ...


class AccountsPart:
    """The state each part of the accounts backend shares (set once, by
    ConsoleAccounts.__init__)."""

    d: AccountsDaemon
    root: Path
    login_keys: KeyCache | None

    def _setup(self, daemon: AccountsDaemon, login_keys: KeyCache | None) -> None:
        self.d = daemon
        self.root = state_paths(daemon.cfg)["root"]
        self.login_keys = login_keys


async def off_loop(fn: Callable[..., R], *args: Any) -> R:
    try:
        return await asyncio.to_thread(fn, *args)
    except StorageError as exc:
        raise ConsoleError(503, f"the store cannot be used now ({exc}); try again later") \
            from None


def operator_only(viewer: Viewer) -> None:
    if not viewer.operator:
        raise ConsoleError(404, "no such page")


def ownership(root: Path) -> dict[tuple[str, str], str]:
    """Who owns what (a worker thread's call: it reads the index)."""
    return SqliteTenants(root).ownership()
