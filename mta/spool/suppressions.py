"""Suppression storage inside the writer's transaction.

One job: apply `AddressOutcome`s to the `suppressions` / `soft_failures`
tables on the writer's connection, inside whatever transaction the writer
has open (so an outcome commits or rolls back with the recipient update
that produced it), and turn rows into `SuppressionView`s.

API:
    address_key(address) -> str          # the stored/looked-up form
    RulesLike                            # what the spool needs from policy's SuppressionRules
    await apply_outcomes(conn, outcomes, rules)
    view(row) -> SuppressionView

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
An existing entry is kept (first reason wins) unless it has expired or is a
soft_bounce being upgraded to hard_bounce/complaint (index.SQL_SUPPRESS).
Without rules (`rules=None`) soft failures are still counted but never
suppress, and no automatic entry expires.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import aiosqlite

from mta.core.envelope import AddressOutcome
from mta.spool import index
from mta.spool.views import SuppressionView

_REASON_OF = {"hard": "hard_bounce", "complaint": "complaint"}


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


def view(row) -> SuppressionView:
    address, scope, reason, queue_id, reply, created, expires = row
    return SuppressionView(address=address, scope=scope, reason=reason, queue_id=queue_id or "",
                           reply=reply or "", created=created, expires=expires)


async def apply_outcomes(conn: aiosqlite.Connection, outcomes: Sequence[AddressOutcome],
                         rules: RulesLike | None) -> None:
    # One statement per outcome, in order: several soft outcomes for one
    # address in one batch must each see the count the previous one left.
    for o in outcomes:
        key = address_key(o.address)
        if o.kind == "delivered":
            await conn.execute(index.SQL_SOFT_RESET, (key,))
        elif o.kind == "soft":
            rows = await conn.execute_fetchall(index.SQL_SOFT_BUMP, (key, o.at, o.at))
            count, first_at, _last = rows[0]
            if rules is not None and rules.suppresses_after_soft(count, first_at, o.at):
                await _suppress(conn, key, o, "soft_bounce", rules)
                await conn.execute(index.SQL_SOFT_RESET, (key,))
        else:
            await _suppress(conn, key, o, _REASON_OF[o.kind], rules)


async def _suppress(conn, key: str, o: AddressOutcome, reason: str, rules: RulesLike | None) -> None:
    expires = rules.expiry_for(reason, o.at) if rules is not None else None
    await conn.execute(index.SQL_SUPPRESS, (key, o.scope, reason, o.queue_id, o.reply, o.at, expires))
