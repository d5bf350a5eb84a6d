"""Build a message from a validated value: the one job is Composition → MIME bytes.

API
    Mailbox(name, address)          frozen; `address` is "local@domain" (ASCII),
                                    `name` the display name ("" = none)
    Attachment(filename, content, content_type, content_id="")
        filename: "" is allowed (no filename parameter is written);
        content_type: "" → guessed from the filename (mimetypes), else
        application/octet-stream (a guess of multipart/* or message/*, e.g.
        ".eml", also becomes application/octet-stream: those types may not be
        base64-encoded, RFC 2046 §5);
        content_id: set → an inline part (Content-ID: <id>), referenced from
        the html as cid:<id>. Without html there is nothing to reference it, so
        it is then an ordinary attachment that keeps its Content-ID.
    Composition(sender, sender_name, to, cc=(), bcc=(), reply_to=(), subject="",
                html=None, text=None, headers=(), attachments=())
        text None + html → a text part derived from the html (html_to_text);
        text "" + html → html only (Resend: an empty text opts out of the
        derived part); no html → text/plain (text None counts as "").
    envelope_recipients(c) -> tuple[str, ...]   to+cc+bcc addresses, each once
        (compared with the domain case-folded), in order
    compose(c, *, message_id, date) -> bytes
    html_to_text(html) -> str       (mta.mail.htmltext) the derived text part
    OWNED_HEADERS                   names compose writes itself; `headers` may
                                    not use them (nor any Content-* name)

Structure (what Gmail and Resend produce)
    mixed(alternative(text/plain, related(text/html, inline…)), attachment…),
    each container only when needed: text only → one text/plain part.
    Header order: From, To, Cc, Reply-To, Subject, Date, Message-ID,
    MIME-Version, the extra headers, then the root part's Content-* fields.
    Bcc is never written.

Invariants
    * The stdlib `email` package holds the MIME tree (email.message.Message)
      and writes the bytes (BytesGenerator) under _Policy: plain string
      headers written as set, CRLF, 7-bit output; nothing is parsed into
      header objects (policy.SMTP did, for every field: most of the cost).
      Every field is encoded and folded here (Python 3.11's folder drops the
      space between RFC 2047 words it splits: "Héllo Héllo" comes back
      "HélloHéllo"). ASCII text is folded at its own spaces, so
      unfolding gives back the exact text; a word longer than a line stays
      whole (a List-Unsubscribe URL must not become an encoded word). Other
      text (non-ASCII, a leading space (readers drop it), a word over
      _LONGEST_WORD, or something that reads as an encoded word) becomes
      utf-8 "B" encoded words of ≤ 60 characters, spaces included, separated
      by folding white space only, so decoding gives back the exact text.
      Parameters are quoted strings, or RFC 2231 (utf-8; numbered sections
      when long) when non-ASCII or too long for a line. Lines aim at 78
      characters and never pass 998 (RFC 5322 §2.1.1; _Policy checks).
    * Bodies: text parts are 7bit when printable ASCII with lines ≤ 78
      characters, else quoted-printable (email.quoprimime; lines ≤ 76, RFC
      2045 §6.7); attachments are base64. Payloads are made with CRLF.
    * Nothing with a control character (TAB aside) reaches a header: such
      input raises ValueError here, whatever validated it before.
    * Pure and deterministic: the same inputs give the same bytes apart from
      the MIME boundaries (random); `date` appears only in Date:.
    * Cost: ~0.2 ms for scripts/bench_api.py's message (20 KiB, one
      attachment; was 1.6 ms with policy.SMTP). Boundaries are ours (no
      search of each subtree). html without text: html_to_text costs more
      (~4 ms for 20 KB of newsletter html).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from email import quoprimime
from email.generator import BytesGenerator
from email.message import Message
from email.policy import Compat32
from email.utils import format_datetime
from functools import lru_cache
from io import BytesIO
from itertools import chain
from typing import Any
from urllib.parse import quote

from mta.core.address import AddressError, parse_address
from mta.mail.htmltext import html_to_text

__all__ = ["OWNED_HEADERS", "Attachment", "Composition", "Mailbox", "compose",
           "envelope_recipients", "html_to_text"]


_MAX_LINE = 78
_QP_LINE = 76                        # RFC 2045 §6.7 (5)
_B64_BLOCK = struct.Struct("76s" * 16)   # 16 base64 lines of 57 bytes each
_EW_BYTES = 36                      # base64 of 36 bytes: 48 chars; the word is 60
_LONGEST_WORD = 900                 # "Name: " + word stays under 998 (names ≤ 76)
_LOOKS_ENCODED = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
OWNED_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "date",
                           "message-id", "mime-version"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
_ATEXT_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]*")
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_NOT_PLAIN = re.compile(r"[^\t\r\n\x20-\x7e]")
_MSG_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")   # printable, no "<" or ">"
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


class _Policy(Compat32):
    """compat32's plain string headers, CRLF, no ">From" mangling; a field is
    written as we folded it, and checked here for lines over 998 characters."""

    def clone(self, **kw: Any) -> _Policy:
        # the generator clones the policy for every part only to set linesep
        if all(getattr(self, k) == v for k, v in kw.items()):
            return self
        return super().clone(**kw)

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value

    def fold(self, name: str, value: str) -> str:
        field = f"{name}: {value}\r\n"
        if len(field) > 1000 and max(map(len, field.split("\r\n"))) > 998:
            raise ValueError(f"{name}: a line longer than 998 characters")
        return field

    def fold_binary(self, name: str, value: str) -> bytes:
        return self.fold(name, value).encode("ascii")      # ours are ASCII


class _Generator(BytesGenerator):
    """The stdlib's, writing a part's payload as it is: ours already have CRLF."""

    def _write_lines(self, lines: str) -> None:
        self.write(lines)


_POLICY = _Policy(linesep="\r\n", mangle_from_=False, max_line_length=_MAX_LINE)


@dataclass(frozen=True)
class Mailbox:
    name: str
    address: str


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str
    content_id: str = ""


@dataclass(frozen=True)
class Composition:
    sender: str
    sender_name: str
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()
    reply_to: tuple[Mailbox, ...] = ()
    subject: str = ""
    html: str | None = None
    text: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = ()


def envelope_recipients(c: Composition) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for box in (*c.to, *c.cc, *c.bcc):
        local, _, domain = box.address.rpartition("@")
        key = f"{local}@{domain.lower()}"
        if key not in seen:
            seen.add(key)
            out.append(box.address)
    return tuple(out)


def compose(c: Composition, *, message_id: str, date: float) -> bytes:
    """The message's bytes: header section, blank line, body; CRLF line ends."""
    _check(c, message_id)
    root = _body(c)
    content_fields = root.items()
    for name in {n for n, _ in content_fields}:
        del root[name]
    for name, value in [*_top_fields(c, message_id, date), *content_fields]:
        root[name] = value
    out = BytesIO()
    _Generator(out, policy=_POLICY).flatten(root)
    return out.getvalue()


# -- checks ------------------------------------------------------------------

def _clean(what: str, value: str) -> None:
    if _CONTROL.search(value):
        raise ValueError(f"{what}: control characters are not allowed in a header")


def _check_address(what: str, address: str) -> None:
    _clean(what, address)
    if not address.isascii():
        raise ValueError(f"{what}: a non-ASCII address needs SMTPUTF8: {address!r}")
    try:
        parse_address(address)
    except AddressError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _check(c: Composition, message_id: str) -> None:
    if not _MSG_ID.fullmatch(message_id) or len(message_id) > 250:
        raise ValueError(f"message_id: not a message id: {message_id!r}")
    _check_address("sender", c.sender)
    _clean("sender_name", c.sender_name)
    if not c.to and not c.cc and not c.bcc:
        raise ValueError("no recipients")
    for what, boxes in (("to", c.to), ("cc", c.cc), ("bcc", c.bcc), ("reply_to", c.reply_to)):
        for box in boxes:
            _check_address(what, box.address)
            _clean(what, box.name)
    _clean("subject", c.subject)
    for name, value in c.headers:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"headers: not a header field name: {name!r}")
        low = name.lower()
        if low in OWNED_HEADERS or low.startswith("content-"):
            raise ValueError(f"headers: {name} is written by compose")
        _clean(f"headers.{name}", value)
    for a in c.attachments:
        _clean("attachment filename", a.filename)
        if a.content_type and (not _MIME_TYPE.fullmatch(a.content_type)
                               or a.content_type.lower().startswith(("multipart/", "message/"))):
            raise ValueError(f"attachment content_type: not a media type: {a.content_type!r}")
        if a.content_id and not _MSG_ID.fullmatch(a.content_id):
            raise ValueError(f"attachment content_id: not an id: {a.content_id!r}")


# -- header fields -------------------------------------------------------------

def _encoded_words(text: str) -> list[str]:
    """RFC 2047 "B" words of at most _EW_BYTES bytes each, cut between characters,
    after a space where the chunk has one: a reader that keeps the white space
    between two words (Python's phrase parser does, against RFC 2047 §6.2)
    then shows a doubled space rather than one inside a word."""
    words: list[str] = []
    chunk = ""
    for ch in text:
        if len((chunk + ch).encode("utf-8")) > _EW_BYTES:
            cut = chunk.rfind(" ") + 1
            if cut < len(chunk) // 2:         # no space in the second half: cut here
                cut = len(chunk)
            words.append(chunk[:cut])
            chunk = chunk[cut:]
        chunk += ch
    words.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words]


def _fold(name: str, tokens: list[str]) -> str:
    """Tokens joined by single spaces; a line break goes before a non-empty token
    when the line would pass _MAX_LINE (unfolding gives back the joined text)."""
    lines: list[str] = []
    line = f"{name}:"
    for i, tok in enumerate(tokens):
        if i and tok and len(line) + 1 + len(tok) > _MAX_LINE and line.strip():
            lines.append(line)
            line = ""
        line += " " + tok
    lines.append(line)
    value = "\r\n".join(lines)
    return value[len(name) + 2:]        # the policy writes "Name: "


def _unstructured(name: str, text: str) -> str:
    words = text.split(" ")
    if (not _NOT_PRINTABLE.search(text) and text[:1] != " "
            and not _LOOKS_ENCODED.search(text) and all(len(w) <= _LONGEST_WORD for w in words)):
        return _fold(name, words)
    return _fold(name, _encoded_words(text))


def _phrase(name: str) -> list[str]:
    if name.isascii() and len(name) <= 64 and "=?" not in name and not _CONTROL.search(name):
        if _ATEXT_PHRASE.fullmatch(name) and name.strip() == name and "  " not in name:
            return name.split(" ")
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words(name)


def _mailboxes(name: str, boxes: list[Mailbox]) -> str:
    tokens: list[str] = []
    for i, box in enumerate(boxes):
        tail = "," if i < len(boxes) - 1 else ""
        if box.name:
            tokens += _phrase(box.name)
            tokens.append(f"<{box.address}>{tail}")
        else:
            tokens.append(f"{box.address}{tail}")
    return _fold(name, tokens)


def _top_fields(c: Composition, message_id: str, date: float) -> list[tuple[str, str]]:
    fields = [("From", _mailboxes("From", [Mailbox(c.sender_name, c.sender)]))]
    for name, boxes in (("To", c.to), ("Cc", c.cc), ("Reply-To", c.reply_to)):
        if boxes:
            fields.append((name, _mailboxes(name, list(boxes))))
    when = format_datetime(datetime.fromtimestamp(date, timezone.utc))
    fields += [("Subject", _unstructured("Subject", c.subject)),
               ("Date", when), ("Message-ID", f"<{message_id}>"), ("MIME-Version", "1.0")]
    fields += [(name, _unstructured(name, value)) for name, value in c.headers]
    return fields


# -- body ----------------------------------------------------------------------

def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sections(name: str, value: str, charset: str) -> list[str]:
    """RFC 2231 §3/§4 continuations, `name*0*=charset''…;`, `name*1*=…`, each
    line ≤ _MAX_LINE with its ";": cut between characters, so a character's
    %XX triplets stay in one section."""
    lines: list[str] = []
    head, chunk = f" {name}*0*={charset}''", ""
    for ch in value:
        enc = quote(ch, safe="")
        if chunk and len(head) + len(chunk) + len(enc) + 1 > _MAX_LINE:
            lines.append(f"{head}{chunk};")
            head, chunk = f" {name}*{len(lines)}*=", ""
        chunk += enc
    lines.append(head + chunk)
    return lines


def _with_params(name: str, value: str, params: list[tuple[str, str]]) -> str:
    """A Content-* field's value `value; p="v"; …`, folded: a parameter goes on
    the current line when it fits, else on a line of its own, else into RFC 2231
    sections; a non-ASCII value is RFC 2231 encoded (utf-8, RFC 2231 §4)."""
    lines = [f"{name}: {value}"]
    for i, (pname, pvalue) in enumerate(params):
        lines[-1] += ";"
        if pvalue.isascii():
            charset, token = "us-ascii", f"{pname}={_quoted(pvalue)}"
        else:
            charset, token = "utf-8", f"{pname}*=utf-8''{quote(pvalue, safe='')}"
        room = _MAX_LINE - 1 - len(token) - (i < len(params) - 1)     # " ", a next ";"
        if len(lines[-1]) <= room:
            lines[-1] += " " + token
        elif room >= 0:
            lines.append(" " + token)
        else:
            lines += _sections(pname, pvalue, charset)
    return "\r\n".join(lines)[len(name) + 2:]


def _leaf(fields: list[tuple[str, str]], payload: str) -> Message:
    part = Message(policy=_POLICY)
    for name, value in fields:
        part[name] = value
    part.set_payload(payload)
    return part


def _text_part(text: str, subtype: str) -> Message:
    lines = text.splitlines()
    if not _NOT_PLAIN.search(text) and max(map(len, lines), default=0) <= _MAX_LINE:
        # printable ASCII, TAB, CR, LF: str.splitlines cuts where bytes' would
        cte, payload = "7bit", "\r\n".join(lines) + "\r\n"
    else:
        body = b"\n".join(text.encode("utf-8").splitlines()).decode("latin-1") + "\n"
        cte, payload = "quoted-printable", quoprimime.body_encode(body, _QP_LINE, "\r\n")
    ctype = _with_params("Content-Type", f"text/{subtype}", [("charset", "utf-8")])
    return _leaf([("Content-Type", ctype), ("Content-Transfer-Encoding", cte)], payload)


@lru_cache(maxsize=256)
def _guess(ext: str) -> str:
    guessed = mimetypes.guess_type(f"file.{ext}", strict=False)[0] if ext else None
    ok = guessed and _MIME_TYPE.fullmatch(guessed) and \
        not guessed.startswith(("multipart/", "message/"))
    return guessed if ok and guessed else "application/octet-stream"


def _media_type(a: Attachment) -> str:
    ext = a.filename.rpartition(".")[2] if "." in a.filename else ""
    return (a.content_type or _guess(ext)).lower()


def _base64(data: bytes) -> str:
    """Lines of 76 characters (57 bytes), each ending CRLF ("" for no bytes).
    Whole blocks of 16 lines are cut by struct in C (a Python loop per line
    costs twice as much, a tuple per line wakes the garbage collector)."""
    enc = binascii.b2a_base64(data, newline=False)
    whole = len(enc) - len(enc) % _B64_BLOCK.size
    lines = [*chain.from_iterable(_B64_BLOCK.iter_unpack(memoryview(enc)[:whole]))]
    lines += [enc[i:i + 76] for i in range(whole, len(enc), 76)]
    lines.append(b"")
    return b"\r\n".join(lines).decode("ascii") if enc else ""


def _attachment_part(a: Attachment, *, inline: bool) -> Message:
    # the filename is also the type's "name" parameter: older readers look there
    ctype = _with_params("Content-Type", _media_type(a), [("name", a.filename)] * bool(a.filename))
    disposition = _with_params("Content-Disposition", "inline" if inline else "attachment",
                               [("filename", a.filename)] * bool(a.filename))
    fields = [("Content-Type", ctype), ("Content-Transfer-Encoding", "base64"),
              ("Content-Disposition", disposition)]
    if a.content_id:
        fields.append(("Content-ID", f"<{a.content_id}>"))
    return _leaf(fields, _base64(a.content))


def _multipart(subtype: str, parts: list[Message]) -> Message:
    # Our own random boundary: the stdlib would search the whole subtree for a
    # free one. "=_" cannot occur in quoted-printable or base64 text, and 128
    # random bits in a 7bit part will not either.
    container = Message(policy=_POLICY)
    container["Content-Type"] = _with_params("Content-Type", f"multipart/{subtype}",
                                             [("boundary", f"=_{secrets.token_hex(16)}")])
    for p in parts:
        container.attach(p)
    return container


def _body(c: Composition) -> Message:
    has_html = c.html is not None
    inline = [a for a in c.attachments if a.content_id and has_html]
    regular = [a for a in c.attachments if not (a.content_id and has_html)]
    if c.html is None:
        body = _text_part(c.text or "", "plain")
    else:
        html = _text_part(c.html, "html")
        if inline:
            html = _multipart("related", [html, *(_attachment_part(a, inline=True)
                                                  for a in inline)])
        if c.text == "":
            body = html
        else:
            text = c.text if c.text is not None else html_to_text(c.html)
            body = _multipart("alternative", [_text_part(text, "plain"), html])
    if regular:
        body = _multipart("mixed", [body, *(_attachment_part(a, inline=False)
                                            for a in regular)])
    return body
