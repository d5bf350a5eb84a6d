"""The cluster's secret box: AES-256-GCM for what PostgreSQL must hold but
must not be able to read (the DKIM private keys of the sending domains).

One job: load the 32-byte key every node shares (`[cluster] secret_file`),
seal and open small blobs with it, and tell a wrong key from damaged data.

API
    SecretBox(key)                  key: 32 bytes
        .key_id -> str              16 hex digits, a hash of the key (not the key)
        .seal(plaintext, aad) -> bytes          nonce (12 bytes) + ciphertext + tag
        .open(key_id, sealed, aad) -> bytes     WrongSecret when `key_id` is not
                                                this box's; SecretError when the
                                                blob does not authenticate
    load_secret(path) -> SecretBox  SecretError naming the path: missing,
                                    unreadable, or not 32 bytes as base64 or hex
    new_secret() -> str             a fresh key as base64 (`mta cluster secret`)
    SecretError, WrongSecret(SecretError)

Invariants
- A fresh random 96-bit nonce per seal (seals are rare: one per DKIM key
  written), so a nonce never repeats under a key in practice.
- `aad` binds a blob to its place ("dkim:<domain>:<selector>"): a blob
  copied to another row does not open.
- A blob sealed under another key is reported as such (its stored key id
  differs), never opened into garbage. The key itself is never logged or
  put in an error; its id is a one-way hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "SecretBox", "SecretError", "WrongSecret", "key_id_of", "load_secret",
           "new_secret"]

KEY_BYTES = 32
_NONCE = 12


class SecretError(Exception):
    """The cluster secret cannot be used, or a blob does not open (message for humans)."""


class WrongSecret(SecretError):
    """A blob was sealed under another cluster secret than this node's."""


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"mta-cluster-secret:" + key).hexdigest()[:16]


class SecretBox:
    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise SecretError(f"the cluster secret must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id_of(key)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def open(self, key_id: str, sealed: bytes, aad: str) -> bytes:
        if key_id != self.key_id:
            raise WrongSecret(f"{aad}: sealed under cluster secret {key_id}, but this node's "
                              f"[cluster] secret_file holds secret {self.key_id}: every node "
                              "needs the same secret file")
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad.encode())
        except (InvalidTag, ValueError):
            raise SecretError(f"{aad}: the sealed value does not authenticate (damaged, or "
                              "moved from another row)") from None

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id})"


def _decode(text: str) -> bytes | None:
    t = "".join(text.split())
    if len(t) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(t)
        except ValueError:
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(t + "=" * (-len(t) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_BYTES:
            return raw
    return None


def load_secret(path: str | os.PathLike[str]) -> SecretBox:
    shown = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(4096)
    except FileNotFoundError:
        raise SecretError(f"cluster.secret_file {shown}: no such file (make one with "
                          "`mta cluster secret > FILE`, the same file on every node)") from None
    except IsADirectoryError:
        raise SecretError(f"cluster.secret_file {shown}: is a directory, not a file") from None
    except PermissionError:
        raise SecretError(f"cluster.secret_file {shown}: cannot be read (permission denied "
                          f"for uid {os.getuid()})") from None
    except OSError as exc:
        raise SecretError(f"cluster.secret_file {shown}: cannot be read: "
                          f"{exc.strerror or exc}") from None
    try:
        key = _decode(data.decode("ascii"))
    except UnicodeDecodeError:
        key = None
    if key is None:
        raise SecretError(f"cluster.secret_file {shown}: not a {KEY_BYTES}-byte key written "
                          "as base64 or hex (make one with `mta cluster secret`)")
    return SecretBox(key)


def new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")
