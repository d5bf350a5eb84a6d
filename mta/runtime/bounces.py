"""Bounces and complaints that arrive by mail (the inbound listener's back end).

One job: decide which inbound recipients we accept, and turn each accepted
message into facts: a parsed bounce or complaint matched to the original
message and recipient is recorded like a synchronous failure
(`spool.record_async`, with the suppression outcome in the same
transaction); mail for postmaster@/abuse@ is kept in a maildir for people.

API
    BounceProcessor(*, spool, codec, hostname, capture_dir, clock,
                    bounce_domains, feedback_addresses=(), observer=None,
                    capture_max_bytes=256 MiB, capture_max_messages=10000,
                    capture_rescan_interval=60.0)
        spool             BounceSpool: get_message, record_async (the Spool)
        .classify_rcpt(address) -> "bounce" | "postmaster" | "feedback" | None
        await .deliver(InboundMessage) -> Reply      the DATA reply; a report is
                          parsed from the message's first MiB (InboundMessage.body:
                          its in-memory head, core.spill), where every report
                          format puts the report; the capture keeps all of it
        .reconfigure(cfg) config reload (cfg: the Config in force): [bounces]
                          feedback_addresses, capture_dir (default: the state
                          dir's inbound/, runtime.paths), capture_max_bytes,
                          capture_max_messages
        .capture          the postmaster@/abuse@ maildir (capture.Capture)
        .stats            Counter of bounce_received kinds (tests, debugging)

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

The postmaster@/abuse@ capture (capture.py: a maildir with a quota) is
written first: over quota or unwritable, the DATA reply is its 452 4.3.1
(552 5.3.4 for a message bigger than the whole quota), counted as
`capture_refused(reason)`; a transaction that also carries bounces is
refused whole, so its retry applies them exactly once. Transactions without
postmaster@/abuse@ never touch the capture and work when it is full.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mta.core import AddressOutcome, Clock, Observer, Reply
from mta.core.files import atomic_write
from mta.core.logfmt import event
from mta.core.reasons import category_of
from mta.mail.bounces import BounceRecipient, BounceReport, parse
from mta.mail.verp import VerpCodec
from mta.runtime.capture import (
    CAPTURE_MAX_BYTES,
    CAPTURE_MAX_MESSAGES,
    CAPTURE_RESCAN_INTERVAL,
    Capture,
)
from mta.runtime.paths import capture_dir as capture_dir_of
from mta.runtime.paths import state_paths

if TYPE_CHECKING:
    from mta.config import Config
    from mta.server.inbound import InboundMessage
    from mta.spool import MessageView, RecipientView

__all__ = ["OK", "BounceProcessor", "BounceSpool", "load_or_create_secret"]

log = logging.getLogger("mta.bounces")

_OUR_RECEIVED = re.compile(rb"\(mta\) with \w+ id ([0-9A-HJKMNP-TV-Z]{16})")
OK = Reply(250, "2.0.0", "Ok: report received")
_MAX_TOKENS = 16          # VERP tokens looked at per report (each is one HMAC)

# (queue id, the recipient, the report's entry for it)
_Target = tuple[str, "RecipientView", BounceRecipient]


class BounceSpool(Protocol):
    """The spool as the bounce processor needs it (mta.spool.Spool)."""

    async def get_message(self, queue_id: str) -> MessageView | None: ...

    async def record_async(self, queue_id: str, rcpt_idx: int, *, state: str,
                           reply: Reply | None, detail: str, at: float,
                           outcomes: Sequence[AddressOutcome] = (),
                           event_detail: dict[str, Any] | None = None) -> bool: ...


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
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
    def __init__(self, *, spool: BounceSpool, codec: VerpCodec, hostname: str,
                 capture_dir: str | os.PathLike[str], clock: Clock,
                 bounce_domains: Callable[[], Iterable[str]],
                 feedback_addresses: Iterable[str] = (), observer: Observer | None = None,
                 capture_max_bytes: int = CAPTURE_MAX_BYTES,
                 capture_max_messages: int = CAPTURE_MAX_MESSAGES,
                 capture_rescan_interval: float = CAPTURE_RESCAN_INTERVAL):
        self.observer = observer or Observer()
        self.spool, self.codec, self.clock = spool, codec, clock
        self.hostname = hostname.lower()
        self.bounce_domains = bounce_domains
        self.feedback = {a.lower() for a in feedback_addresses}
        self.stats: collections.Counter[str] = collections.Counter()
        self.capture = Capture(capture_dir, clock=clock, max_bytes=capture_max_bytes,
                               max_messages=capture_max_messages,
                               rescan_interval=capture_rescan_interval)
        self._token_re = re.compile(
            rb"(?<![A-Za-z0-9.+_=-])" + re.escape(codec.prefix.encode())
            + rb"\+[0-9A-Za-z]{16}-[0-9]{1,19}-[A-Za-z2-7]{16}@", re.IGNORECASE)
        # Asynchronous reports are applied one at a time: the state a
        # recipient had before is then the state our write changed.
        self._apply_lock = asyncio.Lock()

    def reconfigure(self, cfg: Config) -> None:
        b = cfg.bounces
        self.feedback = {a.lower() for a in b.feedback_addresses}
        self.capture.reconfigure(capture_dir_of(cfg, state_paths(cfg)), b.capture_max_bytes,
                                 b.capture_max_messages)

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
    async def deliver(self, msg: InboundMessage) -> Reply:
        kinds = set(msg.kinds)
        if "postmaster" in kinds:
            refused, reason = await asyncio.to_thread(self.capture.store, msg)
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

    async def _apply(self, rcpt: str, kind: str, report: BounceReport, body: bytes) -> None:
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
        targets: list[_Target]
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

    async def _record(self, qid: str, recipient: RecipientView, entry: BounceRecipient,
                      report: BounceReport, kind: str, now: float) -> None:
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
            event_detail={"class": outcome.kind,
                          "reason": "complaint" if complaint else category_of(entry.reason),
                          "reason_detail": entry.reason, "status": entry.status,
                          "diagnostic": entry.diagnostic[:500],
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

    async def _match_by_tokens(self, tokens: list[tuple[str, int]],
                               failures: list[BounceRecipient]) -> list[_Target]:
        out = []
        for qid, idx in tokens:
            view = await self.spool.get_message(qid)
            match = next((r for r in view.recipients if r.idx == idx), None) if view else None
            if match is not None:
                out.append((qid, match, _entry_for(match.address, failures)))
        return out

    async def _match_by_headers(self, body: bytes, failures: list[BounceRecipient]
                                ) -> tuple[list[_Target], str]:
        """(targets, why-not): only recipients the report itself names."""
        named = [f for f in failures if not f.inferred]
        qids = list(dict.fromkeys(m.decode() for m in _OUR_RECEIVED.findall(body)))
        views = [v for v in [await self.spool.get_message(q) for q in qids[:_MAX_TOKENS]] if v]
        if not views:
            return [], "no message of ours matches"
        if not named:
            return [], "the report names no recipient (and carries no VERP token)"
        out: list[_Target] = []
        seen: set[tuple[str, int]] = set()
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


def _entry_for(address: str, failures: list[BounceRecipient]) -> BounceRecipient:
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


def _reply_of(entry: BounceRecipient) -> Reply | None:
    code = entry.replycode
    status = entry.status or ""
    text = (entry.diagnostic or "asynchronous bounce").replace("\r", " ").replace("\n", " ")[:400]
    if not code and status[:1] in ("4", "5"):
        code = int(status[0]) * 100 + 50
    if not code or not 400 <= int(code) <= 599:
        return None
    esc = status if status[:1] == str(code)[0] else ""
    return Reply(int(code), esc, text)
