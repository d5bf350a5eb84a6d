"""Configuration reload (SIGHUP / `systemctl reload mta`).

One job: re-read the configuration from where it came from and apply what can
change at run time, without dropping a session or a delivery — or refuse the
whole new configuration and keep the old one.

API
    await reload(daemon) -> bool
        True: the new config is in force (`daemon.cfg` replaced), logged as
        ``event=reloaded changed=… restart_needed=…``. False: it was refused,
        logged as ``event=reload_refused error=…`` (one line per error) and
        nothing changed. Concurrent calls run one after the other.

Two phases, so a refusal never leaves half a reload behind:
  1. prepare (may fail): parse and validate the file (`load_config`), load
     every TLS certificate the kept listeners need, re-read the credential
     store. Any error → refuse.
  2. apply (cannot fail in practice): swap plain attributes that the running
     parts read per use — listener limits/TLS/credentials (new sessions get
     them; sessions in progress keep what they started with), routes, retry
     policy and delivery limits (the next scheduling pass uses them; batches
     in flight finish as they were), sending domains (re-read from the store),
     log level, [[webhooks]] endpoints (added ones start at the ledger's end,
     removed ones stop with their cursor stored, changed ones restart from
     their stored cursor: nothing is skipped).

What needs a restart (logged as ``restart_needed=…``, the old value stays in
force for the running process even though `daemon.cfg` shows the new one):
server.hostname/mode/state_dir, dns.*, admin.*, suppression rules other than
on_rcpt, and listeners added, removed, or changed in address/role/tls.

The daemon sends sd_notify RELOADING=1 before and READY=1 after (also after
a refusal: the old configuration is still serving).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import weakref
from pathlib import Path
from typing import Any

from mta.config import Config, config_as_dict, load_config
from mta.core import ConfigError
from mta.policy.retry import RetryPolicy
from mta.runtime.logs import event
from mta.runtime.notify import monotonic_usec, notify
from mta.runtime.tls import ensure_self_signed, server_context
from mta.server.credentials import CredentialError, CredentialStore

log = logging.getLogger("mta.reload")

__all__ = ["reload"]

EMBEDDED = "<embedded default>"

# Keys applied at run time, by section; "*" = every key of the section.
# Listener keys are handled per listener (all but address/role/tls).
_LIVE = {
    "delivery": "*",
    "domains": "*",
    "policy": "*",
    "bounces": "*",
    "routes": "*",
    "server": {"log_level", "shutdown_timeout", "public_ips"},
    "suppression": {"on_rcpt"},
}
_FIXED_LISTENER_KEYS = ("address", "role", "tls")

_locks: "weakref.WeakKeyDictionary[Any, asyncio.Lock]" = weakref.WeakKeyDictionary()


async def reload(daemon) -> bool:
    lock = _locks.setdefault(daemon, asyncio.Lock())
    async with lock:
        notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}\n"
               "STATUS=reloading the configuration")
        try:
            ok = await _reload(daemon)
        except Exception:  # a bug here must not kill the daemon that is serving
            log.exception("event=reload_refused error=\"internal error\"")
            ok = False
        notify("READY=1\nSTATUS=" + ("accepting mail (configuration reloaded)" if ok else
                                     "accepting mail (reload refused, old configuration "
                                     "in force; see the log)"))
        return ok


async def _reload(daemon) -> bool:
    old: Config = daemon.cfg
    event(log, "reload_started", config=old.source)
    try:
        new = await asyncio.to_thread(load_config, None if old.source == EMBEDDED else old.source)
        prepared = await asyncio.to_thread(_prepare, daemon, old, new)
    except ConfigError as exc:
        for err in exc.errors:
            event(log, "reload_refused", level=logging.ERROR, config=old.source, error=err)
        event(log, "reload_refused", level=logging.ERROR, config=old.source,
              errors=len(exc.errors), hint="the running configuration stays in force")
        return False
    changed, restart = _diff(old, new)
    restart.extend(prepared.restart)
    await _apply(daemon, old, new, prepared)
    daemon.cfg = new
    fields = {"changed": ",".join(changed) or "nothing",
              "tls_reloaded": ",".join(lst.cfg.name for lst, _, ctx in prepared.listeners
                                       if ctx is not None) or None}
    if restart:
        fields["restart_needed"] = ",".join(sorted(set(restart)))
    event(log, "reloaded", config=new.source, **{k: v for k, v in fields.items() if v})
    if restart:
        event(log, "reload_restart_needed", level=logging.WARNING,
              keys=",".join(sorted(set(restart))),
              hint="these keys take effect at the next restart (systemctl restart mta)")
    return True


# ---- phase 1: prepare (everything that can fail) --------------------------

@dataclasses.dataclass
class _Prepared:
    credentials: CredentialStore | None
    # listener object → (its new config, its new TLS context)
    listeners: list[tuple[Any, Any, ssl.SSLContext | None]]
    restart: list[str]


def _prepare(daemon, old: Config, new: Config) -> _Prepared:
    """Runs in a thread: file reads and certificate loading stay off the loop."""
    from mta.runtime.daemon import state_paths  # the daemon imports us lazily too
    errors: list[str] = []
    # The state dir and hostname of the running process stay (restart to
    # change them); certificates are looked up where the process keeps them.
    paths = state_paths(old)
    credentials = None
    try:
        credentials = CredentialStore(paths["credentials"])
    except CredentialError as exc:
        errors.append(f"credentials: {exc}")
    new_by_name = {lc.name: (i, lc) for i, lc in enumerate(new.listeners)}
    running = {lst.cfg.name for lst in daemon.listeners}
    restart: list[str] = []
    listeners = []
    for lst in daemon.listeners:
        name = lst.cfg.name
        found = new_by_name.get(name)
        if found is None:
            restart.append(f"listeners.{name} (removed)")
            continue
        i, lcfg = found
        moved = [k for k in _FIXED_LISTENER_KEYS if getattr(lcfg, k) != getattr(lst.cfg, k)]
        if moved:
            restart.extend(f"listeners.{name}.{k}" for k in moved)
            continue
        ctx = None
        if lcfg.tls != "none":
            try:
                cert, key = (lcfg.cert, lcfg.key) if lcfg.cert else ensure_self_signed(
                    paths["tls"], old.server.hostname)
                ctx = server_context(cert, key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                what = lcfg.cert or "the self-signed certificate"
                errors.append(f"listeners[{i}].cert: cannot load {what}: {exc}")
                continue
        listeners.append((lst, lcfg, ctx))
    for lcfg in new.listeners:
        if lcfg.name not in running:
            restart.append(f"listeners.{lcfg.name} (added)")
    if errors:
        raise ConfigError(errors)
    return _Prepared(credentials, listeners, restart)


# ---- phase 2: apply ---------------------------------------------------------

async def _apply(daemon, old: Config, new: Config, p: _Prepared) -> None:
    d = new.delivery
    runner = daemon.runner
    if runner is not None:
        runner.routes = new.routes
        runner.retry = RetryPolicy.from_config(d)
        runner.batch_size = d.batch_size
        runner.delay_warning_after = d.delay_warning_after
        runner.mx_port = d.smtp_port
        sch = runner.scheduler
        sch.concurrency = d.concurrency_per_destination
        sch.max_messages = d.max_messages_per_connection
        sch.max_rcpts = d.max_recipients_per_transaction
        sch.backoff = tuple(d.destination_backoff)
        transport = runner.transport
        if hasattr(transport, "connect_timeout"):
            transport.connect_timeout = d.connect_timeout
            transport.command_timeout = d.command_timeout
    if daemon.webhooks is not None and new.webhooks != old.webhooks:
        await daemon.webhooks.reconfigure(new.webhooks)
    if daemon.bounces is not None:
        from mta.runtime.daemon import state_paths
        daemon.bounces.feedback = {a.lower() for a in new.bounces.feedback_addresses}
        daemon.bounces.capture_dir = Path(new.bounces.capture_dir
                                          or state_paths(old)["root"] / "inbound")
        daemon.bounces.capture_max_bytes = new.bounces.capture_max_bytes
        daemon.bounces.capture_max_messages = new.bounces.capture_max_messages
    for lst, lcfg, ctx in p.listeners:
        submission = lcfg.role != "inbound"
        lst.update(lcfg, p.credentials if submission else None, ctx)
        handler = lst.handler
        if submission:
            sp = getattr(handler, "sender_policy", None)
            if sp is not None:
                handler.sender_policy = dataclasses.replace(
                    sp, require_verified=(new.policy.require_verified_domain
                                          and old.server.mode != "sandbox"))
            if hasattr(handler, "accept_suppressed"):
                handler.accept_suppressed = new.suppression.on_rcpt == "accept"
    logging.getLogger().setLevel(new.server.log_level.upper())
    if daemon.domains is not None:
        # DomainService reads its cfg per call (check schedules, DMARC rua,
        # SPF ips); its store and resolver stay those of the running process.
        daemon.domains.service.cfg = dataclasses.replace(
            new, server=old.server if _restart_server(old, new) else new.server, dns=old.dns)
        try:
            await daemon.domains.refresh()
        except Exception as exc:  # the timer refreshes again; not a reason to refuse
            event(log, "reload_domains_refresh_failed", level=logging.WARNING, error=exc)


def _restart_server(old: Config, new: Config) -> bool:
    return any(getattr(old.server, k) != getattr(new.server, k)
               for k in ("hostname", "mode", "state_dir"))


# ---- what changed ------------------------------------------------------------

def _diff_by_name(section: str, old: list[dict], new: list[dict]) -> list[str]:
    """Changed paths of an [[array]] whose tables have a `name`: section.NAME
    for one added or removed, section.NAME.KEY for each changed key."""
    by_old, by_new = {x["name"]: x for x in old}, {x["name"]: x for x in new}
    out = []
    for name in sorted(by_old.keys() | by_new.keys()):
        ta, tb = by_old.get(name), by_new.get(name)
        if ta is None or tb is None:
            out.append(f"{section}.{name}")
        else:
            out.extend(f"{section}.{name}.{k}" for k in sorted(set(ta) | set(tb))
                       if ta.get(k) != tb.get(k))
    return out


def _diff(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(every changed key path, those of them that need a restart). Listener
    paths are by name; added/removed/moved listeners are found in _prepare."""
    a, b = config_as_dict(old), config_as_dict(new)
    changed: list[str] = []
    restart: list[str] = []
    for section in a:
        if section in ("listeners", "webhooks"):
            # by name; listener moves that need a restart are found in _prepare,
            # webhooks all apply live (_apply)
            changed.extend(_diff_by_name(section, a[section], b[section]))
            continue
        if section == "routes":
            if a[section] != b[section]:
                changed.append("routes")
            continue
        live = _LIVE.get(section, set())
        for k in sorted(set(a[section]) | set(b[section])):
            if a[section].get(k) != b[section].get(k):
                path = f"{section}.{k}"
                changed.append(path)
                if live != "*" and k not in live:
                    restart.append(path)
    return changed, restart
