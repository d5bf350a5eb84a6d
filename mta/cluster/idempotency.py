"""Idempotency keys shared by every node (issue 19): one message per key.

One job: make "has this Idempotency-Key been used?" one decision for the
whole cluster. A request with a key first claims the key's row (INSERT …
ON CONFLICT DO NOTHING); the node that inserted it accepts the message and
then marks the row done with the queue id(s) it made; a request on any
node that finds the row done answers those ids, nothing queued. The sending
API scopes keys by the API key's credential ("api:NAME"), so does this
table (`scope`).

API
    MIGRATIONS                       the `idempotency` table
    Row(fingerprint, queue_ids, state, node, token, created, owner_alive)
    await claim(conn, scope, key, fingerprint, node, token, now) -> bool
        True: this request owns the key now (a new pending row)
    await read(conn, scope, key, now, node_timeout) -> Row | None
    await take_over(conn, scope, key, old_token, fingerprint, node, token, now) -> bool
        the row is replaced by a new pending claim only if it still holds
        `old_token` (compare-and-swap: two nodes never both take it over)
    await done(conn, scope, key, token, queue_ids) -> bool
    await release(conn, scope, key, token) -> bool   a failed request's claim
    await prune(conn, before, batch=1000) -> int     rows created before `before`
    judge(row, fingerprint, now, *, window, node, mine) -> Verdict
        pure: what a request that lost the insert does with the row found

Invariants: a key has at most one row; only the holder of a row's token
moves it (done, release), anyone else only by `take_over`'s swap; a done
row's ids are the ids of messages committed to the spool of `node`. A
pending row whose node died before enqueueing (not heard from within
`node_timeout` and older than STALE) or that is older than STALE_MAX, and
a done row older than the window, may be taken over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from mta.cluster.db import Migration

__all__ = ["MIGRATIONS", "Row", "STALE", "STALE_MAX", "Verdict", "claim", "done", "judge",
           "prune", "read", "release", "take_over"]

MIGRATIONS = [Migration("idempotency", 1, """
CREATE TABLE idempotency (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    queue_ids   TEXT NOT NULL DEFAULT '[]',
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    node        TEXT NOT NULL,
    token       TEXT NOT NULL,
    created     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_created ON idempotency (created)""")]

STALE = 60.0        # a pending claim of a node that is down, older than this: taken over
STALE_MAX = 600.0   # a pending claim older than this: taken over whatever its node says


@dataclass(frozen=True)
class Row:
    fingerprint: str
    queue_ids: tuple[str, ...]
    state: str
    node: str
    token: str
    created: float
    owner_alive: bool


Verdict = tuple[Literal["done", "differs", "wait", "take"], tuple[str, ...]]


async def claim(conn: Any, scope: str, key: str, fingerprint: str, node: str, token: str,
                now: float) -> bool:
    got = await conn.fetchval(
        "INSERT INTO idempotency (scope, key, fingerprint, state, node, token, created) "
        "VALUES ($1, $2, $3, 'pending', $4, $5, $6) ON CONFLICT (scope, key) DO NOTHING "
        "RETURNING 1", scope, key, fingerprint, node, token, now)
    return got is not None


async def read(conn: Any, scope: str, key: str, now: float, node_timeout: float) -> Row | None:
    r = await conn.fetchrow(
        "SELECT i.fingerprint, i.queue_ids, i.state, i.node, i.token, i.created, "
        "EXISTS (SELECT 1 FROM nodes n WHERE n.name = i.node AND n.heartbeat >= $3) AS alive "
        "FROM idempotency i WHERE i.scope = $1 AND i.key = $2", scope, key, now - node_timeout)
    if r is None:
        return None
    ids = json.loads(r["queue_ids"])
    return Row(r["fingerprint"], tuple(str(i) for i in ids), r["state"], r["node"], r["token"],
               float(r["created"]), bool(r["alive"]))


async def take_over(conn: Any, scope: str, key: str, old_token: str, fingerprint: str,
                    node: str, token: str, now: float) -> bool:
    status = await conn.execute(
        "UPDATE idempotency SET fingerprint = $4, queue_ids = '[]', state = 'pending', "
        "node = $5, token = $6, created = $7 WHERE scope = $1 AND key = $2 AND token = $3",
        scope, key, old_token, fingerprint, node, token, now)
    return bool(status.endswith(" 1"))


async def done(conn: Any, scope: str, key: str, token: str, queue_ids: list[str]) -> bool:
    status = await conn.execute(
        "UPDATE idempotency SET state = 'done', queue_ids = $4 "
        "WHERE scope = $1 AND key = $2 AND token = $3", scope, key, token, json.dumps(queue_ids))
    return bool(status.endswith(" 1"))


async def release(conn: Any, scope: str, key: str, token: str) -> bool:
    status = await conn.execute(
        "DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND token = $3 "
        "AND state = 'pending'", scope, key, token)
    return bool(status.endswith(" 1"))


async def prune(conn: Any, before: float, batch: int = 1000) -> int:
    status = await conn.execute(
        "DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM idempotency "
        "WHERE created < $1 LIMIT $2)", before, batch)
    return int(status.rsplit(" ", 1)[-1])


def judge(row: Row, fingerprint: str, now: float, *, window: float, node: str,
          mine: bool) -> Verdict:
    """What a request that found `row` (its insert lost) does:
    done → the original ids; differs → 409 (the key was used with another
    body); wait → a live claim is being accepted now; take → the row is
    dead (expired, or a claim nobody will finish) and may be taken over.
    `mine`: this node has a request with this key in flight now."""
    age = now - row.created
    if row.state == "done":
        if age > window:
            return "take", ()
        return ("done", row.queue_ids) if row.fingerprint == fingerprint else ("differs", ())
    if row.node == node and not mine:
        return "take", ()    # this node's earlier claim, which never committed here
    if age > STALE_MAX or (age > STALE and not row.owner_alive):
        return "take", ()
    if row.fingerprint != fingerprint:
        return "differs", ()
    return "wait", ()
