"""Idempotency keys and AUTH throttles across the cluster, wired in (issue 19).

One job: in a cluster, (1) make the sending API's Idempotency-Key one
decision for every node: after the local check (runtime/api.py: this
node's spool), the key is claimed in the shared `idempotency` table
(cluster/idempotency.py); a request whose key another node used answers
that node's ids, nothing queued; (2) put the submission listeners' AUTH
throttles on Redis (cluster/authlimit.py), so failures on every node add up.

API
    SharedIdempotency(db, node, clock, window_of, node_timeout)
        await .once(scope, key, fp, accept) -> ids   RuntimeSending.shared_keys
        await .flush() -> int       retry the "done" marks PostgreSQL missed
        await .prune() -> int       rows older than [ledger] idempotency_window
    await wire(node)                 the sending API's keys (WIRINGS)
    await wire_auth(node)            the submission listeners' throttles (WIRINGS)

Rules (idempotency)
  * The claim comes first (INSERT … ON CONFLICT DO NOTHING); the winner
    accepts, then marks the row done with its ids; a failed accept releases
    the claim (the key was not used).
  * A loser: a done row → its ids (another body → 409
    invalid_idempotent_request); a live pending claim → polled every POLL s
    for WAIT s, then 409 concurrent_idempotent_requests (as on one node); a
    dead claim (cluster/idempotency.py `judge`) → taken over.
  * PostgreSQL unreachable: a request with a key is refused 429
    `idempotency_unavailable` with retry-after: the shared decision cannot
    be made, and 429 + Retry-After is what every HTTP client and the SDKs
    retry by themselves (the degraded mode answers 4xx, never 5xx; a 409
    would say the request conflicts, which it may not). Requests without a
    key are not affected.
  * Mail accepted is acknowledged even when its done mark cannot be
    written: the mark is kept here and retried (FLUSH_EVERY), and this
    node's spool answers a repeat sent here meanwhile.

Rules (AUTH): the throttles live in the process that owns the spool; the
receiver processes' sessions (`[server] workers`) already ask it for every
turn (runtime/workers.py "turn" → the listener's `handler.auth.turns`), so
replacing those turns here covers every session. Redis unreachable: the
local throttles answer (cluster/authlimit.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from mta.api.http import ApiError
from mta.cluster import idempotency as shared
from mta.cluster.authlimit import AuthLimits, SharedTurns
from mta.cluster.db import SharedDb, SharedDbUnavailable
from mta.core import Clock
from mta.runtime.api_start import SENDING
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.server.credentials import valid_username

__all__ = ["SharedIdempotency", "wire", "wire_auth"]

log = logging.getLogger("mta.api")

WAIT = 10.0            # longest wait for another node's claim of the same key
POLL = 0.05            # how often a waiting request looks again
FLUSH_EVERY = 2.0      # retry missed done marks (a dict lookup when there are none)
PRUNE_EVERY = 300.0
RETRY_AFTER = "10"

_Accept = Callable[[], Awaitable[list[str]]]


def _unavailable() -> ApiError:
    return ApiError(429, "idempotency_unavailable",
                    "The Idempotency-Key cannot be checked across the cluster now (its shared "
                    "database is unreachable); retry later, or send without the key",
                    {"retry-after": RETRY_AFTER})


class SharedIdempotency:
    def __init__(self, db: SharedDb, node: str, clock: Clock, window_of: Callable[[], float],
                 node_timeout: float):
        self.db, self.node, self.clock = db, node, clock
        self.window_of, self.node_timeout = window_of, node_timeout
        self._active: set[tuple[str, str]] = set()
        # done marks PostgreSQL did not take: (scope, key) -> (token, ids)
        self._unmarked: dict[tuple[str, str], tuple[str, list[str]]] = {}

    async def once(self, scope: str, key: str, fp: str, accept: _Accept) -> list[str]:
        """The ids of the one acceptance of (scope, key) in the cluster:
        `accept()`'s when this request wins the claim, else the winner's."""
        token = uuid.uuid4().hex
        earlier = await self._claim(scope, key, fp, token)
        if earlier is not None:
            return earlier
        slot = (scope, key)
        self._active.add(slot)
        try:
            ids = await accept()
        except BaseException:
            await asyncio.shield(self._release(scope, key, token))
            raise
        finally:
            self._active.discard(slot)
        self._unmarked[slot] = (token, ids)
        await self._mark(slot)
        return ids

    async def _claim(self, scope: str, key: str, fp: str, token: str) -> list[str] | None:
        """None: this request holds the key now; else the ids it already
        made (ApiError 409 / 429 otherwise)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            if (scope, key) in self._unmarked:
                await self._mark((scope, key))
            try:
                got = await self.db.call(lambda c: self._attempt(c, scope, key, fp, token))
            except SharedDbUnavailable:
                raise _unavailable() from None
            if got is None:
                return None
            kind, ids = got
            if kind == "done":
                return list(ids)
            if kind == "differs":
                raise ApiError(409, "invalid_idempotent_request",
                               "This Idempotency-Key was already used with a different "
                               "request body")
            if loop.time() >= deadline:
                raise ApiError(409, "concurrent_idempotent_requests",
                               "Another request with this Idempotency-Key is in progress; "
                               "retry once it has finished")
            await asyncio.sleep(POLL)

    async def _attempt(self, conn: Any, scope: str, key: str, fp: str,
                       token: str) -> shared.Verdict | None:
        """One try at the claim, on one connection: None when it is ours."""
        now = self.clock.now()
        if await shared.claim(conn, scope, key, fp, self.node, token, now):
            return None
        row = await shared.read(conn, scope, key, now, self.node_timeout)
        if row is None:
            return "wait", ()            # released just now: claim again
        mine = (scope, key) in self._active or (scope, key) in self._unmarked
        verdict = shared.judge(row, fp, now, window=self.window_of(), node=self.node, mine=mine)
        if verdict[0] == "take":
            won = await shared.take_over(conn, scope, key, row.token, fp, self.node, token, now)
            return None if won else ("wait", ())
        return verdict

    async def _mark(self, slot: tuple[str, str]) -> None:
        token, ids = self._unmarked[slot]
        try:
            await self.db.call(lambda c: shared.done(c, slot[0], slot[1], token, ids))
        except SharedDbUnavailable:
            event(log, "idempotency_mark_deferred", level=logging.WARNING, ids=",".join(ids))
            return
        self._unmarked.pop(slot, None)

    async def _release(self, scope: str, key: str, token: str) -> None:
        try:
            await self.db.call(lambda c: shared.release(c, scope, key, token))
        except SharedDbUnavailable:
            pass        # this node takes its own dead claim over (judge: not `mine`)

    async def flush(self) -> int:
        for slot in list(self._unmarked):
            await self._mark(slot)
            if slot in self._unmarked:
                break           # still unreachable: the next run tries again
        return len(self._unmarked)

    async def prune(self) -> int:
        before = self.clock.now() - self.window_of()
        total = 0
        try:
            while True:
                n = await self.db.call(lambda c: shared.prune(c, before))
                total += n
                if n < 1000:
                    return total
                await asyncio.sleep(0.2)
        except SharedDbUnavailable:
            return total


async def wire(node: Any) -> None:
    """The sending API's Idempotency-Key, decided on the shared database."""
    d = node.d
    if d.api is None:
        return
    keys = SharedIdempotency(node.db, node.name, d.clock,
                             lambda: float(d.cfg.ledger.idempotency_window),
                             float(node.cfg.node_timeout))
    d.api.app[SENDING].shared_keys = keys
    node.add_job(Job("cluster_idempotency_flush", FLUSH_EVERY, keys.flush))
    node.add_job(Job("cluster_idempotency_prune", PRUNE_EVERY, keys.prune))


def _limits(node: Any, listener: str, turns: Any) -> Callable[[], AuthLimits]:
    def limits() -> AuthLimits:
        lcfg = next((lc for lc in node.d.cfg.listeners if lc.name == listener), None)
        ip, users = turns.throttle, turns.user_throttle
        if lcfg is None:
            return AuthLimits(None, None, 1.0)
        return AuthLimits(None if ip is None else int(lcfg.auth_max_failures),
                          None if users is None else int(lcfg.auth_max_failures_per_user),
                          float(lcfg.auth_lockout),
                          1.0 if ip is None else float(ip.delay_step),
                          5.0 if ip is None else float(ip.max_delay))
    return limits


async def wire_auth(node: Any) -> None:
    """Each submission listener's AUTH throttles, on Redis (the owner's
    listener objects: receivers' sessions ask them too)."""
    for lst in getattr(node.d, "listeners", []):
        auth = getattr(lst.handler, "auth", None)
        if auth is None or isinstance(auth.turns, SharedTurns):
            continue
        local = auth.turns
        auth.turns = SharedTurns(
            local, node.redis, listener=lst.cfg.name, limits=_limits(node, lst.cfg.name, local),
            valid_user=valid_username, clock=node.d.clock.now,
            up=lambda: bool(node.redis_available), down=node.redis_down)
