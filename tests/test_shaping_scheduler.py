"""Traffic shaping in the scheduler (issue 15): pure, with an explicit `now`.

Whole sequences of decisions: GCRA message and connection rates, connection
limits per egress source, a provider's limit across its sites, deliveries
per connection, round robin over a pool's sources, and a warm-up week with
spill-over and a skipped day.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mta.core.envelope import Destination, QueuedRecipient
from mta.core.outcome import DestinationHealth
from mta.policy.gcra import parse_rate
from mta.policy.warmup import Warmup, WarmupSchedule
from mta.scheduler import Batch, Idle, Scheduler, Sleep, Work
from mta.scheduler.limits import DEFAULT_SOURCE, Plan, Source

OK, DOWN = DestinationHealth.OK, DestinationHealth.DOWN
DAY, HOUR = 86400.0, 3600.0
T0 = 1_700_006_400.0            # 2023-11-15 00:00:00 UTC: a day boundary
assert T0 % DAY == 0


@dataclass
class FakeShaper:
    plans: dict[str, Plan] = field(default_factory=dict)
    pools: dict[str, list[Source]] = field(default_factory=dict)
    warmups: dict[str, Warmup] = field(default_factory=dict)
    spills: dict[str, bool] = field(default_factory=dict)

    def plan(self, destination: Destination) -> Plan:
        return self.plans.get(destination.name, Plan())

    def sources(self, pool: str) -> list[Source]:
        return self.pools.get(pool, [DEFAULT_SOURCE])

    def spill(self, pool: str) -> bool:
        return self.spills.get(pool, True)

    def warmup(self, source: str) -> Warmup | None:
        return self.warmups.get(source)


def works(site: str, n: int, *, pool: str = "", start: int = 0) -> list[Work]:
    dest = Destination(site, "mx", domain=site)
    return [Work(QueuedRecipient(f"Q{site}{i}", 0, f"r{i}@{site}", site, "s@x.org", 0, T0, T0),
                 dest, pool) for i in range(start, start + n)]


def sched(shaper: FakeShaper, *, concurrency: int = 20, per_conn: int = 100) -> Scheduler:
    return Scheduler(concurrency=concurrency, max_messages_per_connection=per_conn,
                     max_recipients_per_transaction=100, backoff=(1.0, 5.0), shaper=shaper)


def drain(s: Scheduler, now: float, *, complete: bool = True) -> list[Batch]:
    """Every batch released at `now` (completed at once when `complete`)."""
    out = []
    while isinstance(b := s.next_batch(now), Batch):
        out.append(b)
        if complete:
            s.complete(b, OK, now)
    return out


def sizes(batches: list[Batch]) -> list[int]:
    return [len(b.messages) for b in batches]


def test_message_rate_is_a_gcra_over_now():
    # 120/m: one message every 0.5 s, a burst of 2 at once
    shaper = FakeShaper(plans={"a.test": Plan(message_rate=parse_rate("120/m"))})
    s = sched(shaper)
    s.add(works("a.test", 7), T0)
    assert sizes(drain(s, T0)) == [2]                 # the burst, on one connection
    assert s.next_batch(T0) == Sleep(T0 + 0.5)        # the next slot
    assert s.next_batch(T0 + 0.25) == Sleep(T0 + 0.5)
    assert sizes(drain(s, T0 + 0.5)) == [1]
    assert sizes(drain(s, T0 + 2.0)) == [2]           # idle long enough: a full burst again
    assert sizes(drain(s, T0 + 2.5)) == [1]
    assert sizes(drain(s, T0 + 10.0)) == [1]          # the last one
    assert s.next_batch(T0 + 10.0) == Idle()
    assert s.pending_count() == 0


def test_a_queue_that_empties_keeps_its_rate():
    shaper = FakeShaper(plans={"a.test": Plan(message_rate=parse_rate("6/m"))})  # 1 per 10 s
    s = sched(shaper)
    s.add(works("a.test", 1), T0)
    assert sizes(drain(s, T0)) == [1]                 # queue now empty and forgotten
    s.add(works("a.test", 1, start=1), T0 + 1)
    assert s.next_batch(T0 + 1) == Sleep(T0 + 10)     # not a fresh bucket
    assert sizes(drain(s, T0 + 10)) == [1]


def test_connection_limit_and_deliveries_per_connection():
    shaper = FakeShaper(plans={"a.test": Plan(connection_limit=2, max_deliveries=3)})
    s = sched(shaper, concurrency=20, per_conn=100)
    s.add(works("a.test", 10), T0)
    first = drain(s, T0, complete=False)
    assert sizes(first) == [3, 3]                     # two connections, 3 messages each
    assert s.next_batch(T0) == Idle()                 # window full until one ends
    s.complete(first[0], OK, T0 + 1)
    assert sizes(drain(s, T0 + 1, complete=False)) == [3]
    s.complete(first[1], OK, T0 + 2)
    assert sizes(drain(s, T0 + 2, complete=False)) == [1]
    assert s.destination_states()["a.test"]["limits"] == {"connection_limit": 2,
                                                          "max_deliveries": 3}


def test_connection_rate():
    shaper = FakeShaper(plans={"a.test": Plan(connection_rate=parse_rate("2/m"),
                                              max_deliveries=1)})
    s = sched(shaper)
    s.add(works("a.test", 3), T0)
    assert sizes(drain(s, T0)) == [1]
    assert s.next_batch(T0 + 1) == Sleep(T0 + 30)
    assert sizes(drain(s, T0 + 30)) == [1]
    assert sizes(drain(s, T0 + 60)) == [1]


def test_a_provider_limit_caps_connections_across_its_sites():
    plan = Plan(provider="prov", provider_connection_limit=2)
    shaper = FakeShaper(plans={"mx1.prov.test": plan, "mx2.prov.test": plan,
                               "other.test": Plan()})
    s = sched(shaper, per_conn=1)
    s.add(works("mx1.prov.test", 5) + works("mx2.prov.test", 5) + works("other.test", 3), T0)
    batches = drain(s, T0, complete=False)
    prov = [b for b in batches if b.destination.name != "other.test"]
    assert len(prov) == 2                             # the provider's two, whatever the site
    assert {b.destination.name for b in prov} == {"mx1.prov.test", "mx2.prov.test"}
    assert len(batches) - len(prov) == 3              # the other site is not held back
    assert s.limiter.provider_connections() == {"prov": 2}
    s.complete(prov[0], OK, T0 + 1)
    again = drain(s, T0 + 1, complete=False)
    assert len(again) == 1 and s.limiter.provider_connections() == {"prov": 2}


def test_a_provider_message_rate_is_shared():
    plan = Plan(provider="prov", provider_message_rate=parse_rate("1/s"))
    shaper = FakeShaper(plans={"a": plan, "b": plan})
    s = sched(shaper)
    s.add(works("a", 2) + works("b", 2), T0)
    assert sizes(drain(s, T0)) == [1]
    assert s.next_batch(T0) == Sleep(T0 + 1)
    assert sizes(drain(s, T0 + 1)) == [1]
    assert sizes(drain(s, T0 + 2)) == [1]
    assert sizes(drain(s, T0 + 3)) == [1]
    assert s.pending_count() == 0


def test_a_pools_sources_share_the_work_with_a_limit_each():
    a, b = Source("a", "127.0.0.2", "a.mta.test"), Source("b", "127.0.0.3", "b.mta.test")
    shaper = FakeShaper(plans={"x.test": Plan(connection_limit=1)}, pools={"p": [a, b]})
    s = sched(shaper, per_conn=1)
    s.add(works("x.test", 5, pool="p"), T0)
    batches = drain(s, T0, complete=False)
    assert [bt.source for bt in batches] == [a, b]    # one connection per source
    assert s.next_batch(T0) == Idle()
    assert s.destination_states()["x.test@p"]["sources"] == {"a": 1, "b": 1}
    s.complete(batches[1], OK, T0 + 1)
    assert [bt.source for bt in drain(s, T0 + 1, complete=False)] == [b]


def test_probing_is_one_connection_whatever_the_sources():
    a, b = Source("a", "127.0.0.2"), Source("b", "127.0.0.3")
    shaper = FakeShaper(pools={"p": [a, b]})
    s = sched(shaper, per_conn=1)
    s.add(works("x.test", 4, pool="p"), T0)
    first = s.next_batch(T0)
    assert isinstance(first, Batch)
    s.complete(first, DOWN, T0)                       # paused for 1 s, then probing
    assert len(drain(s, T0 + 1, complete=False)) == 1


def test_replan_applies_a_new_limit():
    shaper = FakeShaper(plans={"a.test": Plan(connection_limit=5)})
    s = sched(shaper, per_conn=1)
    s.add(works("a.test", 10), T0)
    assert len(drain(s, T0, complete=False)) == 5
    shaper.plans["a.test"] = Plan(connection_limit=1)     # e.g. a rule lowered it
    s.replan("a.test")
    in_flight = [s.next_batch(T0)]
    assert in_flight == [Idle()]
    assert s.destination_states()["a.test"]["limits"] == {"connection_limit": 1}


def _day(s: Scheduler, day: int, offered: int, pool: str) -> dict[str, int]:
    """Offer `offered` messages spread over the day's 24 hours; deliver what
    the scheduler releases each hour; how many went from each source."""
    sent: dict[str, int] = {}
    per_hour = offered // 24
    for hour in range(24):
        now = T0 + day * DAY + hour * HOUR
        if per_hour:
            s.add(works("big.test", per_hour, pool=pool, start=day * 10_000 + hour * 100), now)
        for b in drain(s, now):
            sent[b.source.name] = sent.get(b.source.name, 0) + len(b.messages)
    return sent


def test_a_warm_up_week_with_spill_over_and_a_skipped_day():
    cold = Warmup(WarmupSchedule.parse("50*1.5"))
    shaper = FakeShaper(pools={"p": [Source("cold", "127.0.0.2"), Source("warm", "127.0.0.3")]},
                        warmups={"cold": cold}, spills={"p": True})
    s = sched(shaper, per_conn=10)
    week = []
    for day in range(8):
        offered = 0 if day == 2 else 480             # day 3: nothing to send
        week.append(_day(s, day, offered, "p"))
    cold_per_day = [d.get("cold", 0) for d in week]
    # 50, 75, (skipped: no sending day), 112, 168, 253, 379, 480 (cap 569 > offered)
    assert cold_per_day == [50, 75, 0, 112, 168, 253, 379, 480]
    # what the cold source may not send today, the warm one takes (spill)
    assert [d.get("warm", 0) for d in week] == [430, 405, 0, 368, 312, 227, 101, 0]
    assert s.pending_count() == 0


def test_without_spill_the_rest_waits_for_the_next_day():
    cold = Warmup(WarmupSchedule.parse([10, 20]))
    shaper = FakeShaper(pools={"p": [Source("cold", "127.0.0.2"), Source("warm", "127.0.0.3")]},
                        warmups={"cold": cold}, spills={"p": False})
    s = sched(shaper, per_conn=5)
    s.add(works("big.test", 25, pool="p"), T0 + 23 * HOUR)
    sent = drain(s, T0 + 23 * HOUR)
    assert {b.source.name for b in sent} == {"cold"} and sum(sizes(sent)) == 10
    # the rest waits for the next UTC day: back in the spool, due then
    [(waiting, due)] = s.take_handed_back()
    assert (len(waiting), due, s.pending_count()) == (15, T0 + DAY, 0)
    # day 2 (cap 20), leased again; at 23:00 the whole cap is allowed
    s.add(waiting, T0 + DAY + 23 * HOUR)
    sent2 = drain(s, T0 + DAY + 23 * HOUR)
    assert sum(sizes(sent2)) == 15 and s.pending_count() == 0


def test_a_metered_queue_keeps_in_memory_only_what_may_go_soon():
    # 6/m with hold_max 60 s: what may go in the next minute stays (a burst
    # of 1 + 6), the rest goes back to the spool, due a minute later, so a
    # slow site cannot fill the runner's lease window
    shaper = FakeShaper(plans={"slow.test": Plan(message_rate=parse_rate("6/m"))})
    s = Scheduler(concurrency=20, max_messages_per_connection=100,
                  max_recipients_per_transaction=100, backoff=(1.0,), hold_max=60.0,
                  shaper=shaper)
    s.add(works("slow.test", 50), T0)
    assert sizes(drain(s, T0)) == [1]
    assert s.next_batch(T0) == Sleep(T0 + 10)
    back = s.take_handed_back()
    assert [(len(w), due) for w, due in back] == [(42, T0 + 60)]
    assert s.pending_count() == 7
    assert {w.item.queue_id for w in back[0][0]} == {f"Qslow.test{i}" for i in range(8, 50)}
    assert s.take_handed_back() == []
    s.add(back[0][0], T0 + 60)                    # leased again later: accepted again


def test_a_queue_waiting_for_tomorrows_warm_up_goes_back_whole():
    cold = Warmup(WarmupSchedule.parse([5, 10]))
    shaper = FakeShaper(pools={"p": [Source("cold", "127.0.0.2")]}, warmups={"cold": cold})
    s = Scheduler(concurrency=20, max_messages_per_connection=100,
                  max_recipients_per_transaction=100, backoff=(1.0,), hold_max=60.0,
                  shaper=shaper)
    s.add(works("big.test", 20, pool="p"), T0 + 23 * HOUR)
    first = s.next_batch(T0 + 23 * HOUR)
    assert isinstance(first, Batch) and len(first.messages) == 5      # today's cap
    assert s.next_batch(T0 + 23 * HOUR) == Sleep(T0 + DAY)            # the next slot:
    back = s.take_handed_back()                                       # too far to wait in memory
    assert [(len(w), due) for w, due in back] == [(15, T0 + DAY)]  # deferred, not bounced
    assert s.pending_count() == 0
