"""SandboxTransport: every message captured into a real Maildir on disk."""

from __future__ import annotations

import mailbox
import os

from mta.core.envelope import Destination
from mta.core.outcome import DestinationHealth, RecipientFate
from mta.delivery.client import OutboundMessage
from mta.delivery.sandbox import SandboxTransport

SANDBOX = Destination(name="sandbox", kind="sandbox")
BODY = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n.\r\n"


async def test_captures_each_message_into_maildir_new(tmp_path):
    maildir = tmp_path / "sandbox"
    msgs = [OutboundMessage("Q1", "a@sender.test", ((0, "x@one.test"), (3, "y@two.test")), BODY),
            OutboundMessage("Q2", "", ((1, "z@one.test"),), BODY)]
    report = await SandboxTransport(str(maildir)).deliver(SANDBOX, msgs)

    assert report.health is DestinationHealth.OK
    assert set(report.outcomes) == {"Q1", "Q2"}
    assert set(report.outcomes["Q1"]) == {0, 3} and set(report.outcomes["Q2"]) == {1}
    paths = set()
    for per_msg in report.outcomes.values():
        for out in per_msg.values():
            assert out.fate is RecipientFate.DELIVERED
            assert (out.reply.code, out.reply.esc) == (250, "2.0.0")
            assert out.reply.text.startswith("captured in sandbox ")
            paths.add(out.reply.text.removeprefix("captured in sandbox "))
    assert len(paths) == 2
    assert all(os.path.dirname(p) == str(maildir / "new") for p in paths)
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]
    assert os.listdir(maildir / "tmp") == []

    q1 = next(p for p in paths if "_Q1." in p)
    with open(q1, "rb") as f:
        data = f.read()
    assert data == (b"Return-Path: <a@sender.test>\r\n"
                    b"X-Mta-Original-Recipients: x@one.test, y@two.test\r\n"
                    b"X-Mta-Queue-ID: Q1\r\n" + BODY)

    # A stock Maildir reader sees both messages with the prepended headers.
    box = mailbox.Maildir(str(maildir), create=False)
    got = sorted((m["X-Mta-Queue-ID"], m["Return-Path"]) for m in box)
    assert got == [("Q1", "<a@sender.test>"), ("Q2", "<>")]


async def test_write_failure_defers_never_bounces(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    msg = OutboundMessage("Q1", "a@sender.test", ((0, "x@one.test"),), BODY)
    report = await SandboxTransport(str(blocker / "sandbox")).deliver(SANDBOX, [msg])
    out = report.outcomes["Q1"][0]
    assert out.fate is RecipientFate.DEFERRED
    assert (out.reply.code, out.reply.esc) == (451, "4.3.0")
    assert report.health is DestinationHealth.OK
