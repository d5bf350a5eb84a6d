"""Three nodes on one machine join one cluster (issue 19): the migrations
run once under their lock, every node writes its heartbeat, and a node
that stops beating shows as down after `node_timeout`."""

import asyncio

from mta.cluster import nodes
from mta.cluster.db import SharedDb
from mta.runtime.cluster import MIGRATIONS
from tests.support.cluster import cluster_world, until


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



async def test_a_node_that_leaves_the_cluster_drops_its_outboxes(tmp_path, pg_url, redis_url):
    import re
    import sqlite3

    from mta.spool.layout import SpoolPaths
    from mta.spool.ledger_sql import HOLD_CURSOR
    from tests.support.mtahelpers import running_daemon

    def cluster_objects(index) -> list[str]:
        with sqlite3.connect(index) as db:
            names = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE 'cluster%'")]
            hold = db.execute("SELECT count(*) FROM webhook_state WHERE name = ?",
                              (HOLD_CURSOR,)).fetchone()[0]
        return names + ["hold"] * hold
    async with cluster_world(tmp_path, pg_url, redis_url, n=1) as w:
        index = SpoolPaths.of(w.nodes["A"].cfg.server.state_dir).index
        await w.smtp_send("A", "app@plain.test", ["x@rcpt.test"], b"Subject: x\r\n\r\nx\r\n")
        await until(lambda: "hold" in cluster_objects(index), 10)
        assert any(n.startswith("cluster_suppression") for n in cluster_objects(index))
        single = re.sub(r"\[cluster\]\n(?:[a-z_]+ = .*\n)+", "", w.texts["A"])
        assert "[cluster]" not in single
        await w.stop_node("A")
        assert "hold" in cluster_objects(index)          # a stop alone keeps them
        async with running_daemon(single):       # (the world removes the state at its end)
            assert cluster_objects(index) == []
        async with running_daemon(single):       # nothing left to do the second time
            assert cluster_objects(index) == []
