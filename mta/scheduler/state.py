"""Destination health as a state machine: enum, transition table, one mover.

    ACTIVE   --bad batch-->          PAUSED    (no connections until paused_until)
    PAUSED   --pause over-->         PROBING   (one probe connection at a time)
    PROBING  --OK batch-->           ACTIVE    (full concurrency again)
    PROBING  --bad batch-->          PAUSED    (longer backoff)

"bad" is DestinationHealth DOWN or THROTTLING; one recipient's 5xx is not
(docs/ARCHITECTURE.md §4, delivery outcomes have two levels).

Public API
    DestState                 StrEnum: "active", "paused", "probing"
    TRANSITIONS               {state: frozenset of next states}
    DESTINATION               the `mta.core.statemachine.StateMachine` over them;
                              `DESTINATION.move(old, new, subject=name)`

Invariant: every state change goes through `DESTINATION.move`, which logs
``event=transition machine=destination subject=NAME from=old to=new`` on
the ``mta.scheduler`` logger and raises `mta.core.statemachine.
IllegalTransition` for a move not in the table.
"""

from __future__ import annotations

import enum
import logging

from mta.core.statemachine import StateMachine

__all__ = ["DESTINATION", "TRANSITIONS", "DestState"]

log = logging.getLogger("mta.scheduler")


class DestState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    PROBING = "probing"


TRANSITIONS: dict[DestState, frozenset[DestState]] = {
    DestState.ACTIVE: frozenset({DestState.PAUSED}),
    DestState.PAUSED: frozenset({DestState.PROBING}),
    DestState.PROBING: frozenset({DestState.ACTIVE, DestState.PAUSED}),
}

DESTINATION: StateMachine[DestState] = StateMachine("destination", TRANSITIONS, log)
