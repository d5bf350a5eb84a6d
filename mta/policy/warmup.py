"""IP warm-up: a source's daily cap as data, advanced by sending days and
smoothed across the day. Pure: every call takes `now` (POSIX seconds);
nothing here reads a clock or does I/O.

Public API:
    WarmupSchedule(caps)            caps[d-1] = the cap of sending day d;
                                    after the last day: no cap (warm)
        WarmupSchedule.parse(spec) -> WarmupSchedule
            [50, 100, 200]          an explicit list (whole numbers >= 1)
            "50*1.5"                day d: floor(50 * 1.5**(d-1)), until 100000
            "50*1.5 until 20000"    ... the first day whose cap would reach
                                    20000 is warm (no cap)
            "standard"              = "50*1.5 until 100000" (19 capped days:
                                    50, 75, 112, 168, 253 ... 73894)
            "none"                  warm from day 1 (caps = ())
                                    (PRESETS maps the names to their specs)
        .cap(day) -> int | None     day is 1-based; None = warm
        .days -> int                how many days are capped
    WarmupState(sending_days=0, day=-1, used=0)   one source's progress
        .to_dict() -> {"sending_days", "day", "used"} / WarmupState.from_dict(d)
    Warmup(schedule, state=None)
        .schedule / .state          the WarmupSchedule; the WarmupState
                                    (persist it via to_dict)
        .roll(now)                  enter the UTC day of `now`
        .today(now) -> int          the 1-based schedule day `now` is on
        .cap(now) -> int | None     today's cap (None = warm)
        .allowed(now) -> int | None how many more may go right now (None =
                                    unlimited)
        .next_slot(now) -> float | None   when the next message may go if
                                    allowed(now) == 0 (None: unlimited, or
                                    one may go now)
        .consume(n, now)            count n sent
        .status(now) -> {"day", "cap", "used", "allowed_now", "warm"}

Rules:
  * Days are UTC days: day number floor(now / 86400). The schedule advances
    by SENDING days: entering a new UTC day advances it by one only when the
    previous UTC day the state counted for sent at least one message; a day
    on which nothing was sent does not count. A clock that steps back never
    reopens an older day (the newest day seen stays).
  * A "start*factor" schedule is computed exactly (the factor is read as a
    decimal fraction, no float rounding): day d's cap is
    floor(start * factor**(d-1)) — from day 1, not from yesterday's rounded
    cap, so rounding never compounds (50*1.5: day 5 is 253, not 252). The
    factor must be > 1, start < until, and at most 1000 days may be capped.
  * Smoothing: with today's cap C and s seconds since 00:00 UTC, the source
    may have sent at most min(C, 1 + floor(C * (s + 3600) / 86400)) by then
    — an hour's share (and at least one message) at midnight, then evenly,
    the whole cap from 23:00 at the latest. Message k of the day may go
    from s = (k - 1) * 86400 / C - 3600. Computed exactly (fractions of the
    float `now`), so next_slot(now) always has room.
  * When today's cap is used up, next_slot is the next 00:00 UTC (which
    always has room: a cap is >= 1). Consumed messages count even when they
    exceed the cap (the caller released them); nothing is ever refused for
    good: warm-up only delays.
  * Which source of a pool goes next, and spill-over to warm sources, is
    the scheduler's (mta/scheduler/limits.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeGuard

__all__ = ["WarmupSchedule", "WarmupState", "Warmup", "PRESETS"]

DAY = 86400
_LEAD = 3600            # the hour's share allowed up front at midnight
MAX_DAYS = 1000         # the longest generated schedule
DEFAULT_UNTIL = 100_000

PRESETS: dict[str, str] = {"standard": "50*1.5 until 100000"}

_NUM = r"\d+(?:_\d+)*"
_GEOMETRIC = re.compile(
    rf"^\s*(?P<start>{_NUM})\s*\*\s*(?P<factor>\d+(?:\.\d+)?)"
    rf"(?:\s+until\s+(?P<until>{_NUM}))?\s*$",
    re.IGNORECASE)


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class WarmupSchedule:
    caps: tuple[int, ...]

    def __post_init__(self) -> None:
        raw: object = self.caps
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raise ValueError(f"caps: must be a list of whole numbers (got {raw!r})")
        caps = tuple(raw)
        for day, cap in enumerate(caps, 1):
            if not _whole(cap) or cap < 1:
                raise ValueError(f"caps: day {day}: must be a whole number >= 1 (got {cap!r})")
        object.__setattr__(self, "caps", caps)

    @classmethod
    def parse(cls, spec: str | Sequence[int]) -> WarmupSchedule:
        if not isinstance(spec, str):
            raw: object = spec
            if not isinstance(raw, Sequence):
                raise ValueError(f"warm-up: expected a list of daily caps or a string like "
                                 f"\"50*1.5\" (got {raw!r})")
            return cls(tuple(raw))
        text = spec.strip().lower()
        if text == "none":
            return cls(())
        text = PRESETS.get(text, text)
        m = _GEOMETRIC.match(text)
        if m is None:
            raise ValueError(f"warm-up {spec!r}: write a list of daily caps, \"50*1.5\", "
                             f"\"50*1.5 until 100000\", \"standard\" or \"none\"")
        start = int(m.group("start"))
        factor = Fraction(m.group("factor"))
        until = int(m.group("until")) if m.group("until") else DEFAULT_UNTIL
        return cls(_geometric(spec, start, factor, until))

    def cap(self, day: int) -> int | None:
        if not _whole(day) or day < 1:
            raise ValueError(f"day: must be a whole number >= 1 (got {day!r})")
        return self.caps[day - 1] if day <= len(self.caps) else None

    @property
    def days(self) -> int:
        return len(self.caps)


def _geometric(spec: str, start: int, factor: Fraction, until: int) -> tuple[int, ...]:
    if start < 1:
        raise ValueError(f"warm-up {spec!r}: the first day's cap must be >= 1")
    if factor <= 1:
        raise ValueError(f"warm-up {spec!r}: the factor must be > 1 (got {float(factor):g})")
    if start >= until:
        raise ValueError(f"warm-up {spec!r}: the first day's cap {start} already reaches "
                         f"'until' ({until}); use \"none\" for no warm-up")
    caps: list[int] = []
    value = Fraction(start)
    while (cap := math.floor(value)) < until:
        if len(caps) == MAX_DAYS:
            raise ValueError(f"warm-up {spec!r}: longer than {MAX_DAYS} days; "
                             f"raise the factor or lower 'until'")
        caps.append(cap)
        value *= factor
    return tuple(caps)


@dataclass
class WarmupState:
    sending_days: int = 0       # completed sending days (>= 1 message sent)
    day: int = -1               # the UTC day number `used` counts for
    used: int = 0               # messages sent on `day`

    def __post_init__(self) -> None:
        for name in ("sending_days", "day", "used"):
            value = getattr(self, name)
            if not _whole(value):
                raise ValueError(f"{name}: must be a whole number (got {value!r})")
        if self.sending_days < 0:
            raise ValueError(f"sending_days: must be >= 0 (got {self.sending_days})")
        if self.used < 0:
            raise ValueError(f"used: must be >= 0 (got {self.used})")

    def to_dict(self) -> dict[str, int]:
        return {"sending_days": self.sending_days, "day": self.day, "used": self.used}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> WarmupState:
        unknown = sorted(set(d) - {"sending_days", "day", "used"})
        if unknown:
            raise ValueError(f"warm-up state: unknown key {unknown[0]!r}")
        values: dict[str, int] = {}
        for name in ("sending_days", "day", "used"):
            if name in d:
                value = d[name]
                if not _whole(value):
                    raise ValueError(f"{name}: must be a whole number (got {value!r})")
                values[name] = value
        return cls(**values)


class Warmup:
    """A source's schedule and state (see the module docstring)."""

    def __init__(self, schedule: WarmupSchedule, state: WarmupState | None = None) -> None:
        self._schedule = schedule
        self._state = state if state is not None else WarmupState()

    @property
    def schedule(self) -> WarmupSchedule:
        return self._schedule

    @property
    def state(self) -> WarmupState:
        return self._state

    def roll(self, now: float) -> None:
        day = math.floor(now / DAY)
        st = self._state
        if day > st.day:
            if st.used > 0:
                st.sending_days += 1
            st.day, st.used = day, 0

    def today(self, now: float) -> int:
        self.roll(now)
        return self._state.sending_days + 1

    def cap(self, now: float) -> int | None:
        return self._schedule.cap(self.today(now))

    def _share(self, cap: int, now: float) -> int:
        """How many may have gone by `now` today (the smoothing rule)."""
        since = Fraction(now) - self._state.day * DAY
        return min(cap, 1 + math.floor(cap * (since + _LEAD) / DAY))

    def allowed(self, now: float) -> int | None:
        cap = self.cap(now)
        if cap is None:
            return None
        return max(0, self._share(cap, now) - self._state.used)

    def next_slot(self, now: float) -> float | None:
        allowed = self.allowed(now)
        if allowed is None or allowed > 0:
            return None
        cap = self.cap(now)
        assert cap is not None
        st = self._state
        if st.used >= cap:
            return float((st.day + 1) * DAY)
        # message used+1 may go from (used * DAY / cap - LEAD) after midnight
        exact = st.day * DAY + Fraction(st.used * DAY, cap) - _LEAD
        at = float(exact)
        if Fraction(at) < exact:
            at = math.nextafter(at, math.inf)
        return max(at, now)

    def consume(self, n: int, now: float) -> None:
        if not _whole(n) or n < 0:
            raise ValueError(f"n: must be a whole number >= 0 (got {n!r})")
        self.roll(now)
        self._state.used += n

    def status(self, now: float) -> dict[str, object]:
        cap = self.cap(now)
        return {"day": self.today(now), "cap": cap, "used": self._state.used,
                "allowed_now": self.allowed(now), "warm": cap is None}

