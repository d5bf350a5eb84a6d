"""`mta events tail [--follow] [--json] [--type T,…] [--recipient R] [--tenant T]
[--after SEQ]`: the message ledger, read through the running daemon's admin API
(--tenant: only the events of that tenant's credentials and API keys).

Without --after it starts with the last `--last` events (default 20); with
--follow it keeps polling and prints new events as they are appended, so an
operator (or a script reading --json lines) resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mta.admin.client import AdminClient, AdminError, AdminUnavailable
from mta.cli.queue_cmd import format_event
from mta.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    events = sub.add_parser("events", parents=[config_parent], help="the message ledger")
    esub = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    tail = esub.add_parser("tail", parents=[config_parent],
                           help="print ledger events (like tail; --follow keeps going)")
    tail.add_argument("--follow", "-f", action="store_true")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--type", help="comma-separated event types")
    tail.add_argument("--recipient")
    tail.add_argument("--tenant", help="only this tenant's events")
    tail.add_argument("--after", type=int, help="start after this sequence number")
    tail.add_argument("--last", type=int, default=20, help="without --after: the last N events")
    tail.add_argument("--interval", type=float, default=1.0,
                      help="seconds between polls with --follow")


def run(cfg: Config, args: argparse.Namespace) -> int:
    client = AdminClient.from_config(cfg)
    try:
        after = args.after
        if after is None:
            after = _start_for_last(client, args)
        while True:
            page = client.events(after=after, types=args.type, recipient=args.recipient,
                                 tenant=args.tenant, limit=1000)
            for e in page["events"]:
                print(json.dumps(e) if args.json else format_event(e), flush=True)
            after = page["next_after"]
            if len(page["events"]) == 1000:
                continue
            if not args.follow:
                return 0
            time.sleep(args.interval)
    except AdminUnavailable as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    except AdminError as exc:
        print(f"mta: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _start_for_last(client: AdminClient, args: argparse.Namespace) -> int:
    """The sequence number to start after so the first output is the last N events."""
    seqs: list[int] = []
    after = 0
    while True:
        page = client.events(after=after, types=args.type, recipient=args.recipient,
                             tenant=args.tenant, limit=1000)
        seqs = (seqs + [e["seq"] for e in page["events"]])[-(args.last + 1):]
        after = page["next_after"]
        if len(page["events"]) < 1000:
            break
    if len(seqs) <= args.last:
        return 0
    return seqs[0]
