"""Starting the sending API: its first key, its parts, its server.

One job: wire the sending API (runtime/api.py's `RuntimeSending`, the
resources, the rate limiter, the aiohttp app) to the daemon's parts and
start its listener; in sandbox mode make the first key.

API
    await start_api(daemon) -> ApiServer | None     None when [api] address is unset
    SENDING          server.app[SENDING]: its RuntimeSending (a cluster wires into it)
    ensure_first_key(cfg, store, root, now) -> token | None
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
import ssl

from aiohttp import web

from mta.api.http import ApiServer, create_app
from mta.api.keys import KeyCache, StoreKeys
from mta.api.ratelimit import Decision, RateLimiter
from mta.api.resources import resource_routes
from mta.api.routes import email_routes
from mta.config import Config
from mta.core.files import atomic_write
from mta.core.observe import Observer
from mta.policy.senders import SenderPolicy
from mta.runtime.api import RuntimeSending, _Enqueue, _RcptCheck
from mta.runtime.api_content_start import content_backends, content_routes, remote_targets
from mta.runtime.api_remote import OwnerApi
from mta.runtime.api_resources import ResourceDaemon, RuntimeResources
from mta.runtime.paths import state_paths
from mta.runtime.startup import StartupError
from mta.runtime.tenants import TenantService
from mta.runtime.tls import api_ssl_context
from mta.spool.apikeys import SqliteApiKeys

__all__ = ["FIRST_KEY", "SENDING", "ensure_first_key", "start_api"]

SENDING = web.AppKey("mta.sending", RuntimeSending)


class _Daemon(ResourceDaemon, Protocol):

    tenants: TenantService | None

    @property
    def metrics(self) -> Observer: ...

    def sending_parts(self) -> tuple[_Enqueue, Callable[[], SenderPolicy], _RcptCheck]: ...


FIRST_KEY = "default"


def ensure_first_key(cfg: Config, store: StoreKeys, root: Path, now: float) -> str | None:
    """In sandbox mode with no API key at all, make one (full access) so a
    new user can send over HTTP at once: printed once, kept (0600) in
    state_dir/initial-api-key.txt, like the first SMTP credential."""
    if cfg.server.mode != "sandbox" or store.list(include_revoked=True):
        return None
    _, token = store.create(FIRST_KEY, now=now)
    path = root / "initial-api-key.txt"
    atomic_write(path, f"name={FIRST_KEY}\nkey={token}\n".encode(), 0o600)
    print(f"mta: created the first API key  name={FIRST_KEY}  key={token}\n"
          f"mta: (also saved in {path})", flush=True)
    return token


async def start_api(daemon: _Daemon) -> ApiServer | None:
    cfg = daemon.cfg
    if cfg.api.address is None:
        return None
    assert daemon.spool is not None
    try:
        ctx = api_ssl_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"api: cannot load cert/key: {exc}") from exc
    root = state_paths(cfg)["root"]
    store = StoreKeys(SqliteApiKeys(str(root)))
    ensure_first_key(cfg, store, root, daemon.clock.now())
    keys = KeyCache(store, daemon.clock)
    enqueue, policy, rcpt_check = daemon.sending_parts()
    async def remote(op: str, *args: Any) -> Any:
        receivers = daemon.receivers       # None in one-process mode (workers = 0)
        return None if receivers is None else await receivers.call_any(op, *args)

    backend = RuntimeSending(cfg_of=lambda: daemon.cfg, spool=daemon.spool, enqueue=enqueue,
                             clock=daemon.clock, keys=keys, store=store, sender_policy=policy,
                             signer=daemon.domains, rcpt_check=rcpt_check,
                             secure=ctx is not None, remote=remote, tenants=daemon.tenants)
    resources = RuntimeResources(daemon)
    content = content_backends(daemon, backend, daemon.tenants, daemon.spool.ledger,
                               daemon.metrics)
    routes = [*email_routes(backend, lambda: daemon.cfg.api), *resource_routes(resources),
              *content_routes(content.templates, content.verifications)]
    limiter = RateLimiter(daemon.clock)

    async def take(key_id: str, rate: float) -> Decision:
        return limiter.take(key_id, rate)

    app = create_app(routes, settings_of=lambda: daemon.cfg.api, keys=keys, clock=daemon.clock,
                     limiter=take)
    app[SENDING] = backend
    server = ApiServer(app, cfg.api.address, ssl_context=ctx)
    receivers = daemon.receivers
    if receivers is not None:
        # Receivers serve the API's connections (api_remote.py); the owner
        # answers what needs its spool, stores and rate limiter.
        receivers.api_serve = OwnerApi(backend, resources, limiter,
                                       remote_targets(content)).serve
    try:
        await server.start(handoff=receivers.hand_api if receivers is not None else None)
    except OSError as exc:
        raise StartupError(f"api: cannot listen on {cfg.api.address}: {exc}") from exc
    return server
