"""SMTP AUTH credentials, the same on every node (issue 19).

One job: keep this node's credentials file (server/credentials.py: one JSON
file of scrypt hashes in the state dir) in step with the cluster's
`smtp_credentials` documents (cluster/documents.py), through
runtime/cluster_docs.py: a user added, changed or removed on any node
(`mta user add|passwd|remove`, with the daemon running or not) reaches
every node.

Why the file stays the read path: the submission listeners of this process
and of the receiver processes (`[server] workers`) each read the file
themselves and re-read it when it changes, so writing the cluster's entries
into it is all it takes for a user added on node A to AUTH on node B — no
receiver asks PostgreSQL, and AUTH keeps working while it is down.

API
    await wire(node)      add the job "cluster_credentials"; the sync is then
                          `node.credential_sync`
    LocalCredentials(store)   cluster_docs.LocalDocs over a CredentialStore
    entry_hash(entry) -> str

Document (JSON): the user's stored entry as is — scheme, scrypt parameters,
salt, hash, created, updated and its domain scopes. Never a password.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from mta.runtime.cluster_docs import DocSync, SyncState
from mta.runtime.housekeeping import Job
from mta.runtime.paths import state_paths
from mta.server.credentials import CredentialStore

__all__ = ["SYNC_EVERY", "LocalCredentials", "entry_hash", "wire"]

SYNC_EVERY = 1.0


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


class LocalCredentials:
    table = "smtp_credentials"

    def __init__(self, store: CredentialStore):
        self.store = store

    def stamp(self) -> object:
        try:
            st = os.stat(self.store.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def scan(self) -> dict[str, str]:
        return {name: entry_hash(e) for name, e in self.store.entries().items()}

    def export(self, name: str) -> tuple[str, str] | None:
        entry = self.store.entries().get(name)
        if entry is None:
            return None
        return entry_hash(entry), json.dumps(entry, sort_keys=True)

    def apply(self, name: str, doc: str | None) -> str | None:
        entry = None if doc is None else json.loads(doc)
        if entry is not None and not isinstance(entry, dict):
            raise ValueError(f"credential {name}: not an entry")
        self.store.put_entry(name, entry)
        return None if entry is None else entry_hash(entry)


async def wire(node: Any) -> None:
    cfg = node.d.cfg
    store = CredentialStore(state_paths(cfg)["credentials"])
    sync = DocSync(node, LocalCredentials(store), SyncState(cfg.server.state_dir))
    node.credential_sync = sync
    await sync.tick()
    node.add_job(Job("cluster_credentials", SYNC_EVERY, sync.tick, pause_after_failure=10.0))
