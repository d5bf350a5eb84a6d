"""Acceptance: what an enqueue asks for, and the writer's ENQUEUE handler.

One job: turn a `NewMessage` into the rows of its commit point (crash
state S4, __init__.py): the message, its recipients (queued, or final
'suppressed' for accept-and-record), a DSN's mark on its original, the
idempotency key, the ledger events of all of these, and the segment's mark
past its record, inserted in the batch's one transaction. Recovery replays
a record through the same `insert` (replay.py, S4p), so a replayed
acceptance writes exactly what the original did.

API:
    NewMessage, DsnMark                        what callers enqueue (public: mta.spool)
    pending_message(msg, now, *, dsn_for, idempotency_window) -> PendingMessage
        the checked request, its id chosen (`new_queue_id` unless the caller
        named one), its `received` event detail built and its body flags
        known (body_flags)
    body_flags(head, tail, *, ascii=None, dot_lines=None) -> (ascii, dot_lines)
        of the bytes the segment will hold (head + tail): every byte 7-bit;
        some line starts with ".". Given the caller's flags for the content
        past the header section (NewMessage.ascii / .dot_lines) only the
        header section is scanned (a few KB); without them the whole head
        (C-level scans) and the tail's SpillFile flags, kept while it was
        written. Stored with the message's row (messages.body_ascii /
        body_dots) so no delivery looks again.
    await insert(txn, [Placed, …]) -> [queue id, …]      the ENQUEUE handler
        (everything it writes comes from the Placed: the PendingMessage's
        envelope fields, never its body, and the record's location)

Events (ledger_sql.py): `received`, then per recipient `queued` or
`suppressed` (idx order, built by SQLite from the rows just inserted); a
DSN's mark writes `dsn_sent` per marked recipient of the ORIGINAL; an
idempotent duplicate writes only `received` with `duplicate_of`.

Idempotent submission: an enqueue with a key whose (credential, key) row
is younger than its window (or was inserted earlier in the same batch: one
writer, so racing duplicates meet here) inserts nothing and resolves with
the ORIGINAL queue id; its body is already in the segment, as unreferenced
garbage (like S3's orphans, reclaimed with its segment).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mta.core.ids import new_queue_id
from mta.core.logfmt import event
from mta.core.spill import SpillFile
from mta.spool import ledger_sql, queue_sql
from mta.spool.ops import PendingMessage, Placed, Txn
from mta.spool.reads import Statements, fetchall
from mta.spool.records import HEADER

log = logging.getLogger("mta.spool")

DSN_KINDS = {"failure": "sent", "delay": "delay_sent"}
IDEMPOTENCY_WINDOW = 86400.0   # [ledger] idempotency_window's default
# Message-ID for the `received` event: searched in the header block only
# (up to HEADER_SCAN bytes), ~1 µs for a usual header.
HEADER_SCAN = 65536
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(<[^>\r\n]{1,900}>)")
_KEY_CHUNK = 400   # (credential, key) pairs per lookup, well under SQLite's variable limit


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
    tail: SpillFile | None = None
    # What the caller knows of the content past the header section (body and
    # tail), e.g. the server's DATA reader's (server.data.DataBody.ascii /
    # .dot_lines): every byte 7-bit; some line starts with "." (True when
    # unsure). Trusted: a False `dot_lines` sends the body unstuffed. Header
    # work before enqueue (Received:, DKIM-Signature:, a removed header) may
    # change the header section only; the spool judges that itself. None: the
    # spool scans the whole body (body_flags).
    ascii: bool | None = None
    dot_lines: bool | None = None
    # The sending API (issue 13). `detail`: extra keys of the `received`
    # event (tags, the API key, a request fingerprint …; JSON values; the
    # spool's own keys win). `test`: a test key's message — captured, never
    # delivered (the runner routes it to the capture transport). `not_before`:
    # a scheduled send — every recipient is first due then, and its queue
    # lifetime and delay warnings count from then.
    detail: Mapping[str, Any] | None = None
    test: bool = False
    not_before: float | None = None
    # Outbound TLS the sender asked for (issue 17, RFC 8689): TLS_REQUIRED
    # (MAIL FROM … REQUIRETLS) and/or TLS_OPTIONAL (a "TLS-Required: No" field).
    tls_flags: int = 0


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


def body_flags(head: bytes, tail: SpillFile | None, *, ascii: bool | None = None,
               dot_lines: bool | None = None) -> tuple[bool, bool]:
    if ascii is not None and dot_lines is not None:
        # Known past the header section; the header lines (up to the blank
        # line) are judged here: they may have changed since.
        end = head.find(b"\r\n\r\n")
        end = len(head) if end < 0 else end + 2
        header = head if end >= len(head) else head[:end]    # a few KB
        return (ascii and header.isascii(),
                dot_lines or head.startswith(b".") or head.find(b"\r\n.", 0, end) >= 0)
    is_ascii = head.isascii()
    dots = head.startswith(b".") or b"\r\n." in head    # what stuffing doubles
    if tail is not None and tail.length:
        is_ascii = is_ascii and tail.is_ascii
        # tail.dot_lines counts a "." at its start as a line start: a head
        # that does not end with a line end makes that a harmless "True"
        dots = dots or tail.dot_lines
    return is_ascii, dots


def pending_message(msg: NewMessage, now: float, *, dsn_for: DsnMark | None = None,
                    idempotency_window: float = IDEMPOTENCY_WINDOW) -> PendingMessage:
    """Check `msg` (ValueError, before anything is written) and make it the
    writer's request."""
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
    ascii, dot_lines = body_flags(body, msg.tail, ascii=msg.ascii, dot_lines=msg.dot_lines)
    size = len(body) + (msg.tail.length if msg.tail is not None else 0)
    detail: dict[str, Any] = dict(msg.detail or {})
    detail.update({"sender": msg.sender, "recipients": len(msg.recipients),
                              "size": size, "listener": msg.listener,
                   "client_ip": msg.client_ip})
    if msg.test:
        detail["test"] = True
    if msg.not_before is not None:
        detail["scheduled_at"] = msg.not_before
    message_id = _message_id(body)
    if message_id:
        detail["message_id"] = message_id
    if dsn_for is not None:
        detail.update(dsn_for=dsn_for.queue_id, dsn_kind=dsn_for.kind)
    if msg.idempotency_key is not None:
        detail["idempotency_key"] = msg.idempotency_key
    return PendingMessage(
        queue_id=msg.queue_id or new_queue_id(now), sender=msg.sender,
        recipients=tuple(msg.recipients), body=body, received_at=now,
        credential=msg.credential, listener=msg.listener, client_ip=msg.client_ip,
        is_dsn=msg.is_dsn, dsn_for=dsn_for.queue_id if dsn_for is not None else None,
        dsn_mark=mark, suppressed=suppressed, received_detail=json.dumps(detail),
        idempotency_key=msg.idempotency_key, idempotency_window=float(idempotency_window),
        tail=msg.tail, ascii=ascii, dot_lines=dot_lines, test=msg.test,
        not_before=msg.not_before, tls_flags=msg.tls_flags)


async def insert(txn: Txn, placed: list[Placed]) -> list[str]:
    """Insert the batch's messages with their events; returns each one's
    queue id (the original's, for an idempotent duplicate)."""
    keys = await _idempotency_lookup(txn.conn, [p.message for p in placed])
    rows = _Rows(keys, txn.touched)
    ids = [rows.add(p) for p in placed]
    await rows.write(txn.conn)
    return ids


Key = tuple[str, str]


class _Rows:
    """The rows one batch of enqueues writes, gathered so each statement is
    one executemany."""

    def __init__(self, keys: dict[Key, tuple[str, float]], touched: set[str]):
        self.keys = keys
        self.touched = touched
        self.messages: list[tuple[Any, ...]] = []
        self.recipients: list[tuple[Any, ...]] = []
        self.suppressed: list[tuple[Any, ...]] = []
        self.dsn_sent: list[tuple[str, int]] = []
        self.delay_sent: list[tuple[str, int]] = []
        self.keys_put: list[tuple[str, str, str, float]] = []
        self.received: list[tuple[Any, ...]] = []
        self.dups: list[tuple[Any, ...]] = []
        self.dsn_events: list[tuple[Any, ...]] = []
        self.marks: dict[int, int] = {}      # segment -> end of its last record seen

    def add(self, p: Placed) -> str:
        m = p.message
        # Seen, duplicate or not: recovery never replays it (S3r, S4p).
        end = p.offset + HEADER.size + p.length
        self.marks[p.segment] = max(end, self.marks.get(p.segment, 0))
        original = self._duplicate_of(m)
        if original is not None:
            return original
        cred, at = m.credential or "", m.received_at
        self.messages.append((m.queue_id, m.sender, at, p.length, p.segment, p.offset, p.length,
                              m.credential, m.listener, m.client_ip, int(m.is_dsn), m.dsn_for,
                              m.ascii, m.dot_lines, int(m.test), m.not_before, m.tls_flags))
        self.received.append((at, "received", m.queue_id, "", cred, m.received_detail))
        why = dict(m.suppressed)
        for idx, address in enumerate(m.recipients):
            domain = address.rpartition("@")[2]
            if idx in why:
                self.suppressed.append((m.queue_id, idx, address, domain, at, why[idx], at))
            else:
                self.recipients.append((m.queue_id, idx, address, domain,
                                        at if m.not_before is None else m.not_before, at))
        if why:
            self.touched.add(m.queue_id)   # all suppressed → done (and body dead) at once
        if m.dsn_mark is not None:
            orig, idxs, kind = m.dsn_mark
            target = self.dsn_sent if kind == "failure" else self.delay_sent
            target.extend((orig, i) for i in idxs)
            self.touched.add(orig)
            self.dsn_events.extend((at, "dsn_sent", json.dumps(
                {"rcpt_idx": i, "dsn_queue_id": m.queue_id, "kind": kind}), orig, i)
                for i in idxs)
        return m.queue_id

    def _duplicate_of(self, m: PendingMessage) -> str | None:
        """The original's id when `m` repeats a live key (and its event);
        else None, and `m`'s key is put (a later duplicate in this batch
        finds it)."""
        if m.idempotency_key is None:
            return None
        cred, at = m.credential or "", m.received_at
        k = (cred, m.idempotency_key)
        hit = self.keys.get(k)
        if hit is not None and hit[1] >= at - m.idempotency_window:
            orig = hit[0]
            detail = json.loads(m.received_detail)
            detail["duplicate_of"] = orig
            detail["discarded_id"] = m.queue_id
            self.dups.append((at, "received", orig, "", cred, json.dumps(detail)))
            event(log, "idempotent_repeat", discarded_id=m.queue_id, id=orig,
                  idempotency_key=m.idempotency_key, credential=cred)
            return orig
        self.keys[k] = (m.queue_id, at)
        self.keys_put.append((cred, m.idempotency_key, m.queue_id, at))
        return None

    async def write(self, conn: Statements) -> None:
        # Events last: received, then each message's queued/suppressed built
        # by SQLite from the rows just inserted (one bound row per message,
        # not per recipient), then the duplicates' received, then dsn_sent.
        rcpt_events = [(at, qid, cred) for at, _, qid, _, cred, _ in self.received]
        for sql, rows in ((queue_sql.SQL_INSERT_MESSAGE, self.messages),
                          (queue_sql.SQL_INSERT_RECIPIENT, self.recipients),
                          (queue_sql.SQL_INSERT_SUPPRESSED_RECIPIENT, self.suppressed),
                          (queue_sql.SQL_MARK_DSN_SENT, self.dsn_sent),
                          (queue_sql.SQL_MARK_DELAY_SENT, self.delay_sent),
                          (ledger_sql.SQL_IDEMPOTENCY_PUT, self.keys_put),
                          (ledger_sql.SQL_INSERT_EVENT, self.received),
                          (ledger_sql.SQL_ENQUEUE_RCPT_EVENTS, rcpt_events),
                          (ledger_sql.SQL_INSERT_EVENT, self.dups),
                          (ledger_sql.SQL_RCPT_EVENT, self.dsn_events),
                          # Only a duplicate's record has no row to cover it.
                          (queue_sql.SQL_MARK_INDEXED,
                           list(self.marks.items()) if self.dups else [])):
            if rows:
                await conn.executemany(sql, rows)


async def _idempotency_lookup(conn: Statements,
                              pending: list[PendingMessage]) -> dict[Key, tuple[str, float]]:
    """(credential, key) → (queue id, created) of the keys this batch
    names that the index holds (expired or not: the caller checks the
    window). One SELECT per batch that has keys; none otherwise."""
    pairs = list(dict.fromkeys((m.credential or "", m.idempotency_key)
                               for m in pending if m.idempotency_key is not None))
    found: dict[Key, tuple[str, float]] = {}
    for i in range(0, len(pairs), _KEY_CHUNK):
        chunk = pairs[i:i + _KEY_CHUNK]
        sql = ledger_sql.SQL_IDEMPOTENCY_LOOKUP.format(pairs=",".join(["(?, ?)"] * len(chunk)))
        params = [x for pair in chunk for x in pair]
        for cred, key, qid, created in await fetchall(conn, sql, params):
            found[(cred, key)] = (qid, created)
    return found
