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

Tokens are cut here by regular expressions following html.parser's tolerant
rules, so the text is the one html.parser's events gave (checked against it on
random markup in tests/test_compose.py), in half its time (~4 ms rather than
~8 for 20 KB of newsletter html, on the event loop): a start tag's name runs
to white space, "/" or ">"; attribute values are quoted ('…' or "…", with ">"
allowed inside) or bare; "<x …/>" is a start and an end tag; an end tag runs
to the first ">", and one without a name ("</>", "</ 1>") is dropped; script
and style content is raw text up to "</script>" ("</style>"); text between
tags has its character references decoded (html.unescape); a start tag whose
quote never closes is text up to its first ">".

Invariant: linear time even on hostile input. Before tokenising, comments,
declarations and processing instructions are dropped (one linear pass) and a
"<" that cannot start a tag (not followed by a letter or "/", or with no ">"
before the next "<") is written "&lt;" (_OPEN_LT), so every "<" left has its
">" before the next "<". A start tag is matched up to the next "<" (those
stretches do not overlap); reading further (a quoted value holding "<", a
quote that never closes) is budgeted (_LongTags). Tag patterns do not backtrack.
"""

from __future__ import annotations

import re
from html import unescape

__all__ = ["HTML_TEXT_LIMIT", "html_to_text"]

_SKIP = frozenset({"script", "style", "head", "title", "template"})
_PARAGRAPH = frozenset("p h1 h2 h3 h4 h5 h6 blockquote ul ol dl table pre hr figure "
                       "section article header footer address".split())
_LINE = frozenset("div li tr dt dd main nav aside form fieldset figcaption caption "
                  "tbody thead tfoot".split())
_BREAKS = {**{t: 2 for t in _PARAGRAPH}, **{t: 1 for t in _LINE}}
_OPEN_LT = re.compile(r"<(?:(?![A-Za-z/])|(?=[^<>]*+(?:<|\Z)))")
_DECL = re.compile(r"<(?:!--|!|\?)")
# A start tag's attributes, up to its ">". A name follows white space, "/" or a
# quote (it may begin with "=" or a quote); "=" after a name starts its value;
# a quote right after that "=" opens a quoted value, which must close (">" and
# "<" allowed inside), and when it never does: after "= " the quote begins the
# next name, after "==" the value is bare ("='…"), after a lone "=" the tag is
# not a tag. Possessive: a failed match does not backtrack. {x}: characters
# nothing may contain; {open}: the rules for a quote that never closes.
_ATTRS_GRAMMAR = r"""
    (?: [\s/]*+ (?<=[\s/"']) [^\s/>{x}][^\s/=>{x}]*+
        (?: \s*+ =++ \s*+ (?: "[^"{x}]*+" | '[^'{x}]*+' ) {open}
          | \s*+ =++ \s*+ (?!["']) [^\s>{x}]*+
          | {none} ) )*+
    [\s/]*+ >"""
_OPEN_QUOTE = r"""| \s*+ =++ \s++ (?=["']) | \s*+ ==++ (?=["']) [^\s>]*+"""
_ATTRS = re.compile(_ATTRS_GRAMMAR.format(x="", open=_OPEN_QUOTE, none=""), re.VERBOSE)
# One token: text, a start tag whose attributes hold no "<" (nor a quote that
# stays open before the next "<": _ATTRS decides those; what this matches, it
# matches as _ATTRS would), an end tag, or "</…>" without a name (dropped).
_TOKEN = re.compile(r"""
      (?P<text>[^<]++)
    | < (?P<start>[A-Za-z][^\t\n\r\f />\x00]*+) """
                    + _ATTRS_GRAMMAR.format(x="<", open="", none=r"(?!\s*=)") + r"""
    | </ (?: \s*+ (?P<end>[A-Za-z][-.a-zA-Z0-9:_]*+) \s*+ >
           | (?P<end2>[A-Za-z][^\t\n\r\f />\x00]*+) [^>]*+ >
           | [^>]*+ > )""", re.VERBOSE)
_NAME = re.compile(r"<([A-Za-z][^\t\n\r\f />\x00]*+)")   # a start tag's name
_GAP = re.compile(r"(?:\s|/(?!\Z))*")             # a last "/" is the empty tag's
_ATTR = re.compile(_GAP.pattern + r"""(?<=[\s/"'])([^\s/>][^\s/=>]*)"""
                   r"""(?:\s*=+\s*("[^"]*"|'[^']*'|(?!["'])[^\s>]*))?""")
_RAW_END = {name: re.compile(rf"</\s*{name}\s*>", re.IGNORECASE) for name in ("script", "style")}
_SPACES = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")
HTML_TEXT_LIMIT = 1024 * 1024     # characters of html read to derive the text


class _Text:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.pending = 0                 # line breaks owed before the next text
        self.skip = 0
        self.pre = 0
        self.links: list[tuple[str, int]] = []

    def emit(self, text: str) -> None:
        if not self.pre:
            text = _SPACES.sub(" ", text)
            if self.pending or not self.out or self.out[-1].endswith((" ", "\n")):
                text = text.lstrip(" ")
        if not text:
            return
        if self.pending and self.out:
            self.out.append("\n" * self.pending)
        self.pending = 0
        self.out.append(text)

    def starttag(self, tag: str, attrs: dict[str, str | None]) -> None:
        if tag == "body":
            self.skip = 0
        if tag in _SKIP:
            self.skip += 1
        if self.skip:
            return
        breaks = _BREAKS.get(tag)
        if tag == "br":
            self.out.append("\n" * (self.pending + 1))
            self.pending = 0
        elif breaks:
            self.pending = max(self.pending, breaks)
            self.pre += tag == "pre"
            if tag == "li":
                self.emit("- ")
        elif tag in ("td", "th"):
            self.emit(" ")
        elif tag == "img":
            self.emit(attrs.get("alt") or "")
        elif tag == "a":
            self.links.append((attrs.get("href") or "", len(self.out)))

    def endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        breaks = _BREAKS.get(tag)
        if breaks:
            self.pending = max(self.pending, breaks)
            self.pre = max(0, self.pre - (tag == "pre"))
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            shown = "".join(self.out[start:]).strip()
            target = href.strip()
            if (shown and target and not target.startswith(("#", "javascript:", "cid:"))
                    and shown not in (target, target.removeprefix("mailto:"))):
                self.emit(f" ({target})")

    def data(self, data: str) -> None:
        if not self.skip:
            self.emit(data)


def _attributes(html: str, pos: int, end: int) -> tuple[dict[str, str | None], bool]:
    """The attributes of the start tag whose attribute text is html[pos:end]
    (names lower-cased, values unquoted and decoded; the last of a repeated
    name wins) and whether the tag ends "/>"."""
    attrs: dict[str, str | None] = {}
    while (m := _ATTR.match(html, pos, end)) is not None:
        value = m.group(2)
        if value is not None and value[:1] in ("'", '"'):
            value = value[1:-1]
        attrs[m.group(1).lower()] = unescape(value) if value else value
        pos = m.end()
    gap = _GAP.match(html, pos, end)
    return attrs, gap is not None and html[gap.end():end] == "/"


class _LongTags:
    """Start tags _TOKEN leaves: a quoted value holding a "<", or a tag that
    does not end. Each is read with _ATTRS to the end of the html at worst; a
    failed read is charged to a budget of twice the html's length, and once it
    is spent (html made of open quotes, "<a b='>x'" repeated, where each "<"
    would read to the end) such a tag is text. Linear either way."""

    def __init__(self, html: str) -> None:
        self.html = html
        self.budget = 2 * len(html) + 65536

    def end(self, x: int) -> int:
        """The index after the ">" of the tag whose attributes start at x, or
        -1 (the "<" is text)."""
        if self.budget <= 0:
            return -1
        m = _ATTRS.match(self.html, x)
        if m is None:
            self.budget -= len(self.html) - x
            return -1
        return m.end()


def _tokenise(html: str, sink: _Text) -> None:
    pos, n, long_tags = 0, len(html), _LongTags(html)
    while pos < n:
        m = _TOKEN.match(html, pos)
        if m is None:
            name = _NAME.match(html, pos)
            end = long_tags.end(name.end()) if name else -1
            if name is None or end < 0:     # text up to the ">"
                end = html.find(">", pos) + 1 or n
                sink.data(unescape(html[pos:end]))
                pos = end
                continue
            pos, tag, attrs_at = end, name.group(1), name.end()
        else:
            pos = m.end()
            text, tag = m.group("text", "start")
            if text is not None:
                sink.data(unescape(text))
                continue
            if tag is None:
                end_tag = m.group("end") or m.group("end2")
                if end_tag:
                    sink.endtag(end_tag.lower())
                continue
            attrs_at = m.end("start")
        pos = _start_tag(html, tag.lower(), attrs_at, pos, sink)


def _start_tag(html: str, tag: str, attrs_at: int, pos: int, sink: _Text) -> int:
    """Hand the start tag html[…:pos] to the sink; where tokenising goes on."""
    empty = False
    if tag in ("a", "img") or html[pos - 2] == "/":
        attrs, empty = _attributes(html, attrs_at, pos - 1)
    else:
        attrs = {}
    sink.starttag(tag, attrs)
    if empty:
        sink.endtag(tag)
    elif tag in _RAW_END:               # raw text (always inside _SKIP): jump it
        close = _RAW_END[tag].search(html, pos)
        if close is None:
            return len(html)
        sink.endtag(tag)
        return close.end()
    return pos


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
    sink = _Text()
    _tokenise(_OPEN_LT.sub("&lt;", _without_declarations(html[:HTML_TEXT_LIMIT])), sink)
    lines = [ln.rstrip() for ln in "".join(sink.out).split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines))
    return text.strip("\n") + "\n" if text.strip() else ""
