"""The admin HTTP API (aiohttp): health, metrics, queue inspection and actions.

One job: turn HTTP requests into calls on an `AdminBackend` and its answers
(or exceptions) into JSON responses. No queue logic lives here.

Public API:
    create_app(backend, *, token, metrics_require_token) -> web.Application
    AdminServer(cfg, backend, token)   .start() binds cfg.address (port 0 ok),
                                       .sockname, .url, .backend, .stop()
    ROUTES                             (method, path) of every route, in order

Routes (all JSON unless noted; /v1/openapi.json describes them in full):
    GET  /healthz  /readyz (503 + reason)  /metrics (Prometheus text)
    GET  /v1/openapi.json  /v1/queue/summary
    GET  /v1/messages?state=&domain=&sender=&recipient=&limit=&cursor=
    GET  /v1/messages/{id}   /v1/messages/{id}/body (message/rfc822)
    POST /v1/messages/{id}/hold|release|retry|bounce   DELETE /v1/messages/{id}
    POST /v1/messages/hold|release|retry|bounce|delete   (bulk; JSON filter body)
    POST /v1/destinations/{name}/suspend|resume|flush

Invariants:
- Every route except /healthz and /metrics (unless metrics_require_token)
  needs `Authorization: Bearer <token>`, compared in constant time as bytes
  (the raw header: any bytes, non-ASCII or not, are a plain 401, and a
  SHA-256 of each side is compared so the length does not leak either); a
  miss is 401 with `WWW-Authenticate: Bearer`. Unknown paths are 401 before
  404, so an unauthenticated client learns nothing about the route table.
- Every input is validated here before the backend sees it (mta.admin.inputs):
  path parameters (queue id, destination name, webhook name), query
  parameters (integers are ASCII digits within range: limit 1..MAX_LIMIT,
  sequence numbers 0..2^63-1; filters; event types), JSON bodies (an object;
  known keys of the right types; nesting, NaN and huge numbers refused). A bad
  one is 400 naming the field; network input never reaches a 500.
- Every error is `{"error": {"code", "message"}}` with its status: 400 bad
  parameter/filter/body, 401, 404 unknown message, destination, webhook or
  route, 405 (with Allow), 409 action refused, 413 body too large, 500 generic
  (traceback logged; a bug, never an input), 501 the backend lacks the
  feature, 503 not ready. Requests aiohttp cannot parse as HTTP at all
  (raw control or non-ASCII bytes in the request line, bad headers) get
  aiohttp's plain-text 400 and one log line, no traceback.
- The token and request headers are never logged; the access log is ours
  (DEBUG, method path status ms), not aiohttp's; client-controlled values in
  log lines are escaped (`_q`), so no raw control byte reaches the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mta.admin.backend import (DESTINATION_ACTIONS, EVENT_TYPES, MESSAGE_ACTIONS,
                               MESSAGE_STATES, ActionRefused, AdminBackend, NotFound)
from mta.admin.inputs import (INT64_MAX, check_queue_id, check_webhook_name, has_control,
                              parse_destination, parse_uint)
from mta.core.address import AddressError, parse_address, parse_domain

__all__ = ["create_app", "AdminServer", "ROUTES", "DEFAULT_LIMIT", "MAX_LIMIT"]

log = logging.getLogger("mta.admin")
access_log = logging.getLogger("mta.admin.access")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY = 64 * 1024            # a bulk filter is a few hundred bytes
MAX_CURSOR = 512                # ours are ~40 characters of urlsafe base64
MAX_FILTER = 320                # the longest address (mta.core.address)
MAX_UNIX_TIME = 253402300799    # 9999-12-31T23:59:59Z
EVENT_PARAMS = ("after", "type", "recipient", "limit")
LIST_PARAMS = ("state", "domain", "sender", "recipient", "limit", "cursor")
FILTER_KEYS = ("state", "domain", "sender", "recipient")
_OPEN_PATHS = web.AppKey("open_paths", frozenset)
_TOKEN = web.AppKey("token", bytes)

ITEM_ACTIONS = ("hold", "release", "retry", "bounce")   # POST /v1/messages/{id}/<action>


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _error_response(status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


# ---------------------------------------------------------------- middleware

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=%[]")


def _q(value: object) -> str:
    """A client-controlled value for a key=value log line: as is when plain,
    else JSON-quoted with every non-ASCII or control character escaped."""
    s = str(value)
    if s and len(s) <= 200 and all(c in _SAFE for c in s):
        return s
    return json.dumps(s if len(s) <= 200 else s[:200] + "…")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _check_token(request: web.Request) -> None:
    # The raw header bytes: aiohttp decodes headers as UTF-8 with surrogate
    # escapes, which str.encode() cannot take back (was a 500 on "Bearer \xe9").
    values = [v for k, v in request.raw_headers if k.lower() == b"authorization"]
    if not values:
        raise ApiError(401, "unauthorized", "this endpoint needs an Authorization: Bearer token",
                       {"WWW-Authenticate": 'Bearer realm="mta"'})
    scheme, _, given = values[0].strip().partition(b" ")
    # Digests of both sides: constant time whatever the given length.
    valid = hmac.compare_digest(_digest(given.strip()), request.app[_TOKEN])
    if len(values) != 1 or scheme.lower() != b"bearer" or not valid:
        raise ApiError(401, "unauthorized", "the bearer token is not valid",
                       {"WWW-Authenticate": 'Bearer realm="mta", error="invalid_token"'})


@web.middleware
async def _guard(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    started = time.monotonic()
    try:
        if request.path not in request.app[_OPEN_PATHS]:
            _check_token(request)
        response = await handler(request)
    except ApiError as exc:
        response = _error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_exception_response(exc)
    except Exception:
        # The traceback goes to the log, never to the client; no headers logged.
        log.exception("event=admin_error method=%s path=%s", _q(request.method),
                      _q(request.path))
        response = _error_response(500, "internal", "internal error (see the daemon's log)")
    access_log.debug("method=%s path=%s status=%d ms=%.1f", _q(request.method),
                     _q(request.path), response.status, (time.monotonic() - started) * 1000)
    return response


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger for this app (`handler_args`): a request it
    cannot parse as HTTP (garbage on the port, raw control bytes in the
    request line) is one escaped INFO line, not an ERROR traceback; anything
    else is logged as aiohttp logs it."""

    def log(self, level, msg, *args, exc_info=None, **kwargs):  # type: ignore[override]
        if isinstance(exc_info, HttpProcessingError):
            lines = (exc_info.message or type(exc_info).__name__).strip().splitlines() or [""]
            self.logger.log(min(level, logging.INFO),
                            "event=admin_bad_http remote=%s status=%s error=%s",
                            _q(args[0] if args else "?"), exc_info.code, _q(lines[0]))
            return
        self.logger.log(level, msg, *args, exc_info=exc_info, **kwargs)


def _http_exception_response(exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return _error_response(404, "not_found", "no such endpoint")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return _error_response(405, "method_not_allowed", f"method not allowed (allowed: {allow})",
                               {"Allow": allow})
    if exc.status == 413:
        return _error_response(413, "too_large", "request body too large")
    code = (exc.reason or "error").lower().replace(" ", "_")
    return _error_response(exc.status, code, exc.reason or "error")


# ------------------------------------------------------------ validation

def _bad(name: str, message: str, code: str = "invalid_parameter") -> ApiError:
    return ApiError(400, code, f"{name} {message}" if message[:1].islower() else
                    f"{name}: {message}")


def _one(values: list[str], name: str) -> str:
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"parameter {name!r} given more than once")
    return values[0]


def _query(request: web.Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query as {name: value}: unknown or repeated names are a 400."""
    query = request.query
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown query parameter {unknown[0][:60]!r} "
                       f"(known: {', '.join(known)})")
    return {k: _one(query.getall(k), k) for k in query}


def _text(value: Any, where: str, code: str, limit: int = MAX_FILTER) -> str:
    if not isinstance(value, str):
        raise ApiError(400, code, f"{where} must be a string")
    if len(value) > limit:
        raise ApiError(400, code, f"{where} is too long ({len(value)} characters, at most {limit})")
    if has_control(value):
        raise ApiError(400, code, f"{where} contains control characters")
    return value


def _check_state(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in MESSAGE_STATES:
        raise ApiError(400, "invalid_filter", f"{where} must be one of {', '.join(MESSAGE_STATES)}")
    return value


def _check_domain(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    value = _text(value, where, "invalid_filter")
    try:
        domain = parse_domain(value)
        if domain.startswith("["):          # a domain literal: check what is inside
            parse_destination(domain)
        return domain
    except (AddressError, ValueError) as exc:
        raise ApiError(400, "invalid_filter", f"{where}: {exc}") from None


def _check_address(value: Any, where: str, *, allow_null: bool) -> str | None:
    if value is None or value == "":
        return None
    value = _text(value, where, "invalid_filter")
    try:
        return str(parse_address(value, allow_null=allow_null))
    except AddressError as exc:
        raise ApiError(400, "invalid_filter", f"{where}: {exc}") from None


def _filters(get: Callable[[str], Any]) -> dict[str, str | None]:
    return {"state": _check_state(get("state"), "state"),
            "domain": _check_domain(get("domain"), "domain"),
            # "<>" selects bounces/DSNs (the null sender), passed on as "".
            "sender": _check_address(get("sender"), "sender", allow_null=True),
            "recipient": _check_address(get("recipient"), "recipient", allow_null=False)}


def _uint(raw: str | None, name: str, lo: int, hi: int, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        return parse_uint(raw, lo, hi)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None


def _list_params(request: web.Request) -> dict[str, Any]:
    params = _query(request, LIST_PARAMS)
    out: dict[str, Any] = _filters(params.get)
    out["limit"] = _uint(params.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    cursor = params.get("cursor") or None
    if cursor is not None:
        _text(cursor, "cursor", "invalid_cursor", MAX_CURSOR)
    out["cursor"] = cursor
    return out


def _event_types(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    types = [t for t in raw.split(",") if t]
    bad = [t for t in types if t not in EVENT_TYPES]
    if bad:
        raise ApiError(400, "invalid_parameter", f"type: unknown event type {bad[0][:40]!r} "
                       f"(known: {', '.join(EVENT_TYPES)})")
    return types or None


def _queue_id(request: web.Request) -> str:
    try:
        return check_queue_id(request.match_info["id"])
    except ValueError as exc:
        raise _bad("id", str(exc)) from None


def _destination(request: web.Request) -> str:
    try:
        return parse_destination(request.match_info["name"])[1]
    except ValueError as exc:
        raise _bad("name", str(exc)) from None


def _webhook(request: web.Request) -> str:
    try:
        return check_webhook_name(request.match_info["name"])
    except ValueError as exc:
        raise _bad("name", str(exc)) from None


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        # NaN/Infinity are not JSON; a deep nesting is a RecursionError.
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_body", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    return body


# --------------------------------------------------------------- handlers

class _Handlers:
    def __init__(self, backend: AdminBackend, openapi: dict[str, Any]):
        self.b = backend
        self.openapi = openapi

    async def healthz(self, request: web.Request) -> web.Response:
        await self.b.health()
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason, *more = await self.b.readiness()
        details = dict(more[0]) if more and more[0] else {}
        if ready:
            return web.json_response({"ready": True, **details})
        reason = reason or "not ready"
        return web.json_response({"ready": False, "reason": reason, **details,
                                  "error": {"code": "not_ready", "message": reason}}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = await self.b.metrics()
        # content_type carries parameters (version, charset): set the raw header.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi_doc(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    async def queue_summary(self, request: web.Request) -> web.Response:
        return web.json_response({"destinations": await self.b.queue_summary()})

    async def list_messages(self, request: web.Request) -> web.Response:
        params = _list_params(request)
        as_json = getattr(self.b, "list_messages_json", None)
        try:
            if as_json is not None:
                # The backend serialises the page itself (the daemon's spool
                # builds it in SQLite, off the event loop).
                array, next_cursor = await as_json(**params)
                body = (b'{"messages": ' + array + b', "next_cursor": '
                        + json.dumps(next_cursor).encode() + b"}")
                return web.Response(body=body, content_type="application/json")
            messages, next_cursor = await self.b.list_messages(**params)
        except ValueError as exc:
            raise ApiError(400, "invalid_cursor", f"cursor is not valid: {exc}") from None
        return web.json_response({"messages": messages, "next_cursor": next_cursor})

    async def get_message(self, request: web.Request) -> web.Response:
        mid = _queue_id(request)
        message = await self.b.get_message(mid)
        if message is None:
            raise _unknown_message(mid)
        return web.json_response(message)

    async def message_body(self, request: web.Request) -> web.Response:
        mid = _queue_id(request)
        body = await self.b.message_body(mid)
        if body is None:
            raise _unknown_message(mid)
        return web.Response(body=body, content_type="message/rfc822")

    def message_action(self, action: str):
        async def handler(request: web.Request) -> web.Response:
            mid = _queue_id(request)
            try:
                result = await self.b.message_action(mid, action)
            except KeyError:
                raise _unknown_message(mid) from None
            except ActionRefused as exc:
                raise ApiError(409, "conflict", str(exc) or f"cannot {action} {mid} now") from None
            return web.json_response(result)
        handler.__name__ = f"message_{action}"
        return handler

    def bulk_action(self, action: str):
        async def handler(request: web.Request) -> web.Response:
            body = await _json_body(request)
            unknown = sorted(set(body) - set(FILTER_KEYS) - {"all"})
            if unknown:
                raise ApiError(400, "invalid_filter", f"unknown filter key {unknown[0]!r} "
                               f"(known: {', '.join(FILTER_KEYS)}, all)")
            everything = body.get("all", False)
            if not isinstance(everything, bool):
                raise ApiError(400, "invalid_filter", "\"all\" must be true or false")
            filters = _filters(body.get)
            if not everything and all(v is None for v in filters.values()):
                raise ApiError(400, "empty_filter", f"refusing to {action} every message: give "
                               "a filter (state, domain, sender, recipient) or \"all\": true")
            try:
                result = await self.b.bulk_action(action, all=everything, **filters)
            except ActionRefused as exc:
                raise ApiError(409, "conflict", str(exc) or f"cannot {action} now") from None
            return web.json_response(result)
        handler.__name__ = f"bulk_{action}"
        return handler

    def destination_action(self, action: str):
        async def handler(request: web.Request) -> web.Response:
            name = _destination(request)
            try:
                result = await self.b.destination_action(name, action)
            except NotFound as exc:
                raise ApiError(404, "not_found", exc.message) from None
            except KeyError:
                raise ApiError(404, "not_found", f"no destination {name!r}") from None
            except ActionRefused as exc:
                raise ApiError(409, "conflict", str(exc) or f"cannot {action} {name} now") from None
            return web.json_response(result)
        handler.__name__ = f"destination_{action}"
        return handler


    # ---- the ledger and webhooks (issue 6) ---------------------------------
    def _optional(self, name: str):
        fn = getattr(self.b, name, None)
        if fn is None:
            raise ApiError(501, "not_implemented", f"this server has no {name}")
        return fn

    async def events(self, request: web.Request) -> web.Response:
        q = _query(request, EVENT_PARAMS)
        after = _uint(q.get("after"), "after", 0, INT64_MAX, 0)
        limit = _uint(q.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
        types = _event_types(q.get("type"))
        recipient = _check_address(q.get("recipient"), "recipient", allow_null=False)
        events = await self._optional("events_after")(after, limit, types=types,
                                                      recipient=recipient)
        nxt = events[-1]["seq"] if events else after
        return web.json_response({"events": events, "next_after": nxt})

    async def message_events(self, request: web.Request) -> web.Response:
        mid = _queue_id(request)
        events = await self._optional("message_events")(mid)
        if events is None:
            raise _unknown_message(mid)
        return web.json_response({"events": events})

    async def webhooks(self, request: web.Request) -> web.Response:
        return web.json_response({"webhooks": await self._optional("webhooks")()})

    async def webhook_replay(self, request: web.Request) -> web.Response:
        name = _webhook(request)
        body = await _json_body(request)
        unknown = sorted(set(body) - {"from", "since"})
        if unknown:
            raise ApiError(400, "invalid_body", f"unknown key {unknown[0][:40]!r} "
                                                "(known: from, since)")
        start, since = body.get("from"), body.get("since")
        if (start is None) == (since is None):
            raise ApiError(400, "invalid_body", 'give exactly one of "from" (a sequence number, '
                                                'or "end" to drop the backlog) or "since" '
                                                '(unix time)')
        if start is not None and start != "end" and not (
                type(start) is int and 0 <= start <= INT64_MAX):
            raise ApiError(400, "invalid_body", f'"from" must be a sequence number (0 to '
                                                f'{INT64_MAX}) or "end"')
        if since is not None and not (type(since) in (int, float) and math.isfinite(since)
                                      and 0 <= since <= MAX_UNIX_TIME):
            raise ApiError(400, "invalid_body", f'"since" must be a unix time (0 to '
                                                f'{MAX_UNIX_TIME})')
        try:
            result = await self._optional("webhook_replay")(name, from_seq=start, since=since)
        except KeyError:
            raise ApiError(404, "not_found", f"no webhook {name!r}") from None
        return web.json_response(result)

    async def webhook_test(self, request: web.Request) -> web.Response:
        name = _webhook(request)
        try:
            result = await self._optional("webhook_test")(name)
        except KeyError:
            raise ApiError(404, "not_found", f"no webhook {name!r}") from None
        return web.json_response(result)


def _unknown_message(mid: str) -> ApiError:
    return ApiError(404, "not_found", f"no message {mid!r} in the queue")


def _route_table(h: _Handlers) -> list[tuple[str, str, Callable]]:
    routes: list[tuple[str, str, Callable]] = [
        ("GET", "/healthz", h.healthz),
        ("GET", "/readyz", h.readyz),
        ("GET", "/metrics", h.metrics),
        ("GET", "/v1/openapi.json", h.openapi_doc),
        ("GET", "/v1/queue/summary", h.queue_summary),
        ("GET", "/v1/messages", h.list_messages),
    ]
    # Bulk routes before "/v1/messages/{id}" so "hold" is never read as an id.
    routes += [("POST", f"/v1/messages/{a}", h.bulk_action(a)) for a in MESSAGE_ACTIONS]
    routes += [
        ("GET", "/v1/messages/{id}", h.get_message),
        ("DELETE", "/v1/messages/{id}", h.message_action("delete")),
        ("GET", "/v1/messages/{id}/body", h.message_body),
        ("GET", "/v1/messages/{id}/events", h.message_events),
        ("GET", "/v1/events", h.events),
        ("GET", "/v1/webhooks", h.webhooks),
        ("POST", "/v1/webhooks/{name}/replay", h.webhook_replay),
        ("POST", "/v1/webhooks/{name}/test", h.webhook_test),
    ]
    routes += [("POST", f"/v1/messages/{{id}}/{a}", h.message_action(a)) for a in ITEM_ACTIONS]
    routes += [("POST", f"/v1/destinations/{{name}}/{a}", h.destination_action(a))
               for a in DESTINATION_ACTIONS]
    return routes


ROUTES: tuple[tuple[str, str], ...] = tuple(
    (m, p) for m, p, _ in _route_table(_Handlers(None, {})))  # type: ignore[arg-type]


def create_app(backend: AdminBackend, *, token: str,
               metrics_require_token: bool = False) -> web.Application:
    """The admin application. `token` must be non-empty: there is no open mode."""
    if not token:
        raise ValueError("the admin API needs a non-empty token")
    from mta.admin.openapi import openapi_document
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY,
                          handler_args={"logger": _ServerLog(log, {})})
    app[_TOKEN] = _digest(token.encode())
    open_paths = {"/healthz"} if metrics_require_token else {"/healthz", "/metrics"}
    app[_OPEN_PATHS] = frozenset(open_paths)
    handlers = _Handlers(backend, openapi_document())
    for method, path, handler in _route_table(handlers):
        app.router.add_route(method, path, handler)
    return app


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class AdminServer:
    """Serves `create_app` on `cfg.address` ("host:port"; port 0 picks one).

    `cfg` is the `[admin]` section (AdminConfig): address and
    metrics_require_token are read from it; `token` is passed separately
    because it may come from state_dir/admin-token rather than the config.
    """

    def __init__(self, cfg: Any, backend: AdminBackend, token: str):
        self.cfg = cfg
        self.backend = backend
        require = bool(getattr(cfg, "metrics_require_token", False))
        self.app = create_app(backend, token=token, metrics_require_token=require)
        self._runner: web.AppRunner | None = None
        self.sockname: tuple[str, int] | None = None

    def __repr__(self) -> str:              # never show the token
        return f"AdminServer(address={self.cfg.address!r}, sockname={self.sockname!r})"

    @property
    def url(self) -> str:
        if self.sockname is None:
            raise RuntimeError("AdminServer is not started")
        host, port = self.sockname[0], self.sockname[1]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        host, port = _split_hostport(self.cfg.address)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses      # getsockname() of every bound socket
        self.sockname = (addresses[0][0], addresses[0][1]) if addresses else (host, port)
        # (the daemon logs event=listening listener=admin once it is up)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
