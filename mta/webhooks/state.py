"""One endpoint's delivery state and the decisions that change it. Pure:
values in, values out; `now` is an argument.

Public API
    EndpointState          StrEnum: ACTIVE ("active"), FAILING ("failing")
    ENDPOINT_STATES        the StateMachine over it (core.statemachine)
    CursorState            frozen: cursor, failing_since, next_attempt,
                           attempts, last_error, state
        CursorState.stored(row | None) -> CursorState   (a store row, read leniently)
        .fields() -> dict          the store's fields (plain strings), also
                                   the status / replay answer
        .due(now) -> bool          no backoff pending at `now`
        .retrying -> bool          not clean: failing, or attempts > 0
    RetryDecision          attempts, failing_since, wait, next_attempt, state
    next_retry(st, now, schedule, failing_after) -> RetryDecision
                           after a failed request
    after_failure(st, decision, error) -> CursorState
    after_success(st, cursor) -> CursorState           after a 2xx
    replayed(cursor) -> CursorState                    an operator's replay

States
    active   -> active (retrying: attempts > 0, last_error), failing (an
                endpoint failing continuously for `failing_after`)
    failing  -> failing (its backlog is kept, retried every last-step wait),
                active (a 2xx, or an operator's replay)

The retry decision (ARCHITECTURE §8.5: a schedule is data plus a pure function):
the n-th consecutive failure waits schedule[n-1], the last step repeating
forever; failing_since is the time of the first failure of the run; once
`now - failing_since >= failing_after` the endpoint is failing and waits the
last step. A failing endpoint stays failing until a 2xx or a replay.

Invariants: a store row whose state is anything but "failing" reads as
active (the spool's default for a new row is "ok"); attempts == 0 and
failing_since/next_attempt/last_error None after a success or a replay.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mta.core.statemachine import StateMachine

__all__ = ["ENDPOINT_STATES", "CursorState", "EndpointState", "RetryDecision", "after_failure",
           "after_success", "next_retry", "replayed"]


class EndpointState(enum.StrEnum):
    ACTIVE = "active"
    FAILING = "failing"


ENDPOINT_STATES: StateMachine[EndpointState] = StateMachine(
    "webhook", {
        EndpointState.ACTIVE: frozenset({EndpointState.ACTIVE, EndpointState.FAILING}),
        EndpointState.FAILING: frozenset({EndpointState.FAILING, EndpointState.ACTIVE}),
    }, logging.getLogger("mta.webhooks"))


@dataclass(frozen=True)
class CursorState:
    cursor: int = 0                       # the last seq acknowledged (2xx)
    failing_since: float | None = None    # first failure of the current run
    next_attempt: float | None = None     # backing off until then
    attempts: int = 0                     # consecutive failed requests
    last_error: str | None = None
    state: EndpointState = EndpointState.ACTIVE

    @classmethod
    def stored(cls, row: Mapping[str, Any] | None) -> CursorState:
        row = row or {}
        return cls(cursor=int(row.get("cursor") or 0), failing_since=row.get("failing_since"),
                   next_attempt=row.get("next_attempt"), attempts=int(row.get("attempts") or 0),
                   last_error=row.get("last_error"),
                   # the spool's default for a new row is "ok": anything but failing is active
                   state=EndpointState.FAILING if row.get("state") == EndpointState.FAILING
                   else EndpointState.ACTIVE)

    def fields(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "failing_since": self.failing_since,
                "next_attempt": self.next_attempt, "attempts": self.attempts,
                "last_error": self.last_error, "state": self.state.value}

    def due(self, now: float) -> bool:
        return self.next_attempt is None or now >= self.next_attempt

    @property
    def retrying(self) -> bool:
        return self.state != EndpointState.ACTIVE or self.attempts > 0


@dataclass(frozen=True)
class RetryDecision:
    attempts: int                 # consecutive failures, this one included
    failing_since: float
    wait: float                   # seconds until the next try
    next_attempt: float           # now + wait
    state: EndpointState


def next_retry(st: CursorState, now: float, schedule: Sequence[float],
               failing_after: float) -> RetryDecision:
    """After a failed request at `now`: when to try again, and whether the
    endpoint is now failing. `schedule` must not be empty."""
    attempts = st.attempts + 1
    failing_since = st.failing_since if st.failing_since is not None else now
    state = EndpointState.FAILING if now - failing_since >= failing_after else st.state
    wait = schedule[-1] if state == EndpointState.FAILING else \
        schedule[min(attempts - 1, len(schedule) - 1)]
    return RetryDecision(attempts=attempts, failing_since=failing_since, wait=wait,
                         next_attempt=now + wait, state=state)


def after_failure(st: CursorState, decision: RetryDecision, error: str | None) -> CursorState:
    """The state to store after a failure (the cursor stays)."""
    return replace(st, attempts=decision.attempts, failing_since=decision.failing_since,
                   next_attempt=decision.next_attempt, last_error=error, state=decision.state)


def after_success(st: CursorState, cursor: int) -> CursorState:
    """The state after a 2xx acknowledging events up to `cursor`: clean again
    when it was retrying, else only the cursor moves."""
    return CursorState(cursor=cursor) if st.retrying else replace(st, cursor=cursor)


def replayed(cursor: int) -> CursorState:
    """An operator's replay: active at `cursor`, no backoff, no history."""
    return CursorState(cursor=cursor)
