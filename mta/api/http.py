"""The sending API's HTTP side (aiohttp): keys, limits, errors, the server.

One job: the aiohttp application around the sending API's routes
(mta.api.routes) — API key authentication, the per-key rate limit and
permission, request bodies read within the size limit, errors in Resend's
shape — and the server that binds it (optionally over TLS).

Public API:
    ApiError(status, name, message, headers=None)   raise anywhere below a handler
    create_app(routes, *, settings_of, keys, clock, limiter=None) -> web.Application
        limiter: a RateTake (default: local_limiter(clock), this process's)
        routes: [(method, path, handler, needs full access)] (mta.api.routes);
        settings_of() -> ApiSettings, read per request (a reload applies the
        live [api] keys: rate_limit, max_request_size, max_recipients,
        attachment_hosts); keys: mta.api.keys.KeyCache
    ApiServer(app, address, *, ssl_context=None)
        .start(handoff=None) binds "host:port" (port 0 ok), .sockname, .url, .stop();
        with handoff(sock) -> bool it accepts itself and hands connections on
    Adopted(app, ssl_context)   an app serving connections accepted elsewhere:
                                .setup(), .adopt(sock), .close()
    read_raw(request) -> bytes       the body, within max_request_size (413)
    read_json(request) -> object     the body as JSON ({} when empty)
    json_of(raw) -> object           the same for bytes already read (422: not JSON)
    KEY (web.RequestKey)             the authenticated ApiKey of a request
    key_cache(app) -> KeyCache       the app's key cache (to forget a revoked key)
    REFUSE_SENDS (AppKey)   [fn() -> ApiError | None] asked before POST /emails(/batch);
    UNAVAILABLE: the 429's message while a cluster's engine is away (core.Unavailable)

Errors (every one is JSON `{"statusCode", "name", "message"}`, statusCode
equal to the HTTP status; the official SDKs read exactly these):
    401 missing_api_key | invalid_api_key, 403 restricted_api_key (a sending
    key on a route that needs full access) or a refused sender domain, 404
    not_found, 405 method_not_allowed, 409 invalid_idempotent_request |
    concurrent_idempotent_requests, 413 payload_too_large, 422
    validation_error | missing_required_field (naming the field), 429
    rate_limit_exceeded (with retry-after), 500 application_error (a bug: the
    traceback is logged, never sent), 503 service_unavailable (the spool
    cannot take mail now; retry-after). Network input never reaches a 500.

Invariants:
- Every route except GET /openapi.json needs `Authorization: Bearer
  <key>`; the key is checked before the route is looked up (an
  unauthenticated client learns nothing of the route table). Tokens are
  compared by hash in constant time (mta.api.keys) and never logged.
- The rate limit is per key (its own `rate_limit`, else `[api]
  rate_limit` requests/s); every authenticated response carries
  ratelimit-limit/-remaining/-reset, a 429 also retry-after.
- Bodies larger than `max_request_size` are refused with 413 before they
  are read whole (Content-Length, or counted while reading); all bodies
  held at once stay under BODY_BUDGET (256 MiB, or one max_request_size):
  past it, 503 service_unavailable with retry-after (memory stays bounded
  whatever many clients send at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from mta.admin.http import ServerLog, quote
from mta.api.keys import ApiKey, KeyCache
from mta.api.ratelimit import Decision, RateLimiter
from mta.core import Refused
from mta.core.clock import Clock
from mta.core.errors import Unavailable
from mta.core.hostport import split_hostport

__all__ = ["ApiError", "ApiServer", "ApiSettings", "Adopted", "KEY", "RateTake", "create_app",
           "local_limiter", "read_json", "read_raw", "key_cache", "json_of", "REFUSE_SENDS",
           "error_response", "Routes", "UNAVAILABLE"]

log = logging.getLogger("mta.api")
access_log = logging.getLogger("mta.api.access")

KEY = web.RequestKey("api_key", ApiKey)
_SETTINGS: web.AppKey[Callable[[], ApiSettings]] = web.AppKey("settings")
_KEYS = web.AppKey("keys", KeyCache)
# The rate limit's decision for (key id, requests/s): a local RateLimiter's, or (a
# receiver process) its owner's, so a key has one budget whichever process serves it.
RateTake = Callable[[str, float], Awaitable[Decision]]
_LIMITER: web.AppKey[RateTake] = web.AppKey("limiter")
_FULL = web.AppKey("full_access", frozenset)     # (method, route path) needing full access
_BUDGET: web.AppKey[_Budget] = web.AppKey("budget")
_HELD, _OPEN = web.RequestKey("held", int), frozenset({"/openapi.json"})
UNAVAILABLE = "The cluster's shared database does not answer now; try again shortly"
REFUSE_SENDS: web.AppKey[list[Callable[[], ApiError | None]]] = web.AppKey("refuse_sends")
# Bodies held in memory at once, all requests together: past it, 503 + retry-after.
BODY_BUDGET = 256 * 1024 * 1024
# aiohttp's own cap: the largest [api] max_request_size; ours is checked per request.
_CLIENT_MAX = 1024 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiSettings(Protocol):
    """What the API reads of `[api]` (config.ApiConfig)."""
    @property
    def address(self) -> str | None: ...
    @property
    def rate_limit(self) -> int: ...
    @property
    def max_request_size(self) -> int: ...
    @property
    def max_recipients(self) -> int: ...
    @property
    def attachment_hosts(self) -> tuple[str, ...]: ...


class ApiError(Exception):
    def __init__(self, status: int, name: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.name, self.message, self.headers = status, name, message, headers


def refused_error(exc: Refused) -> ApiError:
    """A tenant's guardrail (core.Refused) as the API's error: 429 with
    retry-after for a quota (Resend's daily_quota_exceeded for the day's),
    403 for a paused tenant or another tenant's domain."""
    text = exc.reply.text
    if exc.status == 429:
        daily = "daily quota" in text
        return ApiError(429, "daily_quota_exceeded" if daily else "rate_limit_exceeded", text,
                        None if exc.retry_after is None
                        else {"retry-after": str(exc.retry_after)})
    return ApiError(exc.status, "sending_paused" if "sending paused" in text
                    else "validation_error", text)


def error_response(status: int, name: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"statusCode": status, "name": name, "message": message},
                             status=status, headers=headers)


def _bearer(request: web.Request) -> str:
    # The raw header bytes: aiohttp decodes headers with surrogate escapes.
    values = [v for k, v in request.raw_headers if k.lower() == b"authorization"]
    if not values:
        raise ApiError(401, "missing_api_key", "Missing API key in the authorization header; "
                       "send Authorization: Bearer <key>")
    scheme, _, given = values[0].strip().partition(b" ")
    if len(values) != 1 or scheme.lower() != b"bearer" or not given.strip():
        raise ApiError(401, "invalid_api_key", "API key is invalid")
    try:
        return given.strip().decode("ascii")
    except UnicodeDecodeError:
        raise ApiError(401, "invalid_api_key", "API key is invalid") from None


async def _authenticate(request: web.Request) -> ApiKey:
    key = await request.app[_KEYS].authenticate_async(_bearer(request))
    if key is None:
        raise ApiError(401, "invalid_api_key", "API key is invalid")
    return key


def _full_access_needed(request: web.Request) -> bool:
    info = request.match_info.route.resource
    path = info.canonical if info is not None else request.path
    return (request.method, path) in request.app[_FULL]


def _http_exception(exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return error_response(404, "not_found", "The requested endpoint does not exist")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return error_response(405, "method_not_allowed",
                              f"Method is not allowed for this endpoint (allowed: {allow})",
                              {"Allow": allow})
    if exc.status == 413:
        return error_response(413, "payload_too_large", "Request body too large")
    return error_response(exc.status, (exc.reason or "error").lower().replace(" ", "_"),
                          exc.reason or "error")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    limits: dict[str, str] = {}
    try:
        if request.path not in _OPEN:
            key = await _authenticate(request)
            request[KEY] = key
            settings = request.app[_SETTINGS]()
            decision = await request.app[_LIMITER](key.id, key.rate_limit or settings.rate_limit)
            limits = decision.headers()
            if not decision.allowed:
                raise ApiError(429, "rate_limit_exceeded",
                               "Too many requests: the limit is "
                               f"{decision.limit} requests per second for this key", limits)
            if key.permission != "full_access" and _full_access_needed(request):
                raise ApiError(403, "restricted_api_key",
                               "This API key is restricted to sending emails only")
            if request.method == "POST" and request.path in ("/emails", "/emails/batch"):
                for refuse in request.app[REFUSE_SENDS]:
                    if (refused := refuse()) is not None:
                        raise refused
        try:
            response = await handler(request)
        finally:
            request.app[_BUDGET].used -= request.get(_HELD, 0)
    except ApiError as exc:
        response = error_response(exc.status, exc.name, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_exception(exc)
    except Unavailable:       # a cluster's shared engine is away (degraded mode)
        response = error_response(429, "unavailable", UNAVAILABLE, {"Retry-After": "5"})
    except Exception:
        log.exception("event=api_error method=%s path=%s", quote(request.method),
                      quote(request.path))
        response = error_response(500, "application_error",
                                  "Internal error (see the mail server's log)")
    for name, value in limits.items():
        response.headers.setdefault(name, value)
    if access_log.isEnabledFor(logging.DEBUG):
        access_log.debug("method=%s path=%s status=%d ms=%.1f", quote(request.method),
                         quote(request.path), response.status,
                         (time.monotonic() - started) * 1000)
    return response


async def read_raw(request: web.Request) -> bytes:
    """The request body, at most max_request_size bytes (else 413, before
    reading it whole when Content-Length says so)."""
    limit = request.app[_SETTINGS]().max_request_size
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large",
                       f"Request body too large: the limit is {limit} bytes")
    chunks, size = [], 0
    budget = request.app[_BUDGET]
    while True:
        chunk = await request.content.read(256 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large",
                           f"Request body too large: the limit is {limit} bytes")
        if not budget.take(len(chunk), limit):
            raise ApiError(503, "service_unavailable",
                           "The server holds too many request bodies right now; retry shortly",
                           {"retry-after": "1"})
        request[_HELD] = request.get(_HELD, 0) + len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


class _Budget:
    """The bytes of request bodies held in memory at once, over all
    requests: at most BODY_BUDGET (or one max_request_size, if larger)."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, n: int, max_request: int) -> bool:
        if self.used + n > max(BODY_BUDGET, max_request):
            return False
        self.used += n
        return True


async def read_json(request: web.Request) -> object:
    """The request body as JSON: {} when empty (the SDKs send no body, or
    `{}`, on GET, DELETE and some POSTs); 413 over max_request_size; 422
    when it is not JSON."""
    return json_of(await read_raw(request))


def json_of(raw: bytes) -> object:
    """A body's JSON ({} when empty); 422 when it is not JSON (NaN and
    Infinity are not JSON either)."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError(422, "validation_error", "body: not valid JSON") from None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


Routes = list[tuple[str, str, Handler, bool]]   # method, path, handler, needs full access


def local_limiter(clock: Clock) -> RateTake:
    """A RateLimiter of this process as a RateTake."""
    limiter = RateLimiter(clock)

    async def take(key_id: str, rate: float) -> Decision:
        return limiter.take(key_id, rate)
    return take


def create_app(routes: Routes, *, settings_of: Callable[[], ApiSettings], keys: KeyCache,
               clock: Clock, limiter: RateTake | None = None) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=_CLIENT_MAX,
                          handler_args={"logger": ServerLog(log, "api")})
    app[_SETTINGS] = settings_of
    app[_KEYS] = keys
    app[_LIMITER] = limiter or local_limiter(clock)
    app[_BUDGET] = _Budget()
    app[REFUSE_SENDS] = []
    app[_FULL] = frozenset((m, p) for m, p, _, full in routes if full)
    for method, path, handler, _ in routes:
        app.router.add_route(method, path, handler)
    return app


def key_cache(app: web.Application) -> KeyCache:
    """The KeyCache `create_app` was given: whoever revokes a key in this
    process (the console) calls its .forget(id), so it stops at once."""
    return app[_KEYS]


class Adopted:
    """An app serving connections accepted elsewhere (a receiver process's
    share of the sending API, or the owner's own when no receiver takes
    one): `await setup()`, `adopt(sock)` (TLS handshake included, in a task
    of its own), `await close()`."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None):
        self.app, self.ssl_context = app, ssl_context
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._tasks: set[asyncio.Task[None]] = set()

    async def setup(self) -> None:
        await self.runner.setup()

    def adopt(self, sock: socket.socket) -> None:
        task = asyncio.ensure_future(self._adopt(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopt(self, sock: socket.socket) -> None:
        server = self.runner.server
        try:
            if server is None:
                raise OSError("the API is stopping")
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            if self.ssl_context is None:
                await loop.connect_accepted_socket(server, sock=sock)
            else:
                await loop.connect_accepted_socket(server, sock=sock, ssl=self.ssl_context,
                                                   ssl_handshake_timeout=30)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ValueError) as exc:
            log.info("event=api_adopt_failed error=%s", quote(exc))
            sock.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.runner.cleanup()


class ApiServer:
    """Serves an app on `address` ("host:port"; port 0 picks one). With a
    `handoff` (mta serve with receiver processes), the server accepts
    itself and hands each connection to `handoff(sock) -> bool`; a False
    (no receiver can take it now) serves it here."""

    def __init__(self, app: web.Application, address: str, *,
                 ssl_context: ssl.SSLContext | None = None):
        self.app, self.address, self.ssl_context = app, address, ssl_context
        self._runner: web.AppRunner | None = None
        self._own: Adopted | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._listen: socket.socket | None = None
        self.sockname: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        if self.sockname is None:
            raise RuntimeError("ApiServer is not started")
        host, port = self.sockname
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    async def start(self, handoff: Callable[[socket.socket], bool] | None = None) -> None:
        host, port = split_hostport(self.address)
        if handoff is not None:
            await self._start_handing(host, port, handoff)
            return
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self.sockname = (addresses[0][0], addresses[0][1]) if addresses else (host, port)

    async def _start_handing(self, host: str, port: int,
                             handoff: Callable[[socket.socket], bool]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listen = socket.create_server((host, port), family=family, backlog=1024)
        listen.setblocking(False)
        own = Adopted(self.app, self.ssl_context)
        await own.setup()
        self._listen, self._own = listen, own
        self.sockname = tuple(listen.getsockname()[:2])
        self._accepting = asyncio.ensure_future(self._accept(listen, own, handoff))

    async def _accept(self, listen: socket.socket, own: Adopted,
                      handoff: Callable[[socket.socket], bool]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listen)
            except OSError as exc:       # EMFILE and friends: pause, do not spin
                log.warning("event=api_accept_failed error=%s", quote(exc))
                await asyncio.sleep(1.0)
                continue
            try:
                handed = handoff(conn)
            except Exception:            # never lose the accept loop over one connection
                log.exception("event=api_handoff_failed")
                handed = False
            if not handed:
                own.adopt(conn)

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._listen is not None:
            self._listen.close()
            self._listen = None
        if self._own is not None:
            own, self._own = self._own, None
            await own.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
