"""The webhook wire format (Standard Webhooks, https://www.standardwebhooks.com/):
what one request carries, byte for byte. Pure: no I/O, no clock.

Public API
    sign(secret, msg_id, timestamp, payload) -> "v1,<base64 sig>"
    Signer(secret)(msg_id, timestamp, payload) -> the same, key decoded once
    new_secret() -> "whsec_<base64 of 32 random bytes>"
    event_json(event) -> dict          the payload object of one ledger event
    probe_payload(name, credential, now, *, tenant=None) -> bytes
                                   the payload of `mta webhooks test`
    webhook_id(events) -> "evt_<seq>" | "evt_<first>-<last>"
    encode_body(payloads, batch) -> bytes
    signed_headers(signer, msg_id, timestamp, body) -> the three webhook-* headers
    iso_ms(at) -> "2026-01-02T03:04:05.678Z"   (a string or None passes through)
    event_time(at) -> unix seconds             (the inverse, for either form)
    USER_AGENT

The request
    POST <url> (HTTP/1.1, one keep-alive connection: webhooks/hookhttp.py),
    content-type: application/json, user-agent: mta-webhooks/1
    webhook-id:        "evt_<seq>" for a single event, "evt_<first>-<last>" for a
                       batch; the SAME id on every retry of the same content
    webhook-timestamp: unix seconds at send time
    webhook-signature: "v1,<base64(HMAC-SHA256(key, f'{id}.{timestamp}.' + body))>"
                       where key = base64-decode(secret minus "whsec_")
    body, batch_size 1: one event object; batch_size > 1: a JSON array of 1..N
    event objects. An event object:
        {"type": "delivered",               # one of config.EVENT_TYPES ("test" for
                                            #   `mta webhooks test`)
         "seq": 1234,                       # ledger sequence number (unique, increasing)
         "timestamp": "2026-01-02T03:04:05.678Z",   # when the event happened (UTC)
         "queue_id": "…" | null, "recipient": "…" | null, "credential": "…" | null,
                                            # (the ledger's "" becomes null)
         "tags": [{"name", "value"}, …] | null,   # the message's, given to the API
         "test": false,                     # true: a test key's message (never delivered)
         "data": {…}}                       # the event's detail (see README vocabulary)

Invariants: the deliverer sends the payload the spool builds in SQL
(index.EVENT_PAYLOAD_COLS); `event_json` is its Python twin and must stay
equal to it (tests/test_webhooks.py compares them). The secret never leaves
a `Signer`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["USER_AGENT", "LedgerEventView", "Signer", "encode_body", "event_json", "event_time",
           "iso_ms", "new_secret", "probe_payload", "sign", "signed_headers", "webhook_id"]

USER_AGENT = "mta-webhooks/1"


class LedgerEventView(Protocol):
    """What the webhooks read of one ledger event (the spool's EventView)."""

    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> Any: ...          # unix seconds, or an ISO 8601 string
    @property
    def type(self) -> str: ...
    @property
    def queue_id(self) -> str | None: ...
    @property
    def recipient(self) -> str | None: ...
    @property
    def credential(self) -> str | None: ...
    @property
    def detail(self) -> Any: ...


# --------------------------------------------------------------------- signing

def _key(secret: str) -> bytes:
    s = secret.removeprefix("whsec_")
    key = base64.b64decode(s + "=" * (-len(s) % 4))
    if not key:
        raise ValueError("empty webhook secret")
    return key


class Signer:
    """`sign` for one secret, with the key decoded and the HMAC keyed once."""

    def __init__(self, secret: str):
        self._mac = hmac.new(_key(secret), digestmod=hashlib.sha256)

    def __call__(self, msg_id: str, timestamp: int, payload: bytes) -> str:
        mac = self._mac.copy()
        mac.update(f"{msg_id}.{int(timestamp)}.".encode())
        mac.update(payload)
        return "v1," + base64.b64encode(mac.digest()).decode()


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes) -> str:
    """The `webhook-signature` header value: "v1,<base64 HMAC-SHA256>"."""
    return Signer(secret)(msg_id, timestamp, payload)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(signer: Signer, msg_id: str, timestamp: int,
                   body: bytes) -> tuple[tuple[str, str], ...]:
    """The webhook-id, webhook-timestamp and webhook-signature headers."""
    ts = int(timestamp)
    return (("webhook-id", msg_id), ("webhook-timestamp", str(ts)),
            ("webhook-signature", signer(msg_id, ts, body)))


# --------------------------------------------------------------------- payload

def iso_ms(at: Any) -> Any:
    """Milliseconds, rounded as SQLite's strftime('%f') rounds them (the
    spool builds the same payload in SQL: index.EVENT_PAYLOAD_COLS)."""
    if isinstance(at, (int, float)):
        ms = int(float(at) * 1000.0 + 0.5)
        dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return at   # already a string (or None)


def event_time(at: Any) -> float:
    """An event's time as unix seconds, from either form `at` comes in."""
    if isinstance(at, (int, float)):
        return float(at)
    return datetime.fromisoformat(str(at)).timestamp()


def event_json(ev: LedgerEventView) -> dict[str, Any]:
    """The payload object of one ledger event (an EventView). The deliverer
    sends the same object built by the spool (`event_payloads_after`)."""
    return {"type": ev.type, "seq": ev.seq, "timestamp": iso_ms(ev.at),
            "queue_id": ev.queue_id or None, "recipient": ev.recipient or None,
            "credential": ev.credential or None, "tags": getattr(ev, "tags", None),
            "test": bool(getattr(ev, "test", False)),
            "data": ev.detail or {}}


def probe_payload(name: str, credential: str | None, now: float, *,
                  tenant: str | None = None) -> bytes:
    """The payload of `mta webhooks test`: a {"type": "test"} event, seq 0;
    data.tenant: the tenant whose events the endpoint gets (None: every one)."""
    obj = {"type": "test", "seq": 0, "timestamp": iso_ms(now), "queue_id": None,
           "recipient": None, "credential": credential,
           "data": {"message": "mta webhook test", "webhook": name, "tenant": tenant}}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def webhook_id(events: Sequence[tuple[int, bytes]]) -> str:
    """evt_<seq> for one (seq, payload), evt_<first>-<last> for a batch."""
    first, last = events[0][0], events[-1][0]
    return f"evt_{first}" if len(events) == 1 else f"evt_{first}-{last}"


def encode_body(payloads: Sequence[tuple[int, bytes]], batch: bool) -> bytes:
    """The request body: the one payload, or (batch) a JSON array of them."""
    if not batch:
        return payloads[0][1]
    return b"[" + b",".join(p for _, p in payloads) + b"]"
