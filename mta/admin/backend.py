"""The admin API's one seam: what the HTTP layer asks of the running daemon.

One job: declare `AdminBackend`, the Protocol the runtime implements over the
spool index and the scheduler, plus the vocabulary both sides share (message
states and actions, destination actions and states) and the two exceptions
a backend may raise. The age buckets are mta.core.qshape's, the event types
mta.core.envelope's.

Public API:
    AdminBackend                      the Protocol (read models + queue actions)
    LedgerBackend                     optional: events and webhooks (a backend
                                      without them answers 501 on their routes)
    JsonListing                       optional: list_messages already as JSON
    TenantBackend                     optional: tenants (a backend without them
                                      answers 501 on /v1/tenants…)
    TenantJson                        a tenant as JSON (the runtime builds it)
    TenantGauge                       one tenant's scrape-time figures for
                                      /metrics (`gauges()["tenants"]`)
    TENANT_AUTO_STATUSES, TENANT_REFUSALS   their vocabularies
    ShapingBackend                    optional: traffic shaping (a backend
                                      without it answers 501 on /v1/shaping,
                                      /v1/warmup, /v1/shaping/lift)
    TlsBackend                        optional: outbound TLS (issue 17; without it
                                      /v1/tls… answer 501)
    MESSAGE_STATES, MESSAGE_ACTIONS, DESTINATION_ACTIONS, DESTINATION_STATES
    destination_state(info) -> str   active|throttled|suspended of a scheduler
                                      destination_states() entry
    ActionRefused                     -> HTTP 409 (the action cannot apply now)
    NotFound(message)                 a KeyError whose message the 404 carries

Invariants:
- The HTTP layer validates every argument before calling the backend: states
  and actions are members of the tuples below, `limit` is 1..1000, sequence
  numbers 0..2^63-1, queue ids, destination names (normalised, see
  mta.admin.inputs), webhook and tenant names are well formed, and a bulk
  action without any filter arrives only with `all=True`. The `tenant`
  filter (the tenant owning the message's or event's credential) is passed
  only when the request gives one.
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
     {bucket: n for bucket in mta.core.qshape.AGE_BUCKETS}, "last_error",
     "state" (one of DESTINATION_STATES), "actions": [shaping action] (the
     reply rules' actions in force on it; absent or [] without shaping)}

shaping action (issue 15)::
    {"id" (what a lift takes), "scope" ("site"|"tenant"), "key" (the site,
     or "tenant@provider"), "action" ("suspend", "connection_limit=1", …),
     "rule" (its name), "since", "until" (Unix time), "reason" (the reply)}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypedDict, runtime_checkable

__all__ = ["AdminBackend", "LedgerBackend", "JsonListing", "TenantBackend", "TenantJson",
           "ShapingBackend", "TlsBackend",
           "TenantGauge", "TENANT_AUTO_STATUSES", "TENANT_REFUSALS",
           "ActionRefused", "NotFound",
           "MESSAGE_STATES", "MESSAGE_ACTIONS", "DESTINATION_ACTIONS", "DESTINATION_STATES",
           "destination_state"]

# `state` filter of /v1/messages. A message matches when any recipient is in
# the state, except: "held" matches held messages, "deferred" queued
# recipients with at least one attempt, "active" (the default when no state
# is given) messages not yet done, and "all" every message in the index.
MESSAGE_STATES = ("active", "all", "queued", "deferred", "held", "delivered", "bounced",
                  "expired", "suppressed")
MESSAGE_ACTIONS = ("hold", "release", "retry", "bounce", "delete")
DESTINATION_ACTIONS = ("suspend", "resume", "flush")
# How the API reports a destination: the scheduler's health states (active,
# paused, probing) seen by an operator, plus an operator's suspension.
DESTINATION_STATES = ("active", "throttled", "suspended")


def destination_state(info: str | Mapping[str, Any] | None) -> str:
    """active|throttled|suspended for a destination: `info` is that state
    already, or the scheduler's `destination_states()` entry (suspended wins;
    paused or probing after trouble is throttled), or None for a destination
    the scheduler does not track (active)."""
    if isinstance(info, str):
        return info
    if not info:
        return "active"
    if info.get("suspended"):
        return "suspended"
    return "throttled" if info.get("state") in ("paused", "probing") else "active"


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

    async def readiness(self) -> tuple[bool, str] | tuple[bool, str, dict[str, Any]]:
        """(True, "") once recovery is done, the listeners are bound, the spool is
        writable, its filesystem has enough free space and the index is
        reachable; else (False, the first reason). An optional third element
        is a dict of extra JSON fields for /readyz (the daemon's:
        spool_free_bytes, min_free_space)."""

    async def queue_summary(self) -> list[dict[str, Any]]:
        """Per destination with queued recipients (and every suspended one):
        destination, recipients (queued, not held), held, oldest_age (seconds,
        0 when none), age_buckets {"5m": n, …, "1280m+": n} (core.qshape),
        last_error (the last temporary failure's reply, "" if none) and state
        (active|throttled|suspended). Ordered by recipients, largest first."""

    async def list_messages(self, *, state: str | None, domain: str | None,
                            sender: str | None, recipient: str | None, limit: int,
                            cursor: str | None, tenant: str | None = None
                            ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of messages in arrival order, filtered (all filters AND):
        state (see MESSAGE_STATES; None = "active"), domain (a recipient's domain,
        exact, lowercase), sender and recipient (exact address, case-insensitive
        domain part), tenant (its credential's). Returns (messages,
        next_cursor); next_cursor is None on the last page and is opaque to
        callers. Raise ValueError for a bad cursor."""

    async def get_message(self, message_id: str) -> dict[str, Any] | None:
        """The message in detail — envelope, recipients (state, attempts,
        next_attempt, last_reply) and every attempt (at, duration, remote
        host/ip, tls, reply, state) — or None if the id is unknown."""

    async def message_body(self, message_id: str) -> bytes | None:
        """The message as queued (headers and body, CRLF), or None if unknown."""

    async def message_action(self, message_id: str, action: str) -> dict[str, Any]:
        """hold|release|retry|bounce|delete one message ->
        {"id", "action", "affected": recipients changed}. hold stops delivery
        until release; retry makes queued recipients due now; bounce fails the
        queued recipients (a DSN follows); delete drops the message without a
        DSN. Raise KeyError for an unknown id, ActionRefused if it cannot apply."""

    async def bulk_action(self, action: str, *, state: str | None, domain: str | None,
                          sender: str | None, recipient: str | None,
                          all: bool, tenant: str | None = None) -> dict[str, Any]:
        """The same actions on every message matching the filter (as in
        list_messages). `all=True` is the caller's explicit consent to an empty
        filter. -> {"action", "affected": recipients changed, "messages": n}."""

    async def destination_action(self, name: str, action: str) -> dict[str, Any]:
        """suspend|resume|flush a destination -> {"destination", "action", "state",
        "requested"}. `name` is well formed and normalised (mta.admin.inputs);
        a domain is resolved to the destination its mail goes to (a route's
        "[host]:port", or "sandbox"), which is the one acted on and returned
        as "destination"; "requested" is `name`. A domain with no mail yet is
        allowed (suspension sticks); a name that cannot get mail (a
        "[host]:port" that is no route) raises NotFound (-> 404)."""

    async def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition text and its content type."""


@runtime_checkable
class JsonListing(Protocol):
    """A backend that serialises a page of `list_messages` itself (the
    daemon's spool builds the JSON array in SQLite, off the event loop); the
    HTTP layer prefers it when present."""

    async def list_messages_json(self, *, state: str | None, domain: str | None,
                                 sender: str | None, recipient: str | None, limit: int,
                                 cursor: str | None, tenant: str | None = None
                                 ) -> tuple[bytes, str | None]:
        """(the JSON array of the page's messages, next_cursor), as list_messages."""


@runtime_checkable
class LedgerBackend(Protocol):
    """What /v1/events, /v1/messages/{id}/events and /v1/webhooks ask of a
    backend that has the event ledger and webhooks (the daemon's does). The
    HTTP layer looks each method up on its own: one a backend lacks is a 501
    on its routes, not an error at start."""

    async def events_after(self, after: int, limit: int, *, types: list[str] | None = None,
                           recipient: str | None = None,
                           tenant: str | None = None) -> list[dict[str, Any]]:
        """Up to `limit` events with seq > after, oldest first, optionally only
        of `types`, for `recipient` and of `tenant`; each has "seq"."""

    async def message_events(self, message_id: str) -> list[dict[str, Any]] | None:
        """The message's events, oldest first; None when the id is unknown."""

    async def webhooks(self) -> list[dict[str, Any]]:
        """Each configured endpoint's status (name, url, state, lag, …)."""

    async def webhook_replay(self, name: str, *, from_seq: int | str | None = None,
                             since: float | None = None) -> dict[str, Any]:
        """Move the endpoint's cursor back to `from_seq` ("end": forward to the
        ledger's end) or to the first event at or after `since`. KeyError for
        an unknown endpoint."""

    async def webhook_test(self, name: str) -> dict[str, Any]:
        """Send one signed test event now. KeyError for an unknown endpoint."""


# A tenant's automatic (reputation) status, in the order mta_tenant_reputation_status
# reports it (0, 1, 2), and why a guardrail refused a submission (runtime/tenants.py).
TENANT_AUTO_STATUSES = ("ok", "warn", "paused")
TENANT_REFUSALS = ("paused", "domain", "per_hour", "per_day", "rate")


class TenantGauge(TypedDict):
    """One tenant's figures at scrape time: the list the runtime's `gauges()`
    gives under "tenants" (absent or None: no tenant service)."""

    name: str
    sending: bool               # False: paused, by the operator or automatically
    auto_status: str            # one of TENANT_AUTO_STATUSES
    sends: int                  # final outcomes in its reputation window
    bounce_rate: float          # counting bounces / sends, in the window
    complaint_rate: float       # complaints / delivered, in the window
    quota_hour: int             # recipients counted in this UTC hour
    quota_day: int              # … and in this UTC day
    refused: dict[str, int]     # reason (TENANT_REFUSALS) -> cumulative count


# A tenant as the API shows it: a JSON object the runtime builds (name,
# status, auto_status, limits, policy, …; see mta.admin.openapi "Tenant").
TenantJson = dict[str, object]


@runtime_checkable
class TenantBackend(Protocol):
    """What /v1/tenants… ask of a backend with tenants (the daemon's, over
    its TenantService). Optional like LedgerBackend: a backend without a
    method answers 501 on its route. Arguments arrive validated
    (mta.admin.params: names, limits and policy shapes, reasons); refusals
    are raised as mta.spool.tenants.TenantError (.status 404/409/422, .field,
    .message), which the HTTP layer answers as they say."""

    async def tenants(self) -> list[TenantJson]:
        """Every tenant, by name; "default" always among them."""

    async def tenant(self, name: str) -> TenantJson | None:
        """One tenant, or None when there is none by that name."""

    async def tenant_add(self, name: str, limits: dict[str, object],
                         policy: dict[str, object]) -> TenantJson:
        """Create a tenant (409 when the name exists)."""

    async def tenant_update(self, name: str, limits: dict[str, object] | None,
                            policy: dict[str, object] | None) -> TenantJson:
        """Change a tenant's limits and/or policy: the keys given replace
        theirs, a null clears one (unlimited / the default); None: unchanged."""

    async def tenant_remove(self, name: str) -> None:
        """Delete a tenant (409 for "default" and while it owns anything in use)."""

    async def tenant_pause(self, name: str, reason: str) -> TenantJson:
        """The operator's pause: the tenant's mail is refused until resumed."""

    async def tenant_resume(self, name: str, reason: str) -> TenantJson:
        """The operator's resume (also clears an automatic pause)."""


@runtime_checkable
class ShapingBackend(Protocol):
    """What /v1/shaping, /v1/warmup and /v1/shaping/lift ask of a backend
    with traffic shaping (the daemon's; issue 15). Optional like
    LedgerBackend: a backend without a method, or one raising
    NotImplementedError (a daemon without shaping), answers 501."""

    async def shaping(self) -> dict[str, Any]:
        """{"table": the shaping table in force (version, default, providers,
        sites, domains, rules), "mx_rollup": bool, "pools": {pool: [source
        names]}, "actions": [shaping action], "warmup": [warm-up row]}."""

    async def warmup(self) -> list[dict[str, Any]]:
        """Each [[egress]] source, in config order: {"source", "address",
        "pool", "schedule" (null: none), "day", "cap", "used", "allowed_now"
        (null: no cap), "warm": bool}."""

    async def shaping_lift(self, target: str) -> list[dict[str, Any]]:
        """End the action whose id is `target`, else every action whose key
        is `target` (a site, or "tenant@provider") -> the actions lifted;
        [] when nothing matched. `target` arrives checked (1..300
        characters, no control character, stripped)."""


@runtime_checkable
class TlsBackend(Protocol):
    """What /v1/tls… ask of a backend with outbound TLS policy (the daemon's;
    issue 17). Optional like ShapingBackend: a missing method, or one raising
    NotImplementedError, answers 501. `domain` arrives checked (lower-case
    A-labels, no address literal: mta.admin.handlers.tls_domain)."""

    async def tls_show(self, domain: str) -> dict[str, Any]:
        """{"domain", "override": the [tls] policy level or None, "mta_sts":
        {"id", "mode", "mx", "max_age", "fetched_at", "expires_at"} or None,
        "error": why no policy applies (an RFC 8460 result type first) or None},
        after a lookup now (cached as delivery caches it)."""

    async def tls_purge(self, domain: str) -> dict[str, Any]:
        """Drop the cached MTA-STS policy -> {"domain", "purged": bool}."""

    async def tls_policies(self) -> list[dict[str, Any]]:
        """The cached MTA-STS policies, by domain: {"domain", "id", "mode",
        "expires_at"}."""
