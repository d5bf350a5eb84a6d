"""RFC 3464 delivery status notifications (kind "dsn").

Public API: detect(mail) -> BounceReport | None

Fires when a message/delivery-status part sits in the message's own MIME
tree (attached messages are not searched: a DSN wrapped inside another
message is a "bounce", see textdsn). One recipient per Final-Recipient
block; Original-Recipient or X-Actual-Recipient stand in for a missing or
unusable Final-Recipient; a block with no address at all (a file or pipe,
"@domain", an empty delivery-status part) takes X-Failed-Recipients, the
notice's addresses or the returned To (marked `inferred`: the report
named nobody). Original-Recipient, when present, is kept as
`original_recipient`. The Status field wins, except that an x.0.0
yields to a specific code in the Diagnostic-Code; the human-readable part
supplies the diagnostic when the report carries none, and for a single
recipient a narrow reason it states (classify.EARLY: "Not enough disk
space", "account is disabled") overrides the relayed reply.
"""

from __future__ import annotations

from mta.mail.bounces.classify import EARLY, class_of
from mta.mail.bounces.patterns import fired, match_reason, tracing
from mta.mail.bounces.common import clean_address, collapse, make_recipient, segments
from mta.mail.bounces.context import Mail
from mta.mail.bounces.fields import parse_fields
from mta.mail.bounces.message import header, part_text
from mta.mail.bounces.detectors.textbounce import candidates
from mta.mail.bounces.model import BounceRecipient, BounceReport

_DS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def _fallback_addresses(mail: Mail, notice: str) -> tuple[list[str], bool]:
    """Who failed when the report names nobody usable: X-Failed-Recipients,
    else the addresses of the human-readable notice, else the returned To
    (then the second value is True: a guess, not a name the report gave)."""
    failed = [clean_address(a) for a in header(mail.msg, "X-Failed-Recipients").split(",")]
    failed = [a for a in failed if a]
    if failed:
        return failed, False
    found = [a for a, _ in sorted(candidates(mail, notice), key=lambda t: t[1])]
    if found:
        return found, False
    return mail.original_to[:1], True


def recipients_from_fields(text: str, mail: Mail, notice: str = "") -> list[BounceRecipient]:
    per_message, blocks = parse_fields(text)
    rows, seen, unnamed = [], set(), []
    for block in blocks:
        addr = ""
        for key in ("final-recipient", "x-actual-recipient", "original-recipient"):
            addr = clean_address(block.get(key, ""))
            if addr:
                break
        if not addr:
            unnamed.append(block)
        elif addr.lower() not in seen:
            seen.add(addr.lower())
            rows.append((addr, block, False))
    if unnamed or not blocks:
        # A Final-Recipient that is a file or pipe (Exim), a bare "@domain"
        # (Sendmail) or an empty delivery-status part: name them from the
        # rest of the message, in order, skipping addresses already listed.
        spare, guessed = _fallback_addresses(mail, notice)
        spare = [a for a in spare if a.lower() not in seen]
        for block in unnamed or [{}]:
            if not spare:
                break
            addr = spare.pop(0)
            seen.add(addr.lower())
            rows.append((addr, block, guessed))
    low = notice.lower()
    found = [(a, low.find(a.lower())) for a, _, _ in rows]
    local = dict(segments(notice, [(a, p) for a, p in found if p >= 0]))
    out = []
    for addr, block, guessed in rows:
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
                           remote_mta=remote.strip(),
                           text=(diag + " " + context) if diag else context)
        if dtype.strip().lower() == "x-unix" and r.class_ in ("hard", "soft"):
            # RFC 3464 x-unix diagnostics come from a local delivery program.
            r.reason, r.class_ = "mailererror", "soft"
        elif len(rows) == 1 and r.class_ in ("hard", "soft") and r.reason not in EARLY:
            # The reporting MTA's own sentence ("Not enough disk space", "The
            # account is disabled") names a narrow reason that the relayed
            # reply (often a bare "550 user unknown") hides.
            early = match_reason(collapse(notice).lower(), EARLY)
            if early:
                r.reason, r.class_ = early, class_of(early, r.status, r.replycode)
                if tracing():
                    r.rules = fired(early, collapse(notice).lower())
        r.original_recipient = clean_address(block.get("original-recipient", ""))
        r.inferred = guessed
        out.append(r)
    return out


def _valid_status(s: str) -> bool:
    parts = s.split(".")
    return len(parts) == 3 and s[0] in "245" and all(p.isdigit() for p in parts)


def detect(mail: Mail) -> BounceReport | None:
    for part, ctype in zip(mail.parts, mail.ctypes):
        if ctype in _DS_TYPES:
            recipients = recipients_from_fields(part_text(part), mail, mail.notice)
            return BounceReport("dsn", recipients, detector="dsn")
    return None
