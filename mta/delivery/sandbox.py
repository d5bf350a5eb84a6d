"""Sandbox delivery: capture every message into a Maildir; nothing leaves the host.

One job: stand in for `SmtpTransport` when `server.mode = "sandbox"`, with the
same `deliver()` signature, so the whole pipeline (spool, scheduler, events)
runs unchanged while mail lands in files a developer can open.

Public API:
    SandboxTransport(maildir)       a mta.delivery.transport.Transport
        await .deliver(destination, messages) -> DeliveryReport
        .reconfigure(cfg), await .close()   nothing to change, nothing to close

Invariants:
  - Maildir protocol: write into tmp/, fsync the file, rename into new/,
    fsync new/; a reader never sees a partial file. tmp/, new/ and cur/ exist.
  - One file per message (not per recipient), prefixed with
    ``Return-Path: <sender>``, ``X-Mta-Original-Recipients: a, b`` and
    ``X-Mta-Queue-ID: id``; the body follows unchanged.
  - Every recipient is DELIVERED with ``250 2.0.0 captured in sandbox <path>``;
    health is always OK. A write error defers the message's recipients
    (451 4.3.0) — never a bounce, never a silent drop.
  - All file work runs in a worker thread, off the event loop. A large body
    (the spool's StoredBody) is copied in pieces, never held whole.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Sequence

from mta.core.files import fsync_dir
from mta.core.envelope import Destination
from mta.core.outcome import DestinationHealth, RecipientFate, RecipientOutcome
from mta.core.reply import Reply
from mta.delivery.transport import DeliveryReport, OutboundMessage, TransportConfig

__all__ = ["SandboxTransport"]

_counter = itertools.count(1)


def _clean(text: str) -> str:
    # Addresses were validated on the way in; this only guarantees that a
    # header line can never be split by what we prepend.
    return text.replace("\r", " ").replace("\n", " ")


class SandboxTransport:
    def __init__(self, maildir: str):
        self.maildir = maildir
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._ready = False

    def reconfigure(self, cfg: TransportConfig) -> None:
        """Nothing of the sandbox is configurable at run time (the maildir
        is under state_dir, which needs a restart)."""

    async def close(self) -> None:
        """Nothing is kept open between deliveries."""

    def _ensure_dirs(self) -> None:
        if self._ready:
            return
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        self._ready = True

    def _write(self, msg: OutboundMessage) -> str:
        self._ensure_dirs()
        now = time.time()
        # Maildir unique name: seconds . M<µs>P<pid>Q<seq>_<queue id> . host
        name = (f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}"
                f"_{msg.queue_id}.{self._host}")
        tmp = os.path.join(self.maildir, "tmp", name)
        new = os.path.join(self.maildir, "new", name)
        originals = _clean(", ".join(a for _, a in msg.recipients))
        header = (f"Return-Path: <{_clean(msg.sender)}>\r\n"
                  f"X-Mta-Original-Recipients: {originals}\r\n"
                  f"X-Mta-Queue-ID: {_clean(msg.queue_id)}\r\n").encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                if isinstance(msg.body, (bytes, bytearray)):
                    f.write(msg.body)
                else:                       # a large body: copied in pieces
                    for piece in msg.body.iter_chunks():
                        f.write(piece)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, new)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(os.path.join(self.maildir, "new"))
        return new

    def _write_all(self, messages: Sequence[OutboundMessage]) -> list[str | OSError]:
        results: list[str | OSError] = []
        for msg in messages:
            try:
                results.append(self._write(msg))
            except OSError as exc:
                results.append(exc)
        return results

    async def deliver(self, destination: Destination,
                      messages: Sequence[OutboundMessage]) -> DeliveryReport:
        results = await asyncio.to_thread(self._write_all, list(messages))
        outcomes: dict[str, dict[int, RecipientOutcome]] = {}
        for msg, result in zip(messages, results):
            if isinstance(result, OSError):
                outcome = RecipientOutcome(RecipientFate.DEFERRED, Reply(
                    451, "4.3.0", f"sandbox capture into {self.maildir} failed: {result}"))
            else:
                outcome = RecipientOutcome(RecipientFate.DELIVERED, Reply(
                    250, "2.0.0", f"captured in sandbox {result}"), remote_host="sandbox")
            outcomes[msg.queue_id] = {idx: outcome for idx, _ in msg.recipients}
        return DeliveryReport(outcomes, DestinationHealth.OK)
