"""Sending domains and their DKIM keys, the same on every node (issue 19).

One job: keep this node's domain store (domains/sqlite_store.py: the SQLite
file and the key files under the state dir) in step with the cluster's
`sending_domains` documents (cluster/documents.py), the private keys sealed
with the cluster secret (cluster/secrets.py, AES-256-GCM) on their way to
PostgreSQL and opened on their way back.

Why the local store stays the read path (and PostgreSQL is not queried per
call through a `PgDomainStore`): every reader already reads the local store
and keeps working untouched — the daemon's DomainCache (signing and sender
checks, no I/O per message), the receiver processes (their own DomainCache,
re-read on the owner's "domains" notice), the sending API, the console and
the offline CLI (`mta domain add` with the daemon stopped). Signing and
checks never wait on PostgreSQL, a node whose database is down keeps its
domains and keys, and a change made offline is pushed at the next tick
after the daemon starts (docs are compared by hash: runtime/cluster_docs.py).
The price is a delay (SYNC_EVERY) before a domain added on one node signs on
another, and the cluster's latest write wins a conflict.

API
    await wire(node)    load `[cluster] secret_file` (StartupError naming the
                        path when missing, unreadable or malformed, or when it
                        is not the secret the cluster's first node recorded),
                        add the job "cluster_domains"; the sync is then
                        `node.domain_sync`
    LocalDomains(store, box)     cluster_docs.LocalDocs over a SqliteDomainStore
    domain_hash(domain, pems) -> str
    new_secret() -> str          a fresh cluster secret (cluster/secrets.py), for
                                 `mta cluster secret`

Document (JSON): the domain's row (name, state, created, last_checked,
failure_reason, next_check, check_attempts) and its selectors (selector,
algorithm, created, status, retire_at, key: {"id": the secret's key id,
"sealed": base64 of nonce + AES-GCM ciphertext of the PEM, bound to
"dkim:<domain>:<selector>"}). The PEM never leaves the node in clear.

After documents were applied here the DomainCache is re-read and the
receiver processes told, so signing follows at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from functools import partial
from typing import Any

from mta.cluster import documents
from mta.cluster.db import SharedDbUnavailable
from mta.cluster.secrets import SecretBox, SecretError, load_secret, new_secret
from mta.domains.model import Domain, DomainState, Selector, SelectorStatus, UnknownDomain
from mta.domains.sqlite_store import SqliteDomainStore
from mta.runtime.cluster_docs import DocSync, SyncState
from mta.runtime.housekeeping import Job
from mta.runtime.logs import event
from mta.runtime.startup import StartupError

__all__ = ["SYNC_EVERY", "LocalDomains", "domain_hash", "new_secret", "open_box", "wire"]

log = logging.getLogger("mta.cluster")

SYNC_EVERY = 1.0


def _row(d: Domain) -> dict[str, Any]:
    return {"name": d.name, "state": d.state.value, "created": d.created,
            "last_checked": d.last_checked, "failure_reason": d.failure_reason,
            "next_check": d.next_check, "check_attempts": d.check_attempts}


def _sel(s: Selector) -> dict[str, Any]:
    return {"selector": s.selector, "algorithm": s.algorithm, "created": s.created,
            "status": s.status.value, "retire_at": s.retire_at}


def domain_hash(d: Domain, pems: dict[str, bytes]) -> str:
    """What identifies a domain's local state: its row, its selectors and
    (a digest of) each key; the same on every node for the same domain."""
    doc = {**_row(d), "selectors": [
        {**_sel(s), "key": hashlib.sha256(pems[s.selector]).hexdigest()}
        for s in sorted(d.selectors, key=lambda s: s.selector)]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _aad(domain: str, selector: str) -> str:
    return f"dkim:{domain}:{selector}"


class LocalDomains:
    table = "sending_domains"

    def __init__(self, store: SqliteDomainStore, box: SecretBox):
        self.store, self.box = store, box

    def stamp(self) -> object:
        out: list[tuple[int, int, int] | None] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self.store.db_path}{suffix}")
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _pems(self, d: Domain) -> dict[str, bytes]:
        return {s.selector: self.store.key_path(d.name, s.selector, s.algorithm).read_bytes()
                for s in d.selectors}

    def scan(self) -> dict[str, str]:
        return {d.name: domain_hash(d, self._pems(d)) for d in self.store.list()}

    def export(self, name: str) -> tuple[str, str] | None:
        d = self.store.get(name)
        if d is None:
            return None
        pems = self._pems(d)
        doc = {**_row(d), "selectors": [
            {**_sel(s), "key": {"id": self.box.key_id, "sealed": base64.b64encode(
                self.box.seal(pems[s.selector], _aad(name, s.selector))).decode("ascii")}}
            for s in sorted(d.selectors, key=lambda s: s.selector)]}
        return domain_hash(d, pems), json.dumps(doc, sort_keys=True)

    def apply(self, name: str, doc: str | None) -> str | None:
        if doc is None:
            try:
                self.store.remove(name)
            except UnknownDomain:
                pass
            return None
        d, pems = self._parse(name, json.loads(doc))
        self.store.replace(d, pems)
        return domain_hash(d, pems)

    def _parse(self, name: str, doc: dict[str, Any]) -> tuple[Domain, dict[str, bytes]]:
        sels, pems = [], {}
        for s in doc["selectors"]:
            sel = str(s["selector"])
            pems[sel] = self.box.open(str(s["key"]["id"]), base64.b64decode(s["key"]["sealed"]),
                                      _aad(name, sel))
            sels.append(Selector(name, sel, str(s["algorithm"]), float(s["created"]),
                                 SelectorStatus(s["status"]), _opt(s["retire_at"]),
                                 str(self.store.key_path(name, sel, str(s["algorithm"])))))
        d = Domain(name, DomainState(doc["state"]), float(doc["created"]),
                   _opt(doc["last_checked"]), doc["failure_reason"], _opt(doc["next_check"]),
                   int(doc["check_attempts"]),
                   tuple(sorted(sels, key=lambda s: (s.created, s.selector))))
        return d, pems


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


def open_box(node: Any) -> SecretBox:
    """This node's secret box, loaded once per node (StartupError when unusable)."""
    box = getattr(node, "secret_box", None)
    if isinstance(box, SecretBox):
        return box
    path = node.d.cfg.cluster.secret_file
    if path is None:
        raise StartupError("cluster.secret_file: required in a cluster (the key that seals "
                           "DKIM private keys in PostgreSQL; `mta cluster secret` makes one)")
    try:
        box = load_secret(path)
    except SecretError as exc:
        raise StartupError(str(exc)) from exc
    node.secret_box = box
    return box


async def _check_secret(node: Any, box: SecretBox) -> None:
    try:
        cluster_id = await node.db.call(partial(documents.cluster_secret_id, key_id=box.key_id))
    except SharedDbUnavailable:
        return                  # checked again per key at each pull
    if cluster_id != box.key_id:
        raise StartupError(f"cluster.secret_file {node.d.cfg.cluster.secret_file}: holds "
                           f"secret {box.key_id}, but the cluster's is {cluster_id}: every "
                           "node needs the same secret file")


async def wire(node: Any) -> None:
    box = open_box(node)
    await _check_secret(node, box)
    state_dir = node.d.cfg.server.state_dir

    async def applied() -> None:
        d = node.d
        if d.domains is not None:
            await d.domains.refresh()
        if d.receivers is not None:
            d.receivers.refresh_domains()
        event(log, "cluster_domains_refreshed", node=node.name)

    sync = DocSync(node, LocalDomains(SqliteDomainStore(state_dir), box), SyncState(state_dir),
                   on_applied=applied)
    node.domain_sync = sync
    await sync.tick()           # the cluster's domains at once, not a tick later
    node.add_job(Job("cluster_domains", SYNC_EVERY, sync.tick, pause_after_failure=10.0))
