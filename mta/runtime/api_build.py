"""The sending API's CPU work: a request body → the messages to enqueue.

One job: turn a POST /emails (or /emails/batch) body into finished
messages — JSON, validation (mta.api.emails), remote attachments
(fetch.py), the sender policy, MIME (mail.compose), Received: and
Message-ID (mail.headers.prepare_submission), DKIM — in whichever process
runs it: a receiver process ("api_build", runtime/receiver.py), so this
work leaves the spool owner as an SMTP session's does, or the owner itself
(`[server] workers = 0`, a receiver that is down, a body too large for a
channel frame).

API:
    BuildKey(prefix, credential, domains, test)    what the build needs of the key
    Built: dict (msgpack-safe): sender, recipients, body, queue_id, detail,
           not_before (None: now)
    await build(raw, *, batch, key, client_ip, now, cfg, secure, sender_policy, signer)
        -> list[Built]; BuildRefused(status, name, message) for a refusal
    key_fields(key) / key_of(fields)      BuildKey over the channel

Invariants: a refusal names the field (`[3].to: …` in a batch) and nothing
of the request is queued (the caller enqueues only after every item built);
the owner adds what only it knows (suppressed recipients, the idempotency
key, the request's fingerprint) before enqueueing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mta.api.emails import EmailRequest, ValidationError, parse_batch, parse_email
from mta.api.http import ApiError, json_of
from mta.config import Config
from mta.core import new_queue_id
from mta.mail.compose import Mailbox, compose, envelope_recipients
from mta.mail.headers import prepare_submission
from mta.policy.senders import SenderPolicy
from mta.runtime.api_content import BuildRefused, DomainStates, prepare
from mta.runtime.fetch import fetch_remote

__all__ = ["BuildKey", "BuildRefused", "build", "key_fields", "key_of"]


class Signer(DomainStates, Protocol):
    def keys_for(self, domain: str) -> Sequence[object]: ...
    def sign(self, message: bytes, domain: str) -> bytes: ...


@dataclass(frozen=True)
class BuildKey:
    prefix: str
    credential: str
    domains: tuple[str, ...]
    test: bool

    @property
    def scopes(self) -> tuple[str, ...] | None:
        return self.domains or None


def key_fields(key: BuildKey) -> list[Any]:
    return [key.prefix, key.credential, list(key.domains), key.test]


def key_of(fields: Sequence[Any]) -> BuildKey:
    prefix, credential, domains, test = fields
    return BuildKey(str(prefix), str(credential), tuple(str(d) for d in domains), bool(test))


def _shown(box: Mailbox) -> str:
    """A mailbox as the API was given it: "Name <addr>" or "addr"."""
    return f"{box.name} <{box.address}>" if box.name else box.address


def _requests(raw: bytes, batch: bool, cfg: Config, now: float) -> list[EmailRequest]:
    try:
        doc = json_of(raw)
    except ApiError as exc:
        raise BuildRefused(exc.status, exc.name, exc.message) from None
    api = cfg.api
    kw: dict[str, Any] = {"max_recipients": api.max_recipients,
                          "fetch_hosts": frozenset(api.attachment_hosts), "now": now}
    try:
        return parse_batch(doc, **kw) if batch else [parse_email(doc, **kw)]
    except ValidationError as exc:
        raise BuildRefused(422, exc.name, exc.message) from None


async def build(raw: bytes, *, batch: bool, key: BuildKey, client_ip: str, now: float,
                cfg: Config, secure: bool, sender_policy: SenderPolicy,
                signer: Signer | None) -> list[dict[str, Any]]:
    out = []
    requests = _requests(raw, batch, cfg, now)
    for n, req in enumerate(requests):
        where = f"[{n}]." if batch else ""
        try:
            req = await fetch_remote(req, limit=cfg.api.max_request_size)
        except ApiError as exc:
            raise BuildRefused(exc.status, exc.name, f"{where}{exc.message}") from None
        out.append(await _one(req, key=key, client_ip=client_ip, now=now, cfg=cfg,
                              secure=secure, sender_policy=sender_policy, signer=signer,
                              where=where))
    return out


async def _one(req: EmailRequest, *, key: BuildKey, client_ip: str, now: float, cfg: Config,
               secure: bool, sender_policy: SenderPolicy, signer: Signer | None,
               where: str) -> dict[str, Any]:
    qid = new_queue_id(now)
    c, content = await prepare(req, credential=key.credential, queue_id=qid, cfg=cfg,
                               domains=signer, where=where)
    domain = c.sender.rpartition("@")[2]
    refusal = sender_policy.check(domain, key.scopes, "from")
    if refusal is not None:
        raise BuildRefused(403, "validation_error", f"{where}from: {refusal.text}")
    rcpts = envelope_recipients(c)
    hostname = cfg.server.hostname
    try:
        body = compose(c, message_id=f"{qid}.{os.urandom(6).hex()}@{hostname}", date=now)
    except ValueError as exc:       # parse_email checks first; compose checks again
        raise BuildRefused(422, "validation_error", f"{where}{exc}") from None
    body = prepare_submission(
        body, hostname=hostname, helo="api", client_ip=client_ip,
        protocol="HTTPS" if secure else "HTTP", queue_id_hint=qid,
        recipient=rcpts[0] if len(rcpts) == 1 else None, now=now, authenticated=True)
    if signer is not None and signer.keys_for(domain):
        body = await asyncio.to_thread(signer.sign, body, domain)
    detail = {**content, "api_key": key.prefix,
              "tags": [{"name": n, "value": v} for n, v in req.tags],
              "email": {"from": f"{c.sender_name} <{c.sender}>" if c.sender_name else c.sender,
                        "to": [_shown(b) for b in c.to], "cc": [_shown(b) for b in c.cc],
                        "bcc": [_shown(b) for b in c.bcc],
                        "reply_to": [_shown(b) for b in c.reply_to], "subject": c.subject}}
    return {"sender": c.sender, "recipients": list(rcpts), "body": body, "queue_id": qid,
            "detail": detail, "not_before": req.scheduled_at}
