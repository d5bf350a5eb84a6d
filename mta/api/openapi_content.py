"""The OpenAPI description of the sending API's content routes: /templates
(mta.api.templates) and /verifications (mta.api.verifications).

One job: the paths and schemas of those routes, for mta.api.openapi to merge
into its document (kept apart only for the module size limit).

Public API:
    CONTENT_SCHEMAS                 the components/schemas they add (Template…,
                                    Verification…); they refer to the
                                    document's Error and EmailId
    content_paths(op) -> dict       the paths; `op` is the document's operation
                                    builder (mta.api.openapi._op: the 200 body,
                                    the shared error responses, the rate-limit
                                    headers), passed in so this module does not
                                    import the one that imports it
    with_send_options(schema) -> schema  SendEmail/BatchEmail with template, stream
                                    and topic (mta.api.email_options)

Invariants: as mta.api.openapi's — every route written out one by one, each
request-body field one the route checks, each operation listing the
statuses it can answer, `full` the route's 4th tuple element (needs a
full-access key). Answer shapes are the runtime's (api_templates.py
template_json, list_item, version_json; api_verifications.py _json and
check). Bounds that mta.api.templates / mta.api.verifications keep as private
constants are repeated here (tests/test_api_openapi.py sends one past most).
"""

from __future__ import annotations

from typing import Any, Protocol

from mta.admin.openapi_parts import obj as _obj
from mta.admin.openapi_parts import ref as _ref
from mta.api.verifications import VERIFICATION_ID
from mta.mail.templating import MAX_DATA_BYTES, MAX_VARIABLES, VARIABLE_TYPES
from mta.policy.otp import VerificationStatus

__all__ = ["CONTENT_SCHEMAS", "OpBuilder", "content_paths", "with_send_options"]

_TEMPLATE_REF = "^[a-z0-9_-]{1,64}$"        # mta.api.templates._REF: an id or an alias
_TEMPLATE_ID = "^tpl_[0-9a-f]{20}$"
_NAME_MAX, _HEADER_MAX, _REPLY_TO_MAX = 255, 998, 50          # mta.api.templates
_ADDRESS_MAX, _FROM_MAX, _TEMPLATE_MAX, _CODE_MAX = 320, 998, 256, 64  # api.verifications
_LIST_MAX, _LIST_DEFAULT = 100, 20

_STR = {"type": "string"}
_STR_NULL = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_TIME_NULL = {"type": ["string", "null"], "format": "date-time"}
_LIST_OF_STR = {"type": "array", "items": _STR}
_JSON_ANY = {"type": ["string", "number", "boolean", "array", "object", "null"]}


class OpBuilder(Protocol):
    """mta.api.openapi._op's signature."""

    def __call__(self, op_id: str, summary: str, tag: str, ok: dict[str, Any], *,
                 body: dict[str, Any] | None = None,
                 params: list[dict[str, Any]] | None = None,
                 errors: dict[int, str] | None = None, full: bool = True) -> dict[str, Any]: ...


def _path(description: str, pattern: str) -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _mailbox(max_len: int = _HEADER_MAX) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_len, "description": "\"addr\" or \"Name <addr>\""}


def _one_address(max_len: int, description: str) -> dict[str, Any]:
    one = {"type": "string", "maxLength": max_len}
    return {"oneOf": [one, {"type": "array", "minItems": 1, "maxItems": 1, "items": one}],
            "description": description}


_DATA = {"type": ["object", "null"], "additionalProperties": True,
         "description": f"the variables' values by name (JSON values, at most "
                        f"{MAX_DATA_BYTES // 1024} KiB encoded); null: none"}
_VARIABLES = {"type": ["array", "null"], "maxItems": MAX_VARIABLES,
              "items": _ref("TemplateVariable"), "description": "null: none"}
_REPLY_TO = {"oneOf": [_mailbox(), {"type": "array", "maxItems": _REPLY_TO_MAX,
                                    "items": _mailbox()}, {"type": "null"}],
             "description": "an address or a list of them; null: none"}
_EDITABLE: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": _NAME_MAX,
             "description": "a label; not all blank, no control characters"},
    "alias": {"type": ["string", "null"], "pattern": _TEMPLATE_REF,
              "description": "usable instead of the id in paths and sends; unique per "
                             "tenant, never like an id (tpl_…); null clears it"},
    "from": {**_mailbox(), "type": ["string", "null"],
             "description": "the default From (\"addr\" or \"Name <addr>\"); null clears it"},
    "subject": {"type": ["string", "null"], "maxLength": _HEADER_MAX,
                "description": "Mustache; at most 998 UTF-8 bytes, no control "
                               "characters; null clears it"},
    "reply_to": _REPLY_TO,
    "html": {"type": "string", "description": "Mustache (logic-less); may not be null"},
    "text": {"type": ["string", "null"],
             "description": "Mustache; null: derived from html, \"\": no text part"},
    "variables": _VARIABLES,
}
_CREATE_EXAMPLE = {"name": "Welcome", "alias": "welcome", "from": "Acme <team@acme.test>",
                   "subject": "Hi {{first_name}}", "reply_to": ["help@acme.test"],
                   "html": "<p>Hi {{first_name}}, your plan is {{plan}}.</p>",
                   "text": "Hi {{first_name}}, your plan is {{plan}}.",
                   "variables": [{"key": "first_name", "type": "string",
                                  "fallback_value": "there"},
                                 {"key": "plan", "type": "string"}]}

_TEMPLATE_SCHEMAS: dict[str, Any] = {
    "TemplateVariable": _obj({
        "key": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
        "type": {"enum": list(VARIABLE_TYPES), "default": "string"},
        "fallback_value": {**_JSON_ANY, "description": "of the variable's type; without "
                                                       "it, a send must give a value"}},
        ["key"]),
    "TemplateCreate": _obj(_EDITABLE, ["name", "html"], example=_CREATE_EXAMPLE,
                           description="the draft must render (422 naming the field); "
                                       "unknown fields are ignored"),
    "TemplateUpdate": _obj(_EDITABLE, example={"subject": "Welcome, {{first_name}}",
                                               "text": None},
                           description="only the fields given change (PATCH and PUT alike); "
                                       "the draft they make must render"),
    "TemplateRef": _obj({"id": {"type": "string", "pattern": _TEMPLATE_ID},
                         "object": {"const": "template"}}, ["id", "object"]),
    "TemplateDeleted": _obj({"id": {"type": "string", "pattern": _TEMPLATE_ID},
                             "object": {"const": "template"}, "deleted": {"const": True}},
                            ["id", "object", "deleted"]),
    "TemplatePublished": _obj({"id": {"type": "string", "pattern": _TEMPLATE_ID},
                               "object": {"const": "template"},
                               "version": {"type": "integer", "minimum": 1,
                                           "description": "the new version (or the latest, "
                                                          "when the draft equals it)"}},
                              ["id", "object", "version"]),
    "TemplateListItem": _obj({
        "id": {"type": "string", "pattern": _TEMPLATE_ID}, "name": _STR, "alias": _STR_NULL,
        "status": {"enum": ["draft", "published"]}, "published_at": _TIME_NULL,
        "created_at": _TIME, "updated_at": _TIME},
        ["id", "name", "alias", "status", "published_at", "created_at", "updated_at"]),
    "TemplateList": _obj({"object": {"const": "list"}, "has_more": {"type": "boolean"},
                          "data": {"type": "array", "items": _ref("TemplateListItem")}},
                         ["object", "has_more", "data"]),
    "Template": _obj({
        "object": {"const": "template"}, "id": {"type": "string", "pattern": _TEMPLATE_ID},
        "name": _STR, "alias": _STR_NULL,
        "status": {"enum": ["draft", "published"],
                   "description": "published: the draft equals the latest version"},
        "from": _STR_NULL, "subject": _STR_NULL,
        "reply_to": {"type": ["array", "null"], "items": _STR}, "html": _STR,
        "text": _STR_NULL, "variables": {"type": "array", "items": _ref("TemplateVariable")},
        "created_at": _TIME, "updated_at": _TIME, "published_at": _TIME_NULL,
        "version": {"type": ["integer", "null"], "minimum": 1,
                    "description": "the latest published version; null: never published"},
        "has_unpublished_changes": {"type": "boolean"},
        "has_unpublished_versions": {"type": "boolean",
                                     "description": "has_unpublished_changes, as the SDKs "
                                                    "name it"},
        "current_version_id": {"type": ["string", "null"],
                               "description": "\"<id>.v<version>\" of the latest published "
                                              "version; null: never published"}},
        ["object", "id", "name", "alias", "status", "from", "subject", "reply_to", "html",
         "text", "variables", "created_at", "updated_at", "published_at", "version",
         "has_unpublished_changes", "has_unpublished_versions", "current_version_id"]),
    "TemplateVersion": _obj({
        "object": {"const": "template_version"},
        "template_id": {"type": "string", "pattern": _TEMPLATE_ID},
        "version": {"type": "integer", "minimum": 1}, "from": _STR_NULL, "subject": _STR_NULL,
        "reply_to": {"type": ["array", "null"], "items": _STR}, "html": _STR,
        "text": _STR_NULL, "variables": {"type": "array", "items": _ref("TemplateVariable")},
        "published_at": _TIME_NULL},
        ["object", "template_id", "version", "from", "subject", "reply_to", "html", "text",
         "variables", "published_at"]),
    "TemplateVersionList": _obj({
        "object": {"const": "list"}, "has_more": {"const": False},
        "data": {"type": "array", "items": _ref("TemplateVersion"),
                 "description": "newest first"}}, ["object", "has_more", "data"]),
    "TemplatePreviewRequest": _obj({
        "variables": _DATA,
        "version": {"oneOf": [{"enum": ["draft", "published"]},
                              {"type": "integer", "minimum": 1}, {"type": "null"}],
                    "default": "draft",
                    "description": "the draft, the latest published version or version n"}},
        example={"variables": {"first_name": "Ann"}, "version": "draft"},
        description="the body may be empty"),
    "TemplatePreview": _obj({
        "object": {"const": "preview"}, "subject": _STR, "html": _STR_NULL,
        "text": _STR_NULL,
        "missing": {**_LIST_OF_STR, "description": "variables without a value (rendered "
                                                   "empty)"},
        "undeclared": {**_LIST_OF_STR, "description": "names used but not declared"}},
        ["object", "subject", "html", "text", "missing", "undeclared"]),
    "TemplateTestSend": _obj({
        "to": _one_address(_HEADER_MAX, "one address (or a list of exactly one)"),
        "from": {**_mailbox(), "type": ["string", "null"],
                 "description": "default: the template's from (422 when neither)"},
        "variables": _DATA},
        ["to"], example={"to": "ok@rcpt.test", "variables": {"first_name": "Ann",
                                                             "plan": "pro"}},
        description="the draft rendered strictly (a variable without a value or a fallback "
                    "is a 422), subject \"[Test] …\""),
}

_VERIFICATION_SCHEMAS: dict[str, Any] = {
    "VerificationCreate": _obj({
        "to": _one_address(_ADDRESS_MAX, "the address to send the code to (a string, or a "
                                         "list of exactly one)"),
        "channel": {"enum": ["email"], "default": "email"},
        "from": {**_mailbox(_FROM_MAX), "description": "required unless the template has "
                                                       "a from"},
        "template": {"type": "string", "minLength": 1, "maxLength": _TEMPLATE_MAX,
                     "description": "a published template's id or alias, rendered with the "
                                    "variables code and minutes (not code in its subject)"},
        "locale": {"type": "string", "maxLength": 64, "description": "accepted, ignored"}},
        ["to"], example={"to": "ok@rcpt.test", "from": "Acme <codes@acme.test>",
                         "channel": "email", "locale": "en"},
        description="an address with a pending verification gets that one again (same id, "
                    "same code), as a resend"),
    "Verification": _obj({
        "object": {"const": "verification"},
        "id": {"type": "string", "pattern": f"^{VERIFICATION_ID.pattern}$"},
        "to": _STR, "channel": {"const": "email"},
        "status": {"enum": [s.value for s in VerificationStatus]},
        "created_at": _TIME, "expires_at": _TIME,
        "sends": {"type": "integer", "minimum": 0, "description": "emails sent, the first "
                                                                  "included"},
        "email_id": {"type": ["string", "null"], "description": "the latest email's id"}},
        ["object", "id", "to", "channel", "status", "created_at", "expires_at", "sends",
         "email_id"], description="never the code"),
    "VerificationCheckRequest": _obj({
        "code": {"type": "string", "description": f"longer than {_CODE_MAX} characters: cut "
                                                  "(so wrong)"}},
        ["code"], example={"code": "123456"}),
    "VerificationCheck": _obj({
        "object": {"const": "verification_check"},
        "id": {"type": "string", "pattern": f"^{VERIFICATION_ID.pattern}$"},
        "status": {"enum": [s.value for s in VerificationStatus]},
        "valid": {"type": "boolean", "description": "a wrong code is valid false, not an "
                                                    "error"},
        "attempts_remaining": {"type": "integer", "minimum": 0}},
        ["object", "id", "status", "valid", "attempts_remaining"]),
}

CONTENT_SCHEMAS: dict[str, Any] = {**_TEMPLATE_SCHEMAS, **_VERIFICATION_SCHEMAS}

_TPL = _path("the template's id (tpl_ + 20 hex digits) or its alias; anything else is 404",
             _TEMPLATE_REF)
_VRF = _path("the verification's id (vrf_ + 20 hex digits)", f"^{VERIFICATION_ID.pattern}$")
_CURSOR = {"type": "string", "pattern": _TEMPLATE_REF}
_PAGE = [_query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": _LIST_MAX,
                                       "default": _LIST_DEFAULT}),
         _query("after", "the page after this template id", _CURSOR),
         _query("before", "the page before this template id (not with after)", _CURSOR)]
_NOT_FOUND = "not_found: no such template (or another tenant's)"
_CHANGE = ("restricted_api_key: a sending_access key, or a test key (which may read, "
           "preview and send a test, never change)")
_SEND = ("restricted_api_key (a sending_access key), or the send refused: a From: domain "
         "this key may not use, the tenant paused or over its quota")
_STORE = "service_unavailable: the store cannot be read or written now (retry-after)"
_ALIAS = "conflict: the alias is another template's"
_VRF_GONE = "not_found: no such verification (or another tenant's)"
_VRF_SEND = "the send refused: a From: domain this key may not use, the tenant paused"
_VRF_STATE = "conflict: the verification is not pending (verified, expired, failed, canceled)"
_VRF_429 = ("rate_limit_exceeded: this key's rate, the tenant's quota, or a resend too soon "
            "(resend_cooldown) or past max_sends (retry-after)")


def _templates(op: OpBuilder) -> dict[str, Any]:
    body = _ref         # a request body's schema: a reference, as a response's
    return {
        "/templates": {
            "post": op("create_template", "make a template (a draft, never published)",
                       "templates", _ref("TemplateRef"), body=body("TemplateCreate"),
                       errors={403: _CHANGE, 409: _ALIAS, 503: _STORE,
                               422: "validation_error or missing_required_field naming the "
                                    "field (a draft that does not render too), or the "
                                    "tenant's 1000 templates reached"}),
            "get": op("list_templates", "the key's tenant's templates, newest first",
                      "templates", _ref("TemplateList"), params=_PAGE,
                      errors={422: "a malformed or unknown query parameter, or an unknown "
                                   "after/before id", 503: _STORE})},
        "/templates/{id}": {
            "get": op("get_template", "one template: its draft, its latest version number",
                      "templates", _ref("Template"), params=[_TPL],
                      errors={404: _NOT_FOUND, 503: _STORE}),
            "patch": op("update_template", "change the draft (the fields given)", "templates",
                        _ref("TemplateRef"), body=body("TemplateUpdate"), params=[_TPL],
                        errors={403: _CHANGE, 404: _NOT_FOUND, 409: _ALIAS, 503: _STORE}),
            "put": op("replace_template", "as PATCH: change the draft (the fields given)",
                      "templates", _ref("TemplateRef"), body=body("TemplateUpdate"),
                      params=[_TPL],
                      errors={403: _CHANGE, 404: _NOT_FOUND, 409: _ALIAS, 503: _STORE}),
            "delete": op("delete_template", "remove a template and its versions", "templates",
                         _ref("TemplateDeleted"), params=[_TPL],
                         errors={403: _CHANGE, 404: _NOT_FOUND, 503: _STORE})},
        "/templates/{id}/publish": {"post": op(
            "publish_template", "publish the draft as a new version (sends use the latest)",
            "templates", _ref("TemplatePublished"), params=[_TPL],
            errors={403: _CHANGE, 404: _NOT_FOUND, 503: _STORE,
                    422: "validation_error: the template's 1000 versions reached"})},
        "/templates/{id}/duplicate": {"post": op(
            "duplicate_template", "copy the draft (name + \" (copy)\", no alias)", "templates",
            _ref("TemplateRef"), params=[_TPL],
            errors={403: _CHANGE, 404: _NOT_FOUND, 503: _STORE,
                    422: "validation_error: the tenant's 1000 templates reached"})},
        "/templates/{id}/versions": {"get": op(
            "template_versions", "the published versions, newest first", "templates",
            _ref("TemplateVersionList"), params=[_TPL], errors={404: _NOT_FOUND, 503: _STORE})},
        "/templates/{id}/preview": {"post": op(
            "preview_template", "render leniently (a missing variable renders empty and is "
            "listed)", "templates", _ref("TemplatePreview"),
            body=body("TemplatePreviewRequest"), params=[_TPL],
            errors={404: _NOT_FOUND + ", never published, or no such version", 503: _STORE,
                    422: "validation_error naming the field (variables, version), or "
                         "template: a render bound hit"})},
        "/templates/{id}/test": {"post": op(
            "test_template", "send the draft, rendered strictly, to one address", "templates",
            _ref("EmailId"), body=body("TemplateTestSend"), params=[_TPL],
            errors={403: _SEND, 404: _NOT_FOUND,
                    422: "validation_error or missing_required_field naming the field (to, "
                         "from when the template has none, a variable without a value)",
                    503: "service_unavailable: the spool or store cannot take it now"})},
    }


def _verifications(op: OpBuilder) -> dict[str, Any]:
    return {
        "/verifications": {"post": op(
            "create_verification", "send a one-time code by email", "verifications",
            _ref("Verification"), body=_ref("VerificationCreate"), full=False,
            errors={403: _VRF_SEND, 409: _VRF_STATE + " (the pending one, when resent)",
                    422: "validation_error or missing_required_field naming the field (from "
                         "when the template has none; template: no such published template, "
                         "or code in its subject)", 503: _STORE})},
        "/verifications/{id}": {"get": op(
            "get_verification", "one verification (never its code)", "verifications",
            _ref("Verification"), params=[_VRF], errors={404: _VRF_GONE, 503: _STORE})},
        "/verifications/{id}/resend": {"post": op(
            "resend_verification", "send the same code again", "verifications",
            _ref("Verification"), params=[_VRF], full=False,
            errors={403: _VRF_SEND, 404: _VRF_GONE,
                    409: _VRF_STATE + ", or it can no longer be sent (the server's key "
                                      "changed)",
                    422: "validation_error: the message could not be built (its template)",
                    503: _STORE})},
        "/verifications/{id}/check": {"post": op(
            "check_verification", "check a code (a wrong one counts as an attempt)",
            "verifications", _ref("VerificationCheck"), body=_ref("VerificationCheckRequest"),
            params=[_VRF], full=False, errors={404: _VRF_GONE, 503: _STORE})},
    }


def content_paths(op: OpBuilder) -> dict[str, Any]:
    paths = {**_templates(op), **_verifications(op)}
    for path in ("/verifications", "/verifications/{id}/resend"):
        paths[path]["post"]["responses"]["429"]["description"] = _VRF_429
    paths["/templates/{id}/preview"]["post"]["requestBody"]["required"] = False
    return paths


_SEND_OPTIONS: dict[str, Any] = {
    "template": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
               "description": "a template's id or alias"},
        "variables": {"type": "object", "description": "values for its variables"},
        "version": {"type": "integer", "minimum": 1,
                    "description": "a published version (default: the latest)"}},
        "description": "render a published template: html and text come from it (not "
                       "allowed beside it); from, subject, reply_to default to its own"},
    "stream": {"enum": ["transactional", "broadcast"],
               "description": "broadcast: RFC 8058 one-click unsubscribe headers, one "
                              "recipient, a verified sending domain (default: the key's, "
                              "from [broadcast] credentials, else transactional)"},
    "topic": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$",
              "description": "broadcast only: recorded with an unsubscription"},
}


def with_send_options(schema: dict[str, Any]) -> dict[str, Any]:
    """SendEmail / BatchEmail with template, stream and topic: from and
    subject are required only without a template."""
    return {**schema, "properties": {**schema["properties"], **_SEND_OPTIONS},
            "required": ["to"],
            "description": schema.get("description", "") + "; from, subject and html or text "
                           "are required unless a template gives them"}
