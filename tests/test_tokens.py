"""Sealed tokens (mta.mail.tokens): round trip, opacity, tampering, kinds,
keys, sizes, garbage, and the key file."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat

import pytest

from mta.mail.tokens import MAX_TOKEN, TokenKey, seal, unseal

KEY = TokenKey(bytes(range(32)))
FIELDS: list[str | int] = ["acme", "jane@example.com", "news", "01HQXYZ"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.mark.parametrize("fields", [
    FIELDS, ["q1", 0, "a@b.c"], ["q1", 2**40, ""], [], ["ünïcødé ☃", -7]])
def test_round_trip(fields: list[str | int]) -> None:
    token = seal(KEY, "u", fields)
    assert unseal(KEY, "u", token) == fields


def test_token_is_opaque_url_safe_and_fresh() -> None:
    a, b = seal(KEY, "u", FIELDS), seal(KEY, "u", FIELDS)
    assert a != b                                   # a new nonce each time
    for token in (a, b):
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789-_")
        raw = _raw(token)
        for field in ("jane", "example", "acme", "news", "01HQXYZ"):
            assert field.encode() not in raw and field not in token
    assert len(a) < 120                             # short enough for a link


def test_every_byte_flipped_is_refused() -> None:
    token = seal(KEY, "c", ["q1", 3, "jane@example.com"])
    raw = bytearray(_raw(token))
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            bad = bytearray(raw)
            bad[i] ^= bit
            assert unseal(KEY, "c", _b64(bytes(bad))) is None, (i, bit)


def test_every_character_changed_is_refused() -> None:
    # the last character of unpadded base64 has spare bits: a non-canonical
    # spelling of the same bytes must not pass either
    token = seal(KEY, "o", ["q1", "jane@example.com"])
    alphabet = "AbZz09-_"
    for i in range(len(token)):
        for c in alphabet:
            if c != token[i]:
                assert unseal(KEY, "o", token[:i] + c + token[i + 1:]) is None, (i, c)


def test_truncated_and_extended_refused() -> None:
    token = seal(KEY, "o", ["q1", "x@y.z"])
    for cut in range(len(token)):
        assert unseal(KEY, "o", token[:cut]) is None
    assert unseal(KEY, "o", token + "A") is None
    assert unseal(KEY, "o", token + "AAAA") is None


def test_wrong_kind_and_wrong_key() -> None:
    token = seal(KEY, "u", FIELDS)
    assert unseal(KEY, "c", token) is None
    assert unseal(KEY, "o", token) is None
    assert unseal(KEY, "", token) is None
    assert unseal(TokenKey(bytes(32)), "u", token) is None
    assert unseal(TokenKey.generate(), "u", token) is None


def test_oversize_refused_unread() -> None:
    import msgpack
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    nonce = os.urandom(12)
    plain = msgpack.packb(["x" * 1600])
    big = _b64(nonce + AESGCM(KEY.derive("token")).encrypt(nonce, plain, b"u"))
    assert len(big) > MAX_TOKEN                      # a genuinely sealed token ...
    assert unseal(KEY, "u", big) is None             # ... but too long to look at
    with pytest.raises(ValueError, match="too long"):
        seal(KEY, "u", ["x" * 1600])                 # seal never makes one
    assert unseal(KEY, "u", seal(KEY, "u", ["x" * 1400])) == ["x" * 1400]
    assert unseal(KEY, "u", "A" * (MAX_TOKEN + 4)) is None


@pytest.mark.parametrize("garbage", [
    "", "A", "AA", "AAAA", "!!!!", "abc def", "a+b/c=", "abcd====", "\x00" * 40,
    "é" * 40, "A" * 40, "A" * 39, _b64(b"\x00" * 28), _b64(os.urandom(100))])
def test_garbage_is_none(garbage: str) -> None:
    assert unseal(KEY, "u", garbage) is None


def test_non_str_token_is_none() -> None:
    assert unseal(KEY, "u", None) is None            # type: ignore[arg-type]
    assert unseal(KEY, "u", b"abc") is None          # type: ignore[arg-type]


def test_sealed_non_list_or_bad_items_refused() -> None:
    """A validly sealed plaintext that is not a list of str/int is refused
    (built here by hand: seal itself refuses such fields)."""
    import msgpack
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    aead = AESGCM(KEY.derive("token"))
    for value in ({"a": 1}, "text", 5, [1.5], [True], [None], [b"x"], [["nested"]]):
        nonce = os.urandom(12)
        token = _b64(nonce + aead.encrypt(nonce, msgpack.packb(value, use_bin_type=True), b"u"))
        assert unseal(KEY, "u", token) is None, value
    nonce = os.urandom(12)
    token = _b64(nonce + aead.encrypt(nonce, b"\xc1garbage", b"u"))
    assert unseal(KEY, "u", token) is None


def test_seal_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="field 1"):
        seal(KEY, "u", ["a", True])
    with pytest.raises(TypeError, match="field 0"):
        seal(KEY, "u", [1.5])  # type: ignore[list-item]


def test_key_size_checked() -> None:
    for bad in (b"", b"x" * 31, b"x" * 33):
        with pytest.raises(ValueError, match="32 bytes"):
            TokenKey(bad)
    assert "secret" in repr(KEY) and str(bytes(range(32))) not in repr(KEY)


def test_derive_is_hmac_per_purpose() -> None:
    import hashlib
    import hmac
    raw = bytes(range(32))
    assert KEY.derive("token") == hmac.new(raw, b"mta:token", hashlib.sha256).digest()
    assert KEY.derive("token") != KEY.derive("other")
    assert len(KEY.derive("x")) == 32


def test_key_file_created_0600_and_reloaded(tmp_path) -> None:
    path = tmp_path / "token.key"
    key = TokenKey.load_or_create(path)
    assert path.stat().st_size == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token.key"]   # no temp file left
    token = seal(key, "u", FIELDS)
    again = TokenKey.load_or_create(path)
    assert unseal(again, "u", token) == FIELDS
    assert again.derive("token") == key.derive("token")


def test_existing_key_file_is_used(tmp_path) -> None:
    path = tmp_path / "k"
    path.write_bytes(bytes(range(32)))
    assert TokenKey.load_or_create(path).derive("token") == KEY.derive("token")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_bad_key_file_names_path(tmp_path, size: int) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(b"k" * size)
    with pytest.raises(ValueError, match="bad.key") as info:
        TokenKey.load_or_create(path)
    assert "32 bytes" in str(info.value)
    assert path.read_bytes() == b"k" * size          # never overwritten


def test_missing_directory_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        TokenKey.load_or_create(tmp_path / "nope" / "k")


def _create_and_report(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(TokenKey.load_or_create(path).derive("token"))


def test_racing_creators_agree(tmp_path) -> None:
    """Several processes creating the key at once all end up with one key."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_and_report, args=(str(tmp_path / "k"), queue))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    derived = {queue.get(timeout=5) for _ in procs}
    assert len(derived) == 1
    assert derived == {TokenKey((tmp_path / "k").read_bytes()).derive("token")}
    assert [p.name for p in tmp_path.iterdir()] == ["k"]
