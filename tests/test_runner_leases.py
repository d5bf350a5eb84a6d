"""The queue runner leases only when something may be due (issue 12): a
delivery that ends does not make it run an empty lease (a writer
transaction that queued before the next acceptance at C=1), while new mail,
a deadline and an operator's flush still find their work at once."""

from __future__ import annotations

import aiosmtplib

from tests.support.mtahelpers import config_text, free_port, make_message, running_daemon
from tests.support.sink import Sink


async def test_one_lease_per_message_at_c1(tmp_path):
    async with Sink(tls=False) as sink:
        port = free_port()
        text = config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        async with running_daemon(text) as d:
            calls: list[int] = []
            real = d.spool.lease_due

            async def counted(now, limit):
                got = await real(now, limit)
                calls.append(len(got))
                return got

            d.spool.lease_due = counted
            n = 8
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as c:
                for i in range(n):
                    await c.sendmail("a@sender.test", [f"r{i}@rcpt.test"],
                                     make_message("a@sender.test", [f"r{i}@rcpt.test"]))
                    await sink.wait_for(i + 1, timeout=20)   # delivered before the next
            assert len(sink.messages) == n
            assert sum(calls) == n
            empty = calls.count(0)
            # Each message is found by the lease its poke caused; a lease that
            # finds nothing is the exception (a poke landing mid-lease), not
            # one after every delivery.
            assert empty <= 2, calls


async def test_outcomes_are_recorded_per_transaction_not_per_batch(tmp_path):
    """Four messages leased together go over one connection; while the
    remote holds the third one's DATA reply, the first two are already
    recorded delivered (a crash now re-sends at most the one in flight)."""
    import asyncio
    import sqlite3
    import time

    from aiosmtpd.smtp import SMTP

    from mta.spool import NewMessage

    release = asyncio.Event()
    seen: list[bytes] = []

    class Holding:
        async def handle_DATA(self, server, session, envelope):
            seen.append(envelope.content)
            if b"Subject: hold" in envelope.content:
                await release.wait()
            return "250 2.0.0 ok"

    loop = asyncio.get_running_loop()
    sink = await loop.create_server(lambda: SMTP(Holding(), hostname="sink.test"),
                                    "127.0.0.1", 0)
    sink_port = sink.sockets[0].getsockname()[1]
    port = free_port()
    text = config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                       routes={"*": f"127.0.0.1:{sink_port}"},
                       extra_delivery="concurrency_per_destination = 1")
    try:
        async with running_daemon(text) as d:
            ids = []
            for subject in ("one", "two", "hold", "four"):
                rcpt = f"{subject}@rcpt.test"
                ids.append(await d.spool.enqueue(NewMessage(
                    "a@sender.test", (rcpt,), make_message("a@sender.test", [rcpt], subject)),
                    time.time()))
            d.runner.poke()                       # one lease: one batch, one connection
            for _ in range(200):
                if len(seen) == 3:
                    break
                await asyncio.sleep(0.02)
            assert len(seen) == 3, seen

            def states():
                with sqlite3.connect(tmp_path / "state" / "spool" / "index.sqlite3") as c:
                    rows = dict(c.execute("SELECT message_id, state FROM recipients"))
                return [rows[i] for i in ids]

            for _ in range(100):                  # the records of 1 and 2 are on their way
                if states()[:2] == ["delivered", "delivered"]:
                    break
                await asyncio.sleep(0.02)
            assert states()[:2] == ["delivered", "delivered"], states()
            assert "delivered" not in states()[2:], states()
            release.set()
            for _ in range(200):
                if states() == ["delivered"] * 4:
                    break
                await asyncio.sleep(0.02)
            assert states() == ["delivered"] * 4
    finally:
        release.set()
        sink.close()
