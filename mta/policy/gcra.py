"""Rate specs ("100/s", "1000/h") and the generic cell rate algorithm (GCRA)
that enforces them. Pure: every call takes `now` (POSIX seconds); nothing
here reads a clock.

Public API:
    RateSpec(count, period)         `count` messages per `period` seconds
        .per_second -> float        count / period
        .interval -> float          period / count (T, seconds per message)
        str(spec) -> str            "100/s", "1000/h", "20/m", "500/d";
                                    parse_rate(str(spec)) == spec
    parse_rate(text) -> RateSpec    "<count>/<unit>" with unit s|sec|second,
                                    m|min|minute, h|hr|hour, d|day (any
                                    case, spaces around "/" allowed), or
                                    "<count>/<number><unit>" ("1/2s", "5/10m")
                                    for periods that are not one unit
    Gcra(rate, burst=None)          one throttle's state
        .rate / .burst              the spec and burst in force
        .reconfigure(rate, burst=None)   new limits; the state is kept
        .admit(now, n=1) -> float   0.0: n admitted at once (consumed);
                                    else the seconds until n would be
                                    admitted (nothing consumed)
        .wait(now, n=1) -> float    what admit would return, consuming nothing
        .available(now) -> int      the largest k (0..burst) admit(now, k)
                                    would accept
        .next_free(now) -> float    the earliest t >= now at which
                                    admit(t, 1) succeeds

Rules:
  * A spec's emission interval is T = period / count. The state is one
    float, the theoretical arrival time `tat` (-inf: idle since forever).
    n is admitted at `now` when max(tat, now) + n*T - burst*T <= now, and
    then tat becomes max(tat, now) + n*T; otherwise the wait is the
    difference. Sustained: `count` per `period`; at once: at most `burst`;
    idle time never banks more than `burst`.
  * Default burst: 1 for rates below 1/s, else ceil(per_second) (a second's
    worth at once).
  * n > burst is never admissible: admit/wait raise ValueError.
  * Waits within float rounding of the operands (a few ulps of `now`, about
    1e-6 s at present-day epoch values; at least 1e-9 s) count as zero, so
    admit(next_free(now)) and admit(now + wait) succeed. `tat` is an
    absolute time, so each admission rounds it by up to half an ulp (about
    1e-7 s today): negligible drift, never a burst above `burst`.
  * A period that is not exactly one unit (1, 60, 3600, 86400 s) prints as
    "<count>/<number><unit>" with the largest unit it is a whole number of,
    else as exact seconds ("1/0.4s"), so str() always round-trips.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["RateSpec", "parse_rate", "Gcra"]

_EPS = 1e-9         # the smallest slack in a wait comparison (seconds)
_ULPS = 4           # float rounding allowed in a wait, in ulps of the operands

# unit names -> seconds; the first name of each is the one str() writes
_UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}
_WRITE = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))

_RATE = re.compile(
    r"^\s*(?P<count>\d+)\s*/\s*"
    r"(?P<mult>\d+(?:\.\d+)?(?:e[-+]?\d+)?)?\s*"
    r"(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE)


@dataclass(frozen=True)
class RateSpec:
    count: int
    period: float

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count: must be a whole number >= 1 (got {self.count!r})")
        if isinstance(self.period, bool) or not isinstance(self.period, (int, float)) \
                or not 0 < self.period < math.inf:
            raise ValueError(f"period: must be a finite number of seconds > 0 "
                             f"(got {self.period!r})")

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def interval(self) -> float:
        """The emission interval T: seconds per message."""
        return self.period / self.count

    def __str__(self) -> str:
        period = float(self.period)
        for name, seconds in _WRITE:
            if period == seconds:
                return f"{self.count}/{name}"
        for name, seconds in _WRITE:
            mult = period / seconds
            if mult >= 1 and mult.is_integer() and mult * seconds == period:
                return f"{self.count}/{int(mult)}{name}"
        return f"{self.count}/{period!r}s"


def parse_rate(text: str) -> RateSpec:
    """'100/s' -> RateSpec(100, 1.0); see the module docstring for the forms."""
    m = _RATE.match(text) if isinstance(text, str) else None
    unit = _UNITS.get(m.group("unit").lower()) if m else None
    if m is None or unit is None:
        raise ValueError(f"bad rate {text!r}: write e.g. \"100/s\", \"1000/h\"")
    count = int(m.group("count"))
    mult = float(m.group("mult")) if m.group("mult") else 1.0
    period = mult * unit
    if count < 1 or not 0 < period < math.inf:
        raise ValueError(f"bad rate {text!r}: write e.g. \"100/s\", \"1000/h\" "
                         f"(count and period must be > 0)")
    return RateSpec(count, period)


def _default_burst(rate: RateSpec) -> int:
    return max(1, math.ceil(rate.per_second))


class Gcra:
    """Generic cell rate algorithm over `now` (see the module docstring)."""

    def __init__(self, rate: RateSpec, burst: int | None = None) -> None:
        self._tat = -math.inf
        self._rate = rate
        self._burst = 1
        self._interval = 1.0
        self.reconfigure(rate, burst)

    @property
    def rate(self) -> RateSpec:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def reconfigure(self, rate: RateSpec, burst: int | None = None) -> None:
        """Apply new limits from the next call on; `tat` is kept, so traffic
        already admitted still counts against the new rate."""
        if not isinstance(rate, RateSpec):
            raise ValueError(f"rate: must be a RateSpec (got {rate!r})")
        if burst is None:
            burst = _default_burst(rate)
        elif isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst: must be a whole number >= 1 (got {burst!r})")
        self._rate, self._burst, self._interval = rate, burst, rate.interval

    def _check(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be a whole number >= 1 (got {n!r})")
        if n > self._burst:
            raise ValueError(f"n: {n} is more than the burst ({self._burst}): "
                             f"never admissible at {self._rate}")

    def _slack(self, now: float) -> float:
        base = max(abs(now), abs(self._tat)) if self._tat > -math.inf else abs(now)
        return max(_EPS, _ULPS * math.ulp(base))

    def _raw_wait(self, now: float, n: int) -> float:
        """max(tat, now) + n*T - burst*T - now, in this order (the float
        result next_free relies on)."""
        t = self._interval
        return max(self._tat, now) + n * t - self._burst * t - now

    def wait(self, now: float, n: int = 1) -> float:
        self._check(n)
        w = self._raw_wait(now, n)
        return w if w > self._slack(now) else 0.0

    def admit(self, now: float, n: int = 1) -> float:
        w = self.wait(now, n)
        if w == 0.0:
            self._tat = max(self._tat, now) + n * self._interval
        return w

    def available(self, now: float) -> int:
        ahead = max(0.0, self._tat - now)
        slack = self._slack(now)
        k = math.floor(self._burst - (ahead - slack) / self._interval)
        k = min(self._burst, max(0, k))
        # settle float edges against the admission test itself
        while k < self._burst and self._raw_wait(now, k + 1) <= slack:
            k += 1
        while k > 0 and self._raw_wait(now, k) > slack:
            k -= 1
        return k

    def next_free(self, now: float) -> float:
        if self._tat == -math.inf:
            return now
        t = self._interval
        at = max(now, self._tat + t - self._burst * t)
        while self.wait(at, 1) > 0.0:       # float edges: a few ulps at most
            at = math.nextafter(at, math.inf)
        return at
