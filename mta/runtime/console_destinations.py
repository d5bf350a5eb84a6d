"""The console's Destinations backend: the queue summary, shaping actions,
warm-up, and the operator's destination actions (split from
runtime/console_overview.py, whose object it is part of).

One job: answer `mta.console.pages_destinations.DestinationsBackend` from
RuntimeAdmin (the admin API's own view: the same names, states and
refusals), turning its refusals into the console's (ConsoleError).

Public API:
    ConsoleDestinations     a mixin for ConsoleOverview (needs .admin)

Invariants:
- A destination name is checked as the admin API checks it
  (mta.admin.inputs.parse_destination, then RuntimeAdmin's resolution):
  a malformed one is a 422, one no mail can go to a 404; nothing is done
  for either.
- Operator only: the page module registers these routes with access
  "operator" (a tenant's session gets 404 before any of this runs).
"""

from __future__ import annotations

from typing import Any

from mta.admin.backend import NotFound
from mta.console.backend import ConsoleError
from mta.runtime.admin import RuntimeAdmin

__all__ = ["ConsoleDestinations"]

_ACTIONS = ("suspend", "resume", "flush")


class ConsoleDestinations:
    admin: RuntimeAdmin

    def _actions(self) -> list[dict[str, Any]]:
        """The shaping actions in force ([] without traffic shaping)."""
        rules = self.admin.runner.rules
        return [] if rules is None else rules.active()

    async def queue_summary(self) -> list[dict[str, Any]]:
        return await self.admin.queue_summary()

    async def shaping_actions(self) -> list[dict[str, Any]] | None:
        if self.admin.runner.rules is None:
            return None
        return self._actions()

    async def warmup(self) -> list[dict[str, Any]]:
        try:
            return await self.admin.warmup()
        except NotImplementedError:
            return []

    async def destination_action(self, name: str, action: str) -> dict[str, Any]:
        if action not in _ACTIONS:
            raise ConsoleError(422, f"action: one of {', '.join(_ACTIONS)}", "action")
        try:
            return await self.admin.destination_action(name, action)
        except NotFound as exc:
            raise ConsoleError(404, str(exc)) from None
        except ValueError as exc:
            raise ConsoleError(422, f"destination: {exc}", "destination") from None

    async def shaping_lift(self, target: str) -> list[dict[str, Any]]:
        try:
            return await self.admin.shaping_lift(target)
        except NotImplementedError:
            raise ConsoleError(404, "traffic shaping is off on this server") from None
