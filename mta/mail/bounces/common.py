"""Helpers shared by the detectors: addresses, status codes, recipient building.

Public API:
    ADDR_RE                      an e-mail address in free text
    clean_address(s) -> str      "rfc822; <A@B>" / "mailto:a@b" -> "A@B" ("" if none)
    find_status(text) -> str     the most telling RFC 3463 code in text ("" if none)
    find_code(text) -> int|None  the SMTP reply code of the failure in text
    find_command(text) -> str|None  the SMTP command a reply answered (RCPT, DATA, ...)
    make_recipient(address, *, action, status, diagnostic, remote_mta, text,
                   feedback_type) -> BounceRecipient   status/code/class filled in
    collapse(text) -> str        whitespace runs to one space, stripped
    segments(notice, [(addr, pos)]) -> [(addr, chunk)]  per-recipient text chunks
    last_match(matches) -> Match|None  the last of an iterator of regex matches

Invariants: pure functions over str; a status taken from text must agree in
its class digit with the reply code next to it, so "550 4.4.7" picks 4.4.7
only when no better code exists.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

from mta.mail.bounces import rhost
from mta.mail.bounces.classify import class_of, classify_traced
from mta.mail.bounces.model import BounceRecipient
from mta.mail.bounces.patterns import tracing

ADDR_RE = re.compile(
    r"(?<![\w.+=/%-])([\w.!#$%&'*+/=?^`{|}~-]{1,64}@(?:[\w-]+\.)+[A-Za-z][\w-]*[A-Za-z0-9])"
    r"(?![\w-]*\()", re.UNICODE)
_WS = re.compile(r"\s+")
_CODE_ESC = re.compile(r"(?<![\d.])([45]\d\d)[ \-:'\"]*(?:\(?#?)([245]\.\d{1,3}\.\d{1,3})(?![\d])")
_ESC = re.compile(r"(?<![\d.\w])#?([45]\.\d{1,3}\.\d{1,3})(?![\d]|\.\d)")
_CODE = re.compile(r"(?:^|[\s'\"(:\[<>]|said:|code:?|reply:|error_code\s?:|responsecode\s?)"
                   r"([245][0-5]\d)(?=[\s\-:;,.)\]'\"]|$)(?![.\d]+\.\d)", re.IGNORECASE | re.M)
_COMMAND = re.compile(
    r"\b(?:after|in reply to|in response to|while sending|during|rejected at)\s+(?:the\s+)?"
    r"(?:end of\s+(?:data|message)|(RCPT(?:\s+TO)?\b|MAIL\s+FROM|MAIL(?=\s+command)|DATA\b|"
    r"BDAT|EHLO|HELO|STARTTLS|initial connection|connect(?:ion)?\b|final data))"
    r"|>>> ?(RCPT|MAIL|DATA|EHLO|HELO|QUIT|RSET)\b|\bin: (RCPT|MAIL|DATA)\b"
    r"|\bcommand\W{0,12}(RCPT|MAIL|DATA)\b", re.IGNORECASE)


def collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


_UTF8_XTEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _unxtext(m: re.Match[str]) -> str:
    n = int(m.group(1), 16)
    return chr(n) if n <= 0x10FFFF else m.group(0)


def clean_address(s: str) -> str:
    s = s or ""
    kind, sep, rest = s.partition(";")
    if sep and kind.strip().lower() == "utf-8":     # RFC 6533 §3: utf-8-addr-xtext
        s = _UTF8_XTEXT.sub(_unxtext, rest)
    m = ADDR_RE.search(s)
    if not m:
        return ""
    addr = m.group(1).strip(".'\"")
    if addr.lower().startswith("mailto:"):
        addr = addr[7:]
    return addr


def find_status(text: str) -> str:
    """The enhanced code of the failure: prefer one glued to a reply code."""
    best = ""
    for m in _CODE_ESC.finditer(text):
        code, esc = m.group(1), m.group(2)
        if code[0] == esc[0]:
            if not best or (best.endswith(".0.0") and not esc.endswith(".0.0")):
                best = esc
                if not esc.endswith(".0.0"):
                    return best
    if best:
        return best
    for m in _ESC.finditer(text):
        esc = m.group(1)
        if not best or (best.endswith(".0.0") and not esc.endswith(".0.0")):
            best = esc
            if not esc.endswith(".0.0"):
                break
    return best


def find_code(text: str) -> int | None:
    m = _CODE_ESC.search(text)
    if m and m.group(1)[0] == m.group(2)[0]:
        return int(m.group(1))
    for m in _CODE.finditer(text):
        code = int(m.group(1))
        if code >= 400:
            return code
    return None


def last_match(matches: Iterable[re.Match[str]]) -> re.Match[str] | None:
    """The last of `matches` (None when there is none), holding one at a time."""
    tail = deque(matches, maxlen=1)
    return tail[0] if tail else None


def find_command(text: str) -> str | None:
    m = last_match(_COMMAND.finditer(text))    # the last command is the one that failed
    if m is None:
        return None
    word = (m.group(1) or m.group(2) or m.group(3) or m.group(4) or "DATA").upper()
    if word.startswith("RCPT"):
        return "RCPT"
    if word.startswith("MAIL"):
        return "MAIL"
    if word in ("DATA", "BDAT", "FINAL DATA"):
        return "DATA"
    if word.startswith("CONNECT") or word == "INITIAL CONNECTION":
        return "CONN"
    return word


def segments(notice: str, found: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """Split notice into one chunk per recipient: from the line of its first
    mention up to the line of the next recipient's first mention."""
    found = sorted(found, key=lambda t: t[1])
    out: list[tuple[str, str]] = []
    for i, (addr, pos) in enumerate(found):
        start = notice.rfind("\n", 0, pos) + 1
        if i + 1 < len(found):
            end = notice.rfind("\n", 0, found[i + 1][1]) + 1
        elif out:
            # the last recipient's chunk is about as long as the others; the
            # rest of the notice is boilerplate, not its diagnostic
            longest = max(len(t) for _, t in out)
            cut = notice.find("\n", start + longest + 80)
            end = cut if cut > 0 else len(notice)
        else:
            end = len(notice)
        if end <= start:
            end = len(notice) if i + 1 == len(found) else found[i + 1][1]
        out.append((addr, notice[start:end]))
    return out


def _pick_status(status: str, text: str, code: int | None) -> str:
    """A DSN Status of x.0.0 yields to a more specific code in the diagnostic."""
    found = find_status(text)
    if not status:
        return found
    # Sisimai's rule, and usually right: the code the remote server itself
    # sent (in the diagnostic) is more precise than the reporting MTA's Status.
    if found and found[0] == status[0] and not found.endswith(".0.0"):
        return found
    return status


def make_recipient(address: str, *, action: str = "", status: str = "", diagnostic: str = "",
                   remote_mta: str = "", text: str | None = None, feedback_type: str = "",
                   temporary: bool | None = None, command: str | None = None) -> BounceRecipient:
    diag = collapse(diagnostic)
    basis = collapse(text) if text is not None else diag
    code = find_code(diag) or (find_code(basis) if basis is not diag else None)
    status = _pick_status(status.strip(), diag, code)
    if not status and basis is not diag:
        status = find_status(basis)
    if command is None:
        command = find_command(diag) or (find_command(basis) if basis is not diag else None)
    class_, reason, rules = classify_traced(status or None, code, diag or basis, command=command)
    if reason in ("onhold", "undefined") and basis is not diag and basis:
        class_, reason, rules = classify_traced(status or None, code, basis, command=command)
    adjusted, rule = rhost.adjust(address, reason, status, command, diag or basis)
    if adjusted != reason:
        reason, class_ = adjusted, class_of(adjusted, status, code)
        rules = (rule,) if tracing() else ()
    if not status:
        if code:
            digit = str(code)[0]
        elif temporary is not None:
            digit = "4" if temporary else "5"
        else:
            digit = "4" if action == "delayed" else "5"
        if reason == "delivered":
            digit = "2"
        status = f"{digit}.0.0"
    return BounceRecipient(address=address, action=action, status=status, diagnostic=diag,
                           class_=class_, reason=reason, replycode=code, remote_mta=remote_mta,
                           feedback_type=feedback_type, rules=rules)
