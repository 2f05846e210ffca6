"""Two chart kinds as standalone SVG text, drawn without any plotting library: grouped bars over
named categories, and lines/points over a numeric x axis.

No torch and no third-party import, so the API (which renders the report page) and the workers
(which store the same charts as artifacts) share this module. Every element a reader or a test
looks for carries a class: ``svg.chart`` with ``data-chart``, ``path.bars`` (a series' bars) and
``path.series`` / ``path.points`` (a curve's line and dots) with ``data-series``, ``g.categories``
(the bars' labels), ``rect.selected`` (the highlighted category), ``line.reference`` with
``data-label``, ``g.legend``. A series is one element, not one per bar or point: a 500-module
MRC chart drew 2,000 elements and 3,000 tooltips (0.7–1 MB, ``bench/report_size.py``).
Text is XML-escaped; numbers are finite or the value is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax import saxutils

# Characters XML 1.0 forbids even escaped (C0 controls but tab and newlines, lone surrogates,
# U+FFFE/U+FFFF): one in a module name (which the uploaded model chooses) made the whole chart
# unreadable, since an SVG file is parsed as XML. They become U+FFFD, and so do C1 controls (XML
# allows them, but the report page draws these charts inline in HTML, where they are an error).
_NOT_XML = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escape(text: str) -> str:
    """``text`` as XML character data: markup escaped, characters XML cannot hold replaced."""
    return saxutils.escape(_NOT_XML.sub("\ufffd", text))


def quoteattr(text: str) -> str:
    """``text`` as a quoted XML attribute value (see :func:`escape`)."""
    return saxutils.quoteattr(_NOT_XML.sub("\ufffd", text))

#: Colours of successive series (colour-blind friendly, Okabe–Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
HIGHLIGHT = "#D55E00"
FONT = "font-family:sans-serif;font-size:11px"
#: Characters of a category label drawn under a bar chart. The label is rotated 45° and anchored
#: at its end: at 11 px (≈ 6.5 px a character, ≈ 4.6 px each way once rotated) 16 characters fill
#: the 64 px left margin of the first bar and stay inside the 110 px bottom margin; a longer
#: module name (``backbone.stages.3.blocks.2.attn.qkv``) was cut off at the SVG's edge.
CATEGORY_CHARS = 16
#: The legend entry of pale bars (values not measured to the end), and their fill's opacity as
#: a hex alpha (0x59 ≈ 0.35, the bars' ``fill-opacity``).
PARTIAL_LABEL = "stopped early (≥)"
PARTIAL_ALPHA = "59"
#: Characters of a legend entry (legends run along the bottom, one after another).
LEGEND_CHARS = 32
#: Pixels between two legend rows (11 px text).
LEGEND_ROW = 14


def short_label(name: str, limit: int) -> str:
    """``name`` if at most ``limit`` characters, else its tail after an ellipsis: the end of a
    dotted module path (``…blocks.2.attn.qkv``) tells modules apart, its start rarely does.
    The whole name stays in the element's ``<title>`` (a tooltip) and in the page's tables."""
    return name if len(name) <= limit else "…" + name[len(name) - limit + 1:]


@dataclass(frozen=True)
class BarSeries:
    """One value per category (None: no bar). ``partial`` (optional, one flag per value): values
    not measured to the end (an MRC stopped once it ruled its module out), drawn pale with
    "≥" in their tooltip, and the legend gets an entry saying so."""

    name: str
    values: Sequence[float | None]
    partial: Sequence[bool] = ()


@dataclass(frozen=True)
class LineSeries:
    """Points ``(x, y)`` joined in order."""

    name: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


@dataclass(frozen=True)
class Reference:
    """A horizontal (``axis='y'``) or vertical (``axis='x'``) line at ``value``, labelled."""

    axis: str
    value: float
    label: str
    #: The label on the line's other side (below a horizontal line, at the foot of a vertical
    #: one): a second line close to another (the robust bar under θ_AT's) keeps its label apart.
    opposite: bool = False


@dataclass(frozen=True)
class Mark:
    """A highlighted point (e.g. the chosen α), drawn over the series."""

    x: float
    y: float
    label: str


@dataclass
class _Frame:
    width: int
    height: int
    left: int = 64
    right: int = 16
    top: int = 30
    bottom: int = 70
    parts: list[str] = field(default_factory=list)

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _fmt(value: float) -> str:
    if value != 0 and abs(value) < 0.01:  # ticks 1e-14 apart all read "0" with two decimals
        return f"{value:.3g}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"


#: The largest magnitude an axis spans: past it ``high - low`` and the ticks overflow to inf.
AXIS_LIMIT = 1e300
#: A tick step below this is treated as no range at all: ``log10`` of a step that underflows to
#: 0 (values ~5e-324) raises, and ticks rounded to a fixed number of decimals collapsed into one.
_TINY_STEP = 1e-290


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]`` (steps of 1, 2 or 5 × 10^k):
    always at least two, strictly increasing and finite, so a chart can divide by their span.
    (All MRC values below ~1e-12 used to give ticks rounded to one value, and the division by
    their span failed the job's last stage and the report page.)"""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    low, high = (min(max(v, -AXIS_LIMIT), AXIS_LIMIT) for v in (low, high))
    if high <= low and low == 0.0:
        high = 1.0  # bars all at 0 (or no value): the zero line at the bottom
    elif high <= low:
        # One value: centred in a range 10 % of its size. (It was [v, 2v]: a fine-tune of one
        # epoch or the first α point drew its one point in the chart's corner, on the axis.)
        pad = abs(low) * 0.05
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    if raw < _TINY_STEP:
        high = low + 1.0
        raw = (high - low) / max(count, 1)
    exponent = math.floor(math.log10(raw))
    magnitude = 10.0 ** exponent
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    # Integer multiples of the step, rounded at the step's own decimal place (0.1 * 3 is
    # 0.30000000000000004), so no two ticks round to one value whatever the magnitude.
    first, last = math.floor(low / step), math.ceil(high / step)
    ticks = sorted({round(k * step, -exponent) for k in range(first, last + 1)})
    if len(ticks) < 2 or not all(math.isfinite(t) for t in ticks):
        return [low, high]  # steps below the values' float resolution (1e20 + 1e3)
    return ticks


def _open(frame: _Frame, chart: str, title: str, tooltip: str | None = None) -> None:
    """The chart's root element and its title; ``tooltip`` (default: ``title``) is the whole
    title where the one drawn is shortened."""
    tooltip = tooltip or title
    frame.parts.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart={quoteattr(chart)} '
        f'width="{frame.width}" height="{frame.height}" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-label={quoteattr(tooltip)} style="{FONT}">')
    frame.parts.append(f"<title>{escape(tooltip)}</title>")
    frame.parts.append(f'<rect width="{frame.width}" height="{frame.height}" fill="#fff"/>')
    frame.parts.append(f'<text class="title" x="{frame.width / 2:.1f}" y="18" text-anchor="middle" '
                       f'style="font-size:13px;font-weight:bold">{escape(title)}</text>')


def _y_axis(frame: _Frame, ticks: list[float], label: str) -> None:
    low, high = ticks[0], ticks[-1]
    for tick in ticks:
        y = frame.top + frame.plot_height * (1 - (tick - low) / (high - low))
        frame.parts.append(f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" '
                           f'y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        frame.parts.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                           f"{_fmt(tick)}</text>")
    mid = frame.top + frame.plot_height / 2
    frame.parts.append(f'<text class="axis-label" transform="translate(14,{mid:.1f}) rotate(-90)" '
                       f'text-anchor="middle">{escape(label)}</text>')
    frame.parts.append(f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" '
                       f'y2="{frame.top + frame.plot_height}" stroke="#333"/>')


def _legend_places(names: Sequence[str], width: int) -> list[tuple[float, int]]:
    """Where each legend entry goes: its x and its row. Entries run left to right and wrap to a
    new row where the next would pass the right margin (a sweep's 16 candidates ran past the
    chart's edge, unseen)."""
    left, right = _Frame.left, width - _Frame.right
    places: list[tuple[float, int]] = []
    x, row = float(left), 0
    for name in names:
        step = 24 + 6.5 * len(short_label(name, LEGEND_CHARS))
        if x > left and x + step - 10 > right:
            x, row = float(left), row + 1
        places.append((x, row))
        x += step
    return places


def _framed(width: int, height: int, names: Sequence[str], *, bottom: int = 70) -> _Frame:
    """A frame whose bottom margin also holds every legend row beyond the first; the plot keeps
    its size."""
    places = _legend_places(names, width)
    extra = LEGEND_ROW * (places[-1][1] if places else 0)
    return _Frame(width, height + extra, bottom=bottom + extra)


def _legend(frame: _Frame, names: Sequence[str], colours: Sequence[str],
            dashed: Sequence[bool] = ()) -> None:
    """Entries in rows (see :func:`_legend_places`); a dashed series gets a dashed line sample
    instead of a filled square, so that two series of one colour stay apart."""
    frame.parts.append('<g class="legend">')
    dashed = list(dashed) or [False] * len(names)
    places = _legend_places(names, frame.width)
    rows = places[-1][1] + 1 if places else 1
    first = frame.height - 12 - LEGEND_ROW * (rows - 1)
    for name, colour, dash, (x, row) in zip(names, colours, dashed, places, strict=True):
        y = first + LEGEND_ROW * row
        if dash:
            frame.parts.append(f'<line x1="{x:.1f}" x2="{x + 10:.1f}" y1="{y - 4}" y2="{y - 4}" '
                               f'stroke="{colour}" stroke-width="2" stroke-dasharray="3 2"/>')
        else:
            frame.parts.append(f'<rect x="{x:.1f}" y="{y - 9}" width="10" height="10" '
                               f'fill="{colour}"/>')
        frame.parts.append(f'<text x="{x + 14:.1f}" y="{y}">{escape(short_label(name, LEGEND_CHARS))}'
                           f"<title>{escape(name)}</title></text>")
    frame.parts.append("</g>")


def _close(frame: _Frame) -> str:
    frame.parts.append("</svg>")
    return "\n".join(frame.parts)


def bar_chart(chart: str, title: str, categories: Sequence[str], series: Sequence[BarSeries], *,
              y_label: str, highlight: str | None = None, width: int | None = None,
              height: int = 320, tooltips: Sequence[str] = ()) -> str:
    """Grouped bars: one group per category, one bar per series; the ``highlight`` category's
    column is shaded and its label drawn bold in the highlight colour (e.g. the module selected
    for fine-tuning).

    The bars of a series are one ``path.bars`` (a second, pale one for partial values), and a
    category's label is its number (1-based: the MRC table's "#" column and ``mrc.csv``'s row)
    and as much of its name's tail as fits. ``tooltips`` (one per category, optional) become
    the labels' tooltips. A ``rect.bar`` per bar with a tooltip, and a label's tooltip naming
    the category whole, drew 500 modules of 200-character names 6 times each: about 1 MB of
    chart (``bench/report_size.py``)."""
    width = width or max(360, 90 + len(categories) * (10 + 12 * max(len(series), 1)))
    legend = [s.name for s in series]
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    if any(any(s.partial) for s in series):
        legend.append(PARTIAL_LABEL)
        colours.append(PALETTE[0] + PARTIAL_ALPHA)
    frame = _framed(width, height, legend, bottom=110)
    _open(frame, chart, title)
    values = [float(v) for s in series for v in s.values if v is not None and math.isfinite(v)]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]) if values else 1.0)
    low, high = ticks[0], ticks[-1]
    _y_axis(frame, ticks, y_label)

    def y_of(value: float) -> float:
        return frame.top + frame.plot_height * (1 - (value - low) / (high - low))

    group = frame.plot_width / max(len(categories), 1)
    bar = min(24.0, group * 0.8 / max(len(series), 1))
    zero = y_of(0.0)
    tips = list(tooltips) if len(tooltips) == len(categories) else []
    #: The outline of every bar of a series, by (series number, partial).
    outlines: dict[tuple[int, bool], list[str]] = {}
    labels: list[str] = []
    for index, category in enumerate(categories):
        x0 = frame.left + group * index + (group - bar * len(series)) / 2
        if category == highlight:
            # Drawn under the bars: among hundreds of columns, a bold label alone is hard to find.
            frame.parts.append(
                f'<rect class="selected" x="{frame.left + group * index:.1f}" y="{frame.top}" '
                f'width="{group:.1f}" height="{frame.plot_height:.1f}" fill="{HIGHLIGHT}" '
                'fill-opacity="0.15"/>')
        for number, item in enumerate(series):
            value = item.values[index] if index < len(item.values) else None
            if not _finite(value):
                continue
            assert value is not None
            top, bottom = sorted((y_of(value), zero))
            bottom = max(bottom, top + 0.5)  # a bar of 0 stays visible
            partial = index < len(item.partial) and item.partial[index]
            x = x0 + bar * number
            outlines.setdefault((number, partial), []).append(
                f"M{x:.1f},{bottom:.1f}V{top:.1f}H{x + bar:.1f}V{bottom:.1f}Z")
        label_x = frame.left + group * (index + 0.5)
        label_y = frame.top + frame.plot_height + 8
        style = f' style="font-weight:bold;fill:{HIGHLIGHT}"' if category == highlight else ""
        # The category's number, then as much of its tail as fits. Coordinates are in the
        # labels' group, rotated -45° about the origin: the point drawn is (label_x, label_y),
        # without a rotation attribute per label.
        number_text = f"{index + 1} "
        shown = number_text + escape(short_label(
            category, max(CATEGORY_CHARS - len(number_text), 4)))
        tip = f"<title>{escape(tips[index])}</title>" if tips else ""
        u, v = (label_x - label_y) / math.sqrt(2), (label_x + label_y) / math.sqrt(2)
        labels.append(f'<text x="{u:.1f}" y="{v:.1f}"{style}>{shown}{tip}</text>')
    for (number, partial), outline in outlines.items():
        colour = PALETTE[number % len(PALETTE)]
        pale = f' data-partial="true" fill-opacity="0.35" stroke="{colour}"' if partial else ""
        frame.parts.append(f'<path class="bars" data-series={quoteattr(series[number].name)} '
                           f'd="{"".join(outline)}" fill="{colour}"{pale}/>')
    if labels:
        frame.parts.append('<g class="categories" text-anchor="end" transform="rotate(-45)">'
                           + "".join(labels) + "</g>")
    frame.parts.append(f'<line class="axis" x1="{frame.left}" x2="{frame.width - frame.right}" '
                       f'y1="{zero:.1f}" y2="{zero:.1f}" stroke="#333"/>')
    _legend(frame, legend, colours)
    return _close(frame)


def line_chart(chart: str, title: str, series: Sequence[LineSeries], *, x_label: str,
               y_label: str, references: Sequence[Reference] = (), marks: Sequence[Mark] = (),
               width: int = 560, height: int = 340, tooltip: str | None = None) -> str:
    """Lines with a point per value, optional reference lines and highlighted marks;
    ``tooltip``: the whole title where ``title`` is a shortened one.

    A series' points are one ``path.points`` of dots (zero-length subpaths with round caps),
    without a tooltip each (the marks keep theirs): a ``circle.point`` with a tooltip per point
    drew a sweep's 16 curves of 101 points as 1,616 elements, 0.7 MB (the values are in the
    job's tables and ``curves.json``)."""
    frame = _framed(width, height, [s.name for s in series])
    _open(frame, chart, title, tooltip)
    xs = [x for s in series for x, y in s.points if _finite(x) and _finite(y)]
    ys = [y for s in series for x, y in s.points if _finite(x) and _finite(y)]
    xs += [r.value for r in references if r.axis == "x" and _finite(r.value)]
    ys += [r.value for r in references if r.axis == "y" and _finite(r.value)]
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    y_ticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
    _y_axis(frame, y_ticks, y_label)
    x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        return (frame.left + frame.plot_width * (x - x_low) / (x_high - x_low),
                frame.top + frame.plot_height * (1 - (y - y_low) / (y_high - y_low)))

    base = frame.top + frame.plot_height
    for tick in x_ticks:
        x, _ = at(tick, y_low)
        frame.parts.append(f'<text x="{x:.1f}" y="{base + 16:.1f}" text-anchor="middle">'
                           f"{_fmt(tick)}</text>")
    frame.parts.append(f'<line class="axis" x1="{frame.left}" x2="{frame.width - frame.right}" '
                       f'y1="{base}" y2="{base}" stroke="#333"/>')
    frame.parts.append(f'<text class="axis-label" x="{frame.left + frame.plot_width / 2:.1f}" '
                       f'y="{base + 34:.1f}" text-anchor="middle">{escape(x_label)}</text>')

    for reference in references:
        if not _finite(reference.value):
            continue
        if reference.axis == "y":
            (x1, y1), (x2, y2) = at(x_low, reference.value), at(x_high, reference.value)
            text_x, text_y, anchor = x2 - 4, (y1 + 12 if reference.opposite else y1 - 4), "end"
        else:
            (x1, y1), (x2, y2) = at(reference.value, y_low), at(reference.value, y_high)
            # Labels of lines in the right half go to their left, so they stay inside the chart.
            right_half = x1 > frame.left + frame.plot_width / 2
            text_y = y1 - 4 if reference.opposite else y2 + 12
            text_x = x1 - 4 if right_half else x1 + 4
            anchor = "end" if right_half else "start"
        frame.parts.append(
            f'<line class="reference" data-label={quoteattr(reference.label)} x1="{x1:.1f}" '
            f'y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#555" stroke-dasharray="5 4"/>')
        frame.parts.append(f'<text x="{text_x:.1f}" y="{text_y:.1f}" text-anchor="{anchor}" '
                           f'fill="#555">{escape(reference.label)}</text>')

    colours = []
    for number, item in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        colours.append(colour)
        points = [(x, y) for x, y in item.points if _finite(x) and _finite(y)]
        if not points:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}"
                        for i, (px, py) in enumerate(at(x, y) for x, y in points))
        dash = ' stroke-dasharray="6 3"' if _dashed(item, number) else ""
        frame.parts.append(f'<path class="series" data-series={quoteattr(item.name)} d="{path}" '
                           f'fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        dots = "".join(f"M{px:.1f},{py:.1f}Z" for px, py in (at(x, y) for x, y in points))
        frame.parts.append(f'<path class="points" data-series={quoteattr(item.name)} '
                           f'd="{dots}" stroke="{colour}" stroke-width="6" '
                           'stroke-linecap="round" fill="none"/>')

    drawn: list[tuple[float, float, float, float]] = []
    for mark in marks:
        if not (_finite(mark.x) and _finite(mark.y)):
            continue
        px, py = at(mark.x, mark.y)
        # Labels of marks near the right edge go to their left, so they stay inside the chart.
        near_right = px > frame.left + 0.75 * frame.plot_width
        text_x, anchor = (px - 9, "end") if near_right else (px + 9, "start")
        box = _label_box(text_x, py - 9, anchor, mark.label)
        # A label over one already drawn is left out (the ring keeps it as a tooltip): a
        # sweep's 16 curves that chose one α drew 16 "α = 0.37" on top of each other, a blot.
        shown = bool(mark.label) and not any(_overlap(box, other) for other in drawn)
        tooltip = f"<title>{escape(mark.label)}</title>" if mark.label else ""
        frame.parts.append(
            f'<circle class="mark" data-label={quoteattr(mark.label)} cx="{px:.1f}" cy="{py:.1f}" '
            f'r="7" fill="none" stroke="{HIGHLIGHT}" stroke-width="2.5">{tooltip}</circle>')
        if shown:
            drawn.append(box)
            frame.parts.append(
                f'<text class="mark-label" x="{text_x:.1f}" y="{py - 9:.1f}" '
                f'text-anchor="{anchor}" fill="{HIGHLIGHT}" style="font-weight:bold">'
                f"{escape(mark.label)}</text>")
    _legend(frame, [s.name for s in series], colours,
            [_dashed(item, number) for number, item in enumerate(series)])
    return _close(frame)


#: Width (px) of a character of a mark's label (11 px bold sans-serif, a little generous) and
#: the label's height: the box :func:`_label_box` estimates without a font at hand.
MARK_CHAR_WIDTH = 7.0
MARK_LABEL_HEIGHT = 12.0


def _label_box(x: float, baseline: float, anchor: str,
               label: str) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) a mark's label about covers, drawn at ``x`` with
    ``anchor`` ("start" or "end") on ``baseline``."""
    width = MARK_CHAR_WIDTH * len(label)
    left = x - width if anchor == "end" else x
    return left, baseline - MARK_LABEL_HEIGHT, left + width, baseline


def _overlap(one: tuple[float, float, float, float],
             other: tuple[float, float, float, float]) -> bool:
    return one[0] < other[2] and other[0] < one[2] and one[1] < other[3] and other[1] < one[3]


def _dashed(series: LineSeries, number: int) -> bool:
    """Asked for, or the palette's second round: a sweep's 9th to 16th curves reuse the first
    eight colours, and are told apart by their dashes."""
    return series.dashed or (number // len(PALETTE)) % 2 == 1
