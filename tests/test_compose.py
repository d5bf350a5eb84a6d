"""mta/mail/compose.py: Composition → MIME bytes, read back by the stdlib parser
(policy.default) and verified by dkimpy after our signer signed them.

Checked: the structure per case (text / html only / both / inline images /
attachments), header order and encoding (non-ASCII names and subjects come
back exactly, spaces included: the stdlib's own folder loses them), Bcc never
written, attachment bytes (SHA-256), filenames and content types round-trip,
lines ≤ 998 bytes with a 5,000-character single-line html, CRLF only,
determinism, DKIM (RSA and Ed25519), refusals of control characters, and
html_to_text on a table and on hostile input (bounded time). Added with the
fast compose: long media types written whole, filenames of every length,
header lines over 998 refused, quoted-printable lines ≤ 76, base64 at block
edges, no ">From" mangling; html_to_text on sloppy markup, against html.parser
on random markup, and linear when quotes stay open.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import re
import time
from dataclasses import replace
from email.header import decode_header, make_header
from email.message import EmailMessage

import dkim as dkimpy
import pytest

from mta.mail import dkim
from mta.mail.compose import (Attachment, Composition, Mailbox, compose, envelope_recipients,
                              html_to_text)
from mta.mail.dkim import SigningKey

DATE = 1_700_000_000.0
MID = "0123abcd.4567@mta.example.com"
PDF = b"%PDF-1.4\n" + os.urandom(70_000) + b"\x00\xff\r\n.\r\n"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


def base(**kw) -> Composition:
    fields = dict(sender="news@example.com", sender_name="Acme News",
                  to=(Mailbox("", "ann@example.org"),), subject="Hello")
    fields.update(kw)
    return Composition(**fields)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def shape(part) -> object:
    """The MIME tree as nested (content type, [children]) / content type."""
    if part.is_multipart():
        return (part.get_content_type(), [shape(p) for p in part.iter_parts()])
    return part.get_content_type()


def lf(text: str) -> str:
    """A text part as a reader shows it (the wire has CRLF)."""
    return text.replace("\r\n", "\n")


def header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [ln.split(":", 1)[0] for ln in head.split("\r\n") if ln and not ln[0].isspace()]


# ---- structure -----------------------------------------------------------------

STRUCTURES = [
    ("text only", dict(text="Hi there"), "text/plain"),
    ("html only", dict(html="<p>Hi <b>there</b></p>"),
     ("multipart/alternative", ["text/plain", "text/html"])),
    ("both", dict(html="<p>Hi</p>", text="Hi (text)"),
     ("multipart/alternative", ["text/plain", "text/html"])),
    ("html, text opted out", dict(html="<p>Hi</p>", text=""), "text/html"),
    ("inline image", dict(html='<img src="cid:logo">',
                          attachments=(Attachment("logo.png", PNG, "", "logo"),)),
     ("multipart/alternative",
      ["text/plain", ("multipart/related", ["text/html", "image/png"])])),
    ("attachment", dict(text="see attached", attachments=(Attachment("a.pdf", PDF, ""),)),
     ("multipart/mixed", ["text/plain", "application/pdf"])),
    ("everything", dict(html='<p>x<img src="cid:logo"></p>', text="x",
                        attachments=(Attachment("a.pdf", PDF, ""),
                                     Attachment("logo.png", PNG, "image/png", "logo"))),
     ("multipart/mixed", [("multipart/alternative", [
         "text/plain", ("multipart/related", ["text/html", "image/png"])]),
         "application/pdf"])),
    ("content id without html", dict(text="x", attachments=(Attachment("l.png", PNG, "", "l"),)),
     ("multipart/mixed", ["text/plain", "image/png"])),
]


@pytest.mark.parametrize("name,kw,expected", STRUCTURES, ids=[s[0] for s in STRUCTURES])
def test_structure(name, kw, expected):
    data = compose(base(**kw), message_id=MID, date=DATE)
    msg = parse(data)
    assert shape(msg) == expected
    assert msg["MIME-Version"] == "1.0"
    assert not msg.defects and all(not p.defects for p in msg.walk())


def test_header_order_and_values():
    c = base(cc=(Mailbox("Carl", "carl@example.org"),), bcc=(Mailbox("", "hidden@example.net"),),
             reply_to=(Mailbox("Support", "help@example.com"),), text="x",
             headers=(("X-Entity-Ref-ID", "123"), ("List-Unsubscribe", "<https://e.test/u>")))
    data = compose(c, message_id=MID, date=DATE)
    assert header_names(data) == ["From", "To", "Cc", "Reply-To", "Subject", "Date",
                                  "Message-ID", "MIME-Version", "X-Entity-Ref-ID",
                                  "List-Unsubscribe", "Content-Type",
                                  "Content-Transfer-Encoding"]
    msg = parse(data)
    assert msg["From"] == "Acme News <news@example.com>"
    assert msg["Cc"] == "Carl <carl@example.org>"
    assert msg["Reply-To"] == "Support <help@example.com>"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["Date"].datetime.timestamp() == DATE
    assert msg["Message-ID"] == f"<{MID}>"
    assert msg["List-Unsubscribe"] == "<https://e.test/u>"


def test_bcc_is_never_written_but_is_an_envelope_recipient():
    c = base(to=(Mailbox("", "a@example.org"), Mailbox("", "B@Example.ORG")),
             cc=(Mailbox("", "b@example.org"), Mailbox("", "a@EXAMPLE.org")),
             bcc=(Mailbox("Secret", "hidden@example.net"),), text="x")
    data = compose(c, message_id=MID, date=DATE)
    assert b"hidden" not in data and b"Secret" not in data
    assert parse(data)["Bcc"] is None
    # deduplicated with the domain case-folded (local parts stay distinct), in order
    assert envelope_recipients(c) == ("a@example.org", "B@Example.ORG", "b@example.org",
                                      "hidden@example.net")


NON_ASCII = [
    "Héllo " * 30,                         # the stdlib folder turns this into "HélloHéllo"
    "Grüße aus Köln — 日本語のテキスト" * 4,
    "  two  spaces  and trailing ",
    "plain ASCII but long " * 20,
    "x" * 990,                             # one long word: encoded, still ≤ 998 per line
    "=?utf-8?q?looks_encoded?=",
    "a=?b?c and https://x.test/?q=?",      # not an encoded word: stays as it is
    "emoji 😀 at the end 😀",
]


@pytest.mark.parametrize("subject", NON_ASCII)
def test_subjects_and_names_come_back_exactly(subject):
    name = subject[:70]
    c = base(subject=subject, sender_name=name, to=(Mailbox(name.strip(), "ann@example.org"),),
             text="x", headers=(("X-Note", subject),))
    data = compose(c, message_id=MID, date=DATE)
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(ln) <= 78 or b" " not in ln[20:] for ln in head.split(b"\r\n"))
    assert max(len(ln) for ln in data.split(b"\r\n")) <= 998
    msg = parse(data)
    assert msg["Subject"] == subject
    assert msg["X-Note"] == subject
    assert msg["From"].addresses[0].addr_spec == "news@example.com"
    assert rfc2047_phrase(data, "From") == name
    assert rfc2047_phrase(data, "To") == name.strip()
    # Python's phrase parser keeps the space between two encoded words (RFC 2047
    # §6.2 says to drop it); words are cut after a space where there is one
    assert "".join(msg["To"].addresses[0].display_name.split()) == "".join(name.split())


def rfc2047_phrase(data: bytes, field: str) -> str:
    """The display name of the first mailbox of a field, decoded by the letter of
    RFC 2047 (legacy email.header: white space between encoded words dropped)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii").replace("\r\n ", " ")
    value = next(ln for ln in head.split("\r\n") if ln.startswith(field + ": "))
    phrase = value[len(field) + 2:].rsplit(" <", 1)[0]
    text = str(make_header(decode_header(phrase)))
    return text[1:-1] if text.startswith('"') else text


def test_long_urls_in_headers_stay_unencoded():
    url = "<https://unsubscribe.example.com/u?token=" + "a1b2" * 60 + ">"
    c = base(text="x", subject="See https://example.com/" + "p" * 150 + " now",
             headers=(("List-Unsubscribe", url),
                      ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
    data = compose(c, message_id=MID, date=DATE)
    assert f"List-Unsubscribe: {url}\r\n".encode() in data
    assert b"=?" not in data.split(b"\r\n\r\n")[0]
    msg = parse(data)
    assert msg["List-Unsubscribe"] == url and msg["Subject"] == c.subject
    assert max(len(ln) for ln in data.split(b"\r\n")) <= 998


def test_display_names_with_specials_are_quoted():
    c = base(sender_name='Doe, "Johnny" <Jr>', to=(Mailbox("a@b", "ann@example.org"),), text="x")
    msg = parse(compose(c, message_id=MID, date=DATE))
    assert msg["From"].addresses[0].display_name == 'Doe, "Johnny" <Jr>'
    assert msg["To"].addresses[0].display_name == "a@b"
    assert msg["To"].addresses[0].addr_spec == "ann@example.org"


def test_many_recipients_fold_and_parse():
    boxes = tuple(Mailbox(f"Person {i}", f"p{i}@example.org") for i in range(50))
    data = compose(base(to=boxes, text="x"), message_id=MID, date=DATE)
    assert max(len(ln) for ln in data.split(b"\r\n\r\n")[0].split(b"\r\n")) <= 78
    got = parse(data)["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in got] == [(b.name, b.address) for b in boxes]


# ---- bodies ------------------------------------------------------------------------

def test_long_single_line_html_stays_under_998():
    html = "<p>" + "".join(f"word{i} é " for i in range(700))[:5000] + "</p>"
    assert "\n" not in html and len(html) > 5000
    data = compose(base(html=html), message_id=MID, date=DATE)
    assert max(len(ln) for ln in data.split(b"\r\n")) <= 78
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    msg = parse(data)
    assert lf(msg.get_body(("html",)).get_content()) == html + "\n"
    assert msg.get_body(("html",))["Content-Transfer-Encoding"] == "quoted-printable"


def test_body_encodings():
    ascii_short = parse(compose(base(text="Hello\nworld"), message_id=MID, date=DATE))
    assert ascii_short["Content-Transfer-Encoding"] == "7bit"
    assert lf(ascii_short.get_content()) == "Hello\nworld\n"
    utf8 = parse(compose(base(text="Grüße\n"), message_id=MID, date=DATE))
    assert utf8["Content-Transfer-Encoding"] == "quoted-printable"
    assert utf8.get_content_charset() == "utf-8"
    assert lf(utf8.get_content()) == "Grüße\n"


def test_attachments_round_trip():
    blobs = {"report.pdf": PDF, "data.bin": os.urandom(5000), "empty.txt": b"",
             "Résumé – été 2024 (final).pdf": b"%PDF" + os.urandom(100),
             'quote"semi;colon.csv': b"a,b\r\n1,2\r\n"}
    atts = tuple(Attachment(n, b, "") for n, b in blobs.items())
    atts += (Attachment("", b"nameless", ""), Attachment("x.weird", b"y", "application/x-custom"),
             Attachment("old.eml", b"From: a\r\n\r\nx", ""))
    data = compose(base(text="files", attachments=atts), message_id=MID, date=DATE)
    parts = list(parse(data).iter_attachments())
    assert len(parts) == len(atts)
    for att, part in zip(atts, parts):
        body = part.get_payload(decode=True)
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(att.content).hexdigest()
        assert part.get_filename() == (att.filename or None)
        assert part.get_content_disposition() == "attachment"
        assert part["Content-Transfer-Encoding"] == "base64"
    types = [p.get_content_type() for p in parts]
    assert types[0] == "application/pdf" and types[3] == "application/pdf"
    assert types[5] == "application/octet-stream"     # no filename, no type
    assert types[6] == "application/x-custom"
    assert types[7] == "application/octet-stream"     # message/rfc822 may not be base64
    assert b"filename*" in data                       # RFC 2231 for the non-ASCII name


def test_inline_part_has_its_content_id():
    c = base(html='<p>Logo: <img src="cid:logo-1@acme" alt="Acme"></p>',
             attachments=(Attachment("logo.png", PNG, "", "logo-1@acme"),))
    msg = parse(compose(c, message_id=MID, date=DATE))
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    html, image = list(related.iter_parts())
    assert image["Content-ID"] == "<logo-1@acme>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "logo.png"
    assert hashlib.sha256(image.get_payload(decode=True)).digest() == hashlib.sha256(PNG).digest()
    assert lf(msg.get_body(("plain",)).get_content()) == "Logo: Acme\n"


def test_deterministic_apart_from_boundaries():
    c = base(html="<p>x</p>", attachments=(Attachment("a.pdf", PDF, ""),))
    one = compose(c, message_id=MID, date=DATE)
    two = compose(c, message_id=MID, date=DATE)
    bounds = re.compile(rb"=_[0-9a-f]{32}")
    assert bounds.sub(b"B", one) == bounds.sub(b"B", two)
    later = compose(c, message_id=MID, date=DATE + 3600)
    diff = [(a, b) for a, b in zip(bounds.sub(b"B", one).split(b"\r\n"),
                                   bounds.sub(b"B", later).split(b"\r\n")) if a != b]
    assert diff == [(b"Date: Tue, 14 Nov 2023 22:13:20 +0000",
                     b"Date: Tue, 14 Nov 2023 23:13:20 +0000")]


@pytest.mark.parametrize("change", [
    dict(subject="Hi\r\nBcc: victim@example.net"),
    dict(sender_name="Eve\nX-Evil: 1"),
    dict(to=(Mailbox("A\x00", "a@example.org"),)),
    dict(to=(Mailbox("", "a@example.org\r\nX: y"),)),
    dict(to=(Mailbox("", "jöhn@example.org"),)),
    dict(headers=(("X-Ok", "a\rb"),)),
    dict(headers=(("Bad Name", "x"),)),
    dict(headers=(("X-Trailing-LF\n", "x"),)),
    dict(attachments=(Attachment("a.pdf", b"x", "text/plain\n"),)),
    dict(attachments=(Attachment("a.pdf", b"x", "", "id\n"),)),
    dict(headers=(("Subject", "again"),)),
    dict(headers=(("Content-Type", "text/html"),)),
    dict(attachments=(Attachment("a\n.pdf", b"x", ""),)),
    dict(attachments=(Attachment("a.pdf", b"x", "text/plain; charset=x"),)),
    dict(attachments=(Attachment("a.pdf", b"x", "", "<id>"),)),
    dict(to=(), cc=(), bcc=()),
], ids=lambda c: next(iter(c)))
def test_refuses_what_would_break_the_header(change):
    with pytest.raises(ValueError):
        compose(replace(base(text="x"), **change), message_id=MID, date=DATE)


@pytest.mark.parametrize("bad", ["a>\r\nX: y", "id@host\n", "", "a b@c"])
def test_refuses_a_bad_message_id(bad):
    with pytest.raises(ValueError):
        compose(base(text="x"), message_id=bad, date=DATE)


# ---- DKIM ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys():
    out = []
    for algorithm, selector in (("rsa-sha256", "rsa1"), ("ed25519-sha256", "ed1")):
        pem, txt = dkim.generate_key(algorithm)
        out.append((SigningKey("example.com", selector, algorithm, pem), txt))
    return out


def dkimpy_verify(message: bytes, records: dict[str, str]) -> bool:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        txt = records.get(name.decode("ascii").rstrip("."))
        return txt.encode() if txt else None
    return bool(dkimpy.verify(message, dnsfunc=dnsfunc))


@pytest.mark.parametrize("kw", [
    dict(text="plain"),
    dict(html="<p>" + "é" * 3000 + "</p>", subject="Grüße " * 30, sender_name="Zoë Ø",
         cc=(Mailbox("Çé", "c@example.org"),),
         attachments=(Attachment("Résumé.pdf", PDF, ""), Attachment("l.png", PNG, "", "l"))),
], ids=["text", "everything"])
def test_dkim_verifies_after_signing(kw, keys):
    records = {f"{k.selector}._domainkey.{k.domain}": txt for k, txt in keys}
    message = compose(base(**kw), message_id=MID, date=DATE)
    for key, _ in keys:
        signed = dkim.sign(message, [key], now=time.time())
        assert dkimpy_verify(signed, records), key.algorithm
        tampered = signed.replace(b"Subject: ", b"Subject: Re: ", 1)
        assert not dkimpy_verify(tampered, records)


# ---- html → text ------------------------------------------------------------------

HTML_TEXT = [
    ("<p>Hello</p><p>World</p>", "Hello\n\nWorld\n"),
    ("a<br>b<br/><br>c", "a\nb\n\nc\n"),
    ("<div>one</div><div>two</div>", "one\ntwo\n"),
    ("<h1>Title</h1>text", "Title\n\ntext\n"),
    ('<a href="https://x.test/p">our site</a>', "our site (https://x.test/p)\n"),
    ('<a href="https://x.test/">https://x.test/</a>', "https://x.test/\n"),
    ('<a href="mailto:a@b.test">a@b.test</a>', "a@b.test\n"),
    ('<a href="#top">top</a> <a href="javascript:x()">js</a>', "top js\n"),
    ("<ul><li>one</li><li>two</li></ul>", "- one\n- two\n"),
    ("Fish &amp; chips &lt;3 &eacute;&#233;&#x263A;", "Fish & chips <3 éé☺\n"),
    ("<head><title>T</title><style>p{color:red}</style></head><body>x</body>", "x\n"),
    ("<script>alert('<b>')</script>shown", "shown\n"),
    ("a   lot\n\tof    space", "a lot of space\n"),
    ("<pre>  keep\n    this</pre>", "  keep\n    this\n"),
    ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc\n"),
    ('<img src="x.png" alt="Logo"> text', "Logo text\n"),
    ("<!-- hidden --><!DOCTYPE html>seen", "seen\n"),
    ("a < b and c > d", "a < b and c > d\n"),
    ("", ""),
    ("<p>   </p>", ""),
]


@pytest.mark.parametrize("html,text", HTML_TEXT)
def test_html_to_text(html, text):
    assert html_to_text(html) == text


@pytest.mark.parametrize("hostile", [
    "<a " * 130_000, "</" * 200_000, "<![CDATA[>" * 40_000, "<!-- >" * 60_000, "<>" * 200_000,
    "<a b='>" * 60_000, "<div>" * 80_000, "<" * 400_000, "<a " + "b=1 " * 100_000 + ">",
])
def test_html_to_text_is_linear_on_hostile_input(hostile):
    # the stdlib parser alone takes minutes on some of these ("<a <a …": ~20 s at 40 KB)
    started = time.perf_counter()
    html_to_text(hostile)
    assert time.perf_counter() - started < 5


# ---- added with the fast compose (issue 13: the API's throughput) ------------------

def header_lines(data: bytes) -> list[bytes]:
    """Every header line of every part (the header blocks, not the bodies)."""
    lines: list[bytes] = []
    for block in re.split(rb"\r\n--=_[0-9a-f]{32}(?:--)?\r\n", data):
        lines += block.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return lines


def test_an_office_media_type_is_written_whole():
    # beside a non-ASCII filename, policy.SMTP's folder turned this 71-character
    # type into RFC 2047 words ("application/=?utf-8?q?vnd=2Eopenxml…"): unreadable
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    names = ["report.docx", "Résumé.docx", "日本語のファイル名.docx"]
    c = base(text="x", attachments=(*(Attachment(n, b"PK\x03\x04", "") for n in names),
                                    Attachment("Résumé.bin", b"x", docx)))
    data = compose(c, message_id=MID, date=DATE)
    assert data.count(f"Content-Type: {docx};".encode()) == 4
    assert b"=?" not in data
    parts = list(parse(data).iter_attachments())
    assert [p.get_content_type() for p in parts] == [docx] * 4
    assert [p.get_filename() for p in parts] == [*names, "Résumé.bin"]


@pytest.mark.parametrize("n", [1, 40, 55, 60, 61, 62, 63, 64, 70, 100, 200, 251])
@pytest.mark.parametrize("unit", ["a", "é", "日", 'q"; '])
def test_filenames_of_every_length_come_back(n, unit):
    name = (unit * n)[:n] + ".pdf"
    data = compose(base(text="x", attachments=(Attachment(name, b"%PDF", ""),)),
                   message_id=MID, date=DATE)
    assert all(len(ln) <= 78 for ln in header_lines(data))
    part = next(parse(data).iter_attachments())
    assert part.get_filename() == name
    assert part.get_param("name") == name
    assert part.get_content_type() == "application/pdf"
    assert not part.defects


def test_a_header_line_over_998_characters_is_refused():
    c = base(text="x", attachments=(Attachment("l.png", PNG, "", "i" * 1000),))
    with pytest.raises(ValueError, match="998"):
        compose(c, message_id=MID, date=DATE)
    assert compose(replace(c, attachments=(Attachment("l.png", PNG, "", "i" * 980),)),
                   message_id=MID, date=DATE)


def test_quoted_printable_lines_are_at_most_76():
    html = "<p>" + "é wörd " * 400 + "</p>\n" + "x" * 300 + " \n\ttab end\t\n"
    data = compose(base(html=html, text=""), message_id=MID, date=DATE)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert b"quoted-printable" in data.split(b"\r\n\r\n", 1)[0]
    assert max(len(ln) for ln in body.split(b"\r\n")) == 76
    assert lf(parse(data).get_content()) == html


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 16 * 57 - 1, 16 * 57, 16 * 57 + 1, 40_000])
def test_base64_lines_at_every_size(size):
    blob = os.urandom(size)
    data = compose(base(text="x", attachments=(Attachment("b.bin", blob, ""),)),
                   message_id=MID, date=DATE)
    part = next(parse(data).iter_attachments())
    assert part.get_payload(decode=True) == blob
    encoded = data.split(b"Content-Disposition: attachment; filename=\"b.bin\"\r\n\r\n")[1]
    lines = encoded.split(b"\r\n--=_")[0].split(b"\r\n")
    assert lines[-1] == b"" and all(len(ln) == 76 for ln in lines[:-2])
    assert 0 < len(lines[-2]) <= 76 if size else lines == [b""]


def test_body_lines_starting_with_from_are_not_mangled():
    data = compose(base(text="From the team\nFrom: not a header\n"), message_id=MID, date=DATE)
    assert data.endswith(b"\r\n\r\nFrom the team\r\nFrom: not a header\r\n")
    assert b">From" not in data


TOLERANT_HTML = [
    ('<a title="x>y" href="https://e.test/">site</a>', "site (https://e.test/)\n"),
    ("<A HREF='https://e.test/'>Site</A>", "Site (https://e.test/)\n"),
    ("<a href=https://e.test/x>go</a>", "go (https://e.test/x)\n"),
    ("<a href=x/>z</a>", "z (x/)\n"),                       # the "/" is the value's
    ('<a href="/x"/>z', "z\n"),                             # an empty element
    ("<p/>one<br/>two<br />three<br/ >four", "one\ntwo\nthree\nfour\n"),
    ("<script>document.write('<p>x</p>')</script>after", "after\n"),
    ("<SCRIPT>x</SCRIPT >y<style>p>a{}</style>ok", "yok\n"),
    ("<script>never closed <p>x", ""),
    ("a</ p>b</>c</ 1>d", "a\n\nbcd\n"),
    ("<img alt='a &amp; b'/>", "a & b\n"),
    ('<a title="open>text', '<a title="open>text\n'),       # a quote that never closes
    ("<a b= 'x>y</a>", "y\n"),                              # ... after "= ": a name
    ("<a b=='x>y</a>", "y\n"),                              # ... after "==": a bare value
    ("<li/>x<pre/>  y", "-\nx\n\ny\n"),
]


@pytest.mark.parametrize("html,text", TOLERANT_HTML)
def test_html_to_text_reads_sloppy_markup_as_html_parser_does(html, text):
    assert html_to_text(html) == text


def test_html_to_text_gives_html_parser_s_events_on_random_markup():
    """Our tokeniser against the stdlib's html.parser driving the same sink,
    on random markup (sloppy, broken, quotes left open)."""
    import random
    from html.parser import HTMLParser

    from mta.mail import htmltext

    class Reference(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.sink = htmltext._Text()

        def handle_starttag(self, tag, attrs):
            self.sink.starttag(tag, dict(attrs))

        def handle_endtag(self, tag):
            self.sink.endtag(tag)

        def handle_data(self, data):
            self.sink.data(data)

    def reference(html: str) -> str:
        parser = Reference()
        parser.feed(htmltext._OPEN_LT.sub("&lt;", htmltext._without_declarations(html)))
        parser.close()
        lines = [ln.rstrip() for ln in "".join(parser.sink.out).split("\n")]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
        return text.strip("\n") + "\n" if text.strip() else ""

    pieces = ["<p>", "</p>", "<br/>", "<a href='x.test'>", '<a href="y">', "<a href=z/>", "</a>",
              "<img alt=", "<img alt='A &amp; B'>", "<script>", "</script>", "<style>p>a{}</style>",
              "<li>", "<pre>", "</pre>", "<td>", "<body>", "<head>", "</head>", "text", " ", "\n",
              "&amp;", "&eacute;", "<", ">", "'", '"', "=", "==", "= ", "/", "</ p>", "</>",
              "<b c=", "<!-- c -->", "<A HREF=Q>", "<p/>", "é"]
    rng = random.Random(13)
    for _ in range(1500):
        html = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 60)))
        assert html_to_text(html) == reference(html), html


@pytest.mark.parametrize("hostile", [
    "<a b='>x'" * 60_000, '<a b=">x"' * 60_000, "<a b= '>x'" * 50_000, "<a b=='>x'" * 50_000,
    "<a b='x'='y'" * 30_000 + ">", "<a " + "= " * 200_000 + ">", "<p " + "/" * 400_000 + ">",
])
def test_html_to_text_is_linear_when_quotes_stay_open(hostile):
    # each "<" once read to the end of the html (html.parser: ~15 s at 80 KB)
    started = time.perf_counter()
    html_to_text(hostile)
    assert time.perf_counter() - started < 5
