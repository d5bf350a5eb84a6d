"""The public HTTP listener ("[public]"): one-click unsubscribe, click and open tracking.

One job: the aiohttp application that the links in sent mail point at, and
the server that binds it. Each link carries a sealed token (mta.mail.tokens);
this module unseals it for its kind and hands the fields to an injected
backend, which records and decides.

Public API:
    PublicBackend (Protocol)    the daemon's side: unsubscribe, click, opened,
                                delivered_at, now (see the class)
    public_app(backend, key, *, name="mta") -> web.Application
    PublicServer(app, address, *, ssl_context=None)
        .start() binds "host:port" (port 0 ok), .sockname, .url, .stop()
    mask_address(address) -> str     "jane@example.com" → "j***@example.com"
    BODY_LIMIT, AGENT_LIMIT, SECURITY_HEADERS, PIXEL_GIF

Tokens (sealed by the daemon) and their fields:
    "u" unsubscribe  [tenant, recipient, topic ("" = none), queue_id]
    "c" click        [queue_id, link index (int), recipient]
    "o" open         [queue_id, recipient]

Routes:
    GET  /u/{token}   a confirmation page (the recipient masked) with a form
                      that POSTs List-Unsubscribe=One-Click; GET never
                      unsubscribes (link scanners follow every GET)
    POST /u/{token}   RFC 8058: a body (x-www-form-urlencoded or multipart/
                      form-data; any other content type is read as the former)
                      holding List-Unsubscribe=One-Click → backend.unsubscribe
                      (one_click=True) → 200 "You are unsubscribed"; the field
                      missing → 400; body over BODY_LIMIT → 413; the backend
                      answering False (unknown or expired) → 404
    GET|HEAD /c/{token}  click_label (mta.policy.scanners; delivered_at from
                      the backend for the token's queue id) → backend.click →
                      302 to exactly the URL it returned (a token never
                      carries a URL: no open redirect); None → 404
    GET|HEAD /o/{token}  backend.opened (labelled by open_label) and always
                      the same 1×1 transparent GIF, Cache-Control: no-store,
                      whether or not the token was good (validity is not
                      revealed); a failing backend is logged, the GIF still sent
    anything else     404 (a wrong method too)

Invariants:
- Every response of the app carries SECURITY_HEADERS (no referrer, nosniff,
  a Content-Security-Policy allowing only inline style and a form posting
  to this origin, no framing) and Cache-Control: no-store.
- A bad token (unreadable, tampered, another kind, wrong shape) is a 404
  page (the open pixel excepted), never an error with details.
- Every value shown in a page is html-escaped; pages never show a token.
- No token in any log line: no access log, the server's own log lines for
  unparseable requests say only the status (aiohttp's message may quote the
  request line), errors are logged with the route's name, not the path.
- The User-Agent reaches the backend cut to AGENT_LIMIT characters (the
  labels are decided on the whole one); client_ip is the peer's address
  (no X-Forwarded-For: this listener faces the internet itself).
- Network input never causes a traceback or a 500: a failing backend is
  logged and answered 503 (the open pixel: the GIF).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from html import escape
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mta.api.http import ApiServer
from mta.mail.tokens import TokenKey, unseal
from mta.policy.scanners import click_label, open_label

__all__ = ["AGENT_LIMIT", "BODY_LIMIT", "PIXEL_GIF", "SECURITY_HEADERS", "PublicBackend",
           "PublicServer", "mask_address", "public_app"]

log = logging.getLogger("mta.public")

BODY_LIMIT = 8 * 1024
AGENT_LIMIT = 512
SECURITY_HEADERS: Mapping[str, str] = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}
PIXEL_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00"
             b"\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x01D\x00;")
_ONE_CLICK = ("List-Unsubscribe", "One-Click")
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
          "padding:0 1rem;color:#222;line-height:1.5}"
          "button{font-size:1rem;padding:.5rem 1.25rem;cursor:pointer}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PublicBackend(Protocol):
    """What the app asks of the daemon. Fields are the token's, as sealed."""

    async def unsubscribe(self, fields: list[str | int], *, one_click: bool, client_ip: str,
                          user_agent: str) -> bool:
        """Unsubscribe; False: nothing to do (unknown or expired)."""
        ...

    async def click(self, fields: list[str | int], *, label: str | None, client_ip: str,
                    user_agent: str) -> str | None:
        """Record a click; the target URL, or None (unknown: 404)."""
        ...

    async def opened(self, fields: list[str | int], *, label: str | None, client_ip: str,
                     user_agent: str) -> None:
        """Record an open."""
        ...

    async def delivered_at(self, queue_id: str) -> float | None:
        """When the message was delivered, if known (for the prefetch label)."""
        ...

    def now(self) -> float:
        ...


_BACKEND: web.AppKey[PublicBackend] = web.AppKey("public_backend")
_KEY = web.AppKey("public_token_key", TokenKey)
_NAME = web.AppKey("public_name", str)
# Field count and the type of each field the app reads, per token kind.
_SHAPES: dict[str, tuple[int, dict[int, type]]] = {
    "u": (4, {1: str}), "c": (3, {0: str, 1: int}), "o": (2, {0: str})}


def mask_address(address: str) -> str:
    """The address with its local part cut to one character: "j***@example.com"."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address[:1] + "***"
    return f"{local[:1]}***@{domain}"


def _fields(request: web.Request, kind: str) -> list[str | int] | None:
    fields = unseal(request.app[_KEY], kind, request.match_info.get("token", ""))
    if fields is None:
        return None
    count, types = _SHAPES[kind]
    if len(fields) != count or any(not isinstance(fields[i], t) for i, t in types.items()):
        return None
    return fields


def _client(request: web.Request) -> tuple[str, str, str]:
    """(client ip, user agent cut to AGENT_LIMIT, the whole user agent)."""
    agent = request.headers.get("User-Agent", "")
    return request.remote or "", agent[:AGENT_LIMIT], agent


def _page(request: web.Request, status: int, title: str, body_html: str) -> web.Response:
    name = escape(request.app[_NAME])
    text = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="robots" content="noindex"><title>{escape(title)} · {name}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body_html}"
            "</body></html>")
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")


def _not_found(request: web.Request) -> web.Response:
    return _page(request, 404, "Link not valid",
                 "<p>This link is not valid, or it has expired.</p>")


async def _unsubscribe_page(request: web.Request) -> web.StreamResponse:
    fields = _fields(request, "u")
    if fields is None:
        return _not_found(request)
    who = escape(mask_address(str(fields[1])))
    return _page(request, 200, "Unsubscribe", (
        f"<p>Unsubscribe {who}?</p>"
        '<form method="post">'
        f'<input type="hidden" name="{_ONE_CLICK[0]}" value="{_ONE_CLICK[1]}">'
        '<button type="submit">Unsubscribe</button></form>'))


async def _one_click(request: web.Request) -> bool | None:
    """Whether the body holds List-Unsubscribe=One-Click; None: not a form
    we can read. 413 (raised) past BODY_LIMIT."""
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=BODY_LIMIT,
                                            actual_size=request.content_length)
    try:
        if request.content_type == "multipart/form-data":
            values = (await request.post()).getall(_ONE_CLICK[0], [])
        else:
            raw = await request.read()
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True,
                              max_num_fields=64)
            values = [v for k, v in pairs if k == _ONE_CLICK[0]]
    except web.HTTPException:
        raise
    except Exception:                  # a malformed body: whatever the parser raised
        return None
    return any(isinstance(v, str) and v.strip().lower() == _ONE_CLICK[1].lower()
               for v in values)


async def _unsubscribe(request: web.Request) -> web.StreamResponse:
    fields = _fields(request, "u")
    if fields is None:
        return _not_found(request)
    if not await _one_click(request):
        return _page(request, 400, "Not unsubscribed", (
            "<p>This address takes the one-click unsubscribe of RFC 8058: a POST "
            "with List-Unsubscribe=One-Click.</p>"))
    ip, agent, _ = _client(request)
    done = await request.app[_BACKEND].unsubscribe(fields, one_click=True, client_ip=ip,
                                                   user_agent=agent)
    if not done:
        return _not_found(request)
    who = escape(mask_address(str(fields[1])))
    return _page(request, 200, "You are unsubscribed",
                 f"<p>{who} will not receive these messages any more.</p>")


def _redirectable(target: str) -> bool:
    """An absolute http(s) URL without control characters (a bad one from
    the backend is a 404, never a broken Location header)."""
    head = target[:8].lower()
    return (head.startswith("http://") or head.startswith("https://")) and \
        not any(ord(c) < 0x21 or ord(c) == 0x7f for c in target)


async def _click(request: web.Request) -> web.StreamResponse:
    fields = _fields(request, "c")
    if fields is None:
        return _not_found(request)
    backend = request.app[_BACKEND]
    ip, agent, whole = _client(request)
    delivered = await backend.delivered_at(str(fields[0]))
    label = click_label(method=request.method, user_agent=whole, now=backend.now(),
                        delivered_at=delivered)
    target = await backend.click(fields, label=label, client_ip=ip, user_agent=agent)
    if target is None or not _redirectable(target):
        if target is not None:
            log.warning("event=public_bad_target route=click")
        return _not_found(request)
    return web.Response(status=302, headers={"Location": target})


async def _open(request: web.Request) -> web.StreamResponse:
    fields = _fields(request, "o")
    if fields is not None:
        backend = request.app[_BACKEND]
        ip, agent, whole = _client(request)
        try:
            delivered = await backend.delivered_at(str(fields[0]))
            label = open_label(user_agent=whole, now=backend.now(), delivered_at=delivered)
            await backend.opened(fields, label=label, client_ip=ip, user_agent=agent)
        except Exception:
            log.exception("event=public_error route=open")
    return web.Response(body=PIXEL_GIF, content_type="image/gif")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on everything; errors as pages, never a traceback."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            response = _page(request, 413, "Too large",
                             f"<p>The request body is limited to {BODY_LIMIT} bytes.</p>")
        elif exc.status == 400:
            response = _page(request, 400, "Bad request", "<p>The request is not valid.</p>")
        else:                          # 404, 405 and the rest: nothing here
            response = _page(request, 404, "Not found", "<p>There is nothing here.</p>")
    except Exception:
        route = request.match_info.route.name or request.method
        log.exception("event=public_error route=%s", route)
        response = _page(request, 503, "Try again later",
                         "<p>This could not be done right now. Please try again later.</p>")
    response.headers.update(SECURITY_HEADERS)
    return response


# What `exc_info=` of a logging call may be (typeshed's logging._ExcInfoType).
_ExcInfo = (bool | BaseException | tuple[type[BaseException], BaseException, TracebackType | None]
            | tuple[None, None, None] | None)


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger: a request it cannot parse is one INFO line
    with its status only (aiohttp's message may quote the request line, and
    with it a token); anything else as aiohttp logs it."""

    def log(self, level: int, msg: object, *args: object, exc_info: _ExcInfo = None,
            stack_info: bool = False, stacklevel: int = 1,
            extra: Mapping[str, object] | None = None, **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.log(min(level, logging.INFO), "event=public_bad_http status=%s",
                            exc_info.code)
            return
        self.logger.log(level, msg, *args, exc_info=exc_info, stack_info=stack_info,
                        stacklevel=stacklevel, extra=extra)


def public_app(backend: PublicBackend, key: TokenKey, *, name: str = "mta") -> web.Application:
    """The public listener's application (see the module docstring)."""
    app = web.Application(middlewares=[_guard], client_max_size=BODY_LIMIT,
                          handler_args={"logger": _ServerLog(log, {})})
    app[_BACKEND] = backend
    app[_KEY] = key
    app[_NAME] = name
    app.router.add_get("/u/{token}", _unsubscribe_page, name="unsubscribe_page")
    app.router.add_post("/u/{token}", _unsubscribe, name="unsubscribe")
    app.router.add_get("/c/{token}", _click, name="click")
    app.router.add_get("/o/{token}", _open, name="open")
    return app


# The sending API's server, reused: it binds "host:port" (port 0 picks one),
# optionally over TLS, and keeps no access log (paths carry tokens).
PublicServer = ApiServer
