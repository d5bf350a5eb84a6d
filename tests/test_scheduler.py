"""Scheduler: pure unit tests with an explicit `now` (no clock, no awaits)."""

import logging

import pytest

from mta.core.envelope import Destination, QueuedRecipient
from mta.core.outcome import DestinationHealth
from mta.core.statemachine import IllegalTransition
from mta.scheduler import DESTINATION, Batch, DestState, Idle, Scheduler, Sleep, Work

OK, DOWN, THROTTLING = DestinationHealth.OK, DestinationHealth.DOWN, DestinationHealth.THROTTLING
T0 = 1_700_000_000.0


def dest(domain: str) -> Destination:
    return Destination(domain, "mx", domain=domain)


def work(qid: str, idx: int, domain: str) -> Work:
    return Work(QueuedRecipient(qid, idx, f"r{idx}@{domain}", domain, "s@x.org", 0, T0, T0),
                dest(domain))


def msg(qid: str, domain: str, n: int, start: int = 0) -> list[Work]:
    return [work(qid, i, domain) for i in range(start, start + n)]


def sched(concurrency=2, per_conn=10, per_txn=50, backoff=(1.0, 5.0, 30.0),
          hold_max=1000.0) -> Scheduler:
    return Scheduler(concurrency=concurrency, max_messages_per_connection=per_conn,
                     max_recipients_per_transaction=per_txn, backoff=backoff, hold_max=hold_max)


def shape(b: Batch) -> list[tuple[str, list[int]]]:
    return [(t[0].item.queue_id, [w.item.rcpt_idx for w in t]) for t in b.messages]


def test_idle_when_empty():
    s = sched()
    assert s.next_batch(T0) == Idle()
    assert isinstance(s.next_batch(T0), Idle)
    assert s.pending_count() == s.inflight_count() == 0


def test_groups_by_destination_and_queue_id():
    s = sched(concurrency=1)
    s.add([work("Q1", 0, "a.com"), work("Q2", 0, "a.com"), work("Q1", 1, "a.com"),
           work("Q1", 2, "b.org")], T0)
    assert s.pending_count() == 4
    b = s.next_batch(T0)
    assert isinstance(b, Batch)
    assert b.destination == dest("a.com")
    assert shape(b) == [("Q1", [0, 1]), ("Q2", [0])]       # one txn per message, rcpts together
    b2 = s.next_batch(T0)
    assert b2.destination == dest("b.org") and shape(b2) == [("Q1", [2])]
    assert b.token != b2.token
    assert s.pending_count() == 0 and s.inflight_count() == 4
    assert s.next_batch(T0) == Idle()


def test_transaction_splitting():
    s = sched(concurrency=1, per_txn=3)
    s.add(msg("Q1", "a.com", 7), T0)
    b = s.next_batch(T0)
    assert shape(b) == [("Q1", [0, 1, 2]), ("Q1", [3, 4, 5]), ("Q1", [6])]
    assert all(len(t) <= 3 for t in b.messages)


def test_messages_per_connection_cap_and_partial_message():
    s = sched(concurrency=1, per_conn=2, per_txn=2)
    s.add(msg("Q1", "a.com", 1) + msg("Q2", "a.com", 5), T0)
    b1 = s.next_batch(T0)
    assert shape(b1) == [("Q1", [0]), ("Q2", [0, 1])]      # 2 transactions = cap
    s.complete(b1, OK, T0)
    b2 = s.next_batch(T0)
    assert shape(b2) == [("Q2", [2, 3]), ("Q2", [4])]       # the rest of Q2, in order


def test_several_messages_per_connection_spread_over_free_slots():
    s = sched(concurrency=2, per_conn=100)
    s.add([w for i in range(6) for w in msg(f"Q{i}", "a.com", 1)], T0)
    b1, b2 = s.next_batch(T0), s.next_batch(T0)
    assert [q for q, _ in shape(b1)] == ["Q0", "Q1", "Q2"]   # ceil(6 / 2 free slots)
    assert [q for q, _ in shape(b2)] == ["Q3", "Q4", "Q5"]


def test_concurrency_window_enforced():
    s = sched(concurrency=2, per_conn=1)
    s.add([w for i in range(5) for w in msg(f"Q{i}", "a.com", 1)], T0)
    b1, b2 = s.next_batch(T0), s.next_batch(T0)
    assert isinstance(b1, Batch) and isinstance(b2, Batch)
    assert s.next_batch(T0) == Idle()                        # window full, wait for complete()
    assert s.destination_states()["a.com"]["connections"] == 2
    assert s.complete(b1, OK, T0) == []
    b3 = s.next_batch(T0)
    assert shape(b3) == [("Q2", [0])]
    assert s.next_batch(T0) == Idle()


def test_round_robin_between_destinations():
    s = sched(concurrency=100, per_conn=1)
    s.add([w for i in range(4) for w in msg(f"A{i}", "a.com", 1)], T0)
    s.add([w for i in range(2) for w in msg(f"B{i}", "b.com", 1)], T0)
    s.add(msg("C0", "c.com", 1), T0)
    order = []
    while isinstance(b := s.next_batch(T0), Batch):
        order.append(b.messages[0][0].item.queue_id)
    assert order == ["A0", "B0", "C0", "A1", "B1", "A2", "A3"]


def test_duplicate_add_is_ignored_while_held():
    s = sched(concurrency=1)
    s.add(msg("Q1", "a.com", 2), T0)
    s.add(msg("Q1", "a.com", 2), T0)
    assert s.pending_count() == 2
    b = s.next_batch(T0)
    s.add(msg("Q1", "a.com", 2), T0)                         # still in flight
    assert s.pending_count() == 0
    s.complete(b, OK, T0)
    s.add(msg("Q1", "a.com", 1), T0)                         # a retry later is new work
    assert s.pending_count() == 1


def test_recipient_failure_with_ok_health_keeps_destination_active():
    s = sched()
    s.add(msg("Q1", "a.com", 1) + msg("Q2", "a.com", 1), T0)
    b = s.next_batch(T0)
    assert s.complete(b, OK, T0) == []                       # e.g. a 550 for the recipient
    assert s.destination_states()["a.com"]["state"] == "active"
    assert isinstance(s.next_batch(T0), Batch)


def test_down_sleep_streak_growth_cap_probe_and_recovery(caplog):
    caplog.set_level(logging.INFO, logger="mta.scheduler")
    s = sched(concurrency=3, per_conn=1, backoff=(1.0, 5.0, 30.0))
    s.add([w for i in range(20) for w in msg(f"Q{i}", "a.com", 1)], T0)
    first = [s.next_batch(T0) for _ in range(3)]
    assert all(isinstance(b, Batch) for b in first)

    now = T0 + 10
    assert s.complete(first[0], DOWN, now) == []             # work kept (short pause)
    st = s.destination_states()["a.com"]
    assert (st["state"], st["streak"], st["paused_until"]) == ("paused", 1, now + 1.0)
    assert s.next_batch(now) == Sleep(now + 1.0)
    # the other two connections of the same outage fail too: one event, not three
    s.complete(first[1], DOWN, now + 0.5)
    s.complete(first[2], THROTTLING, now + 0.5)
    assert s.destination_states()["a.com"]["streak"] == 1
    assert s.next_batch(now + 0.99) == Sleep(now + 1.0)

    # each failed probe pauses longer: 1s, 5s, 30s, then 30s repeats (cap)
    pauses = []
    for expected in (5.0, 30.0, 30.0, 30.0):
        now = s.destination_states()["a.com"]["paused_until"]
        probe = s.next_batch(now)
        assert isinstance(probe, Batch)
        assert s.destination_states()["a.com"]["state"] == "probing"
        assert s.next_batch(now) == Idle()                   # probe concurrency is 1
        s.complete(probe, DOWN, now)
        pauses.append(s.destination_states()["a.com"]["paused_until"] - now)
    assert pauses == [5.0, 30.0, 30.0, 30.0]
    assert s.destination_states()["a.com"]["streak"] == 5

    now = s.destination_states()["a.com"]["paused_until"]
    probe = s.next_batch(now)
    s.complete(probe, OK, now)                               # recovered
    st = s.destination_states()["a.com"]
    assert (st["state"], st["streak"], st["paused_until"]) == ("active", 0, None)
    assert all(isinstance(s.next_batch(now), Batch) for _ in range(3))   # full window again
    assert s.next_batch(now) == Idle()
    for old, new in (("active", "paused"), ("paused", "probing"), ("probing", "active")):
        assert (f"event=transition machine=destination subject=a.com from={old} to={new}"
                in caplog.text)


def test_sleep_only_for_paused_work_others_still_served():
    s = sched(concurrency=1, per_conn=1)
    s.add(msg("A1", "a.com", 1) + msg("A2", "a.com", 1), T0)
    b = s.next_batch(T0)
    s.complete(b, DOWN, T0)
    s.add(msg("B1", "b.com", 1), T0)
    b2 = s.next_batch(T0)
    assert b2.destination == dest("b.com")                  # healthy destination not blocked
    assert s.next_batch(T0) == Sleep(T0 + 1.0)
    s.complete(b2, OK, T0)
    assert s.next_batch(T0 + 0.5) == Sleep(T0 + 1.0)
    assert shape(s.next_batch(T0 + 1.0)) == [("A2", [0])]


def test_long_pause_hands_pending_work_back():
    s = sched(concurrency=1, per_conn=1, backoff=(60.0,), hold_max=60.0)
    s.add(msg("Q1", "a.com", 1) + msg("Q2", "a.com", 2), T0)
    b = s.next_batch(T0)
    back = s.complete(b, DOWN, T0)
    assert [(w.item.queue_id, w.item.rcpt_idx) for w in back] == [("Q2", 0), ("Q2", 1)]
    assert s.pending_count() == 0
    assert s.next_batch(T0) == Idle()
    assert s.destination_states()["a.com"]["state"] == "paused"   # health remembered


def test_drain_returns_pending_not_inflight():
    s = sched(concurrency=1, per_conn=1)
    s.add(msg("A1", "a.com", 1) + msg("A2", "a.com", 1) + msg("B1", "b.com", 2), T0)
    b = s.next_batch(T0)
    assert [w.item.queue_id for w in s.drain("b.com")] == ["B1", "B1"]
    assert s.pending_count() == 1 and s.inflight_count() == 1
    assert [w.item.queue_id for w in s.drain()] == ["A2"]
    assert s.drain("nowhere") == []
    assert s.pending_count() == 0 and s.inflight_count() == 1
    s.complete(b, OK, T0)
    assert s.inflight_count() == 0
    assert s.destination_states() == {}                      # healthy idle destinations forgotten


def test_complete_twice_raises():
    s = sched()
    s.add(msg("Q1", "a.com", 1), T0)
    b = s.next_batch(T0)
    s.complete(b, OK, T0)
    with pytest.raises(ValueError):
        s.complete(b, OK, T0)


def test_destination_states_read_model():
    s = sched(concurrency=2, per_conn=1)
    s.add(msg("Q1", "a.com", 3) + msg("Q2", "a.com", 1), T0)
    s.next_batch(T0)
    assert s.destination_states() == {"a.com": {
        "state": "active", "pending": 1, "inflight": 3, "connections": 1,
        "paused_until": None, "streak": 0, "suspended": False}}


def test_illegal_transition_raises():
    assert DESTINATION.move(DestState.ACTIVE, DestState.PAUSED, subject="a.com") is DestState.PAUSED
    with pytest.raises(IllegalTransition, match="a.com: illegal move active -> probing"):
        DESTINATION.move(DestState.ACTIVE, DestState.PROBING, subject="a.com")
    with pytest.raises(IllegalTransition):
        DESTINATION.move(DestState.PAUSED, DestState.ACTIVE, subject="a.com")
    assert DestState.PAUSED == "paused"                  # stored and reported as the string


def test_pause_until_is_the_end_of_the_backoff_pause():
    s = sched(backoff=(30.0,))
    assert s.pause_until("a.com") is None                # unknown
    s.add(msg("Q1", "a.com", 2), T0)
    b = s.next_batch(T0)
    assert s.pause_until("a.com") is None                # active
    s.complete(b, DOWN, T0 + 1)
    assert s.pause_until("a.com") == T0 + 31
    assert s.pause_until("a.com") == s.destination_states()["a.com"]["paused_until"]
    s.flush("a.com", T0 + 2)
    assert s.pause_until("a.com") == T0 + 2


class _Delivery:
    concurrency_per_destination = 1
    max_messages_per_connection = 1
    max_recipients_per_transaction = 2
    destination_backoff = (7.0,)


class _Cfg:
    delivery = _Delivery()


def test_from_config_and_reconfigure_apply_the_delivery_limits():
    from mta.config.sections import DeliveryConfig

    class Real:
        delivery = DeliveryConfig()
    s = Scheduler.from_config(Real())
    d = DeliveryConfig()
    assert (s.concurrency, s.max_messages, s.max_rcpts, s.backoff) == (
        d.concurrency_per_destination, d.max_messages_per_connection,
        d.max_recipients_per_transaction, tuple(d.destination_backoff))
    s.add(msg("Q1", "a.com", 3) + msg("Q2", "a.com", 1), T0)
    s.reconfigure(_Cfg())
    assert (s.concurrency, s.max_messages, s.max_rcpts, s.backoff) == (1, 1, 2, (7.0,))
    b = s.next_batch(T0)
    assert shape(b) == [("Q1", [0, 1])]                  # one txn of at most 2 recipients
    assert isinstance(s.next_batch(T0), Idle)             # window of 1
    s.complete(b, DOWN, T0)
    assert s.pause_until("a.com") == T0 + 7.0
    bad = _Cfg()
    bad.delivery = type("D", (_Delivery,), {"concurrency_per_destination": 0})()
    with pytest.raises(ValueError):
        s.reconfigure(bad)


def test_bad_parameters():
    with pytest.raises(ValueError):
        sched(concurrency=0)
    with pytest.raises(ValueError):
        sched(backoff=())


def test_operator_suspend_resume_flush():
    from mta.core import DestinationHealth as H
    from mta.core.envelope import Destination, QueuedRecipient
    from mta.scheduler import Batch, Idle, Scheduler, Sleep, Work
    dest = Destination("s.test", "mx", domain="s.test")
    sched = Scheduler(concurrency=2, max_messages_per_connection=10,
                      max_recipients_per_transaction=10, backoff=(30.0,))

    def work(i):
        return Work(QueuedRecipient(f"Q{i:015d}", 0, f"a{i}@s.test", "s.test", "", 0, 0.0, 0.0), dest)
    sched.add([work(1), work(2)], 0.0)
    back = sched.suspend("s.test")
    assert sorted(w.item.queue_id for w in back) == ["Q000000000000001", "Q000000000000002"]
    assert sched.is_suspended("s.test") and sched.pending_count() == 0
    assert sched.destination_states()["s.test"]["suspended"] is True
    sched.add([work(3)], 0.0)
    assert isinstance(sched.next_batch(0.0), Idle)      # nothing leaves while suspended
    sched.resume("s.test")
    b = sched.next_batch(0.0)
    assert isinstance(b, Batch)
    sched.complete(b, H.DOWN, 1.0)                       # paused for 30 s
    sched.add([work(4)], 1.0)
    assert isinstance(sched.next_batch(2.0), Sleep)
    sched.flush("s.test", 2.0)                           # operator: try now
    assert isinstance(sched.next_batch(2.0), Batch)
