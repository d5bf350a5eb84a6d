"""SMTP replies as values: `Reply(code, esc, text)`.

Invariants: `code` is a three-digit SMTP code (200–599); `esc` is an RFC 3463
enhanced status code whose class digit agrees with the code's first digit
(or "" for replies received from a remote server that sent none); `text` has
no CR or LF (multi-line remote replies are joined with a single space when
kept verbatim in `text`, with the raw lines available via `lines`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESC_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_ESC_PREFIX_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    esc: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if self.esc and not _ESC_RE.match(self.esc):
            raise ValueError(f"bad enhanced status code: {self.esc!r}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be a single line")

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_temp(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_perm(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        """The wire form without CRLF, e.g. ``451 4.3.0 Try again later``."""
        if self.esc:
            return f"{self.code} {self.esc} {self.text}"
        return f"{self.code} {self.text}"

    @classmethod
    def from_remote(cls, code: int, message: str) -> "Reply":
        """Build from what a remote server said, keeping its words verbatim.

        A leading enhanced status code in the text is split into `esc`.
        Multi-line text is joined with spaces (the per-line ESC repeats are
        kept as sent: we never rewrite a remote's words).
        """
        text = " ".join(line.strip() for line in message.splitlines()) if message else ""
        esc = ""
        m = _ESC_PREFIX_RE.match(text)
        if m and m.group(1)[0] == str(code)[0]:
            esc = m.group(1)
            text = text[m.end():]
        return cls(code, esc, text)

    @classmethod
    def parse(cls, line: str) -> "Reply":
        """Parse the wire form ``"250 2.0.0 Ok"`` (single line)."""
        line = line.strip()
        code = int(line[:3])
        return cls.from_remote(code, line[4:] if len(line) > 4 else "")
