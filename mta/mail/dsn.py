"""Delivery Status Notifications (RFC 3464): bytes of a complete DSN message.

Public API:
    build_dsn(*, original, candidate, reporting_mta, queue_id, now,
              kind="failure", original_envelope_id=None, retry_until=None) -> bytes

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
    in part 2 (whose fields must be ASCII) non-ASCII characters of a remote
    reply are written as backslash escapes. Known gap: an SMTPUTF8 sender
    address goes into To: as raw UTF-8 (RFC 6533 global DSNs are not built).
  * Status of an expired recipient is the last reply's 4.x.x code, else
    4.4.7, with Action failed (RFC 3464 §2.3.3 / RFC 3463 4.4.7).
  * Pure: `now` is an argument; the Message-ID and boundary derive from the
    inputs, so the same inputs give the same bytes.
  * The null sender never gets a DSN (RFC 5321 §4.5.5): ValueError.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from email import quoprimime
from email.utils import format_datetime

from mta.core.envelope import EXPIRED, DsnCandidate, FailedRecipient

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


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _status(r: FailedRecipient, kind: str) -> str:
    esc = r.reply.esc if r.reply else ""
    if r.state == EXPIRED and kind == "failure":
        return esc if esc.startswith("4.") else "4.4.7"
    if esc:
        return esc
    if r.reply:
        return f"{r.reply.code // 100}.0.0"
    return "4.0.0" if kind == "delay" else "5.0.0"


def _recipient_block(r: FailedRecipient, kind: str, now: float,
                     retry_until: float | None) -> list[str]:
    fields = [f"Final-Recipient: rfc822; {_ascii(r.address)}",
              f"Action: {'delayed' if kind == 'delay' else 'failed'}",
              f"Status: {_status(r, kind)}"]
    if r.remote_host:
        fields.append(f"Remote-MTA: dns; {_ascii(r.remote_host)}")
    if r.reply:
        fields.append(f"Diagnostic-Code: smtp; {_ascii(str(r.reply))}")
    # FailedRecipient carries no attempt time; a DSN is built right after the
    # attempt that settled the recipient, so `now` is that attempt's time.
    if r.attempts > 0 or r.reply is not None:
        fields.append(f"Last-Attempt-Date: {_date(now)}")
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
              retry_until: float | None = None) -> bytes:
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
        status += ["", *_recipient_block(r, kind, now, retry_until)]

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
