"""The log as the record of truth for an acceptance (issue 12).

One job: the envelope a v2 segment record carries (everything the ENQUEUE
op writes, so its index rows can be made again from the log), and the
replay of such records into the index: recovery's branch for crash states
S3, S3r and S4p (the package docstring).

API:
    envelope(PendingMessage) -> bytes         the JSON the writer appends
    pending(envelope) -> PendingMessage       its inverse (body empty: the
                                              body stays in the segment);
                                              ValueError when malformed
    await replay(conn, [(segment, LoggedRecord), …]) -> ReplayCounts
        inside the caller's transaction: every record whose queue id the
        index does not hold goes through `acceptance.insert`, in the order
        given (log order), then done/body_live of what it touched are
        recomputed

Envelope (JSON object, "v": 1): id, sender, rcpts, at (received_at; a
float's repr round-trips exactly), cred, listener, ip, dsn (is_dsn),
dsn_for, mark ([original id, [idx, …], kind] or null), supp ([[idx,
reply], …]), detail (the `received` event's JSON, as a string), key,
window (idempotency key and window), ascii, dots (the body flags,
acceptance.body_flags; absent in records written before them, and read
as null = not known: delivery looks at the body).

Invariants:
- A replayed record writes exactly what its original ENQUEUE did, through
  the same handler: rows, events in their order, idempotency key, a DSN's
  mark on its original, the segment's mark; an idempotent duplicate is
  answered again the same way (its original's record comes earlier in the
  log, so its key is back first).
- A record whose queue id is already indexed is skipped (expected never:
  the mark moves with the rows; a caller naming an id twice makes one);
  one whose envelope cannot be decoded is logged at ERROR and skipped,
  never guessed at.
- Idempotent: replaying the same records twice writes them once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiosqlite

from mta.core.logfmt import event
from mta.spool import acceptance, queue_sql
from mta.spool.ops import PendingMessage, Placed, Txn
from mta.spool.reads import fetchall
from mta.spool.records import LoggedRecord, qid_bytes

log = logging.getLogger("mta.spool")

VERSION = 1


def envelope(m: PendingMessage) -> bytes:
    mark = None
    if m.dsn_mark is not None:
        orig, idxs, kind = m.dsn_mark
        mark = [orig, list(idxs), kind]
    doc = {"v": VERSION, "id": m.queue_id, "sender": m.sender, "rcpts": list(m.recipients),
           "at": m.received_at, "cred": m.credential, "listener": m.listener,
           "ip": m.client_ip, "dsn": m.is_dsn, "dsn_for": m.dsn_for, "mark": mark,
           "supp": [[i, why] for i, why in m.suppressed], "detail": m.received_detail,
           "key": m.idempotency_key, "window": m.idempotency_window,
           "ascii": m.ascii, "dots": m.dot_lines, "test": m.test, "nb": m.not_before,
           "tlsf": m.tls_flags}
    return json.dumps(doc, separators=(",", ":")).encode()


def _typed(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"envelope field {key!r}: {value!r}")
    return value


def _flag(doc: dict[str, Any], key: str) -> bool | None:
    value = doc.get(key)         # absent (an older record): None, not known
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"envelope field {key!r}: {value!r}")
    return value


def _tls_flags(doc: dict[str, Any]) -> int:
    value = doc.get("tlsf", 0)   # absent (a record from before issue 17): none
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        raise ValueError(f"envelope field 'tlsf': {value!r}")
    return value


def _time(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)         # absent (an older record): None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"envelope field {key!r}: {value!r}")
    return None if value is None else float(value)


def _mark(value: Any) -> tuple[str, tuple[int, ...], str] | None:
    if value is None:
        return None
    orig, idxs, kind = value
    if not (isinstance(orig, str) and isinstance(kind, str)
            and all(type(i) is int for i in idxs)):
        raise ValueError(f"envelope field 'mark': {value!r}")
    return orig, tuple(idxs), kind


def pending(data: bytes) -> PendingMessage:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError("not a version 1 envelope")
    rcpts = _typed(doc, "rcpts", list)
    supp = _typed(doc, "supp", list)
    if not rcpts or not all(isinstance(r, str) for r in rcpts):
        raise ValueError(f"envelope field 'rcpts': {rcpts!r}")
    suppressed = tuple((int(i), str(why)) for i, why in supp)
    return PendingMessage(
        queue_id=_typed(doc, "id", str), sender=_typed(doc, "sender", str),
        recipients=tuple(rcpts), body=b"", received_at=float(_typed(doc, "at", (int, float))),
        credential=_typed(doc, "cred", (str, type(None))),
        listener=_typed(doc, "listener", str), client_ip=_typed(doc, "ip", str),
        is_dsn=_typed(doc, "dsn", bool), dsn_for=_typed(doc, "dsn_for", (str, type(None))),
        dsn_mark=_mark(doc.get("mark")), suppressed=suppressed,
        received_detail=_typed(doc, "detail", str),
        idempotency_key=_typed(doc, "key", (str, type(None))),
        idempotency_window=float(_typed(doc, "window", (int, float))),
        ascii=_flag(doc, "ascii"), dot_lines=_flag(doc, "dots"),
        test=bool(_flag(doc, "test")), not_before=_time(doc, "nb"),
        tls_flags=_tls_flags(doc))


@dataclass(slots=True)
class ReplayCounts:
    replayed: int = 0        # messages indexed from the log
    duplicates: int = 0      # idempotent repeats answered again (no message)
    skipped: int = 0         # queue id already indexed
    unreadable: int = 0      # envelope that does not decode (logged at ERROR)


def _decode(segment: int, rec: LoggedRecord) -> PendingMessage | None:
    try:
        m = pending(rec.envelope)
        if qid_bytes(m.queue_id) != qid_bytes(rec.queue_id):
            raise ValueError(f"envelope of {m.queue_id} in front of {rec.queue_id}'s body")
    except (ValueError, TypeError, KeyError) as exc:
        event(log, "recovery_record_unreadable", logging.ERROR, segment=segment,
              offset=rec.offset, id=rec.queue_id, error=exc,
              note="record left in its segment, not indexed")
        return None
    return m


async def replay(conn: aiosqlite.Connection,
                 records: list[tuple[int, LoggedRecord]]) -> ReplayCounts:
    counts = ReplayCounts()
    placed: list[Placed] = []
    seen: set[str] = set()
    for segment, rec in records:
        m = _decode(segment, rec)
        if m is None:
            counts.unreadable += 1
            continue
        if m.queue_id in seen or await fetchall(conn, queue_sql.SQL_MESSAGE_EXISTS,
                                                (m.queue_id,)):
            counts.skipped += 1
            continue
        seen.add(m.queue_id)
        placed.append(Placed(m, segment, rec.offset, rec.length))
    if not placed:
        return counts
    txn = Txn(conn)
    ids = await acceptance.insert(txn, placed)
    for p, qid in zip(placed, ids, strict=True):
        if qid == p.message.queue_id:
            counts.replayed += 1
        else:
            counts.duplicates += 1
    if txn.touched:
        await conn.executemany(queue_sql.SQL_RECOMPUTE_FLAGS, [(mid,) for mid in txn.touched])
    return counts
