"""Durable small-file writes: the one place that knows the rename dance.

`atomic_write(path, data, mode)` leaves either the old file or the complete
new one, never a torn file, and returns only after the data and the
directory entry are on disk (write temp → fsync → rename → fsync dir).
`create_once(path, data, mode)` makes the file only if it does not exist yet
(write temp → fsync → hard-link into place → fsync dir): whoever links first
wins, a loser's data is dropped, nobody ever sees a partial file.
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


def _temp_copy(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a new fsynced temporary file beside `path`."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _unlink(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    tmp = _temp_copy(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)


def create_once(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> bool:
    """Whether this call made `path` (False: it existed, or another process
    linked its own first; that file stands)."""
    path = Path(path)
    tmp = _temp_copy(path, data, mode)
    try:
        os.link(tmp, path)
        made = True
    except FileExistsError:
        made = False
    finally:
        _unlink(tmp)
    fsync_dir(path.parent)
    return made
