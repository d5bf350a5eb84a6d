"""The age buckets of the queue summary (Postfix qshape's columns).

One job: name the buckets once, for the spool that counts recipients into
them (spool/index.py, in SQL), the admin API that serves them, its OpenAPI
schema and the CLI table that prints them.

Public API:
    AGE_BUCKET_MINUTES   (5, 10, 20, …, 1280): each bucket's upper bound
    AGE_BUCKETS          ("5m", "10m", …, "1280m", "1280m+"): the keys of
                         a summary's "age_buckets", in column order
    age_bucket(age_seconds) -> str   the bucket of a message that old

Invariant: the buckets double (qshape's default): "5m" counts the youngest
messages, "1280m+" everything older than 1280 minutes.
"""

from __future__ import annotations

__all__ = ["AGE_BUCKET_MINUTES", "AGE_BUCKETS", "age_bucket"]

AGE_BUCKET_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
AGE_BUCKETS = tuple(f"{m}m" for m in AGE_BUCKET_MINUTES) + (f"{AGE_BUCKET_MINUTES[-1]}m+",)


def age_bucket(age_seconds: float) -> str:
    """The AGE_BUCKETS key for a message queued `age_seconds` ago: "5m" for
    under 5 minutes, "10m" for 5 to under 10, …, "1280m+" from 1280 on."""
    for minutes in AGE_BUCKET_MINUTES:
        if age_seconds < minutes * 60:
            return f"{minutes}m"
    return AGE_BUCKETS[-1]
