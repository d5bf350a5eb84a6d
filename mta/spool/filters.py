"""Operator filters over the queue: `MessageFilter`, its SQL, and page cursors.

One job: turn a `MessageFilter` into SQL fragments (with parameters) for
the keyset-paged listing (`Spool.list_page`) and the operator moves
(`Spool.hold_messages` & co.), so both select exactly the same things.

API:
    MessageFilter(ids=(), state=None, domain=None, sender=None, recipient=None,
                  include_done=False, tenant=None, since=None, until=None,
                  newest_first=False)
    page_sql(f, after, limit) -> (sql, params)        # messages, keyset order
    targets_sql(f, from_states) -> (sql, params)       # (message_id, rcpt_idx, state)
    encode_cursor(received_at, id) / decode_cursor(text) -> (received_at, id)
    SqlParams                                           # the parameters' type

Semantics (a public interface through the admin API and the CLI):
- Message fields: `ids` (any of), `sender` (exact, ASCII case-insensitive;
  "" = the null sender), `include_done` (False: only messages not done),
  `tenant` (the tenant owning the message's credential: spool/tenant_sql.py),
  `since` / `until` (received_at >= since, received_at < until; Unix
  seconds).
- Recipient fields: `state`, `domain`, `recipient` (exact address; the
  domain part is compared lower-cased, as stored). A message matches when
  ONE of its recipients matches all recipient fields given. `state` is a
  recipient state, or "deferred" = queued with attempts > 0. A `state`
  naming a final state implies include_done (those recipients mostly sit
  in done messages).
- Moves act on recipients, not whole messages: `hold` with `domain=x`
  holds the matching message's recipients at x, not its other ones. With
  only message fields, every recipient of the matching messages is moved.
- Page order is (received_at, id), both ascending, or both descending
  with `newest_first` (the console's search; moves ignore it); the cursor
  is the urlsafe base64 of ``repr(received_at)|id`` of the last row of the
  previous page, opaque to callers (a page continues in its own order).

Performance (no plan scans the recipients table; tests check the plans):
a page is one index walk in page order (messages_pending, or
messages_received with include_done, or messages_sender) that probes each
message's recipients by key. When a recipient filter (domain, address,
state) matches fewer than DRIVE_CAP recipients (`probe_sql`, a bounded
index count), the page is driven from that index instead and at most
DRIVE_CAP messages are sorted. `since`/`until` bound the walk's range on
(received_at, id) (messages_received, messages_pending and messages_sender
all end in received_at), in either direction. Known slow case: "deferred" (queued with
attempts > 0, no index) when few of many pending messages are deferred —
the walk then reads every pending message, ~50 ms per 100,000.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from mta.core.envelope import FINAL_STATES
from mta.spool import queue_sql
from mta.spool.tenant_sql import tenant_of

DEFERRED = "deferred"
FILTER_STATES = frozenset(queue_sql.ALL_STATES) | {DEFERRED}

_MESSAGE_COLS = ("m.id, m.sender, m.received_at, m.size, m.credential, m.is_dsn, m.done, "
                 "m.test, m.not_before")

# The parameters of the SQL built here, in placeholder order.
SqlParams = list[str | int | float | None]


@dataclass(frozen=True)
class MessageFilter:
    ids: tuple[str, ...] = ()
    # queued|held|delivered|bounced|expired|suppressed|deleted|deferred
    state: str | None = None
    domain: str | None = None     # recipient domain
    sender: str | None = None     # exact, case-insensitive
    recipient: str | None = None  # exact address
    include_done: bool = False
    tenant: str | None = None     # the tenant of the message's credential
    since: float | None = None    # received_at >= since
    until: float | None = None    # received_at < until
    newest_first: bool = False    # page order (received_at, id) descending

    def __post_init__(self) -> None:
        ids: object = self.ids      # the annotation is not enforced at run time
        if isinstance(ids, str):
            raise TypeError("MessageFilter.ids is a tuple of queue ids, not a string")
        object.__setattr__(self, "ids", tuple(self.ids))
        if self.state is not None and self.state not in FILTER_STATES:
            raise ValueError(f"unknown state {self.state!r}; one of "
                             f"{', '.join(sorted(FILTER_STATES))}")

    @property
    def includes_done(self) -> bool:
        return self.include_done or self.state in FINAL_STATES


def _normal_address(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def message_where(f: MessageFilter, m: str = "m") -> tuple[list[str], SqlParams]:
    """Conditions on the messages row aliased `m` (no done condition)."""
    conds: list[str] = []
    params: SqlParams = []
    if f.ids:
        # One parameter however many ids (SQLite's variable limit stays out of it).
        conds.append(f"{m}.id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(f.ids)))
    if f.sender is not None:
        conds.append(f"{m}.sender = ? COLLATE NOCASE")
        params.append(f.sender)
    if f.tenant is not None:
        conds.append(f"{tenant_of(m + '.credential')} = ?")
        params.append(f.tenant)
    if f.since is not None:
        conds.append(f"{m}.received_at >= ?")
        params.append(float(f.since))
    if f.until is not None:
        conds.append(f"{m}.received_at < ?")
        params.append(float(f.until))
    return conds, params


def recipient_where(f: MessageFilter, r: str = "r", *,
                    probe: bool = False) -> tuple[list[str], SqlParams]:
    """Conditions on the recipients row aliased `r` (all must hold for one
    row). `probe`: the row is looked up by message id (an EXISTS per
    message), so the state test must not tempt SQLite into recipients_due,
    which cannot seek by message id (hence the unary "+")."""
    conds: list[str] = []
    params: SqlParams = []
    state = f"+{r}.state" if probe else f"{r}.state"
    if f.state == DEFERRED:
        conds.append(f"{state} = 'queued' AND {r}.attempts > 0")
    elif f.state is not None:
        conds.append(f"{state} = ?")
        params.append(f.state)
    if f.domain is not None:
        conds.append(f"{r}.domain = ?")
        params.append(f.domain.strip().lower().rstrip("."))
    if f.recipient is not None:
        conds.append(f"{r}.address = ?")
        params.append(_normal_address(f.recipient.strip()))
    return conds, params


# A recipient filter matching fewer rows than this drives the page from the
# recipients index (then sorts at most this many messages); more matches
# mean they are dense enough that walking messages in page order finds a
# page quickly. Counting up to the cap costs one bounded index range.
DRIVE_CAP = 2000


def probe_sql(f: MessageFilter, cap: int = DRIVE_CAP) -> tuple[str, SqlParams] | None:
    """SQL counting matching recipients up to `cap`, or None when the
    recipient fields give no index to seek (none given, or only "deferred":
    a walk is the plan then)."""
    if f.domain is None and f.recipient is None and f.state in (None, DEFERRED):
        return None
    rconds, rparams = recipient_where(f)
    return (f"SELECT COUNT(*) FROM (SELECT 1 FROM recipients r WHERE {' AND '.join(rconds)} "
            f"LIMIT {int(cap)})"), rparams


def page_sql(f: MessageFilter, after: tuple[float, str] | None, limit: int, *,
             drive: bool = False) -> tuple[str, SqlParams]:
    """One page. drive=False: walk messages in page order, probing each
    one's recipients by primary key. drive=True: start from the matching
    recipients (domain/address/state index), then sort their messages."""
    conds, params = message_where(f)
    if not f.includes_done:
        conds.append("m.done = 0")
    if after is not None:
        conds.append(f"(m.received_at, m.id) {'<' if f.newest_first else '>'} (?, ?)")
        params.extend(after)
    order = ("ORDER BY m.received_at DESC, m.id DESC" if f.newest_first
             else "ORDER BY m.received_at, m.id")
    rconds, rparams = recipient_where(f, probe=not drive)
    if rconds and drive:
        # CROSS JOIN fixes the loop order: recipients outside, messages by key.
        where = " AND ".join(conds) or "1"
        return (f"SELECT {_MESSAGE_COLS} FROM (SELECT DISTINCT r.message_id AS mid FROM "
                f"recipients r WHERE {' AND '.join(rconds)}) x CROSS JOIN messages m "
                f"ON m.id = x.mid WHERE {where} {order} LIMIT ?"), \
            [*rparams, *params, limit]
    if rconds:
        conds.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND "
                     + " AND ".join(rconds) + ")")
        params.extend(rparams)
    where = " AND ".join(conds) or "1"
    return f"SELECT {_MESSAGE_COLS} FROM messages m WHERE {where} {order} LIMIT ?", \
        [*params, limit]


def targets_sql(f: MessageFilter, from_states: Iterable[str]) -> tuple[str, SqlParams]:
    """Recipients an operator move may touch: matching, in `from_states`,
    not leased. Returns (message_id, rcpt_idx, state) rows."""
    # Pick the driving index by hand: left alone, SQLite walks every queued
    # recipient through recipients_due even to hold one message by id.
    # ids / sender: messages first, their recipients by key. domain /
    # address: that recipients index. Neither: the state index, as the set
    # is then every pending recipient anyway.
    by_message = bool(f.ids) or (f.sender is not None and f.domain is None
                                 and f.recipient is None)
    narrow = by_message or f.domain is not None or f.recipient is not None
    mconds, mparams = message_where(f)
    rconds, rparams = recipient_where(f, probe=narrow)
    states = sorted(from_states)
    plus = "+" if narrow else ""
    conds = [f"{plus}r.state IN ({','.join('?' * len(states))})", f"{plus}r.leased = 0",
             *rconds, *mconds]
    join = ("messages m CROSS JOIN recipients r ON r.message_id = m.id" if by_message
            else "recipients r JOIN messages m ON m.id = r.message_id")
    # from_states are all pending, so done messages never contribute: no
    # done condition is needed, whatever include_done says.
    return (f"SELECT r.message_id, r.rcpt_idx, r.state FROM {join} WHERE "
            + " AND ".join(conds)), [*states, *rparams, *mparams]


def encode_cursor(received_at: float, queue_id: str) -> str:
    raw = f"{received_at!r}|{queue_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        at, sep, queue_id = raw.partition("|")
        if not sep or not queue_id:
            raise ValueError
        return float(at), queue_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"bad cursor {text!r}") from None
