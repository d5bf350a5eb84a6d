"""The syntax of operator input (mta.admin.inputs) and how the daemon's admin
backend resolves a destination name (mta.runtime.admin.RuntimeAdmin) over a
real Scheduler and the real routing function (issue 10 items 6 and 16)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mta.admin.backend import NotFound
from mta.admin.inputs import (INT64_MAX, check_queue_id, check_webhook_name, parse_destination,
                              parse_uint)
from mta.runtime.admin import RuntimeAdmin
from mta.scheduler import Scheduler


@pytest.mark.parametrize("text,kind,name", [
    ("example.com", "domain", "example.com"),
    ("Example.COM.", "domain", "example.com"),
    ("bücher.example", "domain", "xn--bcher-kva.example"),
    ("localhost", "domain", "localhost"),
    ("sandbox", "sandbox", "sandbox"), ("SandBox", "sandbox", "sandbox"),
    ("[10.0.0.1]:25", "route", "[10.0.0.1]:25"),
    ("[10.0.0.1]:0025", "route", "[10.0.0.1]:25"),
    ("[::1]:2525", "route", "[::1]:2525"),
    ("[0:0::1]:2525", "route", "[::1]:2525"),
    ("[Smart.Example]:587", "route", "[smart.example]:587"),
    ("[smart_host.example]:25", "route", "[smart_host.example]:25"),
    ("[192.0.2.1]", "literal", "[192.0.2.1]"),
    ("[IPv6:2001:db8::1]", "literal", "[ipv6:2001:db8::1]"),
])
def test_valid_destination_names(text, kind, name):
    assert parse_destination(text) == (kind, name)
    assert parse_destination(name) == (kind, name)          # normal form is a fixed point


@pytest.mark.parametrize("text", [
    "", "../../etc", "..", "a/b", "a\\b", "a\x00b", "a\x1b[31m", "exa mple.org", "a\r\nb",
    "x" * 3000, "a" * 64 + ".example", "-bad.example", "bad-.example", "a..b", "*",
    "*.example.com", "user@example.com", "example.com:25", "%2e%2e", "[10.0.0.1]:0",
    "[10.0.0.1]:65536", "[10.0.0.1]:99999999999999999999", "[10.0.0.1]:-1", "[10.0.0.1]:",
    "[10.0.0.1]:25x", "[10.0.0.1]25", "[10.0.0.1", "[]", "[]:25", "[bad host]:25",
    "[a/b]:25", "[2001:db8::1]", "[IPv6:nope]", "[999.1.1.1]", "[nope]", "\u202eexample.com",
    "example.com\u200b", "[10.0.0.1]:２５", "[10.0.0.1]:٢٥",
])
def test_invalid_destination_names(text):
    with pytest.raises(ValueError) as exc:
        parse_destination(text)
    message = str(exc.value)
    assert message and len(message) < 200
    assert not any(ord(c) < 0x20 for c in message)          # control characters escaped


def test_uint_takes_ascii_digits_in_range_only():
    assert parse_uint("0", 0, INT64_MAX) == 0
    assert parse_uint(str(INT64_MAX), 0, INT64_MAX) == INT64_MAX
    for bad in (str(INT64_MAX + 1), "99999999999999999999999", "-1", "+1", " 1", "1 ", "1_0",
                "1e3", "0x10", "1.0", "²", "٣", "３", "", "1" * 5000):
        with pytest.raises(ValueError):
            parse_uint(bad, 0, INT64_MAX)
    with pytest.raises(ValueError):
        parse_uint("0", 1, 10)


def test_queue_ids_and_webhook_names():
    assert check_queue_id("01JBX5Y7Z9ABCDEF") == "01JBX5Y7Z9ABCDEF"
    for bad in ("", "a b", "a/b", "../x", "a\x00", "A" * 65, "é"):
        with pytest.raises(ValueError):
            check_queue_id(bad)
    assert check_webhook_name("crm hook") == "crm hook"      # config allows any name
    for bad in ("", "a\x00", "a\nb", "w" * 201):
        with pytest.raises(ValueError):
            check_webhook_name(bad)


# ----------------------------------------------- resolution (item 16)

def _admin(routes: dict, *, sandbox: bool = False) -> RuntimeAdmin:
    scheduler = Scheduler(concurrency=2, max_messages_per_connection=10,
                          max_recipients_per_transaction=10, backoff=(1.0,))
    runner = SimpleNamespace(routes=routes, sandbox=sandbox, mx_port=25, scheduler=scheduler,
                             shaping=None, rules=None)
    return RuntimeAdmin(SimpleNamespace(runner=runner))


def test_a_domain_resolves_as_delivery_routes_it():
    a = _admin({"routed.example": "10.0.0.1:25", "v6.example": "[::1]:2525",
                "odd.example": "Smart.Example:587"})
    assert a.resolve_destination("routed.example") == "[10.0.0.1]:25"
    assert a.resolve_destination("v6.example") == "[::1]:2525"
    assert a.resolve_destination("other.example") == "other.example"      # MX, mail or not
    assert a.resolve_destination("[192.0.2.1]") == "[192.0.2.1]"          # a literal: MX kind
    # a route is known by the name delivery gives it, however the config spells the host
    assert a.resolve_destination("[10.0.0.1]:25") == "[10.0.0.1]:25"
    assert a.resolve_destination("[smart.example]:587") == "[Smart.Example]:587"
    for unknown in ("[10.0.0.2]:25", "[10.0.0.1]:26", "sandbox"):
        with pytest.raises(NotFound) as exc:
            a.resolve_destination(unknown)
        assert unknown in str(exc.value)


def test_a_smarthost_takes_every_domain_and_sandbox_takes_everything():
    a = _admin({"*": "relay.example:2525", "direct.example": "10.0.0.1:25"})
    assert a.resolve_destination("anything.example") == "[relay.example]:2525"
    assert a.resolve_destination("direct.example") == "[10.0.0.1]:25"
    assert a.resolve_destination("[relay.example]:2525") == "[relay.example]:2525"
    s = _admin({"routed.example": "10.0.0.1:25"}, sandbox=True)
    assert s.resolve_destination("routed.example") == "sandbox"
    assert s.resolve_destination("sandbox") == "sandbox"
    with pytest.raises(NotFound, match="sandbox"):
        s.resolve_destination("[10.0.0.1]:25")


async def test_a_suspended_destination_can_be_resumed_after_its_route_went():
    a = _admin({"routed.example": "10.0.0.1:25"})
    sched = a.d.runner.scheduler
    sched.suspend("[10.0.0.1]:25")
    a.d.runner.routes = {}                                   # a reload removed the route
    assert a.resolve_destination("[10.0.0.1]:25") == "[10.0.0.1]:25"
    assert a.resolve_destination("routed.example") == "routed.example"
