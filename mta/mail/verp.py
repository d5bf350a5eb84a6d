"""VERP return paths: which message and which recipient a bounce is about.

API
    VerpCodec(secret: bytes, prefix: str = "b")
        .encode(queue_id, rcpt_idx, domain) -> "b+<token>@<domain>"
        .decode(address) -> (queue_id, rcpt_idx) | None
        .is_verp(address) -> bool          True iff decode() is not None

Token (the local part after "<prefix>+"), all lower case:

    <queue id, 16 chars>-<recipient index, decimal>-<MAC, 16 chars>
    e.g. b+01hf8m5k2q7w3zx9-3-k3v7q2m6a4ty5rbe@bounces.example.com

  * queue id: the 16 Crockford base32 characters of mta.core.ids, lowered
    (readable in logs, and the alphabet has one letter per value whatever
    the case);
  * recipient index: its position in the message's recipient list;
  * MAC: HMAC-SHA256(secret, "verp1" NUL queue-id NUL index) truncated to
    80 bits, as 16 characters of RFC 4648 base32 in lower case.

Invariants
  * Case-insensitive: remote MTAs may lower- or upper-case a local part;
    decode() folds the case before checking anything.
  * The MAC covers the queue id and the index (not the domain, so a message
    re-routed to another bounce domain still decodes). Forging a token that
    decodes to any chosen (queue id, index) needs the secret: 2^-80 per guess.
    A token changed in any character, or made with another secret, decodes
    to None. Comparison is constant-time.
  * One canonical form: no leading zeros in the index, exact lengths; any
    other spelling is rejected, so one (id, index) has exactly one token.
  * The local part is at most 64 octets (RFC 5321 §4.5.3.1.1): with the
    longest prefix allowed (8 characters) and the largest index (2^63 - 1,
    19 digits) it is 8 + 1 + 16 + 1 + 19 + 1 + 16 = 62.
  * decode() and is_verp() never raise: anything that is not a valid token
    of this codec — a wrong prefix, bad characters, a truncated token, a bad
    MAC, not even a string — is None / False.

Pure and stdlib only: no clock, no I/O. The secret is generated and stored
by the runtime (state_dir); rotating it invalidates bounces for mail sent
before the rotation (a known compromise: keep the old codec around to decode
them for the queue lifetime if that matters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

__all__ = ["VerpCodec"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"   # as in mta.core.ids
_QID_LEN = 16
_MAC_BYTES = 10                                    # 80 bits → 16 base32 chars
_MAC_CHARS = 16
_MAX_INDEX = 2 ** 63 - 1
_MAX_PREFIX = 8
_PREFIX_RE = re.compile(r"[a-z0-9]{1,%d}\Z" % _MAX_PREFIX)
_QID_RE = re.compile(r"[%s]{%d}\Z" % (_CROCKFORD, _QID_LEN))
_TOKEN_RE = re.compile(r"([0-9a-z]{%d})-(0|[1-9][0-9]{0,18})-([a-z2-7]{%d})\Z"
                       % (_QID_LEN, _MAC_CHARS))
_MIN_SECRET = 16


class VerpCodec:
    def __init__(self, secret: bytes, prefix: str = "b"):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < _MIN_SECRET:
            raise ValueError(f"VERP secret must be at least {_MIN_SECRET} bytes")
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise ValueError(f"VERP prefix must be 1-{_MAX_PREFIX} characters of a-z0-9, "
                             f"got {prefix!r}")
        self._secret = bytes(secret)
        self.prefix = prefix

    def _mac(self, qid: str, idx: int) -> str:
        msg = b"verp1\0" + qid.encode("ascii") + b"\0" + str(idx).encode("ascii")
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.b32encode(digest).decode("ascii").lower()   # 80 bits: no padding

    def encode(self, queue_id: str, rcpt_idx: int, domain: str) -> str:
        qid = queue_id.upper() if isinstance(queue_id, str) else ""
        if not _QID_RE.match(qid):
            raise ValueError(f"not a queue id: {queue_id!r}")
        if isinstance(rcpt_idx, bool) or not isinstance(rcpt_idx, int) \
                or not 0 <= rcpt_idx <= _MAX_INDEX:
            raise ValueError(f"recipient index out of range: {rcpt_idx!r}")
        if not domain or "@" in domain or domain != domain.strip():
            raise ValueError(f"bad bounce domain: {domain!r}")
        token = f"{qid.lower()}-{rcpt_idx}-{self._mac(qid, rcpt_idx)}"
        return f"{self.prefix}+{token}@{domain}"

    def decode(self, address: object) -> tuple[str, int] | None:
        if not isinstance(address, str):
            return None
        s = address.strip()
        if s.startswith("<") and s.endswith(">"):
            s = s[1:-1].strip()
        local = s.rpartition("@")[0] if "@" in s else s
        if not local.isascii():
            return None
        local = local.lower()
        head = self.prefix + "+"
        if not local.startswith(head):
            return None
        m = _TOKEN_RE.match(local[len(head):])
        if m is None:
            return None
        qid = m.group(1).upper()
        if not _QID_RE.match(qid):          # e.g. "u", not in Crockford's alphabet
            return None
        idx = int(m.group(2))
        if idx > _MAX_INDEX:
            return None
        if not hmac.compare_digest(self._mac(qid, idx), m.group(3)):
            return None
        return qid, idx

    def is_verp(self, address: object) -> bool:
        return self.decode(address) is not None
