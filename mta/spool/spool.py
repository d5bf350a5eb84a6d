"""`Spool`: the facade the server, runtime, admin API and CLI code against.

One job: wire the index (index.py), the body store (segments.py), the
group-commit writer (writer.py), the read queries (reads.py) and recovery
(recovery.py) behind the public API below, and own the spool directory.

API:
    spool = await Spool.open(state_dir, *, now, suppression=None)  # dirs, lock, recovery
    spool.recovery: RecoveryReport;  spool.stats: SpoolStats
    await spool.enqueue(NewMessage, now, *, dsn_for: DsnMark | None = None,
                        idempotency_window: float = 86400) -> queue id
    await spool.lease_due(now, limit) -> list[QueuedRecipient]
    await spool.release([(queue_id, rcpt_idx), ...])
    await spool.record([RecipientUpdate, ...], *, outcomes=[AddressOutcome, ...])
    await spool.record_async(queue_id, rcpt_idx, *, state, reply, detail, at, outcomes=(),
                             event_detail=None) -> bool
    await spool.suppressed(address, scope, *, now=None) -> SuppressionView | None
    await spool.next_due_at() -> float | None
    await spool.read_body(queue_id, *, limit=None) -> bytes   (limit: its first bytes)
    await spool.open_body(queue_id) -> StoredBody            (read in pieces: large bodies)
    await spool.dsn_candidates(limit) / delay_candidates(now, after, limit) -> list[DsnCandidate]
    await spool.list_messages(limit, include_done) / get_message(queue_id)
    await spool.counts() -> {state: n};  await spool.reclaim() -> int;  await spool.close()
  operator surface (issue 5; filters.py says what a MessageFilter selects):
    await spool.hold_messages(f, now) / release_messages(f, now) / retry_messages(f, now)
    await spool.bounce_messages(f, now, reply) / delete_messages(f, now)   -> recipients moved
    await spool.list_page(f, limit, cursor) -> ([MessageView], next cursor | None)
    await spool.domain_summary(now) -> [dict];  await spool.gauges() -> dict
  the ledger (issue 6; which op writes which event: writer.py):
    await spool.append_events([LedgerEvent, ...])        # events with no state change
    await spool.events_after(after_seq, limit, *, types=None, recipient=None,
                             credential=None) -> [EventView]   # seq order
    await spool.message_events(queue_id) -> [EventView];  await spool.last_event_seq() -> int
    await spool.prune_events(before, batch=1000) / prune_idempotency(before, batch=1000) -> n
    await spool.webhook_state(name) -> dict | None;  await spool.webhook_states() -> [dict]
    await spool.set_webhook_state(name, *, cursor=None, failing_since=UNSET, …)

Invariants:
- `enqueue` returns only after the commit point (see the package docstring);
  every failure on the way is a `StorageError`, never a silent drop.
- One process owns a spool directory (an flock on ``spool/lock``); a second
  `open` fails with StorageError instead of corrupting the first.
- Writes go through the writer task; reads use a separate reader connection
  that only ever sees committed rows.
- Operator moves (index.OPERATOR_MOVES) never touch a leased recipient:
  an attempt is in flight and its record decides; the count returned says
  how many moved, and the operator repeats the action if needed. Each call
  is one transaction in the group-commit writer, committed with
  synchronous=NORMAL like any record (a power loss may undo it; a SIGKILL
  cannot). A large selection is one transaction too: the writer (and so
  every enqueue) waits for it: ~0.6 s to hold 100,000 recipients here.
- Ledger (issue 6): every write above that changes a recipient or message
  writes its events in the same transaction (the package docstring, "The
  ledger"). A reader that pages with `events_after(cursor)` never misses an
  event: seqs are assigned by the one writer at commit, so every seq up to
  the newest visible one is visible (none commits later with a smaller seq).
- Idempotency (issue 6): an enqueue with `NewMessage.idempotency_key` whose
  (credential, key) was used within `idempotency_window` seconds of `now`
  returns the first message's queue id and queues nothing (writer.py).
- Suppression (issue 4): `suppression` is a `mta.policy.suppression.
  SuppressionRules` (any object with its `suppresses_after_soft` /
  `expiry_for`; this layer cannot import policy). Address outcomes commit in
  the same transaction as the recipient updates they describe, so a crash
  never records a hard bounce without its suppression or the reverse.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import aiosqlite

from mta.core.logfmt import event
from mta.core.envelope import (BOUNCED, AddressOutcome, DsnCandidate, LedgerEvent,
                               QueuedRecipient, RecipientUpdate)
from mta.core.errors import StorageError
from mta.core.ids import new_queue_id
from mta.core.reply import Reply
from mta.spool import index, reads
from mta.spool.filters import MessageFilter
from mta.spool.faults import storage_error
from mta.spool.recovery import RecoveryReport, check_index_present, recover
from mta.core.files import fsync_dir
from mta.spool.segments import SEGMENT_MAX_BYTES, SegmentStore, StoredBody
from mta.spool.suppressions import RulesLike, address_key
from mta.spool.views import EventView, MessageView, SuppressionView
from mta.spool.writer import (ASYNC, ENQUEUE, EVENTS, LEASE, PRUNE, RECLAIM, RECORD, RELEASE,
                              STEER, WEBHOOK, AsyncReport, PendingMessage, PruneOp, SpoolStats,
                              SteerOp, Writer)

log = logging.getLogger("mta.spool")

DSN_KINDS = {"failure": "sent", "delay": "delay_sent"}
SUPPRESSION_RECHECK = 5.0   # seconds; see Spool._suppressions_exist
IDEMPOTENCY_WINDOW = 86400.0   # [ledger] idempotency_window's default
UNSET = object()   # set_webhook_state: "leave this field as it is"
# Message-ID for the `received` event: searched in the header block only
# (up to HEADER_SCAN bytes), ~1 µs for a usual header.
HEADER_SCAN = 65536
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(<[^>\r\n]{1,900}>)")


@dataclass(frozen=True)
class NewMessage:
    sender: str                  # "" = null reverse path
    recipients: tuple[str, ...]  # "local@domain" with normalised domain
    body: bytes                  # complete message, CRLF line endings
    credential: str | None = None
    listener: str = ""
    client_ip: str = ""
    is_dsn: bool = False
    # Chosen by the caller when it must name the id before the commit point
    # (the Received: header carries it); else the spool makes one.
    queue_id: str | None = None
    # Accept-and-record ([suppression] on_rcpt = "accept"): (rcpt index, reply
    # text) of recipients on the suppression list. They are stored final in
    # state 'suppressed' with that reply as last_reply: never attempted, no
    # DSN owed; a message whose recipients are all suppressed is done at once.
    suppressed: tuple[tuple[int, str], ...] = ()
    # Idempotent submission (issue 6): a repeat of this key from the same
    # credential within the window queues nothing and gets the first id.
    idempotency_key: str | None = None
    # A large message (issue 10 item 3): `body` is its head and this
    # core.spill.SpillFile the rest; the writer copies it into the segment
    # in bounded pieces. The caller keeps it open until enqueue returns.
    tail: Any = None


@dataclass(frozen=True)
class DsnMark:
    """Marks recipients of an original message as notified, in the same
    transaction that enqueues the DSN (crash states S7/S8)."""
    queue_id: str
    rcpt_idxs: tuple[int, ...]
    kind: str                    # "failure" → dsn_state='sent'; "delay" → 'delay_sent'


def _message_id(body: bytes) -> str | None:
    end = body.find(b"\r\n\r\n", 0, HEADER_SCAN)
    m = _MESSAGE_ID.search(body, 0, end if end >= 0 else min(len(body), HEADER_SCAN))
    return m.group(1).decode("utf-8", "replace") if m else None


def _make_dirs(*dirs: Path) -> None:
    # A directory we create must itself be durable before anything in it is.
    for d in dirs:
        if not d.is_dir():
            d.mkdir(mode=0o700)
            fsync_dir(d.parent)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{path} is locked: another mta process owns this spool") from None
    return fd


def _event_types(limit: int, types: Sequence[str] | None) -> list[str] | None:
    """The ledger reads' argument check: types deduplicated ([] matches
    nothing), or None for every type."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return None if types is None else list(dict.fromkeys(types))


class Spool:
    recovery: RecoveryReport

    def __init__(self, root: Path, conn: aiosqlite.Connection, reader: aiosqlite.Connection,
                 store: SegmentStore, recovery: RecoveryReport, lock_fd: int, opened_at: float,
                 suppression: RulesLike | None = None):
        self.root = root
        self.recovery = recovery
        self.stats = SpoolStats()
        self.opened_at = opened_at
        self._conn = conn
        self._reader = reader
        self._store = store
        self._lock_fd = lock_fd
        self._writer = Writer(conn, store, self.stats, suppression)
        self._closed = False
        # See `suppressed`: whether the suppression list may be non-empty.
        self._suppressions_seen = False
        self._suppressions_checked = float("-inf")

    @classmethod
    async def open(cls, state_dir: str | os.PathLike, *, now: float,
                   segment_max_bytes: int = SEGMENT_MAX_BYTES,
                   suppression: RulesLike | None = None) -> "Spool":
        state = Path(state_dir)
        root = state / "spool"
        segdir = root / "segments"
        index_path = root / "index.sqlite3"
        conn = reader = None
        lock_fd = -1
        try:
            await asyncio.to_thread(_make_dirs, state, root, segdir)
            lock_fd = await asyncio.to_thread(_lock, root / "lock")
            created = await asyncio.to_thread(check_index_present, index_path, segdir)
            conn = await index.connect(index_path)
            if created:
                await asyncio.to_thread(fsync_dir, root)
            report = await recover(conn, segdir, index_created=created)
            reader = await index.connect(index_path, reader=True)
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
        spool = cls(root, conn, reader, store, report, lock_fd, now, suppression)
        spool._writer.start()
        # DEBUG: the daemon logs the same report as event=recovery_done.
        event(log, "spool_opened", logging.DEBUG, root=root,
              **{k: v for k, v in report.to_dict().items() if not isinstance(v, (list, dict))})
        return spool

    # -- writes (all through the group-commit writer) --------------------------------

    async def enqueue(self, msg: NewMessage, now: float, *, dsn_for: DsnMark | None = None,
                      idempotency_window: float = IDEMPOTENCY_WINDOW) -> str:
        if not msg.recipients:
            raise ValueError("a message needs at least one recipient")
        mark = None
        if dsn_for is not None:
            if dsn_for.kind not in DSN_KINDS:
                raise ValueError(f"unknown DSN kind {dsn_for.kind!r}")
            mark = (dsn_for.queue_id, tuple(dsn_for.rcpt_idxs), dsn_for.kind)
        suppressed = tuple((int(i), str(why)) for i, why in msg.suppressed)
        idxs = [i for i, _ in suppressed]
        if len(set(idxs)) != len(idxs) or not all(0 <= i < len(msg.recipients) for i in idxs):
            raise ValueError(f"bad suppressed recipient indexes {idxs} for "
                             f"{len(msg.recipients)} recipients")
        body = bytes(msg.body)
        size = len(body) + (msg.tail.length if msg.tail is not None else 0)
        detail = {"sender": msg.sender, "recipients": len(msg.recipients), "size": size,
                  "listener": msg.listener, "client_ip": msg.client_ip}
        message_id = _message_id(body)
        if message_id:
            detail["message_id"] = message_id
        if dsn_for is not None:
            detail.update(dsn_for=dsn_for.queue_id, dsn_kind=dsn_for.kind)
        if msg.idempotency_key is not None:
            detail["idempotency_key"] = msg.idempotency_key
        pending = PendingMessage(
            queue_id=msg.queue_id or new_queue_id(now), sender=msg.sender, recipients=tuple(msg.recipients),
            body=body, received_at=now, credential=msg.credential,
            listener=msg.listener, client_ip=msg.client_ip, is_dsn=msg.is_dsn,
            dsn_for=dsn_for.queue_id if dsn_for is not None else None, dsn_mark=mark,
            suppressed=suppressed, received_detail=json.dumps(detail),
            idempotency_key=msg.idempotency_key, idempotency_window=float(idempotency_window),
            tail=msg.tail)
        return await self._writer.submit(ENQUEUE, pending)

    async def lease_due(self, now: float, limit: int) -> list[QueuedRecipient]:
        if limit <= 0:
            return []
        return await self._writer.submit(LEASE, (now, limit))

    async def release(self, items: Iterable[tuple[str, int]]) -> None:
        pairs = [(qid, idx) for qid, idx in items]
        if pairs:
            await self._writer.submit(RELEASE, pairs)

    async def record(self, updates: Sequence[RecipientUpdate], *,
                     outcomes: Sequence[AddressOutcome] = ()) -> None:
        """Persist attempt results, and the address outcomes they imply
        (suppression), in one transaction."""
        updates, outcomes = list(updates), list(outcomes)
        self._note_outcomes(outcomes)
        for u in updates:
            if u.state not in index.STATE_TRANSITIONS:
                raise ValueError(f"unknown recipient state {u.state!r}")
        if updates or outcomes:
            await self._writer.submit(RECORD, (updates, outcomes))

    async def record_async(self, queue_id: str, rcpt_idx: int, *, state: str,
                           reply: Reply | None, detail: str, at: float,
                           outcomes: Sequence[AddressOutcome] = (),
                           event_detail: dict | None = None) -> bool:
        """Record a bounce (state "bounced") or complaint (state "": the
        recipient keeps its state) that arrived by mail, possibly after the
        recipient was delivered. One transaction: an attempts row (state
        "async_bounce", "complaint" when an outcome is a complaint, else
        "async_report"; `detail` in attempts.detail), the delivered/queued →
        bounced move (index.ASYNC_TRANSITIONS; no DSN is owed for it: the
        report came to our VERP path and the body may be gone), and the
        outcomes. Returns False, writing nothing, when the recipient is
        unknown. Committed with synchronous=NORMAL like any record.

        Ledger: `bounced` (sync=false) when the recipient moved, `complained`
        when an outcome is a complaint; detail has rcpt_idx, reply, status,
        diagnostic (= `detail`), then `event_detail` merged over them (the
        runtime passes class/reason, and feedback_type for a complaint)."""
        if state not in (BOUNCED, ""):
            raise ValueError(f"record_async state must be 'bounced' or '', not {state!r}")
        outcomes = tuple(outcomes)
        self._note_outcomes(outcomes)
        if state:
            kind = "async_bounce"
        elif any(o.kind == "complaint" for o in outcomes):
            kind = "complaint"
        else:
            kind = "async_report"
        extra = {"status": (reply.esc or None) if reply is not None else None,
                 **(event_detail or {})}
        report = AsyncReport(queue_id=queue_id, rcpt_idx=int(rcpt_idx), state=state,
                             attempt_state=kind, reply=str(reply) if reply is not None else None,
                             detail=detail, at=at, outcomes=outcomes, event_detail=extra)
        return await self._writer.submit(ASYNC, report)

    async def reclaim(self) -> int:
        return await self._writer.submit(RECLAIM, None)

    # -- the ledger (issue 6) ----------------------------------------------------------

    async def append_events(self, events: Sequence[LedgerEvent]) -> None:
        """Append events that go with no state change (`rejected` at
        submission, `suppressed` refused at RCPT), through the writer: they
        share the next batch's transaction (synchronous=NORMAL unless it has
        enqueues: a power loss may lose them, a SIGKILL cannot). An empty
        credential is filled with the message's when queue_id names one."""
        events = list(events)
        for e in events:
            if not isinstance(e, LedgerEvent):
                raise TypeError(f"expected a LedgerEvent, got {type(e).__name__}")
            json.dumps(e.detail)   # fail here, in the caller, not in the batch
        if events:
            await self._writer.submit(EVENTS, events)

    async def prune_events(self, before: float, batch: int = 1000) -> int:
        """Delete at most `batch` of the oldest events with at < `before`;
        returns how many. Small batches keep the writer (and so every
        enqueue) waiting only briefly: call again, with a pause, while it
        returns `batch`."""
        return await self._prune("events", before, batch)

    async def prune_idempotency(self, before: float, batch: int = 1000) -> int:
        """Delete at most `batch` idempotency keys created before `before`
        (keys past their window are already ignored; this only frees space)."""
        return await self._prune("idempotency", before, batch)

    async def _prune(self, table: str, before: float, batch: int) -> int:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        return await self._writer.submit(PRUNE, PruneOp(table, float(before), int(batch)))

    async def set_webhook_state(self, name: str, *, cursor: int | None = None,
                                failing_since=UNSET, next_attempt=UNSET, attempts=UNSET,
                                last_error=UNSET, state=UNSET) -> None:
        """Create or update the delivery state of webhook `name`. Fields left
        out keep their value (a new row starts at cursor 0, attempts 0,
        state "ok", the others None); pass None to clear failing_since,
        next_attempt or last_error. cursor=None leaves the cursor alone; any
        int sets it (also backwards: replay). Through the writer, committed
        with synchronous=NORMAL: a power loss may forget the last cursor
        advance, so events are re-sent (with the same webhook-id)."""
        fields = {k: v for k, v in (("cursor", cursor), ("failing_since", failing_since),
                                    ("next_attempt", next_attempt), ("attempts", attempts),
                                    ("last_error", last_error), ("state", state))
                  if v is not UNSET and not (k == "cursor" and v is None)}
        for k in ("cursor", "attempts", "state"):
            if k in fields and fields[k] is None:
                raise ValueError(f"webhook state {k} cannot be None")
        await self._writer.submit(WEBHOOK, (str(name), fields))

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
        return await self._writer.submit(STEER, SteerOp(action, f, now, reply))

    # -- reads (reader connection: committed data only) -------------------------------

    async def next_due_at(self) -> float | None:
        return await self._read(reads.next_due_at(self._reader))

    async def open_body(self, queue_id: str) -> StoredBody:
        """The body as a StoredBody (read in pieces, crc-checked at the end):
        what delivery uses for a message over core.spill.HEAD_BYTES. KeyError
        when the message is unknown or its body no longer kept."""
        loc = await self._read(reads.body_location(self._reader, queue_id))
        if loc is None:
            raise KeyError(queue_id)
        segment, offset, length, live = loc
        if not live:
            raise KeyError(f"{queue_id}: body no longer kept (message done)")
        return self._store.stored(segment, offset, length, queue_id)

    async def read_body(self, queue_id: str, *, limit: int | None = None) -> bytes:
        """The whole body, or with `limit` its first `limit` bytes at most
        (a DSN needs the header block only; no crc check then)."""
        loc = await self._read(reads.body_location(self._reader, queue_id))
        if loc is None:
            raise KeyError(queue_id)
        segment, offset, length, live = loc
        try:
            if limit is not None and length > limit:
                return await asyncio.to_thread(self._store.read_prefix, segment, offset, limit)
            return await self._store.read(segment, offset, length, queue_id)
        except FileNotFoundError:
            if not live:
                raise KeyError(f"{queue_id}: body no longer kept (message done)") from None
            raise StorageError(f"{queue_id}: segment {segment} is missing") from None
        except OSError as exc:
            raise storage_error(exc, f"reading body of {queue_id}") from exc

    async def dsn_candidates(self, limit: int = 100) -> list[DsnCandidate]:
        return await self._read(reads.dsn_candidates(self._reader, limit))

    async def delay_candidates(self, now: float, after: float, limit: int = 100) -> list[DsnCandidate]:
        return await self._read(reads.delay_candidates(self._reader, now - after, limit))

    async def list_messages(self, limit: int = 1000, include_done: bool = False) -> list[MessageView]:
        return await self._read(reads.list_messages(self._reader, limit, include_done))

    async def get_message(self, queue_id: str) -> MessageView | None:
        return await self._read(reads.get_message(self._reader, queue_id))

    async def counts(self) -> dict[str, int]:
        return await self._read(reads.counts(self._reader))

    async def list_page_json(self, f: MessageFilter, limit: int,
                             cursor: str | None = None) -> tuple[bytes, str | None]:
        """`list_page` as the JSON text of the messages array (built by SQLite)."""
        return await self._read(reads.list_page_json(self._reader, f, limit, cursor))

    async def list_page(self, f: MessageFilter, limit: int,
                        cursor: str | None = None) -> tuple[list[MessageView], str | None]:
        """One page of messages matching `f`, in (received_at, id) order,
        and the cursor of the next page (None on the last). A bad cursor is a
        ValueError. Cost follows the page, not the queue (filters.py)."""
        return await self._read(reads.list_page(self._reader, f, limit, cursor))

    async def domain_summary(self, now: float) -> list[dict]:
        """Per recipient domain over pending (queued/held) recipients:
        domain, recipients, held, oldest_received_at, age_buckets
        ({"5m": n, …, "1280m": n, "1280m+": n} by message age at `now`),
        last_error (latest last_reply of a deferred recipient, or None).
        Largest domains first."""
        return await self._read(reads.domain_summary(self._reader, now))

    async def gauges(self) -> dict:
        """For every metrics scrape: {"recipients": {state: n for every
        state}, "messages_pending": n, "oldest_pending_received_at": t|None,
        "spool_bytes": size of the segment files holding live bodies,
        "segments": how many}. Costs an index-only count of recipients by
        state, a seek per live segment, and a stat per segment file."""
        out = await self._read(reads.gauges(self._reader))
        live = await self._read(reads.live_segments(self._reader))
        sizes = await asyncio.to_thread(self._store.scan)
        out["spool_bytes"] = sum(size for seg, size in sizes.items() if seg in live)
        out["segments"] = len(sizes)
        return out

    async def events_after(self, after_seq: int, limit: int, *,
                           types: Sequence[str] | None = None, recipient: str | None = None,
                           credential: str | None = None) -> list[EventView]:
        """Up to `limit` events with seq > `after_seq`, in seq order,
        optionally only of `types`, to exact address `recipient`, of
        `credential` ("" = events without one). Resume with the last seq
        returned. When fewer than `limit` come back, no event matching the
        filters exists up to `last_event_seq()` read BEFORE this call, so a
        filtered consumer may move its cursor there (instead of rescanning
        unmatched events)."""
        types = _event_types(limit, types)
        if types == []:
            return []
        return await self._read(reads.events_after(self._reader, int(after_seq), int(limit),
                                                   types, recipient, credential))

    async def event_payloads_after(self, after_seq: int, limit: int, *,
                                   types: Sequence[str] | None = None,
                                   credential: str | None = None) -> list[tuple[int, bytes]]:
        """`events_after`, as (seq, the event's webhook payload object as
        compact UTF-8 JSON) built by SQLite on the reader thread: the webhook
        sender's read, with no per-event work on the event loop."""
        types = _event_types(limit, types)
        if types == []:
            return []
        return await self._read(reads.event_payloads_after(
            self._reader, int(after_seq), int(limit), types, credential))

    async def message_events(self, queue_id: str) -> list[EventView]:
        """Every event of one message, in seq order (the `queue show` timeline)."""
        return await self._read(reads.message_events(self._reader, queue_id))

    async def last_event_seq(self) -> int:
        """The newest seq ever committed (0 when none); pruning never lowers it."""
        return await self._read(reads.last_event_seq(self._reader))

    async def webhook_state(self, name: str) -> dict | None:
        """{name, cursor, failing_since, next_attempt, attempts, last_error,
        state} of webhook `name`, or None before its first set_webhook_state."""
        return await self._read(reads.webhook_state(self._reader, name))

    async def webhook_states(self) -> list[dict]:
        """`webhook_state` of every stored name, by name."""
        return await self._read(reads.webhook_states(self._reader))

    async def suppressed(self, address: str, scope: str | None, *,
                         now: float | None = None) -> SuppressionView | None:
        """The active suppression of `address`: the global entry, else the
        one for credential `scope` (None: global only). Entries expired at
        `now` are ignored. `now` defaults to the wall clock because callers
        at RCPT TO have no better one; tests pass it. Two primary-key seeks
        on the reader connection."""
        if not await self._suppressions_exist():
            return None
        if now is None:
            now = time.time()
        return await self._read(reads.suppressed(self._reader, address_key(address),
                                                 scope or "", now))

    async def _suppressions_exist(self) -> bool:
        # The list is empty on new installs (and in benchmarks): then skip the
        # per-RCPT lookup, a round trip to the reader thread. Rows this
        # process adds set the flag at once (`_note_outcomes`); rows added by
        # `mta suppression add/import` (another process) are seen within
        # SUPPRESSION_RECHECK seconds.
        if self._suppressions_seen:
            return True
        now = time.monotonic()
        if now - self._suppressions_checked < SUPPRESSION_RECHECK:
            return False
        self._suppressions_checked = now
        self._suppressions_seen = await self._read(reads.any_suppression(self._reader))
        return self._suppressions_seen

    def _note_outcomes(self, outcomes) -> None:
        if any(o.kind != "delivered" for o in outcomes):
            self._suppressions_seen = True

    async def _read(self, coro):
        if self._closed:
            coro.close()
            raise StorageError("spool is closed")
        try:
            return await coro
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading the spool index") from exc

    # -- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._writer.stop()
        try:
            # A clean shutdown leaves no WAL to replay; failure here is harmless.
            await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        await self._reader.close()
        await self._conn.close()
        self._store.close()
        os.close(self._lock_fd)
        event(log, "spool_closed", **_stats_fields(self.stats))


def _stats_fields(stats) -> dict:
    """The writer's counters (a dataclass of numbers) as event() fields."""
    import dataclasses
    return {k: v for k, v in dataclasses.asdict(stats).items() if isinstance(v, (int, float))}
