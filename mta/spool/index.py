"""The SQLite index: schema, connection setup and every SQL statement.

One job: own the table layout so the writer, reads and recovery never
spell SQL of their own.

API: `connect(path, *, reader=False) -> aiosqlite.Connection` (pragmas +
schema applied, older indexes migrated), the `SQL_*` statements,
`SUPPRESSION_SCHEMA` (also created on its own by suppression_admin.py),
`STATE_TRANSITIONS`, `ASYNC_TRANSITIONS`, `OPERATOR_MOVES` and
`check_transition`; `EVENT_OF_STATE` / `EVENT_OF_MOVE` (which ledger event a
recorded update / an operator move writes) and `WEBHOOK_FIELDS`. The SQL of operator filters (`MessageFilter`) is built
in filters.py, from the fragments there.

Invariants:
- WAL + synchronous=FULL: a COMMIT returns only after the WAL is fsynced,
  so a committed row survives power loss (DESIGN §3 commit point).
- Connections run with isolation_level=None; the writer issues BEGIN
  IMMEDIATE / COMMIT itself, so a transaction spans exactly one batch.
- Replies are stored as their wire string `str(Reply)`, parsed back with
  `Reply.parse`.
- `done` = no recipient left in 'queued' or 'held' (PENDING_STATES). `body_live` = not done, or some
  bounced/expired recipient of a non-DSN message with a non-null sender still
  has dsn_state != 'sent' (its DSN needs the original's headers). Both are
  recomputed by `SQL_RECOMPUTE_FLAGS` in the same transaction as any change
  to recipients, and by recovery.
- dsn_state 'none' marks a recipient that owes no DSN although bounced or
  expired: an asynchronous bounce (`Spool.record_async`), whose report came
  back to our VERP path, possibly long after the body was reclaimed; a
  recipient of a DSN or of a null-sender message (RFC 5321 §4.5.5: never
  reported on), set by the same UPDATE that makes it final (SQL_RECORD,
  SQL_OP_BOUNCE; `connect` fixes rows of older indexes); and one whose owed
  DSN an operator delete cancelled.
- A failure DSN is owed (SQL_DSN_OWED) for every bounced/expired recipient
  with dsn_state '' or 'delay_sent', as soon as no recipient of its message
  is leased (no attempt in flight): like Postfix, the failures of one
  delivery pass go into one DSN, and the sender is not kept waiting for
  recipients still being retried. The partial index recipients_dsn_owed
  holds exactly those recipients, so finding them never walks the queue.
- Suppressions and soft-failure counts are keyed by address with the domain
  lower-cased and the local part as given (`suppressions.address_key`), so
  lookups are primary-key seeks.
"""

from __future__ import annotations

import os

import aiosqlite

from mta.core.envelope import (BOUNCED, DELETED, DELIVERED, EXPIRED, HELD, QUEUED,
                               SUPPRESSED)

# 2: suppressions + soft_failures tables, attempts.detail (added in place).
# Issue 5 (states held/deleted; indexes recipients_domain, recipients_address,
# messages_sender, messages_received) kept version 2: the indexes are created
# IF NOT EXISTS on open and the states are new values, so an older index
# needs no migration step (and older code would treat held as unknown, never
# leasing it). tests/test_suppression.py pins 2. Issue 6 (events,
# webhook_state, idempotency) keeps 2 for the same reason: new tables and
# indexes, created IF NOT EXISTS on open.
SCHEMA_VERSION = 2

# A recipient's state machine: final states are terminal (envelope.py).
# `record` only updates rows whose current state may move to the new one.
# SUPPRESSED is normally entered at insertion (accept-and-record,
# NewMessage.suppressed); queued → suppressed lets delivery drop a recipient
# whose address was suppressed after it was queued.
# HELD and DELETED are entered only by operator moves (OPERATOR_MOVES).
STATE_TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({QUEUED, DELIVERED, BOUNCED, EXPIRED, SUPPRESSED, HELD, DELETED}),
    HELD: frozenset({QUEUED, BOUNCED, DELETED}),
    DELIVERED: frozenset(),
    BOUNCED: frozenset(),
    EXPIRED: frozenset(),
    SUPPRESSED: frozenset(),
    DELETED: frozenset(),
}
# The one exception to "final is terminal", used only by `record_async`: a
# bounce that arrives by mail after the remote accepted the message turns
# delivered (or still queued) into bounced. Nothing else may use it.
ASYNC_TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({BOUNCED}),
    DELIVERED: frozenset({BOUNCED}),
}
ALL_STATES = (QUEUED, HELD, DELIVERED, BOUNCED, EXPIRED, SUPPRESSED, DELETED)

# Operator queue steering (Spool.hold_messages & co., issue 5): action ->
# (states it moves from, state it moves to). Leased (in-flight) recipients
# are never moved: their attempt's record decides their fate, and the
# operator repeats the action afterwards if still needed.
OPERATOR_MOVES: dict[str, tuple[frozenset[str], str]] = {
    "hold": (frozenset({QUEUED}), HELD),
    "release": (frozenset({HELD}), QUEUED),
    "retry": (frozenset({QUEUED}), QUEUED),
    "bounce": (frozenset({QUEUED, HELD}), BOUNCED),
    "delete": (frozenset({QUEUED, HELD}), DELETED),
}


class IllegalTransition(ValueError):
    pass


def check_transition(old: str, new: str, *, table=STATE_TRANSITIONS) -> None:
    """Raise IllegalTransition unless `table` allows old -> new."""
    if new not in table.get(old, ()):
        raise IllegalTransition(f"recipient state {old!r} -> {new!r} is not allowed")


for _action, (_froms, _to) in OPERATOR_MOVES.items():
    for _old in _froms:   # an operator move the table forbids is a bug here, not at run time
        check_transition(_old, _to)
# `counts()` always reports these keys (others only when present).
COUNTED_STATES = (QUEUED, DELIVERED, BOUNCED, EXPIRED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    received_at REAL NOT NULL,
    size        INT  NOT NULL,
    segment     INT  NOT NULL,
    "offset"    INT  NOT NULL,
    length      INT  NOT NULL,
    credential  TEXT,
    listener    TEXT NOT NULL DEFAULT '',
    client_ip   TEXT NOT NULL DEFAULT '',
    is_dsn      INT  NOT NULL DEFAULT 0,
    done        INT  NOT NULL DEFAULT 0,
    body_live   INT  NOT NULL DEFAULT 1,
    dsn_for     TEXT
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS recipients (
    message_id   TEXT NOT NULL,
    rcpt_idx     INT  NOT NULL,
    address      TEXT NOT NULL,
    domain       TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INT  NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    leased       INT  NOT NULL DEFAULT 0,
    last_reply   TEXT,
    last_remote  TEXT NOT NULL DEFAULT '',
    last_tls     TEXT NOT NULL DEFAULT '',
    updated_at   REAL NOT NULL,
    dsn_state    TEXT NOT NULL DEFAULT '',   -- '', 'delay_sent', 'sent', 'none' (owes none)
    PRIMARY KEY (message_id, rcpt_idx)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,
    rcpt_idx    INT  NOT NULL,
    at          REAL NOT NULL,
    duration    REAL NOT NULL,
    state       TEXT NOT NULL,
    reply       TEXT,
    remote_host TEXT NOT NULL DEFAULT '',
    remote_ip   TEXT NOT NULL DEFAULT '',
    tls         TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT ''     -- async reports: where it came from
);

-- lease_due / next_due_at walk this in next_attempt order.
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (state, leased, next_attempt);
-- Recipients owing a failure DSN (SQL_DSN_OWED): final failures not yet
-- reported. Recipients that can never owe one get dsn_state 'none' when
-- they fail, so the index holds only real debts, not history.
CREATE INDEX IF NOT EXISTS recipients_dsn_owed ON recipients (message_id)
    WHERE state IN ('bounced', 'expired') AND dsn_state IN ('', 'delay_sent');
-- Was the DSN walk while a DSN waited for the message to be done (issue 10
-- item 11); unused since.
DROP INDEX IF EXISTS messages_dsn_owed;
CREATE INDEX IF NOT EXISTS messages_pending ON messages (received_at) WHERE done = 0;
-- reclaim and recovery ask which segments live bodies sit in.
CREATE INDEX IF NOT EXISTS messages_live_segment ON messages (segment) WHERE body_live = 1;
CREATE INDEX IF NOT EXISTS attempts_by_message ON attempts (message_id, rcpt_idx);
-- Operator filters and keyset pages (filters.py). Tables are WITHOUT ROWID,
-- so each index entry ends with the primary key: messages_received is
-- (received_at, id), the page order; recipients_domain is (domain,
-- message_id, rcpt_idx). messages_pending (done = 0) serves pages without
-- include_done.
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender COLLATE NOCASE, received_at);
CREATE INDEX IF NOT EXISTS recipients_domain ON recipients (domain);
CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address);
"""

# The ledger (issue 6). events is append-only: rows are inserted in the
# writer's transaction with the state change they describe, and only ever
# deleted (oldest first, `SQL_PRUNE_EVENTS`); nothing UPDATEs them.
# AUTOINCREMENT: a seq is never reused, even after the newest rows are
# pruned, so a consumer's cursor (`seq > after`) can never skip or repeat.
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
    type       TEXT NOT NULL,
    queue_id   TEXT NOT NULL DEFAULT '',
    recipient  TEXT NOT NULL DEFAULT '',
    credential TEXT NOT NULL DEFAULT '',   -- '' = none (trusted network, DSNs)
    detail     TEXT NOT NULL DEFAULT '{}'  -- JSON object
);
CREATE INDEX IF NOT EXISTS events_by_message ON events (queue_id, seq);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, seq);
CREATE INDEX IF NOT EXISTS events_at ON events (at);

-- Webhook delivery cursors (mta/runtime/webhooks.py): one row per endpoint.
CREATE TABLE IF NOT EXISTS webhook_state (
    name          TEXT PRIMARY KEY,
    cursor        INTEGER NOT NULL DEFAULT 0,   -- last seq delivered (2xx)
    failing_since REAL,
    next_attempt  REAL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    state         TEXT NOT NULL DEFAULT 'ok'
);

-- Idempotent submission: (credential, Idempotency-Key) -> the queue id it made.
CREATE TABLE IF NOT EXISTS idempotency (
    credential TEXT NOT NULL,                   -- '' = no credential
    key        TEXT NOT NULL,
    queue_id   TEXT NOT NULL,
    created    REAL NOT NULL,
    PRIMARY KEY (credential, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);
"""

# Also created alone by suppression_admin.py (an operator may import a list
# before the daemon first starts); `connect` then adds the rest.
SUPPRESSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppressions (
    address  TEXT NOT NULL,           -- local part as given, domain lower-cased
    scope    TEXT NOT NULL DEFAULT '',-- '' global, else a credential name
    reason   TEXT NOT NULL,           -- hard_bounce|complaint|soft_bounce|unsubscribe|manual
    queue_id TEXT NOT NULL DEFAULT '',
    reply    TEXT NOT NULL DEFAULT '',
    created  REAL NOT NULL,
    expires  REAL,                    -- NULL: never
    PRIMARY KEY (address, scope)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS soft_failures (
    address  TEXT PRIMARY KEY,
    count    INT  NOT NULL,
    first_at REAL NOT NULL,
    last_at  REAL NOT NULL
) WITHOUT ROWID;
"""

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=OFF",
    "PRAGMA busy_timeout=5000",
)


async def connect(path: str | os.PathLike, *, reader: bool = False) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(os.fspath(path), isolation_level=None)
    try:
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        if reader:
            await conn.execute("PRAGMA query_only=1")
        else:
            await conn.executescript(SCHEMA + SUPPRESSION_SCHEMA + LEDGER_SCHEMA)
            # An index made by schema 1 lacks attempts.detail (CREATE TABLE IF
            # NOT EXISTS keeps the old table); ADD COLUMN is O(1) in SQLite.
            cols = {r[1] for r in await conn.execute_fetchall("PRAGMA table_info(attempts)")}
            if "detail" not in cols:
                await conn.execute(SQL_ADD_ATTEMPT_DETAIL)
            # Older indexes left failed recipients of DSNs and null-sender
            # messages at dsn_state '': mark them (a no-op walk of the
            # partial index once done).
            await conn.execute(SQL_MARK_NO_DSN_OWED)
            await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        await conn.close()
        raise
    return conn


SQL_ADD_ATTEMPT_DETAIL = "ALTER TABLE attempts ADD COLUMN detail TEXT NOT NULL DEFAULT ''"

# True when message {mid} is one nobody may be told about (a DSN, or a null
# sender): its failed recipients owe no DSN.
_NO_DSN_FOR = "EXISTS (SELECT 1 FROM messages WHERE id = {mid} AND (is_dsn = 1 OR sender = ''))"
# The recipients owing a failure DSN: exactly the rows of recipients_dsn_owed.
_OWED = "state IN ('bounced', 'expired') AND dsn_state IN ('', 'delay_sent')"
SQL_MARK_NO_DSN_OWED = (
    "UPDATE recipients INDEXED BY recipients_dsn_owed SET dsn_state = 'none' "
    f"WHERE {_OWED} AND {_NO_DSN_FOR.format(mid='recipients.message_id')}")

# -- writes (writer.py) -----------------------------------------------------------

SQL_INSERT_MESSAGE = (
    'INSERT INTO messages (id, sender, received_at, size, segment, "offset", length, '
    "credential, listener, client_ip, is_dsn, done, body_live, dsn_for) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, ?)")

SQL_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, rcpt_idx, address, domain, state, attempts, "
    "next_attempt, leased, last_reply, last_remote, last_tls, updated_at, dsn_state) "
    "VALUES (?, ?, ?, ?, 'queued', 0, ?, 0, NULL, '', '', ?, '')")

# Accept-and-record: final at once, reply = why, never leased, no DSN owed.
SQL_INSERT_SUPPRESSED_RECIPIENT = (
    "INSERT INTO recipients (message_id, rcpt_idx, address, domain, state, attempts, "
    "next_attempt, leased, last_reply, last_remote, last_tls, updated_at, dsn_state) "
    "VALUES (?, ?, ?, ?, 'suppressed', 0, ?, 0, ?, '', '', ?, '')")

# kind "failure" → 'sent' always; "delay" → 'delay_sent' but never downgrades 'sent'.
SQL_MARK_DSN_SENT = "UPDATE recipients SET dsn_state = 'sent' WHERE message_id = ? AND rcpt_idx = ?"
SQL_MARK_DELAY_SENT = ("UPDATE recipients SET dsn_state = 'delay_sent' "
                       "WHERE message_id = ? AND rcpt_idx = ? AND dsn_state = ''")

SQL_LEASE_SELECT = (
    "SELECT r.message_id, r.rcpt_idx, r.address, r.domain, m.sender, r.attempts, "
    "m.received_at, r.next_attempt, m.size "
    "FROM recipients r JOIN messages m ON m.id = r.message_id "
    "WHERE r.state = 'queued' AND r.leased = 0 AND r.next_attempt <= ? "
    "ORDER BY r.next_attempt LIMIT ?")
SQL_LEASE_SET = "UPDATE recipients SET leased = 1 WHERE message_id = ? AND rcpt_idx = ?"
SQL_RELEASE = "UPDATE recipients SET leased = 0 WHERE message_id = ? AND rcpt_idx = ?"

SQL_INSERT_ATTEMPT = (
    "INSERT INTO attempts (message_id, rcpt_idx, at, duration, state, reply, "
    "remote_host, remote_ip, tls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

# Params: state, inc, next_attempt|None, reply|None, inc, remote, inc, tls, updated_at,
#         message_id, rcpt_idx. Only a counted attempt overwrites remote/tls; a
# put-back (counts_attempt=False) keeps what the last real attempt saw. A
# failure of a DSN or null-sender message owes no DSN: dsn_state 'none'.
SQL_RECORD = (
    "UPDATE recipients SET state = ?1, attempts = attempts + ?2, "
    "next_attempt = COALESCE(?3, next_attempt), last_reply = COALESCE(?4, last_reply), "
    "last_remote = CASE WHEN ?5 THEN ?6 ELSE last_remote END, "
    "last_tls = CASE WHEN ?7 THEN ?8 ELSE last_tls END, "
    "leased = 0, updated_at = ?9, "
    "dsn_state = CASE WHEN ?1 IN ('bounced', 'expired') AND "
    f"{_NO_DSN_FOR.format(mid='?10')} THEN 'none' ELSE dsn_state END "
    "WHERE message_id = ?10 AND rcpt_idx = ?11 AND state = 'queued'")

# record_async (ASYNC_TRANSITIONS).
SQL_RECIPIENT_STATE = "SELECT state FROM recipients WHERE message_id = ? AND rcpt_idx = ?"
SQL_INSERT_ASYNC_ATTEMPT = (
    "INSERT INTO attempts (message_id, rcpt_idx, at, duration, state, reply, "
    "remote_host, remote_ip, tls, detail) VALUES (?, ?, ?, 0, ?, ?, '', '', '', ?)")
# Params: reply|None, updated_at, message_id, rcpt_idx.
SQL_ASYNC_BOUNCE = (
    "UPDATE recipients SET state = 'bounced', last_reply = COALESCE(?, last_reply), "
    "dsn_state = 'none', leased = 0, updated_at = ? "
    "WHERE message_id = ? AND rcpt_idx = ? AND state IN ('queued', 'delivered')")

# Operator moves (writer._steer, OPERATOR_MOVES); the last two params are
# always message_id, rcpt_idx. Each re-checks state and lease.
_OP_KEY = "WHERE message_id = ? AND rcpt_idx = ? AND leased = 0"
SQL_OP_HOLD = f"UPDATE recipients SET state = 'held', updated_at = ? {_OP_KEY} AND state = 'queued'"
SQL_OP_RELEASE = ("UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ? "
                  f"{_OP_KEY} AND state = 'held'")
SQL_OP_RETRY = f"UPDATE recipients SET next_attempt = ?, updated_at = ? {_OP_KEY} AND state = 'queued'"
# last_remote is cleared: the DSN must not name the last MX as the one that refused.
SQL_OP_BOUNCE = ("UPDATE recipients SET state = 'bounced', last_reply = ?1, last_remote = '', "
                 "updated_at = ?2, dsn_state = CASE WHEN "
                 f"{_NO_DSN_FOR.format(mid='?3')} THEN 'none' ELSE dsn_state END "
                 "WHERE message_id = ?3 AND rcpt_idx = ?4 AND leased = 0 "
                 "AND state IN ('queued', 'held')")
SQL_OP_DELETE = (f"UPDATE recipients SET state = 'deleted', updated_at = ? {_OP_KEY} "
                 "AND state IN ('queued', 'held')")
SQL_OP_CANCEL_DSN = ("UPDATE recipients SET dsn_state = 'none' WHERE message_id = ? "
                     "AND +state IN ('bounced', 'expired') AND dsn_state NOT IN ('sent', 'none')")
# Params: message_id, rcpt_idx, at, state, reply|None.
SQL_INSERT_OPERATOR_ATTEMPT = (
    "INSERT INTO attempts (message_id, rcpt_idx, at, duration, state, reply, "
    "remote_host, remote_ip, tls, detail) VALUES (?, ?, ?, 0, ?, ?, 'operator', '', '', 'operator')")

# -- the ledger (issue 6; writer.py writes, reads.py reads) --------------------------

# The event a recorded update writes (`Spool.record`): QUEUED only when the
# attempt counts (a deferral); a put-back (counts_attempt=False) writes none.
EVENT_OF_STATE = {QUEUED: "deferred", DELIVERED: "delivered", BOUNCED: "bounced",
                  EXPIRED: "expired", SUPPRESSED: "suppressed", HELD: "held", DELETED: "deleted"}
# The event of an operator move; "retry" (queued → queued, due now) writes none.
EVENT_OF_MOVE = {"hold": "held", "release": "released", "bounce": "bounced", "delete": "deleted"}

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

# record_async: the recipient's state plus what its event needs.
SQL_RECIPIENT_FOR_EVENT = (
    "SELECT r.state, r.address, COALESCE(m.credential, '') FROM recipients r "
    "JOIN messages m ON m.id = r.message_id WHERE r.message_id = ? AND r.rcpt_idx = ?")

# Pruning, oldest first along events_at, at most ?2 rows a call.
SQL_PRUNE_EVENTS = ("DELETE FROM events WHERE seq IN "
                    "(SELECT seq FROM events WHERE at < ?1 ORDER BY at LIMIT ?2)")
SQL_PRUNE_IDEMPOTENCY = ("DELETE FROM idempotency WHERE rowid IN "
                         "(SELECT rowid FROM idempotency WHERE created < ?1 ORDER BY created LIMIT ?2)")

_EVENT_COLS = "seq, at, type, queue_id, recipient, credential, detail"
SQL_MESSAGE_EVENTS = f"SELECT {_EVENT_COLS} FROM events WHERE queue_id = ? ORDER BY seq"
# The newest seq ever assigned (sqlite_sequence survives pruning every row).
SQL_LAST_EVENT_SEQ = ("SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM events UNION ALL "
                      "SELECT seq FROM sqlite_sequence WHERE name = 'events')")


# One event as its webhook payload object, built by SQLite (UTF-8 bytes):
# {"type","seq","timestamp" (ms, UTC, "…Z"),"queue_id","recipient","credential"
# ("" → null),"data" (the detail; not JSON → {"raw": text})}. Must equal
# runtime.webhooks.event_json (tests/test_webhooks.py compares them).
EVENT_PAYLOAD_COLS = (
    "seq, CAST(json_object('type', type, 'seq', seq, "
    "'timestamp', strftime('%Y-%m-%dT%H:%M:%fZ', at, 'unixepoch'), "
    "'queue_id', nullif(queue_id, ''), 'recipient', nullif(recipient, ''), "
    "'credential', nullif(credential, ''), "
    "'data', CASE WHEN detail = '' THEN json_object() WHEN json_valid(detail) "
    "THEN json(detail) ELSE json_object('raw', detail) END) AS BLOB)")


def events_after_sql(after: int, limit: int, types, recipient: str | None,
                     credential: str | None, cols: str = _EVENT_COLS) -> tuple[str, list]:
    """The page of `Spool.events_after`. Without types: one walk of the
    primary key from `after`. With types: one bounded walk of events_by_type
    per type (each already in seq order), merged: never a sort of more than
    len(types) * limit rows, however far behind the cursor is. recipient and
    credential are checked on the rows walked (no index: the walk stops at
    `limit` matches, and the events after a cursor are few when it is kept
    up to date)."""
    extra, xparams = "", []
    if recipient is not None:
        extra += " AND recipient = ?"
        xparams.append(recipient)
    if credential is not None:
        extra += " AND credential = ?"
        xparams.append(credential)
    if types is None:
        return (f"SELECT {cols} FROM events WHERE seq > ?{extra} ORDER BY seq LIMIT ?",
                [after, *xparams, limit])
    parts, params = [], []
    for t in types:
        parts.append(f"SELECT * FROM (SELECT {cols} FROM events WHERE type = ? "
                     f"AND seq > ?{extra} ORDER BY seq LIMIT ?)")
        params += [t, after, *xparams, limit]
    return " UNION ALL ".join(parts) + " ORDER BY seq LIMIT ?", [*params, limit]


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
        return f"INSERT INTO webhook_state (name) VALUES (?) ON CONFLICT (name) DO NOTHING"
    sets = ", ".join(f"{f} = excluded.{f}" for f in fields)
    return f"INSERT INTO webhook_state ({cols}) VALUES ({marks}) ON CONFLICT (name) DO UPDATE SET {sets}"


# Idempotency (writer._insert). One lookup per batch that has keys: params
# are (credential, key) pairs.
SQL_IDEMPOTENCY_LOOKUP = ("SELECT credential, key, queue_id, created FROM idempotency "
                          "WHERE (credential, key) IN (VALUES {pairs})")
# An expired key (still present, not yet pruned) is replaced.
SQL_IDEMPOTENCY_PUT = (
    "INSERT INTO idempotency (credential, key, queue_id, created) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (credential, key) DO UPDATE SET queue_id = excluded.queue_id, "
    "created = excluded.created")

# Suppression (suppressions.py, suppression_admin.py). An automatic insert
# keeps an existing entry (the first reason wins) unless that one has
# expired, or is a soft_bounce being upgraded to hard_bounce/complaint.
# Params: address, scope, reason, queue_id, reply, created, expires.
SQL_SUPPRESS = (
    "INSERT INTO suppressions (address, scope, reason, queue_id, reply, created, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (address, scope) DO UPDATE SET "
    "reason = excluded.reason, queue_id = excluded.queue_id, reply = excluded.reply, "
    "created = excluded.created, expires = excluded.expires "
    "WHERE (suppressions.expires IS NOT NULL AND suppressions.expires <= excluded.created) "
    "OR (suppressions.reason = 'soft_bounce' AND excluded.reason IN ('hard_bounce', 'complaint'))")
# An operator's `add` replaces whatever was there.
SQL_SUPPRESS_REPLACE = (
    "INSERT OR REPLACE INTO suppressions (address, scope, reason, queue_id, reply, created, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)")
SQL_UNSUPPRESS = "DELETE FROM suppressions WHERE address = ? AND scope = ?"
SQL_SOFT_RESET = "DELETE FROM soft_failures WHERE address = ?"
# Params: address, at, at. Returns the new (count, first_at).
SQL_SOFT_BUMP = (
    "INSERT INTO soft_failures (address, count, first_at, last_at) VALUES (?, 1, ?, ?) "
    "ON CONFLICT (address) DO UPDATE SET count = count + 1, "
    "last_at = MAX(last_at, excluded.last_at) RETURNING count, first_at, last_at")
_SUPP_COLS = "address, scope, reason, queue_id, reply, created, expires"
# Params: address, scope-or-'', now. The global entry sorts first.
SQL_SUPPRESSED = (
    f"SELECT {_SUPP_COLS} FROM suppressions WHERE address = ? AND scope IN ('', ?) "
    "AND (expires IS NULL OR expires > ?) ORDER BY scope != '' LIMIT 1")
SQL_SUPPRESSIONS_OF = f"SELECT {_SUPP_COLS} FROM suppressions WHERE address = ? ORDER BY scope"
SQL_SUPPRESSION = f"SELECT {_SUPP_COLS} FROM suppressions WHERE address = ? AND scope = ?"
SQL_SUPPRESSIONS_ALL = f"SELECT {_SUPP_COLS} FROM suppressions ORDER BY address, scope"
SQL_SOFT_FAILURE = "SELECT count, first_at, last_at FROM soft_failures WHERE address = ?"

# The unary "+" on r.state keeps SQLite from seeking recipients_due by state
# (which would scan every queued recipient per message) instead of the
# primary key by message_id.
_M = "messages.id"
_DONE = f"(NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = {_M} AND +r.state IN ('queued', 'held')))"
_OWES_DSN = (f"(messages.is_dsn = 0 AND messages.sender != '' AND EXISTS (SELECT 1 FROM recipients r "
             f"WHERE r.message_id = {_M} AND +r.state IN ('bounced', 'expired') AND r.dsn_state NOT IN ('sent', 'none')))")
_LIVE = f"(NOT {_DONE} OR {_OWES_DSN})"

SQL_RECOMPUTE_FLAGS = f"UPDATE messages SET done = {_DONE}, body_live = {_LIVE} WHERE id = ?"
# Recovery: fix every row whose stored flags disagree (normally none).
SQL_RECOMPUTE_ALL_FLAGS = (
    f"UPDATE messages SET done = {_DONE}, body_live = {_LIVE} "
    f"WHERE done IS NOT {_DONE} OR body_live IS NOT {_LIVE}")

SQL_RESET_LEASES = "UPDATE recipients SET leased = 0 WHERE leased = 1"

# -- reads (reads.py, recovery.py) -----------------------------------------------

# A skip-scan over messages_live_segment: one index seek per live segment,
# not one row per live message (DISTINCT would read them all).
SQL_LIVE_SEGMENTS = (
    "WITH RECURSIVE s(seg) AS ("
    " SELECT MIN(segment) FROM messages WHERE body_live = 1"
    " UNION ALL SELECT (SELECT MIN(segment) FROM messages WHERE body_live = 1 AND segment > s.seg)"
    " FROM s WHERE s.seg IS NOT NULL) "
    "SELECT seg FROM s WHERE seg IS NOT NULL")
SQL_SEGMENT_ENDS = 'SELECT segment, MAX("offset" + ? + length) FROM messages GROUP BY segment'
SQL_MAX_SEGMENT = "SELECT MAX(segment) FROM messages"
SQL_LIVE_IN_SEGMENT_PAST = ('SELECT id FROM messages WHERE body_live = 1 AND segment = ? '
                            'AND "offset" + ? + length > ?')
SQL_BODY_LOCATION = 'SELECT segment, "offset", length, body_live FROM messages WHERE id = ?'
SQL_NEXT_DUE = "SELECT MIN(next_attempt) FROM recipients WHERE state = 'queued' AND leased = 0"
SQL_COUNTS = "SELECT state, COUNT(*) FROM recipients GROUP BY state"
# gauges(): O(pending) over messages_pending, O(1) for the MIN.
SQL_PENDING_MESSAGES = "SELECT COUNT(*), MIN(received_at) FROM messages WHERE done = 0"

# domain_summary(): qshape-like buckets by message age, upper bounds in
# minutes; a message exactly 5 minutes old is in "5m". One GROUP BY pass over
# pending recipients (recipients_due by state), a primary-key probe each for
# received_at. last_error: the latest last_reply among deferred recipients,
# found in the same pass by MAX over "updated_at (fixed width) || reply".
AGE_BUCKET_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
AGE_BUCKETS = tuple(f"{m}m" for m in AGE_BUCKET_MINUTES) + (f"{AGE_BUCKET_MINUTES[-1]}m+",)
STAMP_WIDTH = 20
_BUCKET = ("CASE " + " ".join(f"WHEN ?1 - m.received_at <= {m * 60} THEN {i}"
                              for i, m in enumerate(AGE_BUCKET_MINUTES))
           + f" ELSE {len(AGE_BUCKET_MINUTES)} END")
SQL_DOMAIN_SUMMARY = (
    "SELECT domain, COUNT(*), SUM(state = 'held'), MIN(received_at), "
    + ", ".join(f"SUM(bucket = {i})" for i in range(len(AGE_BUCKETS)))
    + ", MAX(CASE WHEN state = 'queued' AND attempts > 0 AND last_reply IS NOT NULL "
    f"THEN printf('%0{STAMP_WIDTH}.6f', updated_at) || last_reply END) "
    "FROM (SELECT r.domain, r.state, r.attempts, r.last_reply, r.updated_at, m.received_at, "
    f"{_BUCKET} AS bucket FROM recipients r JOIN messages m ON m.id = r.message_id "
    "WHERE r.state IN ('queued', 'held')) "
    "GROUP BY domain ORDER BY COUNT(*) DESC, domain")

# Messages owing a failure DSN now: some recipient in recipients_dsn_owed
# (INDEXED BY, and the WHERE repeats the index's own condition: only it is
# walked, whatever the planner would guess from the full table) and
# no recipient leased. The leased probe walks one message's recipients by
# primary key.
SQL_DSN_OWED = (
    "SELECT m.id, m.sender, m.received_at FROM messages m "
    "WHERE m.id IN (SELECT DISTINCT message_id FROM recipients "
    f"INDEXED BY recipients_dsn_owed WHERE {_OWED}) "
    "AND m.is_dsn = 0 AND m.sender != '' "
    "AND NOT EXISTS (SELECT 1 FROM recipients l WHERE l.message_id = m.id AND l.leased = 1) "
    "ORDER BY m.received_at LIMIT ?")
SQL_DSN_OWED_RCPTS = (
    "SELECT message_id, rcpt_idx, address, state, last_reply, last_remote, attempts "
    f"FROM recipients WHERE message_id IN ({{ids}}) AND {_OWED} "
    "ORDER BY message_id, rcpt_idx")

SQL_DELAY_OWED = (
    "SELECT m.id, m.sender, m.received_at FROM messages m "
    "WHERE m.done = 0 AND m.is_dsn = 0 AND m.sender != '' AND m.received_at <= ? "
    "AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id "
    "AND +r.state = 'queued' AND r.attempts > 0 AND r.dsn_state = '') "
    "ORDER BY m.received_at LIMIT ?")
SQL_DELAY_OWED_RCPTS = (
    "SELECT message_id, rcpt_idx, address, state, last_reply, last_remote, attempts "
    "FROM recipients WHERE message_id IN ({ids}) "
    "AND +state = 'queued' AND attempts > 0 AND dsn_state = '' ORDER BY message_id, rcpt_idx")

_MESSAGE_COLS = "id, sender, received_at, size, credential, is_dsn, done"
SQL_LIST_PENDING = f"SELECT {_MESSAGE_COLS} FROM messages WHERE done = 0 ORDER BY received_at LIMIT ?"
SQL_LIST_ALL = f"SELECT {_MESSAGE_COLS} FROM messages ORDER BY id LIMIT ?"
SQL_GET_MESSAGE = f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?"
SQL_RECIPIENTS_OF = (
    "SELECT message_id, rcpt_idx, address, state, attempts, next_attempt, last_reply, "
    "last_remote, last_tls FROM recipients WHERE message_id IN ({ids}) ORDER BY message_id, rcpt_idx")
SQL_ATTEMPTS_OF = (
    "SELECT rcpt_idx, at, duration, state, reply, remote_host, remote_ip, tls, detail "
    "FROM attempts WHERE message_id = ? ORDER BY id")
