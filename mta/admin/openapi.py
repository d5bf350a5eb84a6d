"""The OpenAPI 3.1 description of the admin API, served at /v1/openapi.json.

One job: describe every route of `mta.admin.http` — parameters, request
bodies, response schemas and error responses — for operators and tools.

Public API:
    openapi_document() -> dict     a fresh copy each call

The tenant routes' part is mta.admin.openapi_tenants, the traffic shaping
routes' (and a summary row's "actions") mta.admin.openapi_shaping, the
outbound TLS routes' mta.admin.openapi_tls, the cluster routes' mta.admin.openapi_cluster.

Invariant: the paths and methods here are exactly the app's routes; a test
(tests/test_admin_http.py) compares them, so a route added without its
description fails CI. Paths are written out one by one on purpose: deriving
them from the route table would make that test vacuous.
"""

from __future__ import annotations

import copy
from typing import Any

from mta.admin.openapi_parts import error_response as _err
from mta.admin.openapi_parts import json_response as _json
from mta.admin.openapi_parts import ref as _ref

from mta.admin.backend import DESTINATION_STATES, MESSAGE_STATES
from mta.core.envelope import EVENT_TYPES
from mta.core.qshape import AGE_BUCKETS
from mta.admin.inputs import INT64_MAX, MAX_DESTINATION, MAX_QUEUE_ID, MAX_WEBHOOK_NAME
from mta.admin.openapi_shaping import SHAPING_SCHEMAS, SUMMARY_ACTIONS, shaping_paths
from mta.admin.openapi_tenants import (TENANT_FILTER, TENANT_FILTER_KEY, TENANT_SCHEMAS,
                                      tenant_paths)
from mta.admin.openapi_tls import TLS_SCHEMAS, tls_paths
from mta.admin.openapi_cluster import CLUSTER_SCHEMAS, cluster_paths

__all__ = ["openapi_document"]



_UNAUTHORIZED = {"401": {**_err("missing or invalid bearer token"),
                         "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                          "description": "Bearer"}}}}
_ERRORS = {**_UNAUTHORIZED, "500": _err("internal error (details in the daemon's log)")}
_ID = {"name": "id", "in": "path", "required": True, "description": "queue id",
       "schema": {"type": "string", "pattern": f"^[0-9A-Za-z]{{1,{MAX_QUEUE_ID}}}$"}}
_NAME = {"name": "name", "in": "path", "required": True,
         "description": "destination name as shown by /v1/queue/summary (URL-encoded): a "
                        "domain, \"[host]:port\" of a route, a domain literal \"[ip]\" or "
                        "\"sandbox\". A domain is resolved the way delivery resolves it: a "
                        "routed domain acts on its route (see \"requested\" in the answer)",
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_DESTINATION}}
_WEBHOOK = {"name": "name", "in": "path", "required": True,
            "description": "the endpoint's [[webhooks]] name (URL-encoded)",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_WEBHOOK_NAME}}
_BAD_ID = {"400": _err("malformed queue id")}
_SEQ = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}


def _filter_params() -> list[dict[str, Any]]:
    return [
        {"name": "state", "in": "query", "required": False,
         "description": "message state; default \"active\" (not yet done)",
         "schema": {"type": "string", "enum": list(MESSAGE_STATES)}},
        {"name": "domain", "in": "query", "required": False,
         "description": "a recipient's domain (exact)", "schema": {"type": "string"}},
        {"name": "sender", "in": "query", "required": False,
         "description": "envelope sender (exact); \"<>\" for the null sender",
         "schema": {"type": "string"}},
        {"name": "recipient", "in": "query", "required": False,
         "description": "a recipient address (exact)", "schema": {"type": "string"}},
        TENANT_FILTER,
    ]


def _message_action(action: str, summary: str) -> dict[str, Any]:
    return {
        "summary": summary, "operationId": f"message_{action}", "tags": ["messages"],
        "parameters": [_ID],
        "responses": {"200": _json(_ref("MessageActionResult"), "done"), **_BAD_ID,
                      "404": _err("unknown message id"),
                      "409": _err("the action cannot apply to the message now"), **_ERRORS},
    }


def _bulk_action(action: str, summary: str) -> dict[str, Any]:
    return {
        "summary": summary, "operationId": f"bulk_{action}", "tags": ["messages"],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("BulkFilter")}}},
        "responses": {"200": _json(_ref("BulkActionResult"), "done"),
                      "400": _err("invalid or empty filter (an empty filter needs \"all\": true)"),
                      "409": _err("the action cannot apply now"),
                      "413": _err("request body too large"), **_ERRORS},
    }


def _destination_action(action: str, summary: str) -> dict[str, Any]:
    return {
        "summary": summary, "operationId": f"destination_{action}", "tags": ["destinations"],
        "parameters": [_NAME],
        "responses": {"200": _json(_ref("DestinationActionResult"), "done"),
                      "400": _err("not a destination name (a domain, \"[host]:port\", "
                                  "\"[ip]\" or \"sandbox\")"),
                      "404": _err("no mail can go there: a \"[host]:port\" that is not a "
                                  "configured route, or \"sandbox\" outside sandbox mode"),
                      **_ERRORS},
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"],
                                 "properties": {"code": {"type": "string"},
                                                "message": {"type": "string"}}}},
    },
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object", "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}, "reason": {"type": "string"},
                       "spool_free_bytes": {"type": ["integer", "null"],
                                            "description": "bytes free for unprivileged "
                                                           "users on the spool's filesystem"},
                       "min_free_space": {"type": "integer",
                                          "description": "[server] min_free_space: below "
                                                         "it the server is not ready"}},
    },
    "Recipient": {
        "type": "object",
        "required": ["address", "state", "attempts", "next_attempt", "last_reply"],
        "properties": {
            "index": {"type": "integer"}, "address": {"type": "string"},
            "domain": {"type": "string"},
            "state": {"type": "string",
                      "enum": ["queued", "delivered", "bounced", "expired", "suppressed"]},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt": {"type": ["number", "null"], "description": "Unix time, when queued"},
            "last_reply": {"type": "string"}, "last_remote": {"type": "string"},
        },
    },
    "Event": {"type": "object", "properties": {
        "seq": {"type": "integer"}, "at": {"type": "number"}, "type": {"type": "string"},
        "queue_id": {"type": "string"}, "recipient": {"type": "string"},
        "credential": {"type": ["string", "null"]}, "detail": {"type": "object"}}},
    "Message": {
        "type": "object",
        "required": ["id", "sender", "received_at", "size", "recipients"],
        "properties": {
            "id": {"type": "string"},
            "sender": {"type": "string", "description": "\"\" for the null sender"},
            "received_at": {"type": "number", "description": "Unix time"},
            "size": {"type": "integer", "description": "bytes"},
            "is_dsn": {"type": "boolean"}, "held": {"type": "boolean"},
            "done": {"type": "boolean"},
            "recipients": {"type": "array", "items": _ref("Recipient")},
        },
    },
    "Attempt": {
        "type": "object",
        "properties": {
            "recipient": {"type": "string"}, "at": {"type": "number"},
            "duration": {"type": "number", "description": "seconds"},
            "remote_host": {"type": "string"}, "remote_ip": {"type": "string"},
            "tls": {"type": "string"}, "reply": {"type": "string"},
            "state": {"type": "string"},
        },
    },
    "MessageDetail": {
        "allOf": [_ref("Message"), {"type": "object", "properties": {
            "attempts": {"type": "array", "items": _ref("Attempt")}}}],
    },
    "MessagePage": {
        "type": "object", "required": ["messages", "next_cursor"],
        "properties": {"messages": {"type": "array", "items": _ref("Message")},
                       "next_cursor": {"type": ["string", "null"],
                                       "description": "pass as ?cursor= for the next page; "
                                                      "null on the last page"}},
    },
    "DestinationSummary": {
        "type": "object",
        "required": ["destination", "recipients", "held", "oldest_age", "age_buckets",
                     "last_error", "state"],
        "properties": {
            "destination": {"type": "string"},
            "recipients": {"type": "integer"}, "held": {"type": "integer"},
            "oldest_age": {"type": "number", "description": "seconds"},
            "age_buckets": {"type": "object",
                            "properties": {b: {"type": "integer"} for b in AGE_BUCKETS},
                            "description": "recipients by age, like qshape: \"5m\" is < 5 "
                                           "minutes, \"10m\" 5–10 minutes, …"},
            "last_error": {"type": "string"},
            "state": {"type": "string", "enum": list(DESTINATION_STATES)},
        },
    },
    "QueueSummary": {
        "type": "object", "required": ["destinations"],
        "properties": {"destinations": {"type": "array", "items": _ref("DestinationSummary")}},
    },
    "BulkFilter": {
        "type": "object", "additionalProperties": False,
        "description": "all given keys must match; an empty filter needs \"all\": true",
        "properties": {
            "state": {"type": ["string", "null"], "enum": [*MESSAGE_STATES, None]},
            "domain": {"type": ["string", "null"]},
            "sender": {"type": ["string", "null"]},
            "recipient": {"type": ["string", "null"]},
            "tenant": TENANT_FILTER_KEY,
            "all": {"type": "boolean", "default": False},
        },
    },
    "MessageActionResult": {
        "type": "object", "required": ["id", "action", "affected"],
        "properties": {"id": {"type": "string"}, "action": {"type": "string"},
                       "affected": {"type": "integer", "description": "recipients changed"}},
    },
    "BulkActionResult": {
        "type": "object", "required": ["action", "affected"],
        "properties": {"action": {"type": "string"},
                       "affected": {"type": "integer", "description": "recipients changed"},
                       "messages": {"type": "integer", "description": "messages matched"}},
    },
    "DestinationActionResult": {
        "type": "object", "required": ["destination", "action", "state"],
        "properties": {"destination": {"type": "string",
                                       "description": "the destination acted on"},
                       "requested": {"type": "string",
                                     "description": "the name given, normalised; differs "
                                                    "from destination for a routed domain"},
                       "action": {"type": "string"},
                       "state": {"type": "string", "enum": list(DESTINATION_STATES)}},
    },
}
# Readiness.error points at the Error object's inner shape.
_SCHEMAS["Readiness"]["properties"]["error"] = _SCHEMAS["Error"]["properties"]["error"]


_PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "summary": "liveness", "operationId": "healthz", "tags": ["health"], "security": [],
        "responses": {"200": _json(_ref("Health"), "alive"),
                      "500": _err("internal error")}}},
    "/readyz": {"get": {
        "summary": "readiness: recovery done, listeners bound, spool writable, enough free "
                   "space on its filesystem ([server] min_free_space), index reachable",
        "operationId": "readyz", "tags": ["health"],
        "responses": {"200": _json(_ref("Readiness"), "ready"),
                      "503": _json(_ref("Readiness"), "not ready, with the reason"), **_ERRORS}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text exposition format); open unless "
                   "[admin] metrics_require_token",
        "operationId": "metrics", "tags": ["health"], "security": [{}, {"bearer": []}],
        "responses": {"200": {"description": "metrics", "content": {
            "text/plain": {"schema": {"type": "string"}}}}, **_ERRORS}}},
    "/v1/openapi.json": {"get": {
        "summary": "this document", "operationId": "openapi", "tags": ["meta"],
        "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document"), **_ERRORS}}},
    "/v1/queue/summary": {"get": {
        "summary": "per destination: queued recipients, age buckets, last error, state "
                   "(like qshape)", "operationId": "queue_summary", "tags": ["queue"],
        "responses": {"200": _json(_ref("QueueSummary"), "summary"), **_ERRORS}}},
    "/v1/messages": {"get": {
        "summary": "list messages, filtered and paginated (arrival order)",
        "operationId": "list_messages", "tags": ["messages"],
        "parameters": [*_filter_params(),
                       {"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                   "default": 100}},
                       {"name": "cursor", "in": "query", "required": False,
                        "description": "next_cursor of the previous page",
                        "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("MessagePage"), "one page"),
                      "400": _err("invalid parameter, filter or cursor"), **_ERRORS}}},
    "/v1/messages/hold": {"post": _bulk_action("hold", "hold every matching message")},
    "/v1/messages/release": {"post": _bulk_action("release", "release every matching message")},
    "/v1/messages/retry": {"post": _bulk_action("retry", "retry every matching message now")},
    "/v1/messages/bounce": {"post": _bulk_action(
        "bounce", "bounce the queued recipients of every matching message (DSNs follow)")},
    "/v1/messages/delete": {"post": _bulk_action(
        "delete", "delete every matching message (no DSN)")},
    "/v1/messages/{id}": {
        "get": {"summary": "one message: envelope, recipients, attempts",
                "operationId": "get_message", "tags": ["messages"], "parameters": [_ID],
                "responses": {"200": _json(_ref("MessageDetail"), "the message"), **_BAD_ID,
                              "404": _err("unknown message id"), **_ERRORS}},
        "delete": {**_message_action("delete", "delete the message (no DSN)")},
    },
    "/v1/messages/{id}/body": {"get": {
        "summary": "the message as queued (headers and body)", "operationId": "message_body",
        "tags": ["messages"], "parameters": [_ID],
        "responses": {"200": {"description": "raw message", "content": {
            "message/rfc822": {"schema": {"type": "string",
                                          "contentMediaType": "message/rfc822"}}}},
            **_BAD_ID, "404": _err("unknown message id"), **_ERRORS}}},
    "/v1/messages/{id}/events": {"get": {
        "summary": "the message's timeline: every ledger event, in order",
        "operationId": "message_events", "tags": ["ledger"], "parameters": [_ID],
        "responses": {"200": _json({"type": "object", "properties": {
            "events": {"type": "array", "items": _ref("Event")}}}, "the events"),
            **_BAD_ID, "404": _err("unknown message id"), "501": _err("no ledger"), **_ERRORS}}},
    "/v1/events": {"get": {
        "summary": "ledger events after a sequence number (resume exactly where you stopped)",
        "operationId": "events", "tags": ["ledger"],
        "parameters": [
            {"name": "after", "in": "query", "required": False,
             "schema": {**_SEQ, "default": 0}},
            {"name": "type", "in": "query", "required": False,
             "description": "comma-separated event types: " + ", ".join(EVENT_TYPES),
             "schema": {"type": "string"}},
            {"name": "recipient", "in": "query", "required": False,
             "description": "a recipient address (exact)", "schema": {"type": "string"}},
            TENANT_FILTER,
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
        "responses": {"200": _json({"type": "object", "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_after": {"type": "integer"}}}, "events in sequence order"),
            "400": _err("invalid parameter"), "501": _err("no ledger"), **_ERRORS}}},
    "/v1/webhooks": {"get": {
        "summary": "configured webhook endpoints and their delivery state",
        "operationId": "webhooks", "tags": ["ledger"],
        "responses": {"200": _json({"type": "object", "properties": {
            "webhooks": {"type": "array", "items": {"type": "object"}}}}, "endpoints"),
            "501": _err("no webhooks"), **_ERRORS}}},
    "/v1/webhooks/{name}/replay": {"post": {
        "summary": "move the endpoint's cursor: resend from a sequence number or a time, "
                   "or drop the backlog",
        "operationId": "webhook_replay", "tags": ["ledger"],
        "parameters": [_WEBHOOK],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": {
                "from": {"oneOf": [_SEQ, {"type": "string", "enum": ["end"]}],
                         "description": 'resend from this sequence number; "end": drop the '
                                        'backlog (continue with new events)'},
                "since": {"type": "number", "minimum": 0, "maximum": 253402300799,
                          "description": "resend from this unix time"}}}}}},
        "responses": {"200": _json({"type": "object"}, "the new state"),
                      "400": _err("a malformed name, or not exactly one valid from/since"),
                      "404": _err("unknown webhook"), "501": _err("no webhooks"), **_ERRORS}}},
    "/v1/webhooks/{name}/test": {"post": {
        "summary": "send one signed {\"type\": \"test\"} request to the endpoint now "
                   "(the ledger and the cursor are untouched)",
        "operationId": "webhook_test", "tags": ["ledger"],
        "parameters": [_WEBHOOK],
        "responses": {"200": _json({"type": "object", "properties": {
            "name": {"type": "string"}, "url": {"type": "string"}, "ok": {"type": "boolean"},
            "status": {"type": "integer", "nullable": True},
            "error": {"type": "string", "nullable": True}, "ms": {"type": "integer"}}},
            "what the endpoint answered (ok: a 2xx)"),
            "400": _err("malformed webhook name"), "404": _err("unknown webhook"),
            "501": _err("no webhooks"), **_ERRORS}}},
    "/v1/messages/{id}/hold": {"post": _message_action(
        "hold", "hold the message: nothing is delivered until release")},
    "/v1/messages/{id}/release": {"post": _message_action("release", "release a held message")},
    "/v1/messages/{id}/retry": {"post": _message_action(
        "retry", "make the message's queued recipients due now")},
    "/v1/messages/{id}/bounce": {"post": _message_action(
        "bounce", "bounce the message's queued recipients (a DSN follows)")},
    "/v1/destinations/{name}/suspend": {"post": _destination_action(
        "suspend", "stop delivering to the destination until resumed")},
    "/v1/destinations/{name}/resume": {"post": _destination_action(
        "resume", "resume a suspended destination")},
    "/v1/destinations/{name}/flush": {"post": _destination_action(
        "flush", "make every queued recipient of the destination due now")},
}

_SCHEMAS.update(TENANT_SCHEMAS)
_PATHS.update(tenant_paths(_ERRORS))
_SCHEMAS.update(SHAPING_SCHEMAS)
_SCHEMAS["DestinationSummary"]["properties"]["actions"] = SUMMARY_ACTIONS
_PATHS.update(shaping_paths(_ERRORS))
_SCHEMAS.update(TLS_SCHEMAS)
_PATHS.update(tls_paths(_ERRORS))
_SCHEMAS.update(CLUSTER_SCHEMAS)
_PATHS.update(cluster_paths(_ERRORS))


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "mta admin API", "version": "1",
             "description": "Queue inspection and control of a running mta daemon. Every "
                            "endpoint except /healthz and /metrics needs `Authorization: "
                            "Bearer <token>` ([admin] token, or state_dir/admin-token). "
                            "Errors are {\"error\": {\"code\", \"message\"}}; a bad "
                            "parameter, name or body is a 400 whose message names it."},
    "servers": [{"url": "http://127.0.0.1:8025"}],
    "security": [{"bearer": []}],
    "paths": _PATHS,
    "components": {"schemas": _SCHEMAS,
                   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_DOCUMENT)
