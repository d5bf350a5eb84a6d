"""RFC 3834 auto-replies and vacation notices (kind "autoreply").

Public API: detect(mail) -> BounceReport | None

An auto-reply is not a failure: its one entry (the replying address, the
From of the message) has reason "vacation" and class "unknown". A message
that also looks like a failure notice (mailer-daemon sender, bounce
subject, failed-recipient header) is left to the bounce detectors, since
many MTAs mark their bounces Auto-Submitted: auto-replied.
"""

from __future__ import annotations

from mta.mail.bounces.common import collapse
from mta.mail.bounces.context import Mail
from mta.mail.bounces.model import BounceRecipient, BounceReport
from mta.mail.bounces.signals import looks_like_autoreply, looks_like_bounce


def detect(mail: Mail) -> BounceReport | None:
    if not looks_like_autoreply(mail) or looks_like_bounce(mail):
        return None
    rcpts: list[BounceRecipient] = []
    if mail.sender_addr:
        rcpts.append(BounceRecipient(address=mail.sender_addr,
                                     diagnostic=collapse(mail.notice)[:300],
                                     class_="unknown", reason="vacation"))
    return BounceReport("autoreply", rcpts, detector="autoreply")
