"""The console's Overview and Destinations backend over the running daemon.

One job: answer `mta.console.pages_overview.OverviewBackend` and
`mta.console.pages_destinations.DestinationsBackend` (one object,
`ConsoleParts.overview`) from the live parts: the spool's figures and the
event series (runtime/console_series.py), the admin view of the queue and
of traffic shaping (RuntimeAdmin), the tenant service and its reputation
figures. The Destinations half is runtime/console_destinations.py.

Public API:
    ConsoleOverview(daemon)     daemon: a started runtime.daemon.Daemon
    NEAR                        0.8: a rate at this share of its warn
                                threshold puts a tenant "at risk"

Invariants:
- A tenant's viewer gets its own figures only: its series and queue
  figures are filtered by the owner of each credential (spool/tenant_sql.py,
  as /v1/events and /v1/messages filter), its deferrals are grouped by its
  own recipients' domains (never a destination's totals, which mix
  tenants), and only its own pause and its own shaping actions show.
- The queue's figures and deferrals come from one read (spool figures
  `queue`) at each view; nothing is cached but the event series (kept up
  by seq, exact). The operator's reads each pending recipient's row and
  never its message (so no age per destination: the Destinations page has
  the queue's ages) and groups the domains into destinations with
  RuntimeAdmin's own mapping, as the queue summary and delivery do.
- Nothing here blocks the loop: the spool's reads are async (reader
  connection); tenant rows and rates are in memory.
"""

from __future__ import annotations

from typing import Any

from mta.admin.backend import destination_state
from mta.console.backend import Viewer
from mta.runtime.admin import RuntimeAdmin
from mta.runtime.console_destinations import ConsoleDestinations
from mta.runtime.console_series import EventSeries
from mta.runtime.tenants import TenantService, policy_of
from mta.spool import Spool

__all__ = ["ConsoleOverview", "NEAR", "WARM_EVERY"]

NEAR = 0.8
WARM_EVERY = 60.0


class ConsoleOverview(ConsoleDestinations):
    def __init__(self, daemon: Any):
        self.d = daemon
        self.admin = RuntimeAdmin(daemon)
        self._series: EventSeries | None = None

    @property
    def spool(self) -> Spool:
        return self.admin.spool          # RuntimeError until the daemon opened it

    @property
    def tenants(self) -> TenantService | None:
        service: TenantService | None = getattr(self.d, "tenants", None)
        return service

    def _now(self) -> float:
        return float(self.d.clock.now())

    # ---- OverviewBackend -----------------------------------------------------

    async def warm(self) -> None:
        """Bring the operator's event series up to date (a housekeeping job
        runs this at start and every WARM_EVERY seconds): the first overview
        after a start then costs an incremental read, not a day's count."""
        await self.series(Viewer(None, "operator"))

    async def series(self, viewer: Viewer) -> dict[str, Any]:
        if self._series is None:
            self._series = EventSeries(self.spool.figures, self.spool.ledger)
        now = self._now()
        return {"now": now, **await self._series.windows(viewer.tenant, now)}

    async def queue(self, viewer: Viewer, limit: int) -> dict[str, Any]:
        found = await self.spool.figures.queue(viewer.tenant)
        now = self._now()
        oldest = found["oldest_queued_at"]
        figures = {"queued": found["queued"], "held": found["held"],
                   "held_messages": found["held_messages"],
                   "oldest_age": None if oldest is None else max(0.0, now - oldest)}
        if viewer.tenant is None:
            return {"figures": figures, "deferrals": self._destinations(found["domains"], limit)}
        top = sorted(found["domains"],
                     key=lambda r: (-r["deferred"], -r["recipients"], r["domain"]))[:limit]
        return {"figures": figures, "deferrals": [
            {"name": r["domain"], "recipients": r["recipients"], "held": r["held"],
             "deferred": r["deferred"], "state": None,
             "oldest_age": None if r["oldest_received_at"] is None
             else max(0.0, now - r["oldest_received_at"]),
             "last_error": r["last_error"] or ""} for r in top]}

    def _destinations(self, domains: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
        """Everyone's domains grouped into destinations as delivery queues
        them (RuntimeAdmin.destination_of), each with its latest reply; the
        most deferred first."""
        out: dict[str, dict[str, Any]] = {}
        latest: dict[str, float] = {}
        for row in domains:
            name = self.admin.destination_of(row["domain"])
            agg = out.setdefault(name, {"name": name, "recipients": 0, "held": 0,
                                        "deferred": 0, "last_error": ""})
            for key in ("recipients", "held", "deferred"):
                agg[key] += row[key]
            at = row["last_error_at"]
            if at is not None and at > latest.get(name, -1.0):
                agg["last_error"], latest[name] = row["last_error"] or "", at
        states = self.admin.runner.scheduler.destination_states()
        top = sorted(out.values(), key=lambda r: (-r["deferred"], -r["recipients"], r["name"]))
        return [{**r, "state": destination_state(states.get(r["name"])), "oldest_age": None}
                for r in top[:limit]]

    def _tenant_figures(self, service: TenantService, name: str) -> dict[str, Any]:
        row = service.row(name)
        rates = service.assessment(name)
        policy = policy_of(row, self.d.cfg)
        t = policy.thresholds
        return {"name": name, "sending": row.sending, "status": row.status,
                "status_reason": row.status_reason, "auto_status": row.auto_status,
                "auto_reason": row.auto_reason, "updated": row.updated or None,
                "level": policy.level, "min_volume": policy.min_volume,
                "sends": int(rates.get("sends") or 0),
                "bounce_rate": float(rates.get("bounce_rate") or 0.0),
                "complaint_rate": float(rates.get("complaint_rate") or 0.0),
                "bounce_warn": t.bounce_warn, "bounce_pause": t.bounce_pause,
                "complaint_warn": t.complaint_warn, "complaint_pause": t.complaint_pause}

    async def tenants_at_risk(self) -> list[dict[str, Any]]:
        service = self.tenants
        if service is None:
            return []
        out = []
        for name in service.names():
            f = self._tenant_figures(service, name)
            near = f["level"] != "none" and f["sends"] > 0 and (
                f["bounce_rate"] >= NEAR * f["bounce_warn"]
                or f["complaint_rate"] >= NEAR * f["complaint_warn"])
            if near or f["auto_status"] in ("warn", "paused"):
                out.append(f)
        rank = {"paused": 0, "warn": 1}
        return sorted(out, key=lambda f: (rank.get(f["auto_status"], 2), f["name"]))

    async def tenant_status(self, viewer: Viewer) -> dict[str, Any] | None:
        service = self.tenants
        if service is None or viewer.tenant is None:
            return None
        return self._tenant_figures(service, viewer.tenant)

    async def paused(self, viewer: Viewer) -> dict[str, Any]:
        service = self.tenants
        names = ([] if service is None else
                 service.names() if viewer.tenant is None else [viewer.tenant])
        tenants = []
        for name in names:
            assert service is not None
            row = service.row(name)
            if row.status == "paused":
                tenants.append({"name": name, "by": "operator",
                                "reason": row.status_reason, "since": row.updated or None})
            if row.auto_status == "paused":
                tenants.append({"name": name, "by": "automatic (reputation)",
                                "reason": row.auto_reason, "since": row.updated or None})
        actions = self._actions()
        if viewer.tenant is not None:
            mine = viewer.tenant + "@"
            return {"tenants": tenants, "destinations": [],
                    "actions": [a for a in actions
                                if a["scope"] == "tenant" and a["key"].startswith(mine)]}
        states = self.admin.runner.scheduler.destination_states()
        suspended = sorted(name for name, s in states.items() if s.get("suspended"))
        return {"tenants": tenants, "destinations": suspended, "actions": actions}
