"""Every console page module, in navigation order.

One job: the list `create_console_app` assembles by default.

Public API:
    ALL_PAGES    the page modules (each: PART, NAV, routes(backend))
"""

from __future__ import annotations

from collections.abc import Sequence

from mta.console import (pages_cluster, pages_destinations, pages_domains, pages_keys,
                         pages_messages, pages_overview, pages_suppressions, pages_templates,
                         pages_tenants, pages_webhooks)
from mta.console.render import Pages

__all__ = ["ALL_PAGES"]

ALL_PAGES: Sequence[Pages] = (pages_overview, pages_messages, pages_domains, pages_suppressions,
                              pages_webhooks, pages_destinations, pages_tenants, pages_keys,
                              pages_templates, pages_cluster)
