"""The SQL of the queue: messages, recipients and attempts.

One job: every statement the writer's queue ops (acceptance.py, attempts.py,
steering.py), the reads (reads.py) and recovery (recovery.py) run on the
queue tables, so none of them spells SQL of its own. The tables themselves
are index.py's; the ledger's statements are ledger_sql.py's, the
suppression list's suppressions.py's; the SQL of operator filters
(`MessageFilter`) is built in filters.py.

API: the `SQL_*` statements; `ALL_STATES` (every recipient state, in the
order reports list them), `COUNTED_STATES` (what `counts()` always
reports); `STAMP_WIDTH` (domain_summary's last_error column; its age
buckets are core.qshape's).

Invariants (the index's, kept by these statements):
- `done` = no recipient left in 'queued' or 'held' (PENDING_STATES).
  `body_live` = not done, or some bounced/expired recipient of a non-DSN
  message with a non-null sender still has dsn_state != 'sent' (its DSN
  needs the original's headers). Both are recomputed by
  `SQL_RECOMPUTE_FLAGS` in the same transaction as any change to
  recipients, and by recovery.
- dsn_state 'none' marks a recipient that owes no DSN although bounced or
  expired: an asynchronous bounce (`Spool.record_async`), whose report came
  back to our VERP path, possibly long after the body was reclaimed; a
  recipient of a DSN or of a null-sender message (RFC 5321 §4.5.5: never
  reported on), set by the same UPDATE that makes it final (SQL_RECORD,
  SQL_OP_BOUNCE; index.connect fixes rows of older indexes); and one whose
  owed DSN an operator delete cancelled.
- A failure DSN is owed (SQL_DSN_OWED) for every bounced/expired recipient
  with dsn_state '' or 'delay_sent', as soon as no recipient of its message
  is leased (no attempt in flight): like Postfix, the failures of one
  delivery pass go into one DSN, and the sender is not kept waiting for
  recipients still being retried. The partial index recipients_dsn_owed
  holds exactly those recipients, so finding them never walks the queue.
- Every recipient move is guarded in SQL by the state it moves from (the
  durable truth under concurrency); the writer also checks each move with
  `core.envelope.RECIPIENT_MACHINE` before it runs them.
"""

from __future__ import annotations

from mta.core.envelope import BOUNCED, DELIVERED, EXPIRED, QUEUED, RecipientState
from mta.core.qshape import AGE_BUCKET_MINUTES, AGE_BUCKETS
from mta.spool.tenant_sql import tenant_of

# Plain strings: they become keys of JSON objects and metric labels.
ALL_STATES = tuple(s.value for s in RecipientState)   # queued, held, delivered, bounced, …
# `counts()` always reports these keys (others only when present).
COUNTED_STATES = tuple(s.value for s in (QUEUED, DELIVERED, BOUNCED, EXPIRED))

# True when message {mid} is one nobody may be told about (a DSN, or a null
# sender): its failed recipients owe no DSN.
_NO_DSN_FOR = "EXISTS (SELECT 1 FROM messages WHERE id = {mid} AND (is_dsn = 1 OR sender = ''))"
# The recipients owing a failure DSN: exactly the rows of recipients_dsn_owed.
_OWED = "state IN ('bounced', 'expired') AND dsn_state IN ('', 'delay_sent')"
SQL_MARK_NO_DSN_OWED = (
    "UPDATE recipients INDEXED BY recipients_dsn_owed SET dsn_state = 'none' "
    f"WHERE {_OWED} AND {_NO_DSN_FOR.format(mid='recipients.message_id')}")

# -- writes (the writer's queue ops) -----------------------------------------------------------

SQL_INSERT_MESSAGE = (
    'INSERT INTO messages (id, sender, received_at, size, segment, "offset", length, '
    "credential, listener, client_ip, is_dsn, done, body_live, dsn_for, body_ascii, body_dots, "
    "test, not_before, tls_flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?, ?, ?, ?, ?)")

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
    "MAX(m.received_at, IFNULL(m.not_before, 0)), r.next_attempt, m.size, m.test, "
    f"{tenant_of('m.credential')}, m.listener, m.tls_flags "
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

# record: the states of the recipients a batch of updates names, read in
# its transaction before they move. Params: (message_id, rcpt_idx) pairs.
# A join on the VALUES list: one primary-key seek per pair (the row-value
# IN form would scan the table).
SQL_STATES_OF = ("SELECT r.message_id, r.rcpt_idx, r.state FROM (VALUES {pairs}) AS v "
                 "JOIN recipients r ON r.message_id = v.column1 AND r.rcpt_idx = v.column2")

# record_async (core.envelope.ASYNC_BOUNCE_MACHINE): the recipient's state
# plus what its event needs.
SQL_RECIPIENT_FOR_EVENT = (
    "SELECT r.state, r.address, COALESCE(m.credential, '') FROM recipients r "
    "JOIN messages m ON m.id = r.message_id WHERE r.message_id = ? AND r.rcpt_idx = ?")
SQL_INSERT_ASYNC_ATTEMPT = (
    "INSERT INTO attempts (message_id, rcpt_idx, at, duration, state, reply, "
    "remote_host, remote_ip, tls, detail) VALUES (?, ?, ?, 0, ?, ?, '', '', '', ?)")
# Params: reply|None, updated_at, message_id, rcpt_idx.
SQL_ASYNC_BOUNCE = (
    "UPDATE recipients SET state = 'bounced', last_reply = COALESCE(?, last_reply), "
    "dsn_state = 'none', leased = 0, updated_at = ? "
    "WHERE message_id = ? AND rcpt_idx = ? AND state IN ('queued', 'delivered')")

# Operator moves (steering.py, OPERATOR_MOVES); the last two params are
# always message_id, rcpt_idx. Each re-checks state and lease.
_OP_KEY = "WHERE message_id = ? AND rcpt_idx = ? AND leased = 0"
SQL_OP_HOLD = f"UPDATE recipients SET state = 'held', updated_at = ? {_OP_KEY} AND state = 'queued'"
SQL_OP_RELEASE = ("UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ? "
                  f"{_OP_KEY} AND state = 'held'")
# A scheduled send moved (issue 13): due then, and its lifetime counts from then.
SQL_OP_RESCHEDULE = (f"UPDATE recipients SET next_attempt = ?, updated_at = ? {_OP_KEY} "
                     "AND state = 'queued'")
SQL_OP_RESCHEDULE_MESSAGE = "UPDATE messages SET not_before = ? WHERE id = ?"
SQL_OP_RETRY = (f"UPDATE recipients SET next_attempt = ?, updated_at = ? {_OP_KEY} "
                "AND state = 'queued'")
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
    "remote_host, remote_ip, tls, detail) "
    "VALUES (?, ?, ?, 0, ?, ?, 'operator', '', '', 'operator')")

# The unary "+" on r.state keeps SQLite from seeking recipients_due by state
# (which would scan every queued recipient per message) instead of the
# primary key by message_id.
_M = "messages.id"
_DONE = (f"(NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = {_M} "
         "AND +r.state IN ('queued', 'held')))")
_OWES_DSN = ("(messages.is_dsn = 0 AND messages.sender != '' "
             "AND EXISTS (SELECT 1 FROM recipients r "
             f"WHERE r.message_id = {_M} AND +r.state IN ('bounced', 'expired') "
             "AND r.dsn_state NOT IN ('sent', 'none')))")
_LIVE = f"(NOT {_DONE} OR {_OWES_DSN})"

SQL_RECOMPUTE_FLAGS = f"UPDATE messages SET done = {_DONE}, body_live = {_LIVE} WHERE id = ?"
# Recovery: fix every row whose stored flags disagree (normally none).
SQL_RECOMPUTE_ALL_FLAGS = (
    f"UPDATE messages SET done = {_DONE}, body_live = {_LIVE} "
    f"WHERE done IS NOT {_DONE} OR body_live IS NOT {_LIVE}")

SQL_RESET_LEASES = "UPDATE recipients SET leased = 0 WHERE leased = 1"

# The log's marks (index.py segment_marks; the package docstring, S3r/S4p):
# written by every ENQUEUE transaction, and by recovery after a replay.
SQL_MARK_INDEXED = (
    "INSERT INTO segment_marks (segment, indexed_end) VALUES (?, ?) "
    "ON CONFLICT (segment) DO UPDATE SET indexed_end = max(indexed_end, excluded.indexed_end)")
SQL_INDEXED_MARKS = "SELECT segment, indexed_end FROM segment_marks"
SQL_MAX_MARKED = "SELECT MAX(segment) FROM segment_marks"
SQL_MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = ?"

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
SQL_BODY_LOCATION = ('SELECT segment, "offset", length, body_live, body_ascii, body_dots '
                     "FROM messages WHERE id = ?")
SQL_NEXT_DUE = "SELECT MIN(next_attempt) FROM recipients WHERE state = 'queued' AND leased = 0"
SQL_COUNTS = "SELECT state, COUNT(*) FROM recipients GROUP BY state"
# gauges(): O(pending) over messages_pending, O(1) for the MIN.
SQL_PENDING_MESSAGES = "SELECT COUNT(*), MIN(received_at) FROM messages WHERE done = 0"

# domain_summary(): qshape-like buckets by message age, upper bounds in
# minutes; a message exactly 5 minutes old is in "5m". One GROUP BY pass over
# pending recipients (recipients_due by state), a primary-key probe each for
# received_at. last_error: the latest last_reply among deferred recipients,
# found in the same pass by MAX over "updated_at (fixed width) || reply".
# (AGE_BUCKET_MINUTES / AGE_BUCKETS: core.qshape, the one vocabulary.)
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
    "WHERE m.done = 0 AND m.is_dsn = 0 AND m.sender != '' AND m.received_at <= ?1 "
    "AND IFNULL(m.not_before, 0) <= ?1 "
    "AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id "
    "AND +r.state = 'queued' AND r.attempts > 0 AND r.dsn_state = '') "
    "ORDER BY m.received_at LIMIT ?2")
SQL_DELAY_OWED_RCPTS = (
    "SELECT message_id, rcpt_idx, address, state, last_reply, last_remote, attempts "
    "FROM recipients WHERE message_id IN ({ids}) "
    "AND +state = 'queued' AND attempts > 0 AND dsn_state = '' ORDER BY message_id, rcpt_idx")

_MESSAGE_COLS = "id, sender, received_at, size, credential, is_dsn, done, test, not_before"
SQL_LIST_PENDING = (f"SELECT {_MESSAGE_COLS} FROM messages WHERE done = 0 "
                    "ORDER BY received_at LIMIT ?")
SQL_LIST_ALL = f"SELECT {_MESSAGE_COLS} FROM messages ORDER BY id LIMIT ?"
SQL_GET_MESSAGE = f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?"
# The sending API's list (issue 13): newest first, one mode (test or live),
# no DSNs; ids sort by acceptance time (core.ids), the cursor is an id.
SQL_EMAIL_PAGE = (f"SELECT {_MESSAGE_COLS} FROM messages WHERE id < ?1 AND test = ?2 "
                  "AND is_dsn = 0 {tenant} ORDER BY id DESC LIMIT ?3")   # tenant: ?4
SQL_RECIPIENTS_OF = (
    "SELECT message_id, rcpt_idx, address, state, attempts, next_attempt, last_reply, "
    "last_remote, last_tls FROM recipients WHERE message_id IN ({ids}) "
    "ORDER BY message_id, rcpt_idx")
SQL_ATTEMPTS_OF = (
    "SELECT rcpt_idx, at, duration, state, reply, remote_host, remote_ip, tls, detail "
    "FROM attempts WHERE message_id = ? ORDER BY id")
