"""policy.outcomes: what one attempt's outcome makes of a recipient row and an
address — table-driven, pure, with the real bounce vocabulary and a fixed `now`."""

import pytest

from mta.core import (BOUNCED, DELIVERED, EXPIRED, QUEUED, DestinationHealth, PermFailure,
                      QueuedRecipient, RecipientFate, RecipientOutcome, Reply, TempFailure)
from mta.core.reasons import category_of
from mta.mail.bounces.classify import classify
from mta.mail.dsn import recipient_status
from mta.policy.outcomes import (LOCAL_DELIVERY_ERROR, LOCAL_READ_ERROR, Attempt,
                                 ReplyVocabulary, destination_verdict, expired_unattempted,
                                 put_back, settle)
from mta.policy.retry import RetryPolicy

T0 = 1_700_000_000.0
NOW = T0 + 100.0
RETRY = RetryPolicy.parse("10m,1h", "1d")
VOCAB = ReplyVocabulary(classify=classify, status=recipient_status)
ATTEMPT = Attempt(started=NOW - 2.0, duration=1.5, now=NOW)
D, B, F = RecipientFate.DELIVERED, RecipientFate.BOUNCED, RecipientFate.DEFERRED
MX = "mx.rcpt.test"


def item(attempts: int = 0, received_at: float = T0) -> QueuedRecipient:
    return QueuedRecipient("Q1", 3, "bob@rcpt.test", "rcpt.test", "app@x.test", attempts,
                           received_at, received_at)


# (case, fate, reply, remote host, received_at,
#  state, next attempt, ledger detail (class, reason_detail, reason, status) or None
#  (None: whatever the classifier says, and its category; deferrals have no "sync"),
#  address kind or None, status, outcome, class)
CASES = [
    ("delivered", D, Reply(250, "2.0.0", "Ok"), MX, T0,
     DELIVERED, None, None, "delivered", None, "delivered", ""),
    ("hard bounce", B, Reply(550, "5.1.1", "No such user"), MX, T0,
     BOUNCED, None, ("hard", "userunknown", "user_unknown", "5.1.1"), "hard", "5.1.1",
     "bounced", "hard"),
    ("soft bounce: mailbox full", B, Reply(552, "", "Mailbox full"), MX, T0,
     BOUNCED, None, ("soft", "mailboxfull", "mailbox_full", "5.2.2"), "soft", "5.2.2",
     "bounced", "soft"),
    ("deferred by the remote", F, Reply(451, "4.2.0", "Try again later"), MX, T0,
     QUEUED, NOW + 600, ("soft", None, None, "4.2.0"), "soft", "4.2.0", "deferred", ""),
    ("deferred without a remote host: nothing about the address", F,
     Reply(451, "4.4.1", "Connection refused"), "", T0,
     QUEUED, NOW + 600, None, None, "4.4.1", "deferred", ""),
    ("deferred past the lifetime: expired", F, Reply(451, "", "greylisted"), MX, NOW - 86400,
     EXPIRED, None, ("soft", "expired", "expired", "4.4.7"), "soft", "4.4.7", "expired", ""),
    ("near the lifetime: one last try at the deadline", F, Reply(451, "4.7.1", "later"), MX,
     NOW - 86400 + 60, QUEUED, NOW + 60, ("soft", None, None, "4.7.1"), "soft", "4.7.1",
     "deferred", ""),
    ("destination verdict (null MX) bounces, no remote host", B,
     Reply(556, "5.1.10", "Domain does not accept mail"), "", T0,
     BOUNCED, None, ("hard", None, "host_unknown", "5.1.10"), "hard", "5.1.10",
     "bounced", "hard"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_settle(case):
    (_, fate, reply, host, received, state, nxt, detail, kind, status, outcome,
     klass) = case
    s = settle(item(received_at=received), RecipientOutcome(fate, reply, remote_host=host,
                                                             remote_ip="127.0.0.1" if host else "",
                                                             tls="TLSv1.3" if host else ""),
               attempt=ATTEMPT, retry=RETRY, vocabulary=VOCAB)
    u = s.update
    assert (u.queue_id, u.rcpt_idx, u.state, u.next_attempt) == ("Q1", 3, state, nxt)
    assert (u.reply, u.attempted_at, u.duration, u.remote_host, u.counts_attempt) == (
        reply, ATTEMPT.started, ATTEMPT.duration, host, True)
    if detail is None:
        assert u.event_detail is None
    else:
        want_class, want_fine, want_category, want_status = detail
        d = u.event_detail
        assert d["class"] == want_class and d["status"] == want_status
        assert d.get("sync") is (None if state == QUEUED else True)
        if want_fine is None:   # whatever the classifier says, the same as classify()
            want_fine = classify(reply.esc or None, reply.code, reply.text, command="RCPT")[1]
        assert d["reason_detail"] == want_fine
        assert d["reason"] == (want_category or category_of(want_fine))
    if kind is None:
        assert s.address is None
    else:
        a = s.address
        assert (a.address, a.kind, a.at, a.queue_id) == ("bob@rcpt.test", kind, NOW, "Q1")
        assert a.reply == ("" if kind == "delivered" else str(reply))
    assert (s.status, s.outcome, s.klass) == (status, outcome, klass)


def test_no_outcome_is_a_local_deferral_that_says_nothing_about_the_address():
    s = settle(item(), None, attempt=ATTEMPT, retry=RETRY, vocabulary=VOCAB)
    assert (s.update.state, s.update.reply, s.update.next_attempt) == (
        QUEUED, LOCAL_READ_ERROR, NOW + 600)
    assert s.address is None and s.outcome == "deferred"


def test_the_retry_schedule_counts_this_attempt():
    s = settle(item(attempts=1), RecipientOutcome(F, Reply(451, "4.2.0", "later"), MX),
               attempt=ATTEMPT, retry=RETRY, vocabulary=VOCAB)
    assert s.update.next_attempt == NOW + 3600            # the second wait


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, status, code, text, *, command=None):
        self.calls += 1
        assert command == "RCPT"
        return classify(status, code, text, command=command)


@pytest.mark.parametrize("fate,reply,calls", [
    (D, Reply(250, "2.0.0", "Ok"), 0),
    (B, Reply(550, "5.1.1", "No such user"), 1),
    (F, Reply(451, "4.2.0", "later"), 1),
])
def test_each_reply_is_classified_once(fate, reply, calls):
    counting = Counting()
    settle(item(), RecipientOutcome(fate, reply, MX), attempt=ATTEMPT, retry=RETRY,
           vocabulary=ReplyVocabulary(classify=counting, status=recipient_status))
    assert counting.calls == calls


def test_expired_unattempted_keeps_the_last_reply_when_there_was_an_attempt():
    never = expired_unattempted(item(attempts=0), NOW)
    assert (never.state, never.counts_attempt, never.attempted_at) == (EXPIRED, False, NOW)
    assert never.reply == Reply(451, "4.4.7", "Message expired: delivery time limit exceeded "
                                              "before any attempt succeeded")
    assert expired_unattempted(item(attempts=2), NOW).reply is None


def test_put_back_counts_no_attempt():
    u = put_back(item(), NOW + 60)
    assert (u.state, u.next_attempt, u.counts_attempt, u.reply) == (QUEUED, NOW + 60, False, None)


@pytest.mark.parametrize("exc,fate,reply,health", [
    (PermFailure(Reply(556, "5.1.10", "null MX")), B, Reply(556, "5.1.10", "null MX"),
     DestinationHealth.OK),
    (TempFailure(Reply(451, "4.4.3", "SERVFAIL")), F, Reply(451, "4.4.3", "SERVFAIL"),
     DestinationHealth.DOWN),
    (RuntimeError("bug"), F, LOCAL_DELIVERY_ERROR, DestinationHealth.DOWN),
])
def test_destination_verdict(exc, fate, reply, health):
    outcome, h = destination_verdict(exc)
    assert (outcome.fate, outcome.reply, outcome.remote_host, h) == (fate, reply, "", health)
