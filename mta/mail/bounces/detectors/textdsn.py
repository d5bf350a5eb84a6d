"""RFC 3464 fields outside a message/delivery-status part (kind "bounce").

Public API: detect(mail) -> BounceReport | None

Covers DSNs whose MIME structure was broken (by redaction, by a relay that
flattened it) and reports forwarded inside another message: the
Final-Recipient/Status/Diagnostic-Code blocks are read from the text, or
from a delivery-status part of an attached message.
"""

from __future__ import annotations

from email.message import Message

from mta.mail.bounces.context import Mail
from mta.mail.bounces.detectors.dsn import recipients_from_fields
from mta.mail.bounces.fields import has_fields
from mta.mail.bounces.message import own_parts, part_text
from mta.mail.bounces.model import BounceReport


def detect(mail: Mail) -> BounceReport | None:
    if has_fields(mail.text):
        rcpts = recipients_from_fields(mail.text, mail, mail.notice)
        if rcpts:
            return BounceReport("bounce", rcpts, detector="textdsn")
    for part, ctype in zip(mail.parts, mail.ctypes):
        if ctype != "message/rfc822":
            continue
        payload = part.get_payload()
        if not isinstance(payload, list) or not payload or not isinstance(payload[0], Message):
            continue
        for inner in own_parts(payload[0]):
            if inner.get_content_type() in ("message/delivery-status",
                                            "message/global-delivery-status"):
                rcpts = recipients_from_fields(part_text(inner), mail, mail.notice)
                if rcpts:
                    return BounceReport("bounce", rcpts, detector="textdsn-wrapped")
    return None
