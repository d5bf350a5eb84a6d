"""Traffic shaping at run time: MX sites, the provider table, egress pools
and warm-up counters, as the scheduler and the SMTP client need them
(issue 15).

One job: turn the configuration ([shaping], [[egress]], [[egress_pool]])
and the shaping table (mta.policy.shaping) into answers: which queue a
recipient joins and through which pool (`route`), the limits of a queue
(`plan`, the scheduler's Shaper), how a batch connects (`connect_as`),
and keep the warm-up counters durable.

API
    load_table(cfg) -> ShapingTable         raises ShapingError (file, key)
    check(cfg) -> list[str]                 what is wrong with the shaping
                                            file and the warm-up schedules
    SiteCache(resolver, clock)              domain → MX site, cached
      await .site(domain) -> (name, hosts) | None
    Shaping(cfg, table, *, sites, clock, state_path, automation=None)
      (scheduler.limits.Shaper:) .plan(dest) / .sources(pool) / .spill(pool)
                                 / .warmup(source)
      await .route(item, dest) -> (Destination, pool)
      .connect_as(batch) -> Destination     with the batch's source and the
                                            site's connection options
      .reconfigure(cfg, table)              SIGHUP: the next plans use it
      .save()                               warm-up counters to disk
      .warmup_status() -> list[dict]        `mta warmup status`
      .describe() -> dict                   the table in force (admin API)

Rules:
  * MX rollup: an "mx" destination is renamed to its site (the sorted set
    of its MX host names, policy.shaping.site_name) so domains sharing MX
    hosts share one queue and its limits; a domain the table opts out
    (mx_rollup = false), `[shaping] mx_rollup = false`, or an MX lookup
    that fails (the delivery attempt then says why) keeps its own name.
    Lookups are cached SITE_TTL seconds (failures FAIL_TTL).
  * Routes and the sandbox are not shaped (a smarthost is the operator's).
  * Pools: a sending domain's [[egress_pool]] wins over its tenant's;
    otherwise "default". A pool without [[egress]] sources connects from
    the OS's choice of address with [server] hostname.
  * Warm-up counters are saved every SAVE_EVERY seconds and at stop
    (state_dir/warmup.json, atomic); a crash loses at most that much of
    today's count (the cap can be exceeded by that, never the schedule).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
from pathlib import Path
from typing import Any

from mta.config import Config
from mta.core import Clock
from mta.core.envelope import (DEFAULT_OPTIONS, ConnectionOptions, Destination,
                               QueuedRecipient)
from mta.core.files import atomic_write
from mta.core.logfmt import event
from mta.delivery.resolver import DnsTempError, NoRecords, NullMx, NxDomain, Resolver
from mta.policy.automation import Automation
from mta.policy.shaping import Limits, Provider, ShapingError, ShapingTable, site_name
from mta.policy.warmup import Warmup, WarmupSchedule, WarmupState
from mta.scheduler import Batch
from mta.scheduler.limits import DEFAULT_SOURCE, Plan, Source

__all__ = ["SAVE_EVERY", "SITE_TTL", "Shaping", "SiteCache", "check", "load_table"]

log = logging.getLogger("mta.shaping")

SITE_TTL = 300.0        # seconds an MX site answer is kept
FAIL_TTL = 30.0         # … and a failed lookup
SITE_CACHE_MAX = 50_000
SAVE_EVERY = 30.0       # seconds between saves of the warm-up counters


def load_table(cfg: Config) -> ShapingTable:
    return ShapingTable.load(builtin=cfg.shaping.builtin, path=cfg.shaping.file)


def check(cfg: Config) -> list[str]:
    """Problems `mta config check` and a reload report beyond the loader's:
    the shaping file(s) and each source's warm-up schedule."""
    errors = []
    try:
        load_table(cfg)
    except ShapingError as exc:
        errors.append(f"shaping: {exc}")
    for i, e in enumerate(cfg.egress):
        if e.warmup is not None:
            try:
                WarmupSchedule.parse(e.warmup)
            except ValueError as exc:
                errors.append(f"egress[{i}].warmup: {exc}")
        if e.key is not None and e.cert is None:
            errors.append(f"egress[{i}].key: set with cert (the client certificate)")
        if e.cert is not None:
            try:
                ssl.create_default_context().load_cert_chain(e.cert, e.key)
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"egress[{i}].cert: {e.cert}: {exc}")
    return errors


class SiteCache:
    def __init__(self, resolver: Resolver, clock: Clock):
        self.resolver, self.clock = resolver, clock
        self._by_domain: dict[str, tuple[float, tuple[str, tuple[str, ...]] | None]] = {}
        self._hosts: dict[str, tuple[str, ...]] = {}

    async def site(self, domain: str) -> tuple[str, tuple[str, ...]] | None:
        now = self.clock.now()
        hit = self._by_domain.get(domain)
        if hit is not None and hit[0] > now:
            return hit[1]
        found: tuple[str, tuple[str, ...]] | None
        try:
            records = await self.resolver.mx(domain)
            hosts = tuple(r.host for r in records if r.host not in (".", ""))
        except NoRecords:
            hosts = (domain,)                    # the implicit MX
        except (NullMx, NxDomain, DnsTempError):
            hosts = ()
        except Exception as exc:                 # a resolver bug must not stop delivery
            event(log, "site_lookup_failed", level=logging.WARNING, domain=domain, error=exc)
            hosts = ()
        if hosts:
            name = site_name(hosts)
            found = (name, tuple(sorted({h.rstrip(".").lower() for h in hosts})))
            self._hosts[name] = found[1]
        else:
            found = None
        if len(self._by_domain) >= SITE_CACHE_MAX:
            self._by_domain.clear()
            self._hosts = {name: hs for name, hs in self._hosts.items() if found and
                           name == found[0]}
        self._by_domain[domain] = (now + (SITE_TTL if found else FAIL_TTL), found)
        return found

    def hosts(self, site: str) -> tuple[str, ...]:
        """The MX host names of a site (or of a domain kept apart) last seen."""
        return self._hosts.get(site, ())

    def note(self, name: str, hosts: tuple[str, ...]) -> None:
        self._hosts[name] = hosts

    def cached(self, domain: str) -> str | None:
        """The site `domain` was last found in (no lookup; None: not known)."""
        hit = self._by_domain.get(domain)
        return hit[1][0] if hit is not None and hit[1] is not None else None

    def domains(self, site: str) -> list[str]:
        """The domains last found in `site` (for an operator's flush)."""
        return [d for d, (_, found) in self._by_domain.items()
                if found is not None and found[0] == site]


class Shaping:
    def __init__(self, cfg: Config, table: ShapingTable, *, sites: SiteCache, clock: Clock,
                 state_path: Path | None, automation: Automation | None = None):
        self.sites, self.clock, self.state_path = sites, clock, state_path
        self.automation = automation or Automation()
        self._warmups: dict[str, Warmup] = {}
        self._saved: dict[str, dict[str, int]] = self._load_state()
        self._written = b""          # what save() last wrote
        self.leased = False          # a cluster leases connection limits (cluster_limits.py)
        self.reconfigure(cfg, table)

    # ---- configuration ---------------------------------------------------
    def reconfigure(self, cfg: Config, table: ShapingTable) -> None:
        self.cfg, self.table = cfg, table
        self._providers: dict[tuple[str, str], Provider | None] = {}
        self._pools: dict[str, list[Source]] = {}
        for e in cfg.egress:
            self._pools.setdefault(e.pool, []).append(
                Source(e.name, e.address, e.ehlo or cfg.server.hostname))
        self._spill = {p.name: p.spill for p in cfg.egress_pool}
        self._client_certs = {e.name: (e.cert, e.key or e.cert) for e in cfg.egress if e.cert}
        self._by_tenant = {t: p.name for p in cfg.egress_pool for t in p.tenants}
        self._by_domain = {d.lower(): p.name for p in cfg.egress_pool for d in p.domains}
        warmups: dict[str, Warmup] = {}
        for e in cfg.egress:
            if e.warmup is None:
                continue
            schedule = WarmupSchedule.parse(e.warmup)
            old = self._warmups.get(e.name)
            state = old.state if old is not None else \
                WarmupState.from_dict(self._saved.get(e.name, {}))
            warmups[e.name] = Warmup(schedule, state)
        self._warmups = warmups

    def _load_state(self) -> dict[str, dict[str, int]]:
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): dict(v) for k, v in data.get("sources", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            event(log, "warmup_state_unreadable", level=logging.WARNING,
                  path=str(self.state_path), error=exc, effect="counters start over")
            return {}

    def save(self) -> None:
        """Write the counters when they changed since the last write (an
        install without warm-ups never writes)."""
        if self.state_path is None:
            return
        self._saved.update({name: w.state.to_dict() for name, w in self._warmups.items()})
        data = json.dumps({"sources": self._saved}, indent=1, sort_keys=True).encode()
        if data != self._written and (self._saved or self.state_path.exists()):
            atomic_write(self.state_path, data)
            self._written = data

    def provider_of(self, destination: Destination) -> Provider | None:
        """The provider of an "mx" destination (memoised per site and
        domain until the table changes)."""
        if destination.kind != "mx":
            return None
        key = (destination.name, destination.domain)
        if key in self._providers:
            return self._providers[key]
        hosts = self.sites.hosts(destination.name)
        found = self.table.provider_for(hosts, destination.domain)
        if hosts or found is not None:      # unknown MX hosts: ask again next time
            if len(self._providers) >= SITE_CACHE_MAX:
                self._providers.clear()
            self._providers[key] = found
        return found

    # ---- scheduler.limits.Shaper ------------------------------------------
    def plan(self, destination: Destination) -> Plan:
        """The table's limits for an "mx" destination (a route or the
        sandbox has none), with what rules in force lower on it."""
        limits = Limits()
        if destination.kind == "mx":
            limits = self.table.limits_for(site=destination.name,
                                           mx_hosts=self.sites.hosts(destination.name),
                                           domain=destination.domain)
        provider = self.provider_of(destination)
        now = self.clock.now()
        connections = limits.connection_limit
        lowered = self.automation.connection_limit(destination.name, now)
        if lowered is not None:
            connections = lowered if connections is None else min(connections, lowered)
        rate = limits.max_message_rate
        slowed = self.automation.message_rate(destination.name, now)
        if slowed is not None and (rate is None or slowed.per_second < rate.per_second):
            rate = slowed
        return Plan(connection_limit=connections,
                    max_deliveries=limits.max_deliveries_per_connection,
                    message_rate=rate, connection_rate=limits.max_connection_rate,
                    provider=provider.name if provider else "",
                    provider_connection_limit=provider.total.connection_limit if provider
                    else None,
                    provider_message_rate=provider.total.max_message_rate if provider
                    else None)

    def sources(self, pool: str) -> list[Source]:
        return self._pools.get(pool or "default") or [DEFAULT_SOURCE]

    def spill(self, pool: str) -> bool:
        return self._spill.get(pool or "default", True)

    def warmup(self, source: str) -> Warmup | None:
        return self._warmups.get(source)

    # ---- the runner's hooks ------------------------------------------------
    def pool_for(self, item: QueuedRecipient) -> str:
        domain = item.sender.rpartition("@")[2].lower()
        pool = self._by_domain.get(domain) or self._by_tenant.get(item.tenant) or ""
        return "" if pool == "default" else pool

    async def route(self, item: QueuedRecipient, dest: Destination) -> tuple[Destination, str]:
        """The queue `item` joins (its MX site when rolled up) and its pool."""
        pool = self.pool_for(item)
        if dest.kind != "mx" or dest.domain.startswith("["):
            return dest, pool
        found = await self.sites.site(dest.domain)
        if found is None:
            return dest, pool
        if not self.cfg.shaping.mx_rollup or not self.table.rollup(dest.domain):
            self.sites.note(dest.name, found[1])    # its own queue, its provider's limits
            return dest, pool
        return dataclasses.replace(dest, name=found[0]), pool

    def queue_of(self, domain: str, name: str) -> str:
        """The queue mail for `domain` (destination `name`) is in, as far as
        the cache knows: its site when rolled up."""
        if not self.cfg.shaping.mx_rollup or not self.table.rollup(domain):
            return name
        return self.sites.cached(domain) or name

    def connect_as(self, batch: Batch) -> Destination:
        """The batch's destination with how to connect: its egress source,
        and the site's TLS requirement, timeouts and deliveries per
        connection from the table."""
        dest, source = batch.destination, batch.source
        cert, key = self._client_certs.get(source.name, ("", ""))
        if dest.kind != "mx":
            if source.name == DEFAULT_SOURCE.name:
                return dest
            return dataclasses.replace(dest, options=ConnectionOptions(
                source=source.address, ehlo=source.ehlo, client_cert=cert, client_key=key))
        hosts = self.sites.hosts(dest.name)
        limits = self.table.limits_for(site=dest.name, mx_hosts=hosts, domain=dest.domain)
        provider = self.provider_of(dest)
        # a leased limit counts connections, so none may wait idle after its lease
        leased = self.leased and self.plan(dest).connection_limit is not None
        options = ConnectionOptions(
            source=source.address, ehlo=source.ehlo,
            max_uses=limits.max_deliveries_per_connection or 0,
            require_tls=limits.tls == "required",
            connect_timeout=limits.connect_timeout or 0.0,
            command_timeout=limits.command_timeout or 0.0,
            keep_idle=not leased and (provider is None or provider.total.connection_limit is None),
            client_cert=cert, client_key=key)
        return dest if options == DEFAULT_OPTIONS else dataclasses.replace(dest, options=options)

    # ---- read model ---------------------------------------------------------
    def warmup_status(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        out = []
        for e in self.cfg.egress:
            w = self._warmups.get(e.name)
            row: dict[str, Any] = {"source": e.name, "address": e.address, "pool": e.pool,
                                   "schedule": e.warmup}
            row.update(w.status(now) if w is not None else
                       {"day": None, "cap": None, "used": None, "allowed_now": None,
                        "warm": True})
            out.append(row)
        return out

    def describe(self) -> dict[str, Any]:
        return {"table": self.table.describe(), "mx_rollup": self.cfg.shaping.mx_rollup,
                "pools": {name: [s.name for s in srcs] for name, srcs in self._pools.items()}}
