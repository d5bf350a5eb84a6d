"""A cluster on one machine for end-to-end tests (issue 19).

N real in-process daemons (A, B, C, …), each with its own state directory,
SMTP submission listener, sending API and admin API on loopback ports, all
sharing one PostgreSQL database and one Redis database (the session's
servers from tests/conftest.py: `pg_url`, `redis_url`) and delivering to one
sink. Tenants acme and beta (owning acme.test and beta.test) and a
full-access API key per tenant are seeded into every node's state before it
starts (the same key works on every node).

API
    cluster_text(state, pg_url, redis_url, node, sink_port, extra="") -> config text
    async with cluster_world(tmp_path, pg_url, redis_url, n=3, extra="") as w:
        w.nodes: {"A": Daemon, …}; w.keys: {"acme": token, …}; w.sink
        await w.api(node, token, method, path, **kw) -> (status, json)
        await w.admin(node, method, path, **kw) -> (status, json)
        await w.smtp_send(node, sender, rcpts, body) -> reply or raises
        await w.queued_everywhere() -> [queue id]   every node's spool
        await w.stop_node(name) / await w.start_node(name)
    until(cond, timeout)    re-exported from tests/support/accounts.py
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

from mta.api.keys import StoreKeys
from mta.cluster.secrets import new_secret
from mta.config import parse_config
from mta.runtime.daemon import Daemon
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.accounts import until
from tests.support.mtahelpers import config_text, free_port
from tests.support.sink import Sink

__all__ = ["ADMIN_TOKEN", "ClusterWorld", "cluster_text", "cluster_world", "until"]

ADMIN_TOKEN = "test-admin-token-0123456789"


def cluster_text(state: Path, pg_url: str, redis_url: str, node: str, sink_port: int,
                 extra: str = "") -> str:
    text = config_text(state, free_port(), routes={"*": f"127.0.0.1:{sink_port}"},
                       trusted=("127.0.0.0/8",))
    secret = state.parent / "cluster-secret.txt"      # one file for every node
    if not secret.exists():
        secret.write_text(new_secret() + "\n")
    return (text + f'[api]\naddress = "127.0.0.1:{free_port()}"\n'
            f'[cluster]\ndatabase = "{pg_url}"\nredis = "{redis_url}"\nnode = "{node}"\n'
            f'secret_file = "{secret}"\n'
            'heartbeat = "0.5s"\nnode_timeout = "3s"\nconnect_timeout = "2s"\n' + extra)


def _seed(states: list[Path]) -> dict[str, str]:
    """Tenants acme and beta and one full-access key per tenant (default
    included), the same rows in every state directory."""
    now = time.time()
    first = states[0]
    keys: dict[str, str] = {}
    made = {}
    for t in ("acme", "beta", "default"):
        made[t], keys[t] = StoreKeys(SqliteApiKeys(str(first))).create(f"{t}-admin", now=now)
    rows = SqliteApiKeys(str(first)).rows()
    for state in states:
        if state != first:
            store = SqliteApiKeys(str(state))
            for r in rows:
                store.insert(id=r.id, name=r.name, hash=r.hash, permission=r.permission,
                             domains=r.domains, test=r.test, rate_limit=r.rate_limit,
                             created=r.created)
        tenants = SqliteTenants(state)
        for t in ("acme", "beta", "default"):
            if t != "default":
                tenants.add(t, limits={}, policy={}, now=now)
                tenants.own("domain", f"{t}.test", t, now)
            tenants.own("credential", made[t].credential, t, now)
    return keys


class ClusterWorld:
    def __init__(self, texts: dict[str, str], keys: dict[str, str], sink: Sink,
                 states: dict[str, Path]):
        self.texts, self.keys, self.sink, self.states = texts, keys, sink, states
        self.nodes: dict[str, Daemon] = {}

    async def start_node(self, name: str, processes: bool = False) -> Daemon:
        """processes: run `[server] workers` receiver processes, as `mta serve` does."""
        d = Daemon(parse_config(self.texts[name], f"node {name}"), processes=processes)
        await d.start()
        self.nodes[name] = d
        return d

    async def stop_node(self, name: str) -> None:
        d = self.nodes.pop(name)
        await d.stop()

    async def api(self, node: str, token: str, method: str, path: str,
                  **kw: Any) -> tuple[int, Any]:
        d = self.nodes[node]
        assert d.api is not None
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, d.api.url + path, headers=headers, **kw) as r:
                return r.status, await r.json(content_type=None)

    async def admin(self, node: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        d = self.nodes[node]
        assert d.admin is not None
        async with aiohttp.ClientSession() as s:
            async with s.request(method, d.admin.url + path,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                 **kw) as r:
                return r.status, await r.json(content_type=None)

    def smtp_port(self, node: str) -> int:
        d = self.nodes[node]
        return int(d.cfg.listeners[0].address.rsplit(":", 1)[1])

    async def queued_everywhere(self) -> list[str]:
        """The ids of every message in every node's spool (test-key mail aside)."""
        ids = []
        for d in self.nodes.values():
            assert d.spool is not None
            views, _ = await d.spool.email_page(False, 100)
            ids.extend(v.id for v in views)
        return sorted(ids)

    async def smtp_send(self, node: str, sender: str, rcpts: list[str],
                        body: bytes) -> tuple[dict[str, Any], str]:
        """Submit over SMTP from a trusted loopback address (no AUTH)."""
        return await aiosmtplib.send(body, sender=sender, recipients=rcpts,
                                     hostname="127.0.0.1", port=self.smtp_port(node),
                                     start_tls=False, timeout=15)


@contextlib.asynccontextmanager
async def cluster_world(tmp_path: Path, pg_url: str, redis_url: str, n: int = 3,
                        extra: str = "", start: bool = True) -> AsyncIterator[ClusterWorld]:
    names = [chr(ord("A") + i) for i in range(n)]
    states = {name: tmp_path / f"node-{name}" for name in names}
    for s in states.values():
        s.mkdir(parents=True)
    keys = _seed(list(states.values()))
    async with Sink() as sink:
        texts = {name: cluster_text(states[name], pg_url, redis_url, name, sink.address[1],
                                    extra) for name in names}
        world = ClusterWorld(texts, keys, sink, states)
        try:
            if start:
                for name in names:
                    await world.start_node(name)
            yield world
        finally:
            for name in list(world.nodes):
                await world.stop_node(name)
            for s in states.values():
                shutil.rmtree(s, ignore_errors=True)
