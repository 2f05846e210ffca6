"""Size and render time of the job report page (:func:`reporting.page.render_report`) and of the
chart files the worker stores beside it (``mrc.svg``, ``interpolation.svg``, ...:
:func:`reporting.charts.job_charts`, drawn as ``worker.stages`` draws them) for a big synthetic
result: an MRC table of ``--modules`` modules (dotted names of about ``--name-chars``
characters, with markup to escape), a sweep of ``--candidates`` modules × ``--rates`` learning
rates, each with a ``--points``-point α curve, three fine-tuning epochs and 100 warnings. No
database or server: the page is drawn from the rows the route would pass. Prints JSON: the page's
bytes, its bytes gzipped, the median render seconds, and the bytes of each section and chart (what
dominates); under ``artifacts``, each stored chart file's bytes and bytes gzipped, and the median
seconds to draw them all.

    PYTHONPATH=. .venv/bin/python bench/report_size.py
    PYTHONPATH=. .venv/bin/python bench/report_size.py --modules 500 --candidates 4 --rates 4 \\
        --points 101
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import time
from typing import Any

from reporting.charts import CHART_ARTIFACTS, job_charts, sweep_curves
from reporting.page import ReportData, ReportWarning, render_report

#: Markup a module name may hold (the model chooses it): escaping lengthens it, as in a real page.
HOSTILE = "<b>&amp;</b>"


def module_name(index: int, chars: int) -> str:
    """A unique dotted path of about ``chars`` characters (a deep transformer's module path)."""
    tail = f"stages.{index // 48}.blocks.{index % 48}.attn.qkv"
    stem = f"backbone.{HOSTILE}."
    filler = ".".join(f"layer{i}" for i in range(max(chars, 0) // 7 + 1))
    return (stem + filler)[:max(chars - len(tail) - 1, len(stem))] + "." + tail


def synthetic_report(modules: int, candidates: int, rates: int, points: int,
                     name_chars: int) -> ReportData:
    """The rows of a finished sweep job, as ``api.routes.job_report`` builds them."""
    names = [module_name(i, name_chars) for i in range(modules)]
    rows = [{"module": name, "parameters": 1000 + i, "mrc": 0.001 * i + 1e-5 * (i % 7),
             "worst_robust_loss": 1.5 + 0.001 * i, "robust_accuracy_at_worst": 50.0 - 0.01 * i,
             "robust_accuracy_drop": 0.02 * i, "passes": 10, "exact": True}
            for i, name in enumerate(names)]
    alphas = [round(i / max(points - 1, 1), 10) for i in range(points)]
    outcomes: list[dict[str, Any]] = []
    for number, module in enumerate(names[:candidates]):
        for step in range(rates):
            index = number * rates + step
            outcomes.append({
                "module": module, "lr": 0.001 * 3 ** step, "chosen_alpha": alphas[points // 3],
                "points": [{"alpha": a, "clean_accuracy": 80 + 5 * a + index * 0.1,
                            "robust_accuracy": 45 - 3 * a * a - index * 0.05,
                            "robust_accuracy_at_most": None} for a in alphas]})
    return ReportData(
        job_id="bench", status="succeeded", selected_module=names[0],
        chosen_alpha=alphas[points // 3],
        metrics={"before": {"clean_accuracy": 80.0, "robust_accuracy": 45.0},
                 "after": {"clean_accuracy": 81.9, "robust_accuracy": 44.6}},
        mrc_rows=rows,
        epochs=[{"epoch": e, "train_accuracy": 80.0 + e, "val_accuracy": 79.0 + e % 2}
                for e in (1, 2, 3)],
        curves=sweep_curves(outcomes, 0),
        manifest={"job_id": "bench", "seed": 0},
        warnings=[ReportWarning("finetune", f"warning {i} in {names[i % modules]}", 1, i % 16)
                  for i in range(100)],
        warnings_total=100)


def breakdown(page: str) -> dict[str, int]:
    """Bytes of each ``<h2>`` section, and of each chart (``data-figure``) within "Charts"."""
    sizes: dict[str, int] = {}
    parts = re.split(r"(?=<h2>)", page)
    sizes["head and summary"] = len(parts[0].encode())
    for part in parts[1:]:
        title = part[4:part.index("</h2>")]
        sizes[title] = len(part.encode())
    for figure in re.split(r"(?=<figure )", page)[1:]:
        name = re.search(r"data-figure='([^']*)'", figure)
        body = figure[:figure.index("</figure>")]
        sizes[f"chart {name.group(1) if name else '?'}"] = len(body.encode())
    return sizes


def artifacts(data: ReportData, repeats: int) -> dict[str, Any]:
    """The stored chart files of ``data``'s job: bytes and gzip bytes of each, median seconds
    to draw them all (the worker's call: the whole MRC table, not the page's compact charts)."""
    seconds = []
    charts: dict[str, str] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        charts = job_charts(data.mrc_rows, data.selected_module, data.epochs, data.curves,
                            data.splits)
        seconds.append(time.perf_counter() - start)
    files = {CHART_ARTIFACTS[name]: svg.encode("utf-8") for name, svg in charts.items()}
    return {"render_s_median": round(statistics.median(seconds), 4),
            "files": {name: {"bytes": len(body), "gzip_bytes": len(gzip.compress(body))}
                      for name, body in files.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=4, help="sweep modules")
    parser.add_argument("--rates", type=int, default=4, help="learning rates per module")
    parser.add_argument("--points", type=int, default=21, help="α points per curve")
    parser.add_argument("--name-chars", type=int, default=120, help="characters of a name")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = synthetic_report(args.modules, args.candidates, args.rates, args.points,
                            args.name_chars)
    seconds = []
    page = ""
    for _ in range(args.repeats):
        start = time.perf_counter()
        page = render_report(data)
        seconds.append(time.perf_counter() - start)
    encoded = page.encode()
    print(json.dumps({
        "modules": args.modules, "curves": args.candidates * args.rates, "points": args.points,
        "name_chars": args.name_chars, "bytes": len(encoded),
        "gzip_bytes": len(gzip.compress(encoded)),
        "render_s_median": round(statistics.median(seconds), 4),
        "sections": breakdown(page),
        "artifacts": artifacts(data, args.repeats)}, indent=2))


if __name__ == "__main__":
    main()
