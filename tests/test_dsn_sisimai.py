"""DSN round trip (issue 4): the DSNs mta builds parse in mta's own bounce
parser and in Sisimai (Debian libsisimai-perl, an independent parser) with
the right recipient, status and hard/soft class."""

from __future__ import annotations

import re
import subprocess

import pytest

from mta.core import BOUNCED, EXPIRED, DsnCandidate, FailedRecipient, Reply
from mta.mail.bounces import parse
from mta.mail.dsn import build_dsn


def _have_sisimai() -> bool:
    return subprocess.run(["perl", "-MSisimai", "-e1"], capture_output=True).returncode == 0


ORIGINAL = (b"From: app@sender.test\r\nTo: x@rcpt.test\r\nSubject: hi\r\n"
            b"Message-ID: <m1@sender.test>\r\n\r\nhello\r\n")

CASES = [
    # (recipient, state, reply, status, hard/soft)
    ("nobody@rcpt.test", BOUNCED,
     Reply(550, "5.1.1", "<nobody@rcpt.test>: Recipient address rejected: User unknown"),
     "5.1.1", "hard"),
    ("full@rcpt.test", BOUNCED, Reply(552, "5.2.2", "Mailbox full, quota exceeded"),
     "5.2.2", "soft"),
    ("grey@rcpt.test", EXPIRED, Reply(451, "4.7.1", "Greylisted, try again later"),
     "4.7.1", "soft"),
]


def dsn_for(rcpt, state, reply) -> bytes:
    cand = DsnCandidate("Q1", "app@sender.test", 1_700_000_000.0,
                        (FailedRecipient(0, rcpt, state, reply, "mx.rcpt.test", 3),))
    return build_dsn(original=ORIGINAL, candidate=cand, reporting_mta="mta.test",
                     queue_id="Q1", now=1_700_000_100.0)


@pytest.mark.parametrize("rcpt, state, reply, status, klass", CASES)
def test_our_parser_reads_our_dsn(rcpt, state, reply, status, klass):
    report = parse(dsn_for(rcpt, state, reply)).to_json()
    assert report["kind"] == "dsn"
    (r,) = report["recipients"]
    assert (r["address"], r["status"], r["class"]) == (rcpt, status, klass)


@pytest.mark.skipif(not _have_sisimai(), reason="Sisimai (libsisimai-perl) is not installed; "
                    "scripts/setup.sh test installs it when run as root")
@pytest.mark.parametrize("rcpt, state, reply, status, klass", CASES)
def test_sisimai_reads_our_dsn(tmp_path, rcpt, state, reply, status, klass):
    mbox = tmp_path / "dsn.mbox"
    mbox.write_bytes(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n"
                     + dsn_for(rcpt, state, reply).replace(b"\r\n", b"\n"))
    out = subprocess.run(
        ["perl", "-MSisimai", "-e",
         'for my $e (@{Sisimai->make($ARGV[0]) || []}) { printf "%s %s %s %s\\n", '
         '$e->recipient->address, $e->deliverystatus, $e->reason, $e->softbounce }', str(mbox)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    address, got_status, reason, softbounce = line.split()
    assert address == rcpt and got_status == status, line
    # Sisimai: softbounce 0 = hard, 1 = soft (and -1 = unknown)
    assert {"0": "hard", "1": "soft"}[softbounce] == klass, line


# -- UTF-8 recipients (issue 10 item 23): RFC 6533 utf-8 address type -------------

UTF8_RCPT = "j\u00f6hn.d\u0153@example.org"
UTF8_REPLY = Reply(550, "5.1.1", "<j\u00f6hn.d\u0153@example.org>: User unknown")
_XTEXT = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")


def xtext_decode(text: str) -> str:
    """RFC 6533 utf-8-addr-xtext back to the address (EmbeddedUnicodeChar)."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), text)


def test_our_parser_reads_a_utf8_recipient():
    report = parse(dsn_for(UTF8_RCPT, BOUNCED, UTF8_REPLY)).to_json()
    (r,) = report["recipients"]
    assert (r["address"], r["status"], r["class"]) == (UTF8_RCPT, "5.1.1", "hard")


@pytest.mark.skipif(not _have_sisimai(), reason="Sisimai (libsisimai-perl) is not installed; "
                    "scripts/setup.sh test installs it when run as root")
def test_sisimai_reads_a_utf8_recipient(tmp_path):
    """Sisimai knows no RFC 6533: it reports the 7-bit form as it stands,
    which decodes to the recipient (the old Python escapes, j\\xf6hn.d\\u0153,
    decode to nothing defined)."""
    mbox = tmp_path / "dsn.mbox"
    mbox.write_bytes(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n"
                     + dsn_for(UTF8_RCPT, BOUNCED, UTF8_REPLY).replace(b"\r\n", b"\n"))
    out = subprocess.run(
        ["perl", "-MSisimai", "-e",
         'for my $e (@{Sisimai->make($ARGV[0]) || []}) { printf "%s %s %s\\n", '
         '$e->recipient->address, $e->deliverystatus, $e->softbounce }', str(mbox)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    address, status, softbounce = line.split()
    assert address == "j\\x{F6}hn.d\\x{153}@example.org", line
    assert xtext_decode(address) == UTF8_RCPT and status == "5.1.1" and softbounce == "0"
