"""Tenants' email templates: check them, list their names, render them, bounded.

One job: a stored template (subject, html, text, declared variables) and a
send's data → the subject, html and text to compose, with logic-less Mustache
(pystache), bounded whatever a hostile template or data asks for.

API
    TemplateContent(subject, html, text, variables=())   text None: derived from
        the rendered html; text "": no text part
    Variable(key, type, fallback=None)   fallback None: required at send time
    parse_variables(doc, field="variables") -> tuple[Variable, ...]   the API's
        list of {"key", "type" ("string" when absent), "fallback_value"}
        (Resend's shape; unknown fields ignored, null counts as absent)
    variables_json(vs) -> list[dict]   the inverse (no fallback_value when None)
    check(content)                     parts parse, sizes and variables valid
    used_names(content) -> tuple[str, ...]   sorted top-level names: the first
        segment of each tag's name outside every section ("user.name" → "user"),
        top-level section keys too, and names inside a top-level inverted
        section (it keeps the context)
    check_data(data, field="variables") -> dict   a send's data: JSON object
    render(content, data, *, strict=True, clock=time.monotonic) -> Rendered
        Rendered(subject, html, text, missing, undeclared)
    TemplateError(field, reason)   a ValueError; str() is "field: reason"
                                   (template_syntax's, the parts' errors too)
    RenderLimit(reason)            a TemplateError (field "template"): a bound hit

Templates are Mustache as mta/mail/template_syntax.py parses it (partials and
set-delimiter tags refused, every part in linear time). Also refused: a
subject with CR or LF, sources over MAX_SOURCE_BYTES, and (by check() only)
neither html nor text. Values: strings as they are, numbers as JSON writes
them, true/false, null as "", lists and objects as compact JSON. A declared
variable absent (or null) in the data takes its fallback; a given one must
have its declared type. The rendered subject is one line: each run of CR, LF,
TAB and line separators (with the spaces around it) becomes one space, other
control characters go, then it is stripped and cut to MAX_SUBJECT_BYTES on a
character boundary. Rendered.html is None when the template's html is "";
Rendered.text is None when text is "" or when there was nothing to derive.
A render is CPU work of up to about MAX_RENDER_SECONDS: run it off the loop.

Invariants
- No code from data, no attribute access: data must be exact JSON types
  (check_data; render runs it), names are looked up in dicts by our own
  lookup (pystache's calls getattr on non-builtin objects), nothing is called.
- A render (all parts together) stops with RenderLimit past MAX_ITERATIONS
  section iterations, MAX_OUTPUT_BYTES or MAX_RENDER_SECONDS. Sections iterate
  a counting iterator; tag output is counted in the escape/raw hooks; literal
  text, which pystache joins without a hook, is charged ahead: each iteration
  of a section is charged the literal bytes of the biggest body of a section
  with that key (template_syntax.charges), the top level once. The clock is
  read at each iteration and each lookup, so it is late by at most one body
  of literals and comments. Memory follows the output bound.
"""

from __future__ import annotations

import html as htmlmod
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from pystache.renderengine import RenderEngine

from mta.mail.htmltext import html_to_text
from mta.mail.template_syntax import (MAX_NESTING, Parsed, TemplateError, charges,
                                      literal_bytes, names, parse, utf8_size)

__all__ = ["MAX_DATA_BYTES", "MAX_DATA_DEPTH", "MAX_ITERATIONS", "MAX_NESTING",
           "MAX_OUTPUT_BYTES", "MAX_RENDER_SECONDS", "MAX_SOURCE_BYTES", "MAX_SUBJECT_BYTES",
           "MAX_VARIABLES", "VARIABLE_TYPES", "Rendered", "RenderLimit", "TemplateContent",
           "TemplateError", "Variable", "check", "check_data", "parse_variables", "render",
           "used_names", "variables_json"]

MAX_SOURCE_BYTES = 512 * 1024        # subject + html + text sources together (UTF-8)
MAX_OUTPUT_BYTES = 4 * 1024 * 1024   # one render's output, all parts together
MAX_ITERATIONS = 100_000             # section iterations in one render, all parts together
MAX_RENDER_SECONDS = 1.0             # wall-clock budget of one render
MAX_VARIABLES = 50
MAX_DATA_BYTES = 256 * 1024          # a send's data, JSON-encoded; all fallbacks together too
MAX_DATA_DEPTH = 16                  # nested lists/objects, the data object itself counting 1
MAX_SUBJECT_BYTES = 998
VARIABLE_TYPES = ("string", "number", "boolean", "list", "object")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PY_TYPE = {"string": str, "boolean": bool, "list": list, "object": dict}
_SUBJECT_BREAK = re.compile(r"[\t\n\r\x85\u2028\u2029][\t\n\r\x85\u2028\u2029 ]*")
_SUBJECT_DROP = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]+")
_KiB = f"{MAX_DATA_BYTES // 1024} KiB"


class RenderLimit(TemplateError):
    """A render stopped by one of its bounds (iterations, output, time)."""

    def __init__(self, reason: str) -> None:
        super().__init__("template", reason)


@dataclass(frozen=True)
class Variable:
    key: str
    type: str
    fallback: object | None = None


@dataclass(frozen=True)
class TemplateContent:
    subject: str
    html: str
    text: str | None
    variables: tuple[Variable, ...] = ()


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None
    missing: tuple[str, ...]
    undeclared: tuple[str, ...]


# ---- variables and data ----------------------------------------------------------------

def parse_variables(doc: object, field: str = "variables") -> tuple[Variable, ...]:
    """The API's variables list → Variables; every error names its field."""
    if doc is None:
        return ()
    if type(doc) is not list:
        raise TemplateError(field, "must be a list of {key, type, fallback_value}")
    if len(doc) > MAX_VARIABLES:
        raise TemplateError(field, f"at most {MAX_VARIABLES} variables")
    out: list[Variable] = []
    for i, item in enumerate(doc):
        if type(item) is not dict:
            raise TemplateError(f"{field}[{i}]", "must be an object {key, type, fallback_value}")
        key, kind = item.get("key"), item.get("type")
        if type(key) is not str:
            raise TemplateError(f"{field}[{i}].key", "required, a string")
        out.append(Variable(key, "string" if kind is None else kind,
                            item.get("fallback_value")))
    _check_variables(out, field)
    return tuple(out)


def variables_json(vs: Iterable[Variable]) -> list[dict[str, object]]:
    """Variables → the API's JSON list (parse_variables reads it back)."""
    return [{"key": v.key, "type": v.type}
            | ({} if v.fallback is None else {"fallback_value": v.fallback}) for v in vs]


def _expected(kind: str) -> str:
    return f"expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _check_variables(vs: Sequence[Variable], field: str) -> None:
    if len(vs) > MAX_VARIABLES:
        raise TemplateError(field, f"at most {MAX_VARIABLES} variables")
    seen: set[str] = set()
    fallback_bytes = 0
    for i, v in enumerate(vs):
        where = f"{field}[{i}]"
        if type(v.key) is not str or not _KEY.fullmatch(v.key):
            raise TemplateError(f"{where}.key", "must be letters, digits and _ (no digit "
                                "first), at most 64 characters")
        if v.key in seen:
            raise TemplateError(f"{where}.key", f"duplicate key {v.key}")
        seen.add(v.key)
        if type(v.type) is not str or v.type not in VARIABLE_TYPES:
            raise TemplateError(f"{where}.type", f"must be one of: {', '.join(VARIABLE_TYPES)}")
        if v.fallback is not None:
            fallback_bytes += _json_size(v.fallback, f"{where}.fallback_value", depth=1)
            if not _has_type(v.fallback, v.type):
                raise TemplateError(f"{where}.fallback_value", _expected(v.type))
    if fallback_bytes > MAX_DATA_BYTES:
        raise TemplateError(field, f"fallback values larger than {_KiB} together")


def _has_type(value: object, kind: str) -> bool:
    if kind == "number":
        return type(value) in (int, float)       # exact types: a bool is no number
    return type(value) is _PY_TYPE[kind]


def check_data(data: object, field: str = "variables") -> dict[str, object]:
    """A send's data: a JSON object of JSON values, within size and depth."""
    if type(data) is not dict:
        raise TemplateError(field, "must be an object of name → value")
    total = 2                                             # {}
    for key, value in data.items():
        if type(key) is not str:
            raise TemplateError(field, "names must be strings")
        total += _json_size(key, field) + 2               # "key": and a comma
        total += _json_size(value, _sub(field, key), 1, MAX_DATA_BYTES - total)
    if total > MAX_DATA_BYTES:
        raise TemplateError(field, f"larger than {_KiB}")
    return data


def _sub(field: str, key: str) -> str:
    return f"{field}.{key}" if _KEY.fullmatch(key) else f"{field}[{json.dumps(key[:64])}]"


def _json_size(value: object, field: str, depth: int = 0, room: int = MAX_DATA_BYTES) -> int:
    """Checks value is JSON (exact types, finite numbers, str names, depth; an
    iterative walk: no recursion on deep input) → its UTF-8 size, refused over
    `room` bytes (values are counted first: each takes at least a byte)."""
    stack: list[tuple[object, int]] = [(value, depth)]
    items = 0
    while stack:
        v, d = stack.pop()
        items += 1
        if items > room:
            raise TemplateError(field, f"larger than {_KiB}")
        if isinstance(v, (dict, list)) and type(v) in (dict, list):
            if d + 1 > MAX_DATA_DEPTH:
                raise TemplateError(field, f"nested deeper than {MAX_DATA_DEPTH} levels")
            if isinstance(v, dict) and any(type(k) is not str for k in v):
                raise TemplateError(field, "object names must be strings")
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
        elif type(v) is float and not math.isfinite(v):
            raise TemplateError(field, "NaN and infinity are not JSON")
        elif v is not None and type(v) not in (str, int, float, bool):
            raise TemplateError(field, f"a {type(v).__name__} is not a JSON value")
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    except UnicodeEncodeError:
        raise TemplateError(field, "a string holds a lone surrogate (not Unicode)") from None
    except ValueError:               # an integer past Python's 4300 digits
        raise TemplateError(field, "a number too large") from None
    if size > room:
        raise TemplateError(field, f"larger than {_KiB}")
    return size


# ---- parts --------------------------------------------------------------------------

def _parse_all(content: TemplateContent) -> dict[str, Parsed]:
    """The parts by name (text only when it is a template), parsed and checked
    (all of check() but html-or-text: used_names and render do not need one)."""
    sources = {"subject": content.subject, "html": content.html, "text": content.text}
    size = 0
    for name, source in sources.items():
        if type(source) is not str and (source is not None or name != "text"):
            raise TemplateError(name, "must be a string")
        try:
            size += len((source or "").encode())
        except UnicodeEncodeError:
            raise TemplateError(name, "holds a lone surrogate (not Unicode)") from None
    if size > MAX_SOURCE_BYTES:
        raise TemplateError("template", "subject, html and text larger than "
                            f"{MAX_SOURCE_BYTES // 1024} KiB together")
    if "\r" in content.subject or "\n" in content.subject:
        raise TemplateError("subject", "must not contain a line break")
    _check_variables(content.variables, "variables")
    return {name: parse(source, name) for name, source in sources.items() if source}


def check(content: TemplateContent) -> None:
    """Raises TemplateError (naming the part, line and column) unless every part
    parses, the sizes and variables are valid and there is html or text."""
    _parse_all(content)
    if not content.html and not content.text:
        raise TemplateError("html", "html or text is required")


def used_names(content: TemplateContent) -> tuple[str, ...]:
    """Top-level names the template refers to, sorted (module docstring)."""
    out: set[str] = set()
    for part in _parse_all(content).values():
        names(part.tree, out)
    return tuple(sorted(out))


# ---- rendering -------------------------------------------------------------------------

class _Budget:
    """The bounds of one render, shared by its parts."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadline = clock() + MAX_RENDER_SECONDS
        self.iterations = self.output = 0

    def tick(self) -> None:
        if self.clock() > self.deadline:
            raise RenderLimit(f"took longer than {MAX_RENDER_SECONDS:g} s")

    def write(self, n: int) -> None:
        self.output += n
        if self.output > MAX_OUTPUT_BYTES:
            raise RenderLimit(f"output larger than {MAX_OUTPUT_BYTES // (1024 * 1024)} MiB")

    def counted(self, items: Iterable[object], charge: int) -> Iterator[object]:
        """Items of a section, each an iteration charged its literal bytes."""
        for item in items:
            self.iterations += 1
            if self.iterations > MAX_ITERATIONS:
                raise RenderLimit(f"more than {MAX_ITERATIONS} section iterations")
            self.write(charge)
            self.tick()
            yield item
        self.tick()


class _Stack:
    """The context stack pystache's section nodes push to and pop from."""

    def __init__(self, root: dict[str, object]) -> None:
        self.items: list[object] = [root]
        self.push, self.pop = self.items.append, self.items.pop


def _text_of(value: object) -> str:
    """A non-string value as a tag writes it."""
    if value is None or type(value) is bool:
        return "" if value is None else str(value).lower()
    if type(value) is float and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if type(value) in (int, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Engine(RenderEngine):  # type: ignore[misc]   # pystache is untyped
    """pystache's engine with our lookup, counting hooks and counted sections."""

    def __init__(self, budget: _Budget, charges: dict[str, int], escape: bool) -> None:
        super().__init__(literal=self._raw, escape=self._escape if escape else self._raw,
                         resolve_context=self._resolve, resolve_partial=None, to_str=_text_of)
        self.budget = budget
        self.charges = charges

    def _raw(self, s: str) -> str:
        self.budget.write(utf8_size(s))
        self.budget.tick()
        return s

    def _escape(self, s: str) -> str:
        return self._raw(htmlmod.escape(s, quote=True))

    def _resolve(self, stack: _Stack, name: str) -> object:
        """Mustache's lookup, in dicts only; a name not found is ""."""
        self.budget.tick()
        if name == ".":
            return stack.items[-1]
        first, *rest = name.split(".")
        value = next((item[first] for item in reversed(stack.items)
                      if type(item) is dict and first in item), "")
        for segment in rest:
            if type(value) is not dict or segment not in value:
                return ""
            value = value[segment]
        return value

    def fetch_section_data(self, context: _Stack, name: str) -> Iterator[object]:
        items = super().fetch_section_data(context, name)
        return self.budget.counted(items, self.charges.get(name, 0))


def _render_part(part: Parsed, values: dict[str, object], budget: _Budget, escape: bool) -> str:
    budget.write(literal_bytes(part.tree))
    engine = _Engine(budget, charges(part.tree), escape)
    return str(part.template.render(engine, _Stack(values)))


def _clean_subject(subject: str) -> str:
    # split, not " *[breaks]" in the pattern: a search that may start with
    # spaces retries at each space of a long run (quadratic)
    pieces = _SUBJECT_BREAK.split(subject)
    subject = " ".join([p.rstrip(" ") for p in pieces[:-1]] + pieces[-1:])
    subject = _SUBJECT_DROP.sub("", subject).strip()
    raw = subject.encode()
    if len(raw) > MAX_SUBJECT_BYTES:     # cut on a character boundary
        subject = raw[:MAX_SUBJECT_BYTES].decode("utf-8", "ignore").rstrip()
    return subject


def _values(content: TemplateContent, data: dict[str, object]) -> dict[str, object]:
    """The data with declared variables' fallbacks; a declared variable null in
    the data counts as absent; a given one must have its declared type."""
    values = dict(check_data(data))
    for v in content.variables:
        given = values.get(v.key)
        if given is not None and not _has_type(given, v.type):
            raise TemplateError(f"variables.{v.key}", _expected(v.type))
        if given is None and v.fallback is not None:
            values[v.key] = v.fallback
        elif given is None:
            values.pop(v.key, None)
    return values


def render(content: TemplateContent, data: dict[str, object], *, strict: bool = True,
           clock: Callable[[], float] = time.monotonic) -> Rendered:
    """Every part rendered. strict: a used name with no value nor fallback is a
    TemplateError ("template.variables"); else it renders as "" (a preview)."""
    parts = _parse_all(content)
    values = _values(content, data)
    used: set[str] = set()
    for part in parts.values():
        names(part.tree, used)
    declared = {v.key for v in content.variables}
    missing = tuple(sorted(n for n in used if n not in values))
    if strict and missing:
        raise TemplateError("template.variables", f"missing: {', '.join(missing)}")
    budget = _Budget(clock)
    subject = ""
    if "subject" in parts:
        subject = _clean_subject(_render_part(parts["subject"], values, budget, escape=False))
    html = _render_part(parts["html"], values, budget, escape=True) if "html" in parts else None
    text: str | None = None
    if "text" in parts:
        text = _render_part(parts["text"], values, budget, escape=False)
    elif content.text is None and html:
        text = html_to_text(html) or None
        budget.write(utf8_size(text or ""))
    return Rendered(subject, html, text, missing,
                    tuple(sorted(n for n in used if n not in declared)))
