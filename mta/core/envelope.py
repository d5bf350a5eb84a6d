"""Values that cross layers between receiving, the spool, the scheduler and
delivery. Plain frozen data; no behaviour beyond small derived properties,
and the recipient state machine.

Recipient states (`RecipientState`, persisted in the index as their string
values, see mta/spool; `QUEUED`, `DELIVERED`, … are the same members):
  queued     waiting for its next attempt (first attempt or after a deferral)
  delivered  a remote 2xx (or the sandbox capture) accepted it     — final
  bounced    a remote 5xx, or a permanent local failure (null MX…) — final
  expired    still deferred after max_queue_lifetime               — final
  suppressed accepted but on the suppression list (accept-and-record
             mode): never attempted, no DSN owed (not a failure)   — final
  held       put aside by an operator (like Postfix's hold queue): never
             leased, never expires, no delay warning; `release` makes it
             queued again. Not final: its message is not done
  deleted    removed by an operator: no DSN owed, the body may be
             reclaimed (not a failure)                             — final

Complaints never change a recipient's state; they only add a suppression
(see `AddressOutcome`).

The machine (ARCHITECTURE §8.2; core.statemachine): `RECIPIENT_MACHINE` is the one
table of recipient moves. Final states are terminal. Only the spool's writer
moves recipients: delivery records (`queued` → anything, a deferral being
`queued` → `queued`) and operator moves (hold, release, retry, bounce,
delete: from `queued`/`held`) are each checked with `RECIPIENT_MACHINE.move`,
which logs ``event=transition machine=recipient subject=QUEUEID/IDX from=…
to=…``. `ASYNC_BOUNCE_MACHINE` is the one exception to "final is terminal":
a bounce that arrives by mail after the remote accepted the message turns
`delivered` (or a still `queued`) recipient into `bounced`; nothing else may
use it.

Ledger events (issue 6; the spool writes them, README documents them):
`EVENT_TYPES` is the vocabulary, `LedgerEvent` one event to append.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from mta.core.reply import Reply
from mta.core.statemachine import StateMachine


class RecipientState(enum.StrEnum):
    QUEUED = "queued"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    DELETED = "deleted"


# The members under their old names (callers compare, store and print them
# as the strings they equal).
QUEUED, HELD = RecipientState.QUEUED, RecipientState.HELD
DELIVERED, BOUNCED = RecipientState.DELIVERED, RecipientState.BOUNCED
EXPIRED = RecipientState.EXPIRED
SUPPRESSED, DELETED = RecipientState.SUPPRESSED, RecipientState.DELETED
# Recipients still owed an attempt (their message is not done).
PENDING_STATES = frozenset({QUEUED, HELD})
FINAL_STATES = frozenset({DELIVERED, BOUNCED, EXPIRED, SUPPRESSED, DELETED})
FAILED_STATES = frozenset({BOUNCED, EXPIRED})

_NONE: frozenset[RecipientState] = frozenset()
# SUPPRESSED is normally entered at insertion (accept-and-record); queued →
# suppressed lets delivery drop a recipient whose address was suppressed
# after it was queued. HELD and DELETED are entered by operator moves only.
RECIPIENT_MACHINE = StateMachine("recipient", {
    QUEUED: frozenset({QUEUED, DELIVERED, BOUNCED, EXPIRED, SUPPRESSED, HELD, DELETED}),
    HELD: frozenset({QUEUED, BOUNCED, DELETED}),
    DELIVERED: _NONE, BOUNCED: _NONE, EXPIRED: _NONE, SUPPRESSED: _NONE, DELETED: _NONE,
}, logging.getLogger("mta.spool"))   # the spool's writer makes every move
ASYNC_BOUNCE_MACHINE = StateMachine("recipient_async", {
    QUEUED: frozenset({BOUNCED}), DELIVERED: frozenset({BOUNCED}),
    HELD: _NONE, BOUNCED: _NONE, EXPIRED: _NONE, SUPPRESSED: _NONE, DELETED: _NONE,
}, logging.getLogger("mta.spool"))


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How the SMTP client connects for one batch (issue 15).

    source        local address to bind ("" = the OS chooses)
    ehlo          name to greet with ("" = the server's host name)
    max_uses      transactions one connection may carry, cached reuse
                  included (0 = the transport's default)
    require_tls   never deliver in clear text: no STARTTLS, or a failed
                  handshake, defers the batch (451 4.7.5, as Postfix says)
    connect_timeout, command_timeout   seconds (0 = the [delivery] ones)
    keep_idle     the connection may wait in the client's cache for the next
                  batch (False under a provider-wide connection limit: an
                  idle connection to one site is invisible to the others'
                  count, yet the provider sees it)
    """
    source: str = ""
    ehlo: str = ""
    max_uses: int = 0
    require_tls: bool = False
    connect_timeout: float = 0.0
    command_timeout: float = 0.0
    keep_idle: bool = True
    # A client certificate the source presents in STARTTLS (issue 17): PEM
    # paths, "" = none.
    client_cert: str = ""
    client_key: str = ""


DEFAULT_OPTIONS = ConnectionOptions()


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a recipient's mail goes next; the scheduler queues per `name`.

    kind "mx":      look up MX of `domain`, deliver on `port` (name = domain)
    kind "route":   a configured next hop host:port, no MX lookup
                    (name = "[host]:port", so domains sharing a smarthost share a queue)
    kind "sandbox": local capture, nothing leaves the machine (name = "sandbox")
    """
    name: str
    kind: str
    domain: str = ""
    host: str = ""
    port: int = 25
    # How a connection to it is made (issue 15: the egress source and the
    # shaping table's per-site options); the default is the [delivery] one.
    options: ConnectionOptions = DEFAULT_OPTIONS


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient due for an attempt, as leased from the spool."""
    queue_id: str
    rcpt_idx: int
    address: str          # local@domain (domain normalised)
    domain: str
    sender: str           # "" for the null reverse path
    attempts: int         # attempts made before this one
    received_at: float    # its queue lifetime starts here: acceptance, or the
                          # scheduled time of a scheduled send (issue 13)
    next_attempt: float
    size: int = 0
    test: bool = False    # a test key's message: captured, never delivered
    tenant: str = "default"   # the tenant of the message's credential (issue 14)
    listener: str = ""        # where it was accepted ("tlsrpt": our own TLS-RPT report)
    tls_flags: int = 0        # RFC 8689 (issue 17): 1 REQUIRETLS, 2 "TLS-Required: No"


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """What happened to one recipient; `spool.record` persists a batch of these.

    state is one of QUEUED (deferred again, with `next_attempt`), DELIVERED,
    BOUNCED, EXPIRED. `counts_attempt` is False when the recipient was put
    back without being tried (shutdown, destination paused).
    """
    queue_id: str
    rcpt_idx: int
    state: str
    reply: Reply | None = None
    next_attempt: float | None = None
    attempted_at: float = 0.0
    duration: float = 0.0
    remote_host: str = ""
    remote_ip: str = ""
    tls: str = ""
    tls_policy: str = ""          # the outbound TLS policy that applied (issue 17)
    tls_check: str = ""           # its certificate check: verified / failed: … / ""
    counts_attempt: bool = True
    # Extra fields for the ledger event this update writes (issue 6): what
    # the spool cannot know, e.g. {"class": "hard", "reason": "bad_mailbox",
    # "status": "5.1.1"} for a bounce. Merged over the spool's own fields.
    event_detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """A recipient that a DSN reports on."""
    rcpt_idx: int
    address: str
    state: str            # BOUNCED | EXPIRED | QUEUED (for delay warnings)
    reply: Reply | None   # last reply (remote verbatim, or our own)
    remote_host: str = ""
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class DsnCandidate:
    """A message that owes its sender a DSN (failure or delay warning)."""
    queue_id: str
    sender: str
    received_at: float
    recipients: tuple[FailedRecipient, ...] = field(default_factory=tuple)


OUTCOME_KINDS = ("delivered", "soft", "hard", "complaint")
# Why an address is on the suppression list (persisted; a public interface).
# "unsubscribed": the recipient used a one-click unsubscribe link (issue 16);
# "unsubscribe": an entry an operator or application added for that reason.
SUPPRESSION_REASONS = ("hard_bounce", "complaint", "soft_bounce", "unsubscribe", "manual",
                       "unsubscribed")


@dataclass(frozen=True, slots=True)
class AddressOutcome:
    """What one delivery or report says about an *address* (not a recipient
    row): the input of automatic suppression, applied by `spool.record` /
    `spool.record_async` in the same transaction as the recipient update.

    kind: "delivered" (resets the soft-failure count), "soft", "hard",
    "complaint". scope: the tenant the suppression applies to; "" = the
    tenant of message `queue_id` when one is named, else global.
    """
    address: str
    kind: str
    at: float
    queue_id: str = ""
    reply: str = ""
    scope: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise ValueError(f"unknown address outcome kind {self.kind!r}")


# The ledger's vocabulary (a public interface: README, webhooks, admin API).
EVENT_TYPES = ("received", "rejected", "suppressed", "queued", "deferred", "delivered",
               "bounced", "expired", "complained", "held", "released", "deleted", "dsn_sent",
               "rescheduled",
               # About a tenant (credential "tenant:NAME"; runtime/tenants.py, reputation.py).
               "reputation_warning", "reputation_paused", "reputation_recovered",
               "tenant_paused", "tenant_resumed",
               # Traffic shaping's automation on replies (runtime/automation.py).
               "automation_action", "automation_ended",
               # Content and compliance (issue 16): the public listener's clicks, opens and
               # one-click unsubscriptions; one-time codes (credential: the key's).
               "clicked", "opened", "unsubscribed", "verification_sent",
               "verification_checked")


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One event for `spool.append_events` (events with no state change,
    e.g. `rejected` at submission, `suppressed` refused at RCPT). `detail`
    must be JSON-serialisable; `at` is epoch seconds. credential "" = none
    (the spool fills in the message's own when `queue_id` names one)."""
    type: str
    at: float
    queue_id: str = ""
    recipient: str = ""
    credential: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown ledger event type {self.type!r}")
