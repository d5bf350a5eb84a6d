"""The console's seam: who is looking, and how a backend says no.

One job: the vocabulary every console page and every runtime part behind
it share — the `Viewer` (an operator, or one tenant), the `ConsoleError` a
backend raises for a refusal the page shows, and `ConsoleParts`, the
bundle of backends `mta.console.app.create_console_app` is given. Each
page module declares the Protocol of its own backend
(`mta.console.pages_*`); the runtime implements them (`mta.runtime.console*`).

Public API:
    Viewer(tenant, label)      tenant None: the operator (every tenant)
    ConsoleError(status, message, field=None)
    ConsoleParts               messages, overview, domains, accounts, cluster, auth
    Authenticator              the Protocol of `parts.auth` (logins)

Invariants:
- A backend method that takes a Viewer answers only what that viewer may
  see: a tenant's viewer gets its own tenant's messages, domains,
  suppressions, keys and templates, and a message, domain or key of
  another tenant is "not found" (404), never "forbidden" — a tenant learns
  nothing about another's ids.
- Refusals are `ConsoleError` (400/404/409/422 with a message a person can
  act on; `field` names the form field at fault); anything else raised is
  a bug (500, traceback logged, a generic page shown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Viewer", "ConsoleError", "ConsoleParts", "Authenticator"]


@dataclass(frozen=True)
class Viewer:
    """Who a console session belongs to: the operator (`tenant` None, logged
    in with the admin token) or one tenant (logged in with one of its
    full-access API keys). `label` is what the header shows: "operator" or
    the tenant and key name — never a secret."""

    tenant: str | None
    label: str
    key_name: str | None = None       # a tenant's session: the API key it logged in with
    key_id: str | None = None

    @property
    def operator(self) -> bool:
        return self.tenant is None


class ConsoleError(Exception):
    """A refusal the page shows: HTTP `status` (400, 403, 404, 409, 422, 429)
    with `message`; `field` names the form field at fault, if one is."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class Authenticator(Protocol):
    """How a login is checked (the runtime: the admin token's digest and the
    API key store)."""

    def is_admin_token(self, token: bytes) -> bool:
        """True when `token` is the admin token (compared in constant time)."""

    async def tenant_of_key(self, token: str) -> tuple[str, str, str] | None:
        """(tenant, key name, key id) for a live full-access API key, else
        None (unknown, revoked, sending-only or malformed: one answer for all)."""

    async def key_live(self, key_id: str) -> bool:
        """The key a tenant's session logged in with is still live (not
        revoked, not deleted, still full access): asked again at most every
        few seconds while the session is used, so revoking the key ends its
        console sessions too."""


@dataclass
class ConsoleParts:
    """The backends behind the pages, one per group of pages (each page
    module's Protocol), and the login check. A part that is None switches
    its pages off (their links are not shown; their URLs are 404)."""

    auth: Authenticator
    messages: Any = None        # mta.console.pages_messages.MessagesBackend
    overview: Any = None        # mta.console.pages_overview.OverviewBackend (+ destinations)
    domains: Any = None         # mta.console.pages_domains.DomainsBackend (+ suppressions)
    accounts: Any = None        # mta.console.pages_accounts.AccountsBackend
                                # (webhooks, tenants, API keys, templates)
    cluster: Any = None         # mta.console.pages_cluster.ClusterBackend (None: a
                                # single node: no Cluster page, no node label)
