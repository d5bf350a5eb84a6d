"""The suppression list in the index: its SQL, the writer's share, the lookup.

One job: keep the `suppressions` / `soft_failures` tables (index.py
creates them): apply `AddressOutcome`s on the writer's connection inside
whatever transaction the writer has open (so an outcome commits or rolls
back with the recipient update that produced it), answer the per-RCPT
lookup on the reader connection, and turn rows into `SuppressionView`s.

API:
    address_key(address) -> str          # the stored/looked-up form
    RulesLike                            # what the spool needs from policy's SuppressionRules
    await apply_outcomes(conn, outcomes, rules)
    view(row) -> SuppressionView
    Suppressions(read)                   # `Spool.suppressions`: a core.stores.SuppressionLookup
        await .suppressed(address, scope, *, now=None) -> SuppressionView | None
        .note(outcomes)                  # the writer is about to apply these
    SQL_* statements (also run by suppression_admin.py, the operator's side)

Rules (the decisions themselves are policy's, mta/policy/suppression.py):
  delivered → the address's soft_failures row is deleted (counts are of
              *consecutive* failures);
  soft      → count+1, first_at kept, last_at = at; when
              `rules.suppresses_after_soft(count, first_at, at)`, a
              soft_bounce suppression (expiry per rules) and the counter is
              reset, so after that suppression expires it takes a fresh run
              of failures to suppress again;
  hard      → hard_bounce suppression;
  complaint → complaint suppression (never expires, see policy).
Scope: an outcome's own `scope`, else (an outcome about a message) the
message's tenant (issue 14: a bounce suppresses in the tenant that sent),
else global. Soft-failure counts are per address, across tenants.
An existing entry is kept (first reason wins) unless it has expired or is a
soft_bounce being upgraded to hard_bounce/complaint (SQL_SUPPRESS).
Without rules (`rules=None`) soft failures are still counted but never
suppress, and no automatic entry expires.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import aiosqlite

from mta.core.envelope import AddressOutcome
from mta.core.stores import SuppressionView
from mta.spool.reads import ReadSide, Statements, fetchall
from mta.spool.tenant_sql import DEFAULT_TENANT, tenant_of

SUPPRESSION_RECHECK = 5.0   # seconds; see Suppressions._may_exist
_REASON_OF = {"hard": "hard_bounce", "complaint": "complaint"}

# An automatic insert (apply_outcomes) keeps an existing entry (the first
# reason wins) unless that one has expired, or is a soft_bounce being
# upgraded to hard_bounce/complaint.
# Params: address, scope, reason, queue_id, reply, created, expires.
SQL_SUPPRESS = (
    "INSERT INTO suppressions (address, scope, reason, queue_id, reply, created, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (address, scope) DO UPDATE SET "
    "reason = excluded.reason, queue_id = excluded.queue_id, reply = excluded.reply, "
    "created = excluded.created, expires = excluded.expires "
    "WHERE (suppressions.expires IS NOT NULL AND suppressions.expires <= excluded.created) "
    "OR (suppressions.reason = 'soft_bounce' AND excluded.reason IN ('hard_bounce', 'complaint'))")
# An outcome of a message with no scope of its own suppresses in the
# message's tenant (the owner of its credential: tenant_sql.py), "default"
# when the message row is gone. Params as SQL_SUPPRESS, the scope being
# the message's id.
SQL_SUPPRESS_IN_TENANT = SQL_SUPPRESS.replace(
    "VALUES (?, ?,", "VALUES (?, COALESCE((SELECT "
    + tenant_of("m.credential") + f" FROM messages m WHERE m.id = ?), '{DEFAULT_TENANT}'),", 1)
# An operator's `add` replaces whatever was there.
SQL_SUPPRESS_REPLACE = (
    "INSERT OR REPLACE INTO suppressions "
    "(address, scope, reason, queue_id, reply, created, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)")
SQL_UNSUPPRESS = "DELETE FROM suppressions WHERE address = ? AND scope = ?"
SQL_SOFT_RESET = "DELETE FROM soft_failures WHERE address = ?"
# Params: address, at, at. Returns the new (count, first_at).
SQL_SOFT_BUMP = (
    "INSERT INTO soft_failures (address, count, first_at, last_at) VALUES (?, 1, ?, ?) "
    "ON CONFLICT (address) DO UPDATE SET count = count + 1, "
    "last_at = MAX(last_at, excluded.last_at) RETURNING count, first_at, last_at")
SUPP_COLS = _SUPP_COLS = "address, scope, reason, queue_id, reply, created, expires"
# Params: address, tenant-or-'', credential-or-'', now. The global entry
# sorts first. (Entries scoped to a credential name are from before tenants.)
SQL_SUPPRESSED = (
    f"SELECT {_SUPP_COLS} FROM suppressions WHERE address = ? AND scope IN ('', ?, ?) "
    "AND (expires IS NULL OR expires > ?) ORDER BY scope != '' LIMIT 1")
SQL_SUPPRESSIONS_OF = f"SELECT {_SUPP_COLS} FROM suppressions WHERE address = ? ORDER BY scope"
SQL_SUPPRESSION = f"SELECT {_SUPP_COLS} FROM suppressions WHERE address = ? AND scope = ?"
SQL_SUPPRESSIONS_ALL = f"SELECT {_SUPP_COLS} FROM suppressions ORDER BY address, scope"
SQL_SOFT_FAILURE = "SELECT count, first_at, last_at FROM soft_failures WHERE address = ?"


class RulesLike(Protocol):
    """The part of `mta.policy.suppression.SuppressionRules` the spool uses
    (it is handed one; the spool layer may not import policy)."""
    def suppresses_after_soft(self, count: int, first_at: float, now: float) -> bool: ...
    def expiry_for(self, reason: str, created: float) -> float | None: ...


def address_key(address: str) -> str:
    """``Local@Example.COM`` → ``Local@example.com``: the domain is
    case-insensitive (and IDNA-encoded when it is not ASCII), the local part
    is kept as given (RFC 5321 §2.4)."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    local, at, domain = a.rpartition("@")
    if not at:
        return a
    domain = domain.rstrip(".")
    if not domain.isascii() and not domain.startswith("["):
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return f"{local}@{domain.lower()}"


def view(row: Sequence[Any]) -> SuppressionView:
    address, scope, reason, queue_id, reply, created, expires = row
    return SuppressionView(address=address, scope=scope, reason=reason, queue_id=queue_id or "",
                           reply=reply or "", created=created, expires=expires)


async def apply_outcomes(conn: Statements, outcomes: Sequence[AddressOutcome],
                         rules: RulesLike | None) -> None:
    # In order: several soft outcomes for one address in one batch must each
    # see the count the previous one left. Statements with nothing to read
    # back wait in `pending` and go as one executemany per run of the same
    # statement (a batch of deliveries: one round trip, not one each).
    pending: list[tuple[str, tuple[Any, ...]]] = []
    for o in outcomes:
        key = address_key(o.address)
        if o.kind == "delivered":
            pending.append((SQL_SOFT_RESET, (key,)))
        elif o.kind == "soft":
            await _run(conn, pending)
            pending = []
            rows = await fetchall(conn, SQL_SOFT_BUMP, (key, o.at, o.at))
            count, first_at, _last = rows[0]
            if rules is not None and rules.suppresses_after_soft(count, first_at, o.at):
                pending.append(_suppression(key, o, "soft_bounce", rules))
                pending.append((SQL_SOFT_RESET, (key,)))
        else:
            pending.append(_suppression(key, o, _REASON_OF[o.kind], rules))
    await _run(conn, pending)


def _suppression(key: str, o: AddressOutcome, reason: str,
                 rules: RulesLike | None) -> tuple[str, tuple[Any, ...]]:
    expires = rules.expiry_for(reason, o.at) if rules is not None else None
    if not o.scope and o.queue_id:
        return SQL_SUPPRESS_IN_TENANT, (key, o.queue_id, reason, o.queue_id, o.reply, o.at,
                                        expires)
    return SQL_SUPPRESS, (key, o.scope, reason, o.queue_id, o.reply, o.at, expires)


async def _run(conn: Statements, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """`statements` in their order, each run of one SQL as one executemany."""
    for sql, run in itertools.groupby(statements, key=lambda st: st[0]):
        await conn.executemany(sql, [params for _, params in run])


async def _any(conn: aiosqlite.Connection) -> bool:
    rows = await fetchall(conn, "SELECT EXISTS(SELECT 1 FROM suppressions)")
    return bool(rows[0][0])


async def _lookup(conn: aiosqlite.Connection, key: str, scope: str, credential: str,
                  now: float) -> SuppressionView | None:
    rows = await fetchall(conn, SQL_SUPPRESSED, (key, scope, credential, now))
    return view(rows[0]) if rows else None


class Suppressions:
    """The daemon's lookup (core.stores.SuppressionLookup) on the reader
    connection, with a shortcut for the usual empty list."""

    def __init__(self, read: ReadSide):
        self._read = read
        # See `_may_exist`: whether the suppression list may be non-empty.
        self._seen = False
        self._checked = float("-inf")

    async def suppressed(self, address: str, scope: str | None, *,
                         now: float | None = None,
                         credential: str | None = None) -> SuppressionView | None:
        """The active suppression of `address`: the global entry, else the
        one for tenant `scope` (None: global only), else one made before
        tenants for `credential`'s name. Entries expired at
        `now` are ignored. `now` defaults to the wall clock because callers
        at RCPT TO have no better one; tests pass it. Two primary-key seeks
        on the reader connection."""
        if not await self._may_exist():
            return None
        if now is None:
            now = time.time()
        return await self._read(_lookup, address_key(address), scope or "",
                                credential or scope or "", now)

    def note(self, outcomes: Iterable[AddressOutcome]) -> None:
        """Outcomes on their way to the writer: one that may add an entry
        makes the list non-empty for the lookups from now on."""
        if any(o.kind != "delivered" for o in outcomes):
            self._seen = True

    async def _may_exist(self) -> bool:
        # The list is empty on new installs (and in benchmarks): then skip the
        # per-RCPT lookup, a round trip to the reader thread. Rows this
        # process adds set the flag at once (`note`); rows added by
        # `mta suppression add/import` (another process) are seen within
        # SUPPRESSION_RECHECK seconds.
        if self._seen:
            return True
        now = time.monotonic()
        if now - self._checked < SUPPRESSION_RECHECK:
            return False
        self._checked = now
        self._seen = await self._read(_any)
        return self._seen
