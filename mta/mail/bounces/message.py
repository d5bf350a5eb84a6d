"""Loading a bounce message and reading its parts, robust to broken MIME.

Public API:
    load(raw: bytes) -> Message           strip an mbox "From " line, parse (compat32)
    own_parts(msg) -> list[Message]       leaf parts, not descending into attached messages
    part_text(part) -> str                decoded text of one leaf part (never raises)
    body_text(msg) -> str                 text of the human-readable parts, joined
    header(msg, name) -> str              a header as str ("" when absent or undecodable)
    attached_message(msg) -> Message|None the returned original (message/rfc822 or
                                          text/rfc822-headers), if attached as a part

Invariants: nothing here raises on malformed input; undecodable bytes become
U+FFFD; CRLF and CR line ends are read as LF.
"""

from __future__ import annotations

import html as _html
import re
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32

_PARSER = BytesParser(policy=compat32)
_ATTACHED = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers",
             "message/partial", "text/rfc822-header")


def load(raw: bytes) -> Message:
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        raw = raw[nl + 1:] if nl >= 0 else b""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return _PARSER.parsebytes(raw)


def header(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    try:
        if "=?" in value:
            return str(make_header(decode_header(value)))
        return str(value)
    except Exception:       # undecodable encoded-word: keep the raw form
        return str(value)


def own_parts(msg: Message) -> list[Message]:
    out: list[Message] = []
    stack = [msg]
    while stack:
        part = stack.pop(0)
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack[0:0] = _messages(payload)
        else:
            out.append(part)
    return out


def _messages(payload: list[Message | str]) -> list[Message]:
    """The sub-messages of a parsed multipart or message/* payload (the
    parser puts only Message objects in such a list)."""
    return [p for p in payload if isinstance(p, Message)]


def _charset(part: Message) -> str:
    cs = part.get_content_charset() or "utf-8"
    cs = cs.strip("'\" ").lower()
    return {"us-ascii": "utf-8", "ascii": "utf-8", "x-unknown": "utf-8",
            "unknown-8bit": "utf-8", "cp932": "cp932", "shift-jis": "shift_jis",
            "x-sjis": "shift_jis"}.get(cs, cs)


def part_text(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):       # message/* parsed into sub-messages
        return "\n\n".join(_flatten(p) for p in _messages(payload))
    try:
        decoded = part.get_payload(decode=True)   # bytes, or None when nothing decodes
        data = decoded if isinstance(decoded, bytes) else b""
    except Exception:
        data = payload.encode("utf-8", "replace") if isinstance(payload, str) else b""
    cs = _charset(part)
    try:
        text = data.decode(cs, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _flatten(sub: Message) -> str:
    """A parsed header block (e.g. one DSN field group) back to text."""
    lines = [f"{k}: {v}" for k, v in sub.items()]
    body = sub.get_payload()
    if isinstance(body, str) and body.strip():
        lines.append("")
        lines.append(body)
    return "\n".join(lines)


def body_text(msg: Message) -> str:
    texts = []
    parts = own_parts(msg)
    has_plain = any(p.get_content_type() == "text/plain" for p in parts)
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "text/html" and has_plain:
            continue            # the alternative of a text/plain part we already read
        maintype = part.get_content_maintype()
        if ctype in ("text/plain", "text/html") or (
                maintype == "text" and ctype not in _ATTACHED) or (
                maintype == "multipart" and isinstance(part.get_payload(), str)):
            # (a multipart whose boundary could not be read is a leaf with
            # the raw text of its parts: still the human-readable notice)
            t = part_text(part)
            if ctype == "text/html":
                t = _strip_html(t)
            texts.append(t)
    if not texts and not msg.is_multipart():
        texts.append(part_text(msg))
    return "\n".join(texts)


def _strip_html(html: str) -> str:
    html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
    html = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>|</li>", "\n", html)
    text = re.sub(r"<[^>]+>", " ", html)
    return _html.unescape(text)


def attached_message(msg: Message) -> Message | None:
    for part in own_parts(msg):
        ctype = part.get_content_type()
        if ctype not in _ATTACHED:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        if isinstance(payload, str):
            return HeaderParser(policy=compat32).parsestr(part_text(part).lstrip("\n"))
    return None


__all__ = ["load", "own_parts", "part_text", "body_text", "header", "attached_message"]
