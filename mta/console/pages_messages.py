"""The Messages pages: search, one message (live timeline), operator actions.

One job: the console's view of the queue — a search over the index
(recipient, sender, id, tenant, state, received time; newest first, cursor
pages), a message page (envelope, recipients, header fields, attempts, the
ledger timeline that updates live: mta.console.pages_messages_live), and
the operator's hold / release / retry / bounce / delete, each confirmed on
a page of its own before the POST that does it.

Public API:
    PART = "messages", NAV, routes(backend) -> [Route]
    MessagesBackend      the Protocol the runtime implements
                         (mta.runtime.console_messages.ConsoleMessages)
    MessageQuery         a validated search, as the backend gets it
    parse_query(query, viewer, now) -> MessageQuery     (ConsoleError 400)
    parse_time(value, name, now, end=False) -> float | None
    STATES, ACTIONS, DEFAULT_LIMIT, MAX_LIMIT

Routes (under /console; access):
    GET  /messages                  search (any)
    GET  /messages/{id}             the message page (any); in a cluster, one another
                                    node holds: its shared timeline (pages_cluster)
    GET  /messages/{id}/live        its timeline as server-sent events (any)
    GET  /messages/{id}/confirm?action=A    what A will do, a POST form (operator)
    POST /messages/{id}/{hold|release|retry|bounce|delete}               (operator)

Search query (all optional; a GET form, so every search is a URL):
    recipient  an address (exact; the domain compared lower-cased), or a
               domain ("example.com" or "@example.com": any recipient there)
    sender     an address (exact, case-insensitive); "<>" the null sender
    id         a queue id (letters and digits, case-insensitive)
    tenant     a tenant name (operators only; a tenant's viewer always sees
               only its own tenant and is never shown the field)
    state      one of STATES (default "all"): "active" = not finished, a
               recipient state = some recipient in it, "deferred" = queued
               after a failed attempt
    from, to   received at or after `from`, before `to`: "YYYY-MM-DD" (UTC;
               a date `to` means the end of that day), "YYYY-MM-DDTHH:MM[:SS]"
               (UTC, what a datetime-local input sends), or a duration ago
               ("30m", "2h", "7d", "1h30m")
    limit      1..MAX_LIMIT (default DEFAULT_LIMIT)
    cursor     where the next page starts (from a "Next page" link; opaque)
A bad value is a 400 page naming the field (the search form again, values
kept); nothing reaches the backend unchecked.

Element ids (tests and the browser find these):
    search page: #search (form), #search-error, #messages (results table;
        rows #msg-<id>), #next-page, #first-page, #result-count
    message page: #message-id, #envelope, #recipients (state badge
        #rcpt-state-<idx>, #rcpt-attempts-<idx>, #rcpt-next-<idx>,
        #rcpt-reply-<idx>), #headers, #attempts, #timeline (rows
        #ev-<seq>), #live-status, #message-status, #actions (links #action-<name>)
    confirm page: #confirm, #confirm-affects, #confirm-form, #confirm-button,
        #cancel

Invariants:
- A tenant's viewer searches its own tenant only, and another tenant's
  message is a 404 on every route (the backend decides: the Protocol).
- Header fields come from the stored message's first 64 KiB only, as text;
  the body is never shown. Timeline details show only the keys
  pages_messages_live.event_summary reads (never a credential, key or
  idempotency key).
- Every action is two requests: a GET confirmation page (no change) and a
  POST (CSRF-checked by the app) ending in a 303 with a notice; a refusal
  (409: nothing the action applies to) is an error notice, not an error page.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from mta.console import pages_cluster
from mta.console.backend import ConsoleError, Viewer
from mta.console.pages_messages_live import LiveStreams, event_summary
from mta.console.render import Route, redirect, render, viewer
from mta.core.address import AddressError, parse_address, parse_domain
from mta.core.durations import DurationError, parse_duration

__all__ = ["PART", "NAV", "routes", "MessagesBackend", "MessageQuery", "parse_query",
           "parse_time", "STATES", "ACTIONS", "DEFAULT_LIMIT", "MAX_LIMIT"]

PART = "messages"
NAV = [("Messages", "/messages", "any")]

# The admin API's vocabularies (mta.admin.backend MESSAGE_STATES and
# MESSAGE_ACTIONS; the console may not import mta.admin: a test keeps them equal).
STATES = ("active", "all", "queued", "deferred", "held", "delivered", "bounced", "expired",
          "suppressed")
ACTIONS = ("hold", "release", "retry", "bounce", "delete")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
TIMELINE_MAX = 500          # events on the page; later ones arrive live
ROWS_MAX = 1000             # recipients / attempts shown on a message page

_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_CURSOR = re.compile(r"[A-Za-z0-9_=-]{1,512}")
_DIGITS = re.compile(r"[0-9]{1,6}")           # ASCII only: str.isdigit takes "²"
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DATETIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})"
                       r"(?::([0-9]{2}))?Z?")
# query name -> the most characters it may have
_LIMITS = {"recipient": 320, "sender": 320, "id": 64, "tenant": 63, "state": 20, "from": 40,
           "to": 40, "limit": 6, "cursor": 512}
_MAX_AGO = 100 * 365 * 86400.0


@dataclass(frozen=True)
class MessageQuery:
    """A checked search. `tenant` is the viewer's own for a tenant's viewer;
    `since`/`until` are Unix seconds (received_at >= since, < until)."""

    recipient: str | None = None      # exact address, domain lower-cased
    domain: str | None = None         # a recipient's domain (lower-case A-labels)
    sender: str | None = None         # "" = the null sender
    queue_id: str | None = None
    tenant: str | None = None
    state: str = "all"                # one of STATES
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


class MessagesBackend(Protocol):
    """What the Messages pages ask of the daemon. Every method taking a
    Viewer answers only what it may see (a tenant's viewer: its tenant's
    messages; another's is None / 404). Times are Unix seconds.

    Shapes::

        search row   {"id", "received_at", "sender", "recipients": [first 3
                      addresses], "recipient_count", "states": [[state, n], ...]
                      (recipients per state), "tenant", "is_dsn", "done"}
        event        {"seq", "at", "type", "recipient", "detail": {...}}
        recipient    {"idx", "address", "state", "attempts", "next_attempt"
                      (None unless queued), "last_reply", "last_remote"}
        message      {"id", "sender", "received_at", "size", "tenant",
                      "credential" (None: none), "is_dsn", "held", "done",
                      "test", "not_before", "recipients": [recipient],
                      "attempts": [{"at", "duration", "recipient", "state",
                        "remote_host", "remote_ip", "tls", "reply"}],
                      "headers": [[name, value]] (decoded text) or None
                      (body not kept), "headers_truncated": bool,
                      "events": [event] (oldest first, at most `events`),
                      "events_more": bool}
    """

    def now(self) -> float:
        """The daemon's clock (relative times in a search count from it)."""

    def closing(self) -> bool:
        """True once the daemon is stopping: live streams end."""

    async def tenant_names(self) -> list[str]:
        """Every tenant's name, sorted ("default" among them)."""

    async def search(self, viewer: Viewer, query: MessageQuery
                     ) -> tuple[list[dict[str, Any]], str | None]:
        """(one page of search rows, newest first; the next page's cursor or
        None). A tenant's viewer gets its own tenant's only, whatever
        `query.tenant` says. ConsoleError(400, "cursor: …") for a bad cursor."""

    async def message(self, viewer: Viewer, message_id: str,
                      events: int) -> dict[str, Any] | None:
        """The message page's data (shape above), or None: unknown, or not
        the viewer's."""

    async def updates(self, viewer: Viewer, message_id: str, after: int, limit: int,
                      full: bool) -> dict[str, Any] | None:
        """{"events": up to `limit` events with seq > after, "recipients":
        [recipient] or None, "done": bool or None}. `full`: checks the viewer
        may see the message and reads recipients and done BEFORE the events
        (so a done message's every event is in "events" or at or before
        `after`). Not full: recipients are read (after the events) only when
        events came, and done is None. None: unknown, or not the viewer's."""

    async def act(self, viewer: Viewer, message_id: str, action: str) -> dict[str, Any]:
        """Do `action` (one of ACTIONS) -> {"id", "action", "affected":
        recipients changed}. ConsoleError 404 (unknown, or not an operator),
        409 (nothing it applies to now: e.g. no queued recipient to hold)."""


# ---- the search query ---------------------------------------------------------------

def _bad(name: str, why: str) -> ConsoleError:
    return ConsoleError(400, f"{name}: {why}", name)


def _text(query: Mapping[str, str], name: str) -> str:
    getall = getattr(query, "getall", None)       # a MultiDict: repeated names
    values = list(getall(name, [])) if getall else ([query[name]] if name in query else [])
    if len(values) > 1:
        raise _bad(name, "given more than once")
    value = values[0].strip() if values else ""
    if len(value) > _LIMITS[name]:
        raise _bad(name, f"at most {_LIMITS[name]} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _bad(name, "control characters are not allowed")
    return value


def parse_time(value: str, name: str, now: float, end: bool = False) -> float | None:
    """A `from`/`to` value as Unix seconds (see the module docstring); None
    when empty. `end`: a bare date means the end of that day."""
    if not value:
        return None
    try:
        if (m := _DATE.fullmatch(value)) is not None:
            day = dt.datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=dt.timezone.utc)
            return day.timestamp() + (86400.0 if end else 0.0)
        if (m := _DATETIME.fullmatch(value)) is not None:
            return dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]),
                               int(m[6] or 0), tzinfo=dt.timezone.utc).timestamp()
    except (ValueError, OverflowError):
        raise _bad(name, "not a real date or time") from None
    try:
        ago = parse_duration(value)
    except DurationError:
        raise _bad(name, "expected YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC) or a duration "
                         "ago such as 30m, 2h or 7d") from None
    if ago > _MAX_AGO:
        raise _bad(name, "at most 100 years ago")
    return now - ago


def _recipient(value: str) -> tuple[str | None, str | None]:
    """(address, domain) of the recipient field: one of them, or neither."""
    if not value:
        return None, None
    try:
        if "@" in value.lstrip("@"):
            return str(parse_address(value)), None
        return None, parse_domain(value.lstrip("@"))
    except (AddressError, UnicodeError):
        raise _bad("recipient", "not an address (user@example.com) or a domain "
                                "(example.com)") from None


def _sender(value: str) -> str | None:
    if not value:
        return None
    if value == "<>":
        return ""
    try:
        return str(parse_address(value))
    except (AddressError, UnicodeError):
        raise _bad("sender", "not an address (user@example.com), or <> for the null "
                             "sender") from None


def parse_query(query: Mapping[str, str], who: Viewer, now: float) -> MessageQuery:
    """The search in `query` (request.query), checked; ConsoleError 400
    naming the first bad field."""
    get = {name: _text(query, name) for name in _LIMITS
           if name != "tenant" or who.operator}
    recipient, domain = _recipient(get["recipient"])
    queue_id = get["id"].upper() or None
    if queue_id is not None and not _QUEUE_ID.fullmatch(queue_id):
        raise _bad("id", "a queue id is letters and digits only")
    tenant = who.tenant if not who.operator else (get.get("tenant") or None)
    if who.operator and tenant is not None and not _TENANT.fullmatch(tenant):
        raise _bad("tenant", "not a tenant name (a-z, 0-9, '_' and '-')")
    state = get["state"] or "all"
    if state not in STATES:
        raise _bad("state", f"one of {', '.join(STATES)}")
    since = parse_time(get["from"], "from", now)
    until = parse_time(get["to"], "to", now, end=True)
    if since is not None and until is not None and since >= until:
        raise _bad("to", "must be later than from")
    limit = DEFAULT_LIMIT
    if get["limit"]:
        if not _DIGITS.fullmatch(get["limit"]) or not 1 <= int(get["limit"]) <= MAX_LIMIT:
            raise _bad("limit", f"a whole number from 1 to {MAX_LIMIT}")
        limit = int(get["limit"])
    cursor = get["cursor"] or None
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise _bad("cursor", "not a cursor from a Next page link")
    return MessageQuery(recipient=recipient, domain=domain, sender=_sender(get["sender"]),
                        queue_id=queue_id, tenant=tenant, state=state, since=since,
                        until=until, limit=limit, cursor=cursor)


def _echo(query: Mapping[str, str]) -> dict[str, str]:
    """The form's values as given, made safe to show again (bounded, no
    control characters; the template escapes them)."""
    out = {}
    for name, most in _LIMITS.items():
        raw = query.get(name, "")
        out[name] = "".join(c for c in str(raw)[:most] if ord(c) >= 32 and ord(c) != 127)
    return out


# ---- the handlers ---------------------------------------------------------------------

def _message_id(request: web.Request) -> str:
    mid = request.match_info.get("id", "")
    if not _QUEUE_ID.fullmatch(mid):
        raise ConsoleError(404, "no such message")
    return mid


def _next_url(query: Mapping[str, str], cursor: str) -> str:
    keep = {k: v for k, v in _echo(query).items() if v and k != "cursor"}
    return "/console/messages?" + urlencode({**keep, "cursor": cursor})


def _first_url(query: Mapping[str, str]) -> str:
    keep = {k: v for k, v in _echo(query).items() if v and k != "cursor"}
    return "/console/messages" + ("?" + urlencode(keep) if keep else "")


def _handlers(b: MessagesBackend) -> dict[str, Any]:
    async def search(request: web.Request) -> web.StreamResponse:
        who = viewer(request)
        tenants = await b.tenant_names() if who.operator else []
        page: dict[str, Any] = {"values": _echo(request.query), "states": STATES,
                                "tenants": tenants, "max_limit": MAX_LIMIT,
                                "default_limit": DEFAULT_LIMIT}
        try:
            q = parse_query(request.query, who, b.now())
            rows, cursor = await b.search(who, q)
        except ConsoleError as exc:
            return render(request, "messages.html", exc.status, rows=None, error=exc.message,
                          error_field=exc.field, next_url=None, first_url=None, **page)
        return render(request, "messages.html", rows=rows, error=None, error_field=None,
                      next_url=_next_url(request.query, cursor) if cursor else None,
                      first_url=_first_url(request.query) if q.cursor else None, **page)

    async def message(request: web.Request) -> web.StreamResponse:
        mid = _message_id(request)
        m = await b.message(viewer(request), mid, TIMELINE_MAX)
        if m is None:          # another node's, in a cluster (else 404)
            return await pages_cluster.elsewhere(request, mid, TIMELINE_MAX)
        events = [{**e, "summary": event_summary(e)} for e in m["events"]]
        last = events[-1]["seq"] if events else 0
        return render(request, "message.html", m=m, events=events, actions=ACTIONS,
                      stream=f"/console/messages/{mid}/live?after={last}",
                      rows_max=ROWS_MAX)

    async def confirm(request: web.Request) -> web.StreamResponse:
        mid = _message_id(request)
        action = request.query.get("action", "")
        if action not in ACTIONS:
            raise ConsoleError(400, f"action: one of {', '.join(ACTIONS)}", "action")
        m = await b.message(viewer(request), mid, 0)
        if m is None:
            raise ConsoleError(404, "no such message")
        affects = sum(r["state"] in _ACTS_ON[action] for r in m["recipients"])
        return render(request, "message_confirm.html", m=m, action=action, affects=affects,
                      what=_WHAT[action])

    return {"search": search, "message": message, "confirm": confirm}


# Which recipients each action moves (mta.spool.steering), for the confirmation.
_ACTS_ON = {"hold": ("queued",), "release": ("held",), "retry": ("queued",),
            "bounce": ("queued", "held"), "delete": ("queued", "held")}
_WHAT = {
    "hold": "Its queued recipients stop being delivered until the message is released.",
    "release": "Its held recipients are queued again and become due now.",
    "retry": "Its queued recipients become due now instead of at their next attempt.",
    "bounce": "Its queued and held recipients fail now (550 5.0.0, bounced by the "
              "administrator); the sender gets a DSN unless the message is one or has a "
              "null sender.",
    "delete": "Its queued and held recipients are dropped without a DSN; the message leaves "
              "the queue. This cannot be undone.",
}


def _action(b: MessagesBackend, action: str) -> Any:
    async def act(request: web.Request) -> web.StreamResponse:
        mid = _message_id(request)
        try:
            result = await b.act(viewer(request), mid, action)
        except ConsoleError as exc:
            if exc.status != 409:
                raise
            raise redirect(request, f"/messages/{mid}", error=exc.message) from None
        n = int(result.get("affected", 0))
        done = f"{action}: {n} recipient{'s' if n != 1 else ''} of {mid} changed"
        if action == "delete":
            raise redirect(request, "/messages", ok=done)
        raise redirect(request, f"/messages/{mid}", ok=done)
    act.__name__ = f"message_{action}"
    return act


def routes(backend: MessagesBackend) -> list[Route]:
    h = _handlers(backend)
    live = LiveStreams(backend)
    out: list[Route] = [
        ("GET", "/messages", h["search"], "any"),
        ("GET", "/messages/{id}", h["message"], "any"),
        ("GET", "/messages/{id}/live", live.handle, "any"),
        ("GET", "/messages/{id}/confirm", h["confirm"], "operator"),
    ]
    out += [("POST", f"/messages/{{id}}/{a}", _action(backend, a), "operator") for a in ACTIONS]
    return out
