"""Value types of a parsed bounce: `BounceReport` and `BounceRecipient`.

Public API:
    BounceRecipient(address, action, status, diagnostic, class_, reason,
                    replycode, remote_mta, feedback_type, original_recipient,
                    inferred, rules)
    BounceReport(kind, recipients).to_json() -> ReportJson   (the scoring
        contract, plus "original_recipient" and "inferred" when set)
    ReportJson, RecipientJson: the shapes of those JSON objects (TypedDicts)
    KINDS: the message kinds, in no particular order.

`original_recipient` is the address the sender originally addressed when the
report says so (RFC 3464 Original-Recipient, ARF Original-Rcpt-To); `address`
is the failed one (Final-Recipient: often an alias target). `inferred` is
True when the report itself names nobody and `address` was taken from the
To: header of the returned message: a guess, since that header is the same
in every recipient's copy (the runtime never acts on a guessed recipient
unless a VERP token confirms it). `rules` names the rule rows that decided
`reason` (patterns.RULES / rhost ids) when parsed under
`patterns.ruleset(trace=True)`; it is not part of the JSON.

Invariants: `kind` is one of KINDS; `class_` is hard | soft | complaint |
unknown (delivery and auto-reply entries use "unknown", since they are not
failures); `status` is "" or an RFC 3463 code "d.d.d"; addresses are kept as
written (comparison is the caller's business, case-insensitively).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

KINDS = ("dsn", "bounce", "arf", "autoreply", "delivery", "nonbounce")

# "class" is a keyword, hence the functional form.
RecipientJson = TypedDict("RecipientJson", {
    "address": str, "action": str, "status": str, "diagnostic": str, "class": str,
    "reason": str, "replycode": int | None, "remote_mta": str,
    "feedback_type": NotRequired[str], "original_recipient": NotRequired[str],
    "inferred": NotRequired[bool],
})


class ReportJson(TypedDict):
    kind: str
    recipients: list[RecipientJson]


@dataclass(slots=True)
class BounceRecipient:
    address: str
    action: str = ""
    status: str = ""
    diagnostic: str = ""
    class_: str = "unknown"
    reason: str = "undefined"
    replycode: int | None = None
    remote_mta: str = ""
    feedback_type: str = ""
    original_recipient: str = ""
    inferred: bool = False
    rules: tuple[str, ...] = ()

    def to_json(self) -> RecipientJson:
        out: RecipientJson = {
            "address": self.address, "action": self.action, "status": self.status,
            "diagnostic": self.diagnostic, "class": self.class_, "reason": self.reason,
            "replycode": self.replycode, "remote_mta": self.remote_mta}
        if self.feedback_type:
            out["feedback_type"] = self.feedback_type
        if self.original_recipient:
            out["original_recipient"] = self.original_recipient
        if self.inferred:
            out["inferred"] = True
        return out


@dataclass(slots=True)
class BounceReport:
    kind: str
    recipients: list[BounceRecipient] = field(default_factory=list)
    detector: str = ""

    def to_json(self) -> ReportJson:
        return {"kind": self.kind, "recipients": [r.to_json() for r in self.recipients]}
