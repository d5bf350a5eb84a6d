"""The embedded domain store: a small SQLite file plus one PEM file per DKIM key.

One job: implement `store.DomainStore` on the local disk: persist domains,
their verification state and their DKIM selectors, keep the private keys in
files only this class reads, and enforce the legal state moves.

Layout (under `[server] state_dir`):
    domains.sqlite3                         tables `domains`, `selectors`
    dkim/<domain>/<selector>.<rsa|ed25519>.pem   private keys, mode 0600, dirs 0700

Public API:
    SqliteDomainStore(state_dir)      the `store.DomainStore` operations, plus
        .key_path(domain, selector, algorithm) -> Path    where a key file lives
        .replace(domain, pems)         make `domain` exactly this (rows and key
                                       files; pems: selector -> private PEM): a
                                       copy of a state another node reached by
                                       legal moves (cluster replication), so no
                                       state-machine check
    ALG_FILE_SUFFIX                   algorithm -> key file suffix

Invariants:
  - domains.sqlite3 and its -wal/-shm files are mode 0600 whatever the
    umask: the database file is created 0600 before SQLite opens it (SQLite
    gives -wal/-shm the database file's mode), and a file left 0644 by an
    older version is chmodded at the first open.
  - A key file is written (atomically, 0600) before its row commits and
    removed after its row is deleted, so a row never names a missing file;
    a crash can at worst leave an orphan file, which nothing reads.
  - Every state move is checked (model.DOMAIN_MACHINE / SELECTOR_MACHINE)
    inside the transaction that makes it, and logged once it committed.
  - Every connection uses WAL, synchronous=FULL and a busy timeout: the CLI
    and the daemon may write at once. Calls are synchronous and short; the
    daemon runs them in a worker thread (a connection per call, so any
    thread may call).
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from mta.core.files import atomic_write, fsync_dir
from mta.domains.model import (DOMAIN_MACHINE, SELECTOR_MACHINE, Domain, DomainExists, DomainState,
                               NewKey, Selector, SelectorStatus, UnknownDomain, selector_subject)
from mta.mail.dkim import SigningKey, public_txt

__all__ = ["ALG_FILE_SUFFIX", "SqliteDomainStore"]

log = logging.getLogger("mta.domains")

ALG_FILE_SUFFIX = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}

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


class SqliteDomainStore:
    def __init__(self, state_dir: str | os.PathLike[str]):
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

    def _write_key(self, domain: str, key: NewKey) -> Path:
        _mkdir_private(self.key_root)
        _mkdir_private(self.key_root / domain)
        path = self.key_path(domain, key.selector, key.algorithm)
        atomic_write(path, key.private_pem, 0o600)
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

    def add_domain(self, name: str, now: float, keys: Sequence[NewKey]) -> Domain:
        """Create `name` (pending, due for a check now) with its keys."""
        if self.get(name) is not None:
            raise DomainExists(f"domain {name} already exists (see `mta domain show {name}`)")
        written = [self._write_key(name, NewKey(*k)) for k in keys]
        try:
            with self._db() as db:
                db.execute("INSERT INTO domains (name, state, created, next_check, check_attempts)"
                           " VALUES (?, ?, ?, ?, 0)", (name, DomainState.PENDING.value, now, now))
                for sel, alg, _, status in keys:
                    db.execute("INSERT INTO selectors (domain, selector, algorithm, created, "
                               "status) VALUES (?, ?, ?, ?, ?)",
                               (name, sel, alg, now, status.value))
                added = self._domain(db, name)
        except sqlite3.IntegrityError:
            raise DomainExists(f"domain {name} already exists") from None
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        log.info("domain %s: added (pending)", name)
        assert added is not None        # inserted in the same transaction
        return added

    def get(self, name: str) -> Domain | None:
        with self._db() as db:
            return self._domain(db, name)

    def list(self) -> builtins.list[Domain]:
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
            old = DomainState(row[0])
            DOMAIN_MACHINE.check(old, new, name)
            db.execute("UPDATE domains SET state = ?, last_checked = ?, failure_reason = ?, "
                       "next_check = ?, check_attempts = ? WHERE name = ?",
                       (new.value, now, failure_reason, next_check, check_attempts, name))
        DOMAIN_MACHINE.move(old, new, name)

    def due(self, now: float) -> builtins.list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute(
                "SELECT name FROM domains WHERE next_check IS NOT NULL AND next_check <= ? "
                "ORDER BY next_check, name", (now,))]

    # ---- selectors and keys ----

    def add_selector(self, name: str, key: NewKey, now: float) -> None:
        path = self._write_key(name, key)
        try:
            with self._db() as db:
                if db.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is None:
                    raise UnknownDomain(f"no such domain {name}")
                db.execute("INSERT INTO selectors (domain, selector, algorithm, created, status) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (name, key.selector, key.algorithm, now, key.status.value))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.info("domain %s: selector %s (%s) added as %s", name, key.selector, key.algorithm,
                 key.status.value)

    def _status(self, db: sqlite3.Connection, name: str,
                selector: str) -> tuple[SelectorStatus, str] | None:
        row = db.execute("SELECT status, algorithm FROM selectors WHERE domain = ? AND "
                         "selector = ?", (name, selector)).fetchone()
        return None if row is None else (SelectorStatus(row[0]), row[1])

    def set_selector_status(self, name: str, selector: str, new: SelectorStatus,
                            retire_at: float | None = None) -> None:
        subject = selector_subject(name, selector)
        with self._db() as db:
            found = self._status(db, name, selector)
            if found is None:
                raise UnknownDomain(f"no selector {selector} for {name}")
            old = found[0]
            SELECTOR_MACHINE.check(old, new, subject)
            db.execute("UPDATE selectors SET status = ?, retire_at = ? WHERE domain = ? AND "
                       "selector = ?", (new.value, retire_at, name, selector))
        SELECTOR_MACHINE.move(old, new, subject)

    def delete_selector(self, name: str, selector: str) -> None:
        """Retire for good: only a retiring selector may go (row first, then file)."""
        subject = selector_subject(name, selector)
        with self._db() as db:
            found = self._status(db, name, selector)
            if found is None:
                return
            old, algorithm = found
            SELECTOR_MACHINE.check(old, SelectorStatus.REMOVED, subject)
            db.execute("DELETE FROM selectors WHERE domain = ? AND selector = ?",
                       (name, selector))
        self.key_path(name, selector, algorithm).unlink(missing_ok=True)
        fsync_dir(self.key_root / name)
        SELECTOR_MACHINE.move(old, SelectorStatus.REMOVED, subject)

    def replace(self, domain: Domain, pems: Mapping[str, bytes]) -> None:
        """Keys first, then the rows in one transaction, then stale key files."""
        name = domain.name
        for s in domain.selectors:
            self._write_key(name, NewKey(s.selector, s.algorithm, pems[s.selector], s.status))
        with self._db() as db:
            old = set(db.execute("SELECT selector, algorithm FROM selectors WHERE domain = ?",
                                 (name,)).fetchall())
            db.execute("DELETE FROM selectors WHERE domain = ?", (name,))
            db.execute("INSERT OR REPLACE INTO domains (name, state, created, last_checked, "
                       "failure_reason, next_check, check_attempts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (name, domain.state.value, domain.created, domain.last_checked,
                        domain.failure_reason, domain.next_check, domain.check_attempts))
            for s in domain.selectors:
                db.execute("INSERT INTO selectors (domain, selector, algorithm, created, status, "
                           "retire_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (name, s.selector, s.algorithm, s.created, s.status.value,
                            s.retire_at))
        for sel, alg in old - {(s.selector, s.algorithm) for s in domain.selectors}:
            self.key_path(name, sel, alg).unlink(missing_ok=True)
        log.info("domain %s: replaced by the cluster's copy (%s, %d selectors)", name,
                 domain.state.value, len(domain.selectors))

    def public_key(self, selector: Selector) -> str:
        pem = self.key_path(selector.domain, selector.selector, selector.algorithm).read_bytes()
        return public_txt(pem, selector.algorithm)

    def signing_keys(self, name: str) -> builtins.list[SigningKey]:
        """One per active selector, in selector order; the key files read now."""
        d = self.get(name)
        if d is None:
            return []
        return [SigningKey(d.name, s.selector, s.algorithm,
                           self.key_path(d.name, s.selector, s.algorithm).read_bytes())
                for s in d.selectors if s.status is SelectorStatus.ACTIVE]
