"""What the webhooks need from storage, as `Protocol`s: the event ledger
they follow and the durable per-endpoint cursors they keep.

One job: name the store seam, so the webhooks never depend on SQLite. The
spool (`mta.spool.Spool`, or its `Ledger` facade) satisfies it today as the
embedded default; a networked backend (several nodes sharing one ledger and
one set of cursors) only has to provide these methods. These are the
webhooks' share of the project's store interfaces (the spool's full ledger
and cursor interfaces are supersets): only the reads a follower makes and
the one write it needs.

Public API
    EventFeed             last_event_seq(), events_after(...), event_payloads_after(...)
    WebhookCursorStore    webhook_state(name), set_webhook_state(name, **fields)
    WebhookStore          both: what WebhookService / WebhookDeliverer take

Contracts the implementations keep
  * Ledger seqs are unique and increase in commit order; `last_event_seq()`
    never goes down (pruning does not lower it).
  * `events_after` / `event_payloads_after` return up to `limit` events with
    seq > `after_seq`, in seq order, filtered by `types` (None: all),
    `credential` (None: any) and `tenant` (None: any; else the tenant that
    owns the event's credential, "default" for one nobody owns). When
    fewer than `limit` come back, no matching event exists up to a
    `last_event_seq()` read BEFORE the call (so a filtered follower may
    skip its cursor there).
  * `event_payloads_after` gives (seq, payload): the compact UTF-8 JSON of
    `wire.event_json` of that event.
  * `webhook_state(name)` is None until the first `set_webhook_state(name,
    …)`; afterwards a mapping with at least cursor, failing_since,
    next_attempt, attempts, last_error and state. `set_webhook_state`
    updates the fields it is given (cursor may move backwards: replay) and
    is committed when it returns (a power loss may still forget the last
    cursor advance: at least once covers it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mta.webhooks.wire import LedgerEventView

__all__ = ["EventFeed", "WebhookCursorStore", "WebhookStore"]


class EventFeed(Protocol):
    async def last_event_seq(self) -> int: ...

    async def events_after(self, after_seq: int, limit: int, *,
                           types: Sequence[str] | None = None,
                           credential: str | None = None,
                           tenant: str | None = None) -> Sequence[LedgerEventView]: ...

    async def event_payloads_after(self, after_seq: int, limit: int, *,
                                   types: Sequence[str] | None = None,
                                   credential: str | None = None,
                                   tenant: str | None = None
                                   ) -> Sequence[tuple[int, bytes]]: ...


class WebhookCursorStore(Protocol):
    async def webhook_state(self, name: str) -> Mapping[str, Any] | None: ...

    async def set_webhook_state(self, name: str, *, cursor: int | None = ...,
                                failing_since: float | None = ...,
                                next_attempt: float | None = ...,
                                attempts: int = ..., last_error: str | None = ...,
                                state: str = ...) -> None: ...


class WebhookStore(EventFeed, WebhookCursorStore, Protocol):
    """The ledger and the cursors: what an endpoint's deliverer follows and keeps."""
