"""The report page of a big result, and the chart files the worker stores beside it, stay small
and still show every module: an MRC table of 500 modules with long dotted names holding markup,
a sweep of 4 modules × 4 learning rates with 21-point α curves (``bench/report_size.py``
measures the same page and files). Before, the charts drew each module's whole name 6 times
and an element with a tooltip per bar and per point: about 1.5 MB for this page (0.39 MB now),
2.2 MB with 101-point curves; 1.1 MB for this ``mrc.svg`` (0.25 MB now)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from reporting.charts import CHART_ARTIFACTS, job_charts, sweep_curves
from reporting.page import ReportData, ReportWarning, escape, render_report
from reporting.svg import escape as svg_escape
from tests.api.report_checks import hostile_module_name, page_problems

MODULES = 500
SWEEP_MODULES = 4
RATES = [0.001, 0.003, 0.01, 0.03]
ALPHAS = [round(i * 0.05, 10) for i in range(21)]
#: What the page may weigh for this result (it was 1.51 MB; it is 0.39 MB).
MAX_BYTES = 450_000
#: What the stored chart files may weigh for it: ``mrc.svg`` was 1,103,986 bytes (248,560 now,
#: most of it each module's whole name, once), ``interpolation.svg`` 167,533 (32,503 now).
MAX_FILE_BYTES = {"mrc.svg": 300_000, "interpolation.svg": 60_000}
SVG = "{http://www.w3.org/2000/svg}"


def big_report() -> tuple[ReportData, list[str]]:
    names = [hostile_module_name(i) for i in range(MODULES)]
    # MRC falls then rises along the table, so the lowest are not the table's first rows.
    rows = [{"module": name, "parameters": 1000 + i, "mrc": abs(i - 300) * 0.001 + 0.0005,
             "worst_robust_loss": 1.5, "robust_accuracy_at_worst": 50.0,
             "robust_accuracy_drop": 0.02 * i, "passes": 10, "exact": i % 50 != 7}
            for i, name in enumerate(names)]
    outcomes = [{"module": module, "lr": rate, "chosen_alpha": 0.35,
                 "points": [{"alpha": a, "clean_accuracy": 80 + 5 * a + index * 0.1,
                             "robust_accuracy": 45 - 3 * a * a - index * 0.05} for a in ALPHAS]}
                for index, (module, rate) in enumerate(
                    (module, rate) for module in names[:SWEEP_MODULES] for rate in RATES)]
    data = ReportData(
        job_id="j", status="succeeded", selected_module=names[300], chosen_alpha=0.35,
        metrics={"before": {"clean_accuracy": 80.0, "robust_accuracy": 45.0},
                 "after": {"clean_accuracy": 81.9, "robust_accuracy": 44.6}},
        mrc_rows=rows, curves=sweep_curves(outcomes, 0),
        epochs=[{"epoch": e, "train_accuracy": 80.0 + e, "val_accuracy": 79.0 + e % 2}
                for e in (1, 2, 3)],
        warnings=[ReportWarning("finetune", f"w{i} in {names[i]}", 1, i % 16) for i in range(100)],
        warnings_total=100, manifest={"job_id": "j"})
    return data, names


def _chart(page: str, name: str) -> str:
    return page.split(f"data-figure='{name}'", 1)[1].split("</figure>", 1)[0]


def test_a_500_module_sweeps_page_stays_small_and_names_every_module() -> None:
    data, names = big_report()
    page = render_report(data)
    size = len(page.encode())
    assert size <= MAX_BYTES, size
    assert page_problems(page, max_bytes=MAX_BYTES) == []
    assert "<script" not in page and "<img" not in page
    # Every module, escaped, in the whole table (folded) in table order, numbered as the chart.
    folded = page.split("<details class='mrc-all'>", 1)[1].split("</details>", 1)[0]
    cells = re.findall(r"<td class='row'>(\d+)</td><td class='name'>([^<]*)"
                       r"(?:<span class='mark'>[^<]*</span>)?</td>", folded)
    assert cells == [(str(i + 1), escape(name)) for i, name in enumerate(names)]
    # The charts hold no whole name of a module: the MRC chart labels each by number and tail.
    mrc = _chart(page, "mrc")
    assert not any(escape(name) in mrc for name in names)
    labels = re.findall(r'<text x="[-\d.]+" y="[-\d.]+"[^>]*>(\d+) …', mrc)
    assert labels == [str(i + 1) for i in range(MODULES)] * 2  # both panels


def test_the_big_pages_charts_draw_one_path_per_series() -> None:
    data, _ = big_report()
    page = render_report(data)
    mrc = _chart(page, "mrc")
    assert "<rect class=\"bar\"" not in mrc
    bars = {(series, 'data-partial' in rest): d.count("Z") for series, d, rest in re.findall(
        r'<path class="bars" data-series="([^"]*)" d="([^"]*)"([^>]*)>', mrc)}
    partial = sum(i % 50 == 7 for i in range(MODULES))
    assert bars == {("MRC", False): MODULES - partial, ("MRC", True): partial,
                    ("robust accuracy drop", False): MODULES - partial,
                    ("robust accuracy drop", True): partial}
    trade = _chart(page, "tradeoff")
    assert "<circle class=\"point\"" not in trade
    dots = re.findall(r'<path class="points" data-series="[^"]*" d="([^"]*)"', trade)
    assert [d.count("Z") for d in dots] == [len(ALPHAS)] * len(RATES) * SWEEP_MODULES
    # Every point's values are still on the page: its curve's table.
    assert page.count("<tr><td>") + page.count("<tr class=selected><td>") == 16 * len(ALPHAS)


def test_a_long_mrc_table_opens_with_its_lowest_mrc_rows() -> None:
    from reporting.page import MRC_ROWS_SHOWN

    data, names = big_report()
    page = render_report(data)
    section = page.split("<h2>Module robust criticality</h2>", 1)[1].split("<h2>", 1)[0]
    first = section.split("<details", 1)[0]
    shown = re.findall(r"<td class='row'>(\d+)</td>", first)
    lowest = sorted(range(MODULES), key=lambda i: data.mrc_rows[i]["mrc"])[:MRC_ROWS_SHOWN]
    assert shown == [str(i + 1) for i in lowest]
    # The module fine-tuned (lowest MRC here) is highlighted in both tables.
    assert section.count(f"<tr class='selected'><td class='row'>301</td><td class='name'>"
                         f"{escape(names[300])}<span class='mark'> (fine-tuned)</span></td>") == 2
    # A table that fits stays one open table.
    small = render_report(ReportData(job_id="j", status="succeeded",
                                     mrc_rows=data.mrc_rows[:MRC_ROWS_SHOWN]))
    assert "<details class='mrc-all'>" not in small
    assert small.count("<td class='name'>") == MRC_ROWS_SHOWN


def test_the_stored_charts_of_a_500_module_sweep_stay_small_and_read_alone() -> None:
    data, names = big_report()
    # As the worker draws them (worker.stages): the files, not the page's compact charts.
    charts = job_charts(data.mrc_rows, data.selected_module, data.epochs, data.curves,
                        data.splits)
    files = {CHART_ARTIFACTS[name]: svg for name, svg in charts.items()}
    sizes = {name: len(svg.encode()) for name, svg in files.items()}
    assert all(sizes[name] <= bound for name, bound in MAX_FILE_BYTES.items()), sizes
    roots = {name: ElementTree.fromstring(svg) for name, svg in files.items()}  # valid XML

    mrc = roots["mrc.svg"]
    assert [e.text for e in mrc.iter(f"{SVG}text") if e.get("class") == "axis-label"] == [
        "MRC (robust loss increase)", "drop (percentage points)"]
    top, bottom = [list(g.iter(f"{SVG}text")) for g in mrc.iter(f"{SVG}g")
                   if g.get("class") == "categories"]
    numbers = [str(i + 1) for i in range(MODULES)]
    assert [(t.text or "").split(" ", 1)[0] for t in top + bottom] == numbers * 2
    # Every module named whole once, after its number (the MRC table's and mrc.csv's row),
    # with its values: the tooltip of its label in the top panel.
    tips = [t.findtext(f"{SVG}title") or "" for t in top]
    assert [tip.split(": MRC ", 1)[0] for tip in tips] == [
        f"{i + 1} {name}" for i, name in enumerate(names)]
    assert all(files["mrc.svg"].count(svg_escape(name)) == 1 for name in names)
    assert "MRC ≥ " in tips[7] and "MRC = " in tips[8]  # row 8 (i % 50 == 7) stopped early
    # The selected module is marked in both panels: its column shaded, its label bold.
    bold = [(t.text or "").split(" ", 1)[0] for t in top + bottom
            if "bold" in (t.get("style") or "")]
    assert bold == ["301", "301"]
    assert len([e for e in mrc.iter(f"{SVG}rect") if e.get("class") == "selected"]) == 2
    bars = [(p.get("data-series"), (p.get("d") or "").count("Z")) for p in mrc.iter(f"{SVG}path")
            if p.get("class") == "bars"]
    partial = sum(i % 50 == 7 for i in range(MODULES))
    assert sorted(bars) == sorted([("MRC", MODULES - partial), ("MRC", partial),
                                   ("robust accuracy drop", MODULES - partial),
                                   ("robust accuracy drop", partial)])

    trade = roots["interpolation.svg"]
    assert [e.text for e in trade.iter(f"{SVG}text") if e.get("class") == "axis-label"] == [
        "clean accuracy (%, test split)", "robust accuracy (%, test split)"]
    legend = next(g for g in trade.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.findtext(f"{SVG}title") for t in legend.iter(f"{SVG}text")] == [
        curve.name for curve in data.curves]
    dots = [(p.get("d") or "").count("Z") for p in trade.iter(f"{SVG}path")
            if p.get("class") == "points"]
    assert dots == [len(ALPHAS)] * len(RATES) * SWEEP_MODULES
    rings = [e for e in trade.iter(f"{SVG}circle") if e.get("class") == "mark"]
    assert [e.get("data-label") for e in rings] == ["α = 0.35"] * len(RATES) * SWEEP_MODULES
