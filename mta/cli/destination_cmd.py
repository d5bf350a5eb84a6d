"""`mta destination …`: suspend, resume or flush a delivery destination.

One job: parse `destination` subcommands and call the running daemon's admin
API (`POST /v1/destinations/{name}/suspend|resume|flush`).

Public API:
    register(subparsers, config_parent)   adds `destination suspend|resume|flush NAME`
    run(cfg, args) -> exit code

NAME is a destination as `mta queue summary` shows it (a domain, "[host]:port"
for a smarthost, "sandbox"). A name with no mail yet is accepted: a
suspension then applies to mail that arrives later.
Exit codes: 0 ok, 1 failure (daemon unreachable, refused), 2 usage error.
"""

from __future__ import annotations

import argparse
import json

from mta.admin.backend import DESTINATION_ACTIONS
from mta.admin.client import AdminError, AdminUnavailable
from mta.cli.queue_cmd import connect, fail_admin

__all__ = ["register", "run"]

_HELP = {"suspend": "stop delivering to the destination until resumed",
         "resume": "resume delivery to a suspended destination",
         "flush": "make every queued recipient of the destination due now"}
_PAST = {"suspend": "suspended", "resume": "resumed", "flush": "flushed"}


def register(subparsers, config_parent: argparse.ArgumentParser) -> None:
    dest = subparsers.add_parser("destination", parents=[config_parent],
                                 help="suspend, resume or flush a delivery destination")
    dsub = dest.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in DESTINATION_ACTIONS:
        a = dsub.add_parser(action, parents=[config_parent], help=_HELP[action])
        a.add_argument("name", metavar="NAME")
        a.add_argument("--json", action="store_true")


def run(cfg, args) -> int:
    try:
        result = connect(cfg).destination_action(args.name, args.action)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"destination {result.get('destination', args.name)}: {_PAST[args.action]} "
              f"(now {result.get('state', '?')})")
    return 0
