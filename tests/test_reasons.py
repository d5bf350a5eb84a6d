"""The bounce reason taxonomy (mta.core.reasons) and the parser's use of it.

Table-driven: every fine reason of the parser maps into CATEGORIES; the
suppression and reputation sets are categories; and `classify` of
representative SMTP reply texts (including gateway rejections and user-unknown
texts without an enhanced code) lands in the expected category.
"""

from __future__ import annotations

import pytest

from mta.core import reasons
from mta.mail.bounces.classify import REASONS


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
