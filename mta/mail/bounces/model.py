"""Value types of a parsed bounce: `BounceReport` and `BounceRecipient`.

Public API:
    BounceRecipient(address, action, status, diagnostic, class_, reason,
                    replycode, remote_mta, feedback_type)
    BounceReport(kind, recipients).to_json() -> dict   (the scoring contract)
    KINDS: the message kinds, in no particular order.

Invariants: `kind` is one of KINDS; `class_` is hard | soft | complaint |
unknown (delivery and auto-reply entries use "unknown", since they are not
failures); `status` is "" or an RFC 3463 code "d.d.d"; addresses are kept as
written (comparison is the caller's business, case-insensitively).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("dsn", "bounce", "arf", "autoreply", "delivery", "nonbounce")


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

    def to_json(self) -> dict:
        out = {"address": self.address, "action": self.action, "status": self.status,
               "diagnostic": self.diagnostic, "class": self.class_, "reason": self.reason,
               "replycode": self.replycode, "remote_mta": self.remote_mta}
        if self.feedback_type:
            out["feedback_type"] = self.feedback_type
        return out


@dataclass(slots=True)
class BounceReport:
    kind: str
    recipients: list[BounceRecipient] = field(default_factory=list)
    detector: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "recipients": [r.to_json() for r in self.recipients]}
