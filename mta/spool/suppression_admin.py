"""Operator access to the suppression list, for `mta suppression …`.

One job: read and change the `suppressions` table of a spool index from a
short-lived process (the CLI) while the daemon may be running.

API (synchronous; `state_dir` is the daemon's server.state_dir):
    list_entries(state_dir, *, reason=None, scope=None, include_expired=False, now=None)
        -> list[SuppressionView]
    get(state_dir, address) -> list[SuppressionView]      # every scope, expired too
    page(state_dir, *, scope="", reasons=None, after=None, before=None, limit=100, now=None)
        -> (active entries of one scope in address order, more): one bounded read
    soft_failures(state_dir, address) -> (count, first_at, last_at) | None
    add(state_dir, address, *, reason="manual", scope="", expires=None, now) -> SuppressionView
    remove(state_dir, address, scope="") -> bool
    import_csv(state_dir, path, now) -> (added, skipped)
    insert_rows(db, rows, now) -> (added, present)   one transaction (the console's import too)
    export_csv(state_dir, out) -> rows written
    SuppressionAdminError: every user-facing failure (bad address, bad CSV,
        no index, refusing to create one), with a message meant for humans.
    SqliteSuppressionList(state_dir)   the same as a core.stores.SuppressionList
                                       (entries = list_entries)

Invariants:
- Plain stdlib sqlite3 on the same WAL file as the daemon, busy_timeout 5 s,
  one short transaction per call. It never takes the spool's flock and
  never runs recovery: the daemon's writer and this process simply take
  turns at SQLite's write lock.
- Read commands never create anything: no index means an empty list. Write
  commands create the index file with only the suppression tables when it
  does not exist yet (an operator may import a list before the first
  start; `Spool.open` adds the rest of the schema) — but refuse when segment
  files exist without an index, the spool's refuse-to-start state S11: a
  fresh index there would make recovery discard every body.
- `add` replaces an existing entry for (address, scope): the operator's word
  is final. `import_csv` never overwrites an active entry (counted as
  skipped); an expired one is replaced. A CSV error aborts the whole
  import (nothing written) with the file's line number.
- Addresses are keyed like the daemon keys them (`address_key`: domain
  lower-cased/IDNA, local part as given).

CSV format (import): ``address[,reason[,scope[,expires]]]``; an optional
header row names the columns, and then also `created`, `queue_id`, `reply`
are read (that is what `export_csv` writes, so export → import round-trips).
`expires` is empty (never), a Unix time, an ISO 8601 date/time (UTC unless it
says otherwise) or a duration from now (``30d``). Blank lines and lines
starting with ``#`` are ignored.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import IO

from mta.core.address import AddressError, parse_address
from mta.core.durations import DurationError, parse_duration
from mta.core.envelope import SUPPRESSION_REASONS
from mta.core.stores import SuppressionView
from mta.spool import index
from mta.spool.layout import SpoolPaths
from mta.spool.suppressions import (
    SQL_SOFT_FAILURE,
    SQL_SOFT_RESET,
    SQL_SUPPRESS_REPLACE,
    SQL_SUPPRESSION,
    SQL_SUPPRESSIONS_ALL,
    SQL_SUPPRESSIONS_OF,
    SQL_UNSUPPRESS,
    SUPP_COLS,
    address_key,
    view,
)

__all__ = [
    "CSV_COLUMNS",
    "SqliteSuppressionList",
    "SuppressionAdminError",
    "add",
    "export_csv",
    "get",
    "import_csv", "insert_rows",
    "list_entries",
    "page",
    "remove",
    "soft_failures",
]

CSV_COLUMNS = ("address", "reason", "scope", "expires", "created", "queue_id", "reply")
_POSITIONAL = ("address", "reason", "scope", "expires")


class SuppressionAdminError(Exception):
    pass


StateDir = str | os.PathLike[str]


def _index_path(state_dir: StateDir) -> Path:
    return SpoolPaths.of(state_dir).index


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(os.fspath(path), timeout=5.0, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def _open(state_dir: StateDir, *, create: bool) -> sqlite3.Connection | None:
    path = _index_path(state_dir)
    if not path.exists():
        if not create:
            return None
        segments = SpoolPaths.of(state_dir).segments
        if segments.is_dir() and any(segments.glob("*.seg")):
            raise SuppressionAdminError(
                f"{path} is missing but {segments} holds message segments: the spool needs "
                "repair (see `mta serve`'s error); not creating an index here")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        db = _connect(path)
        # The daemon creates these too; an index from before suppression
        # existed gets them here (a no-op when present).
        db.executescript(index.SUPPRESSION_SCHEMA)
    except sqlite3.Error as exc:
        raise SuppressionAdminError(f"cannot open {path}: {exc}") from exc
    return db


def _writable(state_dir: StateDir) -> sqlite3.Connection:
    db = _open(state_dir, create=True)
    assert db is not None   # create=True makes the index or raises
    return db


def _key(address: str) -> str:
    try:
        return address_key(str(parse_address(address)))
    except AddressError as exc:
        raise SuppressionAdminError(str(exc)) from None


def _check_reason(reason: str) -> str:
    if reason not in SUPPRESSION_REASONS:
        raise SuppressionAdminError(
            f"unknown reason {reason!r} (one of: {', '.join(SUPPRESSION_REASONS)})")
    return reason


def _check_scope(scope: str | None) -> str:
    scope = (scope or "").strip()
    if any(c.isspace() or not c.isprintable() for c in scope) or len(scope) > 64:
        raise SuppressionAdminError(f"invalid scope {scope!r} (a credential name)")
    return scope


# -- reads -------------------------------------------------------------------------

def list_entries(state_dir: StateDir, *, reason: str | None = None, scope: str | None = None,
                 include_expired: bool = False, now: float | None = None) -> list[SuppressionView]:
    now = time.time() if now is None else now
    if reason is not None:
        _check_reason(reason)
    db = _open(state_dir, create=False)
    if db is None:
        return []
    with closing(db):
        out = []
        for row in db.execute(SQL_SUPPRESSIONS_ALL):
            v = view(row)
            if reason is not None and v.reason != reason:
                continue
            if scope is not None and v.scope != scope:
                continue
            if not include_expired and not v.is_active(now):
                continue
            out.append(v)
        return out


def page(state_dir: StateDir, *, scope: str = "", reasons: tuple[str, ...] | None = None,
         after: str | None = None, before: str | None = None, limit: int = 100,
         now: float | None = None) -> tuple[list[SuppressionView], bool]:
    """Active entries of one scope in address order, at most `limit`:
    those after `after` (or, given `before`, the last ones before it), and
    whether more follow in that direction. One bounded range read of the
    primary key: memory follows `limit`, not the list's size."""
    now = time.time() if now is None else now
    where, params = ["scope = ?", "(expires IS NULL OR expires > ?)"], [scope, now]
    if reasons is not None:
        where.append(f"reason IN ({','.join('?' * len(reasons))})")
        params.extend(reasons)
    if before is not None:
        where.append("address < ?")
        params.append(before)
    elif after is not None:
        where.append("address > ?")
        params.append(after)
    order = "DESC" if before is not None else "ASC"
    sql = (f"SELECT {SUPP_COLS} FROM suppressions WHERE {' AND '.join(where)} "
           f"ORDER BY address {order} LIMIT ?")
    db = _open(state_dir, create=False)
    if db is None:
        return [], False
    with closing(db):
        rows = [view(r) for r in db.execute(sql, [*params, limit + 1])]
    more = len(rows) > limit
    rows = rows[:limit]
    return (rows[::-1] if before is not None else rows), more


def get(state_dir: StateDir, address: str) -> list[SuppressionView]:
    key = _key(address)
    db = _open(state_dir, create=False)
    if db is None:
        return []
    with closing(db):
        return [view(r) for r in db.execute(SQL_SUPPRESSIONS_OF, (key,))]


def soft_failures(state_dir: StateDir, address: str) -> tuple[int, float, float] | None:
    key = _key(address)
    db = _open(state_dir, create=False)
    if db is None:
        return None
    with closing(db):
        row = db.execute(SQL_SOFT_FAILURE, (key,)).fetchone()
        return tuple(row) if row else None


# -- writes ------------------------------------------------------------------------

def add(state_dir: StateDir, address: str, *, reason: str = "manual", scope: str = "",
        expires: float | None = None, now: float) -> SuppressionView:
    key, reason, scope = _key(address), _check_reason(reason), _check_scope(scope)
    if expires is not None and expires <= now:
        raise SuppressionAdminError("expiry is in the past")
    with closing(_writable(state_dir)) as db:
        row = (key, scope, reason, "", "", now, expires)
        try:
            db.execute(SQL_SUPPRESS_REPLACE, row)
        except sqlite3.Error as exc:
            raise SuppressionAdminError(f"cannot write the suppression list: {exc}") from exc
        return view(row)


def remove(state_dir: StateDir, address: str, scope: str = "") -> bool:
    """Delete the (address, scope) entry, and the address's soft-failure
    count so that it does not re-suppress on the next soft bounce."""
    key, scope = _key(address), _check_scope(scope)
    db = _open(state_dir, create=False)
    if db is None:
        return False
    with closing(db):
        try:
            db.execute("BEGIN IMMEDIATE")
            n = db.execute(SQL_UNSUPPRESS, (key, scope)).rowcount
            if n:
                db.execute(SQL_SOFT_RESET, (key,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SuppressionAdminError(f"cannot write the suppression list: {exc}") from exc
        return n > 0


def _parse_time(text: str, now: float, *, what: str, relative: bool) -> float | None:
    s = text.strip()
    if not s:
        return None
    try:
        return float(s)
    except ValueError:
        pass
    if relative:
        try:
            return now + parse_duration(s)
        except DurationError:
            pass
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad {what} {text!r} (Unix time, ISO 8601"
                         f"{' or a duration like 30d' if relative else ''})") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


# One imported entry: the parameters of SQL_SUPPRESS_REPLACE (address,
# scope, reason, queue_id, reply, created, expires).
_Entry = tuple[str, str, str, str, str, float, float | None]


def _rows(path: Path, now: float) -> Iterator[tuple[int, _Entry]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        columns: tuple[str, ...] | None = None
        for reader_line, cells in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in cells]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if columns is None:
                if cells[0].lower() == "address":
                    unknown = [c for c in cells if c.lower() not in CSV_COLUMNS]
                    if unknown:
                        raise ValueError(f"line {reader_line}: unknown column(s) {unknown} "
                                         f"(known: {', '.join(CSV_COLUMNS)})")
                    columns = tuple(c.lower() for c in cells)
                    continue
                columns = _POSITIONAL
            if len(cells) > len(columns):
                raise ValueError(f"line {reader_line}: {len(cells)} columns, expected at most "
                                 f"{len(columns)} ({','.join(columns)})")
            rec = dict(zip(columns, cells))
            try:
                key = _key(rec["address"])
                reason = _check_reason(rec.get("reason") or "manual")
                scope = _check_scope(rec.get("scope"))
                expires = _parse_time(rec.get("expires", ""), now, what="expires", relative=True)
                created = _parse_time(rec.get("created", ""), now, what="created",
                                      relative=False) or now
            except (SuppressionAdminError, ValueError) as exc:
                raise ValueError(f"line {reader_line}: {exc}") from None
            yield reader_line, (key, scope, reason, rec.get("queue_id", ""), rec.get("reply", ""),
                                created, expires)


def import_csv(state_dir: StateDir, path: StateDir, now: float) -> tuple[int, int]:
    path = Path(path)
    try:
        rows = list(_rows(path, now))
    except OSError as exc:
        raise SuppressionAdminError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise SuppressionAdminError(f"{path}: {exc}; nothing imported") from None
    with closing(_writable(state_dir)) as db:
        try:
            return insert_rows(db, [row for _line, row in rows], now)
        except sqlite3.Error as exc:
            raise SuppressionAdminError(f"cannot write the suppression list: {exc}; "
                                        "nothing imported") from exc


def insert_rows(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]],
                now: float) -> tuple[int, int]:
    """Add `rows` (SQL_SUPPRESS_REPLACE's columns: key, scope, reason,
    queue_id, reply, created, expires) in one transaction -> (added, already
    present). An entry active at `now` is kept as it is; an expired one is
    replaced. On an sqlite3.Error nothing is written (rolled back, re-raised)."""
    added = present = 0
    try:
        db.execute("BEGIN IMMEDIATE")
        for row in rows:
            old = db.execute(SQL_SUPPRESSION, (row[0], row[1])).fetchone()
            if old is not None and view(old).is_active(now):
                present += 1
                continue
            db.execute(SQL_SUPPRESS_REPLACE, row)
            added += 1
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return added, present


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def export_csv(state_dir: StateDir, out: IO[str]) -> int:
    """Every entry, expired ones included (an export is a backup)."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    n = 0
    for v in list_entries(state_dir, include_expired=True):
        w.writerow((v.address, v.reason, v.scope, _iso(v.expires), _iso(v.created),
                    v.queue_id, v.reply))
        n += 1
    return n


class SqliteSuppressionList:
    """The functions above as a `core.stores.SuppressionList` over one state
    dir: the embedded default of the operator's suppression list."""

    def __init__(self, state_dir: StateDir):
        self.state_dir = state_dir

    def entries(self, *, reason: str | None = None, scope: str | None = None,
                include_expired: bool = False, now: float | None = None) -> list[SuppressionView]:
        return list_entries(self.state_dir, reason=reason, scope=scope,
                            include_expired=include_expired, now=now)

    def get(self, address: str) -> list[SuppressionView]:
        return get(self.state_dir, address)

    def soft_failures(self, address: str) -> tuple[int, float, float] | None:
        return soft_failures(self.state_dir, address)

    def add(self, address: str, *, reason: str = "manual", scope: str = "",
            expires: float | None = None, now: float) -> SuppressionView:
        return add(self.state_dir, address, reason=reason, scope=scope, expires=expires, now=now)

    def remove(self, address: str, scope: str = "") -> bool:
        return remove(self.state_dir, address, scope)

    def import_csv(self, path: StateDir, now: float) -> tuple[int, int]:
        return import_csv(self.state_dir, path, now)

    def export_csv(self, out: IO[str]) -> int:
        return export_csv(self.state_dir, out)
