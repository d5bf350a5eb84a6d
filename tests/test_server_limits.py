"""Limits that must hold against hostile clients (issue 10 items 1, 2, 5, 9):
parallel AUTH guessing, session counts, sessions held open, overlong AUTH
lines, PLAIN authorization identities. Real loopback sockets throughout;
127.0.0.x addresses stand for distinct clients."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import shutil

import pytest

from mta.core import Observer
from mta.policy.authlimit import (FREE, GO, LOCKED, WAIT, AuthThrottle, UserThrottle,
                                  throttle_key)
from mta.server import CredentialStore
from tests.test_server import (PASSWORD, USER, Client, credentials,  # noqa: F401 (fixtures)
                               make_listener)
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)

PLAIN = {"tls": "none", "require_tls_for_auth": False}


class Counting(Observer):
    def __init__(self):
        self.refused: list[tuple[str, str]] = []
        self.auth_failures = 0
        self.closed = 0

    def session_closed(self, listener):
        self.closed += 1

    def session_refused(self, listener, reason):
        self.refused.append((listener, reason))

    def auth_failure(self, listener):
        self.auth_failures += 1


class CountingStore(CredentialStore):
    """The real store; counts how many passwords were actually checked."""
    checks = 0

    def verify(self, name, password):
        type(self).checks += 1
        return super().verify(name, password)


@pytest.fixture
def counting_credentials(tmp_path):
    CountingStore.checks = 0
    store = CountingStore(tmp_path / "counting.json")
    store.add(USER, PASSWORD)
    return store


async def _auth(addr, password, *, local_ip=None, user=USER) -> tuple[int, str]:
    c = await Client.connect(addr, local_ip=local_ip)
    try:
        await c.ehlo()
        return await c.auth_plain(user=user, password=password)
    except ConnectionError as exc:      # closed by a 421 lockout
        return 421, str(exc)
    finally:
        await c.close()


# -- item 1: the AUTH limit holds however many connections run in parallel -----

async def test_parallel_guesses_from_one_ip_get_at_most_max_failures_checks(
        make_listener, counting_credentials):
    lst, _ = await _listener_with(make_listener, counting_credentials,
                                  throttle=AuthThrottle(5, 300, delay_step=0.0))
    replies = await asyncio.gather(*(_auth(lst.sockname, f"guess-{i}") for i in range(60)))
    codes = [code for code, _ in replies]
    assert CountingStore.checks == 5, (CountingStore.checks, codes)
    assert set(codes) <= {535, 421} and codes.count(421) >= 55
    # locked: even the right password is not checked now
    assert (await _auth(lst.sockname, PASSWORD))[0] == 421
    assert CountingStore.checks == 5
    # another client is not affected
    assert (await _auth(lst.sockname, PASSWORD, local_ip="127.0.0.2"))[0] == 235


async def test_guesses_for_one_user_from_many_ips_are_limited(make_listener,
                                                              counting_credentials):
    lst, _ = await _listener_with(make_listener, counting_credentials,
                                  throttle=AuthThrottle(1000, 300, delay_step=0.0),
                                  user_throttle=UserThrottle(5, 300))
    # the owner logs in from 127.0.0.9 before the attack
    assert (await _auth(lst.sockname, PASSWORD, local_ip="127.0.0.9"))[0] == 235
    CountingStore.checks = 0
    replies = await asyncio.gather(*(
        _auth(lst.sockname, f"guess-{i}", local_ip=f"127.0.{1 + i // 200}.{1 + i % 200}")
        for i in range(40)))
    codes = [code for code, _ in replies]
    assert CountingStore.checks == 5, codes
    assert codes.count(535) == 5 and codes.count(454) == 35
    assert all(line == "454 4.7.0 Temporary authentication failure: too many failed attempts "
               "for this user, try again later" for code, line in replies if code == 454)
    # from a new address, the right password is refused unchecked …
    assert (await _auth(lst.sockname, PASSWORD, local_ip="127.0.3.3"))[0] == 454
    assert CountingStore.checks == 5
    # … but the owner's known address still gets in
    assert (await _auth(lst.sockname, PASSWORD, local_ip="127.0.0.9"))[0] == 235
    # other users are not affected
    counting_credentials.add("other", "other-Password-1")
    assert (await _auth(lst.sockname, "other-Password-1", local_ip="127.0.3.4",
                        user="other"))[0] == 235


async def _listener_with(make_listener, store, **kw):
    """make_listener with another credential store."""
    kw.setdefault("max_sessions_per_ip", 1000)
    return await make_listener(**PLAIN, credentials=store, **kw)


def test_ipv6_clients_are_counted_by_their_64():
    assert throttle_key("2001:db8:1:2:aaaa::1") == throttle_key("2001:db8:1:2:bbbb::2")
    assert throttle_key("2001:db8:1:3::1") != throttle_key("2001:db8:1:2::1")
    assert throttle_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert throttle_key("192.0.2.7") == "192.0.2.7"


def test_user_throttle_forgives_the_owner_but_not_the_guesses():
    t = UserThrottle(3, 60)
    assert t.begin("u", "a", 0.0) == GO
    t.end("u", "a", 0.0, ok=True, counted=True)      # a correct login does not count
    for i in range(3):
        assert t.begin("u", "evil", 1.0 + i) == GO
        t.end("u", "evil", 1.0 + i, ok=False, counted=True)
    assert t.begin("u", "evil", 5.0) == LOCKED      # locked for everyone but "a"
    assert t.begin("u", "new", 5.0) == LOCKED
    assert t.begin("u", "a", 5.0) == FREE
    assert t.begin("u", "new", 64.0) == GO          # lock over (locked at 3.0 for 60 s)


def test_throttle_budget_counts_checks_in_flight():
    t = AuthThrottle(3, 60, delay_step=0.0)
    assert [t.begin("k", 0.0)[0] for _ in range(4)] == [GO, GO, GO, WAIT]
    t.end("k", 0.0, ok=True)                         # a success frees its slot …
    assert t.begin("k", 0.0)[0] == GO
    for _ in range(3):
        t.end("k", 0.0, ok=False)                    # … three failures lock
    assert t.begin("k", 1.0)[0] == LOCKED


async def test_parallel_logins_with_the_right_password_all_succeed(make_listener,
                                                                  counting_credentials):
    lst, _ = await _listener_with(make_listener, counting_credentials,
                                  throttle=AuthThrottle(5, 300, delay_step=0.0),
                                  user_throttle=UserThrottle(5, 300))
    replies = await asyncio.gather(*(_auth(lst.sockname, PASSWORD) for _ in range(25)))
    assert [code for code, _ in replies] == [235] * 25


# -- item 2: session limits --------------------------------------------------------

async def test_sessions_per_ip_and_per_listener_are_capped(make_listener, caplog):
    obs = Counting()
    lst, _ = await make_listener(**PLAIN, max_sessions=5, max_sessions_per_ip=3, observer=obs)
    held = [await Client.connect(lst.sockname) for _ in range(3)]
    over = await Client.connect(lst.sockname, greet=False)
    assert await over.reply() == (421, "421 4.7.0 Too many connections from your address, "
                                       "try again later")
    assert await over.is_closed()
    held += [await Client.connect(lst.sockname, local_ip="127.0.0.2") for _ in range(2)]
    full = await Client.connect(lst.sockname, local_ip="127.0.0.3", greet=False)
    assert await full.reply() == (421, "421 4.7.0 Too many connections, try again later")
    assert obs.refused == [("submission", "max_sessions_per_ip"),
                           ("submission", "max_sessions")]
    assert "event=session_limit listener=submission client=127.0.0.1 " \
           "reason=max_sessions_per_ip" in caplog.text
    # a slot freed is a slot again
    await held.pop(0).close()
    for _ in range(50):
        if obs.closed:
            break
        await asyncio.sleep(0.02)
    again = await Client.connect(lst.sockname)      # greeted (asserts 220)
    assert (await again.cmd("NOOP"))[0] == 250
    for c in held + [again, over, full]:
        await c.close()


async def test_trusted_networks_are_exempt_from_the_per_ip_limit(make_listener):
    lst, _ = await make_listener(**PLAIN, max_sessions_per_ip=2,
                                 trusted_networks=("127.0.0.1/32",))
    held = [await Client.connect(lst.sockname) for _ in range(4)]   # all greeted
    other = await Client.connect(lst.sockname, local_ip="127.0.0.2")
    other2 = await Client.connect(lst.sockname, local_ip="127.0.0.2")
    third = await Client.connect(lst.sockname, local_ip="127.0.0.2", greet=False)
    assert (await third.reply())[0] == 421
    for c in held + [other, other2, third]:
        await c.close()


async def test_noop_cannot_hold_a_session_forever(make_listener, client_tls):
    obs = Counting()
    lst, spool = await make_listener(**PLAIN, max_junk_commands=5, observer=obs)
    c = await Client.connect(lst.sockname)
    await c.ehlo()                                   # junk 1
    for _ in range(4):
        assert (await c.cmd("NOOP"))[0] == 250       # junk 2..5
    assert (await c.auth_plain())[0] == 235
    assert (await c.mail())[0] == 250                # a message resets the count
    for _ in range(5):
        assert (await c.cmd("RSET"))[0] == 250
    assert await c.cmd("NOOP") == (421, "421 4.7.0 Too many commands without mail, "
                                        "closing connection")
    assert await c.is_closed()
    assert obs.refused == [("submission", "junk_commands")]
    assert len(spool.messages) == 1


async def test_transaction_time_is_limited(make_listener):
    obs = Counting()
    lst, spool = await make_listener(**PLAIN, transaction_timeout=0.5, idle_timeout=30,
                                     observer=obs)
    c = await _in_data(lst)
    reply = asyncio.ensure_future(c.reply())         # read while we write
    for _ in range(10):                              # trickle: never idle, never done
        if reply.done():
            break
        try:
            await c.send(b"X-Slow: yes\r\n")
        except ConnectionError:
            break
        await asyncio.sleep(0.2)
    assert await reply == (421, "421 4.4.2 Transaction time limit exceeded, "
                                    "closing connection")
    assert await c.is_closed()
    assert spool.messages == []
    assert obs.refused == [("submission", "transaction_timeout")]


async def test_a_slow_but_steady_data_is_not_idle(make_listener):
    lst, spool = await make_listener(**PLAIN, idle_timeout=1)
    c = await _in_data(lst)
    await c.send(b"Subject: slow\r\n\r\n")
    for i in range(6):                               # 2.4 s in all, 0.4 s apart
        await asyncio.sleep(0.4)
        await c.send(b"line %d\r\n" % i)
    await c.send(b".\r\n")
    code, line = await c.reply()
    assert code == 250, line
    await c.close()


async def test_listen_backlog_is_the_configured_one(make_listener):
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed: cannot read a socket's backlog")
    lst, _ = await make_listener(**PLAIN, listen_backlog=777)
    port = lst.sockname[1]
    out = subprocess.run([ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    # State Recv-Q Send-Q …: for a listening socket Send-Q is the backlog
    assert out[0] == "LISTEN" and out[2] == "777", out


async def _in_data(lst) -> Client:
    """A logged-in session that has just been told 354."""
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.auth_plain())[0] == 235
    assert (await c.cmd("MAIL FROM:<app@example.com>"))[0] == 250
    assert (await c.cmd("RCPT TO:<bob@example.net>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    return c


# -- item 5: an overlong AUTH answer ------------------------------------------------

async def test_overlong_auth_answer_is_500_counted_and_in_step(make_listener, caplog):
    obs = Counting()
    lst, _ = await make_listener(**PLAIN, observer=obs)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("AUTH PLAIN"))[1] == "334 "
    assert await c.cmd(b"A" * 20_000) == (500, "500 5.5.6 Authentication exchange line is "
                                               "too long")
    assert (await c.cmd("NOOP"))[0] == 250           # in step: one reply per line
    assert obs.auth_failures == 1
    # up to 12288 octets is a normal answer (RFC 4954 §4)
    long_pw = "p" * 6000
    token = base64.b64encode(f"\0{USER}\0{long_pw}".encode())
    assert len(token) > 1001
    assert (await c.cmd("AUTH PLAIN"))[1] == "334 "
    assert (await c.cmd(token))[1].startswith("535 5.7.8")
    assert (await c.auth_plain())[0] == 235
    assert "Traceback" not in caplog.text and "session_error" not in caplog.text
    await c.close()


async def test_endless_auth_answer_closes_the_session(make_listener, caplog):
    lst, _ = await make_listener(**PLAIN)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("AUTH LOGIN"))[0] == 334
    await c.send(b"QUIT" * 50_000)                   # 200 KB, no line end
    assert await c.reply() == (500, "500 5.5.6 Authentication exchange line is too long")
    assert await c.is_closed()
    assert "Traceback" not in caplog.text


# -- item 9: PLAIN with another authorization identity -------------------------------

async def test_plain_authzid_must_equal_the_user(make_listener):
    lst, _ = await make_listener(**PLAIN)
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    other = base64.b64encode(f"admin\0{USER}\0{PASSWORD}".encode()).decode()
    assert await c.cmd(f"AUTH PLAIN {other}") == (
        535, "535 5.7.8 Authentication credentials invalid: the authorization identity must "
             "be empty or equal to the user name")
    same = base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()).decode()
    assert (await c.cmd(f"AUTH PLAIN {same}"))[0] == 235
    await c.close()
