"""Leaving a cluster: what membership left in the spool index, removed.

One job: when a node starts without `[cluster]`, drop what being in a
cluster installed in its index — the outbox triggers and tables
(`suppression_outbox.py`, `account_outbox.py`, every object named
`cluster_…`) and the ledger forwarder's cursor (`ledger_sql.HOLD_CURSOR`,
which otherwise keeps pruning from passing it) — so a node that left does
not fill an outbox nobody drains, nor keep every event forever.

API
    leave(index_path) -> [name, …]   what was removed ([]: nothing to do;
                                     also when there is no index yet)

Invariants: one transaction; the local tables themselves (suppressions,
tenants, keys, …) are untouched. A node that joins again installs the
outboxes afresh and seeds what it holds (rows the cluster lacks), then
follows the cluster's copy; a deletion made while it was away is not
carried back.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from mta.spool.ledger_sql import HOLD_CURSOR
from mta.spool.suppression_outbox import connect, write_txn

__all__ = ["leave"]

_OBJECTS = ("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'table') "
            "AND name LIKE 'cluster\\_%' ESCAPE '\\' ORDER BY type = 'table'")


def _leave(db: sqlite3.Connection) -> list[str]:
    gone = []
    for kind, name in db.execute(_OBJECTS).fetchall():    # triggers first, then tables
        db.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
        gone.append(str(name))
    has_state = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'webhook_state'").fetchone()
    if has_state and db.execute("DELETE FROM webhook_state WHERE name = ?",
                                (HOLD_CURSOR,)).rowcount:
        gone.append(f"webhook_state[{HOLD_CURSOR}]")
    return gone


def leave(index_path: Path) -> list[str]:
    if not index_path.exists():
        return []
    with closing(connect(index_path)) as db:
        if not db.execute(_OBJECTS).fetchone() and not _holds(db):
            return []                   # the common case: never was in a cluster
        gone: list[str] = write_txn(db, _leave)
        return gone


def _holds(db: sqlite3.Connection) -> bool:
    try:
        return db.execute("SELECT 1 FROM webhook_state WHERE name = ?",
                          (HOLD_CURSOR,)).fetchone() is not None
    except sqlite3.OperationalError:     # no webhook_state table yet
        return False
