"""The [cluster] section (issue 19): several nodes, one cluster to the user.

One job: declare how a node joins a cluster (the shared PostgreSQL and
Redis, its own name, the secret file that seals DKIM keys) and check what
only makes sense across keys (`cluster_checks`). Unset `database` and
`redis` (the default): a single node on its embedded SQLite, needing
neither engine.

API
    ClusterConfig                      frozen dataclass
    cluster_checks(cfg) -> [error, …]  cross-key checks
    enabled(cfg.cluster) -> bool       both engines set
    redact_url(url) -> str             the URL with any password replaced by "***"
                                       (what logs, status and errors show)
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from mta.config.schema import DURATION, STR
from mta.config.schema import key as K

if TYPE_CHECKING:
    from mta.config.sections import Config

__all__ = ["ClusterConfig", "cluster_checks", "enabled", "redact_url"]

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _default_node() -> str:
    name = (socket.gethostname() or "node").split(".")[0]
    return name if NODE_NAME.fullmatch(name) else "node"


@dataclass(frozen=True)
class ClusterConfig:
    database: str | None = K(None, "PostgreSQL URL of the state every node shares "
                             "(\"postgresql://mta@db.internal/mta\"; a password is better "
                             "in ~/.pgpass or $PGPASSWORD than here); unset: a single node "
                             "on its own SQLite", STR, optional=True)
    redis: str | None = K(None, "Redis URL of the limits every node shares (quotas, rates, "
                          "connection leases: \"redis://cache.internal:6379/0\")", STR,
                          optional=True)
    node: str = K(_default_node(), "this node's name in the cluster (unique; letters, "
                  "digits, '.', '_', '-'; default: the short host name)")
    heartbeat: float = K(2.0, "how often this node writes its heartbeat (version, queue "
                         "depth, draining) to the database", DURATION, min=0.2, max=60)
    node_timeout: float = K(15.0, "a node not heard from for this long shows as down "
                            "in `mta cluster status`", DURATION, min=1, max=3600)
    secret_file: str | None = K(None, "file holding the 32-byte key (base64 or hex: `mta "
                                "cluster secret` prints a new one) that seals the DKIM "
                                "private keys kept in the database; every node needs the "
                                "same file; required in a cluster", STR, optional=True)
    connect_timeout: float = K(5.0, "how long a call to the database or Redis may take "
                               "before this node treats the engine as unreachable "
                               "(degraded mode)", DURATION, min=0.1, max=120)


def enabled(c: ClusterConfig) -> bool:
    return c.database is not None and c.redis is not None


def redact_url(url: str) -> str:
    """`url` without its password: "postgresql://mta:***@host/db"."""
    try:
        u = urlsplit(url)
        if u.password is None:
            return url
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{u.username or ''}:***@{host}" + (f":{u.port}" if u.port else "")
        return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    except ValueError:
        return "<unparsable URL>"


def _url_error(key: str, url: str, schemes: tuple[str, ...]) -> str | None:
    shown = redact_url(url)
    if any(ord(c) < 33 for c in url):
        return f"cluster.{key}: {shown!r} has spaces or control characters"
    try:
        u = urlsplit(url)
        u.port   # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"cluster.{key}: {shown!r} is not a URL ({exc})"
    if u.scheme not in schemes:
        return f"cluster.{key}: {shown!r} must start with {' or '.join(s + '://' for s in schemes)}"
    if not u.hostname:
        return f"cluster.{key}: {shown!r} names no host"
    return None


def cluster_checks(cfg: Config) -> list[str]:
    c, errors = cfg.cluster, []
    if (c.database is None) != (c.redis is None):
        errors.append("cluster: set both database and redis (a cluster shares its state on "
                      "PostgreSQL and its limits on Redis), or neither (a single node)")
    if c.database is not None:
        err = _url_error("database", c.database, ("postgresql", "postgres"))
        errors += [err] if err else []
    if c.redis is not None:
        err = _url_error("redis", c.redis, ("redis", "rediss"))
        errors += [err] if err else []
    if c.database is not None and c.redis is not None and not c.secret_file:
        errors.append("cluster.secret_file: required in a cluster (the key that seals DKIM "
                      "private keys in the database; `mta cluster secret > FILE` makes one, "
                      "the same file on every node)")
    if not NODE_NAME.fullmatch(c.node):
        errors.append(f"cluster.node: {c.node!r} is not a node name (1-63 letters, digits, "
                      "'.', '_', '-', starting with a letter or digit)")
    if c.node_timeout <= c.heartbeat * 2:
        errors.append("cluster.node_timeout: must be more than twice cluster.heartbeat")
    return errors
