"""AUTH brute-force throttles shared by every node, on Redis (issue 19).

One job: count failed AUTH attempts per client address (policy.authlimit
`throttle_key`) and per user name across the whole cluster, so a guesser
failing on node A and then on node B is throttled by the sum; with the same
rules as the single node's throttles (policy/authlimit.py): checks in
flight count against the budget, `max_failures` failures inside `lockout`
seconds lock the key for `lockout` seconds from the last one, failures
while locked are ignored, a success forgets the address's failures (not
the user's), a user's recently good addresses are not stopped by the
user's lockout, the reply delay grows with the failures.

API
    AuthLimits(ip_max, user_max, lockout, delay_step, max_delay)   None: no limit
    SharedTurns(local, rds, *, listener, limits, valid_user, clock, up, down)
        an AuthTurns (server/seams.py): locked, ip_begin, user_begin,
        ip_end, user_end, failure; `.throttle` / `.user_throttle` are the
        local ones (a reload reconfigures them). `local` answers whenever
        Redis is down (`up()` False, or a call fails: `down(exc)` is told).
    KEY_PREFIX

Redis keys (each expires on its own; nothing is ever decremented):
    mta:auth:{ip|user}:{listener}:{who}:f   sorted set of failures (score = time),
                                            expires `lockout` after the last one
    …:r    checks in flight: leases (score = expiry, LEASE s), so a node that
           dies mid-check frees its share of the budget by itself
    …:l    the lockout (SET NX PX lockout: a lock is never stretched)
    mta:auth:good:{listener}:{user}         hash address -> last good login

Invariants: a check begun on Redis ends on Redis and one begun locally ends
locally (per key, counted); while Redis answers it alone decides, and the
local throttle only keeps this node's own failures (and successes), so a
node that loses Redis still knows its own.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from mta.policy.authlimit import FREE, GO, LOCKED, AuthThrottle

__all__ = ["AuthLimits", "KEY_PREFIX", "LEASE", "SharedTurns"]

KEY_PREFIX = "mta:auth:"
LEASE = 30.0          # a check in flight holds its place this long at most
TURN_WAIT = 30.0      # longest wait for a turn (server/authcheck.py AUTH_WAIT)
POLL = 0.1            # how often a waiting check asks again
T = TypeVar("T")

# KEYS: failures, running, lock. ARGV: now, cutoff, max, lease expiry, lease ms, member.
# -> {verdict (-1 locked, 0 wait, 1 go), failures in the window}
_BEGIN = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local f = redis.call('ZCARD', KEYS[1])
if f + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {0, f} end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, f}
"""
# KEYS: failures, running, lock. ARGV: member, ok, now, cutoff, max, lockout ms, forget.
# -> 1 when the key is locked now
_END = """
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  if ARGV[7] == '1' then redis.call('DEL', KEYS[1], KEYS[3]) end
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[6], 'NX')
  return 1
end
return 0
"""
# KEYS: good. ARGV: address, now, ttl ms, most. Keeps the `most` latest.
_GOOD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[4]) then
  local all = redis.call('HGETALL', KEYS[1])
  local oldest, at = nil, nil
  for i = 1, #all, 2 do
    local t = tonumber(all[i + 1])
    if at == nil or t < at then oldest, at = all[i], t end
  end
  redis.call('HDEL', KEYS[1], oldest)
end
return n
"""
GOOD_IPS = 16

# What makes a Redis call fail as "use the local throttle" (never a refusal).
_DOWN: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError,
                                          asyncio.TimeoutError)


@dataclass(frozen=True)
class AuthLimits:
    ip_max: int | None          # None: no per-address throttle
    user_max: int | None        # None: no per-user throttle
    lockout: float
    delay_step: float = 1.0
    max_delay: float = 5.0


class LocalTurns(Protocol):
    """server.authcheck.AuthTurns as this module uses it."""
    throttle: Any
    user_throttle: Any

    async def locked(self, key: str) -> bool: ...
    async def ip_begin(self, key: str) -> tuple[str, float] | None: ...
    async def user_begin(self, name: str, key: str) -> str | None: ...
    async def ip_end(self, key: str, ok: bool) -> None: ...
    async def user_end(self, name: str, key: str, verdict: str | None, ok: bool) -> None: ...
    async def failure(self, key: str) -> None: ...


class SharedTurns:
    def __init__(self, local: LocalTurns, rds: aioredis.Redis, *, listener: str,
                 limits: Callable[[], AuthLimits], valid_user: Callable[[str], bool],
                 clock: Callable[[], float], up: Callable[[], bool],
                 down: Callable[[BaseException], None]):
        self.local, self.rds, self.listener = local, rds, listener
        self.limits, self.valid_user, self.clock = limits, valid_user, clock
        self.up, self.down = up, down
        self._begin = rds.register_script(_BEGIN)
        self._end = rds.register_script(_END)
        self._good = rds.register_script(_GOOD)
        # checks begun and not ended: ("ip"|"user", who, verdict) -> where each
        # began: "" locally, else on Redis (its lease's member, or "-": none)
        self._begun: defaultdict[tuple[str, str, str], list[str]] = defaultdict(list)

    # The local throttles, for SubmissionHandler.reconfigure (a reload).
    @property
    def throttle(self) -> Any:
        return self.local.throttle

    @property
    def user_throttle(self) -> Any:
        return self.local.user_throttle

    def _keys(self, kind: str, who: str) -> list[str]:
        base = f"{KEY_PREFIX}{kind}:{self.listener}:{who}:"
        return [base + "f", base + "r", base + "l"]

    async def _redis(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The call's answer, None when Redis is down (the local throttle
        answers then)."""
        if not self.up():
            return None
        try:
            return await call()
        except _DOWN as exc:
            self.down(exc)
            return None

    # -- the AuthTurns seam ---------------------------------------------------------

    async def locked(self, key: str) -> bool:
        if self.limits().ip_max is None:
            return await self.local.locked(key)
        got = await self._redis(lambda: self.rds.exists(self._keys("ip", key)[2]))
        return bool(got) if got is not None else await self.local.locked(key)

    async def ip_begin(self, key: str) -> tuple[str, float] | None:
        lim = self.limits()
        got = None
        if lim.ip_max is not None and self.up():
            got = await self._turn("ip", key, lim.ip_max, lim)
        if got is None:                 # no limit, or Redis is down: the local throttle
            began = await self.local.ip_begin(key)
            if began is not None and began[0] == GO:
                self._begun[("ip", key, GO)].append("")
            return began
        verdict, failures, member = got
        if verdict == GO:
            self._begun[("ip", key, GO)].append(member)
        extra = failures - AuthThrottle.FREE_FAILURES
        delay = 0.0 if extra <= 0 else min(extra * lim.delay_step, lim.max_delay)
        return verdict, delay

    async def user_begin(self, name: str, key: str) -> str | None:
        lim = self.limits()
        got = None
        if lim.user_max is not None and self.valid_user(name) and self.up():
            got = await self._turn("user", name, lim.user_max, lim, good=key)
        if got is None:
            verdict = await self.local.user_begin(name, key)
            if verdict in (GO, FREE):
                self._begun[("user", name, str(verdict))].append("")
            return verdict
        if got[0] in (GO, FREE):
            self._begun[("user", name, got[0])].append(got[2])
        return got[0]

    async def ip_end(self, key: str, ok: bool) -> None:
        member = self._pop(("ip", key, GO))
        if not member:
            await self.local.ip_end(key, ok)
            return
        await self._finish("ip", key, member, ok, self.limits().ip_max, forget=True)
        if ok and self.local.throttle is not None:
            self.local.throttle.success(key)
        elif not ok:
            await self.local.failure(key)      # the local throttle's own history

    async def user_end(self, name: str, key: str, verdict: str | None, ok: bool) -> None:
        if verdict not in (GO, FREE):
            return
        member = self._pop(("user", name, str(verdict)))
        if not member:
            await self.local.user_end(name, key, verdict, ok)
            return
        lim = self.limits()
        if verdict == GO:
            await self._finish("user", name, member, ok, lim.user_max, forget=False)
        if ok:
            keep = max(30 * lim.lockout, 86400.0)
            await self._redis(lambda: self._good(
                keys=[self._good_key(name)],
                args=[key, repr(self.clock()), int(keep * 1000), GOOD_IPS]))

    async def failure(self, key: str) -> None:
        await self.local.failure(key)
        lim = self.limits()
        if lim.ip_max is not None:
            await self._finish("ip", key, uuid.uuid4().hex, False, lim.ip_max, forget=True)

    # -- Redis ----------------------------------------------------------------------

    def _good_key(self, name: str) -> str:
        return f"{KEY_PREFIX}good:{self.listener}:{name}"

    def _pop(self, slot: tuple[str, str, str]) -> str | None:
        members = self._begun.get(slot)
        if not members:
            return None
        member = members.pop()
        if not members:
            del self._begun[slot]
        return member

    async def _turn(self, kind: str, who: str, most: int, lim: AuthLimits,
                    good: str | None = None) -> tuple[str, int, str] | None:
        """(GO | LOCKED | FREE, failures, the lease's member or "-") once a
        turn comes (WAIT: ask again every POLL s, at most TURN_WAIT s); None
        when Redis is down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TURN_WAIT
        while True:
            member = uuid.uuid4().hex
            got = await self._redis(functools.partial(self._try, kind, who, most, lim, member))
            if got is None:
                return None
            code, failures = int(got[0]), int(got[1])
            if code == 1:
                return GO, failures, member
            if good is not None and await self._known(who, good, lim):
                return FREE, failures, "-"
            if code == -1 or loop.time() >= deadline:
                return LOCKED, failures, "-"
            await asyncio.sleep(POLL)

    def _try(self, kind: str, who: str, most: int, lim: AuthLimits,
             member: str) -> Awaitable[Any]:
        now = self.clock()
        return self._begin(keys=self._keys(kind, who),
                           args=[repr(now), repr(now - lim.lockout), most, repr(now + LEASE),
                                 int(LEASE * 1000), member])

    async def _known(self, name: str, key: str, lim: AuthLimits) -> bool:
        """`key` logged in as `name` recently (on any node)."""
        got = await self._redis(lambda: self.rds.hget(self._good_key(name), key))
        if got is None:
            return False
        seen = float(got)
        return self.clock() - seen < max(30 * lim.lockout, 86400.0)

    async def _finish(self, kind: str, who: str, member: str, ok: bool, most: int | None,
                      *, forget: bool) -> None:
        if most is None:
            return
        lim = self.limits()
        now = self.clock()
        await self._redis(lambda: self._end(
            keys=self._keys(kind, who),
            args=[member, "1" if ok else "0", repr(now), repr(now - lim.lockout), most,
                  max(1, int(lim.lockout * 1000)), "1" if forget else "0"]))
