"""Limits several nodes share on Redis (issue 19): tenant quotas and
connection leases.

One job: keep, in Redis, the state that makes a limit hold for the cluster
as a whole rather than per node — a tenant's hourly/daily counts and its
send-rate GCRA, and the connections open to a site or a provider — each
decision made atomically by one Lua script (registered once per client).

API
    SharedQuota(redis, prefix="mta:")
        await .admit(tenant, limits, n, now) -> QuotaVerdict
                                    the semantics of policy.quota.QuotaState
                                    .admit (all or nothing; fixed UTC hour
                                    and day windows; the GCRA rate), counted
                                    for every node together
        await .admit_counts(tenant, limits, n, now) -> (verdict, hour, day)
                                    the same, with the counts after it
        await .used(tenant, now) -> (hour_count, day_count)
    Leases(redis, prefix="mta:")
        await .acquire(key, limit, holder, ttl, now) -> lease_id | None
                                    None: `limit` unexpired leases are held
        await .renew(key, lease_id, ttl, now) -> bool   False: it is gone
        await .release(key, lease_id)
        await .holders(key, now) -> int   unexpired leases held now
    Both raise what redis.asyncio raises when Redis is unreachable (the
    runtime decides what that means: runtime/cluster_limits.py).

Keys (under `prefix`)
    quota:{tenant}:h:{hour_start}   INCRBY count, EXPIRE past the hour's end
    quota:{tenant}:d:{day_start}    the same for the UTC day
    quota:{tenant}:tat              the GCRA's theoretical arrival time
                                    (a float written with 17 digits),
                                    expiring once it lies in the past
    lease:{key}                     a ZSET: member = lease id, score = the
                                    lease's expiry (POSIX seconds)

Rules:
  * Time is the caller's `now` (the daemon's Clock seam), never Redis's
    TIME: decisions are reproducible in tests, and nodes' clocks are kept by
    NTP. A node whose clock is s seconds off sees leases expire s seconds
    early or late (a lease lives TTL, renewed every TTL/3: a skew below
    2·TTL/3 never lets a lease lapse while its holder renews it) and counts
    against the window its own clock is in; a window's key outlives its end
    by GRACE seconds, so a node slightly behind still sees the counts of the
    window it thinks it is in rather than a fresh one.
  * A refusal consumes nothing; an admission consumes from every limit, in
    the one script (no other client sees a partial admission).
  * Leases expire on their own: a node that dies holds its slots at most
    TTL seconds longer; nothing ever has to be decremented. A lease whose
    expiry passed but that nobody has purged yet still counts and may be
    renewed (no grant was made against its slot in between).
  * Redis key expiry (real time) only reclaims memory: the scripts decide
    from the scores and window names, never from a key's absence alone.

Invariants: a tenant costs three small keys; a lease key holds at most
`limit` members plus those expired since its last acquire.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from mta.policy.quota import DAY, HOUR, QuotaLimits, QuotaVerdict, refusal

__all__ = ["GRACE", "Leases", "SharedQuota"]

GRACE = 120        # seconds a window's key outlives the window's end

_ORDER = ("per_day", "per_hour", "rate")

# KEYS: hour, day, tat. ARGV: n, now, per_hour (-1: none), per_day (-1),
# interval T (0: no rate), burst, hour ttl, day ttl (seconds).
# Returns {admitted, hour_count, day_count, rate_wait, rate_slots} counted
# before this call; rate_wait is a string (Redis turns Lua numbers into
# integers), -1 when n is more than the burst.
_QUOTA_LUA = """
local n, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local per_hour, per_day = tonumber(ARGV[3]), tonumber(ARGV[4])
local T, burst = tonumber(ARGV[5]), tonumber(ARGV[6])
local hc = tonumber(redis.call('GET', KEYS[1]) or '0')
local dc = tonumber(redis.call('GET', KEYS[2]) or '0')
local ok = true
if per_hour >= 0 and hc + n > per_hour then ok = false end
if per_day >= 0 and dc + n > per_day then ok = false end
local wait, slots, tat = 0, 0, nil
if T > 0 then
  local raw = redis.call('GET', KEYS[3])
  if raw then tat = tonumber(raw) end
  local base = math.abs(now)
  if tat then base = math.max(base, math.abs(tat)) end
  local _, e = math.frexp(base)
  local slack = math.max(1e-9, 4 * 2 ^ (e - 53))
  local start = now
  if tat and tat > now then start = tat end
  local function raw_wait(k) return start + k * T - burst * T - now end
  local ahead = 0
  if tat and tat > now then ahead = tat - now end
  local k = math.floor(burst - (ahead - slack) / T)
  if k > burst then k = burst end
  if k < 0 then k = 0 end
  while k < burst and raw_wait(k + 1) <= slack do k = k + 1 end
  while k > 0 and raw_wait(k) > slack do k = k - 1 end
  slots = burst - k
  if n > burst then
    wait, ok = -1, false
  else
    wait = raw_wait(n)
    if wait <= slack then wait = 0 else ok = false end
  end
  if ok then
    redis.call('SET', KEYS[3], string.format('%.17g', start + n * T),
               'EX', math.max(1, math.ceil(start + n * T - now) + 1))
  end
end
if ok then
  redis.call('INCRBY', KEYS[1], n)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
  redis.call('INCRBY', KEYS[2], n)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8]))
end
return {ok and 1 or 0, hc, dc, string.format('%.17g', wait), slots}
"""

# KEYS: the lease ZSET. ARGV: now, limit, lease id, expiry, key ttl (ms).
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
"""

# KEYS: the lease ZSET. ARGV: lease id, expiry, key ttl (ms).
_RENEW_LUA = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


def _num(x: float) -> str:
    """A float as Lua's tonumber reads it back exactly."""
    return repr(float(x))


def _interval(rate: float) -> float:
    """T, seconds per message, exactly as QuotaState's RateSpec makes it."""
    if float(rate).is_integer():
        return 1.0 / int(rate)
    return 1.0 / rate


class SharedQuota:
    def __init__(self, redis: Any, prefix: str = "mta:"):
        self.redis, self.prefix = redis, prefix
        self._admit = redis.register_script(_QUOTA_LUA)

    def _keys(self, tenant: str, now: float) -> list[str]:
        hour = math.floor(now / HOUR) * HOUR
        day = math.floor(now / DAY) * DAY
        base = f"{self.prefix}quota:{tenant}:"
        return [f"{base}h:{hour}", f"{base}d:{day}", f"{base}tat"]

    async def admit(self, tenant: str, limits: QuotaLimits, n: int, now: float) -> QuotaVerdict:
        return (await self.admit_counts(tenant, limits, n, now))[0]

    async def admit_counts(self, tenant: str, limits: QuotaLimits, n: int,
                           now: float) -> tuple[QuotaVerdict, int, int]:
        """admit, with the hour's and the day's counts after it."""
        if n < 1:
            raise ValueError(f"n: must be >= 1 (got {n})")
        keys = self._keys(tenant, now)
        hour = math.floor(now / HOUR) * HOUR
        day = math.floor(now / DAY) * DAY
        burst = limits.burst_size or 0
        args = [n, _num(now), -1 if limits.per_hour is None else limits.per_hour,
                -1 if limits.per_day is None else limits.per_day,
                _num(_interval(limits.rate)) if limits.rate is not None else "0", burst,
                max(1, math.ceil(hour + HOUR - now)) + GRACE,
                max(1, math.ceil(day + DAY - now)) + GRACE]
        admitted, hc, dc, wait, slots = await self._admit(keys=keys, args=args)
        hc, dc = int(hc), int(dc)
        if int(admitted):
            return QuotaVerdict(True), hc + n, dc + n
        return _verdict(limits, n, now, hc, dc, float(wait), int(slots)), hc, dc

    async def used(self, tenant: str, now: float) -> tuple[int, int]:
        hour, day, _ = self._keys(tenant, now)
        h, d = await self.redis.mget([hour, day])
        return int(h or 0), int(d or 0)


def _verdict(limits: QuotaLimits, n: int, now: float, hour_count: int, day_count: int,
             rate_wait: float, rate_slots: int) -> QuotaVerdict:
    """The refusal QuotaState.admit would give from the same state (the
    script said no): policy.quota.refusal over the cluster's counts."""
    hour = (math.floor(now / HOUR) * HOUR, hour_count)
    day = (math.floor(now / DAY) * DAY, day_count)
    refused = refusal(limits, n, now, hour, day, rate_wait, rate_slots)
    if refused is not None:
        return refused
    # The script refused on a float edge the arithmetic here does not see:
    # the rate's smallest wait (never an admission nothing counted).
    return QuotaVerdict(False, "rate", 1e-6, used=rate_slots, allowed=limits.burst_size or 0,
                        rate=float(limits.rate or 0.0))


class Leases:
    def __init__(self, redis: Any, prefix: str = "mta:"):
        self.redis, self.prefix = redis, prefix
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._renew = redis.register_script(_RENEW_LUA)

    def _key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    async def acquire(self, key: str, limit: int, holder: str, ttl: float,
                      now: float) -> str | None:
        """A new lease on one of `limit` slots of `key`, expiring at now +
        ttl unless renewed; None when every slot is held."""
        if limit < 1 or ttl <= 0:
            raise ValueError(f"limit and ttl must be > 0 (got {limit}, {ttl})")
        lease = f"{holder}:{uuid.uuid4().hex[:16]}"
        got = await self._acquire(keys=[self._key(key)], args=[
            _num(now), limit, lease, _num(now + ttl), math.ceil(ttl * 1000)])
        return lease if int(got) else None

    async def renew(self, key: str, lease_id: str, ttl: float, now: float) -> bool:
        got = await self._renew(keys=[self._key(key)], args=[
            lease_id, _num(now + ttl), math.ceil(ttl * 1000)])
        return bool(int(got))

    async def release(self, key: str, lease_id: str) -> None:
        await self.redis.zrem(self._key(key), lease_id)

    async def holders(self, key: str, now: float) -> int:
        return int(await self.redis.zcount(self._key(key), f"({_num(now)}", "+inf"))
