"""RFC 3464 field blocks ("Final-Recipient: rfc822; a@b") from text.

Public API:
    parse_fields(text) -> (per_message: Fields, recipients: list[Fields])
    Fields = dict[str, str]
        Keys are lower-cased field names; values are unfolded strings.
        A new recipient block starts at a Final-Recipient (or an
        Original-Recipient) when the current block already has one, so
        blocks whose blank separator lines were lost still split right.
    has_fields(text) -> bool   True when text carries recipient DSN fields

Invariants: tolerant of missing blank lines, CRLF, odd case, leading spaces,
"> " quoting (a DSN forwarded inline)
and repeated fields (the first value is kept, except Diagnostic-Code lines,
which are joined).
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"^\s{0,3}([A-Za-z][A-Za-z0-9-]{1,40})\s*:\s?(.*)$")
_RCPT_FIELDS = {"final-recipient", "original-recipient", "action", "status", "remote-mta",
                "diagnostic-code", "last-attempt-date", "will-retry-until", "x-actual-recipient",
                "final-log-id", "x-supplementary-info", "x-display-name"}
_REPEAT = {"final-recipient", "original-recipient", "action", "status"}
_HAS = re.compile(r"^[\s>]*(?:final|original)-recipient\s*:", re.IGNORECASE | re.M)
_QUOTED = re.compile(r"^> ?", re.M)
_PER_MESSAGE_PREFIXES = ("reporting", "arrival", "received-from", "original-envelope")

Fields = dict[str, str]


def has_fields(text: str) -> bool:
    return bool(_HAS.search(text))


def parse_fields(text: str) -> tuple[Fields, list[Fields]]:
    per_message: Fields = {}
    recipients: list[Fields] = []
    current: Fields | None = None
    last_key: str | None = None
    last_target: Fields | None = None
    if "\n>" in text or text.startswith(">"):
        text = _QUOTED.sub("", text)        # a DSN quoted in a forwarded message
    for line in text.split("\n"):
        if not line.strip():
            last_key = None
            continue
        m = _FIELD.match(line)
        if line[0] in " \t" and last_key and last_target is not None and not (
                m and m.group(1).lower() in _RCPT_FIELDS):
            last_target[last_key] += " " + line.strip()
            continue
        if not m:
            last_key = None
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key in _RCPT_FIELDS:
            if current is None or (key in _REPEAT and key in current) or (
                    key == "original-recipient" and "status" in current
                    and "final-recipient" in current):
                current = {}
                recipients.append(current)
            target = current
        else:
            target = per_message if current is None else current
            if current is not None and key not in per_message and key.startswith(
                    _PER_MESSAGE_PREFIXES):
                target = per_message
        if key in target:
            if key == "diagnostic-code":
                target[key] += " " + value
            last_key, last_target = (key, target) if key == "diagnostic-code" else (None, None)
            continue
        target[key] = value
        last_key, last_target = key, target
    return per_message, recipients
