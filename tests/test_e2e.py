"""End to end, in one process over real loopback sockets: an aiosmtplib client
with AUTH over STARTTLS → mta (real spool files, real SQLite) → the scripted
sink. Asserts delivered, retried, bounced with a DSN that reaches the sink
for the sender, and expired."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiosmtplib
import pytest

from mta.server.credentials import CredentialStore
from tests.support.mtahelpers import (config_text, free_port, make_message, no_verify_context,
                                      parse, running_daemon)
from tests.support.sink import Sink

SENDER = "app@sender.test"


@pytest.fixture
async def sink():
    async with Sink() as s:
        yield s


@pytest.fixture
def user(tmp_path):
    store = CredentialStore(tmp_path / "state" / "credentials.json")
    (tmp_path / "state").mkdir(exist_ok=True)
    return "app", store.add("app", "s3cret-passwd")


async def submit(port, rcpts, sender=SENDER, **kw):
    msg = make_message(sender, rcpts, **kw)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login("app", "s3cret-passwd")
        errors, resp = await c.sendmail(sender, rcpts, msg)
        assert resp.startswith("2.0.0 Ok: queued as"), resp
        return resp.split()[-1]


async def wait_until(pred, timeout=20.0, step=0.05):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        r = await pred()
        if r:
            return r
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


def recipient_states(view):
    return {r.address: r.state for r in view.recipients}


@pytest.fixture
async def mta(tmp_path, sink, user):
    port = free_port()
    text = config_text(tmp_path / "state", port, routes={"*": f"127.0.0.1:{sink.address[1]}"})
    (tmp_path / "mta.toml").write_text(text)   # for the CLI, which asks the daemon's admin API
    async with running_daemon(text) as d:
        d.port = port
        yield d


async def test_delivered_with_tls_and_headers(mta, sink):
    qid = await submit(mta.port, ["ok-1@rcpt.test", "ok-2@rcpt.test"])
    msgs = await sink.wait_for(1)
    m = msgs[0]
    assert sorted(m.rcpt_tos) == ["ok-1@rcpt.test", "ok-2@rcpt.test"]  # one transaction
    assert m.mail_from == SENDER
    assert m.tls and m.tls.startswith("TLS")
    hdr = parse(m.data)
    assert hdr["Message-ID"] and hdr["Date"]
    assert "by mta.test" in hdr["Received"] and qid in hdr["Received"]

    async def done():
        v = await mta.spool.get_message(qid)
        return v if v.done else None
    view = await wait_until(done)
    assert set(recipient_states(view).values()) == {"delivered"}
    assert all(a.tls.startswith("TLS") for a in view.attempts)
    assert all(a.reply.startswith("250") for a in view.attempts)


async def test_tempfail_is_retried_on_schedule_then_delivered(mta, sink):
    qid = await submit(mta.port, ["tempfail-2@rcpt.test"])
    msgs = await sink.wait_for(1, timeout=20)
    assert msgs[0].rcpt_tos == ["tempfail-2@rcpt.test"]
    assert sink.rcpt_attempts["tempfail-2@rcpt.test"] == 3

    async def recorded():
        # the sink has the message before the spool has recorded the 250
        v = await mta.spool.get_message(qid)
        return v if len(v.attempts) >= 3 else None
    view = await wait_until(recorded)
    replies = [a.reply for a in view.attempts]
    assert [r[:3] for r in replies] == ["451", "451", "250"]
    # schedule 1s,2s: the attempts are at least 1s and 2s apart
    at = [a.at for a in view.attempts]
    assert at[1] - at[0] >= 0.9 and at[2] - at[1] >= 1.9


async def test_reject_bounces_with_a_dsn_to_the_sender(mta, sink):
    qid = await submit(mta.port, ["reject-me@rcpt.test", "ok-x@rcpt.test", "tempfail-1@rcpt.test"])
    # ok-x delivered; tempfail-1 delivered on retry; DSN for reject-me only
    async def dsn():
        return [m for m in sink.messages if m.mail_from == ""]
    dsns = await wait_until(dsn, timeout=20)
    assert len(dsns) == 1
    d = dsns[0]
    assert d.rcpt_tos == [SENDER]
    report = parse(d.data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text = d.data.decode()
    assert "Final-Recipient: rfc822; reject-me@rcpt.test" in text
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1" in text and "User unknown" in text
    assert "ok-x@rcpt.test" not in text.split("message/delivery-status")[1].split("text/rfc822-headers")[0]
    view = await wait_until(lambda: _done(mta, qid))
    assert recipient_states(view) == {"reject-me@rcpt.test": "bounced",
                                      "ok-x@rcpt.test": "delivered",
                                      "tempfail-1@rcpt.test": "delivered"}
    await asyncio.sleep(1.5)  # no second DSN ever
    assert len([m for m in sink.messages if m.mail_from == ""]) == 1


async def _done(mta, qid):
    v = await mta.spool.get_message(qid)
    return v if v and v.done else None


async def test_no_dsn_for_null_sender(mta, sink):
    qid = await submit(mta.port, ["reject-null@rcpt.test"], sender="")
    view = await wait_until(lambda: _done(mta, qid))
    assert recipient_states(view) == {"reject-null@rcpt.test": "bounced"}
    await asyncio.sleep(1.0)
    assert await mta.spool.dsn_candidates() == []
    assert not [m for m in sink.messages if m.mail_from == ""]
    listing = await mta.spool.list_messages(include_done=True)
    assert not any(m.is_dsn for m in listing)


async def test_drop_during_data_is_deferred_not_lost(mta, sink):
    qid = await submit(mta.port, ["drop-1@rcpt.test"])

    async def attempted():
        v = await mta.spool.get_message(qid)
        return v if v.attempts else None
    view = await wait_until(attempted)
    r = view.recipients[0]
    assert r.state == "queued"
    assert view.attempts[0].reply.startswith("451 4.4.2")
    assert not sink.messages


async def test_expiry_bounces_with_dsn(tmp_path, sink, user):
    port = free_port()
    text = config_text(tmp_path / "state", port, routes={"*": f"127.0.0.1:{sink.address[1]}"},
                       retry="1s", lifetime="3s")
    async with running_daemon(text) as d:
        d.port = port
        qid = await submit(port, ["tempfail-1000@rcpt.test"])
        view = await wait_until(lambda: _done(d, qid), timeout=20)
        assert recipient_states(view) == {"tempfail-1000@rcpt.test": "expired"}
        assert len(view.attempts) >= 3
        dsns = await wait_until(lambda: _dsns(sink), timeout=10)
        text = dsns[0].data.decode()
        assert "Final-Recipient: rfc822; tempfail-1000@rcpt.test" in text
        assert "Action: failed" in text
        assert "Status: 4." in text  # the last temporary reply's status
        assert "Diagnostic-Code: smtp; 451 4.7.1" in text


async def _dsns(sink):
    return [m for m in sink.messages if m.mail_from == ""] or None


async def test_several_messages_share_one_connection(mta, sink):
    await asyncio.gather(*(submit(mta.port, [f"ok-{i}@same.test"]) for i in range(10)))
    msgs = await sink.wait_for(10)
    assert len(msgs) == 10
    assert len({m.connection for m in msgs}) < 10


async def test_queue_list_cli(mta, sink, tmp_path):
    qid = await submit(mta.port, ["tempfail-50@rcpt.test"])
    await wait_until(lambda: _attempted(mta, qid))
    env = dict(os.environ, MTA_CONFIG=str(tmp_path / "mta.toml"))
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mta", "queue", "list",
                                                 "--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    row = next(x for x in rows if x["id"] == qid)
    assert row["sender"] == SENDER
    rc = row["recipients"][0]
    assert rc["address"] == "tempfail-50@rcpt.test" and rc["state"] == "queued"
    assert rc["last_reply"].startswith("451 4.7.1") and rc["next_attempt"]
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mta", "queue", "list"],
                                env=env, capture_output=True, text=True)
    assert qid in r.stdout and "tempfail-50@rcpt.test" in r.stdout


async def _attempted(mta, qid):
    v = await mta.spool.get_message(qid)
    return v if v.attempts else None


async def test_delay_warning_is_sent_once(tmp_path, sink, user):
    port = free_port()
    text = config_text(tmp_path / "state", port, routes={"*": f"127.0.0.1:{sink.address[1]}"},
                       retry="1s", lifetime="60s", extra_delivery='delay_warning_after = "2s"')
    async with running_daemon(text) as d:
        qid = await submit(port, ["tempfail-1000@rcpt.test"])
        dsns = await wait_until(lambda: _dsns(sink), timeout=15)
        text = dsns[0].data.decode()
        assert "Action: delayed" in text
        assert "Final-Recipient: rfc822; tempfail-1000@rcpt.test" in text
        assert "Will-Retry-Until:" in text
        await asyncio.sleep(2.5)
        assert len(await _dsns(sink)) == 1           # a warning is sent once
        v = await d.spool.get_message(qid)
        assert v.recipients[0].state == "queued"     # still being retried


async def test_destination_down_defers_on_schedule(tmp_path, sink, user):
    dead = free_port()  # nothing listens there
    port = free_port()
    text = config_text(tmp_path / "state", port, routes={"*": f"127.0.0.1:{dead}"},
                       retry="2s,4s", lifetime="60s")
    async with running_daemon(text) as d:
        qids = [await submit(port, [f"ok-{i}@down.test"]) for i in range(5)]

        async def all_attempted():
            vs = [await d.spool.get_message(q) for q in qids]
            return vs if all(v.attempts for v in vs) else None
        views = await wait_until(all_attempted)
        for v in views:
            assert v.recipients[0].state == "queued"
            assert v.attempts[0].reply.startswith("451 4.4.1")
            assert f"127.0.0.1]:{dead}" in v.attempts[0].reply
        await asyncio.sleep(3.0)
        # no recipient is retried before its schedule step (2s, then 4s),
        # however often the destination was found down meanwhile
        for q in qids:
            v = await d.spool.get_message(q)
            at = [a.at for a in v.attempts]
            assert 1 <= len(at) <= 2
            for a, b, step in zip(at, at[1:], (2.0, 4.0)):
                assert b - a >= step - 0.05, at
        states = d.runner.scheduler.destination_states()
        assert f"[127.0.0.1]:{dead}" in states
