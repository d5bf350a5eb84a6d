"""Log lines: `event=name key=value …`, safe for any client-supplied value.

API
    event(log, name, level=logging.INFO, **fields)
        renders ``event=name k=v …``; a value made only of _SAFE characters
        is written as is, any other is JSON-quoted (so spaces, quotes and
        "k=v" look-alikes inside a value cannot forge a field)
    escape_controls(text) -> str
        C0 and C1 control characters, DEL and the Unicode line/paragraph
        separators as \\xNN / \\uNNNN; everything else unchanged

Invariant: the daemon's formatter (runtime/logs.py) passes every record's
message and traceback through escape_controls, whoever logged it (our code,
aiosmtpd echoing an unknown command, a library), so no byte a client sent
can end a log line early, forge a new one or drive the operator's terminal
(ESC sequences). Stdlib only.
"""

from __future__ import annotations

import json
import logging
import re

__all__ = ["event", "escape_controls", "fmt_value"]

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@/+=<>[],")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape_controls(text: str) -> str:
    return _CONTROLS.sub(_escape, text)


def fmt_value(v: object) -> str:
    s = "" if v is None else str(v)
    if s and all(c in _SAFE for c in s):
        return s
    return json.dumps(s, ensure_ascii=False)


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    if log.isEnabledFor(level):
        parts = [f"event={name}"] + [f"{k}={fmt_value(v)}" for k, v in fields.items()]
        log.log(level, " ".join(parts))
