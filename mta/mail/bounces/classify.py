"""One vocabulary for every failure: `classify(status, code, text) -> (class, reason)`.

Used for asynchronous bounces (status and text from a DSN or a vendor
notice) and for synchronous SMTP replies during delivery
(`classify(reply.esc, reply.code, reply.text)`).

Public API:
    classify(status, code, text, *, command=None) -> (class_, reason)
    classify_traced(...) -> (class_, reason, rules)  plus the ids of the
        pattern rows that decided the reason or that say the same reason
        (patterns.ruleset(trace=True); else ())
    class_of(reason, status, code) -> "hard" | "soft" | "complaint" | "unknown"
    EARLY: the narrow reasons whose text wins over any status code
    REASONS: dict reason -> one-line meaning (the fixed vocabulary)
    HARD: the reasons that make an address permanently bad

Decision order (first hit wins):
  1. 2.x.x / 2xx                                  -> delivered
  2. narrow text reasons (mailbox full, too big, limits, suspended, moved,
     relaying denied) -- these are what a generic x.1.1 or 5.7.1 means
  3. a specific enhanced status code (5.1.1, 5.2.2, 5.7.26, ...)
     (a user-unknown code yields to text that blames the content, a policy,
     a filter, our IP or our sender and says nothing about the mailbox:
     gateways and servers that block us often answer 5.1.1 for every address)
  4. the text pattern table (patterns.TEXT_ORDER; content verdicts --
     virus, spam -- come before "user unknown": a gateway that rejects the
     content often words it as a recipient failure)
  5. a weak status code (5.2.1, 5.7.1, x.4.x, ...)
  6. "onhold" when there is text we cannot read, else "undefined".
  A user-unknown reply to DATA (after the recipient was accepted) is a
  content filter in disguise: "filtered".

Reason vocabulary (fixed; REASONS holds the same text):
  userunknown     the mailbox does not exist at the destination
  hostunknown     the recipient domain does not exist or has no mail host
  mailboxfull     the mailbox is over quota
  filtered        the recipient's filter or the destination refused it after accepting the address
  blocked         our IP or host is blocked (RBL, reputation, refused connection or greeting)
  spamdetected    the content was judged spam
  policyviolation the message broke a local policy (attachments, content rules, groups)
  rejected        the envelope sender was refused (sender address, domain, moderation)
  expired         delivery kept failing until the queue lifetime ran out
  mesgtoobig      the message is larger than the destination accepts
  suspend         the mailbox exists but is disabled or suspended
  systemerror     a temporary or internal failure of the remote system
  networkerror    DNS or network trouble reaching the destination
  hasmoved        the address has moved (5.1.6); the address is gone
  notaccept       the domain accepts no mail (null MX, no MX)
  securityerror   authentication or TLS was required, or access was denied
  virusdetected   the content carried a virus or malware
  toomanyconn     too many connections or recipients in one session
  speeding        we are sending faster than the destination allows
  exceedlimit     a per-message limit other than size (recipients, header size)
  norelaying      the server refused to relay for us
  authfailure     SPF, DKIM or DMARC did not authenticate the message
  badreputation   our IP or domain reputation is too low
  requireptr      our IP has no (matching) reverse DNS
  contenterror    malformed content (headers, MIME, 8-bit data)
  syntaxerror     an SMTP syntax or sequence error
  mailererror     a local delivery program failed (pipe, procmail, mail.local)
  systemfull      the destination's disk or system is full
  notcompliantrfc the message does not conform to RFC 5322
  failedstarttls  STARTTLS could not be negotiated
  onhold          a failure whose cause the text does not reveal
  undefined       no information at all
  feedback        a complaint or feedback report (ARF)
  vacation        an auto-reply, not a failure
  delivered       a success notice

Hard vs soft (the address itself is permanently bad, not "the code was 5xx"):
hard = userunknown, hostunknown, hasmoved, and notaccept unless the code is
4xx; feedback = complaint; delivered and vacation = unknown (not failures);
everything else soft.
"""

from __future__ import annotations

import re

from mta.mail.bounces.patterns import fired, match_reason, matches, tracing

REASONS = {
    "userunknown": "the mailbox does not exist at the destination",
    "hostunknown": "the recipient domain does not exist or has no mail host",
    "mailboxfull": "the mailbox is over quota",
    "filtered": "the recipient's filter or the destination refused it after accepting the address",
    "blocked": "our IP or host is blocked (RBL, reputation, refused connection or greeting)",
    "spamdetected": "the content was judged spam",
    "policyviolation": "the message broke a local policy (attachments, content rules, groups)",
    "rejected": "the envelope sender was refused (sender address, domain, moderation)",
    "expired": "delivery kept failing until the queue lifetime ran out",
    "mesgtoobig": "the message is larger than the destination accepts",
    "suspend": "the mailbox exists but is disabled or suspended",
    "systemerror": "a temporary or internal failure of the remote system",
    "networkerror": "DNS or network trouble reaching the destination",
    "hasmoved": "the address has moved (5.1.6); the address is gone",
    "notaccept": "the domain accepts no mail (null MX, no MX)",
    "securityerror": "authentication or TLS was required, or access was denied",
    "virusdetected": "the content carried a virus or malware",
    "toomanyconn": "too many connections or recipients in one session",
    "speeding": "we are sending faster than the destination allows",
    "exceedlimit": "a per-message limit other than size (recipients, header size)",
    "norelaying": "the server refused to relay for us",
    "authfailure": "SPF, DKIM or DMARC did not authenticate the message",
    "badreputation": "our IP or domain reputation is too low",
    "requireptr": "our IP has no (matching) reverse DNS",
    "contenterror": "malformed content (headers, MIME, 8-bit data)",
    "syntaxerror": "an SMTP syntax or sequence error",
    "mailererror": "a local delivery program failed (pipe, procmail, mail.local)",
    "systemfull": "the destination's disk or system is full",
    "notcompliantrfc": "the message does not conform to RFC 5322",
    "failedstarttls": "STARTTLS could not be negotiated",
    "onhold": "a failure whose cause the text does not reveal",
    "undefined": "no information at all",
    "feedback": "a complaint or feedback report (ARF)",
    "vacation": "an auto-reply, not a failure",
    "delivered": "a success notice",
}
HARD = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

EARLY = ("mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying")

# Codes whose meaning is specific enough to trust over most text.
_STRONG = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.4": "userunknown",
    "1.5": "userunknown", "1.6": "hasmoved", "1.7": "rejected", "1.8": "rejected",
    "1.10": "userunknown", "2.2": "mailboxfull", "2.3": "exceedlimit", "3.1": "systemfull",
    "3.2": "notaccept", "3.4": "mesgtoobig", "4.4": "hostunknown", "4.6": "networkerror",
    "4.7": "expired", "5.3": "toomanyconn", "6.0": "contenterror", "6.1": "contenterror",
    "6.2": "contenterror", "6.3": "contenterror", "6.4": "contenterror", "6.5": "contenterror",
    "7.13": "suspend", "7.23": "authfailure", "7.24": "authfailure", "7.25": "requireptr",
    "7.26": "authfailure", "7.27": "notaccept", "7.509": "authfailure", "7.606": "blocked",
    "7.7": "policyviolation", "7.17": "suspend", "7.18": "suspend", "7.15": "policyviolation",
    "2.4": "systemerror", "3.5": "systemerror", "4.3": "systemerror", "7.28": "blocked",
}
# Codes that only hint; text wins when it says anything.
_WEAK = {
    "2.1": "filtered", "2.0": "filtered", "3.0": "systemerror", "3.3": "systemerror",
    "4.0": "networkerror", "4.1": "expired", "4.2": "expired", "4.5": "toomanyconn",
    "5.0": "syntaxerror", "5.1": "syntaxerror", "5.2": "syntaxerror", "5.4": "syntaxerror",
    "7.0": "securityerror", "7.1": "securityerror", "7.2": "securityerror", "7.5": "securityerror",
    "7.8": "securityerror", "7.9": "policyviolation", "7.10": "securityerror",
    "7.515": "securityerror", "1.0": "userunknown",
}
_ESC_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_WS = re.compile(r"\s+")
_SENDER_CMDS = ("MAIL",)
_FILTER_HINT = ("2.0", "2.1", "7.1", "7.0")
_CONTENT_CMDS = ("DATA", "BDAT", "BODY")
# What a user-unknown code (x.1.1, ...) really means when the text says one
# of these and nothing about the mailbox: a gateway (content or policy
# filter, appliance or hosted filtering service) or a block answered with
# the wrong code; the address may well exist.
_NOT_THE_ADDRESS = ("virusdetected", "spamdetected", "policyviolation", "norelaying",
                    "blocked", "rejected", "notaccept", "filtered")


def class_of(reason: str, status: str | None = None, code: int | None = None) -> str:
    if reason == "feedback":
        return "complaint"
    if reason in ("delivered", "vacation"):
        return "unknown"
    if reason == "notaccept":
        temp = (status or "").startswith("4") or (code is not None and 400 <= code < 500)
        return "soft" if temp else "hard"
    return "hard" if reason in HARD else "soft"


def _reason(status: str, code: int | None, text: str,
            command: str | None) -> tuple[str, str | None]:
    """(reason, the text-table reason that decided it, or None when a code did)."""
    if status.startswith("2") or (code is not None and 200 <= code < 300):
        return "delivered", None
    early = match_reason(text, EARLY)
    if early:
        return early, early
    sub = status.split(".", 1)[1] if status.count(".") == 2 else ""
    strong = _STRONG.get(sub)
    if strong == "userunknown":
        for other in _NOT_THE_ADDRESS:
            if matches(other, text) and not matches("userunknown", text):
                return other, other
        return strong, None
    if strong:
        return strong, None
    reason = match_reason(text)
    if reason == "userunknown" and command != "RCPT":
        # "User unknown" in answer to DATA (or with a filter-ish code such as
        # 5.2.1/5.7.1) comes from a content or domain filter: the address
        # was accepted at RCPT, so it is not proof that it does not exist.
        if command in _CONTENT_CMDS or (command is None and sub in _FILTER_HINT):
            return "filtered", reason
    if reason in ("userunknown", "hostunknown") and command in _SENDER_CMDS:
        return "rejected", reason   # answered MAIL FROM: it is about our sender
    if reason == "hostunknown" and (status.startswith("4") or (code or 0) // 100 == 4):
        return "networkerror", reason   # a temporary DNS failure is not a missing domain
    if reason:
        return reason, reason
    weak = _WEAK.get(sub)
    if weak:
        return ("rejected" if weak == "userunknown" and command in _SENDER_CMDS else weak), None
    return ("onhold" if text.strip() else "undefined"), None


def classify(status: str | None, code: int | None, text: str,
             *, command: str | None = None) -> tuple[str, str]:
    class_, reason, _rules = classify_traced(status, code, text, command=command)
    return class_, reason


def classify_traced(status: str | None, code: int | None, text: str,
                    *, command: str | None = None) -> tuple[str, str, tuple[str, ...]]:
    """`classify`, plus the ids of the table rows that decided the reason
    (only inside `patterns.ruleset(trace=True)`; else ())."""
    text = _WS.sub(" ", (text or "").lower())
    status = status or ""
    if not status:
        m = _ESC_RE.search(text)
        if m and (code is None or str(code)[0] == m.group(1)):
            status = m.group(0)
    reason, via = _reason(status, code, text, (command or "").upper() or None)
    rules: tuple[str, ...] = ()
    if tracing():
        # the rows that decided, and the rows that say the same as the verdict
        rules = fired(via, text) if via else ()
        if reason != via:
            rules += fired(reason, text)
    return class_of(reason, status, code), reason, rules
