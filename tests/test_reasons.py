"""The bounce reason taxonomy (mta.core.reasons) and the parser's use of it.

Table-driven: every fine reason of the parser maps into CATEGORIES; the
suppression and reputation sets are categories; and `classify` of
representative SMTP reply texts (including gateway rejections and user-unknown
texts without an enhanced code) lands in the expected category.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mta.core import reasons
from mta.mail.bounces.classify import REASONS, classify

ROOT = Path(__file__).resolve().parents[1]


def test_every_fine_reason_has_a_category():
    for fine in REASONS:
        assert fine in reasons.FINE, fine
        assert reasons.category_of(fine) in reasons.CATEGORIES
    assert set(reasons.FINE.values()) <= set(reasons.CATEGORIES)


def test_descriptions_and_sets_are_categories():
    assert set(reasons.DESCRIPTIONS) == set(reasons.CATEGORIES)
    assert all(reasons.DESCRIPTIONS[c].strip() for c in reasons.CATEGORIES)
    assert reasons.SUPPRESSES <= set(reasons.CATEGORIES)
    assert reasons.LIST_QUALITY <= set(reasons.CATEGORIES)
    assert {"user_unknown", "host_unknown", "complaint"} <= reasons.SUPPRESSES
    assert {"user_unknown", "host_unknown"} <= reasons.LIST_QUALITY
    for not_list_quality in ("mailbox_full", "network", "blocked", "spam_content",
                             "filtered", "rate_limited", "policy", "expired"):
        assert not_list_quality not in reasons.LIST_QUALITY
        assert not_list_quality not in reasons.SUPPRESSES


@pytest.mark.parametrize("fine,category", [
    ("userunknown", "user_unknown"), ("hostunknown", "host_unknown"),
    ("mailboxfull", "mailbox_full"), ("feedback", "complaint"), ("vacation", "auto_reply"),
    ("speeding", "rate_limited"), ("mesgtoobig", "size"), ("spamdetected", "spam_content"),
    ("authfailure", "policy"), ("badreputation", "blocked"), ("networkerror", "network"),
    ("expired", "expired"), ("no-such-reason", "other"), ("", "other"),
    ("user_unknown", "user_unknown"),
])
def test_category_of(fine, category):
    assert reasons.category_of(fine) == category


# (status, code, reply text, command) -> expected category. Typical replies,
# none copied from the corpus: gateways (appliances, hosted filtering) that
# blame content or policy are soft even under a user-unknown code; user-unknown
# texts without an enhanced code are hard.
REPLIES = [
    ("5.1.1", 550, "5.1.1 <a@b.example>: Recipient address rejected: User unknown in virtual "
                   "mailbox table", "RCPT", "user_unknown", "hard"),
    (None, 550, "No such user here", "RCPT", "user_unknown", "hard"),
    (None, 550, "Unknown user a@b.example", None, "user_unknown", "hard"),
    (None, 550, "Requested action not taken: mailbox unavailable", "RCPT", "user_unknown", "hard"),
    (None, 550, "Address a@b.example does not exist", None, "user_unknown", "hard"),
    (None, 550, "Invalid recipient: <a@b.example>", None, "user_unknown", "hard"),
    (None, 550, "<a@b.example>: Recipient rejected", None, "user_unknown", "hard"),
    (None, 553, "sorry, that recipient doesn't exist", None, "user_unknown", "hard"),
    (None, 550, "The mailbox you tried to reach does not exist here", None, "user_unknown", "hard"),
    ("5.1.2", 550, "Host or domain name not found", "RCPT", "host_unknown", "hard"),
    (None, 550, "Domain b.example does not exist", None, "host_unknown", "hard"),
    (None, 550, "No such domain", None, "host_unknown", "hard"),
    ("5.2.2", 552, "Mailbox full", "RCPT", "mailbox_full", "soft"),
    (None, 452, "Insufficient storage space for this user", None, "mailbox_full", "soft"),
    ("5.1.1", 550, "Message content rejected", "DATA", "spam_content", "soft"),
    ("5.1.1", 550, "Recipient rejected: Mimecast spam protection", None, "spam_content", "soft"),
    ("5.1.1", 550, "The message was rejected by the IronPort content filter", None,
     "spam_content", "soft"),
    (None, 550, "Rejected by Barracuda spam filter", None, "spam_content", "soft"),
    ("5.7.1", 554, "Message rejected by Symantec.cloud: suspected spam", None,
     "spam_content", "soft"),
    (None, 554, "Virus found in message", "DATA", "spam_content", "soft"),
    ("5.1.1", 550, "Message blocked by gateway policy", None, "policy", "soft"),
    (None, 550, "Rejected by header based Anti-Spoofing policy: a@b.example", None,
     "policy", "soft"),
    ("5.7.26", 550, "Unauthenticated email is not accepted due to domain's DMARC policy",
     None, "policy", "soft"),
    ("5.7.1", 554, "Relay access denied", "RCPT", "policy", "soft"),
    ("5.7.1", 554, "Service unavailable; Client host [192.0.2.1] blocked using "
                   "zen.spamhaus.org", "RCPT", "blocked", "soft"),
    ("5.1.1", 550, "Your IP 192.0.2.1 is blacklisted", None, "blocked", "soft"),
    ("4.7.0", 421, "Too many concurrent SMTP connections from this IP address", None,
     "rate_limited", "soft"),
    ("4.7.28", 421, "Our system has detected an unusual rate of unsolicited mail", None,
     "blocked", "soft"),
    (None, 450, "Rate limited, sending too fast", None, "rate_limited", "soft"),
    ("5.3.4", 552, "Message size exceeds fixed maximum message size", "DATA", "size", "soft"),
    ("4.4.7", 421, "Message expired", None, "expired", "soft"),
    ("4.4.1", 451, "Connection timed out", None, "network", "soft"),
    ("5.2.1", 550, "This mailbox has been disabled", None, "disabled", "soft"),
    ("4.3.0", 451, "Temporary local problem - please try later", None, "other", "soft"),
]


@pytest.mark.parametrize("status,code,text,command,category,klass", REPLIES,
                         ids=[r[2][:40] for r in REPLIES])
def test_classify_reply_category(status, code, text, command, category, klass):
    got_class, fine = classify(status, code, text, command=command)
    assert (reasons.category_of(fine), got_class) == (category, klass), fine


def test_bounce_parse_prints_the_category(tmp_path):
    """`mta bounce parse` keeps the fine reason (the scoring contract) and adds
    its category."""
    raw = (b"From: MAILER-DAEMON@mx.example\r\nTo: app@x.example\r\n"
           b"Subject: Undelivered Mail Returned to Sender\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
           b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.example\r\n\r\n"
           b"Final-Recipient: rfc822; gone@rcpt.example\r\nAction: failed\r\n"
           b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n"
           b"--B--\r\n")
    msg = tmp_path / "bounce.eml"
    msg.write_bytes(raw)
    proc = subprocess.run([sys.executable, "-m", "mta", "bounce", "parse", str(msg)],
                          capture_output=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (r,) = out["recipients"]
    assert (r["address"], r["class"], r["reason"], r["category"]) == (
        "gone@rcpt.example", "hard", "userunknown", "user_unknown")
