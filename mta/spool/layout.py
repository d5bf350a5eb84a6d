"""Where the spool keeps its files under a state dir, and who owns them.

One job: the spool's directory layout (the package docstring, "Layout") in
one place, for `Spool.open` and for suppression_admin.py (which opens the
same index from another process), and taking the owner's lock.

API:
    SpoolPaths.of(state_dir) -> SpoolPaths(state, root, segments, index, lock)
    make_dirs(*dirs)          create the missing ones (sync; run in a thread)
    take_lock(path) -> fd     the flock of the one owning process (sync)

Invariants:
- A directory we create is fsynced into its parent before anything in it
  is written (it must itself survive power loss).
- One process owns a spool: `take_lock` fails with StorageError while
  another holds it, instead of letting two writers corrupt one index.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from mta.core.errors import StorageError
from mta.core.files import fsync_dir


@dataclass(frozen=True)
class SpoolPaths:
    state: Path
    root: Path          # state/spool
    segments: Path      # state/spool/segments
    index: Path         # state/spool/index.sqlite3
    lock: Path          # state/spool/lock

    @classmethod
    def of(cls, state_dir: str | os.PathLike[str]) -> SpoolPaths:
        state = Path(state_dir)
        root = state / "spool"
        return cls(state, root, root / "segments", root / "index.sqlite3", root / "lock")


def make_dirs(*dirs: Path) -> None:
    for d in dirs:
        if not d.is_dir():
            d.mkdir(mode=0o700)
            fsync_dir(d.parent)


def take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{path} is locked: another mta process owns this spool") from None
    return fd
