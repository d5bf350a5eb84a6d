"""The spool: the durability contract (docs/ARCHITECTURE.md §4).

One job: keep every accepted message until each recipient has a final fate
(and its sender has been told about failures), surviving SIGKILL and power
loss at any instant.

Layout under ``state_dir/spool/``::

    lock                 flock held by the one process that owns the spool
    index.sqlite3(-wal)  SQLite index, WAL, every write transaction committed with
                         synchronous=NORMAL (no fsync); the WAL is fsynced at
                         most WAL_SYNC_INTERVAL after a commit and before any
                         segment unlink, checkpoints run beside the writer
                         (index.py, writer.py, wal.py)
    segments/NNNNNNNN.seg  append-only log, one record per message (records.py):
                         v2: envelope block (magic MTA2, the ENQUEUE op's
                         envelope as JSON, crc32) + v1 record; v1: 32-byte header
                         (magic MTA1, queue id, length, crc32) + body

The log is the record of truth for an acceptance (issue 12): a v2 record
holds everything the ENQUEUE op writes (queue id, sender, recipients,
received_at, credential, listener, client ip, is_dsn, dsn_for, the DSN mark,
accept-and-record recipients, the ``received`` event detail, idempotency key
and window: replay.py), so the index rows of an acceptance can be re-created
from its record. A segment's *mark* is the end of the last record of it the
index has seen (indexed, or answered as an idempotent duplicate): the later
of the end of the furthest record a ``messages`` row points at and
``segment_marks.indexed_end`` (index.py), which only a transaction that
answered a duplicate writes (no row points at a duplicate's record; for any
other batch its last message row is the same point, and an extra statement
per batch would cost a round trip). Both are written in the transaction
that saw the record, so the mark is exactly as durable as the rows.

Commit point of `Spool.enqueue` (the moment a ``250`` may be sent): the
record (envelope + body) is written and fdatasynced, the directory is
fsynced if that write created a new segment, and the rows (``messages``,
``recipients``, events, key, mark) are committed to the WAL without fsync.
ONE fsync per batch. The commit survives SIGKILL (the WAL is in the page
cache); a power loss may take it, never the record: recovery replays every
record past its segment's mark. Many sessions share one fdatasync and one
transaction (writer.py).

Crash-state table
-----------------
Every instant of the lifecycle is one of these states. "Files" and "rows"
say what exists on disk after a crash there; "recovery" is the branch
`recovery.recover` runs for it in `Spool.open` (counter in `RecoveryReport`).
"Past the mark" = at or after its segment's mark (above; 0 for a segment
the index knows nothing of).

==  ==========================  ==================================  =====================================
#   state                       files / rows on disk                recovery (RecoveryReport field)
==  ==========================  ==================================  =====================================
S0  op queued in memory only    nothing                             nothing; no 250 was sent, the client
                                                                    retries
S1  record appended, not        segment may hold a partial or       the scan past the mark stops at the
    synced                      whole record (or nothing) at its    first record that is not whole (bad
                                end; no rows                        magic, short, either crc32 wrong);
                                                                    whole v2 records before it are
                                                                    replayed as S3, the rest is cut
                                                                    (``tail_bytes_truncated``); a
                                                                    segment with no live rows after
                                                                    that is unlinked
                                                                    (``segments_removed``)
S2  new segment created, dir    file may vanish after power loss;   as S1 (no 250 depends on the file:
    not fsynced                 no rows reference it                the dir is fsynced before the first
                                                                    record is written)
S3  record + dir synced, index  whole records past the mark; no     v2: replayed (``replayed``): the
    txn not committed           rows                                message is queued although no 250
                                                                    was sent; the client retries, so it
                                                                    may be delivered twice (accepted
                                                                    trade-off). v1 (a spool written
                                                                    before issue 12): no envelope,
                                                                    garbage, cut as S1
S3r record synced, txn rolled   whole records past the mark (the    a later batch that commits in the
    back by an error: the       segment keeps serving); no rows     same segment moves the mark past
    client got 451/452                                              them: garbage, never replayed.
                                                                    Else (a crash or restart first) as
                                                                    S3: the message comes back (a
                                                                    duplicate at worst; a retry with
                                                                    the same idempotency key then gets
                                                                    this message's id)
S4  index committed (commit     record + ``messages`` row +         nothing; delivered normally. If the
    point; the 250 may or may   recipients ``queued``, leased=0,    250 never reached the client it
    not have reached client)    mark past the record; the commit    resends: a duplicate, never a loss
                                is in the WAL, not yet fsynced
S4p S4, then power lost before  record fsynced; the index holds a   replayed (``replayed``), in log
    the WAL was fsynced         prefix of its commits (the WAL's    order (segment, offset), through
                                checksums), its mark is before      the ENQUEUE handler itself: messages,
                                the record: rows, events, key and   recipients, ``received`` + ``queued``
                                DSN mark of this batch (and of      / ``suppressed`` events in their
                                every later one) gone               original order, the idempotency key,
                                                                    a DSN's mark on its original, and the
                                                                    mark; a record repeating a key is
                                                                    answered again as the duplicate it
                                                                    was (``replay_duplicates``), a
                                                                    record whose id exists is skipped
                                                                    (``replay_skipped``, expected 0).
                                                                    What was recorded after it (S6,
                                                                    moves) is lost as in S6: redone
S5  recipient leased, attempt   as S4 with leased=1                 every leased=1 reset to 0
    in flight                                                       (``leased_reset``); the recipient is
                                                                    retried, so a remote 250 not yet
                                                                    recorded may deliver twice
                                                                    (accepted trade-off, ARCHITECTURE §4)
S6  attempt recorded            ``attempts`` row, recipient state,  done/body_live recomputed for every
                                the message's done/body_live, all   message (``flags_fixed``, expected 0:
                                in one txn                          they are written in the same txn)
                                (committed without fsync like       after a power loss (not a process
                                every txn: a record may be lost to  crash) the record may be missing:
                                power loss, never to SIGKILL; the   the recipient is S4/S5 again (or
                                writer fsyncs the WAL within        S4p: replayed) and is retried (a
                                WAL_SYNC_INTERVAL)                  duplicate at worst)
S7  a recipient failed (final), that recipient bounced/expired with     nothing; `dsn_candidates` returns it
    none of the message's       dsn_state '' or 'delay_sent'; done  again (leases were reset) and the
    recipients leased, DSN not  may still be 0 (others queued),     DSN is built after restart
    enqueued                    body_live=1
S8  DSN enqueued + original     DSN's record and rows AND           nothing: S7 and S8 are the only two
    marked, one txn             dsn_state='sent' on the recipients  outcomes of that txn, so a DSN is
                                the DSN names; body_live=0 only     never lost and never sent twice.
                                once the message is done and owes   Power lost before the WAL sync: the
                                nothing else                        DSN's record carries the mark, its
                                                                    replay (S4p) marks the original again
S9  segment dead, not unlinked  segment file whose messages all     unlinked (``segments_removed``),
                                have body_live=0 (or no rows), no   after the WAL is fsynced: a segment
                                whole v2 record past its mark       is unlinked only once the index state
                                                                    that killed it is durable (reclaim
                                                                    does the same)
S10 live body missing / short   a body_live=1 row points past the   logged at ERROR, rows kept untouched
    (disk lost it, manual rm,   end of its segment, or at a         and listed in ``corrupt``; never
    fs lied about fsync)        missing file                        dropped. `read_body` raises
                                                                    StorageError for them, so delivery
                                                                    defers instead of sending garbage
S11 index missing, segments     ``*.seg`` files but no index file   refuse to open (StorageError): the
    present (deleted/moved)                                         recipients' states live only in the
                                                                    index (a rebuild from the log would
                                                                    deliver everything again), and
                                                                    unlinking "unreferenced" segments
                                                                    would destroy the bodies
S12 index txn in the WAL, not   ``index.sqlite3-wal``               SQLite replays it on open (the part
    checkpointed                                                    that reached the disk: S4p)
==  ==========================  ==================================  =====================================

Suppression rows (``suppressions``, ``soft_failures``; suppressions.py) add no
state of their own: the address outcomes of an attempt (S6) or of an
asynchronous bounce/complaint (`record_async`) commit in the same transaction
as the recipient rows, so after any crash either both exist or neither (and
the attempt is retried, reporting the outcome again). Accept-and-record
recipients are inserted final ('suppressed') in the S4 transaction. An index
file holding only the suppression tables (made by suppression_admin.py before
the first start) is opened like any other; suppression_admin refuses to make
one while segments exist, so it can never mask S11.

Operator moves (hold/release/retry/bounce/delete, issue 5) add no state
either: each is one transaction over recipient rows, attempts rows and the
messages' done/body_live (as S6), so after a crash the move happened
entirely or not at all. 'held' counts as pending ("done" = no recipient
queued or held); 'deleted' is final and owes no DSN, and deleting cancels
the owed DSNs of its message, so its body dies as in S8/S9. Recovery treats
both like any other state: leases are reset (a held recipient is never
leased) and flags recomputed.

The ledger (issue 6: ``events``, ``webhook_state``, ``idempotency``;
ledger.py, ledger_sql.py) adds no state either. Every event is inserted by
the writer in the SAME transaction as the change it records (each op's
handler writes its own: acceptance.py, attempts.py, steering.py): the S4 commit holds ``received`` + ``queued``/``suppressed`` with the
message rows; S6 holds ``deferred``/``delivered``/``bounced``/``expired`` with
the attempt; S8 holds ``dsn_sent`` (on the original) with the DSN and the
mark; asynchronous reports and operator moves hold theirs. So after any
crash the ledger and the queue agree: an event exists exactly when its
change does (a power loss that undoes a NORMAL commit undoes both), and a
retried attempt writes its event again when it happens again. Events with
no state change (`append_events`: ``rejected``, ``suppressed`` at RCPT) ride
in the next batch; one lost to power loss was never acknowledged to
anybody but a log. Seqs come from AUTOINCREMENT (never reused, even after
pruning or a rollback), so a webhook cursor (``webhook_state.cursor``) never
skips an event; a cursor advance may be lost to power loss (NORMAL commit),
and the events after it are then delivered again with the same seq-derived
webhook-id: at least once. A power loss takes the newest commits with their
seqs (``sqlite_sequence`` is in the same lost suffix), so the next events
reuse them; a webhook receiver that saw one of the lost events may see its
seq again on another event (the WAL sync bounds that window to
WAL_SYNC_INTERVAL). Recovery re-creates, by replay (S4p), exactly the
events an acceptance writes (``received``, ``queued``/``suppressed``,
``dsn_sent`` for a DSN's mark), at their original times and in their
original order, with new seqs; it does nothing else for these tables.

An idempotency key row commits in the S4 transaction of the message it
names, so a key never points at a message that does not exist, and a
message made with a key always has its row: after a crash before the
record is synced (S0–S2) there is neither, and the client's retry with the
same key queues the message once; from S3 on the record carries the key,
so a replayed message brings its key back and a retry gets its id; after S4
a retry gets the original id (``received`` with ``duplicate_of``). A
duplicate's record is appended (and fsynced) before the transaction finds
the key; that transaction moves the mark past it, so it is never replayed
once its answer is durable (not even after the key was pruned), and it is
reclaimed with its segment. If that answer is lost to power (S4p), the
replay answers it again the same way: the original's record comes earlier
in the log, so its key is back first. Keys older than the window are
ignored, replaced by the next use, and deleted by `prune_idempotency`.

Nothing a committed row references is ever truncated or unlinked, nor any
whole record past a mark: tails are cut only after the last whole record
past the mark (never before the mark, nor before the end of the furthest
record any row, live or dead, points at), and only segments no live row
references are unlinked, after the replay and after the WAL is fsynced.
New appends after a restart always go to a fresh segment, so a torn tail
is never appended to.

Modules, by job:
    spool.py        `Spool`: the queue's API; opens and wires the rest
    layout.py       the files under state_dir/spool, and the owner's lock
    ledger.py       `Ledger` (spool.ledger): events, webhook cursors, pruning, keys
    suppressions.py `Suppressions` (spool.suppressions): the list in the index
    writer.py       the group-commit engine and its table of op handlers
    wal.py          the WAL's upkeep: its fsync timer and the checkpoints, beside the writer
    ops.py          op kinds, payloads, what a handler gets
    acceptance.py   ENQUEUE: the commit point's rows (NewMessage, DsnMark)
    attempts.py     LEASE, RELEASE, RECORD, ASYNC: attempts and their moves
    steering.py     STEER: operator moves
    index.py        the tables and connections
    queue_sql.py, ledger_sql.py   the statements, by table group
    reads.py        queue reads on the reader connection
    figures.py      grouped reads for dashboards: events per time bucket, queue figures
    filters.py      `MessageFilter` and its SQL; views.py the read models
    segments.py     the body store; records.py the record format (v1, v2) and the scan
    replay.py       the envelope a v2 record carries, and the replay of records (S3, S4p)
    recovery.py     the branches of the table above
    suppression_admin.py  the operator's access to the list while the daemon runs
The store seams (core/stores.py) the ledger and the suppression list
implement: `EventLedger`, `WebhookCursors`, `IdempotencyKeys`,
`SuppressionLookup`, `SuppressionList`.

Public API: `Spool`, `Ledger`, `NewMessage`, `DsnMark`, `RecoveryReport`, `SpoolStats`,
`MessageFilter`, `MessageView`, `RecipientView`, `AttemptView`, `SuppressionView`, `EventView`,
and the `BodyStore` interface with its `SegmentStore` implementation.
"""

from mta.spool.acceptance import DsnMark, NewMessage
from mta.spool.filters import MessageFilter
from mta.spool.ledger import Ledger
from mta.spool.recovery import RecoveryReport
from mta.spool.segments import BodyStore, SegmentStore
from mta.spool.spool import DeliveryBody, Spool
from mta.spool.views import AttemptView, EventView, MessageView, RecipientView, SuppressionView
from mta.spool.writer import SpoolStats

__all__ = [
    "AttemptView",
    "BodyStore",
    "DeliveryBody",
    "DsnMark",
    "EventView",
    "Ledger",
    "MessageFilter",
    "MessageView",
    "NewMessage",
    "RecipientView",
    "RecoveryReport",
    "SegmentStore",
    "Spool",
    "SpoolStats",
    "SuppressionView",
]
