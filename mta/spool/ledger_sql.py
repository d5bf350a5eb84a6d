"""The SQL of the ledger: events, webhook cursors, idempotency keys.

One job: every statement the ledger's writer ops and reads (ledger.py) and
the queue ops that write events with their changes (acceptance.py,
attempts.py, steering.py) run on the ``events``, ``webhook_state`` and
``idempotency`` tables (created by index.py).

API: the `SQL_*` statements; `HOLD_CURSOR` (the webhook_state name whose
cursor pruning never passes); `EVENT_OF_STATE` (which event a recorded
update writes); `EVENT_COLS`,
`EVENT_PAYLOAD_COLS` and `events_after_sql` (the pages of
`Ledger.events_after` / `event_payloads_after`); `WEBHOOK_FIELDS` and
`set_webhook_sql`.

Invariants:
- ``events`` is append-only: rows are inserted in the writer's transaction
  with the change they describe and only ever deleted, oldest first
  (`SQL_PRUNE_EVENTS`); no statement here UPDATEs one.
- An event about an existing recipient takes its address and the
  message's credential from the rows in the same INSERT … SELECT (no read
  round trip), under the same state guard as the change it records.
"""

from __future__ import annotations

from collections.abc import Sequence

from mta.core.envelope import BOUNCED, DELETED, DELIVERED, EXPIRED, HELD, QUEUED, SUPPRESSED
from mta.spool.tenant_sql import tenant_of

# The event a recorded update writes (`Spool.record`, attempts.py): QUEUED only when the
# attempt counts (a deferral); a put-back (counts_attempt=False) writes none.
EVENT_OF_STATE: dict[str, str] = {QUEUED: "deferred", DELIVERED: "delivered", BOUNCED: "bounced",
                  EXPIRED: "expired", SUPPRESSED: "suppressed", HELD: "held", DELETED: "deleted"}
# (The event of an operator move is in steering.OPERATOR_MOVES.)

# Params: at, type, queue_id, recipient, credential, detail (JSON text).
SQL_INSERT_EVENT = ("INSERT INTO events (at, type, queue_id, recipient, credential, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)")
# enqueue: a message's queued (suppressed, accept-and-record) events, one per
# recipient in idx order, from its rows just inserted. Params: at, message_id, credential.
SQL_ENQUEUE_RCPT_EVENTS = (
    "INSERT INTO events (at, type, queue_id, recipient, credential, detail) "
    "SELECT ?1, r.state, r.message_id, r.address, ?3, CASE r.state "
    "WHEN 'queued' THEN json_object('rcpt_idx', r.rcpt_idx) "
    "ELSE json_object('rcpt_idx', r.rcpt_idx, 'reply', r.last_reply, 'mode', 'accept') END "
    "FROM recipients r WHERE r.message_id = ?2 ORDER BY r.rcpt_idx")
# append_events: the message's credential when the caller did not give one.
# Params: at, type, queue_id, recipient, credential, queue_id, detail.
SQL_APPEND_EVENT = (
    "INSERT INTO events (at, type, queue_id, recipient, credential, detail) VALUES "
    "(?1, ?2, ?3, ?4, COALESCE(NULLIF(?5, ''), "
    "(SELECT credential FROM messages WHERE id = ?3), ''), ?6)")
# An event about one existing recipient: address and credential come from its
# rows, in the same statement (no round trip per row; executemany).
# Params: at, type, detail (JSON text), message_id, rcpt_idx, then the extras.
def _rcpt_event(detail: str, cond: str = "") -> str:
    return ("INSERT INTO events (at, type, queue_id, recipient, credential, detail) "
            f"SELECT ?1, ?2, r.message_id, r.address, COALESCE(m.credential, ''), {detail} "
            "FROM recipients r JOIN messages m ON m.id = r.message_id "
            f"WHERE r.message_id = ?4 AND r.rcpt_idx = ?5{cond}")


# record(): written BEFORE the update, under SQL_RECORD's own guard, so an
# update that will be ignored (recipient already final) writes nothing.
# detail gains "attempts" = the count after this update (extra param ?6 = inc).
SQL_RECORD_EVENT = _rcpt_event("json_set(?3, '$.attempts', r.attempts + ?6)",
                               " AND r.state = 'queued'")
# Operator moves: written AFTER the update, for the rows now in the target
# state (extra param ?6): exactly the rows that moved.
SQL_MOVE_EVENT = _rcpt_event("?3", " AND r.state = ?6")
# dsn_sent on the original's recipients.
SQL_RCPT_EVENT = _rcpt_event("?3")

# Pruning, oldest first along events_at_type, at most ?2 rows a call; never
# an event after HOLD_CURSOR's cursor (in a cluster: not yet forwarded to the
# shared ledger, runtime/cluster_ledger.py; no such row: no limit).
HOLD_CURSOR = "cluster:forward"
SQL_PRUNE_EVENTS = ("DELETE FROM events WHERE seq IN "
                    "(SELECT seq FROM events WHERE at < ?1 AND seq <= COALESCE((SELECT cursor "
                    f"FROM webhook_state WHERE name = '{HOLD_CURSOR}'), seq) "
                    "ORDER BY at LIMIT ?2)")
SQL_PRUNE_IDEMPOTENCY = ("DELETE FROM idempotency WHERE rowid IN "
                         "(SELECT rowid FROM idempotency WHERE created < ?1 "
                         "ORDER BY created LIMIT ?2)")

# What the sending API (issue 13) gave a message, carried by every event of
# it: one seek of events_by_message to its `received` event each. Its tags
# (NULL for none) and whether a test key sent it (1, else NULL). "+t.type":
# never events_by_type, which the planner would otherwise pick for its seq
# order (no sort for the LIMIT 1), walking every `received` event older than
# the message's own: with 100,000 messages, 50-100 ms for a message's
# timeline, 1.9 s for a page of 100 webhook payloads (now well under 1 ms).


def _received(path: str) -> str:
    return ("(SELECT json_extract(t.detail, '" + path + "') FROM events t WHERE "
            "events.queue_id != '' AND t.queue_id = events.queue_id AND +t.type = 'received' "
            "AND json_valid(t.detail) ORDER BY t.seq LIMIT 1)")


_TAGS, _TEST = _received("$.tags"), _received("$.test")
EVENT_COLS = f"seq, at, type, queue_id, recipient, credential, detail, {_TAGS}, {_TEST}"
SQL_MESSAGE_EVENTS = f"SELECT {EVENT_COLS} FROM events WHERE queue_id = ? ORDER BY seq"
# One message's events after a seq, a bounded page (the console's live timeline):
# one range of events_by_message. Params: queue_id, after, limit (-1: all).
SQL_MESSAGE_EVENTS_AFTER = (f"SELECT {EVENT_COLS} FROM events WHERE queue_id = ? AND seq > ? "
                            "ORDER BY seq LIMIT ?")
# The `received` events of some messages (the first of each is its own; an
# idempotent repeat's comes later), one walk of events_by_message per id.
SQL_RECEIVED_OF = ("SELECT queue_id, detail FROM events WHERE queue_id IN ({ids}) "
                   "AND type = 'received' ORDER BY seq")
# The newest seq ever assigned (sqlite_sequence survives pruning every row).
SQL_LAST_EVENT_SEQ = ("SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM events UNION ALL "
                      "SELECT seq FROM sqlite_sequence WHERE name = 'events')")


# One event as its webhook payload object, built by SQLite (UTF-8 bytes):
# {"type","seq","timestamp" (ms, UTC, "…Z"),"queue_id","recipient","credential"
# ("" → null),"tags","test","data" (the detail; not JSON → {"raw": text})}. Must equal
# the webhooks' wire format, mta.webhooks.wire.event_json
# (tests/test_webhooks.py compares them).
EVENT_PAYLOAD_COLS = (
    "seq, CAST(json_object('type', type, 'seq', seq, "
    "'timestamp', strftime('%Y-%m-%dT%H:%M:%fZ', at, 'unixepoch'), "
    "'queue_id', nullif(queue_id, ''), 'recipient', nullif(recipient, ''), "
    "'credential', nullif(credential, ''), "
    # The message's tags and test mark (the sending API's, issue 13).
    f"'tags', json({_TAGS}), 'test', json(CASE WHEN {_TEST} = 1 THEN 'true' ELSE 'false' END), "
    "'data', CASE WHEN detail = '' THEN json_object() WHEN json_valid(detail) "
    "THEN json(detail) ELSE json_object('raw', detail) END) AS BLOB)")


def events_after_sql(after: int, limit: int, types: Sequence[str] | None, recipient: str | None,
                     credential: str | None, cols: str = EVENT_COLS,
                     tenant: str | None = None) -> tuple[str, list[object]]:
    """The page of `Ledger.events_after`. Without types: one walk of the
    primary key from `after`. With types: one bounded walk of events_by_type
    per type (each already in seq order), merged: never a sort of more than
    len(types) * limit rows, however far behind the cursor is. recipient and
    credential (and tenant: the owner of the event's credential,
    spool/tenant_sql.py) are checked on the rows walked (no index: the walk
    stops at `limit` matches, and the events after a cursor are few when it
    is kept up to date)."""
    extra, xparams = "", []
    if recipient is not None:
        extra += " AND recipient = ?"
        xparams.append(recipient)
    if credential is not None:
        extra += " AND credential = ?"
        xparams.append(credential)
    if tenant is not None:
        extra += f" AND {tenant_of('credential')} = ?"
        xparams.append(tenant)
    if types is None:
        return (f"SELECT {cols} FROM events WHERE seq > ?{extra} ORDER BY seq LIMIT ?",
                [after, *xparams, limit])
    parts: list[str] = []
    params: list[object] = []
    for t in types:
        parts.append(f"SELECT * FROM (SELECT {cols} FROM events WHERE type = ? "
                     f"AND seq > ?{extra} ORDER BY seq LIMIT ?)")
        params += [t, after, *xparams, limit]
    return " UNION ALL ".join(parts) + " ORDER BY seq LIMIT ?", [*params, limit]


# The reputation tracker's read (runtime/reputation.py): final outcomes after
# a cursor, lean — the reason from the detail, the message's sender and test
# mark by one join, no per-row subquery. Params: after, limit. {types} is a
# list of quoted literals from OUTCOME_TYPES only.
OUTCOME_TYPES = ("delivered", "bounced", "expired", "complained", "received")
SQL_OUTCOMES_AFTER = (
    "SELECT e.seq, e.at, e.type, e.credential, CASE WHEN json_valid(e.detail) "
    "THEN json_extract(e.detail, '$.reason') END, m.sender, m.test FROM events e "
    "LEFT JOIN messages m ON m.id = e.queue_id AND e.queue_id != '' "
    "WHERE e.seq > ? AND e.type IN ({types}) ORDER BY e.seq LIMIT ?")


# Webhook cursors: the columns `set_webhook_state` may set (names are spliced
# into SQL, so only these).
WEBHOOK_FIELDS = ("cursor", "failing_since", "next_attempt", "attempts", "last_error", "state")
SQL_WEBHOOK_STATE = f"SELECT name, {', '.join(WEBHOOK_FIELDS)} FROM webhook_state WHERE name = ?"
SQL_WEBHOOK_STATES = f"SELECT name, {', '.join(WEBHOOK_FIELDS)} FROM webhook_state ORDER BY name"


def set_webhook_sql(fields: tuple[str, ...]) -> str:
    """Upsert of `fields` (a subset of WEBHOOK_FIELDS) for one name; the
    others keep their value (or the column default for a new row).
    Params: name, then one value per field."""
    for f in fields:
        if f not in WEBHOOK_FIELDS:
            raise ValueError(f"unknown webhook state field {f!r}")
    cols = ", ".join(("name", *fields))
    marks = ", ".join("?" * (len(fields) + 1))
    if not fields:
        return "INSERT INTO webhook_state (name) VALUES (?) ON CONFLICT (name) DO NOTHING"
    sets = ", ".join(f"{f} = excluded.{f}" for f in fields)
    return (f"INSERT INTO webhook_state ({cols}) VALUES ({marks}) "
            f"ON CONFLICT (name) DO UPDATE SET {sets}")


# Idempotency (acceptance.py). One lookup per batch that has keys: params
# are (credential, key) pairs; a join on the VALUES list, so one
# primary-key seek per pair (the row-value IN form scanned the table).
SQL_IDEMPOTENCY_LOOKUP = (
    "SELECT i.credential, i.key, i.queue_id, i.created FROM (VALUES {pairs}) AS v "
    "JOIN idempotency i ON i.credential = v.column1 AND i.key = v.column2")
SQL_IDEMPOTENCY_GET = "SELECT queue_id, created FROM idempotency WHERE credential = ? AND key = ?"
# An expired key (still present, not yet pruned) is replaced.
SQL_IDEMPOTENCY_PUT = (
    "INSERT INTO idempotency (credential, key, queue_id, created) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (credential, key) DO UPDATE SET queue_id = excluded.queue_id, "
    "created = excluded.created")
