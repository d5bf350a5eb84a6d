"""Console sessions: a login exchanged for a cookie, with expiry and CSRF.

One job: keep the console's sessions in the admin process's memory — who
each belongs to, its CSRF token, its flash messages, when it expires — and
throttle failed logins per client address.

Public API:
    SessionStore(clock, idle, lifetime, max_sessions=10_000)
        .create(viewer) -> (cookie value, Session)
        .get(cookie value) -> Session | None     (touches it; None when expired)
        .drop(cookie value)
    Session     .viewer, .csrf, .flash(kind, text), .take_flashes()
    LoginThrottle(clock, failures=10, window=300)
        .blocked(addr) -> seconds to wait (0: not blocked), .failed(addr), .succeeded(addr)
    new_token() -> str      32 random bytes, URL-safe
    same(a, b) -> bool      constant-time comparison of two strings

Invariants:
- The store keeps SHA-256 of each cookie value, never the value: what a
  memory dump or a log of the store's keys shows cannot be replayed.
- A session ends after `idle` seconds without a request or `lifetime`
  seconds after login, whichever comes first; logout ends it at once. A
  restart ends every session (they live in memory only).
- At most `max_sessions`: a new login evicts the least recently used.
- The CSRF token is per session, random, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from mta.console.backend import Viewer
from mta.core import Clock

__all__ = ["SessionStore", "Session", "LoginThrottle", "new_token", "same"]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings (any characters)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def _key(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    viewer: Viewer
    csrf: str
    created: float
    seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)
    key_checked: float = 0.0          # when a tenant session's key was last found live

    def flash(self, kind: str, text: str) -> None:
        """A one-line notice ("ok" or "error") shown on the next page."""
        self.flashes = [*self.flashes[-4:], (kind, text)]

    def take_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out


class SessionStore:
    def __init__(self, clock: Clock, idle: float, lifetime: float, max_sessions: int = 10_000):
        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, viewer: Viewer) -> tuple[str, Session]:
        now = self.clock.now()
        cookie = new_token()
        session = Session(viewer=viewer, csrf=new_token(), created=now, seen=now)
        self._sessions[_key(cookie)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 200:
            return None
        key = _key(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.now()
        if now - session.seen > self.idle or now - session.created > self.lifetime \
                or now < session.created:
            del self._sessions[key]
            return None
        session.seen = now
        self._sessions.move_to_end(key)
        return session

    def drop(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_key(cookie), None)


class LoginThrottle:
    """At most `failures` failed logins per client address in `window`
    seconds; after that, logins from it wait until the oldest failure ages
    out (a success clears its record). Bounded: at most 10,000 addresses."""

    def __init__(self, clock: Clock, failures: int = 10, window: float = 300.0):
        self.clock = clock
        self.failures = failures
        self.window = window
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, addr: str) -> deque[float]:
        now = self.clock.now()
        times = self._seen.get(addr) or deque()
        while times and (times[0] <= now - self.window or times[0] > now):
            times.popleft()
        return times

    def blocked(self, addr: str) -> float:
        times = self._recent(addr)
        if len(times) < self.failures:
            return 0.0
        return max(1.0, times[0] + self.window - self.clock.now())

    def failed(self, addr: str) -> None:
        times = self._recent(addr)
        times.append(self.clock.now())
        self._seen[addr] = times
        self._seen.move_to_end(addr)
        while len(self._seen) > 10_000:
            self._seen.popitem(last=False)

    def succeeded(self, addr: str) -> None:
        self._seen.pop(addr, None)
