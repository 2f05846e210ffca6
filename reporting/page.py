"""The job report as one self-contained HTML page: inline CSS and inline SVG charts, no script and
no external resource (it opens offline, and its Content-Security-Policy can forbid everything else).

Sections: summary (status, module, α, before/after), the job's warnings, the charts of
:mod:`reporting.charts`, the MRC table, the interpolation points of each curve side by side, and
the job's manifest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape as _html_escape
from typing import Any

from reporting.charts import Curve, Splits, alpha_text, chart_width, job_charts, rate_text

#: Charts wider than this (px; the page's 1200 px less its margins) keep their size and scroll
#: sideways in their own box instead of scaling down to the page: the MRC chart of a model with
#: 300 scored modules (6690 px) scaled to 1136 × 54 px, bars and labels too small to see.
WIDE_CHART = 1150

#: Warnings listed open under the summary; the rest (up to the API's 100) fold into a
#: ``<details>`` below them: a sweep's 100 warnings of 2 lines each pushed the charts about
#: 3,000 px down the page.
WARNINGS_SHOWN = 10

#: MRC rows in one open table; a longer table opens with its modules of lowest MRC and folds
#: the rest (:func:`_mrc_table`).
MRC_ROWS_SHOWN = 25

#: The page loads nothing: styles are inline, images are inline SVG.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

# Narrow screens: charts scale down to the page's width (they have a viewBox), wide tables scroll
# inside their own box, and a long module name breaks anywhere instead of widening the page.
_STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
@media (max-width:600px){body{margin:8px}}
svg{max-width:100%;height:auto}figure{margin:0;min-width:0;max-width:100%}
.scroll,.wide{overflow-x:auto;max-width:100%}.wide svg{max-width:none}.curve{min-width:0;max-width:100%}
td.name,dd,h1,h3{overflow-wrap:anywhere}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.name,th.name{text-align:left}tr.selected td{background:#fff1e6;font-weight:bold}
.charts{display:flex;flex-wrap:wrap;gap:16px}.curves{display:flex;flex-wrap:wrap;gap:24px}
pre{background:#f7f7f7;padding:8px;font-size:11px;overflow:auto;max-height:480px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px}dt{font-weight:bold}
p.note{font-size:12px;color:#555;max-width:720px}
dl.warnings{background:#fff8e1;border-left:4px solid #e0a100;padding:8px}
details.more-warnings summary,details.mrc-all summary{cursor:pointer;font-size:13px}
td.row{color:#555}details.mrc-all{margin-top:8px}span.mark{font-weight:normal;color:#555}
@media print{body{margin:0;max-width:none}pre{max-height:none;overflow:visible;white-space:pre-wrap}
.scroll,.wide{overflow:visible}.wide svg{max-width:100%}
details::details-content{content-visibility:visible;display:block}
tr,figure,dt,dd{break-inside:avoid}h2,h3{break-after:avoid}}
"""


@dataclass(frozen=True)
class ReportWarning:
    """One of the job's warnings: where (``stage``, and a sweep ``candidate``), what, and how
    many times it was written."""

    stage: str | None
    message: str
    count: int = 1
    candidate: int | None = None


@dataclass
class ReportData:
    """What the page shows. Row dicts use the API's keys (``module``, ``mrc``, ...)."""

    job_id: str
    status: str
    selected_module: str | None = None
    chosen_alpha: float | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    mrc_rows: Sequence[Mapping[str, Any]] = ()
    epochs: Sequence[Mapping[str, Any]] = ()
    curves: Sequence[Curve] = ()
    manifest: Mapping[str, Any] | None = None
    error: str | None = None
    #: The stage running or next to run, or where the job stopped; its progress (0–1) and
    #: message while it runs.
    stage: str | None = None
    stage_progress: float | None = None
    progress_message: str | None = None
    #: The splits the curves and epochs were measured on (the summary's before/after are always
    #: the test split's): the page names them, as the α=0 row and θ_AT's accuracies differ when
    #: α is chosen on the validation split.
    splits: Splits = field(default_factory=Splits)
    #: The job's warnings (at most the API's bound) and how many distinct ones it has.
    warnings: Sequence[ReportWarning] = ()
    warnings_total: int = 0
    #: The job's labels (key → value), as the API lists them: how a team finds its runs.
    labels: Mapping[str, str] = field(default_factory=dict)
    #: False: ``mrc_rows`` are the rows scored so far (the MRC stage runs, or the job stopped in
    #: it), each with its ``position`` in the final table; ``mrc_total`` the rows it will have.
    mrc_complete: bool = True
    mrc_total: int | None = None
    #: When the job was created, started and finished (timezone-aware; naive ones are UTC): a
    #: saved page read later had no date at all, and which run it was could not be told.
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: ``interpolation.robust_tolerance``: the points of robust accuracy the chosen α may lose
    #: against θ_AT; None when the configuration does not say (the summary leaves it out).
    robust_tolerance: float | None = None


# C0 and C1 controls but tab and newlines, and lone surrogates: a parse error in HTML text (a
# browser draws a box), and what a module name or an error message may hold. They become U+FFFD,
# as in the charts (reporting.svg).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def escape(text: str, quote: bool = True) -> str:
    """``text`` as HTML text or attribute value: markup escaped, control characters replaced."""
    return _html_escape(_NOT_TEXT.sub("\ufffd", text), quote=quote)


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return escape(f"{value:.{digits}g}") if math.isfinite(value) else escape(str(value))
    return escape(str(value))


def _alpha_cell(alpha: Any) -> str:
    """An α whole (:func:`reporting.charts.alpha_text`), "–" for none."""
    return escape(alpha_text(float(alpha))) if isinstance(alpha, int | float) else _cell(alpha)


def _stage(data: ReportData) -> str | None:
    """Where the job is: the stage running with its progress, or the stage it stopped in. A
    page of a running or failed job said only "running" or "failed", and a job in its MRC stage
    showed nothing else at all ("No results yet")."""
    if data.stage is None:
        return None
    if data.status in ("failed", "cancelled"):
        return f"{data.stage} (stopped in it)"
    progress = data.stage_progress
    shown = data.stage
    if data.status == "running" and progress is not None and math.isfinite(progress):
        shown += f", {min(max(progress, 0.0), 1.0):.0%}"
    return shown + (f": {data.progress_message}" if data.progress_message else "")


def _chosen_lr(metrics: Mapping[str, Any]) -> float | None:
    """A sweep's chosen rate (``metrics["sweep"]["lr"]``, recorded by its pick), or None."""
    sweep = metrics.get("sweep")
    lr = sweep.get("lr") if isinstance(sweep, Mapping) else None
    return float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None


def _time(when: datetime | None) -> str:
    """A time in UTC to the second, the zone named (``2026-11-28 06:10:31 UTC``), "–" for none."""
    if when is None:
        return "–"
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _accuracy(values: Mapping[str, Any], key: str) -> float | None:
    value = values.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """RiFT less θ_AT in points, signed, as the summary rounds them: a reader deciding whether to
    ship the weights subtracted the two lines above it by hand."""
    parts = []
    for key, word in (("clean_accuracy", "clean"), ("robust_accuracy", "robust")):
        old, new = _accuracy(before, key), _accuracy(after, key)
        if old is None or new is None:
            return None
        text = f"{new - old:+.4g}"
        parts.append(f"{word} {'−' + text[1:] if text.startswith('-') else text}")
    return " / ".join(parts)


def _tolerance(data: ReportData) -> str | None:
    """The rule the chosen α met, in its units: a page showing only θ_AT's and RiFT's robust
    accuracy left a reader to guess whether a drop was allowed."""
    if data.robust_tolerance is None or not math.isfinite(data.robust_tolerance):
        return None
    less = f" less {data.robust_tolerance:g}" if data.robust_tolerance else ""
    return (f"{data.robust_tolerance:g} points: the chosen α keeps robust accuracy ≥ θ_AT's{less} "
            f"on the {data.splits.curve} split, and has the best clean accuracy of those that do")


def _summary(data: ReportData) -> str:
    before = data.metrics.get("before") or {}
    after = data.metrics.get("after") or {}
    stage = _stage(data)
    change = _change(before, after)
    tolerance = _tolerance(data)
    items = [("job", data.job_id), ("status", data.status),
             ("created / started / finished",
              " / ".join(_time(when) for when in (data.created_at, data.started_at,
                                                   data.finished_at))),
             *([("labels", ", ".join(f"{key}={value}" for key, value in data.labels.items()))]
               if data.labels else []),
             *([("stage", stage)] if stage is not None else []),
             ("fine-tuned module", data.selected_module or "–"),
             # A sweep's: one module may be several candidates, one per rate of lr_grid.
             *([("chosen learning rate", rate_text(lr))]
               if (lr := _chosen_lr(data.metrics)) is not None else []),
             ("chosen α", _alpha_cell(data.chosen_alpha)),
             # The test split's, whichever split α was chosen on (rift.pipeline's before/after).
             ("θ_AT clean / robust (%, test split)",
              f"{_cell(before.get('clean_accuracy'))} / {_cell(before.get('robust_accuracy'))}"),
             ("RiFT clean / robust (%, test split)",
              f"{_cell(after.get('clean_accuracy'))} / {_cell(after.get('robust_accuracy'))}"),
             *([("RiFT − θ_AT (points, test split)", change)] if change is not None else []),
             *([("robust tolerance", tolerance)] if tolerance is not None else [])]
    if data.error:
        items.append(("error", data.error))
    if (next_step := _next_step(data)) is not None:
        items.append(("what next", next_step))
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items) + "</dl>"


def _next_step(data: ReportData) -> str | None:
    """Where a stopped job's reader goes from here: its page said that it failed or was
    cancelled, and no more (nothing on where its log is, nor that a rerun is a new job)."""
    if data.status not in ("failed", "cancelled"):
        return None
    where = (f"The job's events (GET /v1/jobs/{data.job_id}/events, riftctl jobs events "
             f"{data.job_id}) hold each stage's log; ")
    rerun = ("to run it again, submit a new job with its configuration (GET /v1/jobs/"
             f"{data.job_id}, \"config\")")
    if data.status == "cancelled":
        return where + rerun + "."
    return where + "correct the setting the error names, if it names one; " + rerun + "."


def failure_line(code: str | None, message: str | None, field: str | None) -> str | None:
    """The summary's ``error`` line of a failed job: ``code: message``, and the config setting
    the error blames when known (``(field: attack.domain)``), as ``riftctl jobs get`` says it;
    None when the job has no error."""
    if not code:
        return None
    return f"{code}: {message or code}" + (f" (field: {field})" if field else "")


def _warnings(data: ReportData) -> str:
    """The run's warnings, right under the summary: a result the page shows may be one to
    doubt (no α > 0 kept the robustness, a module MRC could not score, ...), and a reader who
    only looks at the charts must see that first. The first :data:`WARNINGS_SHOWN` are open, the
    rest folded (:data:`WARNINGS_SHOWN` says why)."""
    if not data.warnings:
        return "<p class='warnings-none'>No warnings.</p>"
    items = [_warning_item(warning) for warning in data.warnings]
    shown, folded = items[:WARNINGS_SHOWN], items[WARNINGS_SHOWN:]
    rest = (f"<details class='more-warnings'><summary>{len(folded)} more warning(s)</summary>"
            f"<dl class='warnings'>{''.join(folded)}</dl></details>" if folded else "")
    left_off = data.warnings_total - len(data.warnings)
    more = (f"<p class='note'>{left_off} more warning(s) not shown: the job's events hold them "
            f"all (GET /v1/jobs/{escape(data.job_id)}/events).</p>" if left_off > 0 else "")
    return f"<dl class='warnings'>{''.join(shown)}</dl>{rest}{more}"


def _warning_item(warning: ReportWarning) -> str:
    """One warning as a ``<dt>`` (where) and ``<dd>`` (what, and how many times)."""
    where = warning.stage or "run"
    if warning.candidate is not None:
        where += f", candidate {warning.candidate}"
    repeated = f" (×{warning.count})" if warning.count > 1 else ""
    return f"<dt>{escape(where)}</dt><dd>{escape(warning.message + repeated)}</dd>"


def _absent(data: ReportData, what: str) -> str:
    """The line for a section the job has nothing in. "yet" only while it may still come: a
    cancelled or failed job's page said "No MRC table yet", promising what will never come."""
    if data.status in ("queued", "running"):
        return f"<p>No {what} yet.</p>"
    if data.status == "cancelled":
        return f"<p>No {what}: the job was cancelled first.</p>"
    if data.status == "failed":
        return f"<p>No {what}: the job failed first.</p>"
    return f"<p>No {what} recorded.</p>"


def _mrc_table(data: ReportData) -> str:
    """The MRC table. Past :data:`MRC_ROWS_SHOWN` rows, the modules of lowest MRC (those the
    selection rule tries first) come first in a short table and the whole table, in table order,
    folds into a ``<details>``: a browser lays out the 500 rows of a big model only when asked.
    The "#" column is the row's number in table order, which the MRC chart's labels start with
    (they do not repeat the whole name)."""
    if not data.mrc_rows:
        return _absent(data, "MRC table")
    # The row's place in the final table, which a partial one (a sharded stage's rows arrive
    # out of order) shows as it will be.
    rows = [(row["position"] + 1 if isinstance(row.get("position"), int) else number, row)
            for number, row in enumerate(data.mrc_rows, start=1)]
    partial = "" if data.mrc_complete else f"<p class='note partial'>{_scored_so_far(data)}</p>"
    bounds = sum(row.get("exact") is False for row in data.mrc_rows)
    note = (f"<p class='note'>≥: {bounds} module(s) were stopped early (mrc.table = "
            "'selection'): their MRC is at least the value shown, enough to rule them out; "
            "their accuracy columns are where the ascent stopped. The chosen rows are exact."
            "</p>" if bounds else "")
    flagged = sum(bool(row.get("zero_gradient")) for row in data.mrc_rows)
    note += (f"<p class='note'>No effect: {flagged} module(s) got a weight gradient of exactly "
             "zero on every MRC batch (the output does not depend on them): their MRC is 0 by "
             "construction and the selection never chooses them.</p>" if flagged else "")
    if len(rows) <= MRC_ROWS_SHOWN:
        return f"{partial}{_mrc_rows_table(data, rows)}{note}"
    # Rows flagged zero_gradient last: the selection never tries them, whatever their MRC 0.
    lowest = sorted(rows, key=lambda item: (bool(item[1].get("zero_gradient")),
                                            _mrc_order(item[1].get("mrc"))))[:MRC_ROWS_SHOWN]
    return (f"{partial}<p class='note'>The {MRC_ROWS_SHOWN} modules of lowest MRC, which the selection "
            f"tries first; all {len(rows)} follow in table order.</p>"
            f"{_mrc_rows_table(data, lowest)}<details class='mrc-all'><summary>All "
            f"{len(rows)} modules, in table order</summary>{_mrc_rows_table(data, rows)}"
            f"</details>{note}")


def _scored_so_far(data: ReportData) -> str:
    """The note over a partial table: how many rows, and whether more will come."""
    count = (f"{len(data.mrc_rows)} of {data.mrc_total}" if data.mrc_total is not None
             else str(len(data.mrc_rows)))
    if data.status in ("queued", "running"):
        return (f"Scored so far: {count} modules (the MRC stage is running; the table is "
                "complete when it ends, and the chart drawn then).")
    ended = "was cancelled" if data.status == "cancelled" else data.status
    return (f"Scored before the job {escape(ended)}: {count} modules; the MRC stage did not "
            "finish, so no module was selected from this table.")


def _mrc_order(mrc: Any) -> tuple[bool, float]:
    """Lowest MRC first; a missing or non-finite value last."""
    known = isinstance(mrc, int | float) and math.isfinite(mrc)
    return (not known, float(mrc) if known else 0.0)


def _mrc_rows_table(data: ReportData, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> str:
    head = ("<tr><th>#</th><th class='name'>module</th><th>parameters</th><th>MRC</th>"
            "<th>worst robust loss</th><th>robust acc. at worst (%)</th><th>drop (points)</th>"
            "</tr>")
    cells = []
    for number, row in rows:
        module = str(row.get("module", row.get("name", "")))
        selected = " class='selected'" if module == data.selected_module else ""
        # A row stopped early by mrc.table = "selection" holds lower bounds: "≥ value".
        at_least = "≥ " if row.get("exact") is False else ""
        cells.append(f"<tr{selected}><td class='row'>{number}</td>"
                     f"<td class='name'>{escape(module)}{_mark(selected, 'fine-tuned')}"
                     f"{_mark(row.get('zero_gradient'), 'no effect: not chosen')}</td>"
                     f"<td>{_cell(row.get('parameters'))}</td>"
                     f"<td>{at_least}{_cell(row.get('mrc'))}</td>"
                     f"<td>{at_least}{_cell(row.get('worst_robust_loss'))}</td>"
                     f"<td>{_cell(row.get('robust_accuracy_at_worst'))}</td>"
                     f"<td>{_cell(row.get('robust_accuracy_drop'))}</td></tr>")
    return f"<div class='scroll'><table class='mrc-table'>{head}{''.join(cells)}</table></div>"


def _robust_cell(point: Mapping[str, Any]) -> str:
    """The robust accuracy, or "≤ bound" for a point whose attack stopped once it could no longer
    change the choice (``robust_accuracy_at_most``), or "–" for a point never attacked."""
    bound = point.get("robust_accuracy_at_most")
    if point.get("robust_accuracy") is None and bound is not None:
        return f"≤ {_cell(bound)}"
    return _cell(point.get("robust_accuracy"))


def _mark(shown: Any, what: str) -> str:
    """The words a highlighted row carries besides its colour and weight: a screen reader, a
    grey print or a colour-blind reader got no sign of which module was tuned or which α chosen."""
    return f"<span class='mark'> ({escape(what)})</span>" if shown else ""


def _curve_tables(data: ReportData, curves: Sequence[Curve], split: str) -> str:
    blocks = []
    # The job's curve: a sweep's picked candidate, else, once the job has chosen, the first (its
    # module's); a running sweep has none yet.
    first = curves[0] if curves and data.chosen_alpha is not None else None
    jobs = next((curve for curve in curves if curve.picked), first)
    for curve in curves:
        what = "chosen α" if curve is jobs else "this candidate's best α"
        rows = []
        for point in sorted(curve.points, key=lambda p: float(p["alpha"])):
            chosen = (curve.chosen_alpha is not None
                      and math.isclose(float(point["alpha"]), curve.chosen_alpha, abs_tol=1e-9))
            rows.append(f"<tr{' class=selected' if chosen else ''}>"
                        f"<td>{_alpha_cell(point['alpha'])}{_mark(chosen, what)}</td>"
                        f"<td>{_cell(point.get('clean_accuracy'))}</td>"
                        f"<td>{_robust_cell(point)}</td></tr>")
        # Every candidate's curve highlights its own α; only the picked one's is the job's.
        heading = escape(curve.name) + (" (chosen candidate)" if curve.picked else "")
        blocks.append(f"<div class='curve' data-curve='{escape(curve.name, quote=True)}'>"
                      f"<h3>{heading}</h3><table><tr><th>α</th>"
                      f"<th>clean (%, {escape(split)})</th><th>robust (%, {escape(split)})</th>"
                      f"</tr>{''.join(rows)}</table></div>")
    if not blocks:
        return _absent(data, "curve")
    return (f"<div class='curves'>{''.join(blocks)}</div>{_sweep_note(curves)}"
            f"{_split_note(split)}{_robust_legend(curves)}")


def _sweep_note(curves: Sequence[Curve]) -> str:
    """Which highlighted α is the job's: in a sweep every candidate's table highlights the α its
    own curve chose, and they read as several chosen α."""
    if len(curves) < 2:
        return ""
    picked = next((curve.name for curve in curves if curve.picked), None)
    note = ("Each candidate's table highlights the α its own curve chose; "
            + (f"the job's weights are those of {picked} at its α (the rule across all curves)."
               if picked is not None else "the rule across all curves picks once every "
               "candidate has finished."))
    return f"<p class='note'>{escape(note)}</p>"


def _split_note(split: str) -> str:
    """Why the α = 0 row is not θ_AT's accuracy in the summary: the curve's split is not the
    test split (interpolation.selection_split "validation")."""
    if split == "test":
        return ""
    note = (f"The curves are measured on the {split} split, where α is chosen "
            "(interpolation.selection_split); the summary gives θ_AT and the chosen weights on "
            "the test split.")
    return f"<p class='note'>{escape(note)}</p>"


def _robust_legend(curves: Sequence[Curve]) -> str:
    """What "–" and "≤ x" in the robust column mean, when the tables hold any: a reader of a
    selection curve (the default) saw most points without robust accuracy and took it for a
    fault."""
    points = [point for curve in curves for point in curve.points
              if point.get("robust_accuracy") is None]
    if not points:
        return ""
    bounded = any(point.get("robust_accuracy_at_most") is not None for point in points)
    notes = ["– : not attacked: the α choice (interpolation.curve \"selection\", the default) "
             "attacks only the points that could be chosen; \"full\" measures every α"]
    if bounded:
        notes.append("≤ x : attack stopped once the point could no longer be chosen; x is an "
                     "upper bound")
    return f"<p class='note'>{escape('. '.join(notes))}.</p>"


def render_report(data: ReportData) -> str:
    """The whole HTML document."""
    # Compact: the tables below hold every name and value once; the MRC chart refers to its
    # rows by number, without the tooltip naming each module that the stored mrc.svg keeps.
    # A partial MRC table is not drawn: the chart numbers its bars 1..n, not by table position.
    charts = job_charts(data.mrc_rows if data.mrc_complete else (), data.selected_module,
                        data.epochs, data.curves, data.splits, compact=True,
                        tolerance=data.robust_tolerance or 0.0)
    chart_html = "".join(
        f"<figure class='figure{' wide' if chart_width(svg) > WIDE_CHART else ''}' "
        f"data-figure='{name}'>{svg}</figure>" for name, svg in charts.items()
    ) or _absent(data, "results")
    manifest = ("<p>No manifest recorded.</p>" if data.manifest is None else
                f"<pre class='manifest'>{escape(json.dumps(data.manifest, indent=2))}</pre>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CONTENT_SECURITY_POLICY}\">"
        f"<title>RiFT job {escape(data.job_id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>RiFT job {escape(data.job_id)}</h1>{_summary(data)}"
        f"<h2>Warnings</h2>{_warnings(data)}"
        f"<h2>Charts</h2><div class='charts'>{chart_html}</div>"
        f"<h2>Module robust criticality</h2>{_mrc_table(data)}"
        f"<h2>Interpolation</h2>{_curve_tables(data, data.curves, data.splits.curve)}"
        f"<h2>Manifest</h2>{manifest}</body></html>")
