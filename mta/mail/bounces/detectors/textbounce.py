"""Non-standard failure notices (kind "bounce"): generic text extraction.

Public API: detect(mail) -> BounceReport | None
            candidates(mail, notice) -> [(address, position)]  (also the DSN fallback)

How it reads a notice (Postfix, Exim, Sendmail, qmail, Exchange, Gmail,
Yahoo, Notes, Courier, ... all share this shape: boilerplate, then per
recipient an address followed by the remote reply):
  1. recipients: X-Failed-Recipients if present, else every address in the
     notice part (before the returned message) that is not the bounce's own
     From/To, the original sender, an envelope-sender mention ("MAIL FROM:",
     "generated from") or inside a URL / Message-ID; when a list heading
     ("did not reach the following recipient(s):") precedes some of them,
     only those after it (above it is the returned message's To/Cc summary);
  2. each recipient's diagnostic is the text from its first mention up to
     the next recipient's first mention -- except in Sendmail transcripts
     without an address list, where a recipient's block ends at its
     "554 <addr>... reason" summary line;
  3. status, reply code, SMTP command and reason come from that segment,
     falling back to the whole notice for a single recipient;
  4. no address in the notice: the To of the returned message (`inferred`).
Only fires when signals.looks_like_bounce says this is a failure notice.
"""

from __future__ import annotations

import re

from mta.mail.bounces.common import (ADDR_RE, clean_address, last_match, make_recipient,
                                     segments)
from mta.mail.bounces.context import Mail
from mta.mail.bounces.message import header
from mta.mail.bounces.model import BounceReport
from mta.mail.bounces.signals import looks_like_bounce, says_temporary

# An address right after these words is the sender or an alias, not a recipient.
_NOT_RCPT_BEFORE = re.compile(
    r"(?:mail from|envelope-from|return-path|sender|from|generated from|message-id|"
    r"in-reply-to|references|reply-to|(?<!generated )\bby|contact|errors-to|id)"
    r"\s*[:=]?\s*<?\s*$", re.I)
# "... did not reach the following recipient(s):" -- addresses above such a
# list heading (a summary of the returned message: To, Cc) are not the list.
_LIST_HEAD = re.compile(
    r"\bfollowing (?:recipients?|addresses|address|destinations?)\b[^\n]{0,40}?:", re.I)
_LOCAL_SKIP = re.compile(r"^(?:mailer-daemon|mail-daemon|double-bounce)$", re.I)


def candidates(mail: Mail, notice: str) -> list[tuple[str, int]]:
    own = mail.own_addresses
    seen: dict[str, tuple[str, int]] = {}
    for m in ADDR_RE.finditer(notice):
        addr = m.group(1).strip(".")
        low = addr.lower()
        if low.startswith("mailto:"):
            continue
        if low in own or low in seen or _LOCAL_SKIP.match(low.split("@")[0]):
            continue
        before = notice[max(0, m.start() - 24):m.start()]
        if _NOT_RCPT_BEFORE.search(before):
            continue
        if before.endswith(("/", "=", "?")) or notice[m.end():m.end() + 1] in ("/",):
            continue
        seen[low] = (addr, m.start())
    found = list(seen.values())
    head = _LIST_HEAD.search(notice)
    if head and len(found) > 1:
        after = [t for t in found if t[1] >= head.end()]
        if after:
            return after
    return found


_ECHO = re.compile(r"[ \t]*(?:\d{3}[ -]|>>> ?rcpt to:)", re.I)


def _transcript_segments(notice: str, found: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """Sendmail transcripts with no address list on top: each recipient's
    block (greeting, ">>> DATA", "<<< 550 ...") comes *before* its summary
    line "554 <addr>... reason", so a chunk ends at that line instead of
    starting there."""
    if len(found) < 2:
        return []
    ends = []
    for addr, pos in found:
        if not _ECHO.match(notice, notice.rfind("\n", 0, pos) + 1):
            return []
        summary = last_match(re.finditer(r"^[ \t]*\d{3}[ -](?:[245]\.\d{1,3}\.\d{1,3} )?<?"
                                         + re.escape(addr) + r">?\.\.\..*$", notice,
                                         re.M | re.I))
        if summary is None:
            return []
        ends.append((summary.start(), summary.end(), addr))
    ends.sort()
    head = re.search(r"transcript of session follows.*$", notice, re.I | re.M)
    start = head.end() if head and head.end() < ends[0][0] else 0
    out = []
    for line, end, addr in ends:
        # the summary line first: its reply code is the one that counts
        out.append((addr, notice[line:end] + "\n" + notice[start:line]))
        start = end
    return out


def detect(mail: Mail) -> BounceReport | None:
    if not looks_like_bounce(mail):
        return None
    notice = mail.notice
    failed = [clean_address(a) for a in (header(mail.msg, "X-Failed-Recipients") or "").split(",")]
    failed = [a for a in failed if a]
    found = candidates(mail, notice)
    if failed:
        pos = {a.lower(): p for a, p in found}
        found = [(a, pos.get(a.lower(), notice.lower().find(a.lower()))) for a in failed]
        found = [(a, p if p >= 0 else len(notice)) for a, p in found]
    guessed = not found
    if guessed:
        found = [(a, len(notice)) for a in mail.original_to[:1]]
    temp = says_temporary(notice)
    rcpts = []
    chunks = _transcript_segments(notice, found) or segments(notice, found)
    single = len(chunks) == 1
    for addr, seg in chunks:
        body = seg if seg.strip() else notice
        r = make_recipient(addr, action="delayed" if temp else "failed",
                           diagnostic=body, text=notice if single else body, temporary=temp)
        r.inferred = guessed
        rcpts.append(r)
    return BounceReport("bounce", rcpts, detector="textbounce")
