"""POST /emails and POST /emails/batch bodies: the one job is JSON → validated values.

API
    parse_email(doc, *, max_recipients=50, max_attachment_bytes=40 MiB,
                fetch_hosts=frozenset(), now=None) -> EmailRequest
    parse_batch(doc, **same) -> list[EmailRequest]      1..BATCH_MAX emails
    parse_scheduled_at(value, now, field="scheduled_at") -> float
        a Unix time, never before `now` (a past time means "now")
    EmailRequest(composition, tags, scheduled_at, remote_attachments)
        scheduled_at: None = send now; remote_attachments: (index, url) for
        each attachment given by `path` on an allowed host: the caller fetches
        it and replaces composition.attachments[index], a placeholder holding
        the filename, content type and content id with empty content
    ValidationError(field, reason, name="validation_error")   a ValueError;
        .field ("to[2]", "[3].subject" in a batch, "" for the whole body),
        .reason, .message = "field: reason" (what the HTTP layer sends), .name
`now` is the caller's clock (the wall clock when None), read for scheduled_at.

Error names are Resend's (api-reference/errors): missing_required_field for
an absent required field, invalid_attachment for an attachment's content or
path, validation_error for the rest. The HTTP layer answers them with 422.

Fields (Resend's names)
    from            required; "addr" or "Name <addr>" (the name may be quoted)
    to              required; a string or a list of strings; cc, bcc and
                    reply_to likewise, optional. 1..max_recipients addresses
                    in to+cc+bcc together; reply_to at most max_recipients.
                    Addresses go through mta.core.address (the SMTP server's
                    parser); a non-ASCII local part is refused (it would need
                    SMTPUTF8 end to end), a non-ASCII domain becomes its A-label.
    subject         required string, ≤ 998 bytes
    html, text      strings; at least one, unless `template` (email_options.py,
                    with stream and topic). text "" with html: no text part.
    headers         object of name → string, at most MAX_HEADERS. Names:
                    RFC 5322 field-name characters, ≤ 76; values ≤ 998 bytes.
                    Refused: the fields we write (From, To, Cc, Bcc, Reply-To,
                    Subject, Date, Message-ID, MIME-Version, Content-*), trace
                    and authentication fields (Received, Return-Path,
                    DKIM-Signature, Authentication-Results, ARC-*), ours
                    (X-Mta-*), and HTTP-level Idempotency-Key and Scheduled-At.
    tags            list of {name, value} (at most MAX_TAGS): ASCII letters,
                    digits, "_" and "-", ≤ 256 characters; value may be absent
    attachments     list (at most MAX_ATTACHMENTS) of {filename, content,
                    content_type, content_id (or inline_content_id), path}.
                    content: a base64 string (whitespace allowed), a list of
                    byte values (the Python SDK's list(bytes)), or the Node
                    SDK's JSON form of a Buffer {"type": "Buffer", "data": […]}.
                    path: refused unless its host is in fetch_hosts (no
                    server-side fetching of arbitrary URLs). The decoded
                    bytes of all attachments together ≤ max_attachment_bytes.
                    filename may be absent (the Node SDK also sends false).
    scheduled_at    ISO 8601 with a timezone ("2026-12-07T10:00:00Z",
                    "…+02:00"); naive or natural-language times are refused;
                    a past time means now; at most SCHEDULE_MAX_AHEAD ahead.
    Unknown fields are ignored: the SDKs add fields over time. null counts as
    absent. In a batch, attachments and scheduled_at are refused (Resend does
    not support them there).

Invariant: no control character (TAB aside) nor lone surrogate reaches a header
(every field is checked here; compose checks again).
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from mta.api.email_options import SendOptions, parse_options
from mta.core.address import AddressError, parse_address
from mta.core.hostport import is_loopback
from mta.core.schedule import MAX_AHEAD, parse_schedule
from mta.mail.compose import Attachment, Composition, Mailbox

__all__ = ["BATCH_MAX", "EmailRequest", "ValidationError", "parse_batch", "parse_email",
           "parse_mailbox", "parse_scheduled_at"]

BATCH_MAX, MAX_TAGS, MAX_HEADERS, MAX_ATTACHMENTS = 100, 50, 100, 100
SCHEDULE_MAX_AHEAD = MAX_AHEAD
_MAX_FIELD = 998
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
_TAG = re.compile(r"[A-Za-z0-9_-]*")
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]{1,255}")
_REFUSED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version",
    "received", "return-path", "dkim-signature", "authentication-results",
    "idempotency-key", "scheduled-at"})
_REFUSED_PREFIXES = ("content-", "arc-", "x-mta-")


class ValidationError(ValueError):
    def __init__(self, field: str, reason: str, name: str = "validation_error") -> None:
        self.field, self.reason, self.name = field, reason, name
        self.message = f"{field}: {reason}" if field else reason
        super().__init__(self.message)


@dataclass(frozen=True)
class EmailRequest:
    composition: Composition
    tags: tuple[tuple[str, str], ...]
    scheduled_at: float | None
    remote_attachments: tuple[tuple[int, str], ...] = ()
    options: SendOptions = SendOptions()


@dataclass(frozen=True)
class _Limits:
    max_recipients: int
    max_attachment_bytes: int
    fetch_hosts: frozenset[str]
    now: float | None


def _fail(field: str, reason: str, name: str = "validation_error") -> NoReturn:
    raise ValidationError(field, reason, name)


def _shown(text: str) -> str:
    """A caller's string made safe to quote in an error message."""
    return repr(text[:60])[1:-1]


def _string(doc: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            _fail(key, "required", "missing_required_field")
        return None
    if not isinstance(value, str):
        _fail(key, f"expected a string, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _unicode(field: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(field, "not valid Unicode (a lone surrogate)")


def _header_text(field: str, value: str, limit: int = _MAX_FIELD) -> str:
    if _CONTROL.search(value):
        _fail(field, "control characters (CR, LF, NUL …) are not allowed in a header")
    if len(_unicode(field, value)) > limit:
        _fail(field, f"longer than {limit} bytes")
    return value


# -- addresses -----------------------------------------------------------------

def _mailbox(field: str, text: str) -> Mailbox:
    _header_text(field, text)
    s = text.strip()
    name, addr = "", s
    if s.endswith(">") and "<" in s:
        cut = s.rfind("<")
        name, addr = s[:cut].strip(), s[cut + 1:-1].strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
    try:
        parsed = parse_address(addr)
    except AddressError:
        _fail(field, f"not an email address: '{_shown(text)}'")
    if not parsed.local.isascii():
        _fail(field, "a non-ASCII local part is not supported (it needs SMTPUTF8)")
    return Mailbox(name, str(parsed))


parse_mailbox = _mailbox      # "Name <addr>" or "addr" → Mailbox (a template's from)


def _mailboxes(doc: dict[str, Any], key: str, *, required: bool = False) -> tuple[Mailbox, ...]:
    value = doc.get(key)
    if value is None:
        if required:
            _fail(key, "required", "missing_required_field")
        return ()
    if isinstance(value, str):
        return (_mailbox(key, value),)
    if not isinstance(value, list):
        _fail(key, f"expected a string or an array of strings, got {_json_type(value)}")
    if required and not value:
        _fail(key, "give at least one address", "missing_required_field")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            _fail(f"{key}[{i}]", f"expected a string, got {_json_type(item)}")
        out.append(_mailbox(f"{key}[{i}]", item))
    return tuple(out)


# -- headers and tags ----------------------------------------------------------------

def _headers(doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    value = doc.get("headers")
    if value is None:
        return ()
    if not isinstance(value, dict):
        _fail("headers", f"expected an object of name → string, got {_json_type(value)}")
    if len(value) > MAX_HEADERS:
        _fail("headers", f"at most {MAX_HEADERS} headers")
    out = []
    for name, text in value.items():
        if not _FIELD_NAME.fullmatch(name):
            _fail("headers", f"not a header field name: '{_shown(name)}' (printable ASCII "
                             "without spaces or ':', at most 76 characters)")
        low = name.lower()
        if low in _REFUSED_HEADERS or low.startswith(_REFUSED_PREFIXES):
            _fail(f"headers.{name}", f"{name} may not be set here (mta writes it, or it is "
                                     "not a message header)")
        if not isinstance(text, str):
            _fail(f"headers.{name}", f"expected a string, got {_json_type(text)}")
        out.append((name, _header_text(f"headers.{name}", text)))
    return tuple(out)


def _tags(doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    value = doc.get("tags")
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail("tags", f"expected an array of {{name, value}}, got {_json_type(value)}")
    if len(value) > MAX_TAGS:
        _fail("tags", f"at most {MAX_TAGS} tags")
    out = []
    for i, tag in enumerate(value):
        if not isinstance(tag, dict):
            _fail(f"tags[{i}]", f"expected an object {{name, value}}, got {_json_type(tag)}")
        name, val = tag.get("name"), tag.get("value")
        if name is None:
            _fail(f"tags[{i}].name", "required", "missing_required_field")
        for part, text in (("name", name), ("value", "" if val is None else val)):
            if not isinstance(text, str):
                _fail(f"tags[{i}].{part}", f"expected a string, got {_json_type(text)}")
            if not _TAG.fullmatch(text) or len(text) > 256 or (part == "name" and not text):
                _fail(f"tags[{i}].{part}", "only ASCII letters, digits, '_' and '-', "
                                           f"{1 if part == 'name' else 0} to 256 characters")
        out.append((name, val or ""))
    return tuple(out)


# -- attachments -------------------------------------------------------------------

def _content(field: str, value: object) -> bytes:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            pass
        try:
            return base64.b64decode("".join(value.split()), validate=True)
        except ValueError:
            _fail(field, "not valid base64", "invalid_attachment")
    if isinstance(value, dict) and value.get("type") == "Buffer":
        value = value.get("data")          # the Node SDK's JSON form of a Buffer
        if not isinstance(value, list):
            _fail(f"{field}.data", "expected an array of byte values", "invalid_attachment")
    if isinstance(value, list):
        try:
            return bytes(value)
        except (TypeError, ValueError):
            _fail(field, "an array of byte values must hold integers from 0 to 255",
                  "invalid_attachment")
    _fail(field, f"expected a base64 string or an array of byte values, "
                 f"got {_json_type(value)}", "invalid_attachment")


def _attachment_meta(f: str, item: dict[str, Any]) -> tuple[str, str, str]:
    filename = item.get("filename")
    if filename is None or filename is False:
        filename = ""
    if not isinstance(filename, str):
        _fail(f"{f}.filename", f"expected a string, got {_json_type(filename)}")
    _header_text(f"{f}.filename", filename, 255)
    ctype = item.get("content_type")
    if ctype is None:
        ctype = ""
    if not isinstance(ctype, str):
        _fail(f"{f}.content_type", f"expected a string, got {_json_type(ctype)}")
    if ctype and (not _MIME_TYPE.fullmatch(ctype)
                  or ctype.lower().startswith(("multipart/", "message/"))):
        _fail(f"{f}.content_type", f"not a media type we attach: '{_shown(ctype)}' "
                                   "(type/subtype, no parameters; not multipart or message)")
    cid = ""
    for k in ("content_id", "inline_content_id"):
        v = item.get(k)
        if v is None:
            continue
        if not isinstance(v, str) or not _CONTENT_ID.fullmatch(v):
            _fail(f"{f}.{k}", "expected an id of printable ASCII without spaces or <>, "
                              "1 to 255 characters")
        if cid and v != cid:
            _fail(f"{f}.{k}", "differs from content_id")
        cid = v
    return filename, ctype, cid


def _remote(f: str, path: object, hosts: frozenset[str]) -> str:
    if not isinstance(path, str):
        _fail(f"{f}.path", f"expected a URL string, got {_json_type(path)}", "invalid_attachment")
    try:
        url = urlsplit(path)
        host = (url.hostname or "").lower()
    except ValueError:
        host, url = "", urlsplit("")
    _unicode(f"{f}.path", path)
    if url.scheme not in ("http", "https") or not host or _CONTROL.search(path):
        _fail(f"{f}.path", "not an http(s) URL", "invalid_attachment")
    if host not in hosts:
        _fail(f"{f}.path", "remote attachments are not fetched (send the bytes as content, "
                           "or ask the operator to allow this host)", "invalid_attachment")
    if url.scheme == "http" and not is_loopback(host):
        _fail(f"{f}.path", "use https (http only for a loopback host)", "invalid_attachment")
    return path


def _attachments(doc: dict[str, Any], lim: _Limits
                 ) -> tuple[tuple[Attachment, ...], tuple[tuple[int, str], ...]]:
    value = doc.get("attachments")
    if value is None:
        return (), ()
    if not isinstance(value, list):
        _fail("attachments", f"expected an array, got {_json_type(value)}")
    if len(value) > MAX_ATTACHMENTS:
        _fail("attachments", f"at most {MAX_ATTACHMENTS} attachments")
    hosts = frozenset(h.lower() for h in lim.fetch_hosts)
    out: list[Attachment] = []
    remote: list[tuple[int, str]] = []
    total = 0
    for i, item in enumerate(value):
        f = f"attachments[{i}]"
        if not isinstance(item, dict):
            _fail(f, f"expected an object, got {_json_type(item)}")
        filename, ctype, cid = _attachment_meta(f, item)
        has_content, has_path = item.get("content") is not None, item.get("path") is not None
        if has_content == has_path:
            _fail(f, "give either content or path", "invalid_attachment")
        if has_path:
            remote.append((i, _remote(f, item["path"], hosts)))
            out.append(Attachment(filename, b"", ctype, cid))
            continue
        data = _content(f"{f}.content", item["content"])
        total += len(data)
        if total > lim.max_attachment_bytes:
            _fail(f"{f}.content", f"the attachments pass {lim.max_attachment_bytes} bytes "
                                  "in total (decoded)")
        out.append(Attachment(filename, data, ctype, cid))
    return tuple(out), tuple(remote)


# -- scheduled_at and the whole request -------------------------------------------------

def parse_scheduled_at(value: object, now: float, field: str = "scheduled_at") -> float:
    """core.schedule's parser (the SMTP Scheduled-At: header uses the same)."""
    if not isinstance(value, str):
        _fail(field, f"expected an ISO 8601 string, got {_json_type(value)}")
    try:
        return parse_schedule(value, now, max_ahead=SCHEDULE_MAX_AHEAD)
    except ValueError as exc:
        _fail(field, str(exc))


def _body(doc: dict[str, Any], opts: SendOptions) -> tuple[str | None, str | None]:
    if opts.template is not None:
        return None, None                   # the template's (parse_options refused a body)
    html, text = _string(doc, "html"), _string(doc, "text")
    for key, body in (("html", html), ("text", text)):
        if body is not None:
            _unicode(key, body)
    if html is None and text is None:
        _fail("html", "give html or text (or both)", "missing_required_field")
    return html, text


def _parse(doc: object, lim: _Limits, *, batch: bool) -> EmailRequest:
    if not isinstance(doc, dict):
        _fail("", f"the email must be a JSON object, got {_json_type(doc)}")
    if batch:
        for key in ("attachments", "scheduled_at"):
            if doc.get(key) not in (None, []):
                _fail(key, "not supported in a batch (as with Resend): send this email "
                           "alone with POST /emails")
    opts = parse_options(doc, _fail)
    templated = opts.template is not None
    sender = _mailboxes(doc, "from", required=not templated)
    if len(sender) > 1 or (not sender and not templated):
        _fail("from", "give exactly one sender")
    to = _mailboxes(doc, "to", required=True)
    cc, bcc, reply_to = (_mailboxes(doc, k) for k in ("cc", "bcc", "reply_to"))
    count = len(to) + len(cc) + len(bcc)
    if count > lim.max_recipients:
        _fail("to", f"at most {lim.max_recipients} recipients in to, cc and bcc together "
                    f"(got {count})")
    if len(reply_to) > lim.max_recipients:
        _fail("reply_to", f"at most {lim.max_recipients} addresses")
    subject = _string(doc, "subject", required=not templated) or ""
    _header_text("subject", subject)
    html, text = _body(doc, opts)
    attachments, remote = _attachments(doc, lim)
    scheduled = None
    if doc.get("scheduled_at") is not None:
        now = time.time() if lim.now is None else lim.now
        at = parse_scheduled_at(doc["scheduled_at"], now)
        scheduled = at if at > now else None
    box = sender[0] if sender else Mailbox("", "")     # "": the template's from
    c = Composition(sender=box.address, sender_name=box.name, to=to, cc=cc,
                    bcc=bcc, reply_to=reply_to, subject=subject, html=html, text=text,
                    headers=_headers(doc), attachments=attachments)
    return EmailRequest(c, _tags(doc), scheduled, remote, opts)


def parse_email(doc: object, *, max_recipients: int = 50,
                max_attachment_bytes: int = 40 * 1024 * 1024,
                fetch_hosts: frozenset[str] = frozenset(),
                now: float | None = None) -> EmailRequest:
    return _parse(doc, _Limits(max_recipients, max_attachment_bytes, fetch_hosts, now),
                  batch=False)


def parse_batch(doc: object, *, max_recipients: int = 50,
                max_attachment_bytes: int = 40 * 1024 * 1024,
                fetch_hosts: frozenset[str] = frozenset(),
                now: float | None = None) -> list[EmailRequest]:
    if not isinstance(doc, list):
        _fail("", f"a batch must be a JSON array of emails, got {_json_type(doc)}")
    if not 1 <= len(doc) <= BATCH_MAX:
        _fail("", f"a batch holds 1 to {BATCH_MAX} emails (got {len(doc)})")
    lim = _Limits(max_recipients, max_attachment_bytes, fetch_hosts, now)
    out = []
    for i, item in enumerate(doc):
        try:
            out.append(_parse(item, lim, batch=True))
        except ValidationError as exc:
            field = f"[{i}].{exc.field}" if exc.field else f"[{i}]"
            raise ValidationError(field, exc.reason, exc.name) from None
    return out
