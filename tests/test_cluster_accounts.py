"""Tenants, API keys, templates and API-made webhook endpoints across the
cluster (issue 19): the local outbox over every account table, push/pull
through the real PostgreSQL, the unique-name conflict, seeding, and three
real daemons where what is made through one node works on the others."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mta.api.keys import StoreKeys
from mta.cluster.db import SharedDb
from mta.core.clock import SystemClock
from mta.runtime import cluster_suppressions as sync_mod
from mta.runtime.cluster import MIGRATIONS
from mta.runtime.cluster_accounts import ClusterAccounts
from mta.spool import account_outbox as outbox
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.layout import SpoolPaths
from mta.spool.templates import SqliteTemplates
from mta.spool.tenants import SqliteTenants
from mta.spool.webhook_endpoints import EndpointRow, SqliteWebhookEndpoints
from tests.support.cluster import _seed, cluster_world, until

HTML = "<p>Hello {{{NAME}}}</p>"


# -- helpers -------------------------------------------------------------------------

class Side:
    """One node's share without a daemon: its state dir, its index with the
    outbox installed, and the real sync over a real SharedDb."""

    def __init__(self, tmp: Path, name: str, db: SharedDb, install: bool = True):
        self.state = tmp / name
        self.index = SpoolPaths.of(self.state).index
        self.index.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.db = name, db
        if install:
            self.install()

    def install(self) -> None:
        self.writer = outbox.install(self.index)
        d = SimpleNamespace(clock=SystemClock(), spool=None, tenants=None)
        self.sync = ClusterAccounts(SimpleNamespace(name=self.name, db=self.db, d=d),
                                    self.index, self.writer)

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every shared table's rows (api_keys without last_used)."""
        db = sqlite3.connect(self.index)
        try:
            out = {}
            for t, spec in outbox.TABLES.items():
                cols = [r[1] for r in db.execute(f"PRAGMA table_info({t})")
                        if r[1] not in spec.local]
                out[t] = sorted(db.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall(),
                                key=repr)
            return out
        finally:
            db.close()

    def ops(self) -> list[tuple[str, str, str]]:
        return [(r[1], r[2], r[3]) for r in outbox.read_batch(self.index, 1000)]

    def keys(self) -> SqliteApiKeys:
        return SqliteApiKeys(self.state)

    def tenants(self) -> SqliteTenants:
        return SqliteTenants(self.state)


def key(side: Side, kid: str, name: str, revoked: float | None = None) -> None:
    side.keys().insert(id=kid, name=name, hash="h" * 64, permission="full_access",
                       domains=[], test=False, rate_limit=0.0, created=1.0)
    if revoked is not None:
        side.keys().revoke(kid, revoked)


@pytest.fixture
async def db(pg_url):
    d = await SharedDb.open(pg_url, timeout=5, migrations=MIGRATIONS)
    yield d
    await d.close()


async def pg_rows(db: SharedDb) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = await db.call(lambda c: c.fetch("SELECT * FROM account_rows"))
    return {(r["tbl"], r["pk"]): (r["deleted"], r["origin"], r["seq"], r["row"]) for r in rows}


def fill(side: Side) -> str:
    """A row in every table, through the stores; the template's id."""
    t = side.tenants()
    t.add("acme", limits={"per_hour": 10}, policy={}, now=1.0)
    t.own("domain", "acme.test", "acme", 1.0)
    key(side, "k1", "ci")
    tpl = SqliteTemplates(side.state).create("acme", {"name": "W", "alias": "w", "html": HTML},
                                             1.0)
    SqliteTemplates(side.state).publish("acme", tpl.id, 2.0)
    SqliteWebhookEndpoints(side.state).insert(EndpointRow(
        name="hook", url="https://h.example/", events=("*",), secret="whsec_x", enabled=True,
        created=1.0, updated=1.0))
    return tpl.id


# -- the outbox ------------------------------------------------------------------------

def test_outbox_records_every_table_but_not_last_used_and_seeds_once(tmp_path):
    state = tmp_path / "s"
    SqliteTenants(state).add("old", limits={}, policy={}, now=1.0)     # before the cluster
    index = SpoolPaths.of(state).index
    w = outbox.install(index)
    assert outbox.install(index) == w                       # idempotent: same writer
    assert [(r[1], r[2], r[3]) for r in outbox.read_batch(index, 100)] == [
        ("seed", "tenants", '["old"]')]
    outbox.delete_through(index, 10**9)
    side = Side.__new__(Side)
    side.state, side.index = state, index
    tid = fill(side)
    SqliteApiKeys(state).touch("k1", 100.0)                 # last_used only: nothing queued
    assert SqliteApiKeys(state).get("k1").last_used == 100.0
    SqliteApiKeys(state).revoke("k1", 5.0)
    SqliteTenants(state).set_status("acme", "paused", "unpaid", 3.0)
    SqliteTemplates(state).delete("acme", tid)
    SqliteWebhookEndpoints(state).delete("hook")
    SqliteTenants(state).disown("domain", "acme.test")
    got = side.ops()
    assert [(op, t) for op, t, _ in got] == [
        ("upsert", "tenants"), ("upsert", "tenant_owned"), ("upsert", "api_keys"),
        ("upsert", "templates"), ("upsert", "template_versions"), ("upsert", "templates"),
        ("upsert", "webhook_endpoints"), ("upsert", "api_keys"), ("upsert", "tenants"),
        ("delete", "template_versions"), ("delete", "templates"),
        ("delete", "webhook_endpoints"), ("delete", "tenant_owned")]
    rows = outbox.read_batch(index, 100)
    assert json.loads(rows[2][4])["name"] == "ci" and "last_used" not in json.loads(rows[2][4])
    assert rows[2][5] == '["ci"]' and rows[7][5] is None     # revoked: out of the unique key
    assert rows[3][5] == '["acme","w"]'


def test_a_pulled_row_replaces_a_colliding_key_unless_that_one_is_pending(tmp_path):
    side = Side.__new__(Side)
    side.state = tmp_path / "s"
    side.index = SpoolPaths.of(side.state).index
    side.index.parent.mkdir(parents=True)
    outbox.install(side.index)
    key(side, "mine", "ci")                                  # queued, not pushed
    theirs = json.dumps({"id": "theirs", "name": "ci", "hash": "x", "permission": "full_access",
                         "domains": "[]", "test": 0, "rate_limit": 0.0, "created": 2.0,
                         "revoked": None})
    assert outbox.apply_remote(side.index, [("api_keys", '["theirs"]', theirs, False, 7)], 7) == 0
    assert [r.id for r in side.keys().rows()] == ["mine"]   # the local write wins when pushed
    outbox.delete_through(side.index, 10**9)                 # now pushed
    assert outbox.apply_remote(side.index, [("api_keys", '["theirs"]', theirs, False, 8)], 8) == 2
    assert [r.id for r in side.keys().rows(include_revoked=True)] == ["theirs"]
    bad = ("api_keys", '["broken"]', json.dumps({"id": "broken"}), False, 9)   # NOT NULLs missing
    unknown = ("no_such_table", '["x"]', "{}", False, 10)
    assert outbox.apply_remote(side.index, [bad, unknown], 10) == 0       # skipped, no wedge
    assert outbox.cursor(side.index) == 10
    assert side.ops() == []                                   # nothing echoed


def test_every_unique_index_of_the_shared_tables_is_declared(tmp_path):
    index = SpoolPaths.of(tmp_path).index
    index.parent.mkdir(parents=True)
    outbox.install(index)
    db = sqlite3.connect(index)
    for t, spec in outbox.TABLES.items():
        unique = [r[1] for r in db.execute(f"PRAGMA index_list({t})") if r[2] and r[3] == "c"]
        cols = [tuple(c[2] for c in db.execute(f"PRAGMA index_info({u})")) for u in unique]
        assert cols == ([spec.unique.cols] if spec.unique else []), t
    db.close()


# -- push / pull through PostgreSQL ---------------------------------------------------

async def test_every_table_round_trips_without_echo(tmp_path, db):
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    tid = fill(a)
    await a.sync.tick()
    assert a.ops() == []
    await b.sync.tick()
    assert b.tables() == a.tables() and b.ops() == []
    rows = await pg_rows(db)
    assert {k[0] for k in rows} == set(outbox.TABLES)
    await b.sync.tick()
    await a.sync.tick()
    assert await pg_rows(db) == rows                         # nothing bounced back
    # changes and deletions, made on B, reach A
    b.tenants().set_status("acme", "paused", "unpaid", 3.0)
    b.keys().revoke("k1", 4.0)
    SqliteTemplates(b.state).delete("acme", tid)
    SqliteWebhookEndpoints(b.state).update("hook", enabled=False, now=5.0)
    b.keys().touch("k1", 9.0)
    await b.sync.tick()
    await a.sync.tick()
    assert a.tables() == b.tables()
    assert a.tenants().get("acme").status == "paused" and a.keys().rows() == []
    assert SqliteTemplates(a.state).get("acme", tid) is None
    assert a.keys().get("k1").last_used is None              # last_used stays per node


async def test_the_same_active_key_name_on_two_nodes_converges_on_the_latest(tmp_path, db):
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    key(a, "ka", "ci")
    key(b, "kb", "ci")
    await b.sync.tick()                                      # kb first
    await a.sync.tick()                                      # ka pushed later: it wins
    await b.sync.tick()
    await a.sync.tick()
    assert [r.id for r in a.keys().rows(include_revoked=True)] == ["ka"]
    assert [r.id for r in b.keys().rows(include_revoked=True)] == ["ka"]
    rows = await pg_rows(db)
    assert rows[("api_keys", '["kb"]')][0] is True           # a tombstone
    # a revoked key's name may be reused: both live, no conflict
    a.keys().revoke("ka", 5.0)
    key(a, "ka2", "ci")
    await a.sync.tick()
    await b.sync.tick()
    assert sorted(r.id for r in b.keys().rows(include_revoked=True)) == ["ka", "ka2"]


async def test_seeding_the_same_rows_on_every_node_makes_one_row_each(tmp_path, db):
    states = [tmp_path / n for n in "ABC"]
    for s in states:
        s.mkdir()
    _seed(states)                                            # as cluster_world does
    sides = [Side(tmp_path, n, db) for n in "ABC"]
    before = sides[0].tables()
    assert all(s.tables() == before for s in sides)
    for _ in range(2):
        for s in sides:
            await s.sync.tick()
    rows = await pg_rows(db)
    assert not any(v[0] for v in rows.values())             # no tombstone: no conflict
    assert len(rows) == sum(len(v) for v in before.values())
    assert {v[1] for v in rows.values()} == {"A"}            # the first seed stands
    assert all(s.tables() == before and s.ops() == [] for s in sides)


async def test_a_joining_node_takes_the_clusters_rows_and_keeps_its_own(tmp_path, db):
    a = Side(tmp_path, "A", db)
    a.tenants().add("acme", limits={"per_hour": 5}, policy={}, now=1.0)
    key(a, "ka", "ci")
    await a.sync.tick()
    b = Side(tmp_path, "B", db, install=False)
    b.tenants().add("acme", limits={"per_hour": 99}, policy={}, now=2.0)   # held before
    b.tenants().add("bonly", limits={}, policy={}, now=2.0)
    key(b, "kb", "ci")                                       # collides with the cluster's
    b.install()
    await b.sync.tick()
    assert b.tenants().get("acme").limits == {"per_hour": 5}
    assert b.tenants().get("bonly") is not None
    assert [r.id for r in b.keys().rows(include_revoked=True)] == ["ka"]
    await a.sync.tick()
    assert a.tables() == b.tables()


async def test_a_new_node_sweeps_in_pages_and_drops_what_the_cluster_lacks(tmp_path, db,
                                                                         monkeypatch):
    monkeypatch.setattr(sync_mod, "PULL_PAGE", 3)
    monkeypatch.setattr(sync_mod, "PUSH_BATCH", 4)
    a = Side(tmp_path, "A", db)
    fill(a)
    for i in range(5):
        a.tenants().add(f"t{i}", limits={}, policy={}, now=1.0)
    await a.sync.tick()
    c = Side(tmp_path, "C", db)
    await c.sync.tick()
    assert c.tables() == a.tables()
    # rows C holds that the cluster removed while C missed the tombstones
    a.tenants().remove("t3", active_credentials=set())
    SqliteWebhookEndpoints(a.state).delete("hook")
    await a.sync.tick()
    from mta.cluster import accounts as shared
    assert await db.call(lambda conn: shared.prune(conn, time.time() + 1)) == 2
    await c.sync.tick()                                      # pruned past: sweeps
    assert c.tables() == a.tables()


async def test_changes_made_while_postgres_is_down_wait_and_go_when_it_returns(tmp_path):
    from tests.support.engines import PostgresServer
    pg = PostgresServer().start()
    try:
        db = await SharedDb.open(pg.new_database(), timeout=2, migrations=MIGRATIONS)
        try:
            a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
            pg.stop()
            a.tenants().add("acme", limits={}, policy={}, now=1.0)
            key(a, "ka", "ci")
            await a.sync.tick()                              # unreachable: nothing lost
            assert [t for _, t, _ in a.ops()] == ["tenants", "api_keys"]
            assert a.tenants().get("acme") is not None       # the local read path works
            pg.start()
            for _ in range(50):
                await a.sync.tick()
                if not a.ops():
                    break
                await asyncio.sleep(0.1)
            await b.sync.tick()
            assert b.tables() == a.tables() and a.ops() == []
        finally:
            await db.close()
    finally:
        pg.destroy()


# -- three real nodes ----------------------------------------------------------------

async def eventually(cond: Any, timeout: float = 10.0) -> None:
    """`until` for an async condition."""
    end = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


async def send(w: Any, node: str, token: str, frm: str = "app@acme.test") -> tuple[int, Any]:
    got = await w.api(node, token, "POST", "/emails",
                      json={"from": frm, "to": ["x@example.net"], "subject": "s", "text": "t"})
    return got


async def test_a_key_made_on_a_sends_on_c_and_revoked_on_b_is_refused_on_a(
        tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        status, made = await w.api("A", w.keys["acme"], "POST", "/api-keys",
                                   json={"name": "deploy"})
        assert status in (200, 201), made
        token = made["token"]

        async def works(node: str) -> bool:
            return (await send(w, node, token))[0] == 200
        await eventually(lambda: works("C"))
        await eventually(lambda: works("B"))                 # B knows it before revoking
        assert await works("A")                              # A caches it as known
        status, body = await w.api("B", w.keys["acme"], "DELETE", f"/api-keys/{made['id']}")
        assert status == 200, body

        async def refused() -> bool:
            return (await send(w, "A", token))[0] in (401, 403)
        await eventually(refused)


async def test_a_tenant_added_on_a_paused_on_b_is_refused_on_c(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        status, body = await w.admin("A", "POST", "/v1/tenants", json={"name": "gamma"})
        assert status in (200, 201), body
        # its key, made by the CLI on A (the stores, as `mta key create --tenant`)
        made, token = StoreKeys(SqliteApiKeys(str(w.states["A"]))).create(
            "gamma-admin", now=time.time())
        SqliteTenants(w.states["A"]).own("credential", made.credential, "gamma", time.time())
        SqliteTenants(w.states["A"]).own("domain", "gamma.test", "gamma", time.time())

        async def sends() -> bool:
            return (await send(w, "C", token, "app@gamma.test"))[0] == 200
        await eventually(sends)

        async def on_b() -> bool:
            return (await w.admin("B", "GET", "/v1/tenants/gamma"))[0] == 200
        await eventually(on_b)
        status, body = await w.admin("B", "POST", "/v1/tenants/gamma/pause",
                                     json={"reason": "unpaid"})
        assert status == 200, body

        async def refused() -> bool:
            status, err = await send(w, "C", token, "app@gamma.test")
            return status == 403 and "paused" in json.dumps(err)
        await eventually(refused)
        assert (await send(w, "C", w.keys["acme"]))[0] == 200   # others unaffected


async def test_a_template_made_on_a_renders_on_b(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        status, tpl = await w.api("A", w.keys["acme"], "POST", "/templates",
                                  json={"name": "Welcome", "alias": "welcome", "html": HTML})
        assert status == 200, tpl
        status, _ = await w.api("A", w.keys["acme"], "POST", "/templates/welcome/publish")
        assert status == 200

        async def renders() -> bool:
            status, out = await w.api("B", w.keys["acme"], "POST", "/templates/welcome/preview",
                                      json={"version": "published",
                                            "variables": {"NAME": "Ann"}})
            return status == 200 and "Hello Ann" in out["html"]
        await eventually(renders)
        status, _ = await w.api("B", w.keys["beta"], "GET", "/templates/welcome")
        assert status == 404                                 # still acme's only


async def test_a_webhook_endpoint_made_on_a_is_run_by_every_node_and_goes_with_it(
        tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        status, hook = await w.api("A", w.keys["acme"], "POST", "/webhooks",
                                   json={"name": "h1", "endpoint": "https://127.0.0.1:9/x",
                                         "events": ["*"]})
        assert status == 200, hook

        def known(node: str) -> bool:
            s = w.nodes[node].webhooks
            return s is not None and s.added("h1") and s.deliverers["h1"].cfg.tenant == "acme"
        await until(lambda: known("B") and known("C"), 10)
        status, listed = await w.api("C", w.keys["acme"], "GET", "/webhooks")
        assert status == 200 and [h["id"] for h in listed["data"]] == ["h1"]
        status, _ = await w.api("B", w.keys["acme"], "DELETE", "/webhooks/h1")
        assert status == 200
        await until(lambda: not any(w.nodes[n].webhooks.added("h1") for n in "AC"), 10)


async def test_seeded_nodes_share_without_conflicts(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        db = w.nodes["A"].cluster.db
        indexes = [SpoolPaths.of(s).index for s in w.states.values()]
        await until(lambda: all(outbox.read_batch(i, 10) == [] for i in indexes)
                    and all(outbox.cursor(i) >= 0 for i in indexes), 10)
        rows = await pg_rows(db)
        assert rows and not any(v[0] for v in rows.values())
        assert sum(1 for k in rows if k[0] == "api_keys") == 3
        assert sum(1 for k in rows if k[0] == "tenants") == 2
