"""``scripts/report_screenshot.py`` (how ``docs/report.png`` is made): a saved report page drawn
by headless Chromium into a PNG of the window's size."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from reporting.charts import Curve
from reporting.page import ReportData, render_report
from tests.api.browser import chromium_binary

ROOT = Path(__file__).parents[2]


def test_a_saved_report_page_becomes_a_png_of_the_window(tmp_path: Path) -> None:
    chromium_binary()  # skips where Chromium is not installed
    points = [{"alpha": a / 4, "clean_accuracy": 90 + a, "robust_accuracy": 60 - a}
              for a in range(5)]
    page = tmp_path / "report.html"
    page.write_text(render_report(ReportData(
        "job1", "succeeded", "fc", 0.5, {}, [{"module": "fc", "mrc": 0.1}], [],
        [Curve("fc", points, 0.5)], {"seed": 0})), encoding="utf-8")
    target = tmp_path / "shots" / "report.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report_screenshot.py"), str(page), str(target),
         "--width", "640", "--height", "900"], capture_output=True, text=True, timeout=180,
        check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    head = target.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (640, 900)
    missing = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "report_screenshot.py"),
         str(tmp_path / "none.html"), str(target)], capture_output=True, text=True, check=False)
    assert missing.returncode != 0 and "none.html: no such file" in missing.stderr
