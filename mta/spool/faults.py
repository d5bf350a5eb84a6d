"""Turning storage exceptions into `StorageError` (always a 4xx, ARCHITECTURE §4).

One job: `storage_error(exc, what)` maps an OSError or sqlite3.Error to a
`StorageError`, flagging disk full (ENOSPC, EDQUOT, SQLITE_FULL) so the
server answers ``452 4.3.1`` instead of ``451 4.3.0``.
"""

from __future__ import annotations

import errno
import sqlite3

from mta.core.errors import StorageError

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, StorageError):
        return exc.disk_full
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return False


def storage_error(exc: BaseException, what: str) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    return StorageError(f"{what}: {type(exc).__name__}: {exc}", disk_full=is_disk_full(exc))
