"""Scheduled sends: the one time parser (core.schedule) and the SMTP
`Scheduled-At:` submission header (issue 13)."""

from __future__ import annotations

import sqlite3

import aiosmtplib
import pytest

from mta.core.schedule import MAX_AHEAD, parse_schedule
from tests.support.mtahelpers import config_text, free_port, make_message, running_daemon
from tests.support.sink import Sink

NOW = 1_796_636_400.0          # 2026-12-07T09:40:00Z


@pytest.mark.parametrize("text, expected", [
    ("2026-12-07T10:00:00Z", 1_796_637_600.0),
    ("2026-12-07T11:00:00+01:00", 1_796_637_600.0),
    ("2026-12-07T10:00:00.500Z", 1_796_637_600.5),
    ("Mon, 07 Dec 2026 10:00:00 +0000", 1_796_637_600.0),
    ("2020-01-01T00:00:00Z", NOW),                 # the past: now
    ("  2026-12-07T10:00:00Z  ", 1_796_637_600.0),
])
def test_times_accepted(text, expected):
    assert parse_schedule(text, NOW) == expected


@pytest.mark.parametrize("text, why", [
    ("2026-12-07T10:00:00", "time zone"),
    ("in 1 hour", "not ISO 8601"),
    ("tomorrow", "not ISO 8601"),
    ("", "not a date"),
    ("2026-13-07T10:00:00Z", "not ISO 8601"),
    ("2027-02-07T10:00:00Z", "days ahead"),
    ("2026-12-07T10:00:00Z\r\nBcc: x@y", "not ISO 8601"),
    ("é" * 10, "not a date"),
    ("9" * 500, "not a date"),
])
def test_times_refused_with_a_reason(text, why):
    with pytest.raises(ValueError, match=why):
        parse_schedule(text, NOW)


def test_the_limit_is_thirty_days():
    assert MAX_AHEAD == 30 * 86400
    assert parse_schedule("2027-01-06T09:40:00Z", NOW) == NOW + MAX_AHEAD


async def test_smtp_scheduled_at_header_waits_then_is_removed(tmp_path):
    """A submission with Scheduled-At: is queued due then (the header
    removed); one with a bad time is refused 550 5.6.0 and nothing queued."""
    async with Sink(tls=False) as sink:
        port = free_port()
        state = tmp_path / "state"
        text = config_text(state, port, tls="none", trusted=["127.0.0.0/8"],
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        async with running_daemon(text) as d:
            later = d.clock.now() + 3600
            import datetime as dt
            stamp = dt.datetime.fromtimestamp(later, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            msg = make_message("a@sender.test", ["r@rcpt.test"])
            scheduled = f"Scheduled-At: {stamp}\r\n".encode() + msg
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as c:
                _, reply = await c.sendmail("a@sender.test", ["r@rcpt.test"], scheduled)
                qid = reply.split()[-1]
                with pytest.raises(aiosmtplib.SMTPDataError) as bad:
                    await c.sendmail("a@sender.test", ["r@rcpt.test"],
                                     b"Scheduled-At: tomorrow\r\n" + msg)
                assert bad.value.code == 550 and "5.6.0" in bad.value.message
            view = await d.spool.get_message(qid)
            assert view is not None and abs(view.not_before - int(later)) < 1
            assert view.recipients[0].state == "queued"
            body = await d.spool.read_body(qid)
            assert b"Scheduled-At" not in body
            with sqlite3.connect(state / "spool" / "index.sqlite3") as db:
                assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
            # moved to now: delivered
            from mta.spool import MessageFilter
            await d.spool.reschedule_messages(MessageFilter(ids=(qid,)), d.clock.now(),
                                              d.clock.now())
            d.runner.poke()
            await sink.wait_for(1, timeout=20)
            assert b"Scheduled-At" not in sink.messages[0].data
