"""Traffic shaping end to end (issue 15): the real daemon, a real DNS server
on 127.0.0.153, sinks on other loopback addresses, real sockets.

* A sink answering like Yahoo (`421 4.7.0 [TS04]`, its MX host under
  .yahoodns.net so the shipped table's yahoo rule applies) makes the rule
  suspend that site while another site keeps flowing; the action is a ledger
  event, shows in the queue summary, and an operator's resume lifts it.
* Two egress sources in a pool: both are used, and each connection binds its
  source address and greets with its name.
* A provider's connection limit (an operator shaping file) caps concurrent
  connections across two domains sharing an MX, and a third domain at
  another MX host of the same provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mta.runtime.admin import RuntimeAdmin
from tests.support.dnsserver import DnsServer
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink
from tests.test_e2e import _done, recipient_states, submit, user, wait_until  # noqa: F401

YAHOO_SITE = "mta5.am0.yahoodns.net"


@contextlib.asynccontextmanager
async def daemon(tmp_path: Path, zone: dict, smtp_port: int, extra: str = "",
                 delivery: str = "") -> AsyncIterator:
    async with DnsServer(zone) as dns:
        port = free_port()
        text = config_text(tmp_path / "state", port, nameservers=[dns.nameserver],
                           smtp_port=smtp_port, extra_delivery=delivery)
        text = text.replace("[routes]", extra + "\n[routes]")
        (tmp_path / "mta.toml").write_text(text)       # for the CLI (the admin API)
        async with running_daemon(text) as d:
            d.port = port
            d.config_path = tmp_path / "mta.toml"
            yield d


async def cli(d, *args: str) -> tuple[int, str, str]:
    """`mta ARGS --config …` in a subprocess, without blocking the loop the
    daemon runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mta", *args, "--config", str(d.config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def _events(d, etype: str) -> list:
    return await d.spool.ledger.events_after(0, 1000, types=[etype])


async def _delivered(d, qids) -> bool:
    for q in qids:
        v = await _done(d, q)
        if v is None or set(recipient_states(v).values()) != {"delivered"}:
            return False
    return True


async def test_a_ts04_deferral_suspends_that_site_while_others_flow(tmp_path, user):
    async with Sink("127.0.0.10") as yahoo:
        async with Sink("127.0.0.11", port=yahoo.address[1]) as other:
            zone = {"yahoo.test": {"MX": [(1, YAHOO_SITE)]}, YAHOO_SITE: {"A": ["127.0.0.10"]},
                    "other.test": {"MX": [(10, "mx.other.test")]},
                    "mx.other.test": {"A": ["127.0.0.11"]},
                    "sender.test": {"MX": [(10, "mx.other.test")]}}
            async with daemon(tmp_path, zone, yahoo.address[1]) as d:
                first = await submit(d.port, ["ts04-a@yahoo.test"])
                fired = await wait_until(lambda: _events(d, "automation_action"))
                assert fired[0].detail["key"] == YAHOO_SITE
                assert fired[0].detail["action"] == "suspend"
                assert fired[0].detail["rule"] == "yahoo: TS04 deferral"
                assert "[TS04]" in fired[0].detail["reason"]
                assert fired[0].detail["until"] - fired[0].detail["since"] == 7200
                assert d.runner.scheduler.is_suspended(YAHOO_SITE)
                # mail for the suspended site waits; the other site's flows
                waiting = [await submit(d.port, [f"ok-{i}@yahoo.test"]) for i in range(3)]
                flowing = [await submit(d.port, [f"ok-{i}@other.test"]) for i in range(3)]
                await wait_until(lambda: _delivered(d, flowing))
                await asyncio.sleep(1.5)                  # past a retry: still held
                assert yahoo.connections == 1 and not yahoo.messages
                for q in [first, *waiting]:
                    v = await d.spool.get_message(q)
                    assert set(recipient_states(v).values()) == {"queued"}
                # the queue summary shows the action with its end
                summary = await RuntimeAdmin(d).queue_summary()
                row = next(r for r in summary if r["destination"] == YAHOO_SITE)
                assert row["state"] == "suspended"
                assert [a["action"] for a in row["actions"]] == ["suspend"]
                assert row["actions"][0]["until"] > d.clock.now() + 7000
                # an operator lifts it (by the domain: the CLI names its site);
                # everything waiting goes
                code, out, err = await cli(d, "destination", "resume", "yahoo.test")
                assert code == 0 and out.startswith(      # (now throttled: the 421's backoff)
                    f"yahoo.test shares the MX site {YAHOO_SITE}; resumed {YAHOO_SITE} "
                    "(now "), err
                await wait_until(lambda: _delivered(d, [first, *waiting]))
                assert not d.runner.rules.active()
                ended = await _events(d, "automation_ended")
                assert [e.detail["why"] for e in ended] == ["lifted"]
                assert {m.rcpt_tos[0] for m in yahoo.messages} == {
                    "ts04-a@yahoo.test", "ok-0@yahoo.test", "ok-1@yahoo.test",
                    "ok-2@yahoo.test"}


EGRESS = """
[[egress]]
name = "out2"
address = "127.0.0.2"
ehlo = "out2.mta.test"

[[egress]]
name = "out3"
address = "127.0.0.3"
ehlo = "out3.mta.test"
"""


async def test_two_sources_in_a_pool_are_both_used_and_bound(tmp_path, user):
    async with Sink("127.0.0.1") as sink:
        zone = {"pool.test": {"MX": [(10, "mx.pool.test")]}, "mx.pool.test": {"A": ["127.0.0.1"]},
                "sender.test": {"MX": [(10, "mx.pool.test")]}}
        async with daemon(tmp_path, zone, sink.address[1], EGRESS,
                          delivery="max_messages_per_connection = 1") as d:
            qids = [await submit(d.port, [f"ok-{i}@pool.test"]) for i in range(8)]
            await wait_until(lambda: _delivered(d, qids))
            assert set(sink.peers) == {"127.0.0.2", "127.0.0.3"}
            names = {"127.0.0.2": "out2.mta.test", "127.0.0.3": "out3.mta.test"}
            assert len(sink.messages) == 8
            for m in sink.messages:
                assert m.helo == names[m.peer[0]]        # each source greets as itself
            status = {r["source"]: r for r in await RuntimeAdmin(d).warmup()}
            assert status["out2"]["warm"] and status["out3"]["warm"]


PROVIDER = """
[provider.testprov]
match = [".prov.test"]

[provider.testprov.provider]
connection_limit = 2
"""


async def test_a_provider_limit_caps_connections_across_domains_sharing_an_mx(tmp_path, user):
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(PROVIDER)
    async with Sink("127.0.0.1") as sink:
        zone = {"a.test": {"MX": [(10, "mx.prov.test")]}, "b.test": {"MX": [(10, "mx.prov.test")]},
                "c.test": {"MX": [(10, "mx2.prov.test")]},
                "mx.prov.test": {"A": ["127.0.0.1"]}, "mx2.prov.test": {"A": ["127.0.0.1"]},
                "sender.test": {"MX": [(10, "mx.prov.test")]}}
        extra = f'[shaping]\nfile = "{shaping}"\n'
        async with daemon(tmp_path, zone, sink.address[1], extra,
                          delivery="max_messages_per_connection = 1") as d:
            qids = []
            for i in range(6):
                for dom in ("a.test", "b.test", "c.test"):
                    qids.append(await submit(d.port, [f"slow-150-{i}@{dom}"]))
            states = d.runner.scheduler.destination_states()
            await wait_until(lambda: _delivered(d, qids), timeout=40)
            assert len(sink.messages) == 18
            assert sink.max_open == 2                   # never more, across both sites
            # a.test and b.test were one queue: their MX site
            assert "a.test" not in states and "b.test" not in states
            summary = {r["destination"]: r for r in await RuntimeAdmin(d).queue_summary()}
            assert "a.test" not in summary


@pytest.mark.parametrize("bad, message", [
    ('[[egress]]\nname = "x"\naddress = "127.0.0.2"\nwarmup = "bogus"\n', "egress[0].warmup"),
    ('[shaping]\nfile = "/nonexistent/shaping.toml"\n', "shaping"),
])
async def test_a_bad_shaping_setup_stops_the_start_with_a_clear_error(tmp_path, bad, message):
    from mta.config import parse_config
    from mta.runtime.daemon import Daemon
    from mta.runtime.startup import StartupError
    port = free_port()
    text = config_text(tmp_path / "state", port).replace("[routes]", bad + "\n[routes]")
    d = Daemon(parse_config(text, "test"))
    with pytest.raises(StartupError, match=message.replace("[", r"\[").replace("]", r"\]")):
        try:
            await d.start()
        finally:
            await d.stop()


async def test_a_reload_applies_a_changed_table_and_refuses_a_broken_one(tmp_path):
    from mta.config import load_config
    from mta.core.envelope import Destination
    from mta.runtime.daemon import Daemon
    from mta.runtime.reload import reload
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[site."mx.prov.test"]\nconnection_limit = 3\n')
    conf = tmp_path / "mta.toml"
    conf.write_text(config_text(tmp_path / "state", free_port()).replace(
        "[routes]", f'[shaping]\nfile = "{shaping}"\n[routes]'))
    d = Daemon(load_config(str(conf)))
    await d.start()
    try:
        site = Destination("mx.prov.test", "mx", domain="a.test")
        assert d.runner.shaping.plan(site).connection_limit == 3
        shaping.write_text('[site."mx.prov.test"]\nconnection_limit = 1\n')
        assert await reload(d)
        assert d.runner.shaping.plan(site).connection_limit == 1
        shaping.write_text('[site."mx.prov.test"]\nconnection_limt = 2\n')
        assert not await reload(d)                       # refused, named in the log
        assert d.runner.shaping.plan(site).connection_limit == 1
    finally:
        await d.stop()
