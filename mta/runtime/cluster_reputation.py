"""Tenant reputation in a cluster (issue 19): one assessment, from every
node's outcomes, acted on by one node.

One job: replace the daemon's reputation tracker (runtime/reputation.py)
by one that, in a cluster, sees the whole tenant and speaks with one voice.

What goes wrong with a tracker per node over its own ledger while the
tenants table (auto_status included) is shared (runtime/cluster_accounts.py):
  * partial views: a tenant whose mail is spread over three nodes shows
    each node a third of its volume — under `min_volume` everywhere, so
    never assessed, however bad the whole — or a skewed sample (the
    bouncing batch went through B) pauses the tenant for every node on one
    node's view;
  * flapping: A's view says warn and stores it; B's says ok, reads the
    pulled "warn" and stores "recovered"; A warns again… each change a
    ledger event and a webhook, and every node emits its own;
  * a resume reaches only one node's tracker (`forget` is local): another
    node's full window pauses the tenant again at its next tick; and the
    mail the other nodes held for the pause stays held.

The choice (the simplest sound one): every node follows the shared
ledger's final outcomes in global seq order (cluster/ledger.py
`outcomes_after`), so every node holds the same windows (`mta tenant show`
prints the cluster's figures on any node); only the assessor acts — the
lowest-named node that is up in the `nodes` table (heartbeat within
`[cluster] node_timeout`): one writer of auto_status, one event per change,
no vote, no lock. A node that dies hands the role on with its heartbeat.
At a hand-over two nodes may act in the same tick: both read the same
ledger, so they decide the same; at worst one change is recorded twice.
Every node, acting or not, watches the shared tenant rows: a tenant that
stops sending (paused here or elsewhere) has this node's queued mail held
at once; one that sends again (an operator's resume on any node — the
tracker never leaves a pause itself) has its window started over and this
node's held mail released, as a resume does on its own node.

API
    ClusterReputation(node, tenants, spool, clock, cfg_of)   a ReputationTracker
    await assessor(node) -> bool   this node is the lowest-named up node
    await wire(node)               (runtime/cluster.py WIRINGS) the daemon's
                                   tracker stopped and replaced by one of these

PostgreSQL unreachable: the tracker neither follows nor acts (its view is
not current; the step is skipped, quietly — SharedDb logs the outage) and
holds/releases by the local tenant rows go on; it catches up from its
cursor when the database is back (a first rebuild that failed is retried).
The local quota fallback is seeded from the cluster's `received` counts (a
quota is the cluster's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mta.cluster import ledger as shared
from mta.cluster import nodes
from mta.cluster.db import SharedDbUnavailable
from mta.config import Config
from mta.core import Clock
from mta.core.logfmt import event
from mta.policy.reputation import Assessment
from mta.runtime.reputation import BATCH, REBUILD, ReputationTracker, log
from mta.runtime.tenants import TenantService
from mta.spool import MessageFilter, Spool
from mta.core.stores import OutcomeRow

__all__ = ["ClusterReputation", "assessor", "wire"]


async def assessor(node: Any) -> bool:
    """This node is the lowest-named node that is up (False when the nodes
    table cannot be read)."""
    now, timeout = node.d.clock.now(), float(node.cfg.node_timeout)
    try:
        rows = await node.db.call(lambda c: nodes.nodes(c, now, timeout))
    except SharedDbUnavailable:
        return False
    up = sorted(str(r["name"]) for r in rows if r["up"])
    return bool(up) and up[0] == node.name


class ClusterReputation(ReputationTracker):
    def __init__(self, node: Any, tenants: TenantService, spool: Spool, clock: Clock,
                 cfg_of: Callable[[], Config]):
        super().__init__(tenants, spool, clock, cfg_of)
        self.node = node
        self.acting = False                  # the last step's role (status, tests)
        self._ready = False                  # rebuilt from the shared ledger
        self._sending: dict[str, bool] = {}  # each tenant's `sending` as last seen

    async def start(self) -> None:
        await self._rebuilt()
        self._start_task()

    async def _rebuilt(self) -> bool:
        if self._ready:
            return True
        self._rates.clear()
        self._domains.clear()
        try:
            last = await self._last_seq()
            self._cursor = max(0, last - REBUILD)
            await self._rebuild(last)
        except SharedDbUnavailable:
            return False
        self._ready = True
        return True

    async def _outcomes(self, types: tuple[str, ...]) -> Sequence[OutcomeRow]:
        after = self._cursor
        rows: list[OutcomeRow] = await self.node.db.call(
            lambda c: shared.outcomes_after(c, after, BATCH, types))
        return rows

    async def _last_seq(self) -> int:
        return int(await self.node.db.call(shared.last_seq))

    async def _follow(self) -> bool:
        if not await self._rebuilt():
            return False
        try:
            return await super()._follow()
        except SharedDbUnavailable:
            return False

    async def _acting(self) -> bool:
        acting = await assessor(self.node)
        if acting != self.acting:
            event(log, "reputation_assessor" if acting else "reputation_observer",
                  node=self.node.name)
        self.acting = acting
        return acting

    async def _noticed(self) -> None:
        """Act here on a change of a tenant's `sending` made anywhere."""
        for name in self.tenants.names():
            sending = self.tenants.row(name).sending
            was = self._sending.get(name)
            self._sending[name] = sending
            if was is None or was == sending:
                continue
            if not sending:
                await self.tenants.hold(name)
                continue
            super().forget(name)             # resumed: the window starts over
            released = await self.spool.release_messages(
                MessageFilter(tenant=name, state="held"), self.clock.now())
            event(log, "tenant_resumed_elsewhere", tenant=name, node=self.node.name,
                  released=released)

    async def _act(self, tenant: str, stored: str, found: Assessment) -> None:
        await super()._act(tenant, stored, found)
        self._sending[tenant] = self.tenants.row(tenant).sending   # not a change to notice

    def forget(self, tenant: str) -> None:
        """Resumed through this node (TenantService.on_resume): its own
        resume releases the mail; the next step must not do it again."""
        super().forget(tenant)
        self._sending[tenant] = True


async def wire(node: Any) -> None:
    d = node.d
    old = getattr(d, "reputation", None)
    if old is None or d.tenants is None or d.spool is None:
        return
    await old.stop()
    tracker = ClusterReputation(node, d.tenants, d.spool, d.clock, lambda: d.cfg)
    d.reputation = tracker
    await tracker.start()
