"""Read-only queries over the index.

One job: answer questions about the queue from the *reader* connection,
which sees only committed data (a separate WAL reader, never the writer's
connection, so a caller never acts on rows of a batch that may still roll
back).

API:
    ReadSide(conn)       the reader connection behind the facades (Spool,
                         Ledger, Suppressions): `await read(query, *args)`
                         runs `query(conn, *args)`, refuses once closed and
                         turns sqlite3 errors into StorageError
    Statements           what a statement runs on: execute, executemany,
                         execute_fetchall, each awaited (a Protocol:
                         aiosqlite.Connection, and writer_txn's face of the
                         writer's sqlite3 connection inside a transaction)
    fetchall(conn, sql, params=()) -> [row]   (any Statements; the writer's ops too)
  queries (each takes the reader `aiosqlite.Connection`):
    next_due_at(conn) -> float | None
    body_location(conn, queue_id) -> BodyLocation(segment, offset, length, live,
                                                  ascii, dot_lines) | None
    dsn_candidates(conn, limit) / delay_candidates(conn, cutoff, limit) -> list[DsnCandidate]
    list_messages(conn, limit, include_done) / get_message(conn, queue_id)
    email_page(conn, test, limit, before) -> ([MessageView], more)   the sending API's list
    counts(conn) -> {state: n}   (queued/delivered/bounced/expired always; others when present)
    list_page(conn, MessageFilter, limit, cursor) -> ([MessageView], next cursor | None)
    list_page_json(conn, MessageFilter, limit, cursor) -> (JSON bytes, next cursor | None)
    domain_summary(conn, now) -> [{domain, recipients, held, oldest_received_at,
                                   age_buckets, last_error}]
    gauges(conn) -> {recipients: {state: n}, messages_pending, oldest_pending_received_at}
    live_segments(conn) -> {segment}
  (the ledger's reads are ledger.py's, the suppression list's suppressions.py's)

Invariant: every query is bounded by a `limit` or by one message, so memory
follows the caller's window, not the queue size.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar

import aiosqlite

from mta.core.envelope import DsnCandidate, FailedRecipient
from mta.core.errors import StorageError
from mta.core.qshape import AGE_BUCKETS
from mta.core.reply import Reply
from mta.spool import filters, queue_sql
from mta.spool.faults import storage_error
from mta.spool.tenant_sql import tenant_of
from mta.spool.views import AttemptView, MessageView, RecipientView

P = ParamSpec("P")
T = TypeVar("T")
Row = Sequence[Any]

_CHUNK = 500   # ids per IN (...) list, well under SQLite's variable limit


class ReadSide:
    """The reader connection, shared by the facades; `closed` is set by
    `Spool.close` (before the connection goes)."""

    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn
        self.closed = False

    async def __call__(self, query: Callable[Concatenate[aiosqlite.Connection, P], Awaitable[T]],
                       *args: P.args, **kwargs: P.kwargs) -> T:
        if self.closed:
            raise StorageError("spool is closed")
        try:
            return await query(self.conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise storage_error(exc, "reading the spool index") from exc


class Cursor(Protocol):
    """What a caller reads of a statement's cursor."""
    @property
    def rowcount(self) -> int: ...


class Statements(Protocol):
    """The statement methods the writer's handlers (ops.Txn.conn) and
    `fetchall` use; parameters: a sequence or a mapping, as sqlite3 takes
    them."""
    def execute(self, sql: str, parameters: Any = ...) -> Awaitable[Cursor]: ...
    def executemany(self, sql: str, parameters: Iterable[Any]) -> Awaitable[Cursor]: ...
    def execute_fetchall(self, sql: str, parameters: Any = ...) -> Awaitable[Iterable[Any]]: ...


async def fetchall(conn: Statements, query: str,
                   params: Iterable[Any] = ()) -> list[Row]:
    return list(await conn.execute_fetchall(query, params))


def _reply(text: str | None) -> Reply | None:
    if not text:
        return None
    try:
        return Reply.parse(text)
    except ValueError:
        return None   # a malformed stored reply must not hide the recipient


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


async def _rows_for(conn: aiosqlite.Connection, sql: str, ids: Sequence[str]) -> list[Row]:
    rows: list[Row] = []
    for chunk in _chunks(ids):
        rows.extend(await fetchall(conn, sql.format(ids=",".join("?" * len(chunk))), chunk))
    return rows


async def next_due_at(conn: aiosqlite.Connection) -> float | None:
    rows = await fetchall(conn, queue_sql.SQL_NEXT_DUE)
    return rows[0][0] if rows else None


class BodyLocation(NamedTuple):
    """Where a message's body is, and what acceptance learnt of it (None:
    not known, an index row from before issue 12)."""
    segment: int
    offset: int
    length: int
    live: int                   # body_live
    ascii: bool | None          # every byte 7-bit
    dot_lines: bool | None      # some line starts with "."


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


async def body_location(conn: aiosqlite.Connection, queue_id: str) -> BodyLocation | None:
    rows = await fetchall(conn, queue_sql.SQL_BODY_LOCATION, (queue_id,))
    if not rows:
        return None
    segment, offset, length, live, ascii, dots = rows[0]
    return BodyLocation(segment, offset, length, live, _flag(ascii), _flag(dots))


async def _candidates(conn: aiosqlite.Connection, head_sql: str, head_params: tuple[Any, ...],
                      rcpt_sql: str) -> list[DsnCandidate]:
    heads = await fetchall(conn, head_sql, head_params)
    if not heads:
        return []
    by_id: dict[str, list[FailedRecipient]] = {h[0]: [] for h in heads}
    for mid, idx, address, state, last_reply, last_remote, attempts in await _rows_for(
            conn, rcpt_sql, list(by_id)):
        by_id[mid].append(FailedRecipient(rcpt_idx=idx, address=address, state=state,
                                          reply=_reply(last_reply), remote_host=last_remote,
                                          attempts=attempts))
    return [DsnCandidate(queue_id=mid, sender=sender, received_at=received_at,
                         recipients=tuple(by_id[mid]))
            for mid, sender, received_at in heads if by_id[mid]]


async def dsn_candidates(conn: aiosqlite.Connection, limit: int) -> list[DsnCandidate]:
    return await _candidates(conn, queue_sql.SQL_DSN_OWED, (limit,), queue_sql.SQL_DSN_OWED_RCPTS)


async def delay_candidates(conn: aiosqlite.Connection, cutoff: float,
                           limit: int) -> list[DsnCandidate]:
    return await _candidates(conn, queue_sql.SQL_DELAY_OWED, (cutoff, limit),
                             queue_sql.SQL_DELAY_OWED_RCPTS)


def _message(row: Row) -> MessageView:
    mid, sender, received_at, size, credential, is_dsn, done, test, not_before = row
    return MessageView(id=mid, sender=sender, received_at=received_at, size=size,
                       credential=credential, is_dsn=bool(is_dsn), done=bool(done),
                       test=bool(test), not_before=not_before)


async def _attach_recipients(conn: aiosqlite.Connection, views: list[MessageView]) -> None:
    by_id = {v.id: v for v in views}
    for mid, idx, address, state, attempts, next_attempt, last_reply, last_remote, last_tls in \
            await _rows_for(conn, queue_sql.SQL_RECIPIENTS_OF, list(by_id)):
        by_id[mid].recipients.append(RecipientView(
            idx=idx, address=address, state=state, attempts=attempts, next_attempt=next_attempt,
            last_reply=last_reply or "", last_remote=last_remote, last_tls=last_tls))


async def list_messages(conn: aiosqlite.Connection, limit: int,
                        include_done: bool) -> list[MessageView]:
    sql = queue_sql.SQL_LIST_ALL if include_done else queue_sql.SQL_LIST_PENDING
    views = [_message(r) for r in await fetchall(conn, sql, (limit,))]
    if views:
        await _attach_recipients(conn, views)
    return views


async def email_page(conn: aiosqlite.Connection, test: bool, limit: int,
                     before: str | None, tenant: str | None) -> tuple[list[MessageView], bool]:
    """The sending API's list: up to `limit` messages of one mode (and of
    one tenant unless None), newest first, with ids below `before` (a
    cursor; None: from the newest), their recipients attached; and whether
    more follow."""
    params: list[object] = ["\U0010ffff" if before is None else before, int(test), limit + 1]
    scope = ""
    if tenant is not None:
        scope = f"AND {tenant_of('credential')} = ?4"
        params.append(tenant)
    rows = await fetchall(conn, queue_sql.SQL_EMAIL_PAGE.format(tenant=scope), params)
    views = [_message(r) for r in rows[:limit]]
    await _attach_recipients(conn, views)
    return views, len(rows) > limit


async def senders_of(conn: aiosqlite.Connection, ids: list[str]) -> dict[str, str]:
    """{queue id: envelope sender} of those messages still in the index."""
    rows = await fetchall(conn, "SELECT id, sender FROM messages WHERE id IN "
                                "(SELECT value FROM json_each(?))", (json.dumps(ids),))
    return {str(i): str(s) for i, s in rows}


async def get_message(conn: aiosqlite.Connection, queue_id: str) -> MessageView | None:
    rows = await fetchall(conn, queue_sql.SQL_GET_MESSAGE, (queue_id,))
    if not rows:
        return None
    view = _message(rows[0])
    await _attach_recipients(conn, [view])
    view.attempts = [
        AttemptView(rcpt_idx=idx, at=at, duration=duration, state=state, reply=reply or "",
                    remote_host=remote_host, remote_ip=remote_ip, tls=tls, detail=detail or "")
        for idx, at, duration, state, reply, remote_host, remote_ip, tls, detail
        in await conn.execute_fetchall(queue_sql.SQL_ATTEMPTS_OF, (queue_id,))]
    return view


async def counts(conn: aiosqlite.Connection) -> dict[str, int]:
    out: dict[str, int] = {state: 0 for state in queue_sql.COUNTED_STATES}
    for state, n in await conn.execute_fetchall(queue_sql.SQL_COUNTS):
        out[state] = n
    return out


async def _page_rows(conn: aiosqlite.Connection, f: filters.MessageFilter, limit: int,
                     cursor: str | None) -> tuple[list[Row], bool]:
    """The message rows of one page (keyset order) and whether more follow."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    after = filters.decode_cursor(cursor) if cursor else None
    drive = False
    probe = filters.probe_sql(f)
    if probe is not None:
        (n,), = await fetchall(conn, *probe)
        drive = n < filters.DRIVE_CAP
    # One extra row says whether there is a next page.
    sql, params = filters.page_sql(f, after, limit + 1, drive=drive)
    rows = await fetchall(conn, sql, params)
    return rows[:limit], len(rows) > limit


def _next_cursor(rows: list[Row], more: bool) -> str | None:
    # rows are _MESSAGE_COLS: id first, received_at third
    return filters.encode_cursor(rows[-1][2], rows[-1][0]) if more and rows else None


async def list_page(conn: aiosqlite.Connection, f: filters.MessageFilter, limit: int,
                    cursor: str | None) -> tuple[list[MessageView], str | None]:
    rows, more = await _page_rows(conn, f, limit, cursor)
    views = [_message(r) for r in rows]
    if views:
        await _attach_recipients(conn, views)
    return views, _next_cursor(rows, more)


# The page as JSON, built by SQLite: the same shape as MessageView.to_dict()
# (attempts empty, as in list_page). SQLite runs it with the GIL released, so
# listing a big queue costs the event loop (and delivery) almost nothing.
SQL_PAGE_JSON = """
SELECT json_group_array(json(obj)) FROM (
  SELECT json_object(
    'id', m.id, 'sender', m.sender, 'received_at', m.received_at, 'size', m.size,
    'credential', m.credential,
    'is_dsn', json(CASE WHEN m.is_dsn THEN 'true' ELSE 'false' END),
    'done', json(CASE WHEN m.done THEN 'true' ELSE 'false' END),
    'recipients', (SELECT json_group_array(json(x)) FROM (
        SELECT json_object('idx', r.rcpt_idx, 'address', r.address, 'state', r.state,
                           'attempts', r.attempts, 'next_attempt', r.next_attempt,
                           'last_reply', COALESCE(r.last_reply, ''),
                           'last_remote', r.last_remote, 'last_tls', r.last_tls) AS x
        FROM recipients r WHERE r.message_id = m.id ORDER BY r.rcpt_idx)),
    'attempts', json('[]')) AS obj
  FROM json_each(?) AS j JOIN messages m ON m.id = j.value
  ORDER BY j.key)
"""


async def list_page_json(conn: aiosqlite.Connection, f: filters.MessageFilter, limit: int,
                         cursor: str | None) -> tuple[bytes, str | None]:
    """`list_page`, answered as the JSON text of the messages array."""
    rows, more = await _page_rows(conn, f, limit, cursor)
    if not rows:
        return b"[]", None
    (text,), = await fetchall(conn, SQL_PAGE_JSON, (json.dumps([r[0] for r in rows]),))
    return text.encode(), _next_cursor(rows, more)


async def domain_summary(conn: aiosqlite.Connection, now: float) -> list[dict[str, Any]]:
    out = []
    nb = len(AGE_BUCKETS)
    for row in await conn.execute_fetchall(queue_sql.SQL_DOMAIN_SUMMARY, (now,)):
        domain, n, held, oldest = row[:4]
        stamped = row[4 + nb]
        out.append({
            "domain": domain,
            "recipients": n,
            "held": held or 0,
            "oldest_received_at": oldest,
            "age_buckets": dict(zip(AGE_BUCKETS, (c or 0 for c in row[4:4 + nb]))),
            "last_error": stamped[queue_sql.STAMP_WIDTH:] if stamped else None,
        })
    return out


async def gauges(conn: aiosqlite.Connection) -> dict[str, Any]:
    recipients: dict[str, int] = {state: 0 for state in queue_sql.ALL_STATES}
    for state, n in await conn.execute_fetchall(queue_sql.SQL_COUNTS):
        recipients[state] = n
    (pending, oldest), = await fetchall(conn, queue_sql.SQL_PENDING_MESSAGES)
    return {"recipients": recipients, "messages_pending": pending,
            "oldest_pending_received_at": oldest}


async def live_segments(conn: aiosqlite.Connection) -> set[int]:
    return {r[0] for r in await conn.execute_fetchall(queue_sql.SQL_LIVE_SEGMENTS)}
