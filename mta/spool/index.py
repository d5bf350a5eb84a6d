"""The SQLite index: its tables and connection setup.

One job: own the table layout (schema, pragmas, migrations of older
indexes), so the statements in queue_sql.py, ledger_sql.py and
suppressions.py, and everything that runs them, agree on one layout.

API: `connect(path, *, reader=False) -> aiosqlite.Connection` (pragmas +
schema applied, older indexes migrated); `sync_wal(path)` (blocking);
`SqliteCheckpointer(path)` (wal.py's checkpoints, on their own connection);
`SCHEMA` (the queue: messages, recipients, attempts, segment_marks),
`LEDGER_SCHEMA` (events, webhook_state, idempotency), `SUPPRESSION_SCHEMA`
(also created on its own by suppression_admin.py); `SCHEMA_VERSION`.

Invariants:
- WAL. Connections open with synchronous=FULL (recovery's transactions and
  suppression_admin's are fsynced); the writer runs with NORMAL (issue 12:
  a commit survives SIGKILL, a power loss may take the newest ones, and the
  log's records bring acceptances back; writer.py, the package docstring).
  `sync_wal` fsyncs the WAL file: every commit made so far is then durable.
- Connections run with isolation_level=None; the writer issues BEGIN
  IMMEDIATE / COMMIT itself, so a transaction spans exactly one batch.
- Replies are stored as their wire string `str(Reply)`, parsed back with
  `Reply.parse`. Recipient states are stored as their string values
  (`core.envelope.RecipientState`).
- Suppressions and soft-failure counts are keyed by address with the domain
  lower-cased and the local part as given (`suppressions.address_key`), so
  lookups are primary-key seeks.
"""

from __future__ import annotations

import os
import sqlite3

import aiosqlite

from mta.spool.queue_sql import SQL_MARK_NO_DSN_OWED
from mta.spool.tenants import TENANTS_SCHEMA

# 2: suppressions + soft_failures tables, attempts.detail (added in place).
# Issue 5 (states held/deleted; indexes recipients_domain, recipients_address,
# messages_sender, messages_received) kept version 2: the indexes are created
# IF NOT EXISTS on open and the states are new values, so an older index
# needs no migration step (and older code would treat held as unknown, never
# leasing it). tests/test_suppression.py pins 2. Issue 6 (events,
# webhook_state, idempotency) keeps 2 for the same reason: new tables and
# indexes, created IF NOT EXISTS on open; so does issue 12 (segment_marks:
# an index without it has no marks, and recovery then starts each scan at
# the end of the furthest record a row points at, as before), and issue 12's
# messages.body_ascii / body_dots (added in place by `connect`; NULL on the
# rows of an older index: delivery then looks at the body, as before).
SCHEMA_VERSION = 2

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
    dsn_for     TEXT,
    -- What acceptance learnt of the stored body (acceptance.body_flags),
    -- 1/0, NULL = not known (a row from before issue 12: delivery looks):
    -- every byte 7-bit; some line starts with ".".
    body_ascii  INT,
    body_dots   INT,
    -- The sending API (issue 13): a test key's message (captured, never
    -- delivered); a scheduled send's time (NULL: none).
    test        INT  NOT NULL DEFAULT 0,
    not_before  REAL,
    -- RFC 8689 (issue 17): 1 = REQUIRETLS, 2 = "TLS-Required: No".
    tls_flags   INT  NOT NULL DEFAULT 0
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

-- The log's marks (issue 12; the package docstring, S3r/S4p): per segment,
-- the end of the last idempotent duplicate's record the index has answered,
-- written in the transaction that answered it (a message's record is
-- covered by its row), and by recovery past what it replayed; recovery
-- replays the whole v2 records past max(this, the furthest row end). At most
-- one row per segment ever written (about 16,000 per TB of mail), never
-- deleted: a segment whose unlink a power loss undid is still known.
CREATE TABLE IF NOT EXISTS segment_marks (
    segment     INTEGER PRIMARY KEY,
    indexed_end INTEGER NOT NULL
);
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
-- By time: pruning walks it oldest first (ledger_sql.SQL_PRUNE_EVENTS) and
-- the console's counts per minute read it alone, as a covering index
-- (figures.py: (at, type), seq being the rowid). It replaced events_at (at),
-- which served only pruning: one index to keep up per insert, as before.
DROP INDEX IF EXISTS events_at;
CREATE INDEX IF NOT EXISTS events_at_type ON events (at, type);

-- Webhook delivery cursors (mta/webhooks/): one row per endpoint.
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
    reason   TEXT NOT NULL,           -- core.envelope.SUPPRESSION_REASONS
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

SQL_ADD_ATTEMPT_DETAIL = "ALTER TABLE attempts ADD COLUMN detail TEXT NOT NULL DEFAULT ''"
SQL_ADD_BODY_FLAGS = ("ALTER TABLE messages ADD COLUMN body_ascii INT",
                      "ALTER TABLE messages ADD COLUMN body_dots INT")
SQL_ADD_API_COLUMNS = ("ALTER TABLE messages ADD COLUMN test INT NOT NULL DEFAULT 0",
                       "ALTER TABLE messages ADD COLUMN not_before REAL")
SQL_ADD_TLS_FLAGS = "ALTER TABLE messages ADD COLUMN tls_flags INT NOT NULL DEFAULT 0"

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=OFF",
    "PRAGMA busy_timeout=5000",
)


def sync_wal(path: str | os.PathLike[str]) -> None:
    """fsync the index's WAL file (blocking: run it in a thread). SQLite
    writes frames with write(2), so this makes every commit so far durable,
    as a synchronous=FULL commit would. No WAL file: nothing to sync."""
    try:
        fd = os.open(os.fspath(path) + "-wal", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteCheckpointer:
    """PASSIVE checkpoints of the index on a connection of their own
    (wal.Checkpointer): blocking, one call at a time, from any thread."""

    def __init__(self, path: str | os.PathLike[str]):
        self._path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None

    def run(self) -> tuple[int, int, int]:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None,
                                         check_same_thread=False)
            # NORMAL or FULL: either way SQLite fsyncs the WAL before it
            # copies frames, and the database file after.
            self._conn.execute("PRAGMA synchronous=NORMAL")
        busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(frames), int(copied)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def connect(path: str | os.PathLike[str], *, reader: bool = False) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(os.fspath(path), isolation_level=None)
    try:
        for pragma in PRAGMAS:
            await conn.execute(pragma)
        if reader:
            await conn.execute("PRAGMA query_only=1")
        else:
            # Tenants too: the ledger's and the queue's tenant-scoped reads
            # look up credential owners there (spool/tenant_sql.py).
            await conn.executescript(SCHEMA + SUPPRESSION_SCHEMA + LEDGER_SCHEMA
                                     + TENANTS_SCHEMA)
            # An index made by schema 1 lacks attempts.detail (CREATE TABLE IF
            # NOT EXISTS keeps the old table); ADD COLUMN is O(1) in SQLite.
            cols = {r[1] for r in await conn.execute_fetchall("PRAGMA table_info(attempts)")}
            if "detail" not in cols:
                await conn.execute(SQL_ADD_ATTEMPT_DETAIL)
            # Before issue 12 messages had no body flags: NULL, "look".
            cols = {r[1] for r in await conn.execute_fetchall("PRAGMA table_info(messages)")}
            if "body_ascii" not in cols:
                for sql in SQL_ADD_BODY_FLAGS:
                    await conn.execute(sql)
            if "test" not in cols:                  # before issue 13
                for sql in SQL_ADD_API_COLUMNS:
                    await conn.execute(sql)
            if "tls_flags" not in cols:             # before issue 17
                await conn.execute(SQL_ADD_TLS_FLAGS)
            # Older indexes left failed recipients of DSNs and null-sender
            # messages at dsn_state '': mark them (a no-op walk of the
            # partial index once done).
            await conn.execute(SQL_MARK_NO_DSN_OWED)
            await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        await conn.close()
        raise
    return conn
