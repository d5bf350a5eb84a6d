"""Click and open tracking in an html body: link rewriting and the open pixel.

One job: given an html body, point its web links at the tracking listener
(through a caller-supplied `url_for`) and add the open pixel; nothing else
in the document changes.

API
    rewrite_links(html, url_for) -> (html, urls)
        every <a …> and <area …> start tag whose first href is an absolute
        http(s) URL gets href="<url_for(n, url) escaped>", n being the URL's
        index in `urls` (the original URLs in order of appearance; a URL seen
        twice keeps its first index). Not rewritten: mailto:, tel:, "#…",
        relative, javascript:, data: and any other scheme, URLs longer than
        MAX_URL, tags carrying NOTRACK_ATTR (the attribute is removed), new
        URLs once `urls` holds MAX_LINKS.
    add_open_pixel(html, url) -> str
        a 1×1 <img> just before the last </body> (any case), else at the end
    NOTRACK_ATTR, MAX_LINKS, MAX_URL

How the html is read: as a browser's tokenizer (WHATWG) reads it, so the
link a reader clicks is the link rewritten. A start tag is "<" + an ASCII
letter; its name runs to white space, "/" or ">"; attributes are quoted
('…' or "…", ">" allowed inside) or bare (to white space or ">"); names are
compared in ASCII lower case and the first of a repeated attribute counts.
Comments ("<!--" to "-->" or "--!>"), other "<!…>" and "<?…>" are skipped;
the contents of script, style, title, textarea, xmp, iframe, noembed and
noframes are text (no links there); after <plaintext> everything is. A tag
that does not end before the end of the document is not a tag, and neither
is anything after it (a browser reads the rest as part of that tag), so the
rest is copied as it is. Character references in an href are decoded as a
browser decodes them inside an attribute: "&amp;" yes, but a legacy name
without ";" followed by "=" or a letter or digit stays as written
("?a=1&copy=2" is not "?a=1©=2", which html.unescape would make of it).

Invariants:
- Byte-for-byte: outside the href values rewritten and the NOTRACK_ATTR
  attributes removed (with the white space after them), the output is the
  input.
- Linear time on any input: every piece of a tag is matched by a pattern
  of one character class (no backtracking) or found with str.find, each
  character is read a bounded number of times, and a tag that never ends
  stops the scan instead of being retried from the next "<".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape, unescape
from html.entities import html5

__all__ = ["MAX_LINKS", "MAX_URL", "NOTRACK_ATTR", "add_open_pixel", "rewrite_links"]

NOTRACK_ATTR = "data-mta-notrack"
MAX_LINKS = 200
MAX_URL = 2048

_LINK_TAGS = frozenset({"a", "area"})
_RAW_TEXT = frozenset({"script", "style", "title", "textarea", "xmp", "iframe", "noembed",
                       "noframes"})
_RAW_END = {name: re.compile(rf"</{name}(?=[\t\n\f\r />])", re.IGNORECASE)
            for name in _RAW_TEXT}
_SPACE = re.compile(r"[\t\n\f\r ]*")
_GAP = re.compile(r"[\t\n\f\r /]*")            # between attributes ("/" not before ">" too)
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_ATTR_NAME = re.compile(r"[^\t\n\f\r />=]*")
_BARE_VALUE = re.compile(r"[^\t\n\f\r >]*")
_COMMENT_END = re.compile(r"--!?>")
_BODY_END = re.compile(r"</body(?=[\t\n\f\r />])", re.IGNORECASE)
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_URL_TRIM = "".join(chr(c) for c in range(0x21))     # C0 controls and space
_PIXEL = ('<img src="{}" width="1" height="1" alt="" '
          'style="display:block;border:0;width:1px;height:1px">')


def _run(pattern: re.Pattern[str], html: str, at: int) -> int:
    """The end of `pattern` (one starred character class: it always matches) at `at`."""
    m = pattern.match(html, at)
    assert m is not None
    return m.end()


class _Attr:
    __slots__ = ("name", "start", "end", "value", "value_start", "value_end")

    def __init__(self, name: str, start: int, end: int, value: str | None,
                 value_start: int, value_end: int):
        self.name, self.start, self.end = name, start, end
        self.value, self.value_start, self.value_end = value, value_start, value_end


def _scan_tag(html: str, at: int) -> tuple[str, list[_Attr], int] | None:
    """The start tag whose name begins at `at`: (lower-case name, attributes
    (only for <a> and <area>), index after its ">"), or None when it does not
    end in the document."""
    n = len(html)
    k = _run(_TAG_NAME, html, at)
    name = html[at:k].translate(_ASCII_LOWER)
    keep = name in _LINK_TAGS           # only links' attributes are looked at
    attrs: list[_Attr] = []
    while True:
        k = _run(_GAP, html, k)
        if k >= n:
            return None
        if html[k] == ">":
            return name, attrs, k + 1
        start = k                       # a name may begin with "=" (as a browser reads it)
        k = name_end = _run(_ATTR_NAME, html, k + 1)
        after = _run(_SPACE, html, k)
        value: str | None = None
        value_start = value_end = k
        if after < n and html[after] == "=":
            k = _run(_SPACE, html, after + 1)
            if k >= n:
                return None
            quote = html[k]
            if quote in "\"'":
                close = html.find(quote, k + 1)
                if close < 0:
                    return None
                value, value_start, value_end = html[k + 1:close], k, close + 1
            else:                       # bare, or nothing before ">"
                value_end = _run(_BARE_VALUE, html, k)
                value, value_start = html[k:value_end], k
            k = value_end
        if keep:
            attrs.append(_Attr(html[start:name_end].translate(_ASCII_LOWER), start, k, value,
                               value_start, value_end))


def _charref(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref[0] == "#":
        return unescape(m.group())
    if ref not in html5:                # a shorter legacy name is followed by a letter/digit
        return m.group()
    if not ref.endswith(";") and m.string[m.end():m.end() + 1] == "=":
        return m.group()
    return html5[ref]


def _attr_value(raw: str) -> str:
    """An attribute's text with its character references decoded as a
    browser does inside an attribute value."""
    return _CHARREF.sub(_charref, raw) if "&" in raw else raw


def _web_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    url = _attr_value(raw).strip(_URL_TRIM)
    head = url[:8].translate(_ASCII_LOWER)
    prefix = "https://" if head == "https://" else "http://"
    if not head.startswith(prefix) or len(url) <= len(prefix) or len(url) > MAX_URL:
        return None
    return url


class _Links:
    """The URLs met so far and their indexes."""

    def __init__(self, url_for: Callable[[int, str], str]):
        self.url_for = url_for
        self.urls: list[str] = []
        self.index: dict[str, int] = {}

    def href(self, url: str) -> str | None:
        """The rewritten href (escaped, quoted) for `url`, or None (full)."""
        n = self.index.get(url)
        if n is None:
            if len(self.urls) >= MAX_LINKS:
                return None
            n = self.index[url] = len(self.urls)
            self.urls.append(url)
        return '"' + escape(self.url_for(n, url), quote=True) + '"'


def _edits(html: str, attrs: list[_Attr], links: _Links) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for one <a>/<area> tag, in document order."""
    notrack = [a for a in attrs if a.name == NOTRACK_ATTR]
    if notrack:
        return [(a.start, _run(_SPACE, html, a.end), "") for a in notrack]
    href = next((a for a in attrs if a.name == "href"), None)
    url = _web_url(href.value) if href is not None else None
    if href is None or url is None:
        return []
    new = links.href(url)
    return [] if new is None else [(href.value_start, href.value_end, new)]


def _skip(html: str, lt: int) -> int | None:
    """Where scanning goes on after the "<" at `lt` that does not open a
    start tag (a comment, "<!…>", "<?…>", an end tag, or text); None: the
    rest of the document is inside it."""
    if html.startswith("<!--", lt):
        if html.startswith(">", lt + 4) or html.startswith("->", lt + 4):
            return html.find(">", lt + 4) + 1
        m = _COMMENT_END.search(html, lt + 4)
        return None if m is None else m.end()
    nxt = html[lt + 1:lt + 2]
    if nxt == "/" and html[lt + 2:lt + 3].isascii() and html[lt + 2:lt + 3].isalpha():
        tag = _scan_tag(html, lt + 2)   # an end tag's "attributes" are read alike
        return None if tag is None else tag[2]
    if nxt in ("!", "?", "/"):
        gt = html.find(">", lt + 1)
        return None if gt < 0 else gt + 1
    return lt + 1


def rewrite_links(html: str, url_for: Callable[[int, str], str]) -> tuple[str, list[str]]:
    """The html with its web links pointed at url_for(n, url), and the URLs."""
    out: list[str] = []
    links = _Links(url_for)
    copied = i = 0
    while (lt := html.find("<", i)) >= 0:
        c = html[lt + 1:lt + 2]
        if not (c.isascii() and c.isalpha()):
            nxt = _skip(html, lt)
            if nxt is None:
                break
            i = nxt
            continue
        tag = _scan_tag(html, lt + 1)
        if tag is None:
            break
        name, attrs, i = tag
        if name in _LINK_TAGS:
            for start, end, text in _edits(html, attrs, links):
                out.append(html[copied:start])
                out.append(text)
                copied = end
        elif name == "plaintext":
            break
        elif name in _RAW_TEXT:
            close = _RAW_END[name].search(html, i)
            if close is None:
                break
            i = close.start()
    out.append(html[copied:])
    return "".join(out), links.urls


def add_open_pixel(html: str, url: str) -> str:
    """The html with a 1×1 image of `url` before its last </body>, else appended."""
    pixel = _PIXEL.format(escape(url, quote=True))
    last = None
    for m in _BODY_END.finditer(html):
        last = m
    if last is None:
        return html + pixel
    return html[:last.start()] + pixel + html[last.start():]
