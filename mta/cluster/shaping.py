"""Traffic shaping state several nodes share on Redis (issue 19): message
and connection rates of sites and providers, automation-rule actions, and
warm-up usage per egress source.

One job: keep, in Redis, what makes the shaping table's rates, the rules'
actions and a source's warm-up budget hold for the cluster as a whole —
each decision one Lua script, time always the caller's `now`.

API
    SharedRates(redis, prefix="mta:")
        await .take([(key, RateSpec, n), …], now) -> float
                                    0.0: n admitted on every GCRA (consumed
                                    from all); else the seconds until all
                                    would admit (nothing consumed). n is
                                    capped at the rate's burst (the local
                                    scheduler never sizes a batch above it).
    SharedActions(redis, prefix="mta:")
        await .publish(fired, node, now) -> bool   False: Redis holds the same
                                    id until as late already
        await .lift(id, until, now) gone for every node (a tombstone until
                                    the lifted action's end, `until`)
        await .snapshot(now) -> (actions {id: Fired}, lifted {id: until},
                                 origin {id: node})
    fired_record(fired, node) -> dict / fired_from(record) -> Fired
                                    (ValueError/KeyError/TypeError: not one)
    reconcile(local, shared, lifted, now) -> Sync(adopt, lift, publish)
                                    pure: what a node does with a snapshot
    SharedWarmup(redis, prefix="mta:")
        await .take(source, day, n, share, floor_days, floor_used, ttl)
            -> (admitted, used, sending_days, day)
                                    admit n of `source`'s messages on UTC day
                                    `day` when used + n <= share (share < 0:
                                    no cap); the day's count and the sending
                                    days after it, for every node together

Keys (under `prefix`)
    rate:{key}                  a GCRA's theoretical arrival time (17
                                digits), expiring once it lies in the past
    shaping:action:{id}         JSON of the action (fired_record), TTL = its
                                remaining time
    shaping:actions             ZSET id -> until (the index a snapshot reads)
    shaping:lifted:{id}         the until of an action lifted early, TTL the
                                same; shaping:lifted is its index
    warmup:{source}:{day}       the day's count (INCRBY), TTL ~2 days
    warmup:{source}             HASH day, sent (0/1), days: the sending days
                                so far (as policy/warmup.py rolls them)

Rules:
  * Rates: the same GCRA as policy/gcra.py (T = period/count, the default
    burst, the same slack), all-or-nothing over the keys of one batch.
  * Actions: a key per action whose TTL is its end; a publish keeps the
    later end of two firings of one id and clears a tombstone older than
    it (a rule that fires again after a lift is a new action); a lift
    leaves a tombstone until the lifted action would have ended, so a node
    that polls after the lift still sees it (and no node re-publishes it).
  * Warm-up: the day's count lives in Redis; a node's own count (and
    sending days) are floors written in at each take, so a Redis that lost
    its data restarts from what the nodes know, never from zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mta.policy.automation import Fired, Rule, parse_action
from mta.policy.gcra import Gcra, RateSpec

__all__ = ["SharedActions", "SharedRates", "SharedWarmup", "Sync", "fired_from",
           "fired_record", "reconcile"]

# ARGV: now, then per key: T, burst, n. Returns {admitted, max wait (string)}.
_RATES_LUA = """
local now = tonumber(ARGV[1])
local starts, waits = {}, 0
for i, key in ipairs(KEYS) do
  local T = tonumber(ARGV[3 * i - 1])
  local burst, n = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local raw = redis.call('GET', key)
  local tat = raw and tonumber(raw) or nil
  local base = math.abs(now)
  if tat then base = math.max(base, math.abs(tat)) end
  local _, e = math.frexp(base)
  local slack = math.max(1e-9, 4 * 2 ^ (e - 53))
  local start = now
  if tat and tat > now then start = tat end
  local wait = start + n * T - burst * T - now
  if wait > slack and wait > waits then waits = wait end
  starts[i] = start + n * T
end
if waits > 0 then return {0, string.format('%.17g', waits)} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.17g', starts[i]),
             'EX', math.max(1, math.ceil(starts[i] - now) + 1))
end
return {1, '0'}
"""

# KEYS: action, actions index, tombstone, tombstones index.
# ARGV: id, until, now, json. Returns 1 when stored.
_PUBLISH_LUA = """
local id, untl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('ZSCORE', KEYS[2], id)
if cur and tonumber(cur) >= untl and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local gone = redis.call('ZSCORE', KEYS[4], id)
if gone and tonumber(gone) >= untl then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], id)
redis.call('SET', KEYS[1], ARGV[4], 'PX', math.max(1, math.ceil((untl - now) * 1000)))
redis.call('ZADD', KEYS[2], untl, id)
return 1
"""

# KEYS: as for publish. ARGV: id, until, now.
_LIFT_LUA = """
local id, untl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('ZSCORE', KEYS[2], id)
if cur and tonumber(cur) > untl then untl = tonumber(cur) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], id)
if untl <= now then return 0 end
redis.call('SET', KEYS[3], string.format('%.17g', untl),
           'PX', math.max(1, math.ceil((untl - now) * 1000)))
redis.call('ZADD', KEYS[4], untl, id)
return 1
"""

# KEYS: actions index, tombstones index. ARGV: now, action key prefix.
# Returns {n, id1, json1, …, idn, jsonn, tombstone id, until, …}.
_SNAPSHOT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local out = {0}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local raw = redis.call('GET', ARGV[2] .. id)
  if raw then
    out[1] = out[1] + 1
    table.insert(out, id)
    table.insert(out, raw)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
local tombs = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for _, v in ipairs(tombs) do table.insert(out, v) end
return out
"""

# KEYS: the day's count, the source's hash. ARGV: day, n, share (-1: none),
# floor days, floor used, ttl. Returns {admitted, used, days, day}.
_WARMUP_LUA = """
local day, n, share = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hday = tonumber(redis.call('HGET', KEYS[2], 'day') or '-1')
local days = tonumber(redis.call('HGET', KEYS[2], 'days') or '0')
local sent = redis.call('HGET', KEYS[2], 'sent') or '0'
if day > hday then
  if sent == '1' then days = days + 1 end
  hday, sent = day, '0'
end
days = math.max(days, tonumber(ARGV[4]))
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if day == hday then used = math.max(used, tonumber(ARGV[5])) end
local ok = share < 0 or used + n <= share
if ok then used = used + n end
redis.call('SET', KEYS[1], used, 'EX', tonumber(ARGV[6]))
if day == hday and used > 0 then sent = '1' end
redis.call('HSET', KEYS[2], 'day', hday, 'days', days, 'sent', sent)
redis.call('EXPIRE', KEYS[2], 400 * 86400)
return {ok and 1 or 0, used, days, hday}
"""


def _num(x: float) -> str:
    return repr(float(x))


class SharedRates:
    def __init__(self, redis: Any, prefix: str = "mta:"):
        self.redis, self.prefix = redis, prefix
        self._take = redis.register_script(_RATES_LUA)

    async def take(self, items: Sequence[tuple[str, RateSpec, int]], now: float) -> float:
        items = [i for i in items if i[2] > 0]
        if not items:
            return 0.0
        args: list[Any] = [_num(now)]
        for _, spec, n in items:
            burst = Gcra(spec).burst
            args += [_num(spec.interval), burst, min(n, burst)]
        ok, wait = await self._take(keys=[f"{self.prefix}rate:{k}" for k, _, _ in items],
                                    args=args)
        return 0.0 if int(ok) else max(1e-6, float(wait))


def fired_record(f: Fired, node: str) -> dict[str, Any]:
    r = f.rule
    return {"id": f.id, "scope": f.scope, "key": f.key, "action": str(f.action),
            "since": f.since, "until": f.until, "reason": f.reason, "node": node,
            "rule": {"pattern": r.pattern, "action": str(r.action), "duration": r.duration,
                     "threshold": r.threshold, "window": r.window, "name": r.name}}


def fired_from(rec: Mapping[str, Any]) -> Fired:
    """The Fired a record describes; ValueError (or KeyError, TypeError)
    when it is not a well-formed one (its id must be what its parts say)."""
    r = rec["rule"]
    rule = Rule(str(r["pattern"]), parse_action(r["action"]), float(r["duration"]),
                int(r["threshold"]), float(r["window"]), str(r["name"]))
    action = parse_action(rec["action"])
    f = Fired(str(rec["id"]), rule, str(rec["scope"]), str(rec["key"]), action,
              float(rec["since"]), float(rec["until"]), str(rec["reason"]))
    if f.scope not in ("site", "tenant") or f.id != f"{f.scope}:{f.key}:{action}" \
            or not math.isfinite(f.until):
        raise ValueError(f"not an action record: {f.id!r}")
    return f


class SharedActions:
    def __init__(self, redis: Any, prefix: str = "mta:"):
        self.redis, self.prefix = redis, prefix
        self._publish = redis.register_script(_PUBLISH_LUA)
        self._lift = redis.register_script(_LIFT_LUA)
        self._snapshot = redis.register_script(_SNAPSHOT_LUA)

    def _keys(self, ident: str) -> list[str]:
        p = f"{self.prefix}shaping:"
        return [f"{p}action:{ident}", f"{p}actions", f"{p}lifted:{ident}", f"{p}lifted"]

    async def publish(self, f: Fired, node: str, now: float) -> bool:
        if f.until <= now or f.action.kind == "bounce":
            return False
        data = json.dumps(fired_record(f, node), sort_keys=True)
        return bool(int(await self._publish(keys=self._keys(f.id),
                                            args=[f.id, _num(f.until), _num(now), data])))

    async def lift(self, ident: str, until: float, now: float) -> None:
        await self._lift(keys=self._keys(ident), args=[ident, _num(until), _num(now)])

    async def snapshot(self, now: float) -> tuple[dict[str, Fired], dict[str, float],
                                                  dict[str, str]]:
        keys = self._keys("")
        out = await self._snapshot(keys=[keys[1], keys[3]], args=[_num(now), keys[0]])
        count = int(out[0])
        actions: dict[str, Fired] = {}
        origin: dict[str, str] = {}
        for i in range(count):
            raw = out[2 + 2 * i]
            try:
                rec = json.loads(raw)
                f = fired_from(rec)
            except (ValueError, KeyError, TypeError):
                continue                # not ours to judge: it expires on its own
            actions[f.id] = f
            origin[f.id] = str(rec.get("node", ""))
        rest = out[1 + 2 * count:]
        lifted = {_text(rest[i]): float(rest[i + 1]) for i in range(0, len(rest) - 1, 2)}
        return actions, lifted, origin


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


@dataclass
class Sync:
    adopt: list[Fired] = field(default_factory=list)     # newer in Redis: apply here
    lift: list[str] = field(default_factory=list)        # lifted elsewhere: end here
    publish: list[Fired] = field(default_factory=list)   # Redis lacks it: write it


def reconcile(local: Mapping[str, Fired], shared: Mapping[str, Fired],
              lifted: Mapping[str, float], now: float) -> Sync:
    """What a node does with a snapshot, given the actions in force here."""
    out = Sync()
    for ident, s in shared.items():
        have = local.get(ident)
        if s.until > now and (have is None or have.until < s.until):
            out.adopt.append(s)
    for ident, mine in local.items():
        if mine.until <= now:
            continue
        gone = lifted.get(ident)
        if gone is not None and mine.until <= gone:
            out.lift.append(ident)
            continue
        held = shared.get(ident)
        if held is None or held.until < mine.until:
            out.publish.append(mine)
    return out


class SharedWarmup:
    def __init__(self, redis: Any, prefix: str = "mta:"):
        self.redis, self.prefix = redis, prefix
        self._take = redis.register_script(_WARMUP_LUA)

    async def take(self, source: str, day: int, n: int, share: int | None,
                   floor_days: int, floor_used: int,
                   ttl: int = 2 * 86400 + 3600) -> tuple[bool, int, int, int]:
        base = f"{self.prefix}warmup:{source}"
        ok, used, days, hday = await self._take(
            keys=[f"{base}:{day}", base],
            args=[day, n, -1 if share is None else share, floor_days, floor_used, ttl])
        return bool(int(ok)), int(used), int(days), int(hday)
