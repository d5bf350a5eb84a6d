"""AUTH brute-force throttles. Pure: every call takes `now`.

Public API:
    throttle_key(ip) -> str           the key a client IP is counted under:
                                      IPv4 as is (IPv4-mapped IPv6 too),
                                      IPv6 by its /64 (one subscriber's prefix)
    AuthThrottle(max_failures, lockout, delay_step=1.0, max_delay=5.0, max_ips=100_000)
    .check(key, now) -> float | None  None: locked out, refuse AUTH now;
                                      else seconds to delay the next AUTH reply
    .begin(key, now) -> (verdict, delay)
                                      before a password check: verdict GO
                                      (check it, then call end()), WAIT (the
                                      checks already running could use up
                                      what is left of the budget: ask again
                                      when one ends) or LOCKED (refuse, no
                                      check); delay: seconds to hold the reply
    .end(key, now, ok)                the check begun is over: ok forgets the
                                      key's failures, else one more failure
    .failure(key, now)                record one failed AUTH (no password check
                                      made: a refused exchange)
    .success(key)                     forget the key's failures
    .tracked() -> int                 number of keys held in memory
    .reconfigure(max_failures, lockout)   new limits (config reload); the
                                      failures counted so far stay
    UserThrottle(max_failures, lockout, max_users=100_000, good_ips=16)
        the same counting per credential name across client IPs, plus the
        IPs that recently logged in as that user, which the user's lockout
        does not stop (so a guesser elsewhere cannot lock the owner out):
    .begin(user, ip_key, now) -> GO | WAIT | LOCKED | FREE (a known IP:
                                 checked without counting)
    .end(user, ip_key, now, ok, counted)   counted: begin said GO
    .tracked()

Rules:
  * Checks in flight count against the budget (`begin`): a check starts
    only while failures + checks running < max_failures, so the limit holds
    however many connections run in parallel — with max_failures = 5, at
    most 5 wrong passwords are checked per lockout window, whether they come
    one after another or all at once. Parallel logins with the right
    password (a connection pool starting) are not refused: past the budget
    they WAIT for the running checks, which succeed and free it.
  * Failures older than `lockout` seconds are forgotten (sliding window).
  * Delay: 0 while a key has at most 2 recent failures, then `delay_step`
    more per further failure, capped at `max_delay` (slows guessing without
    hurting a user who mistyped once or twice).
  * `max_failures` failures inside the window lock the key for `lockout`
    seconds from the last one. Failures reported while locked are ignored:
    the server refuses AUTH then, and an attacker must not be able to
    stretch a lockout it can see coming against a shared NAT address forever.

Invariants: memory is bounded — at most `max_ips` keys (the least recently
touched is dropped first) and at most `max_failures` timestamps per key;
UserThrottle holds at most `good_ips` addresses per user.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["AuthThrottle", "UserThrottle", "throttle_key", "GO", "WAIT", "LOCKED", "FREE"]

GO, WAIT, LOCKED, FREE = "go", "wait", "locked", "free"


def throttle_key(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass
class _State:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float | None = None
    running: int = 0          # checks begun and not ended


class AuthThrottle:
    FREE_FAILURES = 2   # failures answered without delay

    def __init__(self, max_failures: int, lockout: float, delay_step: float = 1.0,
                 max_delay: float = 5.0, max_ips: int = 100_000):
        if max_failures < 1 or lockout <= 0 or delay_step < 0 or max_delay < 0 or max_ips < 1:
            raise ValueError("AuthThrottle: bad parameters")
        self.max_failures = max_failures
        self.lockout = lockout
        self.delay_step = delay_step
        self.max_delay = max_delay
        self.max_ips = max_ips
        self._ips: OrderedDict[str, _State] = OrderedDict()

    def _state(self, key: str, now: float) -> _State | None:
        """The key's state with expired failures and locks removed (None: clean)."""
        st = self._ips.get(key)
        if st is None:
            return None
        if st.locked_until is not None and now >= st.locked_until:
            st.locked_until = None
            st.failures.clear()
        while st.failures and st.failures[0] <= now - self.lockout:
            st.failures.popleft()
        if st.locked_until is None and not st.failures and not st.running:
            del self._ips[key]
            return None
        return st

    def check(self, key: str, now: float) -> float | None:
        st = self._state(key, now)
        if st is None:
            return 0.0
        if st.locked_until is not None:
            return None
        extra = len(st.failures) - self.FREE_FAILURES
        return 0.0 if extra <= 0 else min(extra * self.delay_step, self.max_delay)

    def begin(self, key: str, now: float) -> tuple[str, float]:
        delay = self.check(key, now)
        if delay is None:
            return LOCKED, 0.0
        st = self._state(key, now)
        if st is None:
            st = self._new(key)
        if len(st.failures) + st.running >= self.max_failures:
            return WAIT, delay
        st.running += 1
        self._ips.move_to_end(key)
        return GO, delay

    def end(self, key: str, now: float, ok: bool) -> None:
        st = self._ips.get(key)
        if st is not None and st.running > 0:
            st.running -= 1
        if ok:
            if st is not None:
                st.failures.clear()
                st.locked_until = None
                self._state(key, now)     # drop it when nothing is left
        else:
            self.failure(key, now)

    def _new(self, key: str) -> _State:
        st = self._ips[key] = _State(deque(maxlen=self.max_failures))
        while len(self._ips) > self.max_ips:
            self._ips.popitem(last=False)
        return st

    def failure(self, key: str, now: float) -> None:
        st = self._state(key, now)
        if st is None:
            st = self._new(key)
        elif st.locked_until is not None:
            return
        self._ips.move_to_end(key)
        st.failures.append(now)
        if len(st.failures) >= self.max_failures:
            st.locked_until = now + self.lockout

    def success(self, key: str) -> None:
        self._ips.pop(key, None)

    def tracked(self) -> int:
        return len(self._ips)

    def reconfigure(self, max_failures: int, lockout: float) -> None:
        if max_failures < 1 or lockout <= 0:
            raise ValueError("AuthThrottle: bad parameters")
        if max_failures != self.max_failures:
            for st in self._ips.values():
                st.failures = deque(st.failures, maxlen=max_failures)
        self.max_failures, self.lockout = max_failures, lockout


class UserThrottle:
    def __init__(self, max_failures: int, lockout: float, max_users: int = 100_000,
                 good_ips: int = 16):
        self._counts = AuthThrottle(max_failures, lockout, delay_step=0, max_delay=0,
                                    max_ips=max_users)
        self.lockout = lockout
        self.max_users = max_users
        self.good_ips = good_ips
        # user -> {ip key: last successful login}; the most recent last
        self._good: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()

    def _known(self, user: str, ip_key: str, now: float) -> bool:
        ips = self._good.get(user)
        seen = ips.get(ip_key) if ips is not None else None
        # Remembered for 30 lockout windows (at least a day): long enough to
        # cover the owner's usual clients, short enough to age out.
        return seen is not None and now - seen < max(30 * self.lockout, 86400.0)

    def begin(self, user: str, ip_key: str, now: float) -> str:
        verdict, _ = self._counts.begin(user, now)
        if verdict != GO and self._known(user, ip_key, now):
            return FREE
        return verdict

    def end(self, user: str, ip_key: str, now: float, ok: bool, counted: bool) -> None:
        if counted:
            # A right password does not wipe the user's failures from
            # elsewhere: only its own check is taken back.
            st = self._counts._ips.get(user)
            if st is not None and st.running > 0:
                st.running -= 1
            if not ok:
                self._counts.failure(user, now)
        if ok:
            good = self._good.setdefault(user, OrderedDict())
            good[ip_key] = now
            good.move_to_end(ip_key)
            while len(good) > self.good_ips:
                good.popitem(last=False)
            self._good.move_to_end(user)
            while len(self._good) > self.max_users:
                self._good.popitem(last=False)

    def tracked(self) -> int:
        return self._counts.tracked()

    def reconfigure(self, max_failures: int, lockout: float) -> None:
        self._counts.reconfigure(max_failures, lockout)
        self.lockout = lockout
