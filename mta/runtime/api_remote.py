"""The sending API in receiver processes: HTTP there, the spool's work at the owner.

One job: let a receiver process serve sending-API connections the owner
hands it (like SMTP sessions, ARCHITECTURE §3): HTTP, auth and the request's
CPU work (validation, MIME, DKIM: api_build.py) run in the receiver; what
needs the owner's one spool, rate limiter or stores is asked over the
channel.

Receiver side:
    await receiver_api(channel, *, cfg_of, domains, clock) -> Adopted
        the API app (mta.api.http.Adopted: .adopt(sock), .close())
    RemoteSending      an mta.api.routes.SendingBackend: `send` builds here
                       and commits at the owner ("api_commit"); with an
                       Idempotency-Key, and for every other method, the
                       owner's RuntimeSending answers ("api_call")
    RemoteResources    the ResourceBackend: every method at the owner
    remote_rate(channel, clock) -> RateTake   the owner's rate limiter ("api_rate"),
                       leasing a fast key's tokens a few at a time (LEASE_MAX)
Owner side:
    OwnerApi(sending, resources, limiter).serve(op, args)   answers those ops
    API_CONN           the hand-off tag of a sending-API connection

Invariants: one rate budget per key whichever process serves it (the
owner's limiter: a lease holds tokens its bucket gave, so never more than
the rate; unused ones lapse after LEASE_TTL); the commit point stays the
owner's enqueue; an ApiError at the owner reaches the client unchanged; the
owner gone (ChannelClosed) is a 503 for the request, nothing half-accepted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

from mta.api.http import Adopted, ApiError, RateTake, create_app
from mta.api.keys import ApiKey, KeyCache, StoreKeys
from mta.api.ratelimit import Decision, RateLimiter
from mta.api.resources import ResourceBackend, resource_routes
from mta.api.routes import email_routes
from mta.api.templates import TemplateBackend
from mta.api.verifications import VerificationBackend
from mta.config import Config
from mta.core import Clock
from mta.policy.senders import SenderPolicy
from mta.runtime.api_content_start import (TEMPLATE_METHODS, VERIFICATION_METHODS,
                                           content_routes)
from mta.runtime.api_build import BuildKey, BuildRefused, Signer, build
from mta.runtime.channel import Channel, ChannelClosed, RemoteError
from mta.runtime.paths import state_paths
from mta.runtime.tls import api_ssl_context
from mta.spool.apikeys import SqliteApiKeys

__all__ = ["API_CONN", "OwnerApi", "RemoteResources", "RemoteSending", "receiver_api",
           "remote_rate"]

API_CONN = "\x00api"          # never a listener's name (config names are printable)
SENDING_METHODS = frozenset({"send", "get_email", "list_emails", "reschedule", "cancel",
                             "email_events", "create_key", "list_keys", "revoke_key"})
RESOURCE_METHODS = frozenset(n for n in vars(ResourceBackend) if not n.startswith("_"))


def key_dict(key: ApiKey) -> dict[str, Any]:
    return dataclasses.asdict(key)


def key_from(d: dict[str, Any]) -> ApiKey:
    return ApiKey(**{**d, "domains": tuple(d["domains"])})


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class OwnerApi:
    """The owner's answers to its receivers' API requests."""

    def __init__(self, sending: Any, resources: Any, limiter: RateLimiter,
                 extra: dict[str, tuple[Any, frozenset[str]]] | None = None):
        self.sending, self.resources, self.limiter = sending, resources, limiter
        self.targets: dict[str, tuple[Any, frozenset[str]]] = {
            "sending": (sending, SENDING_METHODS), "resources": (resources, RESOURCE_METHODS),
            **(extra or {})}

    async def serve(self, op: str, args: list[Any]) -> Any:
        if op == "api_rate":            # key id, rate, tokens wanted (a lease)
            key_id, rate, want = str(args[0]), float(args[1]), int(args[2])
            granted, d = 0, self.limiter.take(key_id, rate)
            while d.allowed:
                granted += 1
                if granted >= want:
                    break
                more = self.limiter.take(key_id, rate)
                if not more.allowed:
                    break
                d = more
            return [granted, d.limit, d.remaining, d.reset, d.retry_after]
        try:
            if op == "api_commit":
                kd, built, client_ip = args
                return ["ok", await self.sending.commit(key_from(kd), list(built),
                                                        str(client_ip))]
            if op == "api_call":
                return ["ok", await self._call(*args)]
        except ApiError as exc:
            return ["error", exc.status, exc.name, exc.message, exc.headers or {}]
        raise LookupError(f"unknown request {op!r}")

    async def _call(self, target: str, method: str, kd: dict[str, Any] | None,
                    args: list[Any], kwargs: dict[str, Any]) -> Any:
        obj, allowed = self.targets.get(target, (None, frozenset()))
        if method not in allowed:
            raise LookupError(f"no API method {target}.{method}")
        head = [key_from(kd)] if kd is not None else []
        return await getattr(obj, method)(*head, *map(_tuples, args),
                                          **{k: _tuples(v) for k, v in kwargs.items()})


async def _ask(channel: Channel, op: str, *args: Any) -> Any:
    try:
        got = await channel.call(op, *args)
    except (ChannelClosed, RemoteError):
        raise ApiError(503, "service_unavailable", "The mail server is restarting; retry",
                       {"retry-after": "1"}) from None
    if got[0] == "error":
        raise ApiError(int(got[1]), str(got[2]), str(got[3]), dict(got[4]) or None)
    return got[1]


# A receiver leases up to LEASE_MAX tokens of a fast key's budget at once (a
# 50th of its rate: a key of 10/s still asks per request), for LEASE_TTL
# seconds: the owner's bucket has given them, so a key never gets more than
# its rate; unused ones lapse.
LEASE_MAX, LEASE_TTL = 20, 0.5


def remote_rate(channel: Channel, clock: Clock) -> RateTake:
    leases: dict[str, list[Any]] = {}    # key id -> [tokens left, until, limit, remaining, reset]

    async def take(key_id: str, rate: float) -> Decision:
        now = clock.now()
        lease = leases.get(key_id)
        if lease is not None and lease[0] > 0 and now < lease[1]:
            lease[0] -= 1
            return Decision(True, lease[2], lease[3] + lease[0], lease[4], 0.0)
        want = max(1, min(LEASE_MAX, int(rate // 50)))
        try:
            granted, limit, remaining, reset, retry_after = await channel.call(
                "api_rate", key_id, rate, want)
        except (ChannelClosed, RemoteError):
            raise ApiError(503, "service_unavailable", "The mail server is restarting; retry",
                           {"retry-after": "1"}) from None
        if granted <= 0:
            leases.pop(key_id, None)
            return Decision(False, int(limit), int(remaining), float(reset), float(retry_after))
        if granted > 1:
            if len(leases) >= 10_000:          # bounded: the oldest lease lapses early
                leases.pop(next(iter(leases)))
            leases[key_id] = [granted - 1, now + LEASE_TTL, int(limit), int(remaining),
                              float(reset)]
        else:
            leases.pop(key_id, None)
        return Decision(True, int(limit), int(remaining) + granted - 1, float(reset), 0.0)
    return take


class RemoteSending:
    def __init__(self, channel: Channel, *, cfg_of: Callable[[], Config],
                 policy_of: Callable[[], SenderPolicy], signer: Signer | None, clock: Clock,
                 secure: bool):
        self.channel, self.cfg_of, self.policy_of = channel, cfg_of, policy_of
        self.signer, self.clock, self.secure = signer, clock, secure

    def now(self) -> float:
        return self.clock.now()

    async def _call(self, method: str, key: ApiKey, *args: Any, **kwargs: Any) -> Any:
        return await _ask(self.channel, "api_call", "sending", method, key_dict(key),
                          list(args), kwargs)

    async def send(self, key: ApiKey, raw: bytes, *, batch: bool, idempotency_key: str | None,
                   client_ip: str) -> list[str]:
        if idempotency_key is not None:     # the owner sees every request with a key
            return list(await self._call("send", key, raw, batch=batch,
                                         idempotency_key=idempotency_key,
                                         client_ip=client_ip))
        try:
            built = await build(raw, batch=batch, key=BuildKey(
                key.prefix, key.credential, key.domains, key.test), client_ip=client_ip,
                now=self.now(), cfg=self.cfg_of(), secure=self.secure,
                sender_policy=self.policy_of(), signer=self.signer)
        except BuildRefused as exc:
            raise ApiError(exc.status, exc.name, exc.message) from None
        return list(await _ask(self.channel, "api_commit", key_dict(key), built, client_ip))

    async def get_email(self, key: ApiKey, email_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("get_email", key, email_id))

    async def list_emails(self, key: ApiKey, limit: int, after: str | None) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("list_emails", key, limit, after))

    async def reschedule(self, key: ApiKey, email_id: str, at: float) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("reschedule", key, email_id, at))

    async def cancel(self, key: ApiKey, email_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("cancel", key, email_id))

    async def email_events(self, key: ApiKey, email_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("email_events", key, email_id))

    async def create_key(self, key: ApiKey, name: str, *, permission: str,
                         domains: tuple[str, ...], rate_limit: float) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call(
            "create_key", key, name, permission=permission, domains=list(domains),
            rate_limit=rate_limit))

    async def list_keys(self, key: ApiKey) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("list_keys", key))

    async def revoke_key(self, key: ApiKey, key_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], await self._call("revoke_key", key, key_id))


class RemoteResources:
    """Every method of a backend (ResourceBackend by default; the templates'
    and verifications' too), answered by the owner's (the request's key goes
    along: the owner scopes by its tenant)."""

    def __init__(self, channel: Channel, target: str = "resources",
                 methods: frozenset[str] = RESOURCE_METHODS):
        self._channel, self._target, self._methods = channel, target, methods

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in self._methods:
            raise AttributeError(method)

        async def call(key: ApiKey, *args: Any, **kwargs: Any) -> Any:
            return await _ask(self._channel, "api_call", self._target, method, key_dict(key),
                              [list(a) if isinstance(a, tuple) else a for a in args],
                              {k: list(v) if isinstance(v, tuple) else v
                               for k, v in kwargs.items()})
        return call


async def receiver_api(channel: Channel, *, cfg_of: Callable[[], Config], domains: Any,
                       clock: Clock) -> Adopted:
    """A receiver's sending-API app (its connections come from the owner)."""
    cfg = cfg_of()
    ctx = api_ssl_context(cfg)

    def policy_of() -> SenderPolicy:
        c = cfg_of()
        return SenderPolicy(
            require_verified=c.policy.require_verified_domain and c.server.mode != "sandbox",
            domain_state=domains.state)

    sending = RemoteSending(channel, cfg_of=cfg_of, policy_of=policy_of, signer=domains,
                            clock=clock, secure=ctx is not None)
    keys = KeyCache(StoreKeys(SqliteApiKeys(str(state_paths(cfg)["root"]))), clock)
    routes = [*email_routes(sending, lambda: cfg_of().api),
              *resource_routes(cast(ResourceBackend, RemoteResources(channel))),
              *content_routes(
                  cast(TemplateBackend, RemoteResources(channel, "templates", TEMPLATE_METHODS)),
                  cast(VerificationBackend, RemoteResources(channel, "verifications",
                                                            VERIFICATION_METHODS)))]
    adopted = Adopted(create_app(routes, settings_of=lambda: cfg_of().api, keys=keys,
                                 clock=clock, limiter=remote_rate(channel, clock)), ctx)
    await adopted.setup()
    return adopted
