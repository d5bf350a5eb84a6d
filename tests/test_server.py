"""The submission listener end to end: real loopback sockets, real TLS (trustme).

The spool is the one seam faked here while mta.spool is written in parallel:
`FakeSpool.enqueue(msg, now)` has the real signature and raises the real
`StorageError`. The SMTP client is a raw line client (so every byte on the
wire is the test's), plus one run with aiosmtplib for interop.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import re
import ssl
import time

import aiosmtplib
import pytest

from mta.config.sections import ListenerConfig
from mta.core import FakeClock, StorageError, new_queue_id
from mta.core.spill import join
from mta.policy.authlimit import AuthThrottle
from mta.server import CredentialStore, SubmissionListener
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)

USER, PASSWORD = "app@example.com", "pw-Correct-Horse-1"
ESC = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")


# -- the spool seam ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FakeNewMessage:
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    credential: str | None = None
    listener: str = ""
    client_ip: str = ""
    is_dsn: bool = False
    queue_id: str | None = None


def _message_factory():
    try:
        from mta.spool import NewMessage
        return NewMessage
    except ImportError:
        return FakeNewMessage


class FakeSpool:
    def __init__(self):
        self.messages: list[tuple[str, object]] = []
        self.events: list[object] = []        # ledger events (refusals at submission)
        self.fail: list[BaseException] = []   # raised by the next enqueue calls, in order

    async def append_events(self, events) -> None:
        self.events.extend(events)

    async def enqueue(self, msg, now: float) -> str:
        await asyncio.sleep(0)
        if self.fail:
            raise self.fail.pop(0)
        if getattr(msg, "tail", None) is not None:
            # a large message: its bytes past the head are only readable
            # until enqueue returns (the session closes the spill file then)
            msg = dataclasses.replace(msg, body=join(msg.body, msg.tail), tail=None)
        qid = msg.queue_id or new_queue_id(now)
        self.messages.append((qid, msg))
        return qid


# -- a raw SMTP client ---------------------------------------------------------

class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, addr, *, ssl_ctx=None, local_ip=None, greet=True) -> "Client":
        r, w = await asyncio.open_connection(
            addr[0], addr[1], ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None,
            local_addr=(local_ip, 0) if local_ip else None)
        c = cls(r, w)
        if greet:
            code, line = await c.reply()
            assert code == 220, line
        return c

    async def reply(self) -> tuple[int, str]:
        lines = await self.reply_lines()
        return int(lines[-1][:3]), lines[-1]

    async def reply_lines(self) -> list[str]:
        lines = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), 10)
            if not raw:
                raise ConnectionError(f"closed after {lines!r}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> tuple[int, str]:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def ehlo(self, name="client.example.org") -> list[str]:
        await self.send(f"EHLO {name}\r\n".encode())
        lines = await self.reply_lines()
        assert lines[0].startswith("250-") or lines[0].startswith("250 ")
        return [ln[4:] for ln in lines[1:]]

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        code, line = await self.cmd("STARTTLS")
        assert code == 220, line
        await self.writer.start_tls(ctx, server_hostname="localhost")

    async def auth_plain(self, user=USER, password=PASSWORD) -> tuple[int, str]:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return await self.cmd(f"AUTH PLAIN {token}")

    async def data(self, content: bytes) -> tuple[int, str]:
        code, line = await self.cmd("DATA")
        assert code == 354, line
        await self.send(content)
        return await self.reply()

    async def mail(self, sender="app@example.com", rcpts=("bob@example.net",),
                   content=b"Subject: hi\r\n\r\nhello\r\n.\r\n") -> tuple[int, str]:
        code, line = await self.cmd(f"MAIL FROM:<{sender}>")
        assert code == 250, line
        for r in rcpts:
            code, line = await self.cmd(f"RCPT TO:<{r}>")
            assert code == 250, line
        return await self.data(content)

    async def is_closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


# -- fixtures -----------------------------------------------------------------

@pytest.fixture
def credentials(tmp_path):
    store = CredentialStore(tmp_path / "credentials.json")
    store.add(USER, PASSWORD)
    return store


@pytest.fixture
async def make_listener(credentials, server_tls):
    started: list[SubmissionListener] = []
    default_store = credentials

    async def make(*, spool=None, throttle=None, user_throttle=None, tls_ctx=server_tls,
                   observer=None, spill_dir=None, credentials=None, **cfg):
        cfg.setdefault("address", "127.0.0.1:0")
        lcfg = ListenerConfig(**cfg)
        spool = spool or FakeSpool()
        lst = SubmissionListener(lcfg, hostname="mx.test.example", spool=spool,
                                 credentials=credentials or default_store,
                                 tls_context=tls_ctx if lcfg.tls != "none" else None,
                                 clock=FakeClock(1_700_000_000.0), auth_throttle=throttle,
                                 user_throttle=user_throttle, spill_dir=spill_dir,
                                 message_factory=_message_factory(),
                                 **({"observer": observer} if observer else {}))
        await lst.start()
        started.append(lst)
        return lst, spool

    yield make
    for lst in started:
        await lst.stop(grace=0.1)


async def authed(lst, client_tls) -> Client:
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    code, line = await c.auth_plain()
    assert line == "235 2.7.0 Authentication successful"
    return c


# -- EHLO ---------------------------------------------------------------------

async def test_ehlo_before_and_after_starttls(make_listener, client_tls):
    lst, _ = await make_listener(max_message_size=1_000_000)
    c = await Client.connect(lst.sockname)
    before = await c.ehlo()
    assert set(before) == {"SIZE 1000000", "8BITMIME", "SMTPUTF8", "STARTTLS", "PIPELINING",
                           "ENHANCEDSTATUSCODES"}
    await c.starttls(client_tls)
    after = await c.ehlo()
    assert set(after) == {"SIZE 1000000", "8BITMIME", "SMTPUTF8", "PIPELINING",
                          "ENHANCEDSTATUSCODES", "AUTH LOGIN PLAIN", "REQUIRETLS"}
    await c.close()


async def test_greeting_names_host(make_listener):
    lst, _ = await make_listener()
    c = await Client.connect(lst.sockname, greet=False)
    code, line = await c.reply()
    assert line == "220 mx.test.example ESMTP mta"
    await c.close()


async def test_auth_offered_without_tls_only_when_configured(make_listener):
    lst, _ = await make_listener(tls="none", require_tls_for_auth=False)
    c = await Client.connect(lst.sockname)
    assert "AUTH LOGIN PLAIN" in await c.ehlo()
    assert (await c.auth_plain())[0] == 235
    await c.close()


# -- AUTH and the happy path ----------------------------------------------------

async def test_auth_plain_over_starttls_and_mail_is_queued(make_listener, client_tls):
    lst, spool = await make_listener()
    c = await authed(lst, client_tls)
    assert await c.cmd("MAIL FROM:<app@example.com>") == (250, "250 2.1.0 Sender <app@example.com> OK")
    assert await c.cmd("RCPT TO:<Bob@Example.NET>") == (250, "250 2.1.5 Recipient <Bob@example.net> OK")
    code, line = await c.data(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
    assert code == 250
    qid, msg = spool.messages[0]
    assert line == f"250 2.0.0 Ok: queued as {qid}"
    assert f"with ESMTPSA id {qid}\r\n".encode() in msg.body
    assert msg.sender == "app@example.com"
    assert msg.recipients == ("Bob@example.net",)
    assert msg.credential == USER
    assert msg.listener == "submission"
    assert msg.client_ip == "127.0.0.1"
    assert msg.is_dsn is False
    assert msg.body.startswith(b"Received: from client.example.org ([127.0.0.1])\r\n"
                               b"\tby mx.test.example (mta) with ESMTPSA id ")
    assert b"\tfor <Bob@example.net>; Tue, 14 Nov 2023 22:13:20 +0000\r\n" in msg.body
    head, _, body = msg.body.partition(b"\r\n\r\n")
    assert re.search(rb"\r\nMessage-ID: <[0-9A-Z]{16}\.[0-9a-f]+@mx\.test\.example>\r\n", head)
    assert head.endswith(b"\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000")
    assert body == b"hello\r\n"
    assert await c.cmd("QUIT") == (221, "221 2.0.0 Bye")
    await c.close()


async def test_auth_login_challenge_flow(make_listener, client_tls):
    lst, spool = await make_listener()
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    code, line = await c.cmd("AUTH LOGIN")
    assert code == 334 and base64.b64decode(line[4:]) == b"Username:"
    code, line = await c.cmd(base64.b64encode(USER.encode()))
    assert code == 334 and base64.b64decode(line[4:]) == b"Password:"
    assert await c.cmd(base64.b64encode(PASSWORD.encode())) == (
        235, "235 2.7.0 Authentication successful")
    code, line = await c.mail()
    assert code == 250 and line.startswith("250 2.0.0 Ok: queued as ")
    assert spool.messages[0][1].credential == USER
    await c.close()


async def test_auth_login_with_initial_response(make_listener, client_tls):
    lst, _ = await make_listener()
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    code, _ = await c.cmd("AUTH LOGIN " + base64.b64encode(USER.encode()).decode())
    assert code == 334
    assert (await c.cmd(base64.b64encode(PASSWORD.encode())))[0] == 235
    await c.close()


async def test_auth_plain_empty_initial_response_and_abort(make_listener, client_tls):
    lst, _ = await make_listener()
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    code, line = await c.cmd("AUTH PLAIN")
    assert line == "334 "
    assert await c.cmd("*") == (501, "501 5.7.0 Auth aborted")
    assert await c.cmd("AUTH PLAIN !!!") == (501, "501 5.5.2 Cannot decode base64 in AUTH response")
    code, line = await c.cmd("AUTH PLAIN " + base64.b64encode(b"no-nuls").decode())
    assert (code, line[:9]) == (501, "501 5.5.2")
    assert (await c.cmd("NOOP"))[0] == 250   # exactly one reply each: still in step
    assert (await c.auth_plain())[0] == 235
    await c.close()


async def test_aiosmtplib_interop(make_listener, client_tls):
    lst, spool = await make_listener()
    host, port = lst.sockname
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=True,
                               tls_context=client_tls) as smtp:
        await smtp.login(USER, PASSWORD)
        errors, resp = await smtp.sendmail("app@example.com", ["a@example.net", "b@example.net"],
                                           b"Subject: x\r\n\r\nbody\r\n")
        assert errors == {}
        assert resp.startswith("2.0.0 Ok: queued as ")
    msg = spool.messages[0][1]
    assert msg.recipients == ("a@example.net", "b@example.net")
    assert b"for <" not in msg.body.split(b"\r\n\r\n")[0]   # several recipients: no for


async def test_implicit_tls_listener(make_listener, client_tls):
    lst, spool = await make_listener(tls="implicit")
    c = await Client.connect(lst.sockname, ssl_ctx=client_tls)
    ext = await c.ehlo()
    assert "STARTTLS" not in ext and "AUTH LOGIN PLAIN" in ext
    assert (await c.auth_plain())[0] == 235
    code, _ = await c.mail()
    assert code == 250
    assert b" with ESMTPSA id " in spool.messages[0][1].body
    await c.close()


async def test_tls_listener_needs_a_context(credentials):
    from mta.core import ConfigError
    with pytest.raises(ConfigError, match="needs a TLS"):
        SubmissionListener(ListenerConfig(address="127.0.0.1:0"), hostname="h",
                           spool=FakeSpool(), credentials=credentials, tls_context=None,
                           clock=FakeClock())


# -- no open relay ------------------------------------------------------------------

async def test_relay_without_auth_refused(make_listener, client_tls):
    lst, spool = await make_listener()
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert await c.cmd("MAIL FROM:<a@example.com>") == (530, "530 5.7.0 Authentication required")
    assert await c.cmd("RCPT TO:<b@example.net>") == (530, "530 5.7.0 Authentication required")
    assert await c.cmd("DATA") == (530, "530 5.7.0 Authentication required")
    assert (await c.cmd("VRFY <b@example.net>"))[0] == 530
    # TLS alone is not enough either
    await c.starttls(client_tls)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 530
    # nor is a malformed address a way around the check
    assert (await c.cmd("MAIL FROM:<bad"))[0] == 530
    assert spool.messages == []
    await c.close()


async def test_auth_before_starttls_refused(make_listener):
    lst, _ = await make_listener()
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert await c.auth_plain() == (
        538, "538 5.7.11 Encryption required for requested authentication mechanism")
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 530
    await c.close()


async def test_wrong_password(make_listener, client_tls):
    lst, _ = await make_listener()
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    assert await c.auth_plain(password="wrong") == (535, "535 5.7.8 Authentication credentials invalid")
    assert await c.auth_plain(user="ghost") == (535, "535 5.7.8 Authentication credentials invalid")
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 530
    assert (await c.auth_plain())[0] == 235
    assert await c.auth_plain() == (503, "503 5.5.1 Already authenticated")
    await c.close()


async def test_auth_not_allowed_in_transaction(make_listener, client_tls):
    lst, _ = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                 require_tls_for_auth=False)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 250
    assert await c.auth_plain() == (503, "503 5.5.1 AUTH not permitted during a mail transaction")
    await c.close()


async def test_brute_force_is_slowed_then_locked_out(make_listener, client_tls):
    throttle = AuthThrottle(max_failures=5, lockout=60, delay_step=0.2, max_delay=1.0)
    lst, _ = await make_listener(throttle=throttle)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    took = []
    for _ in range(4):
        t0 = time.monotonic()
        assert (await c.auth_plain(password="guess"))[1].startswith("535 5.7.8")
        took.append(time.monotonic() - t0)
    # failures 1-3 answered without delay, the 4th after delay_step
    assert took[3] >= 0.2 and took[3] > took[0]
    t0 = time.monotonic()
    assert await c.auth_plain(password="guess") == (
        421, "421 4.7.0 Too many failed authentication attempts, try again later")
    assert time.monotonic() - t0 >= 0.4
    assert await c.is_closed()
    # a new connection from the same IP is refused at once, even with the right password
    c2 = await authed_attempt(lst, client_tls)
    assert c2 == (421, "421 4.7.0 Too many failed authentication attempts, try again later")
    # another IP is not affected
    c3 = await Client.connect(lst.sockname, local_ip="127.0.0.2")
    await c3.ehlo()
    await c3.starttls(client_tls)
    await c3.ehlo()
    assert (await c3.auth_plain())[0] == 235
    await c3.close()


async def authed_attempt(lst, client_tls):
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    result = await c.auth_plain()
    assert await c.is_closed()
    return result


async def test_trusted_network_submits_without_auth(make_listener):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    ext = await c.ehlo()
    assert not any(e.startswith("AUTH") for e in ext)   # no AUTH over clear text
    code, line = await c.mail(rcpts=("x@example.net", "y@example.net"))
    assert code == 250
    msg = spool.messages[0][1]
    assert msg.credential is None
    assert b" with ESMTP id " in msg.body
    await c.close()


async def test_untrusted_network_still_needs_auth(make_listener):
    lst, _ = await make_listener(tls="none", trusted_networks=("10.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 530
    await c.close()


async def test_helo_session(make_listener):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.1/32",))
    c = await Client.connect(lst.sockname)
    assert await c.cmd("HELO old.example") == (250, "250 mx.test.example")
    assert await c.cmd("AUTH PLAIN x") == (500, "500 5.5.1 AUTH requires EHLO, not HELO")
    assert (await c.mail())[0] == 250
    assert b"from old.example ([127.0.0.1])\r\n\tby mx.test.example (mta) with SMTP id" in \
        spool.messages[0][1].body
    await c.close()


# -- limits and syntax ------------------------------------------------------------

async def test_oversize_declared_and_actual(make_listener):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     max_message_size=2000)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert await c.cmd("MAIL FROM:<a@example.com> SIZE=2001") == (552, "552 5.3.4 Message too big")
    assert (await c.cmd("MAIL FROM:<a@example.com> SIZE=100"))[0] == 250
    assert (await c.cmd("RCPT TO:<b@example.net>"))[0] == 250
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40 + b".\r\n"
    assert await c.data(big) == (552, "552 5.3.4 Message too big")
    assert spool.messages == []
    assert (await c.mail())[0] == 250       # the session goes on
    await c.close()


async def test_too_many_recipients(make_listener):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",),
                                     max_recipients=2)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 250
    assert (await c.cmd("RCPT TO:<1@example.net>"))[0] == 250
    assert (await c.cmd("RCPT TO:<2@example.net>"))[0] == 250
    assert await c.cmd("RCPT TO:<3@example.net>") == (452, "452 4.5.3 Too many recipients")
    assert (await c.data(b"Subject: x\r\n\r\nb\r\n.\r\n"))[0] == 250
    assert spool.messages[0][1].recipients == ("1@example.net", "2@example.net")
    await c.close()


@pytest.mark.parametrize("command,expected", [
    ("FOO bar", r"500 5\.5\.1 command \"FOO\" not recognized"),
    ("", r"500 5\.5\.2 Syntax error"),
    ("MAIL", r"501 5\.5\.2 Syntax: MAIL FROM: <address>"),
    ("MAIL TO:<a@b.example>", r"501 5\.5\.2 Syntax: MAIL FROM:"),
    ("MAIL FROM:<bad", r"501 5\.1\.7 Bad sender address syntax: bad"),
    ("MAIL FROM:<a@>", r"501 5\.1\.7 Bad sender address syntax: <a@>"),
    ("MAIL FROM:<user>", r"501 5\.1\.7 Bad sender address syntax: user \("),
    ("MAIL FROM:<a..b@example.com>", r"501 5\.1\.7 Bad sender address syntax: a\.\.b@example\.com"),
    ("MAIL FROM:<a@exa_mple.com>", r"501 5\.1\.7 Bad sender address syntax: a@exa_mple\.com"),
    ("MAIL FROM:<a@example.com> BODY=9BIT", r"501 5\.5\.4 BODY can only be"),
    ("MAIL FROM:<a@example.com> FOO=1", r"555 5\.5\.4 MAIL FROM parameters"),
    ("MAIL FROM:<a@example.com> SIZE=abc", r"501 5\.5\.2 Syntax"),
    ("MAIL FROM:<ü@example.com>", r"553 5\.6\.7 Non-ASCII address requires"),
    ("RCPT TO:<a@example.com>", r"503 5\.5\.1 need MAIL command"),
    ("DATA", r"503 5\.5\.1 need RCPT command"),
    ("RSET x", r"501 5\.5\.2 Syntax: RSET"),
    ("NOOP", r"250 2\.0\.0 OK"),
    ("RSET", r"250 2\.0\.0 OK"),
    ("HELP", r"250 2\.0\.0 Supported commands"),
    ("VRFY <a@example.com>", r"252 2\.0\.0 Cannot VRFY"),
    ("EXPN list", r"502 5\.5\.1 EXPN not implemented"),
    ("STARTTLS", r"454 4\.7\.0 TLS not available"),
    ("AUTH", r"538 5\.7\.11"),
    ("EHLO", r"501 5\.5\.2 Syntax: EHLO hostname"),
    ("X" * 600, r"500 5\.5\.2 Command line too long"),
])
async def test_syntax_errors_carry_enhanced_codes(make_listener, command, expected):
    lst, _ = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    code, line = await c.cmd(command)
    assert re.match(expected, line), line
    assert ESC.match(line), line
    await c.close()


@pytest.mark.parametrize("command,expected", [
    ("RCPT TO:<bad", r"501 5\.1\.3 Bad recipient address syntax: bad"),
    ("RCPT TO:<a@>", r"501 5\.1\.3 Bad recipient address syntax: <a@>"),
    ("RCPT TO:<nodomain>", r"501 5\.1\.3 Bad recipient address syntax: nodomain \("),
    ("RCPT TO:<>", r"501 5\.1\.3 Bad recipient address syntax"),
    ("RCPT TO:<a@example.com> NOTIFY=NEVER", r"555 5\.5\.4 RCPT TO parameters"),
    ("MAIL FROM:<a@example.com>", r"503 5\.5\.1 nested MAIL command"),
])
async def test_rcpt_syntax_errors(make_listener, command, expected):
    lst, _ = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 250
    code, line = await c.cmd(command)
    assert re.match(expected, line), line
    await c.close()


async def test_null_sender_and_smtputf8(make_listener):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert await c.cmd("MAIL FROM:<>") == (250, "250 2.1.0 Sender <> OK")
    assert (await c.cmd("RCPT TO:<b@example.net>"))[0] == 250
    assert (await c.data(b"Subject: x\r\n\r\nb\r\n.\r\n"))[0] == 250
    assert spool.messages[0][1].sender == ""
    assert (await c.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8".encode()))[0] == 250
    assert await c.cmd("RCPT TO:<josé@bücher.example>".encode()) == (
        250, "250 2.1.5 Recipient <josé@xn--bcher-kva.example> OK")   # as received (issue 10 item 23)
    assert (await c.data("Subject: ü\r\n\r\nb\r\n.\r\n".encode()))[0] == 250
    assert spool.messages[1][1].recipients == ("josé@xn--bcher-kva.example",)
    await c.close()


# -- storage and crashes --------------------------------------------------------------

async def test_storage_error_is_temporary_and_server_keeps_serving(make_listener, client_tls):
    spool = FakeSpool()
    spool.fail = [StorageError("index locked"), StorageError("ENOSPC", disk_full=True)]
    lst, _ = await make_listener(spool=spool)
    c = await authed(lst, client_tls)
    assert await c.mail() == (451, "451 4.3.0 Local storage error, try again later")
    assert await c.mail() == (452, "452 4.3.1 Insufficient system storage, try again later")
    code, line = await c.mail()
    assert code == 250 and len(spool.messages) == 1
    await c.close()


async def test_crash_in_enqueue_is_451_and_logged(make_listener, client_tls, caplog):
    spool = FakeSpool()
    spool.fail = [RuntimeError("boom in the spool")]
    lst, _ = await make_listener(spool=spool)
    c = await authed(lst, client_tls)
    with caplog.at_level(logging.ERROR, logger="mta.server"):
        assert await c.mail() == (451, "451 4.3.0 Internal error, try again later")
    assert "boom in the spool" in caplog.text and "Traceback" in caplog.text
    assert (await c.mail())[0] == 250       # same session, next transaction works
    await c.close()


async def test_crash_in_rcpt_hook_is_451(make_listener, client_tls):
    lst, spool = await make_listener()
    original = lst.handler.handle_RCPT
    calls = []

    async def crashing(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("bug")
        return await original(*args)

    lst.handler.handle_RCPT = crashing    # hooks are looked up per connection
    c = await authed(lst, client_tls)
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 250
    assert await c.cmd("RCPT TO:<b@example.net>") == (451, "451 4.3.0 Internal error, try again later")
    assert (await c.cmd("RCPT TO:<b@example.net>"))[0] == 250
    assert (await c.data(b"Subject: x\r\n\r\nb\r\n.\r\n"))[0] == 250
    await c.close()


async def test_crash_in_credentials_is_451(make_listener, client_tls, monkeypatch, credentials):
    lst, _ = await make_listener()

    def broken(name, password):
        raise OSError("disk gone")

    monkeypatch.setattr(credentials, "verify", broken)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    await c.starttls(client_tls)
    await c.ehlo()
    assert await c.auth_plain() == (451, "451 4.3.0 Internal error, try again later")
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 530
    await c.close()


# -- lifecycle, logging -------------------------------------------------------------

async def test_idle_timeout_closes_session(make_listener):
    lst, _ = await make_listener(tls="none", idle_timeout=0.3)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    t0 = time.monotonic()
    assert await c.is_closed()
    assert 0.2 < time.monotonic() - t0 < 3


async def test_stop_closes_sessions_and_stops_accepting(make_listener):
    lst, _ = await make_listener(tls="none")
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    addr = lst.sockname
    await lst.stop(grace=0.1)
    code, line = await c.reply()
    assert line == "421 4.3.2 Service shutting down, try again later"
    assert await c.is_closed()
    with pytest.raises(OSError):
        await Client.connect(addr)


async def test_stop_lets_data_in_flight_finish(make_listener):
    lst, spool = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<a@example.com>"))[0] == 250
    assert (await c.cmd("RCPT TO:<b@example.net>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    await c.send(b"Subject: slow\r\n\r\nfirst half\r\n")
    stopping = asyncio.create_task(lst.stop(grace=5))
    await asyncio.sleep(0.2)
    await c.send(b"second half\r\n.\r\n")
    code, line = await c.reply()
    assert code == 250
    await stopping
    assert len(spool.messages) == 1


async def test_logs_one_line_per_message_and_no_secrets(make_listener, client_tls, caplog):
    caplog.set_level(logging.DEBUG)
    lst, spool = await make_listener()
    c = await authed(lst, client_tls)
    await c.auth_plain()
    await c.mail()
    await c.close()
    qid = spool.messages[0][0]
    received = [r.getMessage() for r in caplog.records if "event=received" in r.getMessage()]
    assert received == [f"event=received id={qid} sender=<app@example.com> rcpts=1 "
                        f"size={len(spool.messages[0][1].body)} listener=submission "
                        f"client=127.0.0.1 credential={USER}"]
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert PASSWORD not in caplog.text and token not in caplog.text
    assert logging.getLogger("mail.log").getEffectiveLevel() >= logging.WARNING


async def test_real_spool_end_to_end(make_listener, client_tls, tmp_path):
    """With mta.spool present, the 250 names an id the real spool holds, body and all."""
    spool_mod = pytest.importorskip("mta.spool")
    spool = await spool_mod.Spool.open(tmp_path / "state", now=1_700_000_000.0)
    try:
        lst, _ = await make_listener(spool=spool)
        c = await authed(lst, client_tls)
        code, line = await c.mail(rcpts=("a@example.net", "b@example.net"))
        assert code == 250
        qid = line.rsplit(" ", 1)[1]
        body = await spool.read_body(qid)
        assert body.startswith(b"Received: from client.example.org ([127.0.0.1])")
        assert f"with ESMTPSA id {qid};".encode() in body
        view = await spool.get_message(qid)
        assert view is not None
        await c.close()
    finally:
        await spool.close()


# ---- the MAIL/RCPT path parser's fast path ---------------------------------------

_PATHS = ["<a@b.c>", " <a@b.c> SIZE=10", "<a.b+c@x-y.example> BODY=8BITMIME SMTPUTF8", "<>",
          "<a@b>", "<.a@b.c>", "<a.@b.c>", "<a..b@c.d>", '<"a b"@c.d>', "<a@[127.0.0.1]>",
          "<@relay:a@b.c>", "<a@b.c>x", "<a@b.c>  ", "a@b.c", "<a@-b.c>", "<a@b..c>",
          "<a@b.c.>", "<ü@b.c>", "<a@ü.c>", "<a@b.c", "<a(comment)@b.c>", "\t<a@b.c>",
          "<A@B.C>", "<" + "x" * 64 + "@b.c>", "<" + "x" * 65 + "@b.c>", "<a@b_c.d>",
          "<a@b.c> <d@e.f>", "<a@b.c> (c) SIZE=1", "<a@b.c>\t(c)x", "", "<a@b.c>\tSIZE=1"]


@pytest.mark.parametrize("arg", _PATHS)
def test_getaddr_fast_path_equals_aiosmtpd(arg):
    """SubmissionSMTP._getaddr answers <dot-atom@dot-atom> itself; for every
    form (fast or not) the result is exactly aiosmtpd's."""
    from aiosmtpd.smtp import SMTP

    from mta.server.protocol import SubmissionSMTP
    ours, theirs = object.__new__(SubmissionSMTP), object.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = 64
    assert SubmissionSMTP._getaddr(ours, arg) == SMTP._getaddr(theirs, arg)


def test_getaddr_fast_path_is_taken_for_the_common_form():
    from mta.server.protocol import _SIMPLE_PATH
    fast = [p for p in _PATHS if p and _SIMPLE_PATH.match(p)]
    assert "<a.b+c@x-y.example> BODY=8BITMIME SMTPUTF8" in fast and len(fast) >= 10
    assert not _SIMPLE_PATH.match("<ü@b.c>") and not _SIMPLE_PATH.match('<"a b"@c.d>')
