"""DANE for SMTP (RFC 7672): which TLSA records count, and whether a server's
certificate chain matches them.

One job: given the TLSA records of an MX host (already known to be secure:
`Resolver.tlsa` says so with the AD bit) and the chain the server presented
in its TLS handshake, say "verified" or why not. No I/O: the caller looks the
records up, does the handshake with verification off (CERT_NONE: DANE, not
the WebPKI, decides), takes `chain_of(ssl_object)` and asks `verify`.

Public API:
    Tlsa(usage, selector, mtype, data)   re-exported from mta.delivery.resolver
    usable(records) -> tuple[Tlsa, ...]  the records RFC 7672 §3.1 lets us use
    chain_of(ssl_object) -> list[bytes]  the peer's chain as DER, leaf first
    verify(records, chain, *, names, now) -> str | None
                                         None: verified; else one line, the reason,
                                         starting with its RFC 8460 result type
    result_type(reason) -> str           that result type ("validation-failure", …)

Invariants:
  - Usable = usage 2 (DANE-TA) or 3 (DANE-EE), selector 0 (certificate) or 1
    (SubjectPublicKeyInfo), matching 0 (exact), 1 (SHA-256, 32 bytes) or 2
    (SHA-512, 64 bytes); a digest of the wrong length or empty data is
    malformed and unusable. PKIX usages 0/1 are ignored (RFC 7672 §3.1.3).
    What to do when TLSA records exist but none is usable (RFC 7672 §2.2:
    encrypt, do not authenticate) is the caller's decision, not ours.
  - DANE-EE(3) matches the leaf alone: no name, expiry or chain check
    (RFC 7672 §3.1.1) — the key is pinned by DNSSEC.
  - DANE-TA(2) matches a certificate of the chain other than the leaf (or,
    for "2 1 0", the full public key in the record, whose certificate the
    server may omit: RFC 7672 §3.1.2). The leaf must chain up to it, each
    link an issuer whose name and signature match and which is a CA
    (basicConstraints); the leaf and every intermediate below the anchor
    must be within their validity at `now` (the anchor's own dates are not
    checked: it is trusted because DNSSEC says so); the leaf must name one
    of `names` (subjectAltName dNSName; the subject CN only when there is
    no dNSName; a wildcard only as the whole left-most label, matching one
    label: RFC 6125 §6.4.3, RFC 7672 §3.2.3).
  - Any one record that verifies is enough; when none does, the reason given
    is the one that got furthest (a name or date failure under a matched
    anchor says more than "no record matched").
  - The chain is what the server sent, in any order; path building is
    greedy (a server sending several candidate issuers for one cert is rare
    enough that the first whose signature checks is taken).
  - Reasons name certificates by their first DNS name (else subject), never
    echo record data.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mta.delivery.resolver import Tlsa

__all__ = ["Tlsa", "usable", "chain_of", "verify", "result_type"]

DANE_TA, DANE_EE = 2, 3
_DIGEST_SIZE = {0: None, 1: 32, 2: 64}
_MAX_CHAIN = 16  # more than any real server sends; bounds the path building


def usable(records: Iterable[Tlsa]) -> tuple[Tlsa, ...]:
    return tuple(r for r in records
                 if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1)
                 and r.mtype in _DIGEST_SIZE and r.data
                 and _DIGEST_SIZE[r.mtype] in (None, len(r.data)))


def chain_of(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer sent, DER, leaf first; [] when it sent none.

    Python 3.13 has a public get_unverified_chain() (DER bytes); 3.10–3.12
    only the C object's (`_sslobj`, `_ssl.Certificate` items). Without either
    the leaf alone is returned: DANE-EE still works, DANE-TA then finds no
    anchor in the chain (unless "2 1 0" names the key that signed the leaf).
    """
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:
        return [bytes(c) for c in public() or ()]
    inner = getattr(ssl_object, "_sslobj", None)
    private = getattr(inner, "get_unverified_chain", None)
    if private is not None:
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                for c in private() or ()]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def result_type(reason: str) -> str:
    return reason.split(":", 1)[0]


def verify(records: Sequence[Tlsa], chain: Sequence[bytes], *, names: Sequence[str],
           now: float) -> str | None:
    records = usable(records)
    if not records:
        return "tlsa-invalid: no usable TLSA record (DANE-TA/DANE-EE)"
    if not chain:
        return "validation-failure: the server presented no certificate"
    certs = [_load(der) for der in chain[:_MAX_CHAIN]]
    leaf = certs[0]
    if leaf is None:
        return "validation-failure: the server's certificate is not valid DER"
    failures: list[tuple[int, str]] = []
    for record in records:
        if record.usage == DANE_EE:
            if _matches(record, chain[0], leaf):
                return None
            continue
        failure = _verify_ta(record, chain, certs, names, now)
        if failure is None:
            return None
        failures.append(failure)
    if failures:
        return max(failures, key=lambda f: f[0])[1]
    return (f"certificate-not-trusted: no TLSA record matches the certificate of "
            f"{_subject(leaf)}")


# ---- matching ----

def _load(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _matches(record: Tlsa, der: bytes, cert: x509.Certificate) -> bool:
    selected = der if record.selector == 0 else _spki(cert)
    if selected is None:
        return False
    if record.mtype == 1:
        selected = hashlib.sha256(selected).digest()
    elif record.mtype == 2:
        selected = hashlib.sha512(selected).digest()
    return selected == record.data


def _spki(cert: x509.Certificate) -> bytes | None:
    """The SubjectPublicKeyInfo exactly as encoded in the certificate (not
    re-encoded from the parsed key, which could differ for unusual keys)."""
    tbs = cert.tbs_certificate_bytes
    try:
        _, pos, _ = _tlv(tbs, 0)           # TBSCertificate SEQUENCE: step inside
        if tbs[pos] == 0xA0:               # [0] EXPLICIT version
            pos = _tlv(tbs, pos)[2]
        for _ in range(5):                 # serial, signature, issuer, validity, subject
            pos = _tlv(tbs, pos)[2]
        _, _, end = _tlv(tbs, pos)
        return tbs[pos:end]
    except IndexError:
        return None


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at `pos`."""
    tag, first = der[pos], der[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    n = first & 0x7F
    length = int.from_bytes(der[pos + 2:pos + 2 + n], "big")
    if n == 0 or n > 4 or pos + 2 + n + length > len(der):
        raise IndexError("bad DER length")
    return tag, pos + 2 + n, pos + 2 + n + length


# ---- DANE-TA: path, dates, names ----

_NO_ANCHOR, _DATES, _NAME = 1, 2, 3  # how far a TA record got, for the best reason


def _verify_ta(record: Tlsa, chain: Sequence[bytes], certs: Sequence[x509.Certificate | None],
               names: Sequence[str], now: float) -> tuple[int, str] | None:
    leaf = certs[0]
    assert leaf is not None
    anchors = {i for i in range(1, len(certs))
               if (c := certs[i]) is not None and _matches(record, chain[i], c)}
    key = _record_key(record)
    path = _path_to_anchor(certs, anchors, key)
    if path is None:
        return _NO_ANCHOR, (f"certificate-not-trusted: the chain of {_subject(leaf)} "
                            f"does not lead to a DANE-TA anchor")
    for cert in path:
        if not _valid_at(cert, now):
            return _DATES, (f"certificate-expired: {_subject(cert)} is not valid now "
                            f"(valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                            f"{cert.not_valid_after_utc:%Y-%m-%d})")
    dns_names = _dns_names(leaf)
    if not any(_name_matches(p, n) for p in dns_names for n in names):
        shown = ", ".join(dns_names[:3]) or "no DNS name"
        return _NAME, (f"certificate-host-mismatch: the certificate names {shown}, "
                       f"not {', '.join(names) or 'any host'}")
    return None


def _record_key(record: Tlsa) -> object | None:
    """The anchor's public key when the record carries it whole ("2 1 0")."""
    if record.selector != 1 or record.mtype != 0:
        return None
    try:
        return load_der_public_key(record.data)
    except (ValueError, TypeError):  # malformed or unsupported key: nothing to check
        return None


def _path_to_anchor(certs: Sequence[x509.Certificate | None], anchors: set[int],
                    key: object | None) -> list[x509.Certificate] | None:
    """The certificates from the leaf up to (not including) the anchor, or
    None when the leaf does not chain up to one."""
    current = certs[0]
    assert current is not None
    path, used = [current], {0}
    for _ in range(len(certs)):
        if key is not None and _signed_by_key(current, key):
            return path
        issuers = [i for i in range(1, len(certs)) if i not in used
                   and (c := certs[i]) is not None and _issued(current, c)]
        if not issuers:
            return None
        found = [i for i in issuers if i in anchors]
        if found:
            return path
        current = certs[issuers[0]]
        assert current is not None
        path.append(current)
        used.add(issuers[0])
    return None


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            return False
        cert.verify_directly_issued_by(issuer)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature,
            UnsupportedAlgorithm):
        return False
    return True


def _signed_by_key(cert: x509.Certificate, key: object) -> bool:
    signature, data = cert.signature, cert.tbs_certificate_bytes
    try:
        params = cert.signature_algorithm_parameters
        if isinstance(key, rsa.RSAPublicKey) and cert.signature_hash_algorithm is not None:
            key.verify(signature, data, params, cert.signature_hash_algorithm)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, params)  # type: ignore[arg-type]
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _valid_at(cert: x509.Certificate, now: float) -> bool:
    when = datetime.fromtimestamp(now, timezone.utc)
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except (x509.ExtensionNotFound, ValueError):
        found = []
    if found:
        return found
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return [str(a.value).lower() for a in cns]


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.rstrip(".").lower(), name.rstrip(".").lower()
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    rest = pattern[2:]
    if "*" in rest or rest.count(".") < 1:  # no "*.com", no second wildcard
        return False
    label, _, domain = name.partition(".")
    return bool(label) and domain == rest


def _subject(cert: x509.Certificate) -> str:
    """How a reason names a certificate: its first DNS name, else its subject."""
    names = _dns_names(cert)
    if names:
        return repr(names[0][:80])
    return repr(cert.subject.rfc4514_string()[:80])
