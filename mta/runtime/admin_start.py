"""Starting the admin server: the admin API, /metrics and the console.

One job: bind `[admin] address` (over HTTPS when `[admin] cert` and `key`
are set) with the admin API over the daemon (runtime/admin.py) and, unless
`[admin] console = false`, the web console mounted at /console/
(runtime/console.py), whose overview's event series a housekeeping job
("console") keeps counted.

API
    await start_admin(daemon, state_dir) -> AdminServer | None   None: [admin] enabled = false
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from mta.admin.http import AdminServer
from mta.admin.token import ensure_token
from mta.runtime.admin import RuntimeAdmin
from mta.runtime.console import build_console
from mta.runtime.console_overview import WARM_EVERY
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.runtime.startup import StartupError, why
from mta.runtime.tls import server_context

__all__ = ["start_admin"]

log = logging.getLogger("mta.daemon")


async def start_admin(daemon: Any, state_dir: Path) -> AdminServer | None:
    cfg = daemon.cfg
    if not cfg.admin.enabled:
        return None
    token = cfg.admin.token or ensure_token(state_dir)
    try:
        ctx = (server_context(cfg.admin.cert, cfg.admin.key)
               if cfg.admin.cert is not None and cfg.admin.key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"admin: cannot load cert/key: {exc}") from exc
    console = build_console(daemon, token)
    admin = AdminServer(cfg.admin, RuntimeAdmin(daemon), token,
                        console=console[0] if console else None, ssl_context=ctx)
    try:
        await admin.start()
    except OSError as exc:
        raise StartupError(f"admin API: cannot listen on {cfg.admin.address}: "
                           f"{why(exc)}") from exc
    if console is not None:
        overview = console[1].overview
        if overview is not None:
            # The overview's day of events is counted once here, in the
            # background, then kept up to date: no page view pays for it.
            daemon.housekeeping.add(Job("console", WARM_EVERY, overview.warm))
        event(log, "listening", listener="admin", address=admin.url, role="admin",
              console=admin.url + "/console/")
    else:
        event(log, "listening", listener="admin", address=admin.url, role="admin")
    return admin
