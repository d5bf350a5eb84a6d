"""When a scheduled send is due: one parser for the HTTP API and SMTP.

One job: read the time a client asks a message to be sent at (the API's
`scheduled_at`, the SMTP submission header `Scheduled-At:`) and check it.

API:
    MAX_AHEAD = 30 days
    parse_schedule(text, now, *, max_ahead=MAX_AHEAD) -> float   Unix time
        ValueError with a message meant for the client

Accepted: ISO 8601 with a time zone ("2026-12-07T10:00:00Z",
"2026-12-07T11:00:00+01:00", fractional seconds allowed) or an RFC 5322
date ("Mon, 07 Dec 2026 10:00:00 +0000", what a Date: header holds). A time
without a zone is refused (whose 10:00?), as are natural-language phrases
("in 1 hour": Resend takes them, we do not: say so). A time in the past is
"now" (a client's clock a little behind must not fail a send); more than
`max_ahead` in the future is refused.
"""

from __future__ import annotations

import datetime as dt
import email.utils

__all__ = ["MAX_AHEAD", "parse_schedule"]

MAX_AHEAD = 30 * 86400.0


def parse_schedule(text: str, now: float, *, max_ahead: float = MAX_AHEAD) -> float:
    value = text.strip()
    if not value or len(value) > 64 or not value.isascii():
        raise ValueError("not a date and time: give ISO 8601 with a time zone, "
                         "e.g. 2026-12-07T10:00:00Z")
    when: dt.datetime | None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
    if when is None:
        raise ValueError(f"{value!r} is not ISO 8601 (e.g. 2026-12-07T10:00:00Z); "
                         "natural-language times are not accepted")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{value!r} has no time zone: add Z or an offset like +01:00")
    try:
        at = when.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{value!r} is out of range") from None
    if at > now + max_ahead:
        raise ValueError(f"{value!r} is more than {int(max_ahead // 86400)} days ahead")
    return max(at, now)
