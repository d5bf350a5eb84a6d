"""The sending-domain store as an interface: what callers may ask of it.

One job: name the operations on domains, selectors and DKIM keys that the
domain service (and through it the daemon's domain cache and the CLI) needs,
so the embedded default (`sqlite_store.SqliteDomainStore`: one SQLite file
plus a PEM file per key under the state dir) can be replaced by a networked
store shared by several nodes without touching a caller.

Public API:
    DomainStore (typing.Protocol)
        .add_domain(name, now, keys) -> Domain      pending, due for a check now
        .get(name) -> Domain | None   .list() -> [Domain]   .remove(name)
        .set_state(name, new, *, now, failure_reason, next_check, check_attempts)
        .due(now) -> [name]                           next_check <= now, soonest first
        .add_selector(name, key, now)
        .set_selector_status(name, selector, new, retire_at=None)
        .delete_selector(name, selector)              a retiring one: row and key go
        .public_key(selector) -> str                  the DKIM TXT value to publish
        .signing_keys(name) -> [SigningKey]           the active keys ([] if unknown)
    The embedded default is `sqlite_store.SqliteDomainStore(state_dir)`; this
    module imports no implementation, so a caller typed against the Protocol
    pulls in no SQLite code.

Contract (every implementation):
  - Moves of a domain's state and of a selector's status go through
    model.DOMAIN_MACHINE / SELECTOR_MACHINE: an illegal one raises
    core.statemachine.IllegalTransition and changes nothing.
  - A private key enters with add_domain / add_selector and leaves only
    inside the `SigningKey`s of signing_keys(), which go to the signer. No
    other call returns private key material (public_key derives the public
    half in the store).
  - Unknown names raise model.UnknownDomain, except get() (None),
    signing_keys() ([]) and delete_selector() of a selector already gone
    (nothing to do); add_domain of an existing name raises DomainExists.
  - Calls are synchronous and short; any thread may call (the daemon calls
    from worker threads).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Protocol

from mta.domains.model import Domain, DomainState, NewKey, Selector, SelectorStatus
from mta.mail.dkim import SigningKey

__all__ = ["DomainStore"]


class DomainStore(Protocol):
    def add_domain(self, name: str, now: float, keys: Sequence[NewKey]) -> Domain: ...

    def get(self, name: str) -> Domain | None: ...

    def list(self) -> builtins.list[Domain]: ...

    def remove(self, name: str) -> None: ...

    def set_state(self, name: str, new: DomainState, *, now: float,
                  failure_reason: str | None, next_check: float | None,
                  check_attempts: int) -> None: ...

    def due(self, now: float) -> builtins.list[str]: ...

    def add_selector(self, name: str, key: NewKey, now: float) -> None: ...

    def set_selector_status(self, name: str, selector: str, new: SelectorStatus,
                            retire_at: float | None = None) -> None: ...

    def delete_selector(self, name: str, selector: str) -> None: ...

    def public_key(self, selector: Selector) -> str: ...

    def signing_keys(self, name: str) -> builtins.list[SigningKey]: ...

