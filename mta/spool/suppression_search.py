"""The suppression list searched a page at a time and filled in bulk, for the web console.

One job: one bounded read of the `suppressions` table (index.py's
SUPPRESSION_SCHEMA) answering a search — by exact address or by
substring, in one scope or all, by reason — in (address, scope) order;
and one transaction adding many entries to one scope (an import) — each
from a short-lived connection, as suppression_admin does for the CLI.

Public API (synchronous; `state_dir` is the daemon's server.state_dir):
    search(state_dir, *, scope=None, q="", reason=None, after=None, limit=50, now)
        -> (active entries, more)      scope None: every scope; after: the
                                       (address, scope) the previous page ended at
    is_address(q) -> bool              whether `q` is searched exactly
    add_many(state_dir, rows, *, scope, now) -> (added, present)
        rows: (address, reason, created | None, expires | None), checked by
        the caller; an address with an active entry in `scope` keeps it
        (counted present), an expired one is replaced; one transaction

Search: a `q` that is a whole address (local@domain) is an exact match of
its stored key (`suppressions.address_key`): a primary-key seek. Any other
`q` is a substring of the address, case-insensitive for ASCII (SQL LIKE
with %, _ and \\ escaped): one pass over the table in primary-key order
that stops as soon as the page is full — the worst case (few or no
matches, or a scope with few entries) reads every row once, ~20 ms per
100,000 entries. Paging is by
keyset on the primary key, (address, scope) > after: no OFFSET, so a page
deep in the list costs what the first does.

Invariants:
- search only reads: it never creates the index or a table (no index, or
  no table yet: an empty answer). busy_timeout 5 s, no transaction held; any other
  SQLite failure is a core.errors.StorageError.
- Expired entries are never returned (they no longer suppress).
- add_many writes only into an existing index (the running daemon's; no
  index: StorageError, nothing made), synchronous=FULL, all or nothing.
  Addresses are keyed as the daemon keys them (`address_key`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing

from mta.core.address import AddressError, parse_address
from mta.core.errors import StorageError
from mta.core.stores import SuppressionView
from mta.spool.layout import SpoolPaths
from mta.spool.suppression_admin import insert_rows
from mta.spool.suppressions import SUPP_COLS, address_key, view

__all__ = ["add_many", "is_address", "search"]

StateDir = str | os.PathLike[str]


def is_address(q: str) -> bool:
    """Whether `q` is a whole address (searched exactly, not as a substring)."""
    if "@" not in q:
        return False
    try:
        parsed = str(parse_address(q.strip()))
    except AddressError:
        return False
    local, _, domain = parsed.rpartition("@")
    return bool(local) and bool(domain)


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _connect(state_dir: StateDir) -> sqlite3.Connection | None:
    path = SpoolPaths.of(state_dir).index
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(os.fspath(path), timeout=5.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the suppression list: {exc}") from exc
    return db


def search(state_dir: StateDir, *, scope: str | None = None, q: str = "",
           reason: str | None = None, after: tuple[str, str] | None = None, limit: int = 50,
           now: float) -> tuple[list[SuppressionView], bool]:
    where: list[str] = ["(expires IS NULL OR expires > ?)"]
    params: list[str | float] = [now]
    if scope is not None:
        where.append("scope = ?")
        params.append(scope)
    if reason is not None:
        where.append("reason = ?")
        params.append(reason)
    if q and is_address(q):
        where.append("address = ?")
        params.append(address_key(str(parse_address(q.strip()))))
    elif q:
        where.append("address LIKE ? ESCAPE '\\'")
        params.append(_like(q))
    if after is not None:
        where.append("(address, scope) > (?, ?)")
        params.extend(after)
    sql = (f"SELECT {SUPP_COLS} FROM suppressions WHERE {' AND '.join(where)} "
           "ORDER BY address, scope LIMIT ?")
    db = _connect(state_dir)
    if db is None:
        return [], False
    try:
        with closing(db):
            rows = [view(r) for r in db.execute(sql, [*params, limit + 1])]
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return [], False
        raise StorageError(f"cannot read the suppression list: {exc}") from exc
    return rows[:limit], len(rows) > limit


def add_many(state_dir: StateDir,
             rows: Sequence[tuple[str, str, float | None, float | None]], *, scope: str,
             now: float) -> tuple[int, int]:
    db = _connect(state_dir)
    if db is None:
        raise StorageError("the spool index does not exist (is the daemon running?)")
    with closing(db):
        try:
            db.execute("PRAGMA synchronous=FULL")
            return insert_rows(db, [(address_key(address), scope, reason, "", "",
                                     now if created is None else created, expires)
                                    for address, reason, created, expires in rows], now)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write the suppression list: {exc}; "
                               "nothing imported") from exc
