"""Names the uploaded model chooses (module names) in the files a job writes: a CSV cell that a
spreadsheet would run as a formula is stored as text, and characters XML cannot hold do not make
a chart unreadable."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ElementTree

import pytest

from reporting.charts import mrc_chart
from rift.pipeline import mrc_table_csv


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3",
                                  "@SUM(A1)", "\t=1", "\r=1"])
def test_module_names_starting_like_a_formula_are_text_in_mrc_csv(name: str) -> None:
    rows = [{"name": name, "parameters": 10, "mrc": -0.5}, {"name": "fc", "parameters": 5}]
    read = list(csv.DictReader(io.StringIO(mrc_table_csv(rows, name), newline="")))
    assert read[0]["name"] == "'" + name
    assert read[0]["selected"] == "True"
    # Numbers stay numbers (a negative value is not a formula), plain names stay as they are.
    assert read[0]["mrc"] == "-0.5"
    assert read[1]["name"] == "fc"
    assert len(read) == 2  # a carriage return in a name does not start a row of its own


def test_control_characters_in_a_module_name_keep_the_chart_well_formed() -> None:
    name = "layer\x01\x1b[31m\x00\ufffe"
    svg = mrc_chart([{"module": name, "mrc": 1.0, "robust_accuracy_drop": 2.0}], name)
    root = ElementTree.fromstring(svg)  # raised "not well-formed (invalid token)" before
    tooltips = [e.text for e in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "1 layer\ufffd\ufffd[31m\ufffd\ufffd: MRC = 1, robust accuracy drop = 2" in tooltips
    svg.encode("utf-8")
