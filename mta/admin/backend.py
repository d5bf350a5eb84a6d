"""The admin API's one seam: what the HTTP layer asks of the running daemon.

One job: declare `AdminBackend`, the Protocol the runtime implements over the
spool index and the scheduler, plus the vocabulary both sides share (states,
actions, age buckets) and the two exceptions a backend may raise.

Public API:
    AdminBackend                      the Protocol (read models + queue actions)
    MESSAGE_STATES, MESSAGE_ACTIONS, DESTINATION_ACTIONS, AGE_BUCKETS, EVENT_TYPES
    age_bucket(age_seconds) -> str    the qshape bucket an age falls in
    ActionRefused                     -> HTTP 409 (the action cannot apply now)
    NotFound(message)                 a KeyError whose message the 404 carries

Invariants:
- The HTTP layer validates every argument before calling the backend: states
  and actions are members of the tuples below, `limit` is 1..1000, sequence
  numbers 0..2^63-1, queue ids, destination names (normalised, see
  mta.admin.inputs) and webhook names are well formed, and a bulk action
  without any filter arrives only with `all=True`.
- Backends raise `KeyError` (or `NotFound`) for an unknown message id,
  destination or webhook (-> 404), `ValueError` for a malformed cursor
  (-> 400) and `ActionRefused` when an action cannot apply (-> 409). Anything
  else is a 500 with a logged traceback.
- Every return value is plain JSON (dict/list/str/int/float/bool/None);
  times are Unix seconds (float), durations seconds.

Shapes (the public JSON of /v1; `mta queue … --json` prints them as they are):

message (list item)::
    {"id", "sender", "received_at", "size", "is_dsn": bool, "held": bool,
     "done": bool,
     "recipients": [{"address", "state", "attempts", "next_attempt" (null
                     unless queued), "last_reply", "last_remote"}]}

message (detail) — the list item plus::
    "recipients"[i] also has "index" (rcpt_idx) and "domain";
    "attempts": [{"recipient" (address), "at", "duration", "remote_host",
                  "remote_ip", "tls", "reply", "state"}]

destination summary::
    {"destination", "recipients", "held", "oldest_age", "age_buckets":
     {bucket: n for bucket in AGE_BUCKETS}, "last_error", "state"}
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["AdminBackend", "ActionRefused", "NotFound", "MESSAGE_STATES", "MESSAGE_ACTIONS",
           "DESTINATION_ACTIONS", "DESTINATION_STATES", "AGE_BUCKETS", "EVENT_TYPES", "age_bucket"]

# `state` filter of /v1/messages. A message matches when any recipient is in
# the state, except: "held" matches held messages, "deferred" queued
# recipients with at least one attempt, "active" (the default when no state
# is given) messages not yet done, and "all" every message in the index.
MESSAGE_STATES = ("active", "all", "queued", "deferred", "held", "delivered", "bounced",
                  "expired", "suppressed")
MESSAGE_ACTIONS = ("hold", "release", "retry", "bounce", "delete")
DESTINATION_ACTIONS = ("suspend", "resume", "flush")
DESTINATION_STATES = ("active", "throttled", "suspended")
# The ledger's event types (`type` of /v1/events). The same tuple as
# mta.config.EVENT_TYPES, which this layer may not import; a test compares them.
EVENT_TYPES = ("received", "rejected", "suppressed", "queued", "deferred", "delivered",
               "bounced", "expired", "complained", "held", "released", "deleted", "dsn_sent")

# qshape's buckets: "5m" counts ages < 5 minutes, "10m" 5–10 minutes, …,
# "1280m+" 1280 minutes and older.
_BUCKET_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
AGE_BUCKETS = tuple(f"{m}m" for m in _BUCKET_MINUTES) + ("1280m+",)


def age_bucket(age_seconds: float) -> str:
    """The AGE_BUCKETS key for a recipient queued `age_seconds` ago."""
    for minutes in _BUCKET_MINUTES:
        if age_seconds < minutes * 60:
            return f"{minutes}m"
    return "1280m+"


class ActionRefused(Exception):
    """The action does not apply to the message in its present state (HTTP 409),
    e.g. retry of a message whose recipients are all final."""


class NotFound(KeyError):
    """Nothing by that name (HTTP 404); `message` says what and why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class AdminBackend(Protocol):
    """The daemon's side of the admin API. Implemented by the runtime; every
    method runs on the daemon's event loop and must not block it."""

    async def health(self) -> None:
        """Return if the process is alive (the event loop answers); raise otherwise."""

    async def readiness(self) -> tuple[bool, str] | tuple[bool, str, dict]:
        """(True, "") once recovery is done, the listeners are bound, the spool is
        writable, its filesystem has enough free space and the index is
        reachable; else (False, the first reason). An optional third element
        is a dict of extra JSON fields for /readyz (the daemon's:
        spool_free_bytes, min_free_space)."""

    async def queue_summary(self) -> list[dict]:
        """Per destination with queued recipients (and every suspended one):
        destination, recipients (queued, not held), held, oldest_age (seconds,
        0 when none), age_buckets {"5m": n, …, "1280m+": n} over AGE_BUCKETS,
        last_error (the last temporary failure's reply, "" if none) and state
        (active|throttled|suspended). Ordered by recipients, largest first."""

    async def list_messages(self, *, state: str | None, domain: str | None,
                            sender: str | None, recipient: str | None, limit: int,
                            cursor: str | None) -> tuple[list[dict], str | None]:
        """One page of messages in arrival order, filtered (all filters AND):
        state (see MESSAGE_STATES; None = "active"), domain (a recipient's domain,
        exact, lowercase), sender and recipient (exact address, case-insensitive
        domain part). Returns (messages, next_cursor); next_cursor is None on the
        last page and is opaque to callers. Raise ValueError for a bad cursor."""

    async def get_message(self, message_id: str) -> dict | None:
        """The message in detail — envelope, recipients (state, attempts,
        next_attempt, last_reply) and every attempt (at, duration, remote
        host/ip, tls, reply, state) — or None if the id is unknown."""

    async def message_body(self, message_id: str) -> bytes | None:
        """The message as queued (headers and body, CRLF), or None if unknown."""

    async def message_action(self, message_id: str, action: str) -> dict:
        """hold|release|retry|bounce|delete one message ->
        {"id", "action", "affected": recipients changed}. hold stops delivery
        until release; retry makes queued recipients due now; bounce fails the
        queued recipients (a DSN follows); delete drops the message without a
        DSN. Raise KeyError for an unknown id, ActionRefused if it cannot apply."""

    async def bulk_action(self, action: str, *, state: str | None, domain: str | None,
                          sender: str | None, recipient: str | None,
                          all: bool) -> dict:
        """The same actions on every message matching the filter (as in
        list_messages). `all=True` is the caller's explicit consent to an empty
        filter. -> {"action", "affected": recipients changed, "messages": n}."""

    async def destination_action(self, name: str, action: str) -> dict:
        """suspend|resume|flush a destination -> {"destination", "action", "state",
        "requested"}. `name` is well formed and normalised (mta.admin.inputs);
        a domain is resolved to the destination its mail goes to (a route's
        "[host]:port", or "sandbox"), which is the one acted on and returned
        as "destination"; "requested" is `name`. A domain with no mail yet is
        allowed (suspension sticks); a name that cannot get mail (a
        "[host]:port" that is no route) raises NotFound (-> 404)."""

    async def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition text and its content type."""
