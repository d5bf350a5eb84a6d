"""Tenant reputation: rolling bounce and complaint rates, and what a policy
makes of them (ok, warn, pause). Pure: every call takes `now`/`at` (POSIX
seconds); nothing here reads a clock or does I/O.

Public API:
    LEVELS = ("none", "standard", "strict")
    Thresholds(bounce_warn=0.05, bounce_pause=0.10, complaint_warn=0.001,
               complaint_pause=0.003)        fractions, 0 < warn <= pause <= 1
    ReputationPolicy(level="standard", thresholds=Thresholds(), window=2000,
                     window_seconds=7*86400, min_volume=500)
    RollingRates(window=2000)   one tenant's (or one sending domain's) window
        .add(kind, at)          kind: "delivered" | "bounce" (a bounce that
                                reflects list quality) | "bounce_other" (a
                                final failure that is a send but does not
                                count toward the bounce rate) | "complaint"
                                (about a message sent earlier; not a send)
        .snapshot(now, policy) -> Rates
        .held() -> (sends, complaints)   entries in memory
    Rates(sends, bounces, complaints, bounce_rate, complaint_rate, delivered=0)
    Assessment(status, metric, rate, sends, text)
    assess(rates, policy) -> Assessment
    transition(previous_status, current) -> event name | None
    TenantStatus, TENANT_STATUS   the automatic status (ok, warn, paused) and
                                  its machine (paused is left only to ok, by
                                  an operator's resume)

Rules:
  * The window is the last `policy.window` sends (final outcomes), and only
    those newer than `window_seconds`: an outcome at `at` counts while
    now - at < window_seconds. Complaints count within the same span: newer
    than window_seconds and not older than the oldest send counted.
  * bounce rate = counting bounces / sends; complaint rate = complaints /
    delivered sends (Amazon SES's definition). Both 0.0 with no sends (or
    no deliveries, for complaints).
  * Fewer sends than `min_volume` in the window: status "ok" whatever the
    rates (they are still reported in Rates).
  * A rate AT a threshold counts as reached. `standard`: warn at the warn
    thresholds, pause at the pause ones. `strict`: pause at the warn
    thresholds and never warn (no lower level is invented: a strict tenant
    learns of trouble by being paused; the rates are there to watch).
    `none`: rates computed, status always "ok".
  * assess names the worse metric (pause > warn > ok; at equal status the
    complaint rate first). An "ok" assessment has metric "", rate 0.0 and
    text "".
  * transition: any -> pause: "reputation_paused"; ok -> warn:
    "reputation_warning"; warn -> ok: "reputation_recovered". A pause is
    sticky: from "pause" nothing follows (only an operator's resume, which
    the caller handles, clears it), so pause -> warn / ok is None.

Invariants: add is O(1) amortised and snapshot amortised O(1) per entry it
drops; memory is bounded — at most `window` sends and at most `window`
complaints (a complaint rate above 100% says nothing more). Times are kept
non-decreasing: an `at` earlier than the last one added is taken as the
last one (ledger events may arrive slightly out of order), so expiry by
time stays a pop from the left.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from dataclasses import dataclass, field

from mta.core.statemachine import StateMachine

__all__ = ["LEVELS", "KINDS", "Thresholds", "ReputationPolicy", "RollingRates", "Rates",
           "Assessment", "assess", "transition", "STATUSES"]

LEVELS = ("none", "standard", "strict")
KINDS = ("delivered", "bounce", "bounce_other", "complaint")
STATUSES = ("ok", "warn", "pause")
_SEND_KINDS = ("delivered", "bounce", "bounce_other")
_RANK = {"ok": 0, "warn": 1, "pause": 2}


@dataclass(frozen=True)
class Thresholds:
    bounce_warn: float = 0.05
    bounce_pause: float = 0.10
    complaint_warn: float = 0.001
    complaint_pause: float = 0.003

    def __post_init__(self) -> None:
        for name in ("bounce_warn", "bounce_pause", "complaint_warn", "complaint_pause"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value <= 1:
                raise ValueError(f"{name}: must be a fraction in (0, 1] (got {value!r})")
        if self.bounce_pause < self.bounce_warn:
            raise ValueError("bounce_pause: must be >= bounce_warn")
        if self.complaint_pause < self.complaint_warn:
            raise ValueError("complaint_pause: must be >= complaint_warn")


@dataclass(frozen=True)
class ReputationPolicy:
    level: str = "standard"
    thresholds: Thresholds = field(default_factory=Thresholds)
    window: int = 2000
    window_seconds: float = 7 * 86400
    min_volume: int = 500

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level: must be one of {', '.join(LEVELS)} (got {self.level!r})")
        if not isinstance(self.thresholds, Thresholds):
            raise ValueError("thresholds: must be a Thresholds")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window: must be a whole number >= 1 (got {self.window!r})")
        if isinstance(self.window_seconds, bool) \
                or not isinstance(self.window_seconds, (int, float)) \
                or not 0 < self.window_seconds < math.inf:
            raise ValueError(f"window_seconds: must be a finite number > 0 "
                             f"(got {self.window_seconds!r})")
        if isinstance(self.min_volume, bool) or not isinstance(self.min_volume, int) \
                or not 0 <= self.min_volume <= self.window:
            raise ValueError(f"min_volume: must be a whole number from 0 to window "
                             f"({self.window}) (got {self.min_volume!r})")


@dataclass(frozen=True)
class Rates:
    sends: int
    bounces: int
    complaints: int
    bounce_rate: float
    complaint_rate: float
    delivered: int = 0


@dataclass(frozen=True)
class Assessment:
    status: str             # "ok" | "warn" | "pause"
    metric: str             # "bounce" | "complaint" | "" (ok)
    rate: float
    sends: int
    text: str


class RollingRates:
    def __init__(self, window: int = 2000) -> None:
        if window < 1:
            raise ValueError(f"window: must be >= 1 (got {window})")
        self._cap = window
        self._sends: deque[tuple[float, str]] = deque()
        self._complaints: deque[float] = deque()
        self._counts = dict.fromkeys(_SEND_KINDS, 0)
        self._last = -math.inf

    def add(self, kind: str, at: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)} (got {kind!r})")
        at = max(at, self._last)
        self._last = at
        if kind == "complaint":
            self._complaints.append(at)
            if len(self._complaints) > self._cap:
                self._complaints.popleft()
            return
        self._sends.append((at, kind))
        self._counts[kind] += 1
        self._trim(self._cap)

    def _trim(self, cap: int) -> None:
        """At most `cap` sends; complaints older than the oldest send go."""
        while len(self._sends) > cap:
            _, kind = self._sends.popleft()
            self._counts[kind] -= 1
        if self._sends:
            oldest = self._sends[0][0]
            while self._complaints and self._complaints[0] < oldest:
                self._complaints.popleft()
        while len(self._complaints) > cap:
            self._complaints.popleft()

    def snapshot(self, now: float, policy: ReputationPolicy) -> Rates:
        """The rates over the window at `now` (drops what has expired; a
        policy whose window differs from the one held resizes it)."""
        self._cap = policy.window
        cutoff = now - policy.window_seconds
        while self._sends and self._sends[0][0] <= cutoff:
            _, kind = self._sends.popleft()
            self._counts[kind] -= 1
        while self._complaints and self._complaints[0] <= cutoff:
            self._complaints.popleft()
        self._trim(self._cap)
        sends = len(self._sends)
        bounces = self._counts["bounce"]
        delivered = self._counts["delivered"]
        complaints = len(self._complaints)
        return Rates(sends=sends, bounces=bounces, complaints=complaints,
                     bounce_rate=bounces / sends if sends else 0.0,
                     complaint_rate=complaints / delivered if delivered else 0.0,
                     delivered=delivered)

    def held(self) -> tuple[int, int]:
        return len(self._sends), len(self._complaints)


def _status(rate: float, warn: float, pause: float, level: str) -> str:
    if level == "none":
        return "ok"
    if level == "strict":
        return "pause" if rate >= warn else "ok"
    if rate >= pause:
        return "pause"
    return "warn" if rate >= warn else "ok"


def assess(rates: Rates, policy: ReputationPolicy) -> Assessment:
    """What the policy makes of the rates (module docstring, Rules)."""
    if rates.sends < policy.min_volume:
        return Assessment("ok", "", 0.0, rates.sends, "")
    t = policy.thresholds
    candidates = [  # complaint first: max() keeps the first of equals
        ("complaint", rates.complaint_rate,
         _status(rates.complaint_rate, t.complaint_warn, t.complaint_pause, policy.level)),
        ("bounce", rates.bounce_rate,
         _status(rates.bounce_rate, t.bounce_warn, t.bounce_pause, policy.level)),
    ]
    metric, rate, status = max(candidates, key=lambda c: _RANK[c[2]])
    if status == "ok":
        return Assessment("ok", "", 0.0, rates.sends, "")
    text = f"{metric} rate {rate * 100:.2f}% over the last {rates.sends:,} messages"
    return Assessment(status, metric, rate, rates.sends, text)


def transition(previous: str, current: Assessment) -> str | None:
    """The event a change of status warrants, or None (module docstring)."""
    if previous not in _RANK:
        raise ValueError(f"previous: must be one of {', '.join(STATUSES)} (got {previous!r})")
    now = current.status
    if now == previous or previous == "pause":
        return None
    if now == "pause":
        return "reputation_paused"
    if now == "warn":
        return "reputation_warning"
    return "reputation_recovered"


class TenantStatus(enum.StrEnum):
    """A tenant's automatic status (stored as `tenants.auto_status`)."""
    OK = "ok"
    WARN = "warn"
    PAUSED = "paused"


# An automatic pause is left only by an operator's resume (to ok); the
# tracker never moves paused -> warn (`transition` returns None for it).
TENANT_STATUS: StateMachine[TenantStatus] = StateMachine("tenant", {
    TenantStatus.OK: frozenset({TenantStatus.OK, TenantStatus.WARN, TenantStatus.PAUSED}),
    TenantStatus.WARN: frozenset({TenantStatus.WARN, TenantStatus.OK, TenantStatus.PAUSED}),
    TenantStatus.PAUSED: frozenset({TenantStatus.PAUSED, TenantStatus.OK}),
}, logging.getLogger("mta.tenants"))
