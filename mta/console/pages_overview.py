"""The Overview page: what the mail system is doing now, at a glance.

One job: GET / — the event series of the last hour (per minute) and the
last day (per hour) as server-drawn SVG charts with their totals in text,
the queue's figures, the destinations (or, for a tenant, the recipient
domains) with the most deferrals and their last reply, the tenants at
or near their reputation thresholds, and what is paused or suspended.
An operator sees every tenant's figures; a tenant's viewer its own only
(its backend filters: see `OverviewBackend`).

Public API:
    PART = "overview"   NAV   routes(backend)   OverviewBackend (Protocol)
    SERIES              the five series, in stacking order (bottom first)
    LABELS, COLOURS     each series' name on the page and its colour

Series (the backend maps ledger events to them; mta.core.envelope EVENT_TYPES):
    accepted    "queued": a recipient taken into the queue (SMTP or API)
    delivered   "delivered"
    deferred    "deferred": an attempt that will be retried
    bounced     "bounced" and "expired": a final failure
    complained  "complained": a feedback report about delivered mail

Element ids (tests and the browser tests rely on them):
    #stats                 the stat cards; their values: #stat-queued,
                           #stat-held, #stat-oldest, #stat-delivered-hour
    #chart-hour, #chart-day          the two charts (figure); the SVGs are
                           #chart-hour-svg, #chart-day-svg; each series'
                           total in text (the legend): #total-hour-<series>,
                           #total-day-<series>
    #deferrals             the most deferrals, by destination (operator) or
                           recipient domain (tenant); rows carry data-name
    #tenants-at-risk       (operator) rows carry data-tenant
    #paused                #paused-tenants (rows data-tenant),
                           #suspended-destinations, #shaping-in-force,
                           #held-messages (the count)
    #status                (a tenant's viewer) its own sending status

Invariants:
- The charts are the only markup not escaped by Jinja2: mta.console.charts
  escapes every label itself; every figure also appears as text.
- Read-only: no form but the layout's logout; works without JavaScript.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import Viewer
from mta.console.charts import Series, legend, stacked_bars, total
from mta.console.render import NavItem, Route, render, viewer

__all__ = ["PART", "NAV", "routes", "OverviewBackend", "SERIES", "LABELS", "COLOURS"]

PART = "overview"
NAV: list[NavItem] = [("Overview", "/", "any")]

SERIES = ("accepted", "delivered", "deferred", "bounced", "complained")
LABELS = {"accepted": "Accepted", "delivered": "Delivered", "deferred": "Deferred",
          "bounced": "Bounced", "complained": "Complained"}
COLOURS = {"accepted": "#2456c7", "delivered": "#1f7a3f", "deferred": "#c98a00",
           "bounced": "#b3261e", "complained": "#7a3fb3"}
_TOP = 10


class OverviewBackend(Protocol):
    """What the Overview asks (mta.runtime.console_overview). Every method
    taking a Viewer answers for that viewer only: the operator (tenant None)
    everyone's, a tenant its own."""

    async def series(self, viewer: Viewer) -> dict[str, Any]:
        """{"now": t, "hour": window, "day": window}; window = {"start": t of
        the first bucket (UTC-aligned), "step": 60 | 3600, "series": {name of
        SERIES: [count per bucket]}} (hour: 60 buckets, day: 24, the last
        one the current minute / hour)."""

    async def queue(self, viewer: Viewer, limit: int) -> dict[str, Any]:
        """{"figures": {"queued": recipients, "held": recipients,
        "held_messages": messages with a held recipient, "oldest_age":
        seconds since the oldest message with a queued recipient arrived, or
        None}, "deferrals": at most `limit` rows, the most deferred first,
        then the most waiting: {"name" (a destination for the operator, a
        recipient domain for a tenant), "recipients" (waiting: queued or
        held), "held", "deferred" (queued after an attempt), "state"
        (operator: active|throttled|suspended; tenant: None), "oldest_age":
        seconds since the oldest message arrived (tenant; operator: None,
        not read: the Destinations page has the ages), "last_error": the
        latest reply of a deferred recipient, or ""}]}."""

    async def tenants_at_risk(self) -> list[dict[str, Any]]:
        """(Operator) tenants whose automatic status is warn or paused, or
        whose bounce or complaint rate is at 80% of its warn threshold or
        more: the `tenant_status` shape each."""

    async def tenant_status(self, viewer: Viewer) -> dict[str, Any] | None:
        """A tenant viewer's own figures (None for the operator): {"name",
        "sending": bool, "status" (active|paused: the operator's),
        "status_reason", "auto_status" (ok|warn|paused), "auto_reason",
        "updated", "level" (none|standard|strict), "min_volume", "sends",
        "bounce_rate", "complaint_rate" (fractions), "bounce_warn",
        "bounce_pause", "complaint_warn", "complaint_pause"}."""

    async def paused(self, viewer: Viewer) -> dict[str, Any]:
        """{"tenants": [{"name", "by" ("operator" | "automatic (reputation)"),
        "reason", "since": t or None}], "destinations": [suspended
        destination names] (tenant: []), "actions": [shaping actions in
        force: {"id", "scope", "key", "action", "rule", "since", "until",
        "reason"}] (tenant: its own "tenant@provider" ones)}."""


def _chart(key: str, title: str, window: dict[str, Any], label_every: int) -> dict[str, Any]:
    values = window.get("series", {})
    series = [Series(LABELS[n], COLOURS[n], list(values.get(n, []))) for n in SERIES]
    return {"key": key, "title": title,
            "svg": stacked_bars(f"chart-{key}-svg", title, float(window["start"]),
                                float(window["step"]), series, label_every=label_every),
            "legend": legend(series, [f"total-{key}-{n}" for n in SERIES])}


def pct(rate: float | None) -> str:
    """A rate (a fraction) as a percentage: 0.0123 -> "1.23%", 0.0004 -> "0.04%"."""
    if rate is None:
        return "—"
    return f"{float(rate) * 100:.2f}%"


def routes(backend: OverviewBackend) -> list[Route]:
    async def overview(request: web.Request) -> web.StreamResponse:
        v = viewer(request)
        series, queue, paused = await asyncio.gather(
            backend.series(v), backend.queue(v, _TOP), backend.paused(v))
        figures, deferrals = queue["figures"], queue["deferrals"]
        at_risk = await backend.tenants_at_risk() if v.operator else []
        own = None if v.operator else await backend.tenant_status(v)
        charts = [_chart("hour", "Events per minute, last hour (UTC)", series["hour"], 10),
                  _chart("day", "Events per hour, last day (UTC)", series["day"], 3)]
        delivered_hour = total(series["hour"].get("series", {}).get("delivered", []))
        return render(request, "overview.html", title="Overview", charts=charts,
                      figures=figures, delivered_hour=delivered_hour, deferrals=deferrals,
                      at_risk=at_risk, paused=paused, own=own, now=series["now"],
                      pct=pct)
    return [("GET", "/", overview, "any")]
