"""The torch-free charts: shapes per data point, labels and tooltips, escaping, non-finite
values, axis ticks."""

from __future__ import annotations

import itertools
import re
import sys
import xml.etree.ElementTree as ElementTree

from reporting.charts import Curve, alpha_chart, finetune_chart, job_charts, mrc_chart, tradeoff_chart
from reporting.page import ReportData, render_report
from reporting.svg import CATEGORY_CHARS, LEGEND_CHARS, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)  # well-formed XML, or this raises


def _shapes(root: ElementTree.Element, element: str, series: str, *,
            partial: bool | None = None) -> int:
    """Bars (``element`` "bars") or dots ("points") drawn for ``series``: each is a closed
    subpath of one of its paths (``partial``: only the pale bars, or only the others)."""
    return sum((p.get("d") or "").count("Z") for p in root.iter(f"{SVG}path")
               if p.get("class") == element and p.get("data-series") == series
               and (partial is None or (p.get("data-partial") == "true") == partial))


def _labels(root: ElementTree.Element) -> list[list[ElementTree.Element]]:
    """The category labels of each bar panel, in order."""
    return [list(g.iter(f"{SVG}text")) for g in root.iter(f"{SVG}g")
            if g.get("class") == "categories"]


def _curve(name: str = "fc", chosen: float | None = 0.5) -> Curve:
    points = [{"alpha": a / 4, "clean_accuracy": 90 + a, "robust_accuracy": 60 - a}
              for a in range(5)]
    return Curve(name, points, chosen)


def test_mrc_chart_has_one_bar_per_module_and_panel() -> None:
    rows = [{"module": f"layer{i}", "mrc": 0.1 * i, "robust_accuracy_drop": float(i)}
            for i in range(6)]
    root = _parse(mrc_chart(rows, "layer2"))
    assert _shapes(root, "bars", "MRC") == _shapes(root, "bars", "robust accuracy drop") == 6
    top, bottom = _labels(root)
    assert [t.text for t in top] == [t.text for t in bottom] == [f"{i + 1} layer{i}"
                                                                 for i in range(6)]
    # Each module named whole once, with its values: the top panel's label's tooltip.
    assert [t.findtext(f"{SVG}title") for t in top] == [
        f"{i + 1} layer{i}: MRC = {0.1 * i:.4g}, robust accuracy drop = {i}" for i in range(6)]
    assert all(t.find(f"{SVG}title") is None for t in bottom)
    highlighted = [t.text for t in top + bottom if "bold" in (t.get("style") or "")]
    assert highlighted == ["3 layer2", "3 layer2"]
    assert len([e for e in root.iter(f"{SVG}rect") if e.get("class") == "selected"]) == 2
    # Bars are proportional: the tallest MRC bar belongs to the largest MRC (table order).
    path = next(p for p in root.iter(f"{SVG}path") if p.get("data-series") == "MRC")
    heights = [float(bottom_y) - float(top_y) for bottom_y, top_y in
               re.findall(r"M[\d.]+,([\d.]+)V([\d.]+)", path.get("d") or "")]
    assert heights == sorted(heights) and heights[-1] > heights[1] > 0


def test_names_are_escaped_and_non_finite_values_left_out() -> None:
    rows = [{"module": "<script>alert(1)</script>", "mrc": float("nan"),
             "robust_accuracy_drop": None}, {"module": "a&b", "mrc": 1.0,
                                             "robust_accuracy_drop": 2.0}]
    svg = mrc_chart(rows, None)
    root = _parse(svg)
    assert "<script>" not in svg
    assert _shapes(root, "bars", "MRC") == _shapes(root, "bars", "robust accuracy drop") == 1
    top, _ = _labels(root)
    assert [t.findtext(f"{SVG}title") for t in top] == [
        "1 <script>alert(1)</script>: MRC –, robust accuracy drop –",
        "2 a&b: MRC = 1, robust accuracy drop = 2"]


def test_interpolation_charts_mark_the_chosen_alpha_and_the_baseline() -> None:
    root = _parse(alpha_chart(_curve()))
    references = {e.get("data-label") for e in root.iter(f"{SVG}line")
                  if e.get("class") == "reference"}
    assert references == {"θ_AT robust accuracy", "α = 0.5"}
    assert len([e for e in root.iter(f"{SVG}path") if e.get("class") == "series"]) == 2
    both = _parse(tradeoff_chart([_curve("fc", 0.5), _curve("conv1", None)]))
    series = [e.get("data-series") for e in both.iter(f"{SVG}path") if e.get("class") == "series"]
    assert series == ["fc", "conv1"]
    marks = [e.get("data-label") for e in both.iter(f"{SVG}circle") if e.get("class") == "mark"]
    assert marks == ["α = 0.5"]


def test_finetune_chart_marks_the_best_validation_epoch() -> None:
    epochs = [{"epoch": 1, "train_accuracy": 80.0, "val_accuracy": 70.0},
              {"epoch": 2, "train_accuracy": 85.0, "val_accuracy": 75.0},
              {"epoch": 3, "train_accuracy": 90.0, "val_accuracy": 72.0}]
    root = _parse(finetune_chart(epochs))
    marks = [e.get("data-label") for e in root.iter(f"{SVG}circle") if e.get("class") == "mark"]
    assert marks == ["best epoch 2"]


def test_job_charts_leave_out_what_has_no_data() -> None:
    assert job_charts([], None, [], []) == {}
    assert set(job_charts([], None, [], [_curve()])) == {"alpha", "tradeoff"}


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    ticks = nice_ticks(0.03, 12.9)
    assert ticks[0] <= 0.03 and ticks[-1] >= 12.9
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1 and re.fullmatch(r"[125](\.0)?|[125]0*(\.0)?|0\.0*[125]", str(steps.pop()))
    assert nice_ticks(5.0, 5.0)[0] <= 5.0 <= nice_ticks(5.0, 5.0)[-1]


def test_report_page_is_self_contained_html() -> None:
    html = render_report(ReportData("job1", "succeeded", "fc", 0.5, {}, [], [], [_curve()],
                                    {"seed": 0}))
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "data-figure='tradeoff'" in html and "&quot;seed&quot;: 0" in html


def test_reporting_imports_no_torch() -> None:
    import subprocess

    code = "import reporting.charts, reporting.page, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_points_not_attacked_are_left_out_of_the_robust_series() -> None:
    # interpolation.curve = "selection": α = 0.25 and 0.75 could not change the choice.
    curve = _curve()
    for point in curve.points:
        if point["alpha"] in (0.25, 0.75):
            point["robust_accuracy"] = None
    alpha = _parse(alpha_chart(curve))
    assert (_shapes(alpha, "points", "robust accuracy"),
            _shapes(alpha, "points", "clean accuracy")) == (3, 5)
    assert _shapes(_parse(tradeoff_chart([curve])), "points", "fc") == 3


def test_long_module_names_are_shortened_in_the_chart_and_kept_whole_in_tooltips() -> None:
    long_name = "backbone." + "stages.3.blocks.2." * 12 + "attn.qkv"
    rows = [{"module": long_name, "mrc": 0.5, "robust_accuracy_drop": 1.0},
            {"module": "fc", "mrc": 0.1, "robust_accuracy_drop": 0.5}]
    svg = mrc_chart(rows, long_name)
    top, bottom = _labels(_parse(svg))
    # The label drawn is the row's number and the name's tail, short enough to stay inside
    # the SVG; the top panel's tooltip keeps the whole name, the only place it is.
    drawn = ["1 …" + long_name[-(CATEGORY_CHARS - 3):], "2 fc"]
    assert [t.text for t in top] == [t.text for t in bottom] == drawn
    assert all(len(text) <= CATEGORY_CHARS for text in drawn)
    assert (top[0].findtext(f"{SVG}title") or "").startswith(f"1 {long_name}: MRC = 0.5")
    assert svg.count(long_name) == 1
    legend = tradeoff_chart([_curve(long_name, 0.5), _curve("fc", None)])
    shown = [e.text for g in _parse(legend).iter(f"{SVG}g") if g.get("class") == "legend"
             for e in g.iter(f"{SVG}text")]
    assert "…" + long_name[-(LEGEND_CHARS - 1):] in shown and "fc" in shown
    assert all(text is not None and len(text) <= LEGEND_CHARS for text in shown)


def test_a_sweeps_legend_wraps_inside_the_chart() -> None:
    names = [f"layer{i}.conv{i % 3} (lr {0.01 * (i + 1):g})" for i in range(16)]
    svg = _parse(tradeoff_chart([_curve(name, None) for name in names]))
    width, height = float(svg.get("width", 0)), float(svg.get("height", 0))
    assert svg.get("viewBox") == f"0 0 {svg.get('width')} {height:g}"
    legend = next(g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend")
    texts = list(legend.iter(f"{SVG}text"))
    assert [t.text for t in texts] == names  # every candidate named, none cut
    rows = {float(t.get("y", 0)) for t in texts}
    assert len(rows) > 1  # wrapped (before: one row running ~3,000 px past a 560 px chart)
    for text in texts:
        x, y = float(text.get("x", 0)), float(text.get("y", 0))
        assert x + 6.5 * len(text.text or "") <= width and y <= height
    # The plot keeps its size: the legend rows were added below it.
    one_row = _parse(tradeoff_chart([_curve("fc", None)]))
    assert height > float(one_row.get("height", 0))


def test_curves_sharing_a_colour_are_told_apart_by_dashes() -> None:
    names = [f"m{i}" for i in range(16)]
    svg = _parse(tradeoff_chart([_curve(name, None) for name in names]))
    styles = {p.get("data-series"): (p.get("stroke"), p.get("stroke-dasharray"))
              for p in svg.iter(f"{SVG}path") if p.get("class") == "series"}
    assert len(set(styles.values())) == 16  # colour and dash together: no two curves alike
    legend = next(g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend")
    samples = [(e.get("fill") or e.get("stroke"), e.tag == f"{SVG}line") for e in legend
               if e.tag in (f"{SVG}rect", f"{SVG}line")]
    assert [(colour, dashed) for colour, dashed in samples] == [
        (styles[name][0], styles[name][1] is not None) for name in names]


def test_unmeasured_and_non_finite_points_are_left_out_not_fatal() -> None:
    # The exact α selection leaves points unattacked (null, or a "≤" bound); a value may be NaN
    # or missing. Before: float(None) at α = 0 failed the whole report page (a 500).
    points = [{"alpha": 0.0, "clean_accuracy": 80.0, "robust_accuracy": None},
              {"alpha": 0.25},
              {"alpha": 0.5, "clean_accuracy": float("nan"), "robust_accuracy": None,
               "robust_accuracy_at_most": 40.0},
              {"alpha": 0.75, "clean_accuracy": 81.0, "robust_accuracy": 39.0},
              {"alpha": 1.0, "clean_accuracy": 82.0, "robust_accuracy": 41.0}]
    curve = Curve("fc", points, 0.5)
    alpha = _parse(alpha_chart(curve))
    assert _shapes(alpha, "points", "clean accuracy") == 3  # α = 0, 0.75, 1
    assert _shapes(alpha, "points", "robust accuracy") == 2  # α = 0.75, 1
    references = {e.get("data-label") for e in alpha.iter(f"{SVG}line")
                  if e.get("class") == "reference"}
    assert references == {"α = 0.5"}  # no θ_AT line: α = 0 was not attacked
    trade = _parse(tradeoff_chart([curve, Curve("g", [{"alpha": 0.0}], 0.0)]))
    assert (_shapes(trade, "points", "fc"), _shapes(trade, "points", "g")) == (2, 0)
    page = render_report(ReportData(job_id="j", status="failed", curves=[curve],
                                    chosen_alpha=0.5, error="stage_failed: out of memory"))
    assert "≤ 40" in page and "stage_failed: out of memory" in page


def test_values_of_any_finite_magnitude_draw_a_readable_chart() -> None:
    # MRC values all below ~1e-12 (a module the attack barely moves) gave ticks rounded to one
    # value: the chart divided by zero, failing the job's last stage and the report page (500).
    # Values near the float limits overflowed (inf span) or underflowed (log10 of 0) the same way.
    for values in ([3e-14, 0.0], [-2e-13, 1e-13], [5e-324, 0.0], [1.7e308, 0.0],
                   [-1e308, 1e308], [1e20, 1e20]):
        rows = [{"module": f"m{i}", "mrc": v, "robust_accuracy_drop": v}
                for i, v in enumerate(values)]
        epochs = [{"epoch": i + 1, "train_loss": v, "train_accuracy": 50.0, "val_accuracy": 50.0}
                  for i, v in enumerate(values)]
        charts = job_charts(rows, "m0", epochs, [])
        for svg in charts.values():
            root = _parse(svg)
            for element in root.iter():
                for name in ("x", "y", "x1", "x2", "y1", "y2", "height", "cx", "cy"):
                    if element.get(name) is not None:
                        assert re.fullmatch(r"-?\d+(\.\d+)?", element.get(name, "")), svg
        ticks = nice_ticks(min(values), max(values))
        assert all(a < b for a, b in itertools.pairwise(ticks)), (values, ticks)
    tiny = _parse(mrc_chart([{"module": "a", "mrc": 3e-14, "robust_accuracy_drop": 0.0}], "a"))
    labels = {e.text for e in tiny.iter(f"{SVG}text")  # the y axis's tick labels
              if e.get("class") is None and e.get("text-anchor") == "end"}
    assert len(labels) > 2, labels  # not every tick printed as "0"


def test_one_value_is_drawn_inside_its_axis_not_on_it() -> None:
    # A fine-tune of one epoch, the first α point: one value per axis. Its range was [v, 2v],
    # the point drawn on the axis in the chart's corner.
    for value in (80.5, 1.0, -3.0, 67.19, 1e-14):
        ticks = nice_ticks(value, value)
        span = ticks[-1] - ticks[0]
        assert ticks[0] + span / 4 <= value <= ticks[-1] - span / 4, (value, ticks)
    assert nice_ticks(0.0, 0.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # bars at 0: zero at the bottom


def test_alpha_chart_title_keeps_a_long_module_name_to_its_tail() -> None:
    from reporting.charts import TITLE_NAME_CHARS, alpha_chart

    name = "backbone." + "stages.3.blocks.2." * 6 + "attn.qkv"
    root = _parse(alpha_chart(_curve(name)))
    shown = next(e for e in root.iter(f"{SVG}text") if e.get("class") == "title").text or ""
    # Drawn: the formula and the name's tail; the name ran past both edges of the 560 px chart.
    assert shown.startswith("Interpolation θ_α") and shown.endswith("attn.qkv)")
    assert len(shown) <= 45 + TITLE_NAME_CHARS
    assert name in (root.findtext(f"{SVG}title") or "") and name in root.get("aria-label", "")


def test_mrc_bars_of_rows_stopped_early_are_drawn_as_lower_bounds() -> None:
    rows = [{"module": "conv1", "mrc": 0.6, "robust_accuracy_drop": 17.0, "exact": False},
            {"module": "fc", "mrc": 0.25, "robust_accuracy_drop": 15.0, "exact": True}]
    root = _parse(mrc_chart(rows, "fc"))
    # mrc.table = "selection": conv1's MRC is at least 0.6 (the table says "≥ 0.6"); its bars
    # looked like measured ones.
    assert _shapes(root, "bars", "MRC", partial=True) == 1
    assert _shapes(root, "bars", "MRC", partial=False) == 1
    top, _ = _labels(root)
    assert [t.findtext(f"{SVG}title") for t in top] == [
        "1 conv1: MRC ≥ 0.6, robust accuracy drop ≥ 17",
        "2 fc: MRC = 0.25, robust accuracy drop = 15"]
    legend = " ".join(e.text or "" for e in root.iter(f"{SVG}text"))
    assert "stopped early" in legend
    full = _parse(mrc_chart([{**row, "exact": True} for row in rows], "fc"))
    assert "stopped early" not in " ".join(e.text or "" for e in full.iter(f"{SVG}text"))


def test_a_sweeps_marks_at_one_alpha_keep_one_readable_label() -> None:
    """16 candidates that chose the same α have their rings close together: each label was
    drawn, 16 "α = 0.37" on top of each other. Labels that would overlap are left out; every
    ring stays, its label as data-label and tooltip."""
    alphas = [round(i * 0.01, 10) for i in range(101)]
    curves = [Curve(f"backbone.stages.3.blocks.{i}.attn.qkv",
                    [{"alpha": a, "clean_accuracy": 80 + 5 * a + i * 0.1,
                      "robust_accuracy": 45 - 3 * a * a - i * 0.05} for a in alphas], 0.37)
              for i in range(16)]
    root = _parse(tradeoff_chart(curves))
    rings = [e for e in root.iter(f"{SVG}circle") if e.get("class") == "mark"]
    assert [e.get("data-label") for e in rings] == ["α = 0.37"] * 16
    assert all(e.findtext(f"{SVG}title") == "α = 0.37" for e in rings)
    width = 7.0 * len("α = 0.37")  # at most: 11 px bold is narrower than 7 px a character
    # Each drawn label's left edge (it ends at x when anchored at its end) and baseline.
    labels = [(float(e.get("x", 0)) - (width if e.get("text-anchor") == "end" else 0.0),
               float(e.get("y", 0))) for e in root.iter(f"{SVG}text") if e.text == "α = 0.37"]
    assert 1 <= len(labels) < 16
    for (x1, y1), (x2, y2) in itertools.combinations(labels, 2):
        assert abs(x1 - x2) >= width or abs(y1 - y2) >= 12, (x1, y1, x2, y2)


def test_a_curves_points_are_one_path_and_its_legend_names_it_whole() -> None:
    """Each point was a circle naming its series whole (``data-series``) with a tooltip: a
    sweep's 16 curves of 101 points repeated a 200-character module name 1,616 times (0.7 MB
    of interpolation.svg). A curve's points are one path of dots; the legend entry's tooltip
    names the curve whole."""
    name = "backbone." + "stages.3.blocks.11." * 11 + "attn.qkv"
    assert len(name) > 200
    svg = tradeoff_chart([_curve(name)])
    root = _parse(svg)
    assert not [c for c in root.iter(f"{SVG}circle") if c.get("class") == "point"]
    assert _shapes(root, "points", name) == 5
    assert svg.count(name) == 3  # the line's and the dots' data-series, the legend's tooltip
    legend = next(e for e in root.iter(f"{SVG}g") if e.get("class") == "legend")
    assert [t.findtext(f"{SVG}title") for t in legend.iter(f"{SVG}text")] == [name]


def test_a_sweeps_curves_are_named_apart_whatever_its_rates() -> None:
    # ":g" keeps 6 significant digits: two rates of a grid closer than that gave two
    # candidates' curves (their charts' legend, the report's tables) one name.
    from reporting.charts import sweep_curves

    candidates = [{"module": "fc", "lr": lr, "points": [], "chosen_alpha": None}
                  for lr in (0.001, 0.0010000001, 10.0, 1e-05)]
    assert [curve.name for curve in sweep_curves(candidates, None)] == [
        "fc (lr 0.001)", "fc (lr 0.0010000001)", "fc (lr 10)", "fc (lr 1e-05)"]


def test_a_robust_tolerance_draws_the_bar_the_chosen_alpha_kept() -> None:
    # θ_AT's robust accuracy is 60; with a tolerance of 1.5 the rule allows 58.5. Only θ_AT's line
    # was drawn, and a chosen point under it read as robustness lost against the rule.
    def lines(root: ElementTree.Element) -> dict[str, list[float]]:
        return {str(e.get("data-label")): [float(e.get(k) or "nan") for k in ("x1", "y1", "x2", "y2")]
                for e in root.iter(f"{SVG}line") if e.get("class") == "reference"}

    alpha = lines(_parse(alpha_chart(_curve(), tolerance=1.5)))
    theta, bar = alpha["θ_AT robust accuracy"], alpha["robust bar: θ_AT − 1.5"]
    assert theta[1] == theta[3] and bar[1] == bar[3] and bar[1] > theta[1]  # lower on the page
    trade = lines(_parse(tradeoff_chart([_curve()], tolerance=1.5)))
    assert trade["robust bar: θ_AT − 1.5"][0] < trade["θ_AT robustness"][0]
    assert set(lines(_parse(alpha_chart(_curve())))) == {"θ_AT robust accuracy", "α = 0.5"}
    page = render_report(ReportData("j", "succeeded", "fc", 0.5, curves=[_curve()],
                                    robust_tolerance=1.5))
    assert page.count('data-label="robust bar: θ_AT − 1.5"') == 2
