"""What the spool's writer is asked to do: op kinds, their payloads, and
what a handler gets.

One job: the vocabulary between the facades (spool.py, ledger.py), which
submit ops, and the handlers (acceptance.py, attempts.py, steering.py,
ledger.py), which the group-commit engine (writer.py) runs; none of them
imports the engine's internals or another's.

API:
    kinds: ENQUEUE LEASE RELEASE RECORD ASYNC STEER EVENTS PRUNE WEBHOOK RECLAIM
    PendingMessage, Placed, AsyncReport, SteerOp, PruneOp, WebhookUpdate   (payloads)
    Statements   (reads.py) the statement methods a handler may await
                 (execute, executemany, execute_fetchall): an aiosqlite
                 connection has them (recovery's replay), and so has the
                 writer's sqlite3 connection seen from its own thread
                 (writer_txn)
    Txn          what a handler gets: the writer's connection (Statements)
                 inside the batch's transaction, the suppression rules, and `touched`
                 (messages whose done/body_live the engine recomputes before
                 COMMIT)
    Handler      async (Txn, [payload, …]) -> [result, …]: every op of one
                 kind in the batch, in submission order; one result each
    Submitter    what a facade needs from the engine: `await submit(kind, payload)`

Invariant: a handler runs only inside the engine's transaction and never
commits, rolls back or awaits anything but its own statements; an
exception from it fails the whole batch (rolled back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mta.core.envelope import AddressOutcome, RecipientUpdate
from mta.core.spill import SpillFile
from mta.spool.filters import MessageFilter
from mta.spool.reads import Statements
from mta.spool.suppressions import RulesLike

ENQUEUE, LEASE, RELEASE, RECORD, RECLAIM = "enqueue", "lease", "release", "record", "reclaim"
ASYNC, STEER = "async", "steer"
EVENTS, PRUNE, WEBHOOK = "events", "prune", "webhook"


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An enqueue request with its id already chosen (NewMessage + metadata)."""
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    received_at: float
    credential: str | None
    listener: str
    client_ip: str
    is_dsn: bool
    dsn_for: str | None = None            # original queue id when this is a DSN
    dsn_mark: tuple[str, tuple[int, ...], str] | None = None   # (queue id, idxs, kind)
    suppressed: tuple[tuple[int, str], ...] = ()   # (rcpt idx, reply): inserted final
    received_detail: str = "{}"           # JSON of the `received` event
    idempotency_key: str | None = None
    idempotency_window: float = 86400.0
    tail: SpillFile | None = None         # the body past `body`
    # What the stored bytes are (acceptance.body_flags), kept in the index so
    # delivery need not look again; None: not known (an older record), look.
    ascii: bool | None = None             # every byte 7-bit
    dot_lines: bool | None = None         # some line starts with "."
    test: bool = False                    # a test key's message: captured, never delivered
    not_before: float | None = None       # a scheduled send: first due then
    tls_flags: int = 0                    # RFC 8689: 1 REQUIRETLS, 2 "TLS-Required: No"

    @property
    def size(self) -> int:
        return len(self.body) + (self.tail.length if self.tail is not None else 0)


@dataclass(frozen=True, slots=True)
class Placed:
    """What the ENQUEUE handler gets: a message whose body the engine has
    already appended (and synced) to the body store, and where."""
    message: PendingMessage
    segment: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class AsyncReport:
    """A bounce or complaint that arrived by mail (Spool.record_async)."""
    queue_id: str
    rcpt_idx: int
    state: str                  # "bounced" | "" (recipient state unchanged)
    attempt_state: str          # what the attempts row says: async_bounce | complaint | …
    reply: str | None
    detail: str
    at: float
    outcomes: tuple[AddressOutcome, ...] = ()
    event_detail: dict[str, Any] | None = None   # merged into the bounced/complained event


@dataclass(frozen=True, slots=True)
class SteerOp:
    """An operator move (steering.OPERATOR_MOVES) of the recipients a filter selects."""
    action: str                 # hold | release | retry | bounce | delete | reschedule
    filter: MessageFilter
    now: float
    reply: str | None = None    # bounce: the wire reply the DSN will quote
    at: float | None = None     # reschedule: when the recipients are due


@dataclass(frozen=True, slots=True)
class PruneOp:
    """Delete at most `batch` rows older than `before` from `table`."""
    table: str                  # "events" | "idempotency"
    before: float
    batch: int


@dataclass(frozen=True, slots=True)
class WebhookUpdate:
    """Set `fields` (ledger_sql.WEBHOOK_FIELDS) of webhook `name`'s row."""
    name: str
    fields: dict[str, Any] = field(default_factory=dict)


# A RECORD payload: the updates and the address outcomes they imply.
RecordPayload = tuple[Sequence[RecipientUpdate], Sequence[AddressOutcome]]


@dataclass(slots=True)
class Txn:
    conn: Statements
    rules: RulesLike | None = None
    touched: set[str] = field(default_factory=set)


Handler = Callable[[Txn, list[Any]], Awaitable[list[Any]]]


class Submitter(Protocol):
    async def submit(self, kind: str, payload: Any) -> Any: ...
