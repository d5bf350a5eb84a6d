"""One suppression list across the cluster (issue 19): the local outbox,
push/pull through the real PostgreSQL, and three real daemons where an
entry added through one node refuses at another."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiosmtplib
import pytest

from mta.cluster import suppressions as shared
from mta.cluster.db import SharedDb
from mta.core.clock import SystemClock
from mta.runtime import cluster_suppressions as sync_mod
from mta.runtime.cluster import MIGRATIONS
from mta.runtime.cluster_suppressions import ClusterSuppressions
from mta.spool import suppression_admin as admin
from mta.spool import suppression_outbox as outbox
from mta.spool.layout import SpoolPaths
from tests.support.cluster import cluster_world, until

# -- helpers -------------------------------------------------------------------------


class Side:
    """One node's share without a daemon: its state dir, its index with the
    outbox installed, and the real sync over a real SharedDb."""

    def __init__(self, tmp: Path, name: str, db: SharedDb):
        self.state = tmp / name
        self.index = SpoolPaths.of(self.state).index
        self.index.parent.mkdir(parents=True)
        self.writer = outbox.install(self.index)
        node = SimpleNamespace(name=name, db=db, d=SimpleNamespace(clock=SystemClock(),
                                                                   spool=None))
        self.sync = ClusterSuppressions(node, self.index, self.writer)

    def keys(self) -> dict[tuple[str, str], str]:
        return {(v.address, v.scope): v.reason
                for v in admin.list_entries(self.state, include_expired=True)}

    def ops(self) -> list[tuple[str, str]]:
        return [(r[1], r[2]) for r in outbox.read_batch(self.index, 1000)]


@pytest.fixture
async def db(pg_url):
    d = await SharedDb.open(pg_url, timeout=5, migrations=MIGRATIONS)
    yield d
    await d.close()


async def pg_rows(db: SharedDb) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = await db.call(lambda c: c.fetch("SELECT * FROM suppressions"))
    return {(r["address"], r["scope"]): (r["reason"], r["deleted"], r["origin"], r["seq"])
            for r in rows}


# -- the outbox ------------------------------------------------------------------------

def test_outbox_records_every_write_and_seeds_what_was_there(tmp_path):
    state = tmp_path / "s"
    admin.add(state, "old@x.test", now=1.0)                  # before the cluster
    index = SpoolPaths.of(state).index
    w = outbox.install(index)
    assert outbox.install(index) == w                         # idempotent, same writer
    admin.add(state, "a@x.test", now=2.0)
    admin.add(state, "a@x.test", reason="complaint", now=3.0)  # replace
    assert admin.remove(state, "a@x.test")
    csv = tmp_path / "l.csv"
    csv.write_text("b@x.test,hard_bounce,acme\n")
    assert admin.import_csv(state, csv, now=4.0) == (1, 0)
    db = sqlite3.connect(index)                               # an automatic (upsert) write
    db.execute("INSERT INTO suppressions (address, scope, reason, created) VALUES "
               "('c@x.test', '', 'soft_bounce', 5) ON CONFLICT DO NOTHING")
    db.execute("UPDATE suppressions SET reason = 'hard_bounce' WHERE address = 'c@x.test'")
    db.commit()
    db.close()
    rows = outbox.read_batch(index, 100)
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("seed", "old@x.test", "", "manual"),
        ("upsert", "a@x.test", "", "manual"),
        ("upsert", "a@x.test", "", "complaint"),
        ("delete", "a@x.test", "", ""),
        ("upsert", "b@x.test", "acme", "hard_bounce"),
        ("upsert", "c@x.test", "", "soft_bounce"),
        ("upsert", "c@x.test", "", "hard_bounce")]
    assert outbox.delete_through(index, rows[2][0]) == 3
    assert [r[0] for r in outbox.read_batch(index, 100)] == [r[0] for r in rows[3:]]


def test_pulled_rows_leave_a_pending_local_change_alone(tmp_path):
    state = tmp_path / "s"
    index = SpoolPaths.of(state).index
    index.parent.mkdir(parents=True)
    outbox.install(index)
    admin.add(state, "mine@x.test", reason="complaint", now=1.0)      # not pushed yet
    before = outbox.read_batch(index, 100)
    remote = [("mine@x.test", "", "manual", "", "", 2.0, None, False, 7),
              ("new@x.test", "", "manual", "", "", 2.0, None, False, 8)]
    assert outbox.apply_remote(index, remote, 8) == 1
    assert {v.address: v.reason for v in admin.list_entries(state)} == {
        "mine@x.test": "complaint", "new@x.test": "manual"}
    assert outbox.read_batch(index, 100) == before              # no echo of new@
    assert outbox.cursor(index) == 8


# -- push / pull through PostgreSQL ---------------------------------------------------

async def test_push_pull_round_trip_without_echo(tmp_path, db):
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    admin.add(a.state, "x@x.test", now=1.0)
    admin.add(a.state, "y@x.test", scope="acme", reason="unsubscribed", now=1.0)
    await a.sync.tick()
    assert a.ops() == []                                        # pushed, then forgotten
    rows = await pg_rows(db)
    assert {k: v[:3] for k, v in rows.items()} == {
        ("x@x.test", ""): ("manual", False, "A"),
        ("y@x.test", "acme"): ("unsubscribed", False, "A")}
    await b.sync.tick()
    assert b.keys() == {("x@x.test", ""): "manual", ("y@x.test", "acme"): "unsubscribed"}
    assert b.ops() == []                                        # pulled: nothing to push back
    await b.sync.tick()
    await a.sync.tick()
    assert await pg_rows(db) == rows                            # no write bounced back


async def test_removal_is_a_tombstone_that_removes_everywhere(tmp_path, db):
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    admin.add(a.state, "x@x.test", now=1.0)
    await a.sync.tick()
    await b.sync.tick()
    assert admin.remove(b.state, "x@x.test")
    await b.sync.tick()
    assert (await pg_rows(db))[("x@x.test", "")][1:3] == (True, "B")
    await a.sync.tick()
    assert a.keys() == {} and a.ops() == []
    admin.add(b.state, "x@x.test", reason="complaint", now=2.0)  # back again
    await b.sync.tick()
    await a.sync.tick()
    assert a.keys() == {("x@x.test", ""): "complaint"}


async def test_pages_by_seq_and_batches(tmp_path, db, monkeypatch):
    monkeypatch.setattr(sync_mod, "PUSH_BATCH", 4)
    monkeypatch.setattr(sync_mod, "PULL_PAGE", 3)
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    await b.sync.tick()                                         # b synced (empty list)
    for i in range(10):
        admin.add(a.state, f"u{i}@x.test", now=1.0)
    assert await a.sync.push() == 10
    seqs = sorted(v[3] for v in (await pg_rows(db)).values())
    assert seqs == list(range(seqs[0], seqs[0] + 10))           # one seq per write, in order
    assert await b.sync.pull() == 10
    assert len(b.keys()) == 10
    assert outbox.cursor(b.index) == seqs[-1]
    c = Side(tmp_path, "C", db)                                 # a new node: sweeps in pages
    await c.sync.tick()
    assert c.keys() == b.keys()


async def test_a_joining_node_pushes_its_list_but_the_cluster_wins(tmp_path, db):
    a = Side(tmp_path, "A", db)
    admin.add(a.state, "both@x.test", reason="complaint", now=1.0)
    await a.sync.tick()
    state = tmp_path / "B"
    admin.add(state, "both@x.test", reason="manual", now=2.0)   # held before joining
    admin.add(state, "only-b@x.test", now=2.0)
    b = Side.__new__(Side)
    b.state, b.index = state, SpoolPaths.of(state).index
    b.writer = outbox.install(b.index)
    b.sync = ClusterSuppressions(SimpleNamespace(name="B", db=db, d=a.sync.node.d),
                                 b.index, b.writer)
    await b.sync.tick()
    assert b.keys() == {("both@x.test", ""): "complaint", ("only-b@x.test", ""): "manual"}
    await a.sync.tick()
    assert a.keys() == b.keys()


async def test_a_retried_push_never_replays_an_old_change(tmp_path, db):
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    admin.add(a.state, "x@x.test", now=1.0)
    batch = outbox.read_batch(a.index, 100)
    # PostgreSQL commits, then the node dies before forgetting the batch.
    await db.call(lambda c: shared.push(c, "A", a.writer, batch, time.time()))
    await b.sync.tick()
    assert admin.remove(b.state, "x@x.test")
    await b.sync.tick()
    await a.sync.tick()                                         # the same batch again
    assert (await pg_rows(db))[("x@x.test", "")][1] is True     # still removed
    assert a.ops() == [] and a.keys() == {}


async def test_pruned_tombstones_make_a_late_node_sweep(tmp_path, db):
    a, b = Side(tmp_path, "A", db), Side(tmp_path, "B", db)
    admin.add(a.state, "x@x.test", now=1.0)
    admin.add(a.state, "keep@x.test", now=1.0)
    await a.sync.tick()
    await b.sync.tick()
    assert admin.remove(a.state, "x@x.test")
    await a.sync.tick()
    assert await db.call(lambda c: shared.prune(c, time.time() + 1)) == 1
    assert ("x@x.test", "") not in await pg_rows(db)
    await b.sync.tick()                                         # missed the tombstone
    assert b.keys() == {("keep@x.test", ""): "manual"}
    assert outbox.cursor(b.index) == await db.call(shared.high_water)


# -- three real nodes ----------------------------------------------------------------

async def rcpt(w: Any, node: str, address: str) -> tuple[int, str]:
    """The reply to RCPT TO on `node`'s submission listener."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=w.smtp_port(node), start_tls=False,
                           timeout=10)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail("app@example.org")
        r = await smtp.execute_command(f"RCPT TO:<{address}>".encode())
        return r.code, r.message
    finally:
        smtp.close()


async def eventually(w: Any, node: str, address: str, refused: bool,
                     timeout: float = 10.0) -> tuple[int, str]:
    end = time.monotonic() + timeout
    while True:
        code, text = await rcpt(w, node, address)
        if (code >= 500) == refused:
            return code, text
        assert time.monotonic() < end, f"{node}: RCPT {address} -> {code} {text}"
        await asyncio.sleep(0.1)


async def test_added_on_a_refuses_at_b_removed_on_b_accepted_at_c(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        addr = "gone@example.net"
        assert (await rcpt(w, "B", addr))[0] == 250
        status, body = await w.api("A", w.keys["default"], "POST", "/suppressions",
                                   json={"email": addr, "reason": "manual"})
        assert status == 200, body
        code, text = await eventually(w, "B", addr, refused=True)
        assert code == 550 and "5.1.1" in text and "suppressed" in text
        status, body = await w.api("B", w.keys["default"], "DELETE", f"/suppressions/{addr}")
        assert status == 200, body
        await eventually(w, "C", addr, refused=False)
        await eventually(w, "A", addr, refused=False)


async def test_a_bounce_on_one_node_suppresses_on_the_others(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        addr = "reject-1@example.net"
        await w.smtp_send("A", "app@example.org", [addr], b"Subject: t\r\n\r\nhi\r\n")
        code, text = await eventually(w, "C", addr, refused=True, timeout=15)
        assert "hard bounce" in text


async def test_added_while_postgres_is_down_is_pushed_when_it_returns(tmp_path, redis_url):
    from tests.support.engines import PostgresServer
    pg = PostgresServer().start()
    try:
        async with cluster_world(tmp_path, pg.new_database(), redis_url, n=2) as w:
            pg.stop()
            addr = "later@example.net"
            admin.add(w.states["A"], addr, now=time.time())           # the CLI, meanwhile
            code, _ = await eventually(w, "A", addr, refused=True)    # local check works
            index = SpoolPaths.of(w.states["A"]).index
            await until(lambda: w.nodes["A"].cluster.degraded()["database"], 10)
            assert [r[2] for r in outbox.read_batch(index, 10)] == [addr]   # kept
            assert (await rcpt(w, "B", addr))[0] == 250
            pg.start()
            await eventually(w, "B", addr, refused=True, timeout=20)
            await until(lambda: outbox.read_batch(index, 10) == [], 10)
    finally:
        pg.destroy()
