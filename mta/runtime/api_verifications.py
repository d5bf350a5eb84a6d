"""The sending API's one-time codes over the verifications store, each
scoped to the tenant of the request's key.

One job: implement mta.api.verifications.VerificationBackend — make a
verification, send its code by email through the injected sending path,
resend the same code, check a code — with the decisions of
mta.policy.otp applied inside the store's one write transaction
(spool.verifications.SqliteVerifications.attempt), and a ledger event for
every send and every check.

Public API:
    RuntimeVerifications(store, *, tenant_of, policy_of, secret, clock, send,
                         append_events, template_of=None)
        store          spool.verifications.SqliteVerifications
        tenant_of(credential) -> tenant, or an awaitable of it (the key's
                       credential, "api:NAME"; TenantService.resolve fits)
        policy_of(tenant) -> OtpPolicy      the tenant's limits, read per call
        secret         the daemon's key for the codes (bytes, never logged)
        send(key, doc) -> email id          a POST /emails-shaped dict; with a
                       template: {"from"?, "to", "template": {"id", "variables":
                       {"code", "minutes"}}} (the sending path renders it)
        append_events(list[LedgerEvent])    the ledger
        template_of(credential, ref) -> dict | None   the key's tenant's
                       template (RuntimeTemplates.published fits): only its
                       "from" is read, to know whether the message will have
                       one; None: no such template. Without it, a template
                       is a 422.
        .start / .resend / .check / .get    the Protocol's methods
    verification_of(row) -> Verification;  row_of(v) -> VerificationRow
    SUBJECT                                 the default message's subject

Sends: a new verification is stored (pending, sent once) before its email
goes; if the send fails, the verification is canceled and the error is the
answer. A resend is counted (sends, last_sent) in the transaction that
decides it, before its email goes: a failed resend still counts, so the
limits hold whatever fails. The default message says the code in its text
and html parts only, never in the subject.

Ledger: "verification_sent" (queue_id = the email id, recipient = the
address, credential = the key's; detail {"verification_id", "resend"}) and
"verification_checked" (detail {"verification_id", "result", "attempts"}).
Never the code, in events or log lines. A ledger that cannot be written is
logged and the answer stands (a verified code must not be lost to it).
Storage errors of the store are 503 with retry-after.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

from mta.api.http import ApiError
from mta.api.keys import ApiKey
from mta.core import Clock
from mta.core.envelope import LedgerEvent
from mta.core.errors import StorageError
from mta.policy import otp
from mta.policy.otp import OtpPolicy, Verification, VerificationStatus
from mta.runtime.api_webhooks import iso, unavailable
from mta.runtime.logs import event
from mta.spool.verifications import SqliteVerifications, VerificationRow, new_verification_id

__all__ = ["SUBJECT", "RuntimeVerifications", "row_of", "verification_of"]

log = logging.getLogger("mta.api")
Json = dict[str, Any]
T = TypeVar("T")
Send = Callable[[ApiKey, Json], Awaitable[str]]
TemplateOf = Callable[[str, str], Awaitable[Json | None]]
TenantOf = Callable[[str], str | Awaitable[str]]

SUBJECT = "Your verification code"


def verification_of(row: VerificationRow) -> Verification:
    return Verification(**{f.name: getattr(row, f.name) for f in fields(row)})


def row_of(v: Verification) -> VerificationRow:
    values = {f.name: getattr(v, f.name) for f in fields(v)}
    values["status"] = v.status.value
    return VerificationRow(**values)


def _minutes(v: Verification, now: float) -> int:
    return max(1, math.ceil((v.expires - now) / 60.0))


def _message(v: Verification, code: str, now: float) -> Json:
    minutes = _minutes(v, now)
    doc: Json = {"to": v.to}
    if v.sender:
        doc["from"] = v.sender
    if v.template:
        doc["template"] = {"id": v.template, "variables": {"code": code, "minutes": minutes}}
        return doc
    doc["subject"] = SUBJECT
    doc["text"] = (f"Your verification code is {code}\n\nIt is valid for {minutes} minutes. "
                   "If you did not ask for it, ignore this message.\n")
    doc["html"] = (f"<p>Your verification code is <strong>{code}</strong></p>"
                   f"<p>It is valid for {minutes} minutes. "
                   "If you did not ask for it, ignore this message.</p>")
    return doc


def _json(v: Verification, now: float) -> Json:
    status = v.status.value
    if v.status is VerificationStatus.PENDING and now >= v.expires:
        status = VerificationStatus.EXPIRED.value
    return {"object": "verification", "id": v.id, "to": v.to, "channel": "email",
            "status": status, "created_at": iso(v.created), "expires_at": iso(v.expires),
            "sends": v.sends, "email_id": v.email_id or None}


def _refusal(v: Verification, decision: str, wait: float, now: float,
             policy: OtpPolicy) -> ApiError:
    if decision == "cooldown":
        secs = max(1, math.ceil(wait))
        return ApiError(429, "rate_limit_exceeded",
                        f"A code was sent to this address less than {policy.resend_cooldown:g} "
                        f"seconds ago; resend in {secs} seconds", {"retry-after": str(secs)})
    if decision == "max_sends":
        left = max(1, math.ceil(v.expires - now))
        return ApiError(429, "rate_limit_exceeded",
                        f"This verification was sent {v.sends} times, the most allowed; a new "
                        f"one can start when it expires in {left} seconds",
                        {"retry-after": str(left)})
    status = "expired" if decision == "expired" else v.status.value
    return ApiError(409, "conflict", f"Verification {v.id} is {status}: start a new one "
                                     "(POST /verifications)")


class RuntimeVerifications:
    def __init__(self, store: SqliteVerifications, *, tenant_of: TenantOf,
                 policy_of: Callable[[str], OtpPolicy], secret: bytes, clock: Clock,
                 send: Send, append_events: Callable[[list[LedgerEvent]], Awaitable[None]],
                 template_of: TemplateOf | None = None):
        self.store, self._tenant_of, self.policy_of = store, tenant_of, policy_of
        self._secret, self.clock, self._send = secret, clock, send
        self.append_events, self.template_of = append_events, template_of

    async def _tenant(self, key: ApiKey) -> str:
        found = self._tenant_of(key.credential)
        return await found if inspect.isawaitable(found) else found

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except StorageError as exc:
            raise unavailable(exc) from None

    async def _ledger(self, ev: LedgerEvent) -> None:
        try:
            await self.append_events([ev])
        except StorageError as exc:
            event(log, "verification_ledger_failed", logging.ERROR, type=ev.type,
                  verification=ev.detail.get("verification_id"), error=str(exc))

    async def _sender_from(self, key: ApiKey, sender: str | None,
                           template: str | None) -> None:
        """422 unless the message will have a From: the request's, or the template's."""
        doc: Json | None = None
        if template is not None:
            if self.template_of is None:
                raise ApiError(422, "validation_error",
                               "template: templates are not available on this server")
            doc = await self.template_of(key.credential, template)
            if doc is None:
                raise ApiError(422, "validation_error", f"template: no template {template!r}")
        if sender is None and not (doc or {}).get("from"):
            raise ApiError(422, "missing_required_field",
                           "from: required (unless the template has a from)")

    # -- the backend ---------------------------------------------------------------

    async def start(self, key: ApiKey, to: str, sender: str | None,
                    template: str | None) -> Json:
        tenant = await self._tenant(key)
        policy = self.policy_of(tenant)
        await self._sender_from(key, sender, template)
        now = self.clock.now()
        fresh, code = otp.new_verification(
            new_verification_id(), tenant, to, salt=os.urandom(16), now=now,
            secret=self._secret, policy=policy, sender=sender or "", template=template or "")
        row, created = await self._call(self.store.start, row_of(fresh), now)
        if not created:                 # one is pending for this address: a resend of it
            found = await self._resend(key, tenant, policy, row.id)
            if found is None:           # pruned meanwhile
                raise unavailable(RuntimeError("the verification changed meanwhile"))
            return found
        try:
            email_id = await self._send(key, _message(fresh, code, now))
        except Exception:
            await self._cancel(tenant, fresh.id)
            raise
        return await self._sent(key, fresh, email_id, resend=False, now=now)

    async def resend(self, key: ApiKey, vid: str) -> Json | None:
        tenant = await self._tenant(key)
        return await self._resend(key, tenant, self.policy_of(tenant), vid)

    async def _resend(self, key: ApiKey, tenant: str, policy: OtpPolicy,
                      vid: str) -> Json | None:
        now = self.clock.now()

        def step(row: VerificationRow) -> tuple[VerificationRow,
                                                tuple[Verification, str, float]]:
            v = verification_of(row)
            decision, wait = otp.resend(v, now, policy)
            if decision == "send":
                v = otp.sent(v, now)
            elif decision == "expired":
                v = otp.expire(v)
            return row_of(v), (v, decision, wait)
        got = await self._call(self.store.attempt, tenant, vid, step)
        if got is None:
            return None
        v, decision, wait = got
        if decision != "send":
            event(log, "verification_resend_refused", verification=vid, tenant=tenant,
                  reason=decision)
            raise _refusal(v, decision, wait, now, policy)
        code = otp.code_of(v, self._secret)
        if code is None:                # the daemon's secret changed since it was made
            await self._cancel(tenant, vid)
            raise ApiError(409, "conflict", f"Verification {vid} can no longer be sent (the "
                                            "server's key changed): start a new one")
        email_id = await self._send(key, _message(v, code, now))
        return await self._sent(key, v, email_id, resend=True, now=now)

    async def _sent(self, key: ApiKey, v: Verification, email_id: str, *, resend: bool,
                    now: float) -> Json:
        def step(row: VerificationRow) -> tuple[VerificationRow, Verification]:
            new = verification_of(row)
            if new.last_sent == v.last_sent:     # no later send recorded meanwhile
                new = replace(new, email_id=email_id)
            return row_of(new), new
        recorded = await self._call(self.store.attempt, v.tenant, v.id, step)
        await self._ledger(LedgerEvent("verification_sent", now, queue_id=email_id,
                                       recipient=v.to, credential=key.credential,
                                       detail={"verification_id": v.id, "resend": resend}))
        event(log, "verification_sent", verification=v.id, tenant=v.tenant,
              email_id=email_id, resend=resend, sends=v.sends)
        return _json(recorded or v, now)

    async def _cancel(self, tenant: str, vid: str) -> None:
        def step(row: VerificationRow) -> tuple[VerificationRow, None]:
            v = verification_of(row)
            return (row_of(otp.cancel(v)) if v.status is VerificationStatus.PENDING
                    else row), None
        try:
            await asyncio.to_thread(self.store.attempt, tenant, vid, step)
        except StorageError as exc:
            event(log, "verification_cancel_failed", logging.ERROR, verification=vid,
                  error=str(exc))
        else:
            event(log, "verification_canceled", verification=vid, tenant=tenant)

    async def check(self, key: ApiKey, vid: str, code: str) -> Json | None:
        tenant = await self._tenant(key)
        policy, now = self.policy_of(tenant), self.clock.now()

        def step(row: VerificationRow) -> tuple[VerificationRow, tuple[Verification, str]]:
            new, result = otp.check(verification_of(row), code, now, self._secret, policy)
            return row_of(new), (new, result)
        got = await self._call(self.store.attempt, tenant, vid, step)
        if got is None:
            return None
        v, result = got
        await self._ledger(LedgerEvent(
            "verification_checked", now, recipient=v.to, credential=key.credential,
            detail={"verification_id": vid, "result": result, "attempts": v.attempts}))
        event(log, "verification_checked", verification=vid, tenant=tenant, result=result,
              attempts=v.attempts)
        pending = v.status is VerificationStatus.PENDING
        return {"object": "verification_check", "id": vid, "status": v.status.value,
                "valid": result == "verified",
                "attempts_remaining": max(0, policy.max_attempts - v.attempts) if pending
                else 0}

    async def get(self, key: ApiKey, vid: str) -> Json | None:
        row = await self._call(self.store.get, await self._tenant(key), vid)
        return None if row is None else _json(verification_of(row), self.clock.now())
