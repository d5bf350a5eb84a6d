"""runtime.housekeeping: the supervisor of the daemon's periodic jobs, with
short real intervals (no daemon)."""

import asyncio
import logging

import pytest

from mta.runtime.housekeeping import (PRUNE_BATCH, Housekeeping, Job, prune_ledger,
                                      reclaim_segments)
import itertools


async def until(cond, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_job_runs_at_start_and_again_after_its_interval():
    runs = []

    async def tick():
        runs.append(asyncio.get_running_loop().time())
    hk = Housekeeping([Job("tick", 0.05, tick)])
    hk.start()
    try:
        await until(lambda: len(runs) >= 3)
    finally:
        await hk.stop()
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(runs))


async def test_a_wakeup_runs_the_job_at_once():
    runs = []
    wake = asyncio.Event()

    async def tick():
        runs.append(1)
    hk = Housekeeping([Job("dsn", 3600.0, tick, wakeup=wake)])
    hk.start()
    try:
        await until(lambda: len(runs) == 1)                 # at start
        wake.set()
        await until(lambda: len(runs) == 2)
        await asyncio.sleep(0.05)
        assert len(runs) == 2 and not wake.is_set()         # cleared before the run
    finally:
        await hk.stop()


async def test_a_set_during_a_run_runs_the_job_once_more():
    runs = []
    wake = asyncio.Event()
    gate = asyncio.Event()

    async def tick():
        runs.append(1)
        if len(runs) == 1:
            await gate.wait()
    hk = Housekeeping([Job("dsn", 3600.0, tick, wakeup=wake)])
    hk.start()
    try:
        await until(lambda: len(runs) == 1)
        wake.set()                                          # while the first run is busy
        gate.set()
        await until(lambda: len(runs) == 2)
    finally:
        await hk.stop()


async def test_a_failed_iteration_is_logged_and_the_job_runs_again(caplog):
    caplog.set_level(logging.ERROR, logger="mta.housekeeping")
    runs, others = [], []

    async def flaky():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("disk on fire")

    async def other():
        others.append(1)
    hk = Housekeeping([Job("flaky", 0.02, flaky), Job("other", 0.02, other)])
    hk.start()
    try:
        await until(lambda: len(runs) >= 2 and len(others) >= 2)
    finally:
        await hk.stop()
    failed = [r for r in caplog.records if "event=housekeeping_failed" in r.getMessage()]
    assert [r.getMessage() for r in failed] == ["event=housekeeping_failed job=flaky"]
    assert "disk on fire" in caplog.text                    # with its traceback


async def test_a_pause_after_failure_holds_back_a_woken_job():
    runs = []
    wake = asyncio.Event()

    async def failing():
        runs.append(asyncio.get_running_loop().time())
        wake.set()                                          # woken again at once …
        raise RuntimeError("still broken")
    hk = Housekeeping([Job("dsn", 3600.0, failing, wakeup=wake, pause_after_failure=0.1)])
    hk.start()
    try:
        await until(lambda: len(runs) >= 2)
    finally:
        await hk.stop()
    assert runs[1] - runs[0] >= 0.095                       # … but not before the pause


async def test_stop_cancels_every_job_even_while_its_wakeup_fires():
    wake = asyncio.Event()
    started = asyncio.Event()

    async def slow():
        started.set()
        await asyncio.sleep(3600)

    async def quick():
        wake.set()
    hk = Housekeeping([Job("slow", 3600.0, slow), Job("woken", 3600.0, quick, wakeup=wake)])
    hk.start()
    await started.wait()
    async with asyncio.timeout(2):
        await hk.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("housekeeping-")] == []


async def test_jobs_are_named_once_and_added_after_start_run_at_once():
    runs = []

    async def tick():
        runs.append(1)
    hk = Housekeeping()
    hk.start()
    try:
        hk.add(Job("late", 3600.0, tick))
        await until(lambda: runs == [1])
        with pytest.raises(ValueError, match="twice"):
            hk.add(Job("late", 1.0, tick))
        with pytest.raises(ValueError, match="positive"):
            hk.add(Job("never", 0.0, tick))
        assert hk.names == ["late"]
    finally:
        await hk.stop()


class FakeLedger:
    def __init__(self, events: int):
        self.events, self.calls = events, []

    async def prune_events(self, before, batch=1000):
        n = min(batch, self.events)
        self.events -= n
        self.calls.append(("events", before, batch))
        return n

    async def prune_idempotency(self, before, batch=1000):
        self.calls.append(("idempotency", before, batch))
        return 0

    async def reclaim(self):
        return 2


async def test_prune_ledger_deletes_in_batches_until_one_is_short():
    ledger = FakeLedger(2 * PRUNE_BATCH + 5)
    await prune_ledger(ledger, now=1000.0, retention=100.0, idempotency_window=10.0)
    assert ledger.calls == [("events", 900.0, PRUNE_BATCH)] * 3 + [("idempotency", 990.0, 1000)]
    assert ledger.events == 0


async def test_reclaim_segments_logs_what_it_unlinked(caplog):
    caplog.set_level(logging.INFO, logger="mta.housekeeping")
    assert await reclaim_segments(FakeLedger(0)) == 2
    assert "event=segments_reclaimed count=2" in caplog.text
