"""GCRA and rate specs (mta/policy/gcra.py): whole sequences against a fake clock."""

from __future__ import annotations

import math

import pytest

from mta.policy.gcra import Gcra, RateSpec, parse_rate

T0 = 1_800_000_000 // 86400 * 86400     # a UTC midnight (2027-01-15 00:00:00)


def admits(g: Gcra, times: list[float], n: int = 1) -> list[float]:
    """What admit returns at each time (0.0 = admitted)."""
    return [g.admit(T0 + t, n) for t in times]


def test_admissions_at_exact_times_and_waits():
    g = Gcra(parse_rate("2/s"), burst=2)                # T = 0.5 s
    assert admits(g, [0, 0, 0, 0]) == [0.0, 0.0, 0.5, 0.5]
    assert admits(g, [0.25, 0.5, 0.5, 0.75, 1.0, 1.0]) == [0.25, 0.0, 0.5, 0.25, 0.0, 0.5]
    # idle for 10 s: the credit does not pile up beyond the burst
    assert admits(g, [11, 11, 11]) == [0.0, 0.0, 0.5]


def test_refusals_consume_nothing():
    g = Gcra(parse_rate("4/s"), burst=2)                # T = 0.25 s
    assert admits(g, [0, 0]) == [0.0, 0.0]
    for _ in range(50):
        assert g.admit(T0, 1) == 0.25
    assert admits(g, [0.2, 0.25, 0.25]) == [pytest.approx(0.05, abs=1e-6), 0.0, 0.25]


def test_default_burst_is_a_seconds_worth_at_least_one():
    assert Gcra(parse_rate("100/s")).burst == 100
    assert Gcra(parse_rate("1000/h")).burst == 1
    assert Gcra(parse_rate("20/m")).burst == 1
    assert Gcra(RateSpec(5, 2)).burst == 3             # 2.5/s -> 3
    assert Gcra(parse_rate("100/s"), burst=7).burst == 7
    g = Gcra(parse_rate("100/s"))
    assert admits(g, [0] * 101)[-2:] == [0.0, pytest.approx(0.01, abs=1e-5)]


def test_burst_of_several_messages_at_once():
    g = Gcra(parse_rate("1/s"), burst=4)
    assert g.admit(T0, 3) == 0.0
    assert g.available(T0) == 1
    assert g.admit(T0, 3) == 2.0                      # 1 slot free, 3 wanted: 2 s
    assert g.admit(T0 + 1.5, 3) == 0.5
    assert g.admit(T0 + 2, 3) == 0.0
    assert [g.available(T0 + t) for t in (2, 2.5, 3, 4, 5, 6, 60)] == [0, 0, 1, 2, 3, 4, 4]
    assert g.admit(T0 + 4, 2) == 0.0
    assert g.admit(T0 + 4, 1) == 1.0
    assert g.next_free(T0 + 4) == T0 + 5


def test_more_than_the_burst_is_never_admissible():
    g = Gcra(parse_rate("10/s"), burst=5)
    with pytest.raises(ValueError, match=r"^n: 6 is more than the burst \(5\)"):
        g.admit(T0, 6)
    with pytest.raises(ValueError, match="^n:"):
        g.admit(T0, 0)
    with pytest.raises(ValueError, match="^n:"):
        g.wait(T0, 6)
    assert g.available(T0) == 5                         # nothing was consumed


def test_wait_peeks_without_consuming():
    g = Gcra(parse_rate("1/s"), burst=2)
    assert [g.wait(T0), g.wait(T0, 2), g.available(T0)] == [0.0, 0.0, 2]
    assert g.admit(T0, 2) == 0.0
    assert [g.wait(T0), g.wait(T0, 2), g.wait(T0 + 1, 2), g.available(T0)] == [1.0, 2.0, 1.0, 0]


def test_available_over_time_with_an_inexact_interval():
    g = Gcra(parse_rate("10/s"), burst=5)               # T = 0.1 s: not exact in binary
    assert g.admit(T0, 5) == 0.0
    got = [g.available(T0 + t) for t in (0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 10)]
    assert got == [0, 0, 1, 2, 2, 3, 4, 5, 5]
    # what available says, admit does
    for t in (0.1, 0.2, 0.3):
        k = g.available(T0 + t)
        assert g.wait(T0 + t, k) == 0.0 and g.wait(T0 + t, k + 1) > 0.0


def test_next_free_idle_and_after_a_burst():
    g = Gcra(parse_rate("2/s"), burst=3)
    assert g.next_free(T0) == T0                        # idle: now
    assert g.admit(T0, 3) == 0.0
    assert [g.next_free(T0 + t) for t in (0, 0.2, 0.5, 0.7, 5)] == [
        T0 + 0.5, T0 + 0.5, T0 + 0.5, T0 + 0.7, T0 + 5]
    assert g.next_free(T0 + 0.2) >= T0 + 0.2


def test_next_free_drives_a_sustained_rate_exactly():
    # 1000/h: T = 3.6 s, inexact at epoch magnitude; a scheduler that sleeps
    # until next_free is always admitted there, and gets the rate (float
    # rounding drifts by ~1e-7 s per admission: the hour's 1001st lands a
    # hair before T0 + 3600, so count up to 3599)
    g = Gcra(parse_rate("1000/h"))
    t, admitted = float(T0), []
    while t < T0 + 3599:
        assert g.admit(t) == 0.0
        admitted.append(t - T0)
        assert g.admit(t) > 0.0                         # the next one has to wait
        t = g.next_free(t)
    assert len(admitted) == 1000
    assert admitted[:3] == [0.0, pytest.approx(3.6), pytest.approx(7.2)]
    assert admitted[-1] == pytest.approx(3596.4, abs=1e-3)
    assert t == pytest.approx(T0 + 3600, abs=1e-3)


def test_admit_at_now_plus_the_returned_wait_succeeds():
    g = Gcra(RateSpec(7, 3), burst=2)                   # T = 3/7 s
    now = T0 + 0.123
    for _ in range(200):
        wait = g.admit(now)
        if wait:
            now += wait
            assert g.admit(now) == 0.0
    assert g.next_free(now) > now


def test_reconfigure_keeps_the_state():
    g = Gcra(parse_rate("1/s"), burst=1)
    assert g.admit(T0) == 0.0                           # tat = T0 + 1
    g.reconfigure(parse_rate("6/m"))                    # T = 10 s, burst 1
    assert (g.rate, g.burst) == (RateSpec(6, 60), 1)
    assert admits(g, [0.5, 1, 1, 10, 11]) == [0.5, 0.0, 10.0, 1.0, 0.0]
    g.reconfigure(parse_rate("100/s"))                  # default burst: 100
    assert g.burst == 100
    assert g.available(T0 + 11) == 0                    # tat T0 + 21 is kept
    assert g.available(T0 + 20.5) == 50
    g.reconfigure(parse_rate("100/s"), burst=10)
    assert g.available(T0 + 21) == 10
    with pytest.raises(ValueError, match="^burst:"):
        g.reconfigure(parse_rate("1/s"), burst=0)
    with pytest.raises(ValueError, match="^burst:"):
        Gcra(parse_rate("1/s"), burst=True)


@pytest.mark.parametrize("text, count, period", [
    ("100/s", 100, 1), ("1000/h", 1000, 3600), ("20/m", 20, 60), ("500/d", 500, 86400),
    ("100/sec", 100, 1), ("1000/hour", 1000, 3600), ("20/min", 20, 60),
    ("500/day", 500, 86400), ("100/second", 100, 1), ("5/minute", 5, 60), ("3/hr", 3, 3600),
    (" 100 / s ", 100, 1), ("1000/H", 1000, 3600), ("20 /MIN", 20, 60), ("7/Day", 7, 86400),
    ("1/2s", 1, 2), ("5/10m", 5, 600), ("1/0.5s", 1, 0.5), ("3/1.5h", 3, 5400),
])
def test_parse_rate_good(text, count, period):
    spec = parse_rate(text)
    assert spec == RateSpec(count, period)
    assert parse_rate(str(spec)) == spec


def test_rate_spec_str_and_round_trip():
    assert [str(parse_rate(t)) for t in ("100/sec", "1000/hour", "20/min", "500/day")] == [
        "100/s", "1000/h", "20/m", "500/d"]
    assert str(RateSpec(1, 7200)) == "1/2h"
    assert str(RateSpec(7, 90)) == "7/90s"
    assert str(RateSpec(1, 0.4)) == "1/0.4s"
    for spec in (RateSpec(1, 1 / 0.7), RateSpec(3, 7200), RateSpec(1, 0.4), RateSpec(1, 1e-5),
                 RateSpec(2, 1e22), RateSpec(10**20, 1), RateSpec(9, 120.0)):
        assert parse_rate(str(spec)) == spec, str(spec)


def test_rate_spec_per_second_and_interval():
    assert parse_rate("100/s").per_second == 100
    assert parse_rate("3600/h").per_second == 1
    assert parse_rate("1/2s").per_second == 0.5
    assert parse_rate("1000/h").interval == 3.6
    assert RateSpec(4, 1).interval == 0.25


@pytest.mark.parametrize("text", [
    "", "100", "100/", "/s", "0/s", "-1/s", "1.5/s", "100/x", "100/ss", "100/s/s",
    "100 per s", "abc", "1/0s", "1/0.0m", "100/ s s", "1e3/s",
])
def test_parse_rate_bad(text):
    with pytest.raises(ValueError, match=r"^bad rate '.*': write e\.g\. \"100/s\", \"1000/h\""):
        parse_rate(text)


def test_parse_rate_not_a_string():
    with pytest.raises(ValueError, match="^bad rate 100:"):
        parse_rate(100)                                 # type: ignore[arg-type]


@pytest.mark.parametrize("count, period, field", [
    (0, 1, "count"), (-1, 1, "count"), (True, 1, "count"), (1.5, 1, "count"),
    (1, 0, "period"), (1, -1, "period"), (1, math.inf, "period"), (1, math.nan, "period"),
    (1, True, "period"), (1, "1", "period"),
])
def test_rate_spec_validation_names_the_field(count, period, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        RateSpec(count, period)
