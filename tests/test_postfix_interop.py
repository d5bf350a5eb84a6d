"""The SMTP client against a real Postfix smtpd (issue 12): PIPELINING and
CHUNKING as another implementation reads them.

An isolated Postfix instance (its own config, queue and log under a
temporary directory, listening on loopback only, DNS off) accepts from
SmtpTransport on two ports — one offering CHUNKING, one with it discarded
from EHLO — and relays what it accepts to the scripted sink, so the body is
compared byte for byte after a second hop. Postfix's own log says which
commands it saw (`bdat=1` / `data=1` on its disconnect line).

Skipped, saying why, where Postfix is not installed or the tests do not run
as root (Postfix's master starts as root and drops to `mail_owner`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mta.core.envelope import Destination
from mta.core.outcome import RecipientFate
from mta.delivery.client import OutboundMessage, SmtpTransport
from tests.support.sink import Sink

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DAEMONS = Path("/usr/lib/postfix/sbin")

pytestmark = [
    pytest.mark.skipif(not (os.path.exists(POSTFIX) and (DAEMONS / "smtpd").exists()),
                       reason="Postfix is not installed (apt-get install postfix)"),
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="Postfix's master must be started as root"),
]

BODY = (b"From: a@sender.test\r\nTo: ok@example.test\r\nSubject: interop\r\n"
        b"Date: Sat, 6 Dec 2025 23:00:00 +0000\r\nMessage-ID: <interop@sender.test>\r\n\r\n"
        b"first\r\n.\r\n..two dots\r\n.one dot\r\n" + b"x" * 70 + b"\r\nlast\r\n")

MASTER_CF = """\
127.0.0.1:{chunking} inet n - n - - smtpd
127.0.0.1:{plain} inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=chunking
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def main_cf(base: Path, sink_port: int) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
command_directory = /usr/sbin
daemon_directory = {DAEMONS}
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = mta-interop
maillog_file = {base}/log/postfix.log
maillog_file_prefixes = {base}/log
myhostname = postfix.test
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery
alias_maps =
alias_database =
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_bind_address = 127.0.0.1
smtpd_peername_lookup = no
local_header_rewrite_clients =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ {{ reject@example.test = 550 5.1.1 no such user }} }}
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp:[127.0.0.1]:{sink_port}
relay_transport = smtp:[127.0.0.1]:{sink_port}
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


class Postfix:
    def __init__(self, base: Path, sink_port: int):
        self.base, self.etc = base, base / "etc"
        self.chunking, self.plain = free_port(), free_port()
        for sub in ("etc", "spool", "data", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (self.etc / "main.cf").write_text(main_cf(base, sink_port))
        (self.etc / "master.cf").write_text(MASTER_CF.format(chunking=self.chunking,
                                                             plain=self.plain))
        shutil.chown(base / "data", "postfix")
        (base / "log" / "postfix.log").touch()

    def run(self, *args: str) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                              text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"postfix {' '.join(args)}: {done.stderr or done.stdout}")

    def start(self) -> None:
        self.run("check")                # creates the queue directories
        self.run("start")
        deadline = time.monotonic() + 15
        while not (listening(self.chunking) and listening(self.plain)):
            if time.monotonic() > deadline:
                raise RuntimeError("Postfix did not start listening")
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            self.run("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass

    def log(self) -> str:
        return (self.base / "log" / "postfix.log").read_text(errors="replace")


@pytest.fixture
async def relay():
    # Not under pytest's tmp_path: its parents are 0700 and Postfix's
    # daemons, running as mail_owner, must reach their queue and data.
    base = Path(tempfile.mkdtemp(prefix="mta-interop-postfix-"))
    base.chmod(0o755)
    async with Sink(tls=False) as sink:
        postfix = Postfix(base, sink.port)
        try:
            await asyncio.to_thread(postfix.start)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            postfix.stop()
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip(f"could not start an isolated Postfix: {exc}")
        try:
            yield postfix, sink
        finally:
            await asyncio.to_thread(postfix.stop)
            shutil.rmtree(base, ignore_errors=True)


class Loopback:
    async def addresses(self, host: str) -> list[str]:
        return [host]


@pytest.mark.parametrize("chunking", [True, False])
async def test_pipelined_delivery_to_postfix(relay, chunking):
    postfix, sink = relay
    port = postfix.chunking if chunking else postfix.plain
    t = SmtpTransport(hostname="mta.test", resolver=Loopback(), connect_timeout=5,
                      command_timeout=30)
    dest = Destination(name=f"[127.0.0.1]:{port}", kind="route", host="127.0.0.1", port=port)
    msgs = [OutboundMessage("Q1", "a@sender.test",
                            ((0, "ok@example.test"), (1, "reject@example.test"),
                             (2, "ok2@example.test")), BODY),
            OutboundMessage("Q2", "a@sender.test", ((0, "ok3@example.test"),), BODY)]
    try:
        report = await t.deliver(dest, msgs)
    finally:
        await t.close()
    q1 = report.outcomes["Q1"]
    assert [o.fate for o in q1.values()] == [RecipientFate.DELIVERED, RecipientFate.BOUNCED,
                                              RecipientFate.DELIVERED]
    # Postfix counts the octets of a BDAT transfer in its reply
    counted = f"{len(BODY)} bytes " if chunking else ""
    assert str(q1[0].reply).startswith(f"250 2.0.0 Ok: {counted}queued as "), q1[0].reply
    assert str(q1[1].reply) == ("550 5.1.1 <reject@example.test>: Recipient address "
                                "rejected: no such user")
    assert report.outcomes["Q2"][0].fate is RecipientFate.DELIVERED
    # Postfix relays both to the sink; the body arrives as it was stored,
    # under the Received: line Postfix prepends.
    got = await sink.wait_for(2, timeout=30)
    assert sorted(sorted(m.rcpt_tos) for m in got) == [["ok2@example.test", "ok@example.test"],
                                                        ["ok3@example.test"]]
    for m in got:
        assert m.data.startswith(b"Received: ") and m.data.endswith(BODY), m.data
    verb = "bdat=2" if chunking else "data=2"
    deadline = time.monotonic() + 10
    while not (lines := [x for x in postfix.log().splitlines() if " mail=" in x]):
        assert time.monotonic() < deadline, postfix.log()
        await asyncio.sleep(0.1)
    # (the start-up probes' connections log no mail=)
    [line] = lines
    assert f"ehlo=1 mail=2 rcpt=3/4 {verb} quit=1" in line, line
