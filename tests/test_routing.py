import pytest

from mta.core.envelope import Destination
from mta.policy.routing import destination_for, parse_hostport


def test_sandbox_wins_over_everything():
    d = destination_for("example.com", {"example.com": "relay:2525", "*": "x:25"}, sandbox=True)
    assert d == Destination("sandbox", "sandbox")
    assert (d.name, d.kind) == ("sandbox", "sandbox")


def test_mx_by_default():
    assert destination_for("example.com", {}, sandbox=False) == \
        Destination("example.com", "mx", domain="example.com", port=25)
    assert destination_for("Example.COM.", {}, sandbox=False, mx_port=2525) == \
        Destination("example.com", "mx", domain="example.com", port=2525)


def test_exact_route_beats_wildcard():
    routes = {"example.com": "relay.internal:2525", "*": "smarthost:587"}
    assert destination_for("example.com", routes, sandbox=False) == \
        Destination("[relay.internal]:2525", "route", host="relay.internal", port=2525)
    assert destination_for("other.org", routes, sandbox=False) == \
        Destination("[smarthost]:587", "route", host="smarthost", port=587)


def test_route_keys_are_case_insensitive():
    d = destination_for("example.com", {"EXAMPLE.com": "10.0.0.1:25"}, sandbox=False)
    assert d.name == "[10.0.0.1]:25" and d.kind == "route"


def test_domains_sharing_a_smarthost_share_a_queue():
    routes = {"*": "smarthost:25"}
    assert destination_for("a.com", routes, sandbox=False) == \
        destination_for("b.org", routes, sandbox=False)


def test_ipv6_route():
    d = destination_for("example.com", {"*": "[::1]:25"}, sandbox=False)
    assert d == Destination("[::1]:25", "route", host="::1", port=25)


def test_route_without_port_and_no_route_for_other_domain():
    d = destination_for("example.com", {"example.com": "relay"}, sandbox=False)
    assert (d.name, d.host, d.port) == ("[relay]:25", "relay", 25)
    assert destination_for("x.net", {"example.com": "relay"}, sandbox=False).kind == "mx"


@pytest.mark.parametrize("text,expected", [
    ("host:25", ("host", 25)), ("[::1]:2525", ("::1", 2525)), ("[host]", ("host", 25)),
    ("127.0.0.1:10025", ("127.0.0.1", 10025)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("bad", ["::1:25", "host:0", "host:99999", "host:x", ":25", "[::1", "[::1]x"])
def test_parse_hostport_rejects(bad):
    with pytest.raises(ValueError):
        parse_hostport(bad)
