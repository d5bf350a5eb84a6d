"""Bounces and complaints that arrive by mail (the inbound listener's back end).

One job: decide which inbound recipients we accept, and turn each accepted
message into facts: a parsed bounce or complaint matched to the original
message and recipient is recorded like a synchronous failure
(`spool.record_async`, with the suppression outcome in the same
transaction); mail for postmaster@/abuse@ is kept in a maildir for people.

API
    BounceProcessor(*, spool, codec, hostname, capture_dir, clock,
                    bounce_domains, feedback_addresses=(), observer=Observer(),
                    capture_max_bytes=256 MiB, capture_max_messages=10000,
                    capture_rescan_interval=60.0)
        .classify_rcpt(address) -> "bounce" | "postmaster" | "feedback" | None
        await .deliver(InboundMessage) -> Reply      the DATA reply; a report is
                          parsed from the message's first MiB (InboundMessage.body:
                          its in-memory head, core.spill), where every report
                          format puts the report; the capture keeps all of it
        .stats            Counter of bounce_received kinds (tests, debugging)
        .capture_dir, .capture_max_bytes, .capture_max_messages, .feedback
                          may be reassigned at run time (config reload); a new
                          capture_dir is scanned afresh on its next use.

Matching, in order:
1. a bounce to a VERP address (`b+<token>@<bounce domain>`): the token, an
   HMAC under `state_dir/verp.key`, names the message and the recipient, so a
   forged bounce cannot suppress anyone; a bad token is logged and counted,
   never acted on;
2. a report to a feedback-loop address that carries valid VERP tokens (the
   returned copy's Return-Path, ARF Original-Mail-From: each recipient's copy
   carries only its own): each token's recipient, whoever the report names;
3. otherwise, our queue id in the returned message's headers
   (`Received: … (mta) … id <QID>`, the same in every recipient's copy) only
   locates the message: the report acts only on a recipient it names itself
   (ARF Original-Rcpt-To, DSN Final-/Original-Recipient, a vendor notice's
   address) that is a recipient of that message. An address the parser only
   guessed (`inferred`: the returned message's To:, which every co-recipient's
   copy carries too) names nobody. So a co-recipient cannot get another
   recipient suppressed by reporting their own copy.
A report that matches nothing is logged (`event=bounce_unmatched why=…`)
and counted (`stats`, and the observer's `bounce_received(kind)`); the reply
is still 250: the remote did its job, and a 5xx would only make it retry or
bounce back. An asynchronous bounce that moves a recipient to bounced is also
counted as `recipient_outcome("bounced", class)`, once. It sends no DSN (the
sender learns from the ledger/webhook `bounced` event with sync=false, and
from the suppression list): see spool.record_async.

The postmaster@/abuse@ capture (a maildir, `capture_dir`) has a quota:
`capture_max_bytes` and `capture_max_messages` over its tmp/, new/ and cur/.
The usage is read from the directory once (on first use), then counted per
message written; while the quota is reached the directory is re-read at most
every `capture_rescan_interval` seconds (people delete what they read). Over
quota the DATA reply is 452 4.3.1 (552 5.3.4 for a message bigger than the
whole quota), logged once per change of state (`event=capture_quota_exceeded`
/ `event=capture_quota_ok`) and counted (`capture_refused("quota")`). A write
that fails (ENOSPC, EIO, a broken directory …) is 452 4.3.1 too, with one
`event=capture_failed` line (no traceback) and `capture_refused("error")`.
The capture is written first: a transaction that also carries bounces is
refused whole, so its retry applies them exactly once. Transactions without
postmaster@/abuse@ never touch the capture and work when it is full.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from mta.core import AddressOutcome, Clock, Observer, Reply
from mta.core.files import atomic_write, fsync_dir
from mta.mail.bounces import BounceRecipient, parse
from mta.mail.verp import VerpCodec
from mta.runtime.logs import event

log = logging.getLogger("mta.bounces")

_OUR_RECEIVED = re.compile(rb"\(mta\) with \w+ id ([0-9A-HJKMNP-TV-Z]{16})")
OK = Reply(250, "2.0.0", "Ok: report received")
CAPTURE_FULL = Reply(452, "4.3.1", "Mailbox quota for postmaster/abuse capture exceeded, "
                     "try again later")
CAPTURE_TOO_BIG = Reply(552, "5.3.4", "Message too big for the postmaster/abuse mailbox")
CAPTURE_FAILED = Reply(452, "4.3.1", "Insufficient system storage for postmaster/abuse mail, "
                       "try again later")
MiB = 1 << 20
CAPTURE_MAX_BYTES = 256 * MiB
CAPTURE_MAX_MESSAGES = 10_000
CAPTURE_RESCAN_INTERVAL = 60.0
_MAX_TOKENS = 16          # VERP tokens looked at per report (each is one HMAC)
_SUBDIRS = ("tmp", "new", "cur")


def load_or_create_secret(path: str | os.PathLike) -> bytes:
    """The VERP HMAC key: 32 random bytes, created once (0600)."""
    p = Path(path)
    try:
        data = p.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    data = os.urandom(32)
    atomic_write(p, data, 0o600)
    return data


class BounceProcessor:
    def __init__(self, *, spool, codec: VerpCodec, hostname: str, capture_dir: str | os.PathLike,
                 clock: Clock, bounce_domains: Callable[[], Iterable[str]],
                 feedback_addresses: Iterable[str] = (), observer: Observer = Observer(),
                 capture_max_bytes: int = CAPTURE_MAX_BYTES,
                 capture_max_messages: int = CAPTURE_MAX_MESSAGES,
                 capture_rescan_interval: float = CAPTURE_RESCAN_INTERVAL):
        self.observer = observer
        self.spool, self.codec, self.clock = spool, codec, clock
        self.hostname = hostname.lower()
        self.bounce_domains = bounce_domains
        self.feedback = {a.lower() for a in feedback_addresses}
        self.stats: collections.Counter[str] = collections.Counter()
        self.capture_max_bytes = capture_max_bytes
        self.capture_max_messages = capture_max_messages
        self.capture_rescan_interval = capture_rescan_interval
        # The capture's usage: (bytes, files), None until read from the
        # directory. Guarded by _lock (captures run in worker threads).
        self._lock = threading.Lock()
        self._usage: tuple[int, int] | None = None
        self._generation = 0          # bumped when capture_dir changes
        self._scanned_at = float("-inf")
        self._full = False            # for logging state changes only
        self._seq = itertools.count()
        self.capture_dir = Path(capture_dir)
        self._token_re = re.compile(
            rb"(?<![A-Za-z0-9.+_=-])" + re.escape(codec.prefix.encode())
            + rb"\+[0-9A-Za-z]{16}-[0-9]{1,19}-[A-Za-z2-7]{16}@", re.IGNORECASE)
        # Asynchronous reports are applied one at a time: the state a
        # recipient had before is then the state our write changed.
        self._apply_lock = asyncio.Lock()

    @property
    def capture_dir(self) -> Path:
        return self._capture_dir

    @capture_dir.setter
    def capture_dir(self, value: str | os.PathLike) -> None:
        with self._lock:
            if Path(value) == getattr(self, "_capture_dir", None):
                return                # a reload that kept it: keep counting
            self._capture_dir = Path(value)
            self._usage = None
            self._generation += 1
            self._scanned_at = float("-inf")

    def _count(self, kind: str) -> None:
        self.stats[kind] += 1
        self.observer.bounce_received(kind)

    # ---- which recipients the inbound listener accepts ---------------------
    def classify_rcpt(self, address: str) -> str | None:
        local, _, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        if address.lower() in self.feedback:
            return "feedback"
        if domain == self.hostname and local.lower() in ("postmaster", "abuse"):
            return "postmaster"
        if domain in {d.lower() for d in self.bounce_domains()}:
            return "bounce"
        return None

    # ---- one inbound message -------------------------------------------------
    async def deliver(self, msg) -> Reply:
        kinds = set(msg.kinds)
        if "postmaster" in kinds:
            refused, reason = await asyncio.to_thread(self._capture, msg)
            if refused is not None:
                self.observer.capture_refused(reason)
                return refused
        if kinds & {"bounce", "feedback"}:
            report = await asyncio.to_thread(parse, msg.body)
            for rcpt, kind in zip(msg.rcpts, msg.kinds):
                if kind in ("bounce", "feedback"):
                    async with self._apply_lock:
                        await self._apply(rcpt, kind, report, msg.body)
        return OK

    async def _apply(self, rcpt: str, kind: str, report, body: bytes) -> None:
        now = self.clock.now()
        failures = [r for r in report.recipients if r.class_ in ("hard", "soft", "complaint")]
        if not failures and report.kind != "arf":
            self._count("not_a_failure")
            event(log, "inbound_ignored", to=rcpt, kind=report.kind, why="no failed recipient")
            return
        if kind == "bounce":
            token = self.codec.decode(rcpt)
            if token is None:
                self._count("bad_token")
                event(log, "bounce_unmatched", level=logging.WARNING, to=rcpt,
                      why="bad or missing token", kind=report.kind)
                return
            tokens = [token]
        else:
            tokens = self._tokens_in(body)
        if tokens:
            targets = await self._match_by_tokens(tokens, failures)
            why = "no message of ours matches"
        else:
            targets, why = await self._match_by_headers(body, failures)
        if not targets:
            self._count("unmatched")
            event(log, "bounce_unmatched", level=logging.WARNING, to=rcpt, kind=report.kind,
                  why=why)
            return
        for qid, recipient, entry in targets:
            await self._record(qid, recipient, entry, report, kind, now)

    async def _record(self, qid: str, recipient, entry, report, kind: str, now: float) -> None:
        complaint = report.kind == "arf" or entry.class_ == "complaint"
        outcome = AddressOutcome(recipient.address, "complaint" if complaint else entry.class_,
                                 now, qid, entry.diagnostic or entry.status)
        reply = _reply_of(entry)
        # Only a report of a final failure bounces the recipient; a "delayed"
        # report (4.x.x, the remote still tries) is recorded and counted as
        # a soft failure, and the recipient keeps its state.
        failed = not complaint and (entry.action in ("failed", "")
                                    and not entry.status.startswith("4"))
        before = await self._state_of(qid, recipient.idx) if failed else None
        ok = await self.spool.record_async(
            qid, recipient.idx, state="bounced" if failed else "", reply=reply,
            detail=f"{report.kind} via {kind}: {entry.diagnostic or entry.status}"[:500],
            at=now, outcomes=[outcome],
            event_detail={"class": outcome.kind, "reason": entry.reason,
                          "status": entry.status, "diagnostic": entry.diagnostic[:500],
                          "feedback_type": entry.feedback_type or None,
                          "report_kind": report.kind, "sync": False})
        moved = (ok and before in ("queued", "delivered")
                 and await self._state_of(qid, recipient.idx) == "bounced")
        if moved:
            self.observer.recipient_outcome("bounced", outcome.kind)
        self._count("complaint" if complaint else "bounce")
        extra = {"moved": moved} if failed else {"feedback_type": entry.feedback_type or None}
        event(log, "complained" if complaint else "bounced_async", id=qid,
              rcpt=recipient.address, kind=report.kind, status=entry.status or None,
              klass=outcome.kind, recorded=ok, **extra)

    async def _state_of(self, qid: str, idx: int) -> str | None:
        view = await self.spool.get_message(qid)
        if view is None:
            return None
        return next((r.state for r in view.recipients if r.idx == idx), None)

    def _tokens_in(self, body: bytes) -> list[tuple[str, int]]:
        """The valid VERP tokens anywhere in a report (Original-Mail-From,
        the returned copy's Return-Path, …), distinct, in order."""
        out: dict[tuple[str, int], None] = {}
        for n, m in enumerate(self._token_re.finditer(body)):
            if n >= _MAX_TOKENS * 4:
                break
            token = self.codec.decode(m.group(0).decode("ascii", "replace"))
            if token is not None:
                out[token] = None
                if len(out) >= _MAX_TOKENS:
                    break
        return list(out)

    async def _match_by_tokens(self, tokens, failures):
        out = []
        for qid, idx in tokens:
            view = await self.spool.get_message(qid)
            match = next((r for r in view.recipients if r.idx == idx), None) if view else None
            if match is not None:
                out.append((qid, match, _entry_for(match.address, failures)))
        return out

    async def _match_by_headers(self, body: bytes, failures):
        """(targets, why-not): only recipients the report itself names."""
        named = [f for f in failures if not f.inferred]
        qids = list(dict.fromkeys(m.decode() for m in _OUR_RECEIVED.findall(body)))
        views = [v for v in [await self.spool.get_message(q) for q in qids[:_MAX_TOKENS]] if v]
        if not views:
            return [], "no message of ours matches"
        if not named:
            return [], "the report names no recipient (and carries no VERP token)"
        out, seen = [], set()
        for view in views:
            by_addr = {r.address.lower(): r for r in view.recipients}
            for f in named:
                r = by_addr.get(f.address.lower())
                if r is None and f.original_recipient:
                    r = by_addr.get(f.original_recipient.lower())
                if r is not None and (view.id, r.idx) not in seen:
                    seen.add((view.id, r.idx))
                    out.append((view.id, r, f))
        return out, "the named recipient is not a recipient of that message"

    # ---- the postmaster@/abuse@ capture --------------------------------------------
    def _capture(self, msg) -> tuple[Reply | None, str]:
        """Write msg into the capture maildir (worker thread). (None, "") when
        kept, else (the reply, the capture_refused reason)."""
        header = (f"Return-Path: <{msg.mail_from}>\r\nX-Mta-Inbound-To: "
                  f"{', '.join(msg.rcpts)}\r\nX-Mta-Inbound-From-IP: {msg.client_ip}\r\n").encode()
        data = header + msg.body
        tail = getattr(msg, "tail", None)     # a message over core.spill.HEAD_BYTES
        size = len(data) + (tail.length if tail is not None else 0)
        with self._lock:
            root, generation = self._capture_dir, self._generation
            try:
                refused = self._reserve(size)
            except OSError as exc:
                return self._failed(root, exc)
        if refused is not None:
            return refused, "quota"
        stored = False
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
            stored = True
            fsync_dir(root / "new")
            return None, ""
        except OSError as exc:
            if not stored:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                with self._lock:
                    if self._usage is not None and self._generation == generation:
                        b, n = self._usage
                        self._usage = (max(0, b - size), max(0, n - 1))
            return self._failed(root, exc)

    def _reserve(self, size: int) -> Reply | None:
        """Under _lock: count `size` bytes and one file in, or say why not."""
        if size > self.capture_max_bytes:
            event(log, "capture_refused", level=logging.WARNING, dir=self._capture_dir,
                  size=size, max_bytes=self.capture_max_bytes, why="message bigger than the quota")
            return CAPTURE_TOO_BIG
        now = self.clock.now()
        if self._usage is None:
            self._usage, self._scanned_at = _scan(self._capture_dir), now
        if self._over(size) and now - self._scanned_at >= self.capture_rescan_interval:
            self._usage, self._scanned_at = _scan(self._capture_dir), now
        b, n = self._usage
        if self._over(size):
            if not self._full:
                self._full = True
                event(log, "capture_quota_exceeded", level=logging.WARNING,
                      dir=self._capture_dir, bytes=b, messages=n,
                      max_bytes=self.capture_max_bytes, max_messages=self.capture_max_messages)
            return CAPTURE_FULL
        if self._full:
            self._full = False
            event(log, "capture_quota_ok", dir=self._capture_dir, bytes=b, messages=n,
                  max_bytes=self.capture_max_bytes, max_messages=self.capture_max_messages)
        self._usage = (b + size, n + 1)
        return None

    def _over(self, size: int) -> bool:
        b, n = self._usage
        return b + size > self.capture_max_bytes or n + 1 > self.capture_max_messages

    @staticmethod
    def _failed(root: Path, exc: OSError) -> tuple[Reply, str]:
        event(log, "capture_failed", level=logging.ERROR, dir=root,
              errno=errno.errorcode.get(exc.errno or 0, exc.errno),
              error=exc.strerror or type(exc).__name__,
              path=getattr(exc, "filename", None))
        return CAPTURE_FAILED, "error"


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


def _entry_for(address: str, failures) -> BounceRecipient:
    """The report's entry for our recipient `address` (by Final- or
    Original-Recipient), else its first; a complaint that names nobody
    (redacted) stands for the token's recipient."""
    low = address.lower()
    for f in failures:
        if low in (f.address.lower(), f.original_recipient.lower()):
            return f
    if failures:
        return failures[0]
    return BounceRecipient(address=address, class_="complaint", reason="feedback",
                           feedback_type="abuse", diagnostic="complaint naming no recipient")


def _reply_of(entry) -> Reply | None:
    code = entry.replycode
    status = entry.status or ""
    text = (entry.diagnostic or "asynchronous bounce").replace("\r", " ").replace("\n", " ")[:400]
    if not code and status[:1] in ("4", "5"):
        code = int(status[0]) * 100 + 50
    if not code or not 400 <= int(code) <= 599:
        return None
    esc = status if status[:1] == str(code)[0] else ""
    return Reply(int(code), esc, text)


def _write_with_tail(path: Path, head: bytes, tail) -> None:
    """`head` + the bytes of `tail` (core.spill.SpillFile, copied in bounded
    pieces) into a new file, fsynced; a failure removes nothing (the caller does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(head)
        while view:
            view = view[os.write(fd, view):]
        tail.copy_to(fd, len(head))
        os.fsync(fd)
    finally:
        os.close(fd)
