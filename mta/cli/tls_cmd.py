"""`mta tls …`: the running daemon's outbound TLS policy per recipient domain
(issue 17).

One job: parse the `tls` subcommands, call the daemon's admin API (GET
/v1/tls/{domain}, POST /v1/tls/purge, GET /v1/tls through
`mta.admin.client.AdminClient`), print lines for people or, with --json,
the API's JSON as it is.

Public API:
    register(subparsers, config_parent)   adds `tls show|purge|list`
    run(cfg, args) -> exit code
    tls_show(client, domain) / tls_purge(client, domain) / tls_policies(client)
                                          the three calls (AdminClient has no
                                          TLS methods of its own yet)

Commands:
    tls show DOMAIN [--json]    the operator's [tls] policy override, the
                                MTA-STS policy in force (looked up now, cached as
                                delivery caches it: mode, id, max_age, mx
                                patterns, fetched, expires) and why none applies
    tls purge DOMAIN [--json]   drop the cached MTA-STS policy (memory and index):
                                the next delivery fetches it again; nothing
                                cached is said so, exit 0
    tls list [--json]           DOMAIN ID MODE EXPIRES, one cached policy a line
Exit codes: 0 ok, 1 failure (daemon unreachable, a bad domain, no TLS policy
in the daemon: one line on stderr), 2 usage. Times print as ISO 8601 UTC with
how far from now (mta.cli.times).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mta.admin.client import AdminClient, AdminError, AdminUnavailable, JsonObject
from mta.cli.queue_cmd import connect, fail_admin
from mta.cli.times import span, when
from mta.config import Config

__all__ = ["register", "run", "tls_show", "tls_purge", "tls_policies"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    tls = subparsers.add_parser("tls", parents=[config_parent],
                                help="outbound TLS policy per recipient domain (MTA-STS)")
    sub = tls.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", parents=[config_parent],
                          help="the override and MTA-STS policy of a recipient domain")
    show.add_argument("domain", metavar="DOMAIN")
    show.add_argument("--json", action="store_true")
    purge = sub.add_parser("purge", parents=[config_parent],
                           help="drop a domain's cached MTA-STS policy (fetched again on "
                                "the next delivery)")
    purge.add_argument("domain", metavar="DOMAIN")
    purge.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", parents=[config_parent], help="the cached MTA-STS policies")
    ls.add_argument("--json", action="store_true")


# ---- the calls --------------------------------------------------------------------

def tls_show(client: AdminClient, domain: str) -> JsonObject:
    return client.tls(domain)


def tls_purge(client: AdminClient, domain: str) -> JsonObject:
    return client.tls_purge(domain)


def tls_policies(client: AdminClient) -> list[JsonObject]:
    return client.tls_policies()


# ---- the command ---------------------------------------------------------------

def run(cfg: Config, args: argparse.Namespace) -> int:
    try:
        client = connect(cfg)
        if args.action == "show":
            return _show(client, args)
        if args.action == "purge":
            return _purge(client, args)
        return _list(client, args)
    except (AdminUnavailable, AdminError) as exc:
        return fail_admin(exc)


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _show(client: AdminClient, args: argparse.Namespace) -> int:
    data = tls_show(client, args.domain)
    if args.json:
        _dump(data)
        return 0
    print(f"domain    {data.get('domain', '?')}")
    override = data.get("override")
    print(f"override  {override} ([tls] policy)" if override else
          "override  - (none: DANE, then MTA-STS, else opportunistic TLS)")
    sts = data.get("mta_sts")
    if sts is None:
        print("mta-sts   none")
    else:
        max_age = sts.get("max_age")
        age = f" ({span(max_age)})" if isinstance(max_age, (int, float)) else ""
        print(f"mta-sts   mode {sts.get('mode', '?')}, id {sts.get('id', '?')}, "
              f"max_age {max_age}{age}")
        print(f"  mx      {', '.join(sts.get('mx') or []) or '-'}")
        print(f"  fetched {when(sts.get('fetched_at'))}")
        print(f"  expires {when(sts.get('expires_at'))}")
    if data.get("error"):
        print(f"error     {data['error']}")
    return 0


def _purge(client: AdminClient, args: argparse.Namespace) -> int:
    data = tls_purge(client, args.domain)
    if args.json:
        _dump(data)
        return 0
    domain = data.get("domain", args.domain)
    print(f"purged the cached MTA-STS policy of {domain}: the next delivery fetches it again"
          if data.get("purged") else f"no MTA-STS policy cached for {domain} (nothing to purge)")
    return 0


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = tls_policies(client)
    if args.json:
        _dump(rows)
        return 0
    if not rows:
        print("no cached MTA-STS policies")
        return 0
    table = [("DOMAIN", "ID", "MODE", "EXPIRES")] + [
        (str(r.get("domain", "?")), str(r.get("id", "?")), str(r.get("mode") or "(unusable)"),
         when(r.get("expires_at"))) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0
