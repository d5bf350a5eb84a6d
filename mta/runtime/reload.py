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
  2. apply (cannot fail in practice): each running part applies the keys it
     owns through its own `reconfigure` — the queue runner (routes, retry
     policy, delivery limits, the scheduler's windows, the transports'
     timeouts: the next pass uses them, batches in flight finish as they
     were), each kept listener and its handler (limits, TLS for new
     sessions, sender policy; sessions in progress keep what they started
     with), the bounce processor (feedback addresses, capture directory and
     quota), the webhooks (added endpoints start at the ledger's end, removed
     ones stop with their cursor stored, changed ones restart from their
     stored cursor: nothing is skipped), the sending domains (re-read from
     the store) and the log level. This module only computes the difference
     and calls them; which keys apply live is declared with each key
     (config/sections.py: `L` live, `K` restart; `live_keys(section)`).

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
from typing import TYPE_CHECKING, Any

from mta.config import (ROUTES_LIVE, Config, ListenerConfig, config_as_dict, live_keys,
                        load_config)
from mta.core import ConfigError
from mta.core.logfmt import event
from mta.runtime.notify import monotonic_usec, notify
from mta.policy.shaping import ShapingTable
from mta.runtime.shaping import check as shaping_check
from mta.runtime.shaping import load_table
from mta.runtime.paths import state_paths
from mta.runtime.tls import ensure_self_signed, server_context
from mta.runtime.users import open_credentials
from mta.server.credentials import CredentialError
from mta.server.listener import SubmissionListener

if TYPE_CHECKING:
    from mta.runtime.daemon import Daemon

log = logging.getLogger("mta.reload")

__all__ = ["reload"]

EMBEDDED = "<embedded default>"

_locks: weakref.WeakKeyDictionary[Daemon, asyncio.Lock] = weakref.WeakKeyDictionary()


# A listener whose socket changes is left as it runs until a restart; other
# keys that need a restart (listen_backlog: set at bind) are reported, and the
# listener's live keys still apply.
_SOCKET_KEYS = frozenset({"address", "role", "tls"})


def _fixed_listener_keys() -> tuple[str, ...]:
    """Listener keys a reload cannot apply: the socket's (address, role, tls)
    and those read only at bind (listen_backlog). A listener is matched by
    name, so a new name is a removal and an addition."""
    return tuple(f.name for f in dataclasses.fields(ListenerConfig)
                 if f.name not in live_keys("listeners") and f.name != "name")


async def reload(daemon: "Daemon") -> bool:
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


async def _reload(daemon: "Daemon") -> bool:
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
              "tls_reloaded": ",".join(lst.cfg.name for lst, ctx in prepared.listeners
                                       if ctx is not None) or None}
    if restart:
        fields["restart_needed"] = ",".join(sorted(set(restart)))
    event(log, "reloaded", logging.INFO, config=new.source,
          **{k: v for k, v in fields.items() if v})
    if restart:
        event(log, "reload_restart_needed", level=logging.WARNING,
              keys=",".join(sorted(set(restart))),
              hint="these keys take effect at the next restart (systemctl restart mta)")
    return True


# ---- phase 1: prepare (everything that can fail) --------------------------

@dataclasses.dataclass
class _Prepared:
    # each kept listener → its new TLS context (None: no TLS)
    listeners: list[tuple[SubmissionListener, ssl.SSLContext | None]]
    restart: list[str]
    shaping: ShapingTable | None = None      # the shaping table the new config names


def _prepare(daemon: "Daemon", old: Config, new: Config) -> _Prepared:
    """Runs in a thread: file reads and certificate loading stay off the loop."""
    errors: list[str] = []
    # The state dir and hostname of the running process stay (restart to
    # change them); certificates are looked up where the process keeps them.
    paths = state_paths(old)
    try:
        # The running store re-reads its file itself; opening it here only
        # makes a corrupt file refuse the reload instead of going unnoticed.
        open_credentials(paths["credentials"])
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
        fixed = [k for k in _fixed_listener_keys() if getattr(lcfg, k) != getattr(lst.cfg, k)]
        restart.extend(f"listeners.{name}.{k}" for k in fixed)
        if any(k in _SOCKET_KEYS for k in fixed):
            continue        # another socket: nothing of it applies until the restart
        ctx = None
        if lcfg.tls != "none":
            try:
                # the loader refuses a cert without a key (and the reverse)
                cert, key = ((lcfg.cert, lcfg.key or lcfg.cert) if lcfg.cert
                             else ensure_self_signed(paths["tls"], old.server.hostname))
                ctx = server_context(cert, key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                what = lcfg.cert or "the self-signed certificate"
                errors.append(f"listeners[{i}].cert: cannot load {what}: {exc}")
                continue
        listeners.append((lst, ctx))
    for lcfg in new.listeners:
        if lcfg.name not in running:
            restart.append(f"listeners.{lcfg.name} (added)")
    errors.extend(shaping_check(new))       # the shaping file and warm-up schedules
    if errors:
        raise ConfigError(errors)
    return _Prepared(listeners, restart, load_table(new))


# ---- phase 2: apply ---------------------------------------------------------

async def _apply(daemon: "Daemon", old: Config, new: Config, p: _Prepared) -> None:
    # What the running process keeps until a restart: its hostname, mode and
    # state dir (server), and its resolver (dns). Every part is handed the
    # configuration in force, so none of them reads a key that did not apply.
    in_force = dataclasses.replace(
        new, server=old.server if _restart_server(old, new) else new.server, dns=old.dns)
    if daemon.runner is not None:
        if daemon.runner.shaping is not None and p.shaping is not None:
            daemon.runner.shaping.reconfigure(in_force, p.shaping)
        daemon.runner.reconfigure(in_force)       # the scheduler re-plans every queue
    if daemon.webhooks is not None and new.webhooks != old.webhooks:
        await daemon.webhooks.reconfigure(new.webhooks)
    if daemon.bounces is not None:
        daemon.bounces.reconfigure(in_force)
    for lst, ctx in p.listeners:
        lst.reconfigure(in_force, tls_context=ctx)
    if daemon.receivers is not None:      # they re-read their certificates themselves
        daemon.receivers.reconfigure(in_force)
    logging.getLogger().setLevel(new.server.log_level.upper())
    if daemon.domains is not None:
        try:
            await daemon.domains.reconfigure(in_force)
        except Exception as exc:  # the timer refreshes again; not a reason to refuse
            event(log, "reload_domains_refresh_failed", level=logging.WARNING, error=exc)


def _restart_server(old: Config, new: Config) -> bool:
    return any(getattr(old.server, k) != getattr(new.server, k)
               for k in ("hostname", "mode", "state_dir"))


# ---- what changed ------------------------------------------------------------

def _diff_by_name(section: str, old: list[dict[str, Any]],
                  new: list[dict[str, Any]]) -> list[str]:
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
                if not ROUTES_LIVE:
                    restart.append("routes")
            continue
        live = live_keys(section)
        for k in sorted(set(a[section]) | set(b[section])):
            if a[section].get(k) != b[section].get(k):
                path = f"{section}.{k}"
                changed.append(path)
                if k not in live:
                    restart.append(path)
    return changed, restart
