"""Tenant reputation (mta/policy/reputation.py): rolling rates over whole
streams of outcomes, policies and the events their changes warrant."""

from __future__ import annotations

import pytest

from mta.core.clock import FakeClock
from mta.policy.reputation import (Assessment, Rates, ReputationPolicy, RollingRates,
                                   Thresholds, assess, transition)

DAY = 86400.0
T0 = 1_800_000_000.0


def stream(rr: RollingRates, clock: FakeClock, sends: int, *, bounces: int = 0,
           others: int = 0, complaints: int = 0, step: float = 1.0) -> None:
    """`sends` outcomes one `step` apart: the first `bounces` are counting
    bounces, the next `others` other failures, the rest delivered; then
    `complaints` complaints, one a step."""
    for i in range(sends):
        kind = "bounce" if i < bounces else "bounce_other" if i < bounces + others \
            else "delivered"
        rr.add(kind, clock.advance(step))
    for _ in range(complaints):
        rr.add("complaint", clock.advance(step))


def test_complaints_over_two_thousand_messages_pause_with_the_text():
    rr, clock, policy = RollingRates(), FakeClock(T0), ReputationPolicy()
    stream(rr, clock, 2000, complaints=8)
    rates = rr.snapshot(clock.now(), policy)
    assert rates == Rates(sends=2000, bounces=0, complaints=8, bounce_rate=0.0,
                          complaint_rate=0.004, delivered=2000)
    a = assess(rates, policy)
    assert a == Assessment("pause", "complaint", 0.004, 2000,
                           "complaint rate 0.40% over the last 2,000 messages")
    assert "sending paused: " + a.text == (
        "sending paused: complaint rate 0.40% over the last 2,000 messages")


def test_complaint_rate_is_over_delivered_sends_bounce_rate_over_all_sends():
    rr, clock = RollingRates(), FakeClock(T0)
    stream(rr, clock, 1000, bounces=60, others=140, complaints=2)
    r = rr.snapshot(clock.now(), ReputationPolicy())
    assert (r.sends, r.bounces, r.delivered, r.complaints) == (1000, 60, 800, 2)
    assert r.bounce_rate == 0.06                    # the 140 others do not count
    assert r.complaint_rate == 2 / 800
    a = assess(r, ReputationPolicy())
    assert (a.status, a.metric, a.text) == (   # both warn: the complaint rate is named
        "warn", "complaint", "complaint rate 0.25% over the last 1,000 messages")


def test_no_sends_rates_are_zero():
    rr = RollingRates()
    rr.add("complaint", T0)
    r = rr.snapshot(T0 + 1, ReputationPolicy(min_volume=0))
    assert (r.sends, r.complaints, r.bounce_rate, r.complaint_rate) == (0, 1, 0.0, 0.0)
    assert assess(r, ReputationPolicy(min_volume=0)).status == "ok"


def test_below_min_volume_is_ok_but_rates_are_reported():
    rr, clock, policy = RollingRates(), FakeClock(T0), ReputationPolicy()
    stream(rr, clock, 499, bounces=250)
    r = rr.snapshot(clock.now(), policy)
    assert (r.sends, r.bounce_rate) == (499, 250 / 499)
    assert assess(r, policy) == Assessment("ok", "", 0.0, 499, "")
    rr.add("bounce", clock.advance(1))              # the 500th send reaches the minimum
    a = assess(rr.snapshot(clock.now(), policy), policy)
    assert (a.status, a.metric, a.sends, a.text) == (
        "pause", "bounce", 500, "bounce rate 50.20% over the last 500 messages")


def test_window_keeps_the_last_n_sends():
    rr, clock = RollingRates(window=1000), FakeClock(T0)
    policy = ReputationPolicy(window=1000, min_volume=100)
    stream(rr, clock, 1000, bounces=200)            # 20% bounces ...
    assert assess(rr.snapshot(clock.now(), policy), policy).status == "pause"
    stream(rr, clock, 900)                          # ... pushed out by 900 deliveries
    r = rr.snapshot(clock.now(), policy)
    assert (r.sends, r.bounces, r.bounce_rate) == (1000, 0, 0.0)
    assert rr.held() == (1000, 0)


def test_window_seconds_expiry_drops_old_bounces():
    rr, clock = RollingRates(), FakeClock(T0)
    policy = ReputationPolicy(window_seconds=7 * DAY, min_volume=100)
    stream(rr, clock, 100, bounces=100)             # 100 bounces at T0+1..T0+100
    clock.advance(DAY)
    stream(rr, clock, 900)
    r = rr.snapshot(clock.now(), policy)
    assert (r.sends, r.bounces) == (1000, 100)
    assert assess(r, policy).status == "pause"       # 100/1000: AT the 10% threshold
    # the first bounce is at T0+1: it counts while now - at < 7 days
    r = rr.snapshot(T0 + 1 + 7 * DAY - 0.5, policy)
    assert r.bounces == 100
    r = rr.snapshot(T0 + 1 + 7 * DAY, policy)
    assert (r.sends, r.bounces) == (999, 99)
    assert assess(r, policy).status == "warn"
    r = rr.snapshot(T0 + 100 + 7 * DAY, policy)
    assert (r.sends, r.bounces, r.bounce_rate) == (900, 0, 0.0)
    assert rr.held() == (900, 0)


def test_complaints_expire_with_their_span():
    rr, clock = RollingRates(window=10), FakeClock(T0)
    policy = ReputationPolicy(window=10, min_volume=0, window_seconds=100)
    stream(rr, clock, 10, complaints=2)             # sends at +1..+10, complaints +11, +12
    assert rr.snapshot(clock.now(), policy).complaints == 2
    stream(rr, clock, 10)                           # sends +13..+22: the oldest is after them
    assert rr.snapshot(clock.now(), policy).complaints == 0
    rr.add("complaint", clock.advance(1))           # +23
    assert rr.snapshot(T0 + 122, policy).complaints == 1
    r = rr.snapshot(T0 + 123, policy)               # 100 s later: sends and complaint gone
    assert (r.sends, r.complaints) == (0, 0)


def test_memory_is_bounded():
    rr, clock = RollingRates(window=50), FakeClock(T0)
    for _ in range(2000):
        rr.add("complaint", clock.advance(0.1))
    assert rr.held() == (0, 50)
    stream(rr, clock, 5000, bounces=10)
    assert rr.held() == (50, 0)


def test_policy_window_resizes_what_is_held():
    rr, clock = RollingRates(window=100), FakeClock(T0)
    stream(rr, clock, 100, bounces=50)
    r = rr.snapshot(clock.now(), ReputationPolicy(window=10, min_volume=0))
    assert (r.sends, r.bounces) == (10, 0)          # the newest 10 are deliveries
    stream(rr, clock, 30)
    r = rr.snapshot(clock.now(), ReputationPolicy(window=40, min_volume=0))
    assert r.sends == 10                            # grown: holds more from now on
    stream(rr, clock, 50)
    assert rr.snapshot(clock.now(), ReputationPolicy(window=40, min_volume=0)).sends == 40


def test_out_of_order_times_are_clamped():
    rr = RollingRates()
    rr.add("bounce", T0 + 10)
    rr.add("delivered", T0 + 5)                     # counted at T0+10
    r = rr.snapshot(T0 + 10 + 7 * DAY - 1, ReputationPolicy(min_volume=0))
    assert r.sends == 2
    assert rr.snapshot(T0 + 10 + 7 * DAY, ReputationPolicy(min_volume=0)).sends == 0


def statuses(rates: Rates) -> dict[str, tuple[str, str]]:
    return {level: (a.status, a.metric) for level in ("none", "standard", "strict")
            for a in [assess(rates, ReputationPolicy(level=level))]}


@pytest.mark.parametrize("bounces, complaints, expected", [
    # 2000 sends: bounce rate over 2000, complaint rate over the delivered ones
    (0, 0, {"none": ("ok", ""), "standard": ("ok", ""), "strict": ("ok", "")}),
    (99, 1, {"none": ("ok", ""), "standard": ("ok", ""), "strict": ("ok", "")}),
    (100, 0, {"none": ("ok", ""), "standard": ("warn", "bounce"),
              "strict": ("pause", "bounce")}),
    (199, 0, {"none": ("ok", ""), "standard": ("warn", "bounce"),
              "strict": ("pause", "bounce")}),
    (200, 0, {"none": ("ok", ""), "standard": ("pause", "bounce"),
              "strict": ("pause", "bounce")}),
    (0, 2, {"none": ("ok", ""), "standard": ("warn", "complaint"),
            "strict": ("pause", "complaint")}),
    (0, 6, {"none": ("ok", ""), "standard": ("pause", "complaint"),
            "strict": ("pause", "complaint")}),
    # equal status: the complaint rate is named first
    (100, 2, {"none": ("ok", ""), "standard": ("warn", "complaint"),
              "strict": ("pause", "complaint")}),
    # the worse status wins over the order
    (200, 2, {"none": ("ok", ""), "standard": ("pause", "bounce"),
              "strict": ("pause", "complaint")}),
])
def test_levels_on_the_same_stream(bounces, complaints, expected):
    rr, clock = RollingRates(), FakeClock(T0)
    stream(rr, clock, 2000, bounces=bounces, complaints=complaints)
    r = rr.snapshot(clock.now(), ReputationPolicy())
    assert (r.sends, r.delivered, r.complaints) == (2000, 2000 - bounces, complaints)
    assert statuses(r) == expected


def test_configured_thresholds():
    policy = ReputationPolicy(thresholds=Thresholds(bounce_warn=0.02, bounce_pause=0.04),
                              min_volume=10, window=100)
    a = assess(Rates(100, 2, 0, 0.02, 0.0, 98), policy)
    assert (a.status, a.text) == ("warn", "bounce rate 2.00% over the last 100 messages")
    assert assess(Rates(100, 4, 0, 0.04, 0.0, 96), policy).status == "pause"
    assert assess(Rates(100, 1, 0, 0.01, 0.0, 99), policy).status == "ok"


def test_transitions_over_a_sequence():
    seq = ["ok", "ok", "warn", "warn", "ok", "warn", "pause", "warn", "ok", "pause"]
    prev, events = "ok", []
    for status in seq:
        current = Assessment(status, "bounce" if status != "ok" else "", 0.0, 1000, "")
        events.append(transition(prev, current))
        if events[-1] is not None:
            prev = status
    assert events == [None, None, "reputation_warning", None, "reputation_recovered",
                      "reputation_warning", "reputation_paused", None, None, None]
    assert prev == "pause"                          # sticky until an operator resumes
    ok = Assessment("ok", "", 0.0, 0, "")
    pause = Assessment("pause", "complaint", 0.01, 600, "")
    assert transition("ok", pause) == "reputation_paused"
    assert transition("pause", ok) is None
    with pytest.raises(ValueError, match="^previous:"):
        transition("paused", ok)


@pytest.mark.parametrize("kwargs, field", [
    ({"level": "lenient"}, "level"), ({"window": 0}, "window"),
    ({"window_seconds": 0}, "window_seconds"), ({"window_seconds": float("inf")},
                                                "window_seconds"),
    ({"min_volume": -1}, "min_volume"), ({"window": 100, "min_volume": 101}, "min_volume"),
    ({"thresholds": None}, "thresholds"),
])
def test_policy_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ReputationPolicy(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"bounce_warn": 0}, "bounce_warn"), ({"complaint_pause": 1.5}, "complaint_pause"),
    ({"bounce_warn": 0.2}, "bounce_pause"), ({"complaint_warn": 0.01}, "complaint_pause"),
])
def test_thresholds_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        Thresholds(**kwargs)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="^kind:"):
        RollingRates().add("bounced", T0)
