"""What the daemon checks and prepares before it serves, and how a start fails.

One job: the start-up steps that can fail for a reason the operator must
fix — open-files limit, the first sandbox credential, listener certificates
— each turned into one line that names the listener, address or path.

API
    StartupError                    the daemon cannot start; str() is one line
    why(exc) -> str                 an OSError as "Permission denied (EACCES)"
    raise_fd_limit(cfg) -> (soft limit now, files the listeners may need)
    ensure_first_credential(cfg, store) -> password | None
    tls_context(lcfg, paths, hostname) -> ssl.SSLContext   (or StartupError)
    FIRST_USER                      the first sandbox credential's name

Invariant: nothing here starts a task or binds a socket (runtime/daemon.py
does, in its start order).
"""

from __future__ import annotations

import errno
import os
import resource
import ssl
from pathlib import Path

from mta.config import Config, ListenerConfig
from mta.core.files import atomic_write
from mta.runtime.paths import StatePaths, state_paths
from mta.runtime.tls import ensure_self_signed, server_context
from mta.server.credentials import Credentials

__all__ = ["FIRST_USER", "StartupError", "ensure_first_credential", "raise_fd_limit",
           "tls_context", "why"]

FIRST_USER = "test"


class StartupError(Exception):
    """The daemon cannot start; str() is one line for the operator."""


def why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__


def ensure_first_credential(cfg: Config, store: Credentials) -> str | None:
    """In sandbox mode with no users, create one so a new user can send at
    once; the password is printed once and kept (0600) in the state dir."""
    if cfg.server.mode != "sandbox" or store.names():
        return None
    password = store.add(FIRST_USER)
    path = state_paths(cfg)["initial_credential"]
    atomic_write(path, f"user={FIRST_USER}\npassword={password}\n".encode(), 0o600)
    return password


def raise_fd_limit(cfg: Config) -> tuple[int, int]:
    """Raise the soft open-files limit towards the hard one (a shell's 1024
    is below what max_sessions allows: past it, accept() fails and clients
    are dropped). Returns (soft limit now, files the listeners may need);
    the caller warns when the first is below the second."""
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


def tls_context(lcfg: ListenerConfig, paths: StatePaths, hostname: str) -> ssl.SSLContext:
    """The listener's server context: its configured cert/key, or a
    self-signed certificate for `hostname` kept in paths["tls"]."""
    cert: str | Path
    key: str | Path
    if not lcfg.cert:
        try:
            cert, key = ensure_self_signed(paths["tls"], hostname)
        except OSError as exc:
            raise StartupError(f"listener {lcfg.name}: cannot create a self-signed "
                               f"certificate in {paths['tls']}: {why(exc)}") from exc
    else:
        cert, key = lcfg.cert, lcfg.key or lcfg.cert
    for what, path in (("cert", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"listener {lcfg.name}: {what} {path}: {why(exc)}") from exc
    try:
        return server_context(cert, key)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise StartupError(f"listener {lcfg.name}: cannot load the certificate {cert} "
                           f"with the key {key}: {exc}") from exc
