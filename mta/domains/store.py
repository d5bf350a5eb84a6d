"""Sending-domain state: a small SQLite file plus one PEM file per DKIM key.

One job: persist domains, their verification state and their DKIM
selectors, and enforce the legal state moves.

Layout (under `[server] state_dir`):
    domains.sqlite3                         tables `domains`, `selectors`
    dkim/<domain>/<selector>.<rsa|ed25519>.pem   private keys, mode 0600, dirs 0700

Public API:
    DomainState: PENDING, VERIFIED, FAILED;   DOMAIN_TRANSITIONS
    SelectorStatus: PENDING, ACTIVE, RETIRING; SELECTOR_TRANSITIONS
    check_move(what, old, new, table)        the one move validator (logs "old -> new")
    Domain, Selector                         frozen rows (Domain.selectors sorted)
    DomainStore(state_dir)
        .add_domain(name, now, keys)  .get(name)  .list()  .remove(name)
        .add_selector(name, selector, algorithm, pem, status, now)
        .set_state(name, new, *, now, failure_reason, next_check, check_attempts)
        .set_selector_status(name, selector, new, retire_at=None)
        .delete_selector(name, selector)     .read_key(name, selector)  .due(now)
    IllegalTransition, DomainExists, UnknownDomain

State machines:
    domain    pending  -> pending | verified        (checks until DNS is right)
              verified -> verified | failed         (daily re-check; DNS broke)
              failed   -> failed | verified         (fixed)
    selector  pending  -> active                    (its record verified)
              active   -> retiring                  (a newer key took over)
              retiring -> (deleted, key file removed, after retire_at)

Invariants:
  - domains.sqlite3 and its -wal/-shm files are mode 0600 whatever the
    umask: the database file is created 0600 before SQLite opens it (SQLite
    gives -wal/-shm the database file's mode), and a file left 0644 by an
    older version is chmodded at the first open.
  - A key file is written (atomically, 0600) before its row commits and
    removed after its row is deleted, so a row never names a missing file;
    a crash can at worst leave an orphan file, which nothing reads.
  - Every connection uses WAL, synchronous=FULL and a busy timeout: the CLI
    and the daemon may write at once. Calls are synchronous and short; the
    daemon runs them in a worker thread (a connection per call, so any
    thread may call).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from mta.core.errors import MtaError
from mta.core.files import atomic_write, fsync_dir

__all__ = ["DomainState", "SelectorStatus", "DOMAIN_TRANSITIONS", "SELECTOR_TRANSITIONS",
           "check_move", "Domain", "Selector", "DomainStore", "IllegalTransition",
           "DomainExists", "UnknownDomain", "ALG_FILE_SUFFIX"]

log = logging.getLogger("mta.domains")

ALG_FILE_SUFFIX = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}


class DomainState(str, enum.Enum):
    PENDING = "pending"
    VERIFIED = "verified"
    FAILED = "failed"


class SelectorStatus(str, enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    RETIRING = "retiring"


DOMAIN_TRANSITIONS: Mapping[DomainState, frozenset[DomainState]] = {
    DomainState.PENDING: frozenset({DomainState.PENDING, DomainState.VERIFIED}),
    DomainState.VERIFIED: frozenset({DomainState.VERIFIED, DomainState.FAILED}),
    DomainState.FAILED: frozenset({DomainState.FAILED, DomainState.VERIFIED}),
}

SELECTOR_TRANSITIONS: Mapping[SelectorStatus, frozenset[SelectorStatus]] = {
    SelectorStatus.PENDING: frozenset({SelectorStatus.ACTIVE}),
    SelectorStatus.ACTIVE: frozenset({SelectorStatus.RETIRING}),
    SelectorStatus.RETIRING: frozenset(),
}


class IllegalTransition(MtaError):
    pass


class DomainExists(MtaError):
    pass


class UnknownDomain(MtaError):
    pass


def check_move(what: str, old: enum.Enum, new: enum.Enum, table: Mapping) -> None:
    """Raise IllegalTransition unless old -> new is in `table`; log real moves."""
    if new not in table[old]:
        raise IllegalTransition(f"{what}: illegal move {old.value} -> {new.value}")
    if old != new:
        log.info("%s: %s -> %s", what, old.value, new.value)


@dataclass(frozen=True, slots=True)
class Selector:
    domain: str
    selector: str
    algorithm: str
    created: float
    status: SelectorStatus
    retire_at: float | None
    key_path: str

    def to_dict(self) -> dict:
        return {"selector": self.selector, "algorithm": self.algorithm,
                "created": self.created, "status": self.status.value,
                "retire_at": self.retire_at, "key_path": self.key_path}


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    state: DomainState
    created: float
    last_checked: float | None
    failure_reason: str | None
    next_check: float | None
    check_attempts: int
    selectors: tuple[Selector, ...]

    def to_dict(self) -> dict:
        return {"domain": self.name, "state": self.state.value, "created": self.created,
                "last_checked": self.last_checked, "failure_reason": self.failure_reason,
                "next_check": self.next_check, "check_attempts": self.check_attempts,
                "selectors": [s.to_dict() for s in self.selectors]}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    last_checked REAL,
    failure_reason TEXT,
    next_check REAL,
    check_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS selectors (
    domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    retire_at REAL,
    PRIMARY KEY (domain, selector)
);
CREATE INDEX IF NOT EXISTS domains_next_check ON domains(next_check);
"""


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


class DomainStore:
    def __init__(self, state_dir: str | os.PathLike):
        self.root = Path(state_dir)
        self.db_path = self.root / "domains.sqlite3"
        self.key_root = self.root / "dkim"
        self._private = False          # the database files checked 0600 (once per store)

    # ---- plumbing ----

    def _make_private(self) -> None:
        os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(f"{self.db_path}{suffix}", 0o600)
            except FileNotFoundError:
                pass
        self._private = True

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        _mkdir_private(self.root)
        if not self._private:
            self._make_private()
        with closing(sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def key_path(self, domain: str, selector: str, algorithm: str) -> Path:
        return self.key_root / domain / f"{selector}.{ALG_FILE_SUFFIX[algorithm]}.pem"

    def _write_key(self, domain: str, selector: str, algorithm: str, pem: bytes) -> Path:
        _mkdir_private(self.key_root)
        _mkdir_private(self.key_root / domain)
        path = self.key_path(domain, selector, algorithm)
        atomic_write(path, pem, 0o600)
        return path

    def _selectors(self, db: sqlite3.Connection, name: str) -> tuple[Selector, ...]:
        rows = db.execute("SELECT selector, algorithm, created, status, retire_at FROM selectors "
                          "WHERE domain = ? ORDER BY created, selector", (name,)).fetchall()
        return tuple(Selector(name, sel, alg, created, SelectorStatus(status), retire_at,
                              str(self.key_path(name, sel, alg)))
                     for sel, alg, created, status, retire_at in rows)

    def _domain(self, db: sqlite3.Connection, name: str) -> Domain | None:
        row = db.execute("SELECT name, state, created, last_checked, failure_reason, next_check, "
                         "check_attempts FROM domains WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return Domain(row[0], DomainState(row[1]), row[2], row[3], row[4], row[5], row[6],
                      self._selectors(db, name))

    # ---- domains ----

    def add_domain(self, name: str, now: float,
                   keys: Sequence[tuple[str, str, bytes, SelectorStatus]]) -> Domain:
        """Create `name` (pending, due for a check now) with its keys."""
        if self.get(name) is not None:
            raise DomainExists(f"domain {name} already exists (see `mta domain show {name}`)")
        written = [self._write_key(name, sel, alg, pem) for sel, alg, pem, _ in keys]
        try:
            with self._db() as db:
                db.execute("INSERT INTO domains (name, state, created, next_check, check_attempts)"
                           " VALUES (?, ?, ?, ?, 0)", (name, DomainState.PENDING.value, now, now))
                for sel, alg, _, status in keys:
                    db.execute("INSERT INTO selectors (domain, selector, algorithm, created, "
                               "status) VALUES (?, ?, ?, ?, ?)",
                               (name, sel, alg, now, status.value))
        except sqlite3.IntegrityError:
            raise DomainExists(f"domain {name} already exists") from None
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        log.info("domain %s: added (pending)", name)
        return self.require(name)

    def get(self, name: str) -> Domain | None:
        with self._db() as db:
            return self._domain(db, name)

    def require(self, name: str) -> Domain:
        d = self.get(name)
        if d is None:
            raise UnknownDomain(f"no such domain {name} (add it with `mta domain add {name}`)")
        return d

    def list(self) -> list[Domain]:
        with self._db() as db:
            names = [r[0] for r in db.execute("SELECT name FROM domains ORDER BY name")]
            return [d for n in names if (d := self._domain(db, n)) is not None]

    def remove(self, name: str) -> None:
        with self._db() as db:
            if db.execute("DELETE FROM domains WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownDomain(f"no such domain {name}")
            db.execute("DELETE FROM selectors WHERE domain = ?", (name,))
        keydir = self.key_root / name
        if keydir.exists():
            shutil.rmtree(keydir)
            fsync_dir(self.key_root)
        log.info("domain %s: removed with its keys", name)

    def set_state(self, name: str, new: DomainState, *, now: float,
                  failure_reason: str | None, next_check: float | None,
                  check_attempts: int) -> None:
        with self._db() as db:
            row = db.execute("SELECT state FROM domains WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UnknownDomain(f"no such domain {name}")
            check_move(f"domain {name}", DomainState(row[0]), new, DOMAIN_TRANSITIONS)
            db.execute("UPDATE domains SET state = ?, last_checked = ?, failure_reason = ?, "
                       "next_check = ?, check_attempts = ? WHERE name = ?",
                       (new.value, now, failure_reason, next_check, check_attempts, name))

    def due(self, now: float) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute(
                "SELECT name FROM domains WHERE next_check IS NOT NULL AND next_check <= ? "
                "ORDER BY next_check, name", (now,))]

    # ---- selectors ----

    def add_selector(self, name: str, selector: str, algorithm: str, pem: bytes,
                     status: SelectorStatus, now: float) -> None:
        path = self._write_key(name, selector, algorithm, pem)
        try:
            with self._db() as db:
                if db.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is None:
                    raise UnknownDomain(f"no such domain {name}")
                db.execute("INSERT INTO selectors (domain, selector, algorithm, created, status) "
                           "VALUES (?, ?, ?, ?, ?)", (name, selector, algorithm, now, status.value))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.info("domain %s: selector %s (%s) added as %s", name, selector, algorithm,
                 status.value)

    def set_selector_status(self, name: str, selector: str, new: SelectorStatus,
                            retire_at: float | None = None) -> None:
        with self._db() as db:
            row = db.execute("SELECT status FROM selectors WHERE domain = ? AND selector = ?",
                             (name, selector)).fetchone()
            if row is None:
                raise UnknownDomain(f"no selector {selector} for {name}")
            check_move(f"domain {name} selector {selector}", SelectorStatus(row[0]), new,
                       SELECTOR_TRANSITIONS)
            db.execute("UPDATE selectors SET status = ?, retire_at = ? WHERE domain = ? AND "
                       "selector = ?", (new.value, retire_at, name, selector))

    def delete_selector(self, name: str, selector: str) -> None:
        """Retire for good: only a retiring selector may go (row first, then file)."""
        with self._db() as db:
            row = db.execute("SELECT status, algorithm FROM selectors WHERE domain = ? AND "
                             "selector = ?", (name, selector)).fetchone()
            if row is None:
                return
            if SelectorStatus(row[0]) is not SelectorStatus.RETIRING:
                raise IllegalTransition(f"domain {name} selector {selector}: only a retiring "
                                        f"key may be deleted, not a {row[0]} one")
            db.execute("DELETE FROM selectors WHERE domain = ? AND selector = ?",
                       (name, selector))
        self.key_path(name, selector, row[1]).unlink(missing_ok=True)
        fsync_dir(self.key_root / name)
        log.info("domain %s: selector %s: retiring -> removed", name, selector)

    def read_key(self, name: str, selector: str) -> bytes:
        d = self.require(name)
        for s in d.selectors:
            if s.selector == selector:
                return Path(s.key_path).read_bytes()
        raise UnknownDomain(f"no selector {selector} for {name}")
