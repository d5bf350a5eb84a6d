"""Suppression (issue 4): the pure rules, the spool tables written in the same
transaction as recipient updates, asynchronous bounces/complaints,
accept-and-record, and `mta suppression …` through the real entry point."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mta.config.sections import SuppressionConfig
from mta.core.envelope import (BOUNCED, DELIVERED, QUEUED, SUPPRESSED, AddressOutcome,
                               RecipientUpdate)
from mta.core.reply import Reply
from mta.policy.suppression import (SuppressionRules, expiry_for, from_config, reply_for,
                                    soft_decision)
from mta.spool import NewMessage, Spool, SuppressionView
from mta.spool import suppression_admin as admin
from mta.spool.suppressions import address_key
from tests.test_spool import db

T0 = 1_700_000_000.0
DAY = 86400.0
ROOT = Path(__file__).resolve().parent.parent
RULES = SuppressionRules(soft_limit=3, soft_span=2 * DAY, hard_expiry=None, soft_expiry=30 * DAY)


def msg(*rcpts, sender="app@example.test", **kw) -> NewMessage:
    return NewMessage(sender=sender, recipients=tuple(rcpts),
                      body=b"From: app@example.test\r\nSubject: hi\r\n\r\nhello\r\n", **kw)


def upd(qid, idx, state, reply=None, at=T0, **kw):
    return RecipientUpdate(queue_id=qid, rcpt_idx=idx, state=state,
                           reply=Reply.parse(reply) if reply else None, attempted_at=at, **kw)


@pytest.fixture
async def spool(tmp_path):
    s = await Spool.open(tmp_path, now=T0, suppression=RULES)
    yield s
    await s.close()


# -- pure rules ------------------------------------------------------------------------

@pytest.mark.parametrize("count, span_days, expected", [
    (2, 5, False),       # too few, however long
    (3, 1.9, False),     # enough, but all within one bad stretch
    (3, 2, True),        # N over exactly M days
    (10, 3, True),
    (1, 100, False),
])
def test_soft_decision_needs_n_failures_over_m_days(count, span_days, expected):
    assert soft_decision(count, T0, T0 + span_days * DAY, RULES) is expected
    assert RULES.suppresses_after_soft(count, T0, T0 + span_days * DAY) is expected


def test_rules_from_config_and_expiries():
    cfg = SuppressionConfig()
    rules = from_config(cfg)
    assert rules == SuppressionRules(soft_limit=cfg.soft_bounce_limit,
                                     soft_span=cfg.soft_bounce_span,
                                     hard_expiry=cfg.hard_bounce_expiry,
                                     soft_expiry=cfg.soft_bounce_expiry)
    assert expiry_for("soft_bounce", T0, rules) == T0 + cfg.soft_bounce_expiry
    assert expiry_for("hard_bounce", T0, rules) is None
    with_hard = SuppressionRules(5, DAY, hard_expiry=365 * DAY, soft_expiry=None)
    assert expiry_for("hard_bounce", T0, with_hard) == T0 + 365 * DAY
    assert expiry_for("complaint", T0, with_hard) is None      # complaints never expire
    assert expiry_for("soft_bounce", T0, with_hard) is None
    with pytest.raises(ValueError):
        SuppressionRules(0, DAY, None, None)


def test_reply_texts():
    created = 1_795_132_800.0 + 3600     # 2026-11-20 01:00 UTC
    def entry(reason):
        return SuppressionView(address="u@x.test", scope="", reason=reason, queue_id="",
                               reply="", created=created, expires=None)
    assert str(reply_for(entry("hard_bounce"))) == \
        "550 5.1.1 <u@x.test>: recipient suppressed (hard bounce, 2026-11-20)"
    assert str(reply_for(entry("complaint"))) == \
        "550 5.7.1 <u@x.test>: recipient suppressed (complaint, 2026-11-20)"
    assert str(reply_for(entry("soft_bounce"))) == \
        "550 5.1.1 <u@x.test>: recipient suppressed (soft bounce, 2026-11-20)"
    assert str(reply_for(entry("unsubscribe"))).startswith("550 5.1.1 ")


def test_address_key_lowercases_only_the_domain():
    assert address_key("Bob.Smith@Example.COM") == "Bob.Smith@example.com"
    assert address_key("<u@EX.test>") == "u@ex.test"
    assert address_key("u@bücher.example") == "u@xn--bcher-kva.example"


# -- record with outcomes ------------------------------------------------------------

async def test_hard_bounce_suppresses_in_the_same_transaction(spool, tmp_path):
    qid = await spool.enqueue(msg("Gone@Bounce.test", "ok@a.test"), T0)
    await spool.lease_due(T0, 10)
    stats_before = spool.stats.commits
    await spool.record(
        [upd(qid, 0, BOUNCED, "550 5.1.1 No such user"), upd(qid, 1, DELIVERED, "250 ok")],
        outcomes=[AddressOutcome("Gone@Bounce.test", "hard", T0, qid, "550 5.1.1 No such user"),
                  AddressOutcome("ok@a.test", "delivered", T0, qid)])
    assert spool.stats.commits == stats_before + 1          # one transaction for both
    # A bounce suppresses in the tenant that sent (no credential: "default").
    v = await spool.suppressions.suppressed("gone@bounce.test", "default", now=T0 + 1)
    assert v is None                                         # local part is case-sensitive
    assert await spool.suppressions.suppressed("Gone@BOUNCE.test", None, now=T0 + 1) is None
    assert await spool.suppressions.suppressed("Gone@BOUNCE.test", "acme", now=T0 + 1) is None
    v = await spool.suppressions.suppressed("Gone@BOUNCE.test", "default", now=T0 + 1)
    assert (v.address, v.scope, v.reason, v.queue_id, v.reply, v.created, v.expires) == \
        ("Gone@bounce.test", "default", "hard_bounce", qid, "550 5.1.1 No such user", T0, None)
    assert await spool.suppressions.suppressed("ok@a.test", "default", now=T0 + 1) is None


async def test_a_global_entry_covers_every_tenant(spool, tmp_path):
    """An outcome with no message (an operator's or API's own) is global."""
    await spool.record([], outcomes=[AddressOutcome("all@b.test", "hard", T0)])
    v = await spool.suppressions.suppressed("all@b.test", None, now=T0 + 1)
    assert v is not None and v.scope == ""
    for tenant in ("default", "acme"):
        assert await spool.suppressions.suppressed("all@b.test", tenant, now=T0 + 1) == v


async def test_failed_transaction_writes_neither_rows_nor_suppression(spool, monkeypatch):
    qid = await spool.enqueue(msg("x@b.test"), T0)
    from mta.spool import attempts
    real = attempts.apply_outcomes

    async def broken(conn, outcomes, rules):
        await real(conn, outcomes, rules)
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(attempts, "apply_outcomes", broken)
    with pytest.raises(Exception):
        await spool.record([upd(qid, 0, BOUNCED, "550 5.1.1 No")],
                           outcomes=[AddressOutcome("x@b.test", "hard", T0, qid)])
    monkeypatch.setattr(attempts, "apply_outcomes", real)
    assert await spool.suppressions.suppressed("x@b.test", "default", now=T0) is None
    assert (await spool.get_message(qid)).recipients[0].state == QUEUED


async def test_soft_failures_suppress_after_n_over_m_days(spool, tmp_path):
    addr = "full@mbox.test"
    soft = lambda at: AddressOutcome(addr, "soft", at, "q", "452 4.2.2 Mailbox full")
    # Three soft failures within a day: enough in number, not in span.
    for at in (T0, T0 + 3600, T0 + 7200):
        await spool.record([], outcomes=[soft(at)])
    assert await spool.suppressions.suppressed(addr, "default", now=T0 + 7200) is None
    with db(tmp_path) as c:
        assert c.execute("SELECT count, first_at, last_at FROM soft_failures").fetchall() == \
            [(3, T0, T0 + 7200)]
    # A delivery in between resets the run.
    await spool.record([], outcomes=[AddressOutcome(addr, "delivered", T0 + DAY)])
    with db(tmp_path) as c:
        assert c.execute("SELECT COUNT(*) FROM soft_failures").fetchone() == (0,)
    await spool.record([], outcomes=[soft(T0 + 2 * DAY)])
    await spool.record([], outcomes=[soft(T0 + 3 * DAY)])
    assert await spool.suppressions.suppressed(addr, "default", now=T0 + 3 * DAY) is None     # 2 < N
    await spool.record([], outcomes=[soft(T0 + 4 * DAY)])                   # 3 over 2 days
    v = await spool.suppressions.suppressed(addr, "default", now=T0 + 4 * DAY)
    assert (v.reason, v.created, v.expires) == ("soft_bounce", T0 + 4 * DAY, T0 + 34 * DAY)
    with db(tmp_path) as c:       # the run that caused it is used up
        assert c.execute("SELECT COUNT(*) FROM soft_failures").fetchone() == (0,)
    # Expired entries are ignored.
    assert await spool.suppressions.suppressed(addr, "default", now=T0 + 34 * DAY) is None


async def test_several_soft_outcomes_in_one_batch_count_each(spool):
    outs = [AddressOutcome("s@x.test", "soft", T0 + i * DAY) for i in range(3)]
    await spool.record([], outcomes=outs)
    assert (await spool.suppressions.suppressed("s@x.test", "default", now=T0 + 3 * DAY)).reason == "soft_bounce"


async def test_first_reason_wins_but_soft_is_upgraded_and_expired_replaced(spool):
    # Every outcome names a message (none of these exist: tenant "default"),
    # so all of them land in one scope.
    a = "c@x.test"
    await spool.record([], outcomes=[AddressOutcome(a, "complaint", T0, "q1")])
    await spool.record([], outcomes=[AddressOutcome(a, "hard", T0 + 1, "q2")])
    await spool.record([], outcomes=[AddressOutcome(a, "soft", T0 + i * DAY, "q0") for i in range(4)])
    v = await spool.suppressions.suppressed(a, "default", now=T0 + 10 * DAY)
    assert (v.reason, v.queue_id, v.expires) == ("complaint", "q1", None)

    b = "s@x.test"
    await spool.record([], outcomes=[AddressOutcome(b, "soft", T0 + i * DAY, "q0") for i in range(3)])
    assert (await spool.suppressions.suppressed(b, "default", now=T0 + 2 * DAY)).reason == "soft_bounce"
    await spool.record([], outcomes=[AddressOutcome(b, "hard", T0 + 3 * DAY, "q3")])
    v = await spool.suppressions.suppressed(b, "default", now=T0 + 100 * DAY)
    assert (v.reason, v.queue_id, v.expires) == ("hard_bounce", "q3", None)

    c = "e@x.test"
    await spool.record([], outcomes=[AddressOutcome(c, "soft", T0 + i * DAY, "q0") for i in range(3)])
    await spool.record([], outcomes=[AddressOutcome(c, "hard", T0 + 40 * DAY, "q4")])
    assert (await spool.suppressions.suppressed(c, "default", now=T0 + 41 * DAY)).queue_id == "q4"


async def test_scopes(spool):
    await spool.record([], outcomes=[AddressOutcome("u@x.test", "complaint", T0, scope="app1")])
    assert await spool.suppressions.suppressed("u@x.test", "default", now=T0) is None
    assert await spool.suppressions.suppressed("u@x.test", "app2", now=T0) is None
    v = await spool.suppressions.suppressed("u@x.test", "app1", now=T0)
    assert (v.scope, v.reason) == ("app1", "complaint")
    await spool.record([], outcomes=[AddressOutcome("u@x.test", "hard", T0 + 5)])
    assert (await spool.suppressions.suppressed("u@x.test", "app1", now=T0)).scope == ""   # global first


async def test_without_rules_soft_failures_never_suppress(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    try:
        await s.record([], outcomes=[AddressOutcome("a@x.test", "soft", T0 + i * DAY)
                                     for i in range(50)])
        assert await s.suppressions.suppressed("a@x.test", "default", now=T0 + 60 * DAY) is None
        await s.record([], outcomes=[AddressOutcome("a@x.test", "hard", T0)])
        assert (await s.suppressions.suppressed("a@x.test", "default", now=T0 + 1e9)).expires is None
    finally:
        await s.close()


# -- record_async -----------------------------------------------------------------------

async def test_async_bounce_after_delivery(spool, tmp_path):
    qid = await spool.enqueue(msg("late@x.test", "fine@x.test"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, DELIVERED, "250 ok"), upd(qid, 1, DELIVERED, "250 ok")])
    assert (await spool.get_message(qid)).done
    reply = Reply.parse("550 5.1.1 <late@x.test>: user unknown")
    ok = await spool.record_async(
        qid, 0, state=BOUNCED, reply=reply, detail="dsn from mx.x.test", at=T0 + 600,
        outcomes=[AddressOutcome("late@x.test", "hard", T0 + 600, qid, str(reply))])
    assert ok is True
    view = await spool.get_message(qid)
    assert [(r.state, r.last_reply) for r in view.recipients] == \
        [(BOUNCED, str(reply)), (DELIVERED, "250 ok")]
    last = view.attempts[-1]
    assert (last.rcpt_idx, last.state, last.reply, last.detail, last.at) == \
        (0, "async_bounce", str(reply), "dsn from mx.x.test", T0 + 600)
    assert (await spool.suppressions.suppressed("late@x.test", "default", now=T0 + 601)).reason == "hard_bounce"
    # The report came to our return path: no DSN is owed and the body stays dead.
    assert await spool.dsn_candidates() == []
    with db(tmp_path) as c:
        assert c.execute("SELECT done, body_live FROM messages WHERE id=?", (qid,)).fetchone() == (1, 0)


async def test_async_bounce_of_queued_recipient_finishes_the_message(spool):
    qid = await spool.enqueue(msg("q@x.test"), T0)
    assert await spool.record_async(qid, 0, state=BOUNCED, reply=None, detail="", at=T0 + 5)
    view = await spool.get_message(qid)
    assert view.done and view.recipients[0].state == BOUNCED
    assert await spool.lease_due(T0 + 10, 10) == []
    assert await spool.dsn_candidates() == []


async def test_complaint_keeps_state_and_suppresses(spool):
    qid = await spool.enqueue(msg("angry@x.test", credential="app1"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, DELIVERED, "250 ok")])
    ok = await spool.record_async(qid, 0, state="", reply=None, detail="arf from fbl.x.test",
                                  at=T0 + 99, outcomes=[AddressOutcome("angry@x.test", "complaint",
                                                                       T0 + 99, qid, scope="app1")])
    assert ok
    view = await spool.get_message(qid)
    assert view.recipients[0].state == DELIVERED
    assert (view.attempts[-1].state, view.attempts[-1].detail) == ("complaint", "arf from fbl.x.test")
    v = await spool.suppressions.suppressed("angry@x.test", "app1", now=T0 + 100)
    assert (v.reason, v.scope, v.expires) == ("complaint", "app1", None)
    assert str(reply_for(v)).startswith("550 5.7.1 <angry@x.test>: recipient suppressed (complaint")


async def test_async_report_for_unknown_recipient_writes_nothing(spool, tmp_path):
    qid = await spool.enqueue(msg("a@x.test"), T0)
    out = [AddressOutcome("a@x.test", "hard", T0)]
    assert await spool.record_async("NOPE", 0, state=BOUNCED, reply=None, detail="", at=T0,
                                    outcomes=out) is False
    assert await spool.record_async(qid, 7, state=BOUNCED, reply=None, detail="", at=T0,
                                    outcomes=out) is False
    with db(tmp_path) as c:
        assert c.execute("SELECT COUNT(*) FROM attempts").fetchone() == (0,)
        assert c.execute("SELECT COUNT(*) FROM suppressions").fetchone() == (0,)
    assert (await spool.get_message(qid)).recipients[0].state == QUEUED
    with pytest.raises(ValueError):
        await spool.record_async(qid, 0, state=DELIVERED, reply=None, detail="", at=T0)


async def test_async_bounce_of_already_bounced_recipient_is_kept_as_attempt(spool):
    qid = await spool.enqueue(msg("b@x.test"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, BOUNCED, "550 5.1.1 sync")])
    assert await spool.record_async(qid, 0, state=BOUNCED, reply=Reply.parse("550 5.1.1 async"),
                                    detail="", at=T0 + 1)
    view = await spool.get_message(qid)
    assert view.recipients[0].last_reply == "550 5.1.1 sync"
    assert [a.state for a in view.attempts] == [BOUNCED, "async_bounce"]
    assert [c.queue_id for c in await spool.dsn_candidates()] == [qid]   # the sync DSN still owed


# -- accept-and-record ------------------------------------------------------------------

async def test_accept_and_record_inserts_suppressed_recipients(spool, tmp_path):
    why = "550 5.1.1 <s@x.test>: recipient suppressed (hard bounce, 2023-11-14)"
    qid = await spool.enqueue(msg("s@x.test", "ok@x.test", suppressed=((0, why),)), T0)
    view = await spool.get_message(qid)
    assert [(r.state, r.last_reply) for r in view.recipients] == [(SUPPRESSED, why), (QUEUED, "")]
    assert not view.done
    leased = await spool.lease_due(T0, 10)
    assert [(q.queue_id, q.rcpt_idx) for q in leased] == [(qid, 1)]
    await spool.record([upd(qid, 1, DELIVERED, "250 ok")])
    assert (await spool.get_message(qid)).done
    assert await spool.dsn_candidates() == []
    counts = await spool.counts()
    assert counts[SUPPRESSED] == 1 and counts[DELIVERED] == 1

    only = await spool.enqueue(msg("s@x.test", suppressed=((0, why),)), T0)
    assert (await spool.get_message(only)).done           # done at once, nothing to deliver
    assert [m.id for m in await spool.list_messages()] == []
    assert {m.id for m in await spool.list_messages(include_done=True)} == {qid, only}
    with db(tmp_path) as c:
        assert c.execute("SELECT body_live FROM messages WHERE id=?", (only,)).fetchone() == (0,)
    with pytest.raises(ValueError):
        await spool.enqueue(msg("a@x.test", suppressed=((1, why),)), T0)
    with pytest.raises(ValueError):
        await spool.record([upd(qid, 0, "complained")])


async def test_reopen_keeps_everything(tmp_path):
    s = await Spool.open(tmp_path, now=T0, suppression=RULES)
    qid = await s.enqueue(msg("s@x.test", "q@x.test", suppressed=((0, "550 5.1.1 suppressed"),)), T0)
    await s.record([], outcomes=[AddressOutcome("h@x.test", "hard", T0, qid),
                                 AddressOutcome("soft@x.test", "soft", T0)])
    await s.record_async(qid, 1, state=BOUNCED, reply=None, detail="d", at=T0 + 1)
    await s.close()
    s = await Spool.open(tmp_path, now=T0 + 5, suppression=RULES)
    try:
        assert s.recovery.flags_fixed == 0
        view = await s.get_message(qid)
        assert view.done and [r.state for r in view.recipients] == [SUPPRESSED, BOUNCED]
        assert view.attempts[-1].detail == "d"
        assert (await s.suppressions.suppressed("h@x.test", "default", now=T0 + 5)).queue_id == qid
        # The soft count survived too: two more over the span suppress.
        await s.record([], outcomes=[AddressOutcome("soft@x.test", "soft", T0 + i * DAY)
                                     for i in (1, 2)])
        assert (await s.suppressions.suppressed("soft@x.test", "default", now=T0 + 2 * DAY)).reason == "soft_bounce"
        assert await s.dsn_candidates() == []
    finally:
        await s.close()


async def test_index_from_before_suppression_opens_and_migrates(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    qid = await s.enqueue(msg("a@x.test"), T0)
    await s.lease_due(T0, 1)
    await s.record([upd(qid, 0, QUEUED, "451 4.0.0 later", next_attempt=T0 + 60)])
    await s.close()
    with db(tmp_path) as c:       # make it look like a schema-1 index
        c.execute("DROP TABLE suppressions")
        c.execute("DROP TABLE soft_failures")
        c.execute("ALTER TABLE attempts DROP COLUMN detail")
        c.execute("PRAGMA user_version=1")
    s = await Spool.open(tmp_path, now=T0, suppression=RULES)
    try:
        view = await s.get_message(qid)
        assert [(a.state, a.detail) for a in view.attempts] == [(QUEUED, "")]
        assert await s.suppressions.suppressed("a@x.test", "default", now=T0) is None
        assert await s.record_async(qid, 0, state=BOUNCED, reply=None, detail="late", at=T0 + 9,
                                    outcomes=[AddressOutcome("a@x.test", "hard", T0 + 9)])
        assert (await s.suppressions.suppressed("a@x.test", "default", now=T0 + 9)).reason == "hard_bounce"
    finally:
        await s.close()
    with db(tmp_path) as c:
        assert c.execute("PRAGMA user_version").fetchone() == (2,)


# -- suppression_admin (what the CLI runs) ---------------------------------------------

async def test_admin_changes_are_seen_by_a_running_spool(spool, tmp_path):
    admin.add(tmp_path, "Op@X.TEST", reason="unsubscribe", scope="app1", now=T0)
    v = await spool.suppressions.suppressed("Op@x.test", "app1", now=T0)
    assert (v.reason, v.scope) == ("unsubscribe", "app1")
    admin.add(tmp_path, "tmp@x.test", expires=T0 + 60, now=T0)
    assert await spool.suppressions.suppressed("tmp@x.test", "default", now=T0 + 30) is not None
    assert await spool.suppressions.suppressed("tmp@x.test", "default", now=T0 + 61) is None
    assert [e.address for e in admin.list_entries(tmp_path, now=T0 + 61)] == ["Op@x.test"]
    assert len(admin.list_entries(tmp_path, now=T0 + 61, include_expired=True)) == 2
    assert admin.remove(tmp_path, "Op@x.test", "app1") is True
    assert admin.remove(tmp_path, "Op@x.test", "app1") is False
    assert await spool.suppressions.suppressed("Op@x.test", "app1", now=T0) is None


def test_admin_before_first_start_creates_an_index_the_spool_opens(tmp_path):
    assert admin.list_entries(tmp_path) == []
    assert not (tmp_path / "spool" / "index.sqlite3").exists()     # reads create nothing
    admin.add(tmp_path, "pre@x.test", reason="manual", now=T0)

    async def check():
        s = await Spool.open(tmp_path, now=T0)
        try:
            assert (await s.suppressions.suppressed("pre@x.test", "default", now=T0)).reason == "manual"
            qid = await s.enqueue(msg("a@x.test"), T0)
            assert (await s.get_message(qid)).recipients[0].state == QUEUED
        finally:
            await s.close()
    import asyncio
    asyncio.run(check())


def test_admin_refuses_to_create_an_index_next_to_orphan_segments(tmp_path):
    seg = tmp_path / "spool" / "segments"
    seg.mkdir(parents=True)
    (seg / "00000001.seg").write_bytes(b"x" * 64)
    with pytest.raises(admin.SuppressionAdminError, match="segments"):
        admin.add(tmp_path, "a@x.test", now=T0)
    assert not (tmp_path / "spool" / "index.sqlite3").exists()


def test_admin_csv_import_export(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("address,reason,scope,expires\n"
                   "a@X.test,unsubscribe,,\n"
                   "# a comment\n"
                   "\n"
                   "b@x.test,complaint,app1,2030-01-01\n"
                   "c@x.test,,,30d\n"
                   "a@x.test,manual,,\n")       # duplicate of the first: skipped
    assert admin.import_csv(tmp_path, src, now=T0) == (3, 1)
    out = io.StringIO()
    assert admin.export_csv(tmp_path, out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["address"], r["reason"], r["scope"], r["expires"]) for r in rows] == [
        ("a@x.test", "unsubscribe", "", ""),
        ("b@x.test", "complaint", "app1", "2030-01-01T00:00:00Z"),
        ("c@x.test", "manual", "", "2023-12-14T22:13:20Z"),
    ]
    # Headerless, positional; an error anywhere imports nothing.
    bad = tmp_path / "bad.csv"
    bad.write_text("d@x.test\nnot-an-address\n")
    with pytest.raises(admin.SuppressionAdminError, match="line 2"):
        admin.import_csv(tmp_path, bad, now=T0)
    assert len(admin.list_entries(tmp_path, now=T0)) == 3
    bad.write_text("d@x.test,spite\n")
    with pytest.raises(admin.SuppressionAdminError, match="unknown reason"):
        admin.import_csv(tmp_path, bad, now=T0)


# -- the CLI ------------------------------------------------------------------------------

def mta(tmp_path, *args):
    env = dict(os.environ, MTA_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    env.pop("MTA_CONFIG", None)
    conf = tmp_path / "mta.toml"
    if not conf.exists():
        conf.write_text("[suppression]\non_rcpt = \"reject\"\n")
    return subprocess.run([sys.executable, "-m", "mta", *args, "--config", str(conf)], env=env,
                          capture_output=True, text=True, cwd=tmp_path)


def test_cli_suppression_commands(tmp_path):
    r = mta(tmp_path, "suppression", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    r = mta(tmp_path, "suppression", "add", "User@Example.TEST", "--reason", "unsubscribe",
            "--expires", "30d")
    assert r.returncode == 0, r.stderr
    assert "User@example.test" in r.stdout
    r = mta(tmp_path, "suppression", "add", "c@x.test", "--reason", "complaint", "--scope", "app1")
    assert r.returncode == 0, r.stderr
    r = mta(tmp_path, "suppression", "list", "--json")
    got = {(e["address"], e["scope"], e["reason"]) for e in json.loads(r.stdout)}
    assert got == {("User@example.test", "", "unsubscribe"), ("c@x.test", "app1", "complaint")}
    r = mta(tmp_path, "suppression", "list", "--reason", "complaint")
    assert "c@x.test\tapp1\tcomplaint" in r.stdout and "User@" not in r.stdout
    r = mta(tmp_path, "suppression", "show", "User@EXAMPLE.test", "--json")
    assert r.returncode == 0
    shown = json.loads(r.stdout)
    assert shown["suppressed"] and shown["entries"][0]["reason"] == "unsubscribe"
    assert shown["entries"][0]["expires"] is not None
    r = mta(tmp_path, "suppression", "show", "nobody@x.test")
    assert r.returncode == 1 and "not on the suppression list" in r.stderr

    r = mta(tmp_path, "suppression", "export")
    assert r.returncode == 0, r.stderr
    exported = r.stdout
    assert exported.splitlines()[0] == "address,reason,scope,expires,created,queue_id,reply"
    (tmp_path / "backup.csv").write_text(exported)
    r = mta(tmp_path, "suppression", "export", "--json")
    before = sorted(json.loads(r.stdout), key=lambda e: e["address"])

    r = mta(tmp_path, "suppression", "remove", "User@example.test")
    assert r.returncode == 0, r.stderr
    r = mta(tmp_path, "suppression", "remove", "c@x.test")          # wrong scope
    assert r.returncode == 1 and "no suppression" in r.stderr
    r = mta(tmp_path, "suppression", "remove", "c@x.test", "--scope", "app1")
    assert r.returncode == 0
    assert json.loads(mta(tmp_path, "suppression", "list", "--json").stdout) == []

    r = mta(tmp_path, "suppression", "import", "backup.csv")
    assert r.returncode == 0, r.stderr
    assert "imported 2, skipped 0" in r.stdout
    after = sorted(json.loads(mta(tmp_path, "suppression", "export", "--json").stdout),
                   key=lambda e: e["address"])
    key = lambda e: (e["address"], e["scope"], e["reason"], int(e["created"]),
                     e["expires"] and int(e["expires"]))
    assert [key(e) for e in after] == [key(e) for e in before]
    assert "skipped 2" in mta(tmp_path, "suppression", "import", "backup.csv").stdout


def test_cli_errors(tmp_path):
    r = mta(tmp_path, "suppression", "add", "not-an-address")
    assert r.returncode == 1 and "invalid address" in r.stderr
    r = mta(tmp_path, "suppression", "add", "a@x.test", "--expires", "soon")
    assert r.returncode == 1 and "duration" in r.stderr
    r = mta(tmp_path, "suppression", "add", "a@x.test", "--reason", "soft_bounce")
    assert r.returncode == 2
    r = mta(tmp_path, "suppression", "import", "missing.csv")
    assert r.returncode == 1 and "missing.csv" in r.stderr
    r = mta(tmp_path, "suppression", "remove", "a@x.test")
    assert r.returncode == 1
