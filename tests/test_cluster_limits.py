"""Shared limits on a real Redis (issue 19, mta/cluster/limits.py): the
quota script agrees with policy/quota.py's QuotaState case by case, two
clients ("nodes") share one budget, connection leases hold their limit
under concurrent acquires, expire without a release and live on when
renewed; a Redis restart loses nothing the limits need."""

from __future__ import annotations

import asyncio
import math

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from mta.cluster.limits import Leases, SharedQuota
from mta.policy.quota import HOUR, QuotaLimits, QuotaState, QuotaVerdict
from mta.runtime.cluster_limits import REDIS_DOWN

T0 = math.floor(1_900_000_000 / HOUR) * HOUR + 600.0     # ten minutes into an hour

L = QuotaLimits
# Each case: steps of (limits, n, seconds since T0), applied in order to a
# QuotaState and to SharedQuota; every verdict must be the same.
CASES = {
    "hourly fills then the next hour": [
        (L(per_hour=5), 3, 0), (L(per_hour=5), 2, 1), (L(per_hour=5), 1, 2),
        (L(per_hour=5), 1, 3000), (L(per_hour=5), 1, 3000 + 1)],
    "hourly and daily: the longer wait wins": [
        (L(per_hour=3, per_day=4), 3, 0), (L(per_hour=3, per_day=4), 1, 5),
        (L(per_hour=3, per_day=4), 1, 3600), (L(per_hour=3, per_day=4), 1, 3601),
        (L(per_hour=3, per_day=4), 2, 3602)],
    "more than a whole window is impossible": [
        (L(per_hour=2), 1, 0), (L(per_hour=2), 3, 1), (L(per_hour=2, per_day=2), 3, 2),
        (L(per_hour=2), 1, 3)],
    "whole rate: burst then the wait": [
        (L(rate=2), 2, 0), (L(rate=2), 1, 0), (L(rate=2), 1, 0.25), (L(rate=2), 1, 0.5),
        (L(rate=2), 2, 0.6), (L(rate=2), 2, 10)],
    "slow rate: one per two seconds": [
        (L(rate=0.5), 1, 0), (L(rate=0.5), 1, 1), (L(rate=0.5), 1, 2), (L(rate=0.5), 2, 3)],
    "rate with a burst": [
        (L(rate=1, burst=3), 4, 0), (L(rate=1, burst=3), 3, 0), (L(rate=1, burst=3), 1, 0.5),
        (L(rate=1, burst=3), 1, 1), (L(rate=1, burst=3), 2, 1.5), (L(rate=1, burst=3), 3, 9)],
    "hour and rate together": [
        (L(per_hour=4, rate=5), 3, 0), (L(per_hour=4, rate=5), 2, 0.1),
        (L(per_hour=4, rate=5), 1, 0.2), (L(per_hour=4, rate=5), 1, 0.3),
        (L(per_hour=4, rate=5), 1, 3000)],
    "limits changed between calls": [
        (L(rate=1), 1, 0), (L(rate=2), 1, 0.2), (L(rate=2), 1, 0.3),
        (L(per_hour=1), 1, 1), (L(per_hour=1), 1, 2), (L(per_hour=3), 1, 3)],
    "at the hour's edge": [
        (L(per_hour=1), 1, 3000 - 0.5), (L(per_hour=1), 1, 3000 - 0.25),
        (L(per_hour=1), 1, 3000)],
}


def same(a: QuotaVerdict, b: QuotaVerdict) -> bool:
    if (a.ok, a.limit, a.impossible, a.used, a.allowed, a.rate) != \
            (b.ok, b.limit, b.impossible, b.used, b.allowed, b.rate):
        return False
    if a.retry_after is None or b.retry_after is None:
        return a.retry_after is b.retry_after
    return abs(a.retry_after - b.retry_after) < 1e-6


@pytest.fixture
async def rds(redis_url):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.parametrize("case", list(CASES))
async def test_the_quota_script_agrees_with_quota_state(rds, case):
    shared, local = SharedQuota(rds), QuotaState()
    verdicts = []
    for limits, n, dt in CASES[case]:
        want = local.admit(limits, n, T0 + dt)
        got = await shared.admit(case, limits, n, T0 + dt)
        assert same(got, want), (limits, n, dt, got, want)
        verdicts.append(got.ok)
        assert await shared.used(case, T0 + dt) == local.used(T0 + dt)
    assert True in verdicts and False in verdicts        # each case says both


async def test_two_nodes_share_one_budget(redis_url):
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        qa, qb = SharedQuota(a), SharedQuota(b)
        limits = QuotaLimits(per_hour=5)
        assert (await qa.admit("acme", limits, 3, T0)).ok
        assert (await qb.admit("acme", limits, 2, T0 + 1)).ok
        refused = await qb.admit("acme", limits, 1, T0 + 2)
        assert not refused.ok and refused.limit == "per_hour" and refused.used == 5
        assert not (await qa.admit("acme", limits, 1, T0 + 2)).ok
        # concurrent submissions on both nodes: exactly the budget passes
        limits = QuotaLimits(per_day=7, rate=100, burst=100)
        got = await asyncio.gather(*[
            (qa if i % 2 else qb).admit("beta", limits, 1, T0 + 3) for i in range(40)])
        assert sum(v.ok for v in got) == 7
        assert await qa.used("beta", T0 + 3) == (7, 7)
        # another tenant's budget is its own
        assert (await qa.admit("gamma", QuotaLimits(per_hour=1), 1, T0)).ok
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_lease_limit_holds_under_concurrent_acquires_from_two_clients(redis_url):
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        la, lb = Leases(a), Leases(b)
        got = await asyncio.gather(*[
            (la if i % 2 else lb).acquire("site:x", 2, f"n{i % 2}", 30.0, T0)
            for i in range(50)])
        granted = [g for g in got if g is not None]
        assert len(granted) == 2
        assert await la.holders("site:x", T0) == 2
        await lb.release("site:x", granted[0])
        assert await la.holders("site:x", T0 + 1) == 1
        again = await la.acquire("site:x", 2, "n0", 30.0, T0 + 1)
        assert again is not None
        assert await lb.acquire("site:x", 2, "n1", 30.0, T0 + 1) is None
        # another key is another limit
        assert await lb.acquire("site:y", 2, "n1", 30.0, T0 + 1) is not None
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_dead_nodes_lease_expires_and_a_renewed_one_lives(rds):
    leases = Leases(rds)
    dead = await leases.acquire("provider:p", 1, "dead", 30.0, T0)
    assert dead is not None
    assert await leases.acquire("provider:p", 1, "live", 30.0, T0 + 29) is None
    # never renewed nor released: gone once its ttl is over
    assert await leases.holders("provider:p", T0 + 30) == 0
    live = await leases.acquire("provider:p", 1, "live", 30.0, T0 + 31)
    assert live is not None
    # renewed every ttl/3, it outlives its first expiry
    assert await leases.renew("provider:p", live, 30.0, T0 + 41)
    assert await leases.renew("provider:p", live, 30.0, T0 + 51)
    assert await leases.acquire("provider:p", 1, "other", 30.0, T0 + 75) is None
    assert await leases.holders("provider:p", T0 + 75) == 1
    # a released or purged lease cannot be renewed
    await leases.release("provider:p", live)
    assert not await leases.renew("provider:p", live, 30.0, T0 + 76)
    assert not await leases.renew("provider:p", dead, 30.0, T0 + 76)
    with pytest.raises(ValueError):
        await leases.acquire("provider:p", 0, "x", 30.0, T0)


async def test_redis_restarted_limits_recover(tmp_path):
    from tests.support.engines import MISSING_ENGINES, RedisServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = RedisServer().start()
    client = aioredis.from_url(server.url(0), socket_timeout=2, socket_connect_timeout=2)
    try:
        quota, leases = SharedQuota(client), Leases(client)
        limits = QuotaLimits(per_hour=3)
        assert (await quota.admit("acme", limits, 2, T0)).ok
        held = await leases.acquire("site:s", 1, "killed-node", 30.0, T0)
        assert held is not None
        server.stop()
        with pytest.raises(REDIS_DOWN):
            await quota.admit("acme", limits, 1, T0 + 1)
        with pytest.raises(redis.exceptions.ConnectionError):
            await leases.acquire("site:s", 1, "n", 30.0, T0 + 1)
        server.start()          # same port, empty (no persistence), scripts forgotten
        # the killed node's lease went with the old state; grants work again
        granted = await leases.acquire("site:s", 1, "n", 30.0, T0 + 2)
        assert granted is not None
        assert await leases.acquire("site:s", 1, "m", 30.0, T0 + 2) is None
        assert await leases.renew("site:s", granted, 30.0, T0 + 3)
        # the quota counts again (from zero: windows rebuild themselves)
        assert (await quota.admit("acme", limits, 3, T0 + 3)).ok
        over = await quota.admit("acme", limits, 1, T0 + 4)
        assert not over.ok and over.limit == "per_hour"
    finally:
        await client.aclose()
        server.destroy()
