"""RFC 3464 delivery status notifications (kind "dsn").

Public API: detect(mail) -> BounceReport | None

Fires when a message/delivery-status part sits in the message's own MIME
tree (attached messages are not searched: a DSN wrapped inside another
message is a "bounce", see textdsn). One recipient per Final-Recipient
block; Original-Recipient or X-Actual-Recipient stand in for a missing or
unusable Final-Recipient. The Status field wins, except that an x.0.0
yields to a specific code in the Diagnostic-Code; the human-readable part
supplies the diagnostic when the report carries none.
"""

from __future__ import annotations

from mta.mail.bounces.common import clean_address, collapse, make_recipient, segments
from mta.mail.bounces.fields import parse_fields
from mta.mail.bounces.message import part_text
from mta.mail.bounces.model import BounceReport

_DS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def recipients_from_fields(text: str, mail, notice: str = "") -> list:
    per_message, blocks = parse_fields(text)
    rows, seen = [], set()
    for block in blocks:
        addr = ""
        for key in ("final-recipient", "x-actual-recipient", "original-recipient"):
            addr = clean_address(block.get(key, ""))
            if addr:
                break
        if addr and addr.lower() not in seen:
            seen.add(addr.lower())
            rows.append((addr, block))
    low = notice.lower()
    found = [(a, low.find(a.lower())) for a, _ in rows]
    local = dict(segments(notice, [(a, p) for a, p in found if p >= 0]))
    out = []
    for addr, block in rows:
        action = (block.get("action") or "").strip().lower().split(" ")[0]
        diag = block.get("diagnostic-code", "")
        dtype = ""
        if ";" in diag[:12]:
            dtype, diag = diag.split(";", 1)
        remote = block.get("remote-mta", "")
        if ";" in remote:
            remote = remote.split(";", 1)[1]
        status = block.get("status", "").strip().split(" ")[0].strip("()")
        if not _valid_status(status):
            status = ""
        context = collapse(local.get(addr) or (notice[:1500] if len(rows) == 1 else ""))
        r = make_recipient(addr, action=action, status=status, diagnostic=diag or context,
                           remote_mta=remote.strip(), text=(diag + " " + context) if diag else context)
        if dtype.strip().lower() == "x-unix" and r.class_ in ("hard", "soft"):
            # RFC 3464 x-unix diagnostics come from a local delivery program.
            r.reason, r.class_ = "mailererror", "soft"
        out.append(r)
    return out


def _valid_status(s: str) -> bool:
    parts = s.split(".")
    return len(parts) == 3 and s[0] in "245" and all(p.isdigit() for p in parts)


def detect(mail):
    for part, ctype in zip(mail.parts, mail.ctypes):
        if ctype in _DS_TYPES:
            recipients = recipients_from_fields(part_text(part), mail, mail.notice)
            return BounceReport("dsn", recipients, detector="dsn")
    return None
