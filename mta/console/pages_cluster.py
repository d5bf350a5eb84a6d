"""The Cluster page, and what the console shows only in a cluster (issue 19).

One job: in a cluster, show the nodes (up or down, seconds since each
heartbeat, version, queue depth, draining; this node's degraded engines),
drain or undrain THIS node behind a confirmation page, and show a message
another node holds — its timeline from the shared ledger, read-only — where
the message page would otherwise be a 404. The header's node label
("node A of 3") is the backend's `header()`, drawn by mta.console.render.
On a single node `ConsoleParts.cluster` is None: no page, no link, no label.

Public API:
    PART = "cluster", NAV, routes(backend) -> [Route]
    ClusterBackend       the Protocol the runtime implements
                         (mta.runtime.console_cluster.ConsoleCluster)
    await elsewhere(request, message_id, events) -> web.StreamResponse
        the page of a message this node's spool does not hold (the Messages
        page calls it): ConsoleError 404 on a single node, when no node has
        it, or when it is another tenant's
    CLUSTER_ACTIONS      ("drain", "undrain")

Routes (under /console; operator only: a tenant's session gets a 404):
    GET  /cluster                          the nodes and this node
    GET  /cluster/confirm?action=A         what A does to this node; the POST form
    POST /cluster/drain, /cluster/undrain  (CSRF-checked by the app) -> 303 /cluster

Element ids: header #cluster-node; #nodes (rows #node-<name>, data-node,
    with .node-state, .node-heard, .node-depth, .node-draining), #this-node,
    #node-draining, #node-depth, #degraded, #action-drain | #action-undrain;
    confirm page #confirm, #confirm-form, #confirm-button, #cancel; a message
    held elsewhere: #message-id, #held-by, #envelope, #recipients, #timeline.

Invariants:
- Drain acts on the node serving the page only, through the admin API's
  own backend call (ClusterNode.set_draining); the shared database being
  unreachable is an error notice (nothing changed), never a 5xx.
- A message held elsewhere has no action links and no live stream; a
  tenant's viewer sees only its own tenant's (another's is the same 404 as
  an unknown id).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.pages_messages_live import event_summary
from mta.console.render import CLUSTER, NavItem, Route, redirect, render, viewer

__all__ = ["PART", "NAV", "routes", "ClusterBackend", "elsewhere", "CLUSTER_ACTIONS"]

PART = "cluster"
NAV: list[NavItem] = [("Cluster", "/cluster", "operator")]
CLUSTER_ACTIONS = ("drain", "undrain")

_WHAT = {
    "drain": "This node stops taking new mail: SMTP clients get 421 4.3.2 (their next MX, "
             "or the load balancer's next node, takes it), the sending API answers 421 and "
             "/readyz is not ready. Delivery goes on until its queue is empty. The flag is "
             "stored in the shared database, so it survives a restart until undrained.",
    "undrain": "This node takes new mail again (SMTP, the sending API, /readyz ready).",
}


class ClusterBackend(Protocol):
    """What the cluster's pages ask of the daemon (the node serving them).

    Shapes::

        header      {"name": this node, "label": "node A of 3"}
        status      {"node": {"node", "version", "draining", "queue_depth",
                      "drained", "degraded": {"database": bool, "redis": bool}},
                     "nodes": [{"name", "up", "heard_ago", "version",
                      "queue_depth", "draining", "drain_since", "admin", "this"}],
                     "database", "redis" (URLs, passwords redacted),
                     "unavailable": bool (the database unreachable: no rows)}
        message     {"id", "node" (the node holding it), "this" (bool),
                     "sender", "received_at", "tenant", "test", "is_dsn",
                     "last_event", "recipients": [{"address", "state"}],
                     "events": [{"seq", "at", "type", "recipient", "detail"}]
                     (oldest first, at most `events`), "events_more": bool}
    """

    def header(self) -> dict[str, Any]:
        """The header's label (sync: the node count is kept fresh in the background)."""

    async def status(self) -> dict[str, Any]:
        """The cluster's nodes and this node's own status (shape above)."""

    async def set_draining(self, flag: bool) -> dict[str, Any]:
        """Drain (True) or undrain this node -> its status after;
        ConsoleError 409 when the shared database cannot record it (nothing changed)."""

    async def message(self, viewer: Viewer, message_id: str,
                      events: int) -> dict[str, Any] | None:
        """A message from the shared ledger (shape above), or None: no node
        has an event of it, or it is not the viewer's. ConsoleError 429 when
        the shared ledger cannot be reached now."""


async def elsewhere(request: web.Request, message_id: str, events: int) -> web.StreamResponse:
    b: ClusterBackend | None = request.app.get(CLUSTER)
    m = await b.message(viewer(request), message_id, events) if b is not None else None
    if m is None:
        raise ConsoleError(404, "no such message")
    rows = [{**e, "summary": event_summary(e)} for e in m["events"]]
    return render(request, "message_elsewhere.html", m=m, events=rows)


def _action(request: web.Request) -> str:
    action = request.query.get("action", "")
    if action not in CLUSTER_ACTIONS:
        raise ConsoleError(400, f"action: one of {', '.join(CLUSTER_ACTIONS)}", "action")
    return action


def routes(backend: ClusterBackend) -> list[Route]:
    b = backend

    async def page(request: web.Request) -> web.StreamResponse:
        return render(request, "cluster.html", s=await b.status())

    async def confirm(request: web.Request) -> web.StreamResponse:
        action = _action(request)
        return render(request, "cluster_confirm.html", s=await b.status(), action=action,
                      what=_WHAT[action])

    def act(flag: bool) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            name = b.header()["name"]
            try:
                after = await b.set_draining(flag)
            except ConsoleError as exc:
                if exc.status != 409:
                    raise
                raise redirect(request, "/cluster", error=exc.message) from None
            if flag:
                depth = int(after.get("queue_depth") or 0)
                done = (f"node {name} is draining: it refuses new mail; {depth} message"
                        f"{'s' * (depth != 1)} still in its queue")
            else:
                done = f"node {name} takes new mail again"
            raise redirect(request, "/cluster", ok=done)
        handle.__name__ = "cluster_drain" if flag else "cluster_undrain"
        return handle

    return [("GET", "/cluster", page, "operator"),
            ("GET", "/cluster/confirm", confirm, "operator"),
            ("POST", "/cluster/drain", act(True), "operator"),
            ("POST", "/cluster/undrain", act(False), "operator")]
