"""The composition root: builds every part from a `Config`, starts them in
order, handles signals, and stops them in reverse order.

Start order: state dirs → spool (recovery) → credentials (first-run
credential when there is none) → sending domains → queue runner, webhooks,
housekeeping → TLS contexts → receiver processes (`mta serve` with
`[server] workers`, runtime/workers.py: they run the submission sessions,
this process accepts and hands connections over) → listeners → admin API.
Listeners come last so
nothing is accepted before recovery finished; on stop they go first so
nothing is accepted after we decided to leave, then the receivers (sessions
inside DATA finish: the spool is still open), then the queue runner (its
deliveries in flight get `shutdown_timeout`), housekeeping, webhooks, the
admin API and the spool.

The one place that creates the daemon's tasks and wires its parts: the
state-dir layout is runtime/paths.py, the periodic jobs (DSN pass, segment
reclaim, ledger pruning, domain re-checks) run under runtime/housekeeping.py,
each part applies a reloaded config itself (runtime/reload.py calls them).

A start that fails (a port in use, a certificate that cannot be read, a
state directory we may not write) raises StartupError: one line naming the
listener, address or path; `run` stops whatever had started (spool threads
included, so the process can exit), prints that line and returns 1 at once.
SIGTERM/SIGINT during start cancel it the same way (exit 0: asked to stop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from typing import Any

from mta.admin.http import AdminServer
from mta.admin.metrics import Metrics
from mta.config import Config
from mta.core import Clock, Reply, SystemClock
from mta.delivery.resolver import DnsResolver
from mta.domains.service import DomainService
from mta.mail.verp import VerpCodec
from mta.policy.authlimit import AuthThrottle
from mta.policy.senders import SenderPolicy
from mta.policy.suppression import SuppressionRules
from mta.runtime import reload
from mta.api.http import ApiServer
from mta.runtime.admin_start import start_admin
from mta.runtime.api_start import start_api
from mta.runtime.cluster import ClusterNode, start_cluster
from mta.runtime.tlsrpt_job import TICK_EVERY as TLSRPT_EVERY, TlsReports
from mta.delivery.mtasts_fetch import REFRESH_EVERY as MTASTS_EVERY
from mta.spool.verifications import SqliteVerifications
from mta.api.public import PublicServer
from mta.runtime.public import start_public
from mta.server.stream import StreamHeaders
from mta.runtime.api_resources import add_stored_webhooks
from mta.runtime.bounces import BounceProcessor, load_or_create_secret
from mta.runtime.domains import DomainCache
from mta.runtime.housekeeping import (DOMAINS_EVERY, DSN_EVERY, DSN_PAUSE_AFTER_FAILURE,
                                      PRUNE_EVERY, RECLAIM_EVERY, SHAPING_EVERY, Housekeeping, Job,
                                      prune_ledger, reclaim_segments)
from mta.runtime.logs import event
from mta.runtime.notify import notify
from mta.runtime.paths import StatePaths, capture_dir, state_paths
from mta.runtime.queue_runner import QueueRunner
from mta.runtime.reputation import ReputationTracker
from mta.runtime.runner_build import build_runner
from mta.runtime.submission import GatedSpool, RcptChecks
from mta.runtime.tenants import TenantService
from mta.runtime.startup import (FIRST_USER, StartupError, ensure_first_credential,
                                 raise_fd_limit, tls_context, why)
from mta.runtime.users import Credentials, open_credentials
from mta.runtime.workers import Receivers, resolve_workers
from mta.server.listener import Handoff, SubmissionListener
from mta.spool import NewMessage, Spool
from mta.webhooks import WebhookService

__all__ = ["Daemon", "StartupError", "ensure_first_credential", "raise_fd_limit", "run",
           "state_paths"]

log = logging.getLogger("mta.daemon")


class Daemon:
    def __init__(self, cfg: Config, clock: Clock | None = None, *, processes: bool = False):
        self.cfg = cfg
        # `mta serve` runs `[server] workers` receiver processes; an in-process
        # Daemon (tests, embedding) runs its sessions itself unless asked.
        self._processes = processes
        self.receivers: Receivers | None = None
        self.clock = clock or SystemClock()
        self.spool: Spool | None = None
        self.runner: QueueRunner | None = None
        self.domains: DomainCache | None = None
        self.bounces: BounceProcessor | None = None
        self.listeners: list[SubmissionListener] = []
        self._stop = asyncio.Event()
        self._ready = False                       # start() finished (see request_reload)
        self._reload_pending = False
        self._reloads: set[asyncio.Future[bool]] = set()
        self.stopping = False
        self.metrics = Metrics(listeners=[lst.name for lst in cfg.listeners],
                               webhooks=[w.name for w in cfg.webhooks],
                               state_dir=cfg.server.state_dir, clock=self.clock)
        self.admin: AdminServer | None = None
        self.api: ApiServer | None = None
        self.public: PublicServer | None = None     # [public]: unsubscribe, clicks, opens
        self.webhooks: WebhookService | None = None
        self.tenants: TenantService | None = None
        self.reputation: ReputationTracker | None = None
        self.tls_reports: TlsReports | None = None      # TLS-RPT counts and reports
        self.housekeeping = Housekeeping()
        self.cluster: ClusterNode | None = None
        self._starting: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        cfg = self.cfg
        paths = state_paths(cfg)
        files, want = raise_fd_limit(cfg)
        if files < want:
            event(log, "fd_limit_low", level=logging.WARNING, open_files=files, needed=want,
                  hint="raise the open-files limit (LimitNOFILE=, ulimit -n) or lower "
                       "listeners' max_sessions")
        try:
            paths["root"].mkdir(parents=True, exist_ok=True, mode=0o700)
            self.spool = await Spool.open(paths["root"], now=self.clock.now(),
                                          suppression=SuppressionRules.from_config(cfg.suppression))
        except OSError as exc:
            raise StartupError(f"state directory {paths['root']}: {why(exc)}") from exc
        event(log, "recovery_done", logging.INFO, **_report_fields(self.spool.recovery))
        self.cluster = await start_cluster(self)      # [cluster]: shared engines (or None)
        self.tenants = TenantService(paths["root"], self.spool, self.clock, lambda: self.cfg)
        await self.tenants.refresh()
        self._rcpt = RcptChecks(self.spool, self.tenants)
        credentials = self._credentials(paths)
        self.tenants.user_names = credentials.names
        resolver = DnsResolver(cfg.dns.nameservers, timeout=cfg.dns.timeout)
        # Domain checks ask DNS afresh each time: a record the operator just
        # published or fixed counts at once (delivery's resolver caches by TTL).
        checks = DnsResolver(cfg.dns.nameservers, timeout=cfg.dns.timeout, cache=False)
        self.domains = DomainCache(DomainService(cfg, resolver=checks, clock=self.clock),
                                   self.clock, observer=self.metrics)
        await self.domains.refresh()
        codec = VerpCodec(load_or_create_secret(paths["verp_key"]))
        self.tls_reports = TlsReports(state_dir=paths["root"], resolver=resolver,
                                      clock=self.clock, cfg_of=lambda: self.cfg,
                                      enqueue=self._enqueue_own, signer=self.domains)
        self.runner = build_runner(cfg, spool=self.spool, paths=paths, resolver=resolver,
                                   codec=codec, clock=self.clock, observer=self.metrics,
                                   bounce_domain_for=self._bounce_domain_for,
                                   record=self.tls_reports.record)
        self.webhooks = WebhookService(cfg.webhooks, spool=self.spool.ledger, clock=self.clock,
                                       ledger_cfg=cfg.ledger, observer=self.metrics)
        await add_stored_webhooks(cfg, self.webhooks)     # made by the sending API
        # New ledger events wake the webhook deliverers at once (they also poll).
        self.runner.after_write = self.webhooks.poke
        self.runner.start()
        self.webhooks.start()
        self.reputation = ReputationTracker(self.tenants, self.spool, self.clock, lambda: self.cfg)
        await self.reputation.start()
        self._start_housekeeping(self.runner, self.spool, self.domains)
        self.bounces = BounceProcessor(
            spool=self.spool, codec=codec, hostname=cfg.server.hostname,
            capture_dir=capture_dir(cfg, paths), clock=self.clock,
            capture_max_bytes=cfg.bounces.capture_max_bytes,
            capture_max_messages=cfg.bounces.capture_max_messages,
            bounce_domains=self._bounce_domains, feedback_addresses=cfg.bounces.feedback_addresses,
            observer=self.metrics)
        await self._start_listeners(paths, credentials)
        self.admin = await start_admin(self, paths["root"])
        if cfg.api.address is not None:
            self.api = await start_api(self)
        if self.api is not None:
            event(log, "listening", listener="api", address=self.api.url, role="api")
        self.public = await start_public(cfg, self.spool, self.clock, self.metrics)
        if self.cluster is not None:          # every part is built: the shared stores join in
            await self.cluster.wire()
        event(log, "ready", mode=cfg.server.mode, config=cfg.source,
              state_dir=str(paths["root"]))
        self._ready = True   # recovery done, listeners and admin API bound

    def _start_housekeeping(self, runner: QueueRunner, spool: Spool,
                            domains: DomainCache) -> None:
        """The periodic jobs (runtime/housekeeping.py). Ledger retention and
        the idempotency window are read from `self.cfg` at each run, so a
        reload applies them."""
        reports = self.tls_reports
        assert reports is not None
        async def prune() -> None:
            now = self.clock.now()
            await prune_ledger(spool.ledger, now, self.cfg.ledger.retention,
                               self.cfg.ledger.idempotency_window)
            # one-time codes: kept a day past their expiry (GET shows "expired")
            await asyncio.to_thread(SqliteVerifications(spool.root).prune, now - 86400)

        async def reclaim() -> None:
            await reclaim_segments(spool)

        for job in (Job("dsn", DSN_EVERY, runner.dsn.run, wakeup=runner.dsn.wakeup,
                        pause_after_failure=DSN_PAUSE_AFTER_FAILURE),
                    Job("reclaim", RECLAIM_EVERY, reclaim),
                    Job("prune", PRUNE_EVERY, prune),
                    Job("domains", DOMAINS_EVERY, self._domains_tick),
                    Job("shaping", SHAPING_EVERY, runner.shaping_tick),
                    Job("tlsrpt", TLSRPT_EVERY, reports.tick),
                    Job("mtasts", MTASTS_EVERY, self._mtasts_refresh)):
            self.housekeeping.add(job)
        self.housekeeping.start()

    async def _mtasts_refresh(self) -> None:
        """MTA-STS policies expiring within a day are fetched again (RFC 8461 §10.2)."""
        guard = getattr(self.runner.transport if self.runner else None, "guard", None)
        if guard is not None and guard.sts is not None and self.cfg.tls.mta_sts:
            await guard.sts.refresh_due()

    async def _enqueue_own(self, msg: NewMessage) -> str:
        """Mail the daemon writes itself (TLS-RPT reports): no guardrails."""
        assert self.spool is not None and self.runner is not None
        qid = await self.spool.enqueue(msg, self.clock.now())
        self.runner.poke()
        return qid

    async def _domains_tick(self) -> None:
        """Re-read sending domains, run the DNS checks due, and have the
        receiver processes re-read them too (their DKIM keys and states)."""
        assert self.domains is not None
        await self.domains.tick()
        if self.receivers is not None:
            self.receivers.refresh_domains()

    def _credentials(self, paths: StatePaths) -> Credentials:
        credentials = open_credentials(paths["credentials"])
        password = ensure_first_credential(self.cfg, credentials)
        if password:
            # Printed once on purpose: this is how a new user learns it.
            print(f"mta: created the first credential  user={FIRST_USER}  password={password}\n"
                  f"mta: (also saved in {paths['initial_credential']})", flush=True)
        elif not credentials.names():
            event(log, "no_credentials", level=logging.WARNING,
                  hint="add one with: mta user add NAME")
        return credentials

    def _bounce_domain_for(self, sender: str) -> str | None:
        """The VERP domain for mail from `sender`: bounce.<its set-up domain>,
        else `[bounces] domain`, else None (no VERP)."""
        assert self.domains is not None
        registered = self.domains.registered(sender.rpartition("@")[2])
        if registered:
            return f"{self.cfg.domains.bounce_subdomain}.{registered}"
        return self.cfg.bounces.domain

    def _bounce_domains(self) -> set[str]:
        assert self.domains is not None
        out = self.domains.bounce_domains(self.cfg.domains.bounce_subdomain)
        if self.cfg.bounces.domain:
            out.add(self.cfg.bounces.domain.lower())
        return out

    def _sender_policy(self) -> SenderPolicy:
        # Sandbox mode may skip domain verification (nothing leaves the
        # machine); credential scopes are enforced in every mode.
        assert self.domains is not None
        cfg = self.cfg
        return SenderPolicy(
            require_verified=cfg.policy.require_verified_domain and cfg.server.mode != "sandbox",
            domain_state=self.domains.state)

    def sending_parts(self) -> tuple[GatedSpool, Callable[[], SenderPolicy],
                                     Callable[[str, str | None], Awaitable[Reply | None]]]:
        """What the sending API accepts mail with (runtime/api.py): the
        listeners' spool, the sender policy in force, the suppression check."""
        return self._gated_spool(), self._sender_policy, self._rcpt.suppression

    def _gated_spool(self) -> GatedSpool:
        assert self.spool is not None and self.runner is not None and self.webhooks is not None
        return GatedSpool(self.spool, self.runner, self.webhooks,
                          self.cfg.ledger.idempotency_window, self.tenants)

    async def _rcpt_check(self, address: str, credential: str | None) -> Reply | None:
        return await self._rcpt.smtp(address, credential)

    async def _start_listeners(self, paths: StatePaths, credentials: Credentials) -> None:
        cfg = self.cfg
        assert (self.spool is not None and self.runner is not None and self.domains is not None
                and self.webhooks is not None and self.bounces is not None)
        sender_policy = self._sender_policy()
        spool = self._gated_spool()
        # Large messages in transit (core.spill): anonymous files, so nothing
        # is left here after a crash.
        spill_dir = str(paths["incoming"])
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)
        built: list[SubmissionListener] = []
        for lcfg in cfg.listeners:
            ctx = None
            if lcfg.tls != "none":
                ctx = tls_context(lcfg, paths, cfg.server.hostname)
            if lcfg.role == "inbound":
                built.append(SubmissionListener(
                    lcfg, hostname=cfg.server.hostname, tls_context=ctx, clock=self.clock,
                    spill_dir=spill_dir, inbound_classify=self.bounces.classify_rcpt,
                    inbound_deliver=self.bounces.deliver, observer=self.metrics))
            else:
                built.append(SubmissionListener(
                    lcfg, hostname=cfg.server.hostname, spool=spool, credentials=credentials,
                    tls_context=ctx, clock=self.clock,
                    auth_throttle=AuthThrottle(lcfg.auth_max_failures, lcfg.auth_lockout),
                    sender_policy=sender_policy, signer=self.domains,
                    rcpt_check=self._rcpt_check, spill_dir=spill_dir,
                    accept_suppressed=cfg.suppression.on_rcpt == "accept",
                    observer=self.metrics, stream=StreamHeaders(
                        lambda: self.cfg, self.domains, paths["public_key"])))
        handoff = await self._start_receivers(spool, spill_dir, built)
        for lst in built:
            lcfg = lst.cfg
            try:
                await lst.start(handoff if lcfg.role == "submission" else None)
            except OSError as exc:
                raise StartupError(f"listener {lcfg.name}: cannot listen on {lcfg.address}: "
                                   f"{why(exc)}") from exc
            self.listeners.append(lst)
            host, port = lst.sockname[:2]
            event(log, "listening", listener=lcfg.name, address=f"{host}:{port}", tls=lcfg.tls,
                  role=lcfg.role)

    async def _start_receivers(self, spool: GatedSpool, spill_dir: str,
                               listeners: list[SubmissionListener]) -> Handoff | None:
        """Receiver processes for the submission listeners (runtime/workers.py),
        when this daemon runs them: their hand-off, else None (sessions run
        here)."""
        count = resolve_workers(self.cfg) if self._processes else 0
        submission = [lst for lst in listeners if lst.cfg.role == "submission"]
        if count <= 0 or not submission:
            return None
        self.receivers = Receivers(count, cfg=self.cfg, spool=spool,
                                   rcpt_check=self._rcpt_check, observer=self.metrics,
                                   spill_dir=spill_dir)
        self.receivers.listeners.update((lst.cfg.name, lst) for lst in submission)
        try:
            await self.receivers.start()
        except (RuntimeError, OSError) as exc:
            raise StartupError(f"receiver processes: {why(exc)}") from exc
        return self.receivers.handoff

    def request_stop(self) -> None:
        self._stop.set()
        if self.receivers is not None:
            self.receivers.begin_stop()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()     # SIGTERM during start: do not wait for it

    def request_reload(self) -> None:
        """SIGHUP: reload the configuration in a task (mta/runtime/reload.py);
        one during start-up is remembered and served once started."""
        if not self._ready:
            self._reload_pending = True
            return
        task = asyncio.ensure_future(reload.reload(self))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._starting = asyncio.ensure_future(self.start())
        try:
            await self._starting
        except BaseException as exc:
            # Whatever started (spool and its SQLite threads, listeners) is
            # stopped, so the process can exit now.
            await self.stop()
            if isinstance(exc, asyncio.CancelledError) and self._stop.is_set():
                return                                  # asked to stop while starting
            raise
        # sd_notify: only now is every listener bound and accepting.
        self._ready = True
        notify(f"READY=1\nSTATUS=accepting mail on {len(self.listeners)} listener(s)\n"
               f"MAINPID={os.getpid()}")
        if self._reload_pending:
            self.request_reload()
        await self._stop.wait()
        for task in list(self._reloads):   # a reload must not touch stopped parts
            task.cancel()
        await asyncio.gather(*self._reloads, return_exceptions=True)
        await self.stop()

    async def stop(self) -> None:
        notify("STOPPING=1\nSTATUS=stopping: finishing sessions and deliveries")
        self.stopping = True
        event(log, "stopping")
        if self.api:
            await self.api.stop()
        if self.public:
            await self.public.stop()
        for lst in self.listeners:
            await lst.stop()
        if self.receivers is not None:     # sessions in DATA finish: the spool is open
            await self.receivers.stop(5.0)
        if self.runner:
            await self.runner.stop(self.cfg.server.shutdown_timeout)
        await self.housekeeping.stop()
        if self.tls_reports:                    # today's TLS-RPT counts survive a restart
            await self.tls_reports.flush()
        if self.reputation:
            await self.reputation.stop()
        if self.webhooks:
            await self.webhooks.stop()
        if self.admin:
            await self.admin.stop()
        if self.cluster:
            await self.cluster.stop()
        if self.spool:
            await self.spool.close()
        event(log, "stopped")


def _report_fields(report: Any) -> dict[str, object]:
    """The scalar fields of the spool's RecoveryReport, for one log line."""
    try:
        return {k: v for k, v in asdict(report).items() if not isinstance(v, (list, dict, tuple))}
    except TypeError:
        return {"report": str(report)}


def run(cfg: Config) -> int:
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop      # optional: not on every platform
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(Daemon(cfg, processes=True).run())
    except StartupError as exc:
        print(f"mta: cannot start: {exc}", file=sys.stderr, flush=True)
        notify(f"STATUS=cannot start: {exc}")
        return 1
    return 0
