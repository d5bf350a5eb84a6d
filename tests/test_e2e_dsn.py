"""Failure DSNs end to end (issue 10 items 11 and 22): the real daemon and
queue runner, real SQLite and segments, the scripted sink on loopback
answering 550 for one recipient, 451 for another (until it expires) and 250
for a third. A hard bounce's DSN goes out in the next DSN pass, not when the
last recipient is settled; the later expiry gets a DSN of its own; nobody is
reported twice, a delivered recipient never; each Last-Attempt-Date is that
recipient's own last attempt."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from email.utils import parsedate_to_datetime

import aiosmtplib
import pytest

from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink

SENDER = "app@sender.test"


class BareSink(Sink):
    """The scripted sink, plus: a local part starting "bare552" is refused at
    RCPT with a 552 that carries no enhanced status code."""

    def _protocol(self):
        proto = super()._protocol()
        rcpt = proto._handle_hooks["RCPT"]      # aiosmtpd's hook table, built at construction

        async def handle_rcpt(server, session, envelope, address, options):
            if address.lower().startswith("bare552"):
                return "552 Message size exceeds fixed maximum message size"
            return await rcpt(server, session, envelope, address, options)
        proto._handle_hooks["RCPT"] = handle_rcpt
        return proto


@pytest.fixture
async def sink():
    async with BareSink(tls=False) as s:
        yield s


@pytest.fixture
async def daemon(tmp_path, sink):
    port = free_port()
    text = config_text(tmp_path / "state", port, tls="none", trusted=["127.0.0.0/8"],
                       retry="1s", lifetime="6s", routes={"*": f"127.0.0.1:{sink.port}"})
    async with running_daemon(text) as d:
        d.port = port
        yield d


async def submit(port: int, rcpts: list[str]) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                               use_tls=False, timeout=10) as c:
        _, resp = await c.sendmail(SENDER, rcpts, (
            f"From: {SENDER}\r\nTo: {', '.join(rcpts)}\r\nSubject: dsn test\r\n\r\nhi\r\n"
        ).encode())
    return resp.split()[-1]


def dsns(sink: Sink) -> list:
    return [m for m in sink.messages if m.mail_from == ""]


def dsns_at_least(sink: Sink, n: int):
    async def pred():
        got = dsns(sink)
        return got if len(got) >= n else None
    return pred


async def until(pred, timeout: float):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        got = await pred()
        if got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout}s")


def report_blocks(data: bytes) -> list:
    """The per-recipient blocks of the DSN's message/delivery-status part."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    [status] = [p for p in msg.iter_parts() if p.get_content_type() == "message/delivery-status"]
    return status.get_payload()[1:]


async def last_attempt(d, qid: str, idx: int) -> float:
    view = await d.spool.get_message(qid)
    return max(a.at for a in view.attempts if a.rcpt_idx == idx)


async def test_hard_bounce_dsn_is_sent_at_once_and_the_expiry_gets_its_own(daemon, sink):
    qid = await submit(daemon.port, ["reject-a@rcpt.test", "tempfail-1000@rcpt.test",
                                     "ok-c@rcpt.test"])
    # the 550 is reported while the 451 recipient is still being retried
    # (lifetime 6s): before issue 10 the DSN waited for the expiry
    [first] = await until(dsns_at_least(sink, 1), timeout=4)
    view = await daemon.spool.get_message(qid)
    states = [r.state for r in view.recipients]
    assert states == ["bounced", "queued", "delivered"]
    [a] = report_blocks(first.data)
    assert a["Final-Recipient"] == "rfc822; reject-a@rcpt.test" and a["Status"] == "5.1.1"
    assert (parsedate_to_datetime(a["Last-Attempt-Date"]).timestamp()
            == int(await last_attempt(daemon, qid, 0)))
    assert first.rcpt_tos == [SENDER]

    # the deferred one expires: a second DSN, for it alone
    second = (await until(dsns_at_least(sink, 2), timeout=15))[1]
    [b] = report_blocks(second.data)
    assert b["Final-Recipient"] == "rfc822; tempfail-1000@rcpt.test"
    assert b["Action"] == "failed" and b["Status"] == "4.7.1"
    assert (parsedate_to_datetime(b["Last-Attempt-Date"]).timestamp()
            == int(await last_attempt(daemon, qid, 1)))
    assert b["Last-Attempt-Date"] != a["Last-Attempt-Date"]

    await asyncio.sleep(1.5)                   # and nothing more, ever
    assert len(dsns(sink)) == 2
    assert not any(b"ok-c@rcpt.test" in m.data.split(b"message/delivery-status")[1]
                   .split(b"text/rfc822-headers")[0] for m in dsns(sink))
    events = await daemon.spool.ledger.message_events(qid)
    assert sorted(e.detail["rcpt_idx"] for e in events if e.type == "dsn_sent") == [0, 1]
    assert (await daemon.spool.get_message(qid)).done


async def test_bare_552_is_reported_as_5_3_4_everywhere(daemon, sink, caplog):
    with caplog.at_level(logging.INFO, logger="mta.queue"):
        qid = await submit(daemon.port, ["bare552-x@rcpt.test"])
        [dsn] = await until(dsns_at_least(sink, 1), timeout=10)
    [r] = report_blocks(dsn.data)
    assert r["Status"] == "5.3.4"               # not 5.0.0
    assert r["Diagnostic-Code"] == "smtp; 552 Message size exceeds fixed maximum message size"
    [bounced] = [e for e in await daemon.spool.ledger.message_events(qid) if e.type == "bounced"]
    assert bounced.detail["status"] == "5.3.4"  # the ledger agrees
    [line] = [x.getMessage() for x in caplog.records
              if x.getMessage().startswith("event=bounced") and qid in x.getMessage()]
    assert " status=5.3.4 " in line             # and so does the log
