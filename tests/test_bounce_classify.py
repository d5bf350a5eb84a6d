"""The classifier on synchronous SMTP replies, and mta's own DSNs through the parser."""

from __future__ import annotations

import importlib

import pytest

from mta.core.envelope import BOUNCED, EXPIRED, DsnCandidate, FailedRecipient
from mta.core.reply import Reply
from mta.mail.bounces import HARD, REASONS, classify, parse
from mta.mail.dsn import build_dsn

CASES = [
    # (esc, code, text) -> (class, reason)
    ("5.1.1", 550, "5.1.1 <a@b.example>: Recipient address rejected: User unknown in local recipient table",
     "hard", "userunknown"),
    ("5.1.1", 550, "The email account that you tried to reach does not exist.", "hard", "userunknown"),
    ("", 550, "Requested action not taken: mailbox unavailable (no such user)", "hard", "userunknown"),
    ("5.1.2", 550, "Host or domain name not found", "hard", "hostunknown"),
    ("5.1.6", 550, "mailbox has moved", "hard", "hasmoved"),
    ("5.7.27", 550, "Domain does not accept mail (null MX)", "hard", "notaccept"),
    ("4.3.2", 421, "Domain does not accept mail", "soft", "notaccept"),
    ("5.2.2", 552, "Mailbox full", "soft", "mailboxfull"),
    ("4.2.2", 452, "The email account that you tried to reach is over quota", "soft", "mailboxfull"),
    ("5.1.1", 550, "user is over quota", "soft", "mailboxfull"),
    ("5.3.4", 552, "Message size exceeds fixed maximum message size", "soft", "mesgtoobig"),
    ("5.7.1", 554, "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     "soft", "blocked"),
    ("5.7.26", 550, "Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
     "soft", "authfailure"),
    ("5.7.1", 550, "Message rejected as spam by Content Filtering", "soft", "spamdetected"),
    ("5.7.0", 554, "Virus found in message", "soft", "virusdetected"),
    ("4.7.0", 421, "Too many concurrent SMTP connections from this IP address", "soft", "toomanyconn"),
    ("4.7.1", 450, "Client host rejected: cannot find your reverse hostname", "soft", "requireptr"),
    ("5.7.1", 554, "Relay access denied", "soft", "norelaying"),
    ("4.4.7", 421, "Message expired", "soft", "expired"),
    ("4.3.0", 451, "Temporary local problem - please try later", "soft", "systemerror"),
    ("5.2.1", 550, "This mailbox has been disabled", "soft", "suspend"),
    ("5.1.8", 553, "Sender address rejected: Domain not found", "soft", "rejected"),
    ("", 421, "Connection timed out", "soft", "networkerror"),
    ("", 451, "Host not found, try again", "soft", "networkerror"),
    ("2.0.0", 250, "Ok: queued as 4ABC", "unknown", "delivered"),
    ("", 554, "", "soft", "undefined"),
]


@pytest.mark.parametrize("esc,code,text,klass,reason", CASES,
                         ids=[f"{c[1]}-{c[4]}" for c in CASES])
def test_synchronous_reply(esc, code, text, klass, reason):
    assert classify(esc, code, text) == (klass, reason)


def test_classify_accepts_a_core_reply():
    reply = Reply(550, "5.1.1", "<nobody@example.org>: user unknown")
    assert classify(reply.esc, reply.code, reply.text) == ("hard", "userunknown")


def test_user_unknown_after_data_is_a_filter_not_a_dead_address():
    assert classify(None, 550, "550 Unknown user", command="DATA") == ("soft", "filtered")
    assert classify(None, 550, "550 Unknown user", command="RCPT") == ("hard", "userunknown")


def test_vocabulary_is_documented():
    doc = importlib.import_module("mta.mail.bounces.classify").__doc__
    for reason in ("userunknown", "hostunknown", "mailboxfull", "filtered", "blocked",
                   "spamdetected", "policyviolation", "rejected", "expired", "mesgtoobig",
                   "suspend", "systemerror", "networkerror", "feedback", "vacation", "delivered"):
        assert reason in REASONS and REASONS[reason]
    for reason in REASONS:
        assert f"  {reason} " in doc, f"{reason} missing from the classify docstring"
    assert HARD == {"userunknown", "hostunknown", "hasmoved", "notaccept"}


ORIGINAL = b"From: App <app@example.com>\r\nTo: a@dest.org\r\nSubject: Hi\r\n\r\nbody\r\n"


def _own_dsn(*recipients, kind="failure"):
    cand = DsnCandidate("Q1A2B3", "app@example.com", 1_700_000_000.0, tuple(recipients))
    return build_dsn(original=ORIGINAL, candidate=cand, reporting_mta="mta.example.net",
                     queue_id="Q1A2B3", now=1_700_000_100.0, kind=kind)


def test_our_own_dsn_round_trips():
    raw = _own_dsn(
        FailedRecipient(0, "a@dest.org", BOUNCED,
                        Reply(550, "5.1.1", "<a@dest.org>: Recipient address rejected: User unknown"),
                        "mx1.dest.org", 1),
        FailedRecipient(1, "b@dest.org", EXPIRED, Reply(451, "4.7.1", "greylisted, try later"),
                        "mx2.dest.org", 36),
        FailedRecipient(2, "c@dest.org", BOUNCED, Reply(552, "5.2.2", "mailbox full"),
                        "mx1.dest.org", 1),
    )
    report = parse(raw)
    assert report.kind == "dsn"
    got = {r.address: (r.action, r.status, r.class_, r.reason, r.replycode, r.remote_mta)
           for r in report.recipients}
    assert got == {
        "a@dest.org": ("failed", "5.1.1", "hard", "userunknown", 550, "mx1.dest.org"),
        "b@dest.org": ("failed", "4.7.1", "soft", got["b@dest.org"][3], 451, "mx2.dest.org"),
        "c@dest.org": ("failed", "5.2.2", "soft", "mailboxfull", 552, "mx1.dest.org"),
    }


def test_our_own_delay_warning_parses_as_delayed():
    raw = _own_dsn(FailedRecipient(0, "a@dest.org", "queued",
                                   Reply(421, "4.4.2", "connection dropped"), "mx1.dest.org", 3),
                   kind="delay")
    (r,) = parse(raw).recipients
    assert (r.address, r.action, r.status, r.class_) == ("a@dest.org", "delayed", "4.4.2", "soft")


def test_garbage_never_raises():
    for raw in (b"", b"\x00\xff" * 100, b"From nobody\n", b"Content-Type: multipart/report\n\n--x"):
        assert parse(raw).kind in ("nonbounce", "bounce")
