"""A small synchronous client of the admin API, for the `mta` CLI.

One job: one method per endpoint over urllib (stdlib only, so the CLI starts
fast and needs no event loop), with errors a human can act on.

Public API:
    AdminClient(base_url, token, timeout=10.0)
        health() readiness() metrics() openapi() queue_summary()
        list_messages(state=, domain=, sender=, recipient=, tenant=, limit=, cursor=)
        iter_messages(..., page_size=) -> Iterator[JsonObject]   follows next_cursor
        get_message(id) message_body(id) message_action(id, action)
        bulk_action(action, state=, domain=, sender=, recipient=, tenant=, all=)
        destination_action(name, action)
        events(after=, types=, recipient=, tenant=, limit=) message_events(id)
        webhooks() webhook_test(name) webhook_replay(name, from_seq=|"end", since=)
        tenants() tenant(name) tenant_add(name, limits=, policy=)
        tenant_update(name, limits=, policy=) tenant_remove(name)
        tenant_pause(name, reason="") tenant_resume(name, reason)
        shaping() warmup() shaping_lift(target)      traffic shaping (issue 15)
        tls(domain) tls_purge(domain) tls_policies() outbound TLS (issue 17)
    AdminClient.from_config(cfg)      address from [admin], token via read_token
    AdminUnavailable                  the daemon cannot be reached (str() says where)
    AdminError(status, code, message) the daemon answered with an error
    base_url(address, https=False)    "host:port" -> "http://host:port" (wildcards: loopback)
    trusting(cert) -> SSLContext      trusts `[admin] cert` only (the CLI over HTTPS)
    token_path(state_dir), read_token(cfg) -> str | None
    ClientConfig                      the Protocol of `cfg` (mta.config.Config has it)
    JsonObject                        a decoded JSON object, shaped as /v1/openapi.json says

Invariants: the token goes only into the Authorization header, never into
an error message; every failure is one of the two exceptions above (an
answer that is not JSON, or not the object or list the endpoint returns, is
AdminError "invalid_response").
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal, Protocol

from mta.admin.token import load_token, token_path
from mta.core.hostport import format_hostport, split_hostport

__all__ = ["AdminClient", "AdminUnavailable", "AdminError", "base_url", "token_path",
           "read_token", "ClientConfig", "JsonObject"]

# A JSON object as the API sends it: its values are whatever the endpoint's
# schema in mta.admin.openapi says, which the client does not re-check.
JsonObject = dict[str, Any]


class AdminUnavailable(Exception):
    """The daemon's admin API could not be reached."""


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code, self.message = status, code, message


def base_url(address: str, https: bool = False) -> str:
    """The URL to reach a daemon listening on `address`; a wildcard bind
    (0.0.0.0, ::) is reached over loopback."""
    host, port = split_hostport(address)
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{'https' if https else 'http'}://{format_hostport(host, port)}"


def trusting(cert: str) -> ssl.SSLContext:
    """A client context that trusts the admin server's own certificate file
    (self-signed, or a leaf whose chain we need not walk) and nothing else;
    the name is not checked: the address comes from the same config."""
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


class _AdminKeys(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def token(self) -> str | None: ...
    @property
    def cert(self) -> str | None: ...


class _ServerKeys(Protocol):
    @property
    def state_dir(self) -> str: ...


class ClientConfig(Protocol):
    """What the client reads of a configuration (mta.config.Config)."""

    @property
    def admin(self) -> _AdminKeys: ...
    @property
    def server(self) -> _ServerKeys: ...


def read_token(cfg: ClientConfig) -> str | None:
    """`[admin] token`, else the content of state_dir/admin-token, else None.
    PermissionError propagates (the caller tells the operator whom to run as)."""
    if cfg.admin.token:
        return cfg.admin.token
    return load_token(cfg.server.state_dir)


class AdminClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._opener = (_OPENER if ssl_context is None else urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context)))
        self.address = urllib.parse.urlsplit(self.base_url).netloc

    def __repr__(self) -> str:              # never show the token
        return f"AdminClient({self.base_url!r})"

    @classmethod
    def from_config(cls, cfg: ClientConfig, timeout: float = 10.0) -> AdminClient:
        cert = getattr(cfg.admin, "cert", None)
        return cls(base_url(cfg.admin.address, https=cert is not None), read_token(cfg), timeout,
                   ssl_context=trusting(cert) if cert is not None else None)

    # ------------------------------------------------------------ transport

    def _request(self, method: str, path: str, *,
                 query: dict[str, str | int | float | None] | None = None,
                 body: JsonObject | None = None) -> bytes:
        """The answer's body; an error status or no answer raises."""
        url = self.base_url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = None
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                payload: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._error(exc) from None
        except urllib.error.URLError as exc:
            raise self._unavailable(exc.reason) from None
        except (TimeoutError, socket.timeout, ConnectionError) as exc:
            raise self._unavailable(exc) from None
        return payload

    def _json(self, method: str, path: str, *,
              query: dict[str, str | int | float | None] | None = None,
              body: JsonObject | None = None) -> object:
        payload = self._request(method, path, query=query, body=body)
        try:
            value: object = json.loads(payload)
        except ValueError:
            raise self._invalid("a non-JSON answer") from None
        return value

    def _object(self, method: str, path: str, *,
                query: dict[str, str | int | float | None] | None = None,
                body: JsonObject | None = None) -> JsonObject:
        """An endpoint that answers with a JSON object."""
        return self._as_object(self._json(method, path, query=query, body=body))

    def _as_object(self, value: object) -> JsonObject:
        if not isinstance(value, dict):
            raise self._invalid("an answer that is not a JSON object")
        return value

    def _as_objects(self, value: object) -> list[JsonObject]:
        if not isinstance(value, list):
            raise self._invalid("an answer that is not a JSON list")
        return [self._as_object(item) for item in value]

    def _invalid(self, what: str) -> AdminError:
        return AdminError(200, "invalid_response",
                          f"the admin API at {self.address} sent {what}")

    def _unavailable(self, reason: object) -> AdminUnavailable:
        if isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"did not answer within {self.timeout:g}s"
        elif isinstance(reason, ConnectionRefusedError):
            why = "is not reachable (is mta running?)"
        else:
            detail = getattr(reason, "strerror", None) or reason
            why = f"is not reachable ({detail}; is mta running?)"
        return AdminUnavailable(f"the daemon's admin API at {self.address} {why}")

    def _error(self, exc: urllib.error.HTTPError) -> AdminError:
        try:
            err = json.loads(exc.read())["error"]
            code, message = str(err["code"]), str(err["message"])
        except Exception:
            code, message = f"http_{exc.code}", exc.reason or "error"
        if exc.code == 401 and not self._token:
            message = ("no admin token: set [admin] token in the config, or run as a user who "
                       "can read state_dir/admin-token")
        return AdminError(exc.code, code, message)

    # ------------------------------------------------------------ endpoints

    def health(self) -> JsonObject:
        return self._object("GET", "/healthz")

    def readiness(self) -> JsonObject:
        """{"ready": bool, "reason"?}; a 503 is returned, not raised."""
        try:
            return self._object("GET", "/readyz")
        except AdminError as exc:
            if exc.status == 503:
                return {"ready": False, "reason": exc.message}
            raise

    def metrics(self) -> str:
        return self._request("GET", "/metrics").decode()

    def openapi(self) -> JsonObject:
        return self._object("GET", "/v1/openapi.json")

    def queue_summary(self) -> list[JsonObject]:
        return self._as_objects(self._object("GET", "/v1/queue/summary")["destinations"])

    def list_messages(self, *, state: str | None = None, domain: str | None = None,
                      sender: str | None = None, recipient: str | None = None,
                      limit: int | None = None, cursor: str | None = None,
                      tenant: str | None = None) -> tuple[list[JsonObject], str | None]:
        page = self._object("GET", "/v1/messages", query={
            "state": state, "domain": domain, "sender": sender, "recipient": recipient,
            "tenant": tenant, "limit": limit, "cursor": cursor})
        return self._as_objects(page["messages"]), page["next_cursor"]

    def iter_messages(self, *, page_size: int = 1000,
                      **filters: str | None) -> Iterator[JsonObject]:
        """Every message matching `filters` (state, domain, sender,
        recipient, tenant), page by page."""
        cursor = None
        while True:
            messages, cursor = self.list_messages(limit=page_size, cursor=cursor, **filters)
            yield from messages
            if not cursor:
                return

    def get_message(self, message_id: str) -> JsonObject:
        return self._object("GET", f"/v1/messages/{_seg(message_id)}")

    def message_body(self, message_id: str) -> bytes:
        return self._request("GET", f"/v1/messages/{_seg(message_id)}/body")

    def message_action(self, message_id: str, action: str) -> JsonObject:
        if action == "delete":
            return self._object("DELETE", f"/v1/messages/{_seg(message_id)}")
        return self._object("POST", f"/v1/messages/{_seg(message_id)}/{_seg(action)}")

    def bulk_action(self, action: str, *, state: str | None = None, domain: str | None = None,
                    sender: str | None = None, recipient: str | None = None,
                    all: bool = False, tenant: str | None = None) -> JsonObject:
        body: JsonObject = {k: v for k, v in (("state", state), ("domain", domain),
                                              ("sender", sender), ("recipient", recipient),
                                              ("tenant", tenant))
                            if v is not None}
        if all:
            body["all"] = True
        return self._object("POST", f"/v1/messages/{_seg(action)}", body=body)

    def destination_action(self, name: str, action: str) -> JsonObject:
        return self._object("POST", f"/v1/destinations/{_seg(name)}/{_seg(action)}")

    def events(self, *, after: int = 0, types: str | None = None,
               recipient: str | None = None, limit: int = 100,
               tenant: str | None = None) -> JsonObject:
        query: dict[str, str | int | float | None] = {
            "after": after, "limit": limit, "type": types, "recipient": recipient,
            "tenant": tenant}
        return self._object("GET", "/v1/events",
                            query={k: v for k, v in query.items() if v is not None})

    def message_events(self, message_id: str) -> list[JsonObject]:
        events = self._object("GET", f"/v1/messages/{_seg(message_id)}/events")["events"]
        return self._as_objects(events)

    def webhooks(self) -> list[JsonObject]:
        return self._as_objects(self._object("GET", "/v1/webhooks")["webhooks"])

    def webhook_test(self, name: str) -> JsonObject:
        return self._object("POST", f"/v1/webhooks/{_seg(name)}/test")

    def webhook_replay(self, name: str, *, from_seq: int | Literal["end"] | None = None,
                       since: float | None = None) -> JsonObject:
        """Move the endpoint's cursor: to event `from_seq` ("end": past the
        backlog), else to the first event at/after `since`."""
        body: JsonObject = {"from": from_seq} if from_seq is not None else {"since": since}
        return self._object("POST", f"/v1/webhooks/{_seg(name)}/replay", body=body)

    def tenants(self) -> list[JsonObject]:
        return self._as_objects(self._object("GET", "/v1/tenants")["tenants"])

    def tenant(self, name: str) -> JsonObject:
        return self._object("GET", f"/v1/tenants/{_seg(name)}")

    def tenant_add(self, name: str, *, limits: JsonObject | None = None,
                   policy: JsonObject | None = None) -> JsonObject:
        body: JsonObject = {"name": name}
        if limits:
            body["limits"] = limits
        if policy:
            body["policy"] = policy
        return self._object("POST", "/v1/tenants", body=body)

    def tenant_update(self, name: str, *, limits: JsonObject | None = None,
                      policy: JsonObject | None = None) -> JsonObject:
        """Keys given replace the tenant's, a None value clears one."""
        body: JsonObject = {k: v for k, v in (("limits", limits), ("policy", policy))
                            if v is not None}
        return self._object("PATCH", f"/v1/tenants/{_seg(name)}", body=body)

    def tenant_remove(self, name: str) -> JsonObject:
        return self._object("DELETE", f"/v1/tenants/{_seg(name)}")

    def tenant_pause(self, name: str, reason: str = "") -> JsonObject:
        body: JsonObject = {"reason": reason} if reason else {}
        return self._object("POST", f"/v1/tenants/{_seg(name)}/pause", body=body)

    def tenant_resume(self, name: str, reason: str) -> JsonObject:
        return self._object("POST", f"/v1/tenants/{_seg(name)}/resume",
                            body={"reason": reason})

    def shaping(self) -> JsonObject:
        """The table in force, mx_rollup, pools, actions in force, warm-up."""
        return self._object("GET", "/v1/shaping")

    def warmup(self) -> list[JsonObject]:
        """Each [[egress]] source's warm-up row."""
        return self._as_objects(self._object("GET", "/v1/warmup").get("sources"))

    def shaping_lift(self, target: str) -> list[JsonObject]:
        """The actions lifted (by id, site, or "tenant@provider"); nothing
        matched is AdminError 404."""
        answer = self._object("POST", "/v1/shaping/lift", body={"target": target})
        return self._as_objects(answer.get("lifted"))

    def tls(self, domain: str) -> JsonObject:
        """A domain's outbound TLS: override, MTA-STS policy (issue 17)."""
        return self._object("GET", "/v1/tls/" + _seg(domain))

    def tls_purge(self, domain: str) -> JsonObject:
        return self._object("POST", "/v1/tls/purge", body={"domain": domain})

    def tls_policies(self) -> list[JsonObject]:
        return self._as_objects(self._object("GET", "/v1/tls").get("policies"))


# No proxies: the admin API is the local daemon, whatever http_proxy says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")
