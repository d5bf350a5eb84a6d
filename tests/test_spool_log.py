"""One fsync per acceptance batch (issue 12): the segment record is the record
of truth, the index commit is not fsynced, and recovery replays what the
index lost (crash states S1, S3, S3r, S4p, S9 of mta/spool/__init__.py).

Power loss is simulated honestly: by putting back the index file as it was
before the commits a power loss would take (a WAL that never reached the
disk), or by cutting the WAL of a SIGKILLed process at a random frame (what
SQLite recovers after a power loss is a prefix of its commits). Nothing is
mocked but the moment of the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from mta.core import BOUNCED, DELIVERED, QUEUED, RecipientUpdate, Reply, StorageError
from mta.spool import DsnMark, NewMessage, Spool, acceptance, replay, writer
from mta.spool.records import ENVELOPE, HEADER, envelope_block, scan
from mta.spool.segments import scan_segments, segment_name

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def body(n: int, size: int = 1500) -> bytes:
    head = (f"From: a@example.test\r\nSubject: log {n}\r\n"
            f"Message-ID: <log-{n}@example.test>\r\n\r\n").encode()
    line = f"line of message {n:08d}\r\n".encode()
    return head + line * (size // len(line) + 1)


def msg(n: int, rcpts=("r@example.net",), **kw) -> NewMessage:
    return NewMessage(sender="s@example.test", recipients=tuple(rcpts), body=body(n), **kw)


def segdir(state: Path) -> Path:
    return state / "spool" / "segments"


def index_path(state: Path) -> Path:
    return state / "spool" / "index.sqlite3"


@contextlib.contextmanager
def db(state: Path):
    c = sqlite3.connect(index_path(state), isolation_level=None)
    try:
        yield c
    finally:
        c.close()


def snapshot(state: Path) -> bytes:
    """The index file of a closed spool (its WAL checkpointed into it)."""
    assert not Path(str(index_path(state)) + "-wal").exists() or \
        Path(str(index_path(state)) + "-wal").stat().st_size == 0
    return index_path(state).read_bytes()


def lose_power(state: Path, image: bytes) -> None:
    """What a power loss leaves when no commit since `image` reached the
    disk: the index file as it was, no WAL. The segments are untouched
    (their records were fdatasynced before any 250)."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(index_path(state)) + suffix)
    index_path(state).write_bytes(image)


def index_state(state: Path) -> dict[str, object]:
    """Everything an acceptance writes, in a comparable form (event seqs
    left out: a replay gives new ones; their per-message order is kept)."""
    with db(state) as c:
        events: dict[str, list[tuple]] = {}
        for row in c.execute("SELECT queue_id, at, type, recipient, credential, detail "
                             "FROM events ORDER BY seq"):
            events.setdefault(row[0], []).append(row[1:])
        return {
            "messages": c.execute("SELECT * FROM messages ORDER BY id").fetchall(),
            "recipients": c.execute("SELECT * FROM recipients "
                                    "ORDER BY message_id, rcpt_idx").fetchall(),
            "events": events,
            "idempotency": c.execute("SELECT * FROM idempotency ORDER BY key").fetchall(),
            # the mark of each segment: the later of its segment_marks row and
            # the end of the furthest record a row points at
            "marks": c.execute(
                "SELECT segment, MAX(e) FROM (SELECT segment, indexed_end AS e FROM segment_marks"
                ' UNION ALL SELECT segment, "offset" + ? + length FROM messages) GROUP BY segment',
                (HEADER.size,)).fetchall(),
        }


# -- the envelope --------------------------------------------------------------------------

def test_envelope_round_trips_every_field_of_the_enqueue():
    m = NewMessage(sender="s@example.test",
                   recipients=("a@example.net", "ü@exämple.org", "c@x.test"), body=body(1),
                   credential="app1", listener="submission", client_ip="192.0.2.7",
                   is_dsn=True, suppressed=((2, "550 5.7.1 on the list"),),
                   idempotency_key="order-ü-1")
    mark = DsnMark("ORIGINALORIGINAL", (0, 3), "delay")
    p = acceptance.pending_message(m, T0 + 0.123456789, dsn_for=mark, idempotency_window=3600.5)
    back = replay.pending(replay.envelope(p))
    assert back == dataclasses.replace(p, body=b"", tail=None)
    assert back.received_at == T0 + 0.123456789           # exactly, not rounded
    assert json.loads(back.received_detail)["message_id"] == "<log-1@example.test>"


@pytest.mark.parametrize("bad", [b"{", b"[]", b'{"v": 2}', b'{"v": 1, "id": "X"}'])
def test_envelope_that_does_not_decode_is_refused(bad):
    with pytest.raises(ValueError):
        replay.pending(bad)


async def test_each_record_carries_its_envelope(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    try:
        qid = await s.enqueue(msg(1, ("a@example.net", "b@example.org"), credential="app1",
                                  idempotency_key="k1"), T0)
    finally:
        await s.close()
    [seg] = scan_segments(segdir(tmp_path))
    found = scan(segdir(tmp_path) / segment_name(seg), 0)
    [rec] = found.records
    assert (found.stop, found.end) == ("eof", (segdir(tmp_path) / segment_name(seg)).stat().st_size)
    m = replay.pending(rec.envelope)
    assert (m.queue_id, m.recipients, m.credential, m.idempotency_key) == \
        (qid, ("a@example.net", "b@example.org"), "app1", "k1")
    assert rec.queue_id == qid and rec.length == len(body(1))


async def test_the_writer_commits_without_fsync(tmp_path):
    """The index commit of an enqueue batch is synchronous=NORMAL (before
    issue 12 it switched to FULL for batches with enqueues)."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        await asyncio.gather(*(s.enqueue(msg(i), T0) for i in range(5)))
        assert s.stats.fsyncs >= 1 and s.stats.commits >= 1
        [(level,)] = await s._conn.execute_fetchall("PRAGMA synchronous")
        assert level == 1          # NORMAL
    finally:
        await s.close()


# -- S4p: the commit lost to power -----------------------------------------------------------

async def _acceptances(s: Spool, f: str) -> dict[str, str]:
    """Every kind of acceptance, some in one batch: plain, accept-and-record,
    keys (a first use, and repeats of an old and of a new key), a DSN with
    its mark on `f`."""
    ids = await asyncio.gather(
        s.enqueue(msg(10, ("a@example.net", "b@example.org"), credential="app1",
                      listener="submission", client_ip="192.0.2.1"), T0 + 10),
        s.enqueue(msg(11, ("c@example.net", "d@example.org"),
                      suppressed=((1, "550 5.7.1 suppressed"),)), T0 + 11),
        s.enqueue(msg(12, credential="app1", idempotency_key="order-7"), T0 + 12),
        s.enqueue(msg(13, credential="app1", idempotency_key="order-8"), T0 + 13))
    again = await s.enqueue(msg(14, credential="app1", idempotency_key="order-8"), T0 + 14)
    dsn = await s.enqueue(NewMessage("", ("s@example.test",), b"DSN\r\n", is_dsn=True), T0 + 15,
                          dsn_for=DsnMark(f, (0,), "failure"))
    return {"plain": ids[0], "suppressed": ids[1], "repeat_old": ids[2], "new_key": ids[3],
            "repeat_new": again, "dsn": dsn}


async def test_commits_lost_to_power_are_replayed_from_the_log(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    try:
        o = await s.enqueue(msg(1, credential="app1", idempotency_key="order-7"), T0)
        f = await s.enqueue(msg(2), T0)
        await s.lease_due(T0, 10)
        await s.record([RecipientUpdate(f, 0, BOUNCED, Reply.parse("550 5.1.1 gone"),
                                        attempted_at=T0)])
    finally:
        await s.close()
    image = snapshot(tmp_path)

    s = await Spool.open(tmp_path, now=T0)
    try:
        ids = await _acceptances(s, f)
        assert (ids["repeat_old"], ids["repeat_new"]) == (o, ids["new_key"])
    finally:
        await s.close()
    before = index_state(tmp_path)
    lose_power(tmp_path, image)
    assert index_state(tmp_path) != before

    s = await Spool.open(tmp_path, now=T0)
    try:
        r = s.recovery
        assert (r.replayed, r.replay_duplicates, r.replay_skipped, r.replay_unreadable) == \
            (4, 2, 0, 0)
        assert r.corrupt == () and r.tails_truncated == 0
        assert index_state(tmp_path) == before
        for name, n in (("plain", 10), ("suppressed", 11), ("new_key", 13)):
            assert await s.read_body(ids[name]) == body(n)
        # The keys answer the original ids after recovery.
        assert await s.enqueue(msg(20, credential="app1", idempotency_key="order-8"),
                               T0 + 20) == ids["new_key"]
        assert await s.enqueue(msg(21, credential="app1", idempotency_key="order-7"),
                               T0 + 21) == o
        assert await s.dsn_candidates() == []            # the DSN's mark is back (S8)
    finally:
        await s.close()
    s = await Spool.open(tmp_path, now=T0)               # replayed once, never again
    try:
        assert (s.recovery.replayed, s.recovery.replay_duplicates) == (0, 0)
    finally:
        await s.close()


async def test_without_the_replay_the_lost_commits_would_be_lost(tmp_path, monkeypatch):
    """The control for the test above: the same power loss, recovery's
    scan made blind: the acknowledged messages are gone (so the replay is
    what keeps them)."""
    s = await Spool.open(tmp_path, now=T0)
    await s.close()
    image = snapshot(tmp_path)
    s = await Spool.open(tmp_path, now=T0)
    qid = await s.enqueue(msg(1), T0)
    await s.close()
    lose_power(tmp_path, image)
    from mta.spool import recovery
    monkeypatch.setattr(recovery, "scan", lambda path, start: scan(path, 1 << 62))
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert await s.get_message(qid) is None
    finally:
        await s.close()


# -- S3 and S3r: records whose transaction never committed ----------------------------------

def _fail_enqueues(monkeypatch) -> None:
    async def fail(txn, placed):
        raise RuntimeError("simulated index failure")
    monkeypatch.setattr(writer, "HANDLERS", ((writer.ENQUEUE, fail),) + writer.HANDLERS[1:])


async def test_record_of_a_451_comes_back_after_a_restart(tmp_path, monkeypatch):
    """S3r without a later commit in its segment: the client got 451, the
    message is queued after the restart (a duplicate at worst), with its key."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        kept = await s.enqueue(msg(1), T0)
        with monkeypatch.context() as m:
            _fail_enqueues(m)
            with pytest.raises(StorageError):
                await s.enqueue(msg(2, credential="app1", idempotency_key="k",
                                    queue_id="FAILEDFAILED0002"), T0)
        assert await s.get_message("FAILEDFAILED0002") is None
    finally:
        await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.replayed == 1
        assert await s.read_body("FAILEDFAILED0002") == body(2)
        assert await s.read_body(kept) == body(1)
        assert await s.enqueue(msg(3, credential="app1", idempotency_key="k"),
                               T0) == "FAILEDFAILED0002"
    finally:
        await s.close()


async def test_record_of_a_451_stays_garbage_once_a_later_batch_commits(tmp_path, monkeypatch):
    """S3r: the next commit in the same segment moves the mark past it."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        with monkeypatch.context() as m:
            _fail_enqueues(m)
            with pytest.raises(StorageError):
                await s.enqueue(msg(2, queue_id="FAILEDFAILED0002"), T0)
        later = await s.enqueue(msg(3), T0)
    finally:
        await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.replayed == 0
        assert await s.get_message("FAILEDFAILED0002") is None
        assert await s.read_body(later) == body(3)
    finally:
        await s.close()


async def test_record_whose_id_is_already_indexed_is_skipped(tmp_path):
    """A caller naming an id twice: the second batch fails on the primary
    key (451); its record past the mark must not break recovery."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        await s.enqueue(msg(1, queue_id="NAMEDNAMEDNAMED1"), T0)
        with pytest.raises(StorageError):
            await s.enqueue(msg(2, queue_id="NAMEDNAMEDNAMED1"), T0)
    finally:
        await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert (s.recovery.replayed, s.recovery.replay_skipped) == (0, 1)
        assert await s.read_body("NAMEDNAMEDNAMED1") == body(1)
    finally:
        await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.replay_skipped == 0                # the mark moved past it
    finally:
        await s.close()


async def test_duplicate_answered_before_the_crash_is_not_replayed_after_its_key_expired(
        tmp_path):
    """The mark covers a duplicate's record too: once its answer (the
    original id) is durable, pruning the key must not turn the record into
    a new message at the next start."""
    s = await Spool.open(tmp_path, now=T0)
    try:
        o = await s.enqueue(msg(1, credential="app1", idempotency_key="k"), T0)
        assert await s.enqueue(msg(2, credential="app1", idempotency_key="k"), T0 + 1) == o
        assert await s.ledger.prune_idempotency(T0 + 10) == 1
    finally:
        await s.close()
    s = await Spool.open(tmp_path, now=T0 + 20)
    try:
        assert (s.recovery.replayed, s.recovery.replay_duplicates) == (0, 0)
        assert [m.id for m in await s.list_messages()] == [o]
    finally:
        await s.close()


# -- S1: torn and corrupt tails ---------------------------------------------------------------

def _v2_record(queue_id: str, data: bytes, envelope: bytes) -> bytes:
    return envelope_block(envelope) + HEADER.pack(
        b"MTA1", queue_id.encode().ljust(16, b"\0"), len(data), zlib.crc32(data)) + data


@pytest.mark.parametrize("damage", ["torn", "body_crc", "envelope_crc"])
async def test_torn_or_corrupt_record_is_cut_never_replayed(tmp_path, damage):
    s = await Spool.open(tmp_path, now=T0)
    try:
        kept = await s.enqueue(msg(1), T0)
    finally:
        await s.close()
    [seg] = scan_segments(segdir(tmp_path))
    path = segdir(tmp_path) / segment_name(seg)
    good = path.stat().st_size
    p = acceptance.pending_message(msg(2, queue_id="TORNTORNTORNTORN"), T0)
    record = bytearray(_v2_record(p.queue_id, p.body, replay.envelope(p)))
    if damage == "torn":
        record = record[:len(record) - 100]
    elif damage == "body_crc":
        record[-10] ^= 1
    else:
        record[ENVELOPE.size + 5] ^= 1
    with open(path, "ab") as f:
        f.write(record)
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.replayed == 0
        assert (s.recovery.tails_truncated, s.recovery.tail_bytes_truncated) == (1, len(record))
        assert path.stat().st_size == good
        assert await s.get_message("TORNTORNTORNTORN") is None
        assert await s.read_body(kept) == body(1)
    finally:
        await s.close()


async def test_whole_record_with_an_undecodable_envelope_is_kept_and_reported(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    try:
        kept = await s.enqueue(msg(1), T0)
    finally:
        await s.close()
    [seg] = scan_segments(segdir(tmp_path))
    path = segdir(tmp_path) / segment_name(seg)
    with open(path, "ab") as f:
        f.write(_v2_record("ODDODDODDODDODD1", b"body\r\n", b'{"v": 1, "id": 7}'))
    size = path.stat().st_size
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert (s.recovery.replayed, s.recovery.replay_unreadable) == (0, 1)
        assert s.recovery.tails_truncated == 0 and path.stat().st_size == size
        assert await s.get_message("ODDODDODDODDODD1") is None
        assert await s.read_body(kept) == body(1)
    finally:
        await s.close()


async def test_checkpoints_run_beside_the_writer_not_in_its_commits(tmp_path, monkeypatch):
    """SQLite's automatic checkpoint (inside a COMMIT, fsyncing all the WAL
    written since the last sync) is off on the writer's connection; wal.py
    runs PASSIVE checkpoints on a connection of its own, and the writer
    checkpoints itself only when the WAL outgrows WAL_FRAMES_MAX."""
    from mta.spool import wal
    s = await Spool.open(tmp_path, now=T0)
    try:
        s._writer.wal.checkpoint_every = 4
        results = []
        checkpointer = s._writer.wal._checkpointer
        real = checkpointer.run
        checkpointer.run = lambda: results.append(real()) or results[-1]
        for i in range(40):
            await s.enqueue(msg(i), T0)
        [(auto,)] = await s._conn.execute_fetchall("PRAGMA wal_autocheckpoint")
        assert auto == 0
        deadline = time.monotonic() + 30
        while s.stats.checkpoints < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert s.stats.checkpoints >= 5 and s.stats.inline_checkpoints == 0
        assert any(copied > 0 for _, _, copied in results)   # pages reached the index file
        monkeypatch.setattr(wal, "WAL_FRAMES_MAX", 0)
        for i in range(8):
            await s.enqueue(msg(100 + i), T0)
        while s.stats.inline_checkpoints < 1 and time.monotonic() < deadline:
            await s.enqueue(msg(200), T0)       # the writer runs it between two batches
        assert s.stats.inline_checkpoints >= 1
        # A checkpoint beside the writer that fails: the writer runs one itself.
        monkeypatch.setattr(wal, "WAL_FRAMES_MAX", 10**9)
        done = s.stats.inline_checkpoints

        def broken():
            raise sqlite3.OperationalError("disk I/O error")
        checkpointer.run = broken
        while s.stats.inline_checkpoints == done and time.monotonic() < deadline:
            await s.enqueue(msg(300), T0)
        assert s.stats.inline_checkpoints > done
        assert len(await s.list_messages(limit=1000)) >= 48
    finally:
        await s.close()


# -- S9 and numbering --------------------------------------------------------------------------

async def test_wal_is_synced_after_commits_and_before_any_unlink(tmp_path):
    synced_with: list[set[int]] = []
    s = await Spool.open(tmp_path, now=T0, segment_max_bytes=1)     # one segment per batch
    try:
        real = s._writer._sync_index
        assert real is not None

        def sync() -> None:
            synced_with.append(set(scan_segments(segdir(tmp_path))))
            real()
        s._writer._sync_index = s._writer.wal._sync_index = sync
        s._writer.wal.sync_interval = 0.05
        a = await s.enqueue(msg(1), T0)
        deadline = time.monotonic() + 30
        while not synced_with and time.monotonic() < deadline:   # the timer, while idle
            await asyncio.sleep(0.02)
        assert synced_with and s.stats.wal_syncs >= 1
        await s.enqueue(msg(2), T0)
        s._writer.wal.sync_interval = 3600.0     # from here on only reclaim syncs
        await asyncio.sleep(0.2)                 # (a timer already started may fire)
        assert a in {q.queue_id for q in await s.lease_due(T0, 10)}
        await s.record([RecipientUpdate(a, 0, DELIVERED, attempted_at=T0)])
        synced_with.clear()
        assert await s.reclaim() == 1
        # reclaim synced the WAL while the dead segment still existed
        assert synced_with and len(synced_with[0]) == 2
        assert len(scan_segments(segdir(tmp_path))) == 1
    finally:
        await s.close()


async def test_segment_numbers_are_never_reused_even_of_marked_segments(tmp_path):
    """A reused number would inherit a stale mark (and skip the replay of
    its first records)."""
    s = await Spool.open(tmp_path, now=T0)
    await s.close()
    with db(tmp_path) as c:
        c.execute("INSERT INTO segment_marks VALUES (500, 1234)")
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.next_segment == 501
        await s.enqueue(msg(1), T0)
        assert list(scan_segments(segdir(tmp_path))) == [501]
    finally:
        await s.close()


# -- a spool written by the format before issue 12 ------------------------------------------

async def test_a_v1_spool_opens_and_keeps_working(tmp_path):
    with tarfile.open(FIXTURES / "spool_v1.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    fix = {k: manifest[k] for k in ("queued", "delivered", "suppressed", "orphan")}
    with db(tmp_path) as c:
        assert c.execute("SELECT name FROM sqlite_master WHERE name = 'segment_marks'"
                         ).fetchall() == []                       # made before issue 12
    [seg] = scan_segments(segdir(tmp_path))
    assert (segdir(tmp_path) / segment_name(seg)).read_bytes()[:4] == b"MTA1"

    s = await Spool.open(tmp_path, now=T0)
    try:
        r = s.recovery
        assert r.corrupt == () and r.replayed == 0 and r.replay_unreadable == 0
        assert r.tails_truncated == 1                             # the v1 orphan: garbage
        assert await s.get_message(fix["orphan"]) is None
        for qid, n in manifest["bodies"].items():
            if qid != fix["delivered"]:
                got = await s.read_body(qid)
                assert got.startswith(f"From: a@example.test\r\nSubject: v1 message {n}\r\n"
                                      .encode())
        q = await s.get_message(fix["queued"])
        assert [x.state for x in q.recipients] == [QUEUED, QUEUED] and q.credential == "app1"
        sup = await s.get_message(fix["suppressed"])
        assert [x.state for x in sup.recipients] == [QUEUED, "suppressed"]
        assert await s.enqueue(msg(5, credential="app1", idempotency_key="order-1"),
                               T0 + 5) == fix["queued"]
        new = await s.enqueue(msg(6), T0 + 6)
    finally:
        await s.close()
    segs = sorted(scan_segments(segdir(tmp_path)))
    assert segs == [seg, seg + 1]                                 # v2 records in a new one
    assert (segdir(tmp_path) / segment_name(seg + 1)).read_bytes()[:4] == b"MTA2"
    image = snapshot(tmp_path)
    s = await Spool.open(tmp_path, now=T0)
    try:
        newer = await s.enqueue(msg(7), T0 + 7)
    finally:
        await s.close()
    lose_power(tmp_path, image)
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert s.recovery.replayed == 1 and s.recovery.tails_truncated == 0
        assert await s.read_body(newer) == body(7)
        assert await s.read_body(new) == body(6)
        assert await s.get_message(fix["queued"]) is not None
    finally:
        await s.close()


# -- S3 and S4p under load, in a real process -----------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_spool_log import body
    from mta.core import QUEUED, RecipientUpdate
    from mta.spool import NewMessage, Spool, index, writer

    # The WAL keeps every frame of this run (no checkpoint copies it into the
    # index file), so the parent can cut it where a power loss would.
    index.PRAGMAS = index.PRAGMAS + ("PRAGMA wal_autocheckpoint=0",)
    index.SqliteCheckpointer.run = lambda self: (0, 0, 0)

    async def main(state, start, mode):
        s = await Spool.open(state, now=time.time(), segment_max_bytes=128 * 1024)
        counter = iter(range(start, start + 10**9))
        if mode == "kill-before-commit":
            real = writer.HANDLERS[0][1]
            armed = []

            async def die(txn, placed):
                if armed:
                    os.kill(os.getpid(), signal.SIGKILL)
                return await real(txn, placed)
            writer.HANDLERS = ((writer.ENQUEUE, die),) + writer.HANDLERS[1:]

        async def sender():
            while True:
                n = next(counter)
                qid = await s.enqueue(NewMessage("s@example.test", ("r@example.net",),
                                                 body(n, 3000)), time.time())
                sys.stdout.write(f"{{qid}} {{n}}\\n")
                sys.stdout.flush()

        async def deliverer():
            while True:      # leases and deferrals between the enqueues
                got = await s.lease_due(time.time(), 8)
                if got:
                    await s.record([RecipientUpdate(q.queue_id, q.rcpt_idx, QUEUED,
                                                    next_attempt=time.time() + 3600,
                                                    attempted_at=time.time()) for q in got])
                await asyncio.sleep(0.002)

        if mode == "kill-before-commit":
            for n in range(20):
                qid = await s.enqueue(NewMessage("s@example.test", ("r@example.net",),
                                                 body(start + n, 3000)), time.time())
                print(qid, start + n, flush=True)
            armed.append(1)
            await asyncio.gather(*(s.enqueue(NewMessage(
                "s@example.test", ("r@example.net",), body(start + 100 + i, 3000),
                queue_id=f"KILLED{{start // 1000000:02d}}{{i:08d}}"), time.time())
                for i in range(12)))
            raise SystemExit("not killed")
        await asyncio.gather(*(sender() for _ in range(6)), deliverer())

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
""")


def _run_child(tmp_path: Path, state: Path, start: int, mode: str, rng: random.Random) -> bytes:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests")))
    proc = subprocess.Popen([sys.executable, str(script), str(state), str(start), mode],
                            stdout=subprocess.PIPE, cwd=ROOT)
    try:
        first = proc.stdout.readline()
        assert first, "child died before acknowledging anything"
        if mode == "load":
            time.sleep(rng.uniform(0.1, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
        out = first + proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return out


def _acked(out: bytes) -> dict[str, int]:
    lines = out.decode().split("\n")
    return {qid: int(n) for qid, n in (line.split() for line in lines[:-1])}


def cut_wal(state: Path, rng: random.Random) -> tuple[int, int]:
    """Keep a random prefix of the WAL's frames (what SQLite recovers after
    a power loss is a prefix of its commits). Returns (kept, frames)."""
    wal = Path(str(index_path(state)) + "-wal")
    data = wal.read_bytes()
    (page_size,) = struct.unpack_from(">I", data, 8)
    frame = 24 + page_size
    frames = (len(data) - 32) // frame
    kept = rng.randint(0, frames)
    wal.write_bytes(data[:32 + kept * frame])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(str(index_path(state)) + "-shm")
    return kept, frames


async def _verify(state: Path, acked: dict[str, int]):
    s = await Spool.open(state, now=time.time())
    try:
        assert s.recovery.corrupt == () and s.recovery.replay_unreadable == 0
        for qid, n in acked.items():
            assert await s.read_body(qid) == body(n, 3000), qid
        with db(state) as c:
            assert c.execute("SELECT COUNT(*) FROM recipients WHERE leased=1").fetchone() == (0,)
        return s.recovery
    finally:
        await s.close()


def test_power_loss_under_load_loses_no_acknowledged_message(tmp_path, report):
    """SIGKILL a process that enqueues and defers under load, then cut its
    WAL at a random frame: every message it acknowledged is back, from the
    index or from the log."""
    state = tmp_path / "state"
    rng = random.Random(os.getpid())
    acked: dict[str, int] = {}
    replayed = 0
    for round_ in range(4):
        acked.update(_acked(_run_child(tmp_path, state, round_ * 1_000_000, "load", rng)))
        kept, frames = cut_wal(state, rng)
        r = asyncio.run(_verify(state, acked))
        replayed += r.replayed
    report(f"power-loss test: {len(acked)} acknowledged messages, 4 WAL cuts, "
           f"{replayed} replayed from the log, 0 lost")
    assert replayed > 0, "no cut took a commit: the test proved nothing"


def test_kill_before_commit_every_record_comes_back_exactly_once(tmp_path):
    """The batch's records are fdatasynced, the process dies inside its
    transaction (before COMMIT): S3. After the restart each of them is
    queued exactly once, and nothing acknowledged before is missing."""
    state = tmp_path / "state"
    rng = random.Random(os.getpid())
    acked = _acked(_run_child(tmp_path, state, 0, "kill-before-commit", rng))
    assert len(acked) == 20
    r = asyncio.run(_verify(state, acked))
    killed = [f"KILLED00{i:08d}" for i in range(12)]
    assert r.replayed == 12

    async def check():
        s = await Spool.open(state, now=time.time())
        try:
            assert s.recovery.replayed == 0
            for i, qid in enumerate(killed):
                assert await s.read_body(qid) == body(100 + i, 3000)
            assert len(await s.list_messages(limit=100)) == 20 + 12
        finally:
            await s.close()
    asyncio.run(check())
    shutil.rmtree(state)
