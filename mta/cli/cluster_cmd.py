"""`mta cluster status` and `mta node …`: the cluster view, and draining this node (issue 19).

One job: parse the `cluster` and `node` subcommands, call the daemon's admin
API (GET /v1/cluster, GET /v1/node, POST /v1/node/drain|undrain through
`mta.admin.client.AdminClient`), print lines for people or, with --json, the
API's JSON as it is.

Public API:
    register(subparsers, config_parent)   adds `cluster status|secret`, `node status|drain|undrain`
    run(cfg, args) -> exit code           (both commands)
    cluster_status(client) / node_status(client) / node_drain(client, flag)   the calls
    wait_drained(client, timeout, interval=1.0, out=print) -> bool   polls GET /v1/node

Commands:
    cluster status [--json]     every node: NODE (this one marked "*"), STATE (up/down),
                                HEARD (seconds since its heartbeat), VERSION, QUEUE,
                                DRAINING; the engines this node cannot reach now
    cluster secret              print a new 32-byte key (base64) for `[cluster]
                                secret_file` (the same file on every node; no daemon)
    node status [--json]        this node: draining, queue depth, drained
    node drain [--wait] [--timeout 10m] [--json]
                                this node stops accepting new mail (SMTP 421 4.3.2,
                                API 421, /readyz not ready) and delivers its queue;
                                --wait polls until the queue is empty, printing
                                progress: exit 0 when drained, 1 on timeout
                                (--json: the API's answer first, then the progress)
    node undrain [--json]       accepting again
A drain is stored in the shared database: it holds across the node's
restarts until `mta node undrain`.
Exit codes: 0 ok, 1 failure (daemon unreachable, not in a cluster — "[cluster]
unset" —, the database cannot record it now, --wait timed out), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from mta.admin.client import AdminClient, AdminError, AdminUnavailable, JsonObject
from mta.cli.queue_cmd import connect, fail_admin
from mta.config import Config
from mta.core.durations import DurationError, parse_duration
from mta.runtime.cluster_domains import new_secret

__all__ = ["register", "run", "cluster_status", "node_status", "node_drain", "wait_drained"]

DEFAULT_TIMEOUT = "10m"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30s, 10m, 1h)") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    cluster = subparsers.add_parser("cluster", parents=[config_parent],
                                    help="the nodes of the cluster ([cluster])")
    csub = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    st = csub.add_parser("status", parents=[config_parent],
                         help="every node: up/down, heartbeat, version, queue, draining")
    st.add_argument("--json", action="store_true")
    csub.add_parser("secret", parents=[config_parent],
                    help="print a new key for [cluster] secret_file (same file on every node)")
    node = subparsers.add_parser("node", parents=[config_parent],
                                 help="this node of the cluster: status, drain, undrain")
    nsub = node.add_subparsers(dest="action", required=True, metavar="ACTION")
    ns = nsub.add_parser("status", parents=[config_parent],
                         help="this node: draining, queue depth, drained")
    ns.add_argument("--json", action="store_true")
    dr = nsub.add_parser("drain", parents=[config_parent],
                         help="stop accepting new mail; delivery empties the queue")
    dr.add_argument("--wait", action="store_true",
                    help="wait until the queue is empty, printing progress (exit 1 on "
                         "timeout)")
    dr.add_argument("--timeout", type=_duration, default=parse_duration(DEFAULT_TIMEOUT),
                    metavar="DURATION", help=f"how long --wait waits (default {DEFAULT_TIMEOUT})")
    dr.add_argument("--json", action="store_true")
    un = nsub.add_parser("undrain", parents=[config_parent], help="accept new mail again")
    un.add_argument("--json", action="store_true")


# ---- the calls --------------------------------------------------------------------
# (AdminClient's generic JSON call: it has no cluster methods of its own)

def cluster_status(client: AdminClient) -> JsonObject:
    return client._object("GET", "/v1/cluster")


def node_status(client: AdminClient) -> JsonObject:
    return client._object("GET", "/v1/node")


def node_drain(client: AdminClient, flag: bool) -> JsonObject:
    return client._object("POST", "/v1/node/drain" if flag else "/v1/node/undrain", body={})


def wait_drained(client: AdminClient, timeout: float, interval: float = 1.0,
                 out: Callable[[str], None] = print) -> bool:
    """Poll GET /v1/node until this node's queue is empty (True) or `timeout`
    seconds pass (False); a line each time the depth changes."""
    deadline = time.monotonic() + timeout
    shown: int | None = None
    while True:
        st = node_status(client)
        depth = int(st.get("queue_depth") or 0)
        if depth == 0:
            out(f"{st.get('node', '?')} drained: the queue is empty")
            return True
        if not st.get("draining"):
            out(f"{st.get('node', '?')} is no longer draining (undrained meanwhile)")
            return False
        if depth != shown:
            out(f"{st.get('node', '?')} draining: {depth} message{'s' * (depth != 1)} queued")
            shown = depth
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))


# ---- the commands -----------------------------------------------------------------

def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.command == "cluster" and args.action == "secret":
        print(new_secret())
        return 0
    try:
        client = connect(cfg)
        if args.command == "cluster":
            return _cluster(client, args)
        if args.action == "status":
            return _node(client, args)
        return _drain(client, args)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _degraded(node: JsonObject) -> str:
    degraded = node.get("degraded") or {}
    down = [e for e in ("database", "redis") if degraded.get(e)]
    return f"degraded: {' and '.join(down)} unreachable from this node" if down else ""


def _cluster(client: AdminClient, args: argparse.Namespace) -> int:
    data = cluster_status(client)
    if args.json:
        _dump(data)
        return 0
    me = data.get("node") or {}
    print(f"cluster  database {data.get('database', '?')}  redis {data.get('redis', '?')}")
    table = [("NODE", "STATE", "HEARD", "VERSION", "QUEUE", "DRAINING")]
    for r in data.get("nodes") or []:
        heard = r.get("heard_ago")
        table.append((f"{r.get('name', '?')}{' *' if r.get('this') else ''}",
                      "up" if r.get("up") else "down",
                      f"{heard:.1f}s ago" if isinstance(heard, (int, float)) else "-",
                      str(r.get("version", "?")), str(r.get("queue_depth", "?")),
                      "draining" if r.get("draining") else "no"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths)).rstrip())
    if len(table) == 1:
        print("(no node rows: the shared database is unreachable from this node)")
    print(f"* this node: {me.get('node', '?')}")
    if _degraded(me):
        print(_degraded(me))
    return 0


def _describe(st: JsonObject) -> str:
    depth = st.get("queue_depth", "?")
    if st.get("drained"):
        state = "drained (draining, the queue is empty)"
    elif st.get("draining"):
        state = "draining (refusing new mail, delivering its queue)"
    else:
        state = "accepting mail"
    return f"node {st.get('node', '?')}: {state}; {depth} queued"


def _node(client: AdminClient, args: argparse.Namespace) -> int:
    st = node_status(client)
    if args.json:
        _dump(st)
        return 0
    print(_describe(st))
    if _degraded(st):
        print(_degraded(st))
    return 0


def _drain(client: AdminClient, args: argparse.Namespace) -> int:
    flag = args.action == "drain"
    st = node_drain(client, flag)
    if args.json:
        _dump(st)
    else:
        print(_describe(st))
    if not (flag and args.wait):
        return 0
    if wait_drained(client, args.timeout):
        return 0
    last = node_status(client)
    print(f"mta: timed out after {args.timeout:g}s: {last.get('queue_depth', '?')} still "
          f"queued on {last.get('node', '?')} (it stays draining)", file=sys.stderr)
    return 1
