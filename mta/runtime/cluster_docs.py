"""Keep a local store and the cluster's shared documents in step (issue 19).

One job: for a store that stays local and is the read path (the domain
store, the credentials file: the CLI, the receiver processes and the hot
path keep reading them, and they keep working while PostgreSQL is down),
push its changes to cluster/documents.py and apply everyone else's, by a
three-way comparison: the local document now, the one last synced (its hash,
kept in state_dir/cluster_sync.sqlite3), and the cluster's.

API
    LocalDocs (Protocol)     what a local store offers (all blocking: a thread)
        .table               its cluster/documents.py table
        .stamp() -> object   cheap; changes whenever the store may have changed
        .scan() -> {name: hash}                       every local document
        .export(name) -> (hash, doc JSON) | None      None: gone meanwhile
        .apply(name, doc JSON | None) -> hash | None  write the cluster's
                             document (None: remove it); its local hash
    SyncState(state_dir)     the hashes last synced and the cursor, per table
    DocSync(node, local, state, on_applied=None)
        await .tick()        push, then pull; PostgreSQL unreachable: nothing
                             changes, the next tick retries (nothing lost)

Rules
- A local document whose hash differs from the one last synced changed
  here (the daemon, the API, the console, or the CLI while the daemon was
  stopped): it is pushed, and the cluster's latest write wins. One never
  synced is pushed as a "seed" (kept only where the cluster has none): a
  node joining with its own domains does not overwrite the cluster's.
- Push before pull: a pending local change is in PostgreSQL before the
  others' are read, so pull never overwrites it. A node that never synced
  (cursor -1) reads the whole table first, its own rows included (a state
  directory rebuilt under the same node name gets its documents back).
- A cluster tombstone removes a local document only if that name was synced
  before; an unsynced local one is pushed instead.
- An apply that fails (WrongSecret: a DKIM key sealed under another secret)
  stops the pull before that row: the cursor stays, the error is logged once,
  and the next tick retries, so fixing the secret file loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from mta.cluster import documents
from mta.cluster.db import SharedDbUnavailable
from mta.cluster.secrets import SecretError
from mta.runtime.logs import event

__all__ = ["FULL_SCAN_EVERY", "DocSync", "LocalDocs", "SyncState"]

log = logging.getLogger("mta.cluster")

FULL_SCAN_EVERY = 30.0      # re-scan the local store even if its stamp did not move
PUSH_BATCH = 200
PULL_PAGE = 500


class LocalDocs(Protocol):
    table: str

    def stamp(self) -> object: ...

    def scan(self) -> dict[str, str]: ...

    def export(self, name: str) -> tuple[str, str] | None: ...

    def apply(self, name: str, doc: str | None) -> str | None: ...


class SyncState:
    """state_dir/cluster_sync.sqlite3 (0600): per table, the hash of each
    document as last synced, and the pull cursor."""

    def __init__(self, state_dir: str | os.PathLike[str]):
        self.path = Path(state_dir) / "cluster_sync.sqlite3"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        with closing(sqlite3.connect(self.path, timeout=10.0, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript("CREATE TABLE IF NOT EXISTS synced (tbl TEXT, name TEXT, hash TEXT, "
                             "PRIMARY KEY (tbl, name));"
                             "CREATE TABLE IF NOT EXISTS cursors (tbl TEXT PRIMARY KEY, "
                             "seq INTEGER NOT NULL)")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def load(self, table: str) -> tuple[dict[str, str], int]:
        with self._db() as db:
            base = dict(db.execute("SELECT name, hash FROM synced WHERE tbl = ?", (table,)))
            row = db.execute("SELECT seq FROM cursors WHERE tbl = ?", (table,)).fetchone()
        return base, -1 if row is None else int(row[0])

    def record(self, table: str, updates: dict[str, str | None], cursor: int | None) -> None:
        with self._db() as db:
            for name, h in updates.items():
                if h is None:
                    db.execute("DELETE FROM synced WHERE tbl = ? AND name = ?", (table, name))
                else:
                    db.execute("INSERT OR REPLACE INTO synced VALUES (?, ?, ?)",
                               (table, name, h))
            if cursor is not None:
                db.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?)", (table, cursor))


class DocSync:
    def __init__(self, node: Any, local: LocalDocs, state: SyncState,
                 on_applied: Callable[[], Awaitable[None]] | None = None):
        self.node, self.local, self.state, self.on_applied = node, local, state, on_applied
        self.table = local.table
        self._stamp: object = None
        self._scanned_at = float("-inf")
        self._error: str | None = None

    async def tick(self) -> None:
        try:
            applied = await self._sync()
        except SharedDbUnavailable:
            return              # logged by SharedDb; local state and cursor stand
        except SecretError as exc:
            if str(exc) != self._error:
                event(log, "cluster_sync_refused", level=logging.ERROR, table=self.table,
                      error=str(exc))
            self._error = str(exc)
            return
        self._error = None
        if applied and self.on_applied is not None:
            await self.on_applied()

    async def _sync(self) -> int:
        base, cursor = await asyncio.to_thread(self.state.load, self.table)
        applied = 0
        if cursor < 0:
            cursor, n = await self._pull(base, cursor, everyone=True)
            applied += n
            cursor = max(cursor, 0)
            await asyncio.to_thread(self.state.record, self.table, {}, cursor)
        applied += await self._push(base)
        applied += (await self._pull(base, cursor, everyone=False))[1]
        return applied

    async def _push(self, base: dict[str, str]) -> int:
        """Local changes to PostgreSQL -> documents applied here (lost seeds)."""
        stamp = await asyncio.to_thread(self.local.stamp)
        now = self.node.d.clock.now()
        if stamp == self._stamp and now - self._scanned_at < FULL_SCAN_EVERY:
            return 0
        local = await asyncio.to_thread(self.local.scan)
        changes: list[tuple[str, str, str | None, str | None]] = []
        for name, h in sorted(local.items()):
            if base.get(name) != h:
                got = await asyncio.to_thread(self.local.export, name)
                if got is not None:
                    changes.append(("upsert" if name in base else "seed", name, got[1], got[0]))
        changes += [("delete", name, None, None) for name in sorted(set(base) - set(local))]
        applied = 0
        for i in range(0, len(changes), PUSH_BATCH):
            batch = changes[i:i + PUSH_BATCH]
            done = await self.node.db.call(partial(
                documents.push, table=self.table, origin=self.node.name,
                changes=[(op, name, doc) for op, name, doc, _ in batch], now=now))
            updates = {name: h for (_, name, _, h), ok in zip(batch, done) if ok}
            lost = [name for (_, name, _, _), ok in zip(batch, done) if not ok]
            await asyncio.to_thread(self.state.record, self.table, updates, None)
            base.update({k: v for k, v in updates.items() if v is not None})
            for k in [k for k, v in updates.items() if v is None]:
                base.pop(k, None)
            if lost:        # the cluster had these names already: take its documents
                rows = await self.node.db.call(partial(documents.fetch, table=self.table,
                                                       names=lost))
                applied += await self._apply(rows, base, None)
            event(log, "cluster_docs_pushed", table=self.table, node=self.node.name,
                  changes=len(batch), kept_cluster_copy=len(lost))
        self._stamp, self._scanned_at = stamp, now
        return applied

    async def _pull(self, base: dict[str, str], cursor: int, *,
                    everyone: bool) -> tuple[int, int]:
        """Other nodes' documents since `cursor` -> (new cursor, applied)."""
        applied = 0
        origin = None if everyone else self.node.name
        while True:
            rows = await self.node.db.call(partial(
                documents.pull, table=self.table, after=cursor, origin=origin, limit=PULL_PAGE))
            if not rows:
                return cursor, applied
            applied += await self._apply(rows, base, cursor)
            cursor = rows[-1][3]
            if len(rows) < PULL_PAGE:
                return cursor, applied

    async def _apply(self, rows: list[documents.Row], base: dict[str, str],
                     cursor: int | None) -> int:
        """Write `rows` here, one by one, recording each (and the cursor
        through it, when paging) as it lands."""
        applied = 0
        for name, doc, deleted, seq, origin in rows:
            if deleted and name not in base:
                h: str | None = None            # never synced here: nothing to remove
            else:
                h = await asyncio.to_thread(self.local.apply, name, doc)
                applied += 1
                event(log, "cluster_doc_applied", table=self.table, doc=name,
                      removed=deleted, origin=origin, seq=seq)
            await asyncio.to_thread(self.state.record, self.table, {name: h},
                                    None if cursor is None else seq)
            if h is None:
                base.pop(name, None)
            else:
                base[name] = h
        return applied
