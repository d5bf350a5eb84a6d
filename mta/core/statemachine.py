"""The one state-machine helper: an enum, a transition table, one checked move.

House style (ARCHITECTURE §8.2): a state machine is an enum, a transition table,
and one function that checks the move, logs ``old -> new`` and raises on an
illegal one. Every state machine of the project (recipient states,
destination health, domain and selector states, webhook endpoints) is a
`StateMachine` over its own `enum.StrEnum`, so the check, the log line and
the error are the same everywhere.

API
    IllegalTransition                 MtaError + ValueError; the message names
                                      the machine, the subject and the move
    StateMachine(name, table, log)    table: {state: frozenset of next states};
                                      every state must be a key (a final state
                                      maps to an empty set)
    .allowed(old) -> frozenset
    .can(old, new) -> bool
    .check(old, new, subject="")      raise IllegalTransition unless allowed
    .move(old, new, subject="", level=logging.INFO) -> new
                                      check, then log
                                      ``event=transition machine=… subject=…
                                      from=old to=new`` (a self-move that the
                                      table allows is not logged)

Invariants
  * A table is checked when the machine is built: every target is a state
    of the same enum and every state has a row (a typo in a table is an
    import-time error, not a run-time surprise).
  * States are `enum.StrEnum` members, so they compare equal to their
    string values and are stored as such (SQLite, JSON) unchanged.
  * Stdlib only (ARCHITECTURE §2: core).
"""

from __future__ import annotations

import enum
import logging
from typing import Generic, Mapping, TypeVar

from mta.core.errors import MtaError
from mta.core.logfmt import event

__all__ = ["IllegalTransition", "StateMachine"]

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(MtaError, ValueError):
    """A move the machine's table does not allow: a bug in the caller."""


class StateMachine(Generic[S]):
    def __init__(self, name: str, table: Mapping[S, frozenset[S]], log: logging.Logger):
        if not table:
            raise ValueError(f"state machine {name}: empty table")
        kind = type(next(iter(table)))
        missing = [s for s in kind if s not in table]
        if missing:
            raise ValueError(f"state machine {name}: no row for {missing}")
        for old, targets in table.items():
            bad = [t for t in targets if not isinstance(t, kind)]
            if bad:
                raise ValueError(f"state machine {name}: {old} -> {bad} are not {kind.__name__}")
        self.name = name
        self.table: Mapping[S, frozenset[S]] = dict(table)
        self.log = log

    def allowed(self, old: S) -> frozenset[S]:
        return self.table[old]

    def can(self, old: S, new: S) -> bool:
        return new in self.table.get(old, frozenset())

    def check(self, old: S, new: S, subject: str = "") -> None:
        if not self.can(old, new):
            who = f" {subject}" if subject else ""
            raise IllegalTransition(f"{self.name}{who}: illegal move {_v(old)} -> {_v(new)}")

    def move(self, old: S, new: S, subject: str = "", level: int = logging.INFO) -> S:
        self.check(old, new, subject)
        if old != new:
            event(self.log, "transition", level=level, machine=self.name, subject=subject,
                  **{"from": _v(old), "to": _v(new)})
        return new


def _v(state: object) -> str:
    return str(state.value) if isinstance(state, enum.Enum) else str(state)
