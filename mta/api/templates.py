"""The sending API's templates (Resend's /templates), over an injected backend.

One job: turn each /templates request into calls of the injected
`TemplateBackend` after checking its path, query and JSON body here (422
`validation_error` / `missing_required_field` naming the field; an id that
names nothing is 404 `not_found` "Template not found"), and answer JSON.
The content checks and the preview's rendering are mail/templating.py's.

Public API:
    TemplateBackend        the Protocol the runtime implements
                           (mta.runtime.api_templates.RuntimeTemplates)
    template_routes(backend) -> Routes                    (mta.api.http.Routes)
    template_fields(doc, *, create) -> Json   a Resend body → the store's fields
        (name, alias, sender, subject, reply_to, html, text, variables): create
        needs name and html; an update has only the fields given (null clears
        alias, from, subject, reply_to, text). ApiError 422 naming the field.
    check_content(fields)            the draft renders (templating.check): ApiError 422
    fields_of(template) -> Json      a template object (GET's JSON) → the store's fields
    content_of(doc) -> TemplateContent   from a template or version object
    preview_json(doc, data) -> Json  {"object": "preview", subject, html, text,
                                      missing, undeclared}: a lenient render
                                      (a missing variable renders empty and is listed)

Routes (every one needs a full-access key; a test key may read, preview and
send a test, never change: 403 restricted_api_key):
    POST   /templates {name, html, alias?, from?, subject?, reply_to?, text?,
                       variables?}                 {"id", "object": "template"}
    GET    /templates[?limit&after|before]         {"object": "list", "has_more", "data":
                                                    [{id, name, alias, status,
                                                    published_at, created_at, updated_at}]}
                                                    newest first, limit 1..100 (default 20)
    GET    /templates/{id}       the template object: id, object, name, alias, status
                                 (draft | published), from, subject, reply_to, html,
                                 text, variables, created_at, updated_at, published_at,
                                 and ours: version (published, or null),
                                 has_unpublished_changes
    PATCH  /templates/{id} (PUT too)               {"id", "object": "template"}
    DELETE /templates/{id}                         {"id", "object": "template", "deleted": true}
    POST   /templates/{id}/publish                 {"id", "object": "template", "version"}
    POST   /templates/{id}/duplicate               {"id", "object": "template"} (the copy)
    GET    /templates/{id}/versions                {"object": "list", "has_more": false,
                                                    "data": [version, …]} newest first
    POST   /templates/{id}/preview {variables?, version?: "draft" (default) |
                                    "published" | n}   the preview object
    POST   /templates/{id}/test {to, from?, variables?}   {"id"}: the draft rendered
                                 strictly, sent to one address (subject "[Test] …")
{id} is the template's id (tpl_ + 20 hex digits) or its alias. Unknown body
fields are ignored, as elsewhere in this API.

Invariant: an update is checked on the draft it makes (the stored draft with
the changes laid over). Known compromise: the draft is read, then changed,
in two calls; two concurrent PATCHes may make an unchecked combination,
which then fails at render time with the same clear error.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

from aiohttp import web

from mta.api.fields import invalid
from mta.api.http import KEY, ApiError, Routes, read_json
from mta.api.keys import ApiKey
from mta.core.address import AddressError, parse_address
from mta.mail.templating import (RenderLimit, TemplateContent, TemplateError, check, check_data,
                                 parse_variables, render, variables_json)

__all__ = ["TemplateBackend", "check_content", "content_of", "fields_of", "preview_json",
           "template_fields", "template_routes"]

Json = dict[str, Any]

_REF = re.compile(r"[a-z0-9_-]{1,64}")
_ALIAS = re.compile(r"[a-z0-9_-]{1,64}")
_ID = re.compile(r"tpl_[0-9a-f]{20}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LIST_MAX, _LIST_DEFAULT = 100, 20
_NAME_MAX, _HEADER_MAX, _REPLY_TO_MAX = 255, 998, 50


class TemplateBackend(Protocol):
    """What the template routes ask of the running daemon, for the request's
    key (the backend scopes every call to the key's tenant). Values are plain
    JSON; `ref` is an id or an alias; `fields` the store's (template_fields).
    None: no such template (or another tenant's); remove_template answers
    the removed template's id. Raise ApiError for
    what only the backend can see (409 an alias in use, 422 a limit or a
    render, 503 storage)."""

    async def templates(self, key: ApiKey, limit: int, after: str | None,
                        before: str | None) -> tuple[list[Json], bool]: ...
    async def template(self, key: ApiKey, ref: str) -> Json | None: ...
    async def template_version(self, key: ApiKey, ref: str,
                               version: int | None) -> Json | None: ...
    async def template_versions(self, key: ApiKey, ref: str) -> list[Json] | None: ...
    async def create_template(self, key: ApiKey, fields: Json) -> Json: ...
    async def update_template(self, key: ApiKey, ref: str, fields: Json) -> Json | None: ...
    async def remove_template(self, key: ApiKey, ref: str) -> str | None: ...
    async def publish_template(self, key: ApiKey, ref: str) -> Json | None: ...
    async def duplicate_template(self, key: ApiKey, ref: str) -> Json | None: ...
    async def send_test(self, key: ApiKey, ref: str, to: str, sender: str | None,
                        data: Json) -> str | None: ...


_invalid = invalid


def _template_error(exc: TemplateError) -> ApiError:
    return _invalid(exc.field, exc.reason)


def _type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# -- fields ------------------------------------------------------------------------------

def _header(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid(field, f"expected a string, got {_type(value)}")
    if _CONTROL.search(value):
        raise _invalid(field, "control characters (CR, LF, NUL …) are not allowed")
    if len(value.encode("utf-8", "surrogatepass")) > _HEADER_MAX:
        raise _invalid(field, f"longer than {_HEADER_MAX} bytes")
    return value


def _mailbox(field: str, value: object) -> str:
    """"addr" or "Name <addr>" (the address checked as the SMTP server does)."""
    text = _header(field, value).strip()
    addr = text[text.rfind("<") + 1:-1] if text.endswith(">") and "<" in text else text
    try:
        parse_address(addr.strip())
    except AddressError:
        raise _invalid(field, f"not an email address: {text[:60]!r}") from None
    return text


def _reply_to(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_mailbox("reply_to", value)]
    if not isinstance(value, list) or len(value) > _REPLY_TO_MAX:
        raise _invalid("reply_to", f"a string or an array of at most {_REPLY_TO_MAX} strings")
    return [_mailbox(f"reply_to[{i}]", v) for i, v in enumerate(value)]


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise _invalid("name", f"expected a string, got {_type(value)}")
    if not value.strip() or len(value) > _NAME_MAX or _CONTROL.search(value):
        raise _invalid("name", f"1 to {_NAME_MAX} characters, no control characters")
    return value


def _alias(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ALIAS.fullmatch(value) or _ID.fullmatch(value):
        raise _invalid("alias", "1 to 64 of a-z, 0-9, '_' and '-' (not like a template id)")
    return value


def _body_text(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(field, f"expected a string, got {_type(value)}")
    return value


def template_fields(doc: object, *, create: bool) -> Json:
    if not isinstance(doc, dict):
        raise _invalid("body", "must be a JSON object")
    for field in ("name", "html"):
        if create and doc.get(field) is None:
            raise ApiError(422, "missing_required_field", f"{field}: required")
        if field in doc and doc[field] is None:
            raise _invalid(field, "may not be null")
    checks: dict[str, tuple[str, Any]] = {
        "name": ("name", _name), "alias": ("alias", _alias),
        "from": ("sender", lambda v: None if v is None else _mailbox("from", v)),
        "subject": ("subject", lambda v: None if v is None else _header("subject", v)),
        "reply_to": ("reply_to", _reply_to), "html": ("html", lambda v: _body_text("html", v)),
        "text": ("text", lambda v: _body_text("text", v)),
        "variables": ("variables", _variables)}
    return {stored: fn(doc[given]) for given, (stored, fn) in checks.items() if given in doc}


def _variables(value: object) -> list[Json]:
    try:
        return variables_json(parse_variables([] if value is None else value, "variables"))
    except TemplateError as exc:
        raise _template_error(exc) from None


def _content(fields: Json) -> TemplateContent:
    return TemplateContent(subject=fields.get("subject") or "", html=fields["html"],
                           text=fields.get("text"),
                           variables=parse_variables(fields.get("variables") or [],
                                                     "variables"))


def check_content(fields: Json) -> None:
    try:
        check(_content(fields))
    except TemplateError as exc:
        raise _template_error(exc) from None


def fields_of(template: Json) -> Json:
    return {"name": template["name"], "alias": template.get("alias"),
            "sender": template.get("from"), "subject": template.get("subject"),
            "reply_to": template.get("reply_to") or [], "html": template["html"],
            "text": template.get("text"), "variables": template.get("variables") or []}


def content_of(doc: Json) -> TemplateContent:
    return _content(doc)


def preview_json(doc: Json, data: Json) -> Json:
    try:
        out = render(content_of(doc), data, strict=False)
    except RenderLimit as exc:
        raise _invalid("template", str(exc)) from None
    except TemplateError as exc:
        raise _template_error(exc) from None
    return {"object": "preview", "subject": out.subject, "html": out.html, "text": out.text,
            "missing": list(out.missing), "undeclared": list(out.undeclared)}


# -- requests ------------------------------------------------------------------------------

def _change_allowed(request: web.Request) -> None:
    if request[KEY].test:
        raise ApiError(403, "restricted_api_key",
                       "Test API keys cannot change templates; use a live full-access key")


async def _body(request: web.Request) -> Json:
    doc = await read_json(request)
    if not isinstance(doc, dict):
        raise _invalid("body", "must be a JSON object")
    return doc


def _ref(request: web.Request) -> str:
    ref = request.match_info.get("id", "")
    if not _REF.fullmatch(ref):
        raise ApiError(404, "not_found", "Template not found")
    return ref


def _found(doc: Any) -> Any:
    if doc is None:
        raise ApiError(404, "not_found", "Template not found")
    return doc


def _page_query(request: web.Request) -> tuple[int, str | None, str | None]:
    q: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in ("limit", "after", "before"):
            raise _invalid(name[:40], "unknown query parameter (known: limit, after, before)")
        if name in q:
            raise _invalid(name, "given more than once")
        if name != "limit" and not _REF.fullmatch(value):
            raise _invalid(name, "a template id")
        q[name] = value
    if "after" in q and "before" in q:
        raise _invalid("before", "give after or before, not both")
    raw = q.get("limit", str(_LIST_DEFAULT))
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 \
            or not 1 <= int(raw) <= _LIST_MAX:
        raise _invalid("limit", f"an integer from 1 to {_LIST_MAX}")
    return int(raw), q.get("after"), q.get("before")


def _data(doc: Json) -> Json:
    try:
        return check_data({} if doc.get("variables") is None else doc["variables"],
                          "variables")
    except TemplateError as exc:
        raise _template_error(exc) from None


def _preview_version(value: object) -> int | None | str:
    if value is None or value == "draft":
        return "draft"
    if value == "published":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise _invalid("version", '"draft", "published" or a version number (1 or more)')


def _test_to(value: object) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None:
        raise ApiError(422, "missing_required_field", "to: required")
    if not isinstance(value, str):
        raise _invalid("to", "one email address")
    return _mailbox("to", value)


def _reads(b: TemplateBackend) -> Routes:
    async def listing(request: web.Request) -> web.Response:
        limit, after, before = _page_query(request)
        data, more = await b.templates(request[KEY], limit, after, before)
        return web.json_response({"object": "list", "has_more": more, "data": data})

    async def get(request: web.Request) -> web.Response:
        return web.json_response(_found(await b.template(request[KEY], _ref(request))))

    async def versions(request: web.Request) -> web.Response:
        data = _found(await b.template_versions(request[KEY], _ref(request)))
        return web.json_response({"object": "list", "has_more": False, "data": data})

    async def preview(request: web.Request) -> web.Response:
        ref, doc = _ref(request), await _body(request)
        data, version = _data(doc), _preview_version(doc.get("version"))
        source = _found(await b.template(request[KEY], ref) if version == "draft" else
                        await b.template_version(request[KEY], ref,
                                                 None if version is None else int(version)))
        return web.json_response(await asyncio.to_thread(preview_json, source, data))

    async def test(request: web.Request) -> web.Response:
        ref, doc = _ref(request), await _body(request)
        to = _test_to(doc.get("to"))
        sender = None if doc.get("from") is None else _mailbox("from", doc["from"])
        sent = _found(await b.send_test(request[KEY], ref, to, sender, _data(doc)))
        return web.json_response({"id": sent})

    return [("GET", "/templates", listing, True), ("GET", "/templates/{id}", get, True),
            ("GET", "/templates/{id}/versions", versions, True),
            ("POST", "/templates/{id}/preview", preview, True),
            ("POST", "/templates/{id}/test", test, True)]


def _changes(b: TemplateBackend) -> Routes:
    async def create(request: web.Request) -> web.Response:
        _change_allowed(request)
        fields = template_fields(await _body(request), create=True)
        check_content(fields)
        made = await b.create_template(request[KEY], fields)
        return web.json_response({"id": made["id"], "object": "template"})

    async def update(request: web.Request) -> web.Response:
        _change_allowed(request)
        ref = _ref(request)
        changes = template_fields(await _body(request), create=False)
        current = _found(await b.template(request[KEY], ref))
        check_content({**fields_of(current), **changes})
        done = _found(await b.update_template(request[KEY], ref, changes))
        return web.json_response({"id": done["id"], "object": "template"})

    async def delete(request: web.Request) -> web.Response:
        _change_allowed(request)
        gone = _found(await b.remove_template(request[KEY], _ref(request)))
        return web.json_response({"id": gone, "object": "template", "deleted": True})

    async def publish(request: web.Request) -> web.Response:
        _change_allowed(request)
        return web.json_response(_found(await b.publish_template(request[KEY], _ref(request))))

    async def duplicate(request: web.Request) -> web.Response:
        _change_allowed(request)
        copy = _found(await b.duplicate_template(request[KEY], _ref(request)))
        return web.json_response({"id": copy["id"], "object": "template"})

    return [("POST", "/templates", create, True), ("PATCH", "/templates/{id}", update, True),
            ("PUT", "/templates/{id}", update, True),
            ("DELETE", "/templates/{id}", delete, True),
            ("POST", "/templates/{id}/publish", publish, True),
            ("POST", "/templates/{id}/duplicate", duplicate, True)]


def template_routes(backend: TemplateBackend) -> Routes:
    return [*_reads(backend), *_changes(backend)]
