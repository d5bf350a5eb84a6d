"""The OpenAPI description of the admin API's outbound TLS routes (/v1/tls,
/v1/tls/{domain}, /v1/tls/purge; issue 17).

One job: the paths and schemas of the TLS routes, for mta.admin.openapi to
merge into its document (kept apart for the module size limit, like
mta.admin.openapi_shaping).

Public API:
    TLS_SCHEMAS                 {"TlsDomain", "StsPolicy", "StsCached"}
    tls_paths(errors) -> dict   the paths; `errors` are the document's shared
                                error responses (401, 500)

Invariant: OVERRIDE_LEVELS are written out (admin/ may not import config/)
and a test (tests/test_tls_admin.py) holds them equal to
mta.config.tls.OVERRIDE_LEVELS, so the document cannot drift from what
`[tls] policy` accepts.
"""

from __future__ import annotations

from typing import Any

from mta.admin.openapi_parts import error_response as _err
from mta.admin.openapi_parts import json_response as _json
from mta.admin.openapi_parts import ref as _ref

__all__ = ["OVERRIDE_LEVELS", "TLS_SCHEMAS", "tls_paths"]

OVERRIDE_LEVELS = ("dane-only", "verify", "encrypt", "may", "none")

_STR = {"type": "string"}
_TIME = {"type": ["number", "null"],
         "description": "Unix time; null when the cache row is not this policy's"}
_DOMAIN = {"type": "string", "minLength": 1, "maxLength": 253,
           "description": "a recipient domain name (not an address literal); "
                          "normalised to lower-case A-labels in the answer"}

TLS_SCHEMAS: dict[str, Any] = {
    "StsPolicy": {
        "type": "object",
        "required": ["id", "mode", "mx", "max_age", "fetched_at", "expires_at"],
        "properties": {
            "id": {**_STR, "description": "the _mta-sts TXT id it was fetched under"},
            "mode": {"type": "string", "enum": ["enforce", "testing", "none"]},
            "mx": {"type": "array", "items": _STR,
                   "description": "MX host patterns (\"*.example.net\" wildcards)"},
            "max_age": {"type": "integer", "minimum": 0, "description": "seconds"},
            "fetched_at": _TIME, "expires_at": _TIME}},
    "TlsDomain": {
        "type": "object", "required": ["domain", "override", "mta_sts", "error"],
        "properties": {
            "domain": _STR,
            "override": {"type": ["string", "null"], "enum": [*OVERRIDE_LEVELS, None],
                         "description": "the [tls] policy level for the domain or its "
                                        "closest parent (over DANE and MTA-STS); null: none"},
            "mta_sts": {"oneOf": [_ref("StsPolicy"), {"type": "null"}],
                        "description": "the MTA-STS policy in force (mode none included); "
                                       "null: none applies"},
            "error": {"type": ["string", "null"],
                      "description": "why no policy applies: \"sts-policy-fetch-error: "
                                     "…\", \"sts-policy-invalid: …\", \"sts-webpki-invalid: "
                                     "…\" (RFC 8460 result type first), or MTA-STS is off"}}},
    "StsCached": {
        "type": "object", "required": ["domain", "id", "mode", "expires_at"],
        "properties": {
            "domain": _STR, "id": _STR,
            "mode": {"type": ["string", "null"], "enum": ["enforce", "testing", "none", None],
                     "description": "null: the cached text no longer parses (unused)"},
            "expires_at": {"type": "number", "description": "Unix time (a past one: "
                                                            "expired, dropped on next use)"}}},
}

_NONE_HERE = {"501": _err("this server has no outbound TLS policy")}
_BAD_DOMAIN = {"422": _err('not a domain name: the message starts with the field at fault '
                           '("domain: …")')}


def tls_paths(errors: dict[str, Any]) -> dict[str, Any]:
    purge_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["domain"], "additionalProperties": False,
        "properties": {"domain": _DOMAIN}}}}}
    return {
        "/v1/tls": {"get": {
            "summary": "the cached MTA-STS policies", "operationId": "tls_policies",
            "tags": ["tls"],
            "responses": {"200": _json({"type": "object", "required": ["policies"],
                                        "properties": {"policies": {
                                            "type": "array", "items": _ref("StsCached")}}},
                                       "every cached policy, by domain"),
                          **_NONE_HERE, **errors}}},
        "/v1/tls/{domain}": {"get": {
            "summary": "the outbound TLS policy of a recipient domain: the operator's "
                       "override and its MTA-STS policy, looked up now (cached as "
                       "delivery caches it)", "operationId": "tls_show", "tags": ["tls"],
            "parameters": [{"name": "domain", "in": "path", "required": True,
                            "schema": _DOMAIN}],
            "responses": {"200": _json(_ref("TlsDomain"), "the domain's TLS policy"),
                          "400": _err("a query parameter (this route takes none)"),
                          **_BAD_DOMAIN, **_NONE_HERE, **errors}}},
        "/v1/tls/purge": {"post": {
            "summary": "drop a domain's cached MTA-STS policy (memory and index): the next "
                       "delivery fetches it again", "operationId": "tls_purge",
            "tags": ["tls"], "requestBody": purge_body,
            "responses": {
                "200": _json({"type": "object", "required": ["domain", "purged"],
                              "properties": {"domain": _STR, "purged": {
                                  "type": "boolean",
                                  "description": "false: nothing was cached"}}},
                             "done"),
                "400": _err("the body is not a JSON object"),
                **_BAD_DOMAIN, **_NONE_HERE, **errors}}},
    }
