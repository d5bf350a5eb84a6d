import pytest

from mta.policy.authlimit import AuthThrottle

IP, OTHER = "192.0.2.1", "192.0.2.2"


def test_delay_grows_after_two_free_failures_and_caps():
    t = AuthThrottle(max_failures=100, lockout=300, delay_step=1.0, max_delay=5.0)
    delays = []
    for i in range(9):
        delays.append(t.check(IP, float(i)))
        t.failure(IP, float(i))
    assert delays == [0, 0, 0, 1, 2, 3, 4, 5, 5]
    assert t.check(OTHER, 9.0) == 0


def test_lockout_after_max_failures_then_released():
    t = AuthThrottle(max_failures=5, lockout=300)
    for i in range(4):
        t.failure(IP, 100.0 + i)
    assert t.check(IP, 104.0) == 2.0
    t.failure(IP, 104.0)                       # 5th failure inside the window
    assert t.check(IP, 104.0) is None
    assert t.check(IP, 403.9) is None
    assert t.check(OTHER, 200.0) == 0
    t.failure(IP, 300.0)                       # ignored while locked: no extension
    assert t.check(IP, 404.0) == 0             # lock over, slate clean
    assert t.tracked() == 0


def test_old_failures_are_forgotten():
    t = AuthThrottle(max_failures=4, lockout=60)
    t.failure(IP, 0.0)
    t.failure(IP, 10.0)
    t.failure(IP, 61.0)                        # the one at 0 is out of the window
    assert t.check(IP, 61.0) == 0
    t.failure(IP, 69.0)                        # 10, 61, 69
    assert t.check(IP, 69.0) == 1.0
    assert t.check(IP, 71.0) == 0              # 10 forgotten: 61, 69
    t.failure(IP, 72.0)
    t.failure(IP, 73.0)                        # 61, 69, 72, 73 within 60s → locked
    assert t.check(IP, 73.0) is None


def test_success_clears():
    t = AuthThrottle(max_failures=3, lockout=60)
    t.failure(IP, 0.0)
    t.failure(IP, 1.0)
    t.success(IP)
    t.failure(IP, 2.0)
    t.failure(IP, 3.0)
    assert t.check(IP, 3.0) == 0


def test_memory_bounded_drops_least_recent():
    t = AuthThrottle(max_failures=3, lockout=60, max_ips=100)
    for i in range(1000):
        t.failure(f"10.0.{i // 256}.{i % 256}", 1.0)
    assert t.tracked() == 100
    t.failure("10.0.3.231", 2.0)               # the newest (i=999) is still there
    t.failure("10.0.3.231", 2.0)
    assert t.check("10.0.3.231", 2.0) is None
    assert t.check("10.0.0.0", 2.0) == 0       # the oldest was dropped


def test_per_ip_memory_bounded():
    t = AuthThrottle(max_failures=5, lockout=1000)
    for i in range(50):
        t.failure(IP, float(i))
    assert len(t._ips[IP].failures) <= 5


def test_bad_parameters():
    with pytest.raises(ValueError):
        AuthThrottle(max_failures=0, lockout=10)


def test_reconfigure_keeps_the_failures_counted_so_far():
    """A reload changes the limits in place: it must not hand a guesser a
    fresh budget, and a larger limit must really allow more failures."""
    t = AuthThrottle(max_failures=3, lockout=60)
    t.failure(IP, 0.0)
    t.failure(IP, 1.0)
    t.reconfigure(max_failures=5, lockout=120)
    for i in range(2):
        t.failure(IP, 2.0 + i)
    assert t.check(IP, 3.0) is not None            # 4 failures < 5
    t.failure(IP, 4.0)
    assert t.check(IP, 4.0) is None                # the 5th locks, for the new 120 s
    assert t.check(IP, 100.0) is None and t.check(IP, 125.0) == 0
    t2 = AuthThrottle(max_failures=5, lockout=60)
    for i in range(3):
        t2.failure(OTHER, float(i))
    t2.reconfigure(max_failures=2, lockout=60)
    t2.failure(OTHER, 3.0)                          # over the new limit: locked
    assert t2.check(OTHER, 3.0) is None
