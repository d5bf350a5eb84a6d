"""Mustache sources → checked parse trees: pystache's parser behind a linear guard.

One job: parse one part of a tenant's template (mta/mail/templating.py is the
API around it) so that no source, however hostile, costs more than linear
time, and describe the result as a small tree of our own.

API
    parse(source, part) -> Parsed   Parsed(template, tree): pystache's
        ParsedTemplate (it renders itself) and the same template as a Tree
    Tree = tuple[Tag | str, ...]    str: literal text
    Tag(kind, key, body=())         kind: section, inverted, escape ({{x}}),
                                    raw ({{{x}}}, {{& x}}), comment
    names(tree, out) -> out         top-level names: the first segment of each
        tag's name outside every section ("user.name" → "user"), section keys
        at top level too, names inside an inverted section (it keeps the
        context); "." names nothing
    literal_bytes(tree) -> int      literal UTF-8 bytes one rendering of the
        body writes itself at most (inverted bodies included, nested sections not)
    charges(tree) -> {key: bytes}   per section key, the biggest literal_bytes
        of a section body with that key (what one iteration is charged)
    utf8_size(s) -> int
    TemplateError(field, reason)    a ValueError; str() is "field: reason"
    MAX_NESTING

Accepted tags: {{name}}, {{{name}}}, {{& name}}, {{#name}}, {{^name}}, {{/name}},
{{! comment}}; a name has no white space, braces or control characters.
Refused (errors name the part, line and column): partials, set-delimiter
tags, empty or malformed tags, unmatched or unclosed sections, sections
nested deeper than MAX_NESTING.

Invariant: linear time. pystache's parser is a regular-expression search that
is quadratic on some input: an unclosed "{{" scans to the end and the search
retries one character on, and each position in a run of spaces scans the run
(40 KB of either took 5 to 30 s). So _scan first walks the tags in one pass,
each read as pystache's regex reads it (the same greedy and lazy choices, so
the two agree on where every tag ends), refusing the shapes that make the
regex retry, and bounds Σ(white-space run length)² by _WS_BUDGET (about 0.1 s
of that scanning; indented html uses a few percent of it). Only then does
pystache parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pystache
from pystache import parser as _pp

__all__ = ["MAX_NESTING", "Parsed", "Tag", "TemplateError", "Tree", "charges",
           "literal_bytes", "names", "parse", "utf8_size"]

MAX_NESTING = 16                     # sections (inverted too) inside each other
_WS_BUDGET = 32 * 1024 * 1024        # Σ (white-space run length)²
_OPEN = re.compile(r"\{\{\s*+")
_NAME = r"[^\s{}\x00-\x1f\x7f]++"
# The tags pystache's tag regex reads up to the "}}" we expect: possessive, so
# where pystache would backtrack into another reading this does not match.
_TAG = re.compile(r"\{\{\s*+(?:\{\s*+" + _NAME + r"\s*+\}"
                  r"|(?P<sigil>[#^/&]?+)\s*+(?P<key>" + _NAME + r"))\s*+\}\}")
_WS = re.compile(r"\s+")


class TemplateError(ValueError):
    """Bad template, variables or data: .field names where, .reason says what."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Tag:
    kind: str
    key: str
    body: Tree = ()


Tree = tuple[Tag | str, ...]


@dataclass(frozen=True)
class Parsed:
    template: Any                    # pystache's ParsedTemplate
    tree: Tree


def parse(source: str, part: str) -> Parsed:
    """One part's source → Parsed; TemplateError(part, …) when refused."""
    _scan(source, part)
    try:
        template = pystache.parse(source, raise_on_mismatch=True)
    except _pp.ParsingError as e:    # not expected: _scan matched the sections
        raise TemplateError(part, str(e)) from None
    return Parsed(template, _tree(template))


class _Where:
    """A position shown as "line L, column C" (1-based)."""

    def __init__(self, source: str, pos: int) -> None:
        self.source, self.pos = source, pos

    def __format__(self, spec: str) -> str:
        line = self.source.count("\n", 0, self.pos) + 1
        return f"line {line}, column {self.pos - self.source.rfind(chr(10), 0, self.pos)}"


def _scan(source: str, part: str) -> None:
    """The linear pass before pystache (module docstring)."""
    if sum((m.end() - m.start()) ** 2 for m in _WS.finditer(source)) > _WS_BUDGET:
        raise TemplateError(part, "too much white space in long runs (shorten the longest)")
    sections: list[tuple[str, int]] = []
    pos = source.find("{{")
    while pos >= 0:
        opened = _OPEN.match(source, pos)
        assert opened is not None    # there is a "{{" at pos
        after = opened.end()
        first = source[after:after + 1]
        at = _Where(source, pos)     # line and column: counted only for an error
        if first in (">", "="):
            kind = "partials" if first == ">" else "set-delimiter tags"
            raise TemplateError(part, f"{kind} are not supported ({at})")
        if first == "!":
            # pystache ends a comment at the first "}}" only when it holds more
            # than white space (else its lazy match runs on to a later "}}")
            end = source.find("}}", after)
            if end < 0 or not source[after + 1:end].strip():
                raise TemplateError(part, f"unclosed or empty comment at {at}")
            pos = source.find("{{", end + 2)
            continue
        m = _TAG.match(source, pos)
        if m is None:
            raise TemplateError(part, f"unclosed or malformed tag at {at}")
        sigil, key = m["sigil"], m["key"]
        if sigil in ("#", "^"):
            if len(sections) == MAX_NESTING:
                raise TemplateError(part, f"sections nested deeper than {MAX_NESTING} ({at})")
            sections.append((sigil + key, pos))
        elif sigil == "/":
            opener = sections.pop()[0] if sections else None
            if opener is None or opener[1:] != key:
                closes = f"does not close {{{{{opener[:65]}}}}}" if opener else \
                    "closes no section"
                raise TemplateError(part, f"{{{{/{key[:64]}}}}} at {at} {closes}")
        pos = source.find("{{", m.end())
    if sections:
        opener, start = sections[-1]
        raise TemplateError(part, f"unclosed section {{{{{opener[:65]}}}}} at "
                            f"{_Where(source, start)}")


def _tree(template: Any) -> Tree:
    """pystache's parse tree → ours: the one place reading pystache's private
    node classes and attributes (tests/test_templating.py covers every kind, so
    an upgrade that changes them fails there)."""
    out: list[Tag | str] = []
    for node in template._parse_tree:
        if type(node) is str:
            out.append(node)
        elif isinstance(node, _pp._SectionNode):
            out.append(Tag("section", node.key, _tree(node.parsed)))
        elif isinstance(node, _pp._InvertedNode):
            out.append(Tag("inverted", node.key, _tree(node.parsed_section)))
        elif isinstance(node, _pp._EscapeNode):
            out.append(Tag("escape", node.key))
        elif isinstance(node, _pp._LiteralNode):
            out.append(Tag("raw", node.key))
        elif isinstance(node, _pp._CommentNode):
            out.append(Tag("comment", ""))
        else:                        # _scan refused partials and delimiter changes
            raise RuntimeError(f"unexpected pystache parse node {type(node).__name__}")
    return tuple(out)


def names(tree: Tree, out: set[str]) -> set[str]:
    """Adds the tree's top-level names to out (module docstring)."""
    for node in tree:
        if isinstance(node, Tag) and node.kind != "comment":
            if head := node.key.split(".")[0]:
                out.add(head)
            if node.kind == "inverted":
                names(node.body, out)
    return out


def utf8_size(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def literal_bytes(tree: Tree) -> int:
    """Literal bytes one rendering of this body writes itself, at most."""
    return sum(utf8_size(n) if isinstance(n, str) else
               literal_bytes(n.body) if n.kind == "inverted" else 0 for n in tree)


def charges(tree: Tree, out: dict[str, int] | None = None) -> dict[str, int]:
    """Section key → the biggest literal_bytes of a section body with that key."""
    out = {} if out is None else out
    for node in tree:
        if isinstance(node, Tag):
            if node.kind == "section":
                out[node.key] = max(out.get(node.key, 0), literal_bytes(node.body))
            charges(node.body, out)
    return out
