"""Automation on replies at run time: the shaping table's rules watch what
remote servers answer, and what fires is carried out (issue 15).

One job: feed each batch's replies to mta.policy.automation (pure) and do
what it decides — suspend a site (its waiting mail goes back to the spool
until the action ends), lower a site's connection limit or message rate
(the scheduler re-plans the site), suspend a tenant at a provider (its
mail to that provider waits), bounce a recipient instead of deferring it —
each action a ledger event and a metric; end actions when they expire;
let operators lift them.

API
    ReplyRules(shaping, runner, spool, clock, observer)
      .batch() -> BatchReplies            one per delivery batch
        .rewrite(item, outcome, dest) -> outcome   observes the reply (once
                                          per reply text and tenant per batch);
                                          a fired "bounce" turns a deferral
                                          into a bounce
        .fired                            what fired during the batch
      await .apply(fired)                 carry out, record, count
      await .tick()                       end what expired (housekeeping)
      await .lift(target) -> list[dict]   operator: by action id, site or
                                          tenant@provider
      .held(item, dest) -> bool           is this recipient's tenant
                                          suspended at that destination?
      .active() -> list[dict]             the actions in force (queue summary)
      .share                              None, or an ActionShare told of each
                                          firing and lift here (a cluster:
                                          runtime/cluster_shaping.py)
      await .adopt(fired)                 put in force actions another node fired,
                                          carried out as here, no ledger event
      await .lift_adopted(ids)            lifted on another node: end them here,
                                          no ledger event

Invariants: only replies a remote server sent (`Reply.remote`) are
observed; our own deferrals — "no connection", "site suspended" — never
count, so no action extends itself. Actions live in memory: a restart ends
them (the remote's next throttling reply starts them again). In a cluster
an action is one ledger event, on the node whose rule fired (its expiry
too); a lift is one event, on the node that lifted it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from mta.core import Clock, Observer, RecipientOutcome
from mta.core.envelope import Destination, LedgerEvent, QueuedRecipient
from mta.core.logfmt import event
from mta.core.outcome import RecipientFate
from mta.core.reply import Reply
from mta.policy.automation import Automation, Fired, Rule
from mta.runtime.shaping import Shaping
from mta.scheduler import Scheduler, Work
from mta.spool import Spool

__all__ = ["BatchReplies", "ReplyRules"]

log = logging.getLogger("mta.shaping")


class ActionShare(Protocol):
    async def fired(self, fired: list[Fired]) -> None: ...
    async def lifted(self, lifted: list[Fired]) -> None: ...


class Runner(Protocol):
    scheduler: Scheduler

    def poke(self) -> None: ...
    async def put_back(self, works: Sequence[Work], until: float) -> None: ...
    async def flush(self, name: str) -> int: ...


def _tenant_credential(tenant: str) -> str:
    return f"tenant:{tenant}"


def fired_dict(f: Fired) -> dict[str, Any]:
    return {"id": f.id, "scope": f.scope, "key": f.key, "action": str(f.action),
            "rule": f.rule.name, "since": f.since, "until": f.until, "reason": f.reason}


class BatchReplies:
    def __init__(self, rules: ReplyRules):
        self.rules = rules
        self.fired: list[Fired] = []
        self._seen: dict[tuple[str, str], list[Fired]] = {}

    def rewrite(self, item: QueuedRecipient, outcome: RecipientOutcome | None,
                dest: Destination) -> RecipientOutcome | None:
        if outcome is None or outcome.fate is RecipientFate.DELIVERED:
            return outcome
        reply = outcome.reply
        key = (str(reply), item.tenant)
        fired = self._seen.get(key)
        if fired is None:
            fired = self._seen[key] = self.rules.observe(item, reply, dest)
            self.fired.extend(fired)
        bounce = next((f for f in fired if f.action.kind == "bounce"), None)
        if bounce is None or outcome.fate is not RecipientFate.DEFERRED:
            return outcome
        esc = "5" + reply.esc[1:] if reply.esc else "5.0.0"
        text = f"bounced by rule {bounce.rule.name!r}: {reply.code} {reply.text}"[:400]
        return dataclasses.replace(outcome, fate=RecipientFate.BOUNCED,
                                   reply=Reply(554, esc, text))


class ReplyRules:
    def __init__(self, shaping: Shaping, runner: Runner, spool: Spool, clock: Clock,
                 observer: Observer | None = None):
        self.shaping, self.runner, self.spool, self.clock = shaping, runner, spool, clock
        self.observer = observer or Observer()
        self.share: ActionShare | None = None
        self.foreign: set[str] = set()      # ids in force here that another node fired

    @property
    def automation(self) -> Automation:
        return self.shaping.automation

    def batch(self) -> BatchReplies:
        return BatchReplies(self)

    def _scope(self, dest: Destination) -> tuple[tuple[Rule, ...], str]:
        """The rules that watch `dest` and its provider's name ("" = none)."""
        table = self.shaping.table
        provider = self.shaping.provider_of(dest)
        if provider is None:
            return table.rules, ""
        return table.rules + provider.rules, provider.name

    def observe(self, item: QueuedRecipient, reply: Reply, dest: Destination) -> list[Fired]:
        rules, provider = self._scope(dest)
        if not rules:
            return []
        return self.automation.observe(rules, reply=str(reply), site=dest.name,
                                       provider=provider or None, tenant=item.tenant,
                                       synthetic=not reply.remote, now=self.clock.now())

    def held(self, item: QueuedRecipient, dest: Destination) -> bool:
        # called for every leased recipient: the provider's name only (memoised)
        provider = self.shaping.provider_of(dest)
        at = provider.name if provider is not None else dest.name
        return self.automation.tenant_suspended(item.tenant, at, self.clock.now()) is not None

    async def apply(self, fired: list[Fired]) -> None:
        if not fired:
            return
        now = self.clock.now()
        events = []
        for f in fired:
            self.foreign.discard(f.id)
            await self._carry_out(f, now)
            event(log, "automation_action", level=logging.WARNING, action=str(f.action),
                  scope=f.scope, key=f.key, rule=f.rule.name, until=f"{f.until - now:.0f}s",
                  reason=f.reason)
            self.observer.automation_action(f.action.kind)
            tenant = f.key.partition("@")[0] if f.scope == "tenant" else ""
            events.append(LedgerEvent("automation_action", now,
                                      credential=_tenant_credential(tenant) if tenant else "",
                                      detail=fired_dict(f)))
        await self.spool.ledger.append_events(events)
        self.runner.poke()
        if self.share is not None:
            await self.share.fired([f for f in fired if f.action.kind != "bounce"])

    async def _carry_out(self, f: Fired, now: float) -> None:
        scheduler = self.runner.scheduler
        kind = f.action.kind
        if kind == "suspend":
            scheduler.suspend(f.key)
            await self.runner.put_back(scheduler.drain(f.key), f.until)
        elif kind in ("connection_limit", "message_rate"):
            scheduler.replan(f.key)
        elif kind == "suspend_tenant":
            # The mail waiting for that provider (or site) goes back; the
            # next lease holds what is the tenant's (held()), lets the rest go.
            at = f.key.rpartition("@")[2]
            for name, state in scheduler.destination_states().items():
                if at in (name.partition("@")[0], state.get("provider")):
                    await self.runner.put_back(scheduler.drain(name), now)

    async def adopt(self, fired: list[Fired]) -> None:
        now = self.clock.now()
        for f in fired:
            if f.until > now and self.automation.adopt(f):
                self.foreign.add(f.id)
                await self._carry_out(f, now)
                event(log, "automation_adopted", action=str(f.action), scope=f.scope,
                      key=f.key, rule=f.rule.name, until=f"{f.until - now:.0f}s")
        self.runner.poke()

    async def lift_adopted(self, ids: list[str]) -> None:
        lifted = [f for i in ids for f in self.automation.lift(i)]
        await self._ended(lifted, "lifted", record=False)

    async def tick(self) -> None:
        """End the actions whose time is up."""
        ended = self.automation.expire(self.clock.now())
        await self._ended(ended, "expired")

    async def lift(self, target: str) -> list[dict[str, Any]]:
        lifted = self.automation.lift(target)
        if self.share is not None and lifted:       # first: no poll may re-adopt them
            await self.share.lifted(lifted)
        await self._ended(lifted, "lifted")
        return [fired_dict(f) for f in lifted]

    async def _ended(self, ended: list[Fired], why: str, record: bool = True) -> None:
        if not ended:
            return
        now = self.clock.now()
        scheduler = self.runner.scheduler
        events = []
        for f in ended:
            if f.action.kind == "suspend" and \
                    self.automation.site_suspended(f.key, now) is None:
                scheduler.resume(f.key)
                await self.runner.flush(f.key)      # its mail is due now
            elif f.action.kind in ("connection_limit", "message_rate"):
                scheduler.replan(f.key)
            event(log, "automation_ended", action=str(f.action), scope=f.scope, key=f.key,
                  rule=f.rule.name, why=why)
            foreign = f.id in self.foreign and why == "expired"
            self.foreign.discard(f.id)
            if not record or foreign:
                continue            # the node that fired (or lifted) it records it
            tenant = f.key.partition("@")[0] if f.scope == "tenant" else ""
            events.append(LedgerEvent("automation_ended", now,
                                      credential=_tenant_credential(tenant) if tenant else "",
                                      detail={**fired_dict(f), "why": why}))
        if events:
            await self.spool.ledger.append_events(events)
        self.runner.poke()

    def active(self) -> list[dict[str, Any]]:
        return [fired_dict(f) for f in self.automation.active(self.clock.now())]
