"""Operator actions on one webhook endpoint, outside its delivery loop:
move its cursor (replay) and send it one signed test request.

Public API
    async replay(store, name, *, from_seq=None, since=None) -> dict
        set the cursor so delivery resumes with event `from_seq` (inclusive;
        "end": drop the backlog) or with the first event at/after `since`;
        state active, no backoff. Use `WebhookDeliverer.replay` while that
        endpoint's deliverer runs (it also drops its read-ahead).
    async first_seq_since(ledger, since) -> int | None
    async send_test(cfg, clock, *, ssl_context=None) -> (status | None, error | None)
    async probe(cfg, clock, *, ssl_context=None) -> {name, url, ok, status, error, ms}
        (the admin API's and `mta webhooks test --json`'s answer)

Invariants: a test request never touches the ledger or a cursor; its
webhook-id is "test_<random hex>", its event {"type": "test", "seq": 0}, whose
data names the webhook and the tenant whose events it gets (null: all).
"""

from __future__ import annotations

import logging
import secrets
import ssl
import time
from typing import Any

from mta.config.sections import WebhookConfig
from mta.core.clock import Clock
from mta.core.logfmt import event as log_event
from mta.webhooks.hookhttp import Endpoint
from mta.webhooks.state import replayed
from mta.webhooks.store import EventFeed, WebhookStore
from mta.webhooks.wire import (
    USER_AGENT,
    Signer,
    encode_body,
    event_time,
    probe_payload,
    signed_headers,
)

__all__ = ["first_seq_since", "probe", "replay", "send_test"]

log = logging.getLogger("mta.webhooks")


async def first_seq_since(ledger: EventFeed, since: float) -> int | None:
    """The first ledger seq whose event happened at/after `since` (None: none).
    Binary search with events_after(x, 1) — O(log n) queries; relies on event
    times increasing with seq (they are appended in time order)."""
    last = await ledger.last_event_seq()
    lo, hi = 0, last          # answer in (lo, hi], or None
    found: int | None = None
    while lo < hi:
        mid = (lo + hi) // 2
        evs = await ledger.events_after(mid, 1)
        if not evs:
            hi = mid
            continue
        e = evs[0]
        if event_time(e.at) >= since:
            found, hi = e.seq, mid     # e is the first event after mid; look before it
        else:
            lo = e.seq                 # every event ≤ e.seq is before `since`
    return found


async def replay(store: WebhookStore, name: str, *, from_seq: int | str | None = None,
                 since: float | None = None) -> dict[str, Any]:
    """Set the endpoint's cursor so delivery resumes with event `from_seq`
    (inclusive; "end": after the ledger's last event, dropping the backlog)
    or with the first event at/after `since` (unix time); the state becomes
    active with no pending backoff. With nothing at/after `since`, the
    cursor moves to the ledger's end. Returns the new state (its fields)."""
    if (from_seq is None) == (since is None):
        raise ValueError("give exactly one of from_seq or since")
    last = await store.last_event_seq()
    if from_seq == "end":
        cursor = last                  # drop the backlog: new events only
    elif from_seq is not None:
        cursor = max(0, min(int(from_seq) - 1, last))
    else:
        assert since is not None
        first = await first_seq_since(store, float(since))
        cursor = last if first is None else first - 1
    st = replayed(cursor).fields()
    await store.set_webhook_state(name, **st)
    log_event(log, "webhook_replay", webhook=name, cursor=cursor)
    return st


async def send_test(cfg: WebhookConfig, clock: Clock, *,
                    ssl_context: ssl.SSLContext | None = None
                    ) -> tuple[int | None, str | None]:
    """One signed {"type": "test", …} request to the endpoint (does not touch
    the ledger or the cursor). Returns (status, error); error None on 2xx."""
    payload = probe_payload(cfg.name, cfg.credential, clock.now(), tenant=cfg.tenant)
    body = encode_body([(0, payload)], cfg.batch_size > 1)
    msg_id = f"test_{secrets.token_hex(8)}"
    endpoint = Endpoint(cfg.url, timeout=cfg.timeout, ssl_context=ssl_context,
                        user_agent=USER_AGENT)
    try:
        return await endpoint.post(
            signed_headers(Signer(cfg.secret), msg_id, int(clock.now()), body), body)
    finally:
        await endpoint.close()


async def probe(cfg: WebhookConfig, clock: Clock, *,
                ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """`send_test`, timed: {name, url, ok, status, error, ms}."""
    t0 = time.monotonic()
    status, error = await send_test(cfg, clock, ssl_context=ssl_context)
    return {"name": cfg.name, "url": cfg.url, "ok": error is None, "status": status,
            "error": error, "ms": round((time.monotonic() - t0) * 1000)}
