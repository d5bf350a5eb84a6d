"""mta/api/emails.py: POST /emails (and /emails/batch) JSON → EmailRequest, or a
ValidationError naming the field.

* a table of valid bodies → the values they give;
* a table of bad bodies (wrong types, missing fields, bad base64, header
  injection, bad dates, too many recipients, bad tags, path attachments,
  owned headers …) → the field the error names, and Resend's error name;
* batches: per-item errors named "[i].field", attachments and scheduled_at
  refused there;
* the bodies the official SDKs really send: the Python SDK `resend` and the
  Node SDK (tests/sdk/node) post to a capturing HTTP server on 127.0.0.1,
  and what they sent parses, attachment bytes equal (SHA-256);
* parse → compose → the stdlib parser: Bcc absent, bytes equal.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mta.api.emails import (BATCH_MAX, EmailRequest, ValidationError, parse_batch, parse_email,
                            parse_scheduled_at)
from mta.mail.compose import Attachment, Mailbox, compose, envelope_recipients

NOW = 1_800_000_000.0                      # 2027-01-15T08:00:00Z
DEL = object()
BLOB = os.urandom(4096) + b"\x00\xff"
B64 = base64.b64encode(BLOB).decode()


def body(**changes) -> dict:
    doc = {"from": "Acme <news@example.com>", "to": "ann@example.org", "subject": "Hi",
           "text": "Hello"}
    for key, value in changes.items():
        if value is DEL:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def parse(doc, **kw) -> EmailRequest:
    return parse_email(doc, now=NOW, **kw)


# ---- valid bodies --------------------------------------------------------------------

def test_minimal():
    req = parse(body())
    c = req.composition
    assert (c.sender, c.sender_name) == ("news@example.com", "Acme")
    assert c.to == (Mailbox("", "ann@example.org"),)
    assert (c.cc, c.bcc, c.reply_to, c.headers, c.attachments) == ((), (), (), (), ())
    assert (c.subject, c.text, c.html) == ("Hi", "Hello", None)
    assert (req.tags, req.scheduled_at, req.remote_attachments) == ((), None, ())


VALID = [
    ("lists and names",
     dict(to=["a@example.org", '"Doe, John" <john@example.org>'], cc="Carl <carl@example.org>",
          bcc=["hidden@example.net"], reply_to=["help@example.com", "Help <h2@example.com>"]),
     lambda r: (r.composition.to, r.composition.cc, r.composition.bcc, r.composition.reply_to),
     ((Mailbox("", "a@example.org"), Mailbox("Doe, John", "john@example.org")),
      (Mailbox("Carl", "carl@example.org"),), (Mailbox("", "hidden@example.net"),),
      (Mailbox("", "help@example.com"), Mailbox("Help", "h2@example.com")))),
    ("domains normalised",
     dict(to=["Ann <ann@EXAMPLE.org>", "b@bücher.example", "<c@example.org>"]),
     lambda r: [m.address for m in r.composition.to],
     ["ann@example.org", "b@xn--bcher-kva.example", "c@example.org"]),
    ("from bare address", dict(**{"from": "news@example.com"}),
     lambda r: (r.composition.sender, r.composition.sender_name), ("news@example.com", "")),
    ("from with non-ASCII name", dict(**{"from": "Zoë Ø <news@example.com>"}),
     lambda r: r.composition.sender_name, "Zoë Ø"),
    ("html only", dict(text=DEL, html="<p>x</p>"),
     lambda r: (r.composition.html, r.composition.text), ("<p>x</p>", None)),
    ("text opt-out", dict(html="<p>x</p>", text=""),
     lambda r: (r.composition.html, r.composition.text), ("<p>x</p>", "")),
    ("empty subject", dict(subject=""), lambda r: r.composition.subject, ""),
    ("headers", dict(headers={"X-Entity-Ref-ID": "123", "List-Unsubscribe": "<https://u.test>",
                              "X-Tab": "a\tb", "X-Unicode": "Grüße"}),
     lambda r: r.composition.headers,
     (("X-Entity-Ref-ID", "123"), ("List-Unsubscribe", "<https://u.test>"), ("X-Tab", "a\tb"),
      ("X-Unicode", "Grüße"))),
    ("tags", dict(tags=[{"name": "category", "value": "confirm_email"}, {"name": "a-b_C9"},
                        {"name": "x", "value": None}]),
     lambda r: r.tags, (("category", "confirm_email"), ("a-b_C9", ""), ("x", ""))),
    ("attachments of every shape",
     dict(attachments=[
         {"filename": "a.bin", "content": B64},
         {"filename": "b.bin", "content": base64.encodebytes(BLOB).decode()},   # line breaks
         {"filename": "c.bin", "content": list(BLOB)},                          # Python SDK
         {"filename": False, "content": {"type": "Buffer", "data": list(BLOB)}},  # old Node SDK
         {"content": B64, "content_type": "image/png", "content_id": "logo"},
         {"filename": "i.png", "content": B64, "inline_content_id": "img-1@x"},
         {"filename": "e.txt", "content": ""}]),
     lambda r: [(a.filename, hashlib.sha256(a.content).hexdigest(), a.content_type, a.content_id)
                for a in r.composition.attachments],
     [(n, hashlib.sha256(BLOB).hexdigest(), t, i) for n, t, i in
      [("a.bin", "", ""), ("b.bin", "", ""), ("c.bin", "", ""), ("", "", ""),
       ("", "image/png", "logo"), ("i.png", "", "img-1@x")]]
     + [("e.txt", hashlib.sha256(b"").hexdigest(), "", "")]),
    ("remote attachment on an allowed host",
     dict(attachments=[{"content": B64, "filename": "a"},
                       {"path": "https://Files.Example.com/r.pdf", "filename": "r.pdf",
                        "content_type": "application/pdf"}]),
     lambda r: (r.remote_attachments, r.composition.attachments[1]),
     (((1, "https://Files.Example.com/r.pdf"),), Attachment("r.pdf", b"", "application/pdf"))),
    ("scheduled, Z", dict(scheduled_at="2027-01-20T10:00:00Z"),
     lambda r: r.scheduled_at, 1_800_439_200.0),
    ("scheduled, offset and fraction", dict(scheduled_at="2027-01-20T12:00:00.5+02:00"),
     lambda r: r.scheduled_at, 1_800_439_200.5),
    ("scheduled in the past → now", dict(scheduled_at="2020-01-01T00:00:00Z"),
     lambda r: r.scheduled_at, None),
    ("unknown and null fields", dict(react=None, topic_id="t", future={"x": 1}, cc=None,
                                     headers=None, tags=None, attachments=None, scheduled_at=None),
     lambda r: (r.composition.cc, r.composition.headers, r.tags, r.scheduled_at),
     ((), (), (), None)),
]


@pytest.mark.parametrize("name,changes,get,expected", VALID, ids=[v[0] for v in VALID])
def test_valid(name, changes, get, expected):
    req = parse(body(**changes), fetch_hosts=frozenset({"files.example.com"}))
    assert get(req) == expected


# ---- bad bodies -------------------------------------------------------------------------

MISSING, INVALID, ATTACH = "missing_required_field", "validation_error", "invalid_attachment"
OK_ATT = {"filename": "a.bin", "content": B64}

BAD = [
    # (id, body or changes, field, error name, kwargs)
    ("body not an object", [], "", INVALID),
    ("body a string", "x", "", INVALID),
    ("from missing", dict(**{"from": DEL}), "from", MISSING),
    ("from a number", dict(**{"from": 5}), "from", INVALID),
    ("from not an address", dict(**{"from": "Acme <not-an-address>"}), "from", INVALID),
    ("from CRLF in name", dict(**{"from": "Eve\r\nBcc: v@x.test <e@example.com>"}), "from",
     INVALID),
    ("from two senders", dict(**{"from": ["a@example.com", "b@example.com"]}), "from", INVALID),
    ("to missing", dict(to=DEL), "to", MISSING),
    ("to empty list", dict(to=[]), "to", MISSING),
    ("to a number", dict(to=5), "to", INVALID),
    ("to list with a number", dict(to=["a@example.org", 7]), "to[1]", INVALID),
    ("to[2] not an address", dict(to=["a@example.org", "b@example.org", "nope"]), "to[2]",
     INVALID),
    ("to LF injection", dict(to="a@example.org\nBcc: x@example.net"), "to", INVALID),
    ("to comma list in one string", dict(to="a@example.org, b@example.org"), "to", INVALID),
    ("to non-ASCII local part", dict(to="jöhn@example.org"), "to", INVALID),
    ("cc NUL in name", dict(cc=["Carl\x00 <c@example.org>"]), "cc[0]", INVALID),
    ("bcc not an address", dict(bcc="@example.org"), "bcc", INVALID),
    ("reply_to an object", dict(reply_to={"email": "a@example.org"}), "reply_to", INVALID),
    ("too many recipients", dict(to=[f"t{i}@example.org" for i in range(30)],
                                 cc=[f"c{i}@example.org" for i in range(21)]), "to", INVALID),
    ("too many for a low cap", dict(to=["a@example.org"], bcc=["b@example.org"]), "to", INVALID,
     {"max_recipients": 1}),
    ("subject missing", dict(subject=DEL), "subject", MISSING),
    ("subject a number", dict(subject=1), "subject", INVALID),
    ("subject CRLF injection", dict(subject="Hi\r\nBcc: victim@example.net"), "subject", INVALID),
    ("subject bare CR", dict(subject="Hi\rthere"), "subject", INVALID),
    ("subject NUL", dict(subject="Hi\x00"), "subject", INVALID),
    ("subject too long", dict(subject="é" * 500), "subject", INVALID),
    ("subject lone surrogate", dict(subject="a\ud800"), "subject", INVALID),
    ("no html nor text", dict(text=DEL), "html", MISSING),
    ("html a number", dict(html=3), "html", INVALID),
    ("text a list", dict(text=["a"]), "text", INVALID),
    ("html lone surrogate", dict(html="<p>\udfff</p>"), "html", INVALID),
    ("template and a body", dict(template={"id": "t"}), "text", INVALID),
    ("template not an object", dict(template="t", text=None), "template", INVALID),
    ("template without id", dict(template={"variables": {}}, text=None), "template.id",
     "missing_required_field"),
    ("template bad id", dict(template={"id": "a b"}, text=None), "template.id", INVALID),
    ("template variables", dict(template={"id": "t", "variables": [1]}, text=None),
     "template.variables", INVALID),
    ("template version", dict(template={"id": "t", "version": 0}, text=None),
     "template.version", INVALID),
    ("stream unknown", dict(stream="marketing"), "stream", INVALID),
    ("topic without broadcast", dict(topic="news"), "topic", INVALID),
    ("topic bad", dict(stream="broadcast", topic="a b"), "topic", INVALID),
    ("headers a list", dict(headers=[["X-A", "1"]]), "headers", INVALID),
    ("header value a number", dict(headers={"X-A": 1}), "headers.X-A", INVALID),
    ("header value CRLF", dict(headers={"X-A": "1\r\nBcc: v@example.net"}), "headers.X-A",
     INVALID),
    ("header value LF", dict(headers={"X-A": "1\nX-B: 2"}), "headers.X-A", INVALID),
    ("header value too long", dict(headers={"X-A": "a" * 999}), "headers.X-A", INVALID),
    ("header name with space", dict(headers={"X A": "1"}), "headers", INVALID),
    ("header name with colon", dict(headers={"X-A:": "1"}), "headers", INVALID),
    ("header name with CRLF", dict(headers={"X-A\r\nBcc": "1"}), "headers", INVALID),
    ("header name too long", dict(headers={"X-" + "a" * 75: "1"}), "headers", INVALID),
    ("header name empty", dict(headers={"": "1"}), "headers", INVALID),
    # a trailing LF passes a "^…$" pattern (re's $ matches before a final \n)
    ("header name trailing LF", dict(headers={"X-A\n": "1"}), "headers", INVALID),
    ("tag value trailing LF", dict(tags=[{"name": "a", "value": "b\n"}]), "tags[0].value",
     INVALID),
    ("tag name trailing LF", dict(tags=[{"name": "a\n"}]), "tags[0].name", INVALID),
    ("content_type trailing LF", dict(attachments=[{"content": B64,
                                                    "content_type": "text/plain\n"}]),
     "attachments[0].content_type", INVALID),
    ("content_id trailing LF", dict(attachments=[{"content": B64, "content_id": "a\n"}]),
     "attachments[0].content_id", INVALID),
    *[(f"owned header {h}", dict(headers={h: "x"}), f"headers.{h}", INVALID)
      for h in ("Subject", "from", "BCC", "Reply-To", "Date", "Message-ID", "MIME-Version",
                "Content-Type", "content-transfer-encoding", "Received", "DKIM-Signature",
                "Return-Path", "Authentication-Results", "ARC-Seal", "X-Mta-Queue-ID",
                "Idempotency-Key", "Scheduled-At")],
    ("tags not a list", dict(tags={"name": "a"}), "tags", INVALID),
    ("tag not an object", dict(tags=["a"]), "tags[0]", INVALID),
    ("tag without name", dict(tags=[{"value": "a"}]), "tags[0].name", MISSING),
    ("tag name with space", dict(tags=[{"name": "a b", "value": "c"}]), "tags[0].name", INVALID),
    ("tag name empty", dict(tags=[{"name": "", "value": "c"}]), "tags[0].name", INVALID),
    ("tag name too long", dict(tags=[{"name": "a" * 257}]), "tags[0].name", INVALID),
    ("tag value CRLF", dict(tags=[{"name": "a"}, {"name": "b", "value": "x\r\ny"}]),
     "tags[1].value", INVALID),
    ("tag value a number", dict(tags=[{"name": "a", "value": 1}]), "tags[0].value", INVALID),
    ("tag value non-ASCII", dict(tags=[{"name": "a", "value": "é"}]), "tags[0].value", INVALID),
    ("too many tags", dict(tags=[{"name": f"t{i}"} for i in range(51)]), "tags", INVALID),
    ("attachments an object", dict(attachments=OK_ATT), "attachments", INVALID),
    ("attachment a string", dict(attachments=[B64]), "attachments[0]", INVALID),
    ("attachment without content or path", dict(attachments=[{"filename": "a"}]),
     "attachments[0]", ATTACH),
    ("attachment with content and path",
     dict(attachments=[{"content": B64, "path": "https://files.example.com/a"}]),
     "attachments[0]", ATTACH, {"fetch_hosts": frozenset({"files.example.com"})}),
    ("bad base64", dict(attachments=[OK_ATT, {"filename": "b", "content": "not base64!"}]),
     "attachments[1].content", ATTACH),
    ("base64 bad length", dict(attachments=[{"content": "QUJDR"}]), "attachments[0].content",
     ATTACH),
    ("base64 non-ASCII", dict(attachments=[{"content": "QUJDé"}]), "attachments[0].content",
     ATTACH),
    ("byte value 256", dict(attachments=[{"content": [1, 2, 256]}]), "attachments[0].content",
     ATTACH),
    ("byte value negative", dict(attachments=[{"content": [-1]}]), "attachments[0].content",
     ATTACH),
    ("byte list with a string", dict(attachments=[{"content": [1, "2"]}]),
     "attachments[0].content", ATTACH),
    ("byte list with a float", dict(attachments=[{"content": [1.5]}]),
     "attachments[0].content", ATTACH),
    ("content a number", dict(attachments=[{"content": 12}]), "attachments[0].content", ATTACH),
    ("Buffer without data list", dict(attachments=[{"content": {"type": "Buffer", "data": "x"}}]),
     "attachments[0].content.data", ATTACH),
    ("filename CRLF", dict(attachments=[OK_ATT, {"filename": "a\r\n.pdf", "content": B64}]),
     "attachments[1].filename", INVALID),
    ("filename a number", dict(attachments=[{"filename": 1, "content": B64}]),
     "attachments[0].filename", INVALID),
    ("filename too long", dict(attachments=[{"filename": "a" * 256, "content": B64}]),
     "attachments[0].filename", INVALID),
    ("content_type with parameters",
     dict(attachments=[{"content": B64, "content_type": "text/plain; charset=utf-8"}]),
     "attachments[0].content_type", INVALID),
    ("content_type multipart", dict(attachments=[{"content": B64,
                                                  "content_type": "multipart/mixed"}]),
     "attachments[0].content_type", INVALID),
    ("content_type CRLF", dict(attachments=[{"content": B64,
                                             "content_type": "text/plain\r\nX: y"}]),
     "attachments[0].content_type", INVALID),
    ("content_id with brackets", dict(attachments=[{"content": B64, "content_id": "<a>"}]),
     "attachments[0].content_id", INVALID),
    ("content_id with CRLF", dict(attachments=[{"content": B64, "content_id": "a\r\nb"}]),
     "attachments[0].content_id", INVALID),
    ("two different content ids",
     dict(attachments=[{"content": B64, "content_id": "a", "inline_content_id": "b"}]),
     "attachments[0].inline_content_id", INVALID),
    ("path not allowed", dict(attachments=[{"path": "https://evil.example/x.pdf"}]),
     "attachments[0].path", ATTACH),
    ("path to the metadata service", dict(attachments=[{"path": "http://169.254.169.254/"}]),
     "attachments[0].path", ATTACH),
    ("path not http", dict(attachments=[{"path": "file:///etc/passwd"}]),
     "attachments[0].path", ATTACH, {"fetch_hosts": frozenset({""})}),
    ("path ftp on an allowed host", dict(attachments=[{"path": "ftp://files.example.com/a"}]),
     "attachments[0].path", ATTACH, {"fetch_hosts": frozenset({"files.example.com"})}),
    ("path a number", dict(attachments=[{"path": 1}]), "attachments[0].path", ATTACH),
    ("attachments too large together",
     dict(attachments=[OK_ATT, OK_ATT]), "attachments[1].content", INVALID,
     {"max_attachment_bytes": len(BLOB) + 10}),
    ("too many attachments", dict(attachments=[OK_ATT] * 101), "attachments", INVALID),
    ("scheduled natural language", dict(scheduled_at="in 1 min"), "scheduled_at", INVALID),
    ("scheduled naive", dict(scheduled_at="2027-01-20T10:00:00"), "scheduled_at", INVALID),
    ("scheduled date only", dict(scheduled_at="2027-01-20"), "scheduled_at", INVALID),
    ("scheduled a number", dict(scheduled_at=1_800_000_100), "scheduled_at", INVALID),
    ("scheduled garbage", dict(scheduled_at="2027-13-45T99:00:00Z"), "scheduled_at", INVALID),
    ("scheduled over 30 days", dict(scheduled_at="2027-02-15T08:00:01Z"), "scheduled_at",
     INVALID),
]


def _row(row):
    name, changes, field, error = row[:4]
    kwargs = row[4] if len(row) > 4 else {}
    return pytest.param(changes, field, error, kwargs, id=name)


@pytest.mark.parametrize("changes,field,error,kwargs", [_row(r) for r in BAD])
def test_bad(changes, field, error, kwargs):
    doc = body(**changes) if isinstance(changes, dict) else changes
    with pytest.raises(ValidationError) as info:
        parse(doc, **kwargs)
    exc = info.value
    assert (exc.field, exc.name) == (field, error), exc.message
    assert isinstance(exc, ValueError)
    assert exc.message == (f"{field}: {exc.reason}" if field else exc.reason) == str(exc)
    assert "\r" not in exc.message and "\n" not in exc.message and "\x00" not in exc.message


def test_the_bad_table_is_broad():
    assert len(BAD) >= 40


def test_messages_say_what_is_wrong():
    def message(**changes):
        with pytest.raises(ValidationError) as info:
            parse(body(**changes))
        return info.value.message
    assert message(to=["a@example.org", "b@example.org", "nope"]) == \
        "to[2]: not an email address: 'nope'"
    assert message(attachments=[{"content": "@@"}]) == "attachments[0].content: not valid base64"
    assert "time zone" in message(scheduled_at="2027-01-20T10:00:00")
    assert "30 days" in message(scheduled_at="2027-03-01T00:00:00Z")
    assert "not fetched" in message(attachments=[{"path": "https://x.example/a"}])
    assert message(subject=5) == "subject: expected a string, got a number"


def test_scheduled_at_alone():
    assert parse_scheduled_at("2027-01-15T09:00:00+01:00", NOW) == NOW      # exactly now
    assert parse_scheduled_at("2000-01-01T00:00:00Z", NOW) == NOW           # past → now
    assert parse_scheduled_at("2027-02-14T08:00:00Z", NOW) == NOW + 30 * 86400
    with pytest.raises(ValidationError) as info:
        parse_scheduled_at(None, NOW)
    assert info.value.field == "scheduled_at"


# ---- batches ------------------------------------------------------------------------------

def test_batch():
    reqs = parse_batch([body(to=f"u{i}@example.org", tags=[{"name": "n", "value": str(i)}])
                        for i in range(3)], now=NOW)
    assert [r.composition.to[0].address for r in reqs] == [f"u{i}@example.org" for i in range(3)]
    assert [r.tags for r in reqs] == [(("n", str(i)),) for i in range(3)]
    assert len(parse_batch([body()] * BATCH_MAX, now=NOW)) == BATCH_MAX


@pytest.mark.parametrize("doc,field", [
    (body(), ""),
    ([], ""),
    ([body()] * (BATCH_MAX + 1), ""),
    ([body(), body(), body(), body(to="bad")], "[3].to"),
    ([body(), "x"], "[1]"),
    ([body(subject=DEL)], "[0].subject"),
    ([body(), body(attachments=[OK_ATT])], "[1].attachments"),
    ([body(scheduled_at="2027-01-20T10:00:00Z")], "[0].scheduled_at"),
    ([body(headers={"X-A": "a\r\nb"})], "[0].headers.X-A"),
])
def test_batch_errors_name_the_item(doc, field):
    with pytest.raises(ValidationError) as info:
        parse_batch(doc, now=NOW)
    assert info.value.field == field
    assert info.value.message.startswith(f"{field}: " if field else "a batch")


# ---- parse → compose ------------------------------------------------------------------------

def test_parsed_request_composes():
    doc = body(to=["Ann <ann@example.org>"], cc="c@example.org", bcc=["hidden@example.net"],
               html='<p>Hi <img src="cid:logo"></p>', text=DEL, subject="Grüße",
               headers={"X-Entity-Ref-ID": "42"},
               attachments=[{"filename": "data.bin", "content": list(BLOB)},
                            {"filename": "logo.png", "content": B64, "content_id": "logo"}])
    c = parse(doc).composition
    data = compose(c, message_id="q1@mta.example.com", date=NOW)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Bcc"] is None and b"hidden" not in data
    assert msg["Subject"] == "Grüße" and msg["X-Entity-Ref-ID"] == "42"
    assert envelope_recipients(c) == ("ann@example.org", "c@example.org", "hidden@example.net")
    parts = {p.get_filename(): p.get_payload(decode=True) for p in msg.walk()
             if p.get_filename()}
    assert hashlib.sha256(parts["data.bin"]).digest() == hashlib.sha256(BLOB).digest()
    assert hashlib.sha256(parts["logo.png"]).digest() == hashlib.sha256(BLOB).digest()


# ---- what the official SDKs send --------------------------------------------------------------

class _Capture(BaseHTTPRequestHandler):
    bodies: list[tuple[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((self.path, json.loads(raw)))
        doc = json.loads(raw)
        answer = {"data": [{"id": str(i)} for i in range(len(doc))]} \
            if isinstance(doc, list) else {"id": "captured"}
        out = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def capture():
    _Capture.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Capture.bodies
    server.shutdown()
    server.server_close()


def test_python_sdk_bodies_parse(capture, monkeypatch):
    resend = pytest.importorskip("resend")
    url, bodies = capture
    monkeypatch.setattr(resend, "api_url", url)
    monkeypatch.setattr(resend, "api_key", "re_test_capture")
    resend.Emails.send({
        "from": "Acme <news@example.com>", "to": ["ann@example.org"], "cc": "c@example.org",
        "bcc": ["b@example.org"], "reply_to": "help@example.com", "subject": "Hi",
        "html": "<p>Hi</p>", "headers": {"X-Entity-Ref-ID": "1"},
        "tags": [{"name": "category", "value": "welcome"}],
        "attachments": [{"filename": "data.bin", "content": list(BLOB)},
                        {"filename": "logo.png", "content": B64, "content_id": "logo"}],
        "scheduled_at": "2027-01-20T10:00:00Z"})
    resend.Batch.send([{"from": "news@example.com", "to": f"u{i}@example.org",
                        "subject": "b", "text": "t"} for i in range(3)])
    (path1, single), (path2, batch) = bodies
    assert (path1, path2) == ("/emails", "/emails/batch")
    req = parse(single)
    atts = req.composition.attachments
    assert [hashlib.sha256(a.content).digest() for a in atts] == [hashlib.sha256(BLOB).digest()] * 2
    assert atts[1].content_id == "logo"
    assert req.tags == (("category", "welcome"),) and req.scheduled_at == 1_800_439_200.0
    assert [r.composition.to[0].address for r in parse_batch(batch, now=NOW)] == \
        [f"u{i}@example.org" for i in range(3)]


NODE_SDK = Path(__file__).parent / "sdk" / "node" / "node_modules" / "resend" / "dist" / "index.mjs"
NODE_SCRIPT = """
import { Resend } from %s;
const resend = new Resend("re_test_capture", { baseUrl: process.argv[1] });
const bytes = Buffer.from(process.argv[2], "base64");
const { error } = await resend.emails.send({
  from: "Acme <news@example.com>", to: ["ann@example.org"], subject: "Hi", html: "<p>x</p>",
  attachments: [{ filename: "buf.bin", content: bytes },
                { filename: "u8.bin", content: new Uint8Array(bytes) },
                { filename: "b64.bin", content: process.argv[2], contentId: "logo" }],
});
if (error) { console.error(JSON.stringify(error)); process.exit(1); }
// what JSON.stringify makes of a Buffer (older SDKs sent it so)
process.stdout.write(JSON.stringify({ content: bytes }));
"""


@pytest.mark.skipif(shutil.which("node") is None or not NODE_SDK.exists(),
                    reason="node or the Resend Node SDK (tests/sdk/node) is not installed")
def test_node_sdk_bodies_parse(capture):
    url, bodies = capture
    proc = subprocess.run(["node", "--input-type=module", "-e",
                           NODE_SCRIPT % json.dumps(NODE_SDK.as_uri()), url, B64],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [(path, doc)] = bodies
    atts = parse(doc).composition.attachments
    assert [a.filename for a in atts] == ["buf.bin", "u8.bin", "b64.bin"]
    assert all(hashlib.sha256(a.content).digest() == hashlib.sha256(BLOB).digest()
               for a in atts)
    assert atts[2].content_id == "logo"
    legacy = json.loads(proc.stdout)["content"]
    assert legacy["type"] == "Buffer"
    req = parse(body(attachments=[{"filename": "old.bin", "content": legacy}]))
    assert req.composition.attachments[0].content == BLOB


def test_a_template_send_needs_neither_body_nor_from_nor_subject():
    req = parse({"to": "ann@example.org", "stream": "broadcast", "topic": "news",
                 "template": {"id": "welcome", "variables": {"NAME": "Ann"}, "version": 2}})
    opts = req.options
    assert (opts.stream, opts.topic) == ("broadcast", "news")
    assert opts.template is not None
    assert (opts.template.ref, opts.template.variables, opts.template.version) == \
        ("welcome", {"NAME": "Ann"}, 2)
    c = req.composition
    assert (c.sender, c.subject, c.html, c.text) == ("", "", None, None)


def test_without_a_template_from_and_subject_stay_required():
    with pytest.raises(ValidationError) as info:
        parse({"to": "ann@example.org", "subject": "x", "text": "y"})
    assert info.value.field == "from"
    with pytest.raises(ValidationError) as info:
        parse({"from": "a@example.com", "to": "ann@example.org", "text": "y"})
    assert info.value.field == "subject"
