"""The console's server-side SVG charts (mta.console.charts): pure.

Shapes (one stack per bucket, one rect per non-zero count, labels on round
times), escaping of hostile labels and ids (the output is the console's
only safe-marked markup), all-zero and huge data, and the totals written
as text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from mta.console.charts import Series, compact, legend, stacked_bars, total

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_400.0          # 2023-11-14 22:20:00 UTC: a multiple of 10 minutes
HOSTILE = "<script>alert(1)</script>\"' & \x00\x1b\x7f</svg><b>"


def parse(markup: str) -> ET.Element:
    """The chart as XML (well-formed, or this fails)."""
    return ET.fromstring(str(markup))


def bars(root: ET.Element) -> list[ET.Element]:
    return [r for g in root.iter(SVG + "g") for r in g.iter(SVG + "rect")]


def labels(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(SVG + "text")]


def test_one_stack_per_bucket_and_a_rect_per_count():
    series = [Series("Accepted", "#2456c7", [3, 0, 1, 0]),
              Series("Delivered", "#1f7a3f", [2, 0, 0, 5])]
    out = stacked_bars("chart-hour-svg", "Last hour", T0, 60, series, label_every=2)
    assert isinstance(out, Markup)
    root = parse(out)
    assert root.tag == SVG + "svg" and root.get("role") == "img"
    title = root.find(SVG + "title")
    assert title is not None and title.text == "Last hour"
    assert root.get("aria-labelledby") == title.get("id") == "chart-hour-svg-title"
    groups = list(root.iter(SVG + "g"))
    assert len(groups) == 3                                  # buckets 0, 2, 3 have counts
    assert [len(g.findall(SVG + "rect")) for g in groups] == [2, 1, 1]
    assert [r.get("fill") for r in bars(root)] == ["#2456c7", "#1f7a3f", "#2456c7", "#1f7a3f"]
    tips = [g.find(SVG + "title").text for g in groups]
    assert tips[0] == "22:20 UTC: Accepted 3, Delivered 2"
    # stacked: the second series sits on the first, the tallest stack is the highest
    a, d = bars(root)[:2]
    assert float(d.get("y")) + float(d.get("height")) == pytest.approx(float(a.get("y")))
    heights = {i: sum(float(r.get("height")) for r in g.findall(SVG + "rect"))
               for i, g in zip((0, 2, 3), groups)}
    assert heights[0] == pytest.approx(heights[3]) and heights[3] > heights[2]   # 5, 5, 1
    # x labels on round times (every 2 minutes from 22:20), y labels 0..top
    assert [t for t in labels(root) if ":" in t] == ["22:20", "22:22"]
    assert [t for t in labels(root) if ":" not in t][:5] == ["0", "2", "4", "6", "8"]


def test_hostile_labels_are_escaped_and_ids_reduced():
    series = [Series(HOSTILE, "#abc", [1, 2])]
    out = stacked_bars('x" onload="alert(1)', HOSTILE, T0, 60, series)
    root = parse(out)                                        # still well-formed XML
    assert "<script" not in out and "<b>" not in out and "</svg><b>" not in out
    assert "\x00" not in out and "\x1b" not in out and "\x7f" not in out
    assert root.find(SVG + "title").text == "<script>alert(1)</script>\"' & </svg><b>"
    assert root.get("id") == "xonloadalert1"                 # [a-z0-9-] only
    assert 'onload="' not in out
    legend_html = legend(series, ids=['t" onclick="x'])
    assert "<script" not in legend_html and 'onclick="' not in legend_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&#39; &amp; " in legend_html
    assert 'id="tonclickx"' in legend_html


@pytest.mark.parametrize("colour", ["red", "#12", "#1234567", '#fff" onclick="x', "", "url(#a)"])
def test_a_colour_must_be_hex(colour):
    with pytest.raises(ValueError):
        stacked_bars("c", "t", T0, 60, [Series("a", colour, [1])])
    with pytest.raises(ValueError):
        legend([Series("a", colour, [1])])


def test_all_zero_data_draws_an_empty_chart():
    series = [Series(n, "#000000", [0] * 24) for n in ("a", "b")]
    root = parse(stacked_bars("day", "Last day", T0, 3600, series, label_every=3))
    assert bars(root) == []
    assert "no events" in labels(root)
    assert [t for t in labels(root) if t.isdigit()] == ["0", "1", "2", "3", "4"]
    assert 'class="num">0<' in legend(series)
    root = parse(stacked_bars("empty", "Nothing", T0, 60, []))   # no series at all
    assert "no events" in labels(root)


def test_huge_and_odd_values():
    huge = 10 ** 30
    series = [Series("a", "#111", [huge, 1, -5, float("nan"), float("inf"), "7", None, 2.9]),
              Series("b", "#222", [huge, 0])]
    root = parse(stacked_bars("h", "Huge", T0, 60, series))
    for r in bars(root):
        assert 0 <= float(r.get("y")) and float(r.get("y")) + float(r.get("height")) <= 220.01
    assert max(len(t) for t in labels(root)) <= 6           # compact axis labels
    assert f'class="num">{huge + 1 + 2}<' in legend(series)  # the exact total, in text
    assert total(series[0].values) == huge + 3
    assert total([True, -1, 3]) == 4


def test_every_bucket_gets_a_bar_even_when_small():
    series = [Series("a", "#111", [1_000_000, 1])]
    root = parse(stacked_bars("s", "Small", T0, 60, series))
    assert [float(r.get("height")) >= 1.0 for r in bars(root)] == [True, True]


def test_legend_lists_names_swatches_and_totals():
    series = [Series("Accepted", "#2456c7", [1, 2, 3]), Series("Bounced", "#b3261e", [0, 1])]
    out = legend(series, ids=["total-hour-accepted", "total-hour-bounced"])
    assert out.startswith('<ul class="legend">') and out.count("<li>") == 2
    assert re.findall(r'id="(total-hour-\w+)">(\d+)<', out) == [
        ("total-hour-accepted", "6"), ("total-hour-bounced", "1")]
    assert out.count('<svg class="swatch"') == 2 and 'fill="#b3261e"' in out
    assert "style=" not in out


def test_no_style_script_or_external_reference():
    out = stacked_bars("c", "t", T0, 60, [Series("a", "#111", list(range(60)))], label_every=10)
    for bad in ("style=", "<script", "href", "@import", "url(", "font-family"):
        assert bad not in out
    assert len([t for t in labels(parse(out)) if ":" in t]) == 6


@pytest.mark.parametrize("n,text", [(0, "0"), (999, "999"), (1000, "1k"), (1234, "1.2k"),
                                    (99_999, "100k"), (2_500_000, "2.5M"), (7 * 10 ** 9, "7G"),
                                    (10 ** 21, "1000E")])
def test_compact(n, text):
    assert compact(n) == text
