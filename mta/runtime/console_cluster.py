"""The console's cluster backend over this node (issue 19).

One job: implement mta.console.pages_cluster.ClusterBackend from the
cluster node (runtime/cluster.py ClusterNode, as `daemon.cluster`): the
header's node label, the cluster view and the drain through the admin
API's own calls (admin_cluster.ClusterAdmin over ClusterNode.status and
ClusterNode.set_draining), and a message another node holds, read from the
shared ledger (cluster/ledger.py: its events and the node that received it).

API
    console_cluster(daemon) -> ConsoleCluster | None     None: a single node
    ConsoleCluster(daemon)     a ClusterBackend (`ConsoleParts.cluster`); adds
                               the housekeeping job "console_cluster", which
                               keeps the nodes the header counts fresh
    UNAVAILABLE                the 429 page's message (the ledger unreachable)

Invariants
- A tenant's viewer gets a message only when the credential of its
  "received" event belongs to its tenant (resolved as the Messages pages
  resolve a local message's: TenantService.resolve); another tenant's, or
  one without a "received" event, is None (the 404 of an unknown id).
- The header never waits on the database: it shows the rows the job last
  read (just "node A" until the first read).
- The shared database unreachable: the Cluster page shows this node alone
  ("unavailable"), a drain is a 409 notice (nothing changed), a message
  held elsewhere a 429 page; never a 5xx.
"""

from __future__ import annotations

from typing import Any

from mta.admin.handlers_cluster import ClusterUnavailable
from mta.cluster import ledger as shared
from mta.cluster import nodes
from mta.cluster.db import SharedDbUnavailable
from mta.console.backend import ConsoleError, Viewer
from mta.core.stores import EventView
from mta.runtime.admin_cluster import ClusterAdmin
from mta.runtime.cluster_ledger import summary
from mta.runtime.housekeeping import Job

__all__ = ["ConsoleCluster", "UNAVAILABLE", "console_cluster"]

UNAVAILABLE = ("The cluster's shared ledger cannot be reached from this node now; this "
               "message is held by another node: retry shortly, or open it on that node")
# A recipient's state from the type of its latest event of these (as GET /emails does).
_STATE_OF = {"queued": "queued", "deferred": "deferred", "released": "queued",
             "rescheduled": "queued", "delivered": "delivered", "bounced": "bounced",
             "expired": "expired", "suppressed": "suppressed", "held": "held",
             "deleted": "deleted"}


def console_cluster(daemon: Any) -> ConsoleCluster | None:
    return ConsoleCluster(daemon) if getattr(daemon, "cluster", None) is not None else None


def _recipients(events: list[EventView]) -> list[dict[str, str]]:
    states: dict[str, str] = {}
    for e in events:
        if e.type in _STATE_OF and e.recipient:
            states[e.recipient] = _STATE_OF[e.type]
    return [{"address": a, "state": s} for a, s in states.items()]


class ConsoleCluster(ClusterAdmin):
    """ClusterBackend over `daemon.cluster` (a ClusterNode)."""

    def __init__(self, daemon: Any):
        self.d = daemon
        self.node: Any = daemon.cluster
        self._rows: list[dict[str, Any]] | None = None
        self.node.add_job(Job("console_cluster", float(self.node.cfg.heartbeat), self.refresh))

    async def refresh(self) -> None:
        """Read the node rows the header counts (kept as they were while the
        database is unreachable)."""
        now = self.d.clock.now()
        timeout = self.node.cfg.node_timeout
        try:
            self._rows = await self.node.db.call(lambda c: nodes.nodes(c, now, timeout))
        except SharedDbUnavailable:
            pass

    def header(self) -> dict[str, Any]:
        name = str(self.node.name)
        label = f"node {name}"
        rows = self._rows
        if rows:
            down = sum(not r["up"] for r in rows)
            label += f" of {len(rows)}" + (f" ({down} down)" if down else "")
        if self.node.draining:
            label += " · draining"
        return {"name": name, "label": label}

    async def status(self) -> dict[str, Any]:
        s = await self.cluster_status()
        s["unavailable"] = not s["nodes"] and bool(self.node.degraded()["database"])
        if s["nodes"]:
            self._rows = s["nodes"]
        return s

    async def set_draining(self, flag: bool) -> dict[str, Any]:
        try:
            return await self.node_drain(flag)
        except ClusterUnavailable as exc:
            raise ConsoleError(409, str(exc)) from None

    async def _tenant_of(self, credential: str | None) -> str:
        tenants = getattr(self.d, "tenants", None)
        return "default" if tenants is None else str(await tenants.resolve(credential))

    async def message(self, viewer: Viewer, message_id: str,
                      events: int) -> dict[str, Any] | None:
        async def read(conn: Any) -> tuple[list[EventView], str | None]:
            return (await shared.message_events(conn, message_id),
                    await shared.message_node(conn, message_id))
        try:
            evs, holder = await self.node.db.call(read)
        except SharedDbUnavailable:
            raise ConsoleError(429, UNAVAILABLE) from None
        if not evs or holder is None:
            return None
        received = next((e for e in evs if e.type == "received"), None)
        if received is None and not viewer.operator:
            return None
        tenant = await self._tenant_of(received.credential if received is not None
                                       else evs[0].credential)
        if viewer.tenant is not None and tenant != viewer.tenant:
            return None
        detail = received.detail if received is not None else {}
        _, last, _ = summary(evs, self.d.clock.now())
        return {"id": message_id, "node": holder, "this": holder == self.node.name,
                "sender": str(detail.get("sender") or ""),
                "received_at": received.at if received is not None else None,
                "tenant": tenant, "test": bool(received is not None and received.test),
                "is_dsn": "dsn_for" in detail, "last_event": last,
                "recipients": _recipients(evs),
                "events": [{"seq": e.seq, "at": e.at, "type": e.type, "recipient": e.recipient,
                            "detail": e.detail if isinstance(e.detail, dict) else {}}
                           for e in evs[:events]],
                "events_more": len(evs) > events}
