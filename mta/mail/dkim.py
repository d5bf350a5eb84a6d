"""DKIM signing (RFC 6376, RFC 8463): the one job is message bytes → signed bytes.

API
    SigningKey(domain, selector, algorithm, private_pem)   frozen value
        algorithm is "rsa-sha256" or "ed25519-sha256"
    load_private_key(pem, algorithm) -> PrivateKey         parsed once, cached
    PrivateKey = RSAPrivateKey | Ed25519PrivateKey          (cryptography's)
    generate_key(algorithm) -> (private_pem, dns_txt_value)
        RSA-2048 (PKCS#1 PEM, what opendkim-genkey writes) or Ed25519 (PKCS#8
        PEM); the TXT value is "v=DKIM1; k=rsa; p=…" / "v=DKIM1; k=ed25519; p=…"
    public_txt(pem, algorithm) -> dns_txt_value            the TXT value for a key
    sign(message, keys, *, now=None, tail=None) -> bytes
        the message with one DKIM-Signature field per key prepended, in the
        order of `keys` (the first key's signature ends up on top); `tail`:
        the message's bytes past `message`, as pieces (a large message)
    BodyHash()                                             .update(piece) … .digest():
        the relaxed body hash of a body fed in pieces of any size
    SigningError                                           bad key or unparsable message

What is signed
    relaxed/relaxed canonicalisation; h= lists, in message order, every
    occurrence of From, To, Cc, Subject, Date, Message-ID, MIME-Version,
    Content-Type, Reply-To, List-Unsubscribe, List-Unsubscribe-Post, then
    "from" once more: signing one From more than the message has makes a
    second From added later break the signature (over-signing, RFC 6376 §8.15).
    A DKIM-Signature already present (the application's) is neither signed nor
    touched; ours are added above it.

How (docs/ARCHITECTURE.md §3)
    dkimpy does the header parsing and canonicalisation, header hashing and
    the header layout (`rfc822_parse`, `CanonicalizationPolicy`,
    `hash_headers`, `fold`, `RE_BTAG`: the steps of `DomainSigner.gen_header`).
    Two steps are ours. The body: dkimpy splits and re-joins every body line
    and runs three regexes over it (~0.5-0.7 ms for 20 KB of text, more than
    the RSA operation); `canonicalize_body` gives the same bytes with plain
    bytes operations (~0.03-0.25 ms), proven equal to dkimpy's by the tests.
    And the private-key operation, done by OpenSSL through `cryptography`:
    dkimpy's RSA is pure-Python `pow()` (7-17 ms per signature on these
    machines), OpenSSL's ~0.3 ms. scripts/bench_dkim.py measures both paths.
    RSA is PKCS#1 v1.5 over SHA-256 of the canonical header data;
    Ed25519 signs the SHA-256 digest of the same data (RFC 8463 §3, as
    dkimpy's own ed25519 path does: `pk.sign(h.digest())`).

Invariants
    * The message bytes are never rewritten: the result is
      ``signature fields + message``. New fields use the message's line ending
      (CRLF unless the first line ends in a bare LF), so LF-only input stays
      LF-only; the hashes are always over the CRLF canonical form, which is
      what the message becomes on the wire.
    * A body without a final line break is hashed as if it had one (relaxed
      body canonicalisation adds it), which is also what SMTP transmits.
    * Pure apart from the clock: `now` gives t= (the caller's clock; the
      wall clock only when it is None). No shared mutable state besides the
      key cache (an lru_cache, safe under threads), so `sign` may run in a
      thread pool, concurrently and re-entrantly.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import (CanonicalizationPolicy, correct_empty_body,
                                   strip_trailing_lines)

from mta.core.errors import MtaError

__all__ = ["SigningKey", "SigningError", "ALGORITHMS", "SIGNED_HEADERS", "PrivateKey",
           "load_private_key", "generate_key", "public_txt", "sign", "canonicalize_body",
           "BodyHash"]

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"
ALGORITHMS = (RSA_SHA256, ED25519_SHA256)

#: Fields signed when present, each occurrence; From is signed once more.
SIGNED_HEADERS = frozenset({
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
    b"content-type", b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post",
})
OVERSIGNED = (b"from",)

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_HEADER_NAME = b"DKIM-Signature"
_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of the header block
_BARE_LF = re.compile(rb"\r?\n")
# d= and s= go into a header verbatim: allow DNS label characters only, so a
# misconfigured domain can never inject header syntax.
_DNS_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_RSA_MIN_BITS = 1024  # RFC 8301 §3.2: signers MUST use at least 1024 bits
_PAD = padding.PKCS1v15()
_PREHASHED = utils.Prehashed(hashes.SHA256())

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
#: A header field as dkimpy's rfc822_parse gives it: (name, value after the colon).
HeaderField = tuple[bytes, bytes]


class SigningError(MtaError):
    """The message cannot be signed: a bad key, or a header block dkimpy cannot parse."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    private_pem: bytes

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SigningError(f"unknown DKIM algorithm {self.algorithm!r}; "
                               f"use one of {', '.join(ALGORITHMS)}")
        for what, value in (("domain", self.domain), ("selector", self.selector)):
            if not _DNS_NAME.match(_ascii_name(value)):
                raise SigningError(f"DKIM {what} {value!r} is not a DNS name")

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return (f"SigningKey(domain={self.domain!r}, selector={self.selector!r}, "
                f"algorithm={self.algorithm!r})")


def _ascii_name(name: str) -> str:
    name = name.strip().rstrip(".")
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return name  # fails the _DNS_NAME check with a clear message


@functools.lru_cache(maxsize=256)
def load_private_key(pem: bytes, algorithm: str) -> PrivateKey:
    """Parse `pem` once (cached by value); check it fits `algorithm`.

    Returns a cryptography private key object (RSAPrivateKey / Ed25519PrivateKey).
    Key objects are immutable and safe to use from several threads at once.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SigningError(f"unreadable DKIM private key: {e}") from None
    if algorithm == RSA_SHA256:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningError("rsa-sha256 needs an RSA private key")
        if key.key_size < _RSA_MIN_BITS:
            raise SigningError(f"RSA key of {key.key_size} bits is too small for DKIM")
    elif algorithm == ED25519_SHA256:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SigningError("ed25519-sha256 needs an Ed25519 private key")
    else:
        raise SigningError(f"unknown DKIM algorithm {algorithm!r}")
    return key


def public_txt(pem: bytes, algorithm: str) -> str:
    """The DNS TXT value that publishes the public half of `pem`."""
    key = load_private_key(pem, algorithm)
    if algorithm == RSA_SHA256:
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def generate_key(algorithm: str) -> tuple[bytes, str]:
    """A new key: (private PEM, DNS TXT value). RSA keys are 2048 bits."""
    if algorithm == RSA_SHA256:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    elif algorithm == ED25519_SHA256:
        ed_key = ed25519.Ed25519PrivateKey.generate()
        pem = ed_key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    else:
        raise SigningError(f"unknown DKIM algorithm {algorithm!r}")
    return pem, public_txt(pem, algorithm)


def _linesep(message: bytes) -> bytes:
    nl = message.find(b"\n")
    return b"\n" if nl >= 0 and (nl == 0 or message[nl - 1:nl] != b"\r") else b"\r\n"


def _signature_field(key: SigningKey, include: tuple[bytes, ...], bodyhash: bytes,
                     canonical_headers: list[HeaderField], timestamp: int,
                     linesep: bytes) -> bytes:
    """One DKIM-Signature field, laid out as dkimpy's `gen_header` does."""
    private = load_private_key(key.private_pem, key.algorithm)
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", _ascii_name(key.domain).encode("ascii")),
        (b"s", _ascii_name(key.selector).encode("ascii")),
        (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)),  # spaces: fold may break there
        (b"bh", bodyhash),
        # A 60-character placeholder pushes b= onto its own folded line, so
        # folding the header again with the real value cannot move the
        # whitespace of the tags before it (dkimpy's trick, kept for that reason).
        (b"b", b"0" * 60),
    ]
    value: bytes = dkim.fold(b"; ".join(b"=".join(f) for f in fields),
                             namelen=len(_HEADER_NAME))
    value = dkim.RE_BTAG.sub(b"\\1", value)
    h = hashlib.sha256()
    dkim.hash_headers(h, _RELAXED, canonical_headers, include,
                      (_HEADER_NAME, b" " + value), None)
    # load_private_key checked that the key's type is the one key.algorithm names
    if isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(h.digest(), _PAD, _PREHASHED)  # PKCS#1 v1.5, SHA-256
    else:
        signature = private.sign(h.digest())  # RFC 8463: Ed25519 over SHA-256(data)
    fields[-1] = (b"b", base64.b64encode(signature))
    value = b"; ".join(b"=".join(f) for f in fields) + linesep
    folded: bytes = dkim.fold(value, namelen=len(_HEADER_NAME), linesep=linesep)
    return _HEADER_NAME + b": " + folded


def _split(message: bytes) -> tuple[list[HeaderField], bytes]:
    """(header fields, body with CRLF line ends) — `dkim.rfc822_parse`'s
    result, but only the header block goes through its per-line split: the
    body is taken as one slice and its line ends normalised only when it has
    a bare LF (the server hands over CRLF, so usually nothing is copied)."""
    if message.startswith((b"\r\n", b"\n")):
        return [], message[2 if message[:1] == b"\r" else 1:]
    m = _BLANK_LINE.search(message)
    if m is None:
        return dkim.rfc822_parse(message)[0], b""
    headers, _ = dkim.rfc822_parse(message[:m.start() + 1])
    body = message[m.end():]
    if body.count(b"\n") != body.count(b"\r\n"):
        body = _BARE_LF.sub(b"\r\n", body)
    return headers, body


def _canonical_lines(body: bytes) -> bytes:
    """The per-line part of relaxed body canonicalisation (WSP runs → one SP,
    no WSP before CRLF): exact on any run of complete lines."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:  # each pass halves every run of spaces
        body = body.replace(b"  ", b" ")
    if b" \r\n" in body:  # runs are single spaces now: one trailing space at most
        body = body.replace(b" \r\n", b"\r\n")
    return body


class BodyHash:
    """SHA-256 of the relaxed canonical body, fed in pieces of any size:
    ``update(a); update(b)`` gives ``sha256(canonicalize_body(a + b))``
    (tests check it on random bodies cut at random places). Only complete
    CRLF lines are canonicalised; the empty lines at the end so far are held
    back as a count until a line with content follows (RFC 6376 §3.4.4
    ignores them at the end of the body). Memory: one piece plus a line."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._carry = b""
        self._blank = 0

    def update(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
        cut = data.rfind(b"\r\n") + 2
        if cut < 2:
            self._carry = data
            return
        self._carry = data[cut:]
        self._emit(_canonical_lines(data[:cut] if cut < len(data) else data))

    def _emit(self, lines: bytes) -> None:
        n, t = len(lines), 0
        while n >= 2 * (t + 1) and lines[n - 2 * (t + 1):n - 2 * t] == b"\r\n":
            t += 1
        if 2 * t == n:                  # nothing but empty lines
            self._blank += t
            return
        if self._blank:
            self._h.update(b"\r\n" * self._blank)
        self._h.update(lines[:n - 2 * (t - 1)] if t > 1 else lines)
        self._blank = t - 1

    def digest(self) -> bytes:
        if self._carry:                  # a last line without CRLF gets one, after
            self._emit(_canonical_lines(self._carry) + b"\r\n")   # (as dkimpy)
            self._carry = b""
        return self._h.digest()


def canonicalize_body(body: bytes) -> bytes:
    """Relaxed body canonicalisation (RFC 6376 §3.4.4), equal byte for byte to
    dkimpy's `Relaxed.canonicalize_body` (tests/test_dkim.py checks that on a
    table and on random bodies) but with C-speed bytes operations instead of
    three regex passes: dkimpy's regexes cost ~0.5 ms on a 20 KB text body,
    as much as the RSA signature itself."""
    canonical: bytes = correct_empty_body(strip_trailing_lines(_canonical_lines(body)))
    return canonical


def sign(message: bytes, keys: Sequence[SigningKey], *, now: float | None = None,
         tail: Iterable[bytes] | None = None) -> bytes:
    """Prepend one DKIM-Signature per key (in `keys` order, first on top).

    `tail`: the rest of the message after `message` (a large message whose
    head alone is in memory: core.spill), as CRLF-clean pieces; the header
    block must end inside `message`. The body hash then covers both, fed
    piece by piece (BodyHash), and the result is still only the signature
    fields + `message`: the tail is not copied.

    No keys: the message is returned unchanged. Raises SigningError when the
    header block cannot be parsed, has no From, or a key is unusable (the
    caller turns that into a 4xx: nothing is accepted unsigned by accident).
    """
    if not keys:
        return message
    try:
        headers, body = _split(message)
    except (dkim.MessageFormatError, IndexError) as e:  # IndexError: a continuation line first
        raise SigningError(f"cannot sign: unparsable header block ({e})") from None
    include = tuple(name.lower() for name, _ in headers if name.lower() in SIGNED_HEADERS)
    if b"from" not in include:
        raise SigningError("cannot sign: the message has no From field (RFC 6376 §5.4)")
    include += OVERSIGNED
    canonical_headers = _RELAXED.canonicalize_headers(headers)
    if tail is None:
        bodyhash = base64.b64encode(hashlib.sha256(canonicalize_body(body)).digest())
    else:
        hasher = BodyHash()
        hasher.update(body)
        for piece in tail:
            hasher.update(piece)
        bodyhash = base64.b64encode(hasher.digest())
    timestamp = int(time.time() if now is None else now)
    linesep = _linesep(message)
    fields = [_signature_field(k, include, bodyhash, canonical_headers, timestamp, linesep)
              for k in keys]
    return b"".join(fields) + message
