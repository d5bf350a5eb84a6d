"""`mta destination …`: suspend, resume or flush a delivery destination.

One job: parse `destination` subcommands and call the running daemon's admin
API (`POST /v1/destinations/{name}/suspend|resume|flush`).

Public API:
    register(subparsers, config_parent)   adds `destination suspend|resume|flush NAME`
    run(cfg, args) -> exit code

NAME is a destination as `mta queue summary` shows it (a domain, "[host]:port"
for a smarthost, "sandbox"; the syntax is mta.admin.inputs.parse_destination,
checked here before the daemon is asked) or any recipient domain. The daemon
resolves a domain the way delivery does: a routed domain acts on its
route's destination and the output says so ("example.com is routed to
[10.0.0.1]:25; suspended [10.0.0.1]:25"). A domain with no mail yet is
accepted (a suspension then applies to mail that arrives later); a
"[host]:port" that is no configured route is refused by the daemon (404).
Exit codes: 0 ok, 1 failure (invalid name, daemon unreachable, refused),
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from mta.admin.backend import DESTINATION_ACTIONS
from mta.admin.client import AdminError, AdminUnavailable
from mta.admin.inputs import parse_destination
from mta.cli.queue_cmd import connect, fail_admin
from mta.config import Config

__all__ = ["register", "run"]

_HELP = {"suspend": "stop delivering to the destination until resumed",
         "resume": "resume delivery to a suspended destination",
         "flush": "make every queued recipient of the destination due now"}
_PAST = {"suspend": "suspended", "resume": "resumed", "flush": "flushed"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    dest = subparsers.add_parser("destination", parents=[config_parent],
                                 help="suspend, resume or flush a delivery destination")
    dsub = dest.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in DESTINATION_ACTIONS:
        a = dsub.add_parser(action, parents=[config_parent], help=_HELP[action])
        a.add_argument("name", metavar="NAME")
        a.add_argument("--json", action="store_true")


def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        name = parse_destination(args.name)[1]
    except ValueError as exc:
        print(f"mta: invalid destination: {exc}", file=sys.stderr)
        return 1
    try:
        result = connect(cfg).destination_action(name, args.action)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    dest, past = result.get("destination", name), _PAST[args.action]
    requested = result.get("requested", name)
    if requested != dest:
        # a route ("[host]:port", the sandbox), or the MX site the domain shares
        how = "is routed to" if dest.startswith("[") or dest == "sandbox" else \
            "shares the MX site"
        print(f"{requested} {how} {dest}; {past} {dest} (now {result.get('state', '?')})")
    else:
        print(f"destination {dest}: {past} (now {result.get('state', '?')})")
    return 0
