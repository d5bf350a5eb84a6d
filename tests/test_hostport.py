"""core.hostport: the one host:port grammar (issue 11 item 7)."""

import pytest

from mta.core.hostport import format_hostport, split_hostport, split_ip_port


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:587", ("127.0.0.1", 587)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:8025", ("localhost", 8025)),
    ("[::1]:25", ("::1", 25)),
    ("[::]:8025", ("::", 8025)),
    ("[relay.example]:2525", ("relay.example", 2525)),
    ("mx.example:0025", ("mx.example", 25)),
])
def test_split_hostport(text, expected):
    assert split_hostport(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("relay", ("relay", 25)), ("[relay]", ("relay", 25)), ("[::1]", ("::1", 25)),
    ("relay:2525", ("relay", 2525)),
])
def test_split_hostport_default_port(text, expected):
    assert split_hostport(text, default_port=25) == expected


@pytest.mark.parametrize("bad", [
    "localhost", "[::1]", ":25", "[]:25", "::1:25", "a:b:25", "[::1", "[::1]x", "[::1]25",
    "host:", "host:x", "host:99999", "host:-1", "host:+25", "host:²", " host:25", "host:25 ",
    "",
])
def test_split_hostport_refuses(bad):
    with pytest.raises(ValueError):
        split_hostport(bad)


def test_no_port_is_refused_only_without_a_default():
    with pytest.raises(ValueError, match="no port"):
        split_hostport("relay")
    with pytest.raises(ValueError):
        split_hostport("", default_port=25)


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.153:5353", ("127.0.0.153", 5353)), ("10.0.0.1", ("10.0.0.1", 53)),
    ("::1", ("::1", 53)), ("[::1]:5353", ("::1", 5353)), ("2001:db8::53", ("2001:db8::53", 53)),
])
def test_split_ip_port(text, expected):
    assert split_ip_port(text, 53) == expected


@pytest.mark.parametrize("bad", ["dns.example:53", "dns.example", "[::1]", "10.0.0.1:x", ""])
def test_split_ip_port_refuses(bad):
    with pytest.raises(ValueError):
        split_ip_port(bad, 53)


@pytest.mark.parametrize("host,port", [("::1", 25), ("10.0.0.1", 0), ("mx.example", 2525)])
def test_format_hostport_round_trips(host, port):
    assert split_hostport(format_hostport(host, port)) == (host, port)
