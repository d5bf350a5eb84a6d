"""The inbound listener (role = "inbound") end to end over loopback sockets.

`deliver` and `classify_rcpt` are the runtime's seams; here they are a
recording fake and a table, so every assertion is about what the listener
hands over and what it answers on the wire.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from mta.config.sections import ListenerConfig
from mta.core import ConfigError, FakeClock, Reply
from mta.server.inbound import InboundMessage
from mta.server.listener import ListenerSetupError, SubmissionListener
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)
from tests.test_server import ESC, Client
from tests.test_smuggling import VARIANTS

HOST = "mx.test.example"
BOUNCE_DOMAIN = "bounces.example.com"
BOUNCE = f"b+01hf8m5k2q7w3zx9-0-aaaaaaaaaaaaaaaa@{BOUNCE_DOMAIN}"
FBL = "fbl@feedback.example.com"
DSN = (b"From: MAILER-DAEMON@remote.example\r\nTo: " + BOUNCE.encode() + b"\r\n"
       b"Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n")


def classify(address: str) -> str | None:
    local, _, domain = address.rpartition("@")
    if domain.lower() == BOUNCE_DOMAIN:
        return "bounce"
    if domain.lower() == HOST and local.lower() in ("postmaster", "abuse"):
        return "postmaster"
    if address.lower() == FBL:
        return "feedback"
    return None


class Deliver:
    def __init__(self):
        self.got: list[InboundMessage] = []
        self.replies: list[object] = []      # next results: a Reply, or an exception to raise

    async def __call__(self, msg: InboundMessage) -> Reply:
        await asyncio.sleep(0)
        self.got.append(msg)
        if self.replies:
            r = self.replies.pop(0)
            if isinstance(r, BaseException):
                raise r
            return r  # type: ignore[return-value]
        return Reply(250, "2.0.0", f"Ok: bounce {len(self.got)} recorded")


@pytest.fixture
async def make_inbound(server_tls):
    started: list[SubmissionListener] = []

    async def make(*, tls_ctx=server_tls, classify_rcpt=classify, **cfg):
        cfg.setdefault("address", "127.0.0.1:0")
        cfg.setdefault("name", "inbound")
        cfg.setdefault("tls", "none")
        lcfg = ListenerConfig(role="inbound", **cfg)
        deliver = Deliver()
        lst = SubmissionListener(lcfg, hostname=HOST,
                                 tls_context=tls_ctx if lcfg.tls != "none" else None,
                                 clock=FakeClock(1_700_000_000.0),
                                 inbound_classify=classify_rcpt, inbound_deliver=deliver)
        await lst.start()
        started.append(lst)
        return lst, deliver

    yield make
    for lst in started:
        await lst.stop(grace=0.1)


async def _connect(lst) -> Client:
    c = await Client.connect(lst.sockname)
    await c.ehlo("remote-mx.example.net")
    return c


# -- construction ------------------------------------------------------------------

def test_inbound_role_needs_both_hooks():
    cfg = ListenerConfig(address="127.0.0.1:0", role="inbound", tls="none")
    for kwargs in ({}, {"inbound_classify": classify}, {"inbound_deliver": Deliver()}):
        with pytest.raises(ValueError, match="inbound_classify and inbound_deliver"):
            SubmissionListener(cfg, hostname=HOST, tls_context=None, clock=FakeClock(), **kwargs)
    with pytest.raises(ConfigError):
        SubmissionListener(cfg, hostname=HOST, tls_context=None, clock=FakeClock())
    assert issubclass(ListenerSetupError, ConfigError)


def test_inbound_starttls_still_needs_a_context():
    cfg = ListenerConfig(address="127.0.0.1:0", role="inbound", tls="starttls")
    with pytest.raises(ConfigError, match="needs a TLS"):
        SubmissionListener(cfg, hostname=HOST, tls_context=None, clock=FakeClock(),
                           inbound_classify=classify, inbound_deliver=Deliver())


# -- the happy paths ----------------------------------------------------------------

async def test_bounce_from_null_sender_is_delivered(make_inbound, caplog):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    caplog.set_level(logging.INFO, logger="mta.server")
    assert await c.cmd("MAIL FROM:<>") == (250, "250 2.1.0 Sender <> OK")
    assert await c.cmd(f"RCPT TO:<{BOUNCE}>") == (250, f"250 2.1.5 Recipient <{BOUNCE}> OK")
    assert await c.data(DSN + b".\r\n") == (250, "250 2.0.0 Ok: bounce 1 recorded")
    assert deliver.got == [InboundMessage(
        mail_from="", rcpts=(BOUNCE,), kinds=("bounce",), body=DSN, client_ip="127.0.0.1",
        helo="remote-mx.example.net", tls="")]
    lines = [r.getMessage() for r in caplog.records if "event=inbound_received" in r.getMessage()]
    assert len(lines) == 1
    assert "sender=<> rcpts=1 kinds=bounce" in lines[0] and "listener=inbound" in lines[0]
    assert await c.cmd("QUIT") == (221, "221 2.0.0 Bye")
    await c.close()


async def test_postmaster_abuse_and_feedback_kinds(make_inbound):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<reporter@isp.example>"))[0] == 250
    for rcpt in (f"postmaster@{HOST}", f"Abuse@{HOST.upper()}", FBL, BOUNCE):
        code, line = await c.cmd(f"RCPT TO:<{rcpt}>")
        assert code == 250, line
    assert (await c.data(b"Subject: report\r\n\r\nx\r\n.\r\n"))[0] == 250
    msg = deliver.got[0]
    assert msg.mail_from == "reporter@isp.example"
    assert msg.rcpts == (f"postmaster@{HOST}", f"Abuse@{HOST}", FBL, BOUNCE)
    assert msg.kinds == ("postmaster", "postmaster", "feedback", "bounce")
    await c.close()


async def test_bare_postmaster_means_this_host(make_inbound):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<someone@example.org>"))[0] == 250
    assert await c.cmd("RCPT TO:<Postmaster>") == (
        250, f"250 2.1.5 Recipient <postmaster@{HOST}> OK")
    assert (await c.data(b"Subject: hi\r\n\r\nx\r\n.\r\n"))[0] == 250
    assert deliver.got[0].kinds == ("postmaster",)
    await c.close()


async def test_several_messages_per_session_with_rset(make_inbound):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    for i in range(3):
        assert (await c.cmd("MAIL FROM:<>"))[0] == 250
        assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
        if i == 1:
            assert (await c.cmd("RSET"))[0] == 250
            continue
        assert (await c.data(b"Subject: n\r\n\r\nx\r\n.\r\n"))[0] == 250
    assert [m.kinds for m in deliver.got] == [("bounce",), ("bounce",)]
    await c.close()


async def test_deliver_reply_is_returned_verbatim(make_inbound):
    lst, deliver = await make_inbound()
    deliver.replies.append(Reply(451, "4.3.0", "Bounce store busy, try again later"))
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert await c.data(DSN + b".\r\n") == (451, "451 4.3.0 Bounce store busy, try again later")
    await c.close()


# -- never a relay --------------------------------------------------------------------

@pytest.mark.parametrize("rcpt", ["victim@gmail.example", f"someone@{HOST}",
                                  f"b+x@sub.{BOUNCE_DOMAIN}", f"postmaster@{BOUNCE_DOMAIN}.evil"])
async def test_other_domains_are_relay_denied(make_inbound, rcpt, caplog):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    caplog.set_level(logging.INFO, logger="mta.server")
    assert (await c.cmd("MAIL FROM:<spammer@example.org>"))[0] == 250
    assert await c.cmd(f"RCPT TO:<{rcpt}>") == (550, f"550 5.7.1 <{rcpt}>: Relay access denied")
    assert await c.cmd("DATA") == (503, "503 5.5.1 need RCPT command")
    assert deliver.got == []
    assert any("event=inbound_rejected reason=relay" in r.getMessage() for r in caplog.records)
    await c.close()


async def test_denied_rcpt_is_not_part_of_the_transaction(make_inbound):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd("RCPT TO:<victim@example.net>"))[0] == 550
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.data(DSN + b".\r\n"))[0] == 250
    assert deliver.got[0].rcpts == (BOUNCE,) and deliver.got[0].kinds == ("bounce",)
    await c.close()


async def test_classify_raising_is_a_temporary_failure(make_inbound):
    def broken(address):
        raise RuntimeError("domain table unavailable")
    lst, deliver = await make_inbound(classify_rcpt=broken)
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert await c.cmd(f"RCPT TO:<{BOUNCE}>") == (451, "451 4.3.0 Internal error, try again later")
    assert (await c.cmd("NOOP"))[0] == 250
    await c.close()


async def test_bad_addresses(make_inbound):
    lst, _ = await make_inbound()
    c = await _connect(lst)
    code, line = await c.cmd("MAIL FROM:<bad")
    assert (code, line[:9]) == (501, "501 5.1.7")
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert await c.cmd("RCPT TO:<>") == (
        501, "501 5.1.3 Bad recipient address syntax: <> is not a recipient")
    code, line = await c.cmd("RCPT TO:<no-domain>")
    assert (code, line[:9]) == (501, "501 5.1.3")
    await c.close()


async def test_non_ascii_addresses_need_smtputf8(make_inbound):
    """RFC 6531: a UTF-8 address outside an SMTPUTF8 transaction is refused,
    a non-ASCII domain too (until issue 11 inbound checked the parsed,
    punycode form and took it; submission refused it: one check now)."""
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    need = (553, "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter")
    assert await c.cmd("MAIL FROM:<a@bücher.example>".encode()) == need
    assert await c.cmd("MAIL FROM:<jörg@example.org>".encode()) == need
    assert await c.cmd("MAIL FROM:<a@bücher.example> SMTPUTF8".encode()) == (
        250, "250 2.1.0 Sender <a@xn--bcher-kva.example> OK")
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.data(DSN + b".\r\n"))[0] == 250
    assert deliver.got[0].mail_from == "a@xn--bcher-kva.example"
    await c.close()


async def test_too_many_recipients(make_inbound):
    lst, deliver = await make_inbound(max_recipients=2)
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{FBL}>"))[0] == 250
    assert await c.cmd(f"RCPT TO:<postmaster@{HOST}>") == (452, "452 4.5.3 Too many recipients")
    assert (await c.data(b"x\r\n.\r\n"))[0] == 250
    assert len(deliver.got[0].rcpts) == 2
    await c.close()


# -- no AUTH, STARTTLS offered ------------------------------------------------------------

async def test_starttls_offered_auth_never(make_inbound, client_tls):
    lst, deliver = await make_inbound(tls="starttls", max_message_size=1_000_000)
    c = await Client.connect(lst.sockname)
    before = await c.ehlo("remote-mx.example.net")
    assert set(before) == {"SIZE 1000000", "8BITMIME", "SMTPUTF8", "STARTTLS", "PIPELINING",
                           "ENHANCEDSTATUSCODES"}
    code, line = await c.cmd("AUTH PLAIN AGFwcABwdw==")
    assert (code, line[:9]) == (502, "502 5.5.1")
    await c.starttls(client_tls)
    after = await c.ehlo("remote-mx.example.net")
    assert set(after) == {"SIZE 1000000", "8BITMIME", "SMTPUTF8", "PIPELINING",
                          "ENHANCEDSTATUSCODES"}
    for cmd in ("AUTH PLAIN AGFwcABwdw==", "AUTH LOGIN", "AUTH CRAM-MD5", "AUTH"):
        code, line = await c.cmd(cmd)
        assert (code, line[:9]) == (502, "502 5.5.1"), cmd
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.data(DSN + b".\r\n"))[0] == 250
    assert deliver.got[0].tls.startswith("TLSv1.")
    await c.close()


async def test_implicit_tls_reports_tls(make_inbound, client_tls):
    lst, deliver = await make_inbound(tls="implicit")
    c = await Client.connect(lst.sockname, ssl_ctx=client_tls)
    ext = await c.ehlo()
    assert "STARTTLS" not in ext and not any(e.startswith("AUTH") for e in ext)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.data(DSN + b".\r\n"))[0] == 250
    assert deliver.got[0].tls.startswith("TLSv1.")
    await c.close()


async def test_no_tls_no_starttls_offered(make_inbound):
    lst, _ = await make_inbound(tls="none")
    c = await Client.connect(lst.sockname)
    ext = await c.ehlo()
    assert "STARTTLS" not in ext and not any(e.startswith("AUTH") for e in ext)
    assert (await c.cmd("STARTTLS"))[0] in (454, 500, 502)
    await c.close()


# -- size, smuggling, failures ---------------------------------------------------------------

async def test_oversize_refused(make_inbound):
    lst, deliver = await make_inbound(max_message_size=2048)
    c = await _connect(lst)
    assert await c.cmd("MAIL FROM:<> SIZE=4096") == (552, "552 5.3.4 Message too big")
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 60 + b".\r\n"
    assert await c.data(big) == (552, "552 5.3.4 Message too big")
    assert deliver.got == []
    # still usable
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.data(DSN + b".\r\n"))[0] == 250
    await c.close()


@pytest.mark.parametrize("name,content", VARIANTS[:8] + VARIANTS[10:12],
                         ids=[v[0] for v in VARIANTS[:8] + VARIANTS[10:12]])
async def test_smuggling_refused(make_inbound, name, content):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    code, line = await c.data(content + b"\r\n.\r\n")
    assert (code, line[:9]) == (550, "550 5.5.2"), line
    assert deliver.got == []
    assert await c.cmd("NOOP") == (250, "250 2.0.0 OK")   # nothing smuggled became a command
    await c.close()


@pytest.mark.parametrize("failure", [RuntimeError("parser exploded"), "not a reply"])
async def test_deliver_failure_is_451_and_session_usable(make_inbound, failure, caplog):
    lst, deliver = await make_inbound()
    deliver.replies.append(failure)
    c = await _connect(lst)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert await c.data(DSN + b".\r\n") == (451, "451 4.3.0 Internal error, try again later")
    assert any("event=inbound_deliver_failed" in r.getMessage() for r in caplog.records)
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd(f"RCPT TO:<{BOUNCE}>"))[0] == 250
    assert (await c.data(DSN + b".\r\n")) == (250, "250 2.0.0 Ok: bounce 2 recorded")
    await c.close()


async def test_pipelined_transaction(make_inbound):
    lst, deliver = await make_inbound()
    c = await _connect(lst)
    await c.send(f"MAIL FROM:<>\r\nRCPT TO:<victim@example.net>\r\nRCPT TO:<{BOUNCE}>\r\n"
                 "DATA\r\n".encode())
    codes = [(await c.reply())[0] for _ in range(4)]
    assert codes == [250, 550, 250, 354]
    await c.send(DSN + b".\r\nQUIT\r\n")
    assert (await c.reply())[0] == 250
    assert (await c.reply())[0] == 221
    assert len(deliver.got) == 1
    await c.close()


async def test_every_reply_has_an_enhanced_status_code(make_inbound):
    lst, _ = await make_inbound()
    c = await _connect(lst)
    for cmd in ("MAIL FROM:<>", f"RCPT TO:<{BOUNCE}>", "RCPT TO:<x@elsewhere.example>",
                "VRFY postmaster", "EXPN list", "NOOP", "RSET", "BOGUS", "AUTH PLAIN"):
        _, line = await c.cmd(cmd)
        assert ESC.match(line), line
    await c.close()
