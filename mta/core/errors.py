"""Typed errors, by who is at fault; each maps to one SMTP reply at the boundary.

`TempFailure(reply)` → a 4xx to the client, `PermFailure(reply)` → a 5xx.
`Unavailable` → a shared engine of a cluster did not answer (degraded mode):
the HTTP servers answer 429 with Retry-After, never a 5xx.
`StorageError` is raised by the spool and always becomes ``451 4.3.0`` (or
``452 4.3.1`` when the disk is full, see `StorageError.disk_full`).
"""

from __future__ import annotations

from mta.core.reply import Reply


class MtaError(Exception):
    """Base of every error mta raises on purpose."""


class ConfigError(MtaError):
    """Invalid configuration. `errors` lists one message per bad key path."""

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class TempFailure(MtaError):
    def __init__(self, reply: Reply):
        if not reply.is_temp:
            raise ValueError(f"TempFailure needs a 4xx reply, got {reply}")
        self.reply = reply
        super().__init__(str(reply))


class PermFailure(MtaError):
    def __init__(self, reply: Reply):
        if not reply.is_perm:
            raise ValueError(f"PermFailure needs a 5xx reply, got {reply}")
        self.reply = reply
        super().__init__(str(reply))


class StorageError(MtaError):
    """The spool could not make something durable. Never a 5xx."""

    def __init__(self, message: str, *, disk_full: bool = False):
        self.disk_full = disk_full
        super().__init__(message)

    @property
    def reply(self) -> Reply:
        if self.disk_full:
            return Reply(452, "4.3.1", "Insufficient system storage, try again later")
        return Reply(451, "4.3.0", "Local storage error, try again later")


class Refused(MtaError):
    """A submission a guardrail turned away before its commit point: its
    tenant is paused, over a quota, or sends as another tenant's domain.
    `reply` is the SMTP answer (4xx: come back later; 5xx: not like this);
    `status` the HTTP one (403, 429) and `retry_after` (seconds, or None)
    its Retry-After. Nothing was queued."""

    def __init__(self, reply: Reply, status: int, retry_after: int | None = None):
        self.reply, self.status, self.retry_after = reply, status, retry_after
        super().__init__(str(reply))


class Unavailable(MtaError):
    """A shared engine (a cluster's PostgreSQL or Redis) did not answer now;
    the same request may succeed later (HTTP 429 + Retry-After)."""
