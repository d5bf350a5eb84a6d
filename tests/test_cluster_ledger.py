"""The event ledger shared on PostgreSQL (issue 19): the table, the
forwarder, reads from any node, and the degraded mode (PostgreSQL away:
events wait in the local ledger and all arrive, once, when it is back)."""

import asyncio
import time

import pytest

from mta.cluster import ledger as shared
from mta.cluster.db import SharedDb
from mta.core.stores import EventView
from tests.support.cluster import cluster_world, until


def ev(seq, type_="queued", qid="q1", rcpt="a@x.test", **kw):
    return EventView(seq=seq, at=1000.0 + seq, type=type_, queue_id=qid, recipient=rcpt,
                     credential=kw.pop("credential", "api:k"), detail=kw.pop("detail", {"n": seq}),
                     tags=kw.pop("tags", None), test=kw.pop("test", False))


async def _db(url):
    return await SharedDb.open(url, timeout=5, migrations=shared.MIGRATIONS, max_size=12)


async def test_insert_batch_is_idempotent_and_round_trips(pg_url):
    db = await _db(pg_url)
    try:
        rows = [(ev(1, "received", detail={"email": {"subject": "é"}}, tags=[{"name": "t"}]),
                 "acme"), (ev(2), "acme"), (ev(3, "delivered"), "acme")]
        assert await db.call(lambda c: shared.insert_batch(c, "A", rows)) == 3
        assert await db.call(lambda c: shared.insert_batch(c, "A", rows[1:])) == 0
        # the same local seqs from another node are other events
        assert await db.call(lambda c: shared.insert_batch(c, "B", rows[:1])) == 1
        got = await db.call(lambda c: shared.message_events(c, "q1"))
        assert [e.type for e in got] == ["received", "queued", "delivered", "received"]
        assert got[0].detail == {"email": {"subject": "é"}} and got[0].tags == [{"name": "t"}]
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        assert await db.call(lambda c: shared.node_count(c, "A")) == 3
        last = await db.call(shared.last_seq)
        assert last == got[-1].seq
        only = await db.call(lambda c: shared.events_after(c, 0, 10, types=["delivered"],
                                                           tenant="acme"))
        assert [e.type for e in only] == ["delivered"]
        assert await db.call(lambda c: shared.events_after(c, 0, 10, tenant="beta")) == []
        # pruning everything keeps the newest row: last_seq never goes down
        assert await db.call(lambda c: shared.prune(c, 1e12, 100)) == 3
        assert await db.call(shared.last_seq) == last
    finally:
        await db.close()


async def test_seq_follows_local_order_within_a_batch(pg_url):
    db = await _db(pg_url)
    try:
        rows = [(ev(i, qid="m"), "default") for i in range(1, 501)]
        await db.call(lambda c: shared.insert_batch(c, "A", list(reversed(rows))))
        got = await db.call(lambda c: shared.message_events(c, "m"))
        assert [e.detail["n"] for e in got] == list(range(1, 501))
    finally:
        await db.close()


async def test_a_reader_paging_by_seq_never_misses_an_event(pg_url):
    """Four nodes forward batches at once while a reader follows the table
    by seq, as a webhook endpoint does: it must see every event."""
    db = await _db(pg_url)
    per_node, batch = 1500, 50
    done = asyncio.Event()

    async def forward(node):
        for start in range(1, per_node + 1, batch):
            rows = [(ev(i, qid=f"{node}{i}"), "default") for i in range(start, start + batch)]
            await db.call(lambda c, rows=rows: shared.insert_batch(c, node, rows))

    async def follow():
        seen, cursor = [], 0
        while True:
            finished = done.is_set()
            page = await db.call(lambda c, at=cursor: shared.events_after(c, at, 200))
            seen += [e.queue_id for e in page]
            cursor = page[-1].seq if page else cursor
            if finished and not page:
                return seen
            await asyncio.sleep(0)

    try:
        reader = asyncio.create_task(follow())
        await asyncio.gather(*(forward(n) for n in "ABCD"))
        done.set()
        seen = await reader
        assert len(seen) == len(set(seen)) == 4 * per_node
    finally:
        await db.close()


async def test_leases_and_cursors(pg_url):
    db = await _db(pg_url)
    try:
        assert await db.call(lambda c: shared.webhook_state(c, "h")) is None
        await db.call(lambda c: shared.set_webhook_state(c, "h", {"cursor": 7}))
        await db.call(lambda c: shared.set_webhook_state(c, "h", {"attempts": 2,
                                                                  "last_error": "x"}))
        st = await db.call(lambda c: shared.webhook_state(c, "h"))
        assert (st["cursor"], st["attempts"], st["last_error"], st["state"]) == (7, 2, "x", "ok")
        with pytest.raises(ValueError):
            await db.call(lambda c: shared.set_webhook_state(c, "h", {"owner": "x"}))
        assert await db.call(lambda c: shared.take_lease(c, "h", "A", 0.5))
        assert await db.call(lambda c: shared.take_lease(c, "h", "A", 0.5))      # renew
        assert not await db.call(lambda c: shared.take_lease(c, "h", "B", 0.5))
        t0 = time.monotonic()
        await until(lambda: time.monotonic() - t0 > 0.6, 5)
        assert await db.call(lambda c: shared.take_lease(c, "h", "B", 5))        # expired
        assert not await db.call(lambda c: shared.take_lease(c, "h", "A", 5))
        await db.call(lambda c: shared.release_lease(c, "h", "B"))
        assert await db.call(lambda c: shared.take_lease(c, "h", "A", 5))        # released
        assert (await db.call(shared.leases))["h"][0] == "A"
    finally:
        await db.close()


async def test_local_pruning_never_passes_the_forward_cursor(tmp_path):
    """Events not yet forwarded to the shared ledger stay, however old."""
    from mta.core.envelope import LedgerEvent
    from mta.spool import Spool
    from mta.spool.ledger_sql import HOLD_CURSOR
    s = await Spool.open(tmp_path, now=1000.0)
    try:
        await s.ledger.append_events([LedgerEvent("rejected", 1000.0 + i) for i in range(6)])
        seqs = [e.seq for e in await s.ledger.events_after(0, 100)]
        await s.ledger.set_webhook_state(HOLD_CURSOR, cursor=seqs[2])
        assert await s.ledger.prune_events(1e12) == 3
        assert [e.seq for e in await s.ledger.events_after(0, 100)] == seqs[3:]
        await s.ledger.set_webhook_state(HOLD_CURSOR, cursor=seqs[-1])
        assert await s.ledger.prune_events(1e12) == 3
    finally:
        await s.close()


# -- end to end: three nodes -------------------------------------------------------------

def _mail(to, subject="hi"):
    return {"from": "app@acme.test", "to": [to], "subject": subject, "text": "hello"}


async def test_a_message_accepted_on_c_shows_its_timeline_from_a(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        acme = w.keys["acme"]
        status, body = await w.api("C", acme, "POST", "/emails",
                                   json=_mail("user@example.net", "from C"))
        assert status == 200, body
        qid = body["id"]
        assert await w.nodes["A"].spool.get_message(qid) is None     # C holds it

        async def on_a():
            status, got = await w.api("A", acme, "GET", f"/emails/{qid}")
            return got if status == 200 and got["last_event"] == "delivered" else None
        got = None
        end = time.monotonic() + 15
        while got is None and time.monotonic() < end:
            got = await on_a()
            await asyncio.sleep(0.1)
        assert got is not None, "node A never showed the message as delivered"
        assert got["id"] == qid and got["subject"] == "from C"
        assert got["from"] == "app@acme.test" and got["to"] == ["user@example.net"]
        local = await w.api("C", acme, "GET", f"/emails/{qid}")
        assert {k: v for k, v in local[1].items() if k not in ("html", "text")} == \
            {k: v for k, v in got.items() if k not in ("html", "text")}

        status, events = await w.api("A", acme, "GET", f"/emails/{qid}/events")
        assert status == 200
        assert [e["type"] for e in events["data"]] == ["received", "queued", "delivered"]

        status, admin = await w.admin("A", "GET", f"/v1/messages/{qid}/events")
        assert status == 200, admin
        assert [e["type"] for e in admin["events"]] == ["received", "queued", "delivered"]
        assert [e["seq"] for e in admin["events"]] == sorted(e["seq"] for e in admin["events"])

        # another tenant's key, and an unknown id, are 404 from any node
        assert (await w.api("A", w.keys["beta"], "GET", f"/emails/{qid}"))[0] == 404
        assert (await w.api("A", w.keys["beta"], "GET", f"/emails/{qid}/events"))[0] == 404
        assert (await w.api("A", acme, "GET", "/emails/nosuchid0000"))[0] == 404
        assert (await w.admin("A", "GET", "/v1/messages/nosuchid0000/events"))[0] == 404


async def _local_seqs(d):
    return {e.seq for e in await d.spool.ledger.events_after(0, 100000)}


async def _shared_seqs(db, node):
    async def read(c):
        rows = await c.fetch("SELECT local_seq FROM events WHERE node = $1", node)
        return [r["local_seq"] for r in rows]
    return await db.call(read)


async def test_postgres_away_events_wait_and_all_arrive_once(tmp_path, redis_url):
    from tests.support.engines import MISSING_ENGINES, PostgresServer
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    pg = await asyncio.to_thread(PostgresServer().start)
    try:
        url = await asyncio.to_thread(pg.new_database)
        async with cluster_world(tmp_path, url, redis_url) as w:
            await asyncio.to_thread(pg.stop)
            acme = w.keys["acme"]
            ids = []
            for i, node in enumerate("ABC"):
                status, body = await w.api(node, acme, "POST", "/emails",
                                           json=_mail(f"r{i}@example.net"))
                assert status == 200, body
                ids.append(body["id"])
                reply = await w.smtp_send(node, "ops@relay.test", [f"s{i}@example.org"],
                                          b"Subject: s\r\n\r\nbody\r\n")
                assert reply[1].startswith("2") or "OK" in reply[1], reply
            await until(lambda: w.sink.transactions >= 6, 20)     # delivered meanwhile
            # another node's message cannot be looked up now: 4xx, not 404 or 5xx
            status, body = await w.api("A", acme, "GET", f"/emails/{ids[1]}")
            assert status == 429 and body["name"] == "ledger_unavailable", body
            status, body = await w.admin("A", "GET", f"/v1/messages/{ids[1]}/events")
            assert status == 429, body
            assert (await w.api("B", acme, "GET", f"/emails/{ids[1]}"))[0] == 200   # B's own
            await asyncio.to_thread(pg.start)
            db = await _db(url)
            try:
                for name, d in w.nodes.items():
                    want = await _local_seqs(d)

                    async def complete(name=name, want=want):
                        got = await _shared_seqs(db, name)
                        return len(got) == len(set(got)) and set(got) == want
                    end = time.monotonic() + 20
                    while not await complete():
                        assert time.monotonic() < end, f"node {name}: ledger incomplete"
                        await asyncio.sleep(0.1)
                types = [e.type for e in await db.call(lambda c: shared.message_events(c, ids[0]))]
                assert types[:2] == ["received", "queued"] and "delivered" in types
            finally:
                await db.close()
    finally:
        await asyncio.to_thread(pg.destroy)
