"""`mta warmup …` and `mta shaping …`: the running daemon's traffic shaping
(issue 15).

One job: parse the `warmup` and `shaping` subcommands, call the daemon's
admin API (/v1/warmup, /v1/shaping, /v1/shaping/lift through
`mta.admin.client.AdminClient`), print tables and lines for people or, with
--json, the API's JSON as it is.

Public API:
    register(subparsers, config_parent)   adds `warmup status` and
                                          `shaping show|lift`
    run(cfg, args) -> exit code           either command
    limits_text(limits) -> str            a table layer's limits, short

Commands:
    warmup status [--json]      SOURCE ADDRESS POOL DAY CAP USED NOW, one
                                [[egress]] source a line: its sending day,
                                today's cap ("warm": none), sent today, and
                                how many more may go right now
    shaping show [--json]       the table in force (version, mx_rollup, each
                                provider: MX suffixes, per-site limits, limits
                                across the provider, number of rules; site and
                                domain overrides), the egress pools, then
                                "Actions in force:" (as `mta queue summary`)
    shaping lift TARGET [--json]   end actions before their time: TARGET is an
                                action's id, a site (every action on it) or
                                "tenant@provider"; exit 1 when none matched
Limits print short: conn (connection_limit), msgs/conn
(max_deliveries_per_connection), rate (max_message_rate), conn_rate
(max_connection_rate), tls, connect and command (timeouts).
Exit codes: 0 ok, 1 failure (daemon unreachable, no shaping, nothing to
lift), 2 usage. Times print as ISO 8601 UTC with how far from now.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mta.admin.client import AdminClient, AdminError, AdminUnavailable, JsonObject
from mta.cli.queue_cmd import action_line, connect, fail_admin
from mta.config import Config

__all__ = ["register", "run", "limits_text"]

_SHORT = {"connection_limit": "conn", "max_deliveries_per_connection": "msgs/conn",
          "max_message_rate": "rate", "max_connection_rate": "conn_rate", "tls": "tls",
          "connect_timeout": "connect", "command_timeout": "command"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    warmup = subparsers.add_parser("warmup", parents=[config_parent],
                                   help="warm-up of the egress source addresses")
    wsub = warmup.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = wsub.add_parser("status", parents=[config_parent],
                             help="each source: sending day, today's cap, used, allowed now")
    status.add_argument("--json", action="store_true")

    shaping = subparsers.add_parser("shaping", parents=[config_parent],
                                    help="traffic shaping by mailbox provider")
    ssub = shaping.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = ssub.add_parser("show", parents=[config_parent],
                           help="the shaping table in force, pools, actions in force")
    show.add_argument("--json", action="store_true")
    lift = ssub.add_parser("lift", parents=[config_parent],
                           help="end a reply rule's action before its time")
    lift.add_argument("target", metavar="TARGET",
                      help='an action id, a site, or "tenant@provider" (see `mta shaping '
                           'show`)')
    lift.add_argument("--json", action="store_true")


def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        client = connect(cfg)
        if args.command == "warmup":
            return _warmup(client, args)
        if args.action == "show":
            return _show(client, args)
        return _lift(client, args)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip())


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


# ---------------------------------------------------------------- warmup

def _warmup(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.warmup()
    if args.json:
        _dump(rows)
        return 0
    if not rows:
        print("no [[egress]] sources: connections use the OS's choice of address "
              "(nothing to warm up)")
        return 0
    _table(("SOURCE", "ADDRESS", "POOL", "DAY", "CAP", "USED", "NOW"),
           [(str(r.get("source", "")), str(r.get("address", "")), str(r.get("pool", "")),
             _or_dash(r.get("day")), "warm" if r.get("cap") is None else str(r["cap"]),
             _or_dash(r.get("used")), _or_dash(r.get("allowed_now"))) for r in rows])
    return 0


# ------------------------------------------------------------------ show

def limits_text(limits: Mapping[str, Any] | None) -> str:
    """`conn=5 msgs/conn=50 tls=required`, or "-" when nothing is set."""
    parts = [f"{_SHORT.get(k, k)}={v}" for k, v in (limits or {}).items()
             if k in _SHORT]
    return " ".join(parts) or "-"


def _providers(providers: Sequence[JsonObject]) -> None:
    if not providers:
        print("no providers")
        return
    _table(("PROVIDER", "MATCH", "PER SITE", "PROVIDER TOTAL", "RULES"),
           [(str(p.get("name", "")), " ".join(p.get("match") or []) or "-",
             limits_text(p.get("site")), limits_text(p.get("total")),
             str(len(p.get("rules") or []))) for p in providers])


def _overrides(table: JsonObject) -> None:
    for name, limits in (table.get("sites") or {}).items():
        print(f"site {name}: {limits_text(limits)}")
    for name, d in (table.get("domains") or {}).items():
        rollup = "" if d.get("mx_rollup", True) else " (own queue: mx_rollup off)"
        print(f"domain {name}: {limits_text(d)}{rollup}")
    print(f"rules for every site: {len(table.get('rules') or [])}")


def _pools(pools: Mapping[str, Sequence[str]]) -> None:
    if not pools:
        print("pools: none (no [[egress]] sources: the OS picks the source address)")
        return
    print("pools: " + "; ".join(f"{name} ({', '.join(sources)})"
                                for name, sources in sorted(pools.items())))


def _actions(actions: Sequence[JsonObject]) -> None:
    if not actions:
        print("no actions in force")
        return
    print("Actions in force:")
    for a in actions:
        print(f"  {action_line(a)}")
        print(f"    id {a.get('id', '?')}")


def _show(client: AdminClient, args: argparse.Namespace) -> int:
    data = client.shaping()
    if args.json:
        _dump(data)
        return 0
    table = data.get("table") or {}
    print(f"shaping table {table.get('version', '?')}, mx_rollup "
          f"{'on' if data.get('mx_rollup') else 'off'}")
    print(f"default: {limits_text(table.get('default'))}")
    print()
    _providers(table.get("providers") or [])
    print()
    _overrides(table)
    _pools(data.get("pools") or {})
    print()
    _actions(data.get("actions") or [])
    return 0


# ------------------------------------------------------------------ lift

def _lift(client: AdminClient, args: argparse.Namespace) -> int:
    try:
        lifted = client.shaping_lift(args.target)
    except AdminError as exc:
        if exc.status != 404:
            raise
        print(f"mta: nothing lifted: no action in force matches {args.target!r} (give an "
              "action id, a site, or tenant@provider: see `mta shaping show`)", file=sys.stderr)
        return 1
    if args.json:
        _dump(lifted)
        return 0
    for a in lifted:
        print(f"lifted {a.get('key', '?')}  {a.get('action', '?')}  "
              f"(rule \"{a.get('rule', '')}\", id {a.get('id', '?')})")
    return 0
