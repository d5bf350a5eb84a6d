"""sd_notify(3) without libsystemd: tell the service manager how we are.

One job: send one datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET``.

API
    notify(message: str) -> bool
        e.g. notify("READY=1\\nSTATUS=accepting mail"). True when the
        datagram was sent; False when not running under a notify-aware
        manager (no ``$NOTIFY_SOCKET``) or when sending failed.
    monotonic_usec() -> int
        CLOCK_MONOTONIC in µs, for ``RELOADING=1\\nMONOTONIC_USEC=…``.

Invariants
  * Never raises: a broken notify socket must not take the MTA down (the
    manager will time the start out, which is the right failure). Failures
    are logged at debug.
  * ``$NOTIFY_SOCKET`` may be a filesystem path (``/run/systemd/notify``)
    or an abstract socket (``@name`` → leading NUL byte), as sd_notify(3)
    documents. Other schemes (``vsock:``) are not supported and return False.
  * The variable is left in the environment (sd_notify's unset_environment
    = 0): the daemon sends READY, RELOADING and STOPPING over its lifetime.
    We start no child processes that could misuse it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("mta.notify")

__all__ = ["notify", "monotonic_usec"]


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def notify(message: str) -> bool:
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    addr = _address(raw)
    if addr is None:
        log.debug("event=notify_skipped reason=\"unsupported NOTIFY_SOCKET\" socket=%s", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as exc:
        log.debug("event=notify_failed socket=%s error=%s", raw, exc)
        return False


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
