"""What one delivery attempt means: recipient updates and address outcomes.

One job: turn the remote's verdict on one recipient into the two records it
makes — the `RecipientUpdate` of its queue row (next state, next attempt,
the ledger event's verdict) and the `AddressOutcome` automatic suppression
reads — classifying the reply once. Pure (docs/ARCHITECTURE.md §2, §8.4): `now` is an
argument, nothing is logged, awaited or stored; the queue runner logs,
records and counts what these functions return.

API
    ReplyVocabulary(classify, status)
        the bounce vocabulary: `mta.mail.bounces.classify.classify` and
        `mta.mail.dsn.recipient_status` (one vocabulary for replies and for
        bounces that arrive by mail). Passed in, typed by the `Classifier`
        and `StatusOf` Protocols: policy may not import mail (layer table).
    Attempt(started, duration, now)       when the attempt began, how long it
                                          took, when its outcome is recorded
    settle(item, outcome, *, attempt, retry, vocabulary) -> Settlement
        outcome None: the transport said nothing for this recipient (its
        body could not be read): deferred, `LOCAL_READ_ERROR`
    Settlement(update, address, status)   .outcome ("delivered", "bounced",
                                          "expired", "deferred") and .klass
                                          ("hard"/"soft" for bounced, else "")
                                          are what the observer counts
    expired_unattempted(item, now) -> RecipientUpdate
        a recipient past its lifetime when leased (no attempt counted)
    put_back(item, until) -> RecipientUpdate
        back to the queue unattempted, due at `until` (suspended or paused
        destination, shutdown)
    destination_verdict(exc) -> (RecipientOutcome, DestinationHealth)
        the fate every recipient of a batch gets when the transport raised
        instead of reporting (null MX, NXDOMAIN, DNS SERVFAIL, a bug)

Invariants
  * A reply is classified at most once per recipient (delivered: never).
  * `status` (log line, the ledger's bounced/expired `status`) is the
    vocabulary's `status`, the same derivation as the DSN's Status.
  * Address outcomes: delivered → "delivered"; bounced with a "hard" class →
    "hard"; every other failure → "soft". A deferral that never reached a
    remote host (our own connection or local trouble) says nothing about the
    address: no address outcome.
  * A temporary failure after the retry policy's lifetime expires the
    recipient (EXPIRED, ledger class "soft", reason "expired").
  * Ledger detail: bounced and expired events carry "reason" = the
    category (`mta.core.reasons`) and "reason_detail" = the classifier's
    fine reason (expired: both "expired"; the last reply stays the event's
    reply); a deferral after a remote reply (QUEUED, a remote host
    answered) carries {"class": "soft", "reason", "reason_detail",
    "status"}; a deferral that never reached a remote host carries none.
    Always category_of(reason_detail) == reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mta.core import (BOUNCED, DELIVERED, EXPIRED, QUEUED, AddressOutcome, DestinationHealth,
                      PermFailure, QueuedRecipient, RecipientFate, RecipientOutcome,
                      RecipientUpdate, Reply, TempFailure)
from mta.core.reasons import category_of
from mta.policy.retry import RetryPolicy

__all__ = ["LOCAL_DELIVERY_ERROR", "LOCAL_READ_ERROR", "OUTCOME_OF", "Attempt", "Classifier",
           "ReplyVocabulary", "Settlement", "StatusOf", "destination_verdict",
           "expired_unattempted", "put_back", "settle"]

LOCAL_READ_ERROR = Reply(451, "4.3.0", "Local error reading the message, will retry")
LOCAL_DELIVERY_ERROR = Reply(451, "4.3.0", "Local delivery error, will retry")
EXPIRED_UNATTEMPTED = Reply(451, "4.4.7", "Message expired: delivery time limit exceeded "
                                          "before any attempt succeeded")

# recipient state after an attempt → the name of its outcome (log event,
# observer's `outcome` label)
OUTCOME_OF: dict[str, str] = {DELIVERED: "delivered", BOUNCED: "bounced", EXPIRED: "expired",
                              QUEUED: "deferred"}


class Classifier(Protocol):
    """`mta.mail.bounces.classify.classify`: (class, reason) of a reply."""
    def __call__(self, status: str | None, code: int | None, text: str,
                 *, command: str | None = None) -> tuple[str, str]: ...


class StatusOf(Protocol):
    """`mta.mail.dsn.recipient_status`: the RFC 3463 status of a recipient."""
    def __call__(self, state: str, reply: Reply | None, kind: str = ...,
                 reason: str | None = ...) -> str: ...


@dataclass(frozen=True)
class ReplyVocabulary:
    classify: Classifier
    status: StatusOf


@dataclass(frozen=True)
class Attempt:
    started: float      # when the batch began (the attempt's time in the index)
    duration: float     # seconds the transport took
    now: float          # when the outcome is decided and recorded


@dataclass(frozen=True)
class Settlement:
    update: RecipientUpdate
    address: AddressOutcome | None
    status: str | None          # RFC 3463 status of a failure; None when delivered

    @property
    def outcome(self) -> str:
        return OUTCOME_OF[self.update.state]

    @property
    def klass(self) -> str:
        """"hard"/"soft" for a bounce (the address outcome's kind), else ""."""
        if self.update.state == BOUNCED and self.address is not None:
            return self.address.kind
        return ""


def settle(item: QueuedRecipient, outcome: RecipientOutcome | None, *, attempt: Attempt,
           retry: RetryPolicy, vocabulary: ReplyVocabulary) -> Settlement:
    """The updates one attempt makes for recipient `item` (module docstring)."""
    if outcome is None:
        outcome = RecipientOutcome(RecipientFate.DEFERRED, LOCAL_READ_ERROR)
    now, reply = attempt.now, outcome.reply
    if outcome.fate is RecipientFate.DELIVERED:
        state, nxt = DELIVERED, None
    elif outcome.fate is RecipientFate.BOUNCED:
        state, nxt = BOUNCED, None
    else:
        nxt = retry.after_temp_failure(item.received_at, item.attempts + 1, now)
        state = EXPIRED if nxt is None else QUEUED
    klass = reason = status = None
    if state != DELIVERED:
        klass, reason = vocabulary.classify(reply.esc or None, reply.code, reply.text,
                                            command="RCPT")
        status = vocabulary.status(state, reply, reason=reason)
    detail: dict[str, object] | None = None
    if state in (BOUNCED, EXPIRED):
        # The ledger's bounced/expired events carry the verdict in the
        # vocabulary of bounces that arrive by mail (sync=true here).
        fine = reason if state == BOUNCED else "expired"
        detail = {"class": klass if state == BOUNCED else "soft",
                  "reason": category_of(fine or ""), "reason_detail": fine,
                  "status": status, "sync": True}
    elif state == QUEUED and outcome.remote_host:
        detail = {"class": "soft", "reason": category_of(reason or ""),
                  "reason_detail": reason, "status": status}
    update = RecipientUpdate(item.queue_id, item.rcpt_idx, state, next_attempt=nxt,
                             event_detail=detail, reply=reply, attempted_at=attempt.started,
                             duration=attempt.duration, remote_host=outcome.remote_host,
                             remote_ip=outcome.remote_ip, tls=outcome.tls,
                             tls_policy=outcome.tls_policy, tls_check=outcome.tls_check)
    return Settlement(update, _address_outcome(item, outcome, klass, now), status)


def _address_outcome(item: QueuedRecipient, outcome: RecipientOutcome, klass: str | None,
                     now: float) -> AddressOutcome | None:
    """What the attempt says about the address, for suppression. Deferrals
    count as soft failures; our own connection trouble (no remote host)
    does not: it says nothing about the address."""
    if outcome.fate is RecipientFate.DELIVERED:
        return AddressOutcome(item.address, "delivered", now, item.queue_id)
    if outcome.fate is RecipientFate.DEFERRED and not outcome.remote_host:
        return None
    kind = "hard" if outcome.fate is RecipientFate.BOUNCED and klass == "hard" else "soft"
    return AddressOutcome(item.address, kind, now, item.queue_id, str(outcome.reply))


def expired_unattempted(item: QueuedRecipient, now: float) -> RecipientUpdate:
    """A recipient found past its lifetime when leased. The last remote reply
    stays the diagnostic when there was one ("expired after 451 greylisted"
    tells the sender why): the update carries a reply only when it was never
    attempted."""
    return RecipientUpdate(item.queue_id, item.rcpt_idx, EXPIRED, counts_attempt=False,
                           attempted_at=now,
                           reply=None if item.attempts else EXPIRED_UNATTEMPTED)


def put_back(item: QueuedRecipient, until: float) -> RecipientUpdate:
    """Back to the queue without an attempt, due at `until`."""
    return RecipientUpdate(item.queue_id, item.rcpt_idx, QUEUED, next_attempt=until,
                           counts_attempt=False)


def destination_verdict(exc: BaseException) -> tuple[RecipientOutcome, DestinationHealth]:
    """Every recipient's outcome and the destination's health when the
    transport raised: PermFailure (null MX, NXDOMAIN) bounces them and says
    nothing against the destination; TempFailure (DNS SERVFAIL) defers them
    and counts the destination down; anything else is our own error:
    deferred with `LOCAL_DELIVERY_ERROR`, destination down."""
    if isinstance(exc, PermFailure):
        return RecipientOutcome(RecipientFate.BOUNCED, exc.reply), DestinationHealth.OK
    if isinstance(exc, TempFailure):
        return RecipientOutcome(RecipientFate.DEFERRED, exc.reply), DestinationHealth.DOWN
    return RecipientOutcome(RecipientFate.DEFERRED, LOCAL_DELIVERY_ERROR), DestinationHealth.DOWN
