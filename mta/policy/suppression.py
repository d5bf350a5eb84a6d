"""Suppression rules: when an address stops being mailed, and what RCPT TO says.

One job: the pure decisions of automatic suppression (issue 4). Storage and
the transaction that applies them live in the spool; the spool receives a
`SuppressionRules` at `Spool.open` and calls `suppresses_after_soft` on it
(the spool may not import policy, docs/ARCHITECTURE.md §2, so it is handed
the object).

Public API:
    SuppressionRules(soft_limit, soft_span, hard_expiry, soft_expiry)
    SuppressionRules.from_config(SuppressionConfig)  (also `from_config(cfg)`)
    soft_decision(count, first_at, now, rules) -> bool
    expiry_for(reason, created, rules) -> float | None
    reply_for(entry) -> Reply        # entry: a SuppressionEntry (address, reason, created)

Rules:
  * Soft: an address is suppressed after `soft_limit` consecutive soft
    failures (a delivery in between resets the count) whose first and latest
    are at least `soft_span` seconds apart (Postal's "18 soft fails", made
    time-aware so one bad afternoon at a provider suppresses nobody). A
    soft-bounce suppression expires after `soft_expiry` (None: never).
  * Hard bounce: suppressed at once; expires after `hard_expiry` (None: never;
    mailboxes do get recycled, so operators may choose an expiry).
  * Complaint: suppressed at once and never expires, whatever
    `hard_expiry` says: a complaint is the recipient asking us to stop, not
    a fact about the mailbox that can go stale.
  * unsubscribe / manual: added by people, with the expiry they give.
Nothing here reads a clock: `now`/`created` are arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from mta.config.sections import SuppressionConfig
from mta.core.reply import Reply


@dataclass(frozen=True)
class SuppressionRules:
    soft_limit: int                  # consecutive soft failures…
    soft_span: float                 # …spread over at least this many seconds
    hard_expiry: float | None        # seconds; None = never
    soft_expiry: float | None        # seconds; None = never

    def __post_init__(self) -> None:
        if self.soft_limit < 1:
            raise ValueError("soft_limit must be at least 1")
        if self.soft_span < 0:
            raise ValueError("soft_span must not be negative")

    @classmethod
    def from_config(cls, cfg: SuppressionConfig) -> "SuppressionRules":
        return cls(soft_limit=cfg.soft_bounce_limit, soft_span=cfg.soft_bounce_span,
                   hard_expiry=cfg.hard_bounce_expiry, soft_expiry=cfg.soft_bounce_expiry)

    # The spool calls these (duck-typed: it cannot import this module).
    def suppresses_after_soft(self, count: int, first_at: float, now: float) -> bool:
        return soft_decision(count, first_at, now, self)

    def expiry_for(self, reason: str, created: float) -> float | None:
        return expiry_for(reason, created, self)


def from_config(cfg: SuppressionConfig) -> SuppressionRules:
    return SuppressionRules.from_config(cfg)


def soft_decision(count: int, first_at: float, now: float, rules: SuppressionRules) -> bool:
    """True when `count` consecutive soft failures, the first at `first_at`
    and the latest at `now`, suppress the address."""
    return count >= rules.soft_limit and now - first_at >= rules.soft_span


def expiry_for(reason: str, created: float, rules: SuppressionRules) -> float | None:
    """Absolute expiry of an automatic suppression created at `created`."""
    if reason == "hard_bounce":
        ttl = rules.hard_expiry
    elif reason == "soft_bounce":
        ttl = rules.soft_expiry
    else:           # complaint (never expires, see module doc), manual, unsubscribe
        ttl = None
    return None if ttl is None else created + ttl


class SuppressionEntry(Protocol):
    """What `reply_for` reads of an entry (the spool's SuppressionView)."""

    @property
    def address(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def created(self) -> float: ...


def reply_for(entry: SuppressionEntry) -> Reply:
    """The RCPT TO refusal for a suppressed address, e.g.
    ``550 5.1.1 <a@b.example>: recipient suppressed (hard bounce, 2026-11-20)``.
    5.7.1 for complaints and unsubscriptions (a policy refusal), 5.1.1
    otherwise; the date is the entry's creation day in UTC."""
    esc = "5.7.1" if entry.reason in ("complaint", "unsubscribed") else "5.1.1"
    day = time.strftime("%Y-%m-%d", time.gmtime(entry.created))
    why = entry.reason.replace("_", " ")
    return Reply(550, esc, f"<{entry.address}>: recipient suppressed ({why}, {day})")
