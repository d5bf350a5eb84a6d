"""The OpenAPI description of the admin API's traffic shaping routes
(/v1/shaping, /v1/shaping/lift, /v1/warmup; issue 15).

One job: the paths and schemas of the shaping routes, for mta.admin.openapi
to merge into its document (kept apart for the module size limit, like
mta.admin.openapi_tenants).

Public API:
    LIMIT_KEYS                      the limit keys of a shaping table layer
    SHAPING_SCHEMAS                 {"ShapingAction", "WarmupSource", "Shaping",
                                     "ShapingLimits"}
    SUMMARY_ACTIONS                 the "actions" property of a
                                    DestinationSummary (/v1/queue/summary)
    shaping_paths(errors) -> dict   the paths; `errors` are the document's
                                    shared error responses (401, 500)

Invariant: the lift body's bounds are mta.admin.handlers' (its validator);
LIMIT_KEYS are written out (admin/ may not import policy/) and a test
holds them equal to mta.policy.shaping.LIMIT_KEYS, so the document cannot
drift from what the routes accept and answer.
"""

from __future__ import annotations

from typing import Any

from mta.admin.openapi_parts import error_response as _err
from mta.admin.openapi_parts import json_response as _json
from mta.admin.openapi_parts import ref as _ref

from mta.admin.handlers import MAX_LIFT_TARGET

__all__ = ["LIMIT_KEYS", "SHAPING_SCHEMAS", "SUMMARY_ACTIONS", "shaping_paths"]

LIMIT_KEYS = ("connection_limit", "max_deliveries_per_connection", "max_message_rate",
              "max_connection_rate", "tls", "connect_timeout", "command_timeout")


def _nullable(kind: str, description: str) -> dict[str, Any]:
    return {"type": [kind, "null"], "description": description}


_STR = {"type": "string"}
_STRINGS = {"type": "array", "items": _STR}
_LIMIT_VALUES: dict[str, Any] = {
    "connection_limit": {"type": "integer", "minimum": 1},
    "max_deliveries_per_connection": {"type": "integer", "minimum": 1},
    "tls": {"type": "string", "enum": ["opportunistic", "required"]},
}
_RULE = {"type": "object", "required": ["name", "match", "action"],
         "properties": {"name": _STR, "match": {**_STR, "description": "a regex, searched "
                                                "in \"CODE ESC TEXT\", ignoring case"},
                        "action": _STR,
                        "duration": {**_STR, "description": "how long the action lasts "
                                                            "(\"1h\")"},
                        "threshold": {**_STR, "description": "\"3/10m\": fires on the 3rd "
                                                             "match within 10 minutes"}}}
_PROVIDER = {
    "type": "object", "required": ["name", "match", "domains", "site", "total", "rules"],
    "properties": {
        "name": _STR,
        "match": {**_STRINGS, "description": "MX host suffixes (a site is the provider's "
                                             "when all its MX hosts end with one)"},
        "domains": {**_STRINGS, "description": "recipient domains known to be the "
                                               "provider's"},
        "site": {**_ref("ShapingLimits"), "description": "per site and egress source"},
        "total": {**_ref("ShapingLimits"), "description": "across all the provider's sites"},
        "rules": {"type": "array", "items": _RULE}}}

SHAPING_SCHEMAS: dict[str, Any] = {
    "ShapingLimits": {
        "type": "object", "additionalProperties": False,
        "description": "only the keys set; rates are \"N/s\", \"N/m\", \"N/h\", \"N/d\", "
                       "durations \"30s\", \"5m\"",
        "properties": {k: _LIMIT_VALUES.get(k, _STR) for k in LIMIT_KEYS}},
    "ShapingAction": {
        "type": "object",
        "required": ["id", "scope", "key", "action", "rule", "since", "until", "reason"],
        "properties": {
            "id": {**_STR, "description": "what POST /v1/shaping/lift takes"},
            "scope": {"type": "string", "enum": ["site", "tenant"]},
            "key": {**_STR, "description": "the site (MX host names joined with \",\"), "
                                           "or \"tenant@provider\""},
            "action": {**_STR, "description": "\"suspend\", \"suspend_tenant\", "
                                              "\"connection_limit=N\", \"message_rate=N/m\""},
            "rule": {**_STR, "description": "the rule's name"},
            "since": {"type": "number", "description": "Unix time"},
            "until": {"type": "number", "description": "Unix time: it ends then"},
            "reason": {**_STR, "description": "the reply that fired it"}}},
    "WarmupSource": {
        "type": "object",
        "required": ["source", "address", "pool", "schedule", "day", "cap", "used",
                     "allowed_now", "warm"],
        "properties": {
            "source": {**_STR, "description": "the [[egress]] name"},
            "address": _STR, "pool": _STR,
            "schedule": _nullable("string", "the warmup setting; null: none (warm)"),
            "day": _nullable("integer", "the sending day (1-based); null: no schedule"),
            "cap": _nullable("integer", "today's cap; null: warm (no cap)"),
            "used": _nullable("integer", "sent today (UTC); null: no schedule"),
            "allowed_now": _nullable("integer", "how many more may go right now (the cap "
                                                "is spread over the day); null: no cap"),
            "warm": {"type": "boolean"}}},
    "Shaping": {
        "type": "object", "required": ["table", "mx_rollup", "pools", "actions", "warmup"],
        "properties": {
            "table": {
                "type": "object", "description": "the shaping table in force (the shipped "
                                                 "one with the operator's file over it)",
                "required": ["version", "default", "providers", "sites", "domains", "rules"],
                "properties": {
                    "version": _STR, "default": _ref("ShapingLimits"),
                    "providers": {"type": "array", "items": _PROVIDER},
                    "sites": {"type": "object", "additionalProperties": _ref("ShapingLimits")},
                    "domains": {"type": "object", "additionalProperties": {"type": "object"},
                                "description": "limits and mx_rollup per recipient domain"},
                    "rules": {"type": "array", "items": _RULE,
                              "description": "rules for every site"}}},
            "mx_rollup": {"type": "boolean",
                          "description": "domains sharing MX hosts share one queue"},
            "pools": {"type": "object", "additionalProperties": _STRINGS,
                      "description": "pool -> its [[egress]] source names"},
            "actions": {"type": "array", "items": _ref("ShapingAction")},
            "warmup": {"type": "array", "items": _ref("WarmupSource")}}},
}

SUMMARY_ACTIONS: dict[str, Any] = {
    "type": "array", "items": _ref("ShapingAction"),
    "description": "reply-rule actions in force on the destination (a site's own, and "
                   "tenant suspensions at it or its provider)"}

_NONE_HERE = {"501": _err("this server has no traffic shaping")}


def shaping_paths(errors: dict[str, Any]) -> dict[str, Any]:
    lift_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["target"], "additionalProperties": False,
        "properties": {"target": {
            "type": "string", "minLength": 1, "maxLength": MAX_LIFT_TARGET,
            "description": "an action's id, or a key: a site, or \"tenant@provider\" (every "
                           "action on it)"}}}}}}
    return {
        "/v1/shaping": {"get": {
            "summary": "the shaping table in force, egress pools, the reply-rule actions "
                       "in force and warm-up", "operationId": "shaping", "tags": ["shaping"],
            "responses": {"200": _json(_ref("Shaping"), "traffic shaping"), **_NONE_HERE,
                          **errors}}},
        "/v1/shaping/lift": {"post": {
            "summary": "end reply-rule actions before their time: one by id, or every "
                       "action on a site or tenant@provider", "operationId": "shaping_lift",
            "tags": ["shaping"], "requestBody": lift_body,
            "responses": {
                "200": _json({"type": "object", "required": ["lifted"], "properties": {
                    "lifted": {"type": "array", "items": _ref("ShapingAction"),
                               "minItems": 1}}}, "the actions lifted"),
                "400": _err("the body is not a JSON object"),
                "404": _err("no action in force matches the target"),
                "422": _err('invalid body: the message starts with the field at fault '
                            '("target: …")'),
                **_NONE_HERE, **errors}}},
        "/v1/warmup": {"get": {
            "summary": "each egress source's warm-up: sending day, today's cap, used, "
                       "allowed now", "operationId": "warmup", "tags": ["shaping"],
            "responses": {"200": _json({"type": "object", "required": ["sources"],
                                        "properties": {"sources": {
                                            "type": "array",
                                            "items": _ref("WarmupSource")}}},
                                       "every [[egress]] source, in config order"),
                          **_NONE_HERE, **errors}}},
    }
