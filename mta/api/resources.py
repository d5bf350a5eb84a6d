"""The sending API's resources: domains, suppressions and webhooks (Resend's shapes).

One job: turn each /domains, /suppressions and /webhooks request into one
call of the injected `ResourceBackend`, after checking its path, query and
JSON body here (422 `validation_error` naming the field; a path id that
names nothing is 404 `not_found`), and answer JSON.

Public API:
    ResourceBackend                   the Protocol the runtime implements
                                      (mta.runtime.api_resources.RuntimeResources)
    resource_routes(backend) -> Routes          (mta.api.http.Routes)
    RESEND_EVENTS                     Resend's webhook event names we map to ours

Routes (every one needs a full-access key; a test key may read, never change):
    POST   /domains {"name", "region"?}        the domain object (records to publish)
    GET    /domains[?limit&after|before]       {"object": "list", "has_more", "data"}
    GET    /domains/{id}                       {"object": "domain", id, name, status,
                                                created_at, region, records: [{record,
                                                name, fqdn, type, ttl, status, value,
                                                priority?, required}], last_checked_at,
                                                failure_reason}
        status: not_started | pending | verified | failed; a record's also
        temporary_failure (a DNS timeout); region is always "local" (ignored)
    POST   /domains/{id}/verify                runs the DNS check now → the domain object
                                                (each record's status from this check)
    DELETE /domains/{id}                       {"object": "domain", "id", "deleted": true}
    GET    /suppressions[?limit&after|before&origin]   the list (default limit 20)
    GET    /suppressions/{email}               one entry
    POST   /suppressions {"email", "reason"?}  {"object": "suppression", "id", …}
    DELETE /suppressions/{email}               {"object": "suppression", "id", "deleted"}
    POST   /webhooks {"endpoint", "events", "name"?}   {"object": "webhook", "id",
                                                "signing_secret", …}
    GET    /webhooks[?limit&after|before]; GET /webhooks/{id}
    PATCH  /webhooks/{id} {"endpoint"?, "events"?, "status"?: "enabled"|"disabled"}
    DELETE /webhooks/{id}; POST /webhooks/{id}/test (one signed test request)

Ids: a domain's id is its name (lower-case A-labels), a suppression's its
address, a webhook's its name (given, or "wh_" + 16 hex digits). Resend uses
UUIDs; the SDKs treat ids as opaque strings. Unknown body fields are ignored
(the SDKs send some: Node's custom_return_path, Python's webhook_id).

Tenants (issue 14): every call is for the request's key, and sees only
what the key's tenant owns (the backend decides: another tenant's id is
404, a name another tenant holds is 409). Suppressions here are the key's
tenant's list (scope = the tenant's name, "default" for keys no named
tenant owns); the operator's global list (scope "", shown as "global") is
`mta suppression`'s and the admin API's, not listed or changed here.
An item: Resend's {id, email, origin (bounce | complaint | manual),
source_id (the queue id that caused it), created_at} plus ours {reason,
scope, expires_at, reply}. Adding an address already on the list answers
the existing entry (as Resend does).

Webhook events: our ledger types (config.EVENT_TYPES) or "*"; Resend's
names in RESEND_EVENTS are accepted and stored as ours. The endpoint URL is
checked as the config file's `[[webhooks]] url` is (config.loader's
webhook_errors). A webhook from the config file is listed to the default tenant's keys
(source "config", signing_secret null) and may be tested, not changed
(409); a key's endpoint gets only its tenant's events.

Test keys (mta_test_…) may read these resources; a change is 403
`restricted_api_key`: test keys cannot change live settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from mta.api.fields import invalid, string_field
from mta.api.http import KEY, ApiError, Routes, read_json
from mta.api.keys import ApiKey
from mta.config.loader import webhook_errors
from mta.config.sections import WebhookConfig
from mta.core.address import AddressError, parse_address, parse_domain
from mta.core.envelope import EVENT_TYPES, SUPPRESSION_REASONS

__all__ = ["RESEND_EVENTS", "ResourceBackend", "resource_routes"]

Json = dict[str, Any]

RESEND_EVENTS = {"email.sent": "received", "email.delivered": "delivered",
                 "email.delivery_delayed": "deferred", "email.bounced": "bounced",
                 "email.complained": "complained", "email.suppressed": "suppressed",
                 "email.clicked": "clicked", "email.opened": "opened"}
ORIGINS = ("bounce", "complaint", "manual")
_LIST_MAX = 100
_URL_MAX = 2048
_ADDRESS_MAX = 320
_EVENTS_MAX = 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# webhook_errors checks a secret too; the backend makes the real one.
_PLACEHOLDER_SECRET = "whsec_" + "A" * 43 + "="


class ResourceBackend(Protocol):
    """What the resource routes ask of the running daemon, for the request's
    key (whose tenant decides what it sees: the backend scopes). Every value
    is plain JSON; lists come sorted by id. `None` / False: no such id (or
    another tenant's). Raise ApiError for a refusal only the backend can see
    (409 a name in use, another tenant's or the config file's, 422 what a
    service refused, 503 storage)."""

    async def domains(self, key: ApiKey) -> list[Json]: ...
    async def domain(self, key: ApiKey, name: str) -> Json | None: ...
    async def add_domain(self, key: ApiKey, name: str) -> Json: ...
    async def verify_domain(self, key: ApiKey, name: str) -> Json | None: ...
    async def remove_domain(self, key: ApiKey, name: str) -> bool: ...

    async def suppressions(self, key: ApiKey, limit: int, after: str | None,
                           before: str | None, origin: str | None
                           ) -> tuple[list[Json], bool]: ...
    async def suppression(self, key: ApiKey, address: str) -> Json | None: ...
    async def suppress(self, key: ApiKey, address: str, reason: str) -> Json: ...
    async def unsuppress(self, key: ApiKey, address: str) -> bool: ...

    async def webhooks(self, key: ApiKey) -> list[Json]: ...
    async def webhook(self, key: ApiKey, name: str) -> Json | None: ...
    async def add_webhook(self, key: ApiKey, name: str | None, url: str,
                          events: tuple[str, ...]) -> Json: ...
    async def update_webhook(self, key: ApiKey, name: str, *, url: str | None,
                             events: tuple[str, ...] | None,
                             enabled: bool | None) -> Json | None: ...
    async def remove_webhook(self, key: ApiKey, name: str) -> bool: ...
    async def test_webhook(self, key: ApiKey, name: str) -> Json | None: ...


_invalid = invalid


def _show(value: str) -> str:
    return repr(value[:60] + ("…" if len(value) > 60 else ""))


def _live(request: web.Request) -> None:
    if request[KEY].test:
        raise ApiError(403, "restricted_api_key",
                       "Test API keys cannot change live settings (domains, suppressions, "
                       "webhooks); use a live full-access key")


async def _body(request: web.Request) -> dict[str, Any]:
    doc = await read_json(request)
    if not isinstance(doc, dict):
        raise _invalid("body", "must be a JSON object")
    return doc


def _string(doc: dict[str, Any], field: str, *, required: bool = True,
            max_len: int = 255) -> str | None:
    return string_field(doc, field, max_len=max_len, required=required)


# -- queries and pages ---------------------------------------------------------------

def _query(request: web.Request, known: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in known:
            raise _invalid(name[:40], f"unknown query parameter (known: {', '.join(known)})")
        if name in out:
            raise _invalid(name, "given more than once")
        out[name] = value
    if "after" in out and "before" in out:
        raise _invalid("before", "give after or before, not both")
    return out


def _limit(q: dict[str, str], default: int | None) -> int | None:
    raw = q.get("limit")
    if raw is None:
        return default
    # len: int() of more than 4300 digits raises ValueError (CPython's limit)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 \
            or not 1 <= int(raw) <= _LIST_MAX:
        raise _invalid("limit", f"an integer from 1 to {_LIST_MAX}")
    return int(raw)


def _page(items: list[Json], q: dict[str, str]) -> Json:
    """Resend's list object over items sorted by id: `limit` of them after
    (or before) the id given; all of them without a limit."""
    limit = _limit(q, None)
    if "after" in q:
        items = [i for i in items if i["id"] > q["after"]]
    if "before" in q:
        items = [i for i in items if i["id"] < q["before"]]
        more = limit is not None and len(items) > limit
        page = items[-limit:] if limit is not None else items
    else:
        more = limit is not None and len(items) > limit
        page = items[:limit] if limit is not None else items
    return {"object": "list", "has_more": more, "data": page}


# -- domains -------------------------------------------------------------------------

def _domain_name(value: str, field: str) -> str:
    try:
        name = parse_domain(value)
    except AddressError:
        raise _invalid(field, f"{_show(value)} is not a domain name") from None
    if name.startswith("[") or "." not in name:
        raise _invalid(field, f"{_show(value)} is not a domain name one can send from")
    return name


def _domain_id(request: web.Request) -> str:
    value = request.match_info.get("id", "")
    try:
        return _domain_name(value, "id")
    except ApiError:
        raise ApiError(404, "not_found", "Domain not found") from None


def _domain_routes(b: ResourceBackend) -> Routes:
    async def create(request: web.Request) -> web.Response:
        _live(request)
        doc = await _body(request)
        name = _domain_name(_string(doc, "name") or "", "name")
        _string(doc, "region", required=False, max_len=64)   # checked, then ignored
        return web.json_response(await b.add_domain(request[KEY], name))

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(_page(await b.domains(request[KEY]),
                                       _query(request, ("limit", "after", "before"))))

    async def get(request: web.Request) -> web.Response:
        return web.json_response(_found(await b.domain(request[KEY], _domain_id(request)),
                                        "Domain"))

    async def verify(request: web.Request) -> web.Response:
        _live(request)
        return web.json_response(_found(
            await b.verify_domain(request[KEY], _domain_id(request)), "Domain"))

    async def delete(request: web.Request) -> web.Response:
        _live(request)
        name = _domain_id(request)
        if not await b.remove_domain(request[KEY], name):
            raise ApiError(404, "not_found", "Domain not found")
        return web.json_response({"object": "domain", "id": name, "deleted": True})

    return [("POST", "/domains", create, True), ("GET", "/domains", listing, True),
            ("GET", "/domains/{id}", get, True), ("POST", "/domains/{id}/verify", verify, True),
            ("DELETE", "/domains/{id}", delete, True)]


def _found(doc: Json | None, what: str) -> Json:
    if doc is None:
        raise ApiError(404, "not_found", f"{what} not found")
    return doc


# -- suppressions --------------------------------------------------------------------

def _address(value: str, field: str) -> str:
    if len(value) > _ADDRESS_MAX:
        raise _invalid(field, f"at most {_ADDRESS_MAX} characters")
    try:
        addr = parse_address(value.strip())
    except AddressError:
        raise _invalid(field, f"{_show(value)} is not an email address") from None
    return str(addr)


def _suppressed_id(request: web.Request) -> str:
    try:
        return _address(request.match_info.get("id", ""), "id")
    except ApiError:
        raise ApiError(404, "not_found", "Suppression not found") from None


def _suppression_routes(b: ResourceBackend) -> Routes:
    async def listing(request: web.Request) -> web.Response:
        q = _query(request, ("limit", "after", "before", "origin"))
        origin = q.get("origin")
        if origin is not None and origin not in ORIGINS:
            raise _invalid("origin", f"one of {', '.join(ORIGINS)}")
        limit = _limit(q, 20)
        assert limit is not None
        data, more = await b.suppressions(request[KEY], limit, q.get("after"), q.get("before"),
                                          origin)
        return web.json_response({"object": "list", "has_more": more, "data": data})

    async def get(request: web.Request) -> web.Response:
        return web.json_response(_found(
            await b.suppression(request[KEY], _suppressed_id(request)), "Suppression"))

    async def add(request: web.Request) -> web.Response:
        _live(request)
        doc = await _body(request)
        address = _address(_string(doc, "email", max_len=_ADDRESS_MAX) or "", "email")
        reason = _string(doc, "reason", required=False, max_len=32) or "manual"
        if reason not in SUPPRESSION_REASONS:
            raise _invalid("reason", f"one of {', '.join(SUPPRESSION_REASONS)}")
        return web.json_response(await b.suppress(request[KEY], address, reason))

    async def remove(request: web.Request) -> web.Response:
        _live(request)
        address = _suppressed_id(request)
        if not await b.unsuppress(request[KEY], address):
            raise ApiError(404, "not_found", "Suppression not found")
        return web.json_response({"object": "suppression", "id": address, "deleted": True})

    return [("GET", "/suppressions", listing, True), ("POST", "/suppressions", add, True),
            ("GET", "/suppressions/{id}", get, True),
            ("DELETE", "/suppressions/{id}", remove, True)]


# -- webhooks ------------------------------------------------------------------------

def _webhook_name(value: str, field: str) -> str:
    if not value or len(value) > 64 or not set(value) <= _NAME_CHARS:
        raise _invalid(field, "1 to 64 letters, digits, '.', '_' or '-'")
    return value


def _webhook_id(request: web.Request) -> str:
    try:
        return _webhook_name(request.match_info.get("id", ""), "id")
    except ApiError:
        raise ApiError(404, "not_found", "Webhook not found") from None


def _events(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > _EVENTS_MAX:
        raise _invalid("events", f"a list of 1 to {_EVENTS_MAX} event types")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _invalid("events", "a list of strings")
        event = RESEND_EVENTS.get(item, item)
        if event != "*" and event not in EVENT_TYPES:
            raise _invalid("events", f"unknown event type {_show(item)}; use \"*\" or some of "
                                     f"{', '.join(EVENT_TYPES)}")
        if event not in out:
            out.append(event)
    return ("*",) if "*" in out else tuple(out)


def _check_webhook(url: str | None, events: tuple[str, ...] | None) -> None:
    """The config file's checks of an endpoint (webhook_errors), fields named
    as this API names them."""
    cfg = WebhookConfig(name="x", url=url or "https://x.invalid/", events=events or ("*",),
                        secret=_PLACEHOLDER_SECRET)
    for key, message in webhook_errors(cfg):
        if key == "url" and url is not None:
            raise _invalid("endpoint", message)
        if key == "events" and events is not None:
            raise _invalid("events", message)


def _webhook_changes(doc: dict[str, Any], *, create: bool
                     ) -> tuple[str | None, tuple[str, ...] | None, bool | None]:
    url = _string(doc, "endpoint", required=create, max_len=_URL_MAX)
    events = _events(doc["events"]) if create or doc.get("events") is not None else None
    enabled = None
    status = _string(doc, "status", required=False, max_len=16)
    if status is not None:
        if status not in ("enabled", "disabled"):
            raise _invalid("status", "enabled or disabled")
        enabled = status == "enabled"
    _check_webhook(url, events)
    return url, events, enabled


def _webhook_routes(b: ResourceBackend) -> Routes:
    async def create(request: web.Request) -> web.Response:
        _live(request)
        doc = await _body(request)
        if doc.get("events") is None:
            raise ApiError(422, "missing_required_field", "events: required")
        name = _string(doc, "name", required=False, max_len=64)
        url, events, _ = _webhook_changes(doc, create=True)
        assert url is not None and events is not None
        return web.json_response(await b.add_webhook(
            request[KEY],
            None if name is None else _webhook_name(name, "name"), url, events))

    async def listing(request: web.Request) -> web.Response:
        return web.json_response(_page(await b.webhooks(request[KEY]),
                                       _query(request, ("limit", "after", "before"))))

    async def get(request: web.Request) -> web.Response:
        return web.json_response(_found(await b.webhook(request[KEY], _webhook_id(request)),
                                        "Webhook"))

    async def update(request: web.Request) -> web.Response:
        _live(request)
        name = _webhook_id(request)
        url, events, enabled = _webhook_changes(await _body(request), create=False)
        _found(await b.update_webhook(request[KEY], name, url=url, events=events,
                                      enabled=enabled), "Webhook")
        return web.json_response({"object": "webhook", "id": name})

    async def delete(request: web.Request) -> web.Response:
        _live(request)
        name = _webhook_id(request)
        if not await b.remove_webhook(request[KEY], name):
            raise ApiError(404, "not_found", "Webhook not found")
        return web.json_response({"object": "webhook", "id": name, "deleted": True})

    async def test(request: web.Request) -> web.Response:
        return web.json_response(_found(
            await b.test_webhook(request[KEY], _webhook_id(request)), "Webhook"))

    return [("POST", "/webhooks", create, True), ("GET", "/webhooks", listing, True),
            ("GET", "/webhooks/{id}", get, True), ("PATCH", "/webhooks/{id}", update, True),
            ("DELETE", "/webhooks/{id}", delete, True),
            ("POST", "/webhooks/{id}/test", test, True)]


def resource_routes(backend: ResourceBackend) -> Routes:
    return [*_domain_routes(backend), *_suppression_routes(backend),
            *_webhook_routes(backend)]

