"""The console's aiohttp application, mounted by the admin server at /console/.

One job: sessions around the pages — login (the admin token, or a
tenant's full-access API key) exchanged for a cookie, logout, expiry, the
CSRF check on every POST, security headers, HTML error pages — and the
assembly of the page modules' routes and navigation.

Public API:
    create_console_app(parts, *, clock, idle=3600, lifetime=43200, pages)
        -> web.Application   (mount with admin.add_subapp("/console/", app));
        `pages`: page modules (mta.console.render.Pages; all: mta.console.pages)
    COOKIE                 the session cookie's name

Routes (under /console):
    GET  /login  POST /login (token)   POST /logout   GET /static/{name}
    GET  /       the overview, else the first page the viewer may see
    …            each page module's (mta.console.pages_*)

Invariants:
- Every page needs a live session; without one a GET is a 303 to /login
  (with `next`, a /console path only: no open redirect) and anything else
  a 403. Every POST (login included: a pre-login cookie, double submit)
  must carry the session's `_csrf` form field, compared in constant time,
  and, when the browser sends Origin, an Origin of this host: else 403,
  nothing done.
- The cookie is HttpOnly, SameSite=Strict, Path=/console/, Secure when the
  request came over TLS. Tokens never appear in a URL, a page or a log; a
  failed login says only that the token is not valid, and ten failures
  from one address in five minutes make it wait (429). A tenant's session
  ends within KEY_RECHECK seconds of its API key being revoked.
- An operator-only page asked for by a tenant's session is a 404 (it does
  not exist for them). A ConsoleError is its status with its message; any
  other exception is a logged traceback and a generic 500 page.
- Every answer carries a strict Content-Security-Policy (scripts, styles and
  images from this origin only; no inline script), nosniff, frame-ancestors
  'none', Cache-Control: no-store (static files: cached) and a same-origin
  Referrer-Policy (no-referrer would make browsers send "Origin: null" on
  our own form posts; our URLs hold no secrets).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from urllib.parse import quote as urlquote

from aiohttp import web

from mta.console.backend import ConsoleError, ConsoleParts, Viewer
from mta.console.render import (CLUSTER, NAV, PREFIX, SESSION, Handler, NavItem, Pages, field,
                                redirect, render)
from mta.console.sessions import LoginThrottle, Session, SessionStore, new_token, same
from mta.core import Clock

__all__ = ["create_console_app", "COOKIE"]

log = logging.getLogger("mta.console")

COOKIE = "mta_console"
_PRE_COOKIE = "mta_console_login"      # the login form's CSRF (double submit)
KEY_RECHECK = 5.0                      # seconds between checks of a tenant session's key
MAX_POST = 2 << 20                     # a logged-in form's body (a 1 MiB CSV import + framing)
_STORE = web.AppKey("console_sessions", SessionStore)
_THROTTLE = web.AppKey("console_throttle", LoginThrottle)
_PARTS = web.AppKey("console_parts", ConsoleParts)
_OPERATOR_PATHS = web.AppKey("console_operator_paths", set)
_OPEN = frozenset({PREFIX + "/login"})

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
                 ".png": "image/png"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    out = {}
    for entry in resources.files("mta.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return out


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin in (f"{request.scheme}://{request.host}",)


def _cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
            max_age: int | None = None) -> None:
    response.set_cookie(name, value, path=PREFIX + "/", httponly=True, samesite="Strict",
                        secure=request.secure, max_age=max_age)


async def _check_csrf(request: web.Request) -> None:
    if not _same_origin(request):
        raise ConsoleError(403, "cross-origin form posts are refused")
    data = await request.post()
    given = data.get("_csrf")
    if request.path in _OPEN:
        expected = request.cookies.get(_PRE_COOKIE, "")
    else:
        s = request.get(SESSION)
        expected = s.csrf if s is not None else ""
    if not isinstance(given, str) or not expected or not same(given, expected):
        raise ConsoleError(403, "the form is out of date or was not sent from this console "
                                "(missing or wrong CSRF token); reload the page and try again")


async def _session(request: web.Request) -> Session | None:
    """The request's live session; a tenant's whose key was revoked since
    (checked at most every KEY_RECHECK seconds) ends here."""
    store = request.app[_STORE]
    cookie = request.cookies.get(COOKIE)
    s = store.get(cookie)
    if s is None or s.viewer.key_id is None:
        return s
    now = store.clock.now()
    if not s.key_checked <= now < s.key_checked + KEY_RECHECK:
        if not await request.app[_PARTS].auth.key_live(s.viewer.key_id):
            store.drop(cookie)
            return None
        s.key_checked = now
    return s


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        s = await _session(request)
        if s is not None:
            request[SESSION] = s
        if request.path not in _OPEN and not request.path.startswith(PREFIX + "/static/"):
            if s is None:
                if request.method in ("GET", "HEAD"):
                    target = request.path_qs if request.path != PREFIX + "/" else ""
                    suffix = f"?next={urlquote(target, safe='')}" if target else ""
                    raise web.HTTPSeeOther(PREFIX + "/login" + suffix)
                raise ConsoleError(403, "not logged in (or the session expired)")
            resource = request.match_info.route.resource
            canonical = resource.canonical if resource is not None else ""
            if not s.viewer.operator and canonical in request.app[_OPERATOR_PATHS]:
                raise ConsoleError(404, "no such page")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if s is not None:
                # A logged-in form may be bigger than the admin API's JSON
                # bodies (a CSV import); the login form keeps the 64 KiB.
                request = request.clone(client_max_size=MAX_POST)
                request[SESSION] = s
            await _check_csrf(request)
        return await handler(request)
    except ConsoleError as exc:
        return render(request, "error.html", exc.status, code=exc.status,
                      message=exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "no such page", 405: "method not allowed",
                   413: "the upload is too large"}.get(exc.status, exc.reason)
        return render(request, "error.html", exc.status, code=exc.status, message=message)
    except Exception:
        log.exception("event=console_error method=%s path=%s", request.method,
                      urlquote(request.path[:200]))
        return render(request, "error.html", 500, code=500,
                      message="internal error (see the daemon's log)")


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith(PREFIX + "/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


def _safe_next(value: str) -> str:
    """A post-login target: a path under /console only."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value \
            and all(32 < ord(c) < 127 for c in value):
        return value
    return PREFIX + "/"


async def _login_page(request: web.Request) -> web.StreamResponse:
    pre = new_token()
    response = render(request, "login.html", login_csrf=pre,
                      next=_safe_next(request.query.get("next", "")), error=None)
    _cookie(response, request, _PRE_COOKIE, pre, max_age=3600)
    return response


async def _login(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    addr = request.remote or "?"
    throttle = request.app[_THROTTLE]
    wait = throttle.blocked(addr)
    if wait:
        raise ConsoleError(429, f"too many failed logins; try again in {int(wait)} s")
    token = field(data, "token", max_len=512)
    auth = request.app[_PARTS].auth
    viewer: Viewer | None = None
    if auth.is_admin_token(token.encode("utf-8", "surrogatepass")):
        viewer = Viewer(None, "operator")
    else:
        found = await auth.tenant_of_key(token)
        if found is not None:
            viewer = Viewer(found[0], f"{found[0]} (key {found[1]})", key_name=found[1],
                            key_id=found[2])
    if viewer is None:
        throttle.failed(addr)
        log.info("event=console_login_failed remote=%s", urlquote(addr))
        pre = new_token()
        response = render(request, "login.html", 401, login_csrf=pre, error="That token is "
                          "not valid (the admin token, or a full-access API key).",
                          next=_safe_next(str(data.get("next", ""))))
        _cookie(response, request, _PRE_COOKIE, pre, max_age=3600)
        return response
    throttle.succeeded(addr)
    cookie, _ = request.app[_STORE].create(viewer)
    log.info("event=console_login tenant=%s remote=%s", viewer.tenant or "-", urlquote(addr))
    response = web.HTTPSeeOther(_safe_next(str(data.get("next", ""))))
    _cookie(response, request, COOKIE, cookie)
    response.del_cookie(_PRE_COOKIE, path=PREFIX + "/")
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    request.app[_STORE].drop(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther(PREFIX + "/login")
    response.del_cookie(COOKIE, path=PREFIX + "/")
    raise response


def _static(files: dict[str, tuple[bytes, str]]) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        found = files.get(request.match_info["name"])
        if found is None:
            raise ConsoleError(404, "no such file")
        return web.Response(body=found[0], content_type=found[1],
                            headers={"Cache-Control": "public, max-age=3600"})
    return serve


async def _home(request: web.Request) -> web.StreamResponse:
    s = request[SESSION]
    for _, path, access in request.app[NAV]:
        if path != "/" and (access == "any" or s.viewer.operator):
            raise redirect(request, path)
    return render(request, "error.html", 404, code=404, message="no pages are enabled")


def create_console_app(parts: ConsoleParts, *, clock: Clock, idle: float = 3600.0,
                       lifetime: float = 43200.0,
                       pages: Sequence[Pages]) -> web.Application:
    app = web.Application(middlewares=[_guard])
    app[_STORE] = SessionStore(clock, idle, lifetime)
    app[_THROTTLE] = LoginThrottle(clock)
    app[_PARTS] = parts
    app.on_response_prepare.append(_headers)
    nav: list[NavItem] = []
    operator_paths: set[str] = set()
    has_home = False
    for module in pages:
        backend = getattr(parts, module.PART, None)
        if backend is None:
            continue
        nav += module.NAV
        for method, path, handler, access in module.routes(backend):
            app.router.add_route(method, path, handler)
            has_home = has_home or (method == "GET" and path == "/")
            if access == "operator":
                operator_paths.add(PREFIX + path)
    app[NAV] = nav
    if parts.cluster is not None:
        app[CLUSTER] = parts.cluster
    app[_OPERATOR_PATHS] = operator_paths
    app.router.add_get("/login", _login_page)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/static/{name}", _static(_static_files()))
    if not has_home:
        app.router.add_get("/", _home)
    return app
