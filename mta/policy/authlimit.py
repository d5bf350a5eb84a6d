"""AUTH brute-force throttle per client IP. Pure: every call takes `now`.

Public API:
    AuthThrottle(max_failures, lockout, delay_step=1.0, max_delay=5.0, max_ips=100_000)
    .check(ip, now) -> float | None   None: locked out, refuse AUTH now;
                                      else seconds to delay the next AUTH reply
    .failure(ip, now)                 record one failed AUTH
    .success(ip)                      forget the IP's failures
    .tracked() -> int                 number of IPs held in memory

Rules:
  * Failures older than `lockout` seconds are forgotten (sliding window).
  * Delay: 0 while an IP has at most 2 recent failures, then `delay_step`
    more per further failure, capped at `max_delay` (slows guessing without
    hurting a user who mistyped once or twice).
  * `max_failures` failures inside the window lock the IP for `lockout`
    seconds from the last one. Failures reported while locked are ignored:
    the server refuses AUTH then, and an attacker must not be able to
    stretch a lockout it can see coming against a shared NAT address forever.

Invariants: memory is bounded — at most `max_ips` IPs (the least recently
touched is dropped first) and at most `max_failures` timestamps per IP.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class _IpState:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float | None = None


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
        self._ips: OrderedDict[str, _IpState] = OrderedDict()

    def _state(self, ip: str, now: float) -> _IpState | None:
        """The IP's state with expired failures and locks removed (None: clean)."""
        st = self._ips.get(ip)
        if st is None:
            return None
        if st.locked_until is not None and now >= st.locked_until:
            st.locked_until = None
            st.failures.clear()
        while st.failures and st.failures[0] <= now - self.lockout:
            st.failures.popleft()
        if st.locked_until is None and not st.failures:
            del self._ips[ip]
            return None
        return st

    def check(self, ip: str, now: float) -> float | None:
        st = self._state(ip, now)
        if st is None:
            return 0.0
        if st.locked_until is not None:
            return None
        extra = len(st.failures) - self.FREE_FAILURES
        return 0.0 if extra <= 0 else min(extra * self.delay_step, self.max_delay)

    def failure(self, ip: str, now: float) -> None:
        st = self._state(ip, now)
        if st is None:
            st = self._ips[ip] = _IpState(deque(maxlen=self.max_failures))
            while len(self._ips) > self.max_ips:
                self._ips.popitem(last=False)
        elif st.locked_until is not None:
            return
        self._ips.move_to_end(ip)
        st.failures.append(now)
        if len(st.failures) >= self.max_failures:
            st.locked_until = now + self.lockout

    def success(self, ip: str) -> None:
        self._ips.pop(ip, None)

    def tracked(self) -> int:
        return len(self._ips)
