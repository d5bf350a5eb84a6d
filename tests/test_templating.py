"""mta/mail/templating.py and template_syntax.py: tenants' templates, pure.

Checked: variables parse (each error naming its field) and round-trip;
check() refusals (unclosed, mismatched and too deep sections, partials,
set-delimiter tags, malformed tags, sizes, a subject line break); used_names
(dotted, sections, inverted sections, "."); escaping in html against raw in
subject and text; fallbacks, types, strict and preview renders; the derived
text and the opt-out; subject cleaning; the render bounds (iterations, output
from values and from literals, the clock through a fake one); no attribute
access; check_data's refusals; the linear guard before pystache's parser
(hostile sources refused, indented html accepted, agreement with pystache on
random sources); and the one function that reads pystache's private tree.
"""

from __future__ import annotations

import random

import pystache
import pytest

from mta.mail import template_syntax
from mta.mail.template_syntax import Tag
from mta.mail.templating import (MAX_DATA_DEPTH, MAX_ITERATIONS, MAX_SOURCE_BYTES,
                                 MAX_SUBJECT_BYTES, RenderLimit, TemplateContent, TemplateError,
                                 Variable, check, check_data, parse_variables, render, used_names,
                                 variables_json)


def content(html: str = "<p>Hi</p>", subject: str = "Hello", text: str | None = None,
            variables: tuple[Variable, ...] = ()) -> TemplateContent:
    return TemplateContent(subject=subject, html=html, text=text, variables=variables)


def refused(fn, *args, **kw) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        fn(*args, **kw)
    return info.value


# ---- variables ------------------------------------------------------------------------

def test_parse_variables_reads_resends_shape_and_round_trips():
    doc = [{"key": "name", "type": "string", "fallback_value": "friend"},
           {"key": "count", "type": "number"},
           {"key": "PLAN_2", "fallback_value": "free", "id": "ignored-unknown-field"},
           {"key": "flags", "type": "list", "fallback_value": None}]
    vs = parse_variables(doc)
    assert vs == (Variable("name", "string", "friend"), Variable("count", "number"),
                  Variable("PLAN_2", "string", "free"), Variable("flags", "list"))
    assert variables_json(vs) == [
        {"key": "name", "type": "string", "fallback_value": "friend"},
        {"key": "count", "type": "number"},
        {"key": "PLAN_2", "type": "string", "fallback_value": "free"},
        {"key": "flags", "type": "list"}]
    assert parse_variables(variables_json(vs)) == vs
    assert parse_variables(None) == ()


@pytest.mark.parametrize("doc, field, words", [
    ({"key": "a"}, "variables", "list"),
    (["a"], "variables[0]", "object"),
    ([{"type": "string"}], "variables[0].key", "required"),
    ([{"key": "ok"}, {"key": "1st"}], "variables[1].key", "letters"),
    ([{"key": "has-dash"}], "variables[0].key", "letters"),
    ([{"key": "x" * 65}], "variables[0].key", "64"),
    ([{"key": "a"}, {"key": "a"}], "variables[1].key", "duplicate"),
    ([{"key": "a", "type": "date"}], "variables[0].type", "one of"),
    ([{"key": "a", "type": "number", "fallback_value": "3"}],
     "variables[0].fallback_value", "expected a number"),
    ([{"key": "a", "type": "number", "fallback_value": True}],
     "variables[0].fallback_value", "expected a number"),
    ([{"key": "a", "type": "object", "fallback_value": [1]}],
     "variables[0].fallback_value", "expected an object"),
    ([{"key": "a", "fallback_value": float("nan")}], "variables[0].fallback_value", "NaN"),
    ([{"key": f"v{i}"} for i in range(51)], "variables", "at most 50"),
])
def test_parse_variables_errors_name_their_field(doc, field, words):
    err = refused(parse_variables, doc)
    assert err.field == field
    assert words in err.reason
    assert str(err) == f"{field}: {err.reason}"


def test_check_validates_declared_variables_too():
    err = refused(check, content(variables=(Variable("a", "number", "x"),)))
    assert (err.field, err.reason) == ("variables[0].fallback_value", "expected a number")


# ---- check ----------------------------------------------------------------------------

@pytest.mark.parametrize("html, words", [
    ("<p>{{#items}}{{name}}</p>", "unclosed section {{#items}} at line 1, column 4"),
    ("a\n  {{#a}}{{#b}}x{{/a}}{{/b}}", "{{/a}} at line 2, column 16 does not close {{#b}}"),
    ("x{{/a}}", "{{/a}} at line 1, column 2 closes no section"),
    ("<p>{{> footer}}</p>", "partials are not supported (line 1, column 4)"),
    ("{{=<% %>=}}<%x%>", "set-delimiter tags are not supported"),
    ("Hi {{name", "unclosed or malformed tag at line 1, column 4"),
    ("Hi {{first name}}", "unclosed or malformed tag"),
    ("Hi {{}}", "unclosed or malformed tag"),
    ("Hi {{{name}}", "unclosed or malformed tag"),
    ("Hi {{!  }} there", "unclosed or empty comment"),
    ("Hi {{! never closed", "unclosed or empty comment"),
    ("".join("{{#s}}" for _ in range(17)) + "".join("{{/s}}" for _ in range(17)),
     "sections nested deeper than 16"),
])
def test_check_refuses_bad_templates_naming_the_part(html, words):
    err = refused(check, content(html=html))
    assert err.field == "html"
    assert words in err.reason


def test_check_accepts_all_tag_kinds_and_sixteen_levels():
    deep = "".join(f"{{{{#s{i}}}}}" for i in range(16)) + "x" + \
        "".join(f"{{{{/s{i}}}}}" for i in reversed(range(16)))
    check(content(html=deep))
    check(content(subject="{{ a }} {{{b}}} {{& c}} {{! note }}",
                  html="{{#l}}{{.}}{{/l}}{{^l}}none{{/l}}{{ #x }}{{/ x }}", text="{{a.b.c}}"))


def test_check_refuses_sizes_line_breaks_and_empty_bodies():
    err = refused(check, content(subject="Hi\r\nBcc: x@example.com"))
    assert (err.field, err.reason) == ("subject", "must not contain a line break")
    err = refused(check, content(html="é" * (MAX_SOURCE_BYTES // 2 - 10), text="x" * 40))
    assert err.field == "template" and "512 KiB" in err.reason
    err = refused(check, content(html="", text=""))
    assert err.field == "html" and "required" in err.reason
    err = refused(check, content(text="{{#a}}"))
    assert err.field == "text"
    err = refused(check, content(subject="{{> p}}"))
    assert err.field == "subject"
    check(content(html="", text="plain {{x}}"))


def test_hostile_sources_for_pystaches_regex_are_refused_by_the_linear_scan():
    # each of these takes pystache's parser from seconds to hours
    for source in ("{{" * 100_000, "{{a" * 100_000, "{{{" * 100_000,
                   "x" + " " * 200_000 + "y", "{{! " + " " * 100_000 + "x}}",
                   "a}}" + "{{a" * 100_000):
        err = refused(check, content(html=source))
        assert err.field == "html"


def test_indented_html_is_within_the_white_space_budget():
    row = "\n" + " " * 40 + "<td class=\"c\">{{#items}}{{name}}{{/items}}</td>"
    check(content(html="<table>" + row * (400_000 // len(row)) + "\n</table>"))


def _tags(tree) -> list[Tag]:
    out = []
    for node in tree:
        if isinstance(node, Tag):
            out.append(node)
            out.extend(_tags(node.body))
    return out


def _literals(tree) -> list[str]:
    out = []
    for node in tree:
        out.extend([node] if isinstance(node, str) else _literals(node.body))
    return out


def test_scan_agrees_with_pystache_on_random_sources():
    """Whatever the scan accepts pystache parses, reading every tag as the scan
    did (a tag read differently would carry braces or white space in its key,
    or leave a "{{" in literal text);
    whatever pystache finds unbalanced the scan refuses."""
    pieces = ["{{", "}}", "{", "}", "#", "^", "/", "&", "!", " ", "\n", "a", "b", ".", "x"]
    rng = random.Random(7)
    accepted = 0
    for _ in range(4000):
        source = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 24)))
        try:
            parsed = template_syntax.parse(source, "html")
        except TemplateError:
            continue
        accepted += 1
        for tag in _tags(parsed.tree):
            if tag.kind != "comment":
                assert tag.key and not any(c in tag.key for c in " \n{}"), (source, tag)
        assert not any("{{" in text for text in _literals(parsed.tree)), source
    assert accepted > 400
    for source in ("{{#a}}{{/b}}", "{{#a}}", "{{/a}}", "{{#a}}{{#b}}{{/a}}{{/b}}"):
        with pytest.raises(pystache.parser.ParsingError):
            pystache.parse(source, raise_on_mismatch=True)
        refused(template_syntax.parse, source, "html")


def test_tree_reads_every_pystache_node_kind():
    """The one place reading pystache's private parse tree: a pystache upgrade
    that renames its nodes or their attributes fails here."""
    parsed = template_syntax.parse(
        "A{{x}}{{{y}}}{{& z}}{{! c }}{{#s}}i{{.}}{{/s}}{{^n}}none{{/n}}", "html")
    assert parsed.tree == (
        "A", Tag("escape", "x"), Tag("raw", "y"), Tag("raw", "z"), Tag("comment", ""),
        Tag("section", "s", ("i", Tag("escape", "."))),
        Tag("inverted", "n", ("none",)))


# ---- used_names -----------------------------------------------------------------------

def test_used_names_top_level_only():
    c = content(subject="{{user.name}} {{ greeting }}",
                html="{{#items}}{{title}}{{price.amount}}{{/items}}{{^vip}}{{offer}}{{/vip}}"
                     "{{{raw}}}{{! comment }}{{.}}",
                text="{{#user.active}}{{since}}{{/user.active}}")
    assert used_names(c) == ("greeting", "items", "offer", "raw", "user", "vip")
    assert used_names(content(subject="Code {{code}}", html="", text="")) == ("code",)


# ---- render ---------------------------------------------------------------------------

def test_html_escapes_subject_and_text_do_not():
    c = content(subject="For {{who}}", html="<p>{{who}} {{{who}}} {{& who}}</p>",
                text="Dear {{who}}")
    r = render(c, {"who": "<Tom & \"Jerry's\">"})
    assert r.html == ("<p>&lt;Tom &amp; &quot;Jerry&#x27;s&quot;&gt; "
                      "<Tom & \"Jerry's\"> <Tom & \"Jerry's\"></p>")
    assert r.subject == "For <Tom & \"Jerry's\">"
    assert r.text == "Dear <Tom & \"Jerry's\">"


def test_values_sections_and_dotted_names():
    c = content(html="{{n}}|{{f}}|{{g}}|{{t}}|{{z}}|{{l}}|{{o}}|{{user.name}}|"
                     "{{#items}}[{{name}}:{{qty}}]{{/items}}{{^none}}empty{{/none}}"
                     "{{#user}}{{name}}{{/user}}{{#tags}}<{{.}}>{{/tags}}")
    r = render(c, {"n": 3, "f": 2.0, "g": 0.5, "t": True, "z": None, "l": [1, "a"],
                   "o": {"k": None}, "user": {"name": "Ann"}, "none": [],
                   "items": [{"name": "pen", "qty": 2}, {"name": "ink"}], "tags": ["a", "b"]})
    assert r.html == ("3|2|0.5|true||[1,&quot;a&quot;]|{&quot;k&quot;:null}|Ann|"
                      "[pen:2][ink:]emptyAnn<a><b>")


def test_fallbacks_types_and_missing():
    vs = (Variable("name", "string", "friend"), Variable("count", "number"),
          Variable("vip", "boolean", False))
    c = content(subject="Hi {{name}}", html="{{count}} {{#vip}}VIP{{/vip}}", variables=vs)
    assert render(c, {"count": 2}).subject == "Hi friend"
    assert render(c, {"count": 2, "name": None}).subject == "Hi friend"
    r = render(c, {"count": 1.5, "name": "Bo", "vip": True})
    assert (r.subject, r.html, r.missing, r.undeclared) == ("Hi Bo", "1.5 VIP", (), ())
    for bad in ("2", True, None):
        if bad is None:
            err = refused(render, c, {})
            assert (err.field, err.reason) == ("template.variables", "missing: count")
        else:
            err = refused(render, c, {"count": bad})
            assert (err.field, err.reason) == ("variables.count", "expected a number")
    err = refused(render, c, {"count": 1, "vip": "yes"})
    assert (err.field, err.reason) == ("variables.vip", "expected a boolean")


def test_strict_missing_and_preview():
    c = content(subject="{{b}} {{a}}", html="<p>{{a}}{{c.d}}{{#s}}{{inner}}{{/s}}</p>",
                variables=(Variable("a", "string"), Variable("s", "list", [])))
    err = refused(render, c, {"x": 1})
    assert (err.field, err.reason) == ("template.variables", "missing: a, b, c")
    r = render(c, {"b": "B"}, strict=False)
    assert (r.subject, r.html) == ("B", "<p></p>")
    assert r.missing == ("a", "c")
    assert r.undeclared == ("b", "c")


def test_text_derived_from_html_or_opted_out():
    c = content(html="<h1>Hi {{name}}</h1><p>Your <a href=\"https://x.example/\">link</a></p>")
    r = render(c, {"name": "Ann"})
    assert r.text is not None
    assert "Hi Ann" in r.text and "link (https://x.example/)" in r.text
    assert render(content(html=c.html, text=""), {"name": "Ann"}).text is None
    r = render(content(html="", text="Hi {{name}}"), {"name": "Ann"})
    assert (r.html, r.text) == (None, "Hi Ann")
    assert render(content(html="{{name}}"), {"name": ""}).text is None


def test_subject_is_cleaned_and_truncated():
    r = render(content(subject="Re: {{s}}"), {"s": "a\r\n\t b\x00\x1b[31mc\u0085d\u2028  "})
    assert r.subject == "Re: a b[31mc d"
    r = render(content(subject="{{s}}"), {"s": "a" + " " * 100_000 + "\n" + " " * 100_000 + "b"})
    assert r.subject == "a b"
    r = render(content(subject="{{s}}"), {"s": "é" * 600})
    assert r.subject == "é" * (MAX_SUBJECT_BYTES // 2)
    r = render(content(subject="x{{s}}"), {"s": "é" * 600})
    assert len(r.subject.encode()) == MAX_SUBJECT_BYTES - 1    # no half character


def test_no_attribute_access_on_values():
    c = content(html="[{{name.__class__}}][{{name.upper}}][{{list.__len__}}][{{d.items}}]"
                     "[{{d.__class__.__name__}}][{{#name.upper}}x{{/name.upper}}][{{n.real}}]")
    r = render(c, {"name": "ann", "list": [1, 2], "d": {"k": 1}, "n": 5})
    assert r.html == "[][][][][][][]"


# ---- bounds ---------------------------------------------------------------------------

def test_nested_sections_blow_up_stops_at_the_iteration_bound():
    c = content(html="{{#a}}{{#a}}{{#a}}{{#a}}xxxxxxxx{{/a}}{{/a}}{{/a}}{{/a}}")
    err = refused(render, c, {"a": list(range(1000))})
    assert isinstance(err, RenderLimit)
    assert (err.field, err.reason) == ("template", f"more than {MAX_ITERATIONS} section "
                                       "iterations")


def test_a_repeated_big_value_stops_at_the_output_bound():
    c = content(html="{{#rows}}{{{big}}}{{/rows}}")
    err = refused(render, c, {"rows": list(range(40)), "big": "x" * 200_000})
    assert isinstance(err, RenderLimit) and err.reason == "output larger than 4 MiB"
    # escaping counts what it writes: 6 bytes per "'"
    c = content(html="{{#rows}}{{big}}{{/rows}}")
    err = refused(render, c, {"rows": list(range(8)), "big": "'" * 100_000})
    assert err.reason == "output larger than 4 MiB"
    render(c, {"rows": list(range(6)), "big": "'" * 100_000})


def test_literal_text_in_sections_is_charged_to_the_output_bound():
    c = content(html="{{#rows}}" + "y" * 50_000 + "{{/rows}}", text="")
    assert render(c, {"rows": list(range(80))}).html == "y" * 4_000_000
    err = refused(render, c, {"rows": list(range(90))})
    assert isinstance(err, RenderLimit) and err.reason == "output larger than 4 MiB"
    # an inverted section inside renders at most once per iteration: charged too
    c = content(html="{{#rows}}{{^no}}" + "y" * 50_000 + "{{/no}}{{/rows}}", text="")
    err = refused(render, c, {"rows": list(range(90))})
    assert err.reason == "output larger than 4 MiB"


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step, self.calls = 100.0, step, 0

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.step
        return self.now


def test_the_time_bound_with_a_fake_clock():
    c = content(html="<p>{{name}}</p>")
    err = refused(render, c, {"name": "x"}, clock=FakeClock(2.0))
    assert isinstance(err, RenderLimit) and err.reason == "took longer than 1 s"
    # read at every iteration even when the body has no tag
    clock = FakeClock(0.01)
    err = refused(render, content(html="{{#r}}.{{/r}}"), {"r": list(range(500))}, clock=clock)
    assert err.reason == "took longer than 1 s"
    assert 90 <= clock.calls <= 110
    assert render(c, {"name": "x"}, clock=FakeClock(0.1)).html == "<p>x</p>"


# ---- data -----------------------------------------------------------------------------

def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def test_check_data_accepts_json_and_refuses_the_rest():
    data = {"s": "é", "i": 1, "f": 1.5, "b": False, "n": None, "l": [1, {"k": "v"}],
            "deep": nested(MAX_DATA_DEPTH - 1)}
    assert check_data(data) is data
    cases = [
        ([1], "variables", "object"),
        ({1: "x"}, "variables", "names must be strings"),
        ({"s": {1, 2}}, "variables.s", "a set is not a JSON value"),
        ({"t": (1, 2)}, "variables.t", "a tuple is not a JSON value"),
        ({"o": object()}, "variables.o", "is not a JSON value"),
        ({"f": float("inf")}, "variables.f", "NaN and infinity"),
        ({"deep": nested(MAX_DATA_DEPTH)}, "variables.deep", "nested deeper than 16"),
        ({"bad key": {2: 1}}, 'variables["bad key"]', "names must be strings"),
        ({"u": "\ud800"}, "variables.u", "lone surrogate"),
        ({"big": "x" * (256 * 1024)}, "variables.big", "larger than 256 KiB"),
        ({f"k{i}": "x" * 1000 for i in range(300)}, "variables", "larger than 256 KiB"),
    ]
    for bad, field, words in cases:
        err = refused(check_data, bad)
        assert err.field.startswith(field) and words in err.reason, (bad, err)
    err = refused(render, content(html="{{x}}"), {"x": nested(40)})
    assert err.field == "variables.x"
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert "nested deeper" in refused(check_data, {"c": cyclic}).reason
