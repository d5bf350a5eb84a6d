"""A send's content work before MIME and DKIM: templates, broadcast headers, tracking.

One job: turn an `EmailRequest`'s composition into the one to compose, in
whichever process builds it (api_build.py: a receiver or the owner), and say
what the ledger's `received` event records about it.

API:
    ContentParts.of(cfg) -> ContentParts      this process's stores and token key for
                                              cfg's state_dir (made once, then shared)
    await prepare(req, *, credential, queue_id, cfg, domains, where)
        -> (Composition, detail)              BuildRefused (422) naming the field

Order (each step sees the previous one's result):
  1. template: the published version (the latest, or `template.version`) of the
     key's tenant, rendered strictly with the request's variables (bounded:
     mail/templating.py, off the event loop); from, subject and reply_to
     default to the template's. detail["template"] = {id, version}.
  2. broadcast (`stream`, else [broadcast] credentials): one envelope
     recipient; a sending domain whose SPF, DKIM and DMARC all pass (the
     domain's state is "verified": the periodic check or `mta domain
     check`); the public listener configured. Adds
     List-Unsubscribe: <BASE/u/TOKEN> and List-Unsubscribe-Post:
     List-Unsubscribe=One-Click (RFC 8058) — before DKIM, which signs both
     (mail/dkim.py SIGNED_HEADERS); the URL has no spaces, so compose never
     folds it. The token (mail/tokens.py, sealed) names the tenant, the
     recipient, the topic and the message.
  3. tracking ([tracking] clicks/opens for the tenant or the domain): the text
     part is derived from the html first (it keeps the original links); html
     links become BASE/c/TOKEN (the token names the message and the link's
     index: the target is looked up from detail["links"], never carried), and
     an open pixel BASE/o/TOKEN is added.
Invariants: nothing here writes; a refusal names its field; the template
source and tokens never reach a log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mta.api.email_options import TemplateRef
from mta.api.emails import EmailRequest, ValidationError, parse_mailbox
from mta.config import Config
from mta.config.content import default_stream, public_base, tracks
from mta.mail.compose import Composition, Mailbox, envelope_recipients
from mta.mail.htmltext import html_to_text
from mta.mail.templating import TemplateError, render
from mta.mail.tokens import TokenKey, seal
from mta.mail.tracking import add_open_pixel, rewrite_links
from mta.runtime.api_templates import stored_content
from mta.runtime.paths import state_paths
from mta.spool.templates import SqliteTemplates
from mta.spool.tenants import SqliteTenants

__all__ = ["BuildRefused", "ContentParts", "DomainStates", "prepare"]

_UNSUB_HEADERS = ("list-unsubscribe", "list-unsubscribe-post")


class BuildRefused(Exception):
    def __init__(self, status: int, name: str, message: str):
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


class DomainStates(Protocol):
    def registered(self, domain: str) -> str | None: ...
    def state(self, domain: str) -> str | None: ...


@dataclass(frozen=True)
class ContentParts:
    templates: SqliteTemplates
    tenants: SqliteTenants
    tokens: TokenKey

    @classmethod
    def of(cls, cfg: Config) -> ContentParts:
        root = cfg.server.state_dir
        made = _MADE.get(root)
        if made is None:
            made = cls(SqliteTemplates(Path(root)), SqliteTenants(Path(root)),
                       TokenKey.load_or_create(state_paths(cfg)["public_key"]))
            _MADE[root] = made
        return made


_MADE: dict[str, ContentParts] = {}


def _refuse(where: str, field: str, reason: str) -> BuildRefused:
    return BuildRefused(422, "validation_error", f"{where}{field}: {reason}")


async def prepare(req: EmailRequest, *, credential: str, queue_id: str, cfg: Config,
                  domains: DomainStates | None,
                  where: str) -> tuple[Composition, dict[str, Any]]:
    c, opts = req.composition, req.options
    detail: dict[str, Any] = {}
    stream = opts.stream or default_stream(cfg, credential)
    if opts.template is None and stream != "broadcast" \
            and not cfg.tracking.clicks and not cfg.tracking.opens:
        return c, detail                # plain mail: no store read, no key file
    parts = ContentParts.of(cfg)
    tenant = await asyncio.to_thread(parts.tenants.owner, "credential", credential)
    if opts.template is not None:
        c, detail["template"] = await _templated(c, opts.template, tenant, parts, where)
    base = public_base(cfg)
    rcpts = envelope_recipients(c)
    one = rcpts[0] if len(rcpts) == 1 else ""
    if stream == "broadcast":
        c = _broadcast(c, tenant=tenant, rcpt=one, topic=opts.topic, queue_id=queue_id,
                       base=base, parts=parts, domains=domains, where=where)
        detail["stream"] = "broadcast"
        if opts.topic:
            detail["topic"] = opts.topic
    domain = c.sender.rpartition("@")[2]
    clicks = bool(c.html) and tracks(cfg.tracking, "clicks", tenant, domain)
    opens = bool(c.html) and tracks(cfg.tracking, "opens", tenant, domain)
    if base is not None and (clicks or opens):
        # html_to_text and the link scan are linear but pure Python (≈1 ms for
        # 20 KB of html): off the event loop, as rendering is.
        c, links = await asyncio.to_thread(_tracked, c, clicks=clicks, opens=opens, rcpt=one,
                                           queue_id=queue_id, base=base, tokens=parts.tokens)
        if links:
            detail["links"] = links
    return c, detail


async def _templated(c: Composition, ref: TemplateRef, tenant: str, parts: ContentParts,
                     where: str) -> tuple[Composition, dict[str, Any]]:
    found = await asyncio.to_thread(parts.templates.version, tenant, ref.ref, ref.version)
    if found is None:
        what = f"version {ref.version}" if ref.version else "a published version"
        raise BuildRefused(422, "validation_error",
                           f"{where}template.id: no template {ref.ref!r} with {what}")
    content = stored_content(found)
    try:
        out = await asyncio.to_thread(render, content, ref.variables, strict=True)
    except TemplateError as exc:
        field = exc.field if exc.field.startswith("template") else f"template.{exc.field}"
        raise _refuse(where, field, exc.reason) from None
    sender_box = Mailbox(c.sender_name, c.sender) if c.sender else None
    if sender_box is None:
        if not found.sender:
            raise _refuse(where, "from", "required (the template has no from)")
        sender_box = _box(where, "from", found.sender)
    subject = c.subject or out.subject
    if not subject:
        raise _refuse(where, "subject", "required (the template's subject is empty)")
    reply_to = c.reply_to or tuple(_box(where, "reply_to", r) for r in found.reply_to)
    c = dataclasses.replace(c, sender=sender_box.address, sender_name=sender_box.name,
                            subject=subject, reply_to=reply_to, html=out.html or None,
                            text=out.text)
    if c.html is None and c.text is None:
        raise _refuse(where, "template", "renders to an empty message")
    return c, {"id": found.template_id, "version": found.version}


def _box(where: str, field: str, text: str) -> Mailbox:
    try:
        return parse_mailbox(field, text)
    except ValidationError as exc:
        raise _refuse(where, field, f"the template's: {exc.reason}") from None


def _broadcast(c: Composition, *, tenant: str, rcpt: str, topic: str, queue_id: str,
               base: str | None, parts: ContentParts, domains: DomainStates | None,
               where: str) -> Composition:
    if not rcpt:
        raise _refuse(where, "to", "broadcast mail goes to one recipient per message (its "
                                   "unsubscribe link names them): send one email each, "
                                   "a batch holds 100")
    if base is None:
        raise _refuse(where, "stream", "broadcast mail needs the public listener for its "
                                       "unsubscribe link, and this server has none "
                                       "([public] address)")
    domain = c.sender.rpartition("@")[2].lower()
    registered = domains.registered(domain) if domains is not None else None
    state = domains.state(registered) if domains is not None and registered else None
    if state != "verified":
        shown = registered or domain
        raise _refuse(where, "from", f"broadcast mail needs a sending domain whose SPF, DKIM "
                                     f"and DMARC all pass: {shown} is "
                                     f"{state or 'not a sending domain'} "
                                     f"(see `mta domain check {shown}`)")
    for name, _ in c.headers:
        if name.lower() in _UNSUB_HEADERS:
            raise _refuse(where, f"headers.{name}", "written by mta for broadcast mail")
    token = seal(parts.tokens, "u", [tenant, rcpt, topic, queue_id])
    return dataclasses.replace(c, headers=(
        *c.headers, ("List-Unsubscribe", f"<{base}/u/{token}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))


def _tracked(c: Composition, *, clicks: bool, opens: bool, rcpt: str, queue_id: str,
             base: str, tokens: TokenKey) -> tuple[Composition, list[str]]:
    html, links = c.html or "", list[str]()
    text = c.text if c.text is not None else (html_to_text(html) or None)
    if clicks:
        def url_for(n: int, _url: str) -> str:
            return f"{base}/c/{seal(tokens, 'c', [queue_id, n, rcpt])}"
        html, links = rewrite_links(html, url_for)
    if opens:
        html = add_open_pixel(html, f"{base}/o/{seal(tokens, 'o', [queue_id, rcpt])}")
    return dataclasses.replace(c, html=html, text=text), links

