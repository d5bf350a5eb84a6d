"""A lean HTTP/1.1 POST client for webhook endpoints: one keep-alive
connection per endpoint, one request at a time.

Why not aiohttp's client (which the admin API's server uses)? A webhook
endpoint on every event gets ~3 requests per delivered message, one at a
time. aiohttp's ClientSession cost ~0.3 ms of the daemon's single core per
request (request/response objects, cookie jar, tracing hooks, a task per
timeout); this protocol costs a few tens of µs: one write of the prebuilt
request, one parse of the status line and the few headers that matter. It
only has to speak to one URL, POST, with a body we built, so it stays small.

Public API
    Endpoint(url, *, timeout, ssl_context=None, user_agent="mta-webhooks/1")
        await post(headers: Sequence[tuple[str, str]], body: bytes)
            -> (status, None) on 2xx, (status, "HTTP 500: <first 200 bytes>")
               on another status (3xx are not followed), (None, "timeout after
               Ns" | "connection failed: <why>" | "<protocol error>")
        await close()
    parse_url(url) -> (scheme, host, port, target, host_header, authorization|None)

Behaviour
    * `timeout` bounds the whole exchange (connect, TLS, send, response).
    * A reused connection that the server closed while idle (or closes
      before answering) is reconnected once and the request resent; a
      webhook receiver deduplicates on webhook-id, so at worst it sees the
      request twice.
    * The response body is read to its end (Content-Length, chunked, or
      until close) so the connection can be reused; at most 1 MiB is read,
      beyond that the connection is dropped. Only its first 200 bytes are
      kept, for the error text.
    * https uses `ssl_context` or ssl.create_default_context() (verified).
    * user:password@ in the URL becomes Basic authorization.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from collections.abc import Sequence
from typing import cast
from urllib.parse import unquote, urlsplit

__all__ = ["Endpoint", "HttpProtocolError", "parse_url"]

_HEAD_MAX = 64 * 1024
_BODY_MAX = 1024 * 1024
_ERROR_TEXT_MAX = 200


class HttpProtocolError(Exception):
    """The server's answer is not HTTP/1.x we understand."""


class _Closed(Exception):
    """The connection closed before a whole response arrived."""

    def __init__(self, got_bytes: bool):
        super().__init__("connection closed before a response")
        self.got_bytes = got_bytes


def parse_url(url: str) -> tuple[str, str, int, str, str, str | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: only http:// and https:// URLs are supported")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: no host")
    port = parts.port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = parts.netloc.rpartition("@")[2]
    auth = None
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(cred.encode()).decode()
    return scheme, host, port, target, netloc, auth


class _Response:
    __slots__ = ("keep_alive", "status", "text")

    def __init__(self, status: int, keep_alive: bool, text: bytes):
        self.status, self.keep_alive, self.text = status, keep_alive, text


class _Conn(asyncio.Protocol):
    """Parses one response at a time into `waiter`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[_Response] | None = None
        self.closed = False
        self.head_done = False
        # per response, once its head is parsed:
        self.status = 0
        self.keep_alive = True
        self.mode = ""          # "none" | "length" | "chunked" | "close"
        self.need = 0           # "length": bytes still expected
        self.body = bytearray()  # the first bytes of the body (error text)
        self.body_seen = 0

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection (loop.create_connection): a Transport
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            resp = self._parse()
        except HttpProtocolError as exc:
            self.waiter.set_exception(exc)
            return
        if resp is not None:
            self.waiter.set_result(resp)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is None or w.done():
            return
        if self.head_done and self.mode == "close":
            w.set_result(_Response(self.status, False, bytes(self.body)))
        else:
            w.set_exception(_Closed(bool(self.buf) or self.head_done))

    # ---- use
    def request(self, data: bytes) -> asyncio.Future[_Response]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.head_done = False
        self.body = bytearray()
        self.body_seen = 0
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    # ---- parsing
    def _keep(self, chunk: bytes | bytearray) -> None:
        self.body_seen += len(chunk)
        room = _ERROR_TEXT_MAX - len(self.body)
        if room > 0:
            self.body += chunk[:room]
        if self.body_seen > _BODY_MAX:
            raise HttpProtocolError("response body too large")

    def _parse(self) -> _Response | None:
        while True:
            if not self.head_done:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _HEAD_MAX:
                        raise HttpProtocolError("response head too large")
                    return None
                head = bytes(self.buf[:end]).decode("latin-1")
                del self.buf[:end + 4]
                if not self._head(head):
                    continue            # a 1xx interim response: the real one follows
            if self.mode == "none":
                return self._done()
            if self.mode == "length":
                take = min(self.need, len(self.buf))
                if take:
                    self._keep(self.buf[:take])
                    del self.buf[:take]
                    self.need -= take
                return self._done() if self.need == 0 else None
            if self.mode == "chunked":
                return self._chunks()
            # "close": everything until the connection closes
            if self.buf:
                self._keep(self.buf)
                self.buf.clear()
            return None

    def _head(self, head: str) -> bool:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return False
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        conn = fields.get("connection", "").lower()
        keep = "close" not in conn if parts[0] != "HTTP/1.0" else "keep-alive" in conn
        self.status, self.keep_alive, self.head_done = status, keep, True
        if status in (204, 304):
            self.mode = "none"
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            self.mode = "chunked"
        elif "content-length" in fields:
            try:
                self.need = int(fields["content-length"])
            except ValueError:
                raise HttpProtocolError("bad Content-Length") from None
            if self.need < 0:
                raise HttpProtocolError("bad Content-Length")
            self.mode = "length" if self.need else "none"
        else:
            self.mode, self.keep_alive = "close", False
        return True

    def _chunks(self) -> _Response | None:
        while True:
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                if len(self.buf) > _HEAD_MAX:
                    raise HttpProtocolError("chunk size line too long")
                return None
            size_text = bytes(self.buf[:eol]).split(b";", 1)[0].strip()
            # hex digits only: int(x, 16) also takes "-5" (a negative size made
            # this loop spin forever, blocking the event loop), "+5", "0x5", "1_0"
            if not size_text or size_text.lstrip(b"0123456789abcdefABCDEF"):
                raise HttpProtocolError("bad chunk size")
            size = int(size_text, 16)
            if size == 0:
                # trailer fields, then an empty line
                end = self.buf.find(b"\r\n\r\n", eol)
                if end == eol:
                    del self.buf[:eol + 4]
                    return self._done()
                if end < 0:
                    if len(self.buf) > _HEAD_MAX:
                        raise HttpProtocolError("response trailers too large")
                    return None
                del self.buf[:end + 4]
                return self._done()
            if self.body_seen + size > _BODY_MAX:
                # a chunk is buffered whole: refuse one beyond the body cap up front
                raise HttpProtocolError("response body too large")
            if len(self.buf) < eol + 2 + size + 2:
                return None
            self._keep(self.buf[eol + 2:eol + 2 + size])
            del self.buf[:eol + 2 + size + 2]

    def _done(self) -> _Response:
        self.head_done = False
        return _Response(self.status, self.keep_alive, bytes(self.body))


class Endpoint:
    def __init__(self, url: str, *, timeout: float, ssl_context: ssl.SSLContext | None = None,
                 user_agent: str = "mta-webhooks/1"):
        scheme, self.host, self.port, target, host_header, auth = parse_url(url)
        self.timeout = float(timeout)
        self.ssl = (ssl_context or ssl.create_default_context()) if scheme == "https" else None
        prefix = (f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\n"
                  f"User-Agent: {user_agent}\r\nContent-Type: application/json\r\n")
        if auth:
            prefix += f"Authorization: {auth}\r\n"
        self._prefix = prefix.encode("latin-1")
        self._conn: _Conn | None = None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            _Conn, self.host, self.port, ssl=self.ssl,
            server_hostname=self.host if self.ssl else None)
        self._conn = conn
        return conn

    def _request(self, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
        return b"".join((self._prefix, lines.encode("latin-1"),
                         b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def _exchange(self, data: bytes) -> _Response:
        conn = self._conn
        reused = conn is not None and not conn.closed
        if not reused:
            conn = await self._connect()
        assert conn is not None
        try:
            return await conn.request(data)
        except _Closed as exc:
            if not reused or exc.got_bytes:
                raise
        # the idle connection was closed by the server as we sent: once more, fresh
        conn.close()
        conn = await self._connect()
        return await conn.request(data)

    async def post(self, headers: Sequence[tuple[str, str]],
                   body: bytes) -> tuple[int | None, str | None]:
        data = self._request(headers, body)
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._exchange(data)
        except TimeoutError:
            await self.close()
            return None, f"timeout after {self.timeout:g}s"
        except _Closed:
            await self.close()
            return None, "connection closed before a response"
        except HttpProtocolError as exc:
            await self.close()
            return None, f"bad response: {exc}"
        except ssl.SSLError as exc:
            await self.close()
            return None, f"TLS failed: {exc.reason or exc}"
        except OSError as exc:
            await self.close()
            if isinstance(exc, socket.gaierror) or not exc.errno:
                why = exc.strerror or str(exc) or type(exc).__name__
            else:
                why = os.strerror(exc.errno)
            return None, f"connection failed: {why}"
        if not resp.keep_alive:
            await self.close()
        if 200 <= resp.status < 300:
            return resp.status, None
        text = " ".join(resp.text.decode("utf-8", "replace").split())
        return resp.status, f"HTTP {resp.status}" + (f": {text}" if text else "")
