"""DKIM signing (mta/mail/dkim.py), checked by verifiers nobody here wrote.

Every signed message is verified by three verifiers, against keys served by
a real DNS server on 127.0.0.x (tests/support/dnsserver.py):
  * dkimpy's `dkim.verify`, its `dnsfunc` querying that server with dnspython;
  * Perl `Mail::DKIM::Verifier` (Debian libmail-dkim-perl) through
    tests/support/dkimverify.pl, its Net::DNS resolver pointed at that server.
    Debian 12 ships Mail::DKIM 1.20230212, which predates its Ed25519 support
    (1.20230630): there the Ed25519 signature must come out "invalid
    (unsupported algorithm)", and with a newer Mail::DKIM it must pass;
  * OpenDKIM's `opendkim-testmsg` (Debian opendkim-tools), which does verify
    Ed25519. It has no nameserver option, so it runs in a private mount
    namespace (`unshare --mount`) whose /etc/resolv.conf names a second copy
    of the DNS server on 127.0.0.156 port 53 — hence root.
Each external verifier's tests skip, saying why, only when it cannot run.

Also here: the fast body canonicalisation and header split are proven equal
to dkimpy's on a table and on random input, and sign() is run from threads.
"""

from __future__ import annotations

import base64
import os
import hashlib
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import dkim as dkimpy
import dns.resolver
import pytest
from dkim.canonicalization import Relaxed

from mta.mail import dkim
from mta.mail.dkim import SigningError, SigningKey
from tests.support.dnsserver import DnsServer

DOMAIN = "example.test"
NOW = 1_700_000_000
PERL_SCRIPT = Path(__file__).parent / "support" / "dkimverify.pl"


def _have_mail_dkim() -> bool:
    if shutil.which("perl") is None:
        return False
    return subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"],
                          capture_output=True).returncode == 0


HAVE_PERL_DKIM = _have_mail_dkim()
needs_perl = pytest.mark.skipif(
    not HAVE_PERL_DKIM,
    reason="Perl Mail::DKIM not installed (apt-get install -y libmail-dkim-perl)")
PERL_ED25519 = HAVE_PERL_DKIM and subprocess.run(
    ["perl", "-MMail::DKIM::Algorithm::ed25519_sha256", "-e", "1"],
    capture_output=True).returncode == 0
PERL_ED_RESULT = "pass" if PERL_ED25519 else "invalid"

OPENDKIM_HOST = "127.0.0.156"


def _opendkim_unusable() -> str | None:
    if shutil.which("opendkim-testmsg") is None:
        return "opendkim-testmsg not installed (apt-get install -y opendkim-tools)"
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "opendkim-testmsg needs root and unshare(1) to get a private resolv.conf"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare --mount not permitted here: {probe.stderr.decode().strip()}"
    return None


OPENDKIM_UNUSABLE = _opendkim_unusable()
needs_opendkim = pytest.mark.skipif(OPENDKIM_UNUSABLE is not None,
                                    reason=OPENDKIM_UNUSABLE or "")


# ---- keys and the DNS server that publishes them ----

@pytest.fixture(scope="module")
def keys():
    rsa_pem, rsa_txt = dkim.generate_key("rsa-sha256")
    ed_pem, ed_txt = dkim.generate_key("ed25519-sha256")
    app_pem, app_txt = dkim.generate_key("rsa-sha256")
    return {
        "rsa": SigningKey(DOMAIN, "rsa1", "rsa-sha256", rsa_pem),
        "ed": SigningKey(DOMAIN, "ed1", "ed25519-sha256", ed_pem),
        "app": SigningKey("app.example.test", "app", "rsa-sha256", app_pem),
        "txt": {
            f"rsa1._domainkey.{DOMAIN}": rsa_txt,
            f"ed1._domainkey.{DOMAIN}": ed_txt,
            "app._domainkey.app.example.test": app_txt,
        },
    }


@pytest.fixture(scope="module")
def dns_server(keys):
    zone = {name: {"TXT": [txt]} for name, txt in keys["txt"].items()}
    server = DnsServer(zone, host="127.0.0.155").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def opendkim(keys, tmp_path_factory):
    """A function message -> (ok, stderr) running opendkim-testmsg against a
    DNS server on 127.0.0.156:53 named by a private /etc/resolv.conf."""
    if OPENDKIM_UNUSABLE:
        pytest.skip(OPENDKIM_UNUSABLE)
    zone = {name: {"TXT": [txt]} for name, txt in keys["txt"].items()}
    try:
        server = DnsServer(zone, host=OPENDKIM_HOST, port=53).start()
    except OSError as e:
        pytest.skip(f"cannot serve DNS on {OPENDKIM_HOST}:53 for opendkim-testmsg: {e}")
    resolv = tmp_path_factory.mktemp("opendkim") / "resolv.conf"
    resolv.write_text(f"nameserver {OPENDKIM_HOST}\noptions attempts:2 timeout:2\n")
    script = f"mount --bind {resolv} /etc/resolv.conf && exec opendkim-testmsg"

    def verify(message: bytes) -> tuple[bool, str]:
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], input=message,
                              capture_output=True, timeout=60)
        return proc.returncode == 0, proc.stderr.decode()
    yield verify
    server.stop()


@pytest.fixture(scope="module")
def both(keys):
    return [keys["rsa"], keys["ed"]]


def _dnsfunc(server: DnsServer):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.timeout = resolver.lifetime = 5

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii"), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)
    return get_txt


def dkimpy_results(message: bytes, server: DnsServer) -> list[bool]:
    """One result per DKIM-Signature field, top to bottom."""
    verifier = dkimpy.DKIM(message)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    results = []
    for i in range(count):
        try:
            results.append(verifier.verify(idx=i, dnsfunc=_dnsfunc(server)))
        except dkimpy.DKIMException:  # e.g. "body hash mismatch" is raised, not returned
            results.append(False)
    return results


def perl_results(message: bytes, server: DnsServer) -> dict[str, str]:
    """{algorithm + selector: result} per signature, e.g. {"rsa-sha256 rsa1": "pass"}."""
    proc = subprocess.run(["perl", str(PERL_SCRIPT), server.host, str(server.port)],
                          input=message, capture_output=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr.decode()
    out = {}
    for line in proc.stdout.decode().splitlines():
        m = re.match(r"(\w+) d=(\S*) s=(\S*) a=(\S*)", line)
        if m:
            out[f"{m.group(4)} {m.group(3)}"] = m.group(1)
    return out


# ---- the messages ----
# Each has exactly one From and one Date (the server adds Date when missing):
# opendkim-testmsg rejects a message without them as a syntax error.

def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


PLAIN = _crlf("""\
From: News <news@example.test>
To: someone@dest.test
Subject: Hello
Date: Tue, 14 Nov 2023 22:13:20 +0000
Message-ID: <abc@example.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Hello there,
  with   some	whitespace   \t
and trailing blank lines


""")

UTF8_HEADERS = _crlf("""\
From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>
To: Zoë Ünïcødé <zoe@dest.test>
Subject: Grüße aus Köln — ünïcødé ✉
Reply-To: "Ærøskøbing" <reply@example.test>
Date: Tue, 14 Nov 2023 22:13:20 +0000
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße, 8-bit body too: ÄÖÜ ß € 漢字
""")

LONG_LINES = _crlf(
    "From: long@example.test\n"
    "Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
    "To: " + ", ".join(f"user{i}@dest.test" for i in range(40)) + "\n"
    "Subject: a long subject line " + "word " * 60 + "\n"
    "  folded continuation of the subject\n"
    "List-Unsubscribe: <https://example.test/u/" + "x" * 300 + ">, <mailto:u@example.test>\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    "\n"
    + ("A" * 990 + "\n") * 3
    + "B" * 5000 + "\n")


def _mime(cte: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "mime@example.test"
    msg["To"] = "dest@dest.test"
    msg["Cc"] = "cc@dest.test"
    msg["Subject"] = f"{cte} body"
    msg["Message-ID"] = "<mime@example.test>"
    msg["Date"] = "Tue, 14 Nov 2023 22:13:20 +0000"
    text = "Zeile mit Umlauten: äöü ß — " * 20 + "\n" + "trailing spaces   \n" * 5
    msg.set_content(text, charset="utf-8", cte=cte)
    if cte == "base64":
        msg.add_attachment(bytes(range(256)) * 40, maintype="application",
                           subtype="octet-stream", filename="blob.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


BASE64 = _mime("base64")
QUOTED_PRINTABLE = _mime("quoted-printable")
NO_TRAILING_CRLF = _crlf("From: a@example.test\nTo: b@dest.test\nSubject: x\n"
                        "Date: Tue, 14 Nov 2023 22:13:20 +0000\n\nlast line without CRLF")
LF_ONLY = PLAIN.replace(b"\r\n", b"\n")

CASES = {
    "plain-ascii": PLAIN,
    "utf8-headers": UTF8_HEADERS,
    "long-lines": LONG_LINES,
    "base64-body": BASE64,
    "quoted-printable-body": QUOTED_PRINTABLE,
    "no-trailing-crlf": NO_TRAILING_CRLF,
    "lf-line-endings": LF_ONLY,
}


def test_cases_are_what_they_claim():
    assert b"Content-Transfer-Encoding: base64" in BASE64
    assert b"Content-Transfer-Encoding: quoted-printable" in QUOTED_PRINTABLE
    assert any(b > 127 for b in UTF8_HEADERS.split(b"\r\n\r\n")[0])
    assert max(len(line) for line in LONG_LINES.split(b"\r\n")) >= 5000
    assert not NO_TRAILING_CRLF.endswith(b"\n")
    assert b"\r" not in LF_ONLY


# ---- signatures verify, with both verifiers, for every case ----

@pytest.mark.parametrize("name", list(CASES))
def test_dkimpy_verifies_rsa_and_ed25519(name, both, dns_server):
    signed = dkim.sign(CASES[name], both, now=NOW)
    assert signed.endswith(CASES[name])  # the message itself is untouched
    assert dkimpy_results(signed, dns_server) == [True, True]


@needs_perl
@pytest.mark.parametrize("name", list(CASES))
def test_mail_dkim_verifies(name, both, dns_server):
    signed = dkim.sign(CASES[name], both, now=NOW)
    assert perl_results(signed, dns_server) == {"rsa-sha256 rsa1": "pass",
                                                 "ed25519-sha256 ed1": PERL_ED_RESULT}


@needs_opendkim
@pytest.mark.parametrize("name", list(CASES))
def test_opendkim_verifies_rsa_and_ed25519(name, keys, both, opendkim):
    # one signature per message, so each algorithm's result is its own
    for signing in ([keys["rsa"]], [keys["ed"]], both):
        ok, err = opendkim(dkim.sign(CASES[name], signing, now=NOW))
        assert ok, (signing, err)


@needs_opendkim
def test_opendkim_rejects_ed25519_with_the_wrong_key(keys, opendkim):
    other_pem, _ = dkim.generate_key("ed25519-sha256")
    impostor = SigningKey(DOMAIN, "ed1", "ed25519-sha256", other_pem)
    ok, err = opendkim(dkim.sign(PLAIN, [impostor], now=NOW))
    assert not ok and "bad signature" in err.lower()


def test_signature_fields(both):
    signed = dkim.sign(PLAIN, both, now=NOW)
    sigs = [dkimpy.util.parse_tag_value(value) for name, value in dkimpy.rfc822_parse(signed)[0]
            if name == b"DKIM-Signature"]
    assert [s[b"a"] for s in sigs] == [b"rsa-sha256", b"ed25519-sha256"]  # keys order, top down
    for s in sigs:
        assert s[b"c"] == b"relaxed/relaxed"
        assert s[b"d"] == DOMAIN.encode()
        assert s[b"t"] == str(NOW).encode()
    assert sigs[0][b"s"] == b"rsa1" and sigs[1][b"s"] == b"ed1"


def test_lf_message_gets_lf_signature_fields(both):
    signed = dkim.sign(LF_ONLY, both, now=NOW)
    assert b"\r" not in signed
    assert dkim.sign(PLAIN, both, now=NOW).count(b"\n") == dkim.sign(PLAIN, both, now=NOW).count(b"\r\n")


# ---- which headers are signed ----

def _h_tag(signed: bytes) -> list[bytes]:
    for name, value in dkimpy.rfc822_parse(signed)[0]:
        if name == b"DKIM-Signature":
            h = dkimpy.util.parse_tag_value(value)[b"h"]
            return [x.strip() for x in re.sub(rb"\s+", b"", h).split(b":")]
    raise AssertionError("no DKIM-Signature")


def test_signs_listed_headers_when_present_and_oversigns_from(keys):
    message = _crlf("""\
Received: from x by y
Return-Path: <bounce@example.test>
From: a@example.test
To: b@dest.test
To: c@dest.test
Cc: d@dest.test
Subject: s
Date: Tue, 14 Nov 2023 22:13:20 +0000
Message-ID: <m@example.test>
MIME-Version: 1.0
Content-Type: text/plain
Reply-To: r@example.test
List-Unsubscribe: <mailto:u@example.test>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
X-Mailer: not signed
Bcc: hidden@dest.test

body
""")
    assert _h_tag(dkim.sign(message, [keys["rsa"]], now=NOW)) == [
        b"from", b"to", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
        b"content-type", b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post", b"from"]
    assert _h_tag(dkim.sign(NO_TRAILING_CRLF, [keys["rsa"]], now=NOW)) == [
        b"from", b"to", b"subject", b"date", b"from"]


@pytest.mark.parametrize("where", ["top", "after-from", "bottom"])
def test_second_from_added_after_signing_breaks_verification(where, keys, both, dns_server):
    signed = dkim.sign(PLAIN, both, now=NOW)
    assert dkimpy_results(signed, dns_server) == [True, True]
    evil = b"From: ceo@example.test\r\n"
    if where == "top":
        forged = evil + signed
    elif where == "after-from":
        forged = signed.replace(b"From: News <news@example.test>\r\n",
                                b"From: News <news@example.test>\r\n" + evil)
    else:
        forged = signed.replace(b"\r\n\r\n", b"\r\n" + evil.rstrip(b"\r\n") + b"\r\n\r\n", 1)
    assert forged != signed
    assert dkimpy_results(forged, dns_server) == [False, False]
    if HAVE_PERL_DKIM:  # RSA only when Mail::DKIM predates Ed25519
        assert perl_results(forged, dns_server)["rsa-sha256 rsa1"] == "fail"
        rsa_only = dkim.sign(PLAIN, [keys["rsa"]], now=NOW)
        assert perl_results(rsa_only, dns_server) == {"rsa-sha256 rsa1": "pass"}


def test_tampered_body_fails_every_verifier(both, dns_server):
    # guards the other tests against a verifier that passes everything
    forged = dkim.sign(PLAIN, both, now=NOW).replace(b"Hello there", b"Hello thete")
    assert dkimpy_results(forged, dns_server) == [False, False]
    if HAVE_PERL_DKIM:
        assert perl_results(forged, dns_server)["rsa-sha256 rsa1"] == "fail"


# ---- an application's own DKIM-Signature ----

def test_existing_signature_is_kept_and_ours_added(keys, both, dns_server, request):
    opendkim = request.getfixturevalue("opendkim") if OPENDKIM_UNUSABLE is None else None
    app_signed = dkimpy.sign(PLAIN, b"app", b"app.example.test", keys["app"].private_pem,
                             canonicalize=(b"relaxed", b"relaxed"),
                             include_headers=[b"from", b"to", b"subject"]) + PLAIN
    assert app_signed.startswith(b"DKIM-Signature:")
    signed = dkim.sign(app_signed, both, now=NOW)
    assert signed.endswith(app_signed)  # kept byte for byte, below ours
    assert b"dkim-signature" not in _h_tag(signed)  # not signed over
    assert dkimpy_results(signed, dns_server) == [True, True, True]
    if OPENDKIM_UNUSABLE is None:
        ok, err = opendkim(signed)
        assert ok, err
    if HAVE_PERL_DKIM:
        assert perl_results(signed, dns_server) == {"rsa-sha256 rsa1": "pass",
                                                     "ed25519-sha256 ed1": PERL_ED_RESULT,
                                                     "rsa-sha256 app": "pass"}


# ---- our fast paths equal dkimpy's ----

BODIES = [
    b"", b"\r\n", b"\r\n\r\n", b"x", b"x\r\n", b"x\r\n\r\n\r\n", b" \r\n", b"\t\r\n\r\n",
    b"a  b\t\tc \t d  \r\n", b"  lead\r\n", b"trail \t \r\nnext\r\n", b"a" * 1000 + b"    " * 100,
    b"cr\ralone \r\n", b"  " * 257 + b"\r\n", b"\t \t \t", b"end with space ",
]


def _random_body(rng: random.Random) -> bytes:
    alphabet = [b"a", b"b", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"\r", b"\xc3\xa4", b"="]
    return b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))


def test_canonicalize_body_equals_dkimpy():
    rng = random.Random(1234)
    for body in BODIES + [_random_body(rng) for _ in range(3000)]:
        assert dkim.canonicalize_body(body) == Relaxed.canonicalize_body(body), body


def test_body_hash_fed_in_pieces_equals_the_whole():
    """BodyHash (large messages: the body arrives in pieces) == sha256 of
    canonicalize_body of the whole, wherever the pieces are cut."""
    rng = random.Random(4321)
    for body in BODIES + [_random_body(rng) for _ in range(5000)]:
        want = hashlib.sha256(dkim.canonicalize_body(body)).digest()
        h = dkim.BodyHash()
        pos = 0
        while pos < len(body):
            n = rng.randint(1, 9)
            h.update(body[pos:pos + n])
            pos += n
        assert h.digest() == want, body


@pytest.mark.parametrize("name", ["plain-ascii", "utf8-headers", "long-lines", "base64-body",
                                  "quoted-printable-body"])
def test_signing_with_a_tail_verifies(name, both, dns_server):
    """A message whose body goes on past the head in memory (core.spill):
    the signature covers head + tail, and only the head is returned."""
    message = CASES[name]
    body_at = message.index(b"\r\n\r\n") + 4
    whole = message + b"".join(
        b"tail line %d \t with  spaces  \r\n" % i for i in range(3000)) + b"\r\n\r\n"
    head, rest = whole[:body_at + 10], whole[body_at + 10:]
    pieces = [rest[i:i + 777] for i in range(0, len(rest), 777)]
    signed_head = dkim.sign(head, both, now=NOW, tail=pieces)
    assert signed_head.endswith(head)
    assert dkimpy_results(signed_head + rest, dns_server) == [True, True]
    assert dkim.sign(whole, both, now=NOW) == signed_head + rest   # the same signatures


def test_header_split_equals_rfc822_parse():
    rng = random.Random(99)
    pieces = [b"From: a@b\r\n", b"To: x\n", b" folded\r\n", b"\tfolded\n", b"\r\n", b"\n",
              b"body line", b" ", b"\r", b"Subject: \xc3\xa4\r\n"]
    samples = [m for m in CASES.values()] + [
        b"From: a@b\r\n" + b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        for _ in range(3000)]
    for message in samples:
        try:
            expected = dkimpy.rfc822_parse(message)
        except dkimpy.MessageFormatError:
            with pytest.raises(dkimpy.MessageFormatError):
                dkim._split(message)
            continue
        assert dkim._split(message) == expected, message


# ---- keys, errors, threads ----

def test_generate_key_txt_records():
    pem, txt = dkim.generate_key("rsa-sha256")
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    assert dkim.load_private_key(pem, "rsa-sha256").key_size == 2048
    pem, txt = dkim.generate_key("ed25519-sha256")
    assert txt.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(txt.split("p=")[1])) == 32
    assert dkim.public_txt(pem, "ed25519-sha256") == txt


def test_load_private_key_is_cached(keys):
    pem = keys["rsa"].private_pem
    assert dkim.load_private_key(pem, "rsa-sha256") is dkim.load_private_key(pem, "rsa-sha256")


def test_errors(keys):
    with pytest.raises(SigningError, match="needs an RSA"):
        dkim.sign(PLAIN, [SigningKey(DOMAIN, "s", "rsa-sha256", keys["ed"].private_pem)])
    with pytest.raises(SigningError, match="unreadable"):
        dkim.sign(PLAIN, [SigningKey(DOMAIN, "s", "rsa-sha256", b"not a key")])
    with pytest.raises(SigningError, match="unknown DKIM algorithm"):
        SigningKey(DOMAIN, "s", "rsa-sha1", keys["rsa"].private_pem)
    with pytest.raises(SigningError, match="not a DNS name"):
        SigningKey("example.test;\r\nX: y", "s", "rsa-sha256", keys["rsa"].private_pem)
    with pytest.raises(SigningError, match="no From"):
        dkim.sign(b"To: a@b\r\n\r\nbody\r\n", [keys["rsa"]])
    with pytest.raises(SigningError, match="unparsable"):
        dkim.sign(b"From: a@b\r\nthis is no header\r\n\r\nbody\r\n", [keys["rsa"]])
    assert "PRIVATE" not in repr(keys["rsa"])


def test_no_keys_returns_message_unchanged():
    assert dkim.sign(PLAIN, []) is PLAIN


def test_default_time_is_now(keys):
    import time
    before = int(time.time())
    signed = dkim.sign(PLAIN, [keys["ed"]])
    t = int(re.search(rb"t=(\d+)", signed).group(1))
    assert before <= t <= int(time.time())


def test_sign_from_many_threads(both, dns_server):
    messages = [PLAIN.replace(b"Hello there", f"Hello {i}".encode()) for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        signed = list(pool.map(lambda m: dkim.sign(m, both, now=NOW), messages))
    expected = [dkim.sign(m, both, now=NOW) for m in messages]
    # RSA PKCS#1 v1.5 and Ed25519 are deterministic: threads must give the same bytes
    assert signed == expected
    assert all(dkimpy_results(s, dns_server) == [True, True] for s in signed[:8])


# ---- mail built by the sending API (issue 13) ----

def _api_built(both) -> bytes:
    """A message as the sending API builds it (runtime/api_build.py: JSON →
    MIME → Received: → DKIM), with non-ASCII names, html + derived text,
    an inline image and an attachment."""
    import asyncio
    import base64
    import json

    from mta.config import parse_config
    from mta.policy.senders import SenderPolicy
    from mta.runtime.api_build import BuildKey, build

    class Signer:
        def keys_for(self, domain):
            return both if domain == DOMAIN else []

        def sign(self, message, domain):
            return dkim.sign(message, both, now=NOW)

    body = {"from": f"Zoë Team <news@{DOMAIN}>", "to": ["Renée <someone@dest.test>"],
            "cc": "cc@dest.test", "subject": "Grüße — a long subject " * 4,
            "html": "<p>Hello <b>there</b> <img src='cid:logo'></p>" + "<p>x</p>" * 200,
            "headers": {"X-Campaign": "winter"},
            "attachments": [{"filename": "résumé.pdf",
                             "content": base64.b64encode(bytes(range(256)) * 40).decode()},
                            {"filename": "logo.png", "content": list(b"\x89PNG" * 50),
                             "content_id": "logo"}]}
    built = asyncio.run(build(json.dumps(body).encode(), batch=False,
                              key=BuildKey("mta_live_x", "api:x", (), False),
                              client_ip="127.0.0.1", now=NOW, cfg=parse_config(""),
                              secure=False,
                              sender_policy=SenderPolicy(False, lambda d: None),
                              signer=Signer()))
    return bytes(built[0]["body"])


def test_api_built_mail_verifies_with_dkimpy(both, dns_server):
    assert dkimpy_results(_api_built(both), dns_server) == [True, True]


@needs_perl
def test_api_built_mail_verifies_with_mail_dkim(both, dns_server):
    assert perl_results(_api_built(both), dns_server) == {"rsa-sha256 rsa1": "pass",
                                                          "ed25519-sha256 ed1": PERL_ED_RESULT}


@needs_opendkim
def test_api_built_mail_verifies_with_opendkim(both, opendkim):
    ok, err = opendkim(_api_built(both))
    assert ok, err
