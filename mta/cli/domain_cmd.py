"""`mta domain …`: sending domains from the command line.

One job: parse `domain` subcommands, call `mta.domains.DomainService`, print.

Public API:
    register(subparsers, config_parent)   adds `domain add|check|list|show|remove|rotate`
    run(cfg, args) -> exit code

Commands (all accept --config; those marked take --json for tools):
    domain add DOMAIN [--selector S] [--algorithm rsa|ed25519|both] [--tenant T] [--json]
        creates the keys (state_dir/dkim, 0600) and prints the records to
        publish: zone-file lines `NAME TTL IN TYPE VALUE`, comments start ";"
        (the PTR reminders for server.public_ips are comments too: reverse
        DNS is not part of the domain's zone). The domain belongs to tenant T
        (default "default"; mta.cli.owner): T must exist and DOMAIN must not
        be another tenant's, else exit 1 and nothing is created
    domain check DOMAIN [--json]    PASS/FAIL per record; exit 0 only if every
                                    required record passes, else 1
    domain list [--json]     one a line, the owning tenant last but the failure
                             reason ("tenant" in JSON)
    domain show DOMAIN [--json]
    domain rotate DOMAIN [--selector S] [--json]   new key(s) + records to publish
    domain remove DOMAIN            deletes the domain and its keys; its tenant no
                                    longer owns it
Exit codes: 0 ok, 1 failure (unknown domain, check failed), 2 usage error.

The service is imported when a domain command runs, not when this module is
(every `mta` command imports it): `mta.domains.service` brings cryptography,
dkimpy and dnspython, ~0.1-0.2 s that `mta queue list` should not pay. No
cycle hides behind that import; `mta.domains.records` and `.model` are light
and imported at the top.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mta.cli import owner
from mta.core.address import AddressError, parse_domain
from mta.core.errors import MtaError
from mta.domains.model import Domain, SelectorStatus
from mta.domains.records import records_json, zone_text

if TYPE_CHECKING:
    from mta.config.sections import Config
    from mta.domains.service import DomainService

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    dom = subparsers.add_parser("domain", parents=[config_parent],
                                help="sending domains: DKIM keys and DNS verification")
    dsub = dom.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = dsub.add_parser("add", parents=[config_parent],
                          help="create DKIM keys and print the DNS records to publish")
    add.add_argument("domain")
    add.add_argument("--selector", help="DKIM selector (default mtaYYYYMM; Ed25519 gets S-ed)")
    add.add_argument("--algorithm", choices=("rsa", "ed25519", "both"), default="both")
    add.add_argument("--json", action="store_true")
    owner.add_option(add, "domain")
    chk = dsub.add_parser("check", parents=[config_parent],
                          help="verify the domain's DNS records (exit 0 only if all pass)")
    chk.add_argument("domain")
    chk.add_argument("--json", action="store_true")
    ls = dsub.add_parser("list", parents=[config_parent], help="list domains")
    ls.add_argument("--json", action="store_true")
    show = dsub.add_parser("show", parents=[config_parent],
                           help="a domain's state, keys and records")
    show.add_argument("domain")
    show.add_argument("--json", action="store_true")
    rm = dsub.add_parser("remove", parents=[config_parent], help="delete a domain and its keys")
    rm.add_argument("domain")
    rot = dsub.add_parser("rotate", parents=[config_parent],
                          help="create new DKIM keys to publish alongside the old")
    rot.add_argument("domain")
    rot.add_argument("--selector", help="selector of the new key (default: mtaYYYYMM[b-z])")
    rot.add_argument("--json", action="store_true")


def _t(t: float | None) -> str:
    return "-" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _print_domain(svc: DomainService, d: Domain) -> None:
    print(f"domain:       {d.name}")
    print(f"state:        {d.state.value}")
    print(f"created:      {_t(d.created)}")
    print(f"last checked: {_t(d.last_checked)}")
    print(f"next check:   {_t(d.next_check)}")
    if d.failure_reason:
        print(f"reason:       {d.failure_reason}")
    for s in d.selectors:
        extra = f" until {_t(s.retire_at)}" if s.retire_at else ""
        print(f"selector:     {s.selector} {s.algorithm} {s.status.value}{extra}")
    print()
    print(zone_text(svc.plan(d)), end="")


def _print_records(svc: DomainService, d: Domain, as_json: bool) -> None:
    plan = svc.plan(d)
    if as_json:
        print(json.dumps({**d.to_dict(), "records": records_json(plan)}, indent=2))
    else:
        print(zone_text(plan), end="")


def _state_dir(svc: DomainService) -> str:
    return svc.cfg.server.state_dir


def _add(svc: DomainService, args: argparse.Namespace) -> int:
    try:
        name = parse_domain(args.domain)
    except AddressError:
        name = args.domain              # svc.add refuses it with its own message
    owner.check(_state_dir(svc), "domain", name, args.tenant)
    d = svc.add(args.domain, selector=args.selector, algorithm=args.algorithm)
    owner.record(_state_dir(svc), "domain", d.name, args.tenant, lambda: svc.remove(d.name))
    _print_records(svc, d, args.json)
    return 0


def _rotate(svc: DomainService, args: argparse.Namespace) -> int:
    _print_records(svc, svc.rotate(args.domain, selector=args.selector), args.json)
    return 0


def _check(svc: DomainService, args: argparse.Namespace) -> int:
    result = asyncio.run(svc.check(args.domain))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for e in result.entries:
            mark = "PASS" if e.ok else ("FAIL" if e.required else "WARN")
            print(f"{mark} {e.name:<11} {e.record}: {e.reason}")
        state = svc.get(args.domain).state.value
        print(f"{result.domain}: {'all required records pass' if result.ok else 'FAILED'}"
              f" (state {state})")
    return 0 if result.ok else 1


def _list(svc: DomainService, args: argparse.Namespace) -> int:
    domains = svc.list()
    owners = owner.owners(_state_dir(svc), "domain")
    tenant = {d.name: owners.get(d.name, owner.DEFAULT_TENANT) for d in domains}
    if args.json:
        print(json.dumps([{**d.to_dict(), "tenant": tenant[d.name]} for d in domains],
                         indent=2))
        return 0
    for d in domains:
        sels = ",".join(s.selector for s in d.selectors if s.status is SelectorStatus.ACTIVE)
        print(f"{d.name}\t{d.state.value}\tchecked {_t(d.last_checked)}\t"
              f"selectors {sels}\ttenant {tenant[d.name]}"
              + (f"\t{d.failure_reason}" if d.failure_reason else ""))
    return 0


def _show(svc: DomainService, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(svc.show(args.domain), indent=2))
    else:
        _print_domain(svc, svc.get(args.domain))
    return 0


def _remove(svc: DomainService, args: argparse.Namespace) -> int:
    svc.remove(args.domain)
    owner.disown(_state_dir(svc), "domain", parse_domain(args.domain))
    print(f"domain {args.domain} removed (its DNS records may be deleted)")
    return 0


_ACTIONS: dict[str, Callable[[DomainService, argparse.Namespace], int]] = {
    "add": _add, "rotate": _rotate, "check": _check, "list": _list, "show": _show,
    "remove": _remove}


def run(cfg: Config, args: argparse.Namespace) -> int:
    from mta.domains.service import DomainService  # heavy: see the module docstring
    action = _ACTIONS[args.action]
    svc = DomainService(cfg)
    try:
        return action(svc, args)
    except (MtaError, owner.OwnerError) as exc:  # DomainError, the stores' typed errors
        print(f"mta: {exc}", file=sys.stderr)
        return 1
