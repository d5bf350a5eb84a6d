"""Operator queue steering on the spool (issue 5): hold / release / retry /
bounce / delete by `MessageFilter`, keyset pages, the per-domain summary and
the metrics gauges. Real SQLite files and segments; a fixed `now`.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import pytest

from mta.core import (BOUNCED, DELETED, DELIVERED, HELD, QUEUED, RecipientUpdate, Reply)
from mta.core.envelope import RECIPIENT_MACHINE
from mta.core.qshape import AGE_BUCKETS
from mta.core.statemachine import IllegalTransition
from mta.spool import DsnMark, MessageFilter, NewMessage, Spool, filters, queue_sql
from mta.spool.steering import OPERATOR_MOVES

T0 = 1_700_000_000.0
OPERATOR_REPLY = Reply(550, "5.0.0", "Bounced by the postmaster")


def new(i: int = 0, *, sender="app@example.test", rcpts=("a@x.test",)) -> NewMessage:
    return NewMessage(sender=sender, recipients=tuple(rcpts),
                      body=f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())


def deferral(qid, idx, at, next_attempt, reply="451 4.7.1 try later"):
    return RecipientUpdate(queue_id=qid, rcpt_idx=idx, state=QUEUED, reply=Reply.parse(reply),
                           next_attempt=next_attempt, attempted_at=at, duration=0.1,
                           remote_host="mx.x.test")


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "spool" / "index.sqlite3")


@pytest.fixture
async def spool(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    yield s
    await s.close()


async def states(spool, qid) -> list[str]:
    return [r.state for r in (await spool.get_message(qid)).recipients]


async def leased_ids(spool, now) -> set[tuple[str, int]]:
    items = await spool.lease_due(now, 10_000)
    return {(i.queue_id, i.rcpt_idx) for i in items}


# -- the state machine -------------------------------------------------------------

def test_transition_table_has_the_operator_states():
    assert RECIPIENT_MACHINE.allowed(HELD) == {QUEUED, BOUNCED, DELETED}
    assert RECIPIENT_MACHINE.allowed(DELETED) == frozenset()
    assert HELD in RECIPIENT_MACHINE.allowed(QUEUED) and DELETED in RECIPIENT_MACHINE.allowed(QUEUED)
    for action, move in OPERATOR_MOVES.items():
        for old in move.froms:
            RECIPIENT_MACHINE.check(old, move.to)
    for old, new_state in [(DELETED, QUEUED), (DELIVERED, HELD), (HELD, DELIVERED), (BOUNCED, DELETED)]:
        with pytest.raises(IllegalTransition):
            RECIPIENT_MACHINE.check(old, new_state)


def test_filter_rejects_unknown_state_and_bare_string_ids():
    with pytest.raises(ValueError):
        MessageFilter(state="frozen")
    with pytest.raises(TypeError):
        MessageFilter(ids="ABC")
    assert MessageFilter(state=DELIVERED).includes_done
    assert not MessageFilter(state=HELD).includes_done


# -- each move, with each kind of filter ------------------------------------------

async def test_hold_by_each_filter_field(spool):
    a = await spool.enqueue(new(1, sender="One@Example.test", rcpts=("a@x.test", "b@y.test")), T0)
    b = await spool.enqueue(new(2, sender="two@example.test", rcpts=("c@y.test",)), T0 + 1)
    c = await spool.enqueue(new(3, sender="two@example.test", rcpts=("Dee@x.test",)), T0 + 2)  # domain normalised by callers

    assert await spool.hold_messages(MessageFilter(ids=(a,)), T0) == 2
    assert await states(spool, a) == [HELD, HELD]
    assert await spool.release_messages(MessageFilter(), T0) == 2

    # domain: only the recipients at that domain, not their message's others
    assert await spool.hold_messages(MessageFilter(domain="Y.TEST"), T0) == 2
    assert await states(spool, a) == [QUEUED, HELD] and await states(spool, b) == [HELD]
    assert await spool.release_messages(MessageFilter(domain="y.test"), T0) == 2

    # sender: exact but case-insensitive
    assert await spool.hold_messages(MessageFilter(sender="TWO@example.test"), T0) == 2
    assert await states(spool, b) == [HELD] and await states(spool, c) == [HELD]
    assert await states(spool, a) == [QUEUED, QUEUED]
    assert await spool.hold_messages(MessageFilter(sender="two@"), T0) == 0
    assert await spool.release_messages(MessageFilter(), T0) == 2

    # recipient: exact address, domain part compared lower-cased as stored
    assert await spool.hold_messages(MessageFilter(recipient="Dee@x.TEST"), T0) == 1
    assert await spool.hold_messages(MessageFilter(recipient="dee@x.test"), T0) == 0
    assert await states(spool, c) == [HELD]

    # state: release only what the state filter names
    assert await spool.release_messages(MessageFilter(state=QUEUED), T0) == 0
    assert await spool.release_messages(MessageFilter(state=HELD), T0) == 1
    assert await spool.counts() == {QUEUED: 4, DELIVERED: 0, BOUNCED: 0, EXPIRED_KEY: 0}


EXPIRED_KEY = "expired"


async def test_state_deferred_means_queued_with_attempts(spool):
    a = await spool.enqueue(new(1), T0)
    b = await spool.enqueue(new(2), T0)
    [item] = [i for i in await spool.lease_due(T0, 10) if i.queue_id == a]
    await spool.release([(b, 0)])
    await spool.record([deferral(a, 0, T0 + 1, T0 + 600)])
    assert await spool.hold_messages(MessageFilter(state="deferred"), T0 + 2) == 1
    assert await states(spool, a) == [HELD] and await states(spool, b) == [QUEUED]


async def test_leased_recipients_are_left_alone_by_every_move(spool):
    a = await spool.enqueue(new(1, rcpts=("a@x.test", "b@x.test")), T0)
    items = await spool.lease_due(T0, 1)          # leases only a/0
    assert [(i.queue_id, i.rcpt_idx) for i in items] == [(a, 0)]
    everything = MessageFilter(ids=(a,))
    assert await spool.retry_messages(everything, T0) == 1
    assert await spool.hold_messages(everything, T0) == 1
    assert await states(spool, a) == [QUEUED, HELD]
    assert await spool.bounce_messages(MessageFilter(domain="x.test"), T0, OPERATOR_REPLY) == 1
    assert await states(spool, a) == [QUEUED, BOUNCED]
    assert await spool.delete_messages(everything, T0) == 0
    assert await states(spool, a) == [QUEUED, BOUNCED]
    with db(spool.root.parent) as c:
        assert c.execute("SELECT leased FROM recipients WHERE message_id=? AND rcpt_idx=0",
                         (a,)).fetchone() == (1,)
    # the attempt in flight finishes as usual
    await spool.record([RecipientUpdate(queue_id=a, rcpt_idx=0, state=DELIVERED,
                                        reply=Reply(250, "2.0.0", "ok"), attempted_at=T0 + 1)])
    assert (await spool.get_message(a)).done


async def test_hold_skips_lease_then_release_makes_it_leasable(spool):
    a = await spool.enqueue(new(1), T0)
    b = await spool.enqueue(new(2), T0)
    assert await spool.hold_messages(MessageFilter(ids=(a,)), T0) == 1
    assert await leased_ids(spool, T0 + 10) == {(b, 0)}
    await spool.release([(b, 0)])
    assert await spool.next_due_at() == T0          # b only; a is held
    with db(spool.root.parent) as c:
        assert c.execute("SELECT done, body_live FROM messages WHERE id=?", (a,)).fetchone() == (0, 1)
    assert await leased_ids(spool, T0 + 20) == {(b, 0)}   # still never a
    await spool.release([(b, 0)])

    assert await spool.release_messages(MessageFilter(ids=(a,)), T0 + 30) == 1
    view = await spool.get_message(a)
    assert view.recipients[0].state == QUEUED and view.recipients[0].next_attempt == T0 + 30
    assert await leased_ids(spool, T0 + 30) == {(a, 0), (b, 0)}


async def test_held_survives_a_restart(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    a = await s.enqueue(new(1), T0)
    await s.hold_messages(MessageFilter(), T0)
    await s.close()
    s = await Spool.open(tmp_path, now=T0 + 5)
    try:
        assert s.recovery.flags_fixed == 0 and s.recovery.leased_reset == 0
        assert await states(s, a) == [HELD]
        assert await s.lease_due(T0 + 99, 10) == []
        assert (await s.gauges())["messages_pending"] == 1
    finally:
        await s.close()


async def test_retry_makes_deferred_recipients_due_now(spool):
    a = await spool.enqueue(new(1), T0)
    await spool.lease_due(T0, 10)
    await spool.record([deferral(a, 0, T0 + 1, T0 + 3600)])
    assert await spool.lease_due(T0 + 60, 10) == []
    assert await spool.retry_messages(MessageFilter(domain="x.test"), T0 + 60) == 1
    assert await spool.next_due_at() == T0 + 60
    [item] = await spool.lease_due(T0 + 60, 10)
    assert item.queue_id == a and item.attempts == 1


async def test_bounce_owes_a_dsn_with_the_operator_reply(spool):
    a = await spool.enqueue(new(1, rcpts=("a@x.test", "b@y.test")), T0)
    other = await spool.enqueue(new(2, rcpts=("c@z.test",)), T0)
    await spool.hold_messages(MessageFilter(domain="y.test"), T0)   # held ones bounce too
    with pytest.raises(ValueError):
        await spool.bounce_messages(MessageFilter(ids=(a,)), T0, Reply(451, "4.0.0", "no"))
    assert await spool.bounce_messages(MessageFilter(ids=(a,)), T0 + 5, OPERATOR_REPLY) == 2
    view = await spool.get_message(a)
    assert view.done and [r.state for r in view.recipients] == [BOUNCED, BOUNCED]
    assert {(x.state, x.remote_host, x.reply, x.at) for x in view.attempts} == {
        (BOUNCED, "operator", str(OPERATOR_REPLY), T0 + 5)}
    [cand] = await spool.dsn_candidates()
    assert cand.queue_id == a and cand.sender == "app@example.test"
    assert [(r.address, r.state, r.reply, r.remote_host) for r in cand.recipients] == [
        ("a@x.test", BOUNCED, OPERATOR_REPLY, ""), ("b@y.test", BOUNCED, OPERATOR_REPLY, "")]
    assert await states(spool, other) == [QUEUED]
    assert await spool.read_body(a)           # kept for the DSN


async def test_delete_ends_the_message_without_dsn_and_frees_the_body(tmp_path):
    s = await Spool.open(tmp_path, now=T0, segment_max_bytes=1)   # one segment per batch
    try:
        a = await s.enqueue(new(1, rcpts=("a@x.test", "b@y.test", "c@z.test")), T0)
        b = await s.enqueue(new(2), T0 + 1)
        # a/0 bounced by the remote earlier: a DSN is owed for it...
        await s.lease_due(T0, 1)
        await s.record([RecipientUpdate(queue_id=a, rcpt_idx=0, state=BOUNCED,
                                        reply=Reply(550, "5.1.1", "no such user"),
                                        attempted_at=T0 + 1)])
        await s.hold_messages(MessageFilter(domain="z.test"), T0 + 2)
        # ...until the operator deletes the message (queued b/1 and held c/2)
        assert await s.delete_messages(MessageFilter(ids=(a,)), T0 + 3) == 2
        view = await s.get_message(a)
        assert view.done and [r.state for r in view.recipients] == [BOUNCED, DELETED, DELETED]
        assert [(x.state, x.remote_host) for x in view.attempts if x.rcpt_idx > 0] == [
            (DELETED, "operator"), (DELETED, "operator")]
        assert await s.dsn_candidates() == []
        with db(tmp_path) as c:
            assert c.execute("SELECT done, body_live FROM messages WHERE id=?", (a,)).fetchone() == (1, 0)
        assert await s.reclaim() == 1
        with pytest.raises(KeyError):
            await s.read_body(a)
        assert await s.read_body(b)
        assert await states(s, b) == [QUEUED]
        assert await s.lease_due(T0 + 99, 10) != []     # b only
        assert (await s.gauges())["recipients"][DELETED] == 2
    finally:
        await s.close()


async def test_delete_by_id_cancels_an_owed_dsn_of_a_done_message(spool):
    a = await spool.enqueue(new(1), T0)
    await spool.lease_due(T0, 1)
    await spool.record([RecipientUpdate(queue_id=a, rcpt_idx=0, state=BOUNCED,
                                        reply=Reply(550, "5.1.1", "no such user"),
                                        attempted_at=T0 + 1)])
    assert [c.queue_id for c in await spool.dsn_candidates()] == [a]
    assert await spool.delete_messages(MessageFilter(ids=(a,)), T0 + 2) == 0
    assert await spool.dsn_candidates() == []


async def test_moves_leave_unmatched_messages_alone(spool):
    a = await spool.enqueue(new(1, rcpts=("a@x.test",)), T0)
    assert await spool.delete_messages(MessageFilter(domain="nowhere.test"), T0) == 0
    assert await spool.bounce_messages(MessageFilter(ids=("NOSUCHID",)), T0, OPERATOR_REPLY) == 0
    assert await spool.delete_messages(MessageFilter(ids=("NOSUCHID",)), T0) == 0
    assert await states(spool, a) == [QUEUED]


# -- pages ---------------------------------------------------------------------------

async def page_all(spool, f, limit=100) -> list[str]:
    out, cursor, pages = [], None, 0
    while True:
        views, cursor = await spool.list_page(f, limit, cursor)
        out.extend(v.id for v in views)
        pages += 1
        assert pages < 10_000
        if cursor is None:
            return out
        assert len(views) == limit    # only the last page is short


@pytest.fixture(params=["walk", "drive"])
def plan(request, monkeypatch):
    # Both plans of reads.list_page must return the same pages.
    monkeypatch.setattr(filters, "DRIVE_CAP", 0 if request.param == "walk" else 10**9)
    return request.param


async def test_thousand_messages_page_exactly_by_every_filter(spool, plan):
    model = {}   # qid -> dict of what the filter fields see
    msgs = []
    for i in range(1000):
        rcpts = (f"u{i}@d{i % 7}.test",) + ((f"v{i}@shared.test",) if i % 3 == 0 else ())
        # 5 messages per timestamp: the id breaks the tie
        msgs.append((new(i, sender=f"S{i % 4}@example.test", rcpts=rcpts), T0 + i // 5, rcpts))
    for start in range(0, 1000, 250):
        ids = await asyncio.gather(*(spool.enqueue(m, at) for m, at, _ in msgs[start:start + 250]))
        for qid, (m, at, rcpts) in zip(ids, msgs[start:start + 250]):
            model[qid] = {"at": at, "sender": m.sender.lower(), "rcpts": rcpts,
                          "states": [QUEUED] * len(rcpts), "attempts": [0] * len(rcpts)}
    order = sorted(model, key=lambda q: (model[q]["at"], q))
    assert len(set(order)) == 1000

    held = order[10:200:3]
    await spool.hold_messages(MessageFilter(ids=tuple(held)), T0)
    for q in held:
        model[q]["states"] = [HELD] * len(model[q]["states"])
    delivered = order[500:560]
    items = [i for i in await spool.lease_due(T0 + 10**6, 5000)]
    updates, releases = [], []
    for it in items:
        if it.queue_id in delivered:
            updates.append(RecipientUpdate(queue_id=it.queue_id, rcpt_idx=it.rcpt_idx,
                                           state=DELIVERED, reply=Reply(250, "2.0.0", "ok"),
                                           attempted_at=T0))
            model[it.queue_id]["states"][it.rcpt_idx] = DELIVERED
        elif it.queue_id in order[600:700] and it.rcpt_idx == 0:
            updates.append(deferral(it.queue_id, 0, T0, T0 + 3600))
            model[it.queue_id]["attempts"][0] = 1
        else:
            releases.append((it.queue_id, it.rcpt_idx))
    await spool.record(updates)
    await spool.release(releases)

    def done(q):
        return all(s not in (QUEUED, HELD) for s in model[q]["states"])

    def expect(f: MessageFilter) -> list[str]:
        out = []
        for q in order:
            m = model[q]
            if f.ids and q not in f.ids:
                continue
            if f.sender is not None and m["sender"] != f.sender.lower():
                continue
            if not f.includes_done and done(q):
                continue
            ok = False
            for addr, st, att in zip(m["rcpts"], m["states"], m["attempts"]):
                if f.domain is not None and addr.rpartition("@")[2] != f.domain:
                    continue
                if f.recipient is not None and addr != f.recipient:
                    continue
                if f.state == "deferred" and not (st == QUEUED and att > 0):
                    continue
                if f.state not in (None, "deferred") and st != f.state:
                    continue
                ok = True
            if ok:
                out.append(q)
        return out

    cases = [
        MessageFilter(), MessageFilter(include_done=True), MessageFilter(domain="d3.test"),
        MessageFilter(domain="shared.test"), MessageFilter(sender="s2@EXAMPLE.test"),
        MessageFilter(recipient="u777@d0.test"), MessageFilter(state=HELD),
        MessageFilter(state=QUEUED), MessageFilter(state="deferred"), MessageFilter(state=DELIVERED),
        MessageFilter(ids=tuple(order[::37])), MessageFilter(ids=tuple(order[::37]), domain="d1.test"),
        MessageFilter(sender="s1@example.test", domain="shared.test", state=HELD),
        MessageFilter(domain="nowhere.test"),
    ]
    for f in cases:
        want = expect(f)
        got = await page_all(spool, f)
        assert got == want, f
        assert len(set(got)) == len(got)
    assert len(expect(MessageFilter())) == 1000 - 60
    assert len(expect(MessageFilter(state=DELIVERED))) == 60
    # pages carry every recipient of each message, not only the matching one
    views, _ = await spool.list_page(MessageFilter(domain="shared.test"), 1, None)
    assert len(views[0].recipients) == 2


async def test_cursor_is_opaque_and_checked(spool):
    for i in range(3):
        await spool.enqueue(new(i), T0 + i)
    views, cursor = await spool.list_page(MessageFilter(), 2, None)
    assert len(views) == 2 and isinstance(cursor, str) and "|" not in cursor
    assert filters.decode_cursor(cursor) == (views[1].received_at, views[1].id)
    views2, end = await spool.list_page(MessageFilter(), 2, cursor)
    assert len(views2) == 1 and end is None
    for bad in ("!!!", "bm9waXBl", ""):
        if bad:
            with pytest.raises(ValueError):
                await spool.list_page(MessageFilter(), 2, bad)
    with pytest.raises(ValueError):
        await spool.list_page(MessageFilter(), 0, None)
    _, last = await spool.list_page(MessageFilter(), 3, None)
    assert last is None   # an exactly full last page does not promise another


# -- summary and gauges ----------------------------------------------------------------

async def test_domain_summary_buckets_and_last_error(spool):
    now = T0 + 100_000
    ages_min = [1, 5, 7, 30, 100, 1000, 1280, 2000]
    ids = []
    for i, age in enumerate(ages_min):
        ids.append(await spool.enqueue(new(i, rcpts=("a@big.test",)), now - age * 60))
    small = await spool.enqueue(new(99, rcpts=("b@small.test", "c@small.test")), now - 60)
    done = await spool.enqueue(new(98, rcpts=("d@done.test",)), now - 60)
    items = {(i.queue_id, i.rcpt_idx) for i in await spool.lease_due(now, 100)}
    await spool.record([
        deferral(ids[0], 0, now - 50, now + 60, "451 4.7.1 older error"),
        deferral(ids[3], 0, now - 20, now + 60, "421 4.4.2 newest error"),
        deferral(ids[5], 0, now - 30, now + 60, "450 4.2.0 middle error"),
        RecipientUpdate(queue_id=done, rcpt_idx=0, state=DELIVERED, reply=Reply(250, "2.0.0", "ok"),
                        attempted_at=now)])
    await spool.release(items - {(ids[0], 0), (ids[3], 0), (ids[5], 0), (done, 0)})
    await spool.hold_messages(MessageFilter(ids=(small,)), now)
    await spool.hold_messages(MessageFilter(ids=(ids[3],)), now)   # held: not "deferred" any more

    rows = await spool.domain_summary(now)
    assert [r["domain"] for r in rows] == ["big.test", "small.test"]
    big, sm = rows
    assert big["recipients"] == 8 and big["held"] == 1
    assert big["oldest_received_at"] == now - 2000 * 60
    assert big["age_buckets"] == {"5m": 2, "10m": 1, "20m": 0, "40m": 1, "80m": 0, "160m": 1,
                                  "320m": 0, "640m": 0, "1280m": 2, "1280m+": 1}
    assert list(big["age_buckets"]) == list(AGE_BUCKETS)
    assert big["last_error"] == "450 4.2.0 middle error"
    assert sm == {"domain": "small.test", "recipients": 2, "held": 2,
                  "oldest_received_at": now - 60,
                  "age_buckets": {**{k: 0 for k in AGE_BUCKETS}, "5m": 2},
                  "last_error": None}


async def test_gauges(tmp_path):
    s = await Spool.open(tmp_path, now=T0, segment_max_bytes=1)
    try:
        g = await s.gauges()
        assert g == {"recipients": {st: 0 for st in queue_sql.ALL_STATES}, "messages_pending": 0,
                     "oldest_pending_received_at": None, "spool_bytes": 0, "segments": 0}
        a = await s.enqueue(new(1, rcpts=("a@x.test", "b@x.test")), T0 + 1)
        b = await s.enqueue(new(2), T0 + 2)
        await s.hold_messages(MessageFilter(ids=(b,)), T0)
        g = await s.gauges()
        assert g["recipients"][QUEUED] == 2 and g["recipients"][HELD] == 1
        assert g["messages_pending"] == 2 and g["oldest_pending_received_at"] == T0 + 1
        segs = sorted((tmp_path / "spool" / "segments").iterdir())
        assert len(segs) == 2 and g["segments"] == 2
        assert g["spool_bytes"] == sum(p.stat().st_size for p in segs)
        await s.delete_messages(MessageFilter(ids=(a,)), T0)
        g = await s.gauges()
        assert g["spool_bytes"] == segs[1].stat().st_size     # a's segment is dead
        assert g["oldest_pending_received_at"] == T0 + 2 and g["messages_pending"] == 1
    finally:
        await s.close()


# -- scale: 100,000 messages -------------------------------------------------------------

def _plan_rows(conn: sqlite3.Connection, sql: str, params) -> list[str]:
    return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


async def test_hundred_thousand_messages_page_500_uses_indexes(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    n = 100_000
    try:
        t = time.perf_counter()
        for start in range(0, n, 1000):
            await asyncio.gather(*(
                s.enqueue(new(i, sender=f"s{i % 10}@example.test",
                              rcpts=(f"u{i}@d{i % 50}.test",)), T0 + i / 1000)
                for i in range(start, start + 1000)))
        print(f"\nenqueued {n} messages in {time.perf_counter() - t:.1f} s")

        for f in (MessageFilter(), MessageFilter(domain="d7.test"), MessageFilter(sender="S3@example.test")):
            cursor, page = None, 0
            pages = 500 if f == MessageFilter() else 10
            for page in range(1, pages + 1):
                t = time.perf_counter()
                views, cursor = await s.list_page(f, 100, cursor)
                took = time.perf_counter() - t
            assert len(views) == 100 and cursor is not None
            print(f"page {page} of 100 with {f}: {took * 1000:.2f} ms")
        first = views[0]

        # every page/target plan seeks indexes; none scans recipients (or messages)
        plans = []
        with db(tmp_path) as conn:
            after = (first.received_at, first.id)
            for f in (MessageFilter(), MessageFilter(include_done=True),
                      MessageFilter(domain="d7.test"), MessageFilter(sender="s3@example.test"),
                      MessageFilter(recipient="u5@d5.test"), MessageFilter(state=HELD),
                      MessageFilter(state="deferred"), MessageFilter(state=DELIVERED),
                      MessageFilter(ids=(first.id,))):
                for drive in (False, True):
                    plans.append((f, drive, _plan_rows(conn, *filters.page_sql(f, after, 101, drive=drive))))
                plans.append((f, "targets", _plan_rows(conn, *filters.targets_sql(f, {QUEUED, HELD}))))
                probe = filters.probe_sql(f)
                if probe:
                    plans.append((f, "probe", _plan_rows(conn, *probe)))
            plans.append(("summary", "", _plan_rows(conn, queue_sql.SQL_DOMAIN_SUMMARY, (T0,))))
            # gauges count pending messages along the partial index, not the table
            assert _plan_rows(conn, queue_sql.SQL_PENDING_MESSAGES, ()) == [
                "SCAN messages USING INDEX messages_pending"]
        for f, how, rows in plans:
            for row in rows:
                # "SCAN x" / "SCAN (subquery-1)" / json_each walk bounded row sets
                assert not re.match(r"SCAN (r|m|recipients|messages)\b", row), (f, how, rows)

        t = time.perf_counter()
        summary = await s.domain_summary(T0 + 3600)
        print(f"domain_summary over {n} recipients: {(time.perf_counter() - t) * 1000:.0f} ms")
        assert len(summary) == 50 and sum(r["recipients"] for r in summary) == n
        t = time.perf_counter()
        g = await s.gauges()
        print(f"gauges: {(time.perf_counter() - t) * 1000:.1f} ms")
        assert g["messages_pending"] == n
        t = time.perf_counter()
        assert await s.hold_messages(MessageFilter(domain="d7.test"), T0) == n // 50
        assert await s.hold_messages(MessageFilter(ids=(first.id,)), T0) in (0, 1)
        print(f"hold by domain + by id: {(time.perf_counter() - t) * 1000:.0f} ms")
    finally:
        await s.close()



# -- failure DSNs without waiting for the message to be done (issue 10 item 11) -----

def bounce(qid, idx, at, reply="550 5.1.1 no such user"):
    return RecipientUpdate(queue_id=qid, rcpt_idx=idx, state=BOUNCED, reply=Reply.parse(reply),
                           attempted_at=at, duration=0.1, remote_host="mx.x.test")


async def mark(spool, qid, idxs, at):
    """Enqueue a DSN marking recipients `idxs` of `qid` notified (one transaction)."""
    return await spool.enqueue(NewMessage("", ("app@example.test",), b"DSN\r\n", is_dsn=True),
                               at, dsn_for=DsnMark(qid, tuple(idxs), "failure"))


async def owed(spool) -> list[tuple[str, list[int]]]:
    return [(c.queue_id, [r.rcpt_idx for r in c.recipients]) for c in await spool.dsn_candidates()]


def owed_rows(state: Path) -> int:
    """Rows of the recipients_dsn_owed partial index (the DSN walk's whole input)."""
    with db(state) as c:
        return c.execute("SELECT COUNT(*) FROM recipients INDEXED BY recipients_dsn_owed WHERE "
                         "state IN ('bounced', 'expired') AND dsn_state IN ('', 'delay_sent')"
                         ).fetchone()[0]


async def test_a_failure_is_owed_a_dsn_while_others_still_retry(spool, tmp_path):
    a = await spool.enqueue(new(1, rcpts=("hard@x.test", "slow@y.test", "ok@z.test")), T0)
    assert len(await spool.lease_due(T0, 10)) == 3
    await spool.record([bounce(a, 0, T0 + 1)])
    assert await owed(spool) == []                  # two attempts of the same pass in flight
    await spool.record([deferral(a, 1, T0 + 1, T0 + 600), RecipientUpdate(
        queue_id=a, rcpt_idx=2, state=DELIVERED, reply=Reply.parse("250 ok"), attempted_at=T0 + 1)])
    assert await owed(spool) == [(a, [0])]          # that pass is over: owed now, not when done
    assert not (await spool.get_message(a)).done
    await mark(spool, a, [0], T0 + 2)
    assert await owed(spool) == [] and owed_rows(tmp_path) == 0     # never twice
    # the deferred one fails for good later: a second DSN, for it alone
    assert (a, 1) in await leased_ids(spool, T0 + 600)     # (with the first DSN)
    await spool.record([bounce(a, 1, T0 + 600, "552 5.2.2 mailbox full")])
    assert await owed(spool) == [(a, [1])]
    await mark(spool, a, [1], T0 + 601)
    assert await owed(spool) == []
    with db(tmp_path) as c:
        assert c.execute("SELECT done, body_live FROM messages WHERE id=?", (a,)).fetchone() == (1, 0)
        assert c.execute("SELECT rcpt_idx, dsn_state FROM recipients WHERE message_id=? "
                         "ORDER BY rcpt_idx", (a,)).fetchall() == [(0, "sent"), (1, "sent"), (2, "")]


async def test_held_recipients_do_not_hold_back_a_failure_dsn(spool):
    a = await spool.enqueue(new(1, rcpts=("hard@x.test", "later@y.test")), T0)
    await spool.hold_messages(MessageFilter(domain="y.test"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([bounce(a, 0, T0 + 1)])
    assert await owed(spool) == [(a, [0])]
    assert await states(spool, a) == [BOUNCED, HELD]


async def test_failures_that_owe_no_dsn_never_enter_the_dsn_walk(spool, tmp_path):
    """Bounces of null-sender messages and of DSNs are marked 'none' when they
    happen (and by an operator bounce), so the walk only ever sees real debts."""
    null = await spool.enqueue(new(1, sender=""), T0)
    dsn = await mark(spool, "nothing", [], T0)      # a DSN (its mark names nobody)
    held = await spool.enqueue(new(2, sender=""), T0)
    await spool.hold_messages(MessageFilter(ids=(held,)), T0)
    await spool.lease_due(T0, 10)
    await spool.record([bounce(null, 0, T0 + 1), RecipientUpdate(
        queue_id=dsn, rcpt_idx=0, state="expired", reply=Reply.parse("451 4.4.1 timeout"),
        attempted_at=T0 + 1)])
    await spool.bounce_messages(MessageFilter(ids=(held,)), T0 + 2, OPERATOR_REPLY)
    assert await owed(spool) == [] and owed_rows(tmp_path) == 0
    with db(tmp_path) as c:
        assert {r[0] for r in c.execute("SELECT dsn_state FROM recipients")} == {"none"}


async def test_reopen_marks_old_rows_that_owe_no_dsn(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    null = await s.enqueue(new(1, sender=""), T0)
    owing = await s.enqueue(new(2), T0)
    await s.lease_due(T0, 10)
    await s.record([bounce(null, 0, T0 + 1), bounce(owing, 0, T0 + 1)])
    await s.close()
    with db(tmp_path) as c:     # as an index written before issue 10 left them
        c.execute("UPDATE recipients SET dsn_state = ''")
    s = await Spool.open(tmp_path, now=T0 + 5)
    try:
        assert owed_rows(tmp_path) == 1
        assert await owed(s) == [(owing, [0])]
    finally:
        await s.close()
