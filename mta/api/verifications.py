"""The sending API's one-time codes: /verifications (send a code by email,
check it).

One job: turn each /verifications request into one call of the injected
`VerificationBackend`, after checking its path and JSON body here (422
`validation_error` / `missing_required_field` naming the field; a path id
that is not a verification id is 404 `not_found`), and answer JSON.

Public API:
    VerificationBackend          the Protocol the runtime implements
                                 (mta.runtime.api_verifications.RuntimeVerifications)
    verification_routes(backend) -> Routes          (mta.api.http.Routes)
    VERIFICATION_ID              the id's pattern: "vrf_" + 20 hex digits

Routes (sending keys too, except GET, which needs a full-access key):
    POST /verifications {"to", "channel"?: "email", "from"?, "template"?, "locale"?}
        -> {"object": "verification", "id", "to", "channel", "status",
            "created_at", "expires_at", "sends", "email_id"}
        `to`: one address (a string, or a list of exactly one). `from` is
        required unless the template gives one (the backend decides: 422
        missing_required_field "from"). `template`: a template's id or alias,
        rendered with the variables "code" and "minutes". `locale` is
        accepted and ignored. A POST for an address that has a pending
        verification resends that one (same id, same code).
    POST /verifications/{id}/resend        the same object, the same rules
        a resend too soon, or past the verification's max sends: 429
        rate_limit_exceeded with retry-after; not pending: 409 conflict
    POST /verifications/{id}/check {"code"}
        -> {"object": "verification_check", "id", "status", "valid",
            "attempts_remaining"}
        a wrong code is a 200 with valid false (not an error)
    GET  /verifications/{id}               the verification object

Invariants: no answer ever holds a code or its hash; unknown body fields
are ignored; an id another tenant owns is 404 (the backend decides).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from aiohttp import web

from mta.api.fields import invalid, string_field
from mta.api.http import KEY, ApiError, Routes, read_json
from mta.api.keys import ApiKey
from mta.core.address import AddressError, parse_address

__all__ = ["VERIFICATION_ID", "VerificationBackend", "verification_routes"]

Json = dict[str, Any]

VERIFICATION_ID = re.compile(r"vrf_[0-9a-f]{20}")
CHANNELS = ("email",)
_ADDRESS_MAX = 320
_FROM_MAX = 998
_TEMPLATE_MAX = 256
_CODE_MAX = 64


class VerificationBackend(Protocol):
    """What the routes ask of the running daemon, for the request's key
    (its tenant decides what it sees). `None`: no such id (or another
    tenant's). Raise ApiError for a refusal (422 a field only the backend
    can judge, 429 cooldown or max sends, 409 not pending, 503 storage)."""

    async def start(self, key: ApiKey, to: str, sender: str | None,
                    template: str | None) -> Json: ...
    async def resend(self, key: ApiKey, vid: str) -> Json | None: ...
    async def check(self, key: ApiKey, vid: str, code: str) -> Json | None: ...
    async def get(self, key: ApiKey, vid: str) -> Json | None: ...


_invalid = invalid


async def _body(request: web.Request) -> dict[str, Any]:
    doc = await read_json(request)
    if not isinstance(doc, dict):
        raise _invalid("body", "must be a JSON object")
    return doc


def _string(doc: dict[str, Any], field: str, max_len: int, *,
            required: bool = False) -> str | None:
    return string_field(doc, field, max_len=max_len, required=required)


def _to(doc: dict[str, Any]) -> str:
    value = doc.get("to")
    if isinstance(value, list):
        if len(value) != 1:
            raise _invalid("to", "exactly one email address")
        value = value[0]
    text = _string({"to": value}, "to", _ADDRESS_MAX, required=True) or ""
    try:
        return str(parse_address(text))
    except AddressError:
        shown = text[:60] + ("…" if len(text) > 60 else "")
        raise _invalid("to", f"{shown!r} is not an email address") from None


def _channel(doc: dict[str, Any]) -> str:
    channel = _string(doc, "channel", 32) or "email"
    if channel not in CHANNELS:
        raise _invalid("channel", f"only {', '.join(CHANNELS)} is supported")
    return channel


def _vid(request: web.Request) -> str:
    value = request.match_info.get("id", "")
    if not VERIFICATION_ID.fullmatch(value):
        raise ApiError(404, "not_found", "Verification not found")
    return value


def _found(doc: Json | None) -> web.Response:
    if doc is None:
        raise ApiError(404, "not_found", "Verification not found")
    return web.json_response(doc)


def verification_routes(backend: VerificationBackend) -> Routes:
    async def create(request: web.Request) -> web.Response:
        doc = await _body(request)
        to = _to(doc)
        _channel(doc)
        sender = _string(doc, "from", _FROM_MAX)
        template = _string(doc, "template", _TEMPLATE_MAX)
        if template == "":
            raise _invalid("template", "must not be empty")
        _string(doc, "locale", 64)                   # checked, then ignored
        return web.json_response(await backend.start(request[KEY], to, sender, template))

    async def resend(request: web.Request) -> web.Response:
        return _found(await backend.resend(request[KEY], _vid(request)))

    async def check(request: web.Request) -> web.Response:
        vid = _vid(request)
        doc = await _body(request)
        code = doc.get("code")
        if code is None:
            raise ApiError(422, "missing_required_field", "code: required")
        if not isinstance(code, str):
            raise _invalid("code", "must be a string")
        # A longer string is as wrong as any other malformed code (and
        # counts as an attempt): cut it instead of refusing it.
        return _found(await backend.check(request[KEY], vid, code[:_CODE_MAX]))

    async def get(request: web.Request) -> web.Response:
        return _found(await backend.get(request[KEY], _vid(request)))

    return [("POST", "/verifications", create, False),
            ("POST", "/verifications/{id}/resend", resend, False),
            ("POST", "/verifications/{id}/check", check, False),
            ("GET", "/verifications/{id}", get, True)]
