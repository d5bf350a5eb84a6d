"""One-time codes, the pure part (mta.policy.otp): derived codes, checks,
resends and the per-tenant limits, driven by a FakeClock."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import replace

import pytest

from mta.core.clock import FakeClock
from mta.core.statemachine import IllegalTransition
from mta.policy import otp
from mta.policy.otp import (VERIFICATION_MACHINE, OtpPolicy, Verification, VerificationStatus,
                            check, code_hash, new_code, new_verification, resend, sent)

SECRET = b"k" * 32
DEFAULT = OtpPolicy()
VID = "vrf_0123456789abcdef0123"
SALT = bytes(range(16))


def make(clock: FakeClock, policy: OtpPolicy = DEFAULT) -> tuple[Verification, str]:
    return new_verification(VID, "acme", "user@example.com", salt=SALT, now=clock.now(),
                            secret=SECRET, policy=policy, sender="app@acme.test")


def wrong(code: str) -> str:
    return str((int(code) + 1) % 10 ** len(code)).zfill(len(code))


# -- the code ------------------------------------------------------------------------

def test_code_is_the_documented_derivation() -> None:
    mac = hmac.new(SECRET, b"code:" + VID.encode() + b":" + SALT, hashlib.sha256).digest()
    expected = str(int.from_bytes(mac[:8], "big") % 10 ** 6).zfill(6)
    assert new_code(SECRET, VID, SALT, 6) == expected
    assert code_hash(SECRET, VID, expected) == hmac.new(
        SECRET, b"check:" + VID.encode() + b":" + expected.encode(), hashlib.sha256).digest()


def test_codes_are_zero_padded_digits_and_depend_on_every_input() -> None:
    codes = {new_code(SECRET, VID, bytes([i]) * 16, 8) for i in range(200)}
    assert all(len(c) == 8 and c.isdigit() for c in codes)
    assert len(codes) > 190
    assert any(c.startswith("0") for c in
               (new_code(SECRET, VID, bytes([i]) * 16, 4) for i in range(200)))
    base = new_code(SECRET, VID, SALT, 10)
    assert new_code(b"other", VID, SALT, 10) != base
    assert new_code(SECRET, "vrf_" + "f" * 20, SALT, 10) != base


def test_the_record_holds_no_code_and_checks_without_one() -> None:
    clock = FakeClock()
    v, code = make(clock)
    assert v.status is VerificationStatus.PENDING and v.sends == 1 and v.attempts == 0
    assert v.expires == clock.now() + 600
    assert code.encode() not in repr(v).encode() and code not in repr(v)
    assert otp.code_of(v, SECRET) == code            # same code again, from id + salt
    assert otp.code_of(v, b"a rotated secret") is None


# -- checks --------------------------------------------------------------------------

def test_right_code_verifies_once() -> None:
    clock = FakeClock()
    v, code = make(clock)
    v2, result = check(v, code, clock.now(), SECRET, OtpPolicy())
    assert result == "verified" and v2.status is VerificationStatus.VERIFIED
    assert v2.attempts == 1
    v3, again = check(v2, code, clock.now(), SECRET, OtpPolicy())
    assert again == "already_verified" and v3 == v2


def test_wrong_codes_fail_at_max_attempts_then_even_the_right_one_is_refused() -> None:
    clock = FakeClock()
    policy = OtpPolicy(max_attempts=5)
    v, code = make(clock, policy)
    results = []
    for _ in range(5):
        v, r = check(v, wrong(code), clock.now(), SECRET, policy)
        results.append((r, v.attempts, v.status.value))
    assert results == [("wrong_code", 1, "pending"), ("wrong_code", 2, "pending"),
                       ("wrong_code", 3, "pending"), ("wrong_code", 4, "pending"),
                       ("failed", 5, "failed")]
    v6, r6 = check(v, code, clock.now(), SECRET, policy)
    assert r6 == "failed" and v6.status is VerificationStatus.FAILED and v6.attempts == 5


@pytest.mark.parametrize("offered", ["", "12345", "1234567", "12a456", "１２３４５６",
                                     " 12345", "123456\n", "x" * 64])
def test_malformed_codes_count_as_wrong_attempts(offered: str) -> None:
    clock = FakeClock()
    policy = OtpPolicy(max_attempts=2)
    v, _ = make(clock, policy)
    v1, r1 = check(v, offered, clock.now(), SECRET, policy)
    assert (r1, v1.attempts) == ("wrong_code", 1)
    v2, r2 = check(v1, offered, clock.now(), SECRET, policy)
    assert (r2, v2.status) == ("failed", VerificationStatus.FAILED)


def test_all_zero_code_is_not_matched_by_the_malformed_stand_in() -> None:
    # The stand-in for a malformed code is "0" * digits: when the real code
    # is exactly that, a malformed offer must still not verify.
    clock = FakeClock()
    policy = OtpPolicy()
    v, _ = make(clock, policy)
    v = replace(v, code_hash=code_hash(SECRET, VID, "000000"))
    assert check(v, "00000", clock.now(), SECRET, policy)[1] == "wrong_code"
    assert check(v, "000000", clock.now(), SECRET, policy)[1] == "verified"


def test_expiry_at_ttl_without_counting() -> None:
    clock = FakeClock()
    v, code = make(clock)
    clock.advance(599.9)
    assert check(v, wrong(code), clock.now(), SECRET, OtpPolicy())[1] == "wrong_code"
    clock.advance(0.1)                       # now == expires
    v2, r = check(v, code, clock.now(), SECRET, OtpPolicy())
    assert r == "expired" and v2.status is VerificationStatus.EXPIRED and v2.attempts == 0
    assert check(v2, code, clock.now(), SECRET, OtpPolicy())[1] == "expired"


def test_a_lowered_max_attempts_fails_at_the_next_check() -> None:
    clock = FakeClock()
    v, code = make(clock)
    v = replace(v, attempts=3)
    v2, r = check(v, code, clock.now(), SECRET, OtpPolicy(max_attempts=3))
    assert r == "failed" and v2.status is VerificationStatus.FAILED


def test_canceled_and_terminal_states_never_move() -> None:
    clock = FakeClock()
    v, code = make(clock)
    c = otp.cancel(v)
    assert check(c, code, clock.now(), SECRET, OtpPolicy())[1] == "canceled"
    for state in (VerificationStatus.VERIFIED, VerificationStatus.EXPIRED,
                  VerificationStatus.FAILED, VerificationStatus.CANCELED):
        assert VERIFICATION_MACHINE.allowed(state) == frozenset()
        with pytest.raises(IllegalTransition):
            VERIFICATION_MACHINE.check(state, VerificationStatus.PENDING)
    with pytest.raises(IllegalTransition):
        otp.expire(c)


# -- resends -------------------------------------------------------------------------

def test_resend_cooldown_max_sends_and_no_new_expiry() -> None:
    clock = FakeClock()
    policy = OtpPolicy(resend_cooldown=30, max_sends=3)
    v, code = make(clock, policy)
    clock.advance(10)
    assert resend(v, clock.now(), policy) == ("cooldown", 20.0)
    clock.advance(20)
    assert resend(v, clock.now(), policy) == ("send", 0.0)
    v = sent(v, clock.now())
    assert (v.sends, v.last_sent, v.expires) == (2, clock.now(), clock.now() - 30 + 600)
    assert otp.code_of(v, SECRET) == code                 # the same code goes again
    clock.advance(30)
    v = sent(v, clock.now())
    clock.advance(100)
    assert resend(v, clock.now(), policy) == ("max_sends", 0.0)
    clock.set(v.expires)
    assert resend(v, clock.now(), policy) == ("expired", 0.0)


def test_resend_of_a_finished_verification_is_refused() -> None:
    clock = FakeClock()
    v, code = make(clock)
    done, _ = check(v, code, clock.now(), SECRET, OtpPolicy())
    clock.advance(60)
    assert resend(done, clock.now(), OtpPolicy()) == ("not_pending", 0.0)


def test_moves_are_logged_without_the_code(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    v, code = make(clock)
    with caplog.at_level(logging.DEBUG, logger="mta.policy.otp"):
        check(v, code, clock.now(), SECRET, OtpPolicy())
    assert "machine=verification" in caplog.text and "to=verified" in caplog.text
    assert code not in caplog.text


# -- the policy ----------------------------------------------------------------------

def test_policy_defaults_and_overrides() -> None:
    assert OtpPolicy() == OtpPolicy(6, 600.0, 5, 30.0, 5)
    p = OtpPolicy.from_mapping({"digits": 8, "ttl": 120, "resend_cooldown": 0})
    assert (p.digits, p.ttl, p.max_attempts, p.resend_cooldown) == (8, 120.0, 5, 0.0)
    assert isinstance(p.ttl, float)
    base = OtpPolicy(max_sends=2)
    assert OtpPolicy.from_mapping({}, base) == base


@pytest.mark.parametrize("d, field", [
    ({"digits": 3}, "digits"), ({"digits": 11}, "digits"), ({"digits": 6.0}, "digits"),
    ({"ttl": 59}, "ttl"), ({"ttl": 86401}, "ttl"), ({"ttl": float("nan")}, "ttl"),
    ({"max_attempts": 0}, "max_attempts"), ({"max_attempts": 21}, "max_attempts"),
    ({"resend_cooldown": -1}, "resend_cooldown"), ({"resend_cooldown": "30"}, "resend_cooldown"),
    ({"max_sends": True}, "max_sends"), ({"max_sends": 21}, "max_sends"),
    ({"lenght": 6}, "lenght"),
])
def test_policy_errors_name_the_key(d: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        OtpPolicy.from_mapping(d)


def test_policy_bounds_hold_when_built_directly() -> None:
    with pytest.raises(ValueError, match="^max_sends: "):
        OtpPolicy(max_sends=0)
