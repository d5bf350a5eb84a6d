"""Traffic shaping shared on Redis (issue 19: mta/cluster/shaping.py,
mta/runtime/cluster_shaping.py).

Scripts, on a real Redis:
* the rates script agrees with policy/gcra.py's Gcra step by step, and is
  all or nothing over the keys of one batch; two clients share one rate;
* actions: publish keeps the later end, a lift leaves a tombstone that
  refuses the lifted action back but not a later firing; a snapshot reads
  them back as the Fired they were; reconcile says what a node does;
* warm-up: two nodes naming a source alike share its day's budget, a
  source of another name is not touched; sending days roll as
  policy/warmup.py rolls them; a node's own counts are floors; two nodes'
  gates over real Warmups keep to the day's smoothed share together.

End to end (three / two real daemons, one sink, a real DNS server — the
helpers of tests/test_cluster_limits_e2e.py):
* a site's message rate of 60/h (burst 1) holds for the cluster: the sink
  gets one message while three nodes each have mail for it; the others go
  back to the spool unattempted;
* a rule that fires on A (the sink answers [TS04]) suspends the site on B
  too, one ledger event in all; lifting it on B lifts it on A, one
  "automation_ended" event, and the waiting mail of both nodes goes.
"""

from __future__ import annotations

import math

import pytest
import redis.asyncio as aioredis

from mta.cluster.shaping import (SharedActions, SharedRates, SharedWarmup, fired_from,
                                 fired_record, reconcile)
from mta.policy.automation import Automation, Fired, Rule, parse_action
from mta.policy.gcra import Gcra, parse_rate
from mta.core.envelope import Destination
from mta.policy.warmup import Warmup, WarmupSchedule, WarmupState
from mta.runtime.cluster_shaping import ShapingGate
from mta.scheduler import Batch
from mta.scheduler.limits import Source
from tests.support.cluster import until
from tests.test_cluster_limits_e2e import mx_cluster, poll

T0 = 1_900_000_000.0
SITE = "mx1.sink.test"


@pytest.fixture
async def rds(redis_url):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


# ---- rates -----------------------------------------------------------------

@pytest.mark.parametrize("spec,steps", [
    ("2/s", [(2, 0), (1, 0), (1, 0.25), (1, 0.5), (2, 0.6), (2, 10)]),
    ("60/h", [(1, 0), (1, 1), (1, 59.9), (1, 60), (1, 61)]),
    ("5/10m", [(1, 0), (1, 0), (1, 120), (1, 121)]),
])
async def test_the_rates_script_agrees_with_gcra(rds, spec, steps):
    rate = parse_rate(spec)
    local, shared = Gcra(rate), SharedRates(rds)
    results = []
    for n, dt in steps:
        want = local.admit(T0 + dt, n)
        got = await shared.take([(f"t:{spec}", rate, n)], T0 + dt)
        assert (got == 0.0) == (want == 0.0), (n, dt, got, want)
        if want:
            assert abs(got - want) < 1e-6
        results.append(got == 0.0)
    assert True in results and False in results


async def test_rates_are_all_or_nothing_and_shared(redis_url):
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        ra, rb = SharedRates(a), SharedRates(b)
        slow, fast = parse_rate("60/h"), parse_rate("10/s")
        assert await ra.take([("p:x", slow, 1)], T0) == 0.0
        # node B: the same key is spent; a second key with room is not charged
        wait = await rb.take([("p:y", fast, 10), ("p:x", slow, 1)], T0 + 1)
        assert 58 < wait < 60
        assert await rb.take([("p:y", fast, 10)], T0 + 1) == 0.0      # all ten still there
        assert await rb.take([("p:y", fast, 1)], T0 + 1) > 0
        # more than the burst is capped at the burst (the scheduler never asks it)
        assert await ra.take([("p:z", slow, 5)], T0) == 0.0
        assert await ra.take([], T0) == 0.0
        assert 0 < await a.ttl("mta:rate:p:x") <= 61
    finally:
        await a.aclose()
        await b.aclose()


# ---- actions ---------------------------------------------------------------

def fired(action: str = "suspend", key: str = SITE, until: float = T0 + 3600,
          scope: str = "site") -> Fired:
    act = parse_action(action)
    rule = Rule(r"\[TS04\]", act, 3600.0, 3, 600.0, "ts04")
    return Fired(f"{scope}:{key}:{act}", rule, scope, key, act, T0, until, "421 [TS04] x")


def test_a_record_round_trips_and_a_bad_one_is_refused():
    f = fired("message_rate=10/m")
    assert fired_from(fired_record(f, "A")) == f
    rec = fired_record(f, "A")
    rec["id"] = "site:other:suspend"
    with pytest.raises(ValueError):
        fired_from(rec)
    with pytest.raises((KeyError, TypeError, ValueError)):
        fired_from({"id": "x"})


async def test_actions_publish_lift_and_snapshot(rds):
    acts = SharedActions(rds)
    f = fired()
    assert await acts.publish(f, "A", T0)
    assert not await acts.publish(fired(until=T0 + 60), "B", T0 + 1)   # earlier end: kept
    got, lifted, origin = await acts.snapshot(T0 + 2)
    assert got == {f.id: f} and lifted == {} and origin == {f.id: "A"}
    assert 3590_000 < await rds.pttl(f"mta:shaping:action:{f.id}") <= 3600_000
    await acts.lift(f.id, f.until, T0 + 10)
    got, lifted, _ = await acts.snapshot(T0 + 11)
    assert got == {} and lifted == {f.id: f.until}
    assert not await acts.publish(f, "C", T0 + 12)          # the lifted one stays lifted
    again = fired(until=T0 + 7200)                          # a new firing is new
    assert await acts.publish(again, "C", T0 + 12)
    got, lifted, _ = await acts.snapshot(T0 + 13)
    assert got == {again.id: again} and lifted == {}
    # past its end it is gone from the snapshot
    got, lifted, _ = await acts.snapshot(T0 + 7201)
    assert got == {} and lifted == {}


def test_reconcile_adopts_lifts_and_republishes():
    now = T0 + 5
    mine, theirs = fired(), fired("connection_limit=1")
    longer = fired(until=T0 + 7200)
    tenant = fired("suspend_tenant", "acme@yahoo", scope="tenant")
    s = reconcile({mine.id: mine, tenant.id: tenant}, {mine.id: longer, theirs.id: theirs},
                  {tenant.id: tenant.until}, now)
    assert s.adopt == [longer, theirs] and s.lift == [tenant.id] and s.publish == []
    s = reconcile({mine.id: mine}, {}, {}, now)             # Redis lost it
    assert s.publish == [mine] and s.adopt == [] and s.lift == []
    assert reconcile({mine.id: mine}, {mine.id: mine}, {}, now).adopt == []


def test_an_adopted_action_is_in_force_until_a_longer_one():
    auto = Automation()
    f = fired()
    assert auto.adopt(f) and not auto.adopt(f)
    assert auto.site_suspended(SITE, T0 + 1) == f
    assert auto.adopt(fired(until=T0 + 7200))
    assert not auto.adopt(fired("bounce"))


# ---- warm-up ---------------------------------------------------------------

async def test_two_nodes_naming_a_source_alike_share_its_day(redis_url):
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        wa, wb = SharedWarmup(a), SharedWarmup(b)
        day = math.floor(T0 / 86400)
        assert await wa.take("ip1", day, 3, 5, 0, 0) == (True, 3, 0, day)
        assert await wb.take("ip1", day, 2, 5, 0, 0) == (True, 5, 0, day)
        assert await wb.take("ip1", day, 1, 5, 0, 0) == (False, 5, 0, day)
        assert (await wa.take("ip2", day, 4, 5, 0, 0))[:2] == (True, 4)   # another name
        assert (await wa.take("ip1", day, 1, None, 0, 0))[:2] == (True, 6)   # warm: no cap
        # the next day: a sending day counted; an idle day is not
        assert await wb.take("ip1", day + 1, 1, 5, 0, 0) == (True, 1, 1, day + 1)
        assert await wb.take("ip1", day + 3, 1, 5, 0, 0) == (True, 1, 2, day + 3)
        # a node's own counts are floors (a Redis that lost them)
        await a.delete("mta:warmup:ip3", f"mta:warmup:ip3:{day}")
        assert await wa.take("ip3", day, 1, 50, 7, 20) == (True, 21, 7, day)
        assert 0 < await a.ttl(f"mta:warmup:ip3:{day}") <= 2 * 86400 + 3600
    finally:
        await a.aclose()
        await b.aclose()


def _batch(n: int, source: str = "ip1") -> Batch:
    return Batch(Destination("d1.test", "mx", "d1.test"), ((),) * n, 1, Source(source))


async def test_the_gate_makes_each_node_count_the_sources_shared_day(redis_url):
    """Two nodes' gates (ShapingGate._warmup) over real Warmups, as the
    scheduler charges them: the day's smoothed share (6 of 10 at noon) is
    the cluster's, and each node's counters become the cluster's."""
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        noon = math.floor(T0 / 86400) * 86400 + 43200.0
        gates = [ShapingGate(None, None, SharedRates(c), SharedWarmup(c)) for c in (a, b)]
        wa, wb = (Warmup(WarmupSchedule((10, 20))) for _ in range(2))
        assert wa.allowed(noon) == 6
        wa.consume(4, noon)
        assert await gates[0]._warmup(_batch(4), wa, noon) is None
        wb.consume(4, noon)                       # B's own view allowed it
        due = await gates[1]._warmup(_batch(4), wb, noon)
        assert due is not None and due > noon and wb.state.used == 4
        assert wb.allowed(noon) == 2
        wb.consume(2, noon)
        assert await gates[1]._warmup(_batch(2), wb, noon) is None
        wa.consume(1, noon + 1)
        assert await gates[0]._warmup(_batch(1), wa, noon + 1) is not None
        assert wa.state.used == 6 and wa.allowed(noon + 1) == 0
        # another source name is its own budget
        wc = Warmup(WarmupSchedule((10, 20)))
        wc.consume(6, noon)
        assert await gates[0]._warmup(_batch(6, "ip2"), wc, noon) is None
    finally:
        await a.aclose()
        await b.aclose()


def test_sending_days_roll_as_the_local_warmup_rolls():
    """The script's roll is policy/warmup.py's (checked above for the same
    steps): a day with sends counts, an idle one does not."""
    w = Warmup(WarmupSchedule((5, 10)), WarmupState())
    day = math.floor(T0 / 86400)
    w.consume(1, T0)
    w.roll((day + 1) * 86400.0)
    w.consume(1, (day + 1) * 86400.0)
    w.roll((day + 3) * 86400.0)
    assert w.state.sending_days == 2


# ---- end to end ------------------------------------------------------------

RATE = f'[site."{SITE}"]\nmax_message_rate = "60/h"\n'
RULE = "[[automation]]\nmatch = '\\[TS04\\]'\naction = \"suspend\"\nduration = \"1h\"\n" \
       'name = "ts04"\n'


async def test_a_site_message_rate_holds_across_three_nodes(tmp_path, pg_url, redis_url):
    async with mx_cluster(tmp_path, pg_url, redis_url, RATE, 3) as w:
        for node in w.nodes:
            for i in range(2):
                await w.smtp_send(node, "app@sender.test", [f"ok-r{node}{i}@d1.test"],
                                  b"Subject: s\r\n\r\nhello\r\n")
        gates = [d.runner.gate for d in w.nodes.values()]
        # one message for the whole cluster; each other node's first batch
        # was handed back by the shared rate (its second waits locally)
        await until(lambda: len(w.sink.messages) == 1
                    and sum(g.rate_waits for g in gates) == 2, 20)
        views = [v for d in w.nodes.values()
                 for v in await d.spool.list_messages(include_done=True)]
        states = sorted(r.state for v in views for r in v.recipients)
        assert states == ["delivered"] + ["queued"] * 5
        assert {r.attempts for v in views for r in v.recipients if r.state == "queued"} == {0}
        for d in w.nodes.values():
            assert await d.spool.ledger.events_after(0, 1000, types=["deferred"]) == []
        assert len(w.sink.messages) == 1
        rds = w.nodes["A"].cluster.redis
        assert await rds.exists(f"mta:rate:site:{SITE}|default:message")


async def _events(d, etype):
    return await d.spool.ledger.events_after(0, 1000, types=[etype])


async def test_a_rule_firing_on_one_node_applies_on_all_and_a_lift_anywhere_ends_it(
        tmp_path, pg_url, redis_url):
    async with mx_cluster(tmp_path, pg_url, redis_url, RULE, 2) as w:
        a, b = w.nodes["A"], w.nodes["B"]
        await w.smtp_send("A", "app@sender.test", ["ts04-a@d1.test"],
                          b"Subject: s\r\n\r\nhello\r\n")
        await until(lambda: a.runner.scheduler.is_suspended(SITE), 20)
        await until(lambda: b.runner.scheduler.is_suspended(SITE), 10)
        assert [x["key"] for x in b.runner.rules.active()] == [SITE]
        # B's mail for the site waits: B's rules hold it, not the sink
        await w.smtp_send("B", "app@sender.test", ["ok-b@d1.test"], b"Subject: s\r\n\r\nhi\r\n")
        await poll(lambda: _queued(b, 1), 10)
        assert not w.sink.messages
        # one ledger event, on the node whose rule fired
        assert len(await _events(a, "automation_action")) == 1
        assert await _events(b, "automation_action") == []
        # the operator lifts it on B: A ends it too, and both nodes' mail goes
        status, body = await w.admin("B", "POST", "/v1/shaping/lift", json={"target": SITE})
        assert status == 200 and [x["key"] for x in body["lifted"]] == [SITE], body
        await until(lambda: not a.runner.scheduler.is_suspended(SITE)
                    and not a.runner.rules.active(), 10)
        await w.sink.wait_for(2, 20)
        assert sorted(r for m in w.sink.messages for r in m.rcpt_tos) == \
            ["ok-b@d1.test", "ts04-a@d1.test"]
        assert [e.detail["why"] for e in await _events(b, "automation_ended")] == ["lifted"]
        assert await _events(a, "automation_ended") == []
        # nothing brings it back (the tombstone stands until its end)
        await until(lambda: not b.runner.rules.active() and not a.runner.rules.active(), 5)
        rds = a.cluster.redis
        assert await rds.zcard("mta:shaping:lifted") == 1
        assert await rds.zcard("mta:shaping:actions") == 0


async def _queued(d, count: int) -> bool:
    views = await d.spool.list_messages(include_done=True)
    return sum(r.state == "queued" for v in views for r in v.recipients) == count
