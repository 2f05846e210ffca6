"""The figures of a RiFT job (the paper's appendix C figures, docs/algorithm.md) as SVG text.

- :func:`mrc_chart`: MRC per module and the robust-accuracy drop at the worst perturbation, two
  bar panels over the same modules (the paper's Figs C.1–C.4), the selected module highlighted;
- :func:`finetune_chart`: training and validation accuracy per fine-tuning epoch, best epoch marked;
- :func:`alpha_chart`: clean and robust accuracy against α, with θ_AT's robust accuracy as a line
  and the chosen α marked;
- :func:`tradeoff_chart`: clean against robust accuracy, one curve per fine-tuned candidate module
  (one point per α), θ_AT's robust accuracy as a vertical line, each chosen α marked (Fig C.5).

Inputs are plain rows as the API and the worker hold them (dicts with the pipeline's keys), so both
sides draw the same pictures. Accuracies are percentages, each labelled with the split it was
measured on (:class:`Splits`): a job may choose α on the validation split and report its before and
after on the test split, and the unlabelled charts read as the test numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reporting.svg import (
    BarSeries,
    LineSeries,
    Mark,
    Reference,
    bar_chart,
    line_chart,
    short_label,
)
from rift.rate_text import rate_text

#: File names under which the worker stores the charts as job artifacts.
CHART_ARTIFACTS = {"mrc": "mrc.svg", "finetune": "finetune.svg", "alpha": "interpolation_alpha.svg",
                   "tradeoff": "interpolation.svg"}
#: Characters of the module name in the α chart's title: the rest of the title takes 44 of the
#: about 70 that 13 px bold text fits into the chart's 560 px; a longer name ran past both
#: edges, cut off (its start and the title's with it). The whole name is the title's tooltip.
TITLE_NAME_CHARS = 24


@dataclass(frozen=True)
class Splits:
    """Which split each chart's accuracies were measured on: ``curve`` the interpolation curves'
    (``interpolation.selection_split``), ``epochs`` the fine-tuning epochs' (``finetune.
    selection_split``). The defaults are the configuration's."""

    curve: str = "test"
    epochs: str = "validation"

    @classmethod
    def of_config(cls, config: Mapping[str, Any] | None) -> Splits:
        """The splits of a job's configuration as JSON (its ``spec``; torch-free, so the API can
        read it), the defaults where a section or setting is missing."""
        config = config or {}
        curve = (config.get("interpolation") or {}).get("selection_split")
        epochs = (config.get("finetune") or {}).get("selection_split")
        return cls(curve if isinstance(curve, str) else cls.curve,
                   epochs if isinstance(epochs, str) else cls.epochs)


def alpha_text(alpha: float) -> str:
    """α as on its grid: grid values are rounded to 10 decimals (``rift.interpolation``), so 10
    significant digits show every one whole; 4 (a table's usual) showed 0.13095 of a 0.00015 grid
    as 0.131, an α the job never measured."""
    return f"{alpha:.10g}"


@dataclass(frozen=True)
class Curve:
    """One interpolation curve: ``points`` have ``alpha``, ``clean_accuracy``, ``robust_accuracy``;
    ``name`` says what was fine-tuned (the module); ``chosen_alpha`` is None when none was chosen."""

    name: str
    points: Sequence[Mapping[str, Any]]
    chosen_alpha: float | None = None
    #: A sweep's curve whose candidate the rule picked across all curves: its α is the job's
    #: (every candidate's curve marks its own α).
    picked: bool = False

    def chosen_point(self) -> Mapping[str, Any] | None:
        if self.chosen_alpha is None:
            return None
        return next((p for p in self.points
                     if math.isclose(float(p["alpha"]), self.chosen_alpha, abs_tol=1e-9)), None)

    def baseline_robust_accuracy(self) -> float | None:
        """θ_AT's robust accuracy: the curve's α = 0 point, which is θ_AT itself (None where that
        point was not attacked, as the exact α selection may leave it)."""
        start = next((p for p in self.points if float(p["alpha"]) == 0.0), None)
        return None if start is None else measured(start, "robust_accuracy")


def sweep_curves(candidates: Sequence[Mapping[str, Any]], chosen: int | None) -> list[Curve]:
    """One curve per sweep candidate (``module``, ``lr``, ``points``, ``chosen_alpha``, as in
    ``curves.json``), the chosen one first; named by module, with the rate when rates differ.
    A candidate excluded from the pick (``"excluded"``: its fine-tuning diverged) has no curve."""
    rates = {c.get("lr") for c in candidates}
    curves = [Curve(str(c.get("module")) + (f" (lr {rate_text(float(c['lr']))})" if len(rates) > 1 else ""),
                    list(c.get("points") or []),
                    float(c["chosen_alpha"]) if c.get("chosen_alpha") is not None else None,
                    picked=index == chosen)
              for index, c in enumerate(candidates)]
    drawn = [not c.get("excluded") for c in candidates]
    if chosen is not None and 0 <= chosen < len(curves):
        curves.insert(0, curves.pop(chosen))
        drawn.insert(0, drawn.pop(chosen))
    return [curve for curve, shown in zip(curves, drawn, strict=True) if shown]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def measured(point: Mapping[str, Any], key: str) -> float | None:
    """``point[key]`` as a finite float, or None where it is missing, null (an α the exact
    selection never attacked) or not finite: every chart draws only what this gives, so one
    unmeasured or NaN value leaves a point out instead of failing the whole page."""
    return _number(point.get(key))


def _pairs(points: Sequence[Mapping[str, Any]], x_key: str,
           y_key: str) -> list[tuple[Mapping[str, Any], float, float]]:
    """The points with both values measured, each with its (x, y)."""
    return [(p, x, y) for p in points
            if (x := measured(p, x_key)) is not None and (y := measured(p, y_key)) is not None]


def mrc_chart(rows: Sequence[Mapping[str, Any]], selected: str | None, *,
              compact: bool = False) -> str:
    """Two panels over the modules in table order: MRC, and robust-accuracy drop (points), each
    module labelled by its row number (``mrc.csv``'s, the table's "#") and its name's tail.
    Unless ``compact`` (a page whose table names the modules), the top panel's label of each
    module has a tooltip naming it whole with its two values: once per module, so that the
    stored ``mrc.svg`` reads alone (it named each module 6 times, 0.7–1 MB for 500)."""
    modules = [str(row.get("module", row.get("name", ""))) for row in rows]
    # Rows mrc.table = "selection" stopped early hold lower bounds (the table shows "≥"): their
    # bars are pale, and the legend says so. They were drawn as if measured to the end.
    partial = [row.get("exact") is False for row in rows]
    mrc = [_number(r.get("mrc")) for r in rows]
    drop = [_number(r.get("robust_accuracy_drop")) for r in rows]
    tooltips = () if compact else [
        f"{index + 1} {module}: MRC {_bound(m, stopped)}, robust accuracy drop "
        f"{_bound(d, stopped)}"
        for index, (module, m, d, stopped) in enumerate(zip(modules, mrc, drop, partial,
                                                             strict=True))]
    top = bar_chart("mrc", "Module robust criticality (MRC)", modules,
                    [BarSeries("MRC", mrc, partial)],
                    y_label="MRC (robust loss increase)", highlight=selected, tooltips=tooltips)
    bottom = bar_chart("robust-drop", "Robust accuracy drop at the worst perturbation", modules,
                       [BarSeries("robust accuracy drop", drop, partial)],
                       y_label="drop (percentage points)", highlight=selected)
    width = max(chart_width(top), chart_width(bottom))
    height = _height_of(top) + _height_of(bottom)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-figure" data-figure="mrc" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">\n{top}\n'
            f'<g transform="translate(0,{_height_of(top)})">\n{bottom}\n</g>\n</svg>')


def _bound(value: float | None, stopped: bool) -> str:
    """A value as a tooltip gives it: "≥ x" where its measure stopped early, "–" where none."""
    if value is None:
        return "–"
    return f"{'≥' if stopped else '='} {value:.4g}"


def chart_width(svg: str) -> int:
    """The width (px) a chart of this module is drawn at: its root element's ``width``."""
    return int(svg.split('width="', 1)[1].split('"', 1)[0])


def _height_of(svg: str) -> int:
    return int(svg.split('height="', 1)[1].split('"', 1)[0])


def finetune_chart(epochs: Sequence[Mapping[str, Any]], split: str = "validation") -> str:
    """Training accuracy and the accuracy on the epoch-choosing ``split`` per epoch (the
    ``val_accuracy`` of the rows: the test split's under ``finetune.selection_split: "test"``);
    the best epoch is marked."""
    def series(name: str, key: str) -> LineSeries:
        return LineSeries(name, [(float(e["epoch"]), v) for e in epochs
                                 if (v := _number(e.get(key))) is not None])

    marks = []
    scored = [e for e in epochs if _number(e.get("val_accuracy")) is not None]
    if scored:
        best = max(scored, key=lambda e: float(e["val_accuracy"]))
        marks.append(Mark(float(best["epoch"]), float(best["val_accuracy"]),
                          f"best epoch {best['epoch']}"))
    return line_chart("finetune", "Fine-tuning", [series("train accuracy", "train_accuracy"),
                                                  series(f"{split} accuracy", "val_accuracy")],
                      x_label="epoch", y_label="accuracy (%)", marks=marks)


def _bar(baseline: float | None, tolerance: float, axis: str) -> list[Reference]:
    """θ_AT's robust accuracy as a line and, with a tolerance, the bar the chosen α had to keep
    (``interpolation.robust_tolerance`` below it): a chosen point under θ_AT's line read as a
    loss of robustness the rule did not allow."""
    if baseline is None:
        return []
    lines = [Reference(axis, baseline, "θ_AT robust accuracy" if axis == "y" else "θ_AT robustness")]
    if tolerance > 0 and math.isfinite(tolerance):
        lines.append(Reference(axis, baseline - tolerance, f"robust bar: θ_AT − {tolerance:g}",
                               opposite=True))
    return lines


def alpha_chart(curve: Curve, split: str = "test", tolerance: float = 0.0) -> str:
    """Clean and robust accuracy (on ``split``) against α, θ_AT's robust accuracy (and the bar
    ``tolerance`` points below it) as lines, chosen α marked."""
    points = sorted(curve.points, key=lambda p: float(p["alpha"]))
    clean = LineSeries("clean accuracy", [(x, y) for _, x, y in
                                          _pairs(points, "alpha", "clean_accuracy")])
    # In 'selection' curves the points that could not change the choice were never attacked.
    robust = LineSeries("robust accuracy", [(x, y) for _, x, y in
                                            _pairs(points, "alpha", "robust_accuracy")])
    references = _bar(curve.baseline_robust_accuracy(), tolerance, "y")
    marks = []
    chosen = curve.chosen_point()
    if chosen is not None:
        alpha = float(chosen["alpha"])
        references.append(Reference("x", alpha, f"α = {alpha_text(alpha)}"))
        for key, label in (("clean_accuracy", "chosen"), ("robust_accuracy", "")):
            if (value := measured(chosen, key)) is not None:
                marks.append(Mark(alpha, value, label))
    title = "Interpolation θ_α = (1 − α) θ_AT + α θ_FT ({})"
    return line_chart("alpha", title.format(short_label(curve.name, TITLE_NAME_CHARS)),
                      [clean, robust], x_label="α", y_label=f"accuracy (%, {split} split)",
                      references=references, marks=marks, tooltip=title.format(curve.name))


def tradeoff_chart(curves: Sequence[Curve], split: str = "test", tolerance: float = 0.0) -> str:
    """Clean against robust accuracy (on ``split``), one curve per candidate module (Fig C.5)."""
    series = []
    marks = []
    for curve in curves:
        points = _pairs(sorted(curve.points, key=lambda p: float(p["alpha"])),
                        "robust_accuracy", "clean_accuracy")
        series.append(LineSeries(curve.name, [(x, y) for _, x, y in points]))
        chosen = curve.chosen_point()
        if chosen is not None and _pairs([chosen], "robust_accuracy", "clean_accuracy"):
            marks.append(Mark(float(chosen["robust_accuracy"]), float(chosen["clean_accuracy"]),
                              f"α = {alpha_text(float(chosen['alpha']))}"))
    baseline = next((b for c in curves if (b := c.baseline_robust_accuracy()) is not None), None)
    references = _bar(baseline, tolerance, "x")
    return line_chart("tradeoff", "Clean vs robust accuracy along α", series,
                      x_label=f"robust accuracy (%, {split} split)",
                      y_label=f"clean accuracy (%, {split} split)",
                      references=references, marks=marks)


def job_charts(mrc_rows: Sequence[Mapping[str, Any]], selected: str | None,
               epochs: Sequence[Mapping[str, Any]], curves: Sequence[Curve],
               splits: Splits | None = None, *, compact: bool = False,
               tolerance: float = 0.0) -> dict[str, str]:
    """Every chart of a job, keyed as :data:`CHART_ARTIFACTS`; charts without data are left out.
    ``splits``: what the accuracies were measured on (default: the configuration's defaults).
    ``tolerance``: ``interpolation.robust_tolerance``, drawn as a bar under θ_AT's robustness.
    ``compact``: drawn for the report page, whose tables hold every name and value: the MRC
    chart's labels have no tooltip naming the module (:func:`mrc_chart`); the stored artifacts
    stand alone and keep one per module. Both draw a series as one path, not an element per bar
    or point (:mod:`reporting.svg`)."""
    splits = splits or Splits()
    charts: dict[str, str] = {}
    if mrc_rows:
        charts["mrc"] = mrc_chart(mrc_rows, selected, compact=compact)
    if epochs:
        charts["finetune"] = finetune_chart(epochs, splits.epochs)
    measured = [c for c in curves if c.points]
    # The first curve with points: while a sweep runs, its first candidate may not have
    # finished when others have (their curves were left undrawn until it did).
    if measured:
        charts["alpha"] = alpha_chart(measured[0], splits.curve, tolerance)
        charts["tradeoff"] = tradeoff_chart(measured, splits.curve, tolerance)
    return charts
