"""The MTA-STS policy cache: the `mtasts_cache` table of the spool index.

One job: keep each recipient domain's last good MTA-STS policy (RFC 8461
§5.1: "senders SHOULD cache the policy… for max_age") across restarts, as
the policy file's text with the TXT id it was fetched under, so a changed
id, a removed TXT record or a failed refresh can be judged against it
(`mta.delivery.mtasts_fetch` makes those decisions; this module only keeps
rows).

API (synchronous; the daemon calls through `asyncio.to_thread`):
    SqliteStsCache(state_dir)
        .get(domain) -> CachedPolicy | None
        .rows() -> list[CachedPolicy]                  by domain
        .domains() -> list[str]                        sorted
        .put(domain, policy_id, text, fetched_at, expires_at)
                                    insert or replace; checked_at = fetched_at
        .touch(domain, checked_at)  the TXT id was seen unchanged (no row: nothing)
        .purge(domain) -> bool      False when there was no such row
    CachedPolicy(domain, policy_id, policy_text, fetched_at, expires_at, checked_at)
    StsCacheError          a core.StorageError (cannot open or write the index)
    MTASTS_CACHE_SCHEMA

Invariants (the approach of webhook_endpoints.py, over sidetable.py):
- Plain stdlib sqlite3 on the index's WAL file, a short connection and one
  transaction per call; never the spool's flock, never recovery.
- Domains are kept lower-case without a trailing dot; every method
  normalises its argument the same way, so `purge("Example.COM.")` finds
  the row `put("example.com", …)` wrote.
- expires_at is fetched_at + the policy's max_age, computed by the caller;
  the row stays after it passes (the caller decides what an expired row
  means and purges it).
- Reads never create anything (no index or no table yet reads as empty);
  writes create the index file (0600) with only this table when there is
  none, but refuse when segment files exist without an index (S11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mta.core.errors import StorageError
from mta.spool.sidetable import SideTable

__all__ = ["MTASTS_CACHE_SCHEMA", "CachedPolicy", "SqliteStsCache", "StsCacheError"]

MTASTS_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS mtasts_cache (
    domain       TEXT PRIMARY KEY,   -- lower-case, no trailing dot
    policy_id    TEXT NOT NULL,      -- the _mta-sts TXT record's id= it was fetched under
    policy_text  TEXT NOT NULL,      -- the policy file as served
    fetched_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,      -- fetched_at + max_age
    checked_at   REAL NOT NULL       -- the last time the TXT id was seen unchanged
);
"""

_COLUMNS = "domain, policy_id, policy_text, fetched_at, expires_at, checked_at"
_SQL_GET = f"SELECT {_COLUMNS} FROM mtasts_cache WHERE domain = ?"
_SQL_ALL = f"SELECT {_COLUMNS} FROM mtasts_cache ORDER BY domain"
_SQL_PUT = f"INSERT OR REPLACE INTO mtasts_cache ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_SQL_TOUCH = "UPDATE mtasts_cache SET checked_at = ? WHERE domain = ?"
_SQL_PURGE = "DELETE FROM mtasts_cache WHERE domain = ?"


class StsCacheError(StorageError):
    pass


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    domain: str
    policy_id: str
    policy_text: str
    fetched_at: float
    expires_at: float
    checked_at: float


def _row(r: Sequence[Any]) -> CachedPolicy:
    return CachedPolicy(domain=str(r[0]), policy_id=str(r[1]), policy_text=str(r[2]),
                        fetched_at=float(r[3]), expires_at=float(r[4]), checked_at=float(r[5]))


def _norm(domain: str) -> str:
    return domain.strip().rstrip(".").lower()


class SqliteStsCache(SideTable):
    SCHEMA = MTASTS_CACHE_SCHEMA
    WHAT = "the MTA-STS policy cache"
    ERROR = StsCacheError

    # -- reads -------------------------------------------------------------------

    def get(self, domain: str) -> CachedPolicy | None:
        rows = self._rows(_SQL_GET, (_norm(domain),), _row)
        return rows[0] if rows else None

    def rows(self) -> list[CachedPolicy]:
        return self._rows(_SQL_ALL, (), _row)

    def domains(self) -> list[str]:
        return [r.domain for r in self.rows()]

    # -- writes ------------------------------------------------------------------

    def put(self, domain: str, policy_id: str, text: str, fetched_at: float,
            expires_at: float) -> None:
        with self._db(write=True) as db:
            assert db is not None
            db.execute(_SQL_PUT, (_norm(domain), policy_id, text, fetched_at, expires_at,
                                  fetched_at))

    def touch(self, domain: str, checked_at: float) -> None:
        if not self.paths.index.exists():
            return
        with self._db(write=True) as db:
            assert db is not None
            db.execute(_SQL_TOUCH, (checked_at, _norm(domain)))

    def purge(self, domain: str) -> bool:
        if not self.paths.index.exists():
            return False
        with self._db(write=True) as db:
            assert db is not None
            return db.execute(_SQL_PURGE, (_norm(domain),)).rowcount > 0
