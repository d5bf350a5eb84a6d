"""`mta suppression …`: the suppression list from the command line.

One job: parse `suppression` subcommands, call `mta.spool.suppression_admin`
(safe while the daemon runs), print.

Public API:
    register(subparsers, config_parent)   adds `suppression list|show|add|remove|import|export`
    run(cfg, args) -> exit code

Commands (all accept --config; MTA_STATE_DIR overrides server.state_dir):
    suppression list [--json] [--reason R] [--scope S] [--all]
        active entries (--all: expired ones too); one per line:
        ADDRESS  SCOPE(* = global)  REASON  CREATED  EXPIRES
    suppression show ADDRESS [--json]   every entry of the address (any scope)
        and its soft-failure count; exit 1 when it has no entry
    suppression add ADDRESS [--reason manual|unsubscribe|hard_bounce|complaint]
        [--scope TENANT] [--expires 30d]   replaces an existing entry
    suppression remove ADDRESS [--scope S]     exit 1 when there was none
    suppression import FILE.csv   address[,reason[,scope[,expires]]], header optional;
                                  active entries are kept (reported as skipped)
    suppression export [--json]   every entry as CSV (default, importable) or JSON
JSON objects: address, scope ("" = global), reason, queue_id, reply, created,
expires (Unix times; expires null = never).
Exit codes: 0 ok, 1 failure (bad address, bad CSV, nothing to remove), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Protocol

from mta.cli.times import utc
from mta.config import Config
from mta.core.durations import DurationError, parse_duration
from mta.core.envelope import SUPPRESSION_REASONS

__all__ = ["register", "run"]

# An operator may add any reason but soft_bounce (the soft-failure counter's own).
_ADD_REASONS = tuple(r for r in SUPPRESSION_REASONS if r != "soft_bounce")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    sup = subparsers.add_parser("suppression", parents=[config_parent],
                                help="addresses that are never mailed (bounced, complained, …)")
    ssub = sup.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = ssub.add_parser("list", parents=[config_parent], help="list suppressed addresses")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--reason", choices=SUPPRESSION_REASONS)
    ls.add_argument("--scope", metavar="S", help='only this scope: a tenant\'s list '
                    '("default", "acme", …; "" = the global list)')
    ls.add_argument("--all", action="store_true", help="include expired entries")
    show = ssub.add_parser("show", parents=[config_parent], help="one address's entries")
    show.add_argument("address")
    show.add_argument("--json", action="store_true")
    add = ssub.add_parser("add", parents=[config_parent], help="suppress an address")
    add.add_argument("address")
    add.add_argument("--reason", choices=_ADD_REASONS, default="manual")
    add.add_argument("--scope", metavar="TENANT", default="",
                     help="suppress only for this tenant's mail (default: global, every tenant)")
    add.add_argument("--expires", metavar="DURATION", help="e.g. 30d (default: never)")
    rm = ssub.add_parser("remove", parents=[config_parent], help="unsuppress an address")
    rm.add_argument("address")
    rm.add_argument("--scope", metavar="S", default="")
    imp = ssub.add_parser("import", parents=[config_parent], help="add entries from a CSV file")
    imp.add_argument("file", metavar="FILE.csv")
    exp = ssub.add_parser("export", parents=[config_parent],
                          help="print every entry (CSV, or --json)")
    exp.add_argument("--json", action="store_true")


def _t(t: float | None) -> str:
    return "never" if t is None else utc(t)


class _Entry(Protocol):
    """A suppression entry as listed (the spool's SuppressionView)."""

    @property
    def address(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def created(self) -> float: ...
    @property
    def expires(self) -> float | None: ...

    def is_active(self, now: float) -> bool: ...


def _line(v: _Entry, now: float) -> str:
    expired = "" if v.is_active(now) else "  (expired)"
    return (f"{v.address}\t{v.scope or '*'}\t{v.reason}\tcreated {_t(v.created)}\t"
            f"expires {_t(v.expires)}{expired}")


def _fail(msg: str) -> int:
    print(f"mta: {msg}", file=sys.stderr)
    return 1


def run(cfg: Config, args: argparse.Namespace) -> int:
    from mta.runtime.suppressions import suppression_admin as admin
    state = cfg.server.state_dir
    now = time.time()
    try:
        if args.action == "list":
            rows = admin.list_entries(state, reason=args.reason, scope=args.scope,
                                      include_expired=args.all, now=now)
            if args.json:
                print(json.dumps([v.to_dict() for v in rows], indent=2))
            else:
                for v in rows:
                    print(_line(v, now))
                print(f"-- {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
            return 0
        if args.action == "show":
            rows = admin.get(state, args.address)
            soft = admin.soft_failures(state, args.address)
            if args.json:
                print(json.dumps({
                    "address": args.address,
                    "suppressed": any(v.is_active(now) for v in rows),
                    "entries": [v.to_dict() for v in rows],
                    "soft_failures": None if soft is None else
                    {"count": soft[0], "first_at": soft[1], "last_at": soft[2]},
                }, indent=2))
            else:
                for v in rows:
                    print(_line(v, now))
                    if v.queue_id or v.reply:
                        print(f"    message {v.queue_id or '-'}  reply {v.reply or '-'}")
                if soft is not None:
                    print(f"soft failures: {soft[0]} since {_t(soft[1])} (last {_t(soft[2])})")
                if not rows:
                    print(f"{args.address} is not on the suppression list", file=sys.stderr)
            return 0 if rows else 1
        if args.action == "add":
            expires = None
            if args.expires:
                try:
                    expires = now + parse_duration(args.expires)
                except DurationError as exc:
                    return _fail(str(exc))
            v = admin.add(state, args.address, reason=args.reason, scope=args.scope,
                          expires=expires, now=now)
            print(f"suppressed {v.address} ({v.reason}, scope {v.scope or 'global'}, "
                  f"expires {_t(v.expires)})")
            return 0
        if args.action == "remove":
            if admin.remove(state, args.address, args.scope):
                print(f"removed {args.address} (scope {args.scope or 'global'})")
                return 0
            return _fail(f"{args.address} has no suppression in scope "
                         f"{args.scope or 'global'}")
        if args.action == "import":
            added, skipped = admin.import_csv(state, args.file, now)
            print(f"imported {added}, skipped {skipped} (already suppressed)")
            return 0
        # export
        if args.json:
            rows = admin.list_entries(state, include_expired=True, now=now)
            print(json.dumps([v.to_dict() for v in rows], indent=2))
        else:
            admin.export_csv(state, sys.stdout)
        return 0
    except admin.SuppressionAdminError as exc:
        return _fail(str(exc))
