"""A cluster when its shared engines fail (issue 19, "Failure tests").

* PostgreSQL stopped for 30 s while two nodes take mail over SMTP: the nodes
  keep accepting (degraded mode), no acknowledged message is lost (every
  one reaches the sink), and once PostgreSQL is back the shared ledger holds
  every event every node wrote, each once.
* Redis restarted: tenant quotas and connection leases work again after
  it, and a lease of a node that died without releasing it expires.

Each test runs its own engine server (tests/support/engines.py), so
stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import time

import aiosmtplib
import pytest

from mta.cluster import ledger as shared_ledger
from tests.support.cluster import cluster_world, until
from tests.support.engines import MISSING_ENGINES
from tests.support.mtahelpers import make_message, parse

pytestmark = pytest.mark.skipif(bool(MISSING_ENGINES), reason=MISSING_ENGINES or "-")

OUTAGE = 30.0      # seconds PostgreSQL stays down (the figure)




def subjects(sink) -> set[str]:
    return {parse(m.data)["Subject"] for m in sink.messages}


class Load:
    """SMTP submissions to some nodes, one at a time per node, until stopped;
    keeps the queue id of every acknowledged message and the refusals."""

    def __init__(self, world, nodes):
        self.w, self.nodes = world, nodes
        self.accepted: dict[str, str] = {}        # queue id -> subject
        self.refused: list[str] = []
        self.stop = asyncio.Event()
        self.n = 0

    async def _one(self, node: str) -> None:
        while not self.stop.is_set():
            self.n += 1
            subject = f"load-{node}-{self.n}"
            body = make_message("app@plain.test", [f"r{self.n}@rcpt.test"], subject=subject)
            try:
                _, reply = await self.w.smtp_send(node, "app@plain.test",
                                                  [f"r{self.n}@rcpt.test"], body)
                self.accepted[reply.rsplit(" ", 1)[-1]] = subject
            except aiosmtplib.SMTPResponseException as exc:
                assert 400 <= exc.code < 500, f"a 5xx while degraded: {exc}"
                self.refused.append(f"{exc.code} {exc.message}")
            await asyncio.sleep(0.02)

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._one(n)) for n in self.nodes]


async def test_postgres_stopped_30s_during_load(tmp_path, own_pg, redis_url, report):
    async with cluster_world(tmp_path, own_pg.new_database(), redis_url, n=2) as w:
        load = Load(w, ["A", "B"])
        tasks = load.start()
        await until(lambda: len(load.accepted) >= 20, 30)
        own_pg.stop()
        before_outage = len(load.accepted)
        t0 = time.monotonic()
        await until(lambda: all(d.cluster.degraded()["database"] for d in w.nodes.values()),
                    20)
        await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - t0)))
        during = len(load.accepted) - before_outage
        own_pg.start()
        await until(lambda: not any(d.cluster.degraded()["database"]
                                    for d in w.nodes.values()), 30)
        await asyncio.sleep(1)
        load.stop.set()
        await asyncio.gather(*tasks)
        assert during > 50, f"only {during} messages accepted while PostgreSQL was down"
        # Nothing acknowledged is lost: every accepted message reaches the sink.
        await until(lambda: len(subjects(w.sink) & set(load.accepted.values()))
                    == len(load.accepted), 120)
        # The shared ledger is complete: every node's local events, each once.
        for name, d in w.nodes.items():
            local = await d.spool.ledger.last_event_seq()
            events = await d.spool.ledger.events_after(0, local + 10)

            async def forwarded(name=name):
                return await d.cluster.db.call(lambda c: shared_ledger.node_count(c, name))
            expected = len(events)
            for _ in range(600):
                if await forwarded() >= expected:
                    break
                await asyncio.sleep(0.05)
            assert await forwarded() == expected, name
        # …and a message accepted during the outage has its timeline there.
        qid = list(load.accepted)[before_outage + during // 2]
        a = w.nodes["A"].cluster
        timeline = await a.db.call(lambda c: shared_ledger.message_events(c, qid))
        types = [e.type for e in timeline]
        assert "received" in types and "delivered" in types, types
        report(f"cluster: PostgreSQL down {OUTAGE:.0f} s under load: {during} messages "
               f"accepted meanwhile, {len(load.accepted)} in all, {len(load.refused)} refused "
               "(4xx), 0 lost, shared ledger complete")


async def test_redis_restarted_limits_recover_and_dead_leases_expire(tmp_path, pg_url,
                                                                     own_redis):
    from mta.cluster.limits import Leases
    from mta.spool.tenants import SqliteTenants
    async with cluster_world(tmp_path, pg_url, own_redis.url(0), n=2, start=False) as w:
        for state in w.states.values():      # acme: 4 messages a day, cluster-wide
            SqliteTenants(state).update("acme", limits={"per_day": 4}, policy=None,
                                        now=time.time())
        for name in ("A", "B"):
            await w.start_node(name)
        key = w.keys["acme"]

        async def send(node: str, i: int) -> int:
            status, _ = await w.api(node, key, "POST", "/emails", json={
                "from": "app@acme.test", "to": [f"q{i}@rcpt.test"], "subject": "q",
                "text": "quota"})
            return status
        assert [await send("A", 1), await send("B", 2)] == [200, 200]
        # A node dies holding a connection lease (it never releases it).
        a = w.nodes["A"].cluster
        dead = Leases(a.redis)
        now = time.time()
        assert await dead.acquire("provider:test", 1, "dead-node", 2.0, now) is not None
        assert await dead.acquire("provider:test", 1, "live-node", 2.0, now) is None
        # Once its ttl passed, a live node gets the slot: nothing was released.
        assert await dead.acquire("provider:test", 1, "live-node", 2.0, now + 2.5) is not None

        own_redis.stop()
        # Redis down: a tenant with limits is told to come back (4xx), never 5xx.
        status = await send("B", 3)
        assert status == 429, status
        own_redis.start()
        # Limits recover: Redis came back empty (no persistence in this test),
        # and the cluster-wide budget holds again across both nodes.
        statuses = []
        for i in range(6):
            for _ in range(100):
                s = await send("AB"[i % 2], 10 + i)
                if s != 429 or statuses.count(200) >= 4:
                    break
                await asyncio.sleep(0.05)     # reconnecting after the restart
            statuses.append(s)
        assert statuses.count(200) == 4 and statuses[4:] == [429, 429], statuses
        # Leases work again after the restart.
        assert await dead.acquire("provider:test", 1, "n1", 2.0, time.time()) is not None
        assert await dead.acquire("provider:test", 1, "n2", 2.0, time.time()) is None
