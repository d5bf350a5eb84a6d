"""The owner's side of a submission: the guardrails, then the spool.

One job: what every submission (an SMTP session here or in a receiver, the
sending API) goes through in the process that owns the spool, just before
the commit point: the tenant's guardrails (runtime/tenants.py), the
enqueue, and the pokes that make the queue runner and the webhooks look at
once. Also the RCPT-time checks: a paused tenant, the suppression list
scoped to the tenant.

API
    GatedSpool(spool, runner, webhooks, idempotency_window, tenants)
        await .enqueue(msg, now, *, gate=True, **kw) -> queue id
            gate=False: the caller admitted the submission itself (the
            sending API admits a batch as one, then enqueues each message)
        .shared_keys   None, or (a cluster: runtime/cluster_smtp_keys.py) what
            a gated message with an Idempotency-Key goes through: claimed
            once in the cluster, then admitted and enqueued
        await .admit(credential, messages, now, *, test=False) -> tenant
            an API request's messages admitted as one (core.Refused)
        await .append_events(events); .poke()
    RcptChecks(spool, tenants)
        await .suppression(address, credential) -> Reply | None
            the suppression list: global, the credential's tenant, and
            entries made for the credential's name before tenants
        await .smtp(address, credential) -> Reply | None
            a paused tenant first (550 5.7.1 at RCPT, before any DATA),
            then the suppression list
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mta.core import LedgerEvent, Reply
from mta.policy.suppression import reply_for as suppression_reply
from mta.runtime.tenants import TenantService
from mta.spool import NewMessage, Spool

__all__ = ["GatedSpool", "RcptChecks"]


class _Pokeable(Protocol):
    def poke(self) -> None: ...


class _SharedKeys(Protocol):
    async def once(self, msg: NewMessage, accept: Callable[[], Awaitable[str]]) -> str: ...


def attempted(msg: NewMessage) -> int:
    """The recipients of `msg` that will be attempted (what quotas count)."""
    return len(msg.recipients) - len(msg.suppressed)


class GatedSpool:
    def __init__(self, spool: Spool, runner: _Pokeable, webhooks: _Pokeable,
                 idempotency_window: float, tenants: TenantService | None):
        self._spool, self._runner, self._webhooks = spool, runner, webhooks
        self._window = idempotency_window
        self.tenants = tenants
        self.shared_keys: _SharedKeys | None = None

    async def enqueue(self, msg: NewMessage, now: float, *, gate: bool = True,
                      **kw: Any) -> str:
        if gate and self.shared_keys is not None and msg.idempotency_key is not None:
            return await self.shared_keys.once(msg, lambda: self._enqueue(msg, now, gate, kw))
        return await self._enqueue(msg, now, gate, kw)

    async def _enqueue(self, msg: NewMessage, now: float, gate: bool, kw: dict[str, Any]) -> str:
        if gate and self.tenants is not None:
            await self.tenants.admit(msg.credential, [(msg.sender, msg.body)], attempted(msg),
                                     now, test=msg.test)
        kw.setdefault("idempotency_window", self._window)
        qid = await self._spool.enqueue(msg, now, **kw)
        self._runner.poke()
        self._webhooks.poke()
        return qid

    async def admit(self, credential: str | None, messages: Sequence[NewMessage], now: float,
                    *, test: bool = False) -> str:
        """The guardrails for `messages` of one request as one submission
        (the tenant, or core.Refused); then enqueue each with gate=False."""
        if self.tenants is None:
            return "default"
        return await self.tenants.admit(credential, [(m.sender, m.body) for m in messages],
                                        sum(attempted(m) for m in messages), now, test=test)

    async def append_events(self, events: Sequence[LedgerEvent]) -> None:
        await self._spool.ledger.append_events(events)
        self._webhooks.poke()

    def poke(self) -> None:
        """Something became due outside an enqueue (a scheduled send moved)."""
        self._runner.poke()
        self._webhooks.poke()


class RcptChecks:
    def __init__(self, spool: Spool, tenants: TenantService | None):
        self._spool, self._tenants = spool, tenants

    async def suppression(self, address: str, credential: str | None) -> Reply | None:
        tenant = None if self._tenants is None else await self._tenants.resolve(credential)
        entry = await self._spool.suppressions.suppressed(address, tenant,
                                                          credential=credential)
        return None if entry is None else suppression_reply(entry)

    async def smtp(self, address: str, credential: str | None) -> Reply | None:
        if self._tenants is not None:
            paused = self._tenants.paused_reply(await self._tenants.resolve(credential))
            if paused is not None:
                return paused
        return await self.suppression(address, credential)
