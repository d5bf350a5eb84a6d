"""RetryPolicy: the whole default schedule and the short test schedule,
attempt by attempt, driven by a fake clock (docs/ARCHITECTURE.md §8 item 5)."""

import pytest

from mta.config.sections import DeliveryConfig
from mta.core.clock import FakeClock
from mta.policy.retry import RetryPolicy

M, H, D = 60.0, 3600.0, 86400.0
T0 = 1_700_000_000.0

# Attempt offsets from arrival if every attempt fails: 5m,10m,20m,40m,1h,2h
# then 4h repeating, with the final try exactly at the 5d deadline.
DEFAULT_OFFSETS = [
    0, 5 * M, 15 * M, 35 * M, 75 * M, 135 * M, 255 * M,   # 0, +5m, +10m, +20m, +40m, +1h, +2h
    8 * H + 15 * M,                                          # +4h
    *[8 * H + 15 * M + k * 4 * H for k in range(1, 28)],     # +4h … (27 more)
    5 * D,                                                   # cut short to the deadline
]


def run_until_expired(policy: RetryPolicy, clock: FakeClock) -> tuple[list[float], float]:
    """Fail every attempt at exactly its scheduled time; return attempt offsets
    and the offset at which the recipient expired."""
    received = clock.now()
    attempts, failures = [], 0
    while True:
        attempts.append(clock.now() - received)
        failures += 1
        nxt = policy.after_temp_failure(received, failures, clock.now())
        if nxt is None:
            assert policy.is_expired(received, clock.now())
            return attempts, clock.now() - received
        assert not policy.is_expired(received, clock.now())
        assert nxt > clock.now()
        clock.set(nxt)


def test_default_config_schedule():
    p = RetryPolicy.from_config(DeliveryConfig())
    assert p.schedule == (300.0, 600.0, 1200.0, 2400.0, 3600.0, 7200.0, 14400.0)
    assert p.max_lifetime == 5 * D
    assert str(p) == "5m,10m,20m,40m,1h,2h,4h (last repeats), expire after 5d"


def test_default_schedule_attempt_by_attempt():
    p = RetryPolicy.from_config(DeliveryConfig())
    clock = FakeClock(T0)
    attempts, expired_at = run_until_expired(p, clock)
    assert attempts == DEFAULT_OFFSETS
    assert len(attempts) == 36
    assert attempts[-2] == 4 * D + 20 * H + 15 * M        # 418500 s: last full 4h step
    assert expired_at == 5 * D == 432000.0
    assert p.expires_at(T0) == T0 + 432000.0
    assert p.schedule_times(T0) == [T0 + o for o in DEFAULT_OFFSETS]


def test_short_schedule_attempt_by_attempt():
    p = RetryPolicy.parse("1s,2s,3s", "60s")
    assert p == RetryPolicy((1.0, 2.0, 3.0), 60.0)
    attempts, expired_at = run_until_expired(p, FakeClock(T0))
    assert attempts == [0, 1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42,
                        45, 48, 51, 54, 57, 60]
    assert expired_at == 60.0
    assert p.schedule_times(0.0) == [float(a) for a in attempts]


def test_delay_after_last_repeats():
    p = RetryPolicy((1.0, 2.0, 3.0), 60.0)
    assert [p.delay_after(n) for n in range(1, 7)] == [1, 2, 3, 3, 3, 3]
    with pytest.raises(ValueError):
        p.delay_after(0)


def test_late_attempt_is_cut_to_deadline_then_expires():
    p = RetryPolicy((10.0,), 60.0)
    # a slow attempt failing at 55s: next try at the deadline, not at 65s
    assert p.after_temp_failure(0.0, 3, 55.0) == 60.0
    assert p.after_temp_failure(0.0, 3, 50.0) == 60.0        # exactly at the deadline
    assert p.after_temp_failure(0.0, 4, 60.0) is None
    assert p.after_temp_failure(0.0, 4, 75.0) is None        # failed after the deadline
    assert not p.is_expired(0.0, 59.999)
    assert p.is_expired(0.0, 60.0)


@pytest.mark.parametrize("schedule,lifetime", [((), 10.0), ((0.0,), 10.0), ((1.0,), 0.0)])
def test_rejects_nonsense(schedule, lifetime):
    with pytest.raises(ValueError):
        RetryPolicy(schedule, lifetime)
