"""`Mail`: one loaded message plus the views detectors share, computed once.

Public API:
    Mail(raw: bytes)
      .msg            the parsed email.message.Message (compat32)
      .parts          leaf parts, not descending into attached messages
      .ctypes         their content types
      .subject, .from_header             decoded header values
      .sender_addr, .to_addr             the From / To address, lower-cased
      .text           the human-readable text (text/* parts joined)
      .notice         .text cut before the returned original message
      .cut_at         where .notice ends in .text
      .original       headers of the returned message (attached or inline), or None
      .original_sender  its From (or Return-Path) address, lower-cased ("" if none)
      .original_to    the addresses of its To, as written
      .own_addresses  lower-cased addresses that are not recipients (the
                      bounce's From, To, Reply-To, Return-Path, Sender,
                      Errors-To; the original sender)

Invariants: every view is lazy and cached; nothing raises on malformed input.
A "Return-Path:"/"Received:" line right under a "Subject:"/"To:" line is the
header summary of a forwarded bounce, not the start of the returned copy.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from functools import cached_property

from mta.mail.bounces import message as m
from mta.mail.bounces.common import ADDR_RE, clean_address

# Lines after which a notice quotes the returned message.
_CUT = re.compile(
    r"^[ \t>]*(?:"
    r"-{2,}\s*(?:this is a copy of|below this line is a copy|original message|returned message|"
    r"the original message|original mail|unsent message|message text follows|"
    r"the header of the original|headers? of (?:the )?(?:original|returned)|start of returned|"
    r"forwarded message|enclosed is|undelivered message|failed message|message header|"
    r"\S.{0,40}(?:original|returned|headers))"
    r"|original message headers:|original mail as follows:|your original message headers|"
    r"\*{3,}\s*original|------ the message was|--- Below|"
    r"(return-path:\s*<|received:\s+(?:from|by)\s)|"
    r"-{5,}\s*(?:original|returned|unsent|headers?|message)"
    r")",
    re.IGNORECASE | re.M)

_SUMMARY = re.compile(r"[ \t>]*(?:from|date|to|subject|cc|sent):", re.I)


class Mail:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.msg: Message = m.load(raw)

    @cached_property
    def parts(self) -> list[Message]:
        return m.own_parts(self.msg)

    @cached_property
    def ctypes(self) -> list[str]:
        return [p.get_content_type() for p in self.parts]

    @cached_property
    def subject(self) -> str:
        return m.header(self.msg, "Subject")

    @cached_property
    def from_header(self) -> str:
        return m.header(self.msg, "From")

    @cached_property
    def sender_addr(self) -> str:
        return clean_address(self.from_header).lower()

    @cached_property
    def to_addr(self) -> str:
        return clean_address(m.header(self.msg, "To")).lower()

    @cached_property
    def text(self) -> str:
        return m.body_text(self.msg)

    @cached_property
    def cut_at(self) -> int:
        text = self.text
        for match in _CUT.finditer(text):
            # "Return-Path:" / "Received:" right under "Subject:" or "To:" is
            # the header summary of a forwarded bounce, not the returned copy
            if match.group(1) and _SUMMARY.match(
                    text, text.rfind("\n", 0, max(match.start() - 1, 0)) + 1):
                continue
            return match.start()
        return len(text)

    @cached_property
    def notice(self) -> str:
        return self.text[:self.cut_at]

    @cached_property
    def original(self) -> Message | None:
        att = m.attached_message(self.msg)
        if att is not None:
            return att
        rest = self.text[self.cut_at:]
        hdr = re.search(r"^(?:[A-Za-z-]+:.*\n(?:[ \t].*\n)*){2,}", rest, re.M)
        if not hdr:
            return None
        return HeaderParser(policy=compat32).parsestr(hdr.group(0))

    @cached_property
    def original_sender(self) -> str:
        orig = self.original
        if orig is None:
            return ""
        return clean_address(m.header(orig, "From") or m.header(orig, "Return-Path")).lower()

    @cached_property
    def original_to(self) -> list[str]:
        orig = self.original
        if orig is None:
            return []
        return [a for a in ADDR_RE.findall(m.header(orig, "To"))]

    @cached_property
    def own_addresses(self) -> set[str]:
        own = {self.sender_addr, self.to_addr, self.original_sender}
        for name in ("Reply-To", "Return-Path", "Sender", "Errors-To"):
            own.add(clean_address(m.header(self.msg, name)).lower())
        own.discard("")
        return own
