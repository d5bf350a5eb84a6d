"""The sending API's content resources, wired: templates and one-time codes.

One job: build `RuntimeTemplates` (api_templates.py) and
`RuntimeVerifications` (api_verifications.py) over the daemon's parts, give
both the one way to send (`internal_send`: a POST /emails body through
`RuntimeSending.send`, so a test send or a code goes through the same build,
guardrails and commit point as any other email), and say which of their
methods a receiver process may ask the owner for.

API:
    content_backends(daemon, sending, tenants, ledger, observer=None)
        -> ContentBackends(templates, verifications)   (observer: verification metrics)
    content_routes(backends) -> Routes           /templates…, /verifications…
    remote_targets(backends) -> {target: (object, allowed methods)}   for OwnerApi
    TEMPLATE_METHODS, VERIFICATION_METHODS       the Protocols' method names

Invariants: a code never goes into a subject (the subject is kept in the
ledger's `received` event): a verification's template whose subject uses
`code` is refused (422 naming template); the secret that derives and hashes
codes is `public.key`'s sub-key "otp" (mail/tokens.py `derive`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mta.api.http import ApiError, Routes
from mta.api.keys import ApiKey
from mta.api.templates import TemplateBackend, template_routes
from mta.api.verifications import VerificationBackend, verification_routes
from mta.config import Config
from mta.config.content import verification_limits
from mta.core import Clock
from mta.core.envelope import LedgerEvent
from mta.core.observe import Observer
from mta.mail.templating import TemplateContent, used_names
from mta.mail.tokens import TokenKey
from mta.policy.otp import OtpPolicy
from mta.runtime.api_templates import RuntimeTemplates
from mta.runtime.api_verifications import RuntimeVerifications
from mta.runtime.paths import state_paths
from mta.spool.templates import SqliteTemplates
from mta.spool.verifications import SqliteVerifications

__all__ = ["ContentBackends", "TEMPLATE_METHODS", "VERIFICATION_METHODS", "content_backends",
           "content_routes", "remote_targets"]

TEMPLATE_METHODS = frozenset(n for n in vars(TemplateBackend) if not n.startswith("_"))
VERIFICATION_METHODS = frozenset(n for n in vars(VerificationBackend) if not n.startswith("_"))
Json = dict[str, Any]


class _Sending(Protocol):
    async def send(self, key: ApiKey, raw: bytes, *, batch: bool, idempotency_key: str | None,
                   client_ip: str) -> list[str]: ...


class _Tenants(Protocol):
    async def resolve(self, credential: str | None) -> str: ...


class _Ledger(Protocol):
    async def append_events(self, events: list[LedgerEvent]) -> Any: ...


class _Daemon(Protocol):
    @property
    def cfg(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...


@dataclass(frozen=True)
class ContentBackends:
    templates: RuntimeTemplates
    verifications: RuntimeVerifications


def internal_send(sending: _Sending) -> Callable[[ApiKey, Json], Awaitable[str]]:
    async def send(key: ApiKey, doc: Json) -> str:
        raw = json.dumps(doc).encode()
        ids = await sending.send(key, raw, batch=False, idempotency_key=None,
                                 client_ip="127.0.0.1")
        return ids[0]
    return send


def content_backends(daemon: _Daemon, sending: _Sending, tenants: _Tenants | None,
                     ledger: _Ledger, observer: Observer | None = None) -> ContentBackends:
    cfg = daemon.cfg
    root = state_paths(cfg)["root"]
    send = internal_send(sending)

    async def tenant_of(credential: str) -> str:
        return "default" if tenants is None else await tenants.resolve(credential)

    templates = RuntimeTemplates(SqliteTemplates(Path(root)), tenant_of, daemon.clock, send)

    def policy_of(tenant: str) -> OtpPolicy:
        return OtpPolicy.from_mapping(verification_limits(daemon.cfg, tenant))

    async def code_send(key: ApiKey, doc: Json) -> str:
        ref = (doc.get("template") or {}).get("id")
        if isinstance(ref, str):
            found = await templates.published(key.credential, ref)
            subject = (found or {}).get("subject") or ""
            if "code" in used_names(TemplateContent(subject, "", "")):
                raise ApiError(422, "validation_error",
                               "template: a verification's template may not put the code in "
                               "its subject (subjects are kept in the ledger)")
        return await send(key, doc)

    secret = TokenKey.load_or_create(state_paths(cfg)["public_key"]).derive("otp")
    seen = observer or Observer()

    async def append_events(events: list[LedgerEvent]) -> None:
        await ledger.append_events(events)
        for e in events:                  # mta_content_events_total (never the code)
            label = ("resend" if e.detail.get("resend") else "first") \
                if e.type == "verification_sent" else str(e.detail.get("result", ""))
            seen.content_event(e.type, label)

    verifications = RuntimeVerifications(
        SqliteVerifications(Path(root)), tenant_of=tenant_of, policy_of=policy_of,
        secret=secret, clock=daemon.clock, send=code_send,
        append_events=append_events, template_of=templates.published)
    return ContentBackends(templates, verifications)


def content_routes(templates: TemplateBackend, verifications: VerificationBackend) -> Routes:
    return [*template_routes(templates), *verification_routes(verifications)]


def remote_targets(b: ContentBackends) -> dict[str, tuple[Any, frozenset[str]]]:
    return {"templates": (b.templates, TEMPLATE_METHODS),
            "verifications": (b.verifications, VERIFICATION_METHODS)}
