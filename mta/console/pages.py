"""Every console page module, in navigation order.

One job: the list `create_console_app` assembles by default.

Public API:
    ALL_PAGES    the page modules (each: PART, NAV, routes(backend))
"""

from __future__ import annotations

from collections.abc import Sequence

from mta.console.render import Pages

__all__ = ["ALL_PAGES"]

ALL_PAGES: Sequence[Pages] = ()
