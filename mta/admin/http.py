"""The admin HTTP API (aiohttp): health, metrics, queue inspection and actions.

One job: the aiohttp application around the admin routes — the bearer
token check, error bodies, the access log — and the server that binds it.
The routes and their handlers are mta.admin.handlers, what a request may
carry mta.admin.params; no queue logic lives here.

Public API:
    create_app(backend, *, token, metrics_require_token, console=None) -> web.Application
    AdminServer(cfg, backend, token, console=None, ssl_context=None)   (HTTPS with one)
                                       .start() binds cfg.address (port 0 ok),
                                       .sockname, .url, .backend, .stop()
    AdminSettings                      the Protocol of `cfg` (the [admin] section)
    ROUTES                             (method, path) of every route, in order
    token_digest(token), token_matches(given, digest)   the bearer comparison
    CONSOLE_PREFIX                     "/console": the web console (mta.console,
                                       given as `console`) is mounted under it

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
- Every input is validated before the backend sees it (mta.admin.params):
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
  log lines are escaped (`quote`), so no raw control byte reaches the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mta.admin.backend import AdminBackend
from mta.admin.handlers import ROUTES, Handler, route_table
from mta.admin.openapi import openapi_document
from mta.admin.params import DEFAULT_LIMIT, MAX_BODY, MAX_LIMIT, ApiError
from mta.core.hostport import split_hostport
from mta.core.errors import Unavailable

__all__ = ["create_app", "token_digest", "token_matches", "CONSOLE_PREFIX", "AdminServer",
           "AdminSettings", "ROUTES", "DEFAULT_LIMIT", "MAX_LIMIT", "ServerLog", "quote"]

log = logging.getLogger("mta.admin")
access_log = logging.getLogger("mta.admin.access")

_OPEN_PATHS = web.AppKey("open_paths", frozenset)
CONSOLE_PREFIX = "/console"
_TOKEN = web.AppKey("token", bytes)

def _error_response(status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


# ---------------------------------------------------------------- middleware

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=%[]")


def quote(value: object) -> str:
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
    valid = token_matches(given, request.app[_TOKEN])
    if len(values) != 1 or scheme.lower() != b"bearer" or not valid:
        raise ApiError(401, "unauthorized", "the bearer token is not valid",
                       {"WWW-Authenticate": 'Bearer realm="mta", error="invalid_token"'})


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    if request.path == CONSOLE_PREFIX or request.path.startswith(CONSOLE_PREFIX + "/"):
        # The console's own sessions, CSRF checks and HTML error pages.
        response = await handler(request)
        access_log.debug("method=%s path=%s status=%d ms=%.1f", quote(request.method),
                         quote(request.path[:60]), response.status,
                         (time.monotonic() - started) * 1000)
        return response
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
    except Unavailable:       # a cluster's shared engine is away (degraded mode)
        response = _error_response(429, "unavailable", "the cluster's shared database does "
                                   "not answer now; try again shortly", {"Retry-After": "5"})
    except Exception:
        # The traceback goes to the log, never to the client; no headers logged.
        log.exception("event=admin_error method=%s path=%s", quote(request.method),
                      quote(request.path))
        response = _error_response(500, "internal", "internal error (see the daemon's log)")
    access_log.debug("method=%s path=%s status=%d ms=%.1f", quote(request.method),
                     quote(request.path), response.status, (time.monotonic() - started) * 1000)
    return response


# What `exc_info=` of a logging call may be (typeshed's logging._ExcInfoType).
_ExcInfo = (bool | BaseException | tuple[type[BaseException], BaseException, TracebackType | None]
            | tuple[None, None, None] | None)


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger for an app (`handler_args`): a request it
    cannot parse as HTTP (garbage on the port, raw control bytes in the
    request line) is one escaped INFO line (`event=<prefix>_bad_http`), not
    an ERROR traceback; anything else is logged as aiohttp logs it. The
    sending API (mta.api) uses it too."""

    def __init__(self, logger: logging.Logger, prefix: str = "admin"):
        super().__init__(logger, {})
        self.prefix = prefix

    def log(self, level: int, msg: object, *args: object, exc_info: _ExcInfo = None,
            stack_info: bool = False, stacklevel: int = 1,
            extra: Mapping[str, object] | None = None, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            lines = (exc_info.message or type(exc_info).__name__).strip().splitlines() or [""]
            self.logger.log(min(level, logging.INFO),
                            "event=%s_bad_http remote=%s status=%s error=%s",
                            self.prefix, quote(args[0] if args else "?"), exc_info.code,
                            quote(lines[0]))
            return
        self.logger.log(level, msg, *args, exc_info=exc_info, stack_info=stack_info,
                        stacklevel=stacklevel, extra=extra)


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


def token_digest(token: str) -> bytes:
    """What the admin app compares a bearer token's digest with (the console's
    login uses the same comparison)."""
    return _digest(token.encode())


def token_matches(given: bytes, digest: bytes) -> bool:
    """`given` is the token whose digest is `digest` (constant time)."""
    return hmac.compare_digest(_digest(given.strip()), digest)


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(CONSOLE_PREFIX + "/")


def create_app(backend: AdminBackend, *, token: str, metrics_require_token: bool = False,
               console: web.Application | None = None) -> web.Application:
    """The admin application. `token` must be non-empty: there is no open mode.
    `console` (mta.console.app) is mounted at /console/ and checks its own
    sessions: its paths are outside the bearer check and the JSON errors."""
    if not token:
        raise ValueError("the admin API needs a non-empty token")
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY,
                          handler_args={"logger": ServerLog(log)})
    app[_TOKEN] = token_digest(token)
    open_paths = {"/healthz"} if metrics_require_token else {"/healthz", "/metrics"}
    app[_OPEN_PATHS] = frozenset(open_paths)
    for method, path, handler in route_table(backend, openapi_document()):
        app.router.add_route(method, path, handler)
    if console is not None:
        app.router.add_get(CONSOLE_PREFIX, _to_console)
        app.add_subapp(CONSOLE_PREFIX + "/", console)
    return app


class AdminSettings(Protocol):
    """What AdminServer reads of the `[admin]` section (config.AdminConfig);
    `metrics_require_token` may be absent (then False)."""

    @property
    def address(self) -> str:
        """"host:port" to bind (mta.core.hostport; port 0 picks one)."""


class AdminServer:
    """Serves `create_app` on `cfg.address` ("host:port"; port 0 picks one).

    `cfg` is the `[admin]` section (AdminSettings); `token` is passed
    separately because it may come from state_dir/admin-token rather than
    the config.
    """

    def __init__(self, cfg: AdminSettings, backend: AdminBackend, token: str,
                 console: web.Application | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.cfg = cfg
        self.ssl_context = ssl_context
        self.backend = backend
        require = bool(getattr(cfg, "metrics_require_token", False))
        self.app = create_app(backend, token=token, metrics_require_token=require,
                              console=console)
        self._runner: web.AppRunner | None = None
        self.sockname: tuple[str, int] | None = None

    def __repr__(self) -> str:              # never show the token
        return f"AdminServer(address={self.cfg.address!r}, sockname={self.sockname!r})"

    @property
    def url(self) -> str:
        if self.sockname is None:
            raise RuntimeError("AdminServer is not started")
        host, port = self.sockname[0], self.sockname[1]
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        host, port = split_hostport(self.cfg.address)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=self.ssl_context)
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
