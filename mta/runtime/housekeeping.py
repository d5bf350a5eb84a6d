"""Housekeeping: the daemon's periodic jobs under one supervisor.

One job: run each periodic job of the daemon — the DSN pass, segment
reclaim, ledger and idempotency-key pruning, sending-domain re-checks — in
its own task, again and again, and stop them all cleanly. The jobs' work
lives with their owners (runtime/dsn.py, the spool, runtime/domains.py);
this module only says when each runs and what a failure does.

API
    Job(name, interval, run, wakeup=None, pause_after_failure=0.0)
        run: a coroutine function doing one iteration. It runs once at
        start, then again `interval` seconds after the end of the previous
        iteration, or as soon as `wakeup` (an asyncio.Event) is set;
        `wakeup` is cleared just before each iteration, so a set during an
        iteration runs the job once more right after it.
    Housekeeping(jobs=())   .add(job)  .start()  await .stop()  .names
    wait_event(event, timeout)            until `event` is set or `timeout` passes
    await prune_ledger(spool, now, retention, idempotency_window)
    await reclaim_segments(spool) -> int

Invariants
  * A failed iteration never ends its job: it is logged as
    ``event=housekeeping_failed job=NAME`` (with the traceback), the job
    waits `pause_after_failure` seconds (a job woken often must not spin on
    a persistent error), then its usual interval or wake-up, and runs again.
    Other jobs never notice.
  * stop() cancels every job's task and waits for each to end; a job never
    swallows a cancellation (see wait_event).
  * Only start() creates tasks; jobs added after start() are started at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mta.core.logfmt import event

__all__ = ["DOMAINS_EVERY", "DSN_EVERY", "DSN_PAUSE_AFTER_FAILURE", "PRUNE_EVERY",
           "RECLAIM_EVERY", "Housekeeping", "Job", "LedgerPruning", "SegmentReclaim",
           "prune_ledger", "reclaim_segments", "wait_event"]

log = logging.getLogger("mta.housekeeping")

# How often each of the daemon's jobs runs (seconds between the end of one
# run and the start of the next), and the pause after a failed DSN pass.
DSN_EVERY = 10.0             # also at once when a record completes an owed DSN
DSN_PAUSE_AFTER_FAILURE = 5.0
RECLAIM_EVERY = 30.0
PRUNE_EVERY = 300.0
DOMAINS_EVERY = 30.0         # re-read sending domains, run the DNS checks due
SHAPING_EVERY = 5.0          # end expired shaping-rule actions, save warm-up counters

PRUNE_BATCH = 1000       # rows per delete: the writer (and every enqueue) waits only briefly
PRUNE_PAUSE = 0.2        # seconds between two full batches


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Until `event` is set or `timeout` seconds pass.

    Not asyncio.wait_for(event.wait(), timeout): in Python 3.11 it swallows
    a cancellation that lands while the event fires (it returns the result
    instead; gh-86296), and a loop around it then never stops: the daemon's
    stop() waited forever on the DSN loop (seen in CI).
    asyncio.timeout() passes the cancellation on."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


@dataclass(frozen=True)
class Job:
    name: str
    interval: float
    run: Callable[[], Awaitable[object]]
    wakeup: asyncio.Event | None = None
    pause_after_failure: float = 0.0


class Housekeeping:
    def __init__(self, jobs: Sequence[Job] = ()):
        self._jobs: list[Job] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        for job in jobs:
            self.add(job)

    @property
    def names(self) -> list[str]:
        return [job.name for job in self._jobs]

    def add(self, job: Job) -> None:
        if job.name in self.names:
            raise ValueError(f"housekeeping job {job.name!r} added twice")
        if job.interval <= 0:
            raise ValueError(f"housekeeping job {job.name!r}: interval must be positive")
        self._jobs.append(job)
        if self._started:
            self._spawn(job)

    def start(self) -> None:
        self._started = True
        for job in self._jobs:
            self._spawn(job)

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, job: Job) -> None:
        self._tasks[job.name] = asyncio.create_task(_supervise(job),
                                                    name=f"housekeeping-{job.name}")


async def _supervise(job: Job) -> None:
    while True:
        if job.wakeup is not None:
            job.wakeup.clear()
        try:
            await job.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=housekeeping_failed job=%s", job.name)
            if job.pause_after_failure > 0:
                await asyncio.sleep(job.pause_after_failure)
        if job.wakeup is None:
            await asyncio.sleep(job.interval)
        else:
            await wait_event(job.wakeup, job.interval)
            # An Event already set is awaited without suspending: yield once,
            # so a job that is woken again and again can still be cancelled
            # and never starves the loop.
            await asyncio.sleep(0)


# ---- the jobs that are the spool's ----------------------------------------------

class LedgerPruning(Protocol):
    """The spool as pruning sees it."""
    async def prune_events(self, before: float, batch: int = ...) -> int: ...
    async def prune_idempotency(self, before: float, batch: int = ...) -> int: ...


class SegmentReclaim(Protocol):
    async def reclaim(self) -> int: ...


async def prune_ledger(spool: LedgerPruning, now: float, retention: float,
                       idempotency_window: float) -> None:
    """Ledger events older than `retention` and idempotency keys older than
    `idempotency_window`: deleted in small batches with pauses between them,
    so delivery never waits behind a big delete."""
    while await spool.prune_events(now - retention, batch=PRUNE_BATCH) == PRUNE_BATCH:
        await asyncio.sleep(PRUNE_PAUSE)
    await spool.prune_idempotency(now - idempotency_window)


async def reclaim_segments(spool: SegmentReclaim) -> int:
    """Unlink segment files whose messages are all finished (the spool never
    does it on its own)."""
    n = await spool.reclaim()
    if n:
        event(log, "segments_reclaimed", count=n)
    return n
