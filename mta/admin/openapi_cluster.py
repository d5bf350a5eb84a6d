"""The OpenAPI description of the admin API's cluster routes (issue 19):
/v1/cluster, /v1/node, /v1/node/drain, /v1/node/undrain.

One job: the paths and schemas of those routes, for mta.admin.openapi to
merge into its document (kept apart for the module size limit, like
mta.admin.openapi_tls).

Public API:
    CLUSTER_SCHEMAS                 {"NoFields", "NodeStatus", "ClusterNode", "ClusterStatus"}
    cluster_paths(errors) -> dict   the paths; `errors` are the document's shared
                                    error responses (401, 500)
"""

from __future__ import annotations

from typing import Any

from mta.admin.openapi_parts import error_response as _err
from mta.admin.openapi_parts import json_response as _json
from mta.admin.openapi_parts import obj as _obj
from mta.admin.openapi_parts import ref as _ref

__all__ = ["CLUSTER_SCHEMAS", "cluster_paths"]

_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_INT = {"type": "integer", "minimum": 0}
_NUM = {"type": "number"}
_DEGRADED = _obj({"database": {**_BOOL, "description": "the shared PostgreSQL is unreachable"},
                  "redis": {**_BOOL, "description": "the shared Redis is unreachable"}},
                 ["database", "redis"])

CLUSTER_SCHEMAS: dict[str, Any] = {
    "NoFields": {"type": "object", "additionalProperties": False, "properties": {},
                 "description": "an empty object (or no body at all)"},
    "NodeStatus": _obj({
        "node": {**_STR, "description": "this node's name ([cluster] node)"},
        "version": _STR,
        "draining": {**_BOOL, "description": "this node refuses new mail (SMTP 421 4.3.2, "
                                             "API 421 node_draining, /readyz not ready) "
                                             "and delivers what it holds"},
        "queue_depth": {**_INT, "description": "messages still queued on this node"},
        "drained": {**_BOOL, "description": "draining and the queue is empty"},
        "degraded": _DEGRADED}, ["node", "version", "draining", "queue_depth", "drained",
                                 "degraded"]),
    "ClusterNode": _obj({
        "name": _STR, "version": _STR, "queue_depth": _INT, "draining": _BOOL,
        "drain_since": {"type": ["number", "null"], "description": "Unix time"},
        "admin": {**_STR, "description": "its admin API address"},
        "smtp": {**_STR, "description": "its SMTP listeners' addresses, comma-separated"},
        "started": _NUM, "heartbeat": {**_NUM, "description": "Unix time of its last beat"},
        "heard_ago": {**_NUM, "description": "seconds since its last heartbeat"},
        "up": {**_BOOL, "description": "heard from within [cluster] node_timeout"}},
        ["name", "version", "queue_depth", "draining", "up", "heard_ago"]),
    "ClusterStatus": _obj({
        "node": _ref("NodeStatus"),
        "nodes": {"type": "array", "items": _ref("ClusterNode"),
                  "description": "every node's row, by name (empty: the database is "
                                 "unreachable from this node now)"},
        "database": {**_STR, "description": "the shared PostgreSQL's URL, password hidden"},
        "redis": {**_STR, "description": "the shared Redis's URL, password hidden"}},
        ["node", "nodes", "database", "redis"]),
}

_SINGLE = {"501": _err("this node is not in a cluster ([cluster] unset)")}


def _drain(flag: bool, errors: dict[str, Any]) -> dict[str, Any]:
    what = "drain" if flag else "undrain"
    body = {"required": False, "content": {"application/json": {"schema": _ref("NoFields")}}}
    summary = ("drain this node: it stops accepting new mail (SMTP 421 4.3.2, API 421 "
               "node_draining, /readyz not ready) while delivery empties its queue; stored "
               "in the shared database, so it survives a restart" if flag else
               "undrain this node: it accepts mail again")
    return {"post": {
        "summary": summary, "operationId": f"node_{what}", "tags": ["cluster"],
        "requestBody": body,
        "responses": {"200": _json(_ref("NodeStatus"), "this node's status after"),
                      "400": _err("the body is not a JSON object"),
                      "409": _err("the shared database cannot record it now (retry)"),
                      "422": _err("the body has a key (the message names it)"),
                      **_SINGLE, **errors}}}


def cluster_paths(errors: dict[str, Any]) -> dict[str, Any]:
    return {
        "/v1/cluster": {"get": {
            "summary": "every node of the cluster (heartbeat, version, queue depth, "
                       "draining) and this node's status", "operationId": "cluster_status",
            "tags": ["cluster"],
            "responses": {"200": _json(_ref("ClusterStatus"), "the cluster"),
                          **_SINGLE, **errors}}},
        "/v1/node": {"get": {
            "summary": "this node: draining, queue depth, drained", "operationId": "node_status",
            "tags": ["cluster"],
            "responses": {"200": _json(_ref("NodeStatus"), "this node"), **_SINGLE, **errors}}},
        "/v1/node/drain": _drain(True, errors),
        "/v1/node/undrain": _drain(False, errors),
    }
