"""`Spool`: the facade the server, runtime, admin API and CLI code against.

One job: own the spool directory and wire the index (index.py), the body
store (segments.py), the group-commit writer (writer.py), the read queries
(reads.py) and recovery (recovery.py) behind the queue's API below; beside
it, `spool.ledger` (ledger.py: events, webhook cursors, pruning,
idempotency keys) and `spool.suppressions` (suppressions.py: the per-RCPT
lookup) share its writer and reader.

API:
    spool = await Spool.open(state_dir, *, now, suppression=None)  # dirs, lock, recovery
    spool.recovery: RecoveryReport;  spool.stats: SpoolStats
    spool.ledger: Ledger;  spool.suppressions: Suppressions
    spool.figures: Figures   the console overview's grouped reads (figures.py)
    await spool.enqueue(NewMessage, now, *, dsn_for: DsnMark | None = None,
                        idempotency_window: float = 86400) -> queue id
    await spool.lease_due(now, limit) -> list[QueuedRecipient]
    await spool.release([(queue_id, rcpt_idx), ...])
    await spool.record([RecipientUpdate, ...], *, outcomes=[AddressOutcome, ...])
    await spool.record_async(queue_id, rcpt_idx, *, state, reply, detail, at, outcomes=(),
                             event_detail=None) -> bool
    await spool.next_due_at() -> float | None
    await spool.read_body(queue_id, *, limit=None) -> bytes   (limit: its first bytes)
    await spool.open_body(queue_id) -> StoredBody            (read in pieces: large bodies)
    await spool.delivery_body(queue_id, *, open_over) -> DeliveryBody(body, ascii, dot_lines)
        the body read whole (≤ open_over bytes) or opened, with the flags
        acceptance stored (None: not known, look)
    await spool.dsn_candidates(limit) / delay_candidates(now, after, limit) -> list[DsnCandidate]
    await spool.list_messages(limit, include_done) / get_message(queue_id)
    await spool.counts() -> {state: n};  await spool.reclaim() -> int;  await spool.close()
  operator surface (issue 5; filters.py says what a MessageFilter selects):
    await spool.hold_messages(f, now) / release_messages(f, now) / retry_messages(f, now)
    await spool.bounce_messages(f, now, reply) / delete_messages(f, now)   -> recipients moved
    await spool.list_page(f, limit, cursor) -> ([MessageView], next cursor | None)
    await spool.list_page_json(f, limit, cursor) -> (JSON bytes, next cursor | None)
    await spool.domain_summary(now) -> [dict];  await spool.gauges() -> dict
  the other nouns (same writer and reader connection):
    spool.ledger        events, webhook cursors, pruning, idempotency keys (ledger.py)
    spool.suppressions  the per-RCPT suppression lookup (suppressions.py)

Invariants:
- `enqueue` returns only after the commit point (see the package docstring);
  every failure on the way is a `StorageError`, never a silent drop.
- One process owns a spool directory (an flock on ``spool/lock``); a second
  `open` fails with StorageError instead of corrupting the first.
- Writes go through the writer task; reads use a separate reader connection
  that only ever sees committed rows.
- Every recipient move is checked by `core.envelope.RECIPIENT_MACHINE`
  (attempts.py, steering.py). Operator moves never touch a leased
  recipient: an attempt is in flight and its record decides; the count
  returned says how many moved, and the operator repeats the action if
  needed. Each call is one transaction in the group-commit writer,
  committed with synchronous=NORMAL like any record (a power loss may undo
  it; a SIGKILL cannot). A large selection is one transaction too: the
  writer (and so every enqueue) waits for it: ~0.6 s to hold 100,000
  recipients here.
- Every write above that changes a recipient or message writes its ledger
  events in the same transaction (the package docstring, "The ledger"); an
  enqueue repeating a live idempotency key queues nothing and returns the
  first id (acceptance.py).
- Suppression (issue 4): `suppression` is a `mta.policy.suppression.
  SuppressionRules` (anything with its `suppresses_after_soft` / `expiry_for`:
  suppressions.RulesLike; this layer cannot import policy). Address outcomes
  commit in the same transaction as the recipient updates they describe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from mta.core.envelope import (
    AddressOutcome,
    DsnCandidate,
    QueuedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mta.core.errors import StorageError
from mta.core.files import fsync_dir
from mta.core.logfmt import event
from mta.core.reply import Reply
from mta.spool import index, reads
from mta.spool.acceptance import IDEMPOTENCY_WINDOW, DsnMark, NewMessage, pending_message
from mta.spool.attempts import async_report
from mta.spool.faults import storage_error
from mta.spool.figures import Figures
from mta.spool.filters import MessageFilter
from mta.spool.layout import SpoolPaths, make_dirs, take_lock
from mta.spool.ledger import Ledger
from mta.spool.ops import ASYNC, ENQUEUE, LEASE, RECLAIM, RECORD, RELEASE, STEER, SteerOp
from mta.spool.recovery import RecoveryReport, check_index_present, recover
from mta.spool.segments import SEGMENT_MAX_BYTES, SegmentStore, StoredBody
from mta.spool.suppressions import RulesLike, Suppressions
from mta.spool.views import MessageView
from mta.spool.writer import SpoolStats, Writer

__all__ = ["DeliveryBody", "DsnMark", "NewMessage", "Spool", "SpoolStats"]

log = logging.getLogger("mta.spool")


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryBody:
    """What delivery gets of a stored body (Spool.delivery_body)."""
    body: bytes | StoredBody
    ascii: bool | None          # every byte 7-bit; None: not known
    dot_lines: bool | None      # some line starts with "."; None: not known


class Spool:
    recovery: RecoveryReport

    def __init__(self, root: Path, conn: aiosqlite.Connection, reader: aiosqlite.Connection,
                 store: SegmentStore, recovery: RecoveryReport, lock_fd: int, opened_at: float,
                 suppression: RulesLike | None = None,
                 sync_index: Callable[[], None] | None = None,
                 checkpointer: index.SqliteCheckpointer | None = None):
        self.root = root
        self.recovery = recovery
        self.stats = SpoolStats()
        self.opened_at = opened_at
        self._conn = conn
        self._store = store
        self._lock_fd = lock_fd
        self._writer = Writer(conn, store, self.stats, suppression, sync_index=sync_index,
                              checkpointer=checkpointer)
        self._read = reads.ReadSide(reader)
        self.ledger = Ledger(self._writer, self._read)
        self.suppressions = Suppressions(self._read)
        self.figures = Figures(self._read)

    @classmethod
    async def open(cls, state_dir: str | os.PathLike[str], *, now: float,
                   segment_max_bytes: int = SEGMENT_MAX_BYTES,
                   suppression: RulesLike | None = None) -> Spool:
        paths = SpoolPaths.of(state_dir)
        root, segdir = paths.root, paths.segments
        conn = reader = None
        lock_fd = -1
        try:
            await asyncio.to_thread(make_dirs, paths.state, root, segdir)
            lock_fd = await asyncio.to_thread(take_lock, paths.lock)
            created = await asyncio.to_thread(check_index_present, paths.index, segdir)
            conn = await index.connect(paths.index)
            if created:
                await asyncio.to_thread(fsync_dir, root)
            sync_index = functools.partial(index.sync_wal, paths.index)
            report = await recover(conn, segdir, index_created=created, sync_index=sync_index)
            reader = await index.connect(paths.index, reader=True)
        except BaseException as exc:
            for c in (reader, conn):
                if c is not None:
                    await c.close()
            if lock_fd >= 0:
                os.close(lock_fd)
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise storage_error(exc, f"opening spool {root}") from exc
            raise
        store = SegmentStore(segdir, first_number=report.next_segment, max_bytes=segment_max_bytes)
        spool = cls(root, conn, reader, store, report, lock_fd, now, suppression, sync_index,
                    index.SqliteCheckpointer(paths.index))
        spool._writer.start()
        # DEBUG: the daemon logs the same report as event=recovery_done.
        event(log, "spool_opened", logging.DEBUG, root=root,
              **{k: v for k, v in report.to_dict().items() if not isinstance(v, (list, dict))})
        return spool

    # -- writes (all through the group-commit writer) --------------------------------

    async def enqueue(self, msg: NewMessage, now: float, *, dsn_for: DsnMark | None = None,
                      idempotency_window: float = IDEMPOTENCY_WINDOW) -> str:
        pending = pending_message(msg, now, dsn_for=dsn_for,
                                  idempotency_window=idempotency_window)
        queue_id: str = await self._writer.submit(ENQUEUE, pending)
        return queue_id

    async def lease_due(self, now: float, limit: int) -> list[QueuedRecipient]:
        if limit <= 0:
            return []
        leased: list[QueuedRecipient] = await self._writer.submit(LEASE, (now, limit))
        return leased

    async def release(self, items: Iterable[tuple[str, int]]) -> None:
        pairs = [(qid, idx) for qid, idx in items]
        if pairs:
            await self._writer.submit(RELEASE, pairs)

    async def record(self, updates: Sequence[RecipientUpdate], *,
                     outcomes: Sequence[AddressOutcome] = ()) -> None:
        """Persist attempt results, and the address outcomes they imply
        (suppression), in one transaction."""
        updates, outcomes = list(updates), list(outcomes)
        self.suppressions.note(outcomes)
        for u in updates:
            if u.state not in _STATE_VALUES:
                raise ValueError(f"unknown recipient state {u.state!r}")
        if updates or outcomes:
            await self._writer.submit(RECORD, (updates, outcomes))

    async def record_async(self, queue_id: str, rcpt_idx: int, *, state: str,
                           reply: Reply | None, detail: str, at: float,
                           outcomes: Sequence[AddressOutcome] = (),
                           event_detail: dict[str, Any] | None = None) -> bool:
        """Record a bounce (state "bounced") or complaint (state "": the
        recipient keeps its state) that arrived by mail, possibly after the
        recipient was delivered. One transaction: an attempts row (state
        "async_bounce", "complaint" when an outcome is a complaint, else
        "async_report"; `detail` in attempts.detail), the delivered/queued →
        bounced move (core.envelope.ASYNC_BOUNCE_MACHINE; no DSN is owed for
        it: the report came to our VERP path and the body may be gone), and
        the outcomes. Returns False, writing nothing, when the recipient is
        unknown. Committed with synchronous=NORMAL like any record.

        Ledger: `bounced` (sync=false) when the recipient moved, `complained`
        when an outcome is a complaint; detail has rcpt_idx, reply, status,
        diagnostic (= `detail`), then `event_detail` merged over them (the
        runtime passes class/reason, and feedback_type for a complaint)."""
        report = async_report(queue_id, rcpt_idx, state=state, reply=reply, detail=detail,
                              at=at, outcomes=tuple(outcomes), event_detail=event_detail)
        self.suppressions.note(report.outcomes)
        known: bool = await self._writer.submit(ASYNC, report)
        return known

    async def reclaim(self) -> int:
        unlinked: int = await self._writer.submit(RECLAIM, None)
        return unlinked

    # -- operator moves (issue 5): recipients the filter selects, never leased ones ---

    async def hold_messages(self, f: MessageFilter, now: float) -> int:
        """queued → held: never leased, never expired, no delay warning,
        until released. In-flight (leased) recipients are left alone."""
        return await self._steer("hold", f, now)

    async def release_messages(self, f: MessageFilter, now: float) -> int:
        """held → queued, due at once (next_attempt = now)."""
        return await self._steer("release", f, now)

    async def retry_messages(self, f: MessageFilter, now: float) -> int:
        """queued (not leased) → due at once (next_attempt = now)."""
        return await self._steer("retry", f, now)

    async def reschedule_messages(self, f: MessageFilter, now: float, at: float) -> int:
        """queued (not leased) → due at `at`, and the messages' lifetime
        counts from `at` (a scheduled send moved: the sending API)."""
        moved: int = await self._writer.submit(STEER, SteerOp("reschedule", f, now, at=at))
        return moved

    async def bounce_messages(self, f: MessageFilter, now: float, reply: Reply) -> int:
        """queued/held → bounced with `reply` (a 5xx) and an attempts row
        (state "bounced", remote_host "operator"). A DSN is owed as for any
        bounce: `dsn_candidates` returns the message once none of its
        recipients is leased."""
        if not reply.is_perm:
            raise ValueError(f"an operator bounce needs a 5xx reply, not {reply}")
        return await self._steer("bounce", f, now, str(reply))

    async def delete_messages(self, f: MessageFilter, now: float) -> int:
        """queued/held → deleted (attempts row "deleted"). No DSN: owed
        failure DSNs of the touched messages (and of every message named in
        `f.ids`) are cancelled, so once nothing is leased the message is done
        and its body dead (reclaimable)."""
        return await self._steer("delete", f, now)

    async def _steer(self, action: str, f: MessageFilter, now: float,
                     reply: str | None = None) -> int:
        if not isinstance(f, MessageFilter):
            raise TypeError(f"expected a MessageFilter, got {type(f).__name__}")
        moved: int = await self._writer.submit(STEER, SteerOp(action, f, now, reply))
        return moved

    # -- reads (reader connection: committed data only) -------------------------------

    async def next_due_at(self) -> float | None:
        return await self._read(reads.next_due_at)

    async def open_body(self, queue_id: str) -> StoredBody:
        """The body as a StoredBody (read in pieces, crc-checked at the end):
        what delivery uses for a message over core.spill.HEAD_BYTES. KeyError
        when the message is unknown or its body no longer kept."""
        return self._stored(queue_id, await self._location(queue_id))

    async def read_body(self, queue_id: str, *, limit: int | None = None) -> bytes:
        """The whole body, or with `limit` its first `limit` bytes at most
        (a DSN needs the header block only; no crc check then)."""
        return await self._read_at(queue_id, await self._location(queue_id), limit)

    async def delivery_body(self, queue_id: str, *, open_over: int) -> DeliveryBody:
        """The body as delivery sends it — read whole, or opened (a
        StoredBody) when over `open_over` bytes — with what acceptance
        learnt of it, from the same row (one query). Errors as above."""
        loc = await self._location(queue_id)
        body = (self._stored(queue_id, loc) if loc.length > open_over
                else await self._read_at(queue_id, loc, None))
        return DeliveryBody(body, loc.ascii, loc.dot_lines)

    async def _location(self, queue_id: str) -> reads.BodyLocation:
        loc = await self._read(reads.body_location, queue_id)
        if loc is None:
            raise KeyError(queue_id)
        return loc

    def _stored(self, queue_id: str, loc: reads.BodyLocation) -> StoredBody:
        if not loc.live:
            raise KeyError(f"{queue_id}: body no longer kept (message done)")
        return self._store.stored(loc.segment, loc.offset, loc.length, queue_id)

    async def _read_at(self, queue_id: str, loc: reads.BodyLocation,
                       limit: int | None) -> bytes:
        segment, offset, length = loc.segment, loc.offset, loc.length
        try:
            if limit is not None and length > limit:
                return await asyncio.to_thread(self._store.read_prefix, segment, offset, limit)
            return await self._store.read(segment, offset, length, queue_id)
        except FileNotFoundError:
            if not loc.live:
                raise KeyError(f"{queue_id}: body no longer kept (message done)") from None
            raise StorageError(f"{queue_id}: segment {segment} is missing") from None
        except OSError as exc:
            raise storage_error(exc, f"reading body of {queue_id}") from exc

    async def dsn_candidates(self, limit: int = 100) -> list[DsnCandidate]:
        return await self._read(reads.dsn_candidates, limit)

    async def delay_candidates(self, now: float, after: float,
                               limit: int = 100) -> list[DsnCandidate]:
        return await self._read(reads.delay_candidates, now - after, limit)

    async def list_messages(self, limit: int = 1000,
                            include_done: bool = False) -> list[MessageView]:
        return await self._read(reads.list_messages, limit, include_done)

    async def get_message(self, queue_id: str) -> MessageView | None:
        return await self._read(reads.get_message, queue_id)

    async def email_page(self, test: bool, limit: int, before: str | None = None,
                         tenant: str | None = None) -> tuple[list[MessageView], bool]:
        return await self._read(reads.email_page, test, limit, before, tenant)

    async def senders_of(self, queue_ids: Sequence[str]) -> dict[str, str]:
        return await self._read(reads.senders_of, list(dict.fromkeys(queue_ids)))

    async def counts(self) -> dict[str, int]:
        return await self._read(reads.counts)

    async def list_page_json(self, f: MessageFilter, limit: int,
                             cursor: str | None = None) -> tuple[bytes, str | None]:
        """`list_page` as the JSON text of the messages array (built by SQLite)."""
        return await self._read(reads.list_page_json, f, limit, cursor)

    async def list_page(self, f: MessageFilter, limit: int,
                        cursor: str | None = None) -> tuple[list[MessageView], str | None]:
        """One page of messages matching `f`, in (received_at, id) order,
        and the cursor of the next page (None on the last). A bad cursor is a
        ValueError. Cost follows the page, not the queue (filters.py)."""
        return await self._read(reads.list_page, f, limit, cursor)

    async def domain_summary(self, now: float) -> list[dict[str, Any]]:
        """Per recipient domain over pending (queued/held) recipients:
        domain, recipients, held, oldest_received_at, age_buckets
        ({"5m": n, …, "1280m": n, "1280m+": n} by message age at `now`),
        last_error (latest last_reply of a deferred recipient, or None).
        Largest domains first."""
        return await self._read(reads.domain_summary, now)

    async def gauges(self) -> dict[str, Any]:
        """For every metrics scrape: {"recipients": {state: n for every
        state}, "messages_pending": n, "oldest_pending_received_at": t|None,
        "spool_bytes": size of the segment files holding live bodies,
        "segments": how many}. Costs an index-only count of recipients by
        state, a seek per live segment, and a stat per segment file."""
        out = await self._read(reads.gauges)
        live = await self._read(reads.live_segments)
        sizes = await asyncio.to_thread(self._store.scan)
        out["spool_bytes"] = sum(size for seg, size in sizes.items() if seg in live)
        out["segments"] = len(sizes)
        return out

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        if self._read.closed:
            return
        self._read.closed = True
        await self._writer.stop()
        try:
            # A clean shutdown leaves no WAL to replay; failure here is harmless.
            await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        await self._read.conn.close()
        await self._conn.close()
        self._store.close()
        os.close(self._lock_fd)
        event(log, "spool_closed", logging.INFO, **_stats_fields(self.stats))


_STATE_VALUES = frozenset(s.value for s in RecipientState)


def _stats_fields(stats: SpoolStats) -> dict[str, int | float]:
    """The writer's counters (a dataclass of numbers) as event() fields."""
    return {k: v for k, v in dataclasses.asdict(stats).items() if isinstance(v, (int, float))}
