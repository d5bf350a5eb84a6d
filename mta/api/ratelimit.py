"""The per-key request rate limit of the HTTP API: a token bucket per key.

One job: decide whether a key may make one more request now, and say so in
the response headers Resend's API sends (the IETF draft "RateLimit header
fields for HTTP", draft-ietf-httpapi-ratelimit-headers, in its separate-field
form).

Public API:
    RateLimiter(clock, *, max_buckets=100_000)
        .take(key_id, rate, burst=None) -> Decision
            rate: requests per second (> 0, finite); burst: the bucket's
            capacity (default: rate); a capacity is at least 1.
        len(limiter)   how many buckets are held
    Decision(allowed, limit, remaining, reset, retry_after)
        limit        the capacity, as a whole number of requests
        remaining    whole requests left after this one
        reset        seconds until the bucket is full again
        retry_after  seconds until one request is allowed (0 when allowed)
        .headers() -> {"ratelimit-limit", "ratelimit-remaining",
                       "ratelimit-reset" (whole seconds, rounded up: 0 only
                       when full), and on a refusal "retry-after" (whole
                       seconds, rounded up, at least 1)}

Invariants:
- Each key's bucket holds at most its capacity and gains `rate` tokens a
  second; a request takes one whole token or is refused, and a refusal
  takes nothing (a client that keeps retrying is not punished further).
- Time comes from the injected core Clock (`.now()`: it has no monotonic
  part): elapsed time is never negative — when the clock steps back the
  bucket simply gains nothing and is re-based at the new time. A rate or
  capacity that changes between calls applies from that call on.
- Memory is bounded: a full bucket is the same as no bucket, so the oldest
  buckets are dropped once full (checked a couple per call), and at most
  `max_buckets` are held (beyond that the least recently used is dropped,
  which forgets at most that key's recent use).
- No locks: it is used from one thread, the event loop (every method is
  synchronous and never awaits, so calls never interleave).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from mta.core.clock import Clock

__all__ = ["Decision", "RateLimiter"]

MAX_BUCKETS = 100_000
# Float slack. Times are POSIX seconds as floats (about 1.7e9: a step is
# 2.4e-7 s), so an elapsed time is off by up to a microsecond: a bucket that
# is that close to a whole token counts as having it (3 requests/s for 1/3 s
# is one whole token), and whole seconds in headers forgive as much.
_SLACK_S = 1e-6
_EPS = 1e-9
_MAX_SLACK_TOKENS = 1e-3
_SWEEP = 2             # old buckets looked at per call


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _SLACK_S))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after: float

    def headers(self) -> dict[str, str]:
        h = {"ratelimit-limit": str(self.limit),
             "ratelimit-remaining": str(self.remaining),
             "ratelimit-reset": str(_ceil(self.reset))}
        if not self.allowed:
            h["retry-after"] = str(max(1, _ceil(self.retry_after)))
        return h


class RateLimiter:
    def __init__(self, clock: Clock, *, max_buckets: int = MAX_BUCKETS):
        self.clock = clock
        self.max_buckets = max_buckets
        # key -> (tokens, at, full_at): the level at time `at`, and when it is full
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key_id: str, rate: float, burst: float | None = None) -> Decision:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"a rate limit must be a positive number of requests/s, not {rate!r}")
        if burst is not None and not (math.isfinite(burst) and burst > 0):
            raise ValueError(f"a burst must be a positive number of requests, not {burst!r}")
        cap = max(1.0, rate if burst is None else burst)
        now = self.clock.now()
        held = self._buckets.get(key_id)
        if held is None:
            tokens = cap
        else:
            level, at, _full_at = held
            tokens = min(cap, level + max(0.0, now - at) * rate)
        slack = min(_MAX_SLACK_TOKENS, rate * _SLACK_S) + _EPS
        allowed = tokens >= 1.0 - slack
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        self._buckets[key_id] = (tokens, now, now + (cap - tokens) / rate)
        self._buckets.move_to_end(key_id)
        self._sweep(now)
        return Decision(allowed=allowed, limit=math.floor(cap + _EPS),
                        remaining=max(0, math.floor(tokens + slack)),
                        reset=max(0.0, (cap - tokens) / rate),
                        retry_after=0.0 if allowed else max(0.0, (1.0 - tokens) / rate))

    def _sweep(self, now: float) -> None:
        """Drop the least recently used buckets that are full by now (a few
        per call), and any beyond `max_buckets`."""
        for _ in range(_SWEEP):
            key, (_level, at, full_at) = next(iter(self._buckets.items()))
            if at <= now and full_at <= now + _SLACK_S:
                del self._buckets[key]
                if not self._buckets:
                    return
            else:
                break
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
