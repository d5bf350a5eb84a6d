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
