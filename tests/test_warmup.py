"""IP warm-up (mta/policy/warmup.py): whole sequences against a fake clock."""

from __future__ import annotations

import json
import math

import pytest

from mta.core.clock import FakeClock
from mta.policy.warmup import Warmup, WarmupSchedule, WarmupState

DAY = 86400
HOUR = 3600
T0 = 1_800_000_000 // DAY * DAY     # a UTC midnight (2027-01-15 00:00:00)
STEP = 900                          # the fake sender looks every 15 minutes


def send_day(w: Warmup, clock: FakeClock) -> list[int]:
    """Send all that is allowed at every step of one UTC day (the clock at its
    midnight); return the day's usage after each whole hour."""
    hourly = []
    for i in range(DAY // STEP):
        allowed = w.allowed(clock.now())
        assert allowed is not None
        if allowed:
            w.consume(allowed, clock.now())
        if i % (HOUR // STEP) == 0:
            hourly.append(w.state.used)
        clock.advance(STEP)
    return hourly


# -- schedules --------------------------------------------------------------

def test_geometric_schedule_exact_and_not_compounding():
    s = WarmupSchedule.parse("50*1.5")
    assert s.caps[:8] == (50, 75, 112, 168, 253, 379, 569, 854)    # day 5: 253, not 252
    assert [s.cap(d) for d in (1, 2, 3)] == [50, 75, 112]
    # the factor is a decimal, exactly: 100 * 1.15 is 115 (a float says 114.99...)
    assert WarmupSchedule.parse("100*1.15 until 200").caps == (100, 115, 132, 152, 174)
    assert WarmupSchedule.parse("10*2 until 100").caps == (10, 20, 40, 80)
    assert WarmupSchedule.parse("10*2 until 80").caps == (10, 20, 40)   # 80 reaches it: warm
    assert WarmupSchedule.parse(" 1_000 * 2 UNTIL 10_000 ").caps == (1000, 2000, 4000, 8000)


def test_until_ends_the_schedule_warm():
    s = WarmupSchedule.parse("50*1.5")                  # until 100000 by default
    assert s == WarmupSchedule.parse("50*1.5 until 100000") == WarmupSchedule.parse("standard")
    assert s.days == 19
    assert (s.cap(19), s.cap(20), s.cap(365)) == (73894, None, None)


def test_explicit_lists_and_none():
    s = WarmupSchedule.parse([50, 100, 200])
    assert (s.days, [s.cap(d) for d in (1, 2, 3, 4)]) == (3, [50, 100, 200, None])
    assert WarmupSchedule.parse((100, 50, 80)).caps == (100, 50, 80)   # need not increase
    assert WarmupSchedule.parse("none").caps == ()
    assert WarmupSchedule.parse("NONE").cap(1) is None
    assert WarmupSchedule.parse([]).days == 0
    with pytest.raises(ValueError, match="^day:"):
        s.cap(0)


@pytest.mark.parametrize("spec, message", [
    ("", "write a list of daily caps"),
    ("fast", "write a list of daily caps"),
    ("50*", "write a list of daily caps"),
    ("50*1.5 until", "write a list of daily caps"),
    ("50*1.5 till 100", "write a list of daily caps"),
    ("50.5*2", "write a list of daily caps"),
    ("-50*2", "write a list of daily caps"),
    ("50*1", "factor must be > 1"),
    ("50*0.5", "factor must be > 1"),
    ("0*2", "first day's cap must be >= 1"),
    ("200000*1.5", "already reaches 'until'"),
    ("50*1.5 until 50", "already reaches 'until'"),
    ("50*1.0001 until 100000000", "longer than 1000 days"),
    ([50, 0], "day 2: must be a whole number >= 1"),
    ([50, "100"], "day 2: must be a whole number >= 1"),
    ([True], "day 1: must be a whole number >= 1"),
    ([50, 1.5], "day 2: must be a whole number >= 1"),
    (50, "expected a list of daily caps"),
    (None, "expected a list of daily caps"),
])
def test_schedule_parse_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        WarmupSchedule.parse(spec)


# -- the warm-up week -------------------------------------------------------

def test_a_warm_up_week_advances_by_sending_days():
    w = Warmup(WarmupSchedule.parse("50*1.5"))
    clock = FakeClock(T0)
    days = []
    for calendar_day in range(9):
        start = clock.now()
        assert start == T0 + calendar_day * DAY
        if calendar_day == 2:                           # nothing sent on the 3rd
            days.append((w.today(start), w.cap(start), 0))
            clock.set(start + DAY)
            continue
        hourly = send_day(w, clock)
        end = start + DAY - 1
        days.append((w.today(end), w.cap(end), w.state.used))
        # the cap is used up: nothing more today, the next slot is midnight
        assert hourly[23] == w.cap(end)
        assert w.allowed(start + 23 * HOUR) == 0
        assert w.allowed(end) == 0
        assert w.next_slot(start + 23.5 * HOUR) == start + DAY
        assert w.next_slot(end) == start + DAY
    assert days == [(1, 50, 50), (2, 75, 75), (3, 112, 0), (3, 112, 112), (4, 168, 168),
                    (5, 253, 253), (6, 379, 379), (7, 569, 569), (8, 854, 854)]
    assert w.state.to_dict() == {"sending_days": 7, "day": T0 // DAY + 8, "used": 854}
    assert w.today(clock.now()) == 9                    # the 10th calendar day


def test_a_day_nobody_asked_about_does_not_advance_either():
    w = Warmup(WarmupSchedule.parse("50*1.5"))
    clock = FakeClock(T0)
    send_day(w, clock)                                  # day 1
    clock.advance(DAY)                                  # the 2nd calendar day: silence
    assert w.today(clock.now()) == 2
    assert w.cap(clock.now()) == 75


def test_smoothing_an_hours_share_up_front_then_evenly():
    w = Warmup(WarmupSchedule.parse([50]))
    hourly = send_day(w, FakeClock(T0))
    # min(50, 1 + floor(50 * (s + 3600) / 86400)) at each hour s
    assert hourly == [3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 26,
                      28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50]


def test_smoothing_exact_boundaries_and_next_slot():
    w = Warmup(WarmupSchedule.parse([50, 7]))
    assert [w.allowed(T0), w.allowed(T0 + 1800), w.allowed(T0 + HOUR)] == [3, 4, 5]
    w.consume(3, T0)
    assert (w.allowed(T0), w.next_slot(T0)) == (0, T0 + 1584)     # 3 * 86400/50 - 3600
    assert w.allowed(T0 + 1583.5) == 0
    assert w.allowed(T0 + 1584) == 1                    # the slot's start is included
    w.consume(1, T0 + 1584)
    assert w.next_slot(T0 + 1584) == T0 + 3312          # 4 * 1728 - 3600
    assert w.next_slot(T0 + 3000) == T0 + 3312
    assert w.allowed(T0 + HOUR) == 1                    # 01:00: the hour's share + elapsed
    # day 2, cap 7: the 2nd message at 86400/7 - 3600 s = 02:25:42.857...
    day2 = T0 + DAY
    assert (w.today(day2), w.allowed(day2)) == (2, 1)
    w.consume(1, day2)
    slot = w.next_slot(day2)
    assert slot is not None and slot == pytest.approx(day2 + DAY / 7 - HOUR)
    assert w.allowed(slot) == 1
    assert w.allowed(math.nextafter(slot, -math.inf)) == 0
    assert w.next_slot(day2 + 23 * HOUR) is None        # room: the whole cap by 23:00
    assert w.allowed(day2 + 23 * HOUR) == 6


def test_over_the_cap_and_after_the_schedule():
    w = Warmup(WarmupSchedule.parse([10, 20]))
    w.consume(25, T0 + 60)                              # the caller released more
    assert (w.allowed(T0 + 120), w.next_slot(T0 + 120)) == (0, T0 + DAY)
    assert w.status(T0 + 120) == {"day": 1, "cap": 10, "used": 25, "allowed_now": 0,
                                  "warm": False}
    w.consume(1, T0 + DAY + 60)                         # day 2
    assert w.status(T0 + DAY + 60) == {"day": 2, "cap": 20, "used": 1, "allowed_now": 0,
                                       "warm": False}
    w.consume(1, T0 + 5 * DAY)                          # day 3: warm
    assert w.status(T0 + 5 * DAY) == {"day": 3, "cap": None, "used": 1, "allowed_now": None,
                                      "warm": True}
    assert (w.allowed(T0 + 5 * DAY), w.next_slot(T0 + 5 * DAY)) == (None, None)
    assert w.next_slot(T0 + 5 * DAY + 1) is None
    with pytest.raises(ValueError, match="^n:"):
        w.consume(-1, T0 + 5 * DAY)
    w.consume(0, T0 + 5 * DAY)
    assert w.state.used == 1


def test_warm_from_day_one():
    w = Warmup(WarmupSchedule.parse("none"))
    assert w.status(T0) == {"day": 1, "cap": None, "used": 0, "allowed_now": None,
                            "warm": True}


def test_clock_stepping_back_keeps_the_newest_day():
    w = Warmup(WarmupSchedule.parse([10, 20, 30]))
    w.consume(10, T0 + 23 * HOUR)
    w.consume(1, T0 + DAY + 10)                         # day 2
    assert (w.today(T0 + 23 * HOUR), w.state.used) == (2, 1)   # back 1 h: still day 2
    w.consume(1, T0 + 23 * HOUR)
    assert w.status(T0 + DAY + 20)["used"] == 2
    assert w.today(T0 + 2 * DAY) == 3


# -- state persistence ------------------------------------------------------

def test_state_round_trips_through_json_mid_week():
    schedule = WarmupSchedule.parse("50*1.5")
    w = Warmup(schedule)
    clock = FakeClock(T0)
    send_day(w, clock)
    send_day(w, clock)
    w.consume(5, clock.now() + 60)                      # day 3, early
    saved = json.loads(json.dumps(w.state.to_dict()))
    assert saved == {"sending_days": 2, "day": T0 // DAY + 2, "used": 5}
    copy = Warmup(schedule, WarmupState.from_dict(saved))
    assert copy.state == w.state
    probe = [clock.now() + t for t in (60, 1800, 5 * HOUR, DAY + 1, 2 * DAY)]
    decisions = []
    for warmup in (w, copy):
        decisions.append([(warmup.status(t), warmup.next_slot(t)) for t in probe])
    assert decisions[0] == decisions[1]
    assert WarmupState.from_dict({}) == WarmupState()


@pytest.mark.parametrize("data, message", [
    ({"used": "3"}, "^used: must be a whole number"),
    ({"day": 1.5}, "^day: must be a whole number"),
    ({"sending_days": True}, "^sending_days: must be a whole number"),
    ({"sending_days": -1}, "^sending_days: must be >= 0"),
    ({"used": -2}, "^used: must be >= 0"),
    ({"used": 1, "cap": 5}, "unknown key 'cap'"),
])
def test_state_from_dict_errors(data, message):
    with pytest.raises(ValueError, match=message):
        WarmupState.from_dict(data)
