"""Building the queue runner and what it drives: scheduler, shaping, the
SMTP and sandbox transports (split from runtime/daemon.py).

API
    build_runner(cfg, *, spool, paths, resolver, codec, clock, observer,
                 bounce_domain_for, record=None) -> QueueRunner
        record: where each outbound TLS negotiation's outcome goes (TLS-RPT)
    tls_guard(cfg, resolver, paths, clock, record, observer) -> TlsGuard
        raises StartupError when the shaping file or a warm-up schedule is
        wrong (the same words as `mta config check`)
"""

from __future__ import annotations

from collections.abc import Callable

from mta.config import Config
from mta.core import Clock, Observer
from mta.delivery.client import SmtpTransport
from mta.delivery.resolver import DnsResolver
from mta.delivery.mtasts_fetch import StsResolver
from mta.delivery.sandbox import SandboxTransport
from mta.delivery.tlsguard import TlsGuard
from mta.mail.verp import VerpCodec
from mta.policy.retry import RetryPolicy
from mta.policy.tlsrpt import Outcome
from mta.runtime.paths import StatePaths
from mta.runtime.queue_runner import QueueRunner
from mta.runtime.shaping import Shaping, SiteCache, check, load_table
from mta.runtime.startup import StartupError
from mta.scheduler import Scheduler
from mta.spool import Spool
from mta.spool.mtasts_cache import SqliteStsCache

__all__ = ["build_runner", "tls_guard"]


def tls_guard(cfg: Config, resolver: DnsResolver, paths: StatePaths, clock: Clock,
              record: Callable[[Outcome], None] | None, observer: Observer) -> TlsGuard:
    """Outbound TLS policy (issue 17): MTA-STS policies cached in the index
    (spool/mtasts_cache.py), fetched with `[tls] ca_file` as the trust store
    (a change to it needs a restart for the fetches; checks read it live)."""
    try:
        sts = StsResolver(resolver, SqliteStsCache(paths["root"]), ca_file=cfg.tls.ca_file,
                          port=cfg.tls.mta_sts_port, clock=clock.now)
    except ValueError as exc:
        raise StartupError(f"tls: {exc}") from None
    return TlsGuard(resolver, cfg.tls, sts=sts, clock=clock.now, record=record,
                    observer=observer)


def build_runner(cfg: Config, *, spool: Spool, paths: StatePaths, resolver: DnsResolver,
                 codec: VerpCodec, clock: Clock, observer: Observer,
                 bounce_domain_for: Callable[[str], str | None],
                 record: Callable[[Outcome], None] | None = None) -> QueueRunner:
    d = cfg.delivery
    problems = check(cfg)
    if problems:
        raise StartupError("; ".join(problems))
    shaping = Shaping(cfg, load_table(cfg), sites=SiteCache(resolver, clock), clock=clock,
                      state_path=paths["root"] / "warmup.json")
    scheduler = Scheduler.from_config(cfg, shaper=shaping)
    transport = SmtpTransport(hostname=cfg.server.hostname, resolver=resolver,
                              connect_timeout=d.connect_timeout, command_timeout=d.command_timeout,
                              guard=tls_guard(cfg, resolver, paths, clock, record, observer))
    return QueueRunner(
        spool=spool, scheduler=scheduler, transport=transport,
        # Always: a test key's mail is captured there in every mode (issue 13).
        sandbox_transport=SandboxTransport(str(paths["sandbox"])),
        retry=RetryPolicy.from_config(d), clock=clock, routes=cfg.routes,
        sandbox=cfg.server.mode == "sandbox", mx_port=d.smtp_port,
        hostname=cfg.server.hostname, batch_size=d.batch_size,
        delay_warning_after=d.delay_warning_after, verp=codec,
        bounce_domain_for=bounce_domain_for, observer=observer, shaping=shaping)
