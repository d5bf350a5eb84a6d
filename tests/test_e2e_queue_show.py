"""`mta queue show` against the real daemon (issue 10 item 24): an attempt
answered 4xx is labelled deferred (not `queued`, the recipient's state after
it), and every time is ISO 8601 UTC, never a raw epoch."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest

from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink
from tests.test_e2e_dsn import submit, until

ISO = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
EPOCH = re.compile(r"(?<![\d.])1\d{9}(?:\.\d+)?(?![\d])")


@pytest.fixture
async def world(tmp_path):
    async with Sink(tls=False) as sink:
        port = free_port()
        text = config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                           retry="10m", lifetime="1d", routes={"*": f"127.0.0.1:{sink.port}"})
        (tmp_path / "mta.toml").write_text(text)     # for the CLI: the daemon's admin API
        async with running_daemon(text) as d:
            d.port = port
            yield d, tmp_path / "mta.toml"


async def test_show_labels_a_4xx_attempt_deferred_and_prints_no_epoch(world):
    d, config = world
    qid = await submit(d.port, ["tempfail-50@rcpt.test", "ok-1@rcpt.test"])

    async def attempted():
        v = await d.spool.get_message(qid)
        return v if len(v.attempts) == 2 else None
    await until(attempted, timeout=15)
    r = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mta", "queue", "show", qid],
        env=dict(os.environ, MTA_CONFIG=str(config)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert not EPOCH.search(out), EPOCH.search(out)
    attempts = out.split("*** ATTEMPTS ***")[1].split("*** TIMELINE ***")[0]
    assert re.search(rf"^{ISO}  tempfail-50@rcpt\.test  deferred  ", attempts, re.M), attempts
    assert re.search(rf"^{ISO}  ok-1@rcpt\.test  delivered  ", attempts, re.M), attempts
    assert not re.search(rf"^{ISO}  \S+  queued  ", attempts, re.M)
    assert re.search(rf"^queued +tempfail-50@rcpt\.test  attempts=1  next {ISO} "
                     r"\(in (9m\d+s|10m)\)$", out, re.M), out
    assert re.search(rf"^received:  {ISO} \((\d+s ago|now)\)$", out, re.M), out
    timeline = out.split("*** TIMELINE ***")[1]
    assert re.search(rf"deferred +{qid}  tempfail-50@rcpt\.test  reply=451 4\.7\.1 .*"
                     rf"next_attempt={ISO} \(in (9m\d+s|10m)\)", timeline), timeline
