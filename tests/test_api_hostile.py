"""The sending API under bad input (issue 13): a table of malformed requests
sent over real HTTP (and raw TCP) to a real daemon — wrong types, missing
fields, bodies over `[api] max_request_size`, bad base64, CR/LF/NUL in every
header-bound field, bad dates, unknown routes, wrong methods, non-JSON,
nesting bombs, NaN/Infinity, huge numbers, non-UTF-8 bytes, a 10 MB
Authorization header, garbage tokens, bodies on GET, bytes that are not
HTTP. Each gets the documented 4xx in Resend's error shape naming the field
(bytes that are not HTTP get aiohttp's own text/plain 400: no app sees them);
nothing is queued (the spool index's messages table stays empty); no 5xx;
the log has no traceback and no raw control byte; and a good send works
after. Then a sweep driven by /openapi.json: every route, every documented
JSON body field given a wrong type → 4xx naming the field, never 5xx. The
table and the sweep run twice: the daemon in this process, and as `mta
serve` runs it, receiver processes building the messages (their stderr is
checked too)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass, field as dc_field
from typing import Any

import jsonschema
import pytest

from tests.test_api_openapi import OK_SEND, ApiWorld, Doc, api_world

MAX_REQUEST = 65536
DROP = object()                     # a field left out of OK_SEND
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def send(**changes: Any) -> dict[str, Any]:
    out = {**OK_SEND, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


def att(**kw: Any) -> dict[str, Any]:
    item = {"filename": "a.txt", "content": "aGVsbG8=", **kw}
    return send(attachments=[{k: v for k, v in item.items() if v is not DROP}])


@dataclass
class Case:
    id: str
    body: Any = None                 # JSON to send (None: no body, unless raw)
    status: int = 422
    name: str | None = "validation_error"
    field: str | None = None         # must appear in the message
    method: str = "POST"
    path: str = "/emails"
    raw: bytes | None = None         # a raw body instead of JSON
    headers: dict[str, str] = dc_field(default_factory=dict)
    key: str | None = "default"


V, M, A = "validation_error", "missing_required_field", "invalid_attachment"
CASES = [
    # the body is not an email object
    Case("body-array", [], field="JSON object"),
    Case("body-string", "hello", field="JSON object"),
    Case("body-number", 42, field="JSON object"),
    Case("body-null", raw=b"null", field="JSON object"),
    Case("body-empty", raw=b"", name=M, field="from"),
    Case("not-json", raw=b"{not json", field="body"),
    Case("json-trailing-garbage", raw=b'{"from": "a@acme.test"} x', field="body"),
    Case("nesting-bomb-arrays", raw=b"[" * 32_000 + b"]" * 32_000, field="body"),
    Case("nesting-bomb-objects", raw=b'{"a":' * 10_000 + b"1" + b"}" * 10_000, field="body"),
    Case("nesting-bomb-over-limit", raw=b"[" * 200_000 + b"]" * 200_000, status=413,
         name="payload_too_large"),
    Case("nan", raw=b'{"from": NaN}', field="body"),
    Case("infinity", raw=b'{"subject": Infinity}', field="body"),
    Case("minus-infinity", raw=b'{"subject": -Infinity}', field="body"),
    Case("huge-integer", raw=b'{"subject": 1' + b"0" * 5000 + b"}", field="body"),
    Case("huge-float-to", raw=json.dumps(OK_SEND)[:-1].encode() + b', "to": 1e999}',
         field="to"),
    Case("non-utf8-bytes", raw=b'{"subject": "\xff\xfe\xfd"}', field="body"),
    Case("latin1-body", raw=json.dumps(send(subject="café"), ensure_ascii=False)
         .encode("latin-1"), field="body"),
    Case("lone-surrogate-subject", raw=json.dumps(OK_SEND)[:-1].encode()
         + b', "subject": "\\ud800"}', field="subject"),
    Case("lone-surrogate-html", raw=json.dumps(OK_SEND)[:-1].encode()
         + b', "html": "<p>\\udfff</p>"}', field="html"),
    # missing fields
    Case("no-from", send(**{"from": DROP}), name=M, field="from"),
    Case("no-to", send(to=DROP), name=M, field="to"),
    Case("to-empty-list", send(to=[]), name=M, field="to"),
    Case("no-subject", send(subject=DROP), name=M, field="subject"),
    Case("no-body", send(text=DROP), name=M, field="html"),
    Case("null-from", send(**{"from": None}), name=M, field="from"),
    # wrong types
    Case("from-number", send(**{"from": 123}), field="from"),
    Case("from-list-of-two", send(**{"from": ["a@acme.test", "b@acme.test"]}), field="from"),
    Case("to-object", send(to={"a": 1}), field="to"),
    Case("to-list-of-number", send(to=[1]), field="to[0]"),
    Case("cc-bool", send(cc=True), field="cc"),
    Case("bcc-nested-list", send(bcc=[["x@rcpt.test"]]), field="bcc[0]"),
    Case("reply-to-number", send(reply_to=7), field="reply_to"),
    Case("subject-list", send(subject=[]), field="subject"),
    Case("html-object", send(html={}), field="html"),
    Case("text-number", send(text=5), field="text"),
    Case("headers-list", send(headers=[]), field="headers"),
    Case("header-value-number", send(headers={"X-A": 1}), field="headers.X-A"),
    Case("tags-object", send(tags={}), field="tags"),
    Case("tag-number", send(tags=[1]), field="tags[0]"),
    Case("tag-no-name", send(tags=[{"value": "x"}]), name=M, field="tags[0].name"),
    Case("tag-name-space", send(tags=[{"name": "a b"}]), field="tags[0].name"),
    Case("tag-value-number", send(tags=[{"name": "a", "value": 1}]), field="tags[0].value"),
    Case("attachments-object", send(attachments={}), field="attachments"),
    Case("attachment-string", send(attachments=["x"]), field="attachments[0]"),
    Case("template", send(template={"id": "t"}), field="template"),
    # bad addresses and sizes
    Case("from-not-address", send(**{"from": "nobody"}), field="from"),
    Case("to-two-ats", send(to="a@b@rcpt.test"), field="to"),
    Case("to-non-ascii-local", send(to="zoë@rcpt.test"), field="to"),
    Case("too-many-recipients", send(to=[f"r{i}@rcpt.test" for i in range(51)]), field="to"),
    Case("subject-too-long", send(subject="x" * 999), field="subject"),
    Case("header-bcc-refused", send(headers={"Bcc": "x@evil.test"}), field="headers.Bcc"),
    Case("header-content-type-refused", send(headers={"Content-Type": "text/html"}),
         field="headers.Content-Type"),
    Case("header-name-space", send(headers={"X A": "v"}), field="headers"),
    Case("header-name-colon", send(headers={"X:A": "v"}), field="headers"),
    # attachments
    Case("attachment-no-content", att(content=DROP), name=A, field="attachments[0]"),
    Case("attachment-content-number", att(content=12), name=A,
         field="attachments[0].content"),
    Case("attachment-bad-base64", att(content="!!!not*base64"), name=A,
         field="attachments[0].content"),
    Case("attachment-bad-padding", att(content="abc"), name=A, field="attachments[0].content"),
    Case("attachment-byte-256", att(content=[1, 256]), name=A, field="attachments[0].content"),
    Case("attachment-byte-negative", att(content=[-1]), name=A, field="attachments[0].content"),
    Case("attachment-byte-string", att(content=["a"]), name=A, field="attachments[0].content"),
    Case("attachment-byte-huge", att(content=[10 ** 30]), name=A,
         field="attachments[0].content"),
    Case("attachment-remote-path", att(content=DROP, path="https://evil.test/x.pdf"), name=A,
         field="attachments[0].path"),
    Case("attachment-content-and-path", att(path="https://evil.test/x.pdf"), name=A,
         field="attachments[0]"),
    Case("attachment-type-params", att(content_type="text/html; charset=x"),
         field="attachments[0].content_type"),
    Case("attachment-type-multipart", att(content_type="multipart/mixed"),
         field="attachments[0].content_type"),
    Case("attachment-content-id-angle", att(content_id="<a b>"),
         field="attachments[0].content_id"),
    Case("attachment-filename-number", att(filename=3), field="attachments[0].filename"),
    # header injection: CR, LF, NUL and friends in every header-bound field
    Case("subject-crlf", send(subject="hi\r\nBcc: x@evil.test"), field="subject"),
    Case("subject-lf", send(subject="hi\nBcc: x@evil.test"), field="subject"),
    Case("subject-cr", send(subject="hi\rBcc: x@evil.test"), field="subject"),
    Case("subject-nul", send(subject="hi\x00there"), field="subject"),
    Case("subject-del", send(subject="hi\x7fthere"), field="subject"),
    Case("from-name-crlf", send(**{"from": "Evil\r\nBcc: x@evil.test <a@acme.test>"}),
         field="from"),
    Case("from-name-quoted-lf", send(**{"from": '"Evil\nX-Y: z" <a@acme.test>'}),
         field="from"),
    Case("to-name-lf", send(to="Name\nBcc: x@evil.test <ok@rcpt.test>"), field="to"),
    Case("to-list-name-crlf", send(to=["ok@rcpt.test", "N\r\n <ok2@rcpt.test>"]),
         field="to[1]"),
    Case("cc-nul", send(cc="ok\x00@rcpt.test"), field="cc"),
    Case("reply-to-cr", send(reply_to="R\r <r@acme.test>"), field="reply_to"),
    Case("header-value-crlf", send(headers={"X-A": "v\r\nBcc: x@evil.test"}),
         field="headers.X-A"),
    Case("header-value-nul", send(headers={"X-A": "v\x00w"}), field="headers.X-A"),
    Case("header-name-crlf", send(headers={"X-A\r\nBcc": "v"}), field="headers"),
    Case("header-name-nul", send(headers={"X-\x00": "v"}), field="headers"),
    Case("filename-crlf", att(filename="a.txt\r\nContent-Type: text/html"),
         field="attachments[0].filename"),
    Case("filename-nul", att(filename="a\x00.txt"), field="attachments[0].filename"),
    Case("content-id-lf", att(content_id="a\nb"), field="attachments[0].content_id"),
    Case("tag-value-crlf", send(tags=[{"name": "a", "value": "x\r\ny"}]),
         field="tags[0].value"),
    Case("tag-name-lf", send(tags=[{"name": "a\nb", "value": "x"}]), field="tags[0].name"),
    # dates
    Case("scheduled-natural", send(scheduled_at="tomorrow at 9"), field="scheduled_at"),
    Case("scheduled-naive", send(scheduled_at="2030-01-01T00:00:00"), field="scheduled_at"),
    Case("scheduled-number", send(scheduled_at=1893456000), field="scheduled_at"),
    Case("scheduled-far", send(scheduled_at="2099-01-01T00:00:00Z"), field="scheduled_at"),
    Case("scheduled-feb-30", send(scheduled_at="2030-02-30T00:00:00Z"), field="scheduled_at"),
    Case("scheduled-year-9999", send(scheduled_at="9999-12-31T23:59:59-23:59"),
         field="scheduled_at"),
    Case("scheduled-crlf", send(scheduled_at="2030-01-01T00:00:00Z\r\nX: y"),
         field="scheduled_at"),
    # batch
    Case("batch-object", send(), path="/emails/batch", field="array"),
    Case("batch-empty", [], path="/emails/batch", field="1 to 100"),
    Case("batch-101", [OK_SEND] * 101, path="/emails/batch", field="1 to 100"),
    Case("batch-item-crlf", [OK_SEND, send(subject="a\r\nb")], path="/emails/batch",
         field="[1].subject"),
    Case("batch-item-attachments", [att()], path="/emails/batch", field="[0].attachments"),
    Case("batch-item-missing-to", [send(to=DROP)], path="/emails/batch", name=M,
         field="[0].to"),
    # Idempotency-Key
    Case("idempotency-key-long", send(), headers={"Idempotency-Key": "k" * 257},
         field="Idempotency-Key"),
    Case("idempotency-key-space", send(), headers={"Idempotency-Key": "a b"},
         field="Idempotency-Key"),
    # too big
    Case("body-over-limit", send(text="x" * (MAX_REQUEST + 1)), status=413,
         name="payload_too_large", field=str(MAX_REQUEST)),
    Case("batch-over-limit", [send(text="x" * 40_000)] * 2, path="/emails/batch", status=413,
         name="payload_too_large"),
    # keys and auth
    Case("no-key", send(), key=None, status=401, name="missing_api_key"),
    Case("key-empty", send(), key="", status=401, name="invalid_api_key"),
    Case("key-garbage", send(), key="not-a-key", status=401, name="invalid_api_key"),
    Case("key-unknown", send(), key="mta_live_aaaaaaaaaaaa_" + "x" * 43, status=401,
         name="invalid_api_key"),
    Case("key-non-ascii", send(), key="mta_live_é", status=401, name="invalid_api_key"),
    Case("key-basic-scheme", send(), key=None, headers={"Authorization": "Basic YTpi"},
         status=401, name="invalid_api_key"),
    Case("key-6000-chars", send(), key="x" * 6000, status=401, name="invalid_api_key"),
    # routes and methods
    Case("unknown-route", None, method="GET", path="/nowhere", status=404, name="not_found"),
    Case("unknown-route-no-key", None, method="GET", path="/nowhere", key=None, status=401,
         name="missing_api_key"),
    Case("put-emails", send(), method="PUT", path="/emails", status=405,
         name="method_not_allowed"),
    Case("delete-batch", None, method="DELETE", path="/emails/batch", status=405,
         name="method_not_allowed"),
    Case("get-cancel", None, method="GET", path="/emails/AAAA/cancel", status=405,
         name="method_not_allowed"),
    Case("email-id-bad-chars", None, method="GET", path="/emails/ab-cd", status=404,
         name="not_found"),
    Case("email-id-too-long", None, method="GET", path="/emails/" + "A" * 65, status=404,
         name="not_found"),
    Case("email-id-nul", None, method="GET", path="/emails/%00", status=404,
         name="not_found"),
    Case("api-key-id-bad", None, method="DELETE", path="/api-keys/UPPER", status=404,
         name="not_found"),
    Case("list-limit-zero", None, method="GET", path="/emails?limit=0", field="limit"),
    Case("list-limit-text", None, method="GET", path="/emails?limit=ten", field="limit"),
    Case("list-limit-huge", None, method="GET", path="/emails?limit=" + "9" * 5000,
         field="limit"),
    Case("list-after-bad", None, method="GET", path="/emails?after=%0d%0a", field="after"),
    Case("update-no-date", {}, method="PATCH", path="/emails/AAAA", name=M,
         field="scheduled_at"),
    Case("update-bad-date", {"scheduled_at": "soon"}, method="PATCH", path="/emails/AAAA",
         field="scheduled_at"),
    Case("update-body-array", [1], method="PATCH", path="/emails/AAAA", field="object"),
    # api keys
    Case("key-create-no-name", {}, path="/api-keys", field="name"),
    Case("key-create-name-lf", {"name": "a\nb"}, path="/api-keys", field="name"),
    Case("key-create-permission", {"name": "k", "permission": "root"}, path="/api-keys",
         field="permission"),
    Case("key-create-rate-text", {"name": "k", "rate_limit": "fast"}, path="/api-keys",
         field="rate_limit"),
    Case("key-create-domains-number", {"name": "k", "domains": [1]}, path="/api-keys",
         field="domains"),
    Case("key-create-domain-bad", {"name": "k", "domain_id": "not a domain"},
         path="/api-keys", field="domain"),
    # resources
    Case("domain-name-number", {"name": 5}, path="/domains", field="name"),
    Case("domain-name-bad", {"name": "not a domain"}, path="/domains", field="name"),
    Case("domain-name-crlf", {"name": "a.test\r\nx"}, path="/domains", field="name"),
    Case("domain-bad-query", None, method="GET", path="/domains?limit=-1", field="limit"),
    Case("domain-limit-huge", None, method="GET", path="/domains?limit=" + "9" * 5000,
         field="limit"),
    Case("webhook-limit-huge", None, method="GET", path="/webhooks?limit=" + "9" * 5000,
         field="limit"),
    Case("suppression-limit-huge", None, method="GET",
         path="/suppressions?limit=" + "9" * 5000, field="limit"),
    Case("domain-id-bad", None, method="GET", path="/domains/-bad-", status=404,
         name="not_found"),
    Case("suppression-bad-email", {"email": "nobody"}, path="/suppressions", field="email"),
    Case("suppression-bad-reason", {"email": "a@rcpt.test", "reason": "because"},
         path="/suppressions", field="reason"),
    Case("suppression-bad-origin", None, method="GET", path="/suppressions?origin=x",
         field="origin"),
    Case("webhook-ftp", {"endpoint": "ftp://x.test/", "events": ["*"]}, path="/webhooks",
         field="endpoint"),
    Case("webhook-no-events", {"endpoint": "https://x.test/"}, path="/webhooks", name=M,
         field="events"),
    Case("webhook-unknown-event", {"endpoint": "https://x.test/", "events": ["nope"]},
         path="/webhooks", field="events"),
    Case("webhook-endpoint-crlf", {"endpoint": "https://x.test/\r\nX: y", "events": ["*"]},
         path="/webhooks", field="endpoint"),
    Case("webhook-name-bad", {"endpoint": "https://x.test/", "events": ["*"], "name": "a b"},
         path="/webhooks", field="name"),
]


def template_of(doc: Doc, method: str, path: str) -> str | None:
    """The documented path template `path` falls under, None if none."""
    path = path.split("?")[0]
    hits = []
    for template, ops in doc.doc["paths"].items():
        pattern = "^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            hits.append(template)
    return min(hits, key=lambda t: t.count("{")) if hits else None


async def run_case(w: ApiWorld, doc: Doc, case: Case) -> str | None:
    """What is wrong with the answer to `case`, None when it is right."""
    kw: dict[str, Any] = {}
    if case.raw is not None:
        kw["data"], kw["headers"] = case.raw, {"Content-Type": "application/json"}
    elif case.body is not None or case.method in ("POST", "PATCH"):
        kw["json"] = case.body
    kw["headers"] = {**kw.get("headers", {}), **case.headers}
    status, body, _ = await w.http(case.method, case.path, key=case.key, **kw)
    if status != case.status:
        return f"status {status}, not {case.status}: {body!r:.300}"
    if not isinstance(body, dict):
        return f"not JSON: {body!r:.200}"
    jsonschema.validate(body, doc.schema({"$ref": "#/components/schemas/Error"}))
    if body["statusCode"] != status or (case.name and body["name"] != case.name):
        return f"body {body}"
    if case.field and case.field not in body["message"]:
        return f"the message does not name {case.field!r}: {body['message']!r}"
    if _CONTROL.search(body["message"]):
        return f"a raw control character in the message: {body['message']!r}"
    template = template_of(doc, case.method, case.path)
    if template is not None and status != 401:
        responses = doc.operation(case.method, template)["responses"]
        if str(status) not in responses:
            return f"{status} is not documented for {case.method} {template}"
    return None


async def raw_http(w: ApiWorld, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes to the API's port and read until the server closes.
    Reading runs beside writing: the server may answer and close before all
    is written."""
    host, port = w.url.rsplit("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    got = bytearray()

    async def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                got.extend(chunk)

    task = asyncio.create_task(read())
    try:
        for i in range(0, len(data), 65536):
            writer.write(data[i:i + 65536])
            await writer.drain()
    except OSError:
        pass
    await asyncio.wait_for(task, timeout)
    writer.close()
    return bytes(got)


RAW = [
    ("tls-on-http-port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))),
    ("binary-garbage", b"\x00\xff\xfe\x01\x02\r\n\r\n"),
    ("control-in-request-line", b"GET /emails\x01 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("control-in-auth", b"GET /emails HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01a\r\n\r\n"),
    ("nul-in-header-name", b"GET /emails HTTP/1.1\r\nHost: x\r\nX-\x00: a\r\n\r\n"),
    ("bad-content-length", b"POST /emails HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
    ("content-length-and-chunked", b"POST /emails HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad-chunk-size", b"POST /emails HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nabc\r\n0\r\n\r\n"),
    ("10mb-authorization", b"GET /emails HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                           + b"A" * (10 * 1024 * 1024) + b"\r\n\r\n"),
]


@pytest.fixture
async def world(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with api_world(tmp_path, "127.0.0.162",
                         f"max_request_size = {MAX_REQUEST}\n") as w:
        async with w.running():
            yield w
    assert_clean_log(caplog)


@pytest.fixture(params=[0, 2], ids=["in-process", "receivers"])
async def any_world(request, tmp_path, caplog, capfd):
    """The daemon as tests embed it, and as `mta serve` runs it (receiver
    processes build the messages; their log goes to stderr)."""
    caplog.set_level(logging.DEBUG)
    async with api_world(tmp_path, "127.0.0.162",
                         f"max_request_size = {MAX_REQUEST}\n") as w:
        async with w.running(receivers=request.param):
            yield w
    assert_clean_log(caplog)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "level=error" not in err, err[-3000:]
    assert not [line for line in err.splitlines() if _CONTROL.search(line)], err[-3000:]


def assert_clean_log(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback, no raw control character, nothing at ERROR."""
    bad = [(r.name, r.levelname, r.getMessage()[:200]) for r in caplog.records
           if r.exc_info or _CONTROL.search(r.getMessage()) or r.levelno >= logging.ERROR]
    assert not bad, bad


async def good_send_works(w: ApiWorld, before: int) -> None:
    status, body, _ = await w.http("POST", "/emails", json=send(subject="still fine"))
    assert status == 200, body
    assert w.queued() == before + 1
    (m,) = await w.sink.wait_for(1, timeout=20)
    assert b"still fine" in m.data


async def test_the_bad_input_table(any_world):
    world = any_world
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    builds: list[str] = []
    own_served: list[Any] = []
    receivers = world.d.receivers
    if receivers is not None:            # count the requests receivers served
        real = receivers.api_serve
        assert real is not None

        async def counted(op: str, args: list[Any]) -> Any:
            builds.append(op)
            return await real(op, args)
        receivers.api_serve = counted
        own = world.d.api._own                 # the owner's own share (none expected)
        assert own is not None
        real_adopt = own.adopt

        def adopted(sock: Any) -> None:
            own_served.append(sock)
            real_adopt(sock)
        own.adopt = adopted
    doc = Doc()
    problems = {}
    for case in CASES:
        problem = await run_case(world, doc, case)
        if problem is not None:
            problems[case.id] = problem
    # the receivers served them: they asked the owner (rate leases, commits)
    # and the owner served no connection itself
    assert receivers is None or (builds.count("api_rate") >= 5 and own_served == []), \
        (len(builds), len(own_served))
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert world.queued() == 0
    assert (await world.http("GET", "/openapi.json", key=None))[0] == 200
    await good_send_works(world, 0)


async def test_bytes_that_are_not_http(world):
    for name, data in RAW:
        answer = await raw_http(world, data)
        # aiohttp answers a request it cannot parse itself (before the app):
        # 400 in text/plain, then it closes; the 10 MB header may be cut off
        # by a reset before the 400 can be read. Never a 5xx, never accepted.
        status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
        assert status == b"400" or (name == "10mb-authorization" and not answer), (name, answer)
        assert b"statusCode\": 5" not in answer
    assert world.queued() == 0
    await good_send_works(world, 0)


async def test_bodies_on_get_and_delete_are_ignored(world):
    # The Python SDK sends `{}` on every GET and DELETE; other bodies are ignored too.
    for raw in (b"{}", b"{not json", b"\xff\xfe", b"[" * 10_000, b"x" * (MAX_REQUEST * 4)):
        status, body, _ = await world.http("GET", "/emails", data=raw,
                                           headers={"Content-Type": "application/json"})
        assert status == 200 and body["object"] == "list", (raw[:20], body)
        status, body, _ = await world.http("DELETE", "/api-keys/aaaaaaaaaaaa", data=raw)
        assert status == 404 and body["name"] == "not_found"
    assert world.queued() == 0
    await good_send_works(world, 0)


# -- the sweep: every route, every documented body field, a wrong type --------------

WRONG: list[Any] = [12345, 1.5, "a string", True, {"k": 1}, [1, 2]]
PATH_IDS = {"/emails/{id}": "AAAA", "/api-keys/{id}": "aaaaaaaaaaaa",
            "/domains/{id}": "x.acme.test", "/suppressions/{id}": "a@rcpt.test",
            "/webhooks/{id}": "hook1", "/templates/{id}": "nosuch",
            "/verifications/{id}": "vrf_" + "0" * 20}


def json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object",
            list: "array"}[type(value)]


def allowed_types(doc: Doc, schema: dict[str, Any]) -> set[str]:
    schema = doc.resolve(schema)
    out: set[str] = set()
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        out |= allowed_types(doc, branch)
    kind = schema.get("type")
    out |= set(kind) if isinstance(kind, list) else {kind} if kind else set()
    for value in schema.get("enum", []) + ([schema["const"]] if "const" in schema else []):
        out.add(json_type(value))
    if "number" in out:
        out.add("integer")
    return out


def wrong_values(doc: Doc, schema: dict[str, Any]) -> list[Any]:
    ok = allowed_types(doc, schema)
    assert ok, schema
    return [v for v in WRONG if json_type(v) not in ok]


def body_fields(doc: Doc, schema: dict[str, Any], example: Any
                ) -> list[tuple[list[Any], str, dict[str, Any]]]:
    """(path into the body, the field's name as the API reports it, its
    schema) for every documented field, nested objects of arrays included."""
    schema = doc.resolve(schema)
    if schema.get("type") == "array":
        return [([0, *p], f"[0].{n}", s)
                for p, n, s in body_fields(doc, schema["items"], example[0])]
    out = []
    for name, prop in schema["properties"].items():
        out.append(([name], name, prop))
        items = doc.resolve(prop.get("items", {}))
        if prop.get("type") == "array" and "properties" in items and example.get(name):
            out += [([name, 0, inner], f"{name}[0].{inner}", s)
                    for inner, s in items["properties"].items()]
    return out


def replaced(example: Any, path: list[Any], value: Any) -> Any:
    """The example with the field at `path` set to `value` (an attachment's
    path replaces its content: one of the two, as documented)."""
    body = json.loads(json.dumps(example))
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    if path[-1] == "path":
        del target["content"]
    return body


def concrete(template: str) -> str:
    for prefix, value in PATH_IDS.items():
        if template.startswith(prefix):
            return template.replace("{id}", value)
    return template


@dataclass
class Sweep:
    """Requests to one operation; what went wrong is added to `problems`."""
    world: ApiWorld
    method: str
    template: str
    op: dict[str, Any]
    problems: list[str]
    sent: int = 0

    async def probe(self, what: str, expect_field: str | None = None, *,
                    url: str | None = None, **kw: Any) -> None:
        """4xx (200 too when expect_field is None: input that is not read)
        documented for the operation, the message naming expect_field."""
        url = url or concrete(self.template)
        status, body, _ = await self.world.http(self.method, url, **kw)
        self.sent += 1
        where = f"{self.method} {self.template} {what}"
        if not 400 <= status < 500 and not (expect_field is None and status == 200):
            self.problems.append(f"{where}: {status} {body!r:.200}")
        elif status >= 400 and str(status) not in self.op["responses"]:
            self.problems.append(f"{where}: {status} is not documented")
        elif expect_field and expect_field not in body["message"]:
            self.problems.append(f"{where}: the message does not name {expect_field}: "
                                 f"{body['message']!r}")


async def sweep_operation(doc: Doc, s: Sweep) -> None:
    schema = doc.request_schema(s.method, s.template)
    if schema is None:
        # a body where none is read, wrong query values: never a 5xx
        await s.probe("with a body", json=[1, {"x": "\r\n"}])
        for param in s.op.get("parameters", []):
            if param.get("in") == "query":
                for bad in ("-1", "x", "%00", "9" * 5000):
                    await s.probe(f"?{param['name']}={bad[:8]}",
                                  url=f"{concrete(s.template)}?{param['name']}={bad}")
        return
    example = doc.resolve(schema).get("example") or [doc.resolve(schema["items"])["example"]]
    for bad in WRONG:
        if json_type(bad) not in allowed_types(doc, schema):
            await s.probe(f"body {bad!r}", "", json=bad)
    for where, name, field_schema in body_fields(doc, schema, example):
        for bad in wrong_values(doc, field_schema):
            await s.probe(f"{name}={bad!r}", name, json=replaced(example, where, bad))


async def test_openapi_sweep_wrong_types_never_5xx(any_world):
    world = any_world
    doc = Doc()
    problems: list[str] = []
    sent = 0
    for template, ops in doc.doc["paths"].items():
        for method, op in ops.items():
            sweep = Sweep(world, method.upper(), template, op, problems)
            await sweep_operation(doc, sweep)
            sent += sweep.sent
    assert not problems, "\n".join(problems)
    assert sent > 150
    assert world.queued() == 0
    await good_send_works(world, 0)
