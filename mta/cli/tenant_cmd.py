"""`mta tenant …`: the running daemon's tenants (customers sharing one mta).

One job: parse `tenant` subcommands, call the daemon's admin API
(`/v1/tenants…` through `mta.admin.client.AdminClient`), print a table or
lines for people, or with --json the API's JSON as it is.

Public API:
    register(subparsers, config_parent)   adds `tenant add|list|show|set|remove|pause|resume`
    run(cfg, args) -> exit code
    limits_and_policy(args) -> (limits, policy)   the JSON the options make

Commands (all accept --config and --json):
    tenant list                  NAME  STATUS  AUTO  LIMITS  POLICY, one a line
    tenant show NAME             every field of the tenant
    tenant add NAME [options]    a new tenant (options below; unset: unlimited,
                                 the default policy)
    tenant set NAME [options]    change only the options given; the value
                                 "none" clears one (unlimited / the default)
    tenant remove NAME           refused for "default" and while the tenant owns
                                 domains, webhooks or existing credentials
    tenant pause NAME [--reason TEXT]     its mail is refused until resumed
    tenant resume NAME --reason TEXT      (also clears an automatic pause)
Options of add and set: limits --per-hour N --per-day N --rate R (messages/s)
--burst N; reputation --policy none|standard|strict (set: "default" clears
it) --bounce-warn X --bounce-pause X --complaint-warn X --complaint-pause X
(fractions, 0.05 = 5%) --window N (sends) --window-seconds S (seconds, or a
duration: 7d) --min-volume N. The daemon checks the values (one-line error,
exit 1).
Everything no named tenant owns belongs to the tenant "default".
Exit codes: 0 ok, 1 failure (daemon unreachable, refused, invalid), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from mta.admin.client import AdminClient, AdminError, AdminUnavailable, JsonObject
from mta.cli.queue_cmd import connect, fail_admin
from mta.cli.times import utc_or
from mta.config import Config
from mta.core.durations import DurationError, parse_duration

__all__ = ["register", "run", "limits_and_policy"]

LEVELS = ("none", "standard", "strict")


class _Clear:
    """The value "none" given to an option: clear the setting (JSON null)."""

    def __repr__(self) -> str:
        return "none"


CLEAR = _Clear()


def _or_none(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.strip().lower() == "none":
            return CLEAR
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (or none)") from None
    parse.__name__ = what
    return parse


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except DurationError:
            raise ValueError(text) from None


# (option, JSON key, parser, help)
_LIMITS = (("--per-hour", "per_hour", _or_none(int, "a whole number"), "messages per UTC hour"),
           ("--per-day", "per_day", _or_none(int, "a whole number"), "messages per UTC day"),
           ("--rate", "rate", _or_none(float, "a number"), "messages per second, sustained"),
           ("--burst", "burst", _or_none(int, "a whole number"),
            "messages at once under --rate (default: the rate rounded up)"))
_POLICY = (("--bounce-warn", "bounce_warn", _or_none(float, "a fraction"),
            "bounce rate that warns (0.05 = 5%%)"),
           ("--bounce-pause", "bounce_pause", _or_none(float, "a fraction"),
            "bounce rate that pauses"),
           ("--complaint-warn", "complaint_warn", _or_none(float, "a fraction"),
            "complaint rate that warns"),
           ("--complaint-pause", "complaint_pause", _or_none(float, "a fraction"),
            "complaint rate that pauses"),
           ("--window", "window", _or_none(int, "a whole number"), "rates over the last N sends"),
           ("--window-seconds", "window_seconds", _or_none(_seconds, "seconds or a duration"),
            "… and only sends newer than this (seconds, or 7d)"),
           ("--min-volume", "min_volume", _or_none(int, "a whole number"),
            "fewer sends in the window: never acts"))


_METAVAR = {"rate": "R", "bounce_warn": "X", "bounce_pause": "X", "complaint_warn": "X",
            "complaint_pause": "X", "window_seconds": "S"}


def _settings(p: argparse.ArgumentParser) -> None:
    for option, key, parse, hlp in (*_LIMITS, *_POLICY):
        p.add_argument(option, dest=f"opt_{key}", type=parse, metavar=_METAVAR.get(key, "N"),
                       help=hlp)
    p.add_argument("--policy", dest="opt_level", type=_level, metavar="LEVEL",
                   help="reputation policy: none (never acts), standard (warn, then pause), "
                        "strict (pause at the warn thresholds); default: back to the "
                        "daemon's default")


def _level(text: str) -> Any:
    if text == "default":
        return CLEAR
    if text not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LEVELS)}, "
                                         "default")
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    tenant = subparsers.add_parser("tenant", parents=[config_parent],
                                   help="tenants: customers sharing this mta")
    tsub = tenant.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, hlp in (("list", "every tenant"), ("show", "one tenant"),
                        ("add", "create a tenant"), ("set", "change a tenant's settings"),
                        ("remove", "delete a tenant"),
                        ("pause", "refuse a tenant's mail until resumed"),
                        ("resume", "accept a paused tenant's mail again")):
        p = tsub.add_parser(action, parents=[config_parent], help=hlp)
        if action != "list":
            p.add_argument("name", metavar="NAME")
        if action in ("add", "set"):
            _settings(p)
        if action == "pause":
            p.add_argument("--reason", default="", metavar="TEXT", help="why (kept, shown)")
        if action == "resume":
            p.add_argument("--reason", required=True, metavar="TEXT", help="why (required)")
        p.add_argument("--json", action="store_true")


def limits_and_policy(args: argparse.Namespace) -> tuple[JsonObject, JsonObject]:
    """The options given, as the API's "limits" and "policy" objects ("none" -> null)."""
    def given(keys: list[str]) -> JsonObject:
        out: JsonObject = {}
        for key in keys:
            value = getattr(args, f"opt_{key}", None)
            if value is not None:
                out[key] = None if value is CLEAR else value
        return out
    return (given([k for _, k, _, _ in _LIMITS]),
            given(["level", *(k for _, k, _, _ in _POLICY)]))


# ------------------------------------------------------------------ output

def _limits_text(limits: Mapping[str, Any]) -> str:
    parts = [f"{limits[k]:g}{unit}" for k, unit in (("per_hour", "/h"), ("per_day", "/d"),
                                                    ("rate", "/s"))
             if limits.get(k) is not None]
    if limits.get("burst") is not None and limits.get("rate") is not None:
        parts.append(f"burst {limits['burst']}")
    return " ".join(parts) or "unlimited"


def _policy_text(policy: Mapping[str, Any]) -> str:
    level = policy.get("level") or "default"
    changed = sum(1 for k, v in policy.items() if k != "level" and v is not None)
    return f"{level} (+{changed} set)" if changed else str(level)


def _status(t: Mapping[str, Any]) -> tuple[str, str]:
    return str(t.get("status", "?")), str(t.get("auto_status", "?"))


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.tenants()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len("NAME"), *(len(str(t.get("name", ""))) for t in rows)])
    print(f"{'NAME':<{width}}  {'STATUS':<7} {'AUTO':<7} {'LIMITS':<30} POLICY")
    for t in rows:
        status, auto = _status(t)
        print(f"{str(t.get('name', '')):<{width}}  {status:<7} {auto:<7} "
              f"{_limits_text(t.get('limits') or {}):<30} {_policy_text(t.get('policy') or {})}")
    print(f"-- {len(rows)} tenant{'' if len(rows) == 1 else 's'}")
    return 0


_SHOWN = ("name", "status", "status_reason", "auto_status", "auto_reason", "limits", "policy")


def _value(key: str, value: Any) -> str:
    if key in ("created", "updated") or key.endswith("_at"):
        if isinstance(value, (int, float)):
            return utc_or(value)
    if isinstance(value, Mapping):
        inner = [f"{k}={_value(k, v)}" for k, v in value.items()
                 if v not in (None, [], {}, "")]
        return " ".join(inner) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _show(t: Mapping[str, Any]) -> None:
    status, auto = _status(t)
    reason = f" ({t['status_reason']})" if t.get("status_reason") else ""
    auto_reason = f" ({t['auto_reason']})" if t.get("auto_reason") else ""
    print(f"{'name:':<12}{t.get('name', '')}")
    print(f"{'status:':<12}{status}{reason}")
    print(f"{'auto:':<12}{auto}{auto_reason}")
    print(f"{'limits:':<12}{_limits_text(t.get('limits') or {})}")
    policy = t.get("policy") or {}
    print(f"{'policy:':<12}{_policy_text(policy)}")
    for key, value in sorted(policy.items()):
        if key != "level" and value is not None:
            print(f"  {key}: {_value(key, value)}")
    for key, value in t.items():         # whatever else the daemon reports
        if key not in _SHOWN:
            print(f"{key + ':':<12}{_value(key, value)}")


def _one(args: argparse.Namespace, t: JsonObject, done: str) -> int:
    if args.json:
        print(json.dumps(t, indent=2))
    elif done:
        status, auto = _status(t)
        print(f"tenant {t.get('name', args.name)} {done} (status {status}, auto {auto})")
    else:
        _show(t)
    return 0


def _act(client: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "show":
        return _one(args, client.tenant(args.name), "")
    if args.action == "add":
        limits, policy = limits_and_policy(args)
        return _one(args, client.tenant_add(args.name, limits=limits, policy=policy), "added")
    if args.action == "set":
        limits, policy = limits_and_policy(args)
        if not limits and not policy:
            print("mta: nothing to change: give an option (see mta tenant set --help)",
                  file=sys.stderr)
            return 1
        return _one(args, client.tenant_update(args.name, limits=limits or None,
                                               policy=policy or None), "updated")
    if args.action == "pause":
        return _one(args, client.tenant_pause(args.name, args.reason), "paused")
    if args.action == "resume":
        return _one(args, client.tenant_resume(args.name, args.reason), "resumed")
    result = client.tenant_remove(args.name)
    print(json.dumps(result, indent=2) if args.json else f"tenant {args.name} removed")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        client = connect(cfg)
        if args.action == "list":
            return _list(client, args)
        return _act(client, args)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)
