"""The one MAIL FROM / RCPT TO address check (server/addresses.py), and the
two listeners that share it agreeing on the wire (issue 11 item 7)."""

from __future__ import annotations

import pytest

from mta.core import Reply
from mta.server.addresses import check_recipient, check_sender
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)
from tests.test_inbound import BOUNCE_DOMAIN, make_inbound  # noqa: F401  (fixture)
from tests.test_server import Client, credentials, make_listener  # noqa: F401  (fixtures)

NEED_UTF8 = "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"


@pytest.mark.parametrize("address,smtp_utf8,expected", [
    ("<>", False, ""),
    ("a@Example.COM", False, "a@example.com"),
    ("a@bücher.example", True, "a@xn--bcher-kva.example"),
    ("jörg@bücher.example", True, "jörg@xn--bcher-kva.example"),
    ("a@bücher.example", False, NEED_UTF8),      # the domain alone is enough (RFC 6531)
    ("ü@example.com", False, NEED_UTF8),
    ("a@xn--bcher-kva.example", False, "a@xn--bcher-kva.example"),   # already ASCII
    ("a..b@example.com", False, ("501 5.1.7 Bad sender address syntax: a..b@example.com "
                                 "(invalid address 'a..b@example.com': bad local part)")),
    ("a\udcff@example.com", True, ("501 5.1.7 Bad sender address syntax: a?@example.com "
                                   "(not UTF-8)")),
])
def test_check_sender(address, smtp_utf8, expected):
    got = check_sender(address, smtp_utf8=smtp_utf8)
    assert (str(got) if isinstance(got, Reply) else got) == expected


@pytest.mark.parametrize("address,smtp_utf8,expected", [
    ("<>", False, "501 5.1.3 Bad recipient address syntax: <> is not a recipient"),
    ("b@Example.NET", False, "b@example.net"),
    ("josé@bücher.example", True, "josé@xn--bcher-kva.example"),
    ("b@bücher.example", False, NEED_UTF8),
    ("nodomain", False, ("501 5.1.3 Bad recipient address syntax: nodomain (invalid address "
                         "'nodomain': expected local@domain)")),
])
def test_check_recipient(address, smtp_utf8, expected):
    got = check_recipient(address, smtp_utf8=smtp_utf8)
    assert (str(got) if isinstance(got, Reply) else got) == expected


async def test_submission_and_inbound_agree_on_a_non_ascii_domain(make_listener, make_inbound):
    """Before issue 11, inbound checked the parsed (punycode) address and took
    a UTF-8 domain without SMTPUTF8; submission refused it. Both refuse now."""
    sub, _ = await make_listener(tls="none", trusted_networks=("127.0.0.0/8",))
    inb, deliver = await make_inbound()
    for lst in (sub, inb):
        c = await Client.connect(lst.sockname)
        await c.ehlo()
        assert await c.cmd("MAIL FROM:<a@bücher.example>".encode()) == (553, NEED_UTF8)
        assert (await c.cmd("MAIL FROM:<a@example.org>"))[0] == 250
        assert await c.cmd(f"RCPT TO:<b@bücher.{BOUNCE_DOMAIN}>".encode()) == (553, NEED_UTF8)
        await c.close()
    assert deliver.got == []
