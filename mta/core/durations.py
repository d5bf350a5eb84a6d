"""Durations written the way operators write them: ``30s``, ``5m``, ``1h``, ``5d``.

`parse_duration("1h30m") == 5400.0`; a bare number is rejected (units are
required so ``"5"`` is never silently seconds or minutes).
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> float:
    if not isinstance(text, str):
        raise DurationError(f"{text!r} is not a duration")
    s = text.strip().lower()
    pos, total = 0, 0.0
    if not s:
        raise DurationError(f"{text!r} is not a duration")
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise DurationError(f"{text!r} is not a duration")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """Inverse of `parse_duration` for whole units: 300 → ``5m``, 5400 → ``1h30m``."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    rest = int(round(seconds))
    if rest == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
