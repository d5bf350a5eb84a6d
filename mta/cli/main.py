"""`mta …` — the command line.

Every command accepts `--config PATH` before or after the subcommand
(`mta --config F queue list` == `mta queue list --config F`); then
`MTA_CONFIG`, then /etc/mta/mta.toml when it exists, else the embedded
sandbox default (mta.config.loader); `MTA_STATE_DIR` overrides
`server.state_dir`. Every command says on stderr which config and state
directory it used (`mta: config PATH, state DIR`; `mta serve` logs it as
`event=starting`), so stdout (--json) stays clean.

    mta --version                      "mta 0.1.0" (package metadata)
    mta serve [--listen HOST:PORT]     --listen replaces the address of the one
                                       submission listener (exit 1 when there
                                       are several or none); kept across reloads
                                       (it is passed on as MTA_LISTEN)
    mta config check [--json] [--strict]
        the effective config on stdout, exit 0; errors (parse errors,
        certificate/key files that are missing, unreadable or do not load,
        the [shaping] file and [[egress]] warm-up schedules) on stderr, exit 1;
        warnings (placeholder names, documentation addresses:
        mta.config.checks) on stderr, exit 0, or 1 with --strict.
    mta warmup status / shaping show / shaping lift TARGET   (mta.cli.shaping_cmd)
    mta tls show DOMAIN / tls purge DOMAIN / tls list          (mta.cli.tls_cmd)
    mta cluster status / node status|drain|undrain           (mta.cli.cluster_cmd)
    mta user add NAME [--password-stdin] [--domain D]... [--tenant T]
        the credential belongs to tenant T (default "default"; T must exist,
        and NAME must not be another tenant's: exit 1, nothing created);
        mta user passwd NAME / remove NAME / list [--json]: the list shows
        each credential's tenant ("tenant" in JSON)
Exit codes: 0 ok, 1 failure (config invalid, command failed), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mta.cli import (bounce_cmd, cluster_cmd, destination_cmd, domain_cmd, events_cmd,
                     key_cmd, owner, queue_cmd, shaping_cmd, suppression_cmd, template_cmd,
                     tenant_cmd, tls_cmd, webhooks_cmd)
from mta.cli.times import utc
from mta.config import (EMBEDDED_SOURCE, Config, config_as_dict, config_path, file_errors,
                        load_config, placeholder_warnings, render_config, with_listen)
from mta.core import ConfigError
from mta.core.errors import StorageError

if TYPE_CHECKING:
    from mta.runtime.users import Credentials


def _config_parent(top: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    # SUPPRESS on subcommands so an unset sub-level flag does not erase a
    # top-level `--config` given before the subcommand.
    p.add_argument("--config", metavar="PATH", default=None if top else argparse.SUPPRESS,
                   help="config file (default: $MTA_CONFIG, else /etc/mta/mta.toml if it "
                        "exists, else the embedded sandbox default)")
    return p


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("mta")
    except PackageNotFoundError:       # run from a source tree that was never installed
        from mta import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    cfgp = _config_parent(False)
    parser = argparse.ArgumentParser(prog="mta", description="mta mail transfer agent",
                                     parents=[_config_parent(True)])
    parser.add_argument("--version", action="version", version=f"mta {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[cfgp], help="run the daemon")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="listen for submission on HOST:PORT instead of the address of "
                            "the config's (only) submission listener")

    config = sub.add_parser("config", parents=[cfgp], help="configuration")
    csub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = csub.add_parser("check", parents=[cfgp],
                            help="validate and print the effective configuration")
    check.add_argument("--json", action="store_true")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 on warnings too (placeholder names, documentation "
                            "addresses)")

    user = sub.add_parser("user", parents=[cfgp], help="submission credentials")
    usub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, hlp in (("add", "create a credential"), ("passwd", "change a password")):
        u = usub.add_parser(name, parents=[cfgp], help=hlp)
        u.add_argument("name")
        u.add_argument("--password-stdin", action="store_true",
                       help="read the password from stdin (else one is generated and printed)")
        if name == "add":
            u.add_argument("--domain", action="append", default=[], metavar="D",
                           help="scope the credential to sending domain D (repeatable; "
                                "*.D for its subdomains); unscoped: any verified domain")
            owner.add_option(u, "credential")
    rm = usub.add_parser("remove", parents=[cfgp], help="delete a credential")
    rm.add_argument("name")
    ls = usub.add_parser("list", parents=[cfgp], help="list credentials")
    ls.add_argument("--json", action="store_true")

    queue_cmd.register(sub, cfgp)
    destination_cmd.register(sub, cfgp)
    domain_cmd.register(sub, cfgp)
    bounce_cmd.register(sub, cfgp)
    suppression_cmd.register(sub, cfgp)
    webhooks_cmd.register(sub, cfgp)
    events_cmd.register(sub, cfgp)
    key_cmd.register(sub, cfgp)
    template_cmd.register(sub, cfgp)
    tenant_cmd.register(sub, cfgp)
    shaping_cmd.register(sub, cfgp)
    tls_cmd.register(sub, cfgp)
    cluster_cmd.register(sub, cfgp)
    return parser


def _fail(msg: str) -> int:
    print(f"mta: {msg}", file=sys.stderr)
    return 1


def _describe(source: str | None) -> str:
    return "(embedded sandbox default)" if source in (None, EMBEDDED_SOURCE) else source


def _state_dir(cfg: Config) -> str:
    d = cfg.server.state_dir
    return d if os.path.isabs(d) else f"{d} ({os.path.abspath(d)})"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if getattr(args, "listen", None):
            cfg = with_listen(cfg, args.listen)
    except ConfigError as exc:
        where = _describe(config_path(args.config))
        if args.command == "config":
            print(f"configuration errors in {where}:", file=sys.stderr)
        for e in exc.errors:
            if args.command == "config":
                print(f"  {e}", file=sys.stderr)
            elif e.startswith(where):
                print(f"mta: config {e}", file=sys.stderr)
            elif e.startswith(("--listen", "MTA_LISTEN")):
                print(f"mta: {e}", file=sys.stderr)
            else:
                print(f"mta: config {where}: {e}", file=sys.stderr)
        return 1
    if args.command != "serve":   # serve logs it (event=starting)
        print(f"mta: config {_describe(cfg.source)}, state {_state_dir(cfg)}", file=sys.stderr)
    handler = {"serve": _serve, "config": _config, "user": _user, "queue": queue_cmd.run,
               "destination": destination_cmd.run,
               "domain": domain_cmd.run, "bounce": bounce_cmd.run,
               "suppression": suppression_cmd.run, "webhooks": webhooks_cmd.run,
               "events": events_cmd.run, "key": key_cmd.run, "template": template_cmd.run,
               "tenant": tenant_cmd.run, "warmup": shaping_cmd.run,
               "shaping": shaping_cmd.run, "tls": tls_cmd.run, "cluster": cluster_cmd.run,
               "node": cluster_cmd.run}[args.command]
    try:
        return handler(cfg, args)
    except KeyboardInterrupt:
        return 130


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    from mta.runtime.daemon import run
    from mta.runtime.logs import event, setup_logging
    if args.listen:
        os.environ["MTA_LISTEN"] = args.listen    # a reload re-reads the file: keep the override
    setup_logging(cfg.server.log_level)
    log = logging.getLogger("mta.cli")
    event(log, "starting", version=version(), config=_describe(cfg.source),
          state_dir=os.path.abspath(cfg.server.state_dir), mode=cfg.server.mode)
    for w in placeholder_warnings(cfg):
        event(log, "config_warning", level=logging.WARNING, warning=w)
    return run(cfg)


def _config(cfg: Config, args: argparse.Namespace) -> int:
    from mta.runtime.shaping import check as shaping_errors   # what the daemon would refuse
    errors, warnings = file_errors(cfg) + shaping_errors(cfg), placeholder_warnings(cfg)
    if errors:
        print(f"configuration errors in {_describe(cfg.source)}:", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
    else:
        if args.json:
            print(json.dumps(config_as_dict(cfg, redact=True), indent=2))
        else:
            print(render_config(cfg), end="")
    if warnings:
        print(f"warnings{' (--strict: they fail the check)' if args.strict else ''}:",
              file=sys.stderr)
        for w in warnings:
            print(f"  {w}", file=sys.stderr)
    return 1 if errors or (warnings and args.strict) else 0


def _read_password() -> str:
    pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        raise ValueError("empty password on stdin")
    return pw


def _user_add(store: Credentials, state_dir: str, args: argparse.Namespace,
              pw: str | None) -> str:
    """Create the credential owned by --tenant (module owner): the password."""
    owner.check(state_dir, "credential", args.name, args.tenant)
    result = store.add(args.name, pw, domains=args.domain)
    owner.record(state_dir, "credential", args.name, args.tenant,
                 lambda: store.remove(args.name))
    return result


def _user_list(store: Credentials, state_dir: str, as_json: bool) -> None:
    users = store.list()
    tenants = owner.owners(state_dir, "credential")
    if as_json:
        print(json.dumps([{**u, "tenant": tenants.get(u["name"], owner.DEFAULT_TENANT)}
                          for u in users], indent=2))
        return
    for u in users:
        created = utc(u.get("created") or 0)
        scope = ",".join(u.get("domains") or []) or "(any verified domain)"
        print(f"{u['name']}\tcreated {created}\tdomains {scope}"
              f"\ttenant {tenants.get(u['name'], owner.DEFAULT_TENANT)}")


def _user(cfg: Config, args: argparse.Namespace) -> int:
    from mta.runtime.paths import state_paths
    from mta.runtime.users import CredentialError, open_credentials
    paths = state_paths(cfg)
    paths["root"].mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_credentials(paths["credentials"])
    state_dir = cfg.server.state_dir
    try:
        if args.action in ("add", "passwd"):
            pw = _read_password() if args.password_stdin else None
            if args.action == "add":
                result = _user_add(store, state_dir, args, pw)
            else:
                result = store.passwd(args.name, pw)
            if pw is None:
                print(f"user={args.name} password={result}")
                print("(shown once; store it now)", file=sys.stderr)
            else:
                print(f"user {args.name} {'added' if args.action == 'add' else 'updated'}")
        elif args.action == "remove":
            store.remove(args.name)
            print(f"user {args.name} removed")
        else:
            _user_list(store, state_dir, args.json)
    except (CredentialError, ValueError, owner.OwnerError, StorageError) as exc:
        return _fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
