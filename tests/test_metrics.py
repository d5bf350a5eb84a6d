"""Prometheus metrics (issue 5, `/metrics`): the exposition parsed back and
checked value by value, `promtool check metrics` on it, and the counters
driven by the real parts — a submission listener over loopback sockets and
the queue runner over a real spool (only the delivery transport is scripted:
it is the seam the runner owns)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mta.admin.metrics import Metrics
from mta.config.sections import ListenerConfig
from mta.core import (DestinationHealth, FakeClock, Observer, RecipientFate, RecipientOutcome,
                      Reply, StorageError)
from mta.delivery.client import DeliveryReport
from mta.mail import dkim
from mta.mail.verp import VerpCodec
from mta.policy.retry import RetryPolicy
from mta.runtime.bounces import BounceProcessor
from mta.runtime.domains import DomainCache
from mta.runtime.queue_runner import QueueRunner
from mta.scheduler import Scheduler
from mta.server import SubmissionListener
from mta.server.inbound import InboundMessage
from mta.spool import NewMessage, Spool
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)
from tests.test_e2e_bounces import arf, remote_dsn
from tests.test_server import (PASSWORD, Client, FakeSpool, _message_factory,  # noqa: F401
                               credentials)

T0 = 1_700_000_000.0


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from the rendered text, parsed by the
    client library's own parser (what a scraper would read)."""
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


class FakeGauges:
    """The read model the runtime gives `refresh` (duck-typed)."""

    def __init__(self, directory, **overrides):
        self.data = {"recipients_by_state": {"queued": 7, "delivered": 40, "bounced": 2,
                                             "expired": 1},
                     "oldest_queued_received_at": T0 - 90.0,
                     "spool_bytes": 123_456,
                     "destinations": {"a.example": "active", "b.example": "throttled",
                                      "c.example": "suspended", "d.example": "active"},
                     "state_dir": str(directory)}
        self.data.update(overrides)

    async def gauges(self):
        return self.data


def drive(m: Observer) -> None:
    for _ in range(3):
        m.session_opened("submission")
    m.session_closed("submission")
    m.session_opened("inbound")
    for result in ("accepted", "accepted", "accepted", "rejected", "tempfail"):
        m.message_received("submission", result)
    m.message_received("inbound", "accepted")
    m.auth_failure("submission")
    m.auth_failure("submission")
    for outcome, klass in (("delivered", ""),) * 5 + (("deferred", ""), ("bounced", "hard"),
                                                      ("bounced", "hard"), ("bounced", "soft"),
                                                      ("expired", ""), ("suppressed", "")):
        m.recipient_outcome(outcome, klass)
    m.attempt_finished(0.2, "mx", "ok")
    m.attempt_finished(3.0, "mx", "ok")
    m.attempt_finished(45.0, "route", "down")
    m.dkim_signed(0.0004)
    m.dkim_signed(0.02)
    for kind in ("bounce", "bounce", "complaint", "bad_token", "unmatched"):
        m.bounce_received(kind)
    for result in ("ok", "ok", "failed"):
        m.webhook_request("app", result)


# -- the exposition --------------------------------------------------------------

async def test_values_after_known_events(tmp_path):
    m = Metrics(listeners=["submission", "inbound"], clock=FakeClock(T0))
    drive(m)
    await m.refresh(FakeGauges(tmp_path))
    s = samples(m)

    def v(name, **labels):
        return s[(name, frozenset(labels.items()))]

    assert v("mta_smtp_sessions_open", listener="submission") == 2
    assert v("mta_smtp_sessions_open", listener="inbound") == 1
    assert v("mta_messages_received_total", listener="submission", result="accepted") == 3
    assert v("mta_messages_received_total", listener="submission", result="rejected") == 1
    assert v("mta_messages_received_total", listener="submission", result="tempfail") == 1
    assert v("mta_messages_received_total", listener="inbound", result="accepted") == 1
    assert v("mta_messages_received_total", listener="inbound", result="rejected") == 0
    assert v("mta_auth_failures_total", listener="submission") == 2
    assert v("mta_auth_failures_total", listener="inbound") == 0
    assert v("mta_recipients_total", outcome="delivered", **{"class": ""}) == 5
    assert v("mta_recipients_total", outcome="deferred", **{"class": ""}) == 1
    assert v("mta_recipients_total", outcome="bounced", **{"class": "hard"}) == 2
    assert v("mta_recipients_total", outcome="bounced", **{"class": "soft"}) == 1
    assert v("mta_recipients_total", outcome="expired", **{"class": ""}) == 1
    assert v("mta_recipients_total", outcome="suppressed", **{"class": ""}) == 1
    mx_ok = dict(destination_kind="mx", result="ok")
    assert v("mta_delivery_attempt_duration_seconds_count", **mx_ok) == 2
    assert v("mta_delivery_attempt_duration_seconds_sum", **mx_ok) == pytest.approx(3.2)
    assert v("mta_delivery_attempt_duration_seconds_bucket", le="0.25", **mx_ok) == 1
    assert v("mta_delivery_attempt_duration_seconds_bucket", le="5.0", **mx_ok) == 2
    assert v("mta_delivery_attempt_duration_seconds_count",
             destination_kind="route", result="down") == 1
    assert v("mta_dkim_sign_duration_seconds_count") == 2
    assert v("mta_dkim_sign_duration_seconds_bucket", le="0.0005") == 1
    assert v("mta_bounces_received_total", kind="bounce") == 2
    assert v("mta_bounces_received_total", kind="complaint") == 1
    assert v("mta_bounces_received_total", kind="bad_token") == 1
    assert v("mta_bounces_received_total", kind="unmatched") == 1
    assert v("mta_queue_recipients", state="queued") == 7
    assert v("mta_queue_recipients", state="delivered") == 40
    assert v("mta_queue_oldest_message_age_seconds") == 90.0
    assert v("mta_spool_bytes") == 123_456
    assert v("mta_spool_filesystem_free_bytes") > 0
    assert v("mta_destinations", state="active") == 2
    assert v("mta_destinations", state="throttled") == 1
    assert v("mta_destinations", state="suspended") == 1


async def test_refresh_follows_the_source(tmp_path):
    m = Metrics(state_dir=tmp_path, clock=FakeClock(T0))
    src = FakeGauges(tmp_path, state_dir=None)
    await m.refresh(src)
    # The queue drains: states that emptied read 0 (not a stale value, not gone);
    # no queued message means age 0; scheduler dicts are understood too.
    src.data.update(recipients_by_state={"delivered": 47}, oldest_queued_received_at=None,
                    destinations={"x": {"state": "paused", "suspended": False},
                                  "y": {"state": "active", "suspended": True},
                                  "z": {"state": "probing", "suspended": False}})
    await m.refresh(src)
    assert value(m, "mta_queue_recipients", state="queued") == 0
    assert value(m, "mta_queue_recipients", state="delivered") == 47
    assert value(m, "mta_queue_oldest_message_age_seconds") == 0
    assert value(m, "mta_destinations", state="throttled") == 2
    assert value(m, "mta_destinations", state="suspended") == 1
    assert value(m, "mta_destinations", state="active") == 0
    assert value(m, "mta_spool_filesystem_free_bytes") > 0   # from Metrics(state_dir=)


async def test_spool_free_bytes_come_from_the_source(tmp_path):
    # The number /readyz checks (the runtime's free-space seam) is the one
    # exported, so a full disk shows in both (issue 10 item 4).
    m = Metrics(state_dir=tmp_path, clock=FakeClock(T0))
    src = FakeGauges(tmp_path, spool_free_bytes=0)
    await m.refresh(src)
    assert value(m, "mta_spool_filesystem_free_bytes") == 0
    src.data["spool_free_bytes"] = 5 * 2**30
    await m.refresh(src)
    assert value(m, "mta_spool_filesystem_free_bytes") == 5 * 2**30
    src.data["spool_free_bytes"] = None                 # unreadable: statvfs of state_dir
    await m.refresh(src)
    assert value(m, "mta_spool_filesystem_free_bytes") > 0


def test_each_metrics_owns_its_registry():
    a, b = Metrics(), Metrics()
    a.auth_failure("submission")
    assert ("mta_auth_failures_total", frozenset({("listener", "submission")})) not in samples(b)


def test_zero_series_exist_before_any_event():
    s = samples(Metrics(listeners=["submission"]))
    assert s[("mta_messages_received_total",
              frozenset({("listener", "submission"), ("result", "tempfail")}))] == 0
    assert s[("mta_recipients_total",
              frozenset({("outcome", "bounced"), ("class", "soft")}))] == 0
    assert s[("mta_bounces_received_total", frozenset({("kind", "unmatched")}))] == 0


async def test_webhook_series():
    """Per configured endpoint: requests by result (at zero from the start),
    and at scrape time the lag in events and seconds and the failing flag,
    which go back to 0 when the endpoint catches up."""
    clock = FakeClock(T0)
    m = Metrics(webhooks=["app", "crm"], clock=clock)
    s = samples(m)
    for name in ("app", "crm"):
        for result in ("ok", "failed"):
            assert s[("mta_webhook_requests_total",
                      frozenset({("webhook", name), ("result", result)}))] == 0
        assert s[("mta_webhook_failing", frozenset({("webhook", name)}))] == 0
    m.webhook_request("app", "ok")
    m.webhook_request("app", "failed")
    m.webhook_request("app", "failed")

    class Source:
        statuses = [{"name": "app", "lag": 42, "state": "failing", "oldest_unsent_at": T0 - 90},
                    {"name": "crm", "lag": 0, "state": "active", "oldest_unsent_at": None}]

        async def gauges(self):
            return {"recipients_by_state": {}, "oldest_queued_received_at": None,
                    "spool_bytes": 0, "webhooks": self.statuses}

    src = Source()
    await m.refresh(src)
    assert value(m, "mta_webhook_requests_total", webhook="app", result="ok") == 1
    assert value(m, "mta_webhook_requests_total", webhook="app", result="failed") == 2
    assert value(m, "mta_webhook_lag_events", webhook="app") == 42
    assert value(m, "mta_webhook_lag_seconds", webhook="app") == 90
    assert value(m, "mta_webhook_failing", webhook="app") == 1
    assert value(m, "mta_webhook_failing", webhook="crm") == 0
    src.statuses = [{"name": "app", "lag": 0, "state": "active", "oldest_unsent_at": None}]
    await m.refresh(src)                    # crm was removed by a reload
    assert ("mta_webhook_failing", frozenset({("webhook", "crm")})) not in samples(m)
    assert value(m, "mta_webhook_lag_events", webhook="app") == 0
    assert value(m, "mta_webhook_lag_seconds", webhook="app") == 0
    assert value(m, "mta_webhook_failing", webhook="app") == 0


def test_observer_base_is_a_no_op():
    drive(Observer())   # every method exists and accepts the documented arguments


async def test_promtool_check_metrics(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; "
                    "scripts/setup.sh test installs it as root)")
    m = Metrics(listeners=["submission", "inbound"], clock=FakeClock(T0))
    drive(m)
    await m.refresh(FakeGauges(tmp_path))
    body, _ = m.render()
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    # promtool's linter prints problems (even with exit 0 in some versions).
    assert not (proc.stdout + proc.stderr).strip(), (proc.stdout + proc.stderr).decode()


# -- the listener counts, over real loopback sockets ---------------------------------

async def wait_for(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def suppressed_gone(address, credential):
    return Reply(550, "5.1.1", f"<{address}>: recipient suppressed") if address.startswith(
        "gone@") else None


async def test_listener_counts_sessions_messages_and_auth_failures(credentials, server_tls,
                                                                    client_tls):
    m = Metrics(listeners=["submission"])
    spool = FakeSpool()
    lst = SubmissionListener(ListenerConfig(address="127.0.0.1:0"), hostname="mx.test.example",
                             spool=spool, credentials=credentials, tls_context=server_tls,
                             clock=FakeClock(T0), message_factory=_message_factory(),
                             rcpt_check=suppressed_gone, accept_suppressed=True, observer=m)
    await lst.start()
    try:
        sessions = lambda: value(m, "mta_smtp_sessions_open", listener="submission")  # noqa: E731
        received = lambda r: value(m, "mta_messages_received_total",  # noqa: E731
                                   listener="submission", result=r)
        c = await Client.connect(lst.sockname)
        await c.ehlo()
        await c.starttls(client_tls)          # connection_made runs again: still one session
        await c.ehlo()
        idle = await Client.connect(lst.sockname)
        await wait_for(lambda: sessions() == 2)
        assert (await c.auth_plain(password="wrong"))[0] == 535
        assert (await c.auth_plain(password=PASSWORD))[0] == 235
        assert (await c.mail())[0] == 250                                       # accepted
        assert (await c.mail(content=b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n"))[0] == 550  # rejected
        spool.fail.append(StorageError("disk full"))
        assert (await c.mail())[0] == 451                                       # tempfail
        spool.fail.append(RuntimeError("bug"))     # handle_exception: 451 4.3.0
        assert (await c.mail())[0] == 451                                       # tempfail
        assert len(spool.messages) == 1
        assert received("accepted") == 1
        assert value(m, "mta_recipients_total", outcome="suppressed", **{"class": ""}) == 0
        assert (await c.mail(rcpts=("gone@example.net", "bob@example.net")))[0] == 250
        assert received("accepted") == 2
        # accept-and-record: the suppressed recipient is an outcome at once
        assert value(m, "mta_recipients_total", outcome="suppressed", **{"class": ""}) == 1
        assert received("rejected") == 1
        assert received("tempfail") == 2
        assert value(m, "mta_auth_failures_total", listener="submission") == 1
        await c.cmd("QUIT")
        await c.close()
        await wait_for(lambda: sessions() == 1)
        await idle.close()
        await wait_for(lambda: sessions() == 0)
    finally:
        await lst.stop(grace=0.1)


# -- the queue runner reports outcomes ---------------------------------------------------

class ScriptedTransport:
    """The delivery seam: the fate of each recipient is its local part."""

    REPLIES = {"ok": (RecipientFate.DELIVERED, Reply(250, "2.0.0", "Ok")),
               "hard": (RecipientFate.BOUNCED, Reply(550, "5.1.1", "No such user")),
               "soft": (RecipientFate.BOUNCED, Reply(552, "5.2.2", "Mailbox full")),
               "later": (RecipientFate.DEFERRED, Reply(451, "4.2.0", "Try again later"))}

    async def deliver(self, destination, messages):
        outcomes = {}
        for msg in messages:
            for idx, address in msg.recipients:
                fate, reply = self.REPLIES[address.partition("@")[0]]
                outcomes.setdefault(msg.queue_id, {})[idx] = RecipientOutcome(
                    fate, reply, remote_host="mx.rcpt.test", remote_ip="127.0.0.1")
        return DeliveryReport(outcomes, DestinationHealth.OK)


async def test_queue_runner_reports_outcomes_and_attempts(tmp_path):
    clock = FakeClock(T0)
    m = Metrics(clock=clock)
    spool = await Spool.open(tmp_path / "state", now=T0)
    runner = QueueRunner(
        spool=spool, scheduler=Scheduler(concurrency=2, max_messages_per_connection=10,
                                         max_recipients_per_transaction=10, backoff=(60.0,)),
        transport=ScriptedTransport(), sandbox_transport=None,
        retry=RetryPolicy.parse("10m", "5d"), clock=clock,
        routes={"*": "127.0.0.1:2525"}, sandbox=False, mx_port=25, hostname="mta.test",
        batch_size=100, delay_warning_after=None, observer=m)
    # Null sender: no DSN is owed, so nothing else gets delivered meanwhile.
    body = b"Subject: t\r\n\r\nhi\r\n"
    await spool.enqueue(NewMessage(sender="", body=body, recipients=(
        "ok@rcpt.test", "ok@other.test", "hard@rcpt.test", "soft@rcpt.test",
        "later@rcpt.test")), T0)
    # Received six days ago, never attempted: expires at lease time (lifetime 5d).
    await spool.enqueue(NewMessage(sender="", body=body, recipients=("ok@old.test",)),
                        T0 - 6 * 86400)
    runner.start()
    try:
        def rcpts(outcome, klass=""):
            return value(m, "mta_recipients_total", outcome=outcome, **{"class": klass})
        await wait_for(lambda: rcpts("delivered") + rcpts("deferred") + rcpts("expired")
                       + rcpts("bounced", "hard") + rcpts("bounced", "soft") >= 6, timeout=10)
    finally:
        await runner.stop(timeout=5)
        await spool.close()
    assert rcpts("delivered") == 2
    assert rcpts("deferred") == 1
    assert rcpts("bounced", "hard") == 1
    assert rcpts("bounced", "soft") == 1
    assert rcpts("expired") == 1
    route_ok = dict(destination_kind="route", result="ok")
    attempts = value(m, "mta_delivery_attempt_duration_seconds_count", **route_ok)
    assert attempts == 1   # one lease, one route, limits of 10: one batch
    assert value(m, "mta_delivery_attempt_duration_seconds_sum", **route_ok) >= 0


# -- DKIM signing and inbound reports ------------------------------------------------

class OneDomainService:
    """The DomainService seam as DomainCache reads it: one domain, one key."""

    def __init__(self):
        pem, _txt = dkim.generate_key(dkim.ED25519_SHA256)
        self.key = dkim.SigningKey("a.example", "s1", dkim.ED25519_SHA256, pem)

    def list(self):
        state = type("State", (), {"value": "verified"})()
        return [type("Domain", (), {"name": "a.example", "state": state})()]

    def signing_keys(self, name):
        return [self.key]


async def test_domain_cache_times_each_signature():
    m = Metrics()
    cache = DomainCache(OneDomainService(), FakeClock(T0), observer=m)
    await cache.refresh()
    msg = b"From: app@a.example\r\nTo: bob@b.example\r\nSubject: hi\r\n\r\nhello\r\n"
    signed = await asyncio.to_thread(cache.sign, msg, "a.example")   # as the listener does
    assert signed.startswith(b"DKIM-Signature:")
    assert cache.sign(msg, "unsigned.example") == msg                # no keys: not counted
    assert value(m, "mta_dkim_sign_duration_seconds_count") == 1
    assert value(m, "mta_dkim_sign_duration_seconds_sum") > 0


async def test_bounce_processor_counts_reports(tmp_path):
    m = Metrics()
    # spool=None: neither path below reaches the spool (a bad token is never
    # looked up; a report without our Received: id matches no message).
    bp = BounceProcessor(spool=None, codec=VerpCodec(b"k" * 32), hostname="mta.test",
                         capture_dir=tmp_path / "inbound", clock=FakeClock(T0),
                         bounce_domains=lambda: {"bounce.a.example"},
                         feedback_addresses=("fbl@mta.test",), observer=m)

    def inbound(rcpt, kind, body):
        return InboundMessage(mail_from="", rcpts=(rcpt,), kinds=(kind,), body=body,
                              client_ip="127.0.0.1", helo="mx.rcpt.test", tls="")

    await bp.deliver(inbound("b+forged@bounce.a.example", "bounce", remote_dsn("x@rcpt.test")))
    await bp.deliver(inbound("fbl@mta.test", "feedback", arf("x@rcpt.test")))
    assert bp.stats == {"bad_token": 1, "unmatched": 1}
    assert value(m, "mta_bounces_received_total", kind="bad_token") == 1
    assert value(m, "mta_bounces_received_total", kind="unmatched") == 1
    assert value(m, "mta_bounces_received_total", kind="bounce") == 0
