"""The message ledger on the spool (issue 6): the events every state change
writes in its own transaction, the read API (cursor paging, per message),
pruning, webhook cursors, and idempotent submission. Real SQLite files and
segments; a fixed `now`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mta.core import (BOUNCED, DELIVERED, EVENT_TYPES, EXPIRED, QUEUED, AddressOutcome,
                      LedgerEvent, RecipientUpdate, Reply, StorageError)
from mta.spool import DsnMark, EventView, MessageFilter, NewMessage, Spool, acceptance, attempts
from mta.spool import ledger_sql
from mta.spool.steering import OPERATOR_MOVES

T0 = 1_700_000_000.0
DAY = 86400.0


def new(i: int = 0, *, sender="app@example.test", rcpts=("a@x.test",), **kw) -> NewMessage:
    body = (f"From: app@example.test\r\nMessage-ID: <m{i}@example.test>\r\n"
            f"Subject: m{i}\r\n\r\nbody {i}\r\n").encode()
    return NewMessage(sender=sender, recipients=tuple(rcpts), body=body, **kw)


def upd(qid, idx, state, reply=None, *, at=T0, **kw) -> RecipientUpdate:
    return RecipientUpdate(queue_id=qid, rcpt_idx=idx, state=state,
                           reply=Reply.parse(reply) if reply else None, attempted_at=at,
                           duration=0.5, **kw)


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "spool" / "index.sqlite3")


@pytest.fixture
async def spool(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    yield s
    await s.close()


async def timeline(spool, qid) -> list[tuple[str, str]]:
    return [(e.type, e.recipient) for e in await spool.ledger.message_events(qid)]


async def types_of(spool, qid) -> list[str]:
    return [e.type for e in await spool.ledger.message_events(qid)]


def test_vocabulary_matches_the_config_one():
    from mta.config.sections import EVENT_TYPES as CONFIG_TYPES
    assert EVENT_TYPES == CONFIG_TYPES
    move_events = {m.event for m in OPERATOR_MOVES.values() if m.event is not None}
    assert move_events == {"held", "released", "bounced", "deleted", "rescheduled"}
    assert set(ledger_sql.EVENT_OF_STATE.values()) | move_events <= set(EVENT_TYPES)
    with pytest.raises(ValueError):
        LedgerEvent("sent", T0)


# -- each transition writes its events, in order --------------------------------------

async def test_enqueue_writes_received_then_queued_per_recipient(spool):
    qid = await spool.enqueue(new(1, rcpts=("a@x.test", "b@y.test"), credential="app1",
                                  listener="submission", client_ip="192.0.2.7"), T0)
    events = await spool.ledger.message_events(qid)
    assert [(e.type, e.recipient) for e in events] == [
        ("received", ""), ("queued", "a@x.test"), ("queued", "b@y.test")]
    assert all(e.credential == "app1" and e.queue_id == qid and e.at == T0 for e in events)
    assert events[0].seq < events[1].seq < events[2].seq
    assert events[0].detail == {"sender": "app@example.test", "recipients": 2,
                                "size": len(new(1).body), "listener": "submission",
                                "client_ip": "192.0.2.7", "message_id": "<m1@example.test>"}
    assert [e.detail["rcpt_idx"] for e in events[1:]] == [0, 1]
    d = events[0].to_dict()
    assert set(d) == {"seq", "at", "type", "queue_id", "recipient", "credential", "detail",
                      "tags", "test"}
    assert isinstance(events[0], EventView)


async def test_no_credential_is_stored_as_empty(spool):
    qid = await spool.enqueue(new(), T0)
    assert {e.credential for e in await spool.ledger.message_events(qid)} == {""}


async def test_deferred_then_delivered(spool):
    qid = await spool.enqueue(new(credential="app1"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, QUEUED, "451 4.7.1 greylisted", next_attempt=T0 + 300,
                            remote_host="mx.x.test", remote_ip="192.0.2.1")])
    # A put-back (no attempt) writes nothing.
    await spool.record([upd(qid, 0, QUEUED, next_attempt=T0 + 600, counts_attempt=False)])
    await spool.lease_due(T0 + 600, 10)
    await spool.record([upd(qid, 0, DELIVERED, "250 2.0.0 ok", at=T0 + 600,
                            remote_host="mx.x.test", remote_ip="192.0.2.1", tls="TLSv1.3")])
    events = await spool.ledger.message_events(qid)
    assert [e.type for e in events] == ["received", "queued", "deferred", "delivered"]
    deferred, delivered = events[2], events[3]
    assert deferred.recipient == "a@x.test" and deferred.credential == "app1"
    assert deferred.at == T0 + 0.5
    assert deferred.detail == {"rcpt_idx": 0, "reply": "451 4.7.1 greylisted",
                               "remote_host": "mx.x.test", "remote_ip": "192.0.2.1",
                               "tls": None, "next_attempt": T0 + 300, "attempts": 1}
    assert delivered.detail == {"rcpt_idx": 0, "reply": "250 2.0.0 ok", "remote_host": "mx.x.test",
                                "remote_ip": "192.0.2.1", "tls": "TLSv1.3", "attempts": 2}
    # A late duplicate report for a final recipient moves nothing, writes nothing.
    await spool.record([upd(qid, 0, BOUNCED, "550 5.1.1 late")])
    assert await types_of(spool, qid) == ["received", "queued", "deferred", "delivered"]


async def test_bounced_carries_the_runtime_detail(spool):
    qid = await spool.enqueue(new(rcpts=("a@x.test", "b@x.test")), T0)
    await spool.lease_due(T0, 10)
    await spool.record([
        upd(qid, 0, BOUNCED, "550 5.1.1 no such user", remote_host="mx.x.test",
            event_detail={"class": "hard", "reason": "bad_mailbox"}),
        upd(qid, 1, DELIVERED, "250 ok", remote_host="mx.x.test")])
    events = await spool.ledger.message_events(qid)
    assert [(e.type, e.recipient) for e in events] == [
        ("received", ""), ("queued", "a@x.test"), ("queued", "b@x.test"),
        ("bounced", "a@x.test"), ("delivered", "b@x.test")]
    d = events[3].detail
    assert d["class"] == "hard" and d["reason"] == "bad_mailbox" and d["sync"] is True
    assert d["status"] == "5.1.1" and d["diagnostic"] == "no such user"
    assert d["reply"] == "550 5.1.1 no such user" and d["remote_host"] == "mx.x.test"


async def test_same_recipient_twice_in_one_record(spool):
    qid = await spool.enqueue(new(), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, DELIVERED, "250 ok"), upd(qid, 0, BOUNCED, "550 no")])
    assert await types_of(spool, qid) == ["received", "queued", "delivered"]
    assert (await spool.get_message(qid)).recipients[0].state == DELIVERED


async def test_expired(spool):
    qid = await spool.enqueue(new(), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, EXPIRED, "451 4.4.7 Message expired", at=T0 + 5 * DAY,
                            counts_attempt=False)])
    events = await spool.ledger.message_events(qid)
    assert [e.type for e in events] == ["received", "queued", "expired"]
    assert events[-1].detail == {"rcpt_idx": 0, "reply": "451 4.4.7 Message expired",
                                 "attempts": 0}


async def test_async_bounce_after_delivery_and_complaint(spool):
    qid = await spool.enqueue(new(rcpts=("a@x.test", "b@x.test"), credential="app1"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, DELIVERED, "250 ok"), upd(qid, 1, DELIVERED, "250 ok")])
    assert await spool.record_async(
        qid, 0, state=BOUNCED, reply=Reply(550, "5.1.1", "user unknown"),
        detail="dsn via inbound: 5.1.1", at=T0 + 60,
        outcomes=[AddressOutcome("a@x.test", "hard", T0 + 60, qid)],
        event_detail={"class": "hard", "reason": "bad_mailbox"})
    assert await spool.record_async(
        qid, 1, state="", reply=None, detail="arf via inbound: abuse", at=T0 + 90,
        outcomes=[AddressOutcome("b@x.test", "complaint", T0 + 90, qid)],
        event_detail={"feedback_type": "abuse"})
    # Unknown recipient: nothing recorded, no event.
    assert not await spool.record_async(qid, 7, state=BOUNCED, reply=None, detail="?", at=T0)
    events = await spool.ledger.message_events(qid)
    assert [(e.type, e.recipient) for e in events][-2:] == [("bounced", "a@x.test"),
                                                           ("complained", "b@x.test")]
    bounced, complained = events[-2], events[-1]
    assert bounced.detail["sync"] is False and bounced.detail["status"] == "5.1.1"
    assert bounced.detail["class"] == "hard" and bounced.detail["previous_state"] == DELIVERED
    assert bounced.detail["diagnostic"] == "dsn via inbound: 5.1.1"
    assert bounced.at == T0 + 60 and bounced.credential == "app1"
    assert complained.detail["feedback_type"] == "abuse" and complained.at == T0 + 90
    # A second bounce report for the now-bounced recipient changes nothing: no event.
    assert await spool.record_async(qid, 0, state=BOUNCED, reply=None, detail="again", at=T0 + 99)
    assert len(await spool.ledger.message_events(qid)) == len(events)


async def test_operator_hold_release_bounce_delete(spool):
    a = await spool.enqueue(new(1, rcpts=("a@x.test", "b@y.test"), credential="app1"), T0)
    b = await spool.enqueue(new(2), T0)
    assert await spool.hold_messages(MessageFilter(ids=(a,)), T0 + 1) == 2
    assert await spool.release_messages(MessageFilter(ids=(a,), domain="x.test"), T0 + 2) == 1
    assert await spool.retry_messages(MessageFilter(ids=(a,)), T0 + 3) == 1   # no event
    assert await spool.bounce_messages(MessageFilter(ids=(a,)), T0 + 4,
                                       Reply(550, "5.0.0", "Bounced by the postmaster")) == 2
    assert await spool.delete_messages(MessageFilter(ids=(b,)), T0 + 5) == 1
    assert (await timeline(spool, a))[3:] == [
        ("held", "a@x.test"), ("held", "b@y.test"), ("released", "a@x.test"),
        ("bounced", "a@x.test"), ("bounced", "b@y.test")]
    events = await spool.ledger.message_events(a)
    assert [e.at for e in events[3:]] == [T0 + 1, T0 + 1, T0 + 2, T0 + 4, T0 + 4]
    assert all(e.credential == "app1" and e.detail["by"] == "operator" for e in events[3:])
    assert events[-1].detail["reply"] == "550 5.0.0 Bounced by the postmaster"
    assert events[-1].detail["previous_state"] == "held"
    assert await timeline(spool, b) == [("received", ""), ("queued", "a@x.test"),
                                        ("deleted", "a@x.test")]


async def test_dsn_sent_is_written_on_the_original(spool):
    orig = await spool.enqueue(new(1, rcpts=("a@x.test", "b@x.test"), credential="app1"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(orig, 0, BOUNCED, "550 5.1.1 no"), upd(orig, 1, DELIVERED, "250 ok")])
    dsn = await spool.enqueue(NewMessage(sender="", recipients=("app@example.test",),
                                         body=b"Subject: failure\r\n\r\nx\r\n", is_dsn=True),
                              T0 + 1, dsn_for=DsnMark(orig, (0,), "failure"))
    events = await spool.ledger.message_events(orig)
    assert events[-1].type == "dsn_sent" and events[-1].recipient == "a@x.test"
    assert events[-1].detail == {"rcpt_idx": 0, "dsn_queue_id": dsn, "kind": "failure"}
    assert events[-1].credential == "app1"
    assert (await spool.ledger.message_events(dsn))[0].detail["dsn_for"] == orig


async def test_accept_and_record_suppressed_recipients(spool):
    qid = await spool.enqueue(new(rcpts=("a@x.test", "gone@x.test"),
                                  suppressed=((1, "550 5.7.1 suppressed: hard_bounce"),)), T0)
    events = await spool.ledger.message_events(qid)
    assert [(e.type, e.recipient) for e in events] == [
        ("received", ""), ("queued", "a@x.test"), ("suppressed", "gone@x.test")]
    assert events[2].detail == {"rcpt_idx": 1, "reply": "550 5.7.1 suppressed: hard_bounce",
                                "mode": "accept"}


async def test_append_events_rejected_and_refused_at_rcpt(spool):
    qid = await spool.enqueue(new(credential="app1"), T0)
    await spool.ledger.append_events([
        LedgerEvent("rejected", T0 + 1, credential="app2",
                    detail={"reply": "554 5.7.1 sender not allowed", "sender": "x@evil.test"}),
        LedgerEvent("suppressed", T0 + 2, recipient="gone@x.test", credential="app2",
                    detail={"reply": "550 5.7.1 suppressed", "mode": "refuse"}),
        LedgerEvent("rejected", T0 + 3, queue_id=qid, detail={"reply": "x"}),
    ])
    page = await spool.ledger.events_after(0, 100, types=["rejected", "suppressed"])
    assert [(e.type, e.recipient, e.credential) for e in page] == [
        ("rejected", "", "app2"), ("suppressed", "gone@x.test", "app2"),
        ("rejected", "", "app1")]   # the message's credential, filled in
    assert page[0].detail == {"reply": "554 5.7.1 sender not allowed", "sender": "x@evil.test"}
    with pytest.raises(TypeError):
        await spool.ledger.append_events([LedgerEvent("rejected", T0, detail={"x": object()})])


# -- reading -------------------------------------------------------------------------

async def test_events_after_pages_by_cursor_with_filters(spool):
    ids = [await spool.enqueue(new(i, rcpts=(f"r{i}@x.test", "common@y.test"),
                                   credential=f"app{i % 2}"), T0 + i) for i in range(10)]
    everything = await spool.ledger.events_after(0, 1000)
    assert len(everything) == 30
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    assert await spool.ledger.last_event_seq() == everything[-1].seq
    # Paging resumes exactly where it stopped: no gap, no repeat.
    seen, cursor = [], 0
    while page := await spool.ledger.events_after(cursor, 7):
        seen += page
        cursor = page[-1].seq
    assert [e.seq for e in seen] == [e.seq for e in everything]
    # type filters, one and several (merged in seq order)
    received = await spool.ledger.events_after(0, 4, types=["received"])
    assert [e.queue_id for e in received] == ids[:4]
    mixed = await spool.ledger.events_after(everything[4].seq, 5, types=["queued", "received"])
    assert [e.seq for e in mixed] == [e.seq for e in everything[5:10]]
    assert await spool.ledger.events_after(0, 10, types=[]) == []
    # recipient and credential filters
    common = await spool.ledger.events_after(0, 100, recipient="common@y.test")
    assert [e.queue_id for e in common] == ids
    assert [e.queue_id for e in await spool.ledger.events_after(0, 100, recipient="r3@x.test")] == [ids[3]]
    app1 = await spool.ledger.events_after(0, 100, types=["received"], credential="app1")
    assert [e.queue_id for e in app1] == ids[1::2]
    assert await spool.ledger.events_after(everything[-1].seq, 10) == []
    with pytest.raises(ValueError):
        await spool.ledger.events_after(0, 0)


async def test_type_filter_uses_the_type_index(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    await s.close()
    with db(tmp_path) as c:
        sql, params = ledger_sql.events_after_sql(0, 10, ["delivered", "bounced"], None, None)
        plan = " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "events_by_type" in plan, plan
        sql, params = ledger_sql.SQL_MESSAGE_EVENTS, ("x",)
        plan = " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "events_by_message" in plan, plan


async def test_failed_batch_writes_neither_state_nor_events(spool, monkeypatch):
    qid = await spool.enqueue(new(), T0)
    await spool.lease_due(T0, 10)
    before = await spool.ledger.last_event_seq()

    async def broken(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(attempts, "apply_outcomes", broken)
    with pytest.raises(StorageError):
        await spool.record([upd(qid, 0, DELIVERED, "250 ok")],
                           outcomes=[AddressOutcome("a@x.test", "delivered", T0, qid)])
    monkeypatch.undo()
    assert await spool.ledger.last_event_seq() == before
    assert await types_of(spool, qid) == ["received", "queued"]
    assert (await spool.get_message(qid)).recipients[0].state == QUEUED
    # An enqueue batch that fails (a duplicate queue id) leaves no event either.
    monkeypatch.setattr(acceptance, "new_queue_id", lambda now: "SAMEIDSAMEIDSAME")
    results = await asyncio.gather(spool.enqueue(new(1), T0), spool.enqueue(new(2), T0),
                                   return_exceptions=True)
    monkeypatch.undo()
    assert all(isinstance(r, StorageError) for r in results)
    assert await spool.ledger.last_event_seq() == before
    # The writer carries on, and seqs keep rising.
    await spool.record([upd(qid, 0, DELIVERED, "250 ok")])
    assert (await spool.ledger.message_events(qid))[-1].seq > before


async def test_events_survive_restart_and_seq_is_never_reused(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    qid = await s.enqueue(new(), T0)
    last = await s.ledger.last_event_seq()
    assert await s.ledger.prune_events(T0 + 1) == 2
    await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert await s.ledger.message_events(qid) == []
        assert await s.ledger.last_event_seq() == last      # pruning every row keeps the counter
        q2 = await s.enqueue(new(2), T0 + 5)
        assert (await s.ledger.message_events(q2))[0].seq == last + 1
    finally:
        await s.close()


async def test_prune_in_batches_oldest_first(spool):
    for i in range(10):
        await spool.enqueue(new(i, rcpts=("a@x.test", "b@x.test", "c@x.test")), T0 + i)   # 4 events each
    assert len(await spool.ledger.events_after(0, 1000)) == 40
    with pytest.raises(ValueError):
        await spool.ledger.prune_events(T0, batch=0)
    deleted = []
    while n := await spool.ledger.prune_events(T0 + 5, batch=7):
        assert n <= 7
        deleted.append(n)
    assert deleted == [7, 7, 6]          # the 20 events of the 5 older messages
    left = await spool.ledger.events_after(0, 1000)
    assert len(left) == 20 and min(e.at for e in left) == T0 + 5
    assert await spool.ledger.prune_events(T0 + 5) == 0
    # append-only: no statement anywhere in the spool updates an event
    for path in Path(acceptance.__file__).parent.glob("*.py"):
        src = path.read_text()
        assert "UPDATE events" not in src and "UPDATE OR" not in src, path


# -- webhook cursors -----------------------------------------------------------------

async def test_webhook_state_round_trip(spool):
    assert await spool.ledger.webhook_state("crm") is None
    await spool.ledger.set_webhook_state("crm")
    assert await spool.ledger.webhook_state("crm") == {
        "name": "crm", "cursor": 0, "failing_since": None, "next_attempt": None,
        "attempts": 0, "last_error": None, "state": "ok"}
    await spool.ledger.set_webhook_state("crm", cursor=42, failing_since=T0, next_attempt=T0 + 5,
                                  attempts=3, last_error="HTTP 500", state="retrying")
    await spool.ledger.set_webhook_state("crm", attempts=4)          # others unchanged
    assert await spool.ledger.webhook_state("crm") == {
        "name": "crm", "cursor": 42, "failing_since": T0, "next_attempt": T0 + 5,
        "attempts": 4, "last_error": "HTTP 500", "state": "retrying"}
    await spool.ledger.set_webhook_state("crm", cursor=50, failing_since=None, next_attempt=None,
                                  attempts=0, last_error=None, state="ok")
    await spool.ledger.set_webhook_state("crm", cursor=None)         # None: cursor unchanged
    await spool.ledger.set_webhook_state("crm", cursor=10)           # replay moves it back
    await spool.ledger.set_webhook_state("audit", cursor=7)
    assert await spool.ledger.webhook_state("crm") == {
        "name": "crm", "cursor": 10, "failing_since": None, "next_attempt": None,
        "attempts": 0, "last_error": None, "state": "ok"}
    assert [w["name"] for w in await spool.ledger.webhook_states()] == ["audit", "crm"]
    with pytest.raises(ValueError):
        await spool.ledger.set_webhook_state("crm", state=None)


async def test_webhook_state_survives_restart(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    await s.ledger.set_webhook_state("crm", cursor=3, state="failing", failing_since=T0)
    await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        st = await s.ledger.webhook_state("crm")
        assert (st["cursor"], st["state"], st["failing_since"]) == (3, "failing", T0)
    finally:
        await s.close()


# -- idempotent submission -----------------------------------------------------------

async def count_messages(spool) -> int:
    return len(await spool.list_messages(10_000, include_done=True))


async def test_idempotency_sequential(spool):
    first = await spool.enqueue(new(1, credential="app1", idempotency_key="order-42"), T0)
    again = await spool.enqueue(new(2, credential="app1", idempotency_key="order-42"), T0 + 60)
    assert again == first
    assert await count_messages(spool) == 1
    assert spool.stats.duplicates == 1
    events = await spool.ledger.message_events(first)
    assert [e.type for e in events] == ["received", "queued", "received"]
    assert events[0].detail["idempotency_key"] == "order-42"
    assert "duplicate_of" not in events[0].detail
    assert events[2].detail["duplicate_of"] == first and events[2].at == T0 + 60
    assert events[2].credential == "app1"
    # the body delivered is the first one
    assert await spool.read_body(first) == new(1).body
    # without a key, nothing is deduplicated
    a = await spool.enqueue(new(3, credential="app1"), T0)
    b = await spool.enqueue(new(3, credential="app1"), T0)
    assert a != b


async def test_idempotency_concurrent_duplicates_make_one_message(spool):
    ids = await asyncio.gather(*(
        spool.enqueue(new(i, credential="app1", idempotency_key="k-1"), T0 + i * 0.001)
        for i in range(10)))
    assert len(set(ids)) == 1
    assert await count_messages(spool) == 1
    assert spool.stats.max_batch >= 2    # they met in one batch
    received = [e for e in await spool.ledger.message_events(ids[0]) if e.type == "received"]
    assert len(received) == 10
    assert sum("duplicate_of" not in e.detail for e in received) == 1
    assert sum(e.detail.get("duplicate_of") == ids[0] for e in received) == 9
    assert len(await spool.lease_due(T0 + 10, 100)) == 1


async def test_idempotency_window_expiry_and_pruning(spool):
    first = await spool.enqueue(new(1, credential="app1", idempotency_key="k"), T0)
    inside = await spool.enqueue(new(2, credential="app1", idempotency_key="k"), T0 + 100,
                                 idempotency_window=100)
    assert inside == first
    after = await spool.enqueue(new(3, credential="app1", idempotency_key="k"), T0 + 101,
                                idempotency_window=100)
    assert after != first                          # expired: a new message, key replaced
    assert await spool.enqueue(new(4, credential="app1", idempotency_key="k"), T0 + 150,
                               idempotency_window=100) == after
    assert await count_messages(spool) == 2
    assert await spool.ledger.prune_idempotency(T0 + 101) == 0      # the row is from T0 + 101
    assert await spool.ledger.prune_idempotency(T0 + 102) == 1
    assert await spool.enqueue(new(5, credential="app1", idempotency_key="k"), T0 + 160) != after


async def test_idempotency_keys_are_per_credential(spool):
    a = await spool.enqueue(new(1, credential="app1", idempotency_key="k"), T0)
    b = await spool.enqueue(new(2, credential="app2", idempotency_key="k"), T0)
    c = await spool.enqueue(new(3, idempotency_key="k"), T0)            # no credential
    d = await spool.enqueue(new(4, idempotency_key="k"), T0)
    assert len({a, b, c}) == 3 and d == c
    both = await asyncio.gather(
        spool.enqueue(new(5, credential="app3", idempotency_key="x"), T0),
        spool.enqueue(new(6, credential="app4", idempotency_key="x"), T0))
    assert both[0] != both[1]
    assert await count_messages(spool) == 5


async def test_idempotency_survives_restart(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    first = await s.enqueue(new(1, credential="app1", idempotency_key="k"), T0)
    await s.close()
    s = await Spool.open(tmp_path, now=T0)
    try:
        assert await s.enqueue(new(2, credential="app1", idempotency_key="k"), T0 + 5) == first
    finally:
        await s.close()
