"""Queue ids: 16 characters of Crockford base32, time-ordered.

The first 9 characters are the creation time in milliseconds, the rest are
random, so ids sort by arrival and never collide across restarts.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 32)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_queue_id(now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    rnd = int.from_bytes(os.urandom(5), "big")
    return _b32(ms, 9) + _b32(rnd, 7)
