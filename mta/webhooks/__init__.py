"""Signed webhooks: each `[[webhooks]]` endpoint follows the event ledger with
a durable cursor and receives its events as Standard Webhooks requests,
at least once, in ledger order.

One job: turn ledger events into signed HTTP POSTs and keep each endpoint's
cursor and state. Layer (docs/ARCHITECTURE.md): imports core and config
only; storage is reached through the `store` Protocols (the spool satisfies
them); runtime composes it, cli uses its operator actions.

Modules (each imports only the ones above it)
    wire       the wire format: payload objects, ids, bodies, signatures (pure)
    hookhttp   the lean HTTP/1.1 keep-alive POST client (one per endpoint)
    state      an endpoint's stored state, ACTIVE/FAILING (a StateMachine),
               and the pure retry decision `next_retry`
    store      the Protocols: EventFeed, WebhookCursorStore, WebhookStore
    actions    operator actions: replay (move a cursor), send_test / probe
    deliverer  WebhookDeliverer: one endpoint's loop (fetch, sign, POST, apply)
    service    WebhookService: every endpoint's deliverer, reconfigure, admin reads

Public API (re-exported here)
    WebhookService, WebhookDeliverer, EndpointState,
    WebhookStore, EventFeed, WebhookCursorStore (the store Protocols),
    sign, new_secret, event_json, replay, first_seq_since, send_test, probe
"""

from mta.webhooks.actions import first_seq_since, probe, replay, send_test
from mta.webhooks.deliverer import WebhookDeliverer
from mta.webhooks.service import WebhookService
from mta.webhooks.state import EndpointState
from mta.webhooks.store import EventFeed, WebhookCursorStore, WebhookStore
from mta.webhooks.wire import event_json, new_secret, sign

__all__ = ["EndpointState", "EventFeed", "WebhookCursorStore", "WebhookDeliverer",
           "WebhookService", "WebhookStore", "event_json", "first_seq_since", "new_secret",
           "probe", "replay", "send_test", "sign"]
