"""Tenant quotas (mta/policy/quota.py): whole sequences against a fake clock."""

from __future__ import annotations

import pytest

from mta.core.clock import FakeClock
from mta.policy.quota import (DAY, HOUR, QuotaLimits, QuotaState, QuotaVerdict,
                              retry_after_seconds, smtp_reply)

T0 = 1_800_000_000 // DAY * DAY     # a UTC midnight (2027-01-15 00:00:00)


def outcomes(state: QuotaState, limits: QuotaLimits, times: list[float],
             n: int = 1) -> list[tuple[bool, str, float | None]]:
    return [(v.ok, v.limit, v.retry_after)
            for v in (state.admit(limits, n, T0 + t) for t in times)]


def test_hourly_quota_refuses_until_the_next_window():
    s, lim = QuotaState(), QuotaLimits(per_hour=3)
    assert outcomes(s, lim, [0, 1, 2, 3, 3599, 3600, 3601, 3602, 3603]) == [
        (True, "", None), (True, "", None), (True, "", None),
        (False, "per_hour", 3600 - 3), (False, "per_hour", 1),
        (True, "", None), (True, "", None), (True, "", None),
        (False, "per_hour", 3600 - 3)]
    assert s.used(T0 + 3603) == (3, 6)
    assert s.used(T0 + 7200) == (0, 6)


def test_fixed_windows_are_utc_aligned_not_from_first_use():
    s, lim = QuotaState(), QuotaLimits(per_hour=2)
    # first use at 10:59:00: the window still ends at 11:00:00
    start = 10 * HOUR + 3540
    assert outcomes(s, lim, [start, start + 1, start + 2]) == [
        (True, "", None), (True, "", None), (False, "per_hour", 58)]
    assert outcomes(s, lim, [11 * HOUR]) == [(True, "", None)]


def test_daily_quota_crosses_midnight():
    s, lim = QuotaState(), QuotaLimits(per_hour=10, per_day=3)
    clock = FakeClock(T0 + 22 * HOUR)
    got = []
    for _ in range(8):
        v = s.admit(lim, 1, clock.now())
        got.append((v.ok, v.limit, v.retry_after, v.used, v.allowed))
        clock.advance(1800)
    ok = (True, "", None, 0, 0)
    # 22:00 22:30 23:00 | 23:30 refused | 00:00 00:30 01:00 (next day) | 01:30 refused
    assert got == [ok, ok, ok, (False, "per_day", 1800, 3, 3),
                   ok, ok, ok, (False, "per_day", DAY - 1.5 * HOUR, 3, 3)]
    assert s.used(clock.now()) == (0, 3)     # 02:00: the hour rolled, the day has 3
    assert s.admit(lim, 1, T0 + 2 * DAY).ok  # recovery at the next day


def test_hour_and_day_both_full_the_day_is_named():
    s, lim = QuotaState(), QuotaLimits(per_hour=2, per_day=2)
    assert outcomes(s, lim, [23 * HOUR, 23 * HOUR + 1, 23 * HOUR + 100]) == [
        (True, "", None), (True, "", None), (False, "per_day", HOUR - 100)]
    # earlier in the day the day's wait is longer than the hour's
    s = QuotaState()
    lim = QuotaLimits(per_hour=2, per_day=3)
    assert outcomes(s, lim, [0, 1, HOUR, HOUR + 1]) == [
        (True, "", None), (True, "", None), (True, "", None), (False, "per_day", DAY - HOUR - 1)]


def test_gcra_rate_burst_sequence():
    s, lim = QuotaState(), QuotaLimits(rate=2, burst=2)
    assert outcomes(s, lim, [0, 0, 0, 0, 0]) == [
        (True, "", None), (True, "", None),
        (False, "rate", 0.5), (False, "rate", 0.5), (False, "rate", 0.5)]
    assert outcomes(s, lim, [0.25, 0.5, 0.5, 0.75, 1.0, 1.0, 1.0]) == [
        (False, "rate", 0.25), (True, "", None), (False, "rate", 0.5),
        (False, "rate", 0.25), (True, "", None), (False, "rate", 0.5), (False, "rate", 0.5)]
    # idle for 10 s: the credit does not pile up beyond the burst
    assert outcomes(s, lim, [11, 11, 11]) == [
        (True, "", None), (True, "", None), (False, "rate", 0.5)]


def test_gcra_sustained_rate_over_a_minute():
    s, lim = QuotaState(), QuotaLimits(rate=5)          # burst defaults to 5
    admitted = sum(s.admit(lim, 1, T0 + i * 0.01).ok for i in range(6000))
    assert admitted == 5 + 299      # 5 at once, then one every 0.2 s up to 59.8 s
    assert lim.burst_size == 5
    assert QuotaLimits(rate=0.2).burst_size == 1
    assert QuotaLimits(rate=2.5).burst_size == 3


def test_gcra_multi_message_submission_waits_for_room_for_all():
    s, lim = QuotaState(), QuotaLimits(rate=1, burst=4)
    assert s.admit(lim, 3, T0).ok
    v = s.admit(lim, 3, T0)                     # 1 slot left, 3 wanted: wait 2 s
    assert (v.ok, v.limit, v.retry_after, v.used, v.allowed, v.rate) == (
        False, "rate", 2.0, 3, 4, 1.0)
    assert not s.admit(lim, 3, T0 + 1.5).ok
    assert s.admit(lim, 3, T0 + 2).ok


def test_refusal_consumes_nothing():
    s, lim = QuotaState(), QuotaLimits(per_hour=5, rate=10, burst=3)
    assert s.admit(lim, 3, T0).ok
    v = s.admit(lim, 2, T0)                     # refused by the rate only
    assert (v.ok, v.limit, v.retry_after) == (False, "rate", pytest.approx(0.2))
    assert s.used(T0) == (3, 3)                 # the hour was not charged
    assert s.admit(lim, 2, T0 + 0.2).ok         # still fits: 5 of 5
    v = s.admit(lim, 1, T0 + 10)
    assert (v.ok, v.limit, v.used, v.allowed) == (False, "per_hour", 5, 5)
    # refusals do not move the GCRA: after 50 of them the wait is still 0.3 s
    s2, rate_only = QuotaState(), QuotaLimits(rate=10, burst=3)
    assert s2.admit(rate_only, 3, T0).ok
    for _ in range(50):
        assert not s2.admit(rate_only, 3, T0).ok
    assert not s2.admit(rate_only, 3, T0 + 0.29).ok
    assert s2.admit(rate_only, 3, T0 + 0.3).ok


def test_larger_than_a_whole_limit_is_impossible():
    s = QuotaState()
    v = s.admit(QuotaLimits(per_hour=50), 60, T0)
    assert (v.ok, v.limit, v.retry_after, v.impossible, v.allowed) == (
        False, "per_hour", None, True, 50)
    v = s.admit(QuotaLimits(per_hour=50, per_day=40, rate=1, burst=45), 60, T0)
    assert (v.limit, v.impossible, v.allowed) == ("per_day", True, 40)
    v = s.admit(QuotaLimits(per_hour=100, rate=2, burst=10), 11, T0)
    assert (v.limit, v.impossible, v.allowed, v.rate) == ("rate", True, 10, 2.0)
    assert s.used(T0) == (0, 0)
    assert s.admit(QuotaLimits(per_hour=50), 50, T0).ok        # exactly the size is fine
    v = s.admit(QuotaLimits(per_hour=50), 51, T0 + DAY)
    assert v.impossible and retry_after_seconds(v) is None


def test_seed_sets_counts_without_double_counting():
    s, lim = QuotaState(), QuotaLimits(per_hour=10, per_day=20)
    now = T0 + 5 * HOUR + 600
    s.seed(4, 15, now)
    assert s.used(now) == (4, 15)
    assert outcomes(s, lim, [5 * HOUR + 601] * 6, n=1)[-1] == (
        False, "per_day", DAY - 5 * HOUR - 601)
    assert s.used(now) == (9, 20)
    s.seed(2, 2, now)                           # set, not add
    assert s.used(now) == (2, 2)
    s.seed(3, 1, now)                           # the day includes the hour
    assert s.used(now) == (3, 3)
    assert s.used(now + HOUR) == (0, 3)
    with pytest.raises(ValueError, match="hour_count"):
        s.seed(-1, 0, now)


def test_clock_stepping_back_keeps_the_newest_window():
    s, lim = QuotaState(), QuotaLimits(per_hour=1)
    assert s.admit(lim, 1, T0 + HOUR).ok
    v = s.admit(lim, 1, T0 + HOUR - 5)          # the clock went back 5 s
    assert (v.ok, v.limit, v.retry_after) == (False, "per_hour", HOUR + 5)


def test_no_limits_admit_everything():
    s = QuotaState()
    assert all(s.admit(QuotaLimits(), 1000, T0 + i).ok for i in range(10))
    assert s.used(T0 + 10) == (10_000, 10_000)


@pytest.mark.parametrize("kwargs, field", [
    ({"per_hour": 0}, "per_hour"), ({"per_day": -1}, "per_day"), ({"burst": 0}, "burst"),
    ({"per_hour": 1.5}, "per_hour"), ({"rate": 0}, "rate"), ({"rate": -2.0}, "rate"),
    ({"rate": float("inf")}, "rate"), ({"rate": float("nan")}, "rate"),
    ({"per_day": True}, "per_day"),
])
def test_limits_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        QuotaLimits(**kwargs)


def test_admit_needs_at_least_one():
    with pytest.raises(ValueError, match="^n:"):
        QuotaState().admit(QuotaLimits(), 0, T0)


def test_reply_texts_and_smtp_mapping():
    hourly = QuotaVerdict(False, "per_hour", 1233.2, used=50, allowed=50)
    assert hourly.reply_text("acme") == (
        "tenant acme over its hourly quota (50 messages); try again in 1,234 s")
    daily = QuotaVerdict(False, "per_day", 40_000.0, used=5000, allowed=5000)
    assert daily.reply_text("acme") == (
        "tenant acme over its daily quota (5,000 messages); try again in 40,000 s")
    rate = QuotaVerdict(False, "rate", 0.2, used=5, allowed=5, rate=5.0)
    assert rate.reply_text("acme") == (
        "tenant acme sending faster than 5 messages/s; try again in 1 s")
    slow = QuotaVerdict(False, "rate", 3.5, used=1, allowed=1, rate=0.25)
    assert slow.reply_text("acme") == (
        "tenant acme sending faster than 0.25 messages/s; try again in 4 s")
    assert QuotaVerdict(True).reply_text("acme") == ""
    too_big = QuotaState().admit(QuotaLimits(per_hour=50), 60, T0)
    assert too_big.reply_text("acme") == (
        "tenant acme: more recipients than its hourly quota allows (50 messages)")

    assert str(smtp_reply(hourly, "acme")) == (
        "452 4.5.3 tenant acme over its hourly quota (50 messages); try again in 1,234 s")
    assert (smtp_reply(daily, "acme").code, smtp_reply(daily, "acme").esc) == (452, "4.5.3")
    assert str(smtp_reply(rate, "acme")).startswith("451 4.7.1 tenant acme sending faster")
    assert (smtp_reply(too_big, "acme").code, smtp_reply(too_big, "acme").esc) == (552, "5.5.3")
    with pytest.raises(ValueError):
        smtp_reply(QuotaVerdict(True), "acme")

    assert [retry_after_seconds(v) for v in (hourly, daily, rate, QuotaVerdict(True))] == [
        1234, 40_000, 1, None]
    assert retry_after_seconds(QuotaVerdict(False, "rate", 2.0)) == 2
