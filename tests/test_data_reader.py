"""The block DATA reader (mta/server/protocol.py `_data`): the end of data is
found at every split of the stream, only at a line start, never past the
terminator, with aiosmtpd's limits (line length, size) and dot-unstuffing."""

from __future__ import annotations

import asyncio
import os

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


# -- large messages: the head in memory, the rest in a spill file (issue 10 item 3) ----

SMALL_HEAD = 4096


@pytest.fixture
def small_head(monkeypatch, tmp_path):
    """Spill past 4 KiB instead of 1 MiB, so every path runs on small data."""
    import mta.server.data as data
    monkeypatch.setattr(data, "HEAD_BYTES", SMALL_HEAD)
    (tmp_path / "spill").mkdir()


def _stuff(body: bytes) -> bytes:
    body = body.replace(b"\r\n.", b"\r\n..")
    return (b"." + body) if body.startswith(b".") else body


def _random_body(seed: int, size: int) -> bytes:
    import random
    rnd = random.Random(seed)
    lines = [b"Subject: spilled", b"X-Seed: %d" % seed, b""]
    total = 0
    while total < size:
        n = rnd.choice([0, 1, 2, 5, 70, 300, 997, 998])
        line = bytes(rnd.choice(b"ab. \t.") for _ in range(n))
        if rnd.random() < 0.2:
            line = b"." + line[:997]
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


@pytest.mark.parametrize("seed", range(6))
async def test_spilled_message_arrives_byte_exact(make_listener, small_head, tmp_path, seed):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     spill_dir=str(tmp_path / "spill"))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    body = _random_body(seed, 60_000 + seed * 7_000)
    await _start(c)
    stream = _stuff(body) + b".\r\n"
    for i in range(0, len(stream), 1500):       # many writes: pieces cut at any place
        await c.send(stream[i:i + 1500])
    code, line = await c.reply()
    assert code == 250, line
    got = spool.messages[0][1].body
    assert got.startswith(b"Received: ") and b"\r\nX-Seed: %d\r\n" % seed in got
    assert got.split(b"\r\n\r\n", 1)[1] == body.split(b"\r\n\r\n", 1)[1]   # byte-exact body
    assert os.listdir(tmp_path / "spill") == []            # nothing left behind (anonymous files)
    await c.close()


@pytest.mark.parametrize("where", ["head", "spill"])
@pytest.mark.parametrize("bad,reply", [
    (b"bare\nLF\r\n", "550 5.5.2"), (b"bare\rCR\r\n", "550 5.5.2"),
    (b"nul\0byte\r\n", "550 5.5.2"), (b"x" * 1000 + b"\r\n", "500 5.5.2")])
async def test_refusals_hold_past_the_head(make_listener, small_head, tmp_path, where, bad,
                                           reply):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     spill_dir=str(tmp_path / "spill"))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    filler = b"".join(b"line %05d ....................................\r\n" % i
                      for i in range(2000))          # ~100 KB: well past the head
    body = (b"Subject: x\r\n\r\n" + bad + filler if where == "head"
            else b"Subject: x\r\n\r\n" + filler + bad + filler)
    code, line = await c.mail(content=body + b".\r\n")
    assert line.startswith(reply), line
    assert spool.messages == []
    assert (await c.cmd("NOOP"))[0] == 250      # in step after the refusal
    code, line = await c.mail(content=b"Subject: ok\r\n\r\n" + filler + b".\r\n")
    assert code == 250, line
    await c.close()


async def test_header_section_must_end_in_the_head(make_listener, small_head, tmp_path):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     spill_dir=str(tmp_path / "spill"))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    headers = b"".join(b"X-H%05d: value\r\n" % i for i in range(1000))   # 18 KB of header
    code, line = await c.mail(content=headers + b"\r\nbody\r\n.\r\n")
    assert line == "552 5.3.4 Message header section too large (it must end within the " \
                   "first MiB)", line
    assert spool.messages == []
    await c.close()


async def test_size_limit_with_spill(make_listener, small_head, tmp_path):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     spill_dir=str(tmp_path / "spill"), max_message_size=50_000)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 1000       # 80 KB
    code, line = await c.mail(content=big + b".\r\n")
    assert line.startswith("552 5.3.4"), line
    assert (await c.cmd("NOOP"))[0] == 250
    assert os.listdir(tmp_path / "spill") == []
    await c.close()
