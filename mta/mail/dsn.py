r"""Delivery Status Notifications (RFC 3464): bytes of a complete DSN message.

Public API:
    build_dsn(*, original, candidate, reporting_mta, queue_id, now,
              kind="failure", original_envelope_id=None, retry_until=None,
              last_attempts=None) -> bytes
    recipient_status(state, reply, kind="failure", reason=None) -> str
                                      the Status of one recipient
    reply_status(reply) -> str        a reply's enhanced code (core.reply, with the
                                      bounce classifier's reading of its text)
    address_field(address) -> str     "rfc822; a@b" or RFC 6533 "utf-8; …"

The result is a `multipart/report; report-type=delivery-status` message to
the original envelope sender from MAILER-DAEMON@<reporting_mta>, with
  1. text/plain: a human explanation listing each recipient and its reply;
  2. message/delivery-status: per-message fields, then one block per recipient
     (Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
     Last-Attempt-Date, and Will-Retry-Until for delay warnings);
  3. text/rfc822-headers: the original header block only (never the body:
     a bounce must not re-send content to a possibly forged sender).

Invariants:
  * CRLF line endings, no line longer than 998 octets; long fields are
    folded at existing spaces, so unfolding restores the remote reply verbatim.
  * Output is 7-bit: non-ASCII text is quoted-printable in parts 1 and 3;
    part 2 stays a plain message/delivery-status, whose fields must be
    ASCII, so any receiver can carry and read it, SMTPUTF8 or not:
    a non-ASCII recipient is `Final-Recipient: utf-8; j\x{F6}hn@…`, the
    RFC 6533 §3 utf-8 address type in its 7-bit utf-8-addr-xtext form
    (every character outside QCHAR, i.e. non-ASCII, controls, space, "\",
    "+" and "=", as \x{HEX}); an ASCII one stays `rfc822; a@b`. Non-ASCII
    characters of a remote reply in Diagnostic-Code are written the same
    way (\x{E4}). (The alternative, message/global-delivery-status with raw
    UTF-8, may only travel to SMTPUTF8 receivers.) Known gap: an SMTPUTF8
    sender address goes into To: as raw UTF-8.
  * Status: the remote's enhanced code, else one derived from the basic code
    and the classifier's reading of the text (`reply_status`, table in
    mta/core/reply.py), else 5.0.0 (4.0.0 in a delay warning). An expired
    recipient gets the last reply's own 4.x.x code, else 4.4.7, with Action
    failed (RFC 3464 §2.3.3 / RFC 3463 4.4.7): the expiry is the cause then,
    not a guess from a bare 4xx.
  * Last-Attempt-Date of each recipient is its own last attempt's time, from
    `last_attempts` (rcpt_idx -> epoch seconds); a recipient with none there
    (never attempted, e.g. bounced by an operator) gets no such field.
  * Pure: `now` is an argument; the Message-ID and boundary derive from the
    inputs, so the same inputs give the same bytes.
  * The null sender never gets a DSN (RFC 5321 §4.5.5): ValueError.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from email import quoprimime
from email.utils import format_datetime

from typing import Mapping

from mta.core.envelope import EXPIRED, DsnCandidate, FailedRecipient
from mta.core.reply import Reply
from mta.mail.bounces.classify import classify

SUBJECTS = {"failure": "Undelivered Mail Returned to Sender",
            "delay": "Delayed Mail (still being retried)"}
_FOLD_AT = 78
_MAX_LINE = 998


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, timezone.utc))


def _fold(line: str) -> list[str]:
    """Fold a header-style line before spaces so lines stay short.

    A single word longer than 998 characters is hard-split: the line limit
    (RFC 5322 §2.1.1) wins over keeping that word intact.
    """
    out: list[str] = []
    while len(line) > _FOLD_AT:
        lead = len(line) - len(line.lstrip(" "))   # never leave a blank line behind
        cut = line.rfind(" ", lead + 1, _FOLD_AT + 1)
        if cut < 0:
            cut = line.find(" ", max(_FOLD_AT + 1, lead + 1))
            if cut < 0 or cut > _MAX_LINE:
                if len(line) <= _MAX_LINE:
                    break
                cut = _MAX_LINE
        out.append(line[:cut])
        rest = line[cut:]
        line = rest if rest.startswith(" ") else " " + rest
    out.append(line)
    return out


def _hex(c: str) -> str:
    """RFC 6533 EmbeddedUnicodeChar: \\x{HEX}, upper case, at least 2 digits."""
    return f"\\x{{{ord(c):02X}}}"


def _ascii(text: str) -> str:
    """Printable ASCII as is; anything else (non-ASCII, controls) as \\x{HEX}."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else _hex(c) for c in text)


def address_field(address: str) -> str:
    """The value of Final-Recipient (or Original-Recipient) for `address`:
    `rfc822; a@b` for a printable ASCII address, else RFC 6533 §3
    `utf-8; <utf-8-addr-xtext>`: QCHAR (printable ASCII except "\\", "+"
    and "=") as is, every other character as \\x{HEX}."""
    if address.isascii() and address.isprintable():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(
        c if "!" <= c <= "~" and c not in "\\+=" else _hex(c) for c in address)


def reply_status(reply: Reply) -> str:
    """The enhanced status code `reply` stands for: its own, else derived from
    the basic code and the bounce classifier's reason for its text
    (mta/core/reply.py says which)."""
    if reply.esc:
        return reply.esc
    _klass, reason = classify(None, reply.code, reply.text)
    return reply.status(reason)


def recipient_status(state: str, reply: Reply | None, kind: str = "failure",
                     reason: str | None = None) -> str:
    """The Status of one recipient in a DSN of `kind` (module docstring).
    `reason`: the classifier's reason for the reply when the caller has it
    (delivery knows the command), else the text is classified here."""
    if state == EXPIRED and kind == "failure":
        esc = reply.esc if reply else ""
        return esc if esc.startswith("4.") else "4.4.7"
    if reply is not None:
        return reply.status(reason) if reason is not None else reply_status(reply)
    return "4.0.0" if kind == "delay" else "5.0.0"


def _recipient_block(r: FailedRecipient, kind: str, retry_until: float | None,
                     last_attempt: float | None) -> list[str]:
    fields = [f"Final-Recipient: {address_field(r.address)}",
              f"Action: {'delayed' if kind == 'delay' else 'failed'}",
              f"Status: {recipient_status(r.state, r.reply, kind)}"]
    if r.remote_host:
        fields.append(f"Remote-MTA: dns; {_ascii(r.remote_host)}")
    if r.reply:
        fields.append(f"Diagnostic-Code: smtp; {_ascii(str(r.reply))}")
    if last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {_date(last_attempt)}")
    if kind == "delay" and retry_until is not None:
        fields.append(f"Will-Retry-Until: {_date(retry_until)}")
    return [ln for f in fields for ln in _fold(f)]


def _human(candidate: DsnCandidate, reporting_mta: str, kind: str,
           retry_until: float | None) -> str:
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if kind == "delay":
        lines += ["Your message has not been delivered yet to the recipients below.",
                  "The mail system will keep trying"
                  + (f" until {_date(retry_until)}." if retry_until is not None else "."),
                  "You do not need to resend it."]
    else:
        lines += ["Your message could not be delivered to the recipients below.",
                  "This is a permanent error; the mail system has given up."]
    lines.append("")
    for r in candidate.recipients:
        why = str(r.reply) if r.reply else "no reply recorded"
        if r.state == EXPIRED and kind == "failure":
            tries = f" after {r.attempts} attempts" if r.attempts else ""
            why = f"gave up{tries}, message too old; last reply: {why}"
        host = f" (remote host {r.remote_host})" if r.remote_host else ""
        lines.append(f"<{r.address}>{host}: {why}")
    lines += ["", "The delivery report and the original message's headers are attached."]
    return "\r\n".join(lines) + "\r\n"


def _text_part(text: str, ctype: str) -> list[str]:
    raw_lines = text.split("\r\n")
    if text.isascii() and all(len(ln) <= _MAX_LINE for ln in raw_lines):
        return [f"Content-Type: {ctype}; charset=us-ascii",
                "Content-Transfer-Encoding: 7bit", "", *raw_lines]
    body = quoprimime.body_encode(text.encode("utf-8").decode("latin-1"), eol="\r\n")
    return [f"Content-Type: {ctype}; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable", "", *body.split("\r\n")]


def _header_block(original: bytes) -> str:
    lines: list[bytes] = []
    for ln in original.splitlines():
        if not ln:
            break
        lines.append(ln)
    return "\r\n".join(ln.decode("utf-8", "replace") for ln in lines) + ("\r\n" if lines else "")


def build_dsn(*, original: bytes, candidate: DsnCandidate, reporting_mta: str, queue_id: str,
              now: float, kind: str = "failure", original_envelope_id: str | None = None,
              retry_until: float | None = None,
              last_attempts: Mapping[int, float] | None = None) -> bytes:
    if kind not in SUBJECTS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    if not candidate.sender:
        raise ValueError("no DSN to the null reverse path")
    if not candidate.recipients:
        raise ValueError("a DSN needs at least one recipient")

    digest = hashlib.sha256(b"%s|%s|%r|" % (queue_id.encode(), kind.encode(), now)
                            + original).hexdigest()
    boundary = f"=_mta_{digest[:24]}"
    per_message = [f"Reporting-MTA: dns; {reporting_mta}"]
    if original_envelope_id:
        per_message.append(f"Original-Envelope-Id: {_ascii(original_envelope_id)}")
    per_message += [f"X-Mta-Queue-ID: {queue_id}",
                    f"Arrival-Date: {_date(candidate.received_at)}"]
    status = list(per_message)
    for r in candidate.recipients:
        status += ["", *_recipient_block(r, kind, retry_until,
                                         (last_attempts or {}).get(r.rcpt_idx))]

    parts = [
        _text_part(_human(candidate, reporting_mta, kind, retry_until), "text/plain"),
        ["Content-Type: message/delivery-status", "Content-Transfer-Encoding: 7bit", "",
         *status, ""],
        _text_part(_header_block(original), "text/rfc822-headers"),
    ]
    # quoted-printable and our own lines never contain "=_" + 24 hex digits
    # preceded by "--" at line start, but check rather than trust.
    while any(ln.startswith("--" + boundary) for p in parts for ln in p):
        boundary += "_"

    head = [f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
            f"To: <{candidate.sender}>",
            f"Subject: {SUBJECTS[kind]}",
            f"Date: {_date(now)}",
            f"Message-ID: <{int(now * 1000)}.{kind}.{queue_id}.{digest[:8]}@{reporting_mta}>",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            "Content-Type: multipart/report; report-type=delivery-status;",
            f"\tboundary=\"{boundary}\"",
            "",
            "This is a MIME-encapsulated message.",
            ""]
    out = head
    for p in parts:
        out += [f"--{boundary}", *p]
    out += [f"--{boundary}--", ""]
    return "\r\n".join(out).encode("utf-8")
