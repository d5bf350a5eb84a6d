"""How the CLI prints times: ISO 8601 UTC, and how far from now.

One job: the one timestamp format of every `mta` command's table output
(`2026-11-24 03:00:00Z`) and the relative form next to it (`in 4m`,
`2h5m ago`), so no command prints a raw epoch or its own variant.

Public API:
    utc(t) -> "2026-11-24 03:00:00Z"          t: Unix seconds
    utc_or(t, missing="-") -> str             `missing` when t is None or 0
    span(seconds) -> "1d1h"                   its two largest units
    when(t, now=None) -> "… (in 4m)"          utc_or plus the distance from now

Invariant: --json output never goes through here (it keeps the API's
numbers); only tables and lines for people do.
"""

from __future__ import annotations

import time

__all__ = ["utc", "utc_or", "span", "when"]


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def utc_or(t: float | None, missing: str = "-") -> str:
    """`utc(t)`, or `missing` when there is no time (None, or the 0 of a
    field never set)."""
    return missing if not t else utc(t)


def span(seconds: float) -> str:
    """A coarse duration: its two largest units (90061 s → ``1d1h``)."""
    rest, parts = round(seconds), list[str]()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n or parts:
            parts.append(f"{n}{unit}" if n else "")
        if len(parts) == 2:
            break
    return "".join(parts) or "0s"


def when(t: float | None, now: float | None = None) -> str:
    """`utc_or(t)` plus how far from now: ``2026-11-24 03:04:00Z (in 4m)``."""
    if not t:
        return "-"
    delta = t - (time.time() if now is None else now)
    rel = "now" if abs(delta) < 1 else (f"in {span(delta)}" if delta > 0
                                        else f"{span(-delta)} ago")
    return f"{utc(t)} ({rel})"
