"""Every configured `[[webhooks]]` endpoint's deliverer, as one part the
daemon starts, pokes, reconfigures and stops, and the admin API reads.

Public API
    WebhookService(configs, *, spool, clock, ledger_cfg, ssl_context=None,
                   poll_interval=5.0, observer=None)
        spool: a store.WebhookStore; ledger_cfg: config.LedgerConfig (its
        webhook_retry_schedule and webhook_failing_after)
        start() / await stop() / poke() / await statuses() -> list[dict]
        await reconfigure(configs)   SIGHUP: start/stop/restart changed endpoints
        add_endpoint(cfg)            one more endpoint beside the configured ones
                                     (the sending API's; ValueError: name in use)
        await remove_endpoint(name) -> bool / await update_endpoint(cfg)
                                     (only endpoints added so; KeyError otherwise)
        added(name) -> bool          whether `name` came from add_endpoint
        await replay(name, from_seq=, since=) -> dict (KeyError: unknown name)
        await test(name) -> {name, url, ok, status, error, ms} (KeyError: unknown name)
        deliverers: {name: WebhookDeliverer}, in configured order
        await share(spool)           follow another store (a cluster's shared
                                     ledger and cursors): endpoints then run
                                     only while resume(name)d
        resume(name) / await pause(name) / on_poke   (the cluster's leases)
    daemon: WebhookService(cfg.webhooks, spool=spool, clock=clock,
                           ledger_cfg=cfg.ledger); poke() after ledger writes;
    admin backend: webhooks() -> statuses(), webhook_replay(...) -> replay(...),
                   webhook_test(name) -> test(name)

Invariants: at most one deliverer per endpoint name; a changed endpoint
resumes from its stored cursor (same name), an added one starts at the
ledger's end; statuses come in the configured order, then the added ones.
Added endpoints (add_endpoint: the sending API's, stored in the spool index
by mta.spool.webhook_endpoints) survive a reload; when a reloaded config
names one of them, the config's endpoint takes the name over.
Shared (a cluster): an endpoint's deliverer runs only between resume(name)
and pause(name) (the node holding its lease); a paused one is replaced by a
fresh deliverer, which reads its cursor from the store when resumed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mta.config.sections import LedgerConfig, WebhookConfig
from mta.core.clock import Clock
from mta.core.observe import Observer
from mta.webhooks.actions import probe
from mta.webhooks.deliverer import POLL_INTERVAL, WebhookDeliverer
from mta.webhooks.store import WebhookStore

__all__ = ["WebhookService"]


class WebhookService:
    """Every configured endpoint's deliverer, for the daemon and the admin API."""

    def __init__(self, configs: Iterable[WebhookConfig], *, spool: WebhookStore, clock: Clock,
                 ledger_cfg: LedgerConfig, ssl_context: ssl.SSLContext | None = None,
                 poll_interval: float = POLL_INTERVAL, observer: Observer | None = None):
        self._spool, self._clock = spool, clock
        self._schedule = tuple(ledger_cfg.webhook_retry_schedule)
        self._failing_after = float(ledger_cfg.webhook_failing_after)
        self._ssl_context, self._poll_interval = ssl_context, poll_interval
        self._observer = observer
        self.deliverers = {c.name: self._deliverer(c) for c in configs}
        self._added: dict[str, None] = {}      # names from add_endpoint, in order
        self._started = False
        self._allowed: set[str] | None = None  # shared: the names that may run here
        self.on_poke: Callable[[], None] | None = None   # also told of new events
        # Shared: a replay here of an endpoint another node delivers.
        self.replay_elsewhere: Callable[[str, int], Awaitable[None]] | None = None

    def _deliverer(self, cfg: WebhookConfig) -> WebhookDeliverer:
        return WebhookDeliverer(cfg, spool=self._spool, clock=self._clock,
                                schedule=self._schedule, failing_after=self._failing_after,
                                ssl_context=self._ssl_context, observer=self._observer,
                                poll_interval=self._poll_interval)

    def start(self) -> None:
        self._started = True
        for d in self.deliverers.values():
            if self._may_run(d.name):
                d.start()

    def _may_run(self, name: str) -> bool:
        return self._allowed is None or name in self._allowed

    async def share(self, spool: WebhookStore) -> None:
        """Follow `spool` from now on: every deliverer stops (storing its
        cursor in the old store) and is made afresh on `spool`; each endpoint
        then runs only once `resume(name)` allows it."""
        await asyncio.gather(*(d.stop() for d in self.deliverers.values()))
        self._spool, self._allowed = spool, set()
        self.deliverers = {n: self._deliverer(d.cfg) for n, d in self.deliverers.items()}

    def resume(self, name: str) -> None:
        """Shared: let endpoint `name` run here (start it if it is not running)."""
        if self._allowed is not None and name not in self._allowed:
            self._allowed.add(name)
            d = self.deliverers.get(name)
            if d is not None and self._started:
                d.start()

    async def pause(self, name: str) -> None:
        """Shared: stop endpoint `name` here (its cursor stored); a fresh
        deliverer waits for the next resume."""
        if self._allowed is None or name not in self._allowed:
            return
        self._allowed.discard(name)
        d = self.deliverers.get(name)
        if d is not None:
            await d.stop()
            if self.deliverers.get(name) is d:
                self.deliverers[name] = self._deliverer(d.cfg)

    async def reconfigure(self, configs: Iterable[WebhookConfig]) -> None:
        """SIGHUP: stop the endpoints that were removed or changed (each
        stores its cursor), then start the changed and added ones; a changed
        one resumes from its stored cursor (same name), an added one at the
        ledger's end. Endpoints from add_endpoint stay, unless the config
        now uses their name."""
        new = {c.name: c for c in configs}
        taken = [n for n in self._added if n in new]
        gone = [n for n, d in self.deliverers.items()
                if n not in self._added and new.get(n) != d.cfg] + taken
        await asyncio.gather(*(self.deliverers.pop(n).stop() for n in gone))
        for n in taken:
            del self._added[n]
        for name, cfg in new.items():
            if name not in self.deliverers:
                self._run(cfg)
        # keep the configured order (statuses, metrics), the added ones last
        self.deliverers = {n: self.deliverers[n] for n in [*new, *self._added]}

    def _run(self, cfg: WebhookConfig) -> None:
        d = self.deliverers[cfg.name] = self._deliverer(cfg)
        if self._started and self._may_run(cfg.name):
            d.start()

    def add_endpoint(self, cfg: WebhookConfig) -> None:
        """Start delivering to one more endpoint (at the ledger's end, or at
        its stored cursor when one exists under that name)."""
        if cfg.name in self.deliverers:
            raise ValueError(f"a webhook named {cfg.name!r} exists")
        self._added[cfg.name] = None
        self._run(cfg)

    async def remove_endpoint(self, name: str) -> bool:
        """Stop an added endpoint (its cursor stays stored); False when no
        endpoint has the name; KeyError for a configured one."""
        if name not in self.deliverers:
            return False
        if name not in self._added:
            raise KeyError(f"webhook {name!r} is in the config file")
        del self._added[name]
        await self.deliverers.pop(name).stop()
        return True

    async def update_endpoint(self, cfg: WebhookConfig) -> None:
        """Restart an added endpoint with new settings (same cursor)."""
        if cfg.name in self.deliverers and cfg.name not in self._added:
            raise KeyError(f"webhook {cfg.name!r} is in the config file")
        await self.remove_endpoint(cfg.name)
        self.add_endpoint(cfg)

    def added(self, name: str) -> bool:
        return name in self._added

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.deliverers.values()))

    def poke(self) -> None:
        for d in self.deliverers.values():
            d.poke()
        if self.on_poke is not None:
            self.on_poke()

    async def statuses(self) -> list[dict[str, Any]]:
        return [await d.status() for d in self.deliverers.values()]

    async def replay(self, name: str, *, from_seq: int | str | None = None,
                     since: float | None = None) -> dict[str, Any]:
        st = await self.deliverers[name].replay(from_seq=from_seq, since=since)
        if not self._may_run(name) and self.replay_elsewhere is not None:
            # Shared, and delivered by another node: it moves its cursor too
            # (else its own, ahead, would overwrite the one just stored).
            await self.replay_elsewhere(name, int(st["cursor"]))
        return st

    async def test(self, name: str) -> dict[str, Any]:
        """`actions.send_test` to endpoint `name` (KeyError: unknown name) →
        {name, url, ok, status, error, ms}."""
        d = self.deliverers[name]
        return await probe(d.cfg, d.clock, ssl_context=d.ssl_context)
