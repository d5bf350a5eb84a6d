"""The Destinations page: the queue by destination, traffic shaping in
force, and the operator's suspend, resume and flush.

One job: GET /destinations — the queue summary (Postfix qshape: recipients
waiting per destination by age), the shaping rules' actions and
suspensions with their reasons and end times, the warm-up of each egress
source — and the POSTs that act on them. Operator only (a tenant's
session gets 404 for every route here).

Public API:
    PART = "overview"   NAV   routes(backend)   DestinationsBackend (Protocol)

Routes (under /console; every POST carries `_csrf`, then redirects back
with a notice):
    GET  /destinations
    POST /destinations/{name}/suspend | /resume | /flush
    POST /shaping/lift             field `target`: an action's id

Element ids:
    #queue      the summary table; rows carry data-destination, the state
                badge class "state"; each row's forms are
                form.dest-suspend / form.dest-resume / form.dest-flush
    #actions    shaping actions in force; rows carry data-action-id, each
                with form.lift
    #warmup     egress sources' warm-up (when any source is configured)

Invariants:
- A destination name from the URL is checked here (length, no control
  character or space) and again by the backend as the admin API checks it
  (422 malformed, 404 unknown); nothing is done for a refused one.
- State lives in the URL or the server, never in a form but the action.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.render import Handler, NavItem, Route, field, form, redirect, render, viewer

__all__ = ["PART", "NAV", "routes", "DestinationsBackend", "MAX_NAME"]

PART = "overview"
NAV: list[NavItem] = [("Destinations", "/destinations", "operator")]
MAX_NAME = 300
_DONE = {"suspend": "suspended", "resume": "resumed", "flush": "flushed"}


class DestinationsBackend(Protocol):
    """What the Destinations page asks (mta.runtime.console_overview, the
    Overview's backend object). Shapes are the admin API's (mta.admin.backend)."""

    async def queue_summary(self) -> list[dict[str, Any]]:
        """Per destination, most recipients first: {"destination",
        "recipients", "held", "oldest_age" (seconds), "age_buckets"
        ({"5m": n, …, "1280m+": n}, mta.core.qshape.AGE_BUCKETS), "last_error",
        "state" (active|throttled|suspended), "domains", "actions" (the
        shaping actions concerning it)}."""

    async def shaping_actions(self) -> list[dict[str, Any]] | None:
        """The actions in force: {"id", "scope" (site|tenant), "key", "action",
        "rule", "since", "until", "reason"}; None without traffic shaping."""

    async def warmup(self) -> list[dict[str, Any]]:
        """Each egress source: {"source", "address", "pool", "schedule",
        "day", "cap", "used", "allowed_now", "warm"} ([] without sources)."""

    async def destination_action(self, name: str, action: str) -> dict[str, Any]:
        """suspend | resume | flush `name` (a domain, "[host]:port", an MX
        site or "sandbox", as the admin API takes it): {"destination" (what
        it resolved to), "action", "requested", "state"}. ConsoleError 422
        for a malformed name, 404 for one no mail can go to."""

    async def shaping_lift(self, target: str) -> list[dict[str, Any]]:
        """Lift the action with id `target` (or every action keyed `target`):
        the actions lifted ([] none matched). ConsoleError 404 without
        traffic shaping."""


def _name(request: web.Request) -> str:
    name = request.match_info.get("name", "")
    if not name or len(name) > MAX_NAME:
        raise ConsoleError(422, f"destination: 1 to {MAX_NAME} characters", "destination")
    if any(ord(c) < 33 or 127 <= ord(c) < 160 for c in name):
        raise ConsoleError(422, "destination: spaces and control characters are not allowed",
                           "destination")
    return name


def _operator(v: Viewer) -> None:
    if not v.operator:                 # the app refuses first; never act for a tenant
        raise ConsoleError(404, "no such page")


def _ages(buckets: dict[str, int]) -> list[tuple[str, int]]:
    return [(k, n) for k, n in buckets.items() if n]


def routes(backend: DestinationsBackend) -> list[Route]:
    async def page(request: web.Request) -> web.StreamResponse:
        _operator(viewer(request))
        summary = await backend.queue_summary()
        for row in summary:
            row["ages"] = _ages(row.get("age_buckets") or {})
        return render(request, "destinations.html", title="Destinations", summary=summary,
                      actions=await backend.shaping_actions(),
                      warmup=await backend.warmup())

    def act(action: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            _operator(viewer(request))
            name = _name(request)
            done = await backend.destination_action(name, action)
            dest = str(done.get("destination", name))
            raise redirect(request, "/destinations",
                           ok=f"{dest}: {_DONE[action]} (now {done.get('state', '?')})")
        return handler

    async def lift(request: web.Request) -> web.StreamResponse:
        _operator(viewer(request))
        target = field(await form(request), "target", max_len=200)
        lifted = await backend.shaping_lift(target)
        if not lifted:
            raise ConsoleError(404, "no shaping action in force has that id (it may have "
                                    "ended already)")
        names = ", ".join(f"{a.get('action')} on {a.get('key')}" for a in lifted)
        raise redirect(request, "/destinations", ok=f"lifted: {names}")

    return [("GET", "/destinations", page, "operator"),
            ("POST", "/destinations/{name}/suspend", act("suspend"), "operator"),
            ("POST", "/destinations/{name}/resume", act("resume"), "operator"),
            ("POST", "/destinations/{name}/flush", act("flush"), "operator"),
            ("POST", "/shaping/lift", lift, "operator")]
