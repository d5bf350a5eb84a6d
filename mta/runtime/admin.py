"""The admin API's view of the running daemon (implements
`mta.admin.backend.AdminBackend`).

One job: answer the HTTP API from the live parts — spool (messages,
operations), queue runner and scheduler (destinations), metrics — mapping
recipient domains to destinations the way delivery does (routes, MX).

Public API:
    RuntimeAdmin(daemon, free_space=filesystem_free_bytes)
        an AdminBackend, LedgerBackend and JsonListing (mta.admin.backend);
        `daemon` is anything with the DaemonView Protocol's attributes
    filesystem_free_bytes(path) -> int, DEFAULT_MIN_FREE_SPACE, OPERATOR_BOUNCE

Readiness: not ready while starting, stopping or draining, when the spool directory
is not writable, when the spool's filesystem has less than `[server]
min_free_space` bytes free (default DEFAULT_MIN_FREE_SPACE, 100 MiB; 0
turns the check off), or when the index does not answer. /readyz carries
`spool_free_bytes` and `min_free_space` either way. Free bytes come from
`RuntimeAdmin.free_space(path)` (statvfs: bytes available to unprivileged
users), a seam tests replace; /metrics reports the same number
(mta_spool_filesystem_free_bytes).

Destinations (suspend|resume|flush): a domain is resolved as delivery
resolves it (mta.policy.routing, with the runner's live routes): a routed
domain acts on its route's "[host]:port", every domain in sandbox mode on
"sandbox"; the answer says which ("requested" vs "destination"). A
"[host]:port" must be a configured route and "sandbox" needs sandbox mode,
unless the scheduler already knows the name (e.g. suspended before a
reload): otherwise NotFound (404), so a typo is not silently "suspended".

Invariants: every operation goes through the spool's writer (group commit)
or the runner; nothing here touches SQLite or files itself. Operations on
recipients in flight leave them alone (the attempt's outcome wins).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mta.admin.backend import NotFound, TenantGauge, destination_state
from mta.admin.inputs import parse_destination
from mta.admin.metrics import Metrics
from mta.config import Config
from mta.core import Clock, Reply
from mta.core.qshape import AGE_BUCKETS
from mta.policy.routing import destination_for
from mta.runtime.admin_shaping import (ShapingAdmin, ShapingRunner, shaping_gauges,
                                       summary_actions)
from mta.runtime.admin_cluster import ClusterAdmin, draining
from mta.runtime.admin_tls import TlsAdmin, TlsRunner
from mta.spool import MessageFilter, Spool

__all__ = ["RuntimeAdmin", "DaemonView", "filesystem_free_bytes", "DEFAULT_MIN_FREE_SPACE",
           "OPERATOR_BOUNCE"]

OPERATOR_BOUNCE = Reply(550, "5.0.0", "Message bounced by the mail system administrator")
DEFAULT_MIN_FREE_SPACE = 100 * 1024 * 1024


class _Destinations(Protocol):
    def destination_states(self) -> Mapping[str, Mapping[str, object]]:
        """{name: {"state", "suspended", …}} of every destination it tracks."""


class _Runner(ShapingRunner, TlsRunner, Protocol):
    """The queue runner as the admin API steers it (runtime.queue_runner)."""

    @property
    def scheduler(self) -> _Destinations: ...
    @property
    def routes(self) -> Mapping[str, str]: ...
    @property
    def sandbox(self) -> bool: ...
    @property
    def mx_port(self) -> int: ...
    @property
    def dsn_wakeup(self) -> asyncio.Event: ...
    def poke(self) -> None: ...
    async def suspend(self, name: str) -> object: ...
    async def resume(self, name: str) -> object: ...
    async def flush(self, name: str) -> object: ...


class _Webhooks(Protocol):
    """The webhook service (mta.webhooks.WebhookService)."""

    async def statuses(self) -> list[dict[str, Any]]: ...
    async def replay(self, name: str, *, from_seq: int | str | None = None,
                     since: float | None = None) -> dict[str, Any]: ...
    async def test(self, name: str) -> dict[str, Any]: ...


class _Tenants(Protocol):
    """The tenant service (mta.runtime.tenants.TenantService, `daemon.tenants`);
    refusals are mta.spool.tenants.TenantError."""

    async def list(self) -> list[dict[str, Any]]: ...
    async def show(self, name: str) -> dict[str, Any] | None: ...
    async def add(self, name: str, limits: dict[str, Any],
                  policy: dict[str, Any]) -> dict[str, Any]: ...
    async def update(self, name: str, limits: dict[str, Any] | None,
                     policy: dict[str, Any] | None) -> dict[str, Any]: ...
    async def remove(self, name: str) -> None: ...
    async def pause(self, name: str, reason: str) -> dict[str, Any]: ...
    async def resume(self, name: str, reason: str) -> dict[str, Any]: ...


class DaemonView(Protocol):
    """What RuntimeAdmin reads of the daemon (runtime.daemon.Daemon). The
    parts are None until the daemon has started them; the admin API is
    served only after that."""

    @property
    def cfg(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def ready(self) -> bool: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def spool(self) -> Spool | None: ...
    @property
    def runner(self) -> _Runner | None: ...
    @property
    def webhooks(self) -> _Webhooks | None: ...


def filesystem_free_bytes(path: str) -> int:
    """Bytes available to unprivileged users on `path`'s filesystem (one
    statfs syscall: microseconds, no thread hop needed)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


class RuntimeAdmin(ShapingAdmin, TlsAdmin, ClusterAdmin):
    """The AdminBackend (and LedgerBackend, JsonListing) of a running daemon."""

    def __init__(self, daemon: DaemonView,
                 free_space: Callable[[str], int] = filesystem_free_bytes):
        self.d: DaemonView = daemon
        self.free_space = free_space          # the seam: path -> free bytes

    # ---- the daemon's parts (set once it has started) ------------------------
    @property
    def spool(self) -> Spool:
        if self.d.spool is None:
            raise RuntimeError("the daemon has not opened its spool yet")
        return self.d.spool

    @property
    def runner(self) -> _Runner:
        if self.d.runner is None:
            raise RuntimeError("the daemon has not started its queue runner yet")
        return self.d.runner

    def webhooks_service(self) -> _Webhooks:
        if self.d.webhooks is None:
            raise RuntimeError("the daemon has not started its webhooks yet")
        return self.d.webhooks

    # ---- health ----------------------------------------------------------
    async def health(self) -> None:
        return None

    def _spool_dir(self) -> str:
        return os.path.join(self.d.cfg.server.state_dir, "spool")

    def min_free_space(self) -> int:
        return int(self.d.cfg.server.min_free_space)

    def disk(self) -> dict[str, int | None]:
        try:
            free: int | None = int(self.free_space(self._spool_dir()))
        except OSError:
            free = None
        return {"spool_free_bytes": free, "min_free_space": self.min_free_space()}

    async def readiness(self) -> tuple[bool, str, dict[str, Any]]:
        d = self.d
        disk = self.disk()
        if not d.ready:
            return False, "starting: recovery or listeners not done yet", disk
        if d.stopping or draining(d):   # draining: the LB sends new mail to another node
            return False, "stopping" if d.stopping else "draining: refusing new mail", disk
        spool_dir = self._spool_dir()
        if not os.access(spool_dir, os.W_OK):
            return False, f"spool directory {spool_dir} is not writable", disk
        free, floor = disk["spool_free_bytes"], disk["min_free_space"]
        if free is None:
            return False, f"cannot read the free space of {spool_dir}", disk
        if floor and free < floor:
            return (False, f"disk: the spool's filesystem has {_mib(free)} free, less than "
                           f"[server] min_free_space ({_mib(floor)})", disk)
        try:
            await self.spool.counts()
        except Exception as exc:
            return False, f"queue index not reachable: {exc}", disk
        return True, "ok", disk

    # ---- queue (destination_of: where delivery queues a domain's mail) ------
    def destination_of(self, domain: str) -> str:
        cfg = self.d.cfg
        name = destination_for(domain, cfg.routes, sandbox=cfg.server.mode == "sandbox",
                               mx_port=cfg.delivery.smtp_port).name
        shaping = self.runner.shaping
        return name if shaping is None else shaping.queue_of(domain, name)

    async def queue_summary(self) -> list[dict[str, Any]]:
        now = self.d.clock.now()
        states = self.runner.scheduler.destination_states()
        out: dict[str, dict[str, Any]] = {}
        for row in await self.spool.domain_summary(now):
            name = self.destination_of(row["domain"])
            agg = out.setdefault(name, _summary_row(name))
            agg["recipients"] += row["recipients"]
            agg["held"] += row.get("held", 0)
            agg["domains"].append(row["domain"])
            if row.get("oldest_received_at"):
                agg["oldest_age"] = max(agg["oldest_age"], now - row["oldest_received_at"])
            for k, v in row.get("age_buckets", {}).items():
                agg["age_buckets"][k] = agg["age_buckets"].get(k, 0) + v
            agg["last_error"] = agg["last_error"] or row.get("last_error") or ""
        for name in states:
            out.setdefault(name, _summary_row(name))
        actions = self.runner.rules.active() if self.runner.rules is not None else []
        for name, agg in out.items():
            agg["state"] = destination_state(states.get(name))
            # shaping rules in force on it (issue 15): reason and end time
            agg["actions"] = summary_actions(actions, name, states.get(name))
        return sorted(out.values(), key=lambda a: (-a["recipients"], a["destination"]))

    async def list_messages(self, *, state: str | None = None, domain: str | None = None,
                            sender: str | None = None, recipient: str | None = None,
                            limit: int = 100, cursor: str | None = None, tenant: str | None = None
                            ) -> tuple[list[dict[str, Any]], str | None]:
        f = _filter(state, domain, sender, recipient, tenant)
        views, nxt = await self.spool.list_page(f, limit, cursor)
        return [v.to_dict() for v in views], nxt

    async def list_messages_json(self, *, state: str | None = None, domain: str | None = None,
                                 sender: str | None = None, recipient: str | None = None,
                                 limit: int = 100, cursor: str | None = None,
                                 tenant: str | None = None) -> tuple[bytes, str | None]:
        """`list_messages` with the array already serialised by SQLite (the
        HTTP layer prefers it: no per-message Python work on the event loop)."""
        return await self.spool.list_page_json(
            _filter(state, domain, sender, recipient, tenant), limit, cursor)

    async def get_message(self, message_id: str) -> dict[str, Any] | None:
        v = await self.spool.get_message(message_id)
        return None if v is None else v.to_dict()

    async def message_body(self, message_id: str) -> bytes | None:
        try:
            return await self.spool.read_body(message_id)
        except KeyError:
            return None

    async def message_action(self, message_id: str, action: str) -> dict[str, Any]:
        if await self.spool.get_message(message_id) is None:
            raise KeyError(message_id)
        n = await self._apply(action, MessageFilter(ids=(message_id,), include_done=True))
        return {"id": message_id, "action": action, "affected": n}

    async def bulk_action(self, action: str, *, state: str | None = None,
                          domain: str | None = None, sender: str | None = None,
                          recipient: str | None = None, all: bool = False,
                          tenant: str | None = None) -> dict[str, Any]:
        f = _filter(state, domain, sender, recipient, tenant)
        return {"action": action, "affected": await self._apply(action, f)}

    async def _apply(self, action: str, f: MessageFilter) -> int:
        spool, now, runner = self.spool, self.d.clock.now(), self.runner
        if action == "hold":
            return await spool.hold_messages(f, now)
        if action == "release":
            n = await spool.release_messages(f, now)
        elif action == "retry":
            n = await spool.retry_messages(f, now)
        elif action == "bounce":
            n = await spool.bounce_messages(f, now, OPERATOR_BOUNCE)
            runner.dsn_wakeup.set()
        elif action == "delete":
            return await spool.delete_messages(f, now)
        else:
            raise ValueError(f"unknown action {action!r}")
        runner.poke()
        return n

    def resolve_destination(self, name: str) -> str:
        """The destination `name` (well formed, see mta.admin.inputs) stands
        for, as delivery would pick it; NotFound for a name no mail can go to."""
        runner = self.runner
        kind, name = parse_destination(name)
        if kind in ("domain", "literal"):
            dest = destination_for(name, runner.routes, sandbox=runner.sandbox,
                                   mx_port=runner.mx_port).name
            # a domain rolled up into its MX site is steered with the site
            return dest if runner.shaping is None else runner.shaping.queue_of(name, dest)
        if name in runner.scheduler.destination_states() or kind == "site":
            return name             # a site may be steered before mail reaches it
        if kind == "sandbox":
            if runner.sandbox:
                return "sandbox"
            raise NotFound("no destination 'sandbox': the server is not in sandbox mode")
        routes = {} if runner.sandbox else {
            _normalised(dest): dest
            for dest in (destination_for("x.invalid" if key == "*" else key, runner.routes,
                                         sandbox=False, mx_port=runner.mx_port).name
                         for key in runner.routes)}
        if name in routes:
            return routes[name]             # as the config spells the host
        why = ("in sandbox mode every domain goes to 'sandbox'" if runner.sandbox else
               f"routes go to {', '.join(sorted(routes))}" if routes else "there are no routes")
        raise NotFound(f"no destination {name!r}: it is not a configured route ({why})")

    async def destination_action(self, name: str, action: str) -> dict[str, Any]:
        runner = self.runner
        requested = parse_destination(name)[1]
        dest = self.resolve_destination(requested)
        if action == "suspend":
            await runner.suspend(dest)
        elif action == "resume":
            await runner.resume(dest)
        elif action == "flush":
            await runner.flush(dest)
        else:
            raise ValueError(f"unknown action {action!r}")
        return {"destination": dest, "action": action, "requested": requested,
                "state": destination_state(runner.scheduler.destination_states().get(dest))}

    # ---- the ledger and webhooks -------------------------------------------
    async def events_after(self, after: int, limit: int, *, types: list[str] | None = None,
                           recipient: str | None = None,
                           tenant: str | None = None) -> list[dict[str, Any]]:
        return [e.to_dict() for e in await self.spool.ledger.events_after(
            after, limit, types=types, recipient=recipient, tenant=tenant)]

    async def message_events(self, message_id: str) -> list[dict[str, Any]] | None:
        if await self.spool.get_message(message_id) is None:
            return None
        return [e.to_dict() for e in await self.spool.ledger.message_events(message_id)]

    async def webhooks(self) -> list[dict[str, Any]]:
        return await self.webhooks_service().statuses()

    async def webhook_replay(self, name: str, *, from_seq: int | str | None = None,
                             since: float | None = None) -> dict[str, Any]:
        return await self.webhooks_service().replay(name, from_seq=from_seq, since=since)

    async def webhook_test(self, name: str) -> dict[str, Any]:
        return await self.webhooks_service().test(name)

    # ---- tenants (TenantBackend: the daemon's TenantService) -------------------
    def tenants_service(self) -> _Tenants:
        service: _Tenants | None = getattr(self.d, "tenants", None)
        if service is None:
            raise NotImplementedError("this daemon has no tenant service")
        return service

    async def tenants(self) -> list[dict[str, Any]]:
        return await self.tenants_service().list()

    async def tenant(self, name: str) -> dict[str, Any] | None:
        return await self.tenants_service().show(name)

    async def tenant_add(self, name: str, limits: dict[str, Any],
                         policy: dict[str, Any]) -> dict[str, Any]:
        return await self.tenants_service().add(name, limits, policy)

    async def tenant_update(self, name: str, limits: dict[str, Any] | None,
                            policy: dict[str, Any] | None) -> dict[str, Any]:
        return await self.tenants_service().update(name, limits, policy)

    async def tenant_remove(self, name: str) -> None:
        await self.tenants_service().remove(name)

    async def tenant_pause(self, name: str, reason: str) -> dict[str, Any]:
        return await self.tenants_service().pause(name, reason)

    async def tenant_resume(self, name: str, reason: str) -> dict[str, Any]:
        return await self.tenants_service().resume(name, reason)

    # ---- metrics -----------------------------------------------------------
    async def gauges(self) -> dict[str, Any]:
        """The scrape-time values `Metrics.refresh` reads."""
        g = await self.spool.gauges()
        return {"recipients_by_state": g["recipients"],
                "oldest_queued_received_at": g["oldest_pending_received_at"],
                "spool_bytes": g["spool_bytes"],
                "state_dir": self.d.cfg.server.state_dir,
                "spool_free_bytes": self.disk()["spool_free_bytes"],
                "webhooks": await self.webhooks_service().statuses(),
                "destinations": {n: destination_state(s) for n, s in
                                 self.runner.scheduler.destination_states().items()},
                "tenants": self.tenant_gauges(), "shaping": shaping_gauges(self.runner)}

    def tenant_gauges(self) -> list[TenantGauge] | None:
        """Each tenant's figures for /metrics (None: no tenant service)."""
        service = getattr(self.d, "tenants", None)
        if service is None:
            return None
        now, out = self.d.clock.now(), []
        for name in service.names():
            row, rep = service.row(name), service.assessment(name)
            hour, day = service.quota_state(name).used(now)
            out.append(TenantGauge(
                name=name, sending=row.sending, auto_status=row.auto_status,
                sends=int(rep.get("sends") or 0), bounce_rate=float(rep.get("bounce_rate") or 0),
                complaint_rate=float(rep.get("complaint_rate") or 0), quota_hour=hour,
                quota_day=day, refused={why: n for (who, why), n in service.refused.items()
                                        if who == name}))
        return out

    async def metrics(self) -> tuple[bytes, str]:
        await self.d.metrics.refresh(self)
        return self.d.metrics.render()


def _summary_row(name: str) -> dict[str, Any]:
    return {"destination": name, "recipients": 0, "held": 0, "oldest_age": 0.0,
            "age_buckets": dict.fromkeys(AGE_BUCKETS, 0), "last_error": "", "domains": []}


def _normalised(dest: str) -> str:
    """A route's destination name as parse_destination writes it (a config
    host it cannot parse stays as it is: still matched verbatim)."""
    try:
        return parse_destination(dest)[1]
    except ValueError:
        return dest


def _filter(state: str | None, domain: str | None, sender: str | None,
            recipient: str | None, tenant: str | None) -> MessageFilter:
    """API filter → spool filter. API states: "active" (the default: not
    finished), "all" (finished too), or a recipient state."""
    return MessageFilter(state=None if state in (None, "active", "all") else state,
                         domain=domain, sender=sender, recipient=recipient,
                         include_done=state not in (None, "active"), tenant=tenant)
