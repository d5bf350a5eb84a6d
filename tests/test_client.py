"""SmtpTransport end to end: real DNS on 127.0.0.153, a scripted aiosmtpd sink with
STARTTLS on loopback, real sockets throughout (docs/ARCHITECTURE.md §8 item 10)."""

from __future__ import annotations

import socket

import pytest

from mta.core.envelope import Destination
from mta.core.outcome import DestinationHealth, RecipientFate
from mta.delivery.client import DeliveryReport, OutboundMessage, SmtpTransport
from mta.delivery.resolver import DnsResolver
from tests.support.dnsserver import DnsServer
from tests.support.sink import Sink

DELIVERED, DEFERRED, BOUNCED = RecipientFate.DELIVERED, RecipientFate.DEFERRED, RecipientFate.BOUNCED
OK, DOWN, THROTTLING = DestinationHealth.OK, DestinationHealth.DOWN, DestinationHealth.THROTTLING

ZONE = {
    "example.test": {"MX": [(10, "mx1.example.test")]},
    "mx1.example.test": {"A": ["127.0.0.1"]},
    "two.test": {"MX": [(10, "down.two.test"), (20, "up.two.test")]},
    "down.two.test": {"A": ["127.0.0.3"]},      # nothing listens there
    "up.two.test": {"A": ["127.0.0.1"]},
    "dead.test": {"MX": [(10, "down.two.test")]},
    "implicit.test": {"A": ["127.0.0.1"]},
    "v6only.test": {"AAAA": ["::1"]},
    "nullmx.test": {"MX": [(0, ".")]},
}

BODY = b"From: a@sender.test\r\nTo: x@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
async def dns():
    async with DnsServer(ZONE, servfail={"servfail.test"}, timeout={"slowdns.test"}) as server:
        yield server


@pytest.fixture
async def sink():
    async with Sink() as s:
        yield s


def transport(dns, command_timeout: float = 5.0) -> SmtpTransport:
    return SmtpTransport(hostname="mta.test", resolver=DnsResolver([dns.nameserver], timeout=0.3,
                                                                   cache=False),
                         connect_timeout=2.0, command_timeout=command_timeout)


def mx(domain: str, port: int) -> Destination:
    return Destination(name=domain, kind="mx", domain=domain, port=port)


def message(qid: str, *addresses: str, body: bytes = BODY, sender: str = "a@sender.test"):
    return OutboundMessage(qid, sender, tuple(enumerate(addresses)), body)


def check_complete(report: DeliveryReport, messages) -> None:
    """The invariant: every recipient of every message has exactly one outcome."""
    assert set(report.outcomes) == {m.queue_id for m in messages}
    for m in messages:
        assert set(report.outcomes[m.queue_id]) == {i for i, _ in m.recipients}


async def deliver(t: SmtpTransport, dest: Destination, *messages) -> DeliveryReport:
    report = await t.deliver(dest, list(messages))
    check_complete(report, messages)
    return report


async def test_delivers_over_starttls_and_records_it(dns, sink):
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "ok@example.test"))
    out = report.outcomes["Q1"][0]
    assert report.health is OK
    assert out.fate is DELIVERED
    assert (out.reply.code, out.reply.esc, out.reply.text) == (250, "2.0.0", "Ok: queued as SINK00001")
    assert (out.remote_host, out.remote_ip) == ("mx1.example.test", "127.0.0.1")
    assert out.tls.startswith("TLSv1.")
    [got] = sink.messages
    assert got.tls == out.tls
    assert got.mail_from == "a@sender.test" and got.rcpt_tos == ["ok@example.test"]
    assert got.helo == "mta.test"
    assert f"SIZE={len(BODY)}" in got.mail_options
    assert got.data == BODY


async def test_mixed_recipients_in_one_transaction(dns, sink):
    msg = message("Q1", "ok@example.test", "tempfail-1@example.test", "reject@example.test",
                  "other@example.test")
    t = transport(dns)
    report = await deliver(t, mx("example.test", sink.port), msg)
    o = report.outcomes["Q1"]
    assert report.health is OK  # one 550 says nothing about the destination
    assert [o[i].fate for i in range(4)] == [DELIVERED, DEFERRED, BOUNCED, DELIVERED]
    assert str(o[1].reply) == ("451 4.7.1 <tempfail-1@example.test>: Recipient address "
                               "rejected: greylisted, try again later")
    assert str(o[2].reply) == ("550 5.1.1 <reject@example.test>: Recipient address rejected: "
                               "User unknown")
    assert all(x.tls for x in o.values())
    [got] = sink.messages
    assert got.rcpt_tos == ["ok@example.test", "other@example.test"]

    # Next attempt for the deferred one only: the sink now accepts it.
    retry = OutboundMessage("Q1", "a@sender.test", ((1, "tempfail-1@example.test"),), BODY)
    report = await deliver(t, mx("example.test", sink.port), retry)
    assert report.outcomes["Q1"][1].fate is DELIVERED
    assert sink.rcpt_attempts["tempfail-1@example.test"] == 2


async def test_all_recipients_refused_sends_no_data(dns, sink):
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "reject@example.test", "tempfail-5@example.test"),
                           message("Q2", "ok@example.test"))
    assert [o.fate for o in report.outcomes["Q1"].values()] == [BOUNCED, DEFERRED]
    assert report.outcomes["Q2"][0].fate is DELIVERED
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.test"]]
    assert sink.connections == 1   # RSET, then the same connection carried Q2


async def test_several_messages_share_one_connection(dns, sink):
    msgs = [message(f"Q{i}", f"ok{i}@example.test", "reject@example.test") for i in range(4)]
    report = await deliver(transport(dns), mx("example.test", sink.port), *msgs)
    assert report.health is OK
    for m in msgs:
        assert [o.fate for o in report.outcomes[m.queue_id].values()] == [DELIVERED, BOUNCED]
    assert sink.connections == 1
    assert [m.connection for m in sink.messages] == [1, 1, 1, 1]
    assert [m.rcpt_tos for m in sink.messages] == [[f"ok{i}@example.test"] for i in range(4)]


async def test_drop_defers_that_message_and_continues_on_a_new_connection(dns, sink):
    msgs = [message("Q1", "ok@example.test"),
            message("Q2", "ok@example.test", "drop@example.test"),
            message("Q3", "ok@example.test")]
    report = await deliver(transport(dns), mx("example.test", sink.port), *msgs)
    assert report.outcomes["Q1"][0].fate is DELIVERED
    q2 = report.outcomes["Q2"]
    assert [q2[0].fate, q2[1].fate] == [DEFERRED, DEFERRED]
    assert (q2[0].reply.code, q2[0].reply.esc) == (451, "4.4.2")
    assert "connection lost" in q2[0].reply.text and "DATA" in q2[0].reply.text
    assert "mx1.example.test[127.0.0.1]" in q2[0].reply.text
    assert report.outcomes["Q3"][0].fate is DELIVERED
    assert report.health is OK
    assert sink.connections == 2
    assert [m.connection for m in sink.messages] == [1, 2]


async def test_second_lost_connection_means_down(dns, sink):
    msgs = [message("Q1", "drop1@example.test"), message("Q2", "drop2@example.test"),
            message("Q3", "ok@example.test")]
    report = await deliver(transport(dns), mx("example.test", sink.port), *msgs)
    assert report.health is DOWN
    assert all(report.outcomes[q][0].fate is DEFERRED for q in ("Q1", "Q2", "Q3"))
    assert report.outcomes["Q3"][0].reply.esc == "4.4.2"
    assert sink.messages == []


async def test_slow_answer_within_timeout_is_delivered(dns, sink):
    report = await deliver(transport(dns, command_timeout=5), mx("example.test", sink.port),
                           message("Q1", "slow-300@example.test"))
    assert report.outcomes["Q1"][0].fate is DELIVERED


async def test_slow_answer_past_timeout_is_deferred(dns, sink):
    msgs = [message("Q1", "slow-3000@example.test"), message("Q2", "ok@example.test")]
    report = await deliver(transport(dns, command_timeout=0.5), mx("example.test", sink.port),
                           *msgs)
    q1 = report.outcomes["Q1"][0]
    assert q1.fate is DEFERRED and q1.reply.esc == "4.4.2"
    assert "timed out" in q1.reply.text
    assert report.outcomes["Q2"][0].fate is DELIVERED
    assert report.health is OK


async def test_421_defers_the_rest_and_reports_throttling(dns, sink):
    msgs = [message("Q1", "ok@example.test"),
            message("Q2", "ok@example.test", "throttle@example.test", "ok2@example.test"),
            message("Q3", "ok@example.test")]
    report = await deliver(transport(dns), mx("example.test", sink.port), *msgs)
    assert report.health is THROTTLING
    assert report.outcomes["Q1"][0].fate is DELIVERED
    text = "421 4.7.0 sink.test Error: too many connections from you, slow down"
    for qid, idx in (("Q2", 0), ("Q2", 1), ("Q2", 2), ("Q3", 0)):
        out = report.outcomes[qid][idx]
        assert out.fate is DEFERRED and str(out.reply) == text
    assert len(sink.messages) == 1


async def test_nothing_listening_means_down_with_441(dns, sink):
    report = await deliver(transport(dns), mx("dead.test", sink.port),
                           message("Q1", "ok@dead.test", "ok2@dead.test"),
                           message("Q2", "ok@dead.test"))
    assert report.health is DOWN
    for per_msg in report.outcomes.values():
        for out in per_msg.values():
            assert out.fate is DEFERRED
            assert (out.reply.code, out.reply.esc) == (451, "4.4.1")
            assert f"down.two.test[127.0.0.3]:{sink.port}" in out.reply.text
            assert "dead.test" in out.reply.text


async def test_falls_back_to_the_second_mx(dns, sink):
    report = await deliver(transport(dns), mx("two.test", sink.port),
                           message("Q1", "ok@two.test"))
    out = report.outcomes["Q1"][0]
    assert out.fate is DELIVERED and out.remote_host == "up.two.test"
    assert len(sink.messages) == 1


async def test_implicit_mx(dns, sink):
    report = await deliver(transport(dns), mx("implicit.test", sink.port),
                           message("Q1", "ok@implicit.test"))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    assert report.outcomes["Q1"][0].remote_host == "implicit.test"


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_aaaa_only_over_ipv6_loopback(dns):
    async with Sink(host="::1") as sink6:
        report = await deliver(transport(dns), mx("v6only.test", sink6.port),
                               message("Q1", "ok@v6only.test"))
    out = report.outcomes["Q1"][0]
    assert out.fate is DELIVERED and out.remote_ip == "::1"
    assert len(sink6.messages) == 1


@pytest.mark.parametrize("domain, fate, code, esc, health", [
    ("nullmx.test", BOUNCED, 556, "5.1.10", OK),
    ("nosuch.test", BOUNCED, 550, "5.1.2", OK),
    ("servfail.test", DEFERRED, 451, "4.4.3", DOWN),
    ("slowdns.test", DEFERRED, 451, "4.4.3", DOWN),
])
async def test_dns_outcomes(dns, sink, domain, fate, code, esc, health):
    report = await deliver(transport(dns), mx(domain, sink.port),
                           message("Q1", f"ok@{domain}", f"ok2@{domain}"))
    assert report.health is health
    for out in report.outcomes["Q1"].values():
        assert (out.fate, out.reply.code, out.reply.esc) == (fate, code, esc)
        assert domain in out.reply.text
    assert sink.connections == 0


async def test_dot_stuffing_keeps_the_body_intact(dns, sink):
    body = (b"Subject: dots\r\n\r\nfirst\r\n.\r\n..x\r\n.y\r\n. \r\n...\r\nlast\r\n")
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "ok@example.test", body=body))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    assert sink.messages[0].data == body


async def test_failed_tls_handshake_retries_in_clear_text(dns):
    async with Sink(tls="broken") as broken:
        report = await deliver(transport(dns), mx("example.test", broken.port),
                               message("Q1", "ok@example.test"))
    out = report.outcomes["Q1"][0]
    assert out.fate is DELIVERED and out.tls == ""
    assert broken.connections == 2
    assert broken.messages[0].tls is None


async def test_clear_text_when_starttls_not_offered(dns):
    async with Sink(tls=False) as plain:
        report = await deliver(transport(dns), mx("example.test", plain.port),
                               message("Q1", "ok@example.test"))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    assert report.outcomes["Q1"][0].tls == ""


async def test_smtputf8_used_when_offered(dns, sink):
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "ok-jürgen@example.test"))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    assert "SMTPUTF8" in sink.messages[0].mail_options
    assert sink.messages[0].rcpt_tos == ["ok-jürgen@example.test"]


async def test_smtputf8_missing_bounces_only_the_utf8_recipient(dns):
    async with Sink(smtputf8=False) as ascii_sink:
        report = await deliver(transport(dns), mx("example.test", ascii_sink.port),
                               message("Q1", "ok-jürgen@example.test", "ok@example.test"))
    o = report.outcomes["Q1"]
    assert (o[0].fate, o[0].reply.code, o[0].reply.esc) == (BOUNCED, 553, "5.6.7")
    assert o[1].fate is DELIVERED
    assert ascii_sink.messages[0].rcpt_tos == ["ok@example.test"]


async def test_route_to_an_ip_needs_no_dns(sink):
    class NoDns:
        async def mx(self, domain):
            raise AssertionError("routes do not look up MX")

        async def addresses(self, host):
            assert host == "127.0.0.1"
            return [host]
    t = SmtpTransport(hostname="mta.test", resolver=NoDns(), connect_timeout=2,
                      command_timeout=5)
    dest = Destination(name=f"[127.0.0.1]:{sink.port}", kind="route", host="127.0.0.1",
                       port=sink.port)
    report = await deliver(t, dest, message("Q1", "ok@anything.test"))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    assert report.outcomes["Q1"][0].remote_host == "127.0.0.1"


async def test_null_sender(dns, sink):
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "ok@example.test", sender=""))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    assert sink.messages[0].mail_from == ""  # the sink records <> as ""


def test_sink_thread_mode():
    import smtplib
    sink = Sink(tls=False).start_in_thread()
    try:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as c:
            c.sendmail("a@sender.test", ["ok@x.test"], BODY)
        assert sink.wait_for_sync(1, timeout=5)[0].rcpt_tos == ["ok@x.test"]
    finally:
        sink.stop_in_thread()


_MAILBOXES = ["", "a@b.c", "A.B+c@x-y.example", "ü@b.c", "a@ü.c", '"a b"@c.d', "a b@c.d",
              "<a@b.c>", "a@b.c>", "a@[1.2.3.4]", "a@b", "a", "a@b@c", "a(x)@b.c", "a,b@c.d",
              "a;b@c.d", "a:b@c.d", "a\\b@c.d", "a\r\nRCPT@b.c", "a@b.c ", " a@b.c", "a.@b.c",
              ".a@b.c", "a..b@c.d", "a@b..c", "a@-b.c", "a@b.c.", "postmaster", "é@é.fr",
              "a'b@c.d", "a{b}@c.d"]


@pytest.mark.parametrize("address", _MAILBOXES)
def test_smtp_path_equals_aiosmtplib_quote_address(address):
    """MAIL/RCPT paths are built by smtp_path (no parser for plain mailboxes):
    the same text as aiosmtplib's quote_address, or the same ValueError."""
    from aiosmtplib.email import quote_address

    from mta.delivery.client import smtp_path

    def outcome(fn):
        try:
            return fn(address)
        except ValueError:
            return ValueError
    assert outcome(smtp_path) == outcome(quote_address)


# ---- SIZE (issue 10 item 21) and log lines (item 25) -------------------------------

class SizedSink(Sink):
    """The scripted sink with aiosmtpd's own SIZE limit (`data_size_limit`:
    advertised in EHLO, enforced at MAIL and DATA), counting MAIL commands.
    `ehlo_size`: advertise this SIZE line instead (e.g. "SIZE 0"), no limit."""

    def __init__(self, limit: int | None, ehlo_size: str | None = None, **kw):
        super().__init__(**kw)
        self.limit, self.ehlo_size = limit, ehlo_size
        self.mail_commands: list[str] = []

    def _protocol(self):
        proto = super()._protocol()
        proto.data_size_limit = self.limit
        # aiosmtpd dispatches through these tables, built at construction
        smtp_mail = proto._smtp_methods["MAIL"]

        async def counted(arg):
            self.mail_commands.append(arg)
            return await smtp_mail(arg)
        proto._smtp_methods["MAIL"] = counted
        if self.ehlo_size is not None:
            async def ehlo(server, session, envelope, hostname, responses):
                session.host_name = hostname
                return [*responses[:1], f"250-{self.ehlo_size}", *responses[1:]]
            proto._handle_hooks["EHLO"], proto._ehlo_hook_ver = ehlo, "new"
        return proto


def sized_body(size: int) -> bytes:
    head = b"From: a@sender.test\r\nTo: x@example.test\r\nSubject: big\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    body = head + line * ((size - len(head)) // len(line))
    return body + b"y" * (size - len(body) - 2) + b"\r\n"


async def test_message_over_the_peers_size_limit_bounces_without_mail(dns):
    big = sized_body(1_500_000)
    async with SizedSink(1_000_000) as sink:
        report = await deliver(transport(dns), mx("example.test", sink.port),
                               message("Q1", "ok@example.test", "ok2@example.test", body=big))
    assert report.health is OK              # the peer did nothing wrong
    for out in report.outcomes["Q1"].values():
        assert out.fate is BOUNCED
        assert (out.reply.code, out.reply.esc) == (552, "5.3.4")
        assert out.reply.text == ("message size 1500000 exceeds the size limit 1000000 of "
                                  "mx1.example.test[127.0.0.1] (its EHLO SIZE); not sent")
        assert out.remote_host == "mx1.example.test"
    assert sink.mail_commands == [] and sink.messages == []   # nothing went over the wire


async def test_message_within_the_size_limit_declares_its_size(dns):
    body = sized_body(999_000)
    async with SizedSink(1_000_000) as sink:
        report = await deliver(transport(dns), mx("example.test", sink.port),
                               message("Q1", "ok@example.test", body=body))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    [mail] = sink.mail_commands
    assert mail.endswith(f" SIZE={len(body)}")            # RFC 1870 declaration
    assert sink.messages[0].data == body


@pytest.mark.parametrize("ehlo_size", ["SIZE 0", "SIZE", "SIZE lots", None])
async def test_no_size_limit_advertised_means_no_local_refusal(dns, ehlo_size):
    """SIZE 0 (RFC 1870 §4: no fixed maximum), SIZE without or with a
    malformed number, or no SIZE at all: send it (declaring SIZE= when the
    keyword is there)."""
    body = sized_body(300_000)
    async with SizedSink(None, ehlo_size) as sink:
        report = await deliver(transport(dns), mx("example.test", sink.port),
                               message("Q1", "ok@example.test", body=body))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    [mail] = sink.mail_commands
    assert mail.endswith(f" SIZE={len(body)}") is (ehlo_size is not None), mail


async def test_failed_tls_handshake_log_line_is_key_value(dns, caplog):
    import logging
    import re
    async with Sink(tls="broken") as broken:
        with caplog.at_level(logging.INFO, logger="mta.delivery"):
            await deliver(transport(dns), mx("example.test", broken.port),
                          message("Q1", "ok@example.test"))
    [line] = [r.getMessage() for r in caplog.records if "starttls" in r.getMessage().lower()]
    assert re.fullmatch(r'event=starttls_failed mx=mx1\.example\.test ip=127\.0\.0\.1 '
                        rf'port={broken.port} error="[^"\r\n]+" next=clear_text', line), line


# -- large bodies are sent in pieces (issue 10 item 3) ----------------------------------

class PiecedBody:
    """The body-source interface delivery uses for a large message (the
    spool's StoredBody has the same three members): pieces of a given size."""

    def __init__(self, data: bytes, piece: int, fail_at_end: bool = False):
        self.data, self.piece, self.fail_at_end = data, piece, fail_at_end
        self.size = len(data)

    async def chunks(self):
        from mta.core import StorageError
        for i in range(0, len(self.data), self.piece):
            if self.fail_at_end and i + self.piece >= len(self.data):
                raise StorageError("record fails its crc32")
            yield self.data[i:i + self.piece]

    async def is_ascii(self):
        return self.data.isascii()


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 4096])
async def test_a_body_sent_in_pieces_arrives_byte_exact(dns, sink, piece):
    lines = [b"Subject: pieces", b"", b".", b"..x", b".y", b"", b"\xc3\xa4 8bit", b"x" * 998]
    body = b"\r\n".join(lines * (1 if piece < 8 else 200)) + b"\r\n"
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "ok@example.test", body=PiecedBody(body, piece)))
    assert report.outcomes["Q1"][0].fate is DELIVERED
    [got] = sink.messages
    assert got.data == body
    assert f"SIZE={len(body)}" in got.mail_options and "BODY=8BITMIME" in got.mail_options


async def test_a_body_without_final_crlf_gets_one(dns, sink):
    for body in (b"Subject: x\r\n\r\nno end", PiecedBody(b"Subject: x\r\n\r\nno end", 5)):
        sink.messages.clear()
        report = await deliver(transport(dns), mx("example.test", sink.port),
                               message("Q1", "ok@example.test", body=body))
        assert report.outcomes["Q1"][0].fate is DELIVERED
        assert sink.messages[0].data == b"Subject: x\r\n\r\nno end\r\n"


async def test_a_body_that_fails_its_check_is_never_accepted(dns, sink):
    body = PiecedBody(b"Subject: x\r\n\r\n" + b"line\r\n" * 1000, 1000, fail_at_end=True)
    report = await deliver(transport(dns), mx("example.test", sink.port),
                           message("Q1", "ok@example.test", body=body),
                           message("Q2", "ok@example.test"))
    assert report.outcomes["Q1"][0].fate is DEFERRED     # dropped before the final dot
    assert report.outcomes["Q2"][0].fate is DELIVERED    # on a new connection
    assert [m.data for m in sink.messages] == [BODY]


class DataRefuser:
    """A remote that refuses the DATA command itself (no 354), e.g. "554 5.5.1
    no valid recipients": a raw asyncio server, aiosmtpd cannot be told to."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.commands: list[bytes] = []

    async def serve(self, reader, writer) -> None:
        writer.write(b"220 refuser.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            self.commands.append(verb)
            writer.write(b"250-refuser.test\r\n250 8BITMIME\r\n" if verb == b"EHLO" else
                         self.reply + b"\r\n" if verb == b"DATA" else
                         b"221 bye\r\n" if verb == b"QUIT" else b"250 ok\r\n")
            await writer.drain()
            if verb == b"QUIT":
                break
        writer.close()


@pytest.mark.parametrize("reply,fate", [(b"554 5.5.1 no valid recipients", BOUNCED),
                                        (b"451 4.3.0 try later", DEFERRED)])
async def test_data_command_refused_settles_by_its_reply(reply, fate):
    """DATA answered without 354: the accepted recipients take that reply (it
    was an internal error before: 451 4.3.0 and the destination DOWN)."""
    import asyncio
    refuser = DataRefuser(reply)
    server = await asyncio.start_server(refuser.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    class Loopback:
        async def addresses(self, host):
            return [host]
    t = SmtpTransport(hostname="mta.test", resolver=Loopback(), connect_timeout=2,
                      command_timeout=5)
    try:
        dest = Destination(name=f"[127.0.0.1]:{port}", kind="route", host="127.0.0.1", port=port)
        report = await deliver(t, dest, message("Q1", "ok@example.test"))
        outcome = report.outcomes["Q1"][0]
        assert (outcome.fate, str(outcome.reply)) == (fate, reply.decode())
        assert report.health is OK
        assert refuser.commands[-1] == b"RSET"   # refused: reset before any reuse
    finally:
        await t.close()
        server.close()
        await server.wait_closed()


async def test_reconfigure_applies_the_delivery_timeouts(dns):
    from types import SimpleNamespace
    t = transport(dns, command_timeout=5.0)
    t.reconfigure(SimpleNamespace(delivery=SimpleNamespace(connect_timeout=1.5,
                                                           command_timeout=42.0)))
    assert (t.connect_timeout, t.command_timeout) == (1.5, 42.0)


# -- what acceptance learnt spares delivery a pass over the body (issue 12) -------------

@pytest.mark.parametrize("pipelining", [False, True])
async def test_dot_lines_false_sends_the_body_unscanned(dns, pipelining):
    """dot_lines=False promises that no line starts with "." (acceptance saw
    none): the body goes without the stuffing scan. A body that breaks the
    promise arrives changed - the receiver removes the dots we did not
    double - which is why only acceptance may make it."""
    import dataclasses
    body = b"Subject: x\r\n\r\n..two\r\n.one\r\nend\r\n"
    async with Sink(pipelining=pipelining) as s:
        looked = message("Q1", "ok@example.test", body=body)             # dot_lines=None
        told = dataclasses.replace(message("Q2", "ok@example.test", body=body), dot_lines=False)
        clean = dataclasses.replace(message("Q3", "ok@example.test"), dot_lines=False)
        report = await deliver(transport(dns), mx("example.test", s.port), looked, told, clean)
    assert all(o.fate is DELIVERED for q in report.outcomes.values() for o in q.values())
    assert [m.data for m in s.messages] == [body, b"Subject: x\r\n\r\n.two\r\none\r\nend\r\n",
                                            BODY]


class UnlookedBody(PiecedBody):
    """A body source that must not be scanned for 8-bit bytes."""

    async def is_ascii(self):
        raise AssertionError("delivery looked at a body whose ascii was known")


async def test_ascii_known_at_acceptance_is_not_looked_up(dns, sink):
    import dataclasses
    eight = "Subject: x\r\n\r\n\u00e4\r\n".encode()
    msgs = [dataclasses.replace(message("Q1", "ok@example.test", body=UnlookedBody(eight, 4)),
                                ascii=False),
            dataclasses.replace(message("Q2", "ok@example.test", body=UnlookedBody(BODY, 9)),
                                ascii=True),
            message("Q3", "ok@example.test", body=eight)]                   # ascii=None: looked
    report = await deliver(transport(dns), mx("example.test", sink.port), *msgs)
    assert all(report.outcomes[m.queue_id][0].fate is DELIVERED for m in msgs)
    assert [("BODY=8BITMIME" in m.mail_options) for m in sink.messages] == [True, False, True]
    assert [m.data for m in sink.messages] == [eight, BODY, eight]


class MuteOnQuit(DataRefuser):
    """A remote that takes the mail, then never answers QUIT."""

    def __init__(self):
        super().__init__(b"354 go on")
        self.quits = 0

    async def serve(self, reader, writer) -> None:
        writer.write(b"220 mute.test ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(b"250 2.0.0 queued\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"QUIT":
                self.quits += 1
                continue                      # never answered
            in_data = verb == b"DATA"
            writer.write(b"250-mute.test\r\n250 8BITMIME\r\n" if verb == b"EHLO" else
                         b"354 go on\r\n" if in_data else b"250 ok\r\n")
            await writer.drain()


async def test_close_quits_cached_connections_together_and_bounded():
    """Shutdown QUITs every cached connection at once and waits at most
    QUIT_TIMEOUT, however long the command timeout: two remotes that never
    answer QUIT cost the 0.3 s given here, not 2 x the 10 s command timeout."""
    import asyncio
    mute = MuteOnQuit()
    servers = [await asyncio.start_server(mute.serve, "127.0.0.1", 0) for _ in range(2)]

    class Loopback:
        async def addresses(self, host):
            return [host]
    t = SmtpTransport(hostname="mta.test", resolver=Loopback(), connect_timeout=2,
                      command_timeout=10)
    try:
        for i, server in enumerate(servers):
            port = server.sockets[0].getsockname()[1]
            dest = Destination(name=f"[127.0.0.1]:{port}", kind="route", host="127.0.0.1",
                               port=port)
            report = await deliver(t, dest, message(f"Q{i}", "ok@example.test"))
            assert report.outcomes[f"Q{i}"][0].fate is DELIVERED
        # The old close() waited a command timeout per connection (20 s
        # here) and would not return inside the guard.
        await asyncio.wait_for(t.close(timeout=0.3), timeout=5)
        assert mute.quits == 2                  # both were asked
    finally:
        for server in servers:
            server.close()


async def test_a_tls_plan_keeps_verp_transactions_apart(sink):
    """With a TLS guard (issue 17), a batch is split by plan; VERP's one
    transaction per recipient of a queue id (each its own return path) must
    stay apart, not merge under the first one's sender."""
    from mta.config.tls import TlsConfig
    from mta.delivery.tlsguard import TlsGuard

    class Loopback:
        async def addresses(self, host):
            return [host]
    t = SmtpTransport(hostname="mta.test", resolver=Loopback(), connect_timeout=2,
                      command_timeout=5, guard=TlsGuard(Loopback(), TlsConfig()))
    dest = Destination(name=f"[127.0.0.1]:{sink.port}", kind="route", host="127.0.0.1",
                       port=sink.port)
    first = OutboundMessage("Q1", "b+1@bounce.test", ((0, "ok-a@x.test"),), BODY)
    second = OutboundMessage("Q1", "b+2@bounce.test", ((1, "ok-b@x.test"),), BODY)
    report = await t.deliver(dest, [first, second])
    assert {i: o.fate for i, o in report.outcomes["Q1"].items()} == {0: DELIVERED, 1: DELIVERED}
    assert sorted((m.mail_from, tuple(m.rcpt_tos)) for m in sink.messages) == [
        ("b+1@bounce.test", ("ok-a@x.test",)), ("b+2@bounce.test", ("ok-b@x.test",))]
    assert report.outcomes["Q1"][0].tls_policy == "opportunistic"
    await t.close()
