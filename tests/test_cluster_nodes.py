"""Three nodes on one machine join one cluster (issue 19): the migrations
run once under their lock, every node writes its heartbeat, and a node
that stops beating shows as down after `node_timeout`."""

import asyncio

from mta.cluster import nodes
from mta.cluster.db import SharedDb
from mta.runtime.cluster import MIGRATIONS
from tests.support.cluster import cluster_world


async def test_three_nodes_join_and_beat(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        a = w.nodes["A"].cluster
        assert a is not None
        status = await a.status()
        assert [r["name"] for r in status["nodes"]] == ["A", "B", "C"]
        assert all(r["up"] and not r["draining"] for r in status["nodes"])
        assert status["node"]["node"] == "A" and status["node"]["degraded"] == {
            "database": False, "redis": False}
        first = {r["name"]: r["heartbeat"] for r in status["nodes"]}

        async def beaten() -> bool:
            rows = (await a.status())["nodes"]
            return all(r["heartbeat"] > first[r["name"]] for r in rows)
        for _ in range(100):
            if await beaten():
                break
            await asyncio.sleep(0.05)
        assert await beaten(), "heartbeats did not advance"
        # C stops: after node_timeout (3 s here) it is shown down, its row kept.
        await w.stop_node("C")
        for _ in range(200):
            rows = {r["name"]: r for r in (await a.status())["nodes"]}
            if not rows["C"]["up"]:
                break
            await asyncio.sleep(0.05)
        assert not rows["C"]["up"] and rows["A"]["up"] and rows["C"]["heard_ago"] > 3


async def test_migrations_apply_once_when_nodes_start_together(pg_url):
    dbs = await asyncio.gather(*(SharedDb.open(pg_url, timeout=10, migrations=MIGRATIONS)
                                 for _ in range(4)))
    try:
        rows = await dbs[0].call(lambda c: c.fetch(
            "SELECT component, version, count(*) AS n FROM mta_migrations "
            "GROUP BY component, version"))
        assert rows and all(r["n"] == 1 for r in rows)
        assert {r["component"] for r in rows} >= {"nodes", "ledger", "suppressions"}
        # A second start finds nothing to do.
        await dbs[1].migrate(MIGRATIONS)
        again = await dbs[0].call(lambda c: c.fetchval("SELECT count(*) FROM mta_migrations"))
        assert again == len(rows)
        assert await dbs[2].call(lambda c: nodes.nodes(c, 0.0, 15)) == []
    finally:
        for db in dbs:
            await db.close()

