"""This node's part in a cluster (issue 19): the shared engines, wired in.

One job: when `[cluster]` is set, open the shared PostgreSQL (migrations
applied on start, under a lock) and Redis, keep this node's heartbeat row
current, and hand the shared stores to the parts that use them; when it is
not set, do nothing (the single node needs neither engine).

API
    await start_cluster(daemon) -> ClusterNode | None   None: [cluster] unset (and
        what an earlier membership left in the index removed: spool/cluster_leave.py)
        StartupError when an engine cannot be reached at start
    node.name, node.db (cluster.db.SharedDb), node.redis (redis.asyncio.Redis)
    node.draining -> bool        this node refuses new mail (`mta node drain`)
    await node.set_draining(flag) -> dict   the node's status after
    await node.status() -> dict   {"node", "cluster": [rows…], "degraded": {…}}
    node.degraded() -> {"database": bool, "redis": bool}   unreachable now
    node.add_job(job)            a housekeeping job that runs only in a cluster
    node.on_stop                 [async fn()]: run at stop, before the engines close
    await node.wire()            the daemon calls it once every part is built:
                                 each of WIRINGS plugs a shared store into them
    await node.stop()
    MIGRATIONS                   every shared component's migrations

Degraded mode: a call that finds an engine unreachable marks it so (and
logs once); the heartbeat keeps trying, and the first call that succeeds
clears it. What needs a shared decision that cannot be made answers 4xx
(the parts say which); the spool and delivery go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from mta import __version__
from mta.cluster import nodes
from mta.cluster import suppressions as shared_suppressions
from mta.cluster import idempotency as shared_idempotency
from mta.cluster import ledger as shared_ledger
from mta.cluster import accounts as shared_accounts
from mta.cluster import documents as shared_documents
from mta.cluster.db import Migration, SharedDb, SharedDbError, SharedDbUnavailable
from mta.config.cluster import enabled, redact_url
from mta.runtime import cluster_idempotency, cluster_limits, cluster_suppressions
from mta.runtime import admin_cluster
from mta.runtime import cluster_ledger
from mta.runtime import cluster_accounts
from mta.runtime import cluster_credentials, cluster_domains
from mta.runtime import cluster_shaping
from mta.runtime import cluster_events, cluster_reputation, cluster_smtp_keys
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.runtime.startup import StartupError
from mta.spool.cluster_leave import leave
from mta.spool.layout import SpoolPaths

__all__ = ["MIGRATIONS", "ClusterNode", "REDIS_DOWN", "start_cluster"]

log = logging.getLogger("mta.cluster")

MIGRATIONS: list[Migration] = [*nodes.MIGRATIONS, *shared_suppressions.MIGRATIONS,
                                *shared_idempotency.MIGRATIONS, *shared_ledger.MIGRATIONS,
                                *shared_accounts.MIGRATIONS, *shared_documents.MIGRATIONS]
# Each shared component's wiring: called once every part of the daemon is
# built (listeners bound, runner started), in this order, with the node.
WIRINGS: list[Callable[[Any], Awaitable[None]]] = [admin_cluster.wire,
                                                   cluster_domains.wire,
                                                   cluster_credentials.wire,
                                                   cluster_suppressions.wire,
                                                   cluster_limits.wire,
                                                   cluster_shaping.wire,
                                                   cluster_idempotency.wire,
                                                   cluster_idempotency.wire_auth,
                                                   cluster_ledger.wire,
                                                   cluster_accounts.wire,
                                                   cluster_smtp_keys.wire,
                                                   cluster_events.wire,
                                                   cluster_reputation.wire]

# What a Redis call raises when Redis is unreachable (not a bug of ours).
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
    asyncio.TimeoutError)


class ClusterNode:
    def __init__(self, daemon: Any, db: SharedDb, rds: aioredis.Redis):
        self.d = daemon
        self.cfg = daemon.cfg.cluster
        self.name: str = self.cfg.node
        self.db, self.redis = db, rds
        self.redis_available = True
        self.draining = False
        self.on_stop: list[Callable[[], Awaitable[None]]] = []   # run by stop(), in order
        self._drain_gen = 0        # bumped by set_draining: a heartbeat begun before
        self.started = daemon.clock.now()

    # -- heartbeat ------------------------------------------------------------------

    def _beat(self, depth: int) -> nodes.NodeBeat:
        listeners = getattr(self.d, "listeners", [])
        smtp = ",".join(str(getattr(lst, "address", "")) for lst in listeners)
        return nodes.NodeBeat(self.name, __version__, depth, self.d.cfg.admin.address,
                              smtp[:500], self.started)

    async def heartbeat(self) -> None:
        """Write this node's row; read back whether an operator asked it to
        drain (from any node); check Redis answers."""
        spool = self.d.spool
        depth = int((await spool.gauges())["messages_pending"]) if spool is not None else 0
        now = self.d.clock.now()
        beat = self._beat(depth)

        async def write(conn: Any) -> bool:
            await nodes.beat(conn, beat, now)
            return await nodes.draining_of(conn, self.name)
        gen = self._drain_gen
        try:
            draining = await self.db.call(write)
            if gen == self._drain_gen:   # no set_draining meanwhile (it would be stale)
                self.draining = draining
        except SharedDbUnavailable:
            pass                    # logged by SharedDb; the local flag stands
        await self.ping_redis()

    async def ping_redis(self) -> bool:
        try:
            await self.redis.ping()
        except REDIS_DOWN as exc:
            self.redis_down(exc)
            return False
        self.redis_up()
        return True

    def redis_down(self, exc: BaseException) -> None:
        if self.redis_available:
            event(log, "cluster_redis_unreachable", level=logging.WARNING,
                  redis=redact_url(self.cfg.redis or ""), error=str(exc)[:200])
        self.redis_available = False

    def redis_up(self) -> None:
        if not self.redis_available:
            event(log, "cluster_redis_back", redis=redact_url(self.cfg.redis or ""))
        self.redis_available = True

    def degraded(self) -> dict[str, bool]:
        return {"database": not self.db.available, "redis": not self.redis_available}

    # -- operator -------------------------------------------------------------------

    async def set_draining(self, flag: bool) -> dict[str, Any]:
        """Drain (or undrain) this node: the flag is stored in the shared row
        (so it survives a restart) and applies here at once."""
        now = self.d.clock.now()
        self._drain_gen += 1
        self.draining = flag
        await self.heartbeat()       # the row exists before it is flagged
        await self.db.call(lambda c: nodes.set_draining(c, self.name, flag, now))
        self.draining = flag
        event(log, "node_drain" if flag else "node_undrain", node=self.name)
        return await self.node_status()

    async def node_status(self) -> dict[str, Any]:
        spool = self.d.spool
        depth = int((await spool.gauges())["messages_pending"]) if spool is not None else 0
        return {"node": self.name, "version": __version__, "draining": self.draining,
                "queue_depth": depth, "drained": self.draining and depth == 0,
                "degraded": self.degraded()}

    async def status(self) -> dict[str, Any]:
        now = self.d.clock.now()
        try:
            rows = await self.db.call(lambda c: nodes.nodes(c, now, self.cfg.node_timeout))
        except SharedDbUnavailable:
            rows = []
        return {"node": await self.node_status(), "nodes": rows,
                "database": redact_url(self.cfg.database or ""),
                "redis": redact_url(self.cfg.redis or "")}

    async def wire(self) -> None:
        for wiring in WIRINGS:
            await wiring(self)

    def add_job(self, job: Job) -> None:
        self.d.housekeeping.add(job)

    async def stop(self) -> None:
        for hook in self.on_stop:       # e.g. hand webhook leases back at once
            try:
                await hook()
            except SharedDbUnavailable:
                pass                    # they expire on their own
        await self.db.close()
        await self.redis.aclose()


async def start_cluster(daemon: Any) -> ClusterNode | None:
    c = daemon.cfg.cluster
    if not enabled(c):
        gone = await asyncio.to_thread(leave, SpoolPaths.of(daemon.cfg.server.state_dir).index)
        if gone:        # it was in a cluster: stop feeding outboxes nobody drains
            event(log, "cluster_left", removed=",".join(gone))
        return None
    assert c.database is not None and c.redis is not None
    try:
        db = await SharedDb.open(c.database, timeout=c.connect_timeout, migrations=MIGRATIONS)
    except SharedDbError as exc:
        raise StartupError(str(exc)) from exc
    rds = aioredis.from_url(c.redis, socket_timeout=c.connect_timeout,
                            socket_connect_timeout=c.connect_timeout)
    try:
        await rds.ping()
    except REDIS_DOWN as exc:
        await db.close()
        await rds.aclose()
        raise StartupError(f"cluster.redis {redact_url(c.redis)}: cannot connect: "
                           f"{exc}") from exc
    except redis.exceptions.RedisError as exc:
        await db.close()
        await rds.aclose()
        raise StartupError(f"cluster.redis {redact_url(c.redis)}: {exc}") from exc
    node = ClusterNode(daemon, db, rds)
    try:                        # a bad secret file stops the start before anything binds
        cluster_domains.open_box(node)
    except StartupError:
        await node.stop()
        raise
    await node.heartbeat()
    node.add_job(Job("cluster_heartbeat", c.heartbeat, node.heartbeat))
    event(log, "cluster_joined", node=node.name, database=redact_url(c.database),
          redis=redact_url(c.redis), draining=node.draining)
    return node
