"""Bounces, complaints and suppression end to end (issue 4), over real
loopback sockets: a synchronous 550 5.1.1 suppresses the address and the next
submission to it is refused at RCPT; an asynchronous DSN and an ARF complaint
sent to the inbound listener with a valid VERP token mark the recipient and
suppress it; a forged token changes nothing; mail for any other domain to
the inbound listener gets 550 and nothing is queued."""

from __future__ import annotations

import asyncio
import email.utils

import aiosmtplib
import pytest

from mta.core import BOUNCED, DsnCandidate, FailedRecipient, Reply
from mta.mail.dsn import build_dsn
from mta.server.credentials import CredentialStore
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_e2e import wait_until

SENDER = "app@sender.test"
VERP_DOMAIN = "bounces.mta.test"


@pytest.fixture
async def world(tmp_path):
    async with Sink() as sink:
        port, inbound = free_port(), free_port()
        text = config_text(tmp_path / "state", port,
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        text += (f'\n[bounces]\ndomain = "{VERP_DOMAIN}"\nfeedback_addresses = ["fbl@mta.test"]\n'
                 f'[[listeners]]\nname = "inbound"\naddress = "127.0.0.1:{inbound}"\n'
                 f'role = "inbound"\ntls = "starttls"\n')
        (tmp_path / "state").mkdir()
        CredentialStore(tmp_path / "state" / "credentials.json").add("app", "app-password-1")
        async with running_daemon(text) as d:
            d.port, d.inbound = port, inbound
            yield d, sink


async def submit(d, rcpt, body=b"Subject: hi\r\n\r\nhello\r\n"):
    """Submit one message to `rcpt` (an address or a list); its queue id."""
    rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login("app", "app-password-1")
        _, resp = await c.sendmail(SENDER, rcpts, b"From: " + SENDER.encode() + b"\r\n" + body)
        return resp.split()[-1]


async def to_inbound(d, rcpt, message: bytes, sender=""):
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=d.inbound, start_tls=True,
                               tls_context=no_verify_context()) as c:
        return await c.sendmail(sender, [rcpt], message)


async def refused_at_rcpt(d, rcpt) -> str:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as ei:
        await submit(d, rcpt)
    (err,) = ei.value.recipients
    return f"{err.code} {err.message}"


async def test_sync_hard_bounce_suppresses(world):
    d, sink = world
    qid = await submit(d, "reject-gone@rcpt.test")

    async def bounced():
        v = await d.spool.get_message(qid)
        return v if v.recipients[0].state == "bounced" else None
    await wait_until(bounced)
    reply = await wait_until(lambda: _refusal(d, "reject-gone@rcpt.test"))
    assert reply.startswith("550 5.1.1") and "reject-gone@rcpt.test" in reply
    assert "suppressed" in reply and "hard bounce" in reply
    # a soft (greylisting) failure does not suppress at once
    await submit(d, "tempfail-1@rcpt.test")
    assert await d.spool.suppressions.suppressed("tempfail-1@rcpt.test", "default") is None


async def _refusal(d, rcpt):
    entry = await d.spool.suppressions.suppressed(rcpt, "default")
    if entry is None:
        return None
    return await refused_at_rcpt(d, rcpt)


def _verp_of(sink, rcpt):
    for m in sink.messages:
        if rcpt in m.rcpt_tos:
            return m.mail_from
    return None


async def delivered_with_verp(d, sink, rcpt):
    qid = await submit(d, rcpt)
    await wait_until(lambda: _async(_verp_of(sink, rcpt)))
    verp = _verp_of(sink, rcpt)
    assert verp.startswith("b+") and verp.endswith("@" + VERP_DOMAIN), verp
    assert d.runner.verp.decode(verp) == (qid, 0)
    return qid, verp


async def _async(value):
    return value


def remote_dsn(rcpt: str, status="5.1.1", text="550 5.1.1 user unknown") -> bytes:
    cand = DsnCandidate("REMOTE", "someone@else", 1_700_000_000.0, (FailedRecipient(
        0, rcpt, BOUNCED, Reply(int(text[:3]), status, text[10:]), "mx.rcpt.test", 1),))
    return build_dsn(original=b"Subject: hi\r\n\r\n", candidate=cand,
                     reporting_mta="mx.rcpt.test", queue_id="REMOTE", now=1_700_000_100.0)


def arf(rcpt: str | None, returned: bytes | None = None, mail_from: str | None = None) -> bytes:
    """An RFC 5965 report: Original-Rcpt-To `rcpt` (none when None),
    Original-Mail-From `mail_from` (none when None), and `returned` as the
    reported message (default: a minimal one addressed to `rcpt`)."""
    b = "arf-boundary"
    if returned is None:
        returned = f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    fields = "Feedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n"
    if mail_from is not None:
        fields += f"Original-Mail-From: <{mail_from}>\r\n"
    if rcpt is not None:
        fields += f"Original-Rcpt-To: <{rcpt}>\r\n"
    return (f"From: feedback@isp.test\r\nTo: fbl@mta.test\r\nSubject: complaint\r\n"
            f"Date: {email.utils.formatdate()}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=feedback-report; boundary=\"{b}\"\r\n\r\n"
            f"--{b}\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
            f"--{b}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n"
            f"--{b}\r\nContent-Type: message/rfc822\r\n\r\n").encode() + returned + \
        f"\r\n--{b}--\r\n".encode()


async def test_async_dsn_with_valid_token_bounces_and_suppresses(world):
    d, sink = world
    rcpt = "ok-later-gone@rcpt.test"
    qid, verp = await delivered_with_verp(d, sink, rcpt)
    await to_inbound(d, verp, remote_dsn(rcpt))
    v = await d.spool.get_message(qid)
    assert v.recipients[0].state == "bounced"
    assert any("5.1.1" in a.reply for a in v.attempts[1:])
    assert (await refused_at_rcpt(d, rcpt)).startswith("550 5.1.1")


async def test_arf_complaint_suppresses_with_5_7_1(world):
    d, sink = world
    rcpt = "ok-complainer@rcpt.test"
    qid, verp = await delivered_with_verp(d, sink, rcpt)
    await to_inbound(d, verp, arf(rcpt))
    v = await d.spool.get_message(qid)
    assert v.recipients[0].state == "delivered"          # a complaint is not a bounce
    reply = await refused_at_rcpt(d, rcpt)
    assert reply.startswith("550 5.7.1") and "complaint" in reply


async def test_forged_token_changes_nothing(world):
    d, sink = world
    rcpt = "ok-victim@rcpt.test"
    qid, verp = await delivered_with_verp(d, sink, rcpt)
    local, _, domain = verp.partition("@")
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    await to_inbound(d, forged, remote_dsn(rcpt))        # accepted (250), never acted on
    v = await d.spool.get_message(qid)
    assert v.recipients[0].state == "delivered"
    assert await d.spool.suppressions.suppressed(rcpt, "default") is None
    assert d.bounces.stats["bad_token"] == 1
    await submit(d, rcpt)                                # still allowed


async def test_inbound_is_never_a_relay(world):
    d, sink = world
    before = len(await d.spool.list_messages(include_done=True))
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as ei:
        await to_inbound(d, "someone@elsewhere.test", b"Subject: relay?\r\n\r\nx\r\n",
                         sender="spammer@bad.test")
    (err,) = ei.value.recipients
    assert err.code == 550 and "5.7.1" in err.message
    await asyncio.sleep(0.2)
    assert len(await d.spool.list_messages(include_done=True)) == before
    assert not [m for m in sink.messages if "someone@elsewhere.test" in m.rcpt_tos]


async def test_accept_and_record_mode(tmp_path):
    """on_rcpt = "accept": a suppressed recipient is accepted, recorded as
    suppressed and never delivered; the others in the message are."""
    from mta.runtime.suppressions import suppression_admin
    async with Sink() as sink:
        port = free_port()
        text = config_text(tmp_path / "state", port,
                           routes={"*": f"127.0.0.1:{sink.address[1]}"})
        text += '\n[suppression]\non_rcpt = "accept"\n'
        (tmp_path / "state").mkdir()
        CredentialStore(tmp_path / "state" / "credentials.json").add("app", "app-password-1")
        async with running_daemon(text) as d:
            # added by an operator while the daemon runs (the CLI's side door)
            # (in a thread: it is synchronous sqlite3, as in the CLI's own process)
            await asyncio.to_thread(suppression_admin.add, tmp_path / "state",
                                    "ok-unsub@rcpt.test", reason="unsubscribe",
                                    now=1_700_000_000.0)
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                       tls_context=no_verify_context()) as c:
                await c.login("app", "app-password-1")
                errors, resp = await c.sendmail(SENDER, ["ok-unsub@rcpt.test", "ok-keep@rcpt.test"],
                                                b"From: app@sender.test\r\n\r\nhi\r\n")
            assert errors == {}
            qid = resp.split()[-1]
            (m,) = await sink.wait_for(1)
            assert m.rcpt_tos == ["ok-keep@rcpt.test"]
            v = await wait_until(lambda: _done_view(d, qid))
            states = {r.address: r.state for r in v.recipients}
            assert states == {"ok-unsub@rcpt.test": "suppressed", "ok-keep@rcpt.test": "delivered"}
            assert "suppressed (unsubscribe" in v.recipients[0].last_reply
            await asyncio.sleep(0.5)
            assert await d.spool.dsn_candidates() == []     # suppression owes no DSN


async def _done_view(d, qid):
    v = await d.spool.get_message(qid)
    return v if v and v.done else None


# -- complaints matched without a token: only the recipient the report names (issue 10 item 8)

A, B, C = "ok-alice@rcpt.test", "ok-bob@rcpt.test", "ok-carol@rcpt.test"


async def delivered_to_a_and_b(d, sink):
    """One message to A and B (To: lists B first, as a header may); returns its
    queue id and A's copy as A's mailbox has it (Return-Path: A's VERP path)."""
    qid = await submit(d, [A, B], body=f"To: {B}, {A}\r\nSubject: hi\r\n\r\nhello\r\n".encode())
    await wait_until(lambda: _async(_verp_of(sink, A) and _verp_of(sink, B)))
    copy = next(m for m in sink.messages if A in m.rcpt_tos)
    assert qid.encode() in copy.data                  # our Received: id, in every copy
    return qid, b"Return-Path: <" + _verp_of(sink, A).encode() + b">\r\n" + copy.data


def _without_return_path(copy: bytes) -> bytes:
    return copy.split(b"\r\n", 1)[1]


async def suppressed_set(d):
    return {a for a in (A, B, C) if await d.spool.suppressions.suppressed(a, "default") is not None}


async def test_complaint_by_queue_id_acts_only_on_the_recipient_it_names(world):
    d, sink = world
    qid, copy = await delivered_to_a_and_b(d, sink)
    await to_inbound(d, "fbl@mta.test", arf(A, _without_return_path(copy)))
    assert await suppressed_set(d) == {A}
    assert (await d.spool.suppressions.suppressed(A, "default")).reason == "complaint"


async def test_complaint_by_queue_id_naming_nobody_acts_on_nobody(world, caplog):
    """The returned copy's To: lists B first: that names nobody (every copy has it)."""
    d, sink = world
    qid, copy = await delivered_to_a_and_b(d, sink)
    await to_inbound(d, "fbl@mta.test", arf(None, _without_return_path(copy)))
    assert await suppressed_set(d) == set()
    assert d.bounces.stats["unmatched"] == 1
    v = await d.spool.get_message(qid)
    assert [a.state for a in v.attempts if a.state == "complaint"] == []
    lines = [r.getMessage() for r in caplog.records if "event=bounce_unmatched" in r.getMessage()]
    assert len(lines) == 1 and "names no recipient" in lines[0], lines


async def test_complaint_by_queue_id_naming_a_stranger_acts_on_nobody(world, caplog):
    d, sink = world
    qid, copy = await delivered_to_a_and_b(d, sink)
    await to_inbound(d, "fbl@mta.test", arf(C, _without_return_path(copy)))
    assert await suppressed_set(d) == set()
    assert d.bounces.stats["unmatched"] == 1
    lines = [r.getMessage() for r in caplog.records if "event=bounce_unmatched" in r.getMessage()]
    assert len(lines) == 1 and "not a recipient" in lines[0], lines


async def test_complaint_with_a_verp_token_acts_on_the_tokens_recipient(world):
    """A's copy carries A's VERP path (Return-Path, Original-Mail-From): A
    cannot get B suppressed by naming B."""
    d, sink = world
    qid, copy = await delivered_to_a_and_b(d, sink)
    await to_inbound(d, "fbl@mta.test", arf(B, copy, mail_from=_verp_of(sink, A)))
    assert await suppressed_set(d) == {A}
    v = await d.spool.get_message(qid)
    assert {r.address: r.state for r in v.recipients} == {A: "delivered", B: "delivered"}


async def test_redacted_complaint_with_a_verp_token_still_counts(world):
    """A feedback loop that hides the recipient (no Original-Rcpt-To, To:
    redacted) but keeps the Return-Path: the token names the recipient."""
    d, sink = world
    qid, copy = await delivered_to_a_and_b(d, sink)
    redacted = copy.replace(f"To: {B}, {A}".encode(), b"To: redacted@rcpt.invalid")
    await to_inbound(d, "fbl@mta.test", arf(None, redacted))
    assert await suppressed_set(d) == {A}


# -- asynchronous bounces are recipient outcomes (issue 10 item 18) -------------------

def _bounced(d, klass):
    return d.metrics.registry.get_sample_value(
        "mta_recipients_total", {"outcome": "bounced", "class": klass})


async def test_async_bounce_counts_once_in_mta_recipients_total(world):
    d, sink = world
    rcpt = "ok-gone-later@rcpt.test"
    qid, verp = await delivered_with_verp(d, sink, rcpt)
    hard = _bounced(d, "hard")
    await to_inbound(d, verp, remote_dsn(rcpt))
    assert (await d.spool.get_message(qid)).recipients[0].state == "bounced"
    assert _bounced(d, "hard") == hard + 1
    await to_inbound(d, verp, remote_dsn(rcpt))         # the same bounce again: no move
    assert _bounced(d, "hard") == hard + 1
    assert d.bounces.stats["bounce"] == 2
    # a complaint and a delay report move nobody: not counted
    rcpt2 = "ok-delayed@rcpt.test"
    qid2, verp2 = await delivered_with_verp(d, sink, rcpt2)
    soft = _bounced(d, "soft")
    await to_inbound(d, verp2, remote_dsn(rcpt2, "4.2.2", "452 4.2.2 mailbox full"))
    await to_inbound(d, verp2, arf(rcpt2))
    assert (await d.spool.get_message(qid2)).recipients[0].state == "delivered"
    assert (_bounced(d, "hard"), _bounced(d, "soft")) == (hard + 1, soft)
