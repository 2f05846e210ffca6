"""A report page printed (or saved as PDF) by headless Chromium holds all it shows on screen:
the manifest's every line, the MRC table folded into a ``<details>``, the warnings folded after
the first ten. Before, the print clipped the manifest's box at 480 px, left folded sections
closed and cut a wide chart at the paper's edge: a 600-line manifest or a 300-module table
printed on 2 pages. Pages are counted in the PDF (Chromium writes one ``/Type /Page`` each)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from reporting.page import ReportData, ReportWarning, render_report
from tests.api.browser import FLAGS, chromium_binary


def _printed_pages(data: ReportData, folder: Path) -> int:
    page, pdf = folder / "report.html", folder / "report.pdf"
    page.write_text(render_report(data), encoding="utf-8")
    flags = [flag for flag in FLAGS if not flag.startswith("--virtual-time-budget")]
    subprocess.run([chromium_binary(), *flags, f"--user-data-dir={folder / 'profile'}",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return len(re.findall(rb"/Type\s*/Page\b", pdf.read_bytes()))


def test_a_long_manifest_prints_whole(tmp_path: Path) -> None:
    manifest = {f"setting_{index}": "v" * 20 for index in range(600)}  # ~7,800 px of lines
    pages = _printed_pages(ReportData(job_id="j", status="succeeded", manifest=manifest), tmp_path)
    assert pages >= 6, pages  # before: 2, the box's first 480 px


def test_folded_mrc_rows_and_warnings_print(tmp_path: Path) -> None:
    rows = [{"module": f"blocks.{index}.conv", "mrc": 0.01 * index} for index in range(300)]
    warnings = [ReportWarning("mrc", f"warning {index}") for index in range(100)]
    pages = _printed_pages(ReportData(job_id="j", status="succeeded", selected_module="m",
                                      mrc_rows=rows, warnings=warnings,
                                      warnings_total=100), tmp_path)
    assert pages >= 7, pages  # before: 2 (the 300 rows and 90 warnings folded away)
