"""Three nodes on one machine join one cluster (issue 19): heartbeats."""

import asyncio

from tests.support.cluster import cluster_world, until


async def test_three_nodes_join_and_beat(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        a = w.nodes["A"].cluster
        assert a is not None
        status = await until(lambda: None, 0.1) if False else await a.status()
        names = [r["name"] for r in status["nodes"]]
        assert names == ["A", "B", "C"]
        assert all(r["up"] for r in status["nodes"])
