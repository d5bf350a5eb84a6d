#!/usr/bin/env python3
"""Spool microbenchmark: enqueue latency at concurrency 1 (one message per batch).

One job: open a spool in a fresh directory on the project's filesystem (not
tmpfs: fsync must be real), enqueue N messages one after the other (each
awaited before the next, so every writer batch holds exactly one enqueue:
one segment append + fdatasync and one index transaction), and print the
p50/p90/p99/mean latency of `Spool.enqueue` in milliseconds, the enqueues
per second, and the writer's counters.

Usage:
    PYTHONPATH=<tree> .venv/bin/python scripts/bench_spool.py [--count N] [--size BYTES] [--dir D]

PYTHONPATH picks the mta tree to measure (e.g. an export of an older commit),
so the same script compares before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import statistics
import tempfile
import time

from mta.spool import NewMessage, Spool


def body(n: int, size: int) -> bytes:
    head = f"From: a@bench.test\r\nTo: b@dest.test\r\nSubject: m {n}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def instrument() -> dict[str, list[float]]:
    """Time the writer's steps per batch: in trees before the one-hop writer
    the record append (+ fdatasync) and the index transaction (+ COMMIT) as
    the loop sees them; since, the append and the whole hop (append +
    transaction) on the writer connection's thread."""
    from mta.spool import writer
    spent: dict[str, list[float]] = collections.defaultdict(list)
    if hasattr(writer.Writer, "_append"):
        for name, key in (("_append", "append"), ("_transaction", "transaction")):
            real = getattr(writer.Writer, name)

            def timed(*a, _real=real, _key=key):
                async def go():
                    t0 = time.perf_counter()
                    try:
                        return await _real(*a)
                    finally:
                        spent[_key].append(time.perf_counter() - t0)
                return go()
            setattr(writer.Writer, name, timed)
        return spent
    hop = writer._Hop
    for name, key in (("_append", "append"), ("run", "append+transaction")):
        real = getattr(hop, name)

        def timed_sync(*a, _real=real, _key=key):
            t0 = time.perf_counter()
            try:
                return _real(*a)
            finally:
                spent[_key].append(time.perf_counter() - t0)
        setattr(hop, name, timed_sync)
    return spent


async def run(count: int, size: int, directory: str) -> None:
    spent = instrument()
    spool = await Spool.open(directory, now=time.time())
    lat: list[float] = []
    try:
        for n in range(50):     # warm-up: segment created, pages cached
            await spool.enqueue(NewMessage("a@bench.test", ("b@dest.test",), body(n, size)),
                                time.time())
        start = time.perf_counter()
        for n in range(count):
            m = NewMessage("a@bench.test", ("b@dest.test", "c@dest.test"), body(n, size),
                           credential="app1", listener="submission", client_ip="127.0.0.1")
            t0 = time.perf_counter()
            await spool.enqueue(m, time.time())
            lat.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
    finally:
        await spool.close()
    lat.sort()
    ms = [x * 1000 for x in lat]
    q = statistics.quantiles(ms, n=100)
    print(f"enqueue C=1 size={size} n={count}: p50 {q[49]:.3f} ms  p90 {q[89]:.3f} ms  "
          f"p99 {q[98]:.3f} ms  mean {statistics.fmean(ms):.3f} ms  {count / wall:.0f}/s")
    for key, xs in spent.items():
        if not xs:
            continue
        xs = sorted(xs[50:])
        print(f"  {key}: p50 {xs[len(xs) // 2] * 1000:.3f} ms  p99 {xs[int(len(xs) * .99)] * 1000:.3f} ms  mean {statistics.fmean(xs) * 1000:.3f} ms")
    print(f"writer: {spool.stats}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-spool-", dir=a.dir)
    try:
        asyncio.run(run(a.count, a.size, d))
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
