"""A table of the spool index used from outside the daemon's writer.

One job: the SQLite plumbing the small stores beside the queue share (API
keys: apikeys.py, webhook endpoints made by API: webhook_endpoints.py): a
short connection per call on the index's WAL file, safe while the daemon
runs, the table created on the first write.

API:
    SideTable(state_dir)          subclass and set:
        SCHEMA: str               CREATE TABLE/INDEX IF NOT EXISTS … (idempotent)
        WHAT: str                 "the API keys": what error messages call it
        ERROR: type[StorageError] the store's own error
    ._db(write=…) -> context manager: a connection (None for a read when no
        index exists); a write gets the schema and BEGIN IMMEDIATE, committed
        on a clean exit, rolled back otherwise
    ._rows(sql, params, row) -> [row(r), …]   a read ([] without an index or
        without the table: an index from before the table existed)
    missing_table(exc) -> bool    the error says the table is not there

Invariants: stdlib sqlite3, busy_timeout 5 s, one short transaction per
call, never the spool's flock, never recovery. Reads create nothing; a
write creates the index file (0600) with only this table when there is
none yet, but refuses when segment files exist without an index (the
spool's refuse-to-start state S11: a fresh index would make recovery
discard every body).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mta.core.errors import StorageError
from mta.spool.layout import SpoolPaths

__all__ = ["SideTable", "missing_table"]

R = TypeVar("R")


def missing_table(exc: sqlite3.Error) -> bool:
    return "no such table" in str(exc)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(os.fspath(path), timeout=5.0, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        _wal(db)
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


def _wal(db: sqlite3.Connection) -> None:
    """WAL mode, which a file keeps once set. Switching a new file to it
    needs the lock for itself, and SQLite answers "database is locked" at
    once rather than through the busy handler when another connection is
    doing the same (several threads' first writes): retry for up to the
    busy timeout."""
    if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + 5.0
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SideTable:
    SCHEMA = ""
    WHAT = "the table"
    ERROR: type[StorageError] = StorageError

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.paths = SpoolPaths.of(state_dir)

    def _create_index(self) -> None:
        path, segments = self.paths.index, self.paths.segments
        if segments.is_dir() and any(segments.glob("*.seg")):
            raise self.ERROR(
                f"{path} is missing but {segments} holds message segments: the spool needs "
                "repair (see `mta serve`'s error); not creating an index here")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    @contextmanager
    def _db(self, *, write: bool) -> Iterator[sqlite3.Connection | None]:
        path = self.paths.index
        if not path.exists():
            if not write:
                yield None
                return
            self._create_index()
        try:
            db = _connect(path)
        except sqlite3.Error as exc:
            raise self.ERROR(f"cannot open {path}: {exc}") from exc
        with closing(db):
            try:
                if write:
                    db.executescript(self.SCHEMA)
                    db.execute("BEGIN IMMEDIATE")
                yield db
                if db.in_transaction:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self.ERROR(f"cannot use {self.WHAT} in {path}: {exc}") from exc
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: Sequence[Any],
              row: Callable[[Sequence[Any]], R]) -> list[R]:
        with self._db(write=False) as db:
            if db is None:
                return []
            try:
                return [row(r) for r in db.execute(sql, params)]
            except sqlite3.OperationalError as exc:
                if missing_table(exc):   # an index from before the table existed
                    return []
                raise self.ERROR(f"cannot read {self.WHAT}: {exc}") from exc
