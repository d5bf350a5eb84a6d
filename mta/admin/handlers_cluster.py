"""The admin API's cluster routes (issue 19): the cluster view, this node, drain.

One job: the routes `GET /v1/cluster`, `GET /v1/node`, `POST /v1/node/drain`
and `POST /v1/node/undrain` and their handlers, over the optional
`ClusterBackend` (kept apart from mta.admin.handlers for its size; that
module adds these to its table).

Public API:
    ClusterBackend             the Protocol the runtime implements (optional)
    NOT_IN_CLUSTER             the 501 message of a single node
    cluster_routes(backend) -> [(method, path, handler)]   (backend None: the
                               table alone, for ROUTES; its handlers must not be served)

Invariants: the POST routes take an empty body or `{}` (400 not JSON / not an object, 422
naming an unknown key). A backend without these methods, or one raising
NotImplementedError (a single node: `[cluster]` unset), is a 501 whose
message says so; `ClusterUnavailable` (the shared database cannot record a
drain now) is a 409 `unavailable`, never a 5xx: the caller retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from mta.admin import params
from mta.admin.params import ApiError

__all__ = ["ClusterBackend", "ClusterUnavailable", "NOT_IN_CLUSTER", "cluster_routes"]

NOT_IN_CLUSTER = "this node is not in a cluster ([cluster] unset)"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClusterUnavailable(Exception):
    """The shared database cannot take the change now (-> 409 unavailable)."""


class ClusterBackend(Protocol):
    async def cluster_status(self) -> dict[str, Any]:
        """{"node": node status, "nodes": [node row…], "database", "redis"}."""

    async def node_status(self) -> dict[str, Any]:
        """{"node", "version", "draining", "queue_depth", "drained", "degraded"}."""

    async def node_drain(self, draining: bool) -> dict[str, Any]:
        """Drain (True) or undrain (False) this node: node_status() after."""


class _ClusterHandlers:
    def __init__(self, backend: object | None):
        self._backend = backend

    async def _call(self, method: str, *args: Any) -> Any:
        if self._backend is None:
            raise RuntimeError("a route of cluster_routes(None) was served")
        fn: Callable[..., Awaitable[Any]] | None = getattr(self._backend, method, None)
        try:
            if fn is None:
                raise NotImplementedError
            return await fn(*args)
        except NotImplementedError as exc:
            raise ApiError(501, "not_implemented", str(exc) or NOT_IN_CLUSTER) from None
        except ClusterUnavailable as exc:
            raise ApiError(409, "unavailable", str(exc)) from None

    async def cluster(self, request: web.Request) -> web.Response:
        return web.json_response(await self._call("cluster_status"))

    async def node(self, request: web.Request) -> web.Response:
        return web.json_response(await self._call("node_status"))

    def drain(self, flag: bool) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            body = await params.json_body(request)
            if body:
                name = sorted(body)[0][:40]
                raise ApiError(422, "validation_error", f"{name}: unknown key (this route "
                               "takes no body, or {})", field=name)
            return web.json_response(await self._call("node_drain", flag))
        handler.__name__ = "node_drain" if flag else "node_undrain"
        return handler


def cluster_routes(backend: object | None) -> list[tuple[str, str, Handler]]:
    h = _ClusterHandlers(backend)
    return [
        ("GET", "/v1/cluster", h.cluster),
        ("GET", "/v1/node", h.node),
        ("POST", "/v1/node/drain", h.drain(True)),
        ("POST", "/v1/node/undrain", h.drain(False)),
    ]
