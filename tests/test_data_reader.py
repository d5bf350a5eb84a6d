"""The block DATA reader (mta/server/protocol.py `_data`): the end of data is
found at every split of the stream, only at a line start, never past the
terminator, with aiosmtpd's limits (line length, size) and dot-unstuffing."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)
from tests.test_server import Client, credentials, make_listener  # noqa: F401
from tests.test_smuggling import _session

BODY = (b"Subject: split\r\n\r\nends with a dot.\r\n..stuffed\r\nlast\r\n")


async def _start(c):
    assert (await c.cmd("MAIL FROM:<app@example.com>"))[0] == 250
    assert (await c.cmd("RCPT TO:<bob@example.net>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354


@pytest.mark.parametrize("split", range(1, len(BODY) + 5, 3))
async def test_terminator_found_at_every_split(make_listener, client_tls, split):
    c, spool = await _session(make_listener, client_tls, tls=False)
    await _start(c)
    stream = BODY + b".\r\n"
    await c.send(stream[:split])
    await asyncio.sleep(0.01)
    await c.send(stream[split:])
    code, line = await c.reply()
    assert code == 250, line
    assert spool.messages[0][1].body.endswith(
        b"\r\n\r\nends with a dot.\r\n.stuffed\r\nlast\r\n")
    await c.close()


async def test_byte_by_byte(make_listener, client_tls):
    c, spool = await _session(make_listener, client_tls, tls=False)
    await _start(c)
    for b in BODY + b".\r\n":
        await c.send(bytes([b]))
    assert (await c.reply())[0] == 250
    assert spool.messages[0][1].body.endswith(b"last\r\n")


async def test_empty_message_and_pipelined_commands_after_the_dot(make_listener, client_tls):
    c, spool = await _session(make_listener, client_tls, tls=False)
    await _start(c)
    # the terminator right away, and the next commands in the same write
    await c.send(b".\r\nNOOP\r\nQUIT\r\n")
    code, line = await c.reply()
    assert code == 250, line
    assert await c.reply() == (250, "250 2.0.0 OK")
    assert (await c.reply())[0] == 221


async def test_large_body_and_size_limit(make_listener, client_tls):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     max_message_size=300_000)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    big = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 3000     # 240 KB: fits
    code, line = await c.mail(content=big + b".\r\n")
    assert code == 250, line
    assert spool.messages[0][1].body.endswith(big[-200:])
    huge = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 5000    # 400 KB: too big
    code, line = await c.mail(content=huge + b".\r\n")
    assert line.startswith("552 5.3.4"), line
    assert len(spool.messages) == 1
    assert (await c.cmd("NOOP"))[0] == 250   # the stream was drained to the terminator


async def test_line_too_long(make_listener, client_tls):
    c, spool = await _session(make_listener, client_tls, tls=False)
    ok = b"Subject: l\r\n\r\n" + b"a" * 998 + b"\r\n"
    code, line = await c.mail(content=ok + b".\r\n")
    assert code == 250, line
    long = b"Subject: l\r\n\r\n" + b"a" * 1000 + b"\r\n"
    code, line = await c.mail(content=long + b".\r\n")
    assert code == 500 and "5.5." in line and "too long" in line.lower(), line
    assert len(spool.messages) == 1
