"""Bounce, complaint and auto-reply parsing: `parse(raw) -> BounceReport`.

One job: turn the bytes of a message that came back (a DSN, a vendor's
failure notice, an ARF complaint, an auto-reply) into per-recipient facts in
one vocabulary, the same one `classify` gives synchronous SMTP replies.

Public API:
    parse(raw: bytes) -> BounceReport      never raises on malformed input
    classify(status, code, text, *, command=None) -> (class_, reason)
    BounceReport(kind, recipients).to_json()   the scoring-contract object
    BounceRecipient(address, action, status, diagnostic, class_, reason,
                    replycode, remote_mta, feedback_type)
    REASONS, HARD, KINDS

Detectors live in `detectors/` and are tried in the order documented there;
the first report wins; no detector firing means kind "nonbounce".
Invariants: stdlib only (layer rule: mta/mail imports core + stdlib);
addresses keep their case; `class_` follows the corpus README's hard/soft
definition (the address is permanently bad), not "the code was 5xx".
"""

from __future__ import annotations

from mta.mail.bounces.classify import HARD, REASONS, classify
from mta.mail.bounces.context import Mail
from mta.mail.bounces.detectors import DETECTORS
from mta.mail.bounces.model import KINDS, BounceRecipient, BounceReport


def parse(raw: bytes) -> BounceReport:
    try:
        mail = Mail(raw)
        for detect in DETECTORS:
            report = detect(mail)
            if report is not None:
                return report
    except Exception:       # a parser for hostile input must not crash its caller
        return BounceReport("nonbounce", [], detector="error")
    return BounceReport("nonbounce", [], detector="none")


__all__ = ["parse", "classify", "BounceReport", "BounceRecipient", "REASONS", "HARD", "KINDS"]
