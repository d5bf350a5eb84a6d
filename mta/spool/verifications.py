"""One-time code verifications: the `verifications` table of the spool index.

One job: keep each verification's record (never its code: a salt and a
keyed hash, mta.policy.otp) and change it atomically, so that a check's
read-evaluate-count and a resend's cooldown hold under parallel requests,
in this process's threads or in another process.

API (synchronous; `state_dir` is the daemon's server.state_dir):
    SqliteVerifications(state_dir)
        .insert(row) -> row                 VerificationExists when the id is taken
        .start(row, now) -> (row, created)  one transaction: the newest pending
                                            unexpired row for (row.tenant, row.to)
                                            if there is one (created False), else
                                            `row` inserted (created True)
        .get(tenant, id) -> VerificationRow | None     another tenant's: None
        .pending_for(tenant, to, now) -> VerificationRow | None
                                            the newest pending, unexpired one
        .attempt(tenant, id, fn) -> R | None
                                            fn(row) -> (new row, R) inside ONE
                                            BEGIN IMMEDIATE transaction; the new
                                            row is written when it differs;
                                            None (fn not called) when there is
                                            no such row
        .prune(before) -> int               rows that expired before `before`
    VerificationRow     the frozen row: the fields of mta.policy.otp.Verification,
                        status a plain string (this layer may not import policy;
                        the runtime converts)
    new_verification_id() -> str            "vrf_" + 20 hex digits (80 random bits)
    VerificationExists  a KeyError
    VerificationStoreError   a core.StorageError
    VERIFICATIONS_SCHEMA

Invariants (the approach of sidetable.py):
- Plain stdlib sqlite3 on the index's WAL file, busy_timeout 5 s, a new
  connection and one short transaction per call (any thread may call: the
  daemon calls through `asyncio.to_thread`). Never the spool's flock, never
  recovery. Reads create nothing; writes create the table.
- `attempt` and `start` read and write under BEGIN IMMEDIATE: two callers
  never both see the same row before either wrote (20 concurrent wrong
  checks evaluate at most max_attempts of them).
- `fn` may not change a row's id or tenant (ValueError, nothing written).
- Nothing here knows or logs a code.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from typing import Any, TypeVar

from mta.core.errors import StorageError
from mta.spool.sidetable import SideTable

__all__ = ["VERIFICATIONS_SCHEMA", "SqliteVerifications", "VerificationExists",
           "VerificationRow", "VerificationStoreError", "new_verification_id"]

R = TypeVar("R")

VERIFICATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS verifications (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    recipient  TEXT NOT NULL,      -- the address the code goes to
    status     TEXT NOT NULL,      -- pending | verified | expired | failed | canceled
    created    REAL NOT NULL,
    expires    REAL NOT NULL,
    attempts   INTEGER NOT NULL,
    sends      INTEGER NOT NULL,
    last_sent  REAL NOT NULL,
    salt       BLOB NOT NULL,
    code_hash  BLOB NOT NULL,      -- HMAC-SHA256 under the daemon's secret, never the code
    digits     INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    template   TEXT NOT NULL,
    email_id   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verifications_to ON verifications(tenant, recipient, created);
CREATE INDEX IF NOT EXISTS verifications_expires ON verifications(expires);
"""

_COLUMNS = ("id, tenant, recipient, status, created, expires, attempts, sends, last_sent, "
            "salt, code_hash, digits, sender, template, email_id")
_SQL_GET = f"SELECT {_COLUMNS} FROM verifications WHERE id = ? AND tenant = ?"
_SQL_PENDING = (f"SELECT {_COLUMNS} FROM verifications WHERE tenant = ? AND recipient = ? "
                "AND status = 'pending' AND expires > ? ORDER BY created DESC, id DESC LIMIT 1")
_SQL_EXISTS = "SELECT 1 FROM verifications WHERE id = ?"
_SQL_INSERT = f"INSERT INTO verifications ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_SQL_UPDATE = ("UPDATE verifications SET recipient = ?, status = ?, created = ?, expires = ?, "
               "attempts = ?, sends = ?, last_sent = ?, salt = ?, code_hash = ?, digits = ?, "
               "sender = ?, template = ?, email_id = ? WHERE id = ? AND tenant = ?")
_SQL_PRUNE = "DELETE FROM verifications WHERE expires < ?"


class VerificationStoreError(StorageError):
    pass


class VerificationExists(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the verification id is taken"


def new_verification_id() -> str:
    return "vrf_" + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class VerificationRow:
    id: str
    tenant: str
    to: str
    status: str
    created: float
    expires: float
    attempts: int
    sends: int
    last_sent: float
    salt: bytes
    code_hash: bytes
    digits: int
    sender: str = ""
    template: str = ""
    email_id: str = ""


def _row(r: Sequence[Any]) -> VerificationRow:
    return VerificationRow(id=r[0], tenant=r[1], to=r[2], status=str(r[3]), created=float(r[4]),
                           expires=float(r[5]), attempts=int(r[6]), sends=int(r[7]),
                           last_sent=float(r[8]), salt=bytes(r[9]), code_hash=bytes(r[10]),
                           digits=int(r[11]), sender=r[12], template=r[13], email_id=r[14])


def _values(row: VerificationRow) -> tuple[Any, ...]:
    return (row.id, row.tenant, row.to, str(row.status), float(row.created),
            float(row.expires), int(row.attempts), int(row.sends), float(row.last_sent),
            bytes(row.salt), bytes(row.code_hash), int(row.digits), row.sender, row.template,
            row.email_id)


class SqliteVerifications(SideTable):
    SCHEMA = VERIFICATIONS_SCHEMA
    WHAT = "the verifications"
    ERROR = VerificationStoreError

    # -- reads -------------------------------------------------------------------

    def get(self, tenant: str, vid: str) -> VerificationRow | None:
        rows = self._rows(_SQL_GET, (vid, tenant), _row)
        return rows[0] if rows else None

    def pending_for(self, tenant: str, to: str, now: float) -> VerificationRow | None:
        rows = self._rows(_SQL_PENDING, (tenant, to, now), _row)
        return rows[0] if rows else None

    # -- writes ------------------------------------------------------------------

    def insert(self, row: VerificationRow) -> VerificationRow:
        with self._db(write=True) as db:
            assert db is not None
            if db.execute(_SQL_EXISTS, (row.id,)).fetchone() is not None:
                raise VerificationExists(f"a verification with id {row.id!r} exists")
            db.execute(_SQL_INSERT, _values(row))
        return row

    def start(self, row: VerificationRow, now: float) -> tuple[VerificationRow, bool]:
        with self._db(write=True) as db:
            assert db is not None
            found = db.execute(_SQL_PENDING, (row.tenant, row.to, now)).fetchone()
            if found is not None:
                return _row(found), False
            if db.execute(_SQL_EXISTS, (row.id,)).fetchone() is not None:
                raise VerificationExists(f"a verification with id {row.id!r} exists")
            db.execute(_SQL_INSERT, _values(row))
        return row, True

    def attempt(self, tenant: str, vid: str,
                fn: Callable[[VerificationRow], tuple[VerificationRow, R]]) -> R | None:
        if not self.paths.index.exists():
            return None
        with self._db(write=True) as db:
            assert db is not None
            found = db.execute(_SQL_GET, (vid, tenant)).fetchone()
            if found is None:
                return None
            old = _row(found)
            new, result = fn(old)
            if (new.id, new.tenant) != (old.id, old.tenant):
                raise ValueError("a verification's id and tenant never change")
            if astuple(new) != astuple(old):
                db.execute(_SQL_UPDATE, (*_values(new)[2:], new.id, new.tenant))
        return result

    def prune(self, before: float) -> int:
        if not self.paths.index.exists():
            return 0
        with self._db(write=True) as db:
            assert db is not None
            return int(db.execute(_SQL_PRUNE, (before,)).rowcount)
