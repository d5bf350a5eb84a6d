"""The console's Overview and Destinations pages against a real daemon
(issue 18): an in-process Daemon routing every domain to a scripted sink,
mail submitted over SMTP, the pages read and driven over HTTP with a
logged-in session (tests/support/console.py).

* Overview (operator): the hour and day totals equal the ledger's events
  of the window (queued -> accepted, delivered, deferred, bounced +
  expired, complained), also after more mail (the series is kept up by
  seq); the deferrals list names the destination with its last reply; an
  operator's pause and an automatic (reputation) pause show under #paused
  and #tenants-at-risk.
* Tenant: its own numbers only (never the operator's totals), its own
  domains in #deferrals, no Destinations link, and 404 for every
  Destinations route, POSTs included.
* Destinations: the queue row; suspend -> resume -> flush change the
  scheduler's state and deliver a deferred recipient now; a shaping rule's
  suspension is listed with its rule and lifted from the page.
* Refusals: a POST without (or with a wrong) CSRF token is 403 and does
  nothing; hostile names and fields are 404/422 pages, never a 500.
* The series alone (runtime/console_series.py over a real spool, no
  daemon): each event counted once in its minute as the ledger grows (late
  times included), expired counted as bounced, other types ignored, a
  tenant's scope, windows sliding, a clock set back.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiosmtplib
import pytest

from mta.admin.backend import destination_state
from mta.api.keys import StoreKeys
from mta.server.credentials import CredentialStore
from mta.spool import MessageFilter
from mta.spool.apikeys import SqliteApiKeys
from mta.spool.tenants import SqliteTenants
from tests.support.console import console_client
from tests.support.mtahelpers import config_text, free_port, no_verify_context, running_daemon
from tests.support.sink import Sink
from tests.test_e2e import wait_until

TOKEN = "test-admin-token-0123456789"
PASSWORD = "console-password-1"
SERIES_OF = {"queued": "accepted", "delivered": "delivered", "deferred": "deferred",
             "bounced": "bounced", "expired": "bounced", "complained": "complained"}
RULES = """
[[automation]]
name = "test: slow down suspends"
match = 'slow down'
action = "suspend"
duration = "1h"
"""


@dataclass
class World:
    d: object
    sink: Sink
    keys: dict[str, str]
    port: int

    @property
    def url(self) -> str:
        return self.d.admin.url

    @property
    def dest(self) -> str:
        return f"[127.0.0.1]:{self.sink.address[1]}"


@pytest.fixture
async def world(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    creds, tenants = CredentialStore(state / "credentials.json"), SqliteTenants(state)
    creds.add("app", PASSWORD)
    keys = {}
    # risky: judged from its first send (min_volume 1), so one bounce pauses it
    for name, policy in (("acme", {}), ("risky", {"min_volume": 1})):
        tenants.add(name, limits={}, policy=policy, now=now)
        made, keys[name] = StoreKeys(SqliteApiKeys(str(state))).create(f"{name}-key", now=now)
        tenants.own("credential", made.credential, name, now)
        creds.add(f"{name}-app", PASSWORD)
        tenants.own("credential", f"{name}-app", name, now)
        tenants.own("domain", f"{name}.test", name, now)
    (tmp_path / "shaping.toml").write_text(RULES)
    async with Sink() as sink:
        port = free_port()
        text = config_text(state, port, retry="1h", routes={"*": f"127.0.0.1:{sink.address[1]}"})
        text += f'[shaping]\nfile = "{tmp_path / "shaping.toml"}"\n'
        async with running_daemon(text) as d:
            yield World(d, sink, keys, port)


async def submit(w: World, rcpts: list[str], user: str = "app",
                 sender: str = "app@sender.test") -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=w.port, start_tls=True,
                               tls_context=no_verify_context()) as c:
        await c.login(user, PASSWORD)
        body = f"From: {sender}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
        _, resp = await c.sendmail(sender, rcpts, body)
        return resp.split()[-1]


def totals(page: str, window: str) -> dict[str, int]:
    found = dict(re.findall(rf'id="total-{window}-(\w+)">(\d+)<', page))
    assert set(found) == set(SERIES_OF.values()), found
    return {k: int(v) for k, v in found.items()}


async def ledger_totals(w: World, tenant: str | None = None) -> dict[str, int]:
    """The ledger's counts of the last hour, as the page maps them."""
    out = dict.fromkeys(SERIES_OF.values(), 0)
    since = (time.time() // 60 - 59) * 60
    for e in await w.d.spool.ledger.events_after(0, 10000, types=list(SERIES_OF),
                                                 tenant=tenant):
        if e.at >= since:
            out[SERIES_OF[e.type]] += 1
    return out


def section(page: str, ident: str) -> str:
    m = re.search(rf'<(section|table|ul|dd|div|figure)[^>]* id="{ident}"', page)
    assert m, f"no #{ident}"
    end = page.find(f"</{m.group(1)}>", m.end())
    return page[m.start():end]


def stat(page: str, ident: str) -> str:
    m = re.search(rf'id="{ident}">([^<]*)<', page)
    assert m, f"no #{ident}"
    return m.group(1)


async def _dsn_delivered(w: World):
    return any(m.mail_from == "" for m in w.sink.messages) or None


async def test_overview_counts_the_ledger_and_names_the_deferring_destination(world):
    w = world
    await submit(w, ["ok-1@a.test", "ok-2@a.test", "reject-1@b.test", "tempfail-9@c.test"])
    await wait_until(lambda: _dsn_delivered(w))             # the reject's DSN, delivered

    async def settled():
        t = await ledger_totals(w)
        return t if t["deferred"] >= 1 and t["delivered"] >= 3 else None
    expected = await wait_until(settled)
    async with console_client(w.url, TOKEN) as c:
        status, page = await c.get("/")
        assert status == 200 and "<h1>Overview</h1>" in page
        hour = totals(page, "hour")
        assert hour == expected
        assert hour["accepted"] >= 5 and hour["bounced"] == 1 and hour["delivered"] >= 3
        assert totals(page, "day") == hour                 # the same events, per hour
        assert stat(page, "stat-delivered-hour") == str(hour["delivered"])
        assert stat(page, "stat-queued") == "1"             # the deferred recipient
        svg = section(page, "chart-hour")
        assert '<svg xmlns="http://www.w3.org/2000/svg"' in svg and "<title" in svg
        rows = section(page, "deferrals")
        assert f'data-name="{w.dest}"' in rows
        assert "greylisted, try again later" in rows        # its last reply
        assert 'data-label="Deferred" class="num">1<' in rows
        assert ">Oldest<" not in rows                       # ages: the Destinations page
        assert 'href="/console/destinations"' in rows
        # more mail: counted from the seqs after the first page (no recount)
        await submit(w, ["ok-3@a.test", "ok-4@a.test"])

        async def grown():
            t = await ledger_totals(w)
            return t if t["delivered"] >= expected["delivered"] + 2 else None
        again = await wait_until(grown)
        status, page = await c.get("/")
        assert totals(page, "hour") == again
        assert totals(page, "hour")["accepted"] == hour["accepted"] + 2


async def test_paused_tenants_and_tenants_at_risk(world):
    w = world
    await w.d.tenants.pause("acme", "an <b>operator</b> pause")
    await submit(w, ["reject-9@x.test"], user="risky-app", sender="app@risky.test")

    async def paused_by_reputation():
        return w.d.tenants.row("risky").auto_status == "paused" or None
    await wait_until(paused_by_reputation, timeout=15)
    async with console_client(w.url, TOKEN) as c:
        status, page = await c.get("/")
        assert status == 200
        paused = section(page, "paused-tenants")
        assert 'data-tenant="acme"' in paused and "operator" in paused
        assert "an &lt;b&gt;operator&lt;/b&gt; pause" in paused     # escaped, not markup
        assert 'data-tenant="risky"' in paused and "automatic (reputation)" in paused
        risk = section(page, "tenants-at-risk")
        assert 'data-tenant="risky"' in risk and "100.00%" in risk   # 1 bounce of 1 send
        assert 'data-tenant="acme"' not in risk
        assert stat(page, "held-messages") == "0"


async def test_a_tenant_sees_only_its_own(world):
    w = world
    await submit(w, ["ok-1@a.test", "ok-2@a.test", "ok-3@a.test"])            # default's
    await submit(w, ["ok-1@acme-rcpt.test", "tempfail-9@acme-slow.test"], user="acme-app",
                 sender="app@acme.test")

    async def settled():
        mine = await ledger_totals(w, "acme")
        return mine if mine["deferred"] >= 1 and mine["delivered"] >= 1 else None
    mine = await wait_until(settled)
    everyone = await ledger_totals(w)
    assert everyone["accepted"] > mine["accepted"]
    async with console_client(w.url, w.keys["acme"]) as c:
        status, page = await c.get("/")
        assert status == 200 and 'id="viewer">acme (key acme-key)<' in page
        assert totals(page, "hour") == mine and mine["accepted"] == 2
        assert stat(page, "stat-queued") == "1"
        rows = section(page, "deferrals")
        assert 'data-name="acme-slow.test"' in rows and "greylisted" in rows
        assert 'data-label="Deferred" class="num">1<' in rows and ">Oldest<" in rows
        assert "a.test" not in rows and w.dest not in rows
        assert 'id="tenants-at-risk"' not in page and 'id="suspended-destinations"' not in page
        assert 'id="status"' in page
        assert "/console/destinations" not in page            # no link, no nav entry
        assert (await c.get("/destinations"))[0] == 404
        target = quote(w.dest, safe="")
        for path in (f"/destinations/{target}/suspend", f"/destinations/{target}/resume",
                     "/shaping/lift"):
            status, body, _ = await c.post(path, {"target": "x"})
            assert status == 404, (path, status)
    assert not w.d.runner.scheduler.is_suspended(w.dest)


def _state(w: World) -> str:
    return destination_state(w.d.runner.scheduler.destination_states().get(w.dest))


async def test_suspend_resume_flush_from_the_destinations_page(world):
    w = world
    qid = await submit(w, ["tempfail-1@flush.test"])

    async def deferred():
        v = await w.d.spool.get_message(qid)
        return v.recipients[0].attempts == 1 and v.recipients[0].state == "queued" or None
    await wait_until(deferred)                              # next attempt in 1 h
    target = quote(w.dest, safe="")
    async with console_client(w.url, TOKEN) as c:
        status, page = await c.get("/destinations")
        assert status == 200 and "<h1>Destinations</h1>" in page
        row = section(page, "queue")
        assert f'data-destination="{w.dest}"' in row and "greylisted" in row
        status, _, location = await c.post(f"/destinations/{target}/suspend")
        assert status == 303 and location == "/console/destinations"
        assert _state(w) == "suspended"
        status, page = await c.get("/destinations")
        assert "suspended (now suspended)" in page          # the notice
        assert 'class="badge state suspended"' in page
        assert (await c.post(f"/destinations/{target}/resume"))[0] == 303
        assert _state(w) == "active"
        assert not any("tempfail-1@flush.test" in m.rcpt_tos for m in w.sink.messages)
        assert (await c.post(f"/destinations/{target}/flush"))[0] == 303

        async def delivered():
            return any("tempfail-1@flush.test" in m.rcpt_tos for m in w.sink.messages) or None
        await wait_until(delivered, timeout=10)             # due now, not in an hour
        status, page = await c.get("/destinations")
        assert "flushed (now active)" in page


async def test_a_rule_suspension_is_listed_and_lifted(world):
    w = world
    await submit(w, ["throttle-1@slow.test"])

    async def fired():
        return w.d.runner.rules.active() or None
    (action,) = await wait_until(fired)
    async with console_client(w.url, TOKEN) as c:
        status, page = await c.get("/destinations")
        rows = section(page, "actions")
        assert f'data-action-id="{action["id"]}"' in rows
        assert "test: slow down suspends" in rows and "slow down" in rows
        status, page = await c.get("/")
        assert f'data-action-id="{action["id"]}"' in section(page, "shaping-in-force")
        assert w.dest in section(page, "suspended-destinations")
        # The throttled message goes, so no retry after the lift can fire the
        # rule again (it would come back under the same id; seen once in CI).
        await w.d.spool.delete_messages(MessageFilter(), w.d.clock.now())
        status, _, _ = await c.post("/shaping/lift", {"target": action["id"]})
        assert status == 303
        assert not w.d.runner.rules.active()
        status, page = await c.get("/destinations")
        assert "lifted: suspend on" in page
        status, body, _ = await c.post("/shaping/lift", {"target": action["id"]})
        assert status == 404                                 # gone: nothing to lift


async def test_posts_need_the_csrf_token(world):
    w = world
    target = quote(w.dest, safe="")
    async with console_client(w.url, TOKEN) as c:
        for csrf in (None, "not-the-token"):
            status, body, _ = await c.post(f"/destinations/{target}/suspend", csrf=csrf)
            assert status == 403 and "CSRF" in body
        assert _state(w) == "active"
    async with console_client(w.url, login=False) as anon:
        status, body, _ = await anon.post(f"/destinations/{target}/suspend", csrf=None)
        assert status == 403
        assert (await anon.get("/"))[0] == 303               # to the login page
    assert _state(w) == "active"


@pytest.mark.parametrize("name,expected", [
    ("a%20b", 422), ("a%00b", 422), ("a%0Ab", 422), ("x" * 400, 422), ("%5Bx", 422),
    ("%FF%FE", 422), ("%5B10.9.9.9%5D%3A25", 404), ("sandbox", 404), ("a..b", 422), ("a%2Fb", 422),
])
async def test_hostile_destination_names(world, name, expected):
    w = world
    async with console_client(w.url, TOKEN) as c:
        status, body, _ = await c.post(f"/destinations/{name}/suspend")
        assert status == expected, body
        assert "internal error" not in body and "<h1>" in body
    assert not any(s.get("suspended")
                   for s in w.d.runner.scheduler.destination_states().values())


@pytest.mark.parametrize("fields,expected", [
    ({}, 422), ({"target": ""}, 422), ({"target": "a\x00b"}, 422), ({"target": "x" * 5000}, 422),
    ({"target": "no-such-action"}, 404), ({"target": "<script>"}, 404),
])
async def test_hostile_lift_targets(world, fields, expected):
    async with console_client(world.url, TOKEN) as c:
        status, body, _ = await c.post("/shaping/lift", fields)
        assert status == expected, body
        assert "internal error" not in body and "<script>" not in body


# -- the series, against a real spool (no daemon): exact, incremental, scoped -------------

T = 1_700_000_430.0        # 22:20:30 UTC: the current minute is 22:20, the hour 22:00


async def test_the_series_counts_each_event_once_as_the_ledger_grows(tmp_path):
    from mta.core import LedgerEvent
    from mta.runtime.console_series import EventSeries
    from mta.spool import Spool
    spool = await Spool.open(tmp_path, now=T)
    try:
        SqliteTenants(tmp_path).add("acme", limits={}, policy={}, now=T)
        SqliteTenants(tmp_path).own("credential", "acme-app", "acme", T)

        def ev(etype: str, at: float, cred: str = "") -> LedgerEvent:
            return LedgerEvent(etype, at, credential=cred)
        await spool.ledger.append_events([
            ev("queued", T - 5), ev("queued", T - 5, "acme-app"), ev("delivered", T - 20),
            ev("deferred", T - 61), ev("bounced", T - 3540), ev("expired", T - 7200),
            ev("complained", T - 80000), ev("received", T - 5), ev("held", T - 5),
            ev("delivered", T - 90000)])                    # before the day window
        series = EventSeries(spool.figures, spool.ledger)
        w = await series.windows(None, T)
        hour, day = w["hour"]["series"], w["day"]["series"]
        assert w["hour"]["start"] == T - 30 - 59 * 60 and w["hour"]["step"] == 60
        assert w["day"]["start"] == T - 1230 - 23 * 3600 and w["day"]["step"] == 3600
        assert len(hour["accepted"]) == 60 and len(day["accepted"]) == 24
        assert hour["accepted"][59] == 2 and hour["delivered"][59] == 1
        assert hour["deferred"][58] == 1 and hour["bounced"][0] == 1
        assert {k: sum(v) for k, v in hour.items()} == {
            "accepted": 2, "delivered": 1, "deferred": 1, "bounced": 1, "complained": 0}
        assert {k: sum(v) for k, v in day.items()} == {
            "accepted": 2, "delivered": 1, "deferred": 1, "bounced": 2, "complained": 1}
        assert day["bounced"][22] == 1 and day["bounced"][21] == 1   # 21:21:30, 20:20:30
        mine = await series.windows("acme", T)
        assert {k: sum(v) for k, v in mine["day"]["series"].items()} == {
            "accepted": 1, "delivered": 0, "deferred": 0, "bounced": 0, "complained": 0}
        # more events, one written late (an earlier minute): counted once, where they belong
        await spool.ledger.append_events([ev("delivered", T), ev("delivered", T - 600),
                                          ev("queued", T - 3, "acme-app")])
        w = await series.windows(None, T)
        assert sum(w["hour"]["series"]["delivered"]) == 3
        assert w["hour"]["series"]["delivered"][49] == 1
        assert sum(w["hour"]["series"]["accepted"]) == 3
        assert sum((await series.windows(None, T))["day"]["series"]["accepted"]) == 3
        assert sum((await series.windows("acme", T))["hour"]["series"]["accepted"]) == 2
        # time passes: the windows slide, older minutes leave the hour, then the day
        later = await series.windows(None, T + 7200)
        assert sum(later["hour"]["series"]["delivered"]) == 0
        assert sum(later["day"]["series"]["delivered"]) == 3
        gone = await series.windows(None, T + 2 * 86400)
        assert all(sum(v) == 0 for v in gone["day"]["series"].values())
        # a clock set back before the counted window counts again from the ledger
        back = await series.windows(None, T)
        assert sum(back["day"]["series"]["delivered"]) == 3
    finally:
        await spool.close()
