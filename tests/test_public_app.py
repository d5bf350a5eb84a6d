"""The public listener (mta.api.public) over a real aiohttp server on
127.0.0.1:0, driven by aiohttp.ClientSession, with a recording backend (the
backend is a seam we own)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from mta.api.public import (BODY_LIMIT, PIXEL_GIF, PublicServer, mask_address,
                            public_app)
from mta.mail.tokens import TokenKey, seal

KEY = TokenKey(bytes(range(1, 33)))
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
NOW = 1_700_000_000.0
TARGET = "https://shop.example.com/sale?item=42&ref=mail#top"
U_FIELDS: list[str | int] = ["acme", "jane.doe@example.com", "news", "Q1"]
C_FIELDS: list[str | int] = ["Q1", 3, "jane.doe@example.com"]
O_FIELDS: list[str | int] = ["Q1", "jane.doe@example.com"]


class Backend:
    """Records every call; answers what the test set up."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str | int], dict[str, Any]]] = []
        self.unsubscribed = True
        self.targets: dict[tuple[str, int], str] = {("Q1", 3): TARGET}
        self.delivered: dict[str, float] = {"Q1": NOW - 3600}
        self.asked: list[str] = []
        self.fail = False

    async def unsubscribe(self, fields: list[str | int], *, one_click: bool, client_ip: str,
                          user_agent: str) -> bool:
        self._record("unsubscribe", fields, one_click=one_click, client_ip=client_ip,
                     user_agent=user_agent)
        return self.unsubscribed

    async def click(self, fields: list[str | int], *, label: str | None, client_ip: str,
                    user_agent: str) -> str | None:
        self._record("click", fields, label=label, client_ip=client_ip, user_agent=user_agent)
        return self.targets.get((str(fields[0]), int(fields[1])))

    async def opened(self, fields: list[str | int], *, label: str | None, client_ip: str,
                     user_agent: str) -> None:
        self._record("opened", fields, label=label, client_ip=client_ip, user_agent=user_agent)

    async def delivered_at(self, queue_id: str) -> float | None:
        self.asked.append(queue_id)
        return self.delivered.get(queue_id)

    def now(self) -> float:
        return NOW

    def _record(self, what: str, fields: list[str | int], **kw: Any) -> None:
        if self.fail:
            raise RuntimeError("the store is down")
        self.calls.append((what, fields, kw))


@dataclass
class Env:
    url: str
    backend: Backend
    http: aiohttp.ClientSession
    server: PublicServer


@pytest.fixture
async def env():
    backend = Backend()
    server = PublicServer(public_app(backend, KEY, name="Acme <Mail>"), "127.0.0.1:0")
    await server.start()
    async with aiohttp.ClientSession(headers={"User-Agent": FIREFOX}) as http:
        yield Env(server.url, backend, http, server)
    await server.stop()


def _secure(resp: aiohttp.ClientResponse) -> None:
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "style-src 'unsafe-inline'" in csp
    assert resp.headers["Cache-Control"] == "no-store"


def u_token(fields: list[str | int] = U_FIELDS) -> str:
    return seal(KEY, "u", fields)


async def test_get_page_never_unsubscribes(env: Env) -> None:
    token = u_token()
    for method in ("GET", "HEAD"):
        async with env.http.request(method, f"{env.url}/u/{token}") as resp:
            assert resp.status == 200
            _secure(resp)
            page = await resp.text()
    async with env.http.get(f"{env.url}/u/{token}") as resp:
        page = await resp.text()
    assert resp.content_type == "text/html"
    assert "Unsubscribe j***@example.com?" in page
    assert '<form method="post">' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "<button" in page and token not in page and "jane.doe" not in page
    assert "Acme &lt;Mail&gt;" in page
    assert env.backend.calls == []


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_rfc8058_post_unsubscribes(env: Env, encoding: str) -> None:
    if encoding == "urlencoded":
        body: Any = {"List-Unsubscribe": "One-Click"}
    else:
        body = aiohttp.FormData(default_to_multipart=True)
        body.add_field("List-Unsubscribe", "One-Click")
    async with env.http.post(f"{env.url}/u/{u_token()}", data=body) as resp:
        assert resp.status == 200
        _secure(resp)
        page = await resp.text()
    expected = "multipart/form-data" if encoding == "multipart" else \
        "application/x-www-form-urlencoded"
    assert expected in resp.request_info.headers["Content-Type"]
    assert "You are unsubscribed" in page and "j***@example.com" in page
    assert env.backend.calls == [("unsubscribe", U_FIELDS, {
        "one_click": True, "client_ip": "127.0.0.1", "user_agent": FIREFOX})]


async def test_form_from_the_page_works(env: Env) -> None:
    """The page's own form, as a browser submits it, unsubscribes."""
    async with env.http.post(f"{env.url}/u/{u_token()}",
                             data="List-Unsubscribe=One-Click&x=1",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}
                             ) as resp:
        assert resp.status == 200
    assert [c[0] for c in env.backend.calls] == ["unsubscribe"]


@pytest.mark.parametrize("data", [
    b"", b"List-Unsubscribe=", b"List-Unsubscribe=Yes", b"Other=One-Click",
    b"list-unsubscribe=One-Click", b"%%%garbage", b"\xff\xfe"])
async def test_post_without_the_field_is_400(env: Env, data: bytes) -> None:
    async with env.http.post(f"{env.url}/u/{u_token()}", data=data,
                             headers={"Content-Type": "application/x-www-form-urlencoded"}
                             ) as resp:
        assert resp.status == 400
        _secure(resp)
        assert "RFC 8058" in await resp.text()
    assert env.backend.calls == []


async def test_bad_multipart_is_400(env: Env) -> None:
    async with env.http.post(f"{env.url}/u/{u_token()}", data=b"--x\r\nnot a part",
                             headers={"Content-Type": "multipart/form-data; boundary=zz"}
                             ) as resp:
        assert resp.status == 400
    assert env.backend.calls == []


async def test_post_body_limit_413(env: Env) -> None:
    big = b"List-Unsubscribe=One-Click&pad=" + b"x" * BODY_LIMIT
    async with env.http.post(f"{env.url}/u/{u_token()}", data=big,
                             headers={"Content-Type": "application/x-www-form-urlencoded"}
                             ) as resp:
        assert resp.status == 413
        _secure(resp)

    async def chunks():                 # no Content-Length: counted while reading
        yield b"List-Unsubscribe=One-Click&pad="
        for _ in range(10):
            yield b"y" * 1024
    async with env.http.post(f"{env.url}/u/{u_token()}", data=chunks(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"}
                             ) as resp:
        assert resp.status == 413
    assert env.backend.calls == []


async def test_backend_says_nothing_to_do_404(env: Env) -> None:
    env.backend.unsubscribed = False
    async with env.http.post(f"{env.url}/u/{u_token()}",
                             data={"List-Unsubscribe": "One-Click"}) as resp:
        assert resp.status == 404
        assert "You are unsubscribed" not in await resp.text()


def _tampered(token: str) -> str:
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]


async def test_tampered_and_wrong_kind_tokens_404(env: Env) -> None:
    bad = [_tampered(u_token()), seal(KEY, "c", U_FIELDS), seal(TokenKey.generate(), "u",
           U_FIELDS), "x", "A" * 3000, seal(KEY, "u", ["acme", 7, "", "Q1"]),
           seal(KEY, "u", ["too", "few"])]
    for token in bad:
        async with env.http.get(f"{env.url}/u/{token}") as resp:
            assert resp.status == 404
            _secure(resp)
            assert "Unsubscribe" not in await resp.text()
        async with env.http.post(f"{env.url}/u/{token}",
                                 data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 404
        async with env.http.get(f"{env.url}/c/{token}", allow_redirects=False) as resp:
            assert resp.status == 404
    assert env.backend.calls == []


async def test_click_redirects_to_exactly_the_target(env: Env) -> None:
    token = seal(KEY, "c", C_FIELDS)
    async with env.http.get(f"{env.url}/c/{token}", allow_redirects=False) as resp:
        assert resp.status == 302
        _secure(resp)
        assert resp.headers["Location"] == TARGET
    assert env.backend.calls == [("click", C_FIELDS, {
        "label": None, "client_ip": "127.0.0.1", "user_agent": FIREFOX})]
    assert env.backend.asked == ["Q1"]


async def test_click_head_is_recorded_as_head(env: Env) -> None:
    token = seal(KEY, "c", C_FIELDS)
    async with env.http.head(f"{env.url}/c/{token}", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == TARGET
    assert [(c[0], c[2]["label"]) for c in env.backend.calls] == [("click", "head")]


async def test_click_scanner_labelled(env: Env) -> None:
    token = seal(KEY, "c", C_FIELDS)
    for ua in ("Mimecast-Url-Protect", ""):
        async with env.http.get(f"{env.url}/c/{token}", allow_redirects=False,
                                headers={"User-Agent": ua}) as resp:
            assert resp.status == 302
    assert [c[2]["label"] for c in env.backend.calls] == ["scanner", "scanner"]


async def test_click_prefetch_labelled_via_delivered_at(env: Env) -> None:
    env.backend.delivered["Q2"] = NOW - 2
    env.backend.targets[("Q2", 0)] = "https://e.com/"
    token = seal(KEY, "c", ["Q2", 0, "x@e.com"])
    async with env.http.get(f"{env.url}/c/{token}", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "https://e.com/"
    assert env.backend.asked == ["Q2"]
    assert env.backend.calls[0][2]["label"] == "prefetch"


async def test_click_unknown_404(env: Env) -> None:
    token = seal(KEY, "c", ["Q1", 99, "jane@example.com"])      # no such link
    async with env.http.get(f"{env.url}/c/{token}", allow_redirects=False) as resp:
        assert resp.status == 404
        assert "Location" not in resp.headers
    assert [c[0] for c in env.backend.calls] == ["click"]


@pytest.mark.parametrize("target", ["javascript:alert(1)", "//evil.example",
                                    "https://e.com/\r\nSet-Cookie: x=1", "/relative"])
async def test_click_never_redirects_to_a_bad_target(env: Env, target: str) -> None:
    env.backend.targets[("Q1", 3)] = target
    async with env.http.get(f"{env.url}/c/{seal(KEY, 'c', C_FIELDS)}",
                            allow_redirects=False) as resp:
        assert resp.status == 404
        assert "Location" not in resp.headers and "Set-Cookie" not in resp.headers


async def test_open_pixel_good_and_bad(env: Env) -> None:
    good = seal(KEY, "o", O_FIELDS)
    for token in (good, _tampered(good), seal(KEY, "c", C_FIELDS), "garbage"):
        async with env.http.get(f"{env.url}/o/{token}") as resp:
            assert resp.status == 200
            _secure(resp)
            assert resp.content_type == "image/gif"
            body = await resp.read()
        assert body == PIXEL_GIF
        assert body[:6] == b"GIF89a" and body[6:10] == b"\x01\x00\x01\x00"
    assert env.backend.calls == [("opened", O_FIELDS, {
        "label": None, "client_ip": "127.0.0.1", "user_agent": FIREFOX})]


async def test_open_labels(env: Env) -> None:
    token = seal(KEY, "o", O_FIELDS)
    proxy = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com " \
            "GoogleImageProxy)"
    async with env.http.get(f"{env.url}/o/{token}", headers={"User-Agent": proxy}):
        pass
    async with env.http.head(f"{env.url}/o/{token}") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/gif"
    env.backend.delivered["Q1"] = NOW - 1
    async with env.http.get(f"{env.url}/o/{token}"):
        pass
    assert [c[2]["label"] for c in env.backend.calls] == ["proxy", None, "prefetch"]


async def test_user_agent_cut_for_the_backend(env: Env) -> None:
    ua = FIREFOX + " " + "z" * 3000
    async with env.http.get(f"{env.url}/o/{seal(KEY, 'o', O_FIELDS)}",
                            headers={"User-Agent": ua}):
        pass
    assert env.backend.calls[0][2]["user_agent"] == ua[:512]


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/robots.txt"), ("GET", "/u/"), ("GET", "/x/abc"),
    ("POST", "/c/abc"), ("DELETE", "/u/abc"), ("PUT", "/o/abc"), ("GET", "/u/a/b")])
async def test_everything_else_404(env: Env, method: str, path: str) -> None:
    async with env.http.request(method, env.url + path, allow_redirects=False) as resp:
        assert resp.status == 404
        _secure(resp)
        assert resp.content_type == "text/html"


async def test_shown_values_are_escaped(env: Env) -> None:
    token = u_token(["t", "<script>x</script>@<b>evil</b>.com", "", "Q1"])
    async with env.http.get(f"{env.url}/u/{token}") as resp:
        page = await resp.text()
    assert "<script>x" not in page and "<b>evil" not in page
    assert "&lt;***@&lt;b&gt;evil&lt;/b&gt;.com" in page


async def test_backend_failure_is_503_or_gif_and_logs_no_token(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.backend.fail = True
    c, o = seal(KEY, "c", C_FIELDS), seal(KEY, "o", O_FIELDS)
    with caplog.at_level(logging.DEBUG):
        async with env.http.get(f"{env.url}/c/{c}", allow_redirects=False) as resp:
            assert resp.status == 503
            _secure(resp)
            assert "store is down" not in await resp.text()
        async with env.http.get(f"{env.url}/o/{o}") as resp:
            assert resp.status == 200 and await resp.read() == PIXEL_GIF
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "event=public_error route=click" in text
    assert "event=public_error route=open" in text
    assert c not in text and o not in text


async def test_no_token_in_logs(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    u, c, o = u_token(), seal(KEY, "c", C_FIELDS), seal(KEY, "o", O_FIELDS)
    with caplog.at_level(logging.DEBUG):
        for path in (f"/u/{u}", f"/c/{c}", f"/o/{o}", f"/nope/{u}"):
            async with env.http.get(env.url + path, allow_redirects=False):
                pass
        async with env.http.post(f"{env.url}/u/{u}",
                                 data={"List-Unsubscribe": "One-Click"}):
            pass
        host, port = env.server.sockname or ("", 0)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /c/{c}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        reply = await reader.read(100)
        writer.close()
        await writer.wait_closed()
    assert reply.split(b" ")[1] == b"400"
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "event=public_bad_http status=400" in text
    for token in (u, c, o):
        assert token not in text


async def test_server_url_and_stop() -> None:
    server = PublicServer(public_app(Backend(), KEY), "127.0.0.1:0")
    with pytest.raises(RuntimeError):
        _ = server.url
    await server.start()
    assert server.url.startswith("http://127.0.0.1:") and server.sockname is not None
    await server.stop()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(server.url + "/"):
                pass


@pytest.mark.parametrize("address, masked", [
    ("jane@example.com", "j***@example.com"), ("j@e.com", "j***@e.com"),
    ("@e.com", "***@e.com"), ("noat", "n***"), ("a\"b@c\"@d.org", "a***@d.org")])
def test_mask_address(address: str, masked: str) -> None:
    assert mask_address(address) == masked
