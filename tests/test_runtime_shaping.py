"""The runtime side of traffic shaping (issue 15), over seams we own: a fake
resolver (the `Resolver` Protocol), the fake clock, a real spool.

MX sites and rollup, pools by tenant and sending domain, plans from the
table with rule overrides, how a batch connects, warm-up counters across a
restart, and the rules on a batch's replies: a bounce rule, a tenant
suspended at a provider, synthetic replies ignored.
"""

from __future__ import annotations

import json
import pytest

from mta.config import parse_config
from mta.core.clock import FakeClock
from mta.core.envelope import Destination, QueuedRecipient
from mta.core.outcome import RecipientFate, RecipientOutcome
from mta.core.reply import Reply
from mta.delivery.resolver import DnsTempError, MxRecord, NoRecords, NxDomain
from mta.policy.shaping import ShapingTable
from mta.runtime.automation import ReplyRules
from mta.runtime.shaping import Shaping, SiteCache, check
from mta.scheduler import Batch, Scheduler, Work
from mta.scheduler.limits import DEFAULT_SOURCE, Source
from mta.spool import Spool

T0 = 1_700_006_400.0

ZONE = {"gmail.test": ["alt1.gmail-smtp-in.l.google.com", "gmail-smtp-in.l.google.com"],
        "workspace.test": ["gmail-smtp-in.l.google.com.", "ALT1.gmail-smtp-in.l.google.com"],
        "own.test": ["mx.own.test"], "apart.test": ["mx.own.test"],
        "yahoo.test": ["mta5.am0.yahoodns.net"]}


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def mx(self, domain: str) -> list[MxRecord]:
        self.asked.append(domain)
        if domain == "temp.test":
            raise DnsTempError("SERVFAIL")
        if domain == "nx.test":
            raise NxDomain(domain)
        if domain == "implicit.test":
            raise NoRecords(domain)
        return [MxRecord(10, h) for h in ZONE[domain]]

    async def addresses(self, host: str) -> list[str]:
        return ["127.0.0.1"]

    async def txt(self, name: str) -> list[str]:
        return []


CONFIG = """
[server]
hostname = "mta.test"
[[egress]]
name = "a"
address = "127.0.0.2"
ehlo = "a.mta.test"
pool = "bulk"
warmup = "50*1.5"
[[egress]]
name = "b"
address = "127.0.0.3"
pool = "bulk"
[[egress_pool]]
name = "bulk"
tenants = ["acme"]
domains = ["news.example.net"]
"""

OVERLAY = """
[domain."apart.test"]
mx_rollup = false
[[provider.yahoo.automation]]
name = "bounce on 4.7.9"
match = '4\\.7\\.9 policy'
action = "bounce"
[[provider.yahoo.automation]]
name = "tenant at yahoo"
match = 'TSS09'
action = "suspend_tenant"
duration = "30m"
[[provider.yahoo.automation]]      # (an operator's list replaces the shipped one)
name = "slow on TS02"
match = '\\[TS02\\]'
action = "message_rate=10/m"
duration = "1h"
threshold = "3/10m"
"""


def item(domain: str, *, tenant: str = "default", sender: str = "app@sender.test",
         idx: int = 0) -> QueuedRecipient:
    return QueuedRecipient(f"Q{idx}", 0, f"r@{domain}", domain, sender, 0, T0, T0,
                           tenant=tenant)


def mx(domain: str) -> Destination:
    return Destination(domain, "mx", domain=domain, port=25)


@pytest.fixture
def shaping(tmp_path):
    cfg = parse_config(CONFIG, "test")
    table = ShapingTable.builtin().overlaid(ShapingTable.from_toml(OVERLAY, "overlay.toml"))
    clock = FakeClock(T0)
    resolver = FakeResolver()
    s = Shaping(cfg, table, sites=SiteCache(resolver, clock), clock=clock,
                state_path=tmp_path / "warmup.json")
    s.resolver = resolver        # for the tests
    return s


async def test_domains_sharing_mx_hosts_share_a_site(shaping):
    a, pool = await shaping.route(item("gmail.test"), mx("gmail.test"))
    b, _ = await shaping.route(item("workspace.test"), mx("workspace.test"))
    assert a.name == b.name == "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com"
    assert (a.domain, b.domain, pool) == ("gmail.test", "workspace.test", "")
    plan = shaping.plan(a)
    assert (plan.provider, plan.connection_limit, plan.max_deliveries) == ("google", 5, 50)
    # cached: a second lease asks DNS no more
    await shaping.route(item("gmail.test", idx=1), mx("gmail.test"))
    assert shaping.resolver.asked.count("gmail.test") == 1
    assert shaping.queue_of("gmail.test", "gmail.test") == a.name
    assert sorted(shaping.sites.domains(a.name)) == ["gmail.test", "workspace.test"]


async def test_opt_out_failures_and_routes_keep_their_own_name(shaping):
    own, _ = await shaping.route(item("own.test"), mx("own.test"))
    apart, _ = await shaping.route(item("apart.test"), mx("apart.test"))
    assert own.name == "mx.own.test" and apart.name == "apart.test"   # mx_rollup = false
    for domain in ("temp.test", "nx.test"):
        dest, _ = await shaping.route(item(domain), mx(domain))
        assert dest.name == domain        # delivery will say why (4.4.3 / 5.1.2)
    implicit, _ = await shaping.route(item("implicit.test"), mx("implicit.test"))
    assert implicit.name == "implicit.test"                            # its own A record
    route = Destination("[10.0.0.1]:25", "route", host="10.0.0.1", port=25)
    assert (await shaping.route(item("gmail.test"), route))[0] is route
    assert shaping.plan(route).provider == ""


async def test_the_pool_comes_from_the_sending_domain_then_the_tenant(shaping):
    assert (await shaping.route(item("own.test", tenant="acme"), mx("own.test")))[1] == "bulk"
    by_domain = item("own.test", sender="x@news.example.net")
    assert (await shaping.route(by_domain, mx("own.test")))[1] == "bulk"
    assert (await shaping.route(item("own.test", tenant="other"), mx("own.test")))[1] == ""
    assert [s.name for s in shaping.sources("bulk")] == ["a", "b"]
    assert shaping.sources("") == [DEFAULT_SOURCE]
    assert shaping.sources("bulk")[0] == Source("a", "127.0.0.2", "a.mta.test")
    assert shaping.sources("bulk")[1].ehlo == "mta.test"          # [server] hostname


async def test_a_batch_connects_from_its_source_with_the_sites_options(shaping):
    dest, _ = await shaping.route(item("gmail.test"), mx("gmail.test"))
    batch = Batch(dest, (), 1, Source("a", "127.0.0.2", "a.mta.test"))
    options = shaping.connect_as(batch).options
    assert (options.source, options.ehlo, options.require_tls, options.max_uses) == (
        "127.0.0.2", "a.mta.test", True, 50)                      # Google requires TLS
    plain, _ = await shaping.route(item("own.test"), mx("own.test"))
    assert shaping.connect_as(Batch(plain, (), 2)) == plain       # nothing to change


async def test_warm_up_counters_survive_a_restart(shaping, tmp_path):
    w = shaping.warmup("a")
    assert w is not None and w.cap(T0) == 50 and shaping.warmup("b") is None
    w.consume(7, T0 + 60)
    shaping.save()
    saved = json.loads((tmp_path / "warmup.json").read_text())
    assert saved["sources"]["a"]["used"] == 7
    again = Shaping(shaping.cfg, shaping.table, sites=shaping.sites, clock=shaping.clock,
                    state_path=tmp_path / "warmup.json")
    assert again.warmup("a").state.used == 7
    rows = {r["source"]: r for r in again.warmup_status()}
    assert rows["a"]["cap"] == 50 and rows["a"]["used"] == 7 and rows["b"]["warm"]
    (tmp_path / "warmup.json").write_text("{not json")
    broken = Shaping(shaping.cfg, shaping.table, sites=shaping.sites, clock=shaping.clock,
                     state_path=tmp_path / "warmup.json")
    assert broken.warmup("a").state.used == 0      # starts over, says so in the log


def test_check_names_a_bad_schedule_and_a_bad_file(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text("[provider.x]\nmatch = ['.x.test']\nconection_limit = 2\n")
    cfg = parse_config(CONFIG.replace('warmup = "50*1.5"', 'warmup = "fast"')
                       + f'[shaping]\nfile = "{bad}"\n', "test")
    problems = check(cfg)
    assert any(p.startswith("egress[0].warmup:") for p in problems)
    assert any(p.startswith("shaping:") and "conection_limit" in p for p in problems)


class Runner:
    """What ReplyRules drives: the scheduler, put_back and flush."""

    def __init__(self) -> None:
        self.scheduler = Scheduler(concurrency=2, max_messages_per_connection=10,
                                   max_recipients_per_transaction=10, backoff=(1.0,))
        self.put: list[tuple[list, float]] = []
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1

    async def put_back(self, works, until: float) -> None:
        self.put.append((list(works), until))

    async def flush(self, name: str) -> int:
        return 0


def deferral(text: str, remote: bool = True) -> RecipientOutcome:
    reply = Reply.parse(text) if remote else Reply(451, "4.4.1", text)
    return RecipientOutcome(RecipientFate.DEFERRED, reply, "mta5.am0.yahoodns.net", "127.0.0.1")


async def test_rules_bounce_and_suspend_a_tenant_on_real_replies_only(shaping, tmp_path):
    spool = await Spool.open(tmp_path / "state", now=T0)
    try:
        runner = Runner()
        runner.scheduler = Scheduler(concurrency=2, max_messages_per_connection=10,
                                     max_recipients_per_transaction=10, backoff=(1.0,),
                                     shaper=shaping)
        rules = ReplyRules(shaping, runner, spool, shaping.clock)
        dest, _ = await shaping.route(item("yahoo.test"), mx("yahoo.test"))
        own, _ = await shaping.route(item("own.test"), mx("own.test"))
        runner.scheduler.add([Work(item("yahoo.test", idx=1), dest),
                              Work(item("own.test", idx=2), own)], T0)
        batch = rules.batch()
        # a bounce rule turns that deferral into a bounce (5.x.x, rule named)
        out = batch.rewrite(item("yahoo.test"), deferral("451 4.7.9 policy says no"), dest)
        assert out.fate is RecipientFate.BOUNCED
        assert out.reply.code == 554 and out.reply.esc == "5.7.9"
        assert "bounce on 4.7.9" in out.reply.text
        # our own words never trigger anything, even when they match
        mine = batch.rewrite(item("yahoo.test"), deferral("4.7.9 policy TSS09", remote=False),
                             dest)
        assert mine.fate is RecipientFate.DEFERRED
        # a tenant suspended at the provider: its mail waits, others' goes
        batch.rewrite(item("yahoo.test", tenant="acme"),
                      deferral("421 4.7.0 [TSS09] go away"), dest)
        assert [f.action.kind for f in batch.fired] == ["bounce", "suspend_tenant"]
        await rules.apply(batch.fired)
        # what waited for yahoo went back to the spool (to be sorted at the
        # next lease); the other site's work stayed
        assert [[w.item.queue_id for w in works] for works, _ in runner.put] == [["Q1"]]
        assert runner.scheduler.pending_count() == 1
        assert rules.held(item("yahoo.test", tenant="acme"), dest)
        assert not rules.held(item("yahoo.test", tenant="other"), dest)
        events = await spool.ledger.events_after(0, 10, types=["automation_action"])
        assert [e.detail["action"] for e in events] == ["bounce", "suspend_tenant"]
        assert events[1].detail["key"] == "acme@yahoo"
        assert [a["key"] for a in rules.active()] == ["acme@yahoo"]
        # it ends on time
        shaping.clock.advance(1801)
        await rules.tick()
        assert not rules.held(item("yahoo.test", tenant="acme"), dest)
        ended = await spool.ledger.events_after(0, 10, types=["automation_ended"])
        assert [e.detail["why"] for e in ended] == ["expired"]
    finally:
        await spool.close()


async def test_a_rule_that_lowers_limits_replans_the_site(shaping, tmp_path):
    spool = await Spool.open(tmp_path / "state", now=T0)
    try:
        runner = Runner()
        runner.scheduler = Scheduler(concurrency=20, max_messages_per_connection=10,
                                     max_recipients_per_transaction=10, backoff=(1.0,),
                                     shaper=shaping)
        rules = ReplyRules(shaping, runner, spool, shaping.clock)
        dest, _ = await shaping.route(item("yahoo.test"), mx("yahoo.test"))
        runner.scheduler.add([Work(item("yahoo.test", idx=i), dest) for i in range(3)], T0)
        assert shaping.plan(dest).message_rate is None
        batch = rules.batch()
        for _ in range(3):    # TS02 three times in 10 minutes: message_rate=10/m
            batch._seen.clear()
            batch.rewrite(item("yahoo.test"), deferral("421 4.7.0 [TS02] slow down"), dest)
        await rules.apply(batch.fired)
        assert str(shaping.plan(dest).message_rate) == "10/m"
        state = runner.scheduler.destination_states()[dest.name]
        assert state["limits"]["message_rate"] == "10/m"
    finally:
        await spool.close()



async def test_a_rule_lowers_a_routes_limit_too(shaping):
    route = Destination("[10.0.0.1]:25", "route", host="10.0.0.1", port=25)
    assert shaping.plan(route).connection_limit is None       # routes: no table limits
    rules = [r for r in shaping.table.rules if r.action.kind == "connection_limit"]
    for _ in range(3):      # "too many connections" three times: connection_limit=2
        shaping.automation.observe(rules, reply="421 4.7.0 Too many connections from you",
                                   site=route.name, provider=None, tenant=None,
                                   synthetic=False, now=T0)
    assert shaping.plan(route).connection_limit == 2
