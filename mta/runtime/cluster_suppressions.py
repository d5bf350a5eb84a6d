"""One suppression list for the whole cluster (issue 19).

One job: keep this node's local suppression table (the spool index: the
per-RCPT check reads it, fast, and it keeps working while PostgreSQL is
down) in step with the cluster's store of record (cluster/suppressions.py).
Every local writer's change lands in the index's outbox by trigger
(spool/suppression_outbox.py); a housekeeping job pushes the outbox to
PostgreSQL and pulls the other nodes' changes back.

API
    await wire(node)      install the outbox, add the jobs "cluster_suppressions"
                          (every SYNC_EVERY s) and "cluster_suppressions_prune";
                          the sync is then `node.suppression_sync`
    ClusterSuppressions(node, index_path, writer)
        await .tick()     push, then pull; PostgreSQL unreachable: nothing
                          changes, the next tick retries (nothing lost)
        await .prune()    drop tombstones older than TOMBSTONE_DAYS
        class attributes local / store / NAME: the outbox and store modules
        and the events' prefix (runtime/cluster_accounts.py subclasses it
        for the account tables)

Rules
- Push before pull, and outbox rows leave only after PostgreSQL committed
  them. A key with a local change still queued ignores pulled changes: that
  change is pushed next and becomes PostgreSQL's latest write (the cluster's
  conflict rule: PostgreSQL's latest write wins).
- Pull pages by seq (changes from other nodes only). A node that never
  synced (cursor -1), or whose cursor is older than the pruned tombstones,
  sweeps: it reads the whole live list in key order and makes its table
  equal to it, then continues from the seq it read at the sweep's start.
- Pulled entries make the RCPT lookup consult the table at once
  (`Suppressions.note`).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from mta.cluster import suppressions as shared
from mta.cluster.db import SharedDbUnavailable
from mta.core.envelope import AddressOutcome
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.spool import suppression_outbox as outbox
from mta.spool.layout import SpoolPaths

__all__ = ["SYNC_EVERY", "ClusterSuppressions", "wire"]

log = logging.getLogger("mta.cluster")

SYNC_EVERY = 0.5
PRUNE_EVERY = 3600.0
PUSH_BATCH = 500
PULL_PAGE = 1000


class ClusterSuppressions:
    # What a subclass syncs (runtime/cluster_accounts.py): the local outbox
    # module, the PostgreSQL store module (same functions, rows ending in
    # their seq, sweep keys their first two fields) and the log events' prefix.
    local: ClassVar[ModuleType] = outbox
    store: ClassVar[ModuleType] = shared
    NAME: ClassVar[str] = "cluster_suppressions"

    def __init__(self, node: Any, index_path: Path, writer: str):
        self.node, self.index, self.writer = node, index_path, writer

    async def tick(self) -> None:
        try:
            await self.push()
            await self.pull()
        except SharedDbUnavailable:
            pass                # logged by SharedDb; the outbox and cursor stand

    async def push(self) -> int:
        """The outbox to PostgreSQL, batch by batch -> changes pushed."""
        done = 0
        while True:
            batch = await asyncio.to_thread(self.local.read_batch, self.index, PUSH_BATCH)
            if not batch:
                return done
            now = self.node.d.clock.now()
            through = await self.node.db.call(partial(
                self.store.push, origin=self.node.name, writer=self.writer, changes=batch, now=now))
            await asyncio.to_thread(self.local.delete_through, self.index, through)
            done += len(batch)
            if len(batch) < PUSH_BATCH:
                return done

    async def pull(self) -> int:
        """Other nodes' changes since the cursor -> entries written here."""
        cursor = await asyncio.to_thread(self.local.cursor, self.index)
        if cursor < 0:
            return await self.sweep()
        added = 0
        while True:
            rows, pruned = await self.node.db.call(partial(
                self.store.pull, after=cursor, origin=self.node.name, limit=PULL_PAGE))
            if pruned > cursor:
                event(log, f"{self.NAME}_resync", node=self.node.name,
                      cursor=cursor, pruned_through=pruned)
                return added + await self.sweep()
            if not rows:
                return added
            cursor = int(rows[-1][-1])
            n = int(await asyncio.to_thread(self.local.apply_remote, self.index, rows, cursor))
            self._noted(n, rows)
            added += n
            if len(rows) < PULL_PAGE:
                return added

    async def sweep(self) -> int:
        """Make the local table the cluster's live list, page by page in key
        order; then continue by seq from where the sweep started."""
        start = await self.node.db.call(self.store.high_water)
        lo: tuple[str, str] | None = None
        added = 0
        while True:
            rows = await self.node.db.call(partial(self.store.sweep, after_key=lo, limit=PULL_PAGE))
            last = len(rows) < PULL_PAGE
            hi = None if last else (str(rows[-1][0]), str(rows[-1][1]))
            n = int(await asyncio.to_thread(self.local.apply_sweep, self.index, lo, hi, rows,
                                            start if last else None))
            self._noted(n, rows)
            added += n
            if last:
                event(log, f"{self.NAME}_synced", node=self.node.name,
                      written=added, seq=start)
                return added
            lo = hi

    def _noted(self, n: int, rows: list[tuple[Any, ...]]) -> None:
        """The RCPT lookup skips a table it believes empty: tell it."""
        spool = self.node.d.spool
        if n and spool is not None:
            r = next(r for r in rows if not r[7])
            spool.suppressions.note([AddressOutcome(r[0], "hard", self.node.d.clock.now(),
                                                    scope=r[1])])

    async def prune(self) -> None:
        before = self.node.d.clock.now() - self.store.TOMBSTONE_DAYS * 86400.0
        try:
            n = await self.node.db.call(lambda c: self.store.prune(c, before))
        except SharedDbUnavailable:
            return
        if n:
            event(log, f"{self.NAME}_pruned", tombstones=n)


async def wire(node: Any) -> None:
    index_path = SpoolPaths.of(node.d.cfg.server.state_dir).index
    writer = await asyncio.to_thread(outbox.install, index_path)
    sync = ClusterSuppressions(node, index_path, writer)
    node.suppression_sync = sync
    # A PostgreSQL error that is not "unreachable" (a bug, a bad row) is
    # logged by housekeeping; the pause keeps it from flooding the log.
    node.add_job(Job("cluster_suppressions", SYNC_EVERY, sync.tick, pause_after_failure=10.0))
    node.add_job(Job("cluster_suppressions_prune", PRUNE_EVERY, sync.prune))
