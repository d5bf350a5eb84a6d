"""Issue 12, "no per-delivery pass over the body": acceptance learns once
whether the stored body is all 7-bit and whether a line starts with ".",
the spool keeps both with the message, and delivery trusts them: no
dot-stuffing scan for a body without such a line, no 8-bit scan at all; a
message stored without them (an older index or record) is looked at as
before.

Real parts throughout: the server's DATA reader over a StreamReader, real
spool files and SQLite, and end to end the daemon delivering to the
scripted aiosmtpd sink (which unstuffs what it reads, so a dot we failed to
double shows as a changed message)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tarfile
import time
from pathlib import Path

import aiosmtplib
import pytest

import mta.delivery.data as delivery_data
from mta.core.spill import HEAD_BYTES, SpillFile, join
from mta.server.credentials import CredentialStore
from mta.server.data import DataBody, read_data
from mta.spool import NewMessage, Spool, replay
from mta.spool.acceptance import body_flags, pending_message
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink

SENDER = "app@sender.test"
T0 = 1_700_000_000.0
FIXTURES = Path(__file__).parent / "fixtures"


# -- the tail: SpillFile tracks it as it is written ---------------------------------------

@pytest.mark.parametrize("writes, dots", [
    ([b"a\r\nb\r\n"], False),
    ([b"a\r\n.b\r\n"], True),
    ([b"a\r\n", b".b\r\n"], True),          # "\n" ends one write, "." starts the next
    ([b"a\r", b"\n.b\r\n"], True),
    ([b"a\r\nb", b".c\r\n"], False),        # a "." after a boundary, mid-line
    ([b"a.", b"b.\r\n", b"c\r\n"], False),
    ([b".a\r\n"], True),                    # the file's first byte (it may start a line)
    ([b"a\r\n", b"", b".b"], True),          # an empty write changes nothing
    ([b"a\r", b"\n", b".b"], True),           # "<CRLF>." over three writes
    ([b"a\r\n.b", b"c\r\nd"], True),         # sticky
    ([b"a\n.b\r\n"], False),               # a bare LF: stuffing would not double it
])
def test_spill_file_knows_whether_a_line_starts_with_a_dot(tmp_path, writes, dots):
    f = SpillFile(tmp_path)
    try:
        for w in writes:
            f.write(w)
        assert f.dot_lines is dots
        assert f.is_ascii
        g = SpillFile(tmp_path)           # memoryview writes the same
        for w in writes:
            g.write(memoryview(w))
        assert g.dot_lines is dots
        g.close()
    finally:
        f.close()


def test_body_flags_of_head_and_tail(tmp_path):
    assert body_flags(b"A: b\r\n\r\nx\r\n", None) == (True, False)
    assert body_flags(b"A: b\r\n\r\n.x\r\n", None) == (True, True)     # first body line
    assert body_flags(b".A: b\r\n", None) == (True, True)              # the very first byte
    assert body_flags("A: \u00e4\r\n\r\nx\r\n".encode(), None) == (False, False)
    for tail_bytes, want in ((b"\r\nx\r\n", (True, False)), (b"\r\n.x\r\n", (True, True)),
                             ("\r\n\u00e4\r\n".encode(), (False, False))):
        tail = SpillFile(tmp_path)
        tail.write(tail_bytes)
        assert body_flags(b"A: b\r\n\r\nx", tail) == want
        tail.close()


def test_body_flags_given_by_the_caller_cover_all_but_the_header_section():
    head = b"Received: x\r\nFrom: a@b.test\r\n\r\nplain\r\n"
    assert body_flags(head, None, ascii=True, dot_lines=False) == (True, False)
    # the body part is the caller's word (trusted: not scanned) ...
    assert body_flags(head + b".dot\r\n", None, ascii=True, dot_lines=False) == (True, False)
    assert body_flags(head, None, ascii=False, dot_lines=True) == (False, True)
    # ... the header section, which header work may change, is judged here
    eight = "Received: for <\u00fc@x.test>\r\n".encode() + head
    assert body_flags(eight, None, ascii=True, dot_lines=False) == (False, False)
    assert body_flags(b"X: a\r\n.Y: b\r\n\r\nz\r\n", None, ascii=True,
                      dot_lines=False) == (True, True)
    assert body_flags(b".X: a\r\n\r\nz\r\n", None, ascii=True,
                      dot_lines=False) == (True, True)
    assert body_flags(b"X: a\r\n.Y: b\r\n", None, ascii=True,              # no body
                      dot_lines=False) == (True, True)


# -- the server's DATA reader: a dot line right after the head/tail cut -------------------

@pytest.mark.parametrize("content, ascii, dots", [
    (b"A: b\r\n\r\nplain\r\n", True, False),
    (b"A: b\r\n\r\n.dot\r\n", True, True),
    (b".A: b\r\n\r\nx\r\n", True, True),                # the data's first line
    (b"A: b\r\n\r\n..\r\n.\r\n", True, True),
    ("A: b\r\n\r\n\u00e4\r\n".encode(), False, False),
])
async def test_data_reader_knows_its_content_without_a_pass(tmp_path, content, ascii, dots):
    body = await _receive(content, tmp_path)
    assert body.head == content
    assert (body.ascii, body.dot_lines) == (ascii, dots)
    assert body_flags(body.head, None) == (ascii, dots)        # what a scan finds


async def test_data_reader_errs_on_the_safe_side_for_an_unstuffed_dot(tmp_path):
    reader = asyncio.StreamReader()
    reader.feed_data(b"A: b\r\n\r\n.x\r\n.\r\n")        # "x" sent with its dot unstuffed
    reader.feed_eof()
    body = DataBody(str(tmp_path))
    assert await read_data(reader, body, 0)
    body.finish()
    assert body.head == b"A: b\r\n\r\nx\r\n" and body.dot_lines



def _content(size: int) -> bytes:
    """A message whose lines all end with "." (so the DATA reader reads it one
    line at a time, as from a socket) and none starts with one."""
    line = b"y" * 60 + b".\r\n"
    return (b"From: " + SENDER.encode() + b"\r\nSubject: big\r\n\r\n"
            + line * (size // len(line)))


def _stuffed(content: bytes) -> bytes:
    wire = content.replace(b"\r\n.", b"\r\n..")
    return (b"." + wire if wire.startswith(b".") else wire) + b".\r\n"


async def _receive(content: bytes, tmp_path) -> DataBody:
    reader = asyncio.StreamReader(limit=2 ** 20)
    reader.feed_data(_stuffed(content))
    reader.feed_eof()
    body = DataBody(str(tmp_path))
    assert await read_data(reader, body, 0)
    body.finish()
    assert body.refusal is None and not body.line_too_long
    return body


def _dot_after_cut(content: bytes, cut: int) -> bytes:
    """`content` with the line that starts the tail (after the CRLF at `cut`)
    starting with "." instead (same length)."""
    assert content[cut:cut + 3] == b"\r\ny"
    return content[:cut + 2] + b"." + content[cut + 3:]


async def test_data_reader_sees_a_dot_line_that_starts_the_tail(tmp_path):
    content = _content(HEAD_BYTES + 300_000)
    plain = await _receive(content, tmp_path)
    cut = len(plain.head)
    assert plain.spill is not None and join(plain.head, plain.spill) == content
    assert body_flags(plain.head, plain.spill) == (True, False)
    plain_flags = (plain.ascii, plain.dot_lines)
    assert plain_flags == (True, False)
    plain.discard()

    dotted = _dot_after_cut(content, cut)
    body = await _receive(dotted, tmp_path)
    assert len(body.head) == cut and body.spill is not None      # the same cut
    assert join(body.head, body.spill) == dotted
    assert b"\n." not in body.head                               # only the tail has it
    assert body.spill.dot_lines and body.dot_lines and body.ascii
    assert not plain_flags[1]
    assert body_flags(body.head, body.spill) == (True, True)
    body.discard()


# -- the spool keeps them: index row, v2 record, old rows ---------------------------------

async def test_the_spool_stores_the_flags_and_replays_them(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    try:
        bodies = {b"A: b\r\n\r\nplain\r\n": (True, False),
                  b"A: b\r\n\r\n.dot\r\n": (True, True),
                  "A: b\r\n\r\n\u00e4\r\n".encode(): (False, False)}
        for raw, want in bodies.items():
            qid = await s.enqueue(NewMessage(sender=SENDER, recipients=("r@x.test",),
                                             body=raw), T0)
            got = await s.delivery_body(qid, open_over=HEAD_BYTES)
            assert (got.body, got.ascii, got.dot_lines) == (raw, *want)
        # what the caller knows (the DATA reader's flags) spares the scan
        told = NewMessage(sender=SENDER, recipients=("r@x.test",), ascii=True, dot_lines=True,
                          body=b"A: b\r\n\r\nno dot here\r\n")
        got = await s.delivery_body(await s.enqueue(told, T0), open_over=HEAD_BYTES)
        assert (got.ascii, got.dot_lines) == (True, True)
    finally:
        await s.close()
    # the v2 record's envelope carries them, so a replayed acceptance has them
    m = pending_message(NewMessage(sender=SENDER, recipients=("r@x.test",),
                                   body=b"A: b\r\n\r\n.x\r\n"), T0)
    back = replay.pending(replay.envelope(m))
    assert (back.ascii, back.dot_lines) == (True, True)
    # a record written before them reads as "not known"
    old = replay.envelope(m).replace(b',"ascii":true,"dots":true', b"")
    assert b"ascii" not in old
    assert (replay.pending(old).ascii, replay.pending(old).dot_lines) == (None, None)
    with pytest.raises(ValueError):
        replay.pending(replay.envelope(m).replace(b'"dots":true', b'"dots":1'))


async def test_an_index_from_before_the_flags_reads_them_as_unknown(tmp_path):
    with tarfile.open(FIXTURES / "spool_v1.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    queued = json.loads((tmp_path / "manifest.json").read_text())["queued"]
    index = tmp_path / "spool" / "index.sqlite3"
    with sqlite3.connect(index) as c:
        cols = {r[1] for r in c.execute("PRAGMA table_info(messages)")}
    assert "body_ascii" not in cols and "body_dots" not in cols
    s = await Spool.open(tmp_path, now=T0)
    try:
        got = await s.delivery_body(queued, open_over=HEAD_BYTES)
        assert got.body == await s.read_body(queued)
        assert (got.ascii, got.dot_lines) == (None, None)
        new = await s.enqueue(NewMessage(sender=SENDER, recipients=("r@x.test",),
                                         body=b"A: b\r\n\r\nx\r\n"), T0)
        got = await s.delivery_body(new, open_over=HEAD_BYTES)
        assert (got.ascii, got.dot_lines) == (True, False)
    finally:
        await s.close()


# -- end to end: submitted, stored, delivered byte-exact -----------------------------------

@pytest.fixture
def stuffing(monkeypatch):
    """Counts delivery's dot-stuffing calls (the scan a body with no dot
    line must not get)."""
    calls = []
    real = delivery_data.stuff

    def counted(previous: bytes, piece: bytes) -> bytes:
        calls.append(len(piece))
        return real(previous, piece)
    monkeypatch.setattr(delivery_data, "stuff", counted)
    return calls


@pytest.fixture
async def setup(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    CredentialStore(state / "credentials.json").add("app", "s3cret-passwd")
    async with Sink() as sink:
        port = free_port()
        text = config_text(state, port, routes={"*": f"127.0.0.1:{sink.address[1]}"})
        yield state, sink, port, text


async def _submit(port: int, rcpt: str, content: bytes) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                               tls_context=no_verify_context(), timeout=30) as c:
        await c.login("app", "s3cret-passwd")
        _, resp = await c.sendmail(SENDER, [rcpt], content)
        return resp.split()[-1]


def _message(body: bytes) -> bytes:
    return b"From: " + SENDER.encode() + b"\r\nTo: x@rcpt.test\r\nSubject: t\r\n\r\n" + body


def _flags(state: Path, qid: str) -> tuple[bool | None, bool | None]:
    """The message's stored flags, as committed (its body may be dead by now)."""
    with sqlite3.connect(state / "spool" / "index.sqlite3") as c:
        ascii, dots = c.execute("SELECT body_ascii, body_dots FROM messages WHERE id = ?",
                                (qid,)).fetchone()
    return (None if ascii is None else bool(ascii)), (None if dots is None else bool(dots))


async def _delivered(daemon, sink, qid: str, count: int) -> bytes:
    """The stored body of `qid` once the sink has `count` messages; the last
    one must be it, byte for byte."""
    await sink.wait_for(count, timeout=30)
    stored = await daemon.spool.read_body(qid)
    assert sink.messages[count - 1].data == stored
    return stored


async def test_delivery_trusts_what_acceptance_learnt(setup, stuffing):
    state, sink, port, text = setup
    big = _content(HEAD_BYTES + 300_000)
    cut = len((await _receive(big, state)).head)   # where the server will cut it
    cases = [  # (rcpt, content, 8-bit, dot lines)
        ("plain@rcpt.test", _message(b"no dot lines\r\n" * 50), False, False),
        ("first@rcpt.test", _message(b".the first body line\r\n.\r\nend\r\n"), False, True),
        ("eight@rcpt.test", _message("gr\u00fc\u00dfe\r\n".encode()), True, False),
        ("bigplain@rcpt.test", big, False, False),
        ("bigdot@rcpt.test", _dot_after_cut(big, cut), False, True),
        ("bigeight@rcpt.test", big + "\u00e4.\r\n".encode(), True, False),
    ]
    async with running_daemon(text) as d:
        for n, (rcpt, content, eight, dots) in enumerate(cases, 1):
            before = len(stuffing)
            qid = await _submit(port, rcpt, content)
            stored = await _delivered(d, sink, qid, n)
            assert stored.endswith(content.split(b"\r\n\r\n", 1)[1]), rcpt
            assert _flags(state, qid) == (not eight, dots), rcpt
            assert (len(stuffing) > before) is dots, rcpt        # stuffed only when needed
            assert ("BODY=8BITMIME" in sink.messages[-1].mail_options) is eight, rcpt


async def test_a_message_stored_without_flags_is_looked_at(setup, stuffing):
    state, sink, port, text = setup
    bodies = [_message("\u00e4\r\n.dot\r\n".encode()), _message(b"plain\r\n")]
    s = await Spool.open(state, now=time.time())
    try:
        qids = [await s.enqueue(NewMessage(sender=SENDER, recipients=(f"old{i}@rcpt.test",),
                                           body=b), time.time())
                for i, b in enumerate(bodies)]
    finally:
        await s.close()
    with sqlite3.connect(state / "spool" / "index.sqlite3") as c:    # rows from before issue 12
        c.execute("UPDATE messages SET body_ascii = NULL, body_dots = NULL")
    async with running_daemon(text):
        await sink.wait_for(2, timeout=30)
        by_rcpt = {m.rcpt_tos[0]: m for m in sink.messages}
        for i, (qid, b) in enumerate(zip(qids, bodies)):
            assert _flags(state, qid) == (None, None)
            assert by_rcpt[f"old{i}@rcpt.test"].data == b
        assert "BODY=8BITMIME" in by_rcpt["old0@rcpt.test"].mail_options
        assert "BODY=8BITMIME" not in by_rcpt["old1@rcpt.test"].mail_options
        assert len(stuffing) == 2                    # each body scanned: not known


async def test_the_server_hands_the_readers_flags_to_the_spool(setup, monkeypatch):
    """The DATA reader's flags reach the spool (which then checks only the
    header section): without them it would scan the whole head again."""
    from mta.spool import acceptance
    state, sink, port, text = setup
    given: list[tuple[bool | None, bool | None]] = []
    real = acceptance.body_flags

    def spy(head, tail, *, ascii=None, dot_lines=None):
        given.append((ascii, dot_lines))
        return real(head, tail, ascii=ascii, dot_lines=dot_lines)

    monkeypatch.setattr(acceptance, "body_flags", spy)
    async with running_daemon(text):
        await _submit(port, "plain@rcpt.test", _message(b"no dot lines\r\n" * 5))
        await _submit(port, "dots@rcpt.test", _message(b"x\r\n.dot\r\n"))
    assert given == [(True, False), (True, True)]
