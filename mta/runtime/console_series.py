"""The console overview's event series, kept up to date by ledger seq.

One job: counts per minute of the overview's five series over the last
day, for everyone or for one tenant: read from the spool's figures the
first time (one grouped query over the window), then only for the events
committed since (a walk of the primary key from the last seq counted), so
showing the page again costs milliseconds however large the ledger.

Public API:
    SERIES_OF     event type -> series (mta.console.pages_overview.SERIES):
                  queued -> accepted (each recipient taken into the queue),
                  delivered, deferred, bounced and expired -> bounced (final
                  failures), complained
    EventSeries(figures, ledger, scopes=64)
        await .windows(tenant, now) -> {"hour": window, "day": window}
        window: {"start": t, "step": seconds, "series": {name: [count per bucket]}}
        (hour: 60 one-minute buckets ending with the current minute; day:
        24 one-hour buckets ending with the current hour; UTC-aligned)

Invariants:
- Exact: an event is counted once, when its seq is first at or below the
  newest seq read (spool/figures.py: seqs are visible in order), in the
  minute of its `at`, whatever the order in which times were written.
  Events older than the day window are not kept; a clock that moves back
  before the counted window rebuilds the scope.
- Bounded: at most `scopes` scopes (the least recently used is dropped),
  each at most 25 hours of minutes x 5 counts. One caller at a time per
  scope (a lock), so two pages never count the same events twice.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from mta.console.pages_overview import SERIES
from mta.spool.figures import SERIES_TYPES, Figures
from mta.spool.ledger import Ledger

__all__ = ["SERIES_OF", "EventSeries"]

SERIES_OF = {"queued": "accepted", "delivered": "delivered", "deferred": "deferred",
             "bounced": "bounced", "expired": "bounced", "complained": "complained"}
assert set(SERIES_OF) == set(SERIES_TYPES) and set(SERIES_OF.values()) == set(SERIES)

_MINUTE, _HOUR = 60, 3600


@dataclass
class _Scope:
    built: bool = False
    upto: int = 0                                   # events with seq <= upto are counted
    since: float = 0.0                              # … and at >= since
    minutes: dict[int, dict[str, int]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EventSeries:
    def __init__(self, figures: Figures, ledger: Ledger, scopes: int = 64):
        self._figures, self._ledger, self._max = figures, ledger, max(1, scopes)
        self._scopes: OrderedDict[str | None, _Scope] = OrderedDict()

    def _scope(self, tenant: str | None) -> _Scope:
        scope = self._scopes.pop(tenant, None) or _Scope()
        self._scopes[tenant] = scope                # most recently used last
        while len(self._scopes) > self._max:
            self._scopes.popitem(last=False)
        return scope

    async def _minutes(self, tenant: str | None, since: float) -> dict[int, dict[str, int]]:
        scope = self._scope(tenant)
        async with scope.lock:
            if since < scope.since:
                scope.built = False                 # the clock went back: count again
            upto = await self._ledger.last_event_seq()
            if not scope.built:
                scope.minutes = {}
                rows = await self._figures.event_counts(since, bucket=_MINUTE, upto_seq=upto,
                                                        tenant=tenant)
            elif upto > scope.upto:
                rows = await self._figures.event_counts(since, bucket=_MINUTE,
                                                        after_seq=scope.upto, upto_seq=upto,
                                                        tenant=tenant)
            else:
                rows = []
            for minute, etype, n in rows:
                counts = scope.minutes.setdefault(minute, {})
                name = SERIES_OF[etype]
                counts[name] = counts.get(name, 0) + n
            first = int(since // _MINUTE)
            for minute in [m for m in scope.minutes if m < first]:
                del scope.minutes[minute]
            scope.built, scope.upto, scope.since = True, max(upto, scope.upto), since
            return {m: dict(c) for m, c in scope.minutes.items()}

    async def windows(self, tenant: str | None, now: float) -> dict[str, dict[str, Any]]:
        """The hour (per minute) and day (per hour) windows ending at `now`."""
        hour0 = int(now // _HOUR) - 23
        minute0 = int(now // _MINUTE) - 59
        minutes = await self._minutes(tenant, float(hour0 * _HOUR))
        hour = {name: [0] * 60 for name in SERIES}
        day = {name: [0] * 24 for name in SERIES}
        for minute, counts in minutes.items():
            h = minute * _MINUTE // _HOUR - hour0
            m = minute - minute0
            for name, n in counts.items():
                if 0 <= h < 24:
                    day[name][h] += n
                if 0 <= m < 60:
                    hour[name][m] += n
        return {"hour": {"start": float(minute0 * _MINUTE), "step": _MINUTE, "series": hour},
                "day": {"start": float(hour0 * _HOUR), "step": _HOUR, "series": day}}
