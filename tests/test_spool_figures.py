"""The console overview's queue figures (spool/figures.py `Figures.queue`),
on a real spool (issue 18: the overview fast with 100,000 messages).

* Edge cases, each against the index's rows counted in Python: nothing
  queued; everything held (one and several recipients a message); mixed,
  with the oldest queued message found by both plans (over the queued
  recipients when they are no more than the held ones, else over the
  pending messages, passing held-only messages first); held messages whose
  recipient 0 is not held (delivered, or still queued).
* Per domain: waiting, held, deferred (queued after an attempt) and the
  latest reply of a deferred recipient, with its time.
* A tenant's figures: its own messages only (its credential's owner), the
  default tenant's the rest; its domains carry their oldest message.
* A seeded random queue: every figure equals the brute-force count, for
  everyone and for each tenant.
* Plans: the probes seek by primary key (never a walk of recipients_due per
  message or per recipient, the quadratic plan the oldest-queued read had);
  a message's timeline and webhook payloads find each event's `received`
  event by events_by_message, never by walking events_by_type.
"""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from mta.core.envelope import BOUNCED, DELIVERED, QUEUED, RecipientUpdate
from mta.core.reply import Reply
from mta.spool import MessageFilter, NewMessage, Spool, figures, ledger_sql
from mta.spool.tenants import SqliteTenants

T0 = 1_800_000_000.0
OK = Reply(250, "2.0.0", "ok")
LATER = Reply(451, "4.7.1", "try again later")
FULL = Reply(452, "4.2.2", "mailbox full")
GONE = Reply(550, "5.1.1", "no such user")


@pytest.fixture
async def spool(tmp_path: Path):
    tenants = SqliteTenants(tmp_path)
    tenants.add("acme", limits={}, policy={}, now=T0)
    tenants.own("credential", "api:acme", "acme", T0)
    s = await Spool.open(tmp_path, now=T0)
    yield s
    await s.close()


async def enqueue(s: Spool, rcpts: list[str], at: float, credential: str | None = None) -> str:
    return await s.enqueue(NewMessage("app@sender.test", tuple(rcpts), b"Subject: x\r\n\r\nx\r\n",
                                      credential=credential), at)


async def settle(s: Spool, fates: dict[tuple[str, int], tuple[str, Reply, float]]) -> None:
    """Lease every due recipient; record the fates given ((state, reply, at):
    QUEUED = deferred until much later), put the others back untried."""
    leased = await s.lease_due(T0 + 10_000, 10_000)
    updates = []
    for r in leased:
        fate = fates.get((r.queue_id, r.rcpt_idx))
        if fate is None:
            continue
        state, reply, at = fate
        updates.append(RecipientUpdate(r.queue_id, r.rcpt_idx, state, reply, attempted_at=at,
                                       next_attempt=T0 + 86_400 if state == QUEUED else None))
    if updates:
        await s.record(updates)
    await s.release([(r.queue_id, r.rcpt_idx) for r in leased
                     if (r.queue_id, r.rcpt_idx) not in fates])


async def hold(s: Spool, qid: str, address: str | None = None) -> int:
    return await s.hold_messages(MessageFilter(ids=(qid,), recipient=address), T0 + 20_000)


def brute(root: Path, tenant: str | None = None) -> dict:
    """The figures counted in Python from the index's rows."""
    with sqlite3.connect(root / "spool" / "index.sqlite3") as c:
        owners = dict(c.execute("SELECT name, tenant FROM tenant_owned WHERE kind = 'credential'"))
        rows = c.execute("SELECT r.message_id, r.rcpt_idx, r.domain, r.state, r.attempts, "
                         "r.last_reply, r.updated_at, m.received_at, m.credential "
                         "FROM recipients r JOIN messages m ON m.id = r.message_id "
                         "WHERE r.state IN ('queued', 'held')").fetchall()
    rows = [r for r in rows if tenant is None or owners.get(r[8] or "", "default") == tenant]
    queued = [r for r in rows if r[3] == "queued"]
    domains: dict[str, dict] = defaultdict(lambda: {"recipients": 0, "held": 0, "deferred": 0,
                                                    "last_error": None, "last_error_at": None,
                                                    "oldest_received_at": None})
    for mid, idx, domain, state, attempts, reply, updated, received, _ in rows:
        d = domains[domain]
        d["recipients"] += 1
        d["held"] += state == "held"
        if tenant is not None:
            d["oldest_received_at"] = min(received, d["oldest_received_at"] or received)
        if state == "queued" and attempts > 0:
            d["deferred"] += 1
            if reply is not None and (d["last_error_at"] is None or updated > d["last_error_at"]):
                d["last_error"], d["last_error_at"] = reply, updated
    return {"queued": len(queued), "held": len(rows) - len(queued),
            "held_messages": len({r[0] for r in rows if r[3] == "held"}),
            "oldest_queued_at": min((r[7] for r in queued), default=None),
            "domains": dict(domains)}


async def check(s: Spool, root: Path, tenant: str | None = None) -> dict:
    """queue(tenant) equals the brute-force figures; returns them."""
    got = await s.figures.queue(tenant)
    want = brute(root, tenant)
    assert {k: got[k] for k in ("queued", "held", "held_messages")} == \
        {k: want[k] for k in ("queued", "held", "held_messages")}
    assert got["oldest_queued_at"] == pytest.approx(want["oldest_queued_at"])
    mine = {d["domain"]: {k: v for k, v in d.items() if k != "domain"} for d in got["domains"]}
    assert len(mine) == len(got["domains"]) and mine.keys() == want["domains"].keys()
    for name, d in mine.items():
        w = want["domains"][name]
        assert d["last_error_at"] == pytest.approx(w.pop("last_error_at")), name
        d.pop("last_error_at")
        assert d == pytest.approx(w), name
    return got


# -- edge cases -------------------------------------------------------------------------

async def test_nothing_queued(spool, tmp_path):
    got = await check(spool, tmp_path)
    assert got == {"queued": 0, "held": 0, "held_messages": 0, "oldest_queued_at": None,
                   "domains": []}
    qid = await enqueue(spool, ["a@x.test", "b@y.test"], T0)
    await settle(spool, {(qid, 0): (DELIVERED, OK, T0 + 1), (qid, 1): (BOUNCED, GONE, T0 + 1)})
    got = await check(spool, tmp_path)
    assert (got["queued"], got["held"], got["domains"]) == (0, 0, [])


async def test_all_held(spool, tmp_path):
    one = await enqueue(spool, ["a@x.test"], T0)
    many = await enqueue(spool, ["a@x.test", "b@x.test", "c@y.test"], T0 + 1)
    for qid in (one, many):
        await hold(spool, qid)
    got = await check(spool, tmp_path)
    assert (got["queued"], got["held"], got["held_messages"]) == (0, 4, 2)
    assert got["oldest_queued_at"] is None
    assert {d["domain"]: (d["recipients"], d["held"], d["deferred"])
            for d in got["domains"]} == {"x.test": (3, 3, 0), "y.test": (1, 1, 0)}


async def test_held_messages_whose_first_recipient_is_not_held(spool, tmp_path):
    # recipient 0 delivered, the rest held; recipient 0 queued, one other held;
    # recipient 0 held too (counted once however many are held)
    delivered0 = await enqueue(spool, ["a@x.test", "b@x.test", "c@x.test"], T0)
    queued0 = await enqueue(spool, ["a@y.test", "b@y.test"], T0 + 1)
    all_held = await enqueue(spool, ["a@z.test", "b@z.test"], T0 + 2)
    await settle(spool, {(delivered0, 0): (DELIVERED, OK, T0 + 5)})
    await hold(spool, delivered0)
    await hold(spool, queued0, "b@y.test")
    await hold(spool, all_held)
    got = await check(spool, tmp_path)
    assert (got["queued"], got["held"], got["held_messages"]) == (1, 5, 3)
    assert got["oldest_queued_at"] == pytest.approx(T0 + 1)


@pytest.mark.parametrize("queued_more", [False, True])
async def test_oldest_queued_by_either_plan(spool, tmp_path, queued_more):
    # The oldest pending messages are held only: both walks must pass them.
    for i in range(4):
        await hold(spool, await enqueue(spool, [f"h{i}@x.test", f"k{i}@x.test"], T0 + i))
    queued = 10 if queued_more else 3          # vs 8 held recipients
    for i in range(queued):
        await enqueue(spool, [f"q{i}@y.test"], T0 + 100 - i)   # newest enqueued is the oldest
    got = await check(spool, tmp_path)
    assert (got["queued"], got["held"], got["held_messages"]) == (queued, 8, 4)
    assert got["oldest_queued_at"] == pytest.approx(T0 + 100 - (queued - 1))


async def test_deferred_and_the_latest_reply_per_domain(spool, tmp_path):
    a = await enqueue(spool, ["a@x.test", "b@x.test", "c@y.test"], T0)
    b = await enqueue(spool, ["d@x.test"], T0 + 1)
    await settle(spool, {(a, 0): (QUEUED, LATER, T0 + 10), (a, 1): (QUEUED, FULL, T0 + 30),
                         (a, 2): (DELIVERED, OK, T0 + 10), (b, 0): (QUEUED, LATER, T0 + 20)})
    got = await check(spool, tmp_path)
    by = {d["domain"]: d for d in got["domains"]}
    assert by["x.test"]["deferred"] == 3 and by["x.test"]["last_error"] == str(FULL)
    assert by["x.test"]["last_error_at"] == pytest.approx(T0 + 30)
    assert "y.test" not in by
    await hold(spool, a, "b@x.test")            # held: no longer deferred, its reply not "last"
    by = {d["domain"]: d for d in (await check(spool, tmp_path))["domains"]}
    assert (by["x.test"]["deferred"], by["x.test"]["held"]) == (2, 1)
    assert by["x.test"]["last_error"] == str(LATER)
    assert by["x.test"]["last_error_at"] == pytest.approx(T0 + 20)


async def test_a_tenants_figures_are_its_own(spool, tmp_path):
    mine = await enqueue(spool, ["a@x.test", "b@y.test"], T0 + 5, credential="api:acme")
    other = await enqueue(spool, ["c@x.test"], T0, credential="api:other")
    await enqueue(spool, ["d@z.test"], T0 + 1)                   # no credential: default
    await hold(spool, mine, "b@y.test")
    await settle(spool, {(other, 0): (QUEUED, LATER, T0 + 9)})
    acme = await check(spool, tmp_path, "acme")
    assert (acme["queued"], acme["held"], acme["held_messages"]) == (1, 1, 1)
    assert acme["oldest_queued_at"] == pytest.approx(T0 + 5)
    assert {d["domain"]: (d["recipients"], d["deferred"], d["oldest_received_at"])
            for d in acme["domains"]} == {"x.test": (1, 0, T0 + 5), "y.test": (1, 0, T0 + 5)}
    default = await check(spool, tmp_path, "default")
    assert (default["queued"], default["held"], default["oldest_queued_at"]) == (2, 0, T0)
    assert {d["domain"]: d["deferred"] for d in default["domains"]} == {"x.test": 1, "z.test": 0}
    nobody = await check(spool, tmp_path, "nobody")
    assert (nobody["queued"], nobody["held"], nobody["domains"]) == (0, 0, [])
    everyone = await check(spool, tmp_path)
    assert (everyone["queued"], everyone["held"]) == (3, 1)
    assert all(d["oldest_received_at"] is None for d in everyone["domains"])


async def test_a_random_queue_matches_the_rows(spool, tmp_path):
    rng = random.Random(18)
    fates: dict = {}
    holds = []
    for i in range(80):
        rcpts = [f"u{i}.{k}@d{rng.randrange(6)}.test" for k in range(rng.randint(1, 4))]
        qid = await enqueue(spool, rcpts, T0 + rng.uniform(0, 500),
                            credential=rng.choice(["api:acme", "api:other", None]))
        for k, address in enumerate(rcpts):
            roll = rng.random()
            if roll < 0.25:
                fates[(qid, k)] = (DELIVERED, OK, T0 + 600 + i)
            elif roll < 0.35:
                fates[(qid, k)] = (BOUNCED, GONE, T0 + 600 + i)
            elif roll < 0.6:
                fates[(qid, k)] = (QUEUED, rng.choice([LATER, FULL]), T0 + rng.uniform(600, 900))
            if rng.random() < 0.3:
                holds.append((qid, address))
    await settle(spool, fates)
    for qid, address in holds:
        await hold(spool, qid, address)
    for tenant in (None, "acme", "default", "other"):
        got = await check(spool, tmp_path, tenant)
        assert tenant == "other" or got["queued"] and got["held"], tenant


# -- plans ------------------------------------------------------------------------------

def plan(root: Path, sql: str, params: tuple = ()) -> list[str]:
    with sqlite3.connect(root / "spool" / "index.sqlite3") as c:
        return [r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, params)]


async def test_queue_reads_seek_by_key(spool, tmp_path):
    statements = {
        "held elsewhere": (figures._HELD_ELSEWHERE.format(join="", tenant=""), ()),
        "held elsewhere, tenant": (figures._HELD_ELSEWHERE.format(
            join=figures._JOIN, tenant=" AND " + figures._TENANT), ("acme",)),
        "oldest by messages": (figures._OLDEST_BY_MESSAGES, ()),
        "oldest by recipients": (figures._OLDEST_BY_RECIPIENTS, ()),
        "domains": (figures._DOMAINS_ALL, ()),
        "domains, tenant": (figures._DOMAINS_TENANT, ("acme",)),
    }
    for name, (sql, params) in statements.items():
        rows = plan(tmp_path, sql, params)
        # recipients_due only as the walk of one state, never re-walked per row
        assert sum("recipients_due" in r for r in rows) <= 1, (name, rows)
        assert not any(r.startswith("SCAN") and "messages_pending" not in r
                       for r in rows), (name, rows)
    assert "SEARCH f USING PRIMARY KEY (message_id=? AND rcpt_idx=?)" in plan(
        tmp_path, *statements["held elsewhere"])
    assert "SEARCH r USING PRIMARY KEY (message_id=?)" in plan(
        tmp_path, *statements["oldest by messages"])
    assert "SEARCH m USING PRIMARY KEY (id=?)" in plan(
        tmp_path, *statements["oldest by recipients"])


async def test_event_rows_find_their_received_event_by_message(spool, tmp_path):
    sql, params = ledger_sql.events_after_sql(0, 100, None, None, None,
                                              cols=ledger_sql.EVENT_PAYLOAD_COLS)
    for name, (q, p) in {"timeline": (ledger_sql.SQL_MESSAGE_EVENTS, ("X",)),
                         "timeline page": (ledger_sql.SQL_MESSAGE_EVENTS_AFTER, ("X", 0, 10)),
                         "webhook payloads": (sql, params)}.items():
        rows = plan(tmp_path, q, p)
        assert not any("events_by_type" in r for r in rows), (name, rows)
        assert sum("SEARCH t USING INDEX events_by_message" in r for r in rows) == 2, (name, rows)
