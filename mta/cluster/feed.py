"""A change feed on PostgreSQL: the mechanics the shared stores have in common.

One job: the statements every "store of record with a change feed" runs
(cluster/suppressions.py, cluster/accounts.py): push a node's outbox under
the feed's advisory lock with a per-writer high-water mark, pull changes
by seq, sweep the live rows in key order, prune old tombstones. What a
change becomes in SQL is the store's business (its `statements` function).

API
    Feed(rows, key, cols, writers, meta, lock)    table names and the lock
        await .push(conn, origin, writer, changes, now, statements) -> int
            statements(changes, through, origin, now) -> [(sql, params), …]
            (changes at or below the writer's recorded mark are skipped by
            it); returns the highest local seq now recorded
        await .pull(conn, after, origin, limit) -> (rows, pruned_through)
        await .sweep(conn, after_key, limit) -> rows   live rows after a key
        await .high_water(conn) -> int
        await .prune(conn, before) -> int              tombstones older than `before`
    pg_text(v) -> str      a value as PostgreSQL text (no NUL, no lone surrogate)
    await execute_runs(conn, [(sql, params), …])   in order, a run of one
                           statement as one executemany

Invariants: every write takes `lock` for its transaction before drawing a
seq, so seq order is commit order (a reader paging by seq never misses a
change); `pull` reads `pruned_through` in the same snapshot as its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Feed", "Statements", "execute_runs", "pg_text"]

Statements = Callable[[Sequence[Sequence[Any]], int, str, float],
                      list[tuple[str, tuple[Any, ...]]]]


def pg_text(v: Any) -> str:
    """PostgreSQL's text holds no NUL and no lone surrogate; a local row
    with one must not wedge an outbox."""
    s = str(v or "").replace("\x00", "")
    return s.encode("utf-8", "replace").decode("utf-8")


async def execute_runs(conn: Any, stmts: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """(sql, params) pairs in order, each run of one statement as one executemany."""
    i = 0
    while i < len(stmts):
        j = i
        while j < len(stmts) and stmts[j][0] == stmts[i][0]:
            j += 1
        await conn.executemany(stmts[i][0], [p for _, p in stmts[i:j]])
        i = j


@dataclass(frozen=True)
class Feed:
    rows: str                   # the table of rows (with seq, deleted, changed, origin)
    key: tuple[str, str]        # its primary key's two columns (sweep order)
    cols: str                   # the columns a pulled row carries, seq last
    writers: str                # writer -> through (pushed local seqs)
    meta: str                   # name -> value ('pruned_through')
    lock: int                   # pg_advisory_xact_lock key

    async def push(self, conn: Any, origin: str, writer: str,
                   changes: Sequence[Sequence[Any]], now: float,
                   statements: Statements) -> int:
        if not changes:
            return 0
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self.lock)
            through = int(await conn.fetchval(
                f"SELECT through FROM {self.writers} WHERE writer = $1", writer) or 0)
            await execute_runs(conn, statements(changes, through, origin, now))
            last = max(int(c[0]) for c in changes)
            await conn.execute(
                f"INSERT INTO {self.writers} (writer, origin, through, at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (writer) DO UPDATE SET origin = $2, "
                f"at = $4, through = GREATEST({self.writers}.through, $3)",
                writer, origin, last, now)
            return max(last, through)

    async def pull(self, conn: Any, after: int, origin: str | None,
                   limit: int) -> tuple[list[tuple[Any, ...]], int]:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if origin is None:
                rows = await conn.fetch(f"SELECT {self.cols} FROM {self.rows} WHERE seq > $1 "
                                        "ORDER BY seq LIMIT $2", after, limit)
            else:
                rows = await conn.fetch(f"SELECT {self.cols} FROM {self.rows} WHERE seq > $1 "
                                        "AND origin <> $3 ORDER BY seq LIMIT $2",
                                        after, limit, origin)
            pruned = await conn.fetchval(
                f"SELECT value FROM {self.meta} WHERE name = 'pruned_through'")
        return [tuple(r) for r in rows], int(pruned or 0)

    async def sweep(self, conn: Any, after_key: tuple[str, str] | None,
                    limit: int) -> list[tuple[Any, ...]]:
        a, b = self.key
        if after_key is None:
            rows = await conn.fetch(f"SELECT {self.cols} FROM {self.rows} WHERE NOT deleted "
                                    f"ORDER BY {a}, {b} LIMIT $1", limit)
        else:
            rows = await conn.fetch(f"SELECT {self.cols} FROM {self.rows} WHERE NOT deleted "
                                    f"AND ({a}, {b}) > ($1, $2) ORDER BY {a}, {b} LIMIT $3",
                                    after_key[0], after_key[1], limit)
        return [tuple(r) for r in rows]

    async def high_water(self, conn: Any) -> int:
        return int(await conn.fetchval(f"SELECT COALESCE(MAX(seq), 0) FROM {self.rows}"))

    async def prune(self, conn: Any, before: float) -> int:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self.lock)
            gone = await conn.fetch(f"DELETE FROM {self.rows} WHERE deleted AND changed < $1 "
                                    "RETURNING seq", before)
            if gone:
                await conn.execute(
                    f"UPDATE {self.meta} SET value = GREATEST(value, $1) "
                    "WHERE name = 'pruned_through'", max(int(r["seq"]) for r in gone))
        return len(gone)
