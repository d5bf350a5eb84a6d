"""VERP codec: round trip, case folding, and every kind of bad token → None."""

from __future__ import annotations

import re

import pytest

from mta.core import new_queue_id
from mta.mail.verp import VerpCodec

SECRET = b"0123456789abcdef-verp-test-secret"
QID = new_queue_id(1_700_000_000.0)
codec = VerpCodec(SECRET)


def _token_re(prefix="b"):
    return re.compile(rf"{prefix}\+[0-9a-z]{{16}}-(0|[1-9][0-9]*)-[a-z2-7]{{16}}@bounces\.example\.com")


@pytest.mark.parametrize("idx", [0, 1, 7, 99_999, 100_000, 2**32, 2**63 - 1])
def test_round_trip(idx):
    addr = codec.encode(QID, idx, "bounces.example.com")
    assert _token_re().fullmatch(addr), addr
    assert len(addr.partition("@")[0]) <= 64
    assert codec.decode(addr) == (QID, idx)
    assert codec.is_verp(addr)


def test_queue_id_given_in_lower_case_decodes_upper():
    addr = codec.encode(QID.lower(), 3, "b.example")
    assert codec.decode(addr) == (QID, 3)


def test_local_part_fits_with_longest_prefix_and_index():
    c = VerpCodec(SECRET, prefix="bouncesx")
    addr = c.encode(QID, 2**63 - 1, "bounces.example.com")
    assert len(addr.partition("@")[0]) <= 64
    assert c.decode(addr) == (QID, 2**63 - 1)


@pytest.mark.parametrize("fold", [str.lower, str.upper, str.swapcase, str.title])
def test_case_insensitive(fold):
    addr = codec.encode(QID, 42, "bounces.example.com")
    assert codec.decode(fold(addr)) == (QID, 42)


def test_brackets_and_whitespace_accepted():
    addr = codec.encode(QID, 5, "bounces.example.com")
    assert codec.decode(f" <{addr}> ") == (QID, 5)
    assert codec.decode(addr.partition("@")[0]) == (QID, 5)   # bare local part


def test_domain_not_covered():
    addr = codec.encode(QID, 5, "bounces.example.com")
    assert codec.decode(addr.replace("bounces.example.com", "other.example")) == (QID, 5)


def test_every_single_character_change_is_rejected():
    addr = codec.encode(QID, 12, "bounces.example.com")
    local = addr.partition("@")[0]
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz-+."
    start = len("b+")
    for i in range(start, len(local)):
        for ch in alphabet:
            if ch == local[i]:
                continue
            forged = local[:i] + ch + local[i + 1:] + "@bounces.example.com"
            assert codec.decode(forged) is None, forged


def test_changed_index_or_queue_id_with_old_mac_rejected():
    addr = codec.encode(QID, 12, "d.example")
    mac = addr.partition("@")[0].rsplit("-", 1)[1]
    other = new_queue_id(1_700_000_001.0)
    assert codec.decode(f"b+{QID.lower()}-13-{mac}@d.example") is None
    assert codec.decode(f"b+{other.lower()}-12-{mac}@d.example") is None


def test_non_canonical_index_rejected():
    addr = codec.encode(QID, 12, "d.example")
    assert codec.decode(addr.replace("-12-", "-012-")) is None
    assert codec.decode(addr.replace("-12-", "-+12-")) is None


def test_wrong_secret_rejected():
    addr = codec.encode(QID, 1, "d.example")
    assert VerpCodec(b"another-secret-of-16+bytes").decode(addr) is None


def test_wrong_prefix_rejected():
    addr = codec.encode(QID, 1, "d.example")
    other = VerpCodec(SECRET, prefix="bx")
    assert other.decode(addr) is None
    assert codec.decode(other.encode(QID, 1, "d.example")) is None
    assert codec.decode("c" + addr[1:]) is None


@pytest.mark.parametrize("cut", [1, 2, 5, 16, 17, 20, 30])
def test_truncated_rejected(cut):
    addr = codec.encode(QID, 77, "d.example")
    local = addr.partition("@")[0]
    assert codec.decode(local[:-cut] + "@d.example") is None


def test_mac_shortened_or_lengthened_rejected():
    addr = codec.encode(QID, 7, "d.example")
    local = addr.partition("@")[0]
    assert codec.decode(local + "a@d.example") is None
    assert codec.decode(local[:-1] + "@d.example") is None


@pytest.mark.parametrize("garbage", [
    "", "@", "<>", "b+", "b+@d.example", "b+--@d.example", "b+a-b-c@d.example",
    "postmaster@d.example", "bob+tag@example.com", "b+" + "0" * 16 + "-1-" + "a" * 16,
    "b+" + "u" * 16 + "-1-" + "a" * 16 + "@d.example",            # u: not Crockford
    "b+" + "0" * 16 + "-" + "9" * 25 + "-" + "a" * 16 + "@d.example",   # index too big
    "b+" + "0" * 16 + "-1-" + "1" * 16 + "@d.example",            # 1: not RFC 4648 b32
    "b+ü" + "0" * 15 + "-1-" + "a" * 16 + "@d.example", "\x00\r\n", "b+" + "x" * 10_000,
    None, 123, b"b+bytes@d.example",
])
def test_garbage_is_none_never_raises(garbage):
    assert codec.decode(garbage) is None
    assert codec.is_verp(garbage) is False


def test_fuzz_never_raises():
    import random
    rnd = random.Random(1)
    chars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEF+-@.<> \x00é"
    for _ in range(2000):
        s = "b+" + "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 60)))
        assert codec.decode(s) is None


@pytest.mark.parametrize("args", [
    ("short", 1, "d.example"), (QID + "0", 1, "d.example"), ("u" * 16, 1, "d.example"),
    (QID, -1, "d.example"), (QID, 2**63, "d.example"), (QID, True, "d.example"),
    (QID, 1.0, "d.example"), (QID, 1, ""), (QID, 1, "a@b"),
])
def test_encode_refuses_bad_input(args):
    with pytest.raises(ValueError):
        codec.encode(*args)


@pytest.mark.parametrize("secret,prefix", [
    (b"short", "b"), ("a string secret!!", "b"), (SECRET, ""), (SECRET, "B"),
    (SECRET, "b+x"), (SECRET, "toolongpx"),
])
def test_constructor_refuses_weak_secret_and_bad_prefix(secret, prefix):
    with pytest.raises(ValueError):
        VerpCodec(secret, prefix)


def test_distinct_tokens_per_recipient_and_secret():
    a = codec.encode(QID, 0, "d.example")
    b = codec.encode(QID, 1, "d.example")
    c = VerpCodec(SECRET + b"x").encode(QID, 0, "d.example")
    assert len({a, b, c}) == 3
