"""Recipient moves in the spool (issue 11 item 4): the record path reads the
states it moves from, checks each move with core.envelope.RECIPIENT_MACHINE
and logs ``old -> new`` (DEBUG on the hot path; INFO for operator moves and
asynchronous bounces); the writer's handler table covers every op kind."""

from __future__ import annotations

import logging

import pytest

from mta.core.envelope import (ASYNC_BOUNCE_MACHINE, BOUNCED, DELETED, DELIVERED, EXPIRED, HELD,
                               QUEUED, RECIPIENT_MACHINE, SUPPRESSED, RecipientState,
                               RecipientUpdate)
from mta.core.reply import Reply
from mta.core.statemachine import IllegalTransition
from mta.spool import MessageFilter, NewMessage, Spool, ops, steering, writer
from mta.spool.attempts import Move, recipient_moves

T0 = 1_700_000_000.0


def upd(qid: str, idx: int, state: str, **kw) -> RecipientUpdate:
    return RecipientUpdate(queue_id=qid, rcpt_idx=idx, state=state, attempted_at=T0, **kw)


@pytest.fixture
async def spool(tmp_path):
    s = await Spool.open(tmp_path, now=T0)
    yield s
    await s.close()


def new(*rcpts: str) -> NewMessage:
    return NewMessage(sender="app@example.test", recipients=rcpts,
                      body=b"Subject: m\r\n\r\nbody\r\n")


# -- the machine ---------------------------------------------------------------------

def test_states_are_the_strings_the_index_stores():
    assert [s.value for s in RecipientState] == [
        "queued", "held", "delivered", "bounced", "expired", "suppressed", "deleted"]
    assert QUEUED is RecipientState.QUEUED and QUEUED == "queued" and f"{BOUNCED}" == "bounced"


@pytest.mark.parametrize("old", [DELIVERED, BOUNCED, EXPIRED, SUPPRESSED, DELETED])
def test_final_states_are_terminal(old):
    assert RECIPIENT_MACHINE.allowed(old) == frozenset()
    with pytest.raises(IllegalTransition, match=f"recipient x: illegal move {old} -> queued"):
        RECIPIENT_MACHINE.check(old, QUEUED, "x")


def test_async_bounce_is_the_only_way_out_of_delivered():
    assert {s for s in RecipientState if ASYNC_BOUNCE_MACHINE.allowed(s)} == {QUEUED, DELIVERED}
    assert ASYNC_BOUNCE_MACHINE.allowed(DELIVERED) == {BOUNCED}
    assert not ASYNC_BOUNCE_MACHINE.can(HELD, BOUNCED)


# -- recipient_moves: pure ------------------------------------------------------------

@pytest.mark.parametrize("states, updates, moves", [
    # a deferral is the self-move; a later final move in the same list applies
    ({("a", 0): "queued"}, [upd("a", 0, QUEUED), upd("a", 0, DELIVERED)],
     [Move("a", 0, QUEUED, QUEUED), Move("a", 0, QUEUED, DELIVERED)]),
    # after a final move, later updates of the same recipient move nothing
    ({("a", 0): "queued"}, [upd("a", 0, BOUNCED), upd("a", 0, DELIVERED)],
     [Move("a", 0, QUEUED, BOUNCED)]),
    # already final, held, or unknown: nothing moves
    ({("a", 0): "delivered", ("a", 1): "held"},
     [upd("a", 0, BOUNCED), upd("a", 1, DELIVERED), upd("b", 0, DELIVERED)], []),
    # each recipient on its own
    ({("a", 0): "queued", ("a", 1): "queued"}, [upd("a", 1, EXPIRED), upd("a", 0, SUPPRESSED)],
     [Move("a", 1, QUEUED, EXPIRED), Move("a", 0, QUEUED, SUPPRESSED)]),
])
def test_recipient_moves(states, updates, moves):
    assert recipient_moves(updates, states) == moves
    for m in moves:
        RECIPIENT_MACHINE.check(m.old, m.new)


# -- the writer's table -------------------------------------------------------------

def test_every_op_kind_has_one_handler():
    kinds = {v for k, v in vars(ops).items() if k.isupper() and isinstance(v, str)}
    handled = [kind for kind, _ in writer.HANDLERS]
    assert len(handled) == len(set(handled))
    assert set(handled) | {ops.RECLAIM} == kinds


# -- logged moves on a real spool ------------------------------------------------------

def transitions(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.getMessage().startswith("event=transition")]


async def test_record_logs_each_move_at_debug(spool, caplog):
    qid = await spool.enqueue(new("a@x.test", "b@x.test"), T0)
    await spool.lease_due(T0, 10)
    caplog.set_level(logging.DEBUG, logger="mta.spool")
    await spool.record([upd(qid, 0, QUEUED, next_attempt=T0 + 60),
                        upd(qid, 1, DELIVERED, reply=Reply.parse("250 ok"))])
    assert transitions(caplog) == [
        ("DEBUG", f"event=transition machine=recipient subject={qid}/1 from=queued to=delivered")]
    caplog.clear()
    # A late report for a final recipient moves nothing and logs no move.
    await spool.record([upd(qid, 1, BOUNCED, reply=Reply.parse("550 5.1.1 no"))])
    assert transitions(caplog) == []
    assert "event=updates_ignored ignored=1 of=1" in caplog.text
    assert [r.state for r in (await spool.get_message(qid)).recipients] == [QUEUED, DELIVERED]


async def test_operator_moves_log_at_info_unless_many(spool, caplog, monkeypatch):
    q1 = await spool.enqueue(new("a@x.test"), T0)
    caplog.set_level(logging.DEBUG, logger="mta.spool")
    assert await spool.hold_messages(MessageFilter(ids=(q1,)), T0) == 1
    assert transitions(caplog) == [
        ("INFO", f"event=transition machine=recipient subject={q1}/0 from=queued to=held")]
    caplog.clear()
    monkeypatch.setattr(steering, "LOG_EACH_MAX", 1)
    q2 = await spool.enqueue(new("a@y.test", "b@y.test"), T0)
    assert await spool.delete_messages(MessageFilter(ids=(q1, q2)), T0) == 3
    assert {level for level, _ in transitions(caplog)} == {"DEBUG"}
    assert len(transitions(caplog)) == 3
    assert "event=operator_steer action=delete recipients=3" in caplog.text


async def test_async_bounce_logs_its_own_machine(spool, caplog):
    qid = await spool.enqueue(new("a@x.test"), T0)
    await spool.lease_due(T0, 10)
    await spool.record([upd(qid, 0, DELIVERED, reply=Reply.parse("250 ok"))])
    caplog.set_level(logging.INFO, logger="mta.spool")
    assert await spool.record_async(qid, 0, state=BOUNCED, reply=Reply.parse("550 5.1.1 gone"),
                                    detail="dsn", at=T0 + 60)
    assert transitions(caplog) == [
        ("INFO", f"event=transition machine=recipient_async subject={qid}/0 "
                 "from=delivered to=bounced")]


async def test_record_refuses_an_unknown_state(spool):
    with pytest.raises(ValueError, match="unknown recipient state 'lost'"):
        await spool.record([upd("x", 0, "lost")])
