"""The enhanced status code of a reply that came without one (issue 10
item 22): mta/core/reply.py's table, and the classifier's reading of the
text for the ambiguous basic codes."""

from __future__ import annotations

import re

import pytest

from mta.core.reply import BASIC_STATUS, REASON_DETAIL, Reply, derive_status
from mta.mail.bounces.classify import REASONS
from mta.mail.dsn import reply_status

ESC = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def test_every_table_entry_is_a_valid_code_of_its_class():
    for code, esc in BASIC_STATUS.items():
        assert ESC.fullmatch(esc) and esc[0] == str(code)[0], (code, esc)
        Reply(code, esc, "x")                       # Reply's own invariant agrees
    assert set(REASON_DETAIL) <= set(REASONS)        # the classifier's vocabulary


@pytest.mark.parametrize("code, status", [
    (421, "4.3.2"), (450, "4.2.0"), (451, "4.3.0"), (452, "4.3.1"), (550, "5.0.0"),
    (551, "5.1.6"), (552, "5.3.4"), (553, "5.1.3"), (554, "5.0.0"), (556, "5.1.10"),
    (500, "5.5.2"), (503, "5.5.1"), (530, "5.7.0"), (559, "5.0.0"), (499, "4.0.0"),
    (250, "2.0.0"), (354, ""),
])
def test_basic_code_alone(code, status):
    assert derive_status(code) == status
    assert Reply(code, "", "").status() == status


@pytest.mark.parametrize("reply, status", [
    # ambiguous codes: the text decides
    (Reply(552, "", "Requested mail action aborted: exceeded storage allocation"), "5.2.2"),
    (Reply(552, "", "Message size exceeds fixed maximum message size"), "5.3.4"),
    (Reply(552, "", "Too many recipients"), "5.5.3"),
    (Reply(550, "", "No such user here"), "5.1.1"),
    (Reply(550, "", "Service unavailable; client host blocked using zen.spamhaus.org"),
     "5.7.1"),
    (Reply(554, "", "Message rejected as spam"), "5.7.1"),
    (Reply(553, "", "sorry, that domain isn't in my list of allowed rcpthosts"), "5.7.1"),
    (Reply(550, "", "what?"), "5.0.0"),              # nothing the text says: not guessed
    # 452 is "insufficient system storage" unless it says too many recipients
    (Reply(452, "", "Insufficient system storage"), "4.3.1"),
    (Reply(452, "", "Too many recipients"), "4.5.3"),
    # a detail RFC 3463 allows only as permanent is never given to a 4xx
    (Reply(450, "", "User unknown"), "4.2.0"),
    (Reply(451, "", "Message size exceeds fixed maximum"), "4.3.0"),
    # codes with one meaning: the code decides, whatever the text
    (Reply(551, "", "User unknown"), "5.1.6"),
    (Reply(421, "", "Relay access denied"), "4.3.2"),
    # the remote's own code always wins
    (Reply(550, "5.7.26", "No such user"), "5.7.26"),
])
def test_text_refines_ambiguous_codes(reply, status):
    assert reply_status(reply) == status
