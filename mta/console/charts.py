"""Charts for the console, drawn on the server as inline SVG.

One job: turn counts per time bucket into an accessible stacked bar chart
(axes, UTC tick labels, a <title>, a tooltip per bar) and its legend (a
swatch and the total of each series), as markup a template inserts as is.
No JavaScript, no external file, no font: the page's own.

Public API:
    Series(name, colour, values)   one stacked series: a label, "#rgb" or
                                   "#rrggbb", a count per bucket
    stacked_bars(chart_id, title, start, step, series, *, label_every,
                 width=480, height=220) -> Markup   the <svg>
    legend(series, ids=()) -> Markup   <ul class="legend">: swatch, name,
                                   total (ids: the totals' element ids)
    total(values) -> int           a series' total, as the legend counts it
    compact(n) -> str              1234 -> "1.2k" (axis labels)

Invariants:
- Every text written (title, series names, tick labels) is escaped here
  (&, <, >, quotes) with control characters dropped, ids are reduced to
  [a-z0-9-], and a colour must be "#rgb" or "#rrggbb" (ValueError): nothing
  the caller passes reaches the markup raw. This module's output is the
  only markup the console marks safe (markupsafe.Markup).
- No style attribute, script, external reference or font: colours are
  fill attributes, text inherits the page's font (the CSP holds).
- Any numbers draw: all zero (a 0..4 axis and "no events"), huge (compact
  labels, heights scaled as floats), negative, non-integer or non-finite
  values count as 0.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

__all__ = ["Series", "stacked_bars", "legend", "total", "compact"]

_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_ID = re.compile(r"[^a-z0-9-]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")
_INK = "#5b6475"          # the stylesheet's --muted
_GRID = "#dde1e8"         # the stylesheet's --line
_TICKS = 4                # intervals on the y axis
_MAX = 10 ** 18           # larger counts are drawn as this (totals stay exact)


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[int]


def _text(value: object) -> str:
    """Escaped for XML and HTML alike (text and attribute values)."""
    s = _CONTROL.sub("", str(value))
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("'", "&#39;"))


def _colour(value: str) -> str:
    if not isinstance(value, str) or not _COLOUR.fullmatch(value):
        raise ValueError(f"a colour is #rgb or #rrggbb, not {value!r}")
    return value


def _exact(value: object) -> int:
    """A count as given: a non-negative int (anything else is 0)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        return int(value)
    return 0


def _count(value: object) -> int:
    """A drawable count: `_exact`, at most _MAX."""
    return min(_exact(value), _MAX)


def total(values: Sequence[object]) -> int:
    """A series' total, as the legend shows it (exact, however large)."""
    return sum(_exact(v) for v in values)


def compact(n: float) -> str:
    """A count for an axis: 950, 1.2k, 34k, 5.6M, 7G, … (exact below 1000)."""
    if n < 1000:
        return str(int(n))
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15),
                        ("E", 1e18)):
        if n < scale * 1000 or unit == "E":
            value = n / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + unit
    return str(int(n))      # (not reached)


def _nice_step(peak: int) -> int:
    """The y axis step: 1, 2 or 5 times a power of ten, so that _TICKS steps
    reach `peak`."""
    raw = max(peak / _TICKS, 1.0)
    power = 10 ** int(math.floor(math.log10(raw)))
    for mult in (1, 2, 5, 10):
        if mult * power >= raw:
            return int(mult * power)
    return int(10 * power)   # (not reached)


def _clock(t: float, step: float) -> str:
    try:
        stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "?"
    return stamp.strftime("%H:%M" if step < 86400 else "%m-%d")


def stacked_bars(chart_id: str, title: str, start: float, step: float,
                 series: Sequence[Series], *, label_every: int = 1, width: int = 480,
                 height: int = 220) -> Markup:
    """An <svg> of one stacked bar per bucket (bucket i starts at start + i *
    step, UTC), the series stacked in order from the bottom; the buckets
    whose start is a multiple of `label_every` steps get a time label."""
    buckets = max((len(s.values) for s in series), default=0)
    counts = [[_count(v) for v in s.values] + [0] * (buckets - len(s.values)) for s in series]
    colours = [_colour(s.colour) for s in series]
    stacks = [sum(c[i] for c in counts) for i in range(buckets)]
    peak = max(stacks, default=0)
    ystep = _nice_step(peak)
    ymax = ystep * _TICKS
    left, right, top, bottom = 46, 12, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    ident = _ID.sub("", chart_id.lower())[:40] or "chart"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'role="img" aria-labelledby="{ident}-title" id="{ident}" font-size="13">'
           f'<title id="{ident}-title">{_text(title)}</title>']
    out += _axes(left, top, plot_w, plot_h, ystep)
    bar_w = plot_w / buckets if buckets else plot_w
    for i in range(buckets):
        x = left + i * bar_w
        if stacks[i]:
            out.append(_bar(x, bar_w, top + plot_h, plot_h / ymax, [c[i] for c in counts],
                            colours, [s.name for s in series], _clock(start + i * step, step)))
        if label_every > 0 and _index(start, step, i) % label_every == 0:
            # centred under its bar, but never past the right edge
            mid = min(x + bar_w / 2, width - 20.0)
            out.append(f'<text x="{mid:.1f}" y="{height - 6}" text-anchor="middle" '
                       f'fill="{_INK}">{_text(_clock(start + i * step, step))}</text>')
    if peak == 0:
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                   f'text-anchor="middle" fill="{_INK}">no events</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _index(start: float, step: float, i: int) -> int:
    """Bucket i's number since the epoch (labels fall on round times)."""
    try:
        return int((start + i * step) // step) if step > 0 else i
    except (OverflowError, ValueError):
        return i


def _axes(left: int, top: int, plot_w: int, plot_h: int, ystep: int) -> list[str]:
    out = []
    for k in range(_TICKS + 1):
        y = top + plot_h - plot_h * k / _TICKS
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                   f'stroke="{_GRID}" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                   f'fill="{_INK}">{_text(compact(ystep * k))}</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" '
               f'stroke="{_INK}" stroke-width="1"/>')
    return out


def _bar(x: float, bar_w: float, base: float, scale: float, values: list[int],
         colours: list[str], names: list[str], when: str) -> str:
    """One bucket's stack, with a tooltip naming its time and counts."""
    tip = ", ".join(f"{name} {v}" for name, v in zip(names, values) if v)
    parts = [f"<g><title>{_text(when)} UTC: {_text(tip)}</title>"]
    y = base
    gap = min(2.0, bar_w * 0.2)
    for v, colour in zip(values, colours):
        if not v:
            continue
        h = max(v * scale, 1.0)         # a count too small for a pixel still shows
        y -= h
        parts.append(f'<rect x="{x + gap / 2:.2f}" y="{y:.2f}" width="{bar_w - gap:.2f}" '
                     f'height="{h:.2f}" fill="{colour}"/>')
    parts.append("</g>")
    return "".join(parts)


def legend(series: Sequence[Series], ids: Sequence[str] = ()) -> Markup:
    """The legend as an HTML list: a swatch (a tiny SVG: no style attribute
    needed), the series' name and its total; `ids[i]` (reduced to
    [a-z0-9-]) is the id of series i's total."""
    items = []
    for i, s in enumerate(series):
        ident = _ID.sub("", ids[i].lower())[:60] if i < len(ids) else ""
        attr = f' id="{ident}"' if ident else ""
        items.append(f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
                     f'<rect width="10" height="10" fill="{_colour(s.colour)}"/></svg>'
                     f'{_text(s.name)} <span class="num"{attr}>{total(s.values)}</span></li>')
    return Markup('<ul class="legend">' + "".join(items) + "</ul>")
