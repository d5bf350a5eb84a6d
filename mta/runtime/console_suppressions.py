"""The console's Suppressions pages over the running daemon's suppression list.

One job: implement mta.console.pages_suppressions.SuppressionsBackend —
search a page (spool.suppression_search), add, remove, import in bulk —
with the sending API's code for what both do (mta.runtime.api_resources:
`suppress_in`, `unsuppress_in`, `noted`), each call scoped to the viewer.

Public API:
    ConsoleSuppressions(resources)    the SuppressionsBackend; resources: a
                                      RuntimeResources over the daemon
    entry_json(view, now) -> dict     one entry as the pages show it

Scopes: "" is the global list (every tenant's mail), a tenant's name its
list. The operator (viewer.tenant None) reads every list and changes the
global one and any tenant's; a tenant reads and changes only its own: any
other scope is 404 (the page module checks first; this checks again).

Removal notes: a removal's note (why) is not stored — the suppression list
keeps no history and the ledger's events are about messages. It is logged:
``event=console_unsuppress`` with the address's domain (never the local
part), the scope, and the note's length (never its text: it is free text
a person typed).

Invariants:
- SQLite runs in worker threads (asyncio.to_thread), never on the loop;
  the daemon's writer and these calls take turns at its lock.
- An addition (one or an import's) is noted to the daemon's RCPT lookup
  before the call returns: the next RCPT sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mta.api.http import ApiError
from mta.console.backend import ConsoleError, Viewer
from mta.core.errors import StorageError
from mta.core.stores import SuppressionView
from mta.runtime.api_resources import ORIGIN, RuntimeResources
from mta.runtime.logs import event
from mta.spool import suppression_search
from mta.spool.tenants import DEFAULT_TENANT

__all__ = ["ConsoleSuppressions", "entry_json"]

log = logging.getLogger("mta.console")
Json = dict[str, Any]


def entry_json(v: SuppressionView) -> Json:
    return {"address": v.address, "scope": v.scope, "reason": v.reason,
            "origin": ORIGIN.get(v.reason, "manual"), "created": v.created,
            "expires": v.expires, "queue_id": v.queue_id, "reply": v.reply}


def _unavailable(exc: Exception) -> ConsoleError:
    return ConsoleError(503, f"the suppression list cannot be read or written now ({exc}); "
                             "try again")


class ConsoleSuppressions:
    def __init__(self, resources: RuntimeResources):
        self.r = resources

    @property
    def _state_dir(self) -> str:
        return self.r.d.cfg.server.state_dir

    async def _tenant_names(self) -> list[str]:
        tenants = self.r.d.tenants
        if tenants is None:
            return [DEFAULT_TENANT]
        try:
            rows = await asyncio.to_thread(tenants.store.rows)
        except StorageError as exc:
            raise _unavailable(exc) from None
        return [DEFAULT_TENANT] + sorted(r.name for r in rows if r.name != DEFAULT_TENANT)

    async def suppression_scopes(self, viewer: Viewer) -> list[str]:
        if viewer.tenant is not None:
            return [viewer.tenant]
        return ["", *await self._tenant_names()]

    async def _writable(self, viewer: Viewer, scope: str) -> str:
        """`scope` if the viewer may change it, else 404 (a tenant) / 422."""
        if viewer.tenant is not None:
            if scope != viewer.tenant:
                raise ConsoleError(404, "no such suppression list", "scope")
            return scope
        if scope not in await self.suppression_scopes(viewer):
            raise ConsoleError(422, "scope: no such tenant (the global list, or a tenant's)",
                               "scope")
        return scope

    async def suppressions(self, viewer: Viewer, scope: str | None, q: str,
                           reason: str | None, after: tuple[str, str] | None,
                           limit: int) -> tuple[list[Json], bool]:
        if viewer.tenant is not None and scope != viewer.tenant:
            raise ConsoleError(404, "no such suppression list", "scope")
        try:
            views, more = await asyncio.to_thread(
                suppression_search.search, self._state_dir, scope=scope, q=q, reason=reason,
                after=after, limit=limit, now=self.r.d.clock.now())
        except StorageError as exc:
            raise _unavailable(exc) from None
        return [entry_json(v) for v in views], more

    async def suppress(self, viewer: Viewer, scope: str, address: str, reason: str) -> bool:
        scope = await self._writable(viewer, scope)
        try:
            _, new = await self.r.suppress_in(scope, address, reason, source="console")
        except ApiError as exc:               # 503: storage
            raise ConsoleError(exc.status, exc.message) from None
        return new

    async def unsuppress(self, viewer: Viewer, scope: str, address: str, note: str) -> bool:
        if viewer.tenant is not None and scope != viewer.tenant:
            raise ConsoleError(404, "no such suppression list", "scope")
        try:
            gone = await self.r.unsuppress_in(scope, address)
        except ApiError as exc:               # 503: storage
            raise ConsoleError(exc.status, exc.message) from None
        if gone:
            event(log, "console_unsuppress", domain=address.rpartition("@")[2],
                  scope=scope or "global", by=viewer.tenant or "operator",
                  note_length=len(note))
        return gone

    async def import_suppressions(self, viewer: Viewer, scope: str,
                                  rows: Sequence[tuple[str, str, float | None, float | None]]
                                  ) -> tuple[int, int]:
        scope = await self._writable(viewer, scope)
        if not rows:
            return 0, 0
        now = self.r.d.clock.now()
        try:
            added, present = await asyncio.to_thread(
                suppression_search.add_many, self._state_dir, rows, scope=scope, now=now)
        except StorageError as exc:
            raise _unavailable(exc) from None
        if added:
            self.r.noted(rows[0][0], scope, now)
            event(log, "console_suppressions_imported", scope=scope or "global", added=added,
                  present=present, by=viewer.tenant or "operator")
        return added, present
