"""The spool's durability contract: real files, real fsync, real SQLite.

Recovery branches are tested by building each crash state on disk directly
(see the table in mta/spool/__init__.py), and by SIGKILLing a process that
enqueues in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mta.core import BOUNCED, DELIVERED, EXPIRED, QUEUED, RecipientUpdate, Reply, StorageError
from mta.spool import DsnMark, NewMessage, Spool
from mta.spool import acceptance
from mta.spool.records import HEADER, ENVELOPE, iter_records
from mta.spool.segments import scan_segments, segment_name

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def body(n: int, size: int = 2000) -> bytes:
    head = f"From: a@example.test\r\nSubject: message {n}\r\n\r\n".encode()
    line = f"line of message {n:08d}\r\n".encode()
    return head + line * (size // len(line) + 1)


def msg(n: int = 0, *, sender: str = "sender@example.test", rcpts=("rcpt@example.net",),
        **kw) -> NewMessage:
    return NewMessage(sender=sender, recipients=tuple(rcpts), body=body(n), **kw)


def segdir(state: Path) -> Path:
    return state / "spool" / "segments"


@contextlib.contextmanager
def db(state: Path):
    """A second, independent look at the index file (closed afterwards)."""
    c = sqlite3.connect(state / "spool" / "index.sqlite3", isolation_level=None)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
async def spool(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    yield s
    await s.close()


def update(qid, idx, state, reply=None, *, next_attempt=None, at=T0, counts=True, **kw):
    return RecipientUpdate(queue_id=qid, rcpt_idx=idx, state=state,
                           reply=Reply.parse(reply) if reply else None, next_attempt=next_attempt,
                           attempted_at=at, duration=0.5, counts_attempt=counts, **kw)


# -- basics ----------------------------------------------------------------------------

async def test_enqueue_read_body_round_trip(spool, tmp_path):
    m = msg(1, rcpts=("a@example.net", "b@example.org"), credential="app1",
            listener="submission", client_ip="127.0.0.1")
    qid = await spool.enqueue(m, T0)
    assert len(qid) == 16
    assert await spool.read_body(qid) == m.body

    view = await spool.get_message(qid)
    assert (view.id, view.sender, view.received_at, view.size, view.credential) == \
        (qid, m.sender, T0, len(m.body), "app1")
    assert not view.done and not view.is_dsn
    assert [(r.idx, r.address, r.state, r.attempts, r.next_attempt) for r in view.recipients] == \
        [(0, "a@example.net", QUEUED, 0, T0), (1, "b@example.org", QUEUED, 0, T0)]
    json.dumps(view.to_dict())
    assert await spool.counts() == {QUEUED: 2, DELIVERED: 0, BOUNCED: 0, EXPIRED: 0}
    assert await spool.next_due_at() == T0
    with pytest.raises(KeyError):
        await spool.read_body("0000000000000000")
    assert await spool.get_message("0000000000000000") is None

    # Segment records are self-describing: a v2 record (envelope block,
    # then the body's header) at the start of the segment.
    files = scan_segments(segdir(tmp_path))
    assert len(files) == 1
    path = segdir(tmp_path) / segment_name(*files)
    [(offset, rec_qid, length, crc_ok)] = list(iter_records(path))
    magic, env_len, _ = ENVELOPE.unpack_from(path.read_bytes())
    assert magic == b"MTA2"
    assert (offset, rec_qid, length, crc_ok) == (ENVELOPE.size + env_len, qid, len(m.body), True)


async def test_large_body_with_a_tail_is_copied_in_pieces(spool, tmp_path):
    """A message over core.spill.HEAD_BYTES arrives as head + SpillFile; the
    segment record holds both (crc over both), among ordinary messages of
    the same batch."""
    from mta.core.spill import SpillFile
    whole = body(7, size=3 * 1024 * 1024 + 123)
    head, rest = whole[:1000], whole[1000:]
    tail = SpillFile(tmp_path)
    for i in range(0, len(rest), 300_000):
        tail.write(rest[i:i + 300_000])
    small = [msg(n) for n in range(3)]
    ids = await asyncio.gather(spool.enqueue(small[0], T0),
                               spool.enqueue(NewMessage(sender="s@example.test",
                                                        recipients=("r@example.net",),
                                                        body=head, tail=tail), T0),
                               spool.enqueue(small[1], T0), spool.enqueue(small[2], T0))
    tail.close()
    assert await spool.read_body(ids[1]) == whole
    assert [await spool.read_body(i) for i in (ids[0], ids[2], ids[3])] == [m.body for m in small]
    assert (await spool.get_message(ids[1])).size == len(whole)
    records = {qid: (length, ok) for files in [scan_segments(segdir(tmp_path))]
               for n in files for _, qid, length, ok in iter_records(segdir(tmp_path) /
                                                                    segment_name(n))}
    assert records[ids[1]] == (len(whole), True)


async def test_empty_recipients_rejected(spool):
    with pytest.raises(ValueError):
        await spool.enqueue(NewMessage("a@b.test", (), b"x\r\n"), T0)


async def test_concurrent_enqueues_are_group_committed(spool):
    msgs = [msg(i) for i in range(200)]
    ids = await asyncio.gather(*(spool.enqueue(m, T0) for m in msgs))
    assert len(set(ids)) == 200
    # One writer wake-up takes everything waiting: far fewer fsyncs and
    # transactions than messages.
    assert spool.stats.enqueued == 200
    assert spool.stats.commits <= 20
    assert spool.stats.fsyncs <= 20
    assert spool.stats.max_batch >= 10
    for qid, m in zip(ids, msgs):
        assert await spool.read_body(qid) == m.body


async def test_segments_rotate_and_dead_ones_are_reclaimed(tmp_path):
    s = await Spool.open(tmp_path, now=T0, segment_max_bytes=10_000)
    try:
        ids = [await s.enqueue(msg(i), T0) for i in range(12)]   # ~2 KB each
        files = scan_segments(segdir(tmp_path))
        assert len(files) >= 2
        assert await s.reclaim() == 0          # everything is still live
        leased = await s.lease_due(T0, 100)
        assert len(leased) == 12
        await s.record([update(q.queue_id, q.rcpt_idx, DELIVERED, "250 2.0.0 Ok") for q in leased])
        removed = await s.reclaim()
        assert removed == len(files) - 1       # the current segment stays
        assert len(scan_segments(segdir(tmp_path))) == 1
        with pytest.raises(KeyError):          # done + reclaimed: no body any more
            await s.read_body(ids[0])
        # New appends still work after reclaim.
        q = await s.enqueue(msg(99), T0)
        assert await s.read_body(q) == msg(99).body
    finally:
        await s.close()


# -- lease / release / record ----------------------------------------------------------

async def test_lease_release_record_transitions(spool):
    a = await spool.enqueue(msg(1, rcpts=("x@a.test", "y@a.test")), T0)
    b = await spool.enqueue(msg(2), T0 + 10)

    assert await spool.lease_due(T0 - 1, 10) == []           # nothing due yet
    first = await spool.lease_due(T0 + 5, 10)
    assert [(q.queue_id, q.rcpt_idx, q.address, q.domain) for q in first] == \
        [(a, 0, "x@a.test", "a.test"), (a, 1, "y@a.test", "a.test")]
    assert first[0].sender == "sender@example.test" and first[0].size == len(body(1))
    assert await spool.lease_due(T0 + 5, 10) == []           # leased ones are not handed out twice
    assert await spool.next_due_at() == T0 + 10

    await spool.release([(a, 1)])
    again = await spool.lease_due(T0 + 5, 10)
    assert [(q.queue_id, q.rcpt_idx, q.attempts) for q in again] == [(a, 1, 0)]

    await spool.record([
        update(a, 0, QUEUED, "451 4.7.1 Greylisted", next_attempt=T0 + 300,
               remote_host="mx.a.test", remote_ip="127.0.0.2", tls="TLSv1.3"),
        update(a, 1, DELIVERED, "250 2.0.0 Ok: queued as X", remote_host="mx.a.test"),
    ])
    view = await spool.get_message(a)
    r0, r1 = view.recipients
    assert (r0.state, r0.attempts, r0.next_attempt, r0.last_reply, r0.last_remote, r0.last_tls) == \
        (QUEUED, 1, T0 + 300, "451 4.7.1 Greylisted", "mx.a.test", "TLSv1.3")
    assert (r1.state, r1.attempts, r1.last_reply) == (DELIVERED, 1, "250 2.0.0 Ok: queued as X")
    assert not view.done
    assert [(x.rcpt_idx, x.state, x.reply, x.remote_ip) for x in view.attempts] == \
        [(0, QUEUED, "451 4.7.1 Greylisted", "127.0.0.2"), (1, DELIVERED, "250 2.0.0 Ok: queued as X", "")]

    # A put-back that is not an attempt: no attempts row, no counter, old reply kept.
    got = await spool.lease_due(T0 + 300, 10)
    assert [(q.queue_id, q.rcpt_idx, q.attempts) for q in got] == [(b, 0, 0), (a, 0, 1)]
    await spool.record([update(a, 0, QUEUED, next_attempt=T0 + 400, counts=False)])
    view = await spool.get_message(a)
    assert (view.recipients[0].attempts, view.recipients[0].next_attempt,
            view.recipients[0].last_remote) == (1, T0 + 400, "mx.a.test")
    assert len(view.attempts) == 2

    [q] = await spool.lease_due(T0 + 400, 1)
    await spool.record([update(a, 0, BOUNCED, "550 5.1.1 No such user")])
    view = await spool.get_message(a)
    assert view.done and view.recipients[0].state == BOUNCED
    # Final states are terminal: a late report does not move the recipient.
    await spool.record([update(a, 0, DELIVERED, "250 2.0.0 Ok")])
    assert (await spool.get_message(a)).recipients[0].state == BOUNCED
    assert await spool.counts() == {QUEUED: 1, DELIVERED: 1, BOUNCED: 1, EXPIRED: 0}
    assert [m.id for m in await spool.list_messages()] == [b]
    assert [m.id for m in await spool.list_messages(include_done=True)] == [a, b]

    with pytest.raises(ValueError):
        await spool.record([update(b, 0, "lost")])


async def test_lease_is_bounded_and_ordered(spool):
    ids = [await spool.enqueue(msg(i), T0 + i) for i in range(10)]
    got = await spool.lease_due(T0 + 100, 3)
    assert [q.queue_id for q in got] == ids[:3]
    assert [q.queue_id for q in await spool.lease_due(T0 + 100, 100)] == ids[3:]


# -- done / body_live / DSNs -----------------------------------------------------------

async def _flags(state: Path, qid: str) -> tuple[int, int]:
    with db(state) as c:
        return c.execute("SELECT done, body_live FROM messages WHERE id=?", (qid,)).fetchone()


async def test_failed_message_owes_dsn_until_marked_in_same_txn(spool, tmp_path):
    a = await spool.enqueue(msg(1, rcpts=("ok@a.test", "bad@a.test", "late@a.test")), T0)
    await spool.lease_due(T0, 10)
    await spool.record([update(a, 0, DELIVERED, "250 2.0.0 Ok"),
                        update(a, 1, BOUNCED, "550 5.1.1 <bad@a.test> unknown", remote_host="mx.a.test")])
    assert await _flags(tmp_path, a) == (0, 1)
    assert await spool.dsn_candidates() == []             # not done yet
    await spool.record([update(a, 2, EXPIRED, "451 4.4.1 Connection timed out")])
    assert await _flags(tmp_path, a) == (1, 1)            # done, but the DSN needs the body

    [cand] = await spool.dsn_candidates()
    assert (cand.queue_id, cand.sender, cand.received_at) == (a, "sender@example.test", T0)
    assert [(f.rcpt_idx, f.address, f.state, f.reply, f.remote_host, f.attempts)
            for f in cand.recipients] == [
        (1, "bad@a.test", BOUNCED, Reply(550, "5.1.1", "<bad@a.test> unknown"), "mx.a.test", 1),
        (2, "late@a.test", EXPIRED, Reply(451, "4.4.1", "Connection timed out"), "", 1)]
    assert await spool.read_body(a) == body(1)

    dsn = NewMessage(sender="", recipients=("sender@example.test",), body=b"DSN\r\n", is_dsn=True)
    d = await spool.enqueue(dsn, T0 + 1, dsn_for=DsnMark(a, (1, 2), "failure"))
    assert await _flags(tmp_path, a) == (1, 0)            # marked in the DSN's transaction
    assert await spool.dsn_candidates() == []
    with db(tmp_path) as c:
        assert c.execute("SELECT dsn_for, is_dsn FROM messages WHERE id=?", (d,)).fetchone() == (a, 1)
        assert c.execute("SELECT rcpt_idx, dsn_state FROM recipients WHERE message_id=? ORDER BY rcpt_idx",
                         (a,)).fetchall() == [(0, ""), (1, "sent"), (2, "sent")]

    # A bounced DSN never owes another DSN.
    await spool.lease_due(T0 + 1, 10)
    await spool.record([update(d, 0, BOUNCED, "550 5.1.1 gone")])
    assert await _flags(tmp_path, d) == (1, 0)
    assert await spool.dsn_candidates() == []


async def test_null_sender_failure_frees_body_at_once(spool, tmp_path):
    a = await spool.enqueue(msg(1, sender=""), T0)
    await spool.lease_due(T0, 10)
    await spool.record([update(a, 0, BOUNCED, "550 5.1.1 gone")])
    assert await _flags(tmp_path, a) == (1, 0)
    assert await spool.dsn_candidates() == []


async def test_dsn_enqueue_failure_leaves_original_unmarked(spool, tmp_path, monkeypatch):
    a = await spool.enqueue(msg(1), T0)
    await spool.lease_due(T0, 10)
    await spool.record([update(a, 0, BOUNCED, "550 5.1.1 gone")])
    real = spool._store._append_sync

    def full(items):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(spool._store, "_append_sync", full)
    with pytest.raises(StorageError):
        await spool.enqueue(NewMessage("", ("sender@example.test",), b"DSN\r\n", is_dsn=True),
                            T0, dsn_for=DsnMark(a, (0,), "failure"))
    monkeypatch.setattr(spool._store, "_append_sync", real)
    assert [c.queue_id for c in await spool.dsn_candidates()] == [a]   # still owed (state S7)


async def test_delay_candidates(spool):
    a = await spool.enqueue(msg(1, rcpts=("slow@a.test", "fast@a.test")), T0)
    null = await spool.enqueue(msg(2, sender=""), T0)
    assert null
    await spool.lease_due(T0, 10)
    await spool.record([update(a, 0, QUEUED, "451 4.4.1 timeout", next_attempt=T0 + 600,
                               remote_host="mx.a.test"),
                        update(a, 1, DELIVERED, "250 ok"),
                        update(null, 0, QUEUED, "451 4.4.1 timeout", next_attempt=T0 + 600)])
    assert await spool.delay_candidates(T0 + 3599, after=3600) == []   # too young
    [cand] = await spool.delay_candidates(T0 + 3600, after=3600)
    assert cand.queue_id == a
    assert [(f.rcpt_idx, f.state, f.reply, f.remote_host, f.attempts) for f in cand.recipients] == \
        [(0, QUEUED, Reply(451, "4.4.1", "timeout"), "mx.a.test", 1)]

    await spool.enqueue(NewMessage("", ("sender@example.test",), b"delay\r\n", is_dsn=True),
                        T0 + 3600, dsn_for=DsnMark(a, (0,), "delay"))
    assert await spool.delay_candidates(T0 + 3600, after=3600) == []
    # The delay warning does not settle a later failure DSN.
    await spool.lease_due(T0 + 3600, 10)
    await spool.record([update(a, 0, EXPIRED, "451 4.4.1 timeout")])
    assert [c.queue_id for c in await spool.dsn_candidates()] == [a]


# -- reopen and recovery branches --------------------------------------------------------

async def test_reopen_keeps_everything(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    a = await s.enqueue(msg(1, rcpts=("x@a.test", "y@a.test")), T0)
    b = await s.enqueue(msg(2), T0)
    await s.lease_due(T0, 10)
    await s.record([update(a, 0, QUEUED, "421 4.7.0 later", next_attempt=T0 + 60)])
    before = (await s.get_message(a)).to_dict()
    await s.close()

    s = await Spool.open(tmp_path, now=T0 + 1)
    try:
        assert s.recovery.leased_reset == 2          # a/1 and b/0 were leased at close (S5)
        assert s.recovery.corrupt == () and s.recovery.segments_removed == 0
        assert (await s.get_message(a)).to_dict() == before
        assert await s.read_body(a) == body(1) and await s.read_body(b) == body(2)
        assert sorted((q.queue_id, q.rcpt_idx) for q in await s.lease_due(T0 + 60, 10)) == \
            sorted([(a, 0), (a, 1), (b, 0)])
        # Appends after a restart go to a fresh segment, never after an old tail.
        c = await s.enqueue(msg(3), T0 + 1)
        assert await s.read_body(c) == body(3)
        assert len(scan_segments(segdir(tmp_path))) == 2
    finally:
        await s.close()


async def test_recovery_truncates_uncommitted_tail(tmp_path):
    """S1/S3: bytes appended (synced or not) with no committed row."""
    s = await Spool.open(tmp_path, now=T0)
    ids = [await s.enqueue(msg(i), T0) for i in range(3)]
    await s.close()
    [seg] = scan_segments(segdir(tmp_path))
    path = segdir(tmp_path) / segment_name(seg)
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(HEADER.pack(b"MTA1", b"ZZZZZZZZZZZZZZZZ", 5000, 0) + b"torn half record")

    s = await Spool.open(tmp_path, now=T0)
    try:
        assert (s.recovery.tails_truncated, s.recovery.tail_bytes_truncated) == (1, HEADER.size + 16)
        assert path.stat().st_size == good
        for i, qid in enumerate(ids):
            assert await s.read_body(qid) == body(i)
    finally:
        await s.close()


async def test_recovery_unlinks_segment_without_rows(tmp_path):
    """S2/S3/S9: a segment no live row references (orphan or dead)."""
    s = await Spool.open(tmp_path, now=T0)
    a = await s.enqueue(msg(1), T0)
    await s.close()
    orphan = segdir(tmp_path) / segment_name(77)
    orphan.write_bytes(HEADER.pack(b"MTA1", b"0000000000000000", 3, 0) + b"abc")

    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.segments_removed == 1
        assert not orphan.exists()
        assert s.recovery.next_segment == 78            # numbers are never reused
        assert await s.read_body(a) == body(1)
        await s.enqueue(msg(2), T0)
        assert 78 in scan_segments(segdir(tmp_path))
    finally:
        await s.close()


async def test_recovery_reports_missing_or_short_body_as_corrupt(tmp_path):
    """S10: never silently drop a committed message."""
    s = await Spool.open(tmp_path, now=T0, segment_max_bytes=1)   # one segment per batch
    a = await s.enqueue(msg(1), T0)
    b = await s.enqueue(msg(2), T0)
    c = await s.enqueue(msg(3), T0)
    await s.close()
    segs = sorted(scan_segments(segdir(tmp_path)))
    assert len(segs) == 3
    os.unlink(segdir(tmp_path) / segment_name(segs[0]))                 # a: file gone
    os.truncate(segdir(tmp_path) / segment_name(segs[1]), HEADER.size + 10)   # b: cut short

    s = await Spool.open(tmp_path, now=T0)
    try:
        assert sorted(s.recovery.corrupt) == sorted([a, b])
        assert s.recovery.corrupt_count == 2
        assert s.recovery.tails_truncated == 0             # b's short file is left as it is
        assert await s.counts() == {QUEUED: 3, DELIVERED: 0, BOUNCED: 0, EXPIRED: 0}
        for qid in (a, b):
            assert await s.get_message(qid) is not None
            with pytest.raises(StorageError):
                await s.read_body(qid)
        assert await s.read_body(c) == body(3)
        assert segment_name(segs[1]) in os.listdir(segdir(tmp_path))
    finally:
        await s.close()


async def test_recovery_detects_flipped_bytes_on_read(spool, tmp_path):
    a = await spool.enqueue(msg(1), T0)
    [seg] = scan_segments(segdir(tmp_path))
    with db(tmp_path) as c:
        [(offset,)] = c.execute('SELECT "offset" FROM messages WHERE id = ?', (a,)).fetchall()
    with open(segdir(tmp_path) / segment_name(seg), "r+b") as f:
        f.seek(offset + HEADER.size + 100)
        f.write(b"#")
    with pytest.raises(StorageError, match="crc32"):
        await spool.read_body(a)


async def test_recovery_recomputes_flags(tmp_path):
    """S6: stored done/body_live that disagree with the recipients are fixed."""
    s = await Spool.open(tmp_path, now=T0)
    a = await s.enqueue(msg(1), T0)
    await s.close()
    with db(tmp_path) as c:
        c.execute("UPDATE messages SET done=1, body_live=0 WHERE id=?", (a,))
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.flags_fixed == 1
        assert s.recovery.segments_removed == 0            # the flags were fixed first
        assert await _flags(tmp_path, a) == (0, 1)
        assert await s.read_body(a) == body(1)
    finally:
        await s.close()


async def test_missing_index_with_segments_refuses_to_start(tmp_path):
    """S11: without the index every body would look like garbage."""
    s = await Spool.open(tmp_path, now=T0)
    await s.enqueue(msg(1), T0)
    await s.close()
    for name in os.listdir(tmp_path / "spool"):
        if name.startswith("index.sqlite3"):
            os.unlink(tmp_path / "spool" / name)
    with pytest.raises(StorageError, match="refusing"):
        await Spool.open(tmp_path, now=T0)
    assert len(scan_segments(segdir(tmp_path))) == 1


async def test_second_process_cannot_open_the_same_spool(spool, tmp_path):
    with pytest.raises(StorageError, match="locked"):
        await Spool.open(tmp_path, now=T0)


# -- storage faults ------------------------------------------------------------------------

async def test_append_failure_fails_every_waiter_then_recovers(spool, monkeypatch):
    store = spool._store
    real = store._append_sync
    calls = []

    def failing(items):
        calls.append(len(items))
        raise OSError(errno.ENOSPC, "No space left on device")

    ok = await spool.enqueue(msg(0), T0)
    monkeypatch.setattr(store, "_append_sync", failing)
    results = await asyncio.gather(*(spool.enqueue(msg(i), T0) for i in range(1, 21)),
                                   return_exceptions=True)
    assert all(isinstance(r, StorageError) and r.disk_full for r in results)
    assert results[0].reply == Reply(452, "4.3.1", "Insufficient system storage, try again later")
    assert sum(calls) == 20 and len(calls) < 20        # they failed together, in batches
    assert await spool.counts() == {QUEUED: 1, DELIVERED: 0, BOUNCED: 0, EXPIRED: 0}

    monkeypatch.setattr(store, "_append_sync", real)   # the fault clears
    again = await asyncio.gather(*(spool.enqueue(msg(i), T0) for i in range(30, 35)))
    for i, qid in zip(range(30, 35), again):
        assert await spool.read_body(qid) == body(i)
    assert await spool.read_body(ok) == body(0)


async def test_index_failure_fails_the_batch_then_recovers(spool, monkeypatch):
    monkeypatch.setattr(acceptance, "new_queue_id", lambda now: "SAMEIDSAMEIDSAME")
    results = await asyncio.gather(spool.enqueue(msg(1), T0), spool.enqueue(msg(2), T0),
                                   spool.lease_due(T0, 10), return_exceptions=True)
    assert all(isinstance(r, StorageError) and not r.disk_full for r in results)
    assert results[0].reply.code == 451
    assert await spool.counts() == {QUEUED: 0, DELIVERED: 0, BOUNCED: 0, EXPIRED: 0}
    monkeypatch.undo()
    qid = await spool.enqueue(msg(3), T0)
    assert await spool.read_body(qid) == body(3)
    assert [q.queue_id for q in await spool.lease_due(T0, 10)] == [qid]


async def test_closed_spool_refuses_work(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    await s.close()
    with pytest.raises(StorageError):
        await s.enqueue(msg(1), T0)
    with pytest.raises(StorageError):
        await s.counts()
    await s.close()   # idempotent


# -- SIGKILL ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, sys, time
    sys.path.insert(0, {tests!r})
    from test_spool import body
    from mta.core import QUEUED, RecipientUpdate
    from mta.spool import NewMessage, Spool

    async def main(state, start):
        s = await Spool.open(state, now=time.time(), segment_max_bytes=256 * 1024)
        counter = iter(range(start, start + 10**9))

        async def sender():
            while True:
                n = next(counter)
                qid = await s.enqueue(NewMessage("s@example.test", ("r@example.net", "q@example.org"),
                                                 body(n, 20000)), time.time())
                sys.stdout.write(f"{{qid}} {{n}}\\n")
                sys.stdout.flush()

        async def deliverer():
            # Keeps leases open and records deferrals while the kill lands (S5/S6).
            while True:
                got = await s.lease_due(time.time(), 8)
                if got:
                    await s.record([RecipientUpdate(q.queue_id, q.rcpt_idx, QUEUED,
                                                    next_attempt=time.time() + 3600,
                                                    attempted_at=time.time())
                                    for q in got[::2]])
                await s.reclaim()
                await asyncio.sleep(0.002)

        await asyncio.gather(*(sender() for _ in range(8)), deliverer())

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


def test_sigkill_never_loses_an_acknowledged_message(tmp_path):
    state = tmp_path / "state"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests")))
    rng = random.Random(os.getpid())
    acknowledged: dict[str, int] = {}
    reports = []
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(state), str(round_ * 1_000_000)],
                                stdout=subprocess.PIPE, cwd=ROOT)
        try:
            first = proc.stdout.readline()
            assert first, "child died before acknowledging anything"
            time.sleep(rng.uniform(0.0, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            out = first + proc.stdout.read()
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        lines = out.decode().split("\n")
        for line in lines[:-1]:          # a torn last line was never fully acknowledged
            qid, n = line.split()
            acknowledged[qid] = int(n)
        reports.append(asyncio.run(_verify_after_kill(state, acknowledged)))
    # The child always dies holding leases (S5); recovery must have put them back.
    assert all(r.leased_reset > 0 for r in reports)


async def _verify_after_kill(state: Path, acknowledged: dict[str, int]):
    s = await Spool.open(state, now=time.time())
    try:
        assert s.recovery.corrupt == ()
        for qid, n in acknowledged.items():
            assert await s.read_body(qid) == body(n, 20000), qid
        counts = await s.counts()
        # Every recipient of every acknowledged message is still queued
        # (nothing was delivered), and none is stuck in a dead lease.
        assert counts[QUEUED] >= 2 * len(acknowledged)
        with db(state) as c:
            assert c.execute("SELECT COUNT(*) FROM recipients WHERE leased=1").fetchone() == (0,)
        return s.recovery
    finally:
        await s.close()
