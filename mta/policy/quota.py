"""Tenant sending quotas: messages per hour, per day and a sustained rate.
Pure: every call takes `now` (POSIX seconds); nothing here reads a clock.

Public API:
    QuotaLimits(per_hour=None, per_day=None, rate=None, burst=None)
        None = unlimited. rate: messages/s sustained; burst: how many may go
        at once (None: max(1, ceil(rate))); burst without a rate is ignored.
        .burst_size -> int | None   the burst in force (None: no rate)
    QuotaState()                    one tenant's counters (mutable, in memory)
        .admit(limits, n, now) -> QuotaVerdict
                                    n messages (recipients) at once: all are
                                    admitted (counted against every limit) or
                                    none (nothing consumed)
        .seed(hour_count, day_count, now)   counts already used in the
                                    current windows (rebuilt from the ledger)
        .used(now) -> (hour_count, day_count)
    QuotaVerdict(ok, limit="", retry_after=None, impossible=False, used=0,
                 allowed=0, rate=0.0)
        limit        "per_hour" | "per_day" | "rate" ("" when ok)
        retry_after  seconds until n would be admitted by that limit (None
                     when ok or impossible)
        impossible   n is larger than the limit's whole size: never admissible
        used         the window's count before this call (rate: burst slots
                     in use); allowed: the limit's size (rate: the burst)
        rate         the rate limit (messages/s) when limit == "rate"
        .reply_text(tenant) -> str   one line for SMTP text or an API error
    retry_after_seconds(verdict) -> int | None   whole seconds, rounded up,
                                    at least 1 (HTTP Retry-After); None: none
    smtp_reply(verdict, tenant) -> Reply   per_hour/per_day: 452 4.5.3,
                                    rate: 451 4.7.1, impossible: 552 5.5.3

Rules:
  * Windows are FIXED UTC windows: the hour from hh:00:00, the day from
    00:00:00 UTC (epoch arithmetic: floor(now / 3600) * 3600). A window's
    count drops to 0 when the next window starts ("recovery at the next
    window"). A clock that steps back never reopens an older window: the
    counts of the newest window seen stay until a later one starts.
  * The rate is a GCRA (mta.policy.gcra.Gcra): T = 1 / rate, the
    theoretical arrival time `tat` advances by n*T per admission; n is
    admitted at `now` when max(tat, now) + n*T - burst*T <= now, else the
    wait is the difference. Sustained: `rate` a second; at once: at most
    `burst`. The float rate becomes a RateSpec with that same T: a whole
    rate r is "r/s", any other is 1 per 1/r seconds (0.5 -> 1 per 2 s).
  * When several limits refuse, the verdict names the one with the largest
    wait (ties: per_day, then per_hour, then rate — the longer window is
    what the client must wait for anyway). When n exceeds a limit's whole
    size (n > per_hour, n > per_day, n > burst) the verdict is `impossible`
    and names the smallest such limit (ties in the same order).
  * A refusal consumes nothing; an admission consumes from every limit.

Invariants: a QuotaState holds four counters and one Gcra (one float)
whatever the traffic; limits are passed per call, so a reload applies from
the next call on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mta.core.reply import Reply
from mta.policy.gcra import Gcra, RateSpec

__all__ = ["QuotaLimits", "QuotaState", "QuotaVerdict", "refusal", "retry_after_seconds",
           "smtp_reply", "HOUR", "DAY"]

HOUR = 3600
DAY = 86400
_EPS = 1e-9     # float slack when rounding a wait up to whole seconds

# Ties between refusing limits: the earlier name wins.
_ORDER = ("per_day", "per_hour", "rate")


@dataclass(frozen=True)
class QuotaLimits:
    per_hour: int | None = None
    per_day: int | None = None
    rate: float | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_hour", "per_day", "burst"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name}: must be a whole number >= 1 (got {value!r})")
        if self.rate is not None and (isinstance(self.rate, bool)
                                      or not isinstance(self.rate, (int, float))
                                      or not 0 < self.rate < math.inf):
            raise ValueError(f"rate: must be a finite number > 0 (got {self.rate!r})")

    @property
    def burst_size(self) -> int | None:
        if self.rate is None:
            return None
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate))


@dataclass(frozen=True)
class QuotaVerdict:
    ok: bool
    limit: str = ""
    retry_after: float | None = None
    impossible: bool = False
    used: int = 0
    allowed: int = 0
    rate: float = 0.0

    def reply_text(self, tenant: str) -> str:
        """One line saying which limit refused and when to come back
        ("" for an admission)."""
        if self.ok:
            return ""
        if self.limit == "rate":
            what = f"sending faster than {_number(self.rate)} messages/s"
            if self.impossible:
                return (f"tenant {tenant}: more recipients than its rate limit allows at once "
                        f"(burst {self.allowed:,} at {_number(self.rate)} messages/s)")
        else:
            period = "hourly" if self.limit == "per_hour" else "daily"
            what = f"over its {period} quota ({self.allowed:,} messages)"
            if self.impossible:
                return (f"tenant {tenant}: more recipients than its {period} quota "
                        f"allows ({self.allowed:,} messages)")
        wait = retry_after_seconds(self)
        return f"tenant {tenant} {what}; try again in {wait or 1:,} s"


def retry_after_seconds(verdict: QuotaVerdict) -> int | None:
    """The wait as whole seconds for a Retry-After header: rounded up, at
    least 1; None when admitted or never admissible."""
    if verdict.ok or verdict.retry_after is None:
        return None
    return max(1, math.ceil(verdict.retry_after - _EPS))


def smtp_reply(verdict: QuotaVerdict, tenant: str) -> Reply:
    """The SMTP reply for a refusal: an hourly/daily quota is 452 4.5.3 (come
    back later), the rate 451 4.7.1; a submission larger than a limit's whole
    size can never pass, so it is 552 5.5.3 (too many recipients). Raises
    ValueError for an admission (there is nothing to refuse)."""
    if verdict.ok:
        raise ValueError("smtp_reply: the verdict admits")
    text = verdict.reply_text(tenant)
    if verdict.impossible:
        return Reply(552, "5.5.3", text)
    if verdict.limit == "rate":
        return Reply(451, "4.7.1", text)
    return Reply(452, "4.5.3", text)


def _rate_spec(rate: float) -> RateSpec:
    """messages/s as a RateSpec with the same emission interval 1.0 / rate:
    a whole rate is `rate` per second ("5/s"); any other is one message per
    1 / rate seconds (0.5 -> 1 per 2 s, 2.5 -> 1 per 0.4 s)."""
    if float(rate).is_integer():
        return RateSpec(int(rate), 1.0)
    return RateSpec(1, 1.0 / rate)


def _number(x: float) -> str:
    """5.0 -> "5", 1000 -> "1,000", 0.25 -> "0.25"."""
    if x == int(x):
        return f"{int(x):,}"
    text = f"{x:,.3f}".rstrip("0").rstrip(".")
    return text if text != "0" else f"{x:g}"


class QuotaState:
    def __init__(self) -> None:
        self._hour_start = -math.inf
        self._hour_count = 0
        self._day_start = -math.inf
        self._day_count = 0
        self._gcra: Gcra | None = None      # the rate part, made on first use

    def _roll(self, now: float) -> None:
        hour = math.floor(now / HOUR) * HOUR
        if hour > self._hour_start:
            self._hour_start, self._hour_count = hour, 0
        day = math.floor(now / DAY) * DAY
        if day > self._day_start:
            self._day_start, self._day_count = day, 0

    def used(self, now: float) -> tuple[int, int]:
        self._roll(now)
        return self._hour_count, self._day_count

    def seed(self, hour_count: int, day_count: int, now: float) -> None:
        """Set the counts of the windows `now` is in (the day's count
        includes the hour's; a day count below the hour's is raised to it)."""
        if hour_count < 0:
            raise ValueError(f"hour_count: must be >= 0 (got {hour_count})")
        if day_count < 0:
            raise ValueError(f"day_count: must be >= 0 (got {day_count})")
        self._roll(now)
        self._hour_count = hour_count
        self._day_count = max(day_count, hour_count)

    def _rate(self, limits: QuotaLimits) -> Gcra:
        """The GCRA for limits.rate, reconfigured when the limits changed
        (its state is kept across a reload, as one `tat` always was)."""
        assert limits.rate is not None
        spec, burst = _rate_spec(limits.rate), limits.burst_size or 1
        if self._gcra is None:
            self._gcra = Gcra(spec, burst)
        elif self._gcra.rate != spec or self._gcra.burst != burst:
            self._gcra.reconfigure(spec, burst)
        return self._gcra

    def admit(self, limits: QuotaLimits, n: int, now: float) -> QuotaVerdict:
        if n < 1:
            raise ValueError(f"n: must be >= 1 (got {n})")
        self._roll(now)
        gcra = self._rate(limits) if limits.rate is not None else None
        # the GCRA's wait for n (none past its burst: refused as impossible)
        # and its burst slots in use (0 when idle)
        wait, slots = 0.0, 0
        if gcra is not None:
            wait = gcra.wait(now, n) if n <= gcra.burst else 0.0
            slots = gcra.burst - gcra.available(now)
        refused = refusal(limits, n, now, (self._hour_start, self._hour_count),
                          (self._day_start, self._day_count), wait, slots)
        if refused is not None:
            return refused
        self._hour_count += n
        self._day_count += n
        if gcra is not None:
            gcra.admit(now, n)
        return QuotaVerdict(True)


def refusal(limits: QuotaLimits, n: int, now: float, hour: tuple[float, int],
            day: tuple[float, int], rate_wait: float, rate_slots: int) -> QuotaVerdict | None:
    """The verdict refusing `n` at `now`, or None when every limit admits it.
    hour, day: (window start, count in it); rate_wait, rate_slots: the
    GCRA's wait for n and its burst slots in use (0, 0 without a rate). The
    module's rules: the impossible limit first (the smallest n exceeds),
    else the refusing limit with the largest wait. Shared by QuotaState and
    the cluster's counts on Redis (cluster/limits.py)."""
    (hour_start, hour_count), (day_start, day_count) = hour, day
    rate = float(limits.rate or 0.0)
    burst = limits.burst_size
    sizes: list[tuple[int, str]] = []
    if limits.per_day is not None and n > limits.per_day:
        sizes.append((limits.per_day, "per_day"))
    if limits.per_hour is not None and n > limits.per_hour:
        sizes.append((limits.per_hour, "per_hour"))
    if burst is not None and n > burst:
        sizes.append((burst, "rate"))
    if sizes:
        allowed, name = min(sizes, key=lambda s: (s[0], _ORDER.index(s[1])))
        used = {"per_day": day_count, "per_hour": hour_count, "rate": rate_slots}[name]
        return QuotaVerdict(False, name, None, impossible=True, used=used, allowed=allowed,
                            rate=rate if name == "rate" else 0.0)
    refusals: list[QuotaVerdict] = []
    if limits.per_day is not None and day_count + n > limits.per_day:
        refusals.append(QuotaVerdict(False, "per_day", day_start + DAY - now,
                                     used=day_count, allowed=limits.per_day))
    if limits.per_hour is not None and hour_count + n > limits.per_hour:
        refusals.append(QuotaVerdict(False, "per_hour", hour_start + HOUR - now,
                                     used=hour_count, allowed=limits.per_hour))
    if burst is not None and rate_wait > 0.0:
        refusals.append(QuotaVerdict(False, "rate", rate_wait, used=rate_slots,
                                     allowed=burst, rate=rate))
    if not refusals:
        return None
    # the largest wait; ties keep _ORDER (the list is built in it)
    return max(refusals, key=lambda v: (v.retry_after or 0.0, -_ORDER.index(v.limit)))
