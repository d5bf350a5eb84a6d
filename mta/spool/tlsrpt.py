"""TLS-RPT counts: the `tlsrpt_counts` and `tlsrpt_sent` tables of the spool
index (RFC 8460; the report itself is mta/policy/tlsrpt.py).

One job: count every outbound TLS negotiation outcome per UTC day and
policy domain durably, and remember which (day, policy domain) reports went
out, so a restart loses no counts of a finished day and sends no report
twice.

API (synchronous; `state_dir` is the daemon's server.state_dir):
    SqliteTlsRpt(state_dir)
        .add(outcomes)              [(day "YYYY-MM-DD", outcome), …]: each
                                    +1 on its row, all in ONE transaction
        .days_before(day) -> [(day, policy_domain), …]
                                    the pairs with counts, day < `day`, not
                                    marked sent; oldest first
        .counts(day, policy_domain) -> [(OutcomeRow, n), …]   sorted
        .mark_sent(day, policy_domain, how, at)   how: e.g. the rua URIs it
                                    went to, or why not ("no-record");
                                    a second mark replaces the first
        .sent(day, policy_domain) -> (how, at) | None
        .prune(before_day) -> int   counts and marks of days before it go;
                                    the number of count rows removed
    OutcomeFields   the Protocol add() reads (mta.policy.tlsrpt.Outcome is
                    one; this layer may not import policy)
    OutcomeRow      the frozen row counts() returns, the same fields
                    (mta.policy.tlsrpt.report_json takes it as it is)
    TlsRptStoreError   a core.StorageError
    TLSRPT_SCHEMA

Invariants (the approach of sidetable.py):
- Plain stdlib sqlite3 on the index's WAL file (synchronous=FULL: a count
  is on disk when add() returns), busy_timeout 5 s, a new connection and
  one short transaction per call; any thread may call (the daemon calls
  through `asyncio.to_thread`, and should batch a connection's outcomes
  into one add). Never the spool's flock, never recovery. Reads create
  nothing; writes create the tables.
- A row's key is (day, policy_domain, policy_type, policy_strings, mx_host,
  result, sending_ip, receiving_ip); the policy domain and MX host are
  kept lower-case without a trailing dot, policy_strings as a JSON list.
- The vocabulary (policy types, result types) is policy's to check, when
  the report is built; here a day must be a real "YYYY-MM-DD" (ValueError
  naming it), nothing more.
- Counts added to a day already marked sent stay (prune removes them) but
  are never reported: days_before leaves a sent pair out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from datetime import date
from typing import Any

from mta.core.errors import StorageError
from mta.core.tlsrpt import TlsOutcome, TlsOutcomeFields
from mta.spool.sidetable import SideTable

__all__ = ["TLSRPT_SCHEMA", "OutcomeFields", "OutcomeRow", "SqliteTlsRpt", "TlsRptStoreError"]

TLSRPT_SCHEMA = """
CREATE TABLE IF NOT EXISTS tlsrpt_counts (
    day            TEXT NOT NULL,      -- UTC day, YYYY-MM-DD
    policy_domain  TEXT NOT NULL,
    policy_type    TEXT NOT NULL,      -- sts | tlsa | no-policy-found
    policy_strings TEXT NOT NULL,      -- JSON list of strings
    mx_host        TEXT NOT NULL,
    result         TEXT NOT NULL,      -- success | an RFC 8460 result type
    sending_ip     TEXT NOT NULL,
    receiving_ip   TEXT NOT NULL,
    n              INTEGER NOT NULL,
    PRIMARY KEY (day, policy_domain, policy_type, policy_strings, mx_host, result,
                 sending_ip, receiving_ip)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tlsrpt_sent (
    day            TEXT NOT NULL,
    policy_domain  TEXT NOT NULL,
    how            TEXT NOT NULL,
    at             REAL NOT NULL,
    PRIMARY KEY (day, policy_domain)
);
"""

_KEY = ("day, policy_domain, policy_type, policy_strings, mx_host, result, sending_ip, "
        "receiving_ip")
_SQL_ADD = (f"INSERT INTO tlsrpt_counts ({_KEY}, n) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT ({_KEY}) DO UPDATE SET n = n + excluded.n")
_SQL_DAYS = ("SELECT DISTINCT c.day, c.policy_domain FROM tlsrpt_counts c WHERE c.day < ? "
             "AND NOT EXISTS (SELECT 1 FROM tlsrpt_sent s WHERE s.day = c.day "
             "AND s.policy_domain = c.policy_domain) ORDER BY c.day, c.policy_domain")
_SQL_COUNTS = ("SELECT policy_domain, policy_type, policy_strings, mx_host, result, "
               "sending_ip, receiving_ip, n FROM tlsrpt_counts "
               "WHERE day = ? AND policy_domain = ? AND n > 0 "
               "ORDER BY policy_type, policy_strings, mx_host, result, sending_ip, receiving_ip")
_SQL_MARK = "INSERT OR REPLACE INTO tlsrpt_sent (day, policy_domain, how, at) VALUES (?, ?, ?, ?)"
_SQL_SENT = "SELECT how, at FROM tlsrpt_sent WHERE day = ? AND policy_domain = ?"


class TlsRptStoreError(StorageError):
    pass


OutcomeFields = TlsOutcomeFields      # what add() reads (mta.policy.tlsrpt.Outcome is one)
OutcomeRow = TlsOutcome              # what counts() returns


def _day(day: str) -> str:
    if not isinstance(day, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"day: {day!r} is not YYYY-MM-DD")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"day: {day!r} is not a date") from None
    return day


def _name(host: str) -> str:
    return host.rstrip(".").lower()


def _key(day: str, o: OutcomeFields) -> tuple[str, ...]:
    return (_day(day), _name(o.policy_domain), o.policy_type,
            json.dumps(list(o.policy_strings), separators=(",", ":")), _name(o.mx_host),
            o.result, o.sending_ip, o.receiving_ip)


def _row(r: Sequence[Any]) -> tuple[OutcomeRow, int]:
    strings = json.loads(r[2]) if r[2] else []
    return (OutcomeRow(policy_domain=r[0], policy_type=r[1],
                       policy_strings=tuple(str(s) for s in strings), mx_host=r[3],
                       result=r[4], sending_ip=r[5], receiving_ip=r[6]), int(r[7]))


class SqliteTlsRpt(SideTable):
    SCHEMA = TLSRPT_SCHEMA
    WHAT = "the TLS-RPT counts"
    ERROR = TlsRptStoreError

    # -- writes ------------------------------------------------------------------

    def add(self, outcomes: Sequence[tuple[str, OutcomeFields]]) -> None:
        tally = Counter(_key(day, o) for day, o in outcomes)   # checks every day first
        if not tally:
            return
        with self._db(write=True) as db:
            assert db is not None
            db.executemany(_SQL_ADD, [(*key, n) for key, n in tally.items()])

    def mark_sent(self, day: str, policy_domain: str, how: str, at: float) -> None:
        with self._db(write=True) as db:
            assert db is not None
            db.execute(_SQL_MARK, (_day(day), _name(policy_domain), how, at))

    def prune(self, before_day: str) -> int:
        before = _day(before_day)
        if not self.paths.index.exists():
            return 0
        with self._db(write=True) as db:
            assert db is not None
            n: int = db.execute("DELETE FROM tlsrpt_counts WHERE day < ?", (before,)).rowcount
            db.execute("DELETE FROM tlsrpt_sent WHERE day < ?", (before,))
        return n

    # -- reads -------------------------------------------------------------------

    def days_before(self, day: str) -> list[tuple[str, str]]:
        return self._rows(_SQL_DAYS, (_day(day),), lambda r: (str(r[0]), str(r[1])))

    def counts(self, day: str, policy_domain: str) -> list[tuple[OutcomeRow, int]]:
        return self._rows(_SQL_COUNTS, (_day(day), _name(policy_domain)), _row)

    def sent(self, day: str, policy_domain: str) -> tuple[str, float] | None:
        rows = self._rows(_SQL_SENT, (_day(day), _name(policy_domain)),
                          lambda r: (str(r[0]), float(r[1])))
        return rows[0] if rows else None
