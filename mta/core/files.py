"""Durable small-file writes: the one place that knows the rename dance.

`atomic_write(path, data, mode)` leaves either the old file or the complete
new one, never a torn file, and returns only after the data and the
directory entry are on disk (write temp → fsync → rename → fsync dir).
`fsync_dir(path)` makes a directory's entries durable; filesystems that
refuse directory fsync (EINVAL/ENOTSUP) are tolerated.
These are the only I/O helpers in core; they hold no state.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
