"""The store seams: state a cluster of nodes would share, as `Protocol`s.

One job: name what callers need from the suppression list, the event
ledger, the webhook cursors and the idempotency keys, so they code against
these and never against SQLite. The embedded default implements every one
of them on the spool's index (`mta.spool`: `Spool.suppressions`,
`Spool.ledger`, `suppression_admin.SqliteSuppressionList`); a networked
backend (PostgreSQL, for several nodes) only has to provide the same
methods. The spool itself (bodies + queue index) is not behind one: mail is
durable where it was accepted.

API
    SuppressionLookup   suppressed(address, scope, *, now=None) — the per-RCPT check
    SuppressionList     the operator's list: entries/get/soft_failures/add/
                        remove/import_csv/export_csv (synchronous: the CLI)
    EventLedger         append_events, events_after, event_payloads_after,
                        message_events, last_event_seq, prune_events
    WebhookCursors      webhook_state, webhook_states, set_webhook_state
    IdempotencyKeys     prune_idempotency
    EventView, SuppressionView, OutcomeRow   the records they hand out
    UNSET               set_webhook_state: "leave this field as it is"

Contracts every implementation keeps (the spool's docstrings say how)
  * Ledger seqs are unique, never reused, and increase in commit order;
    `last_event_seq()` never goes down (pruning does not lower it). A reader
    paging with `events_after(cursor)` never misses an event.
  * Writes that go with a queue change (the events of an enqueue, an
    attempt or an operator move; the suppression an attempt implies; the
    idempotency key of an enqueue) commit in the same transaction as that
    change: they are the spool's, made inside its writer, and are not part
    of these interfaces. What is here is what callers call.
  * `set_webhook_state` changes only the fields it is given; a cursor may
    move backwards (replay). A power loss may forget the last advance (at
    least once).

Stdlib only (ARCHITECTURE §2: core).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any, NamedTuple, Protocol

from mta.core.envelope import LedgerEvent

__all__ = [
    "UNSET",
    "EventLedger",
    "EventView",
    "IdempotencyKeys",
    "OutcomeRow",
    "SuppressionList",
    "SuppressionLookup",
    "SuppressionView",
    "Unset",
    "WebhookCursors",
]


class Unset(enum.Enum):
    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True, slots=True)
class SuppressionView:
    """One suppression entry. scope "" = global, else a credential name;
    expires None = never. reply is the wire string of what caused it ("" if
    added by hand)."""
    address: str
    scope: str
    reason: str
    queue_id: str
    reply: str
    created: float
    expires: float | None

    def is_active(self, now: float) -> bool:
        return self.expires is None or self.expires > now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EventView:
    """One ledger event (issue 6). seq: strictly increasing, never reused;
    at: epoch seconds; credential "" = none; detail: the JSON object stored
    (keys per type, README's event vocabulary)."""
    seq: int
    at: float
    type: str
    queue_id: str
    recipient: str
    credential: str
    detail: dict[str, Any]
    # The message's tags (given to the sending API), on every event of it,
    # and whether a test key sent it (its events are test data).
    tags: list[Any] | None = None
    test: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "type": self.type, "queue_id": self.queue_id,
                "recipient": self.recipient, "credential": self.credential,
                "detail": self.detail, "tags": self.tags, "test": self.test}


class OutcomeRow(NamedTuple):
    """A final outcome as the reputation tracker reads it (the spool's
    ledger and, in a cluster, the shared one): sender is the message's
    envelope sender from its `received` event (None: unknown)."""
    seq: int
    at: float
    type: str
    credential: str
    reason: str | None
    sender: str | None
    test: bool


class SuppressionLookup(Protocol):
    async def suppressed(self, address: str, scope: str | None, *,
                         now: float | None = None,
                         credential: str | None = None) -> SuppressionView | None:
        """The active entry for `address`: the global one, else the one for
        tenant `scope` (None: global only), else one for `credential`'s name
        (made before tenants); expired entries ignored."""
        ...


class SuppressionList(Protocol):
    """The operator's view of the list (`mta suppression …`), usable while
    the daemon runs. Errors meant for humans are raised as the
    implementation's own exception type."""

    def entries(self, *, reason: str | None = None, scope: str | None = None,
                include_expired: bool = False, now: float | None = None
                ) -> list[SuppressionView]: ...

    def get(self, address: str) -> list[SuppressionView]: ...

    def soft_failures(self, address: str) -> tuple[int, float, float] | None: ...

    def add(self, address: str, *, reason: str = "manual", scope: str = "",
            expires: float | None = None, now: float) -> SuppressionView: ...

    def remove(self, address: str, scope: str = "") -> bool: ...

    def import_csv(self, path: str | os.PathLike[str], now: float) -> tuple[int, int]: ...

    def export_csv(self, out: IO[str]) -> int: ...


class EventLedger(Protocol):
    async def append_events(self, events: Sequence[LedgerEvent]) -> None: ...

    async def events_after(self, after_seq: int, limit: int, *,
                           types: Sequence[str] | None = None, recipient: str | None = None,
                           credential: str | None = None,
                           tenant: str | None = None) -> list[EventView]: ...

    async def event_payloads_after(self, after_seq: int, limit: int, *,
                                   types: Sequence[str] | None = None,
                                   credential: str | None = None,
                                   tenant: str | None = None) -> list[tuple[int, bytes]]: ...

    async def message_events(self, queue_id: str, *, after: int = 0,
                             limit: int | None = None) -> list[EventView]: ...

    async def last_event_seq(self) -> int: ...

    async def prune_events(self, before: float, batch: int = 1000) -> int: ...


class WebhookCursors(Protocol):
    async def webhook_state(self, name: str) -> dict[str, Any] | None: ...

    async def webhook_states(self) -> list[dict[str, Any]]: ...

    async def set_webhook_state(self, name: str, *, cursor: int | None = None,
                                failing_since: float | None | Unset = UNSET,
                                next_attempt: float | None | Unset = UNSET,
                                attempts: int | Unset = UNSET,
                                last_error: str | None | Unset = UNSET,
                                state: str | Unset = UNSET) -> None: ...


class IdempotencyKeys(Protocol):
    """Keys are checked and stored by the enqueue they belong to (in its
    commit); callers only prune them."""

    async def prune_idempotency(self, before: float, batch: int = 1000) -> int: ...
