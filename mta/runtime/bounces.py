"""Bounces and complaints that arrive by mail (the inbound listener's back end).

One job: decide which inbound recipients we accept, and turn each accepted
message into facts: a parsed bounce or complaint matched to the original
message and recipient is recorded like a synchronous failure
(`spool.record_async`, with the suppression outcome in the same
transaction); mail for postmaster@/abuse@ is kept in a maildir for people.

Matching, in order:
1. the VERP token of the bounce address (`b+<token>@<bounce domain>`): an
   HMAC under `state_dir/verp.key`, so a forged bounce cannot suppress anyone;
   a bad token is logged and counted, never acted on;
2. for feedback-loop addresses and postmaster@ (no token): our queue id in the
   returned message's headers (`Received: … (mta) … id <QID>`) plus the
   reported recipient address, which must be a recipient of that message.
A report that matches nothing is logged and counted (`stats`, and the
observer's `bounce_received(kind)`); the reply is still 250:
the remote did its job, and a 5xx would only make it retry or bounce back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable, Iterable

from mta.core import AddressOutcome, Clock, Observer, Reply
from mta.core.files import atomic_write, fsync_dir
from mta.mail.bounces import parse
from mta.mail.verp import VerpCodec
from mta.runtime.logs import event

log = logging.getLogger("mta.bounces")

_OUR_RECEIVED = re.compile(rb"\(mta\) with \w+ id ([0-9A-HJKMNP-TV-Z]{16})")
OK = Reply(250, "2.0.0", "Ok: report received")


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
                 feedback_addresses: Iterable[str] = (), observer: Observer = Observer()):
        self.observer = observer
        self.spool, self.codec, self.clock = spool, codec, clock
        self.hostname = hostname.lower()
        self.capture_dir = Path(capture_dir)
        self.bounce_domains = bounce_domains
        self.feedback = {a.lower() for a in feedback_addresses}
        self.stats: collections.Counter[str] = collections.Counter()

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
            await asyncio.to_thread(self._capture, msg)
        if kinds & {"bounce", "feedback"}:
            report = await asyncio.to_thread(parse, msg.body)
            for rcpt, kind in zip(msg.rcpts, msg.kinds):
                if kind in ("bounce", "feedback"):
                    await self._apply(rcpt, kind, report, msg.body)
        return OK

    async def _apply(self, rcpt: str, kind: str, report, body: bytes) -> None:
        now = self.clock.now()
        failures = [r for r in report.recipients if r.class_ in ("hard", "soft", "complaint")]
        if not failures:
            self._count("not_a_failure")
            event(log, "inbound_ignored", to=rcpt, kind=report.kind, why="no failed recipient")
            return
        token = self.codec.decode(rcpt) if kind == "bounce" else None
        if kind == "bounce" and token is None:
            self._count("bad_token")
            event(log, "bounce_unmatched", level=logging.WARNING, to=rcpt, why="bad or missing token",
                  kind=report.kind)
            return
        if token is not None:
            qid, idx = token
            view = await self.spool.get_message(qid)
            match = next((r for r in view.recipients if r.idx == idx), None) if view else None
            targets = [(qid, match, failures[0])] if match else []
            if len(failures) > 1 and match:
                # a multi-recipient report to a per-recipient token: use the entry
                # for our recipient when it is there
                same = [f for f in failures if f.address.lower() == match.address.lower()]
                targets = [(qid, match, (same or failures)[0])]
        else:
            targets = await self._match_by_headers(body, failures)
        if not targets:
            self._count("unmatched")
            event(log, "bounce_unmatched", level=logging.WARNING, to=rcpt, kind=report.kind,
                  why="no message of ours matches")
            return
        for qid, recipient, entry in targets:
            complaint = report.kind == "arf" or entry.class_ == "complaint"
            outcome = AddressOutcome(recipient.address, "complaint" if complaint else entry.class_,
                                     now, qid, entry.diagnostic or entry.status)
            reply = _reply_of(entry)
            # Only a report of a final failure bounces the recipient; a "delayed"
            # report (4.x.x, the remote still tries) is recorded and counted as
            # a soft failure, and the recipient keeps its state.
            failed = not complaint and (entry.action in ("failed", "")
                                        and not entry.status.startswith("4"))
            ok = await self.spool.record_async(
                qid, recipient.idx, state="bounced" if failed else "", reply=reply,
                detail=f"{report.kind} via {kind}: {entry.diagnostic or entry.status}"[:500],
                at=now, outcomes=[outcome],
                event_detail={"class": outcome.kind, "reason": entry.reason,
                              "status": entry.status, "diagnostic": entry.diagnostic[:500],
                              "feedback_type": entry.feedback_type or None,
                              "report_kind": report.kind, "sync": False})
            self._count("complaint" if complaint else "bounce")
            event(log, "complained" if complaint else "bounced_async", id=qid,
                  rcpt=recipient.address, kind=report.kind, status=entry.status or None,
                  klass=outcome.kind, recorded=ok, feedback_type=entry.feedback_type or None)

    async def _match_by_headers(self, body: bytes, failures):
        out = []
        for qid in dict.fromkeys(m.decode() for m in _OUR_RECEIVED.findall(body)):
            view = await self.spool.get_message(qid)
            if view is None:
                continue
            by_addr = {r.address.lower(): r for r in view.recipients}
            for f in failures:
                r = by_addr.get(f.address.lower())
                if r is not None:
                    out.append((qid, r, f))
        return out

    def _capture(self, msg) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.capture_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time():.6f}.{os.getpid()}.{socket.gethostname()}"
        header = (f"Return-Path: <{msg.mail_from}>\r\nX-Mta-Inbound-To: "
                  f"{', '.join(msg.rcpts)}\r\nX-Mta-Inbound-From-IP: {msg.client_ip}\r\n").encode()
        tmp = self.capture_dir / "tmp" / name
        atomic_write(tmp, header + msg.body, 0o600)
        os.rename(tmp, self.capture_dir / "new" / name)
        fsync_dir(self.capture_dir / "new")


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
