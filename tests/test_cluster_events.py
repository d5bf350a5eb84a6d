"""The SMTP Idempotency-Key, the admin event list and tenant reputation
across a cluster (issue 19).

Real daemons sharing a real PostgreSQL and Redis (tests/support/cluster.py)
and one SMTP sink:
  * an SMTP submission with an `Idempotency-Key` header sent to A, then B
    and C, is queued once, every node answering the original queue id; with
    PostgreSQL down such a message is refused 451 4.3.0 (a key this node's
    spool already holds is still answered, a message without the header is
    accepted) and the admin event list is a 429;
  * GET /v1/events on A lists the events of messages sent through B and C,
    in global seq order, paging by cursor, with the same filters;
  * bounces delivered through B and C add up to one assessment that pauses
    the tenant on every node (each node alone saw fewer sends than
    min_volume), recorded once; a resume through B releases C's held mail
    and A, the assessor, does not pause the tenant again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import pytest

from mta.runtime.cluster_reputation import ClusterReputation
from tests.support.cluster import ClusterWorld, cluster_world, until
from tests.support.engines import MISSING_ENGINES, PostgresServer


async def until_async(cond: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = await cond()
        if got:
            return got
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


def keyed(key: str | None, subject: str = "once") -> bytes:
    head = f"From: ops@relay.test\r\nTo: ok@example.org\r\nSubject: {subject}\r\n"
    if key is not None:
        head += f"Idempotency-Key: {key}\r\n"
    return (head + "\r\nhello\r\n").encode()


async def smtp_id(w: ClusterWorld, node: str, body: bytes) -> str:
    _, reply = await w.smtp_send(node, "ops@relay.test", ["ok@example.org"], body)
    m = re.search(r"queued as (\S+)", reply)
    assert m, reply
    return m.group(1)



# -- SMTP Idempotency-Key -------------------------------------------------------------

async def test_an_smtp_key_sent_to_a_then_b_makes_one_message(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        first = await smtp_id(w, "A", keyed("smtp-17"))
        assert await smtp_id(w, "B", keyed("smtp-17")) == first
        assert await smtp_id(w, "C", keyed("smtp-17", "another body")) == first
        assert await smtp_id(w, "A", keyed("smtp-17")) == first       # a repeat on A too
        assert await w.queued_everywhere() == [first]
        other = await smtp_id(w, "B", keyed("smtp-18"))
        plain = await smtp_id(w, "B", keyed(None))
        assert len({first, other, plain}) == 3
        assert await w.queued_everywhere() == sorted([first, other, plain])
        await w.sink.wait_for(3, timeout=20)
        assert w.sink.transactions == 3


@pytest.fixture
def own_pg():
    if MISSING_ENGINES:
        pytest.skip(MISSING_ENGINES)
    server = PostgresServer().start()
    yield server
    server.destroy()


async def test_with_postgres_down_a_keyed_smtp_message_is_451(tmp_path, own_pg, redis_url):
    url = own_pg.new_database()
    async with cluster_world(tmp_path, url, redis_url, n=2) as w:
        held = await smtp_id(w, "A", keyed("before"))
        await asyncio.to_thread(own_pg.stop)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp_id(w, "A", keyed("pg-down"))
        assert refused.value.code == 451 and "4.3.0" in refused.value.message
        assert await smtp_id(w, "A", keyed("before")) == held    # A's spool answers its own
        plain = await smtp_id(w, "A", keyed(None))
        status, body = await w.admin("A", "GET", "/v1/events")
        assert status == 429 and body["error"]["code"] == "ledger_unavailable", body
        await asyncio.to_thread(own_pg.start)
        got: dict[str, str] = {}

        async def retried() -> bool:
            try:
                got["id"] = await smtp_id(w, "A", keyed("pg-down"))
            except aiosmtplib.SMTPResponseException as exc:
                assert exc.code == 451
                return False
            return True
        await until_async(retried)
        assert await smtp_id(w, "B", keyed("pg-down")) == got["id"]
        assert await w.queued_everywhere() == sorted([held, plain, got["id"]])


# -- the admin event list -------------------------------------------------------------

def _mail(to: str, subject: str = "hi") -> dict[str, Any]:
    return {"from": "app@acme.test", "to": [to], "subject": subject, "text": "hello"}


async def test_events_on_a_list_every_nodes_events_in_seq_order(tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url) as w:
        acme = w.keys["acme"]
        ids = {}
        for node in ("B", "C"):
            status, body = await w.api(node, acme, "POST", "/emails",
                                       json=_mail(f"to-{node.lower()}@example.net"))
            assert status == 200, body
            ids[node] = body["id"]

        async def delivered_on_a() -> list[dict[str, Any]] | None:
            status, body = await w.admin("A", "GET", "/v1/events?type=delivered")
            assert status == 200, body
            assert body["ledger"] == "cluster"
            got = {e["queue_id"] for e in body["events"]}
            return body["events"] if set(ids.values()) <= got else None
        delivered = await until_async(delivered_on_a)
        assert {e["recipient"] for e in delivered} == {"to-b@example.net", "to-c@example.net"}

        status, whole = await w.admin("A", "GET", "/v1/events?limit=1000")
        assert status == 200
        seqs = [e["seq"] for e in whole["events"]]
        assert seqs == sorted(set(seqs)) and whole["next_after"] == seqs[-1]
        for qid in ids.values():       # each message's timeline, in order, from A
            assert [e["type"] for e in whole["events"] if e["queue_id"] == qid] == \
                ["received", "queued", "delivered"]
        paged, after = [], 0
        while True:                    # two at a time by cursor: the same list
            status, page = await w.admin("A", "GET", f"/v1/events?limit=2&after={after}")
            assert status == 200 and len(page["events"]) <= 2
            if not page["events"]:
                break
            paged += page["events"]
            after = page["next_after"]
        assert [e["seq"] for e in paged] == seqs
        # the filters: recipient, tenant
        status, one = await w.admin("A", "GET", "/v1/events?recipient=to-c@example.net")
        assert {e["queue_id"] for e in one["events"]} == {ids["C"]}
        status, beta = await w.admin("A", "GET", "/v1/events?tenant=beta")
        assert (status, beta["events"]) == (200, [])
        status, mine = await w.admin("B", "GET", "/v1/events?tenant=acme&type=received")
        assert {e["queue_id"] for e in mine["events"]} == set(ids.values())


# -- reputation -----------------------------------------------------------------------

REPUTATION = """
[reputation]
window = 10
min_volume = 4
bounce_warn = 0.3
bounce_pause = 0.5
"""


async def _send(w: ClusterWorld, node: str, to: str, **extra: Any) -> tuple[int, Any]:
    return await w.api(node, w.keys["acme"], "POST", "/emails", json={**_mail(to), **extra})


async def _states(w: ClusterWorld, node: str, qid: str) -> list[str]:
    status, body = await w.admin(node, "GET", f"/v1/messages/{qid}")
    assert status == 200, body
    return [r["state"] for r in body["recipients"]]


async def test_bounces_through_b_and_c_pause_the_tenant_everywhere_once(
        tmp_path, pg_url, redis_url):
    async with cluster_world(tmp_path, pg_url, redis_url, extra=REPUTATION) as w:
        later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        status, body = await _send(w, "C", "ok-later@example.net", scheduled_at=later)
        assert status == 200, body
        scheduled = body["id"]
        for node in ("B", "C"):        # three sends each: below min_volume on either
            for to in ("reject-1", "reject-2", "ok-1"):
                status, body = await _send(w, node, f"{to}-{node}@example.net")
                assert status == 200, body

        await until(lambda: all(w.nodes[n].tenants.row("acme").auto_status == "paused"
                                for n in "ABC"), 30)
        for node in "ABC":              # every node refuses the tenant's mail now
            status, body = await _send(w, node, "ok-probe@example.net")
            assert status == 403, body
        trackers = {n: w.nodes[n].reputation for n in "ABC"}
        assert all(isinstance(t, ClusterReputation) for t in trackers.values())
        assert [n for n, t in trackers.items() if t.acting] == ["A"]   # the assessor
        # B follows the same outcomes (the whole tenant's), at its own pace:
        # the pause may reach it through the shared tenant row first.
        await until(lambda: trackers["B"].rates("acme")["sends"] == 6, 15)
        # C holds its queued mail for the pause
        await until_async(lambda: _all(_states(w, "C", scheduled), "held"))

        async def recorded() -> list[dict[str, Any]] | None:
            status, body = await w.admin("B", "GET", "/v1/events?type=reputation_paused")
            return body["events"] or None
        await until_async(recorded)

        status, body = await w.admin("B", "POST", "/v1/tenants/acme/resume",
                                     json={"reason": "list cleaned"})
        assert status == 200, body
        # C releases what it held; A forgets the window and does not pause again
        await until_async(lambda: _none(_states(w, "C", scheduled), "held"))
        a = trackers["A"]
        await until(lambda: a.tenants.row("acme").sending and a.rates("acme")["sends"] == 0)
        status, body = await _send(w, "A", "ok-after@example.net")
        assert status == 200, body
        status, body = await w.admin("C", "GET", "/v1/events?type=reputation_paused")
        assert len(body["events"]) == 1, body


async def _none(states: Awaitable[list[str]], state: str) -> bool:
    return state not in await states


async def _all(states: Awaitable[list[str]], want: str) -> bool:
    got = await states
    return bool(got) and all(s == want for s in got)
