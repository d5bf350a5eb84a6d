"""SMTP replies as values: `Reply(code, esc, text)`, and the enhanced status
code of a reply that came without one.

Invariants: `code` is a three-digit SMTP code (200–599); `esc` is an RFC 3463
enhanced status code whose class digit agrees with the code's first digit
(or "" for replies received from a remote server that sent none); `text` has
no CR or LF (multi-line remote replies are joined with a single space when
kept verbatim in `text`, with the raw lines available via `lines`).

Deriving a status (`Reply.status(reason)`, `derive_status(code, reason)`):
the one place that says which RFC 3463 code a reply stands for. Everything
that reports a status (DSN `Status:`, the ledger's `status`, the delivery
log) asks here; nothing else invents one. Order:
  1. the remote's own enhanced code (`esc`) always wins;
  2. for the basic codes whose meaning covers several causes (450, 451,
     550, 552, 553, 554; 452 only for "too many recipients"), the bounce
     classifier's reason for the text (mta/mail/bounces/classify.py, passed
     in as `reason`: core does not parse text) picks the detail,
     `REASON_DETAIL`: "550 No such user" → 5.1.1, "552 Mailbox full" → 5.2.2,
     "554 rejected as spam" → 5.7.1. A detail RFC 3463 calls "useful only as
     a permanent error" (X.1.1, X.1.2, X.1.3, X.1.6, X.1.10, X.3.4) is never
     given to a 4xx reply;
  3. else `BASIC_STATUS`, from what RFC 5321 §4.2.2–4.2.3 (and the RFCs
     named there) says the basic code means, mapped to the RFC 3463 code of
     the same meaning. 550 and 554 map to 5.0.0 on purpose: "mailbox
     unavailable" covers a missing mailbox (5.1.1), a disabled one (5.2.1)
     and a policy refusal (5.7.1), and "transaction failed" says nothing at
     all; guessing one would tell the sender something the remote never
     said. 552 maps to 5.3.4: RFC 1870 §6 gives 552 to "message size exceeds
     fixed maximum", which is what a bare 552 means in practice (RFC 5321's
     "exceeded storage allocation", mailbox full, comes with such text and
     gets 5.2.2 in step 2);
  4. else X.0.0 for the code's class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ESC_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_ESC_PREFIX_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")

# Basic reply code -> the RFC 3463 code of the same meaning (module docstring,
# step 3). Each line: what the basic code means, and where that is written.
BASIC_STATUS: dict[int, str] = {
    421: "4.3.2",   # service not available, closing channel (RFC 5321 §4.2.3): X.3.2
                    #   "system not accepting network messages" (shutdown, load)
    450: "4.2.0",   # mailbox unavailable, e.g. busy (RFC 5321): X.2.0 other mailbox status
    451: "4.3.0",   # local error in processing (RFC 5321): X.3.0 other mail system status
    452: "4.3.1",   # insufficient system storage (RFC 5321): X.3.1 mail system full
    454: "4.7.0",   # TLS / authentication temporarily unavailable (RFC 3207, RFC 4954 §6)
    455: "4.5.4",   # server unable to accommodate parameters (RFC 5321): X.5.4
    500: "5.5.2",   # syntax error, command unrecognized (RFC 5321): X.5.2 syntax error
    501: "5.5.4",   # syntax error in parameters or arguments (RFC 5321): X.5.4
    502: "5.5.1",   # command not implemented (RFC 5321): X.5.1 invalid command
    503: "5.5.1",   # bad sequence of commands (RFC 5321): X.5.1 invalid command
    504: "5.5.4",   # command parameter not implemented (RFC 5321): X.5.4
    521: "5.3.2",   # host does not accept mail (RFC 7504 §3)
    530: "5.7.0",   # authentication required (RFC 4954 §6)
    535: "5.7.8",   # authentication credentials invalid (RFC 4954 §6)
    550: "5.0.0",   # mailbox unavailable: not found, disabled or policy -- ambiguous
    551: "5.1.6",   # user not local; please try <forward-path> (RFC 5321): X.1.6 moved
    552: "5.3.4",   # message size exceeds fixed maximum (RFC 1870 §6): X.3.4 too big
    553: "5.1.3",   # mailbox name not allowed, e.g. syntax (RFC 5321): X.1.3 bad syntax
    554: "5.0.0",   # transaction failed (RFC 5321): nothing more specific
    555: "5.5.4",   # MAIL/RCPT parameters not recognized (RFC 5321): X.5.4
    556: "5.1.10",  # domain does not accept mail (RFC 7504 §3; null MX, RFC 7505 §4)
}

# Classifier reason (mta/mail/bounces/classify.py vocabulary) -> subject.detail
# of RFC 3463. Reasons without a clear RFC 3463 counterpart (rejected,
# filtered, toomanyconn, speeding, onhold, undefined, ...) are absent.
REASON_DETAIL: dict[str, str] = {
    "userunknown": "1.1",       # X.1.1 bad destination mailbox address
    "hostunknown": "1.2",       # X.1.2 bad destination system address
    "notaccept": "1.2",         # the destination system cannot accept mail
    "hasmoved": "1.6",          # X.1.6 destination mailbox has moved
    "suspend": "2.1",           # X.2.1 mailbox disabled
    "mailboxfull": "2.2",       # X.2.2 mailbox full
    "systemerror": "3.0",       # X.3.0 other mail system status
    "mailererror": "3.0",
    "systemfull": "3.1",        # X.3.1 mail system full
    "mesgtoobig": "3.4",        # X.3.4 message too big for system
    "networkerror": "4.0",      # X.4.0 other network or routing status
    "expired": "4.7",           # X.4.7 delivery time expired
    "exceedlimit": "5.3",       # X.5.3 too many recipients
    "syntaxerror": "5.2",       # X.5.2 syntax error
    "contenterror": "6.0",      # X.6.0 other media error
    "notcompliantrfc": "6.0",
    "securityerror": "7.0",     # X.7.0 other security status
    "failedstarttls": "7.0",
    "norelaying": "7.1",        # X.7.1 delivery not authorized, message refused
    "blocked": "7.1",
    "badreputation": "7.1",
    "spamdetected": "7.1",
    "virusdetected": "7.1",
    "policyviolation": "7.1",
    "authfailure": "7.1",
    "requireptr": "7.25",       # X.7.25 reverse DNS validation failed (RFC 7372)
}

# Basic codes whose text may pick the detail (step 2): all reasons, or only
# those listed (452 "insufficient system storage" is what the code says; only
# "too many recipients" is a different cause, RFC 5321 §4.5.3.1.10).
REFINED_BY_TEXT: dict[int, frozenset[str] | None] = {
    450: None, 451: None, 452: frozenset({"exceedlimit"}),
    550: None, 552: None, 553: None, 554: None,
}

# RFC 3463: "useful only as a permanent error" -- never derived for a 4xx reply.
_PERMANENT_ONLY = frozenset({"1.1", "1.2", "1.3", "1.6", "1.10", "3.4"})


def derive_status(code: int, reason: str | None = None) -> str:
    """The RFC 3463 code for basic `code` (module docstring, steps 2-4);
    `reason` is the classifier's reason for the reply text, or None.
    "" for a 3xx code (an intermediate reply has no status)."""
    klass = str(code)[0]
    if klass not in "245":
        return ""
    refine = REFINED_BY_TEXT.get(code, frozenset())
    detail = REASON_DETAIL.get(reason or "")
    if detail and (refine is None or reason in refine) and not (
            klass == "4" and detail in _PERMANENT_ONLY):
        return f"{klass}.{detail}"
    return BASIC_STATUS.get(code) or f"{klass}.0.0"


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    esc: str
    text: str
    # True when a remote server said it (from_remote), False for our own
    # words (4.4.1 no connection, a synthetic deferral …): automation rules
    # act on remote replies only (issue 15). Not part of equality.
    remote: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if self.esc and not _ESC_RE.match(self.esc):
            raise ValueError(f"bad enhanced status code: {self.esc!r}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be a single line")

    def status(self, reason: str | None = None) -> str:
        """The enhanced status code this reply stands for: `esc` when the
        remote gave one, else derived (`derive_status`; `reason` is the
        bounce classifier's reason for `text`, when the caller has it)."""
        return self.esc or derive_status(self.code, reason)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_temp(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_perm(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        """The wire form without CRLF, e.g. ``451 4.3.0 Try again later``."""
        if self.esc:
            return f"{self.code} {self.esc} {self.text}"
        return f"{self.code} {self.text}"

    @classmethod
    def from_remote(cls, code: int, message: str) -> "Reply":
        """Build from what a remote server said, keeping its words verbatim.

        A leading enhanced status code in the text is split into `esc`.
        Multi-line text is joined with spaces (the per-line ESC repeats are
        kept as sent: we never rewrite a remote's words).
        """
        text = " ".join(line.strip() for line in message.splitlines()) if message else ""
        esc = ""
        m = _ESC_PREFIX_RE.match(text)
        if m and m.group(1)[0] == str(code)[0]:
            esc = m.group(1)
            text = text[m.end():]
        return cls(code, esc, text, True)

    @classmethod
    def parse(cls, line: str) -> "Reply":
        """Parse the wire form ``"250 2.0.0 Ok"`` (single line)."""
        line = line.strip()
        code = int(line[:3])
        return cls.from_remote(code, line[4:] if len(line) > 4 else "")
