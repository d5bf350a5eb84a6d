"""Complaints and feedback reports (kind "arf").

Public API: detect(mail) -> BounceReport | None

Recognised, by structural markers only:
  * RFC 5965 ARF: a message/feedback-report part (or report-type=feedback-report);
  * ARF fields (Feedback-Type + Version/User-Agent) in a plain-text body;
  * Amazon SES complaint notifications (JSON "notificationType": "Complaint");
  * Microsoft JMRP reports (an attached message carrying X-HmXmrOriginalRecipient);
  * one-click style opt-outs sent by mail clients (X-Apple-Unsubscribe).
The reported recipient is, in order: every Original-Rcpt-To (also kept as
`original_recipient`), Removal-Recipient, the To of the returned message
(marked `inferred`: every recipient's copy carries the same To:, so it does
not say who complained), else none (a complaint that hides the recipient
must not suppress anybody by guesswork).
"""

from __future__ import annotations

import re

from mta.mail.bounces.common import ADDR_RE, clean_address, collapse
from mta.mail.bounces.context import Mail
from mta.mail.bounces.fields import parse_fields
from mta.mail.bounces.message import header, part_text
from mta.mail.bounces.model import BounceRecipient, BounceReport
from mta.mail.bounces.detectors import sesjson

_TEXT_ARF = re.compile(r"^feedback-type:\s*\S+", re.I | re.M)
_ARF_AGENT = re.compile(r"^(?:version|user-agent|original-mail-from|arrival-date):", re.I | re.M)


def _complaint(address: str, ftype: str, diag: str, *, original: str = "",
               inferred: bool = False) -> BounceRecipient:
    return BounceRecipient(address=address, action="", status="", diagnostic=diag,
                           class_="complaint", reason="feedback", feedback_type=ftype or "abuse",
                           original_recipient=original, inferred=inferred)


def _from_fields(mail: Mail, report_text: str) -> BounceReport:
    per_message, blocks = parse_fields(report_text)
    fields = dict(per_message)
    for b in blocks:
        for k, v in b.items():
            fields.setdefault(k, v)
    ftype = fields.get("feedback-type", "abuse").strip().lower()
    rcpts = [clean_address(v) for v in re.findall(r"^original-rcpt-to:\s*(.+)$", report_text,
                                                   re.I | re.M)]
    rcpts = [a for a in rcpts if a]
    named = bool(rcpts)         # by Original-Rcpt-To
    if not rcpts:
        rcpts = [a for a in (clean_address(v) for v in re.findall(
            r"^removal-recipient:\s*(.+)$", report_text, re.I | re.M)) if a]
    inferred = not rcpts
    if inferred:
        rcpts = mail.original_to[:1]
    diag = collapse(mail.notice.strip().split("\n\n")[0])[:500]
    seen, out = set(), []
    for a in rcpts:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append(_complaint(a, ftype, diag, original=a if named else "",
                                  inferred=inferred))
    return BounceReport("arf", out, detector="arf")


def detect(mail: Mail) -> BounceReport | None:
    for part, ctype in zip(mail.parts, mail.ctypes):
        if ctype == "message/feedback-report":
            return _from_fields(mail, part_text(part))
    report_type = mail.msg.get_param("report-type")    # a tuple when RFC 2231-encoded
    if isinstance(report_type, str) and report_type.lower() == "feedback-report":
        return _from_fields(mail, mail.text)
    if _TEXT_ARF.search(mail.notice) and _ARF_AGENT.search(mail.notice):
        return _from_fields(mail, mail.notice)
    data = sesjson.load_json(mail)
    if data and data.get("notificationType") == "Complaint":
        c = data.get("complaint") or {}
        ftype = (c.get("complaintFeedbackType") or "abuse").lower()
        out = [_complaint(r.get("emailAddress", ""), ftype, "Amazon SES complaint")
               for r in c.get("complainedRecipients") or [] if r.get("emailAddress")]
        return BounceReport("arf", out, detector="sesjson-complaint")
    if "message/rfc822" in mail.ctypes and mail.original is not None:
        # Microsoft JMRP (Outlook.com / Hotmail junk reports): the reported
        # message is attached whole, its recipient in X-HmXmrOriginalRecipient.
        rcpt = clean_address(header(mail.original, "X-HmXmrOriginalRecipient"))
        if rcpt:
            return BounceReport("arf", [_complaint(rcpt, "abuse", collapse(mail.subject))],
                                detector="jmrp")
    if header(mail.msg, "X-Apple-Unsubscribe").strip().lower() == "true":
        m = ADDR_RE.search(mail.from_header)
        rcpts = [_complaint(m.group(1), "opt-out", collapse(mail.notice)[:300])] if m else []
        return BounceReport("arf", rcpts, detector="unsubscribe")
    return None
