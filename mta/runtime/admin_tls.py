"""The admin API's view of outbound TLS (issue 17): what applies to a
recipient domain now, the cached MTA-STS policies, and purging one (split
from runtime/admin.py for its size, like admin_shaping.py).

API
    TlsAdmin                     a mixin for RuntimeAdmin (reads `.d`, a TlsDaemon)
      await .tls_show(domain) -> dict    {"domain", "override": level | None,
                                 "mta_sts": {"id", "mode", "mx", "max_age",
                                 "fetched_at", "expires_at"} | None, "error": str | None}
      await .tls_purge(domain) -> dict   {"domain", "purged": bool}
      await .tls_policies() -> list      [{"domain", "id", "mode", "expires_at"}],
                                 by domain: every cached policy (expired ones too,
                                 until the resolver drops them)
    TlsDaemon, TlsRunner         what it reads of the daemon (DaemonView has both)

Invariants:
- The StsResolver asked is the one delivery uses (the runner's transport's
  guard: delivery/tlsguard.py): a show is the lookup a delivery would make
  now, cached as usual (a new or changed policy is fetched and stored, an
  unexpired one with the same id is not); a purge drops the policy from the
  resolver's memory and from the table, so the next lookup fetches it again.
- The cache table (spool/mtasts_cache.py) is only read here, through
  asyncio.to_thread; every write is the resolver's.
- `override` is `[tls] policy` as delivery reads it (policy.tlspolicy.override_for).
- With `[tls] mta_sts = false` a show makes no lookup: "mta_sts" is null and
  "error" says why (delivery does not look either).
- `domain` arrives checked (mta.admin.handlers.tls_domain: lower-case
  A-labels, no address literal). No daemon resolver: NotImplementedError (501).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from mta.config import Config
from mta.delivery.mtasts_fetch import StsResolver
from mta.delivery.tlsguard import TlsGuard
from mta.policy.mtasts import StsError, StsPolicy, parse_policy
from mta.policy.tlspolicy import override_for
from mta.spool.mtasts_cache import CachedPolicy, SqliteStsCache

__all__ = ["TlsAdmin", "TlsDaemon", "TlsRunner"]

STS_OFF = "MTA-STS is turned off ([tls] mta_sts = false): delivery does not look it up"


class TlsRunner(Protocol):
    """The queue runner's transport (runtime.queue_runner): the daemon's is a
    delivery.client.SmtpTransport, whose `.guard` holds the StsResolver."""

    @property
    def transport(self) -> object: ...


class TlsDaemon(Protocol):
    @property
    def cfg(self) -> Config: ...
    @property
    def runner(self) -> TlsRunner | None: ...


def _policy_json(policy: StsPolicy, row: CachedPolicy | None) -> dict[str, Any]:
    """The policy in force; its times from the table row it was stored as
    (None when the row is not that policy's: a failed cache write)."""
    same = row is not None and row.policy_id == policy.id
    return {"id": policy.id, "mode": policy.mode, "mx": list(policy.mx),
            "max_age": policy.max_age,
            "fetched_at": row.fetched_at if same and row else None,
            "expires_at": row.expires_at if same and row else None}


def _listed(row: CachedPolicy) -> dict[str, Any]:
    try:
        mode: str | None = parse_policy(row.policy_text).mode
    except StsError:
        mode = None             # unusable (the resolver ignores it): shown without a mode
    return {"domain": row.domain, "id": row.policy_id, "mode": mode,
            "expires_at": row.expires_at}


class TlsAdmin:
    d: TlsDaemon        # RuntimeAdmin's daemon view

    def _sts(self) -> StsResolver:
        runner = self.d.runner
        # SmtpTransport's; the runner's Transport Protocol does not name it
        guard = getattr(runner.transport if runner is not None else None, "guard", None)
        if not isinstance(guard, TlsGuard) or guard.sts is None:
            raise NotImplementedError("this daemon has no MTA-STS resolver")
        return guard.sts

    def _cache(self) -> SqliteStsCache:
        return SqliteStsCache(Path(self.d.cfg.server.state_dir))

    async def tls_show(self, domain: str) -> dict[str, Any]:
        cfg = self.d.cfg
        sts = self._sts()
        out: dict[str, Any] = {"domain": domain, "override": override_for(cfg.tls.policy, domain),
                               "mta_sts": None, "error": None}
        if not cfg.tls.mta_sts:
            out["error"] = STS_OFF
            return out
        lookup = await sts.policy(domain)
        out["error"] = lookup.error
        if lookup.policy is not None:
            row = await asyncio.to_thread(self._cache().get, domain)
            out["mta_sts"] = _policy_json(lookup.policy, row)
        return out

    async def tls_purge(self, domain: str) -> dict[str, Any]:
        return {"domain": domain, "purged": await self._sts().purge(domain)}

    async def tls_policies(self) -> list[dict[str, Any]]:
        self._sts()         # 501 like the other routes when there is no resolver
        return [_listed(row) for row in await asyncio.to_thread(self._cache().rows)]
