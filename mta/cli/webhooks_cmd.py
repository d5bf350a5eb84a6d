"""`mta webhooks …`: the signed webhook endpoints of `[[webhooks]]`.

One job: parse `webhooks` subcommands; read delivery state and replay
through the running daemon's admin API (the daemon owns the cursors), send
test requests and make secrets locally.

Public API:
    register(subparsers, config_parent)   adds `webhooks list|test|replay|secret`
    run(cfg, args) -> exit code
    parse_time(text, now) -> unix seconds   for --since

Commands (all accept --config):
    webhooks list [--json]   the configured endpoints (name, url, events,
        credential, batch size; never the secret) and, when the daemon answers
        `GET /v1/webhooks`, each one's state, cursor, lag, attempts and last
        error. Daemon not running: the configuration alone, a note on stderr,
        exit 0.
    webhooks test NAME [--json]   one signed {"type": "test"} request sent from
        this process (no daemon needed; the cursor is not touched); exit 0 on
        a 2xx, 1 otherwise
    webhooks replay NAME --from SEQ | --since TIME | --end   move the endpoint's cursor
        (POST /v1/webhooks/{name}/replay): resend from event SEQ (inclusive),
        or from the first event at/after TIME — ISO 8601 (no zone = UTC),
        unix seconds, or a duration ago ("2h"); --end (or a SEQ past the
        backlog) drops the backlog. Needs the running daemon.
    webhooks secret          prints a new whsec_<base64> signing secret
Exit codes: 0 ok, 1 failure (daemon unreachable, unknown endpoint, test
failed), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

from mta.admin.client import AdminError, AdminUnavailable
from mta.cli.queue_cmd import connect, fail_admin
from mta.config.sections import Config, WebhookConfig
from mta.core.clock import SystemClock
from mta.core.durations import DurationError, parse_duration
from mta.webhooks import new_secret, probe

__all__ = ["parse_time", "register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    wh = subparsers.add_parser("webhooks", parents=[config_parent],
                               help="signed webhook endpoints: state, test, replay, secrets")
    wsub = wh.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = wsub.add_parser("list", parents=[config_parent],
                         help="configured endpoints and their delivery state")
    ls.add_argument("--json", action="store_true")
    t = wsub.add_parser("test", parents=[config_parent],
                        help="send one signed test event to an endpoint")
    t.add_argument("name", metavar="NAME")
    t.add_argument("--json", action="store_true")
    rp = wsub.add_parser("replay", parents=[config_parent],
                         help="resend events from a sequence number or a time")
    rp.add_argument("name", metavar="NAME")
    g = rp.add_mutually_exclusive_group(required=True)
    g.add_argument("--from", dest="from_seq", type=int, metavar="SEQ",
                   help="resend from this event sequence number (inclusive)")
    g.add_argument("--since", metavar="TIME",
                   help="resend from this time: ISO 8601, unix seconds, or a duration ago (2h)")
    g.add_argument("--end", action="store_true",
                   help="drop the backlog: continue with events from now on")
    rp.add_argument("--json", action="store_true")
    wsub.add_parser("secret", parents=[config_parent], help="print a new whsec_ secret")


def parse_time(text: str, now: float) -> float:
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return now - parse_duration(s)
    except DurationError:
        pass
    try:
        dt = datetime.fromisoformat(s)   # 3.11+: "Z" included
    except ValueError:
        raise ValueError(f"{text!r} is not a time (ISO 8601, unix seconds, or a duration "
                         f"ago like 2h)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _fail(msg: str) -> int:
    print(f"mta: {msg}", file=sys.stderr)
    return 1


def _t(t: float | None) -> str:
    return "-" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _find(cfg: Config, name: str) -> WebhookConfig:
    for w in cfg.webhooks:
        if w.name == name:
            return w
    known = ", ".join(w.name for w in cfg.webhooks) or "none configured"
    raise KeyError(f"no webhook {name!r} in {cfg.source} (known: {known})")


def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        if args.action == "secret":
            print(new_secret())
            return 0
        if args.action == "list":
            return _list(cfg, args)
        if args.action == "test":
            return _test(cfg, args)
        return _replay(cfg, args)
    except KeyError as exc:
        return _fail(exc.args[0])


def _list(cfg: Config, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = [
        {"name": w.name, "url": w.url, "events": list(w.events), "credential": w.credential,
         "batch_size": w.batch_size, "timeout": w.timeout} for w in cfg.webhooks]
    states: dict[Any, dict[str, Any]] = {}
    note = None
    try:
        states = {s.get("name"): s for s in connect(cfg).webhooks()}
    except AdminUnavailable as exc:
        note = f"{exc}: showing the configuration only"
    except AdminError as exc:
        note = f"no delivery state from the daemon ({exc.message}): showing the configuration only"
    keep = ("state", "cursor", "lag", "last_event_seq", "attempts", "last_error",
            "failing_since", "next_attempt")
    for r in rows:
        s = states.get(r["name"])
        r.update({k: s.get(k) for k in keep} if s else {k: None for k in keep})
    if note:
        print(f"mta: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no [[webhooks]] configured")
        return 0
    for r in rows:
        events = ",".join(r["events"])
        scope = f" credential={r['credential']}" if r["credential"] else ""
        print(f"{r['name']}\t{r['url']}\tevents={events}{scope}\tbatch={r['batch_size']}")
        if r["state"] is not None:
            lag = r["lag"] if r["lag"] is not None else "-"
            line = f"    {r['state']}  cursor {r['cursor']}  lag {lag}  attempts {r['attempts']}"
            if r["last_error"]:
                line += f"  last error {r['last_error']!r}"
            if r["failing_since"]:
                line += f"  failing since {_t(r['failing_since'])}"
            if r["next_attempt"]:
                line += f"  next attempt {_t(r['next_attempt'])}"
            print(line)
    return 0


def _test(cfg: Config, args: argparse.Namespace) -> int:
    w = _find(cfg, args.name)
    result = asyncio.run(probe(w, SystemClock()))
    status, error, ms = result["status"], result["error"], result["ms"]
    if args.json:
        print(json.dumps(result, indent=2))
    elif error is None:
        print(f"{w.name}: HTTP {status} from {w.url} in {ms} ms")
    else:
        print(f"{w.name}: {error} ({w.url}, {ms} ms)", file=sys.stderr)
    return 0 if error is None else 1


def _replay(cfg: Config, args: argparse.Namespace) -> int:
    _find(cfg, args.name)
    start: int | Literal["end"] | None = None
    since: float | None = None
    if args.from_seq is not None:
        if args.from_seq < 1:
            return _fail("--from must be a sequence number ≥ 1")
        start = args.from_seq
    elif args.end:
        start = "end"
    else:
        try:
            since = parse_time(args.since, time.time())
        except ValueError as exc:
            return _fail(str(exc))
    try:
        result = connect(cfg).webhook_replay(args.name, from_seq=start, since=since)
    except AdminUnavailable as exc:
        return _fail(f"{exc}; replay changes the running daemon's cursor, start it first")
    except AdminError as exc:
        return fail_admin(exc)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        cursor = result.get("cursor")
        nxt = "-" if cursor is None else cursor + 1
        what = "backlog dropped, next event" if args.end else "replaying from event"
        print(f"webhook {args.name}: {what} {nxt} (state {result.get('state', '?')})")
    return 0
