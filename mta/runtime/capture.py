"""The postmaster@/abuse@ capture: a maildir for people, with a quota.

One job: keep mail for postmaster@/abuse@ the hostname (the inbound
listener's "postmaster" recipients) in a maildir, without letting it fill
the disk; the bounce processor (bounces.py) calls it first for such a message.

API
    Capture(directory, *, clock, max_bytes=256 MiB, max_messages=10000,
            rescan_interval=60.0)
    .store(msg) -> (Reply | None, reason)
        blocking (a worker thread): (None, "") when kept, else the DATA reply
        and the `capture_refused` reason: "quota" or "error"
    .reconfigure(directory, max_bytes, max_messages)
        a reload's values; a new directory is scanned afresh on its next use,
        an unchanged one keeps its count
    .directory, .max_bytes, .max_messages    read only (reconfigure sets them)
    CAPTURE_FULL (452 4.3.1), CAPTURE_TOO_BIG (552 5.3.4), CAPTURE_FAILED (452 4.3.1)

Rules
  * The quota counts bytes and files over tmp/, new/ and cur/. The usage is
    read from the directory once (on first use), then counted per message
    written; while the quota is reached the directory is re-read at most
    every `rescan_interval` seconds (people delete what they read).
  * Over quota: 452 4.3.1 (552 5.3.4 for a message bigger than the whole
    quota), logged once per change of state (`event=capture_quota_exceeded`
    / `event=capture_quota_ok`).
  * A write that fails (ENOSPC, EIO, a broken directory …) is 452 4.3.1 too,
    with one `event=capture_failed` line (no traceback); it is not counted.
  * A message is written to tmp/, fsynced, renamed into new/, and new/ is
    fsynced (maildir delivery); the headers Return-Path, X-Mta-Inbound-To
    and X-Mta-Inbound-From-IP are prepended.

Invariants: the usage is guarded by one lock (stores run in worker threads);
memory stays bounded for a large message (its tail is copied in pieces).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mta.core import Clock, Reply
from mta.core.files import atomic_write, fsync_dir
from mta.core.logfmt import event
from mta.core.spill import SpillFile

if TYPE_CHECKING:
    from mta.server.inbound import InboundMessage

__all__ = ["CAPTURE_FAILED", "CAPTURE_FULL", "CAPTURE_MAX_BYTES", "CAPTURE_MAX_MESSAGES",
           "CAPTURE_RESCAN_INTERVAL", "CAPTURE_TOO_BIG", "Capture"]

log = logging.getLogger("mta.bounces")   # the bounce processor's log, as before the split

CAPTURE_FULL = Reply(452, "4.3.1", "Mailbox quota for postmaster/abuse capture exceeded, "
                     "try again later")
CAPTURE_TOO_BIG = Reply(552, "5.3.4", "Message too big for the postmaster/abuse mailbox")
CAPTURE_FAILED = Reply(452, "4.3.1", "Insufficient system storage for postmaster/abuse mail, "
                       "try again later")
MiB = 1 << 20
CAPTURE_MAX_BYTES = 256 * MiB
CAPTURE_MAX_MESSAGES = 10_000
CAPTURE_RESCAN_INTERVAL = 60.0
_SUBDIRS = ("tmp", "new", "cur")


class Capture:
    def __init__(self, directory: str | os.PathLike[str], *, clock: Clock,
                 max_bytes: int = CAPTURE_MAX_BYTES, max_messages: int = CAPTURE_MAX_MESSAGES,
                 rescan_interval: float = CAPTURE_RESCAN_INTERVAL):
        self.clock = clock
        self.rescan_interval = rescan_interval
        self._lock = threading.Lock()
        self._directory = Path(directory)
        self._max_bytes, self._max_messages = max_bytes, max_messages
        # The usage: (bytes, files), None until read from the directory.
        self._usage: tuple[int, int] | None = None
        self._generation = 0          # bumped when the directory changes
        self._scanned_at = float("-inf")
        self._full = False            # for logging state changes only
        self._seq = itertools.count()

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def max_messages(self) -> int:
        return self._max_messages

    def reconfigure(self, directory: str | os.PathLike[str], max_bytes: int,
                    max_messages: int) -> None:
        with self._lock:
            self._max_bytes, self._max_messages = max_bytes, max_messages
            if Path(directory) == self._directory:
                return                # a reload that kept it: keep counting
            self._directory = Path(directory)
            self._usage = None
            self._generation += 1
            self._scanned_at = float("-inf")

    def store(self, msg: InboundMessage) -> tuple[Reply | None, str]:
        """Write msg into the maildir (worker thread). (None, "") when kept,
        else (the reply, the capture_refused reason)."""
        header = (f"Return-Path: <{msg.mail_from}>\r\nX-Mta-Inbound-To: "
                  f"{', '.join(msg.rcpts)}\r\nX-Mta-Inbound-From-IP: {msg.client_ip}\r\n").encode()
        data = header + msg.body
        tail = msg.tail                       # a message over core.spill.HEAD_BYTES
        size = len(data) + (tail.length if tail is not None else 0)
        with self._lock:
            root, generation = self._directory, self._generation
            try:
                refused = self._reserve(size)
            except OSError as exc:
                return self._failed(root, exc)
        if refused is not None:
            return refused, "quota"
        try:
            self._write(root, data, tail)
            return None, ""
        except _Unstored as exc:
            with self._lock:
                if self._usage is not None and self._generation == generation:
                    b, n = self._usage
                    self._usage = (max(0, b - size), max(0, n - 1))
            return self._failed(root, exc.error)
        except OSError as exc:                # stored; only the directory fsync failed
            return self._failed(root, exc)

    def _write(self, root: Path, data: bytes, tail: SpillFile | None) -> None:
        """tmp/ → new/ (maildir); `_Unstored` when the message is not in new/."""
        tmp = None
        try:
            for sub in _SUBDIRS:
                (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            name = (f"{time.time():.6f}.P{os.getpid()}Q{next(self._seq)}."
                    f"{socket.gethostname().replace('/', '_').replace(':', '_')}")
            tmp = root / "tmp" / name
            if tail is None:
                atomic_write(tmp, data, 0o600)
            else:
                _write_with_tail(tmp, data, tail)
            os.rename(tmp, root / "new" / name)
        except OSError as exc:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise _Unstored(exc) from exc
        fsync_dir(root / "new")

    def _reserve(self, size: int) -> Reply | None:
        """Under _lock: count `size` bytes and one file in, or say why not."""
        if size > self._max_bytes:
            event(log, "capture_refused", level=logging.WARNING, dir=self._directory,
                  size=size, max_bytes=self._max_bytes, why="message bigger than the quota")
            return CAPTURE_TOO_BIG
        now = self.clock.now()
        if self._usage is None:
            self._usage, self._scanned_at = _scan(self._directory), now
        if self._over(size) and now - self._scanned_at >= self.rescan_interval:
            self._usage, self._scanned_at = _scan(self._directory), now
        b, n = self._usage
        if self._over(size):
            if not self._full:
                self._full = True
                event(log, "capture_quota_exceeded", level=logging.WARNING,
                      dir=self._directory, bytes=b, messages=n,
                      max_bytes=self._max_bytes, max_messages=self._max_messages)
            return CAPTURE_FULL
        if self._full:
            self._full = False
            event(log, "capture_quota_ok", dir=self._directory, bytes=b, messages=n,
                  max_bytes=self._max_bytes, max_messages=self._max_messages)
        self._usage = (b + size, n + 1)
        return None

    def _over(self, size: int) -> bool:
        assert self._usage is not None
        b, n = self._usage
        return b + size > self._max_bytes or n + 1 > self._max_messages

    @staticmethod
    def _failed(root: Path, exc: OSError) -> tuple[Reply, str]:
        event(log, "capture_failed", level=logging.ERROR, dir=root,
              errno=errno.errorcode.get(exc.errno or 0, exc.errno),
              error=exc.strerror or type(exc).__name__,
              path=getattr(exc, "filename", None))
        return CAPTURE_FAILED, "error"


class _Unstored(Exception):
    """The message did not reach new/ (its tmp/ file is gone)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _scan(root: Path) -> tuple[int, int]:
    """(bytes, files) of the maildir's tmp/, new/ and cur/; a missing one is empty."""
    total = count = 0
    for sub in _SUBDIRS:
        try:
            it = os.scandir(root / sub)
        except FileNotFoundError:
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                        count += 1
                except FileNotFoundError:       # deleted while we looked
                    continue
    return total, count


def _write_with_tail(path: Path, head: bytes, tail: SpillFile) -> None:
    """`head` + the bytes of `tail` (copied in bounded pieces) into a new
    file, fsynced; a failure removes nothing (the caller does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(head)
        while view:
            view = view[os.write(fd, view):]
        tail.copy_to(fd, len(head))
        os.fsync(fd)
    finally:
        os.close(fd)
