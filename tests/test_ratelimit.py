"""The per-key rate limiter of the HTTP API (issue 13): token bucket
sequences driven by a fake clock, the headers' values, and its memory bound."""

from __future__ import annotations

import math
import random

import pytest

from mta.api.ratelimit import MAX_BUCKETS, Decision, RateLimiter
from mta.core.clock import FakeClock

T0 = 1_700_000_000.0

# (advance the clock by, allowed, ratelimit-remaining, ratelimit-reset, retry-after or None)
CASES = {
    "2/s, burst = rate": (2.0, None, [
        (0, True, 1, 1, None),
        (0, True, 0, 1, None),
        (0, False, 0, 1, 1),
        (0.5, True, 0, 1, None),          # half a second is one token
        (0.25, False, 0, 1, 1),           # half a token: retry in 0.25 s → 1
        (0.25, True, 0, 1, None),
        (10, True, 1, 1, None),           # long idle: full again, never more than 2
        (0, True, 0, 1, None),
        (0, False, 0, 1, 1),
    ]),
    "one per 2 s": (0.5, None, [
        (0, True, 0, 2, None),
        (0, False, 0, 2, 2),
        (1.5, False, 0, 1, 1),            # 0.75 token: 0.5 s to go, rounded up
        (0.5, True, 0, 2, None),
    ]),
    "1/s with a burst of 5": (1.0, 5.0, [
        (0, True, 4, 1, None),
        (0, True, 3, 2, None),
        (0, True, 2, 3, None),
        (0, True, 1, 4, None),
        (0, True, 0, 5, None),
        (0, False, 0, 5, 1),
        (2.5, True, 1, 4, None),          # 2.5 tokens, one taken
        (0, True, 0, 5, None),            # 0.5 left: 4.5 s to full → 5
        (0, False, 0, 5, 1),
    ]),
    "3/s: a third of a second is a whole token": (3.0, None, [
        (0, True, 2, 1, None), (0, True, 1, 1, None), (0, True, 0, 1, None),
        (0, False, 0, 1, 1),
        (1 / 3, True, 0, 1, None),
        (1 / 3, True, 0, 1, None),
    ]),
    "a fractional burst is at least one request": (0.1, 0.5, [
        (0, True, 0, 10, None),
        (0, False, 0, 10, 10),
        (9.9, False, 0, 1, 1),
        (0.1, True, 0, 10, None),
    ]),
    "fractional rate and burst": (2.5, None, [
        (0, True, 1, 1, None),            # capacity 2.5 → limit 2
        (0, True, 0, 1, None),            # 0.5 left, 0.8 s to full
        (0, False, 0, 1, 1),
        (0.2, True, 0, 1, None),          # 0.5 + 0.5 = 1
    ]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sequences(name):
    rate, burst, steps = CASES[name]
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    limit = math.floor(max(1.0, rate if burst is None else burst))
    for i, (advance, allowed, remaining, reset, retry) in enumerate(steps):
        clock.advance(advance)
        d = limiter.take("key", rate, burst)
        h = d.headers()
        want = {"ratelimit-limit": str(limit), "ratelimit-remaining": str(remaining),
                "ratelimit-reset": str(reset)}
        if retry is not None:
            want["retry-after"] = str(retry)
        assert (d.allowed, h) == (allowed, want), f"step {i}: {d}"
        assert d.limit == limit and d.remaining == remaining
        assert (d.retry_after == 0) == allowed


def test_decision_values_are_exact_seconds():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    limiter.take("k", 4.0, 2.0)
    d = limiter.take("k", 4.0, 2.0)
    assert d == Decision(allowed=True, limit=2, remaining=0, reset=0.5, retry_after=0.0)
    d = limiter.take("k", 4.0, 2.0)
    assert not d.allowed and d.retry_after == 0.25 and d.reset == 0.5
    clock.advance(0.125)
    d = limiter.take("k", 4.0, 2.0)
    assert not d.allowed and d.retry_after == pytest.approx(0.125) and d.reset == \
        pytest.approx(0.375)


def test_headers_when_full_and_huge_limits():
    assert Decision(True, 10, 10, 0.0, 0.0).headers() == {
        "ratelimit-limit": "10", "ratelimit-remaining": "10", "ratelimit-reset": "0"}
    h = Decision(False, 1, 0, 0.001, 0.001).headers()
    assert h["retry-after"] == "1" and h["ratelimit-reset"] == "1"   # never "0" when refused
    clock = FakeClock(T0)
    d = RateLimiter(clock).take("k", 1000.0)
    assert d.allowed and d.limit == 1000 and d.remaining == 999
    assert d.headers()["ratelimit-reset"] == "1"


def test_keys_have_their_own_buckets():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    assert limiter.take("a", 1.0).allowed and not limiter.take("a", 1.0).allowed
    assert limiter.take("b", 1.0).allowed
    assert not limiter.take("a", 1.0).allowed


def test_a_refusal_takes_nothing():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    limiter.take("k", 1.0)
    for _ in range(50):                      # hammering while refused...
        clock.advance(0.01)
        assert not limiter.take("k", 1.0).allowed
    clock.advance(0.5)                       # ...does not push the next token further away
    assert limiter.take("k", 1.0).allowed


def test_clock_stepping_back_neither_refills_nor_blocks():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    assert limiter.take("k", 1.0).allowed
    clock.set(T0 - 3600)                     # wall clock stepped back an hour
    assert not limiter.take("k", 1.0).allowed
    clock.advance(1.0)                       # one second later by the new clock
    assert limiter.take("k", 1.0).allowed
    clock.set(T0 + 10_000)                   # and forward: just full, no more
    d = limiter.take("k", 1.0, 3.0)
    assert d.allowed and d.remaining == 2


def test_a_changed_rate_applies_from_that_call():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    assert limiter.take("k", 1.0).allowed
    assert not limiter.take("k", 10.0, 10.0).allowed     # the bucket is still empty
    clock.advance(0.1)
    assert limiter.take("k", 10.0, 10.0).allowed          # refills at the new rate
    clock.advance(100)
    d = limiter.take("k", 1.0, 1.0)                       # capacity shrinks: clamped
    assert d.allowed and d.remaining == 0


@pytest.mark.parametrize("rate,burst", [(0, None), (-1, None), (math.nan, None),
                                        (math.inf, None), (1.0, 0), (1.0, -1),
                                        (1.0, math.inf), (1.0, math.nan)])
def test_bad_rates_are_refused(rate, burst):
    with pytest.raises(ValueError):
        RateLimiter(FakeClock()).take("k", rate, burst)


def test_full_buckets_are_dropped():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock)
    for n in range(1000):                    # each key once a second at 1/s: full again at once
        assert limiter.take(f"key{n}", 1.0).allowed
        clock.advance(1.0)
    assert len(limiter) <= 2
    for n in range(1000):                    # never full: all kept
        limiter.take(f"slow{n}", 0.001)
    assert 1000 <= len(limiter) <= 1002


def test_at_most_max_buckets():
    clock = FakeClock(T0)
    limiter = RateLimiter(clock, max_buckets=100)
    for n in range(1000):
        limiter.take(f"key{n}", 1.0)
    assert len(limiter) == 100
    assert not limiter.take("key999", 1.0).allowed       # the most recent are kept
    assert MAX_BUCKETS == 100_000
    big = RateLimiter(clock)
    for n in range(MAX_BUCKETS + 50):
        big.take(str(n), 1.0)
    assert len(big) == MAX_BUCKETS


class Reference:
    """The same token bucket without any eviction, for comparison."""

    def __init__(self):
        self.b = {}

    def take(self, key, rate, burst, now):
        cap = max(1.0, rate if burst is None else burst)
        tokens, at = self.b.get(key, (cap, now))
        tokens = min(cap, tokens + max(0.0, now - at) * rate)
        slack = min(1e-3, rate * 1e-6) + 1e-9
        ok = tokens >= 1 - slack
        if ok:
            tokens = max(0.0, tokens - 1)
        self.b[key] = (tokens, now)
        return ok, max(0, math.floor(tokens + slack))


@pytest.mark.parametrize("seed", range(5))
def test_dropping_full_buckets_never_changes_a_decision(seed):
    rnd = random.Random(seed)
    clock = FakeClock(T0)
    limiter, ref = RateLimiter(clock), Reference()
    rates = {f"k{i}": (rnd.choice([0.5, 1.0, 2.0, 7.0]), rnd.choice([None, 1.0, 3.0, 20.0]))
             for i in range(40)}
    allowed = refused = 0
    for _ in range(5000):
        clock.advance(rnd.choice([0, 0, 0.01, 0.1, 0.5, 2.0]))
        key = rnd.choice(list(rates))
        rate, burst = rates[key]
        d = limiter.take(key, rate, burst)
        assert (d.allowed, d.remaining) == ref.take(key, rate, burst, clock.now())
        allowed += d.allowed
        refused += not d.allowed
    assert allowed and refused and len(limiter) < 40
