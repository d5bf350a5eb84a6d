"""DSN building: parse the output with the stdlib and assert every field."""

import email
import email.policy
from email.utils import parsedate_to_datetime

import pytest

from mta.core.envelope import BOUNCED, EXPIRED, QUEUED, DsnCandidate, FailedRecipient
from mta.core.reply import Reply
from mta.mail.dsn import build_dsn

RECEIVED = 1_700_000_000.0          # Tue, 14 Nov 2023 22:13:20 +0000
NOW = RECEIVED + 5 * 86400          # Sun, 19 Nov 2023 22:13:20 +0000
HOST = "mta.example.net"
ORIGINAL = (b"From: App <app@example.com>\r\n"
            b"To: a@dest.org, b@dest.org\r\n"
            b"Subject: Hello\r\n"
            b"Message-ID: <m1@example.com>\r\n"
            b"\r\n"
            b"secret body line\r\n")


def candidate(*recipients, sender="app@example.com"):
    return DsnCandidate("Q1A2B3", sender, RECEIVED, tuple(recipients))


def parse(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = parts[1].get_payload()
    return msg, parts, blocks[0], blocks[1:]


def check_wire_form(raw: bytes):
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_three_recipients_mixed_bounced_and_expired():
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q1A2B3", now=NOW,
                    original_envelope_id="env-42",
                    last_attempts={0: NOW - 4 * 86400, 1: NOW - 60, 2: NOW - 30},
                    candidate=candidate(
        FailedRecipient(0, "a@dest.org", BOUNCED, Reply(550, "5.1.1", "<a@dest.org>: user unknown"),
                        "mx1.dest.org", 1),
        FailedRecipient(1, "b@dest.org", EXPIRED, Reply(451, "4.7.1", "greylisted, try later"),
                        "mx2.dest.org", 36),
        FailedRecipient(2, "c@other.net", EXPIRED, Reply(421, "", "too busy"), "", 36),
    ))
    check_wire_form(raw)
    msg, parts, per_msg, rcpts = parse(raw)

    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert msg["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert msg["To"].addresses[0].addr_spec == "app@example.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith(f"@{HOST}>")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"

    human = parts[0].get_content()
    assert HOST in human
    assert "<a@dest.org> (remote host mx1.dest.org): 550 5.1.1 <a@dest.org>: user unknown" in human
    assert "451 4.7.1 greylisted, try later" in human
    assert "<c@other.net>" in human and "421 too busy" in human
    assert "secret body line" not in raw.decode()

    assert per_msg["Reporting-MTA"] == f"dns; {HOST}"
    assert per_msg["X-Mta-Queue-ID"] == "Q1A2B3"
    assert per_msg["Original-Envelope-Id"] == "env-42"
    assert per_msg["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"

    assert len(rcpts) == 3
    a, b, c = rcpts
    assert a["Final-Recipient"] == "rfc822; a@dest.org"
    assert a["Action"] == "failed"
    assert a["Status"] == "5.1.1"
    assert a["Remote-MTA"] == "dns; mx1.dest.org"
    assert a["Diagnostic-Code"] == "smtp; 550 5.1.1 <a@dest.org>: user unknown"
    assert a["Last-Attempt-Date"] == "Wed, 15 Nov 2023 22:13:20 +0000"   # its own attempt
    assert a["Will-Retry-Until"] is None

    assert b["Final-Recipient"] == "rfc822; b@dest.org"
    assert b["Action"] == "failed"
    assert b["Status"] == "4.7.1"                  # expired: the last 4.x.x reply's code
    assert b["Remote-MTA"] == "dns; mx2.dest.org"
    assert b["Diagnostic-Code"] == "smtp; 451 4.7.1 greylisted, try later"
    assert b["Last-Attempt-Date"] == "Sun, 19 Nov 2023 22:12:20 +0000"

    assert c["Final-Recipient"] == "rfc822; c@other.net"
    assert c["Action"] == "failed"
    assert c["Status"] == "4.4.7"                  # expired without an enhanced code
    assert c["Remote-MTA"] is None
    assert c["Diagnostic-Code"] == "smtp; 421 too busy"

    headers = parts[2].get_content()
    assert headers == ("From: App <app@example.com>\r\nTo: a@dest.org, b@dest.org\r\n"
                       "Subject: Hello\r\nMessage-ID: <m1@example.com>\r\n")


def test_status_derived_from_code_when_no_esc():
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW, candidate=candidate(
        FailedRecipient(0, "a@dest.org", BOUNCED, Reply(554, "", "rejected"), "mx", 1),
        FailedRecipient(1, "b@dest.org", BOUNCED, None, "", 0),
        FailedRecipient(2, "c@dest.org", EXPIRED, Reply(550, "5.7.1", "odd"), "mx", 3)))
    _, _, per_msg, (a, b, c) = parse(raw)
    assert per_msg["Original-Envelope-Id"] is None
    assert a["Status"] == "5.0.0"
    assert b["Status"] == "5.0.0" and b["Diagnostic-Code"] is None
    assert b["Last-Attempt-Date"] is None          # never attempted
    assert c["Status"] == "4.4.7"                  # expired: a 5.x.x code is not reused


def test_delay_warning():
    until = RECEIVED + 5 * 86400
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=RECEIVED + 4 * 3600,
                    kind="delay", retry_until=until,
                    last_attempts={0: RECEIVED + 4 * 3600 - 5, 1: RECEIVED + 3 * 3600},
                    candidate=candidate(
        FailedRecipient(0, "a@dest.org", QUEUED, Reply(451, "4.3.0", "mailbox busy"), "mx1", 4),
        FailedRecipient(1, "b@dest.org", QUEUED, Reply(421, "", "slow down"), "mx1", 4)))
    check_wire_form(raw)
    msg, parts, _, (a, b) = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert a["Action"] == "delayed" and a["Status"] == "4.3.0"
    assert b["Action"] == "delayed" and b["Status"] == "4.3.2"   # bare 421, core.reply's table
    assert a["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert a["Last-Attempt-Date"] == "Wed, 15 Nov 2023 02:13:15 +0000"
    assert b["Last-Attempt-Date"] == "Wed, 15 Nov 2023 01:13:20 +0000"
    assert "keep trying until Sun, 19 Nov 2023 22:13:20 +0000" in parts[0].get_content()


def test_non_ascii_original_header():
    original = ("From: Jörg Müller <jm@example.com>\r\nSubject: Grüße aus Köln ☃\r\n"
                "To: a@dest.org\r\n\r\nkörper\r\n").encode("utf-8")
    raw = build_dsn(original=original, reporting_mta=HOST, queue_id="Q", now=NOW, candidate=candidate(
        FailedRecipient(0, "a@dest.org", BOUNCED, Reply(550, "5.1.1", "no such user"), "mx", 1)))
    check_wire_form(raw)
    assert raw.isascii()                            # 7-bit clean for any relay
    _, parts, _, _ = parse(raw)
    headers = parts[2].get_content()
    assert "Subject: Grüße aus Köln ☃" in headers
    assert "From: Jörg Müller <jm@example.com>" in headers
    assert "körper" not in headers


def test_long_remote_reply_is_folded_and_kept_verbatim():
    text = "policy rejection " + " ".join(f"word{i}" for i in range(400)) + " " + "x" * 1200
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW, candidate=candidate(
        FailedRecipient(0, "a@dest.org", BOUNCED, Reply(550, "5.7.1", text), "mx", 1)))
    check_wire_form(raw)
    _, parts, _, (a,) = parse(raw)
    diag = a["Diagnostic-Code"]
    assert diag.startswith("smtp; 550 5.7.1 policy rejection word0 word1")
    assert "word399" in diag
    assert " ".join(f"word{i}" for i in range(400)) in diag      # unfolds to the original words


def test_non_ascii_remote_reply_escaped_in_status_part():
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW, candidate=candidate(
        FailedRecipient(0, "a@dest.org", BOUNCED, Reply(550, "5.1.1", "Empfänger unbekannt"), "mx", 1)))
    assert raw.isascii()
    _, parts, _, (a,) = parse(raw)
    assert a["Diagnostic-Code"] == "smtp; 550 5.1.1 Empf\\x{E4}nger unbekannt"
    assert "Empfänger unbekannt" in parts[0].get_content()


def test_headers_only_original_and_lf_line_endings():
    raw = build_dsn(original=b"Subject: x\nFrom: a@b.c\n", reporting_mta=HOST, queue_id="Q", now=NOW,
                    candidate=candidate(FailedRecipient(0, "a@dest.org", BOUNCED, None)))
    check_wire_form(raw)
    _, parts, _, _ = parse(raw)
    assert parts[2].get_content().splitlines() == ["Subject: x", "From: a@b.c"]


def test_deterministic_and_refuses_null_sender():
    kw = dict(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW,
              candidate=candidate(FailedRecipient(0, "a@dest.org", BOUNCED, None)))
    assert build_dsn(**kw) == build_dsn(**kw)
    with pytest.raises(ValueError):
        build_dsn(**{**kw, "candidate": candidate(FailedRecipient(0, "a@d.org", BOUNCED, None),
                                                   sender="")})
    with pytest.raises(ValueError):
        build_dsn(**{**kw, "kind": "success"})


def test_last_attempt_date_is_each_recipients_own_attempt():
    """Issue 10 item 11: not the DSN's build time, and none for a recipient
    that was never attempted."""
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW,
                    last_attempts={0: RECEIVED + 10, 2: RECEIVED + 7200.5},
                    candidate=candidate(
                        FailedRecipient(0, "a@dest.org", BOUNCED, Reply(550, "5.1.1", "no"), "mx", 1),
                        FailedRecipient(1, "b@dest.org", BOUNCED, Reply(550, "5.0.0", "operator"), "", 0),
                        FailedRecipient(2, "c@dest.org", EXPIRED, Reply(451, "4.7.1", "grey"), "mx", 9)))
    _, _, msg_fields, (a, b, c) = parse(raw)
    assert parsedate_to_datetime(a["Last-Attempt-Date"]).timestamp() == RECEIVED + 10
    assert b["Last-Attempt-Date"] is None
    assert parsedate_to_datetime(c["Last-Attempt-Date"]).timestamp() == RECEIVED + 7200
    assert NOW != RECEIVED + 10     # the build time appears only in Date:


@pytest.mark.parametrize("reply, status", [
    (Reply(552, "", "Message size exceeds fixed maximum message size"), "5.3.4"),
    (Reply(552, "", "Requested mail action aborted"), "5.3.4"),        # bare 552: RFC 1870
    (Reply(552, "", "Mailbox full"), "5.2.2"),
    (Reply(550, "", "No such user here"), "5.1.1"),
    (Reply(550, "", "Relay access denied"), "5.7.1"),
    (Reply(550, "", ""), "5.0.0"),                                      # ambiguous: not guessed
    (Reply(551, "", "User not local; please try <x@y>"), "5.1.6"),
    (Reply(553, "", "mailbox name not allowed"), "5.1.3"),
    (Reply(554, "", "Transaction failed"), "5.0.0"),
    (Reply(556, "", "Domain does not accept mail"), "5.1.10"),
    (Reply(550, "5.7.26", "No such user"), "5.7.26"),                  # the remote's own wins
])
def test_bounce_status_derived_from_a_bare_reply_code(reply, status):
    """Issue 10 item 22: a reply without an enhanced code gets the one its
    basic code (and text) stands for, not 5.0.0."""
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW,
                    candidate=candidate(FailedRecipient(0, "a@dest.org", BOUNCED, reply, "mx", 1)))
    _, _, _, (a,) = parse(raw)
    assert a["Status"] == status
    assert a["Diagnostic-Code"] == f"smtp; {reply}"                     # the words stay verbatim


def test_utf8_recipient_uses_rfc6533_xtext():
    """Issue 10 item 23: RFC 6533 §3 utf-8 address type, 7-bit form, in a
    plain message/delivery-status; the human part shows the address itself."""
    rcpts = ["j\u00f6hn.d\u0153@example.org", "a+b=c\\d@b\u00fccher.example", "plain+tag@dest.org"]
    raw = build_dsn(original=ORIGINAL, reporting_mta=HOST, queue_id="Q", now=NOW,
                    candidate=candidate(*(FailedRecipient(i, r, BOUNCED, Reply(550, "5.1.1", "no"))
                                          for i, r in enumerate(rcpts))))
    check_wire_form(raw)
    assert raw.isascii()
    _, parts, _, (a, b, c) = parse(raw)
    assert a["Final-Recipient"] == "utf-8; j\\x{F6}hn.d\\x{153}@example.org"
    assert b["Final-Recipient"] == "utf-8; a\\x{2B}b\\x{3D}c\\x{5C}d@b\\x{FC}cher.example"
    assert c["Final-Recipient"] == "rfc822; plain+tag@dest.org"     # ASCII: unchanged
    human = parts[0].get_content()
    assert "<j\u00f6hn.d\u0153@example.org>" in human
