"""The postmaster@/abuse@ capture maildir has a quota (issue 10 item 4).

Real files in a real maildir; the BounceProcessor alone (spool=None: mail
for postmaster@ never reaches the spool) with a FakeClock for the re-scan
interval; then end to end through the daemon's inbound listener over real
sockets with STARTTLS, where a full capture answers 452 4.3.1 and bounces
keep working.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

import aiosmtplib
import pytest

from mta.config import BouncesConfig, Config, ServerConfig
from mta.core import FakeClock, Observer
from mta.mail.verp import VerpCodec
from mta.runtime.bounces import BounceProcessor
from mta.server.inbound import InboundMessage
from tests.support.mtahelpers import no_verify_context
from tests.test_e2e_bounces import delivered_with_verp, remote_dsn, to_inbound, world  # noqa: F401

HOST = "mta.test"
PM = f"postmaster@{HOST}"


class Refusals(Observer):
    def __init__(self):
        self.got: list[str] = []

    def capture_refused(self, reason: str) -> None:
        self.got.append(reason)


def processor(tmp_path, clock=None, **kw):
    obs = Refusals()
    bp = BounceProcessor(spool=None, codec=VerpCodec(b"k" * 32), hostname=HOST,
                         capture_dir=tmp_path / "inbound", clock=clock or FakeClock(),
                         bounce_domains=lambda: set(), observer=obs, **kw)
    return bp, obs


def with_bounces(cfg: Config, **keys) -> Config:
    """`cfg` with [bounces] keys changed: what a reload hands reconfigure."""
    return dataclasses.replace(cfg, bounces=dataclasses.replace(cfg.bounces, **keys))


def mail(n: int, size: int = 100) -> InboundMessage:
    body = f"Subject: report {n}\r\n\r\n".encode() + b"x" * size + b"\r\n"
    return InboundMessage(mail_from="someone@remote.test", rcpts=(PM,), kinds=("postmaster",),
                          body=body, client_ip="127.0.0.1", helo="remote.test", tls="")


def files(tmp_path, sub="new"):
    d = tmp_path / "inbound" / sub
    return sorted(os.listdir(d)) if d.exists() else []


def lines(caplog, name):
    return [r.getMessage() for r in caplog.records if f"event={name} " in r.getMessage()]


async def test_count_quota_refuses_with_452_and_logs_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mta.bounces")
    bp, obs = processor(tmp_path, capture_max_messages=3)
    for n in range(3):
        assert (await bp.deliver(mail(n))).code == 250
    for n in range(3, 6):
        r = await bp.deliver(mail(n))
        assert (r.code, r.esc) == (452, "4.3.1") and "quota" in r.text, r
    assert len(files(tmp_path)) == 3
    assert obs.got == ["quota"] * 3
    (line,) = lines(caplog, "capture_quota_exceeded")
    assert "messages=3" in line and "max_messages=3" in line


async def test_byte_quota_and_a_message_bigger_than_the_quota(tmp_path):
    bp, obs = processor(tmp_path, capture_max_bytes=1000)
    assert (await bp.deliver(mail(0, size=400))).code == 250
    assert (await bp.deliver(mail(1, size=400))).code == 452     # two of ~530 bytes > 1000
    r = await bp.deliver(mail(2, size=2000))                      # never fits: permanent
    assert (r.code, r.esc) == (552, "5.3.4")
    assert len(files(tmp_path)) == 1 and obs.got == ["quota", "quota"]


async def test_usage_survives_a_restart_and_cleanup_is_seen_after_the_interval(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mta.bounces")
    clock = FakeClock()
    bp, _ = processor(tmp_path, clock, capture_max_messages=2)
    for n in range(2):
        assert (await bp.deliver(mail(n))).code == 250
    # a new process (restart) reads the directory: still full
    bp, _ = processor(tmp_path, clock, capture_max_messages=2, capture_rescan_interval=60)
    assert (await bp.deliver(mail(2))).code == 452
    # a person reads one (new/ → cur/: still counted) and deletes the other
    inbound = tmp_path / "inbound"
    first, second = files(tmp_path)
    os.rename(inbound / "new" / first, inbound / "cur" / (first + ":2,S"))
    os.unlink(inbound / "new" / second)
    clock.advance(30)
    assert (await bp.deliver(mail(3))).code == 452                # not re-read yet
    clock.advance(31)
    assert (await bp.deliver(mail(4))).code == 250                # re-read: room for one
    assert (await bp.deliver(mail(5))).code == 452                # counted, not re-read
    assert len(lines(caplog, "capture_quota_exceeded")) == 2
    (ok,) = lines(caplog, "capture_quota_ok")
    assert "messages=1" in ok
    assert len(files(tmp_path, "cur")) == 1 and len(files(tmp_path)) == 1


async def test_write_failure_is_452_with_one_line_and_no_traceback(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mta")
    bp, obs = processor(tmp_path)
    (tmp_path / "inbound").write_bytes(b"not a directory")        # a real OSError
    r = await bp.deliver(mail(0))
    assert (r.code, r.esc) == (452, "4.3.1"), r
    (line,) = lines(caplog, "capture_failed")
    assert "errno=" in line and str(tmp_path / "inbound") in line
    assert all(rec.exc_info is None for rec in caplog.records)
    assert obs.got == ["error"]
    # the directory repaired (or space freed): the next message is kept, and
    # the failed one was not counted
    (tmp_path / "inbound").unlink()
    bp.reconfigure(Config(server=ServerConfig(state_dir=str(tmp_path)),
                          bounces=BouncesConfig(capture_max_messages=1)))   # same dir
    assert (await bp.deliver(mail(1))).code == 250
    assert len(files(tmp_path)) == 1


async def test_concurrent_captures_are_each_kept_and_counted(tmp_path):
    bp, _ = processor(tmp_path, capture_max_messages=20)
    replies = await asyncio.gather(*(bp.deliver(mail(n)) for n in range(24)))
    assert sorted(r.code for r in replies) == [250] * 20 + [452] * 4
    assert len(files(tmp_path)) == 20                 # distinct names, none overwritten


# -- end to end: the daemon's inbound listener ---------------------------------------

async def to_postmaster(d, rcpts=(PM,), body=b"Subject: abuse report\r\n\r\nspam!\r\n"):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.inbound, start_tls=True,
                               tls_context=no_verify_context()) as c:
        try:
            _, resp = await c.sendmail("reporter@remote.test", list(rcpts), body)
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        return 250, resp


async def test_full_capture_answers_452_and_bounces_still_work(world, caplog):
    d, sink = world
    caplog.set_level(logging.INFO, logger="mta")
    d.bounces.reconfigure(with_bounces(d.cfg, capture_max_messages=2))   # as a reload does
    assert (await to_postmaster(d))[0] == 250
    assert (await to_postmaster(d, (f"abuse@{HOST}",)))[0] == 250
    code, text = await to_postmaster(d)
    assert code == 452 and text.startswith("4.3.1") and "quota" in text, (code, text)
    assert len(os.listdir(d.bounces.capture.directory / "new")) == 2
    # a bounce does not go to the capture: still taken and applied
    rcpt = "ok-gone@rcpt.test"
    qid, verp = await delivered_with_verp(d, sink, rcpt)
    await to_inbound(d, verp, remote_dsn(rcpt))
    assert (await d.spool.get_message(qid)).recipients[0].state == "bounced"
    # a transaction for both is refused whole (its retry applies the bounce once)
    rcpt2 = "ok-gone-too@rcpt.test"
    qid2, verp2 = await delivered_with_verp(d, sink, rcpt2)
    code, _ = await to_postmaster(d, (PM, verp2), remote_dsn(rcpt2))
    assert code == 452
    assert (await d.spool.get_message(qid2)).recipients[0].state == "delivered"
    assert len(lines(caplog, "capture_quota_exceeded")) == 1
    assert lines(caplog, "inbound_deliver_failed") == []
    assert d.metrics.registry.get_sample_value(
        "mta_messages_received_total", {"listener": "inbound", "result": "tempfail"}) == 2


async def test_capture_write_error_answers_452_without_traceback(world, tmp_path, caplog):
    d, _ = world
    caplog.set_level(logging.INFO, logger="mta")
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")
    d.bounces.reconfigure(with_bounces(d.cfg, capture_dir=str(blocked / "inbound")))
    code, text = await to_postmaster(d)
    assert code == 452 and text.startswith("4.3.1"), (code, text)
    assert len(lines(caplog, "capture_failed")) == 1
    assert lines(caplog, "inbound_deliver_failed") == []
    assert all(rec.exc_info is None for rec in caplog.records if rec.name.startswith("mta"))
