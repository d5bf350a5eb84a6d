"""The bounce reason taxonomy: one category per failure, the single source of truth.

One job: name the categories every bounce, deferral, expiry and complaint is
filed under (ledger events, webhooks, `mta bounce parse`, suppression and
reputation), and map the bounce parser's fine reasons
(`mta.mail.bounces.classify.REASONS`: userunknown, blocked, ...) onto them.

Public API:
    CATEGORIES: tuple[str, ...]     the categories, in documentation order
    DESCRIPTIONS: dict[str, str]    category -> one-line meaning
    FINE: dict[str, str]            fine reason -> category (every parser reason)
    category_of(fine_reason) -> str   the category; anything unknown -> "other"
    SUPPRESSES: frozenset[str]      categories whose *final* bounce suppresses
                                    the address at once
    LIST_QUALITY: frozenset[str]    categories that count toward a tenant's
                                    reputation bounce rate

Invariants: stdlib only, no I/O; every value of FINE, every member of
SUPPRESSES and LIST_QUALITY is in CATEGORIES; DESCRIPTIONS has exactly the
keys of CATEGORIES. "disabled" is one category beyond issue 14's list: a
mailbox that exists but is disabled or suspended is neither unknown (it may
come back, so it does not suppress at once) nor a full mailbox (it says the
list holds a dormant address, so it counts toward list quality).
A full mailbox, a receiver's outage, a block of our IP, content filtering
and rate limiting are not list-quality problems: they never count.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "user_unknown", "mailbox_full", "host_unknown", "filtered", "blocked", "spam_content",
    "policy", "rate_limited", "size", "expired", "network", "auto_reply", "complaint",
    "disabled", "other",
)

DESCRIPTIONS: dict[str, str] = {
    "user_unknown": "the mailbox does not exist (or has moved away) at the destination",
    "mailbox_full": "the mailbox is over its quota",
    "host_unknown": "the recipient domain does not exist or accepts no mail (no MX, null MX)",
    "filtered": "the recipient's own filter or the destination refused it after accepting "
                "the address",
    "blocked": "our IP, host or domain is blocked: RBL, reputation, missing reverse DNS",
    "spam_content": "the content was judged spam or carried a virus",
    "policy": "the message or its sender broke a receiver policy: SPF/DKIM/DMARC, TLS, "
              "sender rules, relaying, attachments, RFC conformance",
    "rate_limited": "we sent too fast or opened too many connections",
    "size": "the message exceeds a size or per-message limit (recipients, header size)",
    "expired": "delivery kept failing until the queue lifetime ran out",
    "network": "DNS or network trouble reaching the destination",
    "auto_reply": "an auto-reply or vacation notice, not a failure",
    "complaint": "the recipient reported the message as spam (feedback loop, ARF)",
    "disabled": "the mailbox exists but is disabled or suspended",
    "other": "anything else: remote system errors, local mailer errors, unreadable replies",
}

FINE: dict[str, str] = {
    "userunknown": "user_unknown", "hasmoved": "user_unknown",
    "hostunknown": "host_unknown", "notaccept": "host_unknown",
    "mailboxfull": "mailbox_full",
    "filtered": "filtered",
    "blocked": "blocked", "badreputation": "blocked", "requireptr": "blocked",
    "spamdetected": "spam_content", "virusdetected": "spam_content",
    "policyviolation": "policy", "authfailure": "policy", "securityerror": "policy",
    "failedstarttls": "policy", "rejected": "policy", "norelaying": "policy",
    "contenterror": "policy", "notcompliantrfc": "policy",
    "speeding": "rate_limited", "toomanyconn": "rate_limited",
    "mesgtoobig": "size", "exceedlimit": "size",
    "expired": "expired",
    "networkerror": "network",
    "vacation": "auto_reply",
    "feedback": "complaint",
    "suspend": "disabled",
    "systemerror": "other", "systemfull": "other", "mailererror": "other",
    "syntaxerror": "other", "onhold": "other", "undefined": "other", "delivered": "other",
}

SUPPRESSES: frozenset[str] = frozenset({"user_unknown", "host_unknown", "complaint"})
LIST_QUALITY: frozenset[str] = frozenset({"user_unknown", "host_unknown", "disabled"})


def category_of(fine_reason: str) -> str:
    """The category of a parser reason; a category name maps to itself; else "other"."""
    if fine_reason in DESCRIPTIONS:
        return fine_reason
    return FINE.get(fine_reason, "other")


__all__ = ["CATEGORIES", "DESCRIPTIONS", "FINE", "LIST_QUALITY", "SUPPRESSES", "category_of"]
