"""MX resolution against a real DNS server on 127.0.0.153 (tests/support/dnsserver.py)."""

from __future__ import annotations

import random

import pytest

from mta.core.errors import PermFailure, TempFailure
from mta.delivery.mx import Hop, resolve_hops
from mta.delivery.resolver import (DnsResolver, DnsTempError, MxRecord, NoRecords, NullMx,
                                   NxDomain, parse_nameserver)
from tests.support.dnsserver import DnsServer

ZONE = {
    "example.test": {"MX": [(10, "mx1.example.test")], "A": ["127.0.0.9"]},
    "mx1.example.test": {"A": ["127.0.0.1"]},
    "two.test": {"MX": [(20, "up.two.test"), (10, "down.two.test")]},
    "down.two.test": {"A": ["127.0.0.3"]},
    "up.two.test": {"A": ["127.0.0.1"]},
    "implicit.test": {"A": ["127.0.0.1"], "TXT": ["v=spf1 -all"]},
    "v6only.test": {"AAAA": ["::1"]},
    "dual.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test"), (5, "first.equal.test")]},
    "a.equal.test": {"A": ["127.0.0.11"]},
    "b.equal.test": {"A": ["127.0.0.12"]},
    "first.equal.test": {"A": ["127.0.0.10"]},
    "partial.test": {"MX": [(10, "missing.partial.test"), (20, "mx1.example.test")]},
    "nowhere.test": {"MX": [(10, "missing.nowhere.test")]},
    "halfbroken.test": {"MX": [(10, "sick.halfbroken.test"), (20, "missing.halfbroken.test")]},
    "alias.test": {"MX": [(10, "cname.alias.test")]},
    "cname.alias.test": {"CNAME": ["mx1.example.test"]},
    "empty.test": {"TXT": ["nothing here"]},
}


@pytest.fixture
async def dns():
    async with DnsServer(ZONE, servfail={"servfail.test", "sick.halfbroken.test"},
                         timeout={"slowdns.test"}) as server:
        yield server


@pytest.fixture
def resolver(dns):
    return DnsResolver([dns.nameserver], timeout=0.3, cache=False)


# ---- the resolver seam ----

async def test_resolver_mx_and_addresses(resolver):
    assert await resolver.mx("example.test") == [MxRecord(10, "mx1.example.test")]
    assert await resolver.addresses("mx1.example.test") == ["127.0.0.1"]
    assert await resolver.addresses("dual.test") == ["127.0.0.1", "::1"]  # A first
    assert await resolver.addresses("127.0.0.7") == ["127.0.0.7"]          # literal, no query


async def test_resolver_typed_answers(resolver):
    with pytest.raises(NxDomain):
        await resolver.mx("nosuch.test")
    with pytest.raises(NoRecords):
        await resolver.mx("implicit.test")
    with pytest.raises(NullMx):
        await resolver.mx("nullmx.test")
    with pytest.raises(DnsTempError, match="SERVFAIL"):
        await resolver.mx("servfail.test")
    with pytest.raises(DnsTempError, match="timeout"):
        await resolver.mx("slowdns.test")
    with pytest.raises(NoRecords):
        await resolver.addresses("empty.test")
    with pytest.raises(NxDomain):
        await resolver.addresses("nosuch.test")


def test_parse_nameserver():
    assert parse_nameserver("127.0.0.153:5353") == ("127.0.0.153", 5353)
    assert parse_nameserver("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    with pytest.raises(ValueError):
        parse_nameserver("dns.example:53")


def test_server_thread_mode():
    import dns.message
    import dns.query
    server = DnsServer(ZONE, host="127.0.0.154").start()
    try:
        q = dns.message.make_query("example.test", "MX")
        r = dns.query.udp(q, server.host, port=server.port, timeout=2)
        assert "mx1.example.test" in r.answer[0].to_text()
        r = dns.query.tcp(q, server.host, port=server.port, timeout=2)
        assert "mx1.example.test" in r.answer[0].to_text()
    finally:
        server.stop()


# ---- resolve_hops ----

async def test_mx_with_address(resolver):
    assert await resolve_hops("example.test", resolver) == [
        Hop("mx1.example.test", ("127.0.0.1",), 10)]


async def test_mx_preference_order(resolver):
    hops = await resolve_hops("two.test", resolver)
    assert [(h.host, h.addresses) for h in hops] == [
        ("down.two.test", ("127.0.0.3",)), ("up.two.test", ("127.0.0.1",))]


async def test_equal_preferences_are_shuffled(resolver):
    orders = set()
    for seed in range(20):
        hops = await resolve_hops("equal.test", resolver, rng=random.Random(seed))
        assert hops[0].host == "first.equal.test"
        orders.add(tuple(h.host for h in hops[1:]))
    assert orders == {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")}


async def test_implicit_mx(resolver):
    assert await resolve_hops("implicit.test", resolver) == [
        Hop("implicit.test", ("127.0.0.1",), 0)]


async def test_implicit_mx_aaaa_only(resolver):
    assert await resolve_hops("v6only.test", resolver) == [Hop("v6only.test", ("::1",), 0)]


async def test_mx_through_cname(resolver):
    hops = await resolve_hops("alias.test", resolver)
    assert hops == [Hop("cname.alias.test", ("127.0.0.1",), 10)]


async def test_unresolvable_mx_host_is_skipped(resolver):
    hops = await resolve_hops("partial.test", resolver)
    assert [h.host for h in hops] == ["mx1.example.test"]


async def test_null_mx_is_permanent(resolver):
    with pytest.raises(PermFailure) as exc:
        await resolve_hops("nullmx.test", resolver)
    assert (exc.value.reply.code, exc.value.reply.esc) == (556, "5.1.10")
    assert "nullmx.test" in exc.value.reply.text


async def test_nxdomain_is_permanent(resolver):
    with pytest.raises(PermFailure) as exc:
        await resolve_hops("nosuch.test", resolver)
    reply = exc.value.reply
    assert (reply.code, reply.esc) == (550, "5.1.2")
    assert "nosuch.test" in reply.text and "not found" in reply.text


async def test_servfail_is_temporary(resolver):
    with pytest.raises(TempFailure) as exc:
        await resolve_hops("servfail.test", resolver)
    assert (exc.value.reply.code, exc.value.reply.esc) == (451, "4.4.3")
    assert "servfail.test" in exc.value.reply.text


async def test_timeout_is_temporary(resolver):
    with pytest.raises(TempFailure) as exc:
        await resolve_hops("slowdns.test", resolver)
    assert (exc.value.reply.code, exc.value.reply.esc) == (451, "4.4.3")
    assert "slowdns.test" in exc.value.reply.text


async def test_no_mx_host_resolves_is_permanent(resolver):
    with pytest.raises(PermFailure) as exc:
        await resolve_hops("nowhere.test", resolver)
    assert exc.value.reply.esc == "5.4.4"
    assert "missing.nowhere.test" in exc.value.reply.text


async def test_mx_hosts_failing_temporarily_is_temporary(resolver):
    with pytest.raises(TempFailure) as exc:
        await resolve_hops("halfbroken.test", resolver)
    assert exc.value.reply.esc == "4.4.3"
    assert "sick.halfbroken.test" in exc.value.reply.text


async def test_domain_literal_needs_no_dns():
    class NoDns:
        async def mx(self, domain):
            raise AssertionError("no lookup for a literal")

        addresses = mx
    assert await resolve_hops("[127.0.0.5]", NoDns()) == [Hop("127.0.0.5", ("127.0.0.5",), 0)]
