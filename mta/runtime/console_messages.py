"""The Messages pages' backend over the running daemon.

One job: implement mta.console.pages_messages.MessagesBackend — searches
of the spool index (newest first, with received-time bounds), a message
with its tenant, header fields, attempts and ledger events, the live
timeline's updates, and the operator actions (through RuntimeAdmin, as
the admin API does them) — answering each viewer only about its own
tenant's messages.

Public API:
    ConsoleMessages(daemon)      a MessagesBackend (`parts.messages`)
    header_fields(raw, max_fields=200, max_value=2000) -> ([(name, value)], truncated)

Invariants:
- A message's tenant is the tenant owning its credential
  (`TenantService.resolve`; "default" without a tenant service). A
  tenant's viewer gets None (the page's 404) for any other tenant's
  message and searches with its own tenant as the filter, in SQL.
- Reads go through the spool's reader connection (async); header parsing
  runs in a worker thread; nothing here touches SQLite or files itself.
- Header fields come from the first HEAD_BYTES of the stored message only
  (`Spool.read_body(limit=…)`); the body is never returned.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.header
import re
from collections import Counter
from typing import Any

from mta.admin.backend import ActionRefused
from mta.console.backend import ConsoleError, Viewer
from mta.console.pages_messages import MessageQuery
from mta.core.envelope import RecipientState
from mta.core.errors import StorageError
from mta.runtime.admin import RuntimeAdmin
from mta.spool import MessageFilter, Spool
from mta.spool.views import MessageView

__all__ = ["ConsoleMessages", "header_fields", "HEAD_BYTES"]

HEAD_BYTES = 64 * 1024
_STATE_ORDER = {s.value: i for i, s in enumerate(RecipientState)}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NAME = re.compile(r"[!-9;-~]{1,100}")           # RFC 5322 ftext, bounded


def _decode(value: str) -> str:
    """An unfolded header value with its RFC 2047 encoded words decoded,
    where they decode (else as it is)."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return value


def header_fields(raw: bytes, max_fields: int = 200,
                  max_value: int = 2000) -> tuple[list[tuple[str, str]], bool]:
    """The header fields of a message's first bytes: [(name, value)] in
    order, values unfolded, decoded (RFC 2047; 8-bit bytes as UTF-8 with
    replacement) and without control characters; and whether the header
    block was cut (longer than `raw`, or more than `max_fields` fields)."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0),
              default=-1)
    truncated = end < 0 and len(raw) >= HEAD_BYTES
    head = (raw if end < 0 else raw[:end]).decode("utf-8", "replace")
    fields: list[tuple[str, str]] = []
    for line in head.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            if len(value) < 4 * max_value:
                fields[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not _NAME.fullmatch(name.strip()):
            continue                    # not a field (a mbox From_ line, junk)
        if len(fields) == max_fields:
            truncated = True
            break
        fields.append((name.strip(), value.strip()))
    out = []
    for name, value in fields:
        text = _CONTROL.sub(" ", _decode(value[:4 * max_value]))
        out.append((name, text if len(text) <= max_value else text[:max_value - 1] + "…"))
    return out, truncated


def _states(view: MessageView) -> list[list[Any]]:
    counts = Counter(r.state for r in view.recipients)
    return [[s, n] for s, n in sorted(counts.items(), key=lambda x: _STATE_ORDER.get(x[0], 99))]


def _recipient(r: Any) -> dict[str, Any]:
    return {"idx": r.idx, "address": r.address, "state": r.state, "attempts": r.attempts,
            "next_attempt": r.next_attempt if r.state == "queued" else None,
            "last_reply": r.last_reply, "last_remote": r.last_remote}


def _event(e: Any) -> dict[str, Any]:
    detail = e.detail if isinstance(e.detail, dict) else {}
    return {"seq": e.seq, "at": e.at, "type": e.type, "recipient": e.recipient,
            "detail": detail}


class ConsoleMessages:
    """MessagesBackend over a running Daemon (spool, tenants, RuntimeAdmin)."""

    def __init__(self, daemon: Any):
        self.d = daemon
        self.admin = RuntimeAdmin(daemon)

    @property
    def spool(self) -> Spool:
        return self.admin.spool          # RuntimeError until the daemon opened it

    def now(self) -> float:
        return float(self.d.clock.now())

    def closing(self) -> bool:
        return bool(self.d.stopping)

    async def tenant_names(self) -> list[str]:
        tenants = getattr(self.d, "tenants", None)
        return ["default"] if tenants is None else list(tenants.names())

    async def _tenant_of(self, credential: str | None) -> str:
        tenants = getattr(self.d, "tenants", None)
        return "default" if tenants is None else str(await tenants.resolve(credential))

    async def _visible(self, viewer: Viewer, message_id: str) -> tuple[MessageView, str] | None:
        view = await self.spool.get_message(message_id)
        if view is None:
            return None
        tenant = await self._tenant_of(view.credential)
        if viewer.tenant is not None and tenant != viewer.tenant:
            return None
        return view, tenant

    # ---- search ----------------------------------------------------------------------
    async def search(self, viewer: Viewer, query: MessageQuery
                     ) -> tuple[list[dict[str, Any]], str | None]:
        state = query.state
        f = MessageFilter(ids=(query.queue_id,) if query.queue_id else (),
                          state=None if state in ("active", "all") else state,
                          domain=query.domain, sender=query.sender, recipient=query.recipient,
                          include_done=state != "active",
                          tenant=viewer.tenant if viewer.tenant is not None else query.tenant,
                          since=query.since, until=query.until, newest_first=True)
        try:
            views, cursor = await self.spool.list_page(f, query.limit, query.cursor)
        except ValueError:
            raise ConsoleError(400, "cursor: not a cursor from a Next page link",
                               "cursor") from None
        tenants = {c: await self._tenant_of(c) for c in {v.credential for v in views}}
        rows = [{"id": v.id, "received_at": v.received_at, "sender": v.sender,
                 "recipients": [r.address for r in v.recipients[:3]],
                 "recipient_count": len(v.recipients), "states": _states(v),
                 "tenant": tenants[v.credential], "is_dsn": v.is_dsn, "done": v.done}
                for v in views]
        return rows, cursor

    # ---- one message -------------------------------------------------------------------
    async def _headers(self, message_id: str) -> tuple[list[tuple[str, str]] | None, bool]:
        try:
            raw = await self.spool.read_body(message_id, limit=HEAD_BYTES)
        except (KeyError, StorageError):
            return None, False              # reclaimed (done) or unreadable
        return await asyncio.to_thread(header_fields, raw)

    async def message(self, viewer: Viewer, message_id: str,
                      events: int) -> dict[str, Any] | None:
        found = await self._visible(viewer, message_id)
        if found is None:
            return None
        view, tenant = found
        headers, truncated = await self._headers(message_id)
        evs = (await self.spool.ledger.message_events(message_id, limit=events + 1)
               if events > 0 else [])
        address = {r.idx: r.address for r in view.recipients}
        return {"id": view.id, "sender": view.sender, "received_at": view.received_at,
                "size": view.size, "tenant": tenant, "credential": view.credential or None,
                "is_dsn": view.is_dsn, "done": view.done, "test": view.test,
                "not_before": view.not_before,
                "held": any(r.state == "held" for r in view.recipients),
                "recipients": [_recipient(r) for r in view.recipients],
                "attempts": [_attempt(a, address, evs) for a in view.attempts],
                "headers": headers, "headers_truncated": truncated,
                "events": [_event(e) for e in evs[:events]], "events_more": len(evs) > events}

    async def updates(self, viewer: Viewer, message_id: str, after: int, limit: int,
                      full: bool) -> dict[str, Any] | None:
        view = None
        if full:                        # the view BEFORE the events: a done it says is safe
            found = await self._visible(viewer, message_id)
            if found is None:
                return None
            view = found[0]
        evs = await self.spool.ledger.message_events(message_id, after=after, limit=limit)
        out: dict[str, Any] = {"events": [_event(e) for e in evs], "recipients": None,
                               "done": None}
        if view is not None:
            out["done"] = view.done
        elif evs:                       # read after the events: states only, done unknown
            view = await self.spool.get_message(message_id)
            if view is None:
                return None
        if view is not None:
            out["recipients"] = [_recipient(r) for r in view.recipients]
        return out

    # ---- actions -----------------------------------------------------------------------
    async def act(self, viewer: Viewer, message_id: str, action: str) -> dict[str, Any]:
        if not viewer.operator or await self._visible(viewer, message_id) is None:
            raise ConsoleError(404, "no such message")
        try:
            result = await self.admin.message_action(message_id, action)
        except KeyError:
            raise ConsoleError(404, "no such message") from None
        except ActionRefused as exc:
            raise ConsoleError(409, str(exc) or f"cannot {action} {message_id} now") from None
        if not result.get("affected"):
            raise ConsoleError(409, f"{action}: nothing changed — no recipient of {message_id} "
                               f"is in a state it applies to (or one is being delivered "
                               f"right now)")
        return result


def _attempt(a: Any, address: dict[int, str], events: list[Any]) -> dict[str, Any]:
    """An attempt as the page shows it; its TLS gains the policy and check of
    the ledger event it wrote, when the stored TLS does not already say them."""
    tls = a.tls
    if tls and "(" not in tls:
        for e in events:
            d = e.detail if isinstance(e.detail, dict) else {}
            if d.get("rcpt_idx") == a.rcpt_idx and d.get("tls_policy") \
                    and abs(e.at - (a.at + a.duration)) < 0.01:
                check = f", {d['tls_check']}" if d.get("tls_check") else ""
                tls = f"{tls} ({d['tls_policy']}{check})"
                break
    return {"at": a.at, "duration": a.duration, "recipient": address.get(a.rcpt_idx, ""),
            "state": a.state, "remote_host": a.remote_host, "remote_ip": a.remote_ip,
            "tls": tls, "reply": a.reply}
