"""PIPELINING (RFC 2920) and CHUNKING (RFC 3030) in the SMTP client (issue 12).

End to end over real loopback sockets against the scripted sink (aiosmtpd,
with PIPELINING advertised and our own BDAT reader), raw scripted servers
for what aiosmtpd will not do, and the pure reply parser against
aiosmtplib's. Round trips are counted at the sink, never timed.
"""

from __future__ import annotations

import asyncio

import pytest
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol

from mta.core.envelope import Destination
from mta.core.outcome import DestinationHealth, RecipientFate
from mta.delivery.client import DeliveryReport, OutboundMessage, SmtpTransport
from mta.delivery.pipeline import ReplyError, ReplyParser, command
from tests.support.sink import Sink

DELIVERED, DEFERRED = RecipientFate.DELIVERED, RecipientFate.DEFERRED
BOUNCED = RecipientFate.BOUNCED
OK, THROTTLING = DestinationHealth.OK, DestinationHealth.THROTTLING

BODY = b"From: a@sender.test\r\nTo: x@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
DOTS = b"Subject: dots\r\n\r\nfirst\r\n.\r\n..x\r\n.y\r\n. \r\n...\r\nlast\r\n"
DELAY = 0.02            # the WAN cell's reply delay: makes round trips countable


class Loopback:
    async def addresses(self, host: str) -> list[str]:
        return [host]


def transport() -> SmtpTransport:
    return SmtpTransport(hostname="mta.test", resolver=Loopback(), connect_timeout=2,
                         command_timeout=5)


def route(port: int) -> Destination:
    return Destination(name=f"[127.0.0.1]:{port}", kind="route", host="127.0.0.1", port=port)


def message(qid: str, *addresses: str, body=BODY, sender: str = "a@sender.test"):
    return OutboundMessage(qid, sender, tuple(enumerate(addresses)), body)


async def deliver(port: int, *messages: OutboundMessage) -> DeliveryReport:
    t = transport()
    try:
        report = await t.deliver(route(port), list(messages))
    finally:
        await t.close()
    assert set(report.outcomes) == {m.queue_id for m in messages}
    for m in messages:   # every recipient of every message has exactly one outcome
        assert set(report.outcomes[m.queue_id]) == {i for i, _ in m.recipients}
    return report


def fates(report: DeliveryReport, qid: str) -> list[RecipientFate]:
    return [o.fate for o in report.outcomes[qid].values()]


class PiecedBody:
    """A body source read in pieces (the spool's StoredBody for a large message)."""

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


# ---- the reply parser (pure) -------------------------------------------------------

REPLIES = [
    b"250 2.1.0 Ok\r\n",
    b"250-first\r\n250-second line\r\n250 last\r\n",
    b"550 5.1.1 <a@b>: Recipient address rejected: User unknown\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"250\r\n",                                   # no text at all
    b"250-\r\n250 after an empty line\r\n",
    b"421 4.7.0 bye\n",                           # bare LF ends a line too
    b"250 caf\xc3\xa9 \xff\r\n",                  # UTF-8 and a byte that is not
]


def aiosmtplib_parse(data: bytes) -> SMTPResponse:
    async def parse():
        protocol = SMTPProtocol(loop=asyncio.get_running_loop())
        protocol._buffer.extend(data)
        return protocol._read_response_from_buffer()
    return asyncio.run(parse())


@pytest.mark.parametrize("raw", REPLIES)
def test_a_reply_parses_as_aiosmtplib_parses_it(raw):
    parser = ReplyParser()
    parser.feed(raw)
    assert parser.next() == aiosmtplib_parse(raw)
    assert parser.next() is None and not parser.pending


def test_pipelined_replies_come_out_in_order_however_the_bytes_are_split():
    stream = b"".join(REPLIES)
    expected = [aiosmtplib_parse(r) for r in REPLIES]
    for size in (1, 2, 3, 7, 64, len(stream)):
        parser, got = ReplyParser(), []
        for i in range(0, len(stream), size):
            parser.feed(stream[i:i + size])
            while (reply := parser.next()) is not None:
                got.append(reply)
        assert got == expected, size
        assert not parser.pending


def test_a_half_read_reply_is_pending():
    parser = ReplyParser()
    parser.feed(b"250-one\r\n250")
    assert parser.next() is None and parser.pending
    parser.feed(b" two\r\n")
    assert parser.next() == SMTPResponse(250, "one\ntwo") and not parser.pending


@pytest.mark.parametrize("raw", [b"hello\r\n", b"2x0 no\r\n", b"250 " + b"x" * 9000 + b"\r\n",
                                 b"x" * 9000, (b"250-" + b"y" * 8000 + b"\r\n") * 5])
def test_garbage_is_a_reply_error(raw):
    with pytest.raises(ReplyError):
        ReplyParser().feed(raw)


@pytest.mark.parametrize("arg", [b"TO:<a@b.c>\r\nRSET", b"TO:<a\nb@c.d>", b"TO:<a\x00@b.c>",
                                 b"TO:<a\x7f@b.c>"])
def test_a_command_with_a_control_character_is_refused(arg):
    with pytest.raises(ValueError):
        command(b"RCPT", arg)
    assert command(b"RCPT", b"TO:<a@b.c>") == b"RCPT TO:<a@b.c>\r\n"


# ---- PIPELINING against the scripted sink ----------------------------------------

@pytest.mark.parametrize("tls", [True, False])
async def test_mixed_recipients_pipelined_are_settled_one_by_one(tls):
    msg = message("Q1", "ok@example.test", "tempfail-1@example.test", "reject@example.test",
                  "other@example.test", body=DOTS)
    async with Sink(tls=tls, pipelining=True, reply_delay=DELAY) as sink:
        report = await deliver(sink.port, msg)
    o = report.outcomes["Q1"]
    assert report.health is OK
    assert fates(report, "Q1") == [DELIVERED, DEFERRED, BOUNCED, DELIVERED]
    assert str(o[0].reply) == "250 2.0.0 Ok: queued as SINK00001" and o[3].reply == o[0].reply
    assert str(o[1].reply) == ("451 4.7.1 <tempfail-1@example.test>: Recipient address "
                               "rejected: greylisted, try again later")
    assert str(o[2].reply) == ("550 5.1.1 <reject@example.test>: Recipient address rejected: "
                               "User unknown")
    assert all(bool(x.tls) is tls for x in o.values())
    [got] = sink.messages
    assert got.rcpt_tos == ["ok@example.test", "other@example.test"]
    assert got.data == DOTS                        # dot-stuffed after the pipelined 354
    assert sink.mail_depths == [6]                 # MAIL, 4 RCPT, DATA before the first reply


async def test_without_pipelining_commands_go_one_at_a_time():
    msg = message("Q1", "ok@example.test", "reject@example.test", "other@example.test")
    async with Sink(tls=False, reply_delay=DELAY) as sink:
        report = await deliver(sink.port, msg)
    assert fates(report, "Q1") == [DELIVERED, BOUNCED, DELIVERED]
    assert sink.mail_depths == [1]
    assert sink.messages[0].data == BODY


async def test_a_refused_sender_settles_everyone_and_the_stream_stays_in_step():
    """MAIL refused: the RCPT and DATA replies (503) are read and dropped, the
    next transaction on the same connection goes through."""
    msgs = [message("Q1", "ok@example.test", "ok2@example.test", sender="reject@sender.test"),
            message("Q2", "ok@example.test")]
    async with Sink(tls=False, pipelining=True, reply_delay=DELAY) as sink:
        report = await deliver(sink.port, *msgs)
    assert report.health is OK
    for out in report.outcomes["Q1"].values():
        assert out.fate is BOUNCED
        assert str(out.reply) == ("550 5.7.1 <reject@sender.test>: Sender address rejected: "
                                  "Access denied")
    assert fates(report, "Q2") == [DELIVERED]
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.test"]]
    assert sink.connections == 1 and sink.mail_depths == [4, 3]


async def test_every_recipient_refused_sends_no_body():
    msgs = [message("Q1", "reject@example.test", "tempfail-5@example.test", body=DOTS),
            message("Q2", "ok@example.test")]
    async with Sink(tls=False, pipelining=True, reply_delay=DELAY) as sink:
        report = await deliver(sink.port, *msgs)
    assert fates(report, "Q1") == [BOUNCED, DEFERRED]
    assert fates(report, "Q2") == [DELIVERED]
    assert [m.data for m in sink.messages] == [BODY]      # DATA got 503: DOTS never went
    assert sink.connections == 1


async def test_421_in_a_pipelined_group_throttles():
    msgs = [message("Q1", "ok@example.test"),
            message("Q2", "reject@example.test", "throttle@example.test", "ok2@example.test"),
            message("Q3", "ok@example.test")]
    async with Sink(tls=False, pipelining=True) as sink:
        report = await deliver(sink.port, *msgs)
    assert report.health is THROTTLING
    assert fates(report, "Q1") == [DELIVERED]
    text = "421 4.7.0 sink.test Error: too many connections from you, slow down"
    assert report.outcomes["Q2"][0].fate is BOUNCED               # answered before the 421
    for qid, idx in (("Q2", 1), ("Q2", 2), ("Q3", 0)):
        out = report.outcomes[qid][idx]
        assert out.fate is DEFERRED and str(out.reply) == text
    assert len(sink.messages) == 1


async def test_a_connection_dropped_after_a_pipelined_data_defers_that_message():
    msgs = [message("Q1", "ok@example.test", "drop@example.test"), message("Q2", "ok@example.test")]
    async with Sink(tls=False, pipelining=True) as sink:
        report = await deliver(sink.port, *msgs)
    q1 = report.outcomes["Q1"]
    assert fates(report, "Q1") == [DEFERRED, DEFERRED]
    assert (q1[0].reply.code, q1[0].reply.esc) == (451, "4.4.2") and "DATA" in q1[0].reply.text
    assert fates(report, "Q2") == [DELIVERED] and sink.connections == 2


async def test_round_trips_drop_with_pipelining():
    """Three messages of three recipients, every reply held back 20 ms:
    lock-step pays EHLO + (MAIL + 3 RCPT + DATA + body) per message, a
    pipelining client EHLO + (envelope + body)."""
    msgs = [message(f"Q{i}", f"ok{i}@example.test", f"ok{i}b@example.test",
                    f"ok{i}c@example.test") for i in range(3)]
    counts = {}
    for pipelining in (False, True):
        async with Sink(tls=False, pipelining=pipelining, reply_delay=DELAY) as sink:
            t = transport()
            report = await t.deliver(route(sink.port), msgs)
            counts[pipelining] = sink.round_trips
            await t.close()
        assert all(f is DELIVERED for q in report.outcomes for f in fates(report, q))
        assert len(sink.messages) == 3
    assert counts == {False: 1 + 3 * 6, True: 1 + 3 * 2}


# ---- CHUNKING (BDAT) --------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False])
async def test_chunking_sends_the_stored_body_as_it_is(pipelining):
    bodies = [DOTS, b"Subject: x\r\n\r\nno end", b""]
    msgs = [message(f"Q{i}", "ok@example.test", body=b) for i, b in enumerate(bodies)]
    async with Sink(tls=True, pipelining=pipelining, chunking=True, reply_delay=DELAY) as sink:
        report = await deliver(sink.port, *msgs)
    assert all(fates(report, m.queue_id) == [DELIVERED] for m in msgs)
    assert [m.data for m in sink.messages] == [DOTS, b"Subject: x\r\n\r\nno end\r\n", b""]
    assert sink.bdat_chunks == [(len(DOTS), True), (len(bodies[1]) + 2, True), (0, True)]
    assert str(report.outcomes["Q0"][0].reply) == "250 2.0.0 Ok: queued as SINK00001"
    # EHLO, STARTTLS, EHLO; then per message one write with chunking and
    # pipelining (MAIL + RCPT + BDAT without pipelining); QUIT
    assert sink.round_trips == 3 + 3 * (1 if pipelining else 3) + 1


async def test_chunking_with_pipelining_settles_mixed_recipients():
    msg = message("Q1", "ok@example.test", "reject@example.test", "tempfail-1@example.test")
    async with Sink(tls=False, pipelining=True, chunking=True, reply_delay=DELAY) as sink:
        report = await deliver(sink.port, msg)
    assert fates(report, "Q1") == [DELIVERED, BOUNCED, DEFERRED]
    assert sink.messages[0].rcpt_tos == ["ok@example.test"] and sink.messages[0].data == BODY
    assert sink.mail_depths == [5]          # MAIL, 3 RCPT, BDAT LAST with the body
    assert sink.bdat_chunks == [(len(BODY), True)]


async def test_chunking_every_recipient_refused_keeps_nothing_and_goes_on():
    msgs = [message("Q1", "reject@example.test", "tempfail-9@example.test"),
            message("Q2", "ok@example.test"),
            message("Q3", "ok@example.test", sender="reject@sender.test")]
    async with Sink(tls=False, pipelining=True, chunking=True) as sink:
        report = await deliver(sink.port, *msgs)
    assert fates(report, "Q1") == [BOUNCED, DEFERRED]
    assert fates(report, "Q2") == [DELIVERED]
    assert fates(report, "Q3") == [BOUNCED]
    assert [m.rcpt_tos for m in sink.messages] == [["ok@example.test"]]
    assert sink.connections == 1            # the 554/503 BDAT replies were read in step
    # the price of one round trip: a body in memory went with the envelope,
    # and the peer read and dropped it when nobody was accepted
    assert sink.bdat_chunks == [(len(BODY), True)] * 3


@pytest.mark.parametrize("pipelining", [True, False])
async def test_chunking_a_body_read_in_pieces(pipelining):
    data = b"Subject: pieces\r\n\r\n" + b".line\r\n" * 3000
    body = PiecedBody(data, 4096)
    async with Sink(tls=False, pipelining=pipelining, chunking=True) as sink:
        report = await deliver(sink.port, message("Q1", "ok@example.test", "reject@x.test",
                                                  body=body))
    assert fates(report, "Q1") == [DELIVERED, BOUNCED]
    assert sink.messages[0].data == data
    sizes = [len(data[i:i + 4096]) for i in range(0, len(data), 4096)]
    assert sink.bdat_chunks == [(n, i == len(sizes) - 1) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_chunking_a_body_that_fails_its_check_never_sends_last(pipelining):
    body = PiecedBody(b"Subject: x\r\n\r\n" + b"line\r\n" * 1000, 1000, fail_at_end=True)
    async with Sink(tls=False, pipelining=pipelining, chunking=True) as sink:
        report = await deliver(sink.port, message("Q1", "ok@example.test", body=body),
                               message("Q2", "ok@example.test"))
        await asyncio.sleep(0.05)               # let the sink read what was sent
    q1 = report.outcomes["Q1"][0]
    assert q1.fate is DEFERRED and q1.reply.esc == "4.4.2" and "BDAT" in q1.reply.text
    assert fates(report, "Q2") == [DELIVERED]
    assert [m.data for m in sink.messages] == [BODY]
    assert [c for c in sink.bdat_chunks if c[1]] == [(len(BODY), True)]   # Q1 never had LAST
    assert len(sink.bdat_chunks) > 1                                      # Q1's went out


async def test_chunking_connection_dropped_defers_with_bdat_named():
    async with Sink(tls=False, pipelining=True, chunking=True) as sink:
        report = await deliver(sink.port, message("Q1", "drop@example.test"),
                               message("Q2", "ok@example.test"))
    q1 = report.outcomes["Q1"][0]
    assert q1.fate is DEFERRED and "BDAT" in q1.reply.text
    assert fates(report, "Q2") == [DELIVERED]


# ---- what aiosmtpd will not do: raw scripted servers ------------------------------

class Scripted:
    """A raw PIPELINING server answering each command line from `script`
    (verb -> reply bytes; b"" sends nothing), recording the lines."""

    def __init__(self, script: dict[bytes, bytes], ehlo: bytes = b"250-scripted\r\n"
                 b"250 PIPELINING\r\n"):
        self.script, self.ehlo = script, ehlo
        self.lines: list[bytes] = []

    async def serve(self, reader, writer) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        while line := await reader.readline():
            self.lines.append(line)
            verb = line[:4].upper()
            reply = (self.ehlo if verb == b"EHLO" else b"221 bye\r\n" if verb == b"QUIT"
                     else self.script.get(verb, b"250 ok\r\n"))
            writer.write(reply)
            await writer.drain()
            if verb == b"QUIT":
                break
        writer.close()

    async def deliver(self, *messages: OutboundMessage) -> DeliveryReport:
        server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        try:
            return await deliver(server.sockets[0].getsockname()[1], *messages)
        finally:
            server.close()
            await server.wait_closed()


async def test_354_without_recipients_ends_the_empty_message_at_once():
    peer = Scripted({b"RCPT": b"550 5.1.1 no\r\n", b"DATA": b"354 go ahead\r\n",
                     b".\r\n": b"554 5.5.1 no valid recipients\r\n"})
    report = await peer.deliver(message("Q1", "a@example.test"))
    assert str(report.outcomes["Q1"][0].reply) == "550 5.1.1 no"
    assert report.health is OK
    assert peer.lines[1:6] == [b"MAIL FROM:<a@sender.test>\r\n", b"RCPT TO:<a@example.test>\r\n",
                               b"DATA\r\n", b".\r\n", b"RSET\r\n"]


async def test_a_peer_out_of_step_loses_the_connection():
    """A reply after DATA's 354 (in the same write): the stream is out of
    step; the message is deferred and the connection dropped, never reused."""
    peer = Scripted({b"DATA": b"354 go\r\n250 surprise\r\n"})
    report = await peer.deliver(message("Q1", "a@example.test"))
    out = report.outcomes["Q1"][0]
    assert out.fate is DEFERRED and out.reply.esc == "4.4.2"
    assert "more replies than commands" in out.reply.text


# ---- on uvloop, as the daemon runs ---------------------------------------------------

@pytest.mark.parametrize("tls,chunking", [(False, False), (True, False), (False, True)])
def test_pipelining_and_chunking_work_on_uvloop(tls, chunking):
    """The daemon runs on uvloop, whose transports implement asyncio's
    interface without subclassing it; the tests' loop is asyncio's. A
    pipelined delivery on uvloop once failed every message with an
    AssertionError (isinstance(asyncio.WriteTransport)): found by the bench."""
    import uvloop

    async def run() -> tuple[DeliveryReport, list]:
        async with Sink(tls=tls, pipelining=True, chunking=chunking) as sink:
            report = await deliver(sink.port, message("Q1", "ok@example.test",
                                                      "reject@example.test", body=DOTS))
            return report, list(sink.messages)

    report, got = uvloop.run(run())
    assert fates(report, "Q1") == [DELIVERED, BOUNCED]
    assert [m.data for m in got] == [DOTS]
