"""The admin API's view of traffic shaping (issue 15): the table in force,
the rule actions, warm-up, and lifting an action (split from
runtime/admin.py for its size).

API
    ShapingAdmin                 a mixin for RuntimeAdmin (needs .runner)
      await .shaping() -> dict   {"mx_rollup", "pools", "table", "actions", "warmup"}
      await .warmup() -> list    each egress source: day, cap, used, allowed now
      await .shaping_lift(target) -> list   the actions lifted (by id, site,
                                 or "tenant@provider"); [] when none matched
    summary_actions(actions, name, state) -> list
                                 the actions that concern queue `name`
    shaping_gauges(runner) -> dict | None    for Metrics.refresh
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mta.runtime.automation import ReplyRules
from mta.runtime.shaping import Shaping

__all__ = ["ShapingAdmin", "ShapingRunner", "shaping_gauges", "summary_actions"]


class ShapingRunner(Protocol):
    """The queue runner's shaping parts (runtime.queue_runner)."""

    @property
    def shaping(self) -> Shaping | None: ...
    @property
    def rules(self) -> ReplyRules | None: ...


def summary_actions(actions: Sequence[Mapping[str, Any]], name: str,
                    state: Mapping[str, object] | None) -> list[dict[str, Any]]:
    """A site's own actions, and tenant actions at it or at its provider."""
    provider = str((state or {}).get("provider") or "")
    at = {name, provider} - {""}
    return [dict(a) for a in actions
            if a["key"] == name or (a["scope"] == "tenant" and a["key"].rpartition("@")[2] in at)]


def shaping_gauges(runner: ShapingRunner) -> dict[str, Any] | None:
    if runner.shaping is None or runner.rules is None:
        return None
    return {"actions": runner.rules.active(), "warmup": runner.shaping.warmup_status()}


class ShapingAdmin:
    @property
    def runner(self) -> ShapingRunner:
        raise NotImplementedError     # RuntimeAdmin's

    def _shaping(self) -> tuple[Shaping, ReplyRules]:
        if self.runner.shaping is None or self.runner.rules is None:
            raise NotImplementedError("this daemon has no traffic shaping")
        return self.runner.shaping, self.runner.rules

    async def shaping(self) -> dict[str, Any]:
        shaping, rules = self._shaping()
        return {**shaping.describe(), "actions": rules.active(),
                "warmup": shaping.warmup_status()}

    async def warmup(self) -> list[dict[str, Any]]:
        return self._shaping()[0].warmup_status()

    async def shaping_lift(self, target: str) -> list[dict[str, Any]]:
        return await self._shaping()[1].lift(target)
