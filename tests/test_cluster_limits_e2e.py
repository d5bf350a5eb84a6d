"""Shared limits across real nodes (issue 19): real daemons on loopback
ports sharing one PostgreSQL and one Redis, a real DNS server, one SMTP sink.

* A tenant's hourly quota of 5 holds for the cluster: 3 accepted on A, 2 on
  B, the 6th refused with 429 + Retry-After (the sum, not per node).
* A connection limit of 2 (a site's, or a provider's total across its
  sites) holds across three nodes against the sink: never more than 2
  connections open at once, every message delivered, a batch that waited
  for a lease counted as no attempt and recorded no deferral.
* Redis restarted under a node (its own redis-server): while it is down,
  a tenant with limits gets 451 4.3.0 / HTTP 429 (never 5xx), a tenant
  without limits and delivery go on (the node's own connection limit);
  once it is back, quotas and leases work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.cluster import ClusterWorld, cluster_world, until
from tests.support.dnsserver import DnsServer

ZONE = {"d1.test": {"MX": [(10, "mx1.sink.test")]}, "d2.test": {"MX": [(10, "mx2.sink.test")]},
        "mx1.sink.test": {"A": ["127.0.0.1"]}, "mx2.sink.test": {"A": ["127.0.0.1"]},
        "sender.test": {"MX": [(10, "mx1.sink.test")]}}
SITE = '[site."mx1.sink.test"]\nconnection_limit = 2\n'
PROVIDER = ('[provider.sinkprov]\nmatch = [".sink.test"]\n\n'
            '[provider.sinkprov.provider]\nconnection_limit = 2\n')


async def post_email(w: ClusterWorld, node: str, tenant: str,
                     rcpt: str) -> tuple[int, Any, Any]:
    api = w.nodes[node].api
    assert api is not None
    async with aiohttp.ClientSession() as s:
        async with s.post(api.url + "/emails", json={
                "from": f"app@{tenant}.test", "to": [rcpt], "subject": "s", "text": "t"},
                headers={"Authorization": f"Bearer {w.keys[tenant]}"}) as r:
            return r.status, await r.json(content_type=None), r.headers


async def set_limits(w: ClusterWorld, tenant: str, limits: dict[str, Any]) -> None:
    for node in w.nodes:        # each node's tenant row (they may share one store)
        status, body = await w.admin(node, "PATCH", f"/v1/tenants/{tenant}",
                                     json={"limits": limits})
        assert status == 200, body


async def test_a_tenant_quota_holds_across_nodes(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        # A day's quota: an hour's would make the test fail when a run
        # straddles the top of a UTC hour (a window boundary).
        await set_limits(w, "acme", {"per_day": 5})
        got = [await post_email(w, node, "acme", f"ok-q{i}@rcpt.test")
               for i, node in enumerate("AAABBB")]
        assert [g[0] for g in got] == [200] * 5 + [429], [g[1] for g in got]
        status, body, headers = got[-1]
        assert body["name"] == "daily_quota_exceeded"
        assert "daily quota (5 messages)" in body["message"]
        assert 1 <= int(headers["Retry-After"]) <= 86400
        # A alone has admitted 3 of 5: it refuses too (the sum counts)
        assert (await post_email(w, "A", "acme", "ok-q6@rcpt.test"))[0] == 429
        # a tenant without limits is not touched
        assert (await post_email(w, "B", "beta", "ok-b@rcpt.test"))[0] == 200
        await w.sink.wait_for(6)
        assert sorted(r for m in w.sink.messages for r in m.rcpt_tos if "-q" in r) == \
            [f"ok-q{i}@rcpt.test" for i in range(5)]
        # the operator's view on B shows the cluster's count
        status, row = await w.admin("B", "GET", "/v1/tenants/acme")
        assert status == 200 and row["usage"]["day"] == 5


@contextlib.asynccontextmanager
async def mx_cluster(tmp_path: Path, pg_url: str, redis_url: str, shaping: str,
                     n: int) -> AsyncIterator[ClusterWorld]:
    """A cluster delivering by MX (our DNS server) to its sink, shaped by
    `shaping`, three messages a connection at most."""
    path = tmp_path / "shaping.toml"
    path.write_text(shaping)
    async with DnsServer(ZONE) as dns:
        async with cluster_world(tmp_path, pg_url, redis_url, n=n, start=False,
                                 extra=f'[shaping]\nfile = "{path}"\n') as w:
            port = w.sink.address[1]
            for name, text in w.texts.items():
                route = f'"*" = "127.0.0.1:{port}"\n'
                assert route in text and "nameservers = []" in text
                w.texts[name] = (text.replace(route, "")
                                 .replace("nameservers = []", f'nameservers = ["{dns.nameserver}"]')
                                 .replace("smtp_port = 25\n", f"smtp_port = {port}\n"
                                          "max_messages_per_connection = 3\n"))
            for name in w.texts:
                await w.start_node(name)
            yield w


async def poll(cond: Callable[[], Awaitable[bool]], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


async def _all_delivered(w: ClusterWorld, total: int) -> bool:
    views = [v for d in w.nodes.values()
             for v in await d.spool.list_messages(include_done=True)]
    return len(views) == total and all(r.state == "delivered"
                                       for v in views for r in v.recipients)


@pytest.mark.parametrize("shaping,domains", [(SITE, ("d1.test",)),
                                             (PROVIDER, ("d1.test", "d2.test"))],
                         ids=["site", "provider"])
async def test_a_connection_limit_of_two_holds_across_three_nodes(
        tmp_path, pg_url, redis_url, shaping, domains):
    per_node = 24
    async with mx_cluster(tmp_path, pg_url, redis_url, shaping, 3) as w:
        for i in range(per_node):
            for node in w.nodes:
                dom = domains[i % len(domains)]
                await w.smtp_send(node, "app@sender.test", [f"slow-60-{node}{i}@{dom}"],
                                  b"Subject: s\r\n\r\nhello\r\n")
        total = per_node * len(w.nodes)
        await poll(lambda: _all_delivered(w, total), 40)
        assert len(w.sink.messages) == total
        assert w.sink.max_open <= 2
        gates = [d.runner.gate for d in w.nodes.values()]
        assert sum(g.handed_back for g in gates) > 0      # the nodes did contend
        assert all(g.held() == 0 for g in gates)          # every lease released
        for d in w.nodes.values():
            views = await d.spool.list_messages(include_done=True)
            # waiting for a lease is no attempt and records no deferral
            assert {r.attempts for v in views for r in v.recipients} == {1}
            assert await d.spool.ledger.events_after(0, 1000, types=["deferred"]) == []
        rds = w.nodes["A"].cluster.redis
        assert await rds.keys("mta:lease:*") == [] or all(
            await rds.zcard(k) == 0 for k in await rds.keys("mta:lease:*"))


async def test_redis_restarted_under_a_node(tmp_path, pg_url):
    from tests.support.engines import MISSING_ENGINES, RedisServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = RedisServer().start()
    try:
        async with mx_cluster(tmp_path, pg_url, server.url(0), SITE, 1) as w:
            node = w.nodes["A"].cluster
            await set_limits(w, "acme", {"per_hour": 100})
            assert (await post_email(w, "A", "acme", "ok-1@d1.test"))[0] == 200
            server.stop()
            await until(lambda: not node.redis_available, 10)
            # a tenant with limits: come back later (never a 5xx, nothing queued)
            status, body, headers = await post_email(w, "A", "acme", "ok-2@d1.test")
            assert status == 429 and int(headers["Retry-After"]) >= 1, body
            assert "cannot be counted now" in body["message"]
            # without limits, and delivery: on, within the node's own limit
            for i in range(6):
                await w.smtp_send("A", "app@sender.test", [f"slow-50-x{i}@d1.test"],
                                  b"Subject: s\r\n\r\nhello\r\n")
            await poll(lambda: _all_delivered(w, 7), 20)
            assert w.sink.max_open <= 2
            server.start()          # empty: its windows and leases rebuild themselves
            await until(lambda: node.redis_available, 10)
            assert (await post_email(w, "A", "acme", "ok-4@d1.test"))[0] == 200
            for i in range(6):
                await w.smtp_send("A", "app@sender.test", [f"slow-50-y{i}@d1.test"],
                                  b"Subject: s\r\n\r\nhello\r\n")
            await poll(lambda: _all_delivered(w, 14), 20)
            assert w.nodes["A"].runner.gate.held() == 0
            assert w.nodes["A"].tenants.refused[("acme", "quota_unavailable")] == 1
    finally:
        server.destroy()

