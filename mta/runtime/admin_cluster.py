"""Draining a node, and the admin API's cluster view (issue 19).

One job: make `node.draining` (runtime/cluster.py: stored in the shared
`nodes` row, re-read at each heartbeat, so a drain asked through any node's
admin API, or before a restart, applies) turn this node's doors away while
its delivery goes on; and answer the admin API's cluster routes
(mta.admin.handlers_cluster) from the cluster node.

API
    ClusterAdmin                 a mixin for RuntimeAdmin (reads `.d`, the daemon)
      await .cluster_status() -> {"node", "nodes", "database", "redis"}
      await .node_status()    -> {"node", "version", "draining", "queue_depth",
                                  "drained", "degraded"}
      await .node_drain(flag) -> node_status() after
        a single node (no `daemon.cluster`): NotImplementedError (501, NOT_IN_CLUSTER);
        the database unreachable: ClusterUnavailable (409), the flag unchanged
    draining(daemon) -> bool     this daemon is a draining cluster node
    refusal_reply(hostname) -> Reply    "421 4.3.2 <host> draining: try another node"
    API_REFUSAL                  the sending API's refusal: 421 node_draining
    await wire(node)             (runtime/cluster.py WIRINGS) plugs the refusals
                                 into the listeners and the sending API, and the
                                 gauges into the daemon's /metrics

While draining:
  * every SMTP listener answers a new connection, and MAIL FROM in a session
    already open, with `421 4.3.2 <host> draining: try another node` (and
    closes): the client's next MX or the load balancer's next node takes it;
  * the sending API answers POST /emails and /emails/batch with 421
    Misdirected Request, `{"name": "node_draining", …}` — a 4xx, not 503: the
    request was fine and nothing was queued, it went to a node that will not
    serve it (RFC 9110 §15.5.20), so SDKs and load balancers retry it on
    another node at once rather than backing off as from an overloaded service;
  * /readyz is not ready ("draining: …"), so a load balancer stops routing here;
  * delivery, DSNs, webhooks and the admin API go on: the queue empties, and
    GET /v1/node says "drained" once it has.
With receiver processes ([server] workers > 0) new SMTP connections are
refused by the owner's gate; the sending API served by receivers and MAIL FROM
in sessions they already hold are not (the LB stops routing on /readyz).

Metrics: mta_cluster_node_draining (1 while draining), mta_cluster_engine_up
{engine="database"|"redis"} (0 while unreachable), both at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from mta.admin.handlers_cluster import NOT_IN_CLUSTER, ClusterUnavailable
from mta.api.http import REFUSE_SENDS, ApiError
from mta.cluster.db import SharedDbUnavailable
from mta.core import Reply
from mta.core.logfmt import event

__all__ = ["API_REFUSAL", "ClusterAdmin", "draining", "refusal_reply", "wire"]

log = logging.getLogger("mta.cluster")

API_REFUSAL = ("This node is draining and takes no new mail: send the request to another "
               "node (nothing was queued)")


def draining(daemon: Any) -> bool:
    node = getattr(daemon, "cluster", None)
    return bool(node is not None and node.draining)


def refusal_reply(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} draining: try another node")


class ClusterAdmin:
    d: Any          # RuntimeAdmin's daemon view

    def _node(self) -> Any:
        node = getattr(self.d, "cluster", None)
        if node is None:
            raise NotImplementedError(NOT_IN_CLUSTER)
        return node

    async def cluster_status(self) -> dict[str, Any]:
        node = self._node()
        status: dict[str, Any] = await node.status()
        for row in status["nodes"]:
            row["this"] = row.get("name") == node.name
        return status

    async def node_status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._node().node_status()
        return result

    async def node_drain(self, flag: bool) -> dict[str, Any]:
        node = self._node()
        before = node.draining
        try:
            result: dict[str, Any] = await node.set_draining(flag)
        except SharedDbUnavailable as exc:
            node.draining = before       # not stored: the next heartbeat would undo it
            raise ClusterUnavailable(
                f"the shared database is unreachable ({exc}): cannot record the "
                f"{'drain' if flag else 'undrain'}; nothing changed, retry") from None
        return result


async def wire(node: Any) -> None:
    """Plug the drain into this daemon's doors, and its gauges into /metrics."""
    d = node.d
    reply = refusal_reply(d.cfg.server.hostname)

    def smtp_refusal() -> Reply | None:
        return reply if node.draining else None

    for listener in getattr(d, "listeners", ()):
        listener.refusal = smtp_refusal
    if d.api is not None:
        def api_refusal() -> ApiError | None:
            return ApiError(421, "node_draining", API_REFUSAL) if node.draining else None
        d.api.app[REFUSE_SENDS].append(api_refusal)
        if getattr(d, "receivers", None) is not None:
            # Receiver processes serve the API: while draining, the owner
            # keeps new connections (its app refuses); a keep-alive one a
            # receiver already holds is served until the client closes it.
            d.receivers.keep_api = lambda: bool(node.draining)
    registry = d.metrics.registry
    Gauge("mta_cluster_node_draining", "1 while this node is draining (refusing new mail)",
          registry=registry).set_function(lambda: 1.0 if node.draining else 0.0)
    up = Gauge("mta_cluster_engine_up", "0 while the shared engine is unreachable from "
               "this node (degraded mode)", ["engine"], registry=registry)
    for engine in ("database", "redis"):
        up.labels(engine=engine).set_function(_engine_up(node, engine))
    if node.draining:
        event(log, "node_draining", node=node.name, hint="mta node undrain to accept mail")


def _engine_up(node: Any, engine: str) -> Callable[[], float]:
    return lambda: 0.0 if node.degraded()[engine] else 1.0
