"""Sealed tokens: short opaque strings that carry a few fields through a URL.

One job: turn a list of fields (strings and integers) into a token that
nobody without the key can read or forge, and back. The public listener
(mta.api.public) receives these tokens in unsubscribe, click and open links.

API
    TokenKey(raw)                    32 secret bytes (ValueError otherwise)
        TokenKey.load_or_create(path) -> TokenKey   the key file, made when absent
        TokenKey.generate() -> TokenKey             a new random key (not stored)
        .derive(purpose) -> bytes    HMAC-SHA256(raw, b"mta:" + purpose): one
                                     sub-key per use, never the raw key itself
    seal(key, kind, fields) -> str   base64url (no padding) of nonce + AES-256-GCM
                                     ciphertext of msgpack(fields), with `kind` as
                                     associated data; TypeError for a field not
                                     str/int, ValueError past MAX_TOKEN
    unseal(key, kind, token) -> list[str | int] | None   None for any problem
    MAX_TOKEN                        longest token unseal looks at (characters)

Invariants:
- Opaque: nothing of the fields is readable in a token (AES-GCM under the
  key derived for "token", a fresh random 12-byte nonce per seal, so sealing
  the same fields twice gives different tokens).
- Bound to its kind: the kind is GCM's associated data, so an unsubscribe
  token never opens as a click token, nor the reverse.
- unseal never raises and answers None for a token that is too long, not
  canonical base64url (every string maps to at most one byte string, so no
  two spellings of one token exist), tampered with, sealed under another key
  or kind, or whose plaintext is not a list of str/int (bools excluded).
  Forgery is refused by GCM's tag check, which compares in constant time.
- The key file is exactly 32 bytes, mode 0600, created with O_CREAT|O_EXCL
  under a temporary name and then hard-linked into place, so a reader never
  sees a partly written key and a crash never leaves a short one; two
  processes creating it at once both end up with the one that was linked
  first. A file of any other size is an error naming its path.
- Nothing here logs; no key or token appears in an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mta.core.files import create_once

__all__ = ["KEY_BYTES", "MAX_TOKEN", "TokenKey", "seal", "unseal"]

KEY_BYTES = 32
MAX_TOKEN = 2048                 # characters: longer tokens are refused unread
_NONCE = 12
_TAG = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenKey:
    """The secret behind every token: 32 random bytes."""

    __slots__ = ("_raw", "_aead")

    def __init__(self, raw: bytes):
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise ValueError(f"a token key is exactly {KEY_BYTES} bytes")
        self._raw = raw
        self._aead = AESGCM(self.derive("token"))

    def __repr__(self) -> str:           # never the key itself
        return "TokenKey(<secret>)"

    @classmethod
    def generate(cls) -> TokenKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def load_or_create(cls, path: Path) -> TokenKey:
        """The key in `path`; when there is no such file, a new random key
        written there (0600, durable) first. ValueError when the file does
        not hold exactly 32 bytes."""
        path = Path(path)
        try:
            return cls._read(path)
        except FileNotFoundError:
            pass
        create_once(path, secrets.token_bytes(KEY_BYTES))
        return cls._read(path)           # ours, or the one another process linked first

    @classmethod
    def _read(cls, path: Path) -> TokenKey:
        with open(path, "rb") as f:
            raw = f.read(KEY_BYTES + 1)
        if len(raw) != KEY_BYTES:
            raise ValueError(f"token key file {path}: expected exactly {KEY_BYTES} bytes, "
                             f"found {len(raw) if len(raw) <= KEY_BYTES else 'more'}")
        return cls(raw)

    def derive(self, purpose: str) -> bytes:
        """A 32-byte sub-key for one purpose (HMAC-SHA256(raw, b"mta:" + purpose))."""
        return hmac.new(self._raw, b"mta:" + purpose.encode(), hashlib.sha256).digest()



def seal(key: TokenKey, kind: str, fields: Sequence[str | int]) -> str:
    """An opaque token carrying `fields` (str or int, not bool), for `kind`."""
    values = list(fields)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"token field {i}: only str and int can be sealed")
    nonce = secrets.token_bytes(_NONCE)
    sealed = key._aead.encrypt(nonce, msgpack.packb(values, use_bin_type=True), kind.encode())
    token = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
    if len(token) > MAX_TOKEN:           # unseal would never read it
        raise ValueError(f"token fields too long: the token would exceed {MAX_TOKEN} characters")
    return token


def unseal(key: TokenKey, kind: str, token: str) -> list[str | int] | None:
    """The fields sealed in `token` for `kind`, or None (any problem at all)."""
    try:
        raw = _decode(token)
        if raw is None or len(raw) < _NONCE + _TAG:
            return None
        plain = key._aead.decrypt(raw[:_NONCE], raw[_NONCE:], kind.encode())
        value = msgpack.unpackb(plain, raw=False, strict_map_key=True, use_list=True)
    except InvalidTag:
        return None
    except Exception:        # msgpack's errors, or anything odd: still "not a token"
        return None
    if not isinstance(value, list):
        return None
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            return None
    return value


def _decode(token: str) -> bytes | None:
    """base64url without padding → bytes; None unless the text is the one
    canonical spelling of its bytes (so a changed character never decodes to
    the same bytes)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or len(token) % 4 == 1:
        return None
    if _B64URL.fullmatch(token) is None:
        return None
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        return None
    return raw
