"""html → plain text, for the text/plain part derived from an html body.

API
    html_to_text(html) -> str       a readable rendering: block elements → line
        breaks (paragraphs, headings, lists, tables → a blank line; div, li, tr
        → one), <br> → newline, list items "- …", links "text (url)" when the
        url differs from the text (not for #, javascript: or cid: targets),
        images their alt text, script, style and head dropped, entities
        decoded, white space collapsed (kept in <pre>), trailing spaces and
        runs of blank lines removed; "" when there is no text
    HTML_TEXT_LIMIT                 characters of html read (the rest ignored)

Invariant: linear time even on hostile input. The stdlib parser (html.parser,
which does the tokenising here) is not: see _OPEN_LT.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["HTML_TEXT_LIMIT", "html_to_text"]

_SKIP = frozenset({"script", "style", "head", "title", "template"})
_PARAGRAPH = frozenset("p h1 h2 h3 h4 h5 h6 blockquote ul ol dl table pre hr figure "
                       "section article header footer address".split())
_LINE = frozenset("div li tr dt dd main nav aside form fieldset figcaption caption "
                  "tbody thead tfoot".split())
# The stdlib parser scans to the end of its input for the end of an unfinished
# construct, again at each one: quadratic on "<a <a …", "<![CDATA[>…", "</</…".
# So before parsing, comments, declarations and processing instructions are
# dropped (one linear pass), and a "<" that cannot start a tag (not followed by
# a letter or "/", or with no ">" before the next "<") is written "&lt;".
_OPEN_LT = re.compile(r"<(?![A-Za-z/])|<(?=[^<>]*(?:<|\Z))")
_DECL = re.compile(r"<(?:!--|!|\?)")
HTML_TEXT_LIMIT = 1024 * 1024     # characters of html read to derive the text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pending = 0                 # line breaks owed before the next text
        self.skip = 0
        self.pre = 0
        self.links: list[tuple[str, int]] = []

    def emit(self, text: str) -> None:
        if not self.pre:
            text = re.sub(r"\s+", " ", text)
            if self.pending or not self.out or self.out[-1].endswith((" ", "\n")):
                text = text.lstrip(" ")
        if not text:
            return
        if self.pending and self.out:
            self.out.append("\n" * self.pending)
        self.pending = 0
        self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.skip = 0
        if tag in _SKIP:
            self.skip += 1
        if self.skip:
            return
        if tag == "br":
            self.out.append("\n" * (self.pending + 1))
            self.pending = 0
        elif tag in _PARAGRAPH or tag in _LINE:
            self.pending = max(self.pending, 2 if tag in _PARAGRAPH else 1)
            self.pre += tag == "pre"
            if tag == "li":
                self.emit("- ")
        elif tag in ("td", "th"):
            self.emit(" ")
        elif tag == "img":
            self.emit(dict(attrs).get("alt") or "")
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag in _PARAGRAPH or tag in _LINE:
            self.pending = max(self.pending, 2 if tag in _PARAGRAPH else 1)
            self.pre = max(0, self.pre - (tag == "pre"))
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            shown = "".join(self.out[start:]).strip()
            target = href.strip()
            if (shown and target and not target.startswith(("#", "javascript:", "cid:"))
                    and shown not in (target, target.removeprefix("mailto:"))):
                self.emit(f" ({target})")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.emit(data)


def _without_declarations(html: str) -> str:
    parts, pos = [], 0
    while (m := _DECL.search(html, pos)) is not None:
        parts.append(html[pos:m.start()])
        close = "-->" if m.group() == "<!--" else ">"
        end = html.find(close, m.end())
        pos = len(html) if end < 0 else end + len(close)
    parts.append(html[pos:])
    return "".join(parts)


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of an html body (for the text/plain part)."""
    parser = _Text()
    parser.feed(_OPEN_LT.sub("&lt;", _without_declarations(html[:HTML_TEXT_LIMIT])))
    parser.close()
    lines = [ln.rstrip() for ln in "".join(parser.out).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip("\n") + "\n" if text.strip() else ""
