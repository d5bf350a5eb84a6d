"""The per-destination TLS decision and TLS-RPT result types (mta.policy.tlspolicy)."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from mta.policy.mtasts import StsPolicy
from mta.policy.tlspolicy import (
    DANE_STATES,
    OVERRIDES,
    RESULT_TYPES,
    HostPolicy,
    failure_result,
    host_policy,
    order_hosts,
)

HOST = "mx1.example.com"
STS = {
    "-": None,
    "none": StsPolicy("none", (), 86400, id="n1"),
    "testing": StsPolicy("testing", ("*.example.com",), 86400, id="t1"),
    "enforce": StsPolicy("enforce", ("*.example.com",), 86400, id="e1"),
    "enforce-x": StsPolicy("enforce", ("mx.other.net",), 86400, id="x1"),   # HOST not listed
}

# Every override (- = none given) x dane state x MTA-STS policy (- = no policy;
# enforce-x = enforce whose mx does not list the host). y/n = yes/no.
TABLE = """
# override dane    sts        policy         req verify enf allowed
-          usable  -          dane           y   dane   y   y
-          usable  none       dane           y   dane   y   y
-          usable  testing    dane           y   dane   y   y
-          usable  enforce    dane           y   dane   y   y
-          usable  enforce-x  dane           y   dane   y   y
-          none    -          opportunistic  n   none   n   y
-          none    none       opportunistic  n   none   n   y
-          none    testing    mta-sts        n   pkix   n   y
-          none    enforce    mta-sts        y   pkix   y   y
-          none    enforce-x  mta-sts        y   pkix   y   n
-          bogus   -          dane           y   dane   y   n
-          bogus   none       dane           y   dane   y   n
-          bogus   testing    dane           y   dane   y   n
-          bogus   enforce    dane           y   dane   y   n
-          bogus   enforce-x  dane           y   dane   y   n
none       usable  -          none           n   none   n   y
none       usable  none       none           n   none   n   y
none       usable  testing    none           n   none   n   y
none       usable  enforce    none           n   none   n   y
none       usable  enforce-x  none           n   none   n   y
none       none    -          none           n   none   n   y
none       none    none       none           n   none   n   y
none       none    testing    none           n   none   n   y
none       none    enforce    none           n   none   n   y
none       none    enforce-x  none           n   none   n   y
none       bogus   -          none           n   none   n   y
none       bogus   none       none           n   none   n   y
none       bogus   testing    none           n   none   n   y
none       bogus   enforce    none           n   none   n   y
none       bogus   enforce-x  none           n   none   n   y
may        usable  -          opportunistic  n   none   n   y
may        usable  none       opportunistic  n   none   n   y
may        usable  testing    opportunistic  n   none   n   y
may        usable  enforce    opportunistic  n   none   n   y
may        usable  enforce-x  opportunistic  n   none   n   y
may        none    -          opportunistic  n   none   n   y
may        none    none       opportunistic  n   none   n   y
may        none    testing    opportunistic  n   none   n   y
may        none    enforce    opportunistic  n   none   n   y
may        none    enforce-x  opportunistic  n   none   n   y
may        bogus   -          opportunistic  n   none   n   y
may        bogus   none       opportunistic  n   none   n   y
may        bogus   testing    opportunistic  n   none   n   y
may        bogus   enforce    opportunistic  n   none   n   y
may        bogus   enforce-x  opportunistic  n   none   n   y
encrypt    usable  -          encrypt        y   none   y   y
encrypt    usable  none       encrypt        y   none   y   y
encrypt    usable  testing    encrypt        y   none   y   y
encrypt    usable  enforce    encrypt        y   none   y   y
encrypt    usable  enforce-x  encrypt        y   none   y   y
encrypt    none    -          encrypt        y   none   y   y
encrypt    none    none       encrypt        y   none   y   y
encrypt    none    testing    encrypt        y   none   y   y
encrypt    none    enforce    encrypt        y   none   y   y
encrypt    none    enforce-x  encrypt        y   none   y   y
encrypt    bogus   -          encrypt        y   none   y   y
encrypt    bogus   none       encrypt        y   none   y   y
encrypt    bogus   testing    encrypt        y   none   y   y
encrypt    bogus   enforce    encrypt        y   none   y   y
encrypt    bogus   enforce-x  encrypt        y   none   y   y
verify     usable  -          verify         y   pkix   y   y
verify     usable  none       verify         y   pkix   y   y
verify     usable  testing    verify         y   pkix   y   y
verify     usable  enforce    verify         y   pkix   y   y
verify     usable  enforce-x  verify         y   pkix   y   y
verify     none    -          verify         y   pkix   y   y
verify     none    none       verify         y   pkix   y   y
verify     none    testing    verify         y   pkix   y   y
verify     none    enforce    verify         y   pkix   y   y
verify     none    enforce-x  verify         y   pkix   y   y
verify     bogus   -          verify         y   pkix   y   y
verify     bogus   none       verify         y   pkix   y   y
verify     bogus   testing    verify         y   pkix   y   y
verify     bogus   enforce    verify         y   pkix   y   y
verify     bogus   enforce-x  verify         y   pkix   y   y
dane-only  usable  -          dane-only      y   dane   y   y
dane-only  usable  none       dane-only      y   dane   y   y
dane-only  usable  testing    dane-only      y   dane   y   y
dane-only  usable  enforce    dane-only      y   dane   y   y
dane-only  usable  enforce-x  dane-only      y   dane   y   y
dane-only  none    -          dane-only      y   dane   y   n
dane-only  none    none       dane-only      y   dane   y   n
dane-only  none    testing    dane-only      y   dane   y   n
dane-only  none    enforce    dane-only      y   dane   y   n
dane-only  none    enforce-x  dane-only      y   dane   y   n
dane-only  bogus   -          dane-only      y   dane   y   n
dane-only  bogus   none       dane-only      y   dane   y   n
dane-only  bogus   testing    dane-only      y   dane   y   n
dane-only  bogus   enforce    dane-only      y   dane   y   n
dane-only  bogus   enforce-x  dane-only      y   dane   y   n
"""


def _rows() -> list[tuple[str, ...]]:
    return [tuple(line.split()) for line in TABLE.strip().splitlines()
            if not line.startswith("#")]


def test_table_covers_every_combination() -> None:
    keys = {row[:3] for row in _rows()}
    assert len(keys) == len(_rows()) == (len(OVERRIDES) + 1) * len(DANE_STATES) * len(STS)
    assert keys == {(o, d, s) for o in ("-", *OVERRIDES) for d in DANE_STATES for s in STS}


@pytest.mark.parametrize("row", _rows(), ids=lambda r: "/".join(r[:3]))
def test_host_policy_table(row: tuple[str, ...]) -> None:
    override, dane, sts, policy, req, verify, enf, allowed = row
    got = host_policy(override=None if override == "-" else override, host=HOST,
                      sts=STS[sts], sts_error=None, dane=dane)
    assert got == HostPolicy(policy=policy, require_tls=req == "y", verify=verify,
                             enforce=enf == "y", allowed=allowed == "y",
                             names=(HOST,) if verify != "none" else ())
    # a failed fetch or refresh never changes the decision (cached policy or none)
    again = host_policy(override=None if override == "-" else override, host=HOST,
                        sts=STS[sts], sts_error="sts-policy-fetch-error", dane=dane)
    assert again == got


def test_names_are_the_mx_host_normalised_never_the_pattern() -> None:
    got = host_policy(override=None, host="MX1.Example.COM.", sts=STS["enforce"],
                      sts_error=None, dane="none")
    assert got.allowed and got.names == ("mx1.example.com",)
    dane = host_policy(override=None, host="MX1.Example.COM.", sts=None, sts_error=None,
                       dane="usable")
    assert dane.names == ("mx1.example.com",)


def test_testing_mode_tries_a_host_outside_the_policy() -> None:
    policy = StsPolicy("testing", ("mx.other.net",), 86400)
    got = host_policy(override=None, host=HOST, sts=policy, sts_error=None, dane="none")
    assert got.allowed and not got.require_tls and got.verify == "pkix"
    assert not policy.matches(HOST)          # what the caller reports


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"override": "secure", "dane": "none"}, "override"),
    ({"override": "", "dane": "none"}, "override"),
    ({"override": None, "dane": "maybe"}, "dane"),
])
def test_host_policy_bad_arguments(kwargs: dict[str, str | None], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: must be one of"):
        host_policy(host=HOST, sts=None, sts_error=None, **kwargs)  # type: ignore[arg-type]


def test_order_hosts_keeps_mx_order_and_drops_disallowed_or_undecided() -> None:
    hosts = ["mx1.example.com", "mx.other.net", "mx2.example.com", "mx3.example.com"]
    policies = {h: host_policy(override=None, host=h, sts=STS["enforce"], sts_error=None,
                               dane="none") for h in hosts[:3]}
    assert [policies[h].allowed for h in hosts[:3]] == [True, False, True]
    assert order_hosts(hosts, policies) == ["mx1.example.com", "mx2.example.com"]
    assert order_hosts(list(reversed(hosts)), policies) == ["mx2.example.com", "mx1.example.com"]
    assert order_hosts([], policies) == []
    assert order_hosts(hosts, {}) == []


# --- failure_result ------------------------------------------------------------

FAILURES = [
    ("none", "STARTTLS not offered", "starttls-not-supported"),
    ("pkix", "STARTTLS not offered by mx1.example.com", "starttls-not-supported"),
    ("dane", "no STARTTLS in EHLO reply", "starttls-not-supported"),
    ("pkix", "STARTTLS refused: 454 4.7.0 TLS not available", "starttls-not-supported"),
    ("pkix", "certificate has expired", "certificate-expired"),
    ("dane", "certificate is not yet valid", "certificate-expired"),
    ("pkix", "Hostname mismatch, certificate is not valid for 'mx.other.net'.",
     "certificate-host-mismatch"),
    ("pkix", "IP address mismatch, certificate is not valid for '127.0.0.2'.",
     "certificate-host-mismatch"),
    ("dane", "DANE-TA: name mismatch", "certificate-host-mismatch"),
    ("pkix", "self-signed certificate", "certificate-not-trusted"),
    ("pkix", "self signed certificate in certificate chain", "certificate-not-trusted"),
    ("pkix", "unable to get local issuer certificate", "certificate-not-trusted"),
    ("pkix", "unable to verify the first certificate", "certificate-not-trusted"),
    ("dane", "self-signed certificate", "validation-failure"),   # DANE ignores the CA store
    ("dane", "no TLSA record matched the certificate chain", "validation-failure"),
    ("dane", "TLSA mismatch", "validation-failure"),
    ("dane", "TLSA lookup bogus", "dnssec-invalid"),
    ("dane", "DNSSEC validation failed for _25._tcp.mx1.example.com", "dnssec-invalid"),
    ("dane", "dane required: no TLSA records", "dane-required"),
    ("dane", "no usable TLSA records", "dane-required"),
    ("dane", "TLSA invalid: unknown matching type 9", "tlsa-invalid"),
    ("dane", "unusable TLSA RRset", "tlsa-invalid"),
    ("none", "certificate has expired", "validation-failure"),   # nothing was verified
    ("pkix", "[SSL: WRONG_VERSION_NUMBER] wrong version number", "validation-failure"),
    ("pkix", "", "validation-failure"),
    ("pkix", "sts-webpki-invalid", "sts-webpki-invalid"),
    ("none", "sts-policy-fetch-error", "sts-policy-fetch-error"),
    ("pkix", " Certificate-Expired ", "certificate-expired"),
]


@pytest.mark.parametrize(("verify", "reason", "expected"), FAILURES)
def test_failure_result(verify: str, reason: str, expected: str) -> None:
    assert failure_result(verify, reason) == expected
    assert expected in RESULT_TYPES


def test_every_result_type_passes_through() -> None:
    for result in RESULT_TYPES:
        assert failure_result("pkix", result) == result


def test_failure_result_bad_verify() -> None:
    with pytest.raises(ValueError, match="^verify: must be one of"):
        failure_result("strict", "certificate has expired")


# --- failure_result on what OpenSSL really says -----------------------------------

def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A real TLS handshake over memory BIOs (no sockets); raises what the client's
    verification raises."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=name)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer in ((tls_client, c_out, s_in), (tls_server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer.write(out.read())
    raise AssertionError("the handshake succeeded")


def _server(load: Callable[[ssl.SSLContext], object]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load(ctx)
    return ctx


@pytest.fixture(scope="module")
def cas() -> tuple[trustme.CA, trustme.CA]:
    return trustme.CA(), trustme.CA()


def test_openssl_failures_map_to_their_result_types(
        cas: tuple[trustme.CA, trustme.CA], tmp_path: Path) -> None:
    trusted, other = cas
    client = ssl.create_default_context()
    trusted.configure_trust(client)
    expired = trusted.issue_cert(HOST, not_before=datetime.datetime(2019, 1, 1),
                                 not_after=datetime.datetime(2020, 1, 1))
    (tmp_path / "ca.pem").write_bytes(other.cert_pem.bytes())
    (tmp_path / "ca.key").write_bytes(other.private_key_pem.bytes())
    cases = [
        (trusted.issue_cert(HOST).configure_cert, "mx.other.net", "certificate-host-mismatch"),
        (expired.configure_cert, HOST, "certificate-expired"),
        (other.issue_cert(HOST).configure_cert, HOST, "certificate-not-trusted"),
        (lambda ctx: ctx.load_cert_chain(tmp_path / "ca.pem", tmp_path / "ca.key"), HOST,
         "certificate-not-trusted"),                          # a self-signed certificate
    ]
    for load, name, expected in cases:
        with pytest.raises(ssl.SSLCertVerificationError) as err:
            _handshake(_server(load), client, name)
        assert failure_result("pkix", err.value.verify_message) == expected
        assert failure_result("pkix", str(err.value)) == expected
