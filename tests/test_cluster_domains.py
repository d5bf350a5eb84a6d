"""Sending domains, DKIM keys and SMTP credentials shared across nodes
(issue 19): sealed in PostgreSQL, applied to each node's local stores, and
end to end — a domain added through node A's API signs on node B, a user
added on node A authenticates on node C."""

import asyncio
import logging
import os
import re
import time
from types import SimpleNamespace

import aiosmtplib
import dkim
import pytest

from mta.cluster import documents
from mta.cluster.db import SharedDb
from mta.cluster.secrets import SecretBox
from mta.core import SystemClock
from mta.domains.model import DomainState, NewKey, SelectorStatus
from mta.domains.sqlite_store import SqliteDomainStore
from mta.mail.dkim import generate_key
from mta.runtime.cluster_credentials import LocalCredentials
from mta.runtime.cluster_docs import DocSync, SyncState
from mta.runtime.cluster_domains import LocalDomains
from mta.runtime.users import open_credentials
from mta.server.credentials import CredentialStore
from tests.support.cluster import cluster_world, until
from tests.support.mtahelpers import make_message, no_verify_context


def _keys(base):
    return [NewKey(base, "rsa-sha256", generate_key("rsa-sha256")[0], SelectorStatus.ACTIVE),
            NewKey(f"{base}-ed", "ed25519-sha256", generate_key("ed25519-sha256")[0],
                   SelectorStatus.ACTIVE)]


class Side:
    """One node's domain store and its sync against the shared database
    (the node object holds only what DocSync reads: name, db, clock)."""

    def __init__(self, root, name, db, box):
        root.mkdir(parents=True, exist_ok=True)
        self.store = SqliteDomainStore(root)
        self.node = SimpleNamespace(name=name, db=db, d=SimpleNamespace(clock=SystemClock()))
        self.sync = DocSync(self.node, LocalDomains(self.store, box), SyncState(root))

    def pems(self, name):
        d = self.store.get(name)
        return {s.selector: self.store.key_path(name, s.selector, s.algorithm).read_bytes()
                for s in d.selectors}


@pytest.fixture
async def shared_db(pg_url):
    db = await SharedDb.open(pg_url, timeout=5, migrations=documents.MIGRATIONS)
    yield db
    await db.close()


async def test_keys_travel_sealed_and_open_on_another_node(tmp_path, shared_db):
    box = SecretBox(os.urandom(32))
    a = Side(tmp_path / "a", "A", shared_db, box)
    b = Side(tmp_path / "b", "B", shared_db, box)
    a.store.add_domain("news.acme.test", time.time(), _keys("s1"))
    await a.sync.tick()
    # What PostgreSQL holds is not the PEM: no armour, no piece of the key body.
    dump = " ".join(r[0] for r in await shared_db.pool.fetch(
        "SELECT doc::text FROM sending_domains"))
    assert "news.acme.test" in dump and "PRIVATE KEY" not in dump
    for pem in a.pems("news.acme.test").values():
        body = b"".join(pem.splitlines()[1:-1]).decode()
        assert all(body[i:i + 24] not in dump for i in range(0, len(body) - 24, 24))
    await b.sync.tick()
    got = b.store.get("news.acme.test")
    assert got is not None and got.state is DomainState.PENDING
    assert b.pems("news.acme.test") == a.pems("news.acme.test")
    assert ([k.selector for k in b.store.signing_keys("news.acme.test")]
            == [k.selector for k in a.store.signing_keys("news.acme.test")])
    # A check's outcome and a rotation on B reach A; nothing bounces back.
    b.store.set_state("news.acme.test", DomainState.VERIFIED, now=time.time(),
                      failure_reason=None, next_check=time.time() + 86400, check_attempts=0)
    b.store.add_selector("news.acme.test", _keys("s2")[0]._replace(
        status=SelectorStatus.PENDING), time.time())
    await b.sync.tick()
    await a.sync.tick()
    got = a.store.get("news.acme.test")
    assert got.state is DomainState.VERIFIED
    assert {s.selector: s.status for s in got.selectors}["s2"] is SelectorStatus.PENDING
    assert a.pems("news.acme.test") == b.pems("news.acme.test")
    seq = await shared_db.pool.fetchval("SELECT seq FROM sending_domains")
    await a.sync.tick()
    await b.sync.tick()
    assert await shared_db.pool.fetchval("SELECT seq FROM sending_domains") == seq
    # A removal on A removes it on B (row and key files).
    a.store.remove("news.acme.test")
    await a.sync.tick()
    await b.sync.tick()
    assert b.store.get("news.acme.test") is None
    assert not (b.store.key_root / "news.acme.test").exists()


async def test_a_wrong_secret_is_reported_and_loses_nothing(tmp_path, shared_db, caplog):
    box = SecretBox(os.urandom(32))
    a = Side(tmp_path / "a", "A", shared_db, box)
    a.store.add_domain("acme.test", time.time(), _keys("s1"))
    await a.sync.tick()
    wrong = SecretBox(os.urandom(32))
    c = Side(tmp_path / "c", "C", shared_db, wrong)
    with caplog.at_level(logging.ERROR, logger="mta.cluster"):
        await c.sync.tick()
        await c.sync.tick()
    refused = [r.getMessage() for r in caplog.records if "cluster_sync_refused" in r.getMessage()]
    assert len(refused) == 1                                   # logged once, not per tick
    assert box.key_id in refused[0] and wrong.key_id in refused[0]
    assert "same secret file" in refused[0]
    assert c.store.get("acme.test") is None
    # The operator installs the right file: the domain arrives, keys intact.
    fixed = Side(tmp_path / "c", "C", shared_db, box)
    await fixed.sync.tick()
    assert fixed.pems("acme.test") == a.pems("acme.test")


async def test_offline_changes_are_pushed_and_a_joining_node_does_not_overwrite(
        tmp_path, shared_db):
    box = SecretBox(os.urandom(32))
    a = Side(tmp_path / "a", "A", shared_db, box)
    a.store.add_domain("shared.test", time.time(), _keys("a1"))
    await a.sync.tick()
    # B made domains before it ever synced (`mta domain add` with no daemon):
    # its own name reaches the cluster, a name the cluster has already is
    # replaced by the cluster's copy.
    b = Side(tmp_path / "b", "B", shared_db, box)
    b.store.add_domain("shared.test", time.time(), _keys("b1"))
    b.store.add_domain("only-b.test", time.time(), _keys("b2"))
    await b.sync.tick()
    assert b.pems("shared.test") == a.pems("shared.test")
    await a.sync.tick()
    assert a.pems("only-b.test") == b.pems("only-b.test")
    # A change made on A while its daemon is "stopped" goes at the next tick.
    a.store.remove("only-b.test")
    a2 = Side(tmp_path / "a", "A", shared_db, box)
    await a2.sync.tick()
    await b.sync.tick()
    assert b.store.get("only-b.test") is None


async def test_credentials_travel_as_hashes(tmp_path, shared_db):
    def side(name):
        root = tmp_path / name
        root.mkdir()
        store = CredentialStore(root / "credentials.json")
        node = SimpleNamespace(name=name, db=shared_db, d=SimpleNamespace(clock=SystemClock()))
        return store, DocSync(node, LocalCredentials(store), SyncState(root))
    sa, ya = side("A")
    sb, yb = side("B")
    sa.add("app", "app-password-123", domains=["acme.test"])
    await ya.tick()
    dump = " ".join(r[0] for r in await shared_db.pool.fetch(
        "SELECT doc::text FROM smtp_credentials"))
    assert "scrypt" in dump and "app-password-123" not in dump
    await yb.tick()
    assert sb.verify("app", "app-password-123") and not sb.verify("app", "app-password-12x")
    assert sb.domains("app") == ("acme.test",)
    sb.passwd("app", "new-password-456")
    await yb.tick()
    await ya.tick()
    assert sa.verify("app", "new-password-456") and not sa.verify("app", "app-password-123")
    sa.remove("app")
    await ya.tick()
    await yb.tick()
    assert sb.names() == []


# -- end to end: three real daemons --------------------------------------------------


async def _poll(fn, timeout=15.0):
    end = time.monotonic() + timeout
    while True:
        got = await fn()
        if got:
            return got
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


async def test_domain_added_on_a_signs_on_b(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        acme = w.keys["acme"]
        status, body = await w.api("A", acme, "POST", "/domains", json={"name": "news.acme.test"})
        assert status in (200, 201), body
        a_store = SqliteDomainStore(w.states["A"])
        selectors = {s.selector for s in a_store.get("news.acme.test").selectors}

        async def listed_on_b():
            st, rows = await w.api("B", acme, "GET", "/domains")
            assert st == 200, rows
            return [r for r in rows["data"] if r["name"] == "news.acme.test"]
        await _poll(listed_on_b)
        # beta cannot see it on B either (the tenant rules hold there)
        _, rows = await w.api("B", w.keys["beta"], "GET", "/domains")
        assert all(r["name"] != "news.acme.test" for r in rows["data"])
        await until(lambda: w.nodes["B"].domains.keys_for("news.acme.test"))
        st, sent = await w.api("B", acme, "POST", "/emails", json={
            "from": "app@news.acme.test", "to": ["ok-dkim@rcpt.test"], "subject": "signed",
            "text": "hello from B"})
        assert st == 200, sent
        await w.sink.wait_for(1, 15)
        data = w.sink.messages[-1].data
        sigs = re.findall(rb"^DKIM-Signature:(.*(?:\r?\n[ \t].*)*)", data, re.M | re.I)
        assert sigs, data[:500]
        tags = [dict(t.strip().split(b"=", 1) for t in re.sub(rb"\s+", b"", s).split(b";") if t)
                for s in sigs]
        assert {t[b"d"] for t in tags} == {b"news.acme.test"}
        assert {t[b"s"].decode() for t in tags} == selectors
        # and the signature verifies against the key node A publishes

        def dns(name, timeout=5):
            sel = name.decode().split("._domainkey.")[0]
            s = next(s for s in a_store.get("news.acme.test").selectors if s.selector == sel)
            return a_store.public_key(s).encode()
        assert dkim.verify(data, dnsfunc=dns)


async def test_user_added_on_a_authenticates_on_c(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        # what `mta user add` does on node A's host
        open_credentials(w.states["A"] / "credentials.json").add("app-c", "app-c-password-1")
        c_file = w.states["C"] / "credentials.json"
        await until(lambda: c_file.exists() and "app-c" in c_file.read_text())
        port = w.smtp_port("C")
        msg = make_message("app@users.test", ["ok-auth@rcpt.test"])
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                   tls_context=no_verify_context(), timeout=15) as s:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await s.login("app-c", "wrong-password-1")
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                                   tls_context=no_verify_context(), timeout=15) as s:
            await s.login("app-c", "app-c-password-1")
            _, resp = await s.sendmail("app@users.test", ["ok-auth@rcpt.test"], msg)
            assert "queued as" in resp
        assert "app-c-password-1" not in c_file.read_text()
