"""The OpenAPI description of the admin API's tenant routes (/v1/tenants…).

One job: the paths and schemas of the tenant routes, for mta.admin.openapi
to merge into its document (kept apart only for the module size limit).

Public API:
    TENANT_SCHEMAS                  {"Tenant", "TenantLimits", "TenantPolicy"}
    tenant_paths(errors) -> dict    the paths; `errors` are the document's
                                    shared error responses (401, 500)
    TENANT_FILTER                   the `tenant` query parameter of
                                    /v1/messages and /v1/events
    TENANT_FILTER_KEY               the "tenant" key of a bulk action's body

Invariant: bounds and key names are mta.admin.params' (the validator), so
the document cannot drift from what the routes accept.
"""

from __future__ import annotations

from typing import Any

from mta.admin.openapi_parts import error_response as _err
from mta.admin.openapi_parts import json_response as _json
from mta.admin.openapi_parts import ref as _ref

from mta.admin.inputs import INT64_MAX
from mta.admin.params import (MAX_RATE, MAX_REASON, MAX_WINDOW, MAX_WINDOW_SECONDS,
                              POLICY_LEVELS)
from mta.spool.tenants import TENANT_NAME

__all__ = ["TENANT_SCHEMAS", "TENANT_FILTER", "TENANT_FILTER_KEY", "tenant_paths"]


def _nullable(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}], "description": description}


_COUNT = {"type": "integer", "minimum": 1, "maximum": INT64_MAX}
_OWNER = ("a tenant name: only what that tenant's credentials and API keys sent "
          '("default": what no tenant owns)')
TENANT_FILTER = {"name": "tenant", "in": "query", "required": False, "description": _OWNER,
                 "schema": {"type": "string", "pattern": TENANT_NAME.pattern}}
TENANT_FILTER_KEY = {"type": ["string", "null"], "pattern": TENANT_NAME.pattern,
                     "description": _OWNER}
_FRACTION = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_POLICY_LEVEL = ("none: never acts; standard: warn, then pause; strict: pause at the warn "
                 "thresholds")

TENANT_SCHEMAS: dict[str, Any] = {
    "TenantLimits": {
        "type": "object", "additionalProperties": False,
        "description": "null or absent: unlimited",
        "properties": {
            "per_hour": _nullable(_COUNT, "messages per UTC hour"),
            "per_day": _nullable(_COUNT, "messages per UTC day"),
            "rate": _nullable({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_RATE},
                              "messages per second, sustained"),
            "burst": _nullable(_COUNT, "messages at once under rate (default: the rate "
                                       "rounded up)")}},
    "TenantPolicy": {
        "type": "object", "additionalProperties": False,
        "description": "the reputation policy; null or absent: the default; warn <= pause, "
                       "min_volume <= window",
        "properties": {
            "level": _nullable({"type": "string", "enum": list(POLICY_LEVELS)}, _POLICY_LEVEL),
            **{k: _nullable(_FRACTION, f"{k.replace('_', ' ')} rate (a fraction)")
               for k in ("bounce_warn", "bounce_pause", "complaint_warn", "complaint_pause")},
            "window": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_WINDOW},
                                "the last N sends"),
            "window_seconds": _nullable({"type": "number", "exclusiveMinimum": 0,
                                         "maximum": MAX_WINDOW_SECONDS},
                                        "only sends newer than this (seconds)"),
            "min_volume": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_WINDOW},
                                    "fewer sends in the window: never acts")}},
    "Tenant": {
        "type": "object", "required": ["name", "status", "auto_status", "limits", "policy"],
        "description": "a tenant as the daemon reports it (more fields may appear)",
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["active", "paused"],
                       "description": "the operator's"},
            "status_reason": {"type": "string"},
            "auto_status": {"type": "string", "enum": ["ok", "warn", "paused"],
                            "description": "the reputation policy's"},
            "auto_reason": {"type": "string"},
            "limits": {"type": "object"}, "policy": {"type": "object"}}},
}

_TENANT = {"name": "name", "in": "path", "required": True, "description": "a tenant name",
           "schema": {"type": "string", "pattern": TENANT_NAME.pattern}}
_ONE = _json(_ref("Tenant"), "the tenant")
_NONE_HERE = {"501": _err("this server has no tenants")}
_INVALID = {"422": _err('invalid body: the message starts with the field at fault '
                        '("limits.per_hour: …")')}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _reason(required: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object", "additionalProperties": False,
        "properties": {"reason": {"type": "string", "minLength": 1 if required else 0,
                                  "maxLength": MAX_REASON}}}
    if required:
        schema["required"] = ["reason"]
    return _body(schema, required)


def _op(op: str, summary: str, errors: dict[str, Any], ok: dict[str, Any] = _ONE,
        **more: Any) -> dict[str, Any]:
    return {"summary": summary, "operationId": op, "tags": ["tenants"],
            "parameters": [_TENANT], **more,
            "responses": {"200": ok,
                          "400": _err("malformed tenant name, or a body that is not a JSON "
                                      "object"),
                          "404": _err("no such tenant"), **_INVALID, **_NONE_HERE, **errors}}


def tenant_paths(errors: dict[str, Any]) -> dict[str, Any]:
    change = _body({"type": "object", "additionalProperties": False,
                    "properties": {"limits": _ref("TenantLimits"),
                                   "policy": _ref("TenantPolicy")}})
    create = _body({"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "pattern": TENANT_NAME.pattern},
                                   "limits": _ref("TenantLimits"),
                                   "policy": _ref("TenantPolicy")}})
    remove = _op("tenant_remove", 'delete a tenant (not "default"; not while it owns '
                 "domains, webhooks or credentials that exist)", errors,
                 _json({"type": "object", "properties": {"name": {"type": "string"},
                                                         "deleted": {"const": True}}},
                       "deleted"))
    remove["responses"]["409"] = _err('"default", or the tenant still owns something')
    return {
        "/v1/tenants": {
            "get": {"summary": 'every tenant, by name ("default" holds everything no named '
                               "tenant owns)", "operationId": "tenants", "tags": ["tenants"],
                    "responses": {"200": _json({"type": "object", "properties": {
                        "tenants": {"type": "array", "items": _ref("Tenant")}}}, "tenants"),
                        **_NONE_HERE, **errors}},
            "post": {"summary": "create a tenant", "operationId": "tenant_add",
                     "tags": ["tenants"], "requestBody": create,
                     "responses": {"200": _json(_ref("Tenant"), "created"),
                                   "400": _err("the body is not a JSON object"),
                                   "409": _err("a tenant by that name exists"), **_INVALID,
                                   **_NONE_HERE, **errors}}},
        "/v1/tenants/{name}": {
            "get": _op("tenant", "one tenant", errors),
            "patch": _op("tenant_update", "change limits and/or policy: keys given replace, "
                         "null clears one, keys absent stay", errors, requestBody=change),
            "delete": remove},
        "/v1/tenants/{name}/pause": {"post": _op(
            "tenant_pause", "the operator's pause: the tenant's mail is refused until "
            "resumed", errors, requestBody=_reason(False))},
        "/v1/tenants/{name}/resume": {"post": _op(
            "tenant_resume", "accept the tenant's mail again (clears an automatic pause "
            "too)", errors, requestBody=_reason(True))},
    }
