"""mta/webhooks/state.py: an endpoint's stored state, the ACTIVE/FAILING
machine and the pure retry decision — table-driven, with `now` as data."""

from __future__ import annotations

import logging

import pytest

from mta.config.sections import LedgerConfig
from mta.core.statemachine import IllegalTransition
from mta.webhooks.state import (ENDPOINT_STATES, CursorState, EndpointState, RetryDecision,
                                after_failure, after_success, next_retry, replayed)

ACTIVE, FAILING = EndpointState.ACTIVE, EndpointState.FAILING
SCHEDULE = (5.0, 30.0, 120.0)
T0 = 1_700_000_000.0


def _st(**kw) -> CursorState:
    return CursorState(**{"cursor": 10, **kw})


# (state before, now, failing_after) -> RetryDecision
NEXT_RETRY = [
    # the first failure of a run starts it: failing_since = now, first step
    (_st(), T0, 3600.0,
     RetryDecision(attempts=1, failing_since=T0, wait=5.0, next_attempt=T0 + 5, state=ACTIVE)),
    # the n-th failure waits the n-th step; failing_since stays the run's start
    (_st(attempts=1, failing_since=T0), T0 + 5, 3600.0,
     RetryDecision(2, T0, 30.0, T0 + 35, ACTIVE)),
    (_st(attempts=2, failing_since=T0), T0 + 35, 3600.0,
     RetryDecision(3, T0, 120.0, T0 + 155, ACTIVE)),
    # past the schedule's end: the last step repeats
    (_st(attempts=3, failing_since=T0), T0 + 155, 3600.0,
     RetryDecision(4, T0, 120.0, T0 + 275, ACTIVE)),
    (_st(attempts=50, failing_since=T0), T0 + 3000, 3600.0,
     RetryDecision(51, T0, 120.0, T0 + 3120, ACTIVE)),
    # failing_after reached (>=): failing, and the wait is the last step at once
    (_st(attempts=1, failing_since=T0), T0 + 3600, 3600.0,
     RetryDecision(2, T0, 120.0, T0 + 3720, FAILING)),
    (_st(attempts=1, failing_since=T0), T0 + 3599.9, 3600.0,
     RetryDecision(2, T0, 30.0, T0 + 3629.9, ACTIVE)),
    # failing stays failing (until a 2xx or a replay), last step
    (_st(attempts=9, failing_since=T0, state=FAILING), T0 + 9000, 3600.0,
     RetryDecision(10, T0, 120.0, T0 + 9120, FAILING)),
    # a failing row without failing_since (hand-edited): the run starts now, still failing
    (_st(state=FAILING), T0, 3600.0, RetryDecision(1, T0, 120.0, T0 + 120, FAILING)),
    # failing_after 0: the very first failure marks it failing
    (_st(), T0, 0.0, RetryDecision(1, T0, 120.0, T0 + 120, FAILING)),
]


@pytest.mark.parametrize("st,now,failing_after,want", NEXT_RETRY)
def test_next_retry(st, now, failing_after, want):
    assert next_retry(st, now, SCHEDULE, failing_after) == want


def test_the_default_schedule_in_full():
    """A run of failures against the documented defaults ([ledger]
    webhook_retry_schedule 5s … 4h, webhook_failing_after 3d): every wait,
    and the attempt at which the endpoint turns failing."""
    cfg = LedgerConfig()
    st, now, waits, turned = CursorState(), T0, [], None
    for _ in range(30):
        d = next_retry(st, now, cfg.webhook_retry_schedule, cfg.webhook_failing_after)
        waits.append(d.wait)
        if d.state == FAILING and turned is None:
            turned = d.attempts
        st = after_failure(st, d, "HTTP 500")
        now = d.next_attempt
    assert waits[:10] == [5, 30, 120, 600, 1800, 3600, 7200, 14400, 14400, 14400]
    assert set(waits[8:]) == {14400.0}
    # failure 8 comes 5+30+120+600+1800+3600+7200 = 13355 s into the run, then
    # one every 4h: failure 8+k at 13355 + 14400k, first >= 3 days (259200 s)
    # for k = 18
    assert turned == 8 + 18


def test_after_failure_keeps_the_cursor_and_records_the_error():
    st = _st(cursor=42)
    d = next_retry(st, T0, SCHEDULE, 60.0)
    got = after_failure(st, d, "timeout after 10s")
    assert got == CursorState(cursor=42, failing_since=T0, next_attempt=T0 + 5, attempts=1,
                              last_error="timeout after 10s", state=ACTIVE)


@pytest.mark.parametrize("before,want", [
    # clean: only the cursor moves
    (CursorState(cursor=3), CursorState(cursor=9)),
    # retrying or failing: clean again at the new cursor
    (CursorState(cursor=3, attempts=2, failing_since=T0, next_attempt=T0 + 30,
                 last_error="HTTP 500"), CursorState(cursor=9)),
    (CursorState(cursor=3, attempts=40, failing_since=T0, next_attempt=T0 + 30,
                 last_error="HTTP 500", state=FAILING), CursorState(cursor=9)),
])
def test_after_success(before, want):
    assert after_success(before, 9) == want


def test_replayed_is_clean_and_active():
    assert replayed(7) == CursorState(cursor=7)
    assert replayed(7).fields() == {"cursor": 7, "failing_since": None, "next_attempt": None,
                                    "attempts": 0, "last_error": None, "state": "active"}


@pytest.mark.parametrize("row,want", [
    (None, CursorState()),
    ({}, CursorState()),
    # the spool's default for a new row is "ok": anything but failing is active
    ({"cursor": 5, "attempts": None, "state": "ok"}, CursorState(cursor=5)),
    ({"cursor": 5, "attempts": 3, "state": "failing", "failing_since": T0,
      "next_attempt": T0 + 9, "last_error": "x", "name": "app"},
     CursorState(5, T0, T0 + 9, 3, "x", FAILING)),
])
def test_stored_rows_read_leniently(row, want):
    assert CursorState.stored(row) == want


def test_fields_are_plain_strings_for_the_store():
    f = CursorState(state=FAILING).fields()
    assert type(f["state"]) is str and f["state"] == "failing"


@pytest.mark.parametrize("st,now,due", [
    (CursorState(), T0, True),
    (CursorState(next_attempt=T0 + 1), T0, False),
    (CursorState(next_attempt=T0), T0, True),
])
def test_due(st, now, due):
    assert st.due(now) is due


def test_the_machine(caplog):
    assert ENDPOINT_STATES.allowed(ACTIVE) == {ACTIVE, FAILING}
    assert ENDPOINT_STATES.allowed(FAILING) == {ACTIVE, FAILING}
    with caplog.at_level(logging.DEBUG, logger="mta.webhooks"):
        assert ENDPOINT_STATES.move(ACTIVE, FAILING, "app", level=logging.DEBUG) == FAILING
    assert "event=transition machine=webhook subject=app from=active to=failing" in caplog.text
    with pytest.raises(IllegalTransition):
        ENDPOINT_STATES.check(ACTIVE, "gone")   # type: ignore[arg-type]
