"""`mta bounce parse [FILE]` — read one bounce/complaint/auto-reply, print one JSON object.

Public API:
    register(subparsers, config_parent) -> None   adds `bounce parse [FILE]`
    run(cfg, args) -> int                          exit code (0 ok, 1 unreadable input)

Output (stdout, one line): the scoring-contract object of
../shared/corpus/bounces/README.md — {"kind": ..., "recipients": [{"address",
"action", "status", "diagnostic", "class", "reason", "replycode",
"remote_mta", "category"[, "feedback_type"][, "original_recipient"][,
"inferred"]}]}. `reason` is the parser's fine reason (userunknown, blocked,
...: the scoring contract's field); `category` is its category in the
documented taxonomy (`mta.core.reasons`, README "Bounce reasons").
`address` is the failed recipient (a DSN's Final-Recipient, often an alias
target); `original_recipient` the address the sender used when the report
gives it (Original-Recipient, ARF Original-Rcpt-To); `inferred: true` marks
an address guessed from the returned message's To: (the report named
nobody). JSON is the only format; `--json` is accepted for symmetry with the
other commands. With no FILE (or "-") the message is read from stdin.
Parsing never fails: unreadable mail is kind "nonbounce".
"""

from __future__ import annotations

import argparse
import json
import sys

from mta.config import Config
from mta.core.reasons import category_of
from mta.mail.bounces import parse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    bounce = subparsers.add_parser("bounce", parents=[config_parent],
                                   help="bounce and complaint tools")
    bsub = bounce.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = bsub.add_parser("parse", parents=[config_parent],
                        help="parse one bounce, complaint or auto-reply; print JSON")
    p.add_argument("file", nargs="?", default="-", metavar="FILE",
                   help="the message (default: stdin)")
    p.add_argument("--json", action="store_true",
                   help="JSON output (the default and only format)")


def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as fh:
                raw = fh.read()
    except OSError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    report = parse(raw).to_json()
    out = {"kind": report["kind"],
           "recipients": [{**r, "category": category_of(r["reason"])}
                          for r in report["recipients"]]}
    print(json.dumps(out, ensure_ascii=False))
    return 0
