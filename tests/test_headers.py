"""prepare_submission: Received/Message-ID/Date on submitted messages."""

from __future__ import annotations

import email
import email.policy
import re

import pytest

from mta.mail.headers import format_date, from_domains, header_names, prepare_submission

NOW = 1_700_000_000.0


def prep(body: bytes, **kw) -> bytes:
    args = dict(hostname="mx.example.net", helo="client.example.org", client_ip="192.0.2.7",
                protocol="ESMTPSA", queue_id_hint="01HF0000000000AB",
                recipient="bob@example.com", now=NOW, authenticated=True)
    args.update(kw)
    return prepare_submission(body, **args)


def test_date_format_is_rfc5322_utc():
    assert format_date(NOW) == "Tue, 14 Nov 2023 22:13:20 +0000"


def test_received_first_with_all_parts():
    out = prep(b"Subject: hi\r\n\r\nbody\r\n")
    assert out.startswith(b"Received: from client.example.org ([192.0.2.7])\r\n"
                          b"\tby mx.example.net (mta) with ESMTPSA id 01HF0000000000AB\r\n"
                          b"\tfor <bob@example.com>; Tue, 14 Nov 2023 22:13:20 +0000\r\n")
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert "ESMTPSA" in msg["Received"]
    assert msg["Subject"] == "hi"
    assert msg.get_content().strip() == "body"


def test_no_for_clause_with_several_recipients():
    out = prep(b"Subject: x\r\n\r\nb\r\n", recipient=None)
    first = out.split(b"\r\n\r\n")[0]
    assert b"for <" not in first
    assert b"id 01HF0000000000AB; Tue, 14 Nov 2023" in first


def test_message_id_and_date_added_at_end_of_header_block():
    out = prep(b"Subject: x\r\nFrom: a@b.c\r\n\r\nbody line\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[-2].startswith(b"Message-ID: <01HF0000000000AB.")
    assert lines[-2].endswith(b"@mx.example.net>")
    assert lines[-1] == b"Date: Tue, 14 Nov 2023 22:13:20 +0000"
    assert body == b"body line\r\n"


@pytest.mark.parametrize("existing", [b"Message-ID: <x@y>", b"message-id: <x@y>",
                                      b"MESSAGE-ID:<x@y>", b"Message-Id : <x@y>"])
def test_existing_message_id_kept_case_insensitive(existing):
    out = prep(b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n" + existing + b"\r\n\r\nb\r\n")
    assert out.lower().count(b"message-id") == 1
    assert out.count(b"Date:") == 1


def test_headers_in_body_do_not_count():
    out = prep(b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\nDate: not a header\r\n")
    head = out.split(b"\r\n\r\n")[0]
    assert b"Message-ID: <01HF" in head
    assert b"Date: Tue, 14 Nov 2023" in head


def test_folded_headers_are_part_of_the_block():
    out = prep(b"Subject: a\r\n  folded\r\nX-Y: z\r\n\r\nb\r\n")
    head = out.split(b"\r\n\r\n")[0]
    assert head.endswith(b"Date: Tue, 14 Nov 2023 22:13:20 +0000")
    assert b"Subject: a\r\n  folded\r\nX-Y: z\r\nMessage-ID:" in head


def test_message_without_separator_only_headers():
    out = prep(b"Subject: only headers\r\n")
    assert out.endswith(b"Subject: only headers\r\nMessage-ID: <01HF0000000000AB."
                        + out.split(b"Message-ID: <01HF0000000000AB.")[1].split(b"\r\n")[0]
                        + b"\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n")
    assert header_names(out) == {"received", "subject", "message-id", "date"}


def test_message_without_separator_and_without_final_newline():
    out = prep(b"Subject: x")
    assert b"Subject: x\r\nMessage-ID: <" in out
    assert header_names(out) == {"received", "subject", "message-id", "date"}


def test_message_without_headers_keeps_body_as_body():
    out = prep(b"just a body line\r\nsecond\r\n")
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep
    assert body == b"just a body line\r\nsecond\r\n"
    assert header_names(out) == {"received", "message-id", "date"}


def test_empty_header_block():
    out = prep(b"\r\nbody\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    assert b"Message-ID:" in head and b"Date:" in head


def test_empty_message():
    out = prep(b"")
    assert header_names(out) == {"received", "message-id", "date"}


def test_bare_lf_message_uses_lf():
    out = prep(b"Subject: x\n\nbody\n")
    assert b"\r" not in out
    assert b"\nDate: Tue, 14 Nov 2023 22:13:20 +0000\n\nbody\n" in out


@pytest.mark.parametrize("protocol,auth,expected", [
    ("ESMTP", False, "ESMTP"), ("ESMTPS", False, "ESMTPS"), ("ESMTPS", True, "ESMTPSA"),
    ("ESMTP", True, "ESMTPA"), ("ESMTPSA", True, "ESMTPSA"), ("SMTP", False, "SMTP"),
    ("bad proto!", False, "ESMTP"),
])
def test_protocol(protocol, auth, expected):
    out = prep(b"S: x\r\n\r\n", protocol=protocol, authenticated=auth)
    assert f" with {expected} id ".encode() in out


def test_helo_is_sanitised():
    out = prep(b"S: x\r\n\r\n", helo="evil (x); y\tz")
    first = out.split(b"\r\n")[0]
    assert first == b"Received: from evil??x???y?z ([192.0.2.7])"


def test_ipv6_client_literal():
    out = prep(b"S: x\r\n\r\n", client_ip="2001:db8::1")
    assert out.startswith(b"Received: from client.example.org ([IPv6:2001:db8::1])")
    out = prep(b"S: x\r\n\r\n", client_ip="::ffff:127.0.0.1")
    assert out.startswith(b"Received: from client.example.org ([127.0.0.1])")


def test_message_ids_are_unique():
    ids = {re.search(rb"Message-ID: (<[^>]+>)", prep(b"S: x\r\n\r\n")).group(1)
           for _ in range(50)}
    assert len(ids) == 50


def test_large_body_is_not_scanned():
    body = b"Subject: x\r\n\r\n" + (b"Date: fake\r\n" * 100_000)
    out = prep(body)
    assert out.endswith(body[len(b"Subject: x\r\n"):])
    assert out.split(b"\r\n\r\n")[0].count(b"Date:") == 1


_FROMS = ["a@b.c", " a@b.C ", "John Smith <j@X.com>", "J. Smith <j@x.com>", "<j@x.com>",
          '"Smith, J" <j@x.com>', "a@b.c, d@e.f", "Smith <j@x.com> (comment)", "j@x.com (John)",
          "O'Neil <o@x.ie>", "x <a@b.c", "x a@b.c>", "<a@b.c>>", "a@b.c.", "a@[1.2.3.4]",
          "=?utf-8?q?J=C3=BCrgen?= <j@x.de>", "Jürgen <j@x.de>", "a", "<>", "Name <a@b>",
          "a-b <a.b@c-d.e>", "group: a@b.c;", "a@b@c", "Tab\t<a@b.c>\t", "<a@b.c> x",
          ". <a@b.c>", "'<a@b.c>", "- <a@b.c>", "John  Smith<j@x.com>", "a.@b.c", ".a@b.c",
          "a..b@c.d", "a@-b.c", "a@b..c"]


@pytest.mark.parametrize("value", _FROMS)
def test_from_domains_fast_path_equals_the_stdlib_parser(value):
    """from_domains reads a plain From: with one regex; whatever the form,
    the answer is what email.utils.getaddresses gives."""
    from email.utils import getaddresses
    want = []
    for _, addr in getaddresses([value]):
        _, at, domain = addr.rpartition("@")
        if not at or not domain:
            want = None
            break
        want.append(domain.strip().rstrip(".").lower())
    body = f"From: {value}\r\nSubject: x\r\n\r\nhi\r\n".encode()
    assert from_domains(body) == (want or None)
