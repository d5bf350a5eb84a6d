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


# Structural rules of the text detectors, on small synthetic notices.

def _addrs(raw: bytes):
    report = parse(raw)
    return report.kind, [(r.address, r.class_, r.reason) for r in report.recipients]


def test_reply_after_rcpt_command_is_a_dead_address_even_with_a_filter_code():
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\nTo: app@example.com\n"
           b"Subject: Mail delivery failed\n\nThe following address failed:\n\n"
           b"\"a@dest.org\":\nSMTP error from remote server after RCPT command:\n"
           b"host: mx.dest.org\n5.2.1 <a@dest.org>... User Unknown\n")
    assert _addrs(raw) == ("bounce", [("a@dest.org", "hard", "userunknown")])


def test_addresses_above_a_recipient_list_heading_are_the_returned_summary():
    raw = (b"From: System Administrator <postmaster@example.net>\nTo: app@example.com\n"
           b"Subject: Undeliverable: Hi\n\nYour message\n\n  To:      list@example.net\n"
           b"  Subject: Hi\n\ndid not reach the following recipient(s):\n\n"
           b"a@dest.org on Thu, 29 Apr 2010 00:00:00 -0000\n"
           b"    The recipient name is not recognized\n")
    assert _addrs(raw) == ("bounce", [("a@dest.org", "hard", "userunknown")])


def test_dsn_without_a_usable_final_recipient_falls_back_to_the_message():
    raw = (b"From: Mail Delivery Subsystem <mailer-daemon@example.net>\nTo: app@example.com\n"
           b"Subject: Delivery Status Notification (Failure)\nX-Failed-Recipients: a@dest.org\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n"
           b"--b\nContent-Type: text/plain\n\n** Message not delivered **\n\n"
           b"--b\nContent-Type: message/delivery-status\n\n\n--b--\n")
    kind, rcpts = _addrs(raw)
    assert kind == "dsn" and [a for a, _, _ in rcpts] == ["a@dest.org"]


def test_sendmail_transcript_blocks_end_at_each_summary_line():
    raw = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@example.net>\nTo: app@example.com\n"
           b"Subject: Returned mail: see transcript for details\n\n"
           b"   ----- Transcript of session follows -----\n"
           b"While talking to mx.one.org:\n>>> DATA\n<<< 554 Connection reset by peer\n"
           b"554 <a@one.org>... Remote protocol error: Connection reset by peer\n"
           b"550 two.org (smtp)... 550 Host unknown\n"
           b"554 <b@two.org>... 550 Host unknown (Authoritative answer from name server)\n")
    kind, rcpts = _addrs(raw)
    assert kind == "bounce"
    assert [(a, c) for a, c, _ in rcpts] == [("a@one.org", "soft"), ("b@two.org", "hard")]


def test_a_dsn_quoted_in_a_forwarded_message_is_read():
    raw = (b"From: someone@example.jp\nTo: admin@example.jp\n"
           b"Subject: Fwd: Returned mail: see transcript for details\n\nBegin forwarded message:\n\n"
           b"> From: Mail Delivery Subsystem <MAILER-DAEMON>\n> Subject: Returned mail\n"
           b"> Return-Path: <MAILER-DAEMON>\n>\n"
           b"> Final-Recipient: RFC822; a@dest.org\n> Action: failed\n> Status: 5.1.1\n"
           b"> Diagnostic-Code: SMTP; 550 5.1.1 User unknown\n")
    assert _addrs(raw) == ("bounce", [("a@dest.org", "hard", "userunknown")])


def test_microsoft_jmrp_report_is_a_complaint():
    raw = (b"From: staff@hotmail.com\nTo: abuse@example.com\n"
           b"Subject: complaint about message from 192.0.2.1\n"
           b"Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: message/rfc822\n\n"
           b"X-HmXmrOriginalRecipient: a@dest.org\nFrom: app@example.com\nTo: a@dest.org\n"
           b"Subject: Hi\n\nbody\n--b--\n")
    assert _addrs(raw) == ("arf", [("a@dest.org", "complaint", "feedback")])


# -- Original-Recipient and guessed recipients (issue 10 items 18 and 8) -------------

ALIAS_DSN = (b"From: MAILER-DAEMON@mx.example.net\nTo: app@example.com\n"
             b"Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
             b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n"
             b"--b\nContent-Type: text/plain\n\nI'm sorry to have to inform you...\n\n"
             b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
             b"Original-Recipient: rfc822;info@example.org\n"
             b"Final-Recipient: rfc822;jane.doe@mail.example.org\nAction: failed\n"
             b"Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 <jane.doe@mail.example.org>: "
             b"user unknown\n\n--b--\n")


def test_dsn_reports_the_original_recipient_next_to_the_final_one():
    (r,) = parse(ALIAS_DSN).recipients
    assert (r.address, r.original_recipient, r.inferred) == (
        "jane.doe@mail.example.org", "info@example.org", False)
    out = parse(ALIAS_DSN).to_json()["recipients"][0]
    assert out["address"] == "jane.doe@mail.example.org"
    assert out["original_recipient"] == "info@example.org"
    assert "inferred" not in out


def _arf(fields: str, to: str) -> bytes:
    return (b"From: fbl@isp.example\nTo: fbl@example.com\nSubject: complaint\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\n\n"
            b"--b\nContent-Type: text/plain\n\nAn abuse report.\n"
            b"--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nVersion: 1\n"
            + fields.encode() + b"\n--b\nContent-Type: message/rfc822\n\n"
            b"From: app@example.com\nTo: " + to.encode() + b"\nSubject: hi\n\nhello\n--b--\n")


def test_arf_original_rcpt_to_is_the_original_recipient():
    (r,) = parse(_arf("Original-Rcpt-To: <a@dest.org>\n", "b@dest.org, a@dest.org")).recipients
    assert (r.address, r.original_recipient, r.inferred, r.class_) == (
        "a@dest.org", "a@dest.org", False, "complaint")


def test_a_recipient_taken_from_the_returned_to_header_is_marked_inferred():
    """The report names nobody: the To: of the returned copy is a guess (the
    same in every co-recipient's copy), and says so."""
    (r,) = parse(_arf("", "b@dest.org, a@dest.org")).recipients
    assert (r.address, r.original_recipient, r.inferred) == ("b@dest.org", "", True)
    assert parse(_arf("", "b@dest.org")).to_json()["recipients"][0]["inferred"] is True
    empty_ds = (b"From: MAILER-DAEMON@mx.example.net\nTo: app@example.com\nSubject: failure\n"
                b"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
                b"boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nFailed.\n"
                b"--b\nContent-Type: message/delivery-status\n\n\n"
                b"--b\nContent-Type: text/rfc822-headers\n\nFrom: app@example.com\n"
                b"To: c@dest.org\nSubject: hi\n\n--b--\n")
    (r,) = parse(empty_ds).recipients
    assert (r.address, r.inferred) == ("c@dest.org", True)


def test_cli_bounce_parse_prints_the_original_recipient(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "dsn.eml").write_bytes(ALIAS_DSN)
    conf = tmp_path / "mta.toml"
    conf.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n')
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("MTA_CONFIG", None)
    env.pop("MTA_STATE_DIR", None)
    for args in ([], ["--json"]):
        r = subprocess.run([sys.executable, "-m", "mta", "bounce", "parse", str(tmp_path / "dsn.eml"),
                            *args, "--config", str(conf)], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        (rcpt,) = json.loads(r.stdout)["recipients"]
        assert (rcpt["address"], rcpt["original_recipient"]) == (
            "jane.doe@mail.example.org", "info@example.org")
