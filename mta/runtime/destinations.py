"""Operator control of destinations: suspend, resume, flush.

One job: carry out `mta destination suspend|resume|flush NAME` (admin API
POST /v1/destinations/{name}/…) on the running queue runner: the scheduler
stops or restarts releasing batches for NAME, and the spool's recipients
for NAME are put back or made due.

API
    DestinationControl(runner)      runner: the queue runner (`Steerable`)
      await .suspend(name)          no new deliveries to `name` until resume;
                                    its waiting recipients go back to the
                                    spool, re-checked every SUSPEND_RECHECK s
                                    (no attempt counted)
      await .resume(name)           deliveries again (a shaping rule's action
                                    on `name` is lifted too), and flush
      await .flush(name) -> int     attempt its queued recipients now
                                    (postqueue -s; an MX site: the domains
                                    last found in it); how many were made due
    domains_of(name, routes, *, sandbox, mx_port) -> list[str | None]
                                    the recipient domains whose mail goes to
                                    destination `name` (None = every domain)

Invariants: routes, sandbox mode and the MX port are read from the runner at
each call (a reload replaces them); in-flight batches finish either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from mta.core import Clock
from mta.policy.routing import destination_for
from mta.runtime.automation import ReplyRules
from mta.runtime.shaping import Shaping
from mta.scheduler import Scheduler, Work
from mta.spool import MessageFilter, Spool

__all__ = ["SUSPEND_RECHECK", "DestinationControl", "Steerable", "domains_of"]

SUSPEND_RECHECK = 60.0   # seconds between looks at a suspended destination's recipients


class Steerable(Protocol):
    """The queue runner as operator control sees it."""
    scheduler: Scheduler
    spool: Spool
    clock: Clock
    routes: Mapping[str, str]
    sandbox: bool
    mx_port: int
    shaping: Shaping | None
    rules: ReplyRules | None

    def poke(self) -> None: ...
    async def put_back(self, works: Sequence[Work], until: float) -> None: ...


def domains_of(name: str, routes: Mapping[str, str], *, sandbox: bool,
               mx_port: int) -> list[str | None]:
    """Recipient domains whose mail goes to destination `name` (None = all:
    the smarthost route "*" goes there)."""
    if name == "sandbox" and sandbox:
        return [None]                  # sandbox mode: every domain goes there
    if not name.startswith("[") or name.endswith("]"):   # a domain, or a literal [ip]
        return [name]
    out: list[str | None] = []
    for domain in routes:
        dest = destination_for("x.invalid" if domain == "*" else domain, routes,
                               sandbox=False, mx_port=mx_port)
        if dest.name == name:
            if domain == "*":
                return [None]
            out.append(domain)
    return out


class DestinationControl:
    def __init__(self, runner: Steerable):
        self.runner = runner

    async def suspend(self, name: str) -> None:
        r = self.runner
        back = r.scheduler.suspend(name)
        await r.put_back(back, r.clock.now() + SUSPEND_RECHECK)

    async def resume(self, name: str) -> None:
        """Lifts the operator's suspension and any shaping-rule action on
        `name` (issue 15), then flushes."""
        self.runner.scheduler.resume(name)
        if self.runner.rules is not None:
            await self.runner.rules.lift(name)
        await self.flush(name)

    async def flush(self, name: str) -> int:
        r = self.runner
        now = r.clock.now()
        r.scheduler.flush(name, now)
        count = 0
        domains = domains_of(name, r.routes, sandbox=r.sandbox, mx_port=r.mx_port)
        if r.shaping is not None and domains == [name]:
            domains += r.shaping.sites.domains(name)     # an MX site: its domains
        for domain in domains:
            count += await r.spool.retry_messages(MessageFilter(domain=domain), now)
        r.poke()
        return count
