"""The OpenAPI 3.1 description of the sending API, served at GET /openapi.json.

One job: describe every route of the sending API (mta.api.routes: emails,
batch, api-keys; mta.api.resources: domains, suppressions, webhooks; the
templates and verifications part is mta.api.openapi_content) — path
and query parameters, request bodies, response schemas, the error shape
`{"statusCode", "name", "message"}`, the bearer security scheme, the
Idempotency-Key header and the rate-limit headers — for SDK users and tools.

Public API:
    openapi_document() -> dict     a fresh copy each call

Invariants: the paths and methods here are exactly the app's routes
(tests/test_api_openapi.py walks a running daemon's router and compares, so
a route added without its description fails CI); they are written out one
by one on purpose: deriving them from the route table would make that test
vacuous. Every request-body field listed is one the API checks (a wrong
type is a 4xx: tests/test_api_hostile.py sends one per field); fields the
API ignores are not listed. Each operation lists the statuses it can answer.
"""

from __future__ import annotations

import copy
from typing import Any

from mta.admin.openapi_parts import json_response as _json
from mta.admin.openapi_parts import obj as _obj
from mta.admin.openapi_parts import ref as _ref
from mta.api.emails import BATCH_MAX, MAX_ATTACHMENTS, MAX_HEADERS, MAX_TAGS
from mta.api.keys import MAX_NAME, MAX_RATE_LIMIT, MODES, PERMISSIONS
from mta.api.openapi_content import CONTENT_SCHEMAS, content_paths, with_send_options
from mta.core.envelope import EVENT_TYPES, SUPPRESSION_REASONS

__all__ = ["openapi_document"]

_IDEMPOTENCY_KEY_MAX = 256          # mta.api.routes.IDEMPOTENCY_KEY_MAX (a test compares)
_STR = {"type": "string"}
_STR_NULL = {"type": ["string", "null"]}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_LIST_OF_STR = {"type": "array", "items": _STR}
_RATE = {"RateLimit-Limit": {"$ref": "#/components/headers/RateLimitLimit"},
         "RateLimit-Remaining": {"$ref": "#/components/headers/RateLimitRemaining"},
         "RateLimit-Reset": {"$ref": "#/components/headers/RateLimitReset"}}
_HEADERS = {
    "RateLimitLimit": {"description": "requests per second allowed for this key",
                       "schema": {"type": "integer"}},
    "RateLimitRemaining": {"description": "requests left in the current window",
                           "schema": {"type": "integer"}},
    "RateLimitReset": {"description": "seconds until the window resets",
                       "schema": {"type": "integer"}},
    "RetryAfter": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}},
}
_ERROR_TEXT = {
    401: "missing_api_key (no Authorization header) or invalid_api_key",
    403: "restricted_api_key: a sending_access key on a route that needs full access",
    413: "payload_too_large: the body is over [api] max_request_size",
    422: "validation_error, missing_required_field or invalid_attachment; the message "
         "names the field (\"to[2]: …\", \"[3].subject: …\" in a batch)",
    500: "application_error: a bug (the traceback is in the server's log, never sent)",
}


def _err(description: str, *, retry: bool = False) -> dict[str, Any]:
    out = _json(_ref("Error"), description)
    if retry:
        out["headers"] = {**_RATE, "Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return out


def _op(op_id: str, summary: str, tag: str, ok: dict[str, Any], *,
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        errors: dict[int, str] | None = None, full: bool = True) -> dict[str, Any]:
    """One operation: `ok` is the 200 body's schema; `errors` the statuses
    beyond those every authenticated route may answer (401, 429, 500; 403
    with `full`, 413 and 422 with a body)."""
    responses: dict[str, Any] = {"200": {**_json(ok, "success"), "headers": _RATE}}
    codes: dict[int, str] = {401: _ERROR_TEXT[401]}
    if full:
        codes[403] = _ERROR_TEXT[403]
    if body is not None:
        codes.update({413: _ERROR_TEXT[413], 422: _ERROR_TEXT[422]})
    codes.update(errors or {})
    codes.update({429: "rate_limit_exceeded", 500: _ERROR_TEXT[500]})
    for code in sorted(codes):
        responses[str(code)] = _err(codes[code], retry=code in (429, 503))
    op: dict[str, Any] = {"summary": summary, "operationId": op_id, "tags": [tag],
                          "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    return op


def _path(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


_EMAIL_ID = _path("id", "the email's id (its queue id)",
                  {"type": "string", "pattern": "^[0-9A-Za-z]{1,64}$"})
_KEY_ID = _path("id", "the API key's id (12 characters of base32, the middle of its "
                      "prefix mta_live_<id>)", {"type": "string", "pattern": "^[a-z2-7]{12}$"})
_DOMAIN_ID = _path("id", "the domain's id: its name", {"type": "string", "minLength": 1})
_SUPPRESSION_ID = _path("id", "the suppressed address (URL-encoded)",
                        {"type": "string", "minLength": 3, "maxLength": 320})
_WEBHOOK_ID = _path("id", "the webhook's id: its name",
                    {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"})
_LIMIT = _query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 100})
_PAGE = [_LIMIT, _query("after", "the page after this id", _STR),
         _query("before", "the page before this id (not with after)", _STR)]
_IDEMPOTENCY = {"$ref": "#/components/parameters/IdempotencyKey"}
_SEND_ERRORS = {403: "the From: domain is not one this key (or the sender policy) may use",
                409: "invalid_idempotent_request (the Idempotency-Key was used with another "
                     "body) or concurrent_idempotent_requests (one with it is in flight)",
                503: "service_unavailable: the spool cannot take mail now (retry-after)"}
_TEST_KEY = "restricted_api_key: a sending_access key, or a test key changing live settings"

_ADDRESS_ONE_OR_MANY = {"oneOf": [_STR, {"type": "array", "items": _STR}],
                        "description": "an address (\"Name <addr>\" allowed) or a list"}
_SEND_PROPS: dict[str, Any] = {
    "from": {"type": "string", "description": "\"addr\" or \"Name <addr>\""},
    "to": _ADDRESS_ONE_OR_MANY, "cc": _ADDRESS_ONE_OR_MANY, "bcc": _ADDRESS_ONE_OR_MANY,
    "reply_to": _ADDRESS_ONE_OR_MANY,
    "subject": {"type": "string", "maxLength": 998},
    "html": _STR, "text": {"type": "string", "description": "derived from html when absent"},
    "headers": {"type": "object", "maxProperties": MAX_HEADERS,
                "additionalProperties": _STR,
                "description": "extra header fields; no CR/LF/NUL; not the fields mta writes"},
    "tags": {"type": "array", "maxItems": MAX_TAGS, "items": _ref("Tag")},
    "attachments": {"type": "array", "maxItems": MAX_ATTACHMENTS, "items": _ref("Attachment")},
    "scheduled_at": {"type": "string", "format": "date-time",
                     "description": "ISO 8601 with a timezone, at most 30 days ahead"},
}
_SEND_EXAMPLE = {"from": "Acme <team@acme.test>", "to": ["ok@rcpt.test"],
                 "cc": "ok-cc@rcpt.test", "bcc": ["ok-bcc@rcpt.test"],
                 "reply_to": "help@acme.test", "subject": "Hello", "html": "<p>Hi</p>",
                 "text": "Hi", "headers": {"X-Entity-Ref-ID": "123"},
                 "tags": [{"name": "category", "value": "welcome"}],
                 "attachments": [{"filename": "a.txt", "content": "aGVsbG8=",
                                  "content_type": "text/plain", "content_id": "a1"}]}
_BATCH_ITEM_PROPS = {k: v for k, v in _SEND_PROPS.items()
                     if k not in ("attachments", "scheduled_at")}
_BATCH_EXAMPLE = {k: v for k, v in _SEND_EXAMPLE.items() if k in _BATCH_ITEM_PROPS}


def _list_of(item: str) -> dict[str, Any]:
    return _obj({"object": {"const": "list"}, "has_more": {"type": "boolean"},
                 "data": {"type": "array", "items": _ref(item)}}, ["object", "data"])


def _ref_of(kind: str, *, deleted: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {"object": {"const": kind}, "id": _STR}
    if deleted:
        props["deleted"] = {"const": True}
    return _obj(props, list(props))


_SCHEMAS: dict[str, Any] = {
    "Error": _obj({"statusCode": {"type": "integer", "description": "the HTTP status"},
                   "name": {"type": "string", "description": "Resend's error name"},
                   "message": {"type": "string"}},
                  ["statusCode", "name", "message"], additionalProperties=False),
    "Tag": _obj({"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,256}$"},
                 "value": {"type": "string", "pattern": "^[A-Za-z0-9_-]{0,256}$"}}, ["name"]),
    "Attachment": _obj({
        "filename": {"type": "string", "maxLength": 255},
        "content": {"oneOf": [{"type": "string", "contentEncoding": "base64"},
                              {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                          "maximum": 255}}],
                    "description": "base64, or a list of byte values (the Python SDK's)"},
        "path": {"type": "string", "description": "a URL: refused (422) unless [api] "
                                                  "attachment_hosts names its host"},
        "content_type": {"type": "string", "description": "guessed from filename if absent"},
        "content_id": {"type": "string", "description": "inline part, referenced as cid:<id>"},
        "inline_content_id": {"type": "string", "description": "same as content_id"}},
        description="exactly one of content and path"),
    "SendEmail": _obj(_SEND_PROPS, ["from", "to", "subject"], example=_SEND_EXAMPLE,
                      description="html or text (or both) is required; unknown fields are "
                                  "ignored"),
    "BatchEmail": _obj(_BATCH_ITEM_PROPS, ["from", "to", "subject"], example=_BATCH_EXAMPLE,
                       description="as SendEmail, without attachments and scheduled_at"),
    "EmailId": _obj({"id": _STR}, ["id"]),
    "BatchResult": _obj({"data": {"type": "array", "items": _ref("EmailId")}}, ["data"]),
    "Email": _obj({
        "object": {"const": "email"}, "id": _STR, "from": _STR, "to": _LIST_OF_STR,
        "cc": _LIST_OF_STR, "bcc": _LIST_OF_STR, "reply_to": _LIST_OF_STR,
        "subject": _STR_NULL, "html": _STR_NULL, "text": _STR_NULL,
        "created_at": _TIME, "scheduled_at": _TIME,
        "last_event": {"enum": ["queued", "scheduled", "delivered", "bounced", "failed",
                                "canceled", "suppressed", "delivery_delayed"]},
        "tags": {"type": "array", "items": _ref("Tag")},
        "test": {"type": "boolean", "description": "sent with a test key (never delivered)"}},
        ["object", "id", "from", "to", "created_at", "last_event"]),
    "EmailList": _list_of("Email"),
    "EmailRef": _ref_of("email"),
    "EmailUpdate": _obj({"scheduled_at": _SEND_PROPS["scheduled_at"]}, ["scheduled_at"],
                        example={"scheduled_at": "2030-01-01T00:00:00Z"}),
    "EmailEvent": _obj({"seq": {"type": "integer"}, "type": {"enum": list(EVENT_TYPES)},
                        "at": _TIME, "recipient": _STR_NULL, "detail": {"type": "object"}},
                       ["seq", "type", "at"]),
    "EmailEvents": _obj({"object": {"const": "list"},
                         "data": {"type": "array", "items": _ref("EmailEvent")}},
                        ["object", "data"]),
    "ApiKeyCreate": _obj({
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "permission": {"enum": list(PERMISSIONS), "default": "full_access"},
        "domain_id": {"type": "string", "description": "pin a sending key to this domain"},
        "domains": {"type": "array", "items": _STR, "description": "or to these domains "
                                                                   "(\"*.d\" for subdomains)"},
        "rate_limit": {"type": "number", "minimum": 0, "maximum": MAX_RATE_LIMIT,
                       "description": "requests/s; 0: [api] rate_limit"}},
        ["name"], example={"name": "ci", "permission": "sending_access",
                           "domain_id": "acme.test", "domains": ["acme.test"],
                           "rate_limit": 5}),
    "ApiKey": _obj({"id": _STR, "name": _STR, "created_at": _TIME, "prefix": _STR,
                    "permission": {"enum": list(PERMISSIONS)}, "domains": _LIST_OF_STR,
                    "mode": {"enum": list(MODES)}, "rate_limit": {"type": "number"},
                    "last_used_at": _TIME, "revoked_at": _TIME},
                   ["id", "name", "created_at", "permission", "mode"]),
    "ApiKeyCreated": {"allOf": [_ref("ApiKey"), _obj(
        {"token": {"type": "string", "description": "the key; shown this once"}}, ["token"])]},
    "ApiKeyList": _obj({"object": {"const": "list"},
                        "data": {"type": "array", "items": _ref("ApiKey")}}, ["object", "data"]),
    "ApiKeyDeleted": _ref_of("api_key", deleted=True),
    "DomainCreate": _obj({"name": _STR, "region": {"type": "string", "maxLength": 64,
                                                   "description": "accepted, ignored"}},
                         ["name"], example={"name": "new.acme.test", "region": "us-east-1"}),
    "DomainRecord": _obj({
        "record": {"enum": ["DKIM", "SPF", "DMARC", "ReturnPath"]}, "name": _STR,
        "fqdn": _STR, "type": _STR, "ttl": _STR, "value": _STR,
        "priority": {"type": "integer"}, "required": {"type": "boolean"},
        "status": {"enum": ["not_started", "pending", "verified", "failed",
                            "temporary_failure"]}},
        ["record", "name", "type", "value", "status"]),
    "Domain": _obj({
        "object": {"const": "domain"}, "id": _STR, "name": _STR,
        "status": {"enum": ["not_started", "pending", "verified", "failed"]},
        "created_at": _TIME, "region": _STR, "last_checked_at": _TIME,
        "failure_reason": _STR_NULL,
        "records": {"type": "array", "items": _ref("DomainRecord")}},
        ["object", "id", "name", "status", "records"]),
    "DomainList": _list_of("Domain"),
    "DomainDeleted": _ref_of("domain", deleted=True),
    "SuppressionCreate": _obj({"email": {"type": "string", "maxLength": 320},
                               "reason": {"enum": list(SUPPRESSION_REASONS),
                                          "default": "manual"}},
                              ["email"], example={"email": "gone@rcpt.test",
                                                  "reason": "manual"}),
    "Suppression": _obj({
        "object": {"const": "suppression"}, "id": _STR, "email": _STR,
        "origin": {"enum": ["bounce", "complaint", "manual"]}, "source_id": _STR_NULL,
        "created_at": _TIME, "reason": {"enum": list(SUPPRESSION_REASONS)}, "scope": _STR,
        "expires_at": _TIME, "reply": _STR_NULL}, ["object", "id", "email", "origin"]),
    "SuppressionList": _list_of("Suppression"),
    "SuppressionDeleted": _ref_of("suppression", deleted=True),
    "WebhookCreate": _obj({
        "endpoint": {"type": "string", "format": "uri", "maxLength": 2048},
        "events": {"type": "array", "minItems": 1, "items": _STR,
                   "description": "\"*\", mta's event types or Resend's names (email.sent…)"},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                 "description": "the id; default wh_<16 hex digits>"}},
        ["endpoint", "events"], example={"endpoint": "https://hooks.acme.test/mta",
                                         "events": ["email.delivered"], "name": "hook1"}),
    "WebhookUpdate": _obj({"endpoint": {"type": "string", "format": "uri", "maxLength": 2048},
                           "events": {"type": "array", "minItems": 1, "items": _STR},
                           "status": {"enum": ["enabled", "disabled"]}},
                          example={"endpoint": "https://hooks.acme.test/v2",
                                   "events": ["*"], "status": "disabled"}),
    "Webhook": _obj({
        "object": {"const": "webhook"}, "id": _STR, "name": _STR, "endpoint": _STR,
        "events": _LIST_OF_STR, "status": {"enum": ["enabled", "disabled"]},
        "created_at": _TIME,
        "signing_secret": {"type": ["string", "null"],
                           "description": "whsec_…; null for a config-file endpoint"},
        "source": {"enum": ["api", "config"]},
        "delivery": {"type": ["object", "null"]}},
        ["object", "id", "endpoint", "events", "status", "source"]),
    "WebhookList": _list_of("Webhook"),
    "WebhookRef": _ref_of("webhook"),
    "WebhookDeleted": _ref_of("webhook", deleted=True),
    "WebhookTest": _obj({"object": {"const": "webhook_test"}, "id": _STR, "endpoint": _STR,
                         "ok": {"type": "boolean"}, "status_code": {"type": ["integer", "null"]},
                         "error": _STR_NULL, "ms": {"type": "integer"}},
                        ["object", "id", "ok"]),
}

_BATCH_BODY = {"type": "array", "minItems": 1, "maxItems": BATCH_MAX,
               "items": _ref("BatchEmail")}

_PATHS: dict[str, Any] = {
    "/openapi.json": {"get": {
        "summary": "this document (no key needed)", "operationId": "openapi", "tags": ["meta"],
        "security": [],
        "responses": {"200": _json({"type": "object"}, "the OpenAPI 3.1 document")}}},
    "/emails": {
        "post": _op("send_email", "send one email (or schedule it)", "emails",
                    _ref("EmailId"), body=_ref("SendEmail"), params=[_IDEMPOTENCY],
                    errors=_SEND_ERRORS, full=False),
        "get": _op("list_emails", "the key's emails, newest first", "emails",
                   _ref("EmailList"), errors={422: "limit or after is malformed"},
                   params=[{**_LIMIT, "schema": {**_LIMIT["schema"], "default": 20}},
                           _query("after", "the page after this email id", _STR)]),
    },
    "/emails/batch": {"post": _op(
        "send_batch", f"send up to {BATCH_MAX} emails, accepted together (all or none)",
        "emails", _ref("BatchResult"), body=_BATCH_BODY, params=[_IDEMPOTENCY],
        errors=_SEND_ERRORS, full=False)},
    "/emails/{id}": {
        "get": _op("get_email", "one email, with last_event", "emails", _ref("Email"),
                   params=[_EMAIL_ID], errors={404: "not_found"}),
        "patch": _op("update_email", "reschedule an email not yet sent", "emails",
                     _ref("EmailRef"), body=_ref("EmailUpdate"), params=[_EMAIL_ID],
                     errors={404: "not_found", 409: "invalid_state: already sent"}),
    },
    "/emails/{id}/cancel": {"post": _op(
        "cancel_email", "cancel an email not yet sent", "emails", _ref("EmailRef"),
        params=[_EMAIL_ID], errors={404: "not_found", 409: "invalid_state: already sent"})},
    "/emails/{id}/events": {"get": _op(
        "email_events", "the email's ledger timeline", "emails", _ref("EmailEvents"),
        params=[_EMAIL_ID], errors={404: "not_found"})},
    "/api-keys": {
        "post": _op("create_api_key", "make a key (of this key's mode)", "api-keys",
                    _ref("ApiKeyCreated"), body=_ref("ApiKeyCreate"),
                    errors={409: "invalid_parameter: the name is taken"}),
        "get": _op("list_api_keys", "the keys of this key's mode", "api-keys",
                   _ref("ApiKeyList")),
    },
    "/api-keys/{id}": {"delete": _op(
        "revoke_api_key", "revoke a key", "api-keys", _ref("ApiKeyDeleted"),
        params=[_KEY_ID], errors={404: "not_found"})},
    "/domains": {
        "post": _op("create_domain", "add a sending domain: the DNS records to publish",
                    "domains", _ref("Domain"), body=_ref("DomainCreate"),
                    errors={403: _TEST_KEY, 409: "conflict: the domain exists"}),
        "get": _op("list_domains", "the sending domains, by id", "domains",
                   _ref("DomainList"), params=_PAGE,
                   errors={422: "a malformed or unknown query parameter"}),
    },
    "/domains/{id}": {
        "get": _op("get_domain", "one domain, each record with its status", "domains",
                   _ref("Domain"), params=[_DOMAIN_ID], errors={404: "not_found"}),
        "delete": _op("delete_domain", "remove a domain", "domains", _ref("DomainDeleted"),
                      params=[_DOMAIN_ID], errors={403: _TEST_KEY, 404: "not_found"}),
    },
    "/domains/{id}/verify": {"post": _op(
        "verify_domain", "check the domain's DNS records now", "domains", _ref("Domain"),
        params=[_DOMAIN_ID], errors={403: _TEST_KEY, 404: "not_found"})},
    "/suppressions": {
        "post": _op("add_suppression", "suppress an address (the existing entry if it is)",
                    "suppressions", _ref("Suppression"), body=_ref("SuppressionCreate"),
                    errors={403: _TEST_KEY, 503: "service_unavailable"}),
        "get": _op("list_suppressions", "the key's tenant's suppression list", "suppressions",
                   _ref("SuppressionList"),
                   params=[*_PAGE, _query("origin", "only these",
                                          {"enum": ["bounce", "complaint", "manual"]})],
                   errors={422: "a malformed or unknown query parameter"}),
    },
    "/suppressions/{id}": {
        "get": _op("get_suppression", "one entry", "suppressions", _ref("Suppression"),
                   params=[_SUPPRESSION_ID], errors={404: "not_found"}),
        "delete": _op("delete_suppression", "unsuppress an address", "suppressions",
                      _ref("SuppressionDeleted"), params=[_SUPPRESSION_ID],
                      errors={403: _TEST_KEY, 404: "not_found", 503: "service_unavailable"}),
    },
    "/webhooks": {
        "post": _op("create_webhook", "add an endpoint (signing_secret shown)", "webhooks",
                    _ref("Webhook"), body=_ref("WebhookCreate"),
                    errors={403: _TEST_KEY, 409: "conflict: the name is taken",
                            503: "service_unavailable"}),
        "get": _op("list_webhooks", "the key's tenant's endpoints (and, for the default "
                   "tenant's keys, the config file's)", "webhooks",
                   _ref("WebhookList"), params=_PAGE,
                   errors={422: "a malformed or unknown query parameter"}),
    },
    "/webhooks/{id}": {
        "get": _op("get_webhook", "one endpoint", "webhooks", _ref("Webhook"),
                   params=[_WEBHOOK_ID], errors={404: "not_found"}),
        "patch": _op("update_webhook", "change an endpoint made by the API", "webhooks",
                     _ref("WebhookRef"), body=_ref("WebhookUpdate"), params=[_WEBHOOK_ID],
                     errors={403: _TEST_KEY, 404: "not_found",
                             409: "conflict: a config-file endpoint", 503: "service_unavailable"}),
        "delete": _op("delete_webhook", "remove an endpoint made by the API", "webhooks",
                      _ref("WebhookDeleted"), params=[_WEBHOOK_ID],
                      errors={403: _TEST_KEY, 404: "not_found",
                              409: "conflict: a config-file endpoint",
                              503: "service_unavailable"}),
    },
    "/webhooks/{id}/test": {"post": _op(
        "test_webhook", "send one signed test request now", "webhooks", _ref("WebhookTest"),
        params=[_WEBHOOK_ID], errors={404: "not_found"})},
}
_SCHEMAS.update(CONTENT_SCHEMAS)
for _name in ("SendEmail", "BatchEmail"):
    _SCHEMAS[_name] = with_send_options(_SCHEMAS[_name])
_PATHS.update(content_paths(_op))

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mta sending API", "version": "1",
             "description": "Resend-compatible: the official Resend SDKs work unchanged "
                            "(RESEND_API_URL / baseUrl). Every route but /openapi.json needs "
                            "`Authorization: Bearer <key>` (mta key create). Errors are "
                            "{\"statusCode\", \"name\", \"message\"} with statusCode equal to "
                            "the HTTP status; a method a path does not serve is 405 "
                            "method_not_allowed, an unknown path 404 not_found. Bad input is "
                            "never a 5xx. Request bodies on GET and DELETE are ignored."},
    "servers": [{"url": "http://127.0.0.1:8080"}],
    "security": [{"bearer": []}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS, "headers": _HEADERS,
        "parameters": {"IdempotencyKey": {
            "name": "Idempotency-Key", "in": "header", "required": False,
            "description": "the same key and body within 24 h answer the original id(s), "
                           "nothing sent twice; an empty value counts as absent",
            "schema": {"type": "string", "maxLength": _IDEMPOTENCY_KEY_MAX,
                       "pattern": "^[!-~]*$"}}},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "an API key: mta_live_… or mta_test_…"}}},
}


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_DOCUMENT)
