"""Each part applies its own keys of a reloaded Config (issue 11 item 3): the
submission and inbound listeners with their handlers, and the bounce
processor. runtime/reload.py only computes what changed and calls these;
here they are called directly, with the Config a reload would hand over."""

from __future__ import annotations

import dataclasses
import logging

from mta.config import (
    BouncesConfig,
    Config,
    ListenerConfig,
    PolicyConfig,
    ServerConfig,
    SuppressionConfig,
)
from mta.core import FakeClock, Reply
from mta.mail.verp import VerpCodec
from mta.policy.senders import SenderPolicy
from mta.runtime.bounces import BounceProcessor
from mta.server import SubmissionListener
from tests.support.tls import client_tls, server_tls, tls_ca  # noqa: F401  (fixtures)
from tests.test_inbound import make_inbound  # noqa: F401  (fixture)
from tests.test_server import Client, FakeSpool, _message_factory, credentials  # noqa: F401


async def suppressed(address: str, credential: str | None) -> Reply | None:
    return Reply(550, "5.1.1", "suppressed") if address.startswith("gone@") else None


def submission(credentials, **keys) -> SubmissionListener:
    lcfg = ListenerConfig(address="127.0.0.1:0", tls="none", **keys)
    return SubmissionListener(lcfg, hostname="mx.test", spool=FakeSpool(),
                              credentials=credentials, tls_context=None, clock=FakeClock(),
                              message_factory=_message_factory(), rcpt_check=suppressed,
                              sender_policy=SenderPolicy(require_verified=True,
                                                         domain_state=lambda d: None))


def reloaded(lcfg: ListenerConfig, *, mode="production", verified=True, on_rcpt="reject",
             **keys) -> Config:
    return Config(server=ServerConfig(mode=mode), listeners=(dataclasses.replace(lcfg, **keys),),
                  policy=PolicyConfig(require_verified_domain=verified),
                  suppression=SuppressionConfig(on_rcpt=on_rcpt))


async def test_submission_listener_applies_its_keys_for_new_sessions(credentials):
    lst = submission(credentials, trusted_networks=("127.0.0.0/8",), max_recipients=5)
    await lst.start()
    try:
        held = await Client.connect(lst.sockname)         # a session from before the reload
        await held.ehlo()
        assert (await held.cmd("MAIL FROM:<a@example.org>"))[0] == 250   # trusted: decided
        assert (await held.cmd("RSET"))[0] == 250
        lst.reconfigure(reloaded(lst.cfg, trusted_networks=(), max_recipients=1,
                                 verified=False, on_rcpt="accept"), tls_context=None)
        handler = lst.handler
        assert lst.cfg.max_recipients == handler.cfg.max_recipients == 1
        assert handler.sender_policy.require_verified is False
        assert handler.accept_suppressed is True
        assert not lst.trusted("127.0.0.1")
        # the session in progress keeps its trusted-network decision …
        assert (await held.cmd("MAIL FROM:<a@example.org>"))[0] == 250
        # … a new one is no longer trusted
        c = await Client.connect(lst.sockname)
        await c.ehlo()
        assert await c.cmd("MAIL FROM:<a@example.org>") == (
            530, "530 5.7.0 Authentication required")
        await c.close()
        await held.close()
    finally:
        await lst.stop(grace=0.1)


def test_sandbox_mode_never_requires_verified_domains(credentials):
    lst = submission(credentials)
    lst.reconfigure(reloaded(lst.cfg, mode="sandbox", verified=True), tls_context=None)
    assert lst.handler.sender_policy.require_verified is False
    lst.reconfigure(reloaded(lst.cfg, mode="production", verified=True), tls_context=None)
    assert lst.handler.sender_policy.require_verified is True
    assert lst.handler.accept_suppressed is False


def test_address_tls_and_role_need_a_restart(credentials, caplog):
    lst = submission(credentials)
    caplog.set_level(logging.WARNING, logger="mta.server")
    lst.reconfigure(reloaded(lst.cfg, address="127.0.0.1:2600", max_recipients=7),
                    tls_context=None)
    assert lst.cfg.address == "127.0.0.1:0" and lst.cfg.max_recipients == 7
    assert "event=reload_ignored listener=submission" in caplog.text


def test_a_config_without_the_listener_changes_nothing(credentials):
    lst = submission(credentials, max_recipients=5)
    before = lst.cfg
    lst.reconfigure(Config(listeners=(ListenerConfig(name="other", max_recipients=1),)),
                    tls_context=None)
    assert lst.cfg is before and lst.handler.cfg is before


async def test_inbound_listener_applies_its_keys(make_inbound):
    lst, _ = await make_inbound(max_recipients=5)
    lst.reconfigure(Config(listeners=(dataclasses.replace(lst.cfg, max_recipients=1),)),
                    tls_context=None)
    assert lst.cfg.max_recipients == lst.handler.cfg.max_recipients == 1
    c = await Client.connect(lst.sockname)
    await c.ehlo()
    assert (await c.cmd("MAIL FROM:<>"))[0] == 250
    assert (await c.cmd("RCPT TO:<postmaster@mx.test.example>"))[0] == 250
    assert await c.cmd("RCPT TO:<abuse@mx.test.example>") == (
        452, "452 4.5.3 Too many recipients")
    await c.close()


def test_bounce_processor_applies_its_keys(tmp_path):
    bp = BounceProcessor(spool=None, codec=VerpCodec(b"k" * 32), hostname="mx.test",
                         capture_dir=tmp_path / "state" / "inbound", clock=FakeClock(),
                         bounce_domains=lambda: set(), feedback_addresses=["old@fbl.test"])
    assert bp.classify_rcpt("old@fbl.test") == "feedback"
    state = ServerConfig(state_dir=str(tmp_path / "state"))
    bp.reconfigure(Config(server=state, bounces=BouncesConfig(
        feedback_addresses=("New@FBL.test",), capture_dir=str(tmp_path / "elsewhere"),
        capture_max_bytes=1000, capture_max_messages=3)))
    assert bp.classify_rcpt("old@fbl.test") is None
    assert bp.classify_rcpt("new@fbl.test") == "feedback"
    assert bp.capture.directory == tmp_path / "elsewhere"
    assert (bp.capture.max_bytes, bp.capture.max_messages) == (1000, 3)
    # no capture_dir: the state directory's inbound/ (runtime.paths)
    bp.reconfigure(Config(server=state, bounces=BouncesConfig()))
    assert bp.capture.directory == tmp_path / "state" / "inbound"
    assert bp.capture.max_messages == BouncesConfig().capture_max_messages


async def test_reload_changes_the_auth_limits_in_place_keeping_the_count(tmp_path):
    """A reload applies auth_max_failures/auth_lockout to the running
    throttles (it used to report them reloaded and keep the old values),
    and keeps the failures counted so far."""
    import dataclasses
    from mta.config import parse_config
    from mta.core import FakeClock
    from mta.policy.authlimit import AuthThrottle, UserThrottle
    from mta.server import CredentialStore, SubmissionListener
    cfg = parse_config('[[listeners]]\nname = "s"\naddress = "127.0.0.1:2599"\ntls = "none"\n'
                       'require_tls_for_auth = false\nauth_max_failures = 3\n', "t")
    ip = AuthThrottle(3, 300)
    user = UserThrottle(20, 300)
    lst = SubmissionListener(cfg.listeners[0], hostname="h", spool=object(),
                             credentials=CredentialStore(tmp_path / "c.json"), tls_context=None,
                             clock=FakeClock(1000.0), auth_throttle=ip, user_throttle=user)
    ip.failure("192.0.2.1", 1000.0)
    ip.failure("192.0.2.1", 1000.0)
    new = dataclasses.replace(cfg, listeners=(dataclasses.replace(
        cfg.listeners[0], auth_max_failures=10, auth_max_failures_per_user=7,
        auth_lockout=900.0),))
    lst.reconfigure(new, tls_context=None)
    assert (ip.max_failures, ip.lockout) == (10, 900.0)
    assert user.lockout == 900.0 and user._counts.max_failures == 7
    ip.failure("192.0.2.1", 1001.0)                 # 3 failures: locked before, not now
    assert ip.check("192.0.2.1", 1001.0) is not None
