"""What an admin API request may carry, checked: request → validated values.

One job: read path parameters, query strings and JSON bodies of the admin
API (mta.admin.http) and return the values the backend is called with, or
raise `ApiError` (400 naming the field) before the backend sees anything.
The syntax of names, ids and integers is mta.admin.inputs'; this module
applies it to HTTP requests and adds the API's own limits.

Public API:
    ApiError(status, code, message, headers=None)   an error response to send
    query(request, known) -> {name: value}          unknown/repeated names: 400
    list_params(request) -> kwargs of list_messages
    event_params(request) -> (after, limit, types, recipient, tenant)
    bulk_filters(body, action) -> (all, filters)    a bulk action's JSON body
    replay_params(body) -> (from_seq, since)         a webhook replay's JSON body
    queue_id(request), destination(request), webhook(request) -> str
    check_tenant(value) -> str | None               the `tenant` filter (None: not given)
    tenant(request) -> str                          the {name} of /v1/tenants/{name}
    tenant_add(body) -> (name, limits, policy)      POST /v1/tenants (nulls left out)
    tenant_update(body) -> (limits | None, policy | None)   PATCH /v1/tenants/{name}
    tenant_reason(body, required) -> str            pause (optional) / resume (required)
    await json_body(request) -> dict                {} for an empty body
    DEFAULT_LIMIT, MAX_LIMIT, MAX_BODY, FILTER_KEYS, LIMIT_KEYS, POLICY_KEYS

The `tenant` filter (messages, bulk bodies, events) is a tenant name
(mta.spool.tenants.check_name; a 400 invalid_filter naming "tenant"
otherwise); it is in the filters and kwargs only when given, so a backend
without tenants is called as before.

A tenant body's errors are 422 `validation_error`, the message starting
with the field (the dotted path, e.g. "limits.per_hour: …"; also `.field`).
Limits per_hour, per_day, burst are whole numbers >= 1, rate a number > 0;
policy level is none|standard|strict, the four thresholds fractions in
(0, 1] (warn <= pause when both are given), window a whole number >= 1,
window_seconds a number > 0, min_volume a whole number >= 0 (<= window when
both are given); null for any of them means "not set" (unlimited, or the
default); unknown keys are refused.

Invariants: network input never raises anything but ApiError here (no
KeyError, TypeError, RecursionError reaches the caller); every message names
the field and never echoes more than a bounded prefix of the input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mta.admin.backend import MESSAGE_STATES
from mta.admin.inputs import (INT64_MAX, check_queue_id, check_webhook_name, has_control,
                              parse_destination, parse_uint)
from mta.core.address import AddressError, parse_address, parse_domain
from mta.core.envelope import EVENT_TYPES
from mta.spool.tenants import check_name

__all__ = ["ApiError", "query", "list_params", "event_params", "bulk_filters", "replay_params",
           "queue_id", "destination", "webhook", "json_body", "check_address", "check_tenant",
           "tenant", "tenant_add", "tenant_update", "tenant_reason", "tenant_limits",
           "tenant_policy",
           "DEFAULT_LIMIT", "MAX_LIMIT", "MAX_BODY", "FILTER_KEYS", "LIMIT_KEYS", "POLICY_KEYS"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY = 64 * 1024            # a bulk filter is a few hundred bytes
MAX_CURSOR = 512                # ours are ~40 characters of urlsafe base64
MAX_FILTER = 320                # the longest address (mta.core.address)
MAX_UNIX_TIME = 253402300799    # 9999-12-31T23:59:59Z
EVENT_PARAMS = ("after", "type", "recipient", "tenant", "limit")
LIST_PARAMS = ("state", "domain", "sender", "recipient", "tenant", "limit", "cursor")
FILTER_KEYS = ("state", "domain", "sender", "recipient", "tenant")
LIMIT_KEYS = ("per_hour", "per_day", "rate", "burst")
POLICY_KEYS = ("level", "bounce_warn", "bounce_pause", "complaint_warn", "complaint_pause",
               "window", "window_seconds", "min_volume")
POLICY_LEVELS = ("none", "standard", "strict")
MAX_REASON = 500
MAX_WINDOW = 1_000_000          # sends kept in memory per tenant
MAX_WINDOW_SECONDS = 366 * 86400
MAX_RATE = 1e9


class ApiError(Exception):
    """An error answer: `status`, `code` and `message` go into the JSON body
    `{"error": {"code", "message"}}`, `headers` into the response."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.field = field         # the input at fault (the message starts with it)


def _bad(name: str, message: str, code: str = "invalid_parameter") -> ApiError:
    return ApiError(400, code, f"{name} {message}" if message[:1].islower() else
                    f"{name}: {message}")


def _one(values: list[str], name: str) -> str:
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"parameter {name!r} given more than once")
    return values[0]


def query(request: web.Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query as {name: value}: unknown or repeated names are a 400."""
    params = request.query
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown query parameter {unknown[0][:60]!r} "
                       f"(known: {', '.join(known)})")
    return {k: _one(params.getall(k), k) for k in params}


def _text(value: Any, where: str, code: str, limit: int = MAX_FILTER) -> str:
    if not isinstance(value, str):
        raise ApiError(400, code, f"{where} must be a string")
    if len(value) > limit:
        raise ApiError(400, code, f"{where} is too long ({len(value)} characters, at most {limit})")
    if has_control(value):
        raise ApiError(400, code, f"{where} contains control characters")
    return value


def _check_state(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in MESSAGE_STATES:
        raise ApiError(400, "invalid_filter", f"{where} must be one of {', '.join(MESSAGE_STATES)}")
    return value


def _check_domain(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    value = _text(value, where, "invalid_filter")
    try:
        domain = parse_domain(value)
        if domain.startswith("["):          # a domain literal: check what is inside
            parse_destination(domain)
        return domain
    except (AddressError, ValueError) as exc:
        raise ApiError(400, "invalid_filter", f"{where}: {exc}") from None


def check_address(value: Any, where: str, *, allow_null: bool) -> str | None:
    """A filter address, normalised; None when absent or empty."""
    if value is None or value == "":
        return None
    value = _text(value, where, "invalid_filter")
    try:
        return str(parse_address(value, allow_null=allow_null))
    except AddressError as exc:
        raise ApiError(400, "invalid_filter", f"{where}: {exc}") from None


def check_tenant(value: Any) -> str | None:
    """A `tenant` filter: a tenant name; None when absent or empty."""
    if value is None or value == "":
        return None
    value = _text(value, "tenant", "invalid_filter")
    try:
        return check_name(value)
    except ValueError:
        raise ApiError(400, "invalid_filter", f"tenant: not a tenant name ({value[:70]!r}): 1 "
                       "to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or "
                       "a digit", field="tenant") from None


def _filters(get: Callable[[str], Any]) -> dict[str, str | None]:
    out = {"state": _check_state(get("state"), "state"),
           "domain": _check_domain(get("domain"), "domain"),
           # "<>" selects bounces/DSNs (the null sender), passed on as "".
           "sender": check_address(get("sender"), "sender", allow_null=True),
           "recipient": check_address(get("recipient"), "recipient", allow_null=False)}
    tenant = check_tenant(get("tenant"))
    if tenant is not None:                  # only when given: see the module docstring
        out["tenant"] = tenant
    return out


def _uint(raw: str | None, name: str, lo: int, hi: int, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        return parse_uint(raw, lo, hi)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None


def list_params(request: web.Request) -> dict[str, Any]:
    """The keyword arguments of `list_messages`: filters, limit, cursor."""
    params = query(request, LIST_PARAMS)
    out: dict[str, Any] = _filters(params.get)
    out["limit"] = _uint(params.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    cursor = params.get("cursor") or None
    if cursor is not None:
        _text(cursor, "cursor", "invalid_cursor", MAX_CURSOR)
    out["cursor"] = cursor
    return out


def _event_types(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    types = [t for t in raw.split(",") if t]
    bad = [t for t in types if t not in EVENT_TYPES]
    if bad:
        raise ApiError(400, "invalid_parameter", f"type: unknown event type {bad[0][:40]!r} "
                       f"(known: {', '.join(EVENT_TYPES)})")
    return types or None


def event_params(request: web.Request
                 ) -> tuple[int, int, list[str] | None, str | None, str | None]:
    """(after, limit, types, recipient, tenant) of GET /v1/events."""
    q = query(request, EVENT_PARAMS)
    after = _uint(q.get("after"), "after", 0, INT64_MAX, 0)
    limit = _uint(q.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    types = _event_types(q.get("type"))
    recipient = check_address(q.get("recipient"), "recipient", allow_null=False)
    return after, limit, types, recipient, check_tenant(q.get("tenant"))


def bulk_filters(body: dict[str, Any], action: str) -> tuple[bool, dict[str, str | None]]:
    """(all, filters) of a bulk action's body; an empty filter needs "all": true."""
    unknown = sorted(set(body) - set(FILTER_KEYS) - {"all"})
    if unknown:
        raise ApiError(400, "invalid_filter", f"unknown filter key {unknown[0]!r} "
                       f"(known: {', '.join(FILTER_KEYS)}, all)")
    everything = body.get("all", False)
    if not isinstance(everything, bool):
        raise ApiError(400, "invalid_filter", "\"all\" must be true or false")
    filters = _filters(body.get)
    if not everything and all(v is None for v in filters.values()):
        raise ApiError(400, "empty_filter", f"refusing to {action} every message: give "
                       "a filter (state, domain, sender, recipient, tenant) or \"all\": true")
    return everything, filters


def replay_params(body: dict[str, Any]) -> tuple[int | str | None, float | None]:
    """(from_seq, since) of a webhook replay: exactly one of "from" (a
    sequence number, or "end") and "since" (unix time)."""
    unknown = sorted(set(body) - {"from", "since"})
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown key {unknown[0][:40]!r} "
                                            "(known: from, since)")
    start, since = body.get("from"), body.get("since")
    if (start is None) == (since is None):
        raise ApiError(400, "invalid_body", 'give exactly one of "from" (a sequence number, '
                                            'or "end" to drop the backlog) or "since" '
                                            '(unix time)')
    if start is not None and start != "end" and not (
            type(start) is int and 0 <= start <= INT64_MAX):
        raise ApiError(400, "invalid_body", f'"from" must be a sequence number (0 to '
                                            f'{INT64_MAX}) or "end"')
    if since is not None and not (type(since) in (int, float) and math.isfinite(since)
                                  and 0 <= since <= MAX_UNIX_TIME):
        raise ApiError(400, "invalid_body", f'"since" must be a unix time (0 to '
                                            f'{MAX_UNIX_TIME})')
    return start, since


def queue_id(request: web.Request) -> str:
    try:
        return check_queue_id(request.match_info["id"])
    except ValueError as exc:
        raise _bad("id", str(exc)) from None


def destination(request: web.Request) -> str:
    try:
        return parse_destination(request.match_info["name"])[1]
    except ValueError as exc:
        raise _bad("name", str(exc)) from None


def webhook(request: web.Request) -> str:
    try:
        return check_webhook_name(request.match_info["name"])
    except ValueError as exc:
        raise _bad("name", str(exc)) from None


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        # NaN/Infinity are not JSON; a deep nesting is a RecursionError.
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_body", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    return body


# ---------------------------------------------------------------- tenants

def _invalid(field: str | None, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {message}" if field else message,
                    field=field)


def tenant(request: web.Request) -> str:
    raw = request.match_info["name"]
    try:
        return check_name(raw)
    except ValueError:
        raise _bad("name", f"is not a tenant name ({raw[:70]!r}): 1 to 63 characters of "
                           "a-z, 0-9, '_' and '-', starting with a letter or a digit") from None


def _keys(body: dict[str, Any], known: tuple[str, ...], where: str | None) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        name = unknown[0][:40]
        raise _invalid(f"{where}.{name}" if where else name,
                       f"unknown key (known: {', '.join(known)})")


def _count(value: Any, field: str, lo: int, hi: int = INT64_MAX) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise _invalid(field, f"must be a whole number from {lo} to {hi}, or null")
    return value


def _number(value: Any, field: str, hi: float, *, closed: bool) -> float | None:
    """A number in (0, hi] (closed) or (0, hi); None for null."""
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0 \
            or value > hi or (not closed and value == hi):
        raise _invalid(field, f"must be a number above 0 and {'at most' if closed else 'below'}"
                              f" {hi:g}, or null")
    number: float = value   # an int stays an int (JSON 2 is not 2.0)
    return number


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(field, "must be a JSON object")
    return value


def tenant_limits(value: Any) -> dict[str, Any]:
    body = _object(value, "limits")
    _keys(body, LIMIT_KEYS, "limits")
    out: dict[str, Any] = {}
    for key in ("per_hour", "per_day", "burst"):
        if key in body:
            out[key] = _count(body[key], f"limits.{key}", 1)
    if "rate" in body:
        out["rate"] = _number(body["rate"], "limits.rate", MAX_RATE, closed=True)
    return out


def _pair(out: dict[str, Any], warn: str, pause: str) -> None:
    if out.get(warn) is not None and out.get(pause) is not None and out[pause] < out[warn]:
        raise _invalid(f"policy.{pause}", f"must be at least {warn} ({out[warn]:g})")


def tenant_policy(value: Any) -> dict[str, Any]:
    body = _object(value, "policy")
    _keys(body, POLICY_KEYS, "policy")
    out: dict[str, Any] = {}
    if "level" in body:
        level = body["level"]
        if level is not None and level not in POLICY_LEVELS:
            raise _invalid("policy.level", f"must be one of {', '.join(POLICY_LEVELS)}, or null")
        out["level"] = level
    for key in ("bounce_warn", "bounce_pause", "complaint_warn", "complaint_pause"):
        if key in body:
            out[key] = _number(body[key], f"policy.{key}", 1.0, closed=True)
    _pair(out, "bounce_warn", "bounce_pause")
    _pair(out, "complaint_warn", "complaint_pause")
    if "window" in body:
        out["window"] = _count(body["window"], "policy.window", 1, MAX_WINDOW)
    if "window_seconds" in body:
        out["window_seconds"] = _number(body["window_seconds"], "policy.window_seconds",
                                        MAX_WINDOW_SECONDS, closed=True)
    if "min_volume" in body:
        out["min_volume"] = _count(body["min_volume"], "policy.min_volume", 0, MAX_WINDOW)
        if out.get("window") is not None and out["min_volume"] is not None \
                and out["min_volume"] > out["window"]:
            raise _invalid("policy.min_volume", f"must be at most window ({out['window']})")
    return out


def tenant_add(body: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, limits, policy) of POST /v1/tenants."""
    _keys(body, ("name", "limits", "policy"), None)
    name = body.get("name")
    if not isinstance(name, str):
        raise _invalid("name", "is required: a string")
    try:
        check_name(name)
    except ValueError as exc:
        raise _invalid("name", str(exc)[:200]) from None
    limits, policy = body.get("limits"), body.get("policy")
    # A new tenant has nothing to clear: null is "not set", left out.
    return (name, {} if limits is None else _set_only(tenant_limits(limits)),
            {} if policy is None else _set_only(tenant_policy(policy)))


def _set_only(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def tenant_update(body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(limits, policy) of PATCH /v1/tenants/{name}: None when not given."""
    _keys(body, ("limits", "policy"), None)
    limits, policy = body.get("limits"), body.get("policy")
    if limits is None and policy is None:
        raise _invalid(None, 'nothing to change: give "limits" and/or "policy"')
    return (None if limits is None else tenant_limits(limits),
            None if policy is None else tenant_policy(policy))


def tenant_reason(body: dict[str, Any], *, required: bool) -> str:
    """The "reason" of a pause (optional) or a resume (required, non-empty)."""
    _keys(body, ("reason",), None)
    reason = body.get("reason")
    if reason is None and not required:
        return ""
    if not isinstance(reason, str) or (required and not reason.strip()):
        raise _invalid("reason", "is required: a non-empty string" if required
                       else "must be a string")
    if len(reason) > MAX_REASON:
        raise _invalid("reason", f"is too long ({len(reason)} characters, at most {MAX_REASON})")
    if has_control(reason):
        raise _invalid("reason", "contains control characters")
    return reason.strip()
