"""A message's live timeline: its new ledger events as server-sent events.

One job: serve GET /console/messages/{id}/live?after=SEQ (the message
page's `<table id="timeline" data-stream=…>`, read by static/console.js):
poll the backend every POLL seconds for the message's events after SEQ and
send each as `event: row` (the rendered `<tr id="ev-SEQ">`, one line, with
`id: SEQ` so a reconnecting EventSource resumes after it), recipient
changes as `event: state` ({"id": element id, "text"}), a `: keepalive`
comment every KEEPALIVE seconds, and `event: end` once every recipient is
final and its events are sent.

Public API:
    LiveStreams(backend, limit=None, poll=None, keepalive=None, lifetime=None)
        (None: MAX_STREAMS, POLL, KEEPALIVE, LIFETIME, read as a stream starts)
        .handle(request) -> web.StreamResponse    the route's handler
        .open                                     streams open now
    LiveBackend        what the streams call (a part of MessagesBackend)
    event_summary(event) -> str     a timeline row's detail, from allowed keys only
    event_row(event) -> str     one timeline row (message_event_row.html) on one line
    sse(kind, data, event_id=None) -> bytes     one server-sent event
    MAX_STREAMS, POLL, KEEPALIVE, LIFETIME, BATCH

Invariants:
- At most `limit` streams at once in this process (more: 429, before any
  backend read); each ends after `lifetime` seconds (the browser
  reconnects with Last-Event-ID if the message is still in flight), when
  the client goes away (the next write fails, or the transport closes),
  and within one poll once the daemon is stopping, so a stream never holds
  up shutdown.
- The message's visibility is checked (backend.updates with full=True)
  before the response starts: unknown or another tenant's is a 404 page.
- Every poll is one backend read of a bounded page of events (BATCH);
  recipients are read again only when events came (every state change
  writes an event in its own transaction), and the poll after one that
  had events is a full one (recipients read before the events), so "end"
  is sent only once every event of the finished message was. An idle
  stream costs one indexed read per poll. Nothing blocks the loop.
- Rows are rendered by the same template as the page, through Jinja2's
  autoescaping; SSE data lines never carry a raw line break.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from mta.console.backend import ConsoleError, Viewer
from mta.console.render import fragment, viewer, when

__all__ = ["LiveStreams", "LiveBackend", "event_summary", "event_row", "sse", "MAX_STREAMS", "POLL",
           "KEEPALIVE", "LIFETIME", "BATCH"]

log = logging.getLogger("mta.console")

MAX_STREAMS = 50            # per process
POLL = 0.5                  # seconds between reads
KEEPALIVE = 15.0            # seconds without a write before a comment
LIFETIME = 600.0            # seconds a stream may last
BATCH = 100                 # events per read
_MAX_SEQ = 2 ** 63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")          # ASCII only: str.isdigit takes "²"


class LiveBackend(Protocol):
    """The part of MessagesBackend (mta.console.pages_messages) a stream uses."""

    def closing(self) -> bool: ...

    async def updates(self, viewer: Viewer, message_id: str, after: int, limit: int,
                      full: bool) -> dict[str, Any] | None: ...


def _clip(value: object, most: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= most else text[:most - 1] + "…"


def event_summary(event: Mapping[str, Any]) -> str:
    """The short detail of a ledger event: reply, remote, TLS (policy and
    check), bounce category, next attempt, who acted… Only these keys are
    read, so nothing else in a detail reaches a page."""
    d = event.get("detail")
    d = d if isinstance(d, Mapping) else {}
    parts: list[str] = []

    def has(key: str) -> bool:
        return d.get(key) not in (None, "", [], {})
    if has("reply"):
        parts.append(_clip(d["reply"]))
    if has("remote_host"):
        ip = f" [{_clip(d['remote_ip'], 60)}]" if has("remote_ip") else ""
        parts.append(f"via {_clip(d['remote_host'], 120)}{ip}")
    if has("tls") or has("tls_policy"):
        policy = ", ".join(_clip(d[k], 80) for k in ("tls_policy", "tls_check") if has(k))
        parts.append(f"TLS {_clip(d.get('tls') or 'none', 60)}"
                     + (f" (policy {policy})" if policy else ""))
    if has("reason"):
        status = f" {_clip(d['status'], 20)}" if has("status") else ""
        parts.append(f"category {_clip(d['reason'], 60)}{status}")
    if d.get("sync") is False:
        parts.append("reported by mail")
    if has("attempts"):
        parts.append(f"attempt {_clip(d['attempts'], 12)}")
    if isinstance(d.get("next_attempt"), (int, float)):
        parts.append(f"next attempt {when(d['next_attempt'])}")
    for key, label in (("by", "by"), ("previous_state", "was"), ("stage", "at"),
                       ("feedback_type", "feedback"), ("duplicate_of", "duplicate of"),
                       ("dsn_queue_id", "DSN"), ("kind", "kind"), ("mode", "mode")):
        if has(key):
            parts.append(f"{label} {_clip(d[key], 80)}")
    if event.get("type") == "received":
        if isinstance(d.get("size"), int):
            parts.append(f"{d['size']} bytes")
        for key in ("listener", "client_ip"):
            if has(key):
                parts.append(f"{key.replace('_', ' ')} {_clip(d[key], 60)}")
    return " · ".join(parts)


def event_row(event: Mapping[str, Any]) -> str:
    """The timeline row of `event` ({"seq", "at", "type", "recipient",
    "detail"}), as the page renders it, on one line."""
    html = fragment("message_event_row.html", e={**event, "summary": event_summary(event)})
    return " ".join(html.splitlines()).strip()


def sse(kind: str, data: str, event_id: int | None = None) -> bytes:
    """One server-sent event; `data` loses its line breaks (one data line)."""
    line = " ".join(data.splitlines())
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {line}\n\n".encode()


def _state(element: str, text: str) -> bytes:
    return sse("state", json.dumps({"id": element, "text": text}))


def _seq(value: str | None) -> int | None:
    if value is None or not _DIGITS.fullmatch(value) or int(value) > _MAX_SEQ:
        return None
    return int(value)


def _cells(r: Mapping[str, Any]) -> dict[str, str]:
    """The message page's per-recipient cells a state event may change."""
    idx = r.get("idx")
    return {f"rcpt-state-{idx}": str(r.get("state", "")),
            f"rcpt-attempts-{idx}": str(r.get("attempts", 0)),
            f"rcpt-next-{idx}": when(r.get("next_attempt")),
            f"rcpt-reply-{idx}": " ".join(str(r.get("last_reply") or "—").split())}


FINISHED = "Finished: every recipient has a final state."
WATCHING = "Live: new events appear here as they happen."


class LiveStreams:
    """The live timelines of one console app. The bounds left None are the
    module's constants, read when a stream starts."""

    def __init__(self, backend: LiveBackend, *, limit: int | None = None,
                 poll: float | None = None, keepalive: float | None = None,
                 lifetime: float | None = None):
        self.b = backend
        self.limit, self.poll, self.keepalive, self.lifetime = limit, poll, keepalive, lifetime
        self.open = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        mid = request.match_info.get("id", "")
        if not (0 < len(mid) <= 64 and mid.isascii() and mid.isalnum()):
            raise ConsoleError(404, "no such message")
        raw = request.query.get("after", "0")
        after = _seq(raw)
        if after is None:
            raise ConsoleError(400, "after: a sequence number (0 or more)", "after")
        resumed = _seq(request.headers.get("Last-Event-ID"))
        after = max(after, resumed or 0)
        if self.open >= (MAX_STREAMS if self.limit is None else self.limit):
            raise ConsoleError(429, "too many live timelines are open; reload the page later")
        self.open += 1
        try:
            who = viewer(request)
            first = await self.b.updates(who, mid, after, BATCH, True)
            if first is None:
                raise ConsoleError(404, "no such message")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "X-Accel-Buffering": "no"})
            await response.prepare(request)
            try:
                await self._stream(request, response, who, mid, after, first)
            except (ConnectionError, asyncio.TimeoutError):
                pass                              # the client went away
            except Exception as exc:              # the page is sent: no error page now
                log.warning("event=console_live_failed id=%s error=%s", mid,
                            type(exc).__name__)
            return response
        finally:
            self.open -= 1

    async def _stream(self, request: web.Request, response: web.StreamResponse, who: Viewer,
                      mid: str, after: int, upd: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        poll = POLL if self.poll is None else self.poll
        keepalive = KEEPALIVE if self.keepalive is None else self.keepalive
        deadline = loop.time() + (LIFETIME if self.lifetime is None else self.lifetime)
        shown: dict[str, str] = {}
        done = False
        last_write = 0.0

        async def send(data: bytes) -> None:
            nonlocal last_write
            await response.write(data)
            last_write = loop.time()
        await send(_state("live-status", WATCHING))
        while True:
            events = upd["events"]
            for e in events:
                after = max(after, int(e["seq"]))
                await send(sse("row", event_row(e), after))
            for r in upd["recipients"] or ():
                for element, text in _cells(r).items():
                    if shown.get(element) != text:
                        shown[element] = text
                        await send(_state(element, text))
            done = bool(upd["done"]) if upd["done"] is not None else done
            if done and len(events) < BATCH:
                await send(_state("live-status", FINISHED))
                await send(_state("message-status", "finished"))
                await send(sse("end", "done"))
                return
            if len(events) < BATCH:               # caught up: wait for more
                await asyncio.sleep(poll)
            transport = request.transport
            if self.b.closing() or loop.time() >= deadline or transport is None \
                    or transport.is_closing():
                return
            if loop.time() - last_write >= keepalive:
                await send(b": keepalive\n\n")
            # after events came, a full read: the done it gives covers them all
            found = await self.b.updates(who, mid, after, BATCH, bool(events))
            if found is None:                     # gone from the index
                await send(sse("end", "gone"))
                return
            upd = found
