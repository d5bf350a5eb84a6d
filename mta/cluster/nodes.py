"""The node registry: who is in the cluster and how each node is doing.

One job: each node writes its heartbeat row (version, queue depth, whether
it is draining, its addresses) every `[cluster] heartbeat`; anyone reads the
rows back to show the cluster (`mta cluster status`, the admin API's
`GET /v1/cluster`). A node not heard from for `node_timeout` is "down";
its row stays until an operator removes it (`forget`).

API
    MIGRATIONS                      the `nodes` table
    NodeBeat(name, version, queue_depth, draining, admin, smtp, started)
    await beat(conn, b, now)        upsert this node's row
    await set_draining(conn, name, draining, now) -> bool   False: no such node
    await draining_of(conn, name) -> bool                   as stored
    await nodes(conn, now, timeout) -> [dict]   every row, with "up" and
                                                "heard_ago" (seconds)
    await forget(conn, name) -> bool

Invariants: a row's `draining` is the operator's wish and survives the
node's restarts; `beat` never changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mta.cluster.db import Migration

__all__ = ["MIGRATIONS", "NodeBeat", "beat", "draining_of", "forget", "nodes", "set_draining"]

MIGRATIONS = [Migration("nodes", 1, """
CREATE TABLE nodes (
    name        TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    queue_depth BIGINT NOT NULL DEFAULT 0,
    draining    BOOLEAN NOT NULL DEFAULT FALSE,
    drain_since DOUBLE PRECISION,
    admin       TEXT NOT NULL DEFAULT '',
    smtp        TEXT NOT NULL DEFAULT '',
    started     DOUBLE PRECISION NOT NULL,
    heartbeat   DOUBLE PRECISION NOT NULL
)""")]


@dataclass(frozen=True)
class NodeBeat:
    name: str
    version: str
    queue_depth: int
    admin: str
    smtp: str
    started: float


async def beat(conn: Any, b: NodeBeat, now: float) -> None:
    await conn.execute(
        "INSERT INTO nodes (name, version, queue_depth, admin, smtp, started, heartbeat) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET "
        "version = $2, queue_depth = $3, admin = $4, smtp = $5, started = $6, heartbeat = $7",
        b.name, b.version, b.queue_depth, b.admin, b.smtp, b.started, now)


async def set_draining(conn: Any, name: str, draining: bool, now: float) -> bool:
    status = await conn.execute(
        "UPDATE nodes SET draining = $2, "
        "drain_since = CASE WHEN $2 THEN $3::double precision ELSE NULL END "
        "WHERE name = $1", name, draining, now)
    return bool(status.endswith(" 1"))


async def draining_of(conn: Any, name: str) -> bool:
    v = await conn.fetchval("SELECT draining FROM nodes WHERE name = $1", name)
    return bool(v)


async def nodes(conn: Any, now: float, timeout: float) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM nodes ORDER BY name")
    out = []
    for r in rows:
        d = dict(r)
        d["heard_ago"] = round(max(0.0, now - d["heartbeat"]), 3)
        d["up"] = d["heard_ago"] <= timeout
        out.append(d)
    return out


async def forget(conn: Any, name: str) -> bool:
    status = await conn.execute("DELETE FROM nodes WHERE name = $1", name)
    return bool(status.endswith(" 1"))
