"""webhooks/hookhttp.py (the webhook POST client) against raw loopback servers.

Each server is a few lines of asyncio that reads whole requests (head, then
Content-Length bytes), records them with the number of the connection they
came on, and answers from a script of exact bytes: so every case says
precisely what went over the wire, and how many connections it took.
"""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import socket
import ssl
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from mta.webhooks.hookhttp import Endpoint, parse_url
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
CLOSED = "connection closed before a response"


@dataclass
class Then:
    """One answer: send `data` (a list: in pieces, with a pause between them),
    then close the connection, wait for the client to go away, or (neither)
    read the next request."""
    data: bytes | list[bytes] = b""
    close: bool = False
    hang: bool = False


CLOSE = Then(close=True)    # close right after the request, without answering
HANG = Then(hang=True)      # never answer


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


class RawServer:
    def __init__(self, actions, ssl_context: ssl.SSLContext | None = None):
        self.actions = [a if isinstance(a, Then) else Then(a) for a in actions]
        self.ssl = ssl_context
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []   # (connection number, raw request)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "RawServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/h") -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}{path}"

    @property
    def raw(self) -> list[bytes]:
        return [r for _, r in self.requests]

    @property
    def conn_of_request(self) -> list[int]:
        return [c for c, _ in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn_no = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    m = re.search(rb"\r\ncontent-length:[ \t]*(\d+)\r\n", head, re.I)
                    body = await reader.readexactly(int(m[1])) if m else b""
                except (asyncio.IncompleteReadError, OSError):
                    return
                self.requests.append((conn_no, head + body))
                if not self.actions:
                    return          # an unexpected request: the test's counts will say so
                action = self.actions.pop(0)
                chunks = action.data if isinstance(action.data, list) else [action.data]
                for i, chunk in enumerate(chunks):
                    if i:
                        await asyncio.sleep(0.002)
                    if chunk:
                        writer.write(chunk)
                        await writer.drain()
                if action.hang:
                    await reader.read()     # until the client closes
                    return
                if action.close:
                    return
        except (OSError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            self._tasks.discard(task)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def serve():
    servers: list[RawServer] = []

    async def start(*actions, ssl_context=None) -> RawServer:
        server = await RawServer(actions, ssl_context).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.aclose()


@pytest.fixture
async def endpoint():
    made: list[Endpoint] = []

    def make(url: str, **kw) -> Endpoint:
        kw.setdefault("timeout", 2)
        ep = Endpoint(url, **kw)
        made.append(ep)
        return ep

    try:
        yield make
    finally:
        for ep in made:
            await ep.close()


def split_request(raw: bytes) -> tuple[str, list[str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], lines[1:], body


class Stuck(Exception):
    pass


@contextmanager
def watchdog(seconds: float):
    """Interrupt the main thread if it is stuck in a loop that never yields to
    the event loop (where an asyncio timeout cannot fire), so a regression
    fails the test instead of hanging the run."""
    def fire(signum, frame):
        raise Stuck(f"blocked for {seconds}s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- 1. 2xx, keep-alive, the request on the wire

async def test_keep_alive_reuses_one_connection_and_sends_the_exact_request(serve, endpoint):
    srv = await serve(OK, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    ep = endpoint(srv.url("/path?q=1"))
    body = b'{"type":"message.delivered","data":{"id":"\xc3\xa9t\xc3\xa9"}}'
    extra = [("webhook-id", "msg_1"), ("webhook-timestamp", "1700000000"),
             ("webhook-signature", "v1,abc=")]

    assert await ep.post(extra, body) == (200, None)
    assert await ep.post([("webhook-id", "msg_2")], b"{}") == (202, None)

    assert srv.connections == 1
    assert srv.conn_of_request == [1, 1]
    line, fields, got = split_request(srv.raw[0])
    assert line == "POST /path?q=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}" in fields
    assert "Content-Type: application/json" in fields
    assert "User-Agent: mta-webhooks/1" in fields
    for name, value in extra:
        assert f"{name}: {value}" in fields
    assert [f for f in fields if f.lower().startswith("content-length:")] == \
        [f"Content-Length: {len(body)}"]
    assert not any(f.lower().startswith("authorization:") for f in fields)
    assert got == body

    line, fields, got = split_request(srv.raw[1])
    assert line == "POST /path?q=1 HTTP/1.1"
    assert "webhook-id: msg_2" in fields and "webhook-id: msg_1" not in fields
    assert "Content-Length: 2" in fields
    assert got == b"{}"


async def test_user_agent_and_root_target(serve, endpoint):
    srv = await serve(NO_CONTENT)
    ep = endpoint(f"http://127.0.0.1:{srv.port}", user_agent="acme-hooks/7")
    assert await ep.post([], b"") == (204, None)
    line, fields, body = split_request(srv.raw[0])
    assert line == "POST / HTTP/1.1"
    assert "User-Agent: acme-hooks/7" in fields
    assert "Content-Length: 0" in fields and body == b""


# ---- 2. non-2xx with a Content-Length body

async def test_non_2xx_returns_collapsed_body_text_and_keeps_the_connection(serve, endpoint):
    text = b"  internal\r\n\tserver   error \n"
    srv = await serve(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % len(text) + text,
        OK,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n \n ")
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (500, "HTTP 500: internal server error")
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (503, "HTTP 503")
    assert await ep.post([], b"{}") == (404, "HTTP 404")
    assert srv.connections == 1 and len(srv.requests) == 4


async def test_error_text_is_capped_at_200_bytes_and_the_whole_body_is_read(serve, endpoint):
    body = b"a" * 150 + b" \n " + b"b" * 300 + b" TAIL"
    response = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    # the second time in pieces, so the body is taken across several reads
    srv = await serve(response, pieces(response, 64), OK)
    ep = endpoint(srv.url())
    expected = (500, "HTTP 500: " + "a" * 150 + " " + "b" * 47)
    assert await ep.post([], b"{}") == expected
    assert await ep.post([], b"{}") == expected
    # the rest of each body was consumed: the next response parses on the same connection
    assert await ep.post([], b"{}") == (200, None)
    assert srv.connections == 1


# ---- 3. chunked bodies

CHUNKED_500 = (b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: text/plain\r\n\r\n"
               b"5;ext=1\r\nhello\r\n"
               b"1;a=b;c\r\n \r\n"
               b"A\r\nworld!\n\t  \r\n"
               b"3 \r\nend\r\n"
               b"0;last\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n")
CHUNKED_200 = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\nokay\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n")


@pytest.mark.parametrize("split", [0, 1, 7], ids=["whole", "bytewise", "7-byte-pieces"])
async def test_chunked_bodies_are_read_to_their_end(serve, endpoint, split):
    def send(resp: bytes):
        return pieces(resp, split) if split else resp
    srv = await serve(send(CHUNKED_500), send(CHUNKED_200), NO_CONTENT)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (500, "HTTP 500: hello world! end")
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (204, None)
    assert srv.connections == 1 and len(srv.requests) == 3


@pytest.mark.parametrize("size_line", [b"-3e8", b"-1", b"0x5", b"+5", b"1_0", b"zz", b""])
async def test_bad_chunk_size_is_a_protocol_error(serve, endpoint, size_line):
    # "-3e8" used to make the chunk parser loop forever without yielding:
    # the event loop froze and even the timeout could not fire
    srv = await serve(Then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + size_line + b"\r\nhello\r\n0\r\n\r\n", hang=True), OK)
    ep = endpoint(srv.url(), timeout=1)
    with watchdog(1.5):
        result = await ep.post([], b"{}")
    assert result == (None, "bad response: bad chunk size")
    assert await ep.post([], b"{}") == (200, None)
    assert srv.connections == 2


_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("response, error", [
    # one 2 MiB chunk: refused on its size line, not buffered until the timeout
    (_HEAD + b"200000\r\n" + b"x" * 1000, "response body too large"),
    # many small chunks past 1 MiB
    (_HEAD + (b"4000\r\n" + b"x" * 0x4000 + b"\r\n") * 65, "response body too large"),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 2000000\r\n\r\n" + b"x" * (1024 * 1024 + 10),
     "response body too large"),
    (b"HTTP/1.1 500 Oops\r\n\r\n" + b"x" * (1024 * 1024 + 10), "response body too large"),
    (_HEAD + b"1" * 70000, "chunk size line too long"),
    (_HEAD + b"0\r\nX-Big: " + b"y" * 70000, "response trailers too large"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"y" * 70000, "response head too large"),
], ids=["huge-chunk", "many-chunks", "content-length", "until-close", "chunk-line",
        "trailers", "head"])
async def test_response_size_limits(serve, endpoint, response, error):
    srv = await serve(Then(response, hang=True))
    ep = endpoint(srv.url(), timeout=1.5)
    assert await ep.post([], b"{}") == (None, f"bad response: {error}")


# ---- 4. Connection: close, HTTP/1.0, body until close

async def test_connection_close_response_means_a_new_connection(serve, endpoint):
    # the server says close but keeps the socket open: the client must not reuse it
    srv = await serve(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                      OK, OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 2, 2]


async def test_http10_without_keep_alive_means_a_new_connection(serve, endpoint):
    srv = await serve(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                      b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
                      OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (200, None)     # 1.0 with keep-alive ...
    assert await ep.post([], b"{}") == (200, None)     # ... is reused
    assert srv.conn_of_request == [1, 2, 2]


async def test_body_until_close(serve, endpoint):
    srv = await serve(Then([b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\n\r\nbody ",
                            b"until\r\n", b"close"], close=True),
                      Then(b"HTTP/1.0 200 OK\r\n\r\nfine", close=True),
                      OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (500, "HTTP 500: body until close")
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 2, 3]


# ---- 5. 1xx interim responses

async def test_interim_1xx_responses_are_skipped(serve, endpoint):
    srv = await serve(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                      [b"HTTP/1.1 100 Continue\r\n\r\n",
                       b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n",
                       b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom"],
                      OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (204, None)
    assert await ep.post([], b"{}") == (500, "HTTP 500: boom")
    assert await ep.post([], b"{}") == (200, None)
    assert srv.connections == 1


# ---- 6. 3xx is not followed

async def test_redirect_is_not_followed(serve, endpoint):
    other = await serve(OK)
    srv = await serve(b"HTTP/1.1 301 Moved Permanently\r\nLocation: " + other.url("/new").encode()
                      + b"\r\nContent-Length: 5\r\n\r\nmoved",
                      b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n"
                      b"Content-Length: 0\r\n\r\n")
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (301, "HTTP 301: moved")
    assert await ep.post([], b"{}") == (307, "HTTP 307")
    assert other.connections == 0
    assert len(srv.requests) == 2 and srv.connections == 1
    assert all(split_request(r)[0] == "POST /h HTTP/1.1" for r in srv.raw)


# ---- 7. the server closes an idle keep-alive connection

@pytest.mark.parametrize("pause", [0, 0.05], ids=["at-once", "after-a-pause"])
async def test_idle_connection_closed_by_the_server_is_replaced(serve, endpoint, pause):
    # keep-alive promised, then closed: at once the client may not have seen
    # the close yet (and resends), after a pause it has (and reconnects)
    srv = await serve(Then(OK, close=True), OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b'{"n":1}') == (200, None)
    if pause:
        await asyncio.sleep(pause)
    assert await ep.post([], b'{"n":2}') == (200, None)
    assert srv.conn_of_request == [1, 2]
    assert split_request(srv.raw[1])[2] == b'{"n":2}'


async def test_reused_connection_closed_before_an_answer_is_resent_once(serve, endpoint):
    srv = await serve(OK, CLOSE, OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b'{"n":1}') == (200, None)
    assert await ep.post([("webhook-id", "msg_2")], b'{"n":2}') == (200, None)
    assert srv.conn_of_request == [1, 1, 2]
    assert srv.raw[1] == srv.raw[2]          # the same request, resent whole


# ---- 8. closed without an answer: no endless retry

async def test_fresh_connection_closed_without_an_answer_is_an_error(serve, endpoint):
    srv = await serve(CLOSE, OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (None, CLOSED)
    assert len(srv.requests) == 1             # a fresh connection is not retried
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 2]


async def test_reused_connection_resend_is_tried_only_once(serve, endpoint):
    srv = await serve(OK, CLOSE, CLOSE, OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (None, CLOSED)
    assert srv.conn_of_request == [1, 1, 2]
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 1, 2, 3]


@pytest.mark.parametrize("partial", [
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
], ids=["in-head", "in-length-body", "in-chunk"])
async def test_close_in_the_middle_of_a_response_is_not_resent(serve, endpoint, partial):
    # the server may have acted on it: part of an answer came, so no resend
    srv = await serve(OK, Then(partial, close=True), OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (200, None)
    assert await ep.post([], b"{}") == (None, CLOSED)
    assert srv.conn_of_request == [1, 1]
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 1, 2]


# ---- 9. timeout

async def test_timeout_then_a_new_connection(serve, endpoint):
    srv = await serve(HANG, Then(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", hang=True),
                      OK)
    ep = endpoint(srv.url(), timeout=0.2)
    started = time.monotonic()
    assert await ep.post([], b"{}") == (None, "timeout after 0.2s")
    assert time.monotonic() - started < 1.5
    assert await ep.post([], b"{}") == (None, "timeout after 0.2s")   # stalled in the body
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 2, 3]


# ---- 10. connection refused

async def test_connection_refused(endpoint):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ep = endpoint(f"http://127.0.0.1:{port}/h")
    assert await ep.post([], b"{}") == (None, "connection failed: Connection refused")
    assert await ep.post([], b"{}") == (None, "connection failed: Connection refused")


# ---- 11. garbage

@pytest.mark.parametrize("response, error", [
    (b"FOO BAR\r\n\r\n", "not an HTTP/1.x response: 'FOO BAR'"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.x response: 'HTTP/1.1 abc OK'"),
    (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x response: 'HTTP/2 200'"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
])
async def test_garbage_response(serve, endpoint, response, error):
    srv = await serve(Then(response, hang=True), OK)
    ep = endpoint(srv.url())
    assert await ep.post([], b"{}") == (None, f"bad response: {error}")
    assert await ep.post([], b"{}") == (200, None)
    assert srv.conn_of_request == [1, 2]


# ---- 12. https

async def test_https_with_a_trusted_ca(serve, endpoint, server_tls, client_tls):
    srv = await serve(OK, NO_CONTENT, ssl_context=server_tls)
    ep = endpoint(srv.url("/h"), ssl_context=client_tls)
    assert await ep.post([("webhook-id", "msg_1")], b'{"a":1}') == (200, None)
    assert await ep.post([], b"{}") == (204, None)
    assert srv.connections == 1
    line, fields, body = split_request(srv.raw[0])
    assert line == "POST /h HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}" in fields and "webhook-id: msg_1" in fields
    assert body == b'{"a":1}'


async def test_https_with_an_untrusted_certificate_fails(serve, endpoint, server_tls):
    srv = await serve(OK, ssl_context=server_tls)
    ep = endpoint(srv.url("/h"))        # the default context does not trust the test CA
    status, error = await ep.post([], b"{}")
    assert status is None
    assert error == "TLS failed: CERTIFICATE_VERIFY_FAILED"
    assert srv.requests == []


# ---- 13. parse_url

@pytest.mark.parametrize("url, expected", [
    ("http://example.com", ("http", "example.com", 80, "/", "example.com", None)),
    ("https://example.com/hook?a=b&c=d",
     ("https", "example.com", 443, "/hook?a=b&c=d", "example.com", None)),
    ("HTTPS://Hooks.Example.COM:8443/x",
     ("https", "hooks.example.com", 8443, "/x", "Hooks.Example.COM:8443", None)),
    ("http://[::1]:8080/x", ("http", "::1", 8080, "/x", "[::1]:8080", None)),
    ("https://[2001:db8::1]/", ("https", "2001:db8::1", 443, "/", "[2001:db8::1]", None)),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


def test_parse_url_userinfo_is_basic_auth():
    scheme, host, port, target, host_header, auth = parse_url(
        "https://us%40er:p%3Ass@h.example:8443/in")
    assert (host, port, target, host_header) == ("h.example", 8443, "/in", "h.example:8443")
    assert auth == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert parse_url("http://token@h.example/")[5] == \
        "Basic " + base64.b64encode(b"token:").decode()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/x", "ws://example.com/",
                                 "http:///no-host"])
def test_parse_url_rejects(url):
    with pytest.raises(ValueError):
        parse_url(url)
    with pytest.raises(ValueError):
        Endpoint(url, timeout=1)


async def test_userinfo_is_sent_as_authorization_not_in_host(serve, endpoint):
    srv = await serve(OK)
    ep = endpoint(f"http://hook%20user:s3cr%3At@127.0.0.1:{srv.port}/in?x=1")
    assert await ep.post([], b"{}") == (200, None)
    line, fields, _ = split_request(srv.raw[0])
    assert line == "POST /in?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}" in fields
    assert "Authorization: Basic " + base64.b64encode(b"hook user:s3cr:t").decode() in fields
    assert b"s3cr" not in srv.raw[0].partition(b"Authorization")[0]
