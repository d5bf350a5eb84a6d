"""Prometheus metrics: the `Observer` that counts, and the scrape-time gauges.

One job: turn the daemon's events (core.observe) and a read model of the
queue into the text `GET /metrics` serves.

API
    Metrics(*, listeners=(), webhooks=(), state_dir=None, clock=SystemClock())
        an Observer (pass it as `observer=` to listeners, the queue runner,
        the domain cache and the bounce processor); owns its own
        CollectorRegistry, so two daemons in one process (tests) never share
        series. `listeners` and `webhooks` (config names) pre-create their
        series at zero.
    await .refresh(source)
        sets the scrape-time gauges from `await source.gauges()`, a dict:
            recipients_by_state      {state: n}  (queue depth by state)
            oldest_queued_received_at  float | None (received_at of the
                                     oldest message with a queued recipient)
            spool_bytes              int
            destinations             {name: state} with state in
                                     active|throttled|suspended, or the
                                     scheduler's destination_states() dicts
                                     (optional)
            spool_free_bytes         free bytes on the spool's filesystem, as
                                     /readyz checks them (optional; else
                                     statvfs of state_dir below)
            state_dir                path whose filesystem's free bytes are
                                     reported (optional; else Metrics(state_dir=))
            webhooks                 WebhookService.statuses() (optional): dicts
                                     with name, lag, state, oldest_unsent_at
            shaping                  {"actions": [{"action": …}], "warmup":
                                     [{"source", "cap", "used"}]} (optional)
            tenants                  [mta.admin.backend.TenantGauge] (optional;
                                     None or absent: no tenant series)
    .render() -> (bytes, content_type)   the exposition text (text format 0.0.4)

Metrics (names, units and help follow the Prometheus conventions: base
units, `_total` for counters, `_seconds`/`_bytes` suffixes)
    mta_smtp_sessions_open{listener}                       gauge
    mta_messages_received_total{listener,result}           counter  accepted|rejected|tempfail
    mta_auth_failures_total{listener}                      counter
    mta_smtp_session_limits_total{listener,reason}         counter  max_sessions|
                                  max_sessions_per_ip|transaction_timeout|junk_commands
    mta_recipients_total{outcome,class}                    counter  delivered|deferred|
                                                  bounced (class hard|soft)|expired|suppressed
    mta_delivery_attempt_duration_seconds{destination_kind,result}   histogram
    mta_dkim_sign_duration_seconds                         histogram
    mta_bounces_received_total{kind}                       counter
    mta_inbound_capture_refused_total{reason}              counter  quota|error
    mta_queue_recipients{state}                            gauge (scrape time)
    mta_queue_oldest_message_age_seconds                   gauge (scrape time)
    mta_spool_bytes                                        gauge (scrape time)
    mta_spool_filesystem_free_bytes                        gauge (scrape time)
    mta_destinations{state}                                gauge (scrape time)
    mta_webhook_requests_total{webhook,result}             counter  ok|failed
    mta_automation_actions_total{action}                   counter  a shaping rule fired
    mta_tls_sessions_total{policy,result}                  counter  outbound TLS negotiations
    mta_content_events_total{event,label}                  counter  unsubscribes, clicks, opens,
                                                                    one-time codes sent/checked
                                  suspend|suspend_tenant|connection_limit|message_rate|bounce
    mta_automation_active{action}                          gauge (scrape time) in force
    mta_cluster_node_draining, mta_cluster_engine_up{engine}   gauges of a cluster node,
                                  put on .registry by runtime/admin_cluster.py (issue 19)
    mta_warmup_cap{source} / mta_warmup_used{source}       gauge (scrape time) today's
                                  warm-up cap and use per egress source (warming ones)
    mta_webhook_lag_events{webhook}                        gauge (scrape time)
        ledger events after the endpoint's cursor (not yet acknowledged)
    mta_webhook_lag_seconds{webhook}                       gauge (scrape time)
        age of the oldest event not yet acknowledged (0 when caught up)
    mta_webhook_failing{webhook}                           gauge (scrape time)
        1 when the endpoint has failed for longer than webhook_failing_after
    per tenant (scrape time; a removed tenant's series go away):
    mta_tenant_sending{tenant}                             gauge  1 may send, 0 paused
    mta_tenant_reputation_status{tenant}                   gauge  0 ok, 1 warn, 2 paused
                                                                  (the automatic status)
    mta_tenant_bounce_rate{tenant}, mta_tenant_complaint_rate{tenant}   gauge (fractions,
                                                                  in the reputation window)
    mta_tenant_outcomes{tenant}                            gauge  sends in that window
    mta_tenant_quota_used{tenant,window}                   gauge  hour|day (UTC)
    mta_tenant_refused_total{tenant,reason}                counter  paused|domain|
                                                                  per_hour|per_day|rate

Invariants
  * Observer methods are cheap and thread-safe (prometheus_client locks per
    series): `dkim_signed` is called from the signing thread.
  * Label values come from small fixed vocabularies (core.observe) or from
    config (listener names) or the operator (tenant names: tenants are made
    by hand, so their number is the operator's), never from mail (no
    per-domain or per-address series: cardinality stays bounded).
    Destination and sending-domain *names* are therefore not labels;
    `mta_destinations` counts destinations per state.
  * The known label values are created at zero, so rates work from the
    first scrape and a dashboard shows 0 instead of "no data".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

from mta.admin.backend import (DESTINATION_STATES, TENANT_AUTO_STATUSES, TENANT_REFUSALS,
                               TenantGauge, destination_state)
from mta.core import Clock, Observer, SystemClock
from mta.core.observe import (BOUNCE_KINDS, CAPTURE_REFUSALS, MESSAGE_RESULTS, SESSION_LIMITS,
                              WEBHOOK_RESULTS)

__all__ = ["Metrics"]

# A delivery batch: one connection (DNS, TLS, several transactions); slow
# remotes take minutes before our command timeouts end them.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
# RSA-2048 through OpenSSL ≈ 0.5 ms, pure-Python RSA ≈ 17 ms (docs/ARCHITECTURE.md §4).
DKIM_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_OUTCOME_SERIES = (("delivered", ""), ("deferred", ""), ("bounced", "hard"),
                   ("bounced", "soft"), ("expired", ""), ("suppressed", ""))


class GaugeSource(Protocol):
    """What `Metrics.refresh` reads at scrape time (the daemon's RuntimeAdmin)."""

    async def gauges(self) -> Mapping[str, Any]:
        """The dict described in the module docstring."""


class Metrics(Observer):
    def __init__(self, *, listeners: Iterable[str] = (), webhooks: Iterable[str] = (),
                 state_dir: str | os.PathLike[str] | None = None, clock: Clock | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.state_dir = state_dir
        self.clock = clock or SystemClock()
        self._declare_smtp(self.registry)
        self._declare_delivery(self.registry)
        self._declare_queue(self.registry)
        self._declare_webhooks(self.registry)
        self._declare_tenants(self.registry)
        self._refused_seen: dict[tuple[str, str], int] = {}
        for name in listeners:
            self._init_listener(name)
        for name in webhooks:
            self._init_webhook(name)
        for outcome, klass in _OUTCOME_SERIES:
            self.recipients.labels(outcome, klass)
        for kind in BOUNCE_KINDS:
            self.bounces.labels(kind)
        for reason in CAPTURE_REFUSALS:
            self.capture_refused_total.labels(reason)
        for state in DESTINATION_STATES:
            self.destinations.labels(state)

    def _declare_smtp(self, r: CollectorRegistry) -> None:
        """The receiving side's series: sessions, messages, AUTH, limits, captures."""
        self.sessions_open = Gauge(
            "mta_smtp_sessions_open", "SMTP sessions currently connected, by listener.",
            ["listener"], registry=r)
        self.messages_received = Counter(
            "mta_messages_received", "Message transactions answered, by listener and result "
            "(accepted: queued; rejected: 5xx at DATA or sender refused by policy; "
            "tempfail: 4xx).", ["listener", "result"], registry=r)
        self.auth_failures = Counter(
            "mta_auth_failures", "Failed SMTP AUTH credential checks, by listener.",
            ["listener"], registry=r)
        self.session_limits = Counter(
            "mta_smtp_session_limits", "SMTP sessions refused (421 instead of the greeting) or "
            "closed by a session limit, by listener and limit.", ["listener", "reason"],
            registry=r)
        self.capture_refused_total = Counter(
            "mta_inbound_capture_refused", "Mail for postmaster@/abuse@ the capture maildir "
            "refused, by reason (quota: its quota is reached; error: writing failed, e.g. disk "
            "full).", ["reason"], registry=r)

    def _declare_delivery(self, r: CollectorRegistry) -> None:
        """The sending side's series: recipient outcomes, attempt and signing
        times, bounce reports received."""
        self.recipients = Counter(
            "mta_recipients", "Recipient outcomes recorded in the spool: delivered, "
            "deferred, bounced (class hard or soft), expired, suppressed.",
            ["outcome", "class"], registry=r)
        self.attempt_duration = Histogram(
            "mta_delivery_attempt_duration_seconds", "Duration of delivery attempts (one "
            "connection to a destination), by destination kind and destination health.",
            ["destination_kind", "result"], buckets=ATTEMPT_BUCKETS, registry=r)
        self.dkim_duration = Histogram(
            "mta_dkim_sign_duration_seconds", "Time to DKIM-sign one message.",
            buckets=DKIM_BUCKETS, registry=r)
        self.bounces = Counter(
            "mta_bounces_received", "Bounce and complaint reports received by mail, by "
            "kind (bounce, complaint, bad_token, unmatched, not_a_failure).",
            ["kind"], registry=r)

    def _declare_queue(self, r: CollectorRegistry) -> None:
        """The scrape-time gauges of the spool and the scheduler."""
        self.queue_recipients = Gauge(
            "mta_queue_recipients", "Recipients in the spool index, by state.",
            ["state"], registry=r)
        self.oldest_age = Gauge(
            "mta_queue_oldest_message_age_seconds", "Age of the oldest message with a "
            "queued recipient (0 when none is queued).", registry=r)
        self.spool_bytes = Gauge(
            "mta_spool_bytes", "Bytes of message data held in the spool.", registry=r)
        self.fs_free = Gauge(
            "mta_spool_filesystem_free_bytes", "Free bytes, for unprivileged users, on the "
            "filesystem holding the state directory.", registry=r)
        self.destinations = Gauge(
            "mta_destinations", "Destinations known to the scheduler, by state "
            "(active, throttled, suspended).", ["state"], registry=r)
        self.automation_actions = Counter(
            "mta_automation_actions", "Actions shaping rules fired on remote replies, by "
            "action.", ["action"], registry=r)
        self.content_events = Counter(
            "mta_content_events", "Unsubscriptions (by method), clicks and opens (human, or "
            "the bot/proxy label), one-time codes sent (first, resend) and checked (result).",
            ["event", "label"], registry=r)
        self.tls_sessions = Counter(
            "mta_tls_sessions", "Outbound TLS negotiations by policy (opportunistic, mta-sts, "
            "dane, or an override level) and result (success, or the RFC 8460 failure type).",
            ["policy", "result"], registry=r)
        self.automation_active = Gauge(
            "mta_automation_active", "Shaping rule actions in force, by action.", ["action"],
            registry=r)
        self.warmup_cap = Gauge(
            "mta_warmup_cap", "Today's warm-up cap of an egress source (messages).",
            ["source"], registry=r)
        self.warmup_used = Gauge(
            "mta_warmup_used", "Messages an egress source sent today under its warm-up.",
            ["source"], registry=r)

    def _declare_webhooks(self, r: CollectorRegistry) -> None:
        """Per webhook endpoint: requests, lag, failing."""
        self.webhook_requests = Counter(
            "mta_webhook_requests", "Webhook POSTs, by endpoint and result (ok: 2xx, the "
            "cursor advanced; failed: retried later).", ["webhook", "result"], registry=r)
        self.webhook_lag = Gauge(
            "mta_webhook_lag_events", "Ledger events after the webhook endpoint's cursor "
            "(not yet acknowledged).", ["webhook"], registry=r)
        self.webhook_lag_seconds = Gauge(
            "mta_webhook_lag_seconds", "Age of the oldest ledger event the webhook endpoint "
            "has not acknowledged (0 when caught up).", ["webhook"], registry=r)
        self.webhook_failing = Gauge(
            "mta_webhook_failing", "1 when the webhook endpoint has been failing longer than "
            "[ledger] webhook_failing_after (its backlog is kept), else 0.", ["webhook"],
            registry=r)

    def _declare_tenants(self, r: CollectorRegistry) -> None:
        """Per tenant (label `tenant`): sending, reputation, quota use, refusals."""
        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, ["tenant", *labels], registry=r)
        self.tenant_sending = gauge(
            "mta_tenant_sending", "1 when the tenant may send, 0 while it is paused (by the "
            "operator or by its reputation policy).")
        self.tenant_reputation = gauge(
            "mta_tenant_reputation_status", "The tenant's automatic reputation status: 0 ok, "
            "1 warn, 2 paused.")
        self.tenant_bounce_rate = gauge(
            "mta_tenant_bounce_rate", "Bounces that reflect list quality / sends, in the "
            "tenant's reputation window (a fraction).")
        self.tenant_complaint_rate = gauge(
            "mta_tenant_complaint_rate", "Complaints / delivered sends, in the tenant's "
            "reputation window (a fraction).")
        self.tenant_outcomes = gauge(
            "mta_tenant_outcomes", "Sends (final recipient outcomes) in the tenant's "
            "reputation window.")
        self.tenant_quota_used = gauge(
            "mta_tenant_quota_used", "Recipients counted toward the tenant's quota in the "
            "current UTC hour or day, by window (hour, day).", "window")
        self.tenant_refused = Counter(
            "mta_tenant_refused", "Submissions a tenant guardrail refused, by tenant and "
            "reason (paused, domain, per_hour, per_day, rate).", ["tenant", "reason"],
            registry=r)

    def _tenant_gauges(self) -> tuple[Gauge, ...]:
        return (self.tenant_sending, self.tenant_reputation, self.tenant_bounce_rate,
                self.tenant_complaint_rate, self.tenant_outcomes, self.tenant_quota_used)

    def _init_webhook(self, name: str) -> None:
        for result in WEBHOOK_RESULTS:
            self.webhook_requests.labels(name, result)
        for gauge in (self.webhook_lag, self.webhook_lag_seconds, self.webhook_failing):
            gauge.labels(name)

    def _init_listener(self, name: str) -> None:
        self.sessions_open.labels(name)
        self.auth_failures.labels(name)
        for result in MESSAGE_RESULTS:
            self.messages_received.labels(name, result)
        for reason in SESSION_LIMITS:
            self.session_limits.labels(name, reason)

    # -- Observer ----------------------------------------------------------------

    def session_opened(self, listener: str) -> None:
        self.sessions_open.labels(listener).inc()

    def session_closed(self, listener: str) -> None:
        self.sessions_open.labels(listener).dec()

    def message_received(self, listener: str, result: str) -> None:
        self.messages_received.labels(listener, result).inc()

    def auth_failure(self, listener: str) -> None:
        self.auth_failures.labels(listener).inc()

    def session_refused(self, listener: str, reason: str) -> None:
        self.session_limits.labels(listener, reason).inc()

    def capture_refused(self, reason: str) -> None:
        self.capture_refused_total.labels(reason).inc()

    def recipient_outcome(self, outcome: str, klass: str = "") -> None:
        self.recipients.labels(outcome, klass).inc()

    def attempt_finished(self, seconds: float, destination_kind: str, result: str) -> None:
        self.attempt_duration.labels(destination_kind, result).observe(max(0.0, seconds))

    def dkim_signed(self, seconds: float) -> None:
        self.dkim_duration.observe(max(0.0, seconds))

    def bounce_received(self, kind: str) -> None:
        self.bounces.labels(kind).inc()

    def webhook_request(self, webhook: str, result: str) -> None:
        self.webhook_requests.labels(webhook, result).inc()

    def automation_action(self, action: str) -> None:
        self.automation_actions.labels(action).inc()

    def tls_session(self, policy: str, result: str) -> None:
        self.tls_sessions.labels(policy, result).inc()

    def content_event(self, event: str, label: str) -> None:
        self.content_events.labels(event, label).inc()

    # -- scrape time ----------------------------------------------------------------

    async def refresh(self, source: GaugeSource) -> None:
        g: Mapping[str, Any] = await source.gauges()
        by_state = g.get("recipients_by_state") or {}
        # States that emptied since the last scrape go to 0, not away.
        for state in set(by_state) | self._label_values(self.queue_recipients):
            self.queue_recipients.labels(state).set(by_state.get(state, 0))
        oldest = g.get("oldest_queued_received_at")
        self.oldest_age.set(0.0 if oldest is None else max(0.0, self.clock.now() - oldest))
        self.spool_bytes.set(g.get("spool_bytes") or 0)
        if "destinations" in g:
            counts = dict.fromkeys(DESTINATION_STATES, 0)
            for info in (g["destinations"] or {}).values():
                state = destination_state(info)
                counts[state] = counts.get(state, 0) + 1
            for state, n in counts.items():
                self.destinations.labels(state).set(n)
        hooks = g.get("webhooks")
        if hooks is not None:       # endpoints removed by a reload: their gauges go away
            names = {st["name"] for st in hooks}
            for gauge in (self.webhook_lag, self.webhook_lag_seconds, self.webhook_failing):
                for (name,) in [tuple(s.labels.values()) for m in gauge.collect()
                                for s in m.samples]:
                    if name not in names:
                        gauge.remove(name)
        for st in hooks or ():
            name = st["name"]
            self.webhook_lag.labels(name).set(st.get("lag") or 0)
            oldest = st.get("oldest_unsent_at")
            self.webhook_lag_seconds.labels(name).set(
                0.0 if oldest is None else max(0.0, self.clock.now() - oldest))
            self.webhook_failing.labels(name).set(1 if st.get("state") == "failing" else 0)
        if g.get("tenants") is not None:
            self._refresh_tenants(g["tenants"])
        if g.get("shaping") is not None:
            self._refresh_shaping(g["shaping"])
        free = g.get("spool_free_bytes")
        state_dir = g.get("state_dir") or self.state_dir
        if free is not None:
            self.fs_free.set(free)
        elif state_dir is not None:
            # One statfs syscall (microseconds): cheaper than a thread hop.
            st = os.statvfs(state_dir)
            self.fs_free.set(st.f_bavail * st.f_frsize)

    def _refresh_tenants(self, tenants: Iterable[TenantGauge]) -> None:
        """Set every tenant's series; a tenant gone since the last scrape
        loses its series. Refusal counts are cumulative in the source: the
        counter advances by the difference."""
        for gauge in self._tenant_gauges():
            gauge.clear()          # no await until all are set: a render sees them whole
        names = set()
        for t in tenants:
            name = t["name"]
            names.add(name)
            self.tenant_sending.labels(name).set(1 if t["sending"] else 0)
            status = t["auto_status"]
            self.tenant_reputation.labels(name).set(
                TENANT_AUTO_STATUSES.index(status) if status in TENANT_AUTO_STATUSES else 0)
            self.tenant_bounce_rate.labels(name).set(t["bounce_rate"])
            self.tenant_complaint_rate.labels(name).set(t["complaint_rate"])
            self.tenant_outcomes.labels(name).set(t["sends"])
            self.tenant_quota_used.labels(name, "hour").set(t["quota_hour"])
            self.tenant_quota_used.labels(name, "day").set(t["quota_day"])
            for reason in dict.fromkeys((*TENANT_REFUSALS, *t["refused"])):
                n = t["refused"].get(reason, 0)
                seen = self._refused_seen.get((name, reason), 0)
                self.tenant_refused.labels(name, reason).inc(max(0, n - seen))
                self._refused_seen[(name, reason)] = max(n, seen)
        for name, reason in [k for k in self._refused_seen if k[0] not in names]:
            del self._refused_seen[(name, reason)]
            self.tenant_refused.remove(name, reason)

    def _refresh_shaping(self, shaping: Mapping[str, Any]) -> None:
        for gauge in (self.automation_active, self.warmup_cap, self.warmup_used):
            gauge.clear()
        active: dict[str, int] = {}
        for a in shaping.get("actions", ()):
            kind = str(a["action"]).partition("=")[0]
            active[kind] = active.get(kind, 0) + 1
        for kind, n in active.items():
            self.automation_active.labels(kind).set(n)
        for w in shaping.get("warmup", ()):
            if w.get("cap") is not None:
                self.warmup_cap.labels(w["source"]).set(w["cap"])
                self.warmup_used.labels(w["source"]).set(w.get("used") or 0)

    @staticmethod
    def _label_values(gauge: Gauge) -> set[str]:
        return {s.labels["state"] for m in gauge.collect() for s in m.samples}

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
