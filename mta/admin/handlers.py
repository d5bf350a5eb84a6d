"""The admin API's routes: each one a request → backend call → JSON answer.

One job: the route table of the admin API and the handler behind each
route. A handler validates its request (mta.admin.params), calls the
`AdminBackend`, and turns the answer, or a backend exception, into a
response or an `ApiError`; authentication, error bodies and logging are the
app's middleware (mta.admin.http).

Public API:
    route_table(backend, openapi) -> [(method, path, handler)]   in order
                               (backend None: only the table, for ROUTES)
    ROUTES                     (method, path) of every route, in order
    lift_target(body) -> str   the checked "target" of POST /v1/shaping/lift
    MAX_LIFT_TARGET            its length limit
    tls_domain(value) -> str   a checked recipient domain of /v1/tls… (422 naming "domain")

Invariants: bulk routes come before "/v1/messages/{id}", so "hold" is never
read as an id; backend exceptions map as mta.admin.backend says (KeyError
and NotFound → 404, ActionRefused → 409, ValueError from a cursor → 400),
a ledger or tenant method the backend lacks → 501; a message this node
does not know is looked up by the backend's `ledger_elsewhere(id)` when it
has one (a cluster's shared ledger: runtime/cluster_ledger.py sets it), and
GET /v1/events reads the backend's `events_shared` instead of `events_after`
when it has one (a cluster: every node's events, the global seq the cursor,
the answer labelled "ledger": "cluster"; runtime/cluster_events.py sets it).
The tenant routes answer a `TenantError` with its status (404 not_found, 409 conflict, 422
validation_error), the message starting with the field at fault
("limits.per_hour: …", "name: …") when there is one. The shaping routes
(issue 15) answer 501 when the backend lacks them or raises
NotImplementedError (a daemon without shaping), 422 naming "target" for a
bad lift body, 404 when a lift matched nothing. The TLS routes (issue 17)
likewise answer 501, and 422 naming "domain" for anything but a domain name.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mta.admin import params
from mta.admin.backend import (DESTINATION_ACTIONS, MESSAGE_ACTIONS, ActionRefused,
                               AdminBackend, JsonListing, NotFound)
from mta.admin.handlers_cluster import cluster_routes
from mta.admin.inputs import has_control
from mta.admin.params import ApiError
from mta.core.address import AddressError, parse_domain
from mta.spool.tenants import TenantError

__all__ = ["route_table", "ROUTES", "Handler", "lift_target", "MAX_LIFT_TARGET", "tls_domain"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TENANT_CODES = {404: "not_found", 409: "conflict", 422: "validation_error"}
ITEM_ACTIONS = ("hold", "release", "retry", "bounce")   # POST /v1/messages/{id}/<action>
MAX_LIFT_TARGET = 300       # an action id: "site:" + an MX site + ":" + the action


def _bad_target(problem: str) -> ApiError:
    return ApiError(422, "validation_error", f"target: {problem}", field="target")


def lift_target(body: dict[str, Any]) -> str:
    """The "target" of a lift body (an action id, a site, "tenant@provider"):
    a string of 1..MAX_LIFT_TARGET characters without control characters,
    stripped; anything else, or another key, is a 422 naming the field."""
    unknown = sorted(set(body) - {"target"})
    if unknown:
        name = unknown[0][:40]
        raise ApiError(422, "validation_error", f"{name}: unknown key (known: target)",
                       field=name)
    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        raise _bad_target("is required: an action id, a site, or tenant@provider (see GET "
                          "/v1/shaping)")
    if len(target) > MAX_LIFT_TARGET:
        raise _bad_target(f"is too long ({len(target)} characters, at most "
                          f"{MAX_LIFT_TARGET})")
    if has_control(target):
        raise _bad_target("contains control characters")
    return target.strip()


def tls_domain(value: Any) -> str:
    """A recipient domain for /v1/tls…, as lower-case A-labels; not a domain
    name (an address literal, an IP address, control characters, …) is a
    422 naming "domain"."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "validation_error", "domain: is required: a recipient domain",
                       field="domain")
    try:
        if has_control(value) or len(value) > 300:
            raise AddressError(value)
        domain = parse_domain(value)
        if domain.startswith("[") or _is_ip(domain):
            raise AddressError(value)
    except AddressError:
        raise ApiError(422, "validation_error", f"domain: {value[:80]!r} is not a domain "
                       "name (MTA-STS is published for names, not addresses)",
                       field="domain") from None
    return domain


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _unknown_message(mid: str) -> ApiError:
    return ApiError(404, "not_found", f"no message {mid!r} in the queue")


class _Handlers:
    def __init__(self, backend: AdminBackend | None, openapi: dict[str, Any]):
        self._backend = backend
        self.openapi = openapi
        # The backend serialises a page itself when it can (the daemon's
        # spool builds it in SQLite, off the event loop).
        self.json_listing: JsonListing | None = (backend if isinstance(backend, JsonListing)
                                                 else None)

    @property
    def b(self) -> AdminBackend:
        if self._backend is None:
            raise RuntimeError("a route of route_table(None, ...) was served")
        return self._backend

    async def healthz(self, request: web.Request) -> web.Response:
        await self.b.health()
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason, *more = await self.b.readiness()
        details = dict(more[0]) if more and more[0] else {}
        if ready:
            return web.json_response({"ready": True, **details})
        reason = reason or "not ready"
        return web.json_response({"ready": False, "reason": reason, **details,
                                  "error": {"code": "not_ready", "message": reason}}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = await self.b.metrics()
        # content_type carries parameters (version, charset): set the raw header.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi_doc(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    async def queue_summary(self, request: web.Request) -> web.Response:
        return web.json_response({"destinations": await self.b.queue_summary()})

    async def list_messages(self, request: web.Request) -> web.Response:
        kwargs = params.list_params(request)
        try:
            if self.json_listing is not None:
                array, next_cursor = await self.json_listing.list_messages_json(**kwargs)
                body = (b'{"messages": ' + array + b', "next_cursor": '
                        + json.dumps(next_cursor).encode() + b"}")
                return web.Response(body=body, content_type="application/json")
            messages, next_cursor = await self.b.list_messages(**kwargs)
        except ValueError as exc:
            raise ApiError(400, "invalid_cursor", f"cursor is not valid: {exc}") from None
        return web.json_response({"messages": messages, "next_cursor": next_cursor})

    async def get_message(self, request: web.Request) -> web.Response:
        mid = params.queue_id(request)
        message = await self.b.get_message(mid)
        if message is None:
            raise _unknown_message(mid)
        return web.json_response(message)

    async def message_body(self, request: web.Request) -> web.Response:
        mid = params.queue_id(request)
        body = await self.b.message_body(mid)
        if body is None:
            raise _unknown_message(mid)
        return web.Response(body=body, content_type="message/rfc822")

    def message_action(self, action: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            mid = params.queue_id(request)
            try:
                result = await self.b.message_action(mid, action)
            except KeyError:
                raise _unknown_message(mid) from None
            except ActionRefused as exc:
                raise ApiError(409, "conflict", str(exc) or f"cannot {action} {mid} now") from None
            return web.json_response(result)
        handler.__name__ = f"message_{action}"
        return handler

    def bulk_action(self, action: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            everything, filters = params.bulk_filters(await params.json_body(request), action)
            try:
                result = await self.b.bulk_action(action, all=everything, **filters)
            except ActionRefused as exc:
                raise ApiError(409, "conflict", str(exc) or f"cannot {action} now") from None
            return web.json_response(result)
        handler.__name__ = f"bulk_{action}"
        return handler

    def destination_action(self, action: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            name = params.destination(request)
            try:
                result = await self.b.destination_action(name, action)
            except NotFound as exc:
                raise ApiError(404, "not_found", exc.message) from None
            except KeyError:
                raise ApiError(404, "not_found", f"no destination {name!r}") from None
            except ActionRefused as exc:
                raise ApiError(409, "conflict", str(exc) or f"cannot {action} {name} now") from None
            return web.json_response(result)
        handler.__name__ = f"destination_{action}"
        return handler

    # ---- the ledger and webhooks (LedgerBackend, optional) -----------------
    def _optional(self, name: str) -> Callable[..., Awaitable[Any]]:
        # by name: a backend may implement only part of LedgerBackend
        fn: Callable[..., Awaitable[Any]] | None = getattr(self.b, name, None)
        if fn is None:
            raise ApiError(501, "not_implemented", f"this server has no {name}")
        return fn

    async def events(self, request: web.Request) -> web.Response:
        after, limit, types, recipient, tenant = params.event_params(request)
        only = {} if tenant is None else {"tenant": tenant}     # only when given
        shared = getattr(self.b, "events_shared", None)         # a cluster's ledger
        events = await (shared or self._optional("events_after"))(
            after, limit, types=types, recipient=recipient, **only)
        nxt = events[-1]["seq"] if events else after
        label = {} if shared is None else {"ledger": "cluster"}
        return web.json_response({"events": events, "next_after": nxt, **label})

    async def message_events(self, request: web.Request) -> web.Response:
        mid = params.queue_id(request)
        events = await self._optional("message_events")(mid)
        if events is None and (other := getattr(self.b, "ledger_elsewhere", None)) is not None:
            events = await other(mid)        # a cluster: another node's message
        if events is None:
            raise _unknown_message(mid)
        return web.json_response({"events": events})

    async def webhooks(self, request: web.Request) -> web.Response:
        return web.json_response({"webhooks": await self._optional("webhooks")()})

    async def webhook_replay(self, request: web.Request) -> web.Response:
        name = params.webhook(request)
        start, since = params.replay_params(await params.json_body(request))
        try:
            result = await self._optional("webhook_replay")(name, from_seq=start, since=since)
        except KeyError:
            raise ApiError(404, "not_found", f"no webhook {name!r}") from None
        return web.json_response(result)

    async def webhook_test(self, request: web.Request) -> web.Response:
        name = params.webhook(request)
        try:
            result = await self._optional("webhook_test")(name)
        except KeyError:
            raise ApiError(404, "not_found", f"no webhook {name!r}") from None
        return web.json_response(result)

    # ---- tenants (TenantBackend, optional) -----------------------------------
    async def _tenant(self, method: str, *args: Any) -> Any:
        try:
            return await self._optional(method)(*args)
        except TenantError as exc:
            message = exc.message
            if exc.field and not message.startswith(exc.field):
                message = f"{exc.field}: {message}"
            raise ApiError(exc.status, _TENANT_CODES.get(exc.status, "conflict"), message,
                           field=exc.field) from None
        except NotImplementedError as exc:
            raise ApiError(501, "not_implemented",
                           str(exc) or "this server has no tenants") from None

    async def tenants(self, request: web.Request) -> web.Response:
        return web.json_response({"tenants": await self._tenant("tenants")})

    async def tenant_show(self, request: web.Request) -> web.Response:
        name = params.tenant(request)
        found = await self._tenant("tenant", name)
        if found is None:
            raise ApiError(404, "not_found", f"name: no tenant named {name!r}", field="name")
        return web.json_response(found)

    async def tenant_add(self, request: web.Request) -> web.Response:
        name, limits, policy = params.tenant_add(await params.json_body(request))
        return web.json_response(await self._tenant("tenant_add", name, limits, policy))

    async def tenant_update(self, request: web.Request) -> web.Response:
        name = params.tenant(request)
        limits, policy = params.tenant_update(await params.json_body(request))
        return web.json_response(await self._tenant("tenant_update", name, limits, policy))

    async def tenant_remove(self, request: web.Request) -> web.Response:
        name = params.tenant(request)
        await self._tenant("tenant_remove", name)
        return web.json_response({"name": name, "deleted": True})

    async def tenant_pause(self, request: web.Request) -> web.Response:
        name = params.tenant(request)
        reason = params.tenant_reason(await params.json_body(request), required=False)
        return web.json_response(await self._tenant("tenant_pause", name, reason))

    async def tenant_resume(self, request: web.Request) -> web.Response:
        name = params.tenant(request)
        reason = params.tenant_reason(await params.json_body(request), required=True)
        return web.json_response(await self._tenant("tenant_resume", name, reason))

    # ---- traffic shaping (ShapingBackend, optional; issue 15) ----------------
    async def _feature(self, what: str, method: str, *args: Any) -> Any:
        """An optional backend method: 501 (saying it has no `what`) when the
        backend lacks it or raises NotImplementedError."""
        fn: Callable[..., Awaitable[Any]] | None = getattr(self.b, method, None)
        try:
            if fn is None:
                raise NotImplementedError
            return await fn(*args)
        except NotImplementedError as exc:
            raise ApiError(501, "not_implemented",
                           str(exc) or f"this server has no {what}") from None

    async def _shaping(self, method: str, *args: Any) -> Any:
        return await self._feature("traffic shaping", method, *args)

    async def shaping(self, request: web.Request) -> web.Response:
        return web.json_response(await self._shaping("shaping"))

    async def warmup(self, request: web.Request) -> web.Response:
        return web.json_response({"sources": await self._shaping("warmup")})

    async def shaping_lift(self, request: web.Request) -> web.Response:
        target = lift_target(await params.json_body(request))
        lifted = await self._shaping("shaping_lift", target)
        if not lifted:
            raise ApiError(404, "not_found", f"target: no action in force matches "
                           f"{target[:80]!r} (an action id, a site, or tenant@provider; "
                           "see GET /v1/shaping)")
        return web.json_response({"lifted": lifted})

    # ---- outbound TLS (TlsBackend, optional; issue 17) -----------------------
    async def _tls(self, method: str, *args: Any) -> Any:
        return await self._feature("outbound TLS policy", method, *args)

    async def tls_show(self, request: web.Request) -> web.Response:
        params.query(request, ())               # none known: 400 naming one given
        domain = tls_domain(request.match_info["domain"])
        return web.json_response(await self._tls("tls_show", domain))

    async def tls_purge(self, request: web.Request) -> web.Response:
        body = await params.json_body(request)
        unknown = sorted(set(body) - {"domain"})
        if unknown:
            name = unknown[0][:40]
            raise ApiError(422, "validation_error", f"{name}: unknown key (known: domain)",
                           field=name)
        return web.json_response(await self._tls("tls_purge", tls_domain(body.get("domain"))))

    async def tls_policies(self, request: web.Request) -> web.Response:
        return web.json_response({"policies": await self._tls("tls_policies")})


def route_table(backend: AdminBackend | None,
                openapi: dict[str, Any]) -> list[tuple[str, str, Handler]]:
    """(method, path, handler) of every route, in the order they are added
    (backend None: the table alone; its handlers must not be served)."""
    h = _Handlers(backend, openapi)
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/healthz", h.healthz),
        ("GET", "/readyz", h.readyz),
        ("GET", "/metrics", h.metrics),
        ("GET", "/v1/openapi.json", h.openapi_doc),
        ("GET", "/v1/queue/summary", h.queue_summary),
        ("GET", "/v1/messages", h.list_messages),
    ]
    # Bulk routes before "/v1/messages/{id}" so "hold" is never read as an id.
    routes += [("POST", f"/v1/messages/{a}", h.bulk_action(a)) for a in MESSAGE_ACTIONS]
    routes += [
        ("GET", "/v1/messages/{id}", h.get_message),
        ("DELETE", "/v1/messages/{id}", h.message_action("delete")),
        ("GET", "/v1/messages/{id}/body", h.message_body),
        ("GET", "/v1/messages/{id}/events", h.message_events),
        ("GET", "/v1/events", h.events),
        ("GET", "/v1/webhooks", h.webhooks),
        ("POST", "/v1/webhooks/{name}/replay", h.webhook_replay),
        ("POST", "/v1/webhooks/{name}/test", h.webhook_test),
    ]
    routes += [("POST", f"/v1/messages/{{id}}/{a}", h.message_action(a)) for a in ITEM_ACTIONS]
    routes += [("POST", f"/v1/destinations/{{name}}/{a}", h.destination_action(a))
               for a in DESTINATION_ACTIONS]
    routes += [
        ("GET", "/v1/tenants", h.tenants),
        ("POST", "/v1/tenants", h.tenant_add),
        ("GET", "/v1/tenants/{name}", h.tenant_show),
        ("PATCH", "/v1/tenants/{name}", h.tenant_update),
        ("DELETE", "/v1/tenants/{name}", h.tenant_remove),
        ("POST", "/v1/tenants/{name}/pause", h.tenant_pause),
        ("POST", "/v1/tenants/{name}/resume", h.tenant_resume),
        ("GET", "/v1/shaping", h.shaping),
        ("POST", "/v1/shaping/lift", h.shaping_lift),
        ("GET", "/v1/warmup", h.warmup),
        ("GET", "/v1/tls", h.tls_policies),
        ("POST", "/v1/tls/purge", h.tls_purge),
        ("GET", "/v1/tls/{domain}", h.tls_show),
    ]
    return routes + cluster_routes(backend)     # /v1/cluster, /v1/node… (issue 19)


ROUTES: tuple[tuple[str, str], ...] = tuple(
    (m, p) for m, p, _ in route_table(None, {}))
