"""What every console page handler uses: render a page, redirect with a
notice, read the viewer and the (already CSRF-checked) form.

One job: the Jinja2 environment (templates in mta/console/templates,
autoescaped, strict about undefined names) and the small helpers page
modules call; the request keys the app's middleware fills in.

Public API:
    render(request, template, status=200, **context) -> web.Response
    fragment(template, **context) -> str      a piece of a page (e.g. a live table row)
    redirect(request, path, ok=None, error=None) -> web.HTTPSeeOther (raise it)
    viewer(request) -> Viewer        session(request) -> Session
    await form(request) -> MultiDictProxy     (the POST body, CSRF already checked)
    field(data, name, max_len=300, required=True) -> str   a form value, checked
    SESSION, NAV, CLUSTER (request/app keys), Route, NavItem, Handler, Pages (a page module)
    when(t) / ago(seconds) / size(n)  (also the templates' filters)

Invariants:
- Every value reaches HTML through Jinja2's autoescaping; nothing is marked
  safe but our own SVG charts (mta.console.charts, which escape every
  label themselves).
- Pages are never cached (Cache-Control: no-store, set by the app).
- In a cluster (app[CLUSTER] set: the ClusterBackend of mta.console.pages_cluster)
  every logged-in page's header names the node serving it (`cluster_node`:
  {"name", "label"}); on a single node `cluster_node` is None.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from multidict import MultiDictProxy

from mta.console.backend import ConsoleError, Viewer
from mta.console.sessions import Session

__all__ = ["Pages", "render", "fragment", "redirect", "viewer", "session", "form", "field",
           "SESSION", "NAV", "CLUSTER", "Route", "NavItem", "Handler", "when", "ago", "size",
           "PREFIX"]

PREFIX = "/console"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (method, path under /console, handler, access: "any" | "operator")
Route = tuple[str, str, Handler, str]
# (label, path under /console, access)
NavItem = tuple[str, str, str]


class Pages(Protocol):
    """A page module: which ConsoleParts attribute is its backend (PART), its
    navigation entries (NAV) and its routes (`routes(backend)`)."""

    PART: str
    NAV: list[NavItem]

    def routes(self, backend: Any) -> list[Route]: ...

SESSION = web.RequestKey("console_session", Session)
NAV = web.AppKey("console_nav", list)
CLUSTER: web.AppKey[Any] = web.AppKey("console_cluster")    # a pages_cluster.ClusterBackend


def when(t: float | None) -> str:
    """Unix seconds as "2026-12-07 17:42:19" (UTC); "—" for none."""
    if t is None or t == 0:
        return "—"
    try:
        return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "—"


def ago(seconds: float | None) -> str:
    """A duration as "45s", "12m", "3h 5m", "2d 4h"."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


_env = Environment(loader=PackageLoader("mta.console", "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True),
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                   enable_async=False)
_env.filters.update(when=when, ago=ago, size=size)
_env.globals["prefix"] = PREFIX


def fragment(template: str, **context: Any) -> str:
    """A piece of a page (a table row sent live), rendered and escaped like a page."""
    return _env.get_template(template).render(**context)


def session(request: web.Request) -> Session:
    return request[SESSION]


def viewer(request: web.Request) -> Viewer:
    return request[SESSION].viewer


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    """The page `template` with the layout's context (viewer, CSRF token,
    navigation, notices) under `context`."""
    s = request.get(SESSION)
    nav = [(label, PREFIX + path) for label, path, access in request.app[NAV]
           if s is not None and (access == "any" or s.viewer.operator)]
    cluster = request.app.get(CLUSTER)
    html = _env.get_template(template).render(
        viewer=s.viewer if s is not None else None, csrf=s.csrf if s is not None else "",
        nav=nav, flashes=s.take_flashes() if s is not None else [], path=request.path,
        cluster_node=cluster.header() if cluster is not None and s is not None else None,
        **context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def redirect(request: web.Request, path: str, ok: str | None = None,
             error: str | None = None) -> web.HTTPSeeOther:
    """A 303 to `path` (under /console) with a notice for the next page."""
    s = request.get(SESSION)
    if s is not None:
        if ok:
            s.flash("ok", ok)
        if error:
            s.flash("error", error)
    return web.HTTPSeeOther(PREFIX + path)


async def form(request: web.Request) -> MultiDictProxy[Any]:
    """The POST body (urlencoded or multipart); the app checked its CSRF token."""
    return await request.post()


def field(data: MultiDictProxy[Any], name: str, max_len: int = 300,
          required: bool = True) -> str:
    """A text field, stripped: 422 naming it when missing (and required),
    too long, not text, or holding a control character."""
    value = data.get(name, "")
    if not isinstance(value, str):
        raise ConsoleError(422, f"{name}: expected text", name)
    value = value.strip()
    if required and not value:
        raise ConsoleError(422, f"{name}: required", name)
    if len(value) > max_len:
        raise ConsoleError(422, f"{name}: at most {max_len} characters", name)
    if any(ord(c) < 32 and c not in "\t\r\n" or ord(c) == 127 for c in value):
        raise ConsoleError(422, f"{name}: control characters are not allowed", name)
    return value
