"""What the spool keeps for the sending API (issue 13): test messages,
scheduled sends (due later, lifetime from then, reschedule), extra
`received` detail, the API's list page and the idempotency lookup — in the
index, and again after a replay from the log (a crash between the fsync and
the transaction)."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from mta.spool import MessageFilter, NewMessage, Spool

T0 = 1_700_000_000.0


def new(i: int = 0, **kw) -> NewMessage:
    body = (f"From: app@example.test\r\nMessage-ID: <m{i}@example.test>\r\n"
            f"Subject: m{i}\r\n\r\nbody {i}\r\n").encode()
    kw.setdefault("recipients", ("a@x.test", "b@y.test"))
    return NewMessage(sender="app@example.test", body=body, **kw)


@pytest.fixture
async def spool(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    yield s
    await s.close()


async def test_scheduled_message_is_due_then_and_lives_from_then(spool):
    later = T0 + 7200
    qid = await spool.enqueue(new(1, not_before=later, test=True,
                                  detail={"tags": [["k", "v"]], "sender": "ignored"}), T0)
    plain = await spool.enqueue(new(2), T0)
    due = await spool.lease_due(T0 + 1, 10)
    assert {d.queue_id for d in due} == {plain}          # the scheduled one waits
    assert all(not d.test and d.received_at == T0 for d in due)
    due = await spool.lease_due(later, 10)
    assert {d.queue_id for d in due} == {qid}
    assert all(d.test and d.received_at == later for d in due)   # lifetime from then
    view = await spool.get_message(qid)
    assert view is not None and view.test and view.not_before == later
    received = (await spool.ledger.message_events(qid))[0]
    assert received.type == "received"
    detail = received.detail if isinstance(received.detail, dict) else json.loads(received.detail)
    # the caller's keys ride along; the spool's own win
    assert detail["tags"] == [["k", "v"]] and detail["sender"] == "app@example.test"
    assert detail["test"] is True and detail["scheduled_at"] == later


async def test_reschedule_moves_queued_recipients_and_writes_an_event(spool):
    qid = await spool.enqueue(new(3, not_before=T0 + 3600), T0)
    moved = await spool.reschedule_messages(MessageFilter(ids=(qid,)), T0 + 1, T0 + 60)
    assert moved == 2
    assert [d.queue_id for d in await spool.lease_due(T0 + 59, 10)] == []
    assert len(await spool.lease_due(T0 + 60, 10)) == 2
    view = await spool.get_message(qid)
    assert view is not None and view.not_before == T0 + 60
    types = [e.type for e in await spool.ledger.message_events(qid)]
    assert types.count("rescheduled") == 2
    # leased now: a reschedule leaves in-flight recipients alone
    assert await spool.reschedule_messages(MessageFilter(ids=(qid,)), T0 + 61, T0 + 999) == 0


async def test_email_page_is_per_mode_newest_first_with_a_cursor(spool):
    live = [await spool.enqueue(new(i), T0 + i) for i in range(5)]
    test = [await spool.enqueue(new(10 + i, test=True), T0 + 10 + i) for i in range(3)]
    page, more = await spool.email_page(False, 3)
    assert [v.id for v in page] == live[::-1][:3] and more
    page2, more2 = await spool.email_page(False, 3, page[-1].id)
    assert [v.id for v in page2] == live[::-1][3:] and not more2
    tpage, tmore = await spool.email_page(True, 10)
    assert [v.id for v in tpage] == test[::-1] and not tmore
    assert all(len(v.recipients) == 2 for v in tpage)


async def test_idempotent_id_reads_the_key(spool):
    qid = await spool.enqueue(new(20, credential="api:k", idempotency_key="abc"), T0)
    assert await spool.ledger.idempotent_id("api:k", "abc") == (qid, T0)
    assert await spool.ledger.idempotent_id("api:other", "abc") is None


async def test_the_new_fields_survive_a_replay_from_the_log(tmp_path):
    """Rows lost (S3: record synced, transaction not committed): recovery
    re-creates them from the record, test flag and schedule included."""
    s = await Spool.open(tmp_path, now=T0)
    qid = await s.enqueue(new(30, test=True, not_before=T0 + 500,
                              detail={"api_key": "mta_test_x"}), T0)
    await s.close()
    index = tmp_path / "spool" / "index.sqlite3"
    with sqlite3.connect(index) as db:
        for table in ("recipients", "events", "messages", "segment_marks"):
            db.execute(f"DELETE FROM {table}")
    os.sync()
    s = await Spool.open(tmp_path, now=T0 + 1)
    try:
        view = await s.get_message(qid)
        assert view is not None and view.test and view.not_before == T0 + 500
        assert await s.lease_due(T0 + 499, 10) == []
        assert {d.queue_id for d in await s.lease_due(T0 + 500, 10)} == {qid}
        received = (await s.ledger.message_events(qid))[0]
        detail = received.detail if isinstance(received.detail, dict) \
            else json.loads(received.detail)
        assert detail["api_key"] == "mta_test_x"
    finally:
        await s.close()


async def test_every_event_of_a_message_carries_its_tags(spool):
    """Webhook payloads (built by SQLite) and the ledger's views carry the
    tags given to the sending API on every event of the message, not only
    on `received`; a message without tags has null."""
    tags = [{"name": "category", "value": "welcome"}]
    qid = await spool.enqueue(new(40, detail={"tags": tags}), T0)
    plain = await spool.enqueue(new(41), T0)
    views = await spool.ledger.message_events(qid)
    assert [v.type for v in views] == ["received", "queued", "queued"]
    assert all(v.tags == tags for v in views)
    assert all(v.tags is None for v in await spool.ledger.message_events(plain))
    payloads = [json.loads(p) for _, p in await spool.ledger.event_payloads_after(0, 100)]
    mine = [p for p in payloads if p["queue_id"] == qid]
    assert len(mine) == 3 and all(p["tags"] == tags for p in mine)
    assert all(p["tags"] is None for p in payloads if p["queue_id"] == plain)
    assert not any(p["test"] for p in payloads)


async def test_every_event_of_a_test_message_says_so(spool):
    """A test key's mail is test data: every event of it (views and webhook
    payloads) carries test: true, so an application can tell."""
    qid = await spool.enqueue(new(42, test=True), T0)
    plain = await spool.enqueue(new(43), T0)
    assert all(v.test for v in await spool.ledger.message_events(qid))
    assert not any(v.test for v in await spool.ledger.message_events(plain))
    payloads = [json.loads(p) for _, p in await spool.ledger.event_payloads_after(0, 100)]
    assert [p["test"] for p in payloads if p["queue_id"] == qid] == [True] * 3
    assert [p["test"] for p in payloads if p["queue_id"] == plain] == [False] * 3


async def test_received_details_of_many_messages_in_one_read(spool):
    """The API's list reads every message's `received` detail at once; an
    idempotent repeat's later `received` does not replace the first."""
    a = await spool.enqueue(new(50, detail={"tags": [["k", "a"]]}, credential="api:k",
                                idempotency_key="x"), T0)
    again = await spool.enqueue(new(51, detail={"tags": [["k", "other"]]}, credential="api:k",
                                    idempotency_key="x"), T0 + 1)
    b = await spool.enqueue(new(52), T0)
    assert again == a
    got = await spool.ledger.received_details([a, b, "0000000000000000", a])
    assert set(got) == {a, b}
    assert got[a]["tags"] == [["k", "a"]] and "duplicate_of" not in got[a]
    assert "tags" not in got[b] and got[b]["sender"] == "app@example.test"
