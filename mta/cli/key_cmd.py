"""`mta key …`: API keys of the HTTP sending API from the command line.

One job: parse `key` subcommands, call the key store directly
(`mta.spool.apikeys` behind `mta.api.keys.StoreKeys`: safe while the daemon
runs, which sees a change within its key cache's ttl), print.

Public API:
    register(subparsers, config_parent)   adds `key create|list|revoke`
    run(cfg, args) -> exit code

Commands (all accept --config; MTA_STATE_DIR overrides server.state_dir):
    key create NAME [--permission full_access|sending_access] [--domain D]...
        [--test] [--rate-limit N] [--tenant T] [--json]
        prints the token (the only time it is shown: only its hash is
        stored), its prefix and the key; --json: the key's JSON object plus
        "token" (the warning then goes to stderr). The key (its credential
        "api:NAME") belongs to tenant T (default "default"; mta.cli.owner):
        T must exist and "api:NAME" must not be another tenant's (a name
        once used by a tenant stays its), else exit 1 and nothing created
    key list [--json] [--all]   active keys (--all: revoked ones too), one a line:
        PREFIX  NAME  PERMISSION  MODE  DOMAINS  CREATED  LAST USED  TENANT
        never a token or its hash
    key revoke ID_OR_NAME   the active key with that id, name or prefix;
                            exit 1 when there is none
JSON objects: id, name, created_at, prefix, permission, domains, mode
("live"/"test"), rate_limit (requests/s, 0 = the daemon's default),
last_used_at, revoked_at (ISO 8601 UTC or null) — GET /api-keys's items —
plus "tenant" (the owner of its credential).
Exit codes: 0 ok, 1 failure (bad name or domain, a name an active key has,
no such key, storage error), 2 usage (e.g. an unknown permission).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mta.api.keys import PERMISSIONS, ApiKey, KeyNameTaken, StoreKeys
from mta.cli import owner
from mta.cli.times import utc, utc_or
from mta.config import Config
from mta.core.errors import StorageError

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    key = subparsers.add_parser("key", parents=[config_parent],
                                help="API keys of the HTTP sending API")
    ksub = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = ksub.add_parser("create", parents=[config_parent],
                             help="make a key (its token is shown once)")
    create.add_argument("name")
    create.add_argument("--permission", choices=PERMISSIONS, default="full_access",
                        help="full_access (default: every endpoint) or sending_access "
                             "(sending email only)")
    create.add_argument("--domain", action="append", default=[], metavar="D",
                        help="may send only as domain D (repeatable; *.D for its "
                             "subdomains); default: any domain")
    create.add_argument("--test", action="store_true",
                        help="a test key: its mail is captured, never delivered")
    create.add_argument("--rate-limit", type=float, default=0.0, metavar="N",
                        help="requests per second (default 0: the daemon's default)")
    create.add_argument("--json", action="store_true")
    owner.add_option(create, "key")
    ls = ksub.add_parser("list", parents=[config_parent], help="list keys")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    rv = ksub.add_parser("revoke", parents=[config_parent], help="revoke a key")
    rv.add_argument("key", metavar="ID_OR_NAME", help="the key's id, name or prefix")


def _fail(msg: str) -> int:
    print(f"mta: {msg}", file=sys.stderr)
    return 1


def _domains(k: ApiKey) -> str:
    return ",".join(k.domains) or "any"


def _line(k: ApiKey, tenant: str) -> str:
    revoked = "" if k.revoked_at is None else f"\trevoked {utc(k.revoked_at)}"
    return (f"{k.prefix}\t{k.name}\t{k.permission}\t{k.mode}\tdomains {_domains(k)}\t"
            f"created {utc(k.created_at)}\tlast used {utc_or(k.last_used_at, 'never')}"
            f"\ttenant {tenant}{revoked}")


_WARNING = "this token is shown only now and cannot be shown again: store it now"


def _create(keys: StoreKeys, state_dir: str, args: argparse.Namespace) -> int:
    # the credential a key's name will have (ApiKey.credential) must be free
    owner.check(state_dir, "credential", f"api:{args.name}", args.tenant)
    k, token = keys.create(args.name, permission=args.permission, domains=args.domain,
                           test=args.test, rate_limit=args.rate_limit, now=time.time())
    owner.record(state_dir, "credential", k.credential, args.tenant,
                 lambda: keys.revoke(k.id, time.time()))
    if args.json:
        print(json.dumps({**k.as_json(), "token": token, "tenant": args.tenant}, indent=2))
        print(f"mta: {_WARNING}", file=sys.stderr)
        return 0
    rate = f"{k.rate_limit:g}/s" if k.rate_limit else "default"
    print(f"token:  {token}")
    print(f"prefix: {k.prefix}")
    print(f"name {k.name}, permission {k.permission}, mode {k.mode}, "
          f"domains {_domains(k)}, rate limit {rate}, tenant {args.tenant}")
    print(f"({_WARNING})")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    from mta.spool.apikeys import SqliteApiKeys
    keys = StoreKeys(SqliteApiKeys(cfg.server.state_dir))
    try:
        if args.action == "create":
            return _create(keys, cfg.server.state_dir, args)
        if args.action == "list":
            rows = keys.list(include_revoked=args.all)
            tenants = owner.owners(cfg.server.state_dir, "credential")
            tenant = {k.id: tenants.get(k.credential, owner.DEFAULT_TENANT) for k in rows}
            if args.json:
                print(json.dumps([{**k.as_json(), "tenant": tenant[k.id]} for k in rows],
                                 indent=2))
            else:
                for k in rows:
                    print(_line(k, tenant[k.id]))
                print(f"-- {len(rows)} key{'' if len(rows) == 1 else 's'}")
            return 0
        # revoke
        revoked = keys.revoke(args.key, time.time())
        if revoked is None:
            return _fail(f"no active API key with id, name or prefix {args.key!r}")
        print(f"revoked {revoked.prefix} ({revoked.name})")
        return 0
    except (ValueError, KeyNameTaken, StorageError, owner.OwnerError) as exc:
        return _fail(str(exc))
