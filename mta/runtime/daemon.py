"""The composition root: builds every part from a `Config`, starts them in
order, handles signals, and stops them in reverse order.

Start order: state dirs → spool (recovery) → credentials (first-run
credential when there is none) → TLS contexts → queue runner → listeners.
Listeners come last so nothing is accepted before recovery finished; on stop
they go first so nothing is accepted after we decided to leave.

A start that fails (a port in use, a certificate that cannot be read, a
state directory we may not write) raises StartupError: one line naming the
listener, address or path; `run` stops whatever had started (spool threads
included, so the process can exit), prints that line and returns 1 at once.
SIGTERM/SIGINT during start cancel it the same way (exit 0: asked to stop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from mta.config import Config
from mta.core import Clock, Reply, SystemClock
from mta.core.files import atomic_write
from mta.delivery.resolver import DnsResolver
from mta.delivery.client import SmtpTransport
from mta.delivery.sandbox import SandboxTransport
from mta.policy.authlimit import AuthThrottle
from mta.policy.retry import RetryPolicy
from mta.domains.service import DomainService
from mta.mail.verp import VerpCodec
from mta.policy.senders import SenderPolicy
from mta.policy.suppression import SuppressionRules
from mta.policy.suppression import reply_for as suppression_reply
from mta.admin.http import AdminServer
from mta.admin.metrics import Metrics
from mta.admin.token import ensure_token
from mta.runtime.admin import RuntimeAdmin
from mta.runtime.bounces import BounceProcessor, load_or_create_secret
from mta.runtime.domains import DomainCache
from mta.runtime.logs import event
from mta.runtime.notify import notify
from mta.runtime.queue_runner import QueueRunner
from mta.runtime.tls import ensure_self_signed, server_context
from mta.webhooks import WebhookService
from mta.scheduler import Scheduler
from mta.server.credentials import CredentialStore
from mta.server.listener import SubmissionListener
from mta.spool import Spool

log = logging.getLogger("mta.daemon")

INITIAL_CREDENTIAL_FILE = "initial-credential.txt"
FIRST_USER = "test"


def state_paths(cfg: Config) -> dict[str, Path]:
    root = Path(cfg.server.state_dir)
    return {"root": root, "tls": root / "tls", "sandbox": root / "sandbox",
            "credentials": root / "credentials.json"}


def ensure_first_credential(cfg: Config, store: CredentialStore) -> str | None:
    """In sandbox mode with no users, create one so a new user can send at
    once; the password is printed once and kept (0600) in the state dir."""
    if cfg.server.mode != "sandbox" or store.names():
        return None
    password = store.add(FIRST_USER)
    path = state_paths(cfg)["root"] / INITIAL_CREDENTIAL_FILE
    atomic_write(path, f"user={FIRST_USER}\npassword={password}\n".encode(), 0o600)
    return password


def raise_fd_limit(cfg: Config) -> tuple[int, int]:
    """Raise the soft open-files limit towards the hard one (a shell's 1024
    is below what max_sessions allows: past it, accept() fails and clients
    are dropped). Returns (soft limit now, files the listeners may need);
    the caller warns when the first is below the second."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = sum(lst.max_sessions for lst in cfg.listeners) + 512   # + spool, DNS, deliveries
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, 65536))
    if soft != resource.RLIM_INFINITY and target != soft and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, want


class StartupError(Exception):
    """The daemon cannot start; str() is one line for the operator."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__


class Daemon:
    def __init__(self, cfg: Config, clock: Clock | None = None):
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.spool: Spool | None = None
        self.runner: QueueRunner | None = None
        self.domains: DomainCache | None = None
        self.bounces: BounceProcessor | None = None
        self.listeners: list[SubmissionListener] = []
        self._stop = asyncio.Event()
        self._ready = False                       # start() finished (see request_reload)
        self._reload_pending = False
        self._reloads: set[asyncio.Task] = set()
        self.stopping = False
        self.metrics = Metrics(listeners=[lst.name for lst in cfg.listeners],
                               webhooks=[w.name for w in cfg.webhooks], state_dir=cfg.server.state_dir, clock=self.clock)
        self.admin: AdminServer | None = None
        self.webhooks: WebhookService | None = None
        self._housekeeping: asyncio.Task | None = None
        self._starting: asyncio.Future | None = None

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
            raise StartupError(f"state directory {paths['root']}: {_why(exc)}") from exc
        event(log, "recovery_done", **_report_fields(self.spool.recovery))
        credentials = self._credentials(paths)
        resolver = DnsResolver(cfg.dns.nameservers, timeout=cfg.dns.timeout)
        self.domains = DomainCache(DomainService(cfg, resolver=resolver, clock=self.clock),
                                   self.clock, observer=self.metrics)
        await self.domains.refresh()
        self.domains.start()
        codec = VerpCodec(load_or_create_secret(paths["root"] / "verp.key"))
        self.runner = self._runner(paths, resolver, codec)
        self.webhooks = WebhookService(cfg.webhooks, spool=self.spool, clock=self.clock,
                                       ledger_cfg=cfg.ledger, observer=self.metrics)
        # New ledger events wake the webhook deliverers at once (they also poll).
        self.runner.after_write = self.webhooks.poke
        self.runner.start()
        self.webhooks.start()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self.bounces = BounceProcessor(
            spool=self.spool, codec=codec, hostname=cfg.server.hostname,
            capture_dir=cfg.bounces.capture_dir or paths["root"] / "inbound", clock=self.clock,
            capture_max_bytes=cfg.bounces.capture_max_bytes,
            capture_max_messages=cfg.bounces.capture_max_messages,
            bounce_domains=self._bounce_domains, feedback_addresses=cfg.bounces.feedback_addresses,
            observer=self.metrics)
        await self._start_listeners(paths, credentials)
        if cfg.admin.enabled:
            token = cfg.admin.token or ensure_token(paths["root"])
            admin = AdminServer(cfg.admin, RuntimeAdmin(self), token)
            try:
                await admin.start()
            except OSError as exc:
                raise StartupError(f"admin API: cannot listen on {cfg.admin.address}: "
                                   f"{_why(exc)}") from exc
            self.admin = admin
            event(log, "listening", listener="admin", address=self.admin.url, role="admin")
        event(log, "ready", mode=cfg.server.mode, config=cfg.source,
              state_dir=str(paths["root"]))
        self._ready = True   # recovery done, listeners and admin API bound

    async def _housekeep(self) -> None:
        """Ledger retention and old idempotency keys: pruned in small batches
        with pauses between them, so delivery never waits behind a big delete."""
        while True:
            try:
                now = self.clock.now()
                while await self.spool.prune_events(now - self.cfg.ledger.retention,
                                                    batch=1000) == 1000:
                    await asyncio.sleep(0.2)
                await self.spool.prune_idempotency(now - self.cfg.ledger.idempotency_window)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=housekeeping_failed")
            await asyncio.sleep(300)

    def _credentials(self, paths: dict[str, Path]) -> CredentialStore:
        credentials = CredentialStore(paths["credentials"])
        password = ensure_first_credential(self.cfg, credentials)
        if password:
            # Printed once on purpose: this is how a new user learns it.
            print(f"mta: created the first credential  user={FIRST_USER}  password={password}\n"
                  f"mta: (also saved in {paths['root'] / INITIAL_CREDENTIAL_FILE})", flush=True)
        elif not credentials.names():
            event(log, "no_credentials", level=logging.WARNING,
                  hint="add one with: mta user add NAME")
        return credentials

    def _runner(self, paths: dict[str, Path], resolver, codec: VerpCodec) -> QueueRunner:
        cfg, d = self.cfg, self.cfg.delivery
        scheduler = Scheduler(concurrency=d.concurrency_per_destination,
                              max_messages_per_connection=d.max_messages_per_connection,
                              max_recipients_per_transaction=d.max_recipients_per_transaction,
                              backoff=d.destination_backoff)
        transport = SmtpTransport(hostname=cfg.server.hostname, resolver=resolver,
                                  connect_timeout=d.connect_timeout,
                                  command_timeout=d.command_timeout)
        sandbox = cfg.server.mode == "sandbox"
        return QueueRunner(
            spool=self.spool, scheduler=scheduler, transport=transport,
            sandbox_transport=SandboxTransport(str(paths["sandbox"])) if sandbox else None,
            retry=RetryPolicy.from_config(d), clock=self.clock, routes=cfg.routes,
            sandbox=sandbox, mx_port=d.smtp_port, hostname=cfg.server.hostname,
            batch_size=d.batch_size, delay_warning_after=d.delay_warning_after,
            verp=codec, bounce_domain_for=self._bounce_domain_for, observer=self.metrics)

    def _bounce_domain_for(self, sender: str) -> str | None:
        """The VERP domain for mail from `sender`: bounce.<its set-up domain>,
        else `[bounces] domain`, else None (no VERP)."""
        registered = self.domains.registered(sender.rpartition("@")[2])
        if registered:
            return f"{self.cfg.domains.bounce_subdomain}.{registered}"
        return self.cfg.bounces.domain

    def _bounce_domains(self) -> set[str]:
        out = self.domains.bounce_domains(self.cfg.domains.bounce_subdomain)
        if self.cfg.bounces.domain:
            out.add(self.cfg.bounces.domain.lower())
        return out

    async def _rcpt_check(self, address: str, credential: str | None) -> Reply | None:
        entry = await self.spool.suppressed(address, credential)
        return None if entry is None else suppression_reply(entry)

    def _tls_context(self, lcfg, paths: dict[str, Path]) -> ssl.SSLContext:
        if not lcfg.cert:
            try:
                cert, key = ensure_self_signed(paths["tls"], self.cfg.server.hostname)
            except OSError as exc:
                raise StartupError(f"listener {lcfg.name}: cannot create a self-signed "
                                   f"certificate in {paths['tls']}: {_why(exc)}") from exc
        else:
            cert, key = lcfg.cert, lcfg.key or lcfg.cert
        for what, path in (("cert", cert), ("key", key)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise StartupError(f"listener {lcfg.name}: {what} {path}: {_why(exc)}") from exc
        try:
            return server_context(cert, key)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise StartupError(f"listener {lcfg.name}: cannot load the certificate {cert} "
                               f"with the key {key}: {exc}") from exc

    async def _start_listeners(self, paths: dict[str, Path], credentials) -> None:
        cfg = self.cfg
        # Sandbox mode may skip domain verification (nothing leaves the
        # machine); credential scopes are enforced in every mode.
        sender_policy = SenderPolicy(
            require_verified=cfg.policy.require_verified_domain and cfg.server.mode != "sandbox",
            domain_state=self.domains.state)
        spool = _PokingSpool(self.spool, self.runner, self.webhooks,
                             self.cfg.ledger.idempotency_window)
        # Large messages in transit (core.spill): anonymous files, so nothing
        # is left here after a crash.
        spill_dir = str(paths["root"] / "incoming")
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)
        for lcfg in cfg.listeners:
            ctx = None
            if lcfg.tls != "none":
                ctx = self._tls_context(lcfg, paths)
            if lcfg.role == "inbound":
                lst = SubmissionListener(lcfg, hostname=cfg.server.hostname, tls_context=ctx,
                                         clock=self.clock, spill_dir=spill_dir,
                                         inbound_classify=self.bounces.classify_rcpt,
                                         inbound_deliver=self.bounces.deliver,
                                         observer=self.metrics)
            else:
                lst = SubmissionListener(
                    lcfg, hostname=cfg.server.hostname, spool=spool, credentials=credentials,
                    tls_context=ctx, clock=self.clock,
                    auth_throttle=AuthThrottle(lcfg.auth_max_failures, lcfg.auth_lockout),
                    sender_policy=sender_policy, signer=self.domains,
                    rcpt_check=self._rcpt_check, spill_dir=spill_dir,
                    accept_suppressed=cfg.suppression.on_rcpt == "accept",
                    observer=self.metrics)
            try:
                await lst.start()
            except OSError as exc:
                raise StartupError(f"listener {lcfg.name}: cannot listen on {lcfg.address}: "
                                   f"{_why(exc)}") from exc
            self.listeners.append(lst)
            host, port = lst.sockname[:2]
            event(log, "listening", listener=lcfg.name, address=f"{host}:{port}", tls=lcfg.tls,
                  role=lcfg.role)

    def request_stop(self) -> None:
        self._stop.set()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()     # SIGTERM during start: do not wait for it

    def request_reload(self) -> None:
        """SIGHUP: reload the configuration in a task (mta/runtime/reload.py);
        one during start-up is remembered and served once started."""
        if not self._ready:
            self._reload_pending = True
            return
        from mta.runtime import reload
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
        for lst in self.listeners:
            await lst.stop()
        if self.runner:
            await self.runner.stop(self.cfg.server.shutdown_timeout)
        if self.domains:
            await self.domains.stop()
        if self.webhooks:
            await self.webhooks.stop()
        if self._housekeeping:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        if self.admin:
            await self.admin.stop()
        if self.spool:
            await self.spool.close()
        event(log, "stopped")


class _PokingSpool:
    """The spool as the listeners see it: enqueue, then wake the queue runner
    so a new message is attempted at once instead of at the next poll."""

    def __init__(self, spool: Spool, runner: QueueRunner, webhooks, idempotency_window: float):
        self._spool, self._runner, self._webhooks = spool, runner, webhooks
        self._window = idempotency_window

    async def enqueue(self, msg, now, **kw):
        kw.setdefault("idempotency_window", self._window)
        qid = await self._spool.enqueue(msg, now, **kw)
        self._runner.poke()
        self._webhooks.poke()
        return qid

    async def append_events(self, events):
        await self._spool.append_events(events)
        self._webhooks.poke()


def _report_fields(report) -> dict:
    try:
        from dataclasses import asdict
        return {k: v for k, v in asdict(report).items() if not isinstance(v, (list, dict, tuple))}
    except TypeError:
        return {"report": str(report)}


def run(cfg: Config) -> int:
    try:
        import uvloop  # type: ignore
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(Daemon(cfg).run())
    except StartupError as exc:
        print(f"mta: cannot start: {exc}", file=sys.stderr, flush=True)
        notify(f"STATUS=cannot start: {exc}")
        return 1
    return 0
