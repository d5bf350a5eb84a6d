"""The observation seam: what the daemon tells whoever is counting.

One job: name the events an operator wants counted (sessions, messages
received, AUTH failures, recipient outcomes, delivery attempts, DKIM
signatures, inbound bounces) as methods of one class whose default does
nothing. Parts that produce the events take an `observer: Observer`
keyword defaulting to `Observer()`, so nothing changes for callers that do
not count; `mta.admin.metrics.Metrics` is the Prometheus implementation.

API (every method returns None and must not raise, block or await)
    session_opened(listener) / session_closed(listener)
        one pair per SMTP connection on listener `listener` (its config name)
    message_received(listener, result)
        one per message transaction that got a final answer:
        result "accepted" (2xx after the spool committed it), "rejected"
        (5xx at DATA, or a policy refusal of the sender at MAIL FROM),
        "tempfail" (4xx at DATA, including an exception → 451)
    auth_failure(listener)          a failed credential check
    session_refused(listener, reason)
        a session limit that bit: a connection refused with 421
        ("max_sessions", "max_sessions_per_ip") or a session closed
        ("transaction_timeout", "junk_commands"); SESSION_LIMITS
    recipient_outcome(outcome, klass="")
        one per recipient update recorded in the spool: outcome "delivered",
        "deferred", "bounced" (klass "hard" | "soft"; also an asynchronous
        bounce that moved a delivered or queued recipient to bounced),
        "expired", "suppressed" (accepted but on the suppression list)
    attempt_finished(seconds, destination_kind, result)
        one per delivery batch (one connection attempt to a destination):
        its wall duration, Destination.kind ("mx" | "route" | "sandbox") and
        the DestinationHealth value ("ok" | "down" | "throttling")
    dkim_signed(seconds)            one per signed message (may be called
                                    from a worker thread)
    bounce_received(kind)           one per report that arrived by mail:
        "bounce" | "complaint" | "bad_token" | "unmatched" | "not_a_failure"
    capture_refused(reason)         one per inbound message for postmaster@/
        abuse@ that the capture maildir did not take: "quota" (its size or
        count quota is reached, or the message alone is bigger) | "error"
        (writing failed: disk full, I/O error, a broken directory);
        CAPTURE_REFUSALS
    webhook_request(webhook, result)
        one per webhook POST to endpoint `webhook` (its config name): result
        "ok" (2xx: the cursor advanced) | "failed" (another status, a
        timeout, a connection error: it will be retried)

Invariants
  * Stdlib only (ARCHITECTURE §2): the core never knows Prometheus exists.
  * Observers are told after the fact they report (a message is "accepted"
    only once enqueue returned, an outcome only once it was recorded), and
    their failures are theirs: callers do not guard the calls.
"""

from __future__ import annotations

__all__ = ["Observer", "result_of", "MESSAGE_RESULTS", "SESSION_LIMITS", "RECIPIENT_OUTCOMES",
           "ATTEMPT_RESULTS", "BOUNCE_KINDS", "CAPTURE_REFUSALS", "WEBHOOK_RESULTS"]

MESSAGE_RESULTS = ("accepted", "rejected", "tempfail")
SESSION_LIMITS = ("max_sessions", "max_sessions_per_ip", "transaction_timeout", "junk_commands")
RECIPIENT_OUTCOMES = ("delivered", "deferred", "bounced", "expired", "suppressed")
ATTEMPT_RESULTS = ("ok", "down", "throttling")
BOUNCE_KINDS = ("bounce", "complaint", "bad_token", "unmatched", "not_a_failure")
CAPTURE_REFUSALS = ("quota", "error")
WEBHOOK_RESULTS = ("ok", "failed")


class Observer:
    """Counts nothing. Subclass and override what you count."""

    def session_opened(self, listener: str) -> None:
        pass

    def session_closed(self, listener: str) -> None:
        pass

    def message_received(self, listener: str, result: str) -> None:
        pass

    def auth_failure(self, listener: str) -> None:
        pass

    def session_refused(self, listener: str, reason: str) -> None:
        pass

    def recipient_outcome(self, outcome: str, klass: str = "") -> None:
        pass

    def attempt_finished(self, seconds: float, destination_kind: str, result: str) -> None:
        pass

    def dkim_signed(self, seconds: float) -> None:
        pass

    def bounce_received(self, kind: str) -> None:
        pass

    def capture_refused(self, reason: str) -> None:
        pass

    def automation_action(self, action: str) -> None:
        """A shaping rule fired `action` ("suspend", "connection_limit", …)."""

    def content_event(self, event: str, label: str) -> None:
        """Issue 16: a recipient unsubscribed (label: one-click | page), clicked or
        opened (label: human, or the bot/proxy label), or a one-time code was
        sent (label: first | resend) or checked (label: the check's result)."""

    def tls_session(self, policy: str, result: str) -> None:
        """An outbound TLS negotiation under `policy` (opportunistic, mta-sts,
        dane, an override level) ended with `result`: "success" or an RFC 8460
        result type (issue 17)."""

    def webhook_request(self, webhook: str, result: str) -> None:
        pass


def result_of(reply: str) -> str:
    """The `message_received` result for a final DATA (or MAIL) reply line."""
    head = reply[:1]
    if head == "2":
        return "accepted"
    if head == "4":
        return "tempfail"
    return "rejected"
