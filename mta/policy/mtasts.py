"""MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, MX patterns.

One job: turn what DNS and the policy host returned into values, strictly,
and say which MX hosts a policy allows. Pure: strings in, values out; the
fetching, caching and clock live with the caller.

Public API:
    MAX_POLICY_BYTES = 65536      a larger policy file is an error
    MAX_AGE_MAX = 31557600        a larger max_age is an error (RFC 8461 §3.2)
    MAX_AGE_MIN = 86400           a smaller max_age is raised to this
    MODES = ("enforce", "testing", "none")
    StsError(reason)              ValueError; .reason: one line naming what is wrong
    parse_txt(records) -> str     the TXT strings of `_mta-sts.<domain>` (each
                                  record's strings already joined) -> the policy id
    StsPolicy(mode, mx, max_age, id="")   frozen; id is the TXT id, set by the caller
        .matches(host) -> bool    some mx pattern matches host
    parse_policy(text) -> StsPolicy        the body of .well-known/mta-sts.txt
    mx_matches(pattern, host) -> bool

The TXT record (RFC 8461 §3.1):
  * Records that do not start with "v=STSv1" (then end, ";" or blank) are
    ignored; none left, or more than one, is an error.
  * Fields are `name=value` separated by ";" with optional blanks around it,
    a trailing ";" allowed; `id` (1..32 letters and digits, case kept) is
    required and appears once; other names are extensions (syntax checked,
    value ignored).

The policy file (RFC 8461 §3.2):
  * Lines end with LF or CRLF; blanks at a line's end are dropped; empty
    lines are skipped (the ABNF allows one final line end; real files often
    carry more, and they carry no meaning). Each other line is
    `key:` blanks `value`, the key 1..32 characters (letter or digit first,
    then letters, digits, "_", "-", "."), case-sensitive. Any order.
  * version must be "STSv1"; mode one of MODES; max_age 1..10 digits and at
    most MAX_AGE_MAX; mx (repeatable) "[*.]domain" with LDH labels. version,
    mode and max_age are required and may appear once; at least one mx is
    required unless mode is "none". Unknown keys are ignored, values too.
  * Control characters (other than tab) anywhere are an error; non-ASCII is
    an error except in an unknown key's value (the RFC allows UTF-8 there).
  * Over MAX_POLICY_BYTES (UTF-8) is an error, checked before any parsing.

Invariants:
  * max_age is clamped up to MAX_AGE_MIN: a policy whose owner asks to be
    forgotten within the hour would otherwise be fetched again for nearly
    every message; the TXT id check (RFC 8461 §5.1) still notices a changed
    policy at once, so the longer life costs nothing in freshness.
  * mx patterns are kept lower-case, without a trailing dot, deduplicated,
    in file order.
  * An error's reason names the field or line and shows at most 40
    characters of the offending value, repr-escaped (network input: never
    raw control bytes in a log line).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_AGE_MAX", "MAX_AGE_MIN", "MAX_POLICY_BYTES", "MODES", "StsError",
           "StsPolicy", "mx_matches", "parse_policy", "parse_txt"]

MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_MAX = 31_557_600
MAX_AGE_MIN = 86_400
MODES = ("enforce", "testing", "none")

_WSP = " \t"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_TXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")     # no "=", ";", blanks, controls
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_REQUIRED = ("version", "mode", "max_age")


class StsError(ValueError):
    """A TXT record or policy file that is not valid; .reason says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _show(value: str) -> str:
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


@dataclass(frozen=True)
class StsPolicy:
    """A parsed policy. `mx` holds lower-case patterns; `id` is the TXT id."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, not {_show(self.mode)}")

    def matches(self, host: str) -> bool:
        """Whether some mx pattern of the policy matches `host`."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


# --- the TXT record ----------------------------------------------------------

def _is_sts_record(record: str) -> bool:
    return record.startswith("v=STSv1") and (len(record) == 7 or record[7] in _WSP + ";")


def parse_txt(records: Sequence[str]) -> str:
    """The policy id from the `_mta-sts.<domain>` TXT records (StsError if none
    or more than one is a v=STSv1 record, or that record is not valid)."""
    candidates = [r for r in records if _is_sts_record(r)]
    if not candidates:
        raise StsError("no v=STSv1 TXT record")
    if len(candidates) > 1:
        raise StsError(f"{len(candidates)} v=STSv1 TXT records: exactly one is allowed")
    fields = [f.strip(_WSP) for f in candidates[0].split(";")]
    if fields[0] != "v=STSv1":
        raise StsError(f"TXT v: must be exactly v=STSv1, not {_show(fields[0])}")
    if len(fields) > 1 and fields[-1] == "":
        fields.pop()                                 # a trailing ";"
    policy_id: str | None = None
    for position, field in enumerate(fields[1:], start=2):
        name, eq, value = field.partition("=")
        if not field:
            raise StsError(f"TXT field {position}: empty")
        if not eq or not _NAME.fullmatch(name) or not _TXT_VALUE.fullmatch(value):
            raise StsError(f"TXT field {position}: not name=value: {_show(field)}")
        if name == "id":
            if policy_id is not None:
                raise StsError("TXT id: appears more than once")
            if not _ID.fullmatch(value):
                raise StsError(f"TXT id: must be 1 to 32 letters or digits, not {_show(value)}")
            policy_id = value
        elif name == "v":
            raise StsError("TXT v: appears more than once")
    if policy_id is None:
        raise StsError("TXT id: missing")
    return policy_id


# --- the policy file ---------------------------------------------------------

def _lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) for each non-empty line; StsError on syntax."""
    out: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        bad = _CONTROL.search(line)
        if bad:
            raise StsError(f"line {number}: control character {bad.group()!r}")
        line = line.rstrip(_WSP)
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise StsError(f"line {number}: not 'key: value': {_show(line)}")
        if not _NAME.fullmatch(key):
            raise StsError(f"line {number}: bad key {_show(key)}")
        value = value.lstrip(_WSP)
        if key in ("version", "mode", "max_age", "mx") and not value.isascii():
            raise StsError(f"{key}: non-ASCII value {_show(value)}")
        out.append((number, key, value))
    return out


def _mx_pattern(value: str) -> str:
    pattern = value.lower().removesuffix(".")
    name = pattern.removeprefix("*.")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise StsError(f"mx: not a host name or *.pattern: {_show(value)}")
    return pattern


def _max_age(value: str) -> int:
    if not _MAX_AGE.fullmatch(value):
        raise StsError(f"max_age: must be 1 to 10 digits, not {_show(value)}")
    seconds = int(value)
    if seconds > MAX_AGE_MAX:
        raise StsError(f"max_age: {seconds} is over the maximum {MAX_AGE_MAX}")
    return max(seconds, MAX_AGE_MIN)


def parse_policy(text: str) -> StsPolicy:
    """The policy file's text -> StsPolicy (id ""); StsError naming what is wrong."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise StsError(f"policy: larger than {MAX_POLICY_BYTES} bytes")
    seen: dict[str, str] = {}
    mx: list[str] = []
    for number, key, value in _lines(text):
        if key == "mx":
            pattern = _mx_pattern(value)
            if pattern not in mx:
                mx.append(pattern)
        elif key in _REQUIRED:
            if key in seen:
                raise StsError(f"{key}: appears more than once (line {number})")
            seen[key] = value
    for key in _REQUIRED:
        if key not in seen:
            raise StsError(f"{key}: missing")
    if seen["version"] != "STSv1":
        raise StsError(f"version: must be STSv1, not {_show(seen['version'])}")
    mode = seen["mode"]
    if mode not in MODES:
        raise StsError(f"mode: must be one of {', '.join(MODES)}, not {_show(mode)}")
    max_age = _max_age(seen["max_age"])
    if not mx and mode != "none":
        raise StsError(f"mx: missing (required in mode {mode})")
    return StsPolicy(mode=mode, mx=tuple(mx), max_age=max_age)


# --- MX patterns ---------------------------------------------------------------

def mx_matches(pattern: str, host: str) -> bool:
    """Whether MX `host` matches policy `pattern` (RFC 8461 §4.1): equal names,
    or "*.rest" and host is one more label (not empty, no "*") before "rest".
    Case-insensitive; one trailing dot on either side is ignored."""
    p = pattern.lower().removesuffix(".")
    h = host.lower().removesuffix(".")
    if not h or "*" in h or not p:
        return False
    if p.startswith("*."):
        suffix = p[1:]                                  # ".example.com"
        first = h[: -len(suffix)] if h.endswith(suffix) else ""
        return bool(first) and "." not in first and len(suffix) > 1
    return p == h
