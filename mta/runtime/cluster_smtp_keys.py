"""The SMTP Idempotency-Key across the cluster, wired in (issue 19).

One job: make a message submitted over SMTP with an `Idempotency-Key`
header queued once in the whole cluster, as the sending API's key is
(runtime/cluster_idempotency.py): sent to node A and then to node B, B
answers 250 with A's queue id and queues nothing, as a repeat on one node
does.

API
    SmtpKeys(keys: SharedIdempotency, ledger, clock, window_of)
        await .once(msg, accept) -> queue id    GatedSpool.shared_keys
    await wire(node)            (runtime/cluster.py WIRINGS) hooks the submission
                                listeners' GatedSpool (runtime/submission.py)

Rules
  * Scope: what the SMTP path scopes by locally (spool/acceptance.py): the
    message's credential ("" for a trusted-network submission without
    AUTH), in the same shared `idempotency` table (cluster/idempotency.py)
    through the same SharedIdempotency. The fingerprint is a constant:
    locally a repeat is answered with the original id whatever its body
    (the Received: header alone differs between two tries), so here too.
  * This node's spool first: a key it already holds within `[ledger]
    idempotency_window` is answered by the spool itself (its duplicate
    event recorded), even while PostgreSQL is away. Otherwise the key is
    claimed in PostgreSQL before the tenant's guardrails and the enqueue
    (a repeat answered with another node's id spends no quota); a refused
    or failed enqueue releases the claim.
  * PostgreSQL unreachable, or another node's claim not finished within
    cluster_idempotency.WAIT: `451 4.3.0` (try again later; nothing
    queued). Messages without the header never touch the shared table.
  * Every SMTP submission passes the owner process's GatedSpool (sessions
    in receiver processes ask it over their channel), so hooking the one
    instance the listeners share covers them all; the sending API's
    GatedSpool is another instance, never hooked (it claims its keys itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mta.api.http import ApiError
from mta.core import Clock, Refused, Reply
from mta.runtime.cluster_idempotency import FLUSH_EVERY, PRUNE_EVERY, SharedIdempotency
from mta.runtime.housekeeping import Job
from mta.runtime.submission import GatedSpool
from mta.spool import NewMessage

__all__ = ["FINGERPRINT", "SmtpKeys", "wire"]

FINGERPRINT = "smtp"       # a repeat over SMTP is answered whatever its body (as locally)
RETRY_AFTER = 10


def _refused(exc: ApiError) -> Refused:
    if exc.name == "idempotency_unavailable":
        text = ("Idempotency-Key cannot be checked across the cluster now "
                "(shared database unreachable); try again later")
    else:
        text = "Idempotency-Key in use by another submission now; try again later"
    return Refused(Reply(451, "4.3.0", text), 429, RETRY_AFTER)


class SmtpKeys:
    def __init__(self, keys: SharedIdempotency, ledger: Any, clock: Clock,
                 window_of: Callable[[], float]):
        self.keys, self.ledger, self.clock, self.window_of = keys, ledger, clock, window_of

    async def once(self, msg: NewMessage, accept: Callable[[], Awaitable[str]]) -> str:
        """The queue id of the one acceptance of `msg`'s key in the cluster:
        `accept()`'s, or the one another node (or this spool) made."""
        scope, key = msg.credential or "", msg.idempotency_key
        assert key is not None
        found = await self.ledger.idempotent_id(scope, key)
        if found is not None and found[1] >= self.clock.now() - self.window_of():
            return await accept()           # this spool answers its own repeat

        async def one() -> list[str]:
            return [await accept()]
        try:
            ids = await self.keys.once(scope, key, FINGERPRINT, one)
        except ApiError as exc:
            raise _refused(exc) from None
        return ids[0]


def _gated_spools(d: Any) -> list[GatedSpool]:
    """The submission listeners' GatedSpool (one instance, shared with the
    receiver processes' channel)."""
    found: list[GatedSpool] = []
    holders = [getattr(lst, "handler", None) for lst in getattr(d, "listeners", [])]
    holders.append(getattr(d, "receivers", None))
    for h in holders:
        spool = getattr(h, "spool", None)
        if isinstance(spool, GatedSpool) and all(spool is not f for f in found):
            found.append(spool)
    return found


async def wire(node: Any) -> None:
    """The SMTP Idempotency-Key, decided on the shared database."""
    d = node.d
    spools = _gated_spools(d)
    if not spools or d.spool is None:
        return

    def window_of() -> float:
        return float(d.cfg.ledger.idempotency_window)
    keys = SharedIdempotency(node.db, node.name, d.clock, window_of,
                             float(node.cfg.node_timeout))
    smtp = SmtpKeys(keys, d.spool.ledger, d.clock, window_of)
    for spool in spools:
        spool.shared_keys = smtp
    node.add_job(Job("cluster_smtp_idempotency_flush", FLUSH_EVERY, keys.flush))
    if d.api is None:           # else the sending API's wiring prunes the same table
        node.add_job(Job("cluster_idempotency_prune", PRUNE_EVERY, keys.prune))
