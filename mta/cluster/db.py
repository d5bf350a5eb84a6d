"""The shared PostgreSQL: one pool per node, migrations applied on start.

One job: connect to `[cluster] database` (asyncpg), apply every
component's migrations idempotently under one advisory lock (several nodes
starting at once apply each migration exactly once), and tell callers
whether the database is reachable now (degraded mode).

API
    Migration(component, version, sql)   one step; versions of a component
                                         are applied in order, each once
    SharedDb.open(url, *, timeout, migrations, min_size=0, max_size=10) -> SharedDb
        (min_size 0: no background reconnecting while the database is away;
        a call opens what it needs)
        raises SharedDbError (a message naming the redacted URL) when the
        database cannot be reached or a migration fails
    db.pool                      the asyncpg pool
    await db.call(fn)            fn(connection) -> T, within `timeout`;
                                 SharedDbUnavailable when the database is
                                 unreachable (also sets .available False)
    db.available                 the last call's outcome
    await db.close()
    MIGRATION_LOCK               the advisory lock key the migrations hold

Invariants: a migration's SQL and the row recording it commit in one
transaction; a node never downgrades the schema (a database migrated by a
newer node still opens: unknown newer versions are left alone and logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from mta.config.cluster import redact_url
from mta.core.errors import Unavailable
from mta.core.logfmt import event

__all__ = ["MIGRATION_LOCK", "Migration", "SharedDb", "SharedDbError", "SharedDbUnavailable"]

log = logging.getLogger("mta.cluster")
T = TypeVar("T")

# pg_advisory_lock key: "mta-migrate" in ASCII, as a bigint.
MIGRATION_LOCK = 0x6D74612D6D6967


class SharedDbError(Exception):
    """The database cannot be used at start (message for the operator)."""


class SharedDbUnavailable(Unavailable):
    """The database did not answer now (degraded mode: retry later)."""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    sql: str


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS mta_migrations (
    component TEXT NOT NULL,
    version   INT  NOT NULL,
    applied   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)"""

# What makes a call fail as "unreachable" rather than as a bug.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.PostgresConnectionError,
    # The server went away in the middle of an operation: the connection's
    # state machine is left mid-query (seen when PostgreSQL stops).
    asyncpg.exceptions.InternalClientError,
)


class SharedDb:
    def __init__(self, pool: asyncpg.Pool, url: str, timeout: float):
        self.pool, self.url, self.timeout = pool, url, timeout
        self.available = True

    @classmethod
    async def open(cls, url: str, *, timeout: float, migrations: Sequence[Migration],
                   min_size: int = 0, max_size: int = 10) -> SharedDb:
        shown = redact_url(url)
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             timeout=timeout, command_timeout=timeout * 6)
        except (*UNREACHABLE, asyncpg.PostgresError, ValueError) as exc:
            raise SharedDbError(f"cluster.database {shown}: cannot connect: "
                                f"{_why(exc)}") from exc
        try:
            async with asyncio.timeout(timeout):
                await pool.fetchval("SELECT 1")
        except (*UNREACHABLE, asyncpg.PostgresError) as exc:
            pool.terminate()
            raise SharedDbError(f"cluster.database {shown}: cannot connect: "
                                f"{_why(exc)}") from exc
        db = cls(pool, url, timeout)
        try:
            await db.migrate(migrations)
        except BaseException:
            await pool.close()
            raise
        return db

    async def migrate(self, migrations: Sequence[Migration]) -> None:
        shown = redact_url(self.url)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
                try:
                    await conn.execute(_BOOKKEEPING)
                    rows = await conn.fetch("SELECT component, version FROM mta_migrations")
                    done = {(r["component"], r["version"]) for r in rows}
                    for m in sorted(migrations, key=lambda m: (m.component, m.version)):
                        if (m.component, m.version) in done:
                            continue
                        async with conn.transaction():
                            await conn.execute(m.sql)
                            await conn.execute("INSERT INTO mta_migrations (component, version)"
                                               " VALUES ($1, $2)", m.component, m.version)
                        event(log, "cluster_migrated", component=m.component, version=m.version)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        except (*UNREACHABLE, asyncpg.PostgresError) as exc:
            raise SharedDbError(f"cluster.database {shown}: migrating the schema failed: "
                                f"{_why(exc)}") from exc

    async def call(self, fn: Callable[[Any], Awaitable[T]], *,
                   timeout: float | None = None) -> T:
        """`fn(conn)` on a pooled connection within the timeout; the
        database being unreachable raises SharedDbUnavailable."""
        try:
            async with asyncio.timeout(timeout or self.timeout):
                async with self.pool.acquire() as conn:
                    result = await fn(conn)
        except UNREACHABLE as exc:
            if self.available:
                event(log, "cluster_database_unreachable", level=logging.WARNING,
                      database=redact_url(self.url), error=_why(exc))
            self.available = False
            raise SharedDbUnavailable(_why(exc)) from exc
        if not self.available:
            event(log, "cluster_database_back", database=redact_url(self.url))
        self.available = True
        return result

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except UNREACHABLE:         # (asyncio.TimeoutError is one of them)
            self.pool.terminate()


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
