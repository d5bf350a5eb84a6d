"""The public listener's backend: one-click unsubscribe, clicks and opens.

One job: implement mta.api.public.PublicBackend over the running daemon's
spool (the suppression list, the ledger) and start the `[public]` server.

API:
    RuntimePublic(spool, state_dir, clock)      the PublicBackend
    await start_public(cfg, spool, clock, observer=None) -> PublicServer | None   (None: off;
                                                StartupError: cannot load or bind)

What each request does (the token was unsealed by mta.api.public: its fields
are ours, authenticated, and name one recipient or message):
  - unsubscribe [tenant, recipient, topic, queue id]: the recipient goes on the
    tenant's suppression list with reason "unsubscribed" (scope = the tenant,
    as the RCPT check consults it), the RCPT lookup is told at once, and a
    ledger event "unsubscribed" (the message's, so the tenant's webhooks get
    it) records the topic and how (one-click POST or the page's button).
    Unsubscribing twice is one entry and two events.
  - click [queue id, link index, recipient]: the URL is the message's own
    `received` detail's links[index] (never from the request), a ledger event
    "clicked" records it with `bot` and `label` (HEAD, a scanner's agent, a
    fetch within seconds of delivery: mta.policy.scanners).
  - opened [queue id, recipient]: a ledger event "opened" with `estimate: true`
    (opens are an estimate) and the label (an image proxy's fetch is "proxy").
Invariants: the User-Agent is recorded truncated to 200 characters (the
ledger's JSON escapes it; log lines escape through core.logfmt); no token
reaches the ledger or a log.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from mta.api.public import PublicServer, public_app
from mta.config import Config
from mta.core import Clock
from mta.core.observe import Observer
from mta.core.envelope import AddressOutcome, LedgerEvent
from mta.core.logfmt import event
from mta.mail.tokens import TokenKey
from mta.runtime.paths import state_paths
from mta.runtime.startup import StartupError
from mta.spool import Spool, suppression_admin

__all__ = ["RuntimePublic", "start_public"]

log = logging.getLogger("mta.public")
_UA_MAX = 200


def _ua(user_agent: str) -> str:
    return user_agent[:_UA_MAX]


class RuntimePublic:
    def __init__(self, spool: Spool, state_dir: str | Path, clock: Clock,
                 observer: Observer | None = None):
        self.spool, self.state_dir, self.clock = spool, Path(state_dir), clock
        self.observer = observer or Observer()

    def now(self) -> float:
        return self.clock.now()

    async def unsubscribe(self, fields: list[str | int], *, one_click: bool, client_ip: str,
                          user_agent: str) -> bool:
        if len(fields) != 4 or not all(isinstance(f, str) for f in fields):
            return False
        tenant, rcpt, topic, queue_id = (str(f) for f in fields)
        now = self.now()
        made = await asyncio.to_thread(self._suppress, rcpt, tenant, now)
        self.spool.suppressions.note([AddressOutcome(rcpt, "hard", now, scope=tenant)])
        await self.spool.ledger.append_events([LedgerEvent(
            "unsubscribed", now, queue_id=queue_id, recipient=rcpt,
            detail={"tenant": tenant, "topic": topic or None, "new": made,
                    "method": "one-click" if one_click else "page",
                    "user_agent": _ua(user_agent)})])
        event(log, "unsubscribed", queue_id=queue_id, tenant=tenant, new=made)
        self.observer.content_event("unsubscribed", "one-click" if one_click else "page")
        return True

    def _suppress(self, rcpt: str, tenant: str, now: float) -> bool:
        """Add (rcpt, tenant) as "unsubscribed" unless it is listed already;
        whether it was added."""
        for v in suppression_admin.get(self.state_dir, rcpt):
            if v.scope == tenant:
                return False
        suppression_admin.add(self.state_dir, rcpt, reason="unsubscribed", scope=tenant, now=now)
        return True

    async def click(self, fields: list[str | int], *, label: str | None, client_ip: str,
                    user_agent: str) -> str | None:
        if len(fields) != 3 or not isinstance(fields[0], str) or not isinstance(fields[1], int):
            return None
        queue_id, n, rcpt = str(fields[0]), int(fields[1]), str(fields[2])
        detail = (await self.spool.ledger.received_details([queue_id])).get(queue_id, {})
        links = detail.get("links")
        if not isinstance(links, list) or not 0 <= n < len(links) \
                or not isinstance(links[n], str):
            return None
        url: str = links[n]
        await self.spool.ledger.append_events([LedgerEvent(
            "clicked", self.now(), queue_id=queue_id, recipient=rcpt,
            detail={"url": url, "link": n, "bot": label is not None, "label": label,
                    "user_agent": _ua(user_agent)})])
        self.observer.content_event("clicked", label or "human")
        return url

    async def opened(self, fields: list[str | int], *, label: str | None, client_ip: str,
                     user_agent: str) -> None:
        if len(fields) != 2 or not isinstance(fields[0], str):
            return
        queue_id, rcpt = str(fields[0]), str(fields[1])
        if queue_id not in await self.spool.ledger.received_details([queue_id]):
            return
        await self.spool.ledger.append_events([LedgerEvent(
            "opened", self.now(), queue_id=queue_id, recipient=rcpt,
            detail={"estimate": True, "bot": label is not None, "label": label,
                    "user_agent": _ua(user_agent)})])
        self.observer.content_event("opened", label or "human")

    async def delivered_at(self, queue_id: str) -> float | None:
        events = await self.spool.ledger.message_events(queue_id)
        times = [float(e.at) for e in events if e.type == "delivered"]
        return max(times) if times else None


def _tls(cfg: Config) -> ssl.SSLContext | None:
    p = cfg.public
    if p.cert is None or p.key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(p.cert, p.key)
    return ctx


async def start_public(cfg: Config, spool: Spool, clock: Clock,
                       observer: Observer | None = None) -> PublicServer | None:
    """The [public] listener, started; None when it is off."""
    if cfg.public.address is None:
        return None
    try:
        key = await asyncio.to_thread(TokenKey.load_or_create, state_paths(cfg)["public_key"])
        ctx = _tls(cfg)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise StartupError(f"public: {exc}") from exc
    server = PublicServer(public_app(RuntimePublic(spool, cfg.server.state_dir, clock,
                                                   observer), key,
                                     name=cfg.server.hostname),
                          cfg.public.address, ssl_context=ctx)
    try:
        await server.start()
    except OSError as exc:
        raise StartupError(f"public: cannot listen on {cfg.public.address}: {exc}") from exc
    event(log, "listening", listener="public", address=server.url, role="public")
    return server
