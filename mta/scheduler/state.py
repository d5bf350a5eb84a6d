"""Destination health as a state machine: enum, transition table, one mover.

    ACTIVE   --bad batch-->          PAUSED    (no connections until paused_until)
    PAUSED   --pause over-->         PROBING   (one probe connection at a time)
    PROBING  --OK batch-->           ACTIVE    (full concurrency again)
    PROBING  --bad batch-->          PAUSED    (longer backoff)

"bad" is DestinationHealth DOWN or THROTTLING; one recipient's 5xx is not
(DESIGN.md §3, delivery outcomes have two levels).

Public API: DestState, TRANSITIONS, IllegalTransition, transition(name, old, new).
Invariant: every state change goes through `transition`, which logs
``old -> new`` and raises IllegalTransition for a move not in the table.
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger("mta.scheduler")


class DestState(enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    PROBING = "probing"


TRANSITIONS: dict[DestState, frozenset[DestState]] = {
    DestState.ACTIVE: frozenset({DestState.PAUSED}),
    DestState.PAUSED: frozenset({DestState.PROBING}),
    DestState.PROBING: frozenset({DestState.ACTIVE, DestState.PAUSED}),
}


class IllegalTransition(RuntimeError):
    pass


def transition(name: str, old: DestState, new: DestState) -> DestState:
    """Check and log one move of destination `name`; return the new state."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"destination {name}: illegal {old.value} -> {new.value}")
    log.info("destination %s: %s -> %s", name, old.value, new.value)
    return new
