"""End to end through MX resolution: a real DNS server on 127.0.0.153 serves
MX/A/AAAA, null MX, no-MX, NXDOMAIN and SERVFAIL; two MX hosts where the
preferred one is down. mta runs in production mode with no routes."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.dnsserver import DnsServer
from tests.support.mtahelpers import config_text, free_port, running_daemon
from tests.support.sink import Sink
from tests.test_e2e import _done, recipient_states, submit, user, wait_until  # noqa: F401

ZONE = {
    "mx.test": {"MX": [(10, "mx1.mx.test")]},
    "mx1.mx.test": {"A": ["127.0.0.1"]},
    "two.test": {"MX": [(10, "down.two.test"), (20, "up.two.test")]},
    "down.two.test": {"A": ["127.0.0.3"]},      # nothing listens there
    "up.two.test": {"A": ["127.0.0.1"]},
    "implicit.test": {"A": ["127.0.0.1"]},     # no MX: implicit MX
    "nullmx.test": {"MX": [(0, ".")]},
    "sender.test": {"MX": [(10, "mx1.mx.test")]},
}


@pytest.fixture
async def world(tmp_path, user):
    async with Sink(port=0) as sink, DnsServer(ZONE, servfail={"servfail.test"}) as dns:
        port = free_port()
        text = config_text(tmp_path / "state", port, nameservers=[dns.nameserver],
                           smtp_port=sink.address[1])
        async with running_daemon(text) as d:
            d.port = port
            yield d, sink, dns


async def test_mx_lookup_and_preference_with_preferred_down(world):
    d, sink, dns = world
    q1 = await submit(d.port, ["ok@mx.test"])
    q2 = await submit(d.port, ["ok@two.test"])
    q3 = await submit(d.port, ["ok@implicit.test"])
    await sink.wait_for(3, timeout=20)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [
        "ok@implicit.test", "ok@mx.test", "ok@two.test"]
    for q in (q1, q2, q3):
        v = await wait_until(lambda q=q: _done(d, q))
        assert set(recipient_states(v).values()) == {"delivered"}
    v2 = await d.spool.get_message(q2)
    assert v2.attempts[-1].remote_host == "up.two.test"
    assert ("two.test", "MX") in [(n.rstrip("."), t) for n, t in dns.queries]


@pytest.mark.parametrize("domain, state, reply", [
    ("nullmx.test", "bounced", "556 5.1.10"),
    ("nx.test", "bounced", "550 5.1.2"),
])
async def test_permanent_dns_failures_bounce(world, domain, state, reply):
    d, sink, dns = world
    qid = await submit(d.port, [f"ok@{domain}"])
    v = await wait_until(lambda: _done(d, qid))
    assert recipient_states(v) == {f"ok@{domain}": state}
    assert v.recipients[0].last_reply.startswith(reply)
    # the DSN goes back to app@sender.test, whose MX is the sink
    dsn = await wait_until(lambda: _dsn_for(sink), timeout=20)
    assert f"Final-Recipient: rfc822; ok@{domain}" in dsn.data.decode()


async def _dsn_for(sink):
    for m in sink.messages:
        if m.mail_from == "":
            return m
    return None


async def test_servfail_is_temporary(world):
    d, sink, dns = world
    qid = await submit(d.port, ["ok@servfail.test"])

    async def attempted():
        v = await d.spool.get_message(qid)
        return v if v.attempts else None
    v = await wait_until(attempted)
    assert v.recipients[0].state == "queued"
    assert v.attempts[0].reply.startswith("451 4.4.3")
    await asyncio.sleep(0.5)
    assert not sink.messages
