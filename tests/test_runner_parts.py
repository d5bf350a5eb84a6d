"""The queue runner's parts without a daemon: reconfigure(cfg), destinations'
domains_of, the VERP transactions of outbound.py, and the state-dir layout."""

from pathlib import Path

import pytest

from mta.config import parse_config
from mta.core import FakeClock, QueuedRecipient, new_queue_id
from mta.core.envelope import Destination
from mta.mail.verp import VerpCodec
from mta.policy.retry import RetryPolicy
from mta.runtime.destinations import domains_of
from mta.runtime.outbound import transactions
from mta.runtime.paths import capture_dir, state_paths
from mta.runtime.queue_runner import QueueRunner
from mta.scheduler import Scheduler, Work
from mta.spool import Spool

T0 = 1_700_000_000.0


class Recording:
    """A transport that only remembers what reconfigure gave it."""

    def __init__(self):
        self.cfgs = []

    async def deliver(self, destination, messages):
        raise AssertionError("not used")

    def reconfigure(self, cfg):
        self.cfgs.append(cfg)


CONFIG = """
[server]
state_dir = "{state}"
[delivery]
retry_schedule = "1m,2m"
max_queue_lifetime = "1h"
concurrency_per_destination = 3
max_messages_per_connection = 4
max_recipients_per_transaction = 5
destination_backoff = "7s"
batch_size = 11
smtp_port = 2526
delay_warning_after = "10m"
[routes]
"routed.test" = "10.0.0.1:25"
"""


async def test_reconfigure_applies_every_key_the_runner_owns(tmp_path):
    spool = await Spool.open(tmp_path / "state", now=T0)
    try:
        transport, sandbox = Recording(), Recording()
        runner = QueueRunner(
            spool=spool, scheduler=Scheduler(concurrency=1, max_messages_per_connection=1,
                                             max_recipients_per_transaction=1, backoff=(1.0,)),
            transport=transport, sandbox_transport=sandbox,
            retry=RetryPolicy.parse("10m", "5d"), clock=FakeClock(T0), routes={},
            sandbox=False, mx_port=25, hostname="mta.test", batch_size=500,
            delay_warning_after=None)
        cfg = parse_config(CONFIG.format(state=tmp_path / "state"), "test")
        runner.reconfigure(cfg)
        assert dict(runner.routes) == {"routed.test": "10.0.0.1:25"}
        assert runner.retry == RetryPolicy((60.0, 120.0), 3600.0) == runner.dsn.retry
        assert (runner.batch_size, runner.mx_port) == (11, 2526)
        assert runner.delay_warning_after == runner.dsn.delay_warning_after == 600.0
        s = runner.scheduler
        assert (s.concurrency, s.max_messages, s.max_rcpts, s.backoff) == (3, 4, 5, (7.0,))
        assert transport.cfgs == [cfg] and sandbox.cfgs == [cfg]
        # the names reload.py set before reconfigure still reach the DSN pass
        runner.retry = RetryPolicy.parse("5m", "1d")
        runner.delay_warning_after = None
        assert runner.dsn.retry == runner.retry and runner.dsn.delay_warning_after is None
    finally:
        await spool.close()


ROUTES = {"a.test": "10.0.0.1:25", "b.test": "[10.0.0.1]:25", "c.test": "relay.test:587"}


@pytest.mark.parametrize("name,routes,sandbox,expected", [
    ("example.org", ROUTES, False, ["example.org"]),            # a domain: itself
    ("[192.0.2.1]", ROUTES, False, ["[192.0.2.1]"]),            # an address literal: itself
    ("[10.0.0.1]:25", ROUTES, False, ["a.test", "b.test"]),     # a route: its domains
    ("[relay.test]:587", ROUTES, False, ["c.test"]),
    ("[10.9.9.9]:25", ROUTES, False, []),                       # no route goes there
    ("[relay.test]:587", {**ROUTES, "*": "relay.test:587"}, False, [None]),  # smarthost: all
    ("sandbox", {}, True, [None]),                              # sandbox mode: all
])
def test_domains_of(name, routes, sandbox, expected):
    assert domains_of(name, routes, sandbox=sandbox, mx_port=25) == expected


def _group(qid, n, sender="app@x.test"):
    dest = Destination("r.test", "mx", domain="r.test")
    return [Work(QueuedRecipient(qid, i, f"u{i}@r.test", "r.test", sender, 0, T0, T0), dest)
            for i in range(n)]


def test_transactions_without_verp_share_one_transaction():
    (m,) = transactions(_group("Q1", 3), b"body", None, None)
    assert (m.queue_id, m.sender, m.body) == ("Q1", "app@x.test", b"body")
    assert m.recipients == ((0, "u0@r.test"), (1, "u1@r.test"), (2, "u2@r.test"))


def test_transactions_with_verp_one_per_recipient_with_its_own_return_path():
    codec, qid = VerpCodec(b"k" * 32), new_queue_id()
    out = transactions(_group(qid, 2), b"body", codec, "bounce.x.test")
    assert [m.recipients for m in out] == [((0, "u0@r.test"),), ((1, "u1@r.test"),)]
    assert [codec.decode(m.sender) for m in out] == [(qid, 0), (qid, 1)]
    assert all(m.sender.endswith("@bounce.x.test") for m in out)
    # a codec but no bounce domain for the sender: no VERP
    assert len(transactions(_group(qid, 2), b"body", codec, None)) == 1


def test_state_paths_name_every_file_under_the_state_dir(tmp_path):
    cfg = parse_config(f'[server]\nstate_dir = "{tmp_path}"\n', "test")
    p = state_paths(cfg)
    assert p["root"] == tmp_path
    assert {k: v.relative_to(tmp_path).as_posix() for k, v in p.items() if k != "root"} == {
        "tls": "tls", "sandbox": "sandbox", "credentials": "credentials.json",
        "initial_credential": "initial-credential.txt", "verp_key": "verp.key",
        "public_key": "public.key", "inbound": "inbound", "incoming": "incoming"}
    assert capture_dir(cfg, p) == tmp_path / "inbound"
    other = parse_config(f'[server]\nstate_dir = "{tmp_path}"\n[bounces]\n'
                         f'capture_dir = "{tmp_path / "cap"}"\n', "test")
    assert capture_dir(other, p) == Path(tmp_path / "cap")
