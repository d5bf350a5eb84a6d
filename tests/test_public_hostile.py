"""The public listener under bad input (issue 16), on a real daemon: it faces
the internet, so garbage tokens, control bytes and NULs in paths, huge and
non-UTF-8 bodies, wrong methods and content types, and bytes that are not
HTTP each get a 4xx (or the pixel), never a 5xx; nothing is unsubscribed;
the log has no traceback, no raw control byte and no token."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest

from tests.support.mtahelpers import config_text, free_port, running_daemon

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
TOKEN = "A" * 40


@pytest.fixture
async def public(tmp_path):
    text = (config_text(tmp_path / "state", free_port(), tls="none", trusted=["127.0.0.0/8"])
            + f'[public]\naddress = "127.0.0.1:{free_port()}"\n')
    async with running_daemon(text) as d:
        yield d


CASES = [
    ("GET", "/u/" + "x" * 5000, None, {}),
    ("GET", "/u/%00%0d%0a", None, {}),
    ("GET", "/u/" + "é" * 100, None, {}),
    ("POST", "/u/" + TOKEN, b"List-Unsubscribe=One-Click", {}),
    ("POST", "/u/" + TOKEN, b"\xff\xfe" * 100, {"Content-Type": "application/x-www-form-urlencoded"}),
    ("POST", "/u/" + TOKEN, b"x" * 200_000, {}),
    ("POST", "/u/" + TOKEN, b"--b\r\n\r\n", {"Content-Type": "multipart/form-data; boundary=b"}),
    ("POST", "/u/" + TOKEN, b"{}", {"Content-Type": "application/json"}),
    ("PUT", "/u/" + TOKEN, b"", {}),
    ("DELETE", "/c/" + TOKEN, None, {}),
    ("GET", "/c/" + TOKEN + "%2e%2e%2f", None, {}),
    ("HEAD", "/c/", None, {}),
    ("GET", "/c/" + TOKEN, None, {"User-Agent": "x" * 6000}),
    ("OPTIONS", "/", None, {}),
    ("GET", "/../../etc/passwd", None, {}),
    ("GET", "/emails", None, {"Authorization": "Bearer mta_live_x"}),
]


async def test_bad_requests_get_4xx_and_the_log_stays_clean(public, caplog):
    caplog.set_level(logging.DEBUG)
    base = public.public.url
    async with aiohttp.ClientSession() as s:
        for method, path, body, headers in CASES:
            async with s.request(method, base + path, data=body, headers=headers,
                                 allow_redirects=False) as r:
                await r.read()
                assert 400 <= r.status < 500, (method, path[:40], r.status)
        async with s.get(base + "/o/" + TOKEN) as r:      # the pixel: always a GIF
            assert r.status == 200 and (await r.read()).startswith(b"GIF")
    host, port = public.public.sockname[:2]
    for raw in (b"\x16\x03\x01\x02\x00garbage\r\n\r\nGET /u/\x00 HTTP/1.1\r\n\r\n",
                b"GET /c/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\nUser-Agent: \x01\x1b[31m"
                b"\xff\r\nConnection: close\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
        assert not answer or answer.startswith(b"HTTP/1.") and answer[9:10] == b"4", answer
    log = caplog.text
    assert "Traceback" not in log
    assert TOKEN not in log
    for record in caplog.records:
        assert not _CONTROL.search(record.getMessage()), record.getMessage()[:200]
    assert not [e for e in await public.spool.ledger.events_after(0, 1000)
                if e.type in ("unsubscribed", "clicked", "opened")]
