"""The event ledger across the cluster, wired in (issue 19).

One job: in a cluster, (1) forward this node's ledger events (the spool's
ledger stays the write path, each event committed with its queue change,
and is the buffer while PostgreSQL is away) to the shared ledger
(cluster/ledger.py), nothing lost and none twice; (2) answer GET
/emails/{id}, GET /emails/{id}/events (sending API) and the admin API's GET
/v1/messages/{id}/events for a message another node holds, from the shared
ledger; (3) deliver every webhook endpoint from the shared ledger (global
seq, cursor in PostgreSQL), one node at a time per endpoint (a lease).

API
    await wire(node)                 all of the above (runtime/cluster.py WIRINGS); sets
                                     node.ledger_forwarder and node.webhook_leases
    Forwarder(node)                  .tick() one pass (a job, woken by new events)
    ClusterReads(db, now)            RuntimeSending.elsewhere; .message_events(id)
                                     is the admin backend's ledger_elsewhere
    SharedWebhookStore(db)           a webhooks.store.WebhookStore over PostgreSQL
    WebhookLeases(node, service)     .tick(): take/renew each endpoint's lease,
                                     resume or pause its deliverer here
    summary(events, now) -> (recipients, last_event, scheduled_at)
    FORWARD_BATCH, PRUNE_EVERY

Rules
  * Forwarding: local events after a durable local cursor (the spool's
    webhook_state row ledger_sql.HOLD_CURSOR, which no admin list shows)
    go in batches of FORWARD_BATCH, each with the tenant this node sees own
    its credential; the cursor moves only after PostgreSQL committed them
    (at least once; the table's UNIQUE (node, local_seq) makes it exactly
    once). Pruning the local ledger never passes that cursor (the spool's
    SQL_PRUNE_EVENTS), so events wait for the database however long it is
    away. PostgreSQL unreachable: the pass ends; the next retries.
  * Reads: the shared ledger answers only for a message this node's spool
    does not hold, with the same tenant and test/live checks as a local one
    (another tenant's id is a 404); the body is not shared (html/text are
    null). PostgreSQL unreachable: 429 `ledger_unavailable`, retry-after.
  * Webhooks: every node runs the same endpoints' service on the shared
    store; an endpoint's deliverer runs only on the node holding its lease
    (`[cluster] node_timeout` long, renewed every heartbeat, expiry by the
    database's clock). A node that loses the database or the lease stops
    that deliverer (its cursor stored when it can); one that dies loses the
    lease at expiry and another node resumes from the stored cursor: at
    least once per event, the webhook-id being the event's global seq
    (receivers dedupe on it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from mta.api.http import ApiError
from mta.admin.params import ApiError as AdminError
from mta.cluster import ledger as shared
from mta.cluster.db import SharedDb, SharedDbUnavailable
from mta.core.stores import UNSET, EventView, Unset
from mta.runtime.api_start import SENDING
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.spool.ledger_sql import HOLD_CURSOR
from mta.webhooks.wire import event_json

__all__ = ["FORWARD_BATCH", "PRUNE_EVERY", "ClusterReads", "Forwarder", "SharedWebhookStore",
           "WebhookLeases", "summary", "wire"]

log = logging.getLogger("mta.cluster")

FORWARD_BATCH = 500
FORWARD_EVERY = 0.5          # seconds between passes (and at once when woken)
PRUNE_EVERY = 300.0
RETRY_AFTER = "5"
_UNAVAILABLE = "The cluster's shared ledger cannot be reached now; retry shortly"


class Forwarder:
    def __init__(self, node: Any):
        self.node = node
        self.cursor: int | None = None
        self.forwarded = 0
        self.wakeup = asyncio.Event()

    async def tick(self) -> None:
        ledger = self.node.d.spool.ledger
        if self.cursor is None:
            row = await ledger.webhook_state(HOLD_CURSOR)
            self.cursor = int(row["cursor"]) if row is not None else 0
        while True:
            events: list[EventView] = await ledger.events_after(self.cursor, FORWARD_BATCH)
            if not events:
                return
            tenants = getattr(self.node.d, "tenants", None)
            rows = [(e, "default" if tenants is None else tenants.tenant_of(e.credential))
                    for e in events]
            try:
                n = await self.node.db.call(
                    lambda c, rows=rows: shared.insert_batch(c, self.node.name, rows))
            except SharedDbUnavailable:
                return                      # logged by SharedDb; the next pass retries
            await ledger.set_webhook_state(HOLD_CURSOR, cursor=events[-1].seq)
            self.cursor = events[-1].seq
            self.forwarded += n
            webhooks = self.node.d.webhooks
            if webhooks is not None:
                for d in webhooks.deliverers.values():
                    d.poke()
            if len(events) < FORWARD_BATCH:
                return


# -- reads ------------------------------------------------------------------------------

_STATE_OF = {"queued": "queued", "deferred": "queued", "released": "queued",
             "rescheduled": "queued", "delivered": "delivered", "bounced": "bounced",
             "expired": "expired", "suppressed": "suppressed", "held": "held",
             "deleted": "deleted"}
# As runtime/api.py answers last_event from the recipients' states.
_LAST_EVENT = {"delivered": "delivered", "bounced": "bounced", "expired": "failed",
               "deleted": "canceled", "suppressed": "suppressed", "held": "queued"}


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def summary(events: Sequence[EventView], now: float) -> tuple[list[str], str, float | None]:
    """A message's recipients (in order), its `last_event` as the sending API
    names it, and when it is scheduled (None: at once), from its events."""
    states: dict[str, str] = {}
    retried = False
    scheduled: float | None = None
    for e in events:
        detail = e.detail if isinstance(e.detail, dict) else {}
        if e.type == "received" and isinstance(detail.get("scheduled_at"), (int, float)):
            scheduled = float(detail["scheduled_at"])
        if e.type == "rescheduled" and isinstance(detail.get("at"), (int, float)):
            scheduled = float(detail["at"])
        retried = retried or e.type == "deferred"
        if e.type in _STATE_OF and e.recipient:
            states[e.recipient] = _STATE_OF[e.type]
    vals = list(states.values())
    if scheduled is not None and scheduled > now and all(s == "queued" for s in vals):
        return list(states), "scheduled", scheduled
    for state in ("bounced", "expired", "delivered", "deleted", "suppressed", "held"):
        if state in vals and (state != "delivered" or all(
                s in ("delivered", "suppressed") for s in vals)):
            return list(states), _LAST_EVENT[state], scheduled
    return list(states), "delivery_delayed" if retried else "queued", scheduled


class ClusterReads:
    """Another node's message, from the shared ledger."""

    def __init__(self, db: SharedDb, now: Callable[[], float]):
        self.db, self.now = db, now

    async def _events(self, queue_id: str, error: type[Exception]) -> list[EventView]:
        try:
            return await self.db.call(lambda c: shared.message_events(c, queue_id))
        except SharedDbUnavailable:
            raise error(429, "ledger_unavailable", _UNAVAILABLE,
                        {"retry-after": RETRY_AFTER}) from None

    async def message_events(self, queue_id: str) -> list[dict[str, Any]] | None:
        """The admin API's timeline (None: no event of it anywhere)."""
        events = await self._events(queue_id, AdminError)
        return [e.to_dict() for e in events] or None

    async def _theirs(self, key: Any, email_id: str,
                      theirs: Callable[[str | None], bool]) -> list[EventView] | None:
        events = await self._events(email_id, ApiError)
        received = next((e for e in events if e.type == "received"), None)
        if received is None or bool(received.test) != bool(key.test) \
                or "dsn_for" in received.detail or not theirs(received.credential):
            return None
        return events

    async def email(self, key: Any, email_id: str,
                    theirs: Callable[[str | None], bool]) -> dict[str, Any] | None:
        events = await self._theirs(key, email_id, theirs)
        if events is None:
            return None
        received = next(e for e in events if e.type == "received")
        detail = received.detail
        given = detail.get("email")
        env: dict[str, Any] = given if isinstance(given, dict) else {}
        rcpts, last, scheduled = summary(events, self.now())
        return {"object": "email", "id": email_id,
                "from": env.get("from", detail.get("sender")), "to": env.get("to", rcpts),
                "cc": env.get("cc", []), "bcc": env.get("bcc", []),
                "reply_to": env.get("reply_to", []), "subject": env.get("subject"),
                "created_at": _iso(received.at), "scheduled_at": _iso(scheduled),
                "last_event": last, "tags": detail.get("tags", []), "test": received.test,
                "html": None, "text": None}

    async def email_events(self, key: Any, email_id: str,
                           theirs: Callable[[str | None], bool]) -> dict[str, Any] | None:
        events = await self._theirs(key, email_id, theirs)
        if events is None:
            return None
        data = [{"seq": e.seq, "type": e.type, "at": _iso(e.at), "recipient": e.recipient,
                 "detail": {k: v for k, v in e.detail.items() if k != "fingerprint"}}
                for e in events]
        return {"object": "list", "data": data}


# -- webhooks ---------------------------------------------------------------------------

def _payload(e: EventView) -> bytes:
    return json.dumps(event_json(e), separators=(",", ":"), ensure_ascii=False).encode()


class SharedWebhookStore:
    """The webhooks' store (webhooks/store.py WebhookStore) over the shared
    ledger and cursors."""

    def __init__(self, db: SharedDb):
        self.db = db
        self._known: dict[str, dict[str, Any]] = {}   # the last state read or written

    async def last_event_seq(self) -> int:
        return await self.db.call(shared.last_seq)

    async def events_after(self, after_seq: int, limit: int, *,
                           types: Sequence[str] | None = None, recipient: str | None = None,
                           credential: str | None = None,
                           tenant: str | None = None) -> list[EventView]:
        return await self.db.call(lambda c: shared.events_after(
            c, after_seq, limit, types=types, recipient=recipient, credential=credential,
            tenant=tenant))

    async def event_payloads_after(self, after_seq: int, limit: int, *,
                                   types: Sequence[str] | None = None,
                                   credential: str | None = None,
                                   tenant: str | None = None) -> list[tuple[int, bytes]]:
        events = await self.events_after(after_seq, limit, types=types,
                                         credential=credential, tenant=tenant)
        return [(e.seq, _payload(e)) for e in events]

    async def webhook_state(self, name: str) -> dict[str, Any] | None:
        """The stored state; while the database is away, the last one known
        here (a status answers; a deliverer at worst resends, same ids)."""
        try:
            row = await self.db.call(lambda c: shared.webhook_state(c, name))
        except SharedDbUnavailable:
            if name in self._known:
                return dict(self._known[name])
            raise
        if row is not None:
            self._known[name] = dict(row)
        return row

    async def set_webhook_state(self, name: str, *, cursor: int | None = None,
                                failing_since: float | None | Unset = UNSET,
                                next_attempt: float | None | Unset = UNSET,
                                attempts: int | Unset = UNSET,
                                last_error: str | None | Unset = UNSET,
                                state: str | Unset = UNSET) -> None:
        given = (("cursor", cursor), ("failing_since", failing_since),
                 ("next_attempt", next_attempt), ("attempts", attempts),
                 ("last_error", last_error), ("state", state))
        fields = {k: v for k, v in given if v is not UNSET and not (k == "cursor" and v is None)}
        await self.db.call(lambda c: shared.set_webhook_state(c, name, fields))
        if name in self._known:
            self._known[name].update(fields)


class WebhookLeases:
    """Which endpoints this node delivers: those whose lease it holds. A
    replay asked on a node that does not deliver the endpoint is stored
    (`request_replay`) and applied here at the next tick."""

    def __init__(self, node: Any, service: Any):
        self.node, self.service = node, service
        self.held: set[str] = set()

    async def tick(self) -> None:
        names = list(self.service.deliverers)
        ttl = float(self.node.cfg.node_timeout)

        async def take(conn: Any) -> set[str]:
            return {n for n in names if await shared.take_lease(conn, n, self.node.name, ttl)}
        try:
            held = await self.node.db.call(take)
        except SharedDbUnavailable:
            held = set()
        replays: dict[str, int] = {}
        if held:
            try:        # replays asked on other nodes: this node delivers them
                replays = await self.node.db.call(lambda c: shared.take_replays(c, list(held)))
            except SharedDbUnavailable:
                pass
        for name in names:
            if name in held:
                if name not in self.held:
                    event(log, "webhook_lease_taken", webhook=name, node=self.node.name)
                self.service.resume(name)
                if name in replays:
                    await self.service.replay(name, from_seq=replays[name] + 1)
            else:
                if name in self.held:
                    event(log, "webhook_lease_lost", level=logging.WARNING, webhook=name,
                          node=self.node.name)
                await self.service.pause(name)
        self.held = held

    async def release(self) -> None:
        """At a clean stop (the deliverers have stopped): another node takes
        the endpoints over at its next tick instead of after the expiry."""
        held, self.held = set(self.held), set()

        async def free(conn: Any) -> None:
            for name in held:
                await shared.release_lease(conn, name, self.node.name)
        if held:
            await self.node.db.call(free)


async def _prune(node: Any) -> None:
    before = node.d.clock.now() - float(node.d.cfg.ledger.retention)
    try:
        while await node.db.call(lambda c: shared.prune(c, before, 1000)) == 1000:
            await asyncio.sleep(0.2)
    except SharedDbUnavailable:
        return


async def wire(node: Any) -> None:
    """The forwarder, the reads from any node, the webhooks on the shared ledger."""
    d = node.d
    fwd = Forwarder(node)
    node.ledger_forwarder = fwd
    node.add_job(Job("cluster_ledger", FORWARD_EVERY, fwd.tick, wakeup=fwd.wakeup))
    node.add_job(Job("cluster_ledger_prune", PRUNE_EVERY, lambda: _prune(node)))
    reads = ClusterReads(node.db, d.clock.now)
    if d.api is not None:
        d.api.app[SENDING].elsewhere = reads
    if d.admin is not None:
        d.admin.backend.ledger_elsewhere = reads.message_events
    if d.webhooks is not None:
        await d.webhooks.share(SharedWebhookStore(node.db))
        d.webhooks.on_poke = fwd.wakeup.set
        leases = WebhookLeases(node, d.webhooks)
        node.webhook_leases = leases
        node.on_stop.append(leases.release)

        async def replay_elsewhere(name: str, cursor: int) -> None:
            await node.db.call(lambda c: shared.request_replay(c, name, cursor))
        d.webhooks.replay_elsewhere = replay_elsewhere
        await leases.tick()
        node.add_job(Job("cluster_webhooks", float(node.cfg.heartbeat), leases.tick))
