"""DANE (mta.delivery.dane) and the TLSA lookup (DnsResolver.tlsa): certificate
chains from trustme (and cryptography for the odd ones) against TLSA records
computed here, a real TLS handshake on 127.0.0.1 for chain_of, and the
resolver against tests/support/dnsserver.py playing a validating resolver."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mta.delivery.dane import Tlsa, chain_of, result_type, usable, verify
from mta.delivery.resolver import DnsResolver, DnsTempError, TlsaAnswer
from tests.support.dnsserver import DnsServer

NOW = 1_700_000_000.0  # trustme certificates are valid 2000..3000
MX = "mx.example.test"

ROOT = trustme.CA()
INTER = ROOT.create_child_ca()
OTHER_CA = trustme.CA()


def der_of(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def spki_of(der: bytes) -> bytes:
    # Re-encoded from the parsed key: an independent check of dane's DER walk.
    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def tlsa(usage: int, selector: int, mtype: int, cert: bytes) -> Tlsa:
    data = cert if selector == 0 else spki_of(cert)
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return Tlsa(usage, selector, mtype, data)


def chain_der(leaf: trustme.LeafCert) -> list[bytes]:
    return [der_of(p.bytes()) for p in leaf.cert_chain_pems]


def leaf_chain(ca: trustme.CA, *names: str, **dates: datetime.datetime) -> list[bytes]:
    return chain_der(ca.issue_cert(*names, **dates))


def crafted(subject_cn: str, issuer: x509.Certificate, issuer_key_pem: bytes,
            sans: tuple[str, ...] = ()) -> bytes:
    """A leaf made with cryptography directly: no SAN when `sans` is empty."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = serialization.load_pem_private_key(issuer_key_pem, None)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject_cn)]))
               .issuer_name(issuer.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
               .not_valid_after(datetime.datetime(2999, 1, 1, tzinfo=datetime.timezone.utc)))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


GOOD_LEAF = INTER.issue_cert(MX, "*.wild.test")
GOOD = chain_der(GOOD_LEAF)                                  # [leaf, intermediate]
ROOT_DER = der_of(ROOT.cert_pem.bytes())
LEAF, INTER_DER = GOOD
EXPIRED = leaf_chain(INTER, MX, not_before=datetime.datetime(2001, 1, 1),
                     not_after=datetime.datetime(2002, 1, 1))
FOREIGN = leaf_chain(OTHER_CA, MX)                           # same name, another CA
WIDE = leaf_chain(INTER, "*.test")                           # a wildcard RFC 6125 refuses
INTER_CERT = x509.load_der_x509_certificate(INTER_DER)
LEAF_CERT = x509.load_der_x509_certificate(LEAF)
NO_SAN = [crafted(MX, INTER_CERT, INTER.private_key_pem.bytes()), INTER_DER]
# Signed by the leaf's key: the leaf is no CA, so this chain leads nowhere.
BY_LEAF = [crafted(MX, LEAF_CERT, GOOD_LEAF.private_key_pem.bytes(), (MX,)), LEAF, INTER_DER]

EE, TA = 3, 2
OK = None
CASES = [
    # (id, records, chain, names, expected: None or the RFC 8460 result type)
    ("ee-spki-sha256", [tlsa(EE, 1, 1, LEAF)], GOOD, [MX], OK),
    ("ee-cert-sha256", [tlsa(EE, 0, 1, LEAF)], GOOD, [MX], OK),
    ("ee-cert-exact", [tlsa(EE, 0, 0, LEAF)], GOOD, [MX], OK),
    ("ee-spki-exact", [tlsa(EE, 1, 0, LEAF)], GOOD, [MX], OK),
    ("ee-spki-sha512", [tlsa(EE, 1, 2, LEAF)], GOOD, [MX], OK),
    ("ee-ignores-expiry", [tlsa(EE, 1, 1, EXPIRED[0])], EXPIRED, [MX], OK),
    ("ee-ignores-name", [tlsa(EE, 1, 1, LEAF)], GOOD, ["mx.other.test"], OK),
    ("ee-leaf-alone", [tlsa(EE, 1, 1, LEAF)], [LEAF], [MX], OK),
    ("ee-other-cert", [tlsa(EE, 1, 1, LEAF)], FOREIGN, [MX], "certificate-not-trusted"),
    ("ee-on-intermediate", [tlsa(EE, 1, 1, INTER_DER)], GOOD, [MX],
     "certificate-not-trusted"),
    ("ta-intermediate-cert", [tlsa(TA, 0, 1, INTER_DER)], GOOD, [MX], OK),
    ("ta-intermediate-spki", [tlsa(TA, 1, 1, INTER_DER)], GOOD, [MX], OK),
    ("ta-root-sent", [tlsa(TA, 1, 1, ROOT_DER)], GOOD + [ROOT_DER], [MX], OK),
    ("ta-root-not-sent", [tlsa(TA, 1, 1, ROOT_DER)], GOOD, [MX], "certificate-not-trusted"),
    ("ta-chain-any-order", [tlsa(TA, 1, 1, ROOT_DER)], [LEAF, ROOT_DER, INTER_DER], [MX], OK),
    ("ta-full-key-anchor-omitted", [tlsa(TA, 1, 0, INTER_DER)], [LEAF], [MX], OK),
    ("ta-digest-anchor-omitted", [tlsa(TA, 1, 1, INTER_DER)], [LEAF], [MX],
     "certificate-not-trusted"),
    ("ta-leaf-is-no-anchor", [tlsa(TA, 1, 1, LEAF)], GOOD, [MX], "certificate-not-trusted"),
    ("ta-other-ca-leaf", [tlsa(TA, 1, 1, INTER_DER)], [FOREIGN[0], INTER_DER], [MX],
     "certificate-not-trusted"),
    ("ta-issuer-not-a-ca", [tlsa(TA, 1, 1, INTER_DER)], BY_LEAF, [MX],
     "certificate-not-trusted"),
    ("ta-expired-leaf", [tlsa(TA, 1, 1, INTER_DER)], EXPIRED, [MX], "certificate-expired"),
    ("ta-wrong-name", [tlsa(TA, 1, 1, INTER_DER)], GOOD, ["mx.other.test"],
     "certificate-host-mismatch"),
    ("ta-second-name", [tlsa(TA, 1, 1, INTER_DER)], GOOD, ["mx.other.test", MX.upper() + "."],
     OK),
    ("ta-wildcard", [tlsa(TA, 1, 1, INTER_DER)], GOOD, ["mx2.wild.test"], OK),
    ("ta-wildcard-not-bare", [tlsa(TA, 1, 1, INTER_DER)], GOOD, ["wild.test"],
     "certificate-host-mismatch"),
    ("ta-wildcard-one-label", [tlsa(TA, 1, 1, INTER_DER)], GOOD, ["a.b.wild.test"],
     "certificate-host-mismatch"),
    ("ta-wildcard-tld-refused", [tlsa(TA, 1, 1, INTER_DER)], WIDE, ["mx.test"],
     "certificate-host-mismatch"),
    ("ta-cn-without-san", [tlsa(TA, 1, 1, INTER_DER)], NO_SAN, [MX], OK),
    ("ta-cn-without-san-wrong", [tlsa(TA, 1, 1, INTER_DER)], NO_SAN, ["mx.other.test"],
     "certificate-host-mismatch"),
    ("any-record-will-do", [tlsa(EE, 1, 1, FOREIGN[0]), tlsa(TA, 0, 1, INTER_DER)], GOOD, [MX],
     OK),
    ("furthest-reason", [tlsa(EE, 1, 1, FOREIGN[0]), tlsa(TA, 1, 1, ROOT_DER),
                         tlsa(TA, 1, 1, INTER_DER)], GOOD, ["mx.other.test"],
     "certificate-host-mismatch"),
    ("only-pkix-usages", [tlsa(0, 1, 1, INTER_DER), tlsa(1, 1, 1, LEAF)], GOOD, [MX],
     "tlsa-invalid"),
    ("short-digest", [Tlsa(EE, 1, 1, tlsa(EE, 1, 1, LEAF).data[:31])], GOOD, [MX],
     "tlsa-invalid"),
    ("no-chain", [tlsa(EE, 1, 1, LEAF)], [], [MX], "validation-failure"),
    ("garbage-leaf", [tlsa(EE, 1, 1, LEAF)], [b"\x30\x03junk"], [MX], "validation-failure"),
]


@pytest.mark.parametrize("records,chain,names,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_verify_table(records, chain, names, expected):
    reason = verify(records, chain, names=names, now=NOW)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and result_type(reason) == expected, reason
        assert "\n" not in reason


def test_verify_checks_dates_at_now():
    records = [tlsa(TA, 1, 1, INTER_DER)]
    in_2001 = datetime.datetime(2001, 6, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert verify(records, EXPIRED, names=[MX], now=in_2001) is None
    reason = verify(records, EXPIRED, names=[MX], now=NOW)
    assert reason is not None and "2002-01-01" in reason


def test_reason_names_the_certificate_not_the_record():
    record = tlsa(EE, 1, 1, LEAF)
    reason = verify([record], FOREIGN, names=[MX], now=NOW)
    assert reason is not None and MX in reason and record.data.hex() not in reason


def test_usable_keeps_only_dane_usages_and_known_types():
    digest, long_digest = bytes(32), bytes(64)
    good = [Tlsa(3, 1, 1, digest), Tlsa(2, 0, 2, long_digest), Tlsa(3, 0, 0, LEAF),
            Tlsa(2, 1, 0, b"\x30\x00")]
    bad = [Tlsa(0, 0, 1, digest), Tlsa(1, 1, 1, digest),        # PKIX-TA / PKIX-EE
           Tlsa(4, 1, 1, digest), Tlsa(3, 2, 1, digest),        # unknown usage, selector
           Tlsa(3, 1, 3, digest), Tlsa(3, 1, 1, bytes(31)),     # unknown mtype, short
           Tlsa(3, 1, 2, digest), Tlsa(3, 1, 0, b"")]           # SHA-512 of 32, empty
    assert usable(good + bad) == tuple(good)
    assert usable([]) == ()


# ---- chain_of over a real TLS handshake ----

async def handshake(chain_pems_of: trustme.LeafCert):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chain_pems_of.configure_cert(server_ctx)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE      # as delivery does: DANE decides, not the WebPKI
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    return server, writer


async def test_chain_of_reads_the_whole_chain_from_a_real_handshake():
    leaf = INTER.issue_cert(MX)
    server, writer = await handshake(leaf)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        chain = chain_of(ssl_object)
        assert chain == [der_of(p.bytes()) for p in leaf.cert_chain_pems]
        assert len(chain) == 2
        assert verify([tlsa(TA, 1, 1, INTER_DER)], chain, names=[MX], now=NOW) is None
        # Without the chain accessors only the leaf is left: DANE-EE still works.
        leaf_only = chain_of(_LeafOnly(ssl_object))
        assert leaf_only == chain[:1]
        assert verify([tlsa(EE, 1, 1, chain[0])], leaf_only, names=[], now=NOW) is None
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


class _LeafOnly:
    """An SSL object of a Python without get_unverified_chain (public or private)."""

    def __init__(self, real: ssl.SSLObject):
        self._real = real

    def getpeercert(self, binary_form: bool = False):
        return self._real.getpeercert(binary_form)


# ---- DnsResolver.tlsa against a validating-resolver stand-in ----

TLSA_EE = tlsa(EE, 1, 1, LEAF)
TLSA_TA = tlsa(TA, 0, 2, INTER_DER)
ZONE = {
    "_25._tcp.mx1.signed.test": {"TLSA": [(3, 1, 1, TLSA_EE.data),
                                          f"2 0 2 {TLSA_TA.data.hex()}"]},
    "mx1.signed.test": {"A": ["127.0.0.1"]},
    "_25._tcp.mx1.plain.test": {"TLSA": [(3, 1, 1, TLSA_EE.data.hex())]},
    "_25._tcp.alias.signed.test": {"CNAME": ["_25._tcp.mx1.plain.test"]},
    "_25._tcp.mx.bogus.signed.test": {"TLSA": [(3, 1, 1, TLSA_EE.data)]},
}


@pytest.fixture
async def dns_server():
    async with DnsServer(ZONE, ad_zones={"signed.test"},
                         bogus={"_25._tcp.mx.bogus.signed.test"},
                         servfail={"_25._tcp.mx.sick.test"},
                         timeout={"_25._tcp.mx.slow.test"}) as server:
        yield server


@pytest.fixture
def resolver(dns_server):
    return DnsResolver([dns_server.nameserver], timeout=0.3, cache=False)


async def test_tlsa_secure_records(resolver, dns_server):
    answer = await resolver.tlsa("_25._tcp.mx1.signed.test")
    assert answer.secure and set(answer.records) == {TLSA_EE, TLSA_TA}  # an RRset has no order
    assert dns_server.queries[-1] == ("_25._tcp.mx1.signed.test", "TLSA")


async def test_tlsa_insecure_records(resolver):
    assert await resolver.tlsa("_25._tcp.mx1.plain.test") == TlsaAnswer((TLSA_EE,), False)


async def test_tlsa_cname_out_of_the_signed_zone_is_insecure(resolver):
    assert await resolver.tlsa("_25._tcp.alias.signed.test") == TlsaAnswer((TLSA_EE,), False)


async def test_tlsa_denials_secure_and_insecure(resolver):
    assert await resolver.tlsa("_25._tcp.nx.signed.test") == TlsaAnswer((), True)   # NXDOMAIN
    assert await resolver.tlsa("mx1.signed.test") == TlsaAnswer((), True)           # NODATA
    assert await resolver.tlsa("_25._tcp.nx.plain.test") == TlsaAnswer((), False)


async def test_tlsa_follows_the_zone_being_signed(resolver, dns_server):
    dns_server.ad_zones.clear()
    answer = await resolver.tlsa("_25._tcp.mx1.signed.test")
    assert not answer.secure and set(answer.records) == {TLSA_EE, TLSA_TA}
    dns_server.ad_zones.add("plain.test")
    assert (await resolver.tlsa("_25._tcp.mx1.plain.test")).secure


@pytest.mark.parametrize("name", ["_25._tcp.mx.bogus.signed.test", "_25._tcp.mx.sick.test",
                                  "_25._tcp.mx.slow.test"])
async def test_tlsa_failed_lookups_are_temporary(resolver, name):
    with pytest.raises(DnsTempError) as info:
        await resolver.tlsa(name)
    assert info.value.args[0].startswith(f"TLSA {name}:")


async def test_tlsa_cached_answers_keep_the_ad_bit(dns_server):
    resolver = DnsResolver([dns_server.nameserver], timeout=0.3, cache=True)
    for _ in range(2):
        assert (await resolver.tlsa("_25._tcp.mx1.signed.test")).secure
        assert await resolver.tlsa("_25._tcp.nx.signed.test") == TlsaAnswer((), True)
    assert [q for q in dns_server.queries if q[1] == "TLSA"] == [
        ("_25._tcp.mx1.signed.test", "TLSA"), ("_25._tcp.nx.signed.test", "TLSA")]


async def test_server_sets_ad_only_when_asked_and_cd_reveals_bogus_data(dns_server):
    async def ask(name: str, flags: int, *, dnssec_ok: bool = False) -> dns.message.Message:
        query = dns.message.make_query(name, "TLSA", use_edns=0 if dnssec_ok else None,
                                       want_dnssec=dnssec_ok)
        query.flags = dns.flags.RD | flags
        return await dns.asyncquery.udp(query, dns_server.host, timeout=2,
                                        port=dns_server.port)

    name = "_25._tcp.mx1.signed.test"
    assert not (await ask(name, 0)).flags & dns.flags.AD
    assert (await ask(name, dns.flags.AD)).flags & dns.flags.AD
    assert (await ask(name, 0, dnssec_ok=True)).flags & dns.flags.AD
    bogus = "_25._tcp.mx.bogus.signed.test"
    assert (await ask(bogus, dns.flags.AD)).rcode() == dns.rcode.SERVFAIL
    revealed = await ask(bogus, dns.flags.AD | dns.flags.CD)
    assert revealed.rcode() == dns.rcode.NOERROR and revealed.answer
    assert not revealed.flags & dns.flags.AD
