"""One-time codes sent by email (verifications): the limits, the states and
the decisions on a check or a resend. Pure: values in, values out; `now`
and the secret are arguments, nothing here reads a clock, a file or a
random source.

Public API:
    OtpPolicy(digits=6, ttl=600.0, max_attempts=5, resend_cooldown=30.0, max_sends=5)
        frozen; bounds checked when built (ValueError naming the field):
        digits 4..10, ttl 60..86400 s, max_attempts 1..20,
        resend_cooldown 0..3600 s, max_sends 1..20
        OtpPolicy.from_mapping(d, base=OtpPolicy()) -> OtpPolicy
            a tenant's overrides (keys as the fields; an unknown key, a
            wrong type or a value out of bounds is a ValueError naming it)
    VerificationStatus     StrEnum: pending, verified, expired, failed, canceled
    VERIFICATION_MACHINE   core.statemachine: pending -> verified | expired |
                           failed | canceled; nothing leaves the other states
    Verification           the frozen record (see the class)
    new_code(secret, vid, salt, digits) -> str        the code, zero-padded
    code_hash(secret, vid, code) -> bytes             what a row keeps
    new_verification(vid, tenant, to, *, salt, now, secret, policy, sender="",
                     template="") -> (Verification, code)   pending, sent once
    code_of(v, secret) -> str | None   the code to send again (None: the
                                       secret changed since, it would not check)
    check(v, offered, now, secret, policy) -> (Verification, result)
        result: "verified" | "wrong_code" | "failed" | "expired" |
                "already_verified" | "canceled"
    resend(v, now, policy) -> (decision, seconds)
        ("send", 0) | ("cooldown", seconds left) | ("max_sends", 0) |
        ("not_pending", 0) | ("expired", 0)
    sent(v, now) -> Verification                  one more send recorded
    expire(v) / cancel(v) -> Verification         checked moves

The code is derived, never stored: code = int.from_bytes(HMAC-SHA256(secret,
b"code:" + id + b":" + salt)[:8]) % 10**digits, zero-padded; the record keeps
the salt and code_hash = HMAC-SHA256(secret, b"check:" + id + b":" + code).
Whoever reads the records without the secret learns nothing of the codes;
a resend derives the same code again (same id, same salt).

Rules:
  * A check of a pending verification at or after `expires` moves it to
    expired and evaluates nothing. Otherwise every check counts one
    attempt, a malformed code (not `digits` ASCII digits) included: it is
    compared like any other (against a stand-in, so the work and the
    counter are the same), and never matches. The right code moves to
    verified; a wrong one that reaches max_attempts moves to failed (result
    "failed"). A pending verification whose attempts already reach the
    policy's max_attempts (the tenant lowered it) fails at its next check.
  * A resend sends the same code and never moves `expires`. It is refused
    when the verification is not pending, expired, sent max_sends times, or
    sent less than resend_cooldown seconds ago (that order).
  * The code never appears in a log line, an exception or a record.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mta.core.statemachine import StateMachine

__all__ = ["OtpPolicy", "VERIFICATION_MACHINE", "Verification", "VerificationStatus", "cancel",
           "check", "code_hash", "code_of", "expire", "new_code", "new_verification",
           "resend", "sent"]

log = logging.getLogger("mta.policy.otp")

# field: (type, low, high)
_BOUNDS: dict[str, tuple[type, float, float]] = {
    "digits": (int, 4, 10), "ttl": (float, 60.0, 86400.0), "max_attempts": (int, 1, 20),
    "resend_cooldown": (float, 0.0, 3600.0), "max_sends": (int, 1, 20)}


def _checked(name: str, value: object) -> int | float:
    kind, low, high = _BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{name}: must be {'an integer' if kind is int else 'a number'}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name}: must be from {low:g} to {high:g}")
    return int(value) if kind is int else float(value)


@dataclass(frozen=True)
class OtpPolicy:
    digits: int = 6
    ttl: float = 600.0                 # seconds a code stays valid (from the first send)
    max_attempts: int = 5              # checks evaluated before the verification fails
    resend_cooldown: float = 30.0      # seconds between two sends
    max_sends: int = 5                 # sends of one verification, the first included

    def __post_init__(self) -> None:
        for name in _BOUNDS:
            _checked(name, getattr(self, name))

    @classmethod
    def from_mapping(cls, d: Mapping[str, object], base: OtpPolicy | None = None) -> OtpPolicy:
        """`base` (the defaults) with the overrides of `d`."""
        changes: dict[str, Any] = {}
        for name, value in d.items():
            if name not in _BOUNDS:
                raise ValueError(f"{name}: unknown key (known: {', '.join(_BOUNDS)})")
            changes[name] = _checked(name, value)
        return replace(base or cls(), **changes)


class VerificationStatus(enum.StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    EXPIRED = "expired"
    FAILED = "failed"          # max_attempts wrong codes
    CANCELED = "canceled"      # its first email could not be sent


_S = VerificationStatus
VERIFICATION_MACHINE: StateMachine[VerificationStatus] = StateMachine(
    "verification", {
        _S.PENDING: frozenset({_S.PENDING, _S.VERIFIED, _S.EXPIRED, _S.FAILED, _S.CANCELED}),
        _S.VERIFIED: frozenset(), _S.EXPIRED: frozenset(), _S.FAILED: frozenset(),
        _S.CANCELED: frozenset(),
    }, log)


@dataclass(frozen=True)
class Verification:
    id: str                    # "vrf_" + 20 hex digits
    tenant: str
    to: str                    # the one address the code goes to
    status: VerificationStatus
    created: float
    expires: float             # created + ttl; a resend never moves it
    attempts: int              # checks evaluated
    sends: int                 # emails sent, the first included
    last_sent: float
    salt: bytes                # 16 random bytes: the code's other input
    code_hash: bytes           # HMAC-SHA256(secret, b"check:" + id + b":" + code)
    digits: int                # the code's length when it was made
    sender: str = ""           # the request's `from` ("" : the template's)
    template: str = ""         # the template's id or alias ("": the default message)
    email_id: str = ""         # the last email sent

    def __post_init__(self) -> None:
        # A store row carries the status as its string: the enum from here on.
        object.__setattr__(self, "status", VerificationStatus(self.status))


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b":".join(parts), hashlib.sha256).digest()


def new_code(secret: bytes, vid: str, salt: bytes, digits: int) -> str:
    number = int.from_bytes(_mac(secret, b"code", vid.encode("ascii"), salt)[:8], "big")
    return str(number % 10 ** digits).zfill(digits)


def code_hash(secret: bytes, vid: str, code: str) -> bytes:
    return _mac(secret, b"check", vid.encode("ascii"), code.encode("ascii"))


def new_verification(vid: str, tenant: str, to: str, *, salt: bytes, now: float,
                     secret: bytes, policy: OtpPolicy, sender: str = "",
                     template: str = "") -> tuple[Verification, str]:
    """A pending verification counted as sent once at `now`, and its code."""
    code = new_code(secret, vid, salt, policy.digits)
    v = Verification(id=vid, tenant=tenant, to=to, status=VerificationStatus.PENDING,
                     created=now, expires=now + policy.ttl, attempts=0, sends=1, last_sent=now,
                     salt=salt, code_hash=code_hash(secret, vid, code), digits=policy.digits,
                     sender=sender, template=template)
    return v, code


def code_of(v: Verification, secret: bytes) -> str | None:
    code = new_code(secret, v.id, v.salt, v.digits)
    return code if hmac.compare_digest(code_hash(secret, v.id, code), v.code_hash) else None


def _move(v: Verification, status: VerificationStatus, attempts: int | None = None
          ) -> Verification:
    VERIFICATION_MACHINE.move(v.status, status, v.id, level=logging.DEBUG)
    return replace(v, status=status, attempts=v.attempts if attempts is None else attempts)


def expire(v: Verification) -> Verification:
    return _move(v, VerificationStatus.EXPIRED)


def cancel(v: Verification) -> Verification:
    return _move(v, VerificationStatus.CANCELED)


_DONE = {VerificationStatus.VERIFIED: "already_verified", VerificationStatus.FAILED: "failed",
         VerificationStatus.EXPIRED: "expired", VerificationStatus.CANCELED: "canceled"}


def check(v: Verification, offered: str, now: float, secret: bytes,
          policy: OtpPolicy) -> tuple[Verification, str]:
    if v.status is not VerificationStatus.PENDING:
        return v, _DONE[v.status]
    if now >= v.expires:
        return expire(v), "expired"
    if v.attempts >= policy.max_attempts:
        return _move(v, VerificationStatus.FAILED), "failed"
    well_formed = len(offered) == v.digits and offered.isascii() and offered.isdigit()
    # A malformed code is hashed as a stand-in and can never match: the same
    # work and the same counting as a wrong code, no early way out.
    candidate = offered if well_formed else "0" * v.digits
    same = hmac.compare_digest(code_hash(secret, v.id, candidate), v.code_hash)
    attempts = v.attempts + 1
    if same and well_formed:
        return _move(v, VerificationStatus.VERIFIED, attempts=attempts), "verified"
    if attempts >= policy.max_attempts:
        return _move(v, VerificationStatus.FAILED, attempts=attempts), "failed"
    return replace(v, attempts=attempts), "wrong_code"


def resend(v: Verification, now: float, policy: OtpPolicy) -> tuple[str, float]:
    if v.status is not VerificationStatus.PENDING:
        return "not_pending", 0.0
    if now >= v.expires:
        return "expired", 0.0
    if v.sends >= policy.max_sends:
        return "max_sends", 0.0
    ready = v.last_sent + policy.resend_cooldown
    if now < ready:
        return "cooldown", ready - now
    return "send", 0.0


def sent(v: Verification, now: float) -> Verification:
    """The verification after one more send at `now` (the expiry stays)."""
    return replace(v, sends=v.sends + 1, last_sent=now)
