"""`mta template …`: tenants' email templates from the command line.

One job: parse `template` subcommands, call the template store directly
(`mta.spool.templates`: safe while the daemon runs, which reads the store on
every request), print. Fields are checked as the sending API checks them
(mta.api.templates: template_fields, check_content), and the preview is the
API's. Those are imported when a template command runs, not when `mta`
starts (they bring aiohttp and the template engine).

Public API:
    register(subparsers, config_parent)   adds `template list|show|create|update|
                                          publish|delete|versions|preview`
    run(cfg, args) -> exit code

Commands (all accept --config and --tenant T, default "default"; MTA_STATE_DIR
overrides server.state_dir; REF is a template's id or alias):
    template list [--json]            newest first, one a line:
                                      ID  NAME  ALIAS  STATUS  VERSION  UPDATED
    template show REF [--json]        the template (--json: GET /templates/{id}'s object)
    template create --name N --html-file F [--alias A] [--subject S] [--from F]
        [--text-file F] [--variables JSON] [--json]
        T must exist (mta tenant add); prints the new id (--json: the object)
    template update REF [the same options, each optional]   changes the draft
    template publish REF              the draft becomes the next version (an
                                      unchanged draft: the latest one, no new version)
    template delete REF               the template and its versions
    template versions REF [--json]    newest first: VERSION  PUBLISHED  SUBJECT
    template preview REF [--data JSON] [--version draft|published|N] [--json]
        the lenient render: subject, text, then the variables without a
        value (missing) and those used but not declared (undeclared);
        --json: POST /templates/{id}/preview's object
--html-file/--text-file: a path, or "-" for stdin (one of them at most).
--variables: Resend's JSON array [{"key", "type", "fallback_value"?}];
--data: a JSON object of variable values.
Exit codes: 0 ok, 1 failure (one line on stderr: a bad field named, no such
template or tenant, an alias in use, storage error), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mta.cli.times import utc, utc_or
from mta.config import Config
from mta.core.errors import StorageError
from mta.spool.templates import SqliteTemplates, TemplateExists, TemplateRefused
from mta.spool.tenants import DEFAULT_TENANT, SqliteTenants

__all__ = ["register", "run"]

Json = dict[str, Any]
_PAGE = 100


class _Failed(Exception):
    """A refusal, as the one line the command prints."""


def _content_options(p: argparse.ArgumentParser, *, create: bool) -> None:
    p.add_argument("--name", required=create, help="the template's name")
    p.add_argument("--html-file", required=create, metavar="PATH",
                   help="the HTML body (\"-\": stdin)")
    p.add_argument("--text-file", metavar="PATH",
                   help="the text body (\"-\": stdin; default: derived from the HTML)")
    p.add_argument("--alias", help="a-z, 0-9, '_' and '-': another name to refer to it by")
    p.add_argument("--subject")
    p.add_argument("--from", dest="sender", metavar="ADDRESS",
                   help="\"addr\" or \"Name <addr>\"")
    p.add_argument("--variables", metavar="JSON",
                   help='[{"key": "NAME", "type": "string", "fallback_value": "friend"}]')
    p.add_argument("--json", action="store_true")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             config_parent: argparse.ArgumentParser) -> None:
    tenant = argparse.ArgumentParser(add_help=False)
    tenant.add_argument("--tenant", default=DEFAULT_TENANT, metavar="NAME",
                        help=f"the tenant the templates belong to (default: {DEFAULT_TENANT})")
    parents = [config_parent, tenant]
    top = subparsers.add_parser("template", parents=[config_parent],
                                help="tenants' email templates (the sending API's)")
    sub = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", parents=parents, help="list templates")
    ls.add_argument("--json", action="store_true")
    _content_options(sub.add_parser("create", parents=parents, help="make a template"),
                     create=True)
    update = sub.add_parser("update", parents=parents, help="change a template's draft")
    update.add_argument("ref", metavar="REF")
    _content_options(update, create=False)
    for name, hlp in (("show", "show a template"), ("publish", "publish the draft"),
                      ("delete", "delete a template and its versions"),
                      ("versions", "list the published versions")):
        p = sub.add_parser(name, parents=parents, help=hlp)
        p.add_argument("ref", metavar="REF")
        if name in ("show", "versions"):
            p.add_argument("--json", action="store_true")
    pv = sub.add_parser("preview", parents=parents, help="render a template")
    pv.add_argument("ref", metavar="REF")
    pv.add_argument("--data", metavar="JSON", help="the variables' values: a JSON object")
    pv.add_argument("--version", default="draft", help="draft (default), published or N")
    pv.add_argument("--json", action="store_true")


# -- inputs ----------------------------------------------------------------------------------

def _read(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Failed(f"{what}: cannot read {path}: {exc}") from None


def _json_arg(text: str, option: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise _Failed(f"{option}: not valid JSON") from None


def _doc(args: argparse.Namespace) -> Json:
    """The options given, as a POST /templates body."""
    if args.html_file == "-" and args.text_file == "-":
        raise _Failed("--html-file and --text-file cannot both be stdin")
    doc: Json = {}
    for option, field in (("name", "name"), ("alias", "alias"), ("subject", "subject"),
                          ("sender", "from")):
        if getattr(args, option) is not None:
            doc[field] = getattr(args, option)
    if args.html_file is not None:
        doc["html"] = _read(args.html_file, "--html-file")
    if args.text_file is not None:
        doc["text"] = _read(args.text_file, "--text-file")
    if args.variables is not None:
        doc["variables"] = _json_arg(args.variables, "--variables")
    return doc


def _preview_version(text: str) -> int | None | str:
    if text in ("draft", "published"):
        return None if text == "published" else "draft"
    if text.isascii() and text.isdigit() and 0 < len(text) < 10 and int(text) > 0:
        return int(text)
    raise _Failed("--version: draft, published or a version number (1 or more)")


# -- commands --------------------------------------------------------------------------------

def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _show(t: Json) -> None:
    version = "never published" if t["version"] is None else f"version {t['version']}"
    changes = " (unpublished changes)" if t["has_unpublished_changes"] and t["version"] else ""
    print(f"{t['id']}\t{t['name']}\talias {t['alias'] or '-'}\t{t['status']}\t"
          f"{version}{changes}")
    for label, key in (("from", "from"), ("subject", "subject"), ("reply to", "reply_to")):
        value = t[key]
        print(f"{label}: {', '.join(value) if isinstance(value, list) else value or '-'}")
    names = [f"{v['key']} ({v['type']})" for v in t["variables"]]
    print(f"variables: {', '.join(names) or '-'}")
    text = "derived from html" if t["text"] is None else f"{len(t['text'])} characters"
    print(f"html: {len(t['html'])} characters; text: {text}")


def _list(store: SqliteTemplates, args: argparse.Namespace) -> None:
    from mta.runtime.api_templates import list_item
    rows, after = [], None
    while True:
        page, more = store.list(args.tenant, _PAGE, after=after)
        rows += page
        if not more:
            break
        after = page[-1].id
    if args.json:
        _print_json([list_item(r) for r in rows])
        return
    for r in rows:
        version = f"v{r.published_version}" if r.published_version else "-"
        print(f"{r.id}\t{r.name}\t{r.alias or '-'}\t{r.status}\t{version}\t"
              f"updated {utc(r.updated)}")
    print(f"-- {len(rows)} template{'' if len(rows) == 1 else 's'}")


def _create(store: SqliteTemplates, state_dir: str, args: argparse.Namespace) -> None:
    from mta.api.templates import check_content, template_fields
    from mta.runtime.api_templates import template_json
    if SqliteTenants(state_dir).get(args.tenant) is None:
        raise _Failed(f"no tenant named {args.tenant!r} (create it with: mta tenant add "
                      f"{args.tenant})")
    fields = template_fields(_doc(args), create=True)
    check_content(fields)
    row = store.create(args.tenant, fields, time.time())
    if args.json:
        _print_json(template_json(row))
    else:
        print(f"created {row.id} ({row.name}), a draft: publish it with "
              f"mta template publish {row.id}")


def _update(store: SqliteTemplates, args: argparse.Namespace) -> None:
    from mta.api.templates import check_content, fields_of, template_fields
    from mta.runtime.api_templates import template_json
    changes = template_fields(_doc(args), create=False)
    current = store.get(args.tenant, args.ref)
    if current is None:
        raise _Failed(f"no template {args.ref!r} (tenant {args.tenant})")
    check_content({**fields_of(template_json(current)), **changes})
    row = store.update(args.tenant, current.id, changes, time.time())
    if row is None:
        raise _Failed(f"no template {args.ref!r} (tenant {args.tenant})")
    if args.json:
        _print_json(template_json(row))
    else:
        print(f"updated {row.id} ({row.name}): {row.status}")


def _versions(store: SqliteTemplates, args: argparse.Namespace) -> None:
    from mta.runtime.api_templates import version_json
    found = store.versions(args.tenant, args.ref)
    if found is None:
        raise _Failed(f"no template {args.ref!r} (tenant {args.tenant})")
    if args.json:
        _print_json([version_json(v) for v in found])
        return
    for v in found:
        print(f"v{v.version}\tpublished {utc(v.published_at)}\t{v.subject or '-'}")
    print(f"-- {len(found)} version{'' if len(found) == 1 else 's'}")


def _preview(store: SqliteTemplates, args: argparse.Namespace) -> None:
    from mta.api.templates import preview_json
    from mta.runtime.api_templates import template_json, version_json
    data = {} if args.data is None else _json_arg(args.data, "--data")
    if not isinstance(data, dict):
        raise _Failed("--data: a JSON object of variable values")
    version = _preview_version(args.version)
    if version == "draft":
        row = store.get(args.tenant, args.ref)
        source = None if row is None else template_json(row)
    else:
        v = store.version(args.tenant, args.ref, None if version is None else int(version))
        source = None if v is None else version_json(v)
    if source is None:
        raise _Failed(f"no template {args.ref!r} (tenant {args.tenant}) with that version")
    out = preview_json(source, data)
    if args.json:
        _print_json(out)
        return
    print(f"subject: {out['subject']}")
    print(out["text"] or "")
    print(f"missing: {', '.join(out['missing']) or '-'}")
    print(f"undeclared: {', '.join(out['undeclared']) or '-'}")


def _one(store: SqliteTemplates, args: argparse.Namespace) -> None:
    """show, publish, delete."""
    from mta.runtime.api_templates import template_json
    tenant, ref = args.tenant, args.ref
    missing = _Failed(f"no template {ref!r} (tenant {tenant})")
    if args.action == "show":
        row = store.get(tenant, ref)
        if row is None:
            raise missing
        (_print_json if args.json else _show)(template_json(row))
    elif args.action == "publish":
        v = store.publish(tenant, ref, time.time())
        if v is None:
            raise missing
        print(f"published {v.template_id} version {v.version} at {utc_or(v.published_at)}")
    else:
        row = store.get(tenant, ref)
        if row is None or not store.delete(tenant, row.id):
            raise missing
        print(f"deleted {row.id} ({row.name})")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from mta.api.http import ApiError
    store = SqliteTemplates(cfg.server.state_dir)
    try:
        if args.action == "list":
            _list(store, args)
        elif args.action == "create":
            _create(store, cfg.server.state_dir, args)
        elif args.action == "update":
            _update(store, args)
        elif args.action == "versions":
            _versions(store, args)
        elif args.action == "preview":
            _preview(store, args)
        else:
            _one(store, args)
    except ApiError as exc:
        print(f"mta: {exc.message}", file=sys.stderr)
        return 1
    except (_Failed, TemplateExists, TemplateRefused, StorageError) as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    return 0
