"""Tests of reporting.page: the curve table of a selection curve with bounded and unmeasured
points (``rift.interpolation``: early-stopped attacks leave only ``robust_accuracy_at_most``)."""

from __future__ import annotations

from reporting.charts import Curve
from reporting.page import ReportData, render_report


def test_a_selection_curve_shows_exact_bounded_and_unmeasured_points() -> None:
    points = [
        {"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 64.0,
         "robust_accuracy_at_most": None},
        {"alpha": 0.5, "clean_accuracy": 91.0, "robust_accuracy": None,
         "robust_accuracy_at_most": None},
        {"alpha": 1.0, "clean_accuracy": 93.0, "robust_accuracy": None,
         "robust_accuracy_at_most": 61.5},
    ]
    page = render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=0.0,
                                    curves=[Curve("fc", points, 0.0)]))
    assert "<td>≤ 61.5</td>" in page
    assert "<td>64</td>" in page and "<td>–</td>" in page
