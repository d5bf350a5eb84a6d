"""The admin API's event list across the cluster (issue 19).

One job: in a cluster, make the admin API's GET /v1/events list every
node's events from the shared ledger (cluster/ledger.py `events_after`),
the global seq being the cursor, with the same filters (type, recipient,
tenant) — so a client paging from any node sees one stream, the same one
the webhooks deliver. (The sending API has no event list of its own: its
GET /emails/{id}/events already reads the shared ledger for a message
another node holds, runtime/cluster_ledger.py.)

API
    SharedEvents(db)
        await .events_after(after, limit, *, types=None, recipient=None,
                            tenant=None) -> [event dict]
            the backend's `events_shared` (mta/admin/handlers.py prefers it
            to `events_after` and labels the answer "ledger": "cluster")
    await wire(node)        (runtime/cluster.py WIRINGS)

PostgreSQL unreachable: 429 `ledger_unavailable` with Retry-After, not this
node's local ledger: a cursor is a global seq, and the local ledger counts
in its own seqs — answering from it would skip or repeat events for a
client that goes on paging with the same cursor, and a list that silently
covers one node would pass for the cluster's. The client retries shortly
(the node's own events wait in its local ledger and arrive, none lost).
"""

from __future__ import annotations

from typing import Any

from mta.admin.params import ApiError as AdminError
from mta.cluster import ledger as shared
from mta.cluster.db import SharedDb, SharedDbUnavailable

__all__ = ["RETRY_AFTER", "SharedEvents", "wire"]

RETRY_AFTER = "5"


class SharedEvents:
    def __init__(self, db: SharedDb):
        self.db = db

    async def events_after(self, after: int, limit: int, *, types: list[str] | None = None,
                           recipient: str | None = None,
                           tenant: str | None = None) -> list[dict[str, Any]]:
        try:
            events = await self.db.call(lambda c: shared.events_after(
                c, after, limit, types=types, recipient=recipient, tenant=tenant))
        except SharedDbUnavailable:
            raise AdminError(429, "ledger_unavailable",
                             "The cluster's shared ledger cannot be reached now, and the "
                             "event cursor is the cluster's: retry shortly",
                             {"retry-after": RETRY_AFTER}) from None
        return [e.to_dict() for e in events]


async def wire(node: Any) -> None:
    admin = getattr(node.d, "admin", None)
    if admin is not None:
        admin.backend.events_shared = SharedEvents(node.db).events_after
