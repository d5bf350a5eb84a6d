"""SMTP smuggling: every end-of-data form other than <CRLF>.<CRLF>, and every
bare CR / bare LF / NUL, rejects the whole submission with 550 5.5.2; nothing
is enqueued and the session stays usable."""

from __future__ import annotations

import pytest

from mta.server.hygiene import check_data
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)
from tests.test_server import Client, authed, credentials, make_listener  # noqa: F401

SMUGGLED = (b"MAIL FROM:<admin@victim.example>\r\nRCPT TO:<target@example.net>\r\n"
            b"DATA\r\nFrom: admin@victim.example\r\nSubject: smuggled\r\n\r\nevil\r\n")
FIRST = b"From: app@example.com\r\nSubject: one\r\n\r\nfirst"

# (name, content sent after DATA, up to but excluding the final "\r\n.\r\n")
VARIANTS = [
    ("lf-dot-lf", FIRST + b"\n.\n" + SMUGGLED),
    ("lf-dot-crlf", FIRST + b"\n.\r\n" + SMUGGLED),
    ("cr-dot-cr", FIRST + b"\r.\r" + SMUGGLED),
    ("cr-dot-lf", FIRST + b"\r.\n" + SMUGGLED),
    ("crlf-dot-cr", FIRST + b"\r\n.\r" + SMUGGLED),
    ("crlf-dot-lf", FIRST + b"\r\n.\n" + SMUGGLED),
    ("cr-dot-crlf", FIRST + b"\r.\r\n" + SMUGGLED),
    ("crlf-dot-cr-cr-lf", FIRST + b"\r\n.\r\r\n" + SMUGGLED),
    ("dot-lf-at-start", b".\n" + SMUGGLED),
    ("dot-cr-at-start", b".\r" + SMUGGLED),
    ("crlf-nul-dot-crlf", FIRST + b"\r\n\x00.\r\n" + SMUGGLED),
    ("nul-in-line", FIRST + b"\x00tail\r\n"),
    ("crlf-dot-nul-crlf", FIRST + b"\r\n.\x00\r\n" + SMUGGLED),
    ("bare-lf-in-header", b"Subject: a\nX-Injected: b\r\n\r\nbody"),
    ("bare-cr-in-header", b"Subject: a\rX-Injected: b\r\n\r\nbody"),
    ("lf-cr", FIRST + b"\n\r" + SMUGGLED),
    ("cr-cr-lf", FIRST + b"\r\r\n" + SMUGGLED),
    ("trailing-bare-lf", FIRST + b"\n"),
    ("trailing-bare-cr", FIRST + b"\r"),
    ("lf-dot-lf-dot-stuffed", FIRST + b"\n..\n" + SMUGGLED),
]


@pytest.mark.parametrize("name,content", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_check_data_rejects(name, content):
    reply = check_data(content + b"\r\n")
    assert reply is not None and (reply.code, reply.esc) == (550, "5.5.2")


@pytest.mark.parametrize("content", [
    b"", b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\n.\r\n..\r\nline\r\n",
    "Subject: ü\r\n\r\nutf-8 body\r\n".encode(),
])
def test_check_data_accepts_clean(content):
    assert check_data(content) is None


async def _session(make_listener, client_tls, tls: bool):
    if tls:
        lst, spool = await make_listener()
        return await authed(lst, client_tls), spool
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    return c, spool


@pytest.mark.parametrize("name,content", VARIANTS, ids=[v[0] for v in VARIANTS])
async def test_smuggling_variant_rejected_and_session_usable(make_listener, client_tls,
                                                             name, content):
    c, spool = await _session(make_listener, client_tls, tls=False)
    assert (await c.cmd("MAIL FROM:<app@example.com>"))[0] == 250
    assert (await c.cmd("RCPT TO:<bob@example.net>"))[0] == 250
    code, line = await c.data(content + b"\r\n.\r\n")
    assert (code, line[:9]) == (550, "550 5.5.2"), line
    assert "bare CR or LF" in line or "NUL" in line
    assert spool.messages == []
    # Nothing smuggled became a command: the next reply is the one to our NOOP.
    assert await c.cmd("NOOP") == (250, "250 2.0.0 OK")
    code, line = await c.mail(content=b"Subject: clean\r\n\r\nok\r\n.\r\n")
    assert code == 250, line
    assert len(spool.messages) == 1
    msg = spool.messages[0][1]
    assert msg.recipients == ("bob@example.net",)
    assert b"smuggled" not in msg.body and b"evil" not in msg.body
    await c.close()


@pytest.mark.parametrize("name,content", [VARIANTS[0], VARIANTS[10]],
                         ids=[VARIANTS[0][0], VARIANTS[10][0]])
async def test_smuggling_rejected_over_tls_with_auth(make_listener, client_tls, name, content):
    c, spool = await _session(make_listener, client_tls, tls=True)
    assert (await c.cmd("MAIL FROM:<app@example.com>"))[0] == 250
    assert (await c.cmd("RCPT TO:<bob@example.net>"))[0] == 250
    code, line = await c.data(content + b"\r\n.\r\n")
    assert (code, line[:9]) == (550, "550 5.5.2")
    assert spool.messages == []
    assert (await c.mail())[0] == 250
    await c.close()


async def test_pipelined_smuggling_attempt(make_listener, client_tls):
    """The whole attack in one write, as a smuggling client sends it."""
    c, spool = await _session(make_listener, client_tls, tls=False)
    await c.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
    assert (await c.reply())[0] == 250
    assert (await c.reply())[0] == 250
    assert (await c.reply())[0] == 354
    await c.send(FIRST + b"\n.\n" + SMUGGLED + b"\r\n.\r\nQUIT\r\n")
    code, line = await c.reply()
    assert (code, line[:9]) == (550, "550 5.5.2")
    assert await c.reply() == (221, "221 2.0.0 Bye")
    assert spool.messages == []


async def test_dot_stuffing_is_undone_for_legit_mail(make_listener, client_tls):
    c, spool = await _session(make_listener, client_tls, tls=False)
    code, _ = await c.mail(content=b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n.\r\n")
    assert code == 250
    assert spool.messages[0][1].body.endswith(b"\r\n\r\n.leading dot\r\n..\r\n")
    await c.close()
