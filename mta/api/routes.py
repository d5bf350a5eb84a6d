"""The sending API's routes: emails and API keys (Resend's shapes).

One job: turn each request into one call of the injected `SendingBackend`
and its answer into Resend's JSON; inputs are validated here before the
backend sees them, except email bodies: those the backend validates
(mta.api.emails) where it builds the messages — in a receiver process when
there is one (runtime/api_build.py).

Public API:
    SendingBackend            the Protocol the runtime implements (runtime/api.py)
    email_routes(backend, settings_of) -> Routes     (mta.api.http.Routes)
    fingerprint(doc) -> str   SHA-256 of a request body's canonical JSON
                              (an Idempotency-Key repeated with another body is a 409)
    IDEMPOTENCY_KEY_MAX = 256

Routes (all JSON; `full` = needs a full-access key):
    POST   /emails               {"id"}                       (sending keys too)
    POST   /emails/batch         {"data": [{"id"}, …]}        (sending keys too)
    GET    /emails?limit=&after= {"object": "list", "has_more", "data"}      full
    GET    /emails/{id}          Resend's email object + last_event         full
    PATCH  /emails/{id}          {"scheduled_at"} → {"object": "email", "id"} full
    POST   /emails/{id}/cancel   {"object": "email", "id"}                  full
    GET    /emails/{id}/events   {"object": "list", "data": [event, …]}     full
    POST   /api-keys             {"id", "token"} (the token is shown once)  full
    GET    /api-keys             {"object": "list", "data": [key, …]}       full
    DELETE /api-keys/{id}        {"object": "api_key", "id", "deleted"}     full
    GET    /openapi.json         the OpenAPI 3.1 document (mta.api.openapi; no key)

Idempotency-Key (header, POST /emails and /emails/batch): 1..256 printable
ASCII characters (an empty one counts as absent: the Python SDK sends it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from mta.api.emails import ValidationError, parse_scheduled_at
from mta.api.http import KEY, ApiError, ApiSettings, Routes, read_json, read_raw
from mta.api.keys import ApiKey, check_domains, check_name, check_permission, check_rate_limit
from mta.api.openapi import openapi_document

__all__ = ["SendingBackend", "email_routes", "fingerprint", "IDEMPOTENCY_KEY_MAX"]

IDEMPOTENCY_KEY_MAX = 256
_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_LIST_MAX = 100
_T = TypeVar("_T")


class SendingBackend(Protocol):
    """What the routes ask of the running daemon. Raise ApiError for a
    refusal (403 sender domain, 404 unknown id, 409, 503 storage)."""

    async def send(self, key: ApiKey, raw: bytes, *, batch: bool,
                   idempotency_key: str | None, client_ip: str) -> list[str]:
        """The ids of the emails in `raw` (a POST /emails body, or a batch's),
        validated and accepted; an Idempotency-Key repeat answers the first
        request's ids (the backend compares `fingerprint`s of the bodies)."""
    async def get_email(self, key: ApiKey, email_id: str) -> dict[str, Any]: ...
    async def list_emails(self, key: ApiKey, limit: int,
                          after: str | None) -> dict[str, Any]: ...
    async def reschedule(self, key: ApiKey, email_id: str, at: float) -> dict[str, Any]: ...
    async def cancel(self, key: ApiKey, email_id: str) -> dict[str, Any]: ...
    async def email_events(self, key: ApiKey, email_id: str) -> dict[str, Any]: ...
    async def create_key(self, key: ApiKey, name: str, *, permission: str,
                         domains: tuple[str, ...], rate_limit: float) -> dict[str, Any]: ...
    async def list_keys(self, key: ApiKey) -> dict[str, Any]: ...
    async def revoke_key(self, key: ApiKey, key_id: str) -> dict[str, Any]: ...
    def now(self) -> float: ...


def fingerprint(doc: object) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _idempotency_key(request: web.Request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None or value == "":
        return None
    if len(value) > IDEMPOTENCY_KEY_MAX or not all(" " < c <= "~" for c in value):
        raise ApiError(422, "validation_error",
                       f"Idempotency-Key: 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII "
                       "characters, no spaces")
    return value


def _email_id(request: web.Request) -> str:
    value = request.match_info.get("id", "")
    if not _ID.fullmatch(value):
        raise ApiError(404, "not_found", "Email not found")
    return value


def _invalid(exc: ValidationError) -> ApiError:
    return ApiError(422, exc.name, exc.message)


def _object(doc: object, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ApiError(422, "validation_error", f"body: {what} must be a JSON object")
    return doc


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    # len: int() of more than 4300 digits raises ValueError (CPython's limit)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 \
            or not 1 <= int(raw) <= _LIST_MAX:
        raise ApiError(422, "validation_error", f"limit: an integer from 1 to {_LIST_MAX}")
    return int(raw)


def email_routes(backend: SendingBackend, settings_of: Callable[[], ApiSettings]) -> Routes:
    async def send(request: web.Request) -> web.Response:
        key = _idempotency_key(request)
        ids = await backend.send(request[KEY], await read_raw(request), batch=False,
                                 idempotency_key=key, client_ip=request.remote or "")
        return web.json_response({"id": ids[0]})

    async def batch(request: web.Request) -> web.Response:
        key = _idempotency_key(request)
        ids = await backend.send(request[KEY], await read_raw(request), batch=True,
                                 idempotency_key=key, client_ip=request.remote or "")
        return web.json_response({"data": [{"id": i} for i in ids]})

    async def get_email(request: web.Request) -> web.Response:
        return web.json_response(await backend.get_email(request[KEY], _email_id(request)))

    async def list_emails(request: web.Request) -> web.Response:
        after = request.query.get("after")
        if after is not None and not _ID.fullmatch(after):
            raise ApiError(422, "validation_error", "after: an email id")
        return web.json_response(await backend.list_emails(request[KEY], _limit(request),
                                                           after))

    async def update_email(request: web.Request) -> web.Response:
        email_id = _email_id(request)
        doc = _object(await read_json(request), "the update")
        if "scheduled_at" not in doc:
            raise ApiError(422, "missing_required_field", "scheduled_at: required")
        try:
            at = parse_scheduled_at(doc["scheduled_at"], backend.now())
        except ValidationError as exc:
            raise _invalid(exc) from None
        return web.json_response(await backend.reschedule(request[KEY], email_id, at))

    async def cancel(request: web.Request) -> web.Response:
        return web.json_response(await backend.cancel(request[KEY], _email_id(request)))

    async def events(request: web.Request) -> web.Response:
        return web.json_response(await backend.email_events(request[KEY], _email_id(request)))

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    return [("POST", "/emails", send, False), ("POST", "/emails/batch", batch, False),
            ("GET", "/emails", list_emails, True), ("GET", "/emails/{id}", get_email, True),
            ("PATCH", "/emails/{id}", update_email, True),
            ("POST", "/emails/{id}/cancel", cancel, True),
            ("GET", "/emails/{id}/events", events, True), *_key_routes(backend),
            ("GET", "/openapi.json", openapi, False)]


def _key_routes(backend: SendingBackend) -> Routes:
    async def create_key(request: web.Request) -> web.Response:
        doc = _object(await read_json(request), "the key")
        one = "domain_id" if "domain_id" in doc else "domain"    # Resend's name, or ours
        name = _checked("name", check_name, doc.get("name"))
        permission = _checked("permission", check_permission,
                              doc.get("permission", "full_access"))
        domains = tuple(dict.fromkeys(_checked(one, _domain_list, doc.get(one))
                                      + _checked("domains", _domain_list, doc.get("domains"))))
        rate = _checked("rate_limit", check_rate_limit, doc.get("rate_limit", 0))
        return web.json_response(await backend.create_key(
            request[KEY], name, permission=permission, domains=domains, rate_limit=rate))

    async def list_keys(request: web.Request) -> web.Response:
        return web.json_response(await backend.list_keys(request[KEY]))

    async def revoke_key(request: web.Request) -> web.Response:
        key_id = request.match_info.get("id", "")
        if not re.fullmatch(r"[a-z2-7]{12}", key_id):
            raise ApiError(404, "not_found", "API key not found")
        return web.json_response(await backend.revoke_key(request[KEY], key_id))

    return [("POST", "/api-keys", create_key, True), ("GET", "/api-keys", list_keys, True),
            ("DELETE", "/api-keys/{id}", revoke_key, True)]


def _checked(field: str, check: Callable[[Any], _T], value: object) -> _T:
    """check(value), its ValueError a 422 naming the field."""
    try:
        return check(value)
    except ValueError as exc:
        raise ApiError(422, "validation_error", f"{field}: {exc}") from None


def _domain_list(value: object) -> tuple[str, ...]:
    """`domain_id` (Resend's: one domain) or `domains` (a list): None → ()."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(d, str) for d in items):
        raise ValueError("a domain name or a list of them")
    return check_domains(items)
