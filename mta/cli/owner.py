"""Which tenant owns what a command creates: `--tenant` on `mta user add`,
`mta key create` and `mta domain add`, and the tenant column of their lists.

One job: before a command creates something, check that the tenant exists
and that the name is not another tenant's; right after, record the ownership
in the tenant store (`mta.spool.tenants`, offline: the daemon re-reads it
within 2 s and on a miss), undoing the creation when the store refuses.

Public API:
    add_option(parser, what)              --tenant NAME (default "default")
    OwnerError                            a refusal; str() = the one-line message
    check(state_dir, kind, name, tenant)  OwnerError: no such tenant, or `name`
                                          belongs to another tenant
    record(state_dir, kind, name, tenant, undo)
        own(); on a refusal or a storage error call undo() (delete what was
        just created) and raise OwnerError
    owners(state_dir, kind) -> {name: tenant}   names nobody owns are absent
    disown(state_dir, kind, name)         a removed domain (or webhook)

Invariants:
- Without --tenant the owner is "default", recorded as a row like any other
  (what SqliteTenants.own does for "default", and what the sending API does
  for keys made with a default key): a name the default tenant used cannot be
  taken by a named tenant later, and a credential kept for a tenant (its
  history stays attributed) is not quietly re-created for another.
- `check` runs before anything is created, so a refusal creates nothing;
  `record` undoes only when the store changed between the two (a race).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from mta.core.errors import StorageError
from mta.spool.tenants import DEFAULT_TENANT, SqliteTenants, TenantError

__all__ = ["DEFAULT_TENANT", "OwnerError", "add_option", "check", "disown", "owners",
           "record"]

StateDir = str | os.PathLike[str]


class OwnerError(Exception):
    """A tenant refusal, as the one line the command prints."""


def add_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--tenant", default=DEFAULT_TENANT, metavar="NAME",
                        help=f"the tenant that owns the {what} (must exist: mta tenant "
                             f"add; default: {DEFAULT_TENANT})")


def check(state_dir: StateDir, kind: str, name: str, tenant: str) -> None:
    store = SqliteTenants(state_dir)
    try:
        if store.get(tenant) is None:
            raise OwnerError(f"no tenant named {tenant!r} (create it with: mta tenant add "
                             f"{tenant})")
        taken = store.ownership().get((kind, name))
    except StorageError as exc:
        raise OwnerError(str(exc)) from exc
    if taken is not None and taken != tenant:
        raise OwnerError(f"the {kind} {name!r} belongs to the tenant {taken!r}")


def record(state_dir: StateDir, kind: str, name: str, tenant: str,
           undo: Callable[[], object]) -> None:
    try:
        SqliteTenants(state_dir).own(kind, name, tenant, time.time())
    except (TenantError, StorageError) as exc:
        undo()
        raise OwnerError(str(exc)) from exc


def owners(state_dir: StateDir, kind: str) -> dict[str, str]:
    return {name: tenant for (k, name), tenant in SqliteTenants(state_dir).ownership().items()
            if k == kind}


def disown(state_dir: StateDir, kind: str, name: str) -> None:
    SqliteTenants(state_dir).disown(kind, name)
