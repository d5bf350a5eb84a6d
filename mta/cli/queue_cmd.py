"""`mta queue …`: inspect and steer the running daemon's queue.

One job: parse `queue` subcommands, call the daemon's admin API through
`mta.admin.client.AdminClient`, print tables (like mailq, qshape, postcat)
or, with --json, the API's JSON as it is.

Public API:
    register(subparsers, config_parent)   adds `queue list|summary|show|hold|release|
                                          retry|bounce|delete`
    run(cfg, args) -> exit code
    connect(cfg) -> AdminClient           shared with destination_cmd
    fail_admin(exc) -> exit code          prints an admin error the house way
    action_line(action, now=None) -> str  a shaping action for people (shared
                                          with shaping_cmd)

Commands (all accept --config and --json):
    queue list [--state S] [--domain D] [--sender S] [--recipient R] [--tenant T]
               [--limit N] [--all]
        messages not yet done (--all: every message still in the index),
        in arrival order; pages through the API; --limit 0 lists everything
    queue summary                  destinations × age buckets, like qshape;
                                   then each destination's last error, and the
                                   shaping rules' actions in force on them
                                   (reason and end time; `mta shaping lift`)
    queue show ID [--body]         envelope, recipients, attempts, like postcat;
                                   --body prints the message exactly as queued
    queue hold|release|retry|bounce|delete ID…
    queue hold|release|retry|bounce|delete --all [filters] | filters
                                   the action on every matching message; --all
                                   with no filter means every message
    --tenant T                     only the mail of tenant T (whose credential
                                   or API key sent it; "default": nobody's)
Exit codes: 0 ok, 1 failure (daemon unreachable, unknown id, refused), 2 usage.
Times print as ISO 8601 UTC (`2026-11-24 03:00:00Z`, as everywhere in the
CLI), next attempts and arrival also relative (`in 4m`, `2h5m ago`); never a
raw epoch (--json keeps the API's numbers). `show` labels each attempt by
what it did: `deferred` (a 4xx, retried later; the index keeps the
recipient's state after it, `queued`), `delivered`, `bounced`, `expired`,
or what an operator or a report by mail did.
The daemon's address and token come from the config ([admin] address, token
or state_dir/admin-token).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from mta.admin.backend import MESSAGE_ACTIONS, MESSAGE_STATES
from mta.admin.client import AdminClient, AdminError, AdminUnavailable, JsonObject, token_path
from mta.cli.times import utc_or, when
from mta.config import Config
from mta.core.qshape import AGE_BUCKETS

__all__ = ["register", "run", "connect", "fail_admin", "action_line"]

_PAST = {"hold": "held", "release": "released", "retry": "scheduled for retry now",
         "bounce": "bounced", "delete": "deleted"}
_HELP = {"hold": "stop delivering messages until released",
         "release": "release held messages",
         "retry": "make queued recipients due now",
         "bounce": "bounce queued recipients (senders get a DSN)",
         "delete": "delete messages (no DSN)"}


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", choices=MESSAGE_STATES, metavar="S",
                   help="active (default for list: not yet done), all, queued, deferred, "
                        "held, delivered, bounced, expired, suppressed")
    p.add_argument("--domain", metavar="D", help="a recipient's domain")
    p.add_argument("--sender", metavar="S", help="envelope sender (\"<>\" for bounces)")
    p.add_argument("--recipient", metavar="R", help="a recipient address")
    p.add_argument("--tenant", metavar="T",
                   help="a tenant's mail (sent with its credentials or API keys)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    queue = subparsers.add_parser("queue", parents=[config_parent],
                                  help="inspect and steer the running daemon's queue")
    qsub = queue.add_subparsers(dest="action", required=True, metavar="ACTION")

    ql = qsub.add_parser("list", parents=[config_parent], help="queued messages (like mailq)")
    _filter_args(ql)
    ql.add_argument("--all", action="store_true",
                    help="include finished messages (same as --state all)")
    ql.add_argument("--limit", type=int, default=1000, metavar="N",
                    help="show at most N messages (default 1000; 0: no limit)")
    ql.add_argument("--json", action="store_true")

    qs = qsub.add_parser("summary", parents=[config_parent],
                         help="destinations × age buckets (like qshape)")
    qs.add_argument("--json", action="store_true")

    qshow = qsub.add_parser("show", parents=[config_parent],
                            help="one message: envelope, recipients, attempts (like postcat)")
    qshow.add_argument("id")
    qshow.add_argument("--body", action="store_true",
                       help="print the message itself, exactly as queued")
    qshow.add_argument("--json", action="store_true")

    for action in MESSAGE_ACTIONS:
        a = qsub.add_parser(action, parents=[config_parent], help=_HELP[action])
        a.add_argument("ids", nargs="*", metavar="ID")
        a.add_argument("--all", action="store_true",
                       help="every message matching the filters (every message if none)")
        _filter_args(a)
        a.add_argument("--json", action="store_true")


def connect(cfg: Config) -> AdminClient:
    try:
        return AdminClient.from_config(cfg)
    except PermissionError:
        raise AdminUnavailable(
            f"cannot read the admin token at {token_path(cfg.server.state_dir)} (permission "
            f"denied): run as the mta user or root, or set [admin] token") from None


def fail_admin(exc: AdminUnavailable | AdminError) -> int:
    msg = exc.message if isinstance(exc, AdminError) else str(exc)
    print(f"mta: {msg}", file=sys.stderr)
    return 1


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2))


def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        client = connect(cfg)
        if args.action == "list":
            return _list(client, args)
        if args.action == "summary":
            return _summary(client, args)
        if args.action == "show":
            return _show(client, args)
        return _act(client, args)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)


# ------------------------------------------------------------------ list

def attempt_label(a: JsonObject) -> str:
    """What an attempt did. Its stored state is the recipient's state after
    it, so a deferral (4xx, retried later) reads `queued`: say deferred."""
    state = a.get("state", "")
    return "deferred" if state == "queued" else state


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    if args.limit < 0:
        print("mta: --limit must be 0 (no limit) or more", file=sys.stderr)
        return 2
    state = args.state or ("all" if args.all else None)
    filters = {"state": state, "domain": args.domain, "sender": args.sender,
               "recipient": args.recipient, "tenant": args.tenant}
    rows: list[JsonObject] = []
    cursor = None
    while True:
        want = min(args.limit - len(rows), 1000) if args.limit else 1000
        page, cursor = client.list_messages(limit=want, cursor=cursor, **filters)
        rows.extend(page)
        if not cursor or (args.limit and len(rows) >= args.limit):
            break
    more = bool(cursor)
    if args.json:
        _dump(rows)
        return 0
    if not rows:
        print("Mail queue is empty" if not any(filters.values()) else "No matching messages")
        return 0
    for m in rows:
        flags = "".join(f"  ({f})" for f, on in (("DSN", m.get("is_dsn")), ("held", m.get("held")))
                        if on)
        print(f"{m['id']}  {m.get('size', 0):>8}  {utc_or(m.get('received_at'))}  "
              f"<{m.get('sender', '')}>{flags}")
        for r in m.get("recipients", []):
            extra = f"next {when(r.get('next_attempt'))}" if r.get("state") == "queued" else ""
            print(f"    {r['state']:<9} {r['address']}  attempts={r.get('attempts', 0)} {extra}"
                  .rstrip())
            if r.get("last_reply"):
                print(f"              ({r['last_reply']})")
    tail = " (more may match: raise --limit, or --limit 0 for all)" if more else ""
    print(f"-- {len(rows)} message(s){tail}")
    return 0


# --------------------------------------------------------------- summary

def _summary(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.queue_summary()
    if args.json:
        _dump(rows)
        return 0
    if not rows:
        print("Mail queue is empty")
        return 0
    width = min(max([len("DESTINATION"), *(len(r["destination"]) for r in rows)]), 48)
    header = f"{'DESTINATION':<{width}}  {'STATE':<9} {'TOTAL':>6} {'HELD':>5}" + "".join(
        f" {b:>6}" for b in AGE_BUCKETS)

    def line(name: str, state: str, total: int, held: int,
             buckets: Mapping[str, int]) -> str:
        return (f"{name[:width]:<{width}}  {state:<9} {total:>6} {held:>5}"
                + "".join(f" {buckets.get(b, 0):>6}" for b in AGE_BUCKETS))

    print(header)
    totals = {b: sum(r.get("age_buckets", {}).get(b, 0) for r in rows) for b in AGE_BUCKETS}
    print(line("TOTAL", "", sum(r.get("recipients", 0) for r in rows),
               sum(r.get("held", 0) for r in rows), totals))
    for r in rows:
        print(line(r["destination"], r.get("state", ""), r.get("recipients", 0),
                   r.get("held", 0), r.get("age_buckets", {})))
    errors = [r for r in rows if r.get("last_error")]
    if errors:
        print()
        for r in errors:
            print(f"{r['destination']}: {r['last_error']}")
    # the same action shows on each destination it concerns: once here
    actions = {a.get("id"): a for r in rows for a in r.get("actions") or []}
    if actions:
        print()
        print("Shaping rules in force:")
        for a in actions.values():
            print(f"  {action_line(a)}")
    return 0


def action_line(a: JsonObject, now: float | None = None) -> str:
    """`KEY  ACTION  until <UTC> (in 59m)  rule "NAME": REASON` (issue 15)."""
    reason = f": {a['reason']}" if a.get("reason") else ""
    return (f"{a.get('key', '?')}  {a.get('action', '?')}  until {when(a.get('until'), now)}"
            f"  rule \"{a.get('rule', '')}\"{reason}")


# ------------------------------------------------------------------ show

def _show(client: AdminClient, args: argparse.Namespace) -> int:
    if args.body and not args.json:
        body = client.message_body(args.id)
        sys.stdout.flush()
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return 0
    m = client.get_message(args.id)
    try:
        m = {**m, "events": client.message_events(args.id)}   # the ledger timeline
    except AdminError as exc:
        if exc.status != 501:
            raise
    if args.json:
        if args.body:
            # JSON holds text: a non-UTF-8 (8bit) body is shown with U+FFFD;
            # `show ID --body` without --json gives the exact bytes.
            m = {**m, "body": client.message_body(args.id).decode("utf-8", "replace")}
        _dump(m)
        return 0
    flags = [f for f, on in (("dsn", m.get("is_dsn")), ("held", m.get("held")),
                             ("done", m.get("done"))) if on]
    print("*** ENVELOPE ***")
    print(f"id:        {m['id']}")
    print(f"received:  {when(m.get('received_at'))}")
    print(f"sender:    <{m.get('sender', '')}>")
    print(f"size:      {m.get('size', 0)}")
    if flags:
        print(f"flags:     {' '.join(flags)}")
    print("*** RECIPIENTS ***")
    for r in m.get("recipients", []):
        extra = f"  next {when(r.get('next_attempt'))}" if r.get("state") == "queued" else ""
        print(f"{r['state']:<10} {r['address']}  attempts={r.get('attempts', 0)}{extra}")
        if r.get("last_reply"):
            remote = f"  ({r['last_remote']})" if r.get("last_remote") else ""
            print(f"{'':<10} last: {r['last_reply']}{remote}")
    attempts = m.get("attempts", [])
    address_of = {r.get("idx"): r.get("address", "") for r in m.get("recipients", [])}
    print("*** ATTEMPTS ***")
    if not attempts:
        print("(none)")
    for a in attempts:
        host = a.get("remote_host") or "-"
        ip = f" [{a['remote_ip']}]" if a.get("remote_ip") else ""
        tls = f" tls={a['tls']}" if a.get("tls") else ""
        rcpt = a.get("recipient") or address_of.get(a.get("rcpt_idx"), "")
        print(f"{utc_or(a.get('at'))}  {rcpt}  {attempt_label(a)}  "
              f"{a.get('duration', 0):.1f}s  {host}{ip}{tls}")
        if a.get("reply"):
            print(f"{'':<22}{a['reply']}")
    print("*** TIMELINE ***")
    for e in m.get("events", []):
        print(format_event(e))
    print("*** END ***")
    return 0


# Ledger detail keys shown on an event line; those in _TIME_KEYS are epoch
# seconds and print as times.
_EVENT_KEYS = ("reply", "remote_host", "tls", "class", "reason", "status", "next_attempt",
               "feedback_type", "duplicate_of", "by", "stage")
_TIME_KEYS = frozenset({"next_attempt"})


def _detail(key: str, value: object) -> str:
    if key in _TIME_KEYS and isinstance(value, (int, float)):
        return when(value)
    return str(value)


def format_event(e: JsonObject) -> str:
    """One ledger event as a line: time, seq, type, id, recipient, key details."""
    d = e.get("detail") or {}
    extra = "  ".join(f"{k}={_detail(k, d[k])}" for k in _EVENT_KEYS
                      if d.get(k) not in (None, ""))
    return (f"{utc_or(e.get('at'))}  #{e.get('seq')}  {e.get('type', ''):<11} "
            f"{e.get('queue_id') or '-'}  {e.get('recipient') or '-'}  {extra}").rstrip()


# --------------------------------------------------------------- actions

def _act(client: AdminClient, args: argparse.Namespace) -> int:
    action = args.action
    filters = {"state": args.state, "domain": args.domain, "sender": args.sender,
               "recipient": args.recipient, "tenant": args.tenant}
    has_filter = any(v is not None for v in filters.values())
    if args.ids and (args.all or has_filter):
        print(f"mta: queue {action}: give IDs or --all/filters, not both", file=sys.stderr)
        return 2
    if not args.ids and not args.all and not has_filter:
        print(f"mta: queue {action}: give message IDs, or --all (with optional filters)",
              file=sys.stderr)
        return 2
    if not args.ids:
        result = client.bulk_action(action, all=args.all, **filters)
        if args.json:
            _dump(result)
        else:
            n = result.get("messages")
            where = f" in {n} message(s)" if n is not None else ""
            print(f"{_PAST[action]}: {result.get('affected', 0)} recipient(s){where}")
        return 0
    results, rc = [], 0
    for mid in args.ids:
        try:
            result = client.message_action(mid, action)
        except AdminError as exc:
            if exc.status not in (404, 409):
                raise
            print(f"mta: {mid}: {exc.message}", file=sys.stderr)
            rc = 1
            continue
        results.append(result)
        if not args.json:
            print(f"{mid}: {_PAST[action]} ({result.get('affected', 0)} recipient(s))")
    if args.json:
        _dump(results)
    return rc
