"""Retry schedule: when a deferred recipient is tried next, and when it expires.

Data plus one pure function (docs/ARCHITECTURE.md §8 item 5), written the way an
operator reads it: ``"5m,10m,20m,40m,1h,2h,4h"`` means wait 5m after the
first temporary failure, 10m after the second, … and 4h after every later
one (the last entry repeats).

Public API:
    RetryPolicy(schedule, max_lifetime)
    RetryPolicy.from_config(DeliveryConfig) / RetryPolicy.parse("5m,10m", "5d")
    .delay_after(failures) -> float
    .expires_at(received_at) -> float
    .after_temp_failure(received_at, failures, now) -> float | None
    .is_expired(received_at, now) -> bool
    .schedule_times(received_at) -> list[float]

Invariants:
  * Every method takes `now` / `received_at` as arguments; nothing reads a clock.
  * The first attempt is at `received_at`; attempt k+1 is at most
    `schedule[min(k-1, len-1)]` after the k-th failure, never later than
    `expires_at`, so a recipient always gets one last try at its deadline.
  * A temporary failure at or after `expires_at` expires the recipient
    (`after_temp_failure` returns None); nothing is retried past the lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta.config.sections import DeliveryConfig
from mta.core.durations import format_duration, parse_duration


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...]      # waits between attempts; the last one repeats
    max_lifetime: float

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("retry schedule must have at least one wait")
        if any(w <= 0 for w in self.schedule):
            raise ValueError(f"retry waits must be positive: {self.schedule!r}")
        if self.max_lifetime <= 0:
            raise ValueError(f"max_lifetime must be positive: {self.max_lifetime!r}")
        object.__setattr__(self, "schedule", tuple(float(w) for w in self.schedule))

    @classmethod
    def from_config(cls, d: DeliveryConfig) -> RetryPolicy:
        return cls(tuple(d.retry_schedule), float(d.max_queue_lifetime))

    @classmethod
    def parse(cls, schedule: str, max_lifetime: str) -> RetryPolicy:
        """``RetryPolicy.parse("1s,2s,3s", "60s")`` — the operator's notation."""
        waits = tuple(parse_duration(p) for p in schedule.split(",") if p.strip())
        return cls(waits, parse_duration(max_lifetime))

    def __str__(self) -> str:
        waits = ",".join(format_duration(w) for w in self.schedule)
        return f"{waits} (last repeats), expire after {format_duration(self.max_lifetime)}"

    def delay_after(self, failures: int) -> float:
        """The wait after the `failures`-th consecutive temporary failure (1-based)."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        return self.schedule[min(failures - 1, len(self.schedule) - 1)]

    def expires_at(self, received_at: float) -> float:
        return received_at + self.max_lifetime

    def is_expired(self, received_at: float, now: float) -> bool:
        return now >= self.expires_at(received_at)

    def after_temp_failure(self, received_at: float, failures: int, now: float) -> float | None:
        """Next attempt time after the `failures`-th temporary failure at `now`.

        None means the recipient expires now. A wait that would overshoot
        the deadline is cut short to the deadline itself: one last try then,
        rather than expiring a recipient that was never tried near its end.
        """
        deadline = self.expires_at(received_at)
        if now >= deadline:
            return None
        return min(now + self.delay_after(failures), deadline)

    def schedule_times(self, received_at: float) -> list[float]:
        """Every attempt time if every attempt fails, first at `received_at`,
        the last at the expiry time (for docs and tests)."""
        times = [received_at]
        failures = 1
        while (nxt := self.after_temp_failure(received_at, failures, times[-1])) is not None:
            times.append(nxt)
            failures += 1
        return times
