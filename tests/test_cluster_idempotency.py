"""Idempotency keys shared by the nodes of a cluster (issue 19).

Real daemons sharing a real PostgreSQL and Redis (tests/support/cluster.py)
and one SMTP sink: an Idempotency-Key used on node A and then on node B
makes one message (B answers A's id and queues nothing), so do two requests
racing on A and B; another key makes another message; the same key with
another body is a 409 on any node; a claim left by a dead node is taken
over; with PostgreSQL down a request with a key is refused 429 (the shared
decision cannot be made) while one without a key is accepted.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from mta.api.routes import fingerprint
from mta.cluster import idempotency as shared
from mta.runtime import cluster_idempotency
from tests.support.cluster import ClusterWorld, cluster_world

BODY = {"from": "app@acme.test", "to": "ok-idem@rcpt.test", "subject": "once", "text": "hi"}


async def post(w: ClusterWorld, node: str, key: str | None, body: object = None,
               path: str = "/emails") -> tuple[int, dict]:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await w.api(node, w.keys["acme"], "POST", path, json=BODY if body is None else body,
                       headers=headers)



async def test_a_key_sent_to_a_then_b_makes_one_message(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        status, first = await post(w, "A", "order-17")
        assert status == 200, first
        status, again = await post(w, "B", "order-17")
        assert status == 200, again
        assert again["id"] == first["id"]
        status, third = await post(w, "C", "order-17")
        assert (status, third["id"]) == (200, first["id"])
        assert await w.queued_everywhere() == [first["id"]]
        # another key is another message, wherever it is sent
        status, other = await post(w, "B", "order-18")
        assert status == 200 and other["id"] != first["id"]
        assert await w.queued_everywhere() == sorted([first["id"], other["id"]])
        await w.sink.wait_for(2, timeout=20)
        assert sorted(m.rcpt_tos[0] for m in w.sink.messages) == ["ok-idem@rcpt.test"] * 2


async def test_a_key_with_another_body_is_refused_on_another_node(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        status, first = await post(w, "A", "k-body")
        assert status == 200
        status, doc = await post(w, "B", "k-body", {**BODY, "subject": "changed"})
        assert (status, doc["name"]) == (409, "invalid_idempotent_request")
        assert await w.queued_everywhere() == [first["id"]]


async def test_a_batch_key_answers_the_same_ids_on_another_node(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        batch = [BODY, {**BODY, "subject": "twice"}]
        status, first = await post(w, "A", "batch-1", batch, "/emails/batch")
        assert status == 200, first
        status, again = await post(w, "B", "batch-1", batch, "/emails/batch")
        assert status == 200 and again == first
        assert await w.queued_everywhere() == sorted(d["id"] for d in first["data"])


async def test_racing_requests_on_two_nodes_make_one_message(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        for n in range(3):
            results = await asyncio.gather(*(post(w, node, f"race-{n}")
                                             for node in ("A", "B", "C")))
            assert [r[0] for r in results] == [200, 200, 200], results
            assert len({r[1]["id"] for r in results}) == 1
        assert len(await w.queued_everywhere()) == 3


async def _sql(url: str, query: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def test_a_dead_nodes_claim_is_taken_over_and_a_live_one_waited_for(
        tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        scope = "api:acme-admin"
        fp = fingerprint(BODY)
        # node Z claimed "dead-1" two minutes ago and was never heard from again
        await _sql(pg_url, "INSERT INTO idempotency (scope, key, fingerprint, state, node, "
                   "token, created) VALUES ($1, 'dead-1', $2, 'pending', 'Z', 't0', $3)",
                   scope, fp, time.time() - 120)
        status, doc = await post(w, "A", "dead-1")
        assert status == 200, doc
        assert await w.queued_everywhere() == [doc["id"]]
        # node B (alive) holds "live-1" now: A waits for it and answers its id
        await _sql(pg_url, "INSERT INTO idempotency (scope, key, fingerprint, state, node, "
                   "token, created) VALUES ($1, 'live-1', $2, 'pending', 'B', 't1', $3)",
                   scope, fp, time.time())
        waiting = asyncio.ensure_future(post(w, "A", "live-1"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await _sql(pg_url, "UPDATE idempotency SET state = 'done', queue_ids = '[\"b-id\"]' "
                   "WHERE key = 'live-1'")
        status, doc2 = await waiting
        assert (status, doc2["id"]) == (200, "b-id")
        assert await w.queued_everywhere() == [doc["id"]]


async def test_a_live_claim_not_finished_in_time_is_a_409(tmp_path, pg_url, redis_url,
                                                          monkeypatch):
    monkeypatch.setattr(cluster_idempotency, "WAIT", 0.3)
    async with cluster_world(tmp_path, pg_url, redis_url, n=2) as w:
        fp = fingerprint(BODY)
        await _sql(pg_url, "INSERT INTO idempotency (scope, key, fingerprint, state, node, "
                   "token, created) VALUES ('api:acme-admin', 'slow-1', $1, 'pending', 'B', "
                   "'t', $2)", fp, time.time())
        status, doc = await post(w, "A", "slow-1")
        assert (status, doc["name"]) == (409, "concurrent_idempotent_requests")
        assert await w.queued_everywhere() == []



async def test_with_postgres_down_a_key_is_refused_429_and_no_key_accepted(
        tmp_path, own_pg, redis_url):
    url = own_pg.new_database()
    async with cluster_world(tmp_path, url, redis_url, n=2) as w:
        own_pg.stop()
        status, doc = await post(w, "A", "pg-down")
        assert (status, doc["name"]) == (429, "idempotency_unavailable"), doc
        status, plain = await post(w, "A", None)
        assert status == 200, plain
        own_pg.start()
        got: dict[str, object] = {}

        async def retried() -> bool:
            got["r"] = await post(w, "A", "pg-down")
            return got["r"][0] == 200

        await _until_async(retried)
        first = got["r"][1]
        status, again = await post(w, "B", "pg-down")
        assert (status, again["id"]) == (200, first["id"])
        assert sorted(await w.queued_everywhere()) == sorted([plain["id"], first["id"]])


async def _until_async(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


def test_judge_says_what_a_request_that_lost_the_insert_does():
    def row(state="pending", fp="f", node="B", created=1000.0, alive=True):
        return shared.Row(fp, ("q1",) if state == "done" else (), state, node, "t", created,
                          alive)
    judge = shared.judge
    kw = {"window": 3600.0, "node": "A", "mine": False}
    assert judge(row("done"), "f", 1010.0, **kw) == ("done", ("q1",))
    assert judge(row("done"), "g", 1010.0, **kw) == ("differs", ())
    assert judge(row("done"), "f", 1000.0 + 3601, **kw) == ("take", ())     # past the window
    assert judge(row(), "f", 1010.0, **kw) == ("wait", ())                  # a live claim
    assert judge(row(), "g", 1010.0, **kw) == ("differs", ())
    assert judge(row(alive=False), "f", 1030.0, **kw) == ("wait", ())       # young: wait
    assert judge(row(alive=False), "f", 1000.0 + shared.STALE + 1, **kw) == ("take", ())
    assert judge(row(), "f", 1000.0 + shared.STALE_MAX + 1, **kw) == ("take", ())
    # this node's own claim that nothing here is finishing: it died with a restart
    assert judge(row(node="A"), "f", 1010.0, **kw) == ("take", ())
    assert judge(row(node="A"), "f", 1010.0, **{**kw, "mine": True}) == ("wait", ())
