"""Tests of reporting.page: the curve table of a selection curve with bounded and unmeasured
points (``rift.interpolation``: early-stopped attacks leave only ``robust_accuracy_at_most``)."""

from __future__ import annotations

from reporting.charts import Curve, Splits
from reporting.page import ReportData, ReportWarning, render_report


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


def test_the_page_says_what_unmeasured_and_bounded_points_mean_only_when_it_has_them() -> None:
    measured = {"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 64.0,
                "robust_accuracy_at_most": None}
    unmeasured = {"alpha": 0.5, "clean_accuracy": 91.0, "robust_accuracy": None,
                  "robust_accuracy_at_most": None}
    bounded = {"alpha": 1.0, "clean_accuracy": 93.0, "robust_accuracy": None,
               "robust_accuracy_at_most": 61.5}

    def page(*points: dict[str, object]) -> str:
        return render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=0.0,
                                        curves=[Curve("fc", list(points), 0.0)]))

    # Before: a column of "–" with no word on why (the default curve attacks few points).
    with_gaps = page(measured, unmeasured)
    assert "– : not attacked" in with_gaps and "≤ x" not in with_gaps
    assert "≤ x : attack stopped" in page(measured, unmeasured, bounded)
    assert "not attacked" not in page(measured)


def test_an_mrc_row_stopped_early_shows_its_lower_bound() -> None:
    rows = [{"module": "conv1", "parameters": 10, "mrc": 0.53, "worst_robust_loss": 1.5,
             "exact": False, "passes": 1},
            {"module": "fc", "parameters": 5, "mrc": 0.1, "worst_robust_loss": 1.1,
             "exact": True, "passes": 10},
            {"module": "old", "parameters": 5, "mrc": 0.2, "worst_robust_loss": 1.2}]
    page = render_report(ReportData(job_id="j", status="succeeded", selected_module="fc",
                                    mrc_rows=rows))
    assert "<td>≥ 0.53</td>" in page and "<td>≥ 1.5</td>" in page
    assert "<td>0.1</td>" in page and "<td>0.2</td>" in page
    assert "1 module(s) were stopped early" in page
    assert "stopped early" not in render_report(ReportData(
        job_id="j", status="succeeded", mrc_rows=rows[1:]))



def test_an_mrc_row_flagged_zero_gradient_is_named_not_chosen_and_not_listed_first() -> None:
    """A row whose weight gradient was zero on every MRC batch (MRC 0 by construction, never
    chosen) read as the best candidate: the lowest MRC, first of the short table's modules."""
    from reporting.page import MRC_ROWS_SHOWN

    rows = [{"module": "branch", "parameters": 10, "mrc": 0.0, "worst_robust_loss": 1.0,
             "zero_gradient": True},
            {"module": "fc", "parameters": 5, "mrc": 0.1, "worst_robust_loss": 1.1,
             "zero_gradient": False},
            {"module": "old", "parameters": 5, "mrc": 0.2, "worst_robust_loss": 1.2}]
    page = render_report(ReportData(job_id="j", status="succeeded", selected_module="fc",
                                    mrc_rows=rows))
    assert ("<td class='name'>branch<span class='mark'> (no effect: not chosen)</span></td>"
            in page and page.count("(no effect: not chosen)") == 1)
    assert "No effect: 1 module(s) got a weight gradient of exactly zero" in page
    assert "No effect" not in render_report(ReportData(
        job_id="j", status="succeeded", mrc_rows=rows[1:]))
    # Past the short table's size, the modules the selection tries first lead it: not branch.
    many = rows + [{"module": f"m{i}", "parameters": 5, "mrc": 0.5 + i, "worst_robust_loss": 2}
                   for i in range(MRC_ROWS_SHOWN)]
    short = render_report(ReportData(job_id="j", status="succeeded", selected_module="fc",
                                     mrc_rows=many)).split("<details class='mrc-all'>", 1)[0]
    assert short.index("<td class='name'>fc") < short.index("<td class='name'>m0")
    assert "<td class='name'>branch" not in short.split("<td class='name'>m0", 1)[0]

def test_the_summary_says_which_stage_runs_or_where_the_job_stopped() -> None:
    running = render_report(ReportData(job_id="j", status="running", stage="mrc",
                                       stage_progress=0.42, progress_message="module 3 of 8"))
    assert "<dt>stage</dt><dd>mrc, 42%: module 3 of 8</dd>" in running
    failed = render_report(ReportData(job_id="j", status="failed", stage="finetune",
                                      stage_progress=0.5, error="numerical_error: NaN loss"))
    assert "<dt>stage</dt><dd>finetune (stopped in it)</dd>" in failed
    assert "<dt>stage</dt>" not in render_report(ReportData(job_id="j", status="succeeded"))


def test_an_ended_job_says_why_a_section_is_empty_without_promising_it() -> None:
    """A cancelled or failed job's page said "No results yet", "No MRC table yet" and "No curve
    yet", as if they would still come."""
    running = render_report(ReportData(job_id="j", status="running", stage="mrc"))
    assert all(f"No {what} yet." in running for what in ("results", "MRC table", "curve"))
    cancelled = render_report(ReportData(job_id="j", status="cancelled", stage="mrc"))
    failed = render_report(ReportData(job_id="j", status="failed", stage="finetune",
                                      mrc_rows=[{"module": "fc", "parameters": 10, "mrc": 1.0}]))
    assert " yet" not in cancelled and " yet" not in failed
    assert all(f"No {what}: the job was cancelled first." in cancelled
               for what in ("results", "MRC table", "curve"))
    assert "No curve: the job failed first." in failed and "No MRC table" not in failed


def test_the_summary_lists_the_jobs_labels_escaped() -> None:
    """The labels a team finds its runs by were on the job's JSON only, not on its page."""
    page = render_report(ReportData(job_id="j", status="succeeded",
                                    labels={"team": "vision", "run": "<b>nightly</b>"}))
    assert "<dt>labels</dt><dd>team=vision, run=&lt;b&gt;nightly&lt;/b&gt;</dd>" in page
    assert "<dt>labels</dt>" not in render_report(ReportData(job_id="j", status="succeeded"))


def test_control_characters_in_names_and_errors_become_replacement_characters() -> None:
    from tests.api.report_checks import page_problems

    name = "blocks.\x07bell\x1b[31m.\x85conv"
    page = render_report(ReportData(
        job_id="j", status="failed", selected_module=name, error="worker_lost: \x00\x08 gone",
        mrc_rows=[{"module": name, "parameters": 1, "mrc": 0.5}],
        curves=[Curve(name, [{"alpha": 0.0, "clean_accuracy": 1.0, "robust_accuracy": 2.0}])]))
    # A control character in HTML text is a parse error, drawn as a box (the charts' SVG already
    # replaced them: XML cannot hold them).
    assert page_problems(page) == []
    assert "blocks.\ufffdbell\ufffd[31m.\ufffdconv" in page


def test_a_running_sweep_draws_the_candidates_finished_so_far() -> None:
    from reporting.charts import job_charts

    done = Curve("fc (lr 0.01)", [{"alpha": a, "clean_accuracy": 90.0 + a,
                                   "robust_accuracy": 60.0 - a} for a in (0.0, 1.0)])
    charts = job_charts([], None, [], [Curve("conv1 (lr 0.01)", []), done])
    # The first candidate has not finished; the second's curve is drawn (it was not, until the
    # first had finished).
    assert set(charts) == {"alpha", "tradeoff"} and "fc (lr 0.01)" in charts["alpha"]


def test_the_page_names_the_split_of_each_accuracy() -> None:
    """α chosen on the validation split: the curve's α = 0 row (θ_AT on validation) and the
    summary's θ_AT accuracies (test split) differ; the page said neither split, and the
    fine-tuning chart called the epochs' accuracy 'validation' under finetune.selection_split
    'test' (the reference protocol)."""
    from reporting.charts import Splits

    points = [{"alpha": 0.0, "clean_accuracy": 90.67, "robust_accuracy": 72.67},
              {"alpha": 1.0, "clean_accuracy": 94.0, "robust_accuracy": 73.33}]
    data = ReportData(
        job_id="j", status="succeeded", chosen_alpha=1.0,
        metrics={"before": {"clean_accuracy": 91.33, "robust_accuracy": 69.33},
                 "after": {"clean_accuracy": 94.67, "robust_accuracy": 72.0}},
        epochs=[{"epoch": 1, "train_accuracy": 80.0, "val_accuracy": 79.0}],
        curves=[Curve("fc", points, 1.0)],
        splits=Splits.of_config({"interpolation": {"selection_split": "validation"},
                                 "finetune": {"selection_split": "test"}}))
    page = render_report(data)
    assert "<dt>θ_AT clean / robust (%, test split)</dt><dd>91.33 / 69.33</dd>" in page
    assert "<dt>RiFT clean / robust (%, test split)</dt><dd>94.67 / 72</dd>" in page
    assert "<th>clean (%, validation)</th><th>robust (%, validation)</th>" in page
    assert "The curves are measured on the validation split" in page
    assert "accuracy (%, validation split)" in page  # the α chart's axis
    assert "test accuracy" in page and "validation accuracy" not in page  # the epochs' chart
    default = render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=1.0,
                                       epochs=data.epochs, curves=data.curves))
    assert "<th>clean (%, test)</th>" in default and "The curves are measured" not in default
    assert "validation accuracy" in default


def test_an_alpha_is_shown_whole_however_fine_its_grid() -> None:
    """A 0.00015 grid holds α = 0.13095; four significant digits showed it as 0.131 in the
    summary and the curve table, an α the job never measured."""
    points = [{"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 64.0},
              {"alpha": 0.13095, "clean_accuracy": 91.0, "robust_accuracy": 64.0}]
    page = render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=0.13095,
                                    curves=[Curve("fc", points, 0.13095)]))
    assert "<dt>chosen α</dt><dd>0.13095</dd>" in page
    assert "<tr class=selected><td>0.13095<span class='mark'> (chosen α)</span></td>" in page
    assert "α = 0.13095" in page  # the charts' marks


def test_a_sweeps_page_says_which_candidates_alpha_is_the_jobs() -> None:
    """Every candidate's table highlights its own α, as the job's α is highlighted: nothing said
    which candidate's weights the job returned (fc at lr 0.01 read as chosen as conv1's)."""
    from reporting.charts import sweep_curves

    def outcome(module: str, lr: float, alpha: float) -> dict[str, object]:
        return {"module": module, "lr": lr, "chosen_alpha": alpha,
                "points": [{"alpha": a, "clean_accuracy": 90.0 + a, "robust_accuracy": 70.0}
                           for a in (0.0, alpha)]}

    candidates = [outcome("fc", 0.01, 1.0), outcome("conv1", 0.05, 0.6)]
    page = render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=0.6,
                                    selected_module="conv1",
                                    curves=sweep_curves(candidates, chosen=1)))
    assert "<h3>conv1 (lr 0.05) (chosen candidate)</h3>" in page
    assert "<h3>fc (lr 0.01)</h3>" in page
    assert "weights are those of conv1 (lr 0.05) at its α" in page
    running = render_report(ReportData(job_id="j", status="running",
                                       curves=sweep_curves(candidates, chosen=None)))
    assert "(chosen candidate)" not in running and "picks once every candidate" in running


def _warnings_section(page: str) -> str:
    """The page's Warnings section: from its heading to the next."""
    start = page.index("<h2>Warnings</h2>")
    return page[start:page.index("<h2>", start + 1)]


def test_the_warnings_follow_the_summary_escaped_with_their_stage_and_count() -> None:
    from tests.api.report_checks import page_problems

    page = render_report(ReportData(job_id="j", status="succeeded", warnings=[
        ReportWarning("interpolate", "no α > 0 kept the robust accuracy <b>of θ_AT</b>", 2),
        ReportWarning("finetune", "diverged & \x07skipped", 1, candidate=3),
        ReportWarning(None, "<script>alert(1)</script>")], warnings_total=3))
    assert page.index("</dl>") < page.index("<h2>Warnings</h2>") < page.index("<h2>Charts</h2>")
    section = _warnings_section(page)
    assert ("<dt>interpolate</dt><dd>no α &gt; 0 kept the robust accuracy &lt;b&gt;of "
            "θ_AT&lt;/b&gt; (×2)</dd>") in section
    assert "<dt>finetune, candidate 3</dt><dd>diverged &amp; \ufffdskipped</dd>" in section
    assert "<dt>run</dt><dd>&lt;script&gt;alert(1)&lt;/script&gt;</dd>" in section
    assert "<script" not in page and "<b>" not in page
    assert page_problems(page) == []
    assert "not shown" not in section


def test_a_job_without_warnings_says_none_and_a_cut_list_says_how_many_more() -> None:
    from tests.api.report_checks import page_problems

    quiet = render_report(ReportData(job_id="j", status="succeeded"))
    assert _warnings_section(quiet) == "<h2>Warnings</h2><p class='warnings-none'>No warnings.</p>"
    assert page_problems(quiet) == []
    cut = render_report(ReportData(job_id="j", status="succeeded",
                                   warnings=[ReportWarning("mrc", "w0")], warnings_total=101))
    assert "100 more warning(s) not shown" in _warnings_section(cut)
    assert "GET /v1/jobs/j/events" in _warnings_section(cut)


def test_a_hundred_warnings_fold_after_the_first_ones_and_the_charts_stay_near_the_top() -> None:
    """100 warnings (the API's bound) of a sweep, two lines each, were all listed open: the
    charts began about 3,000 px down. The first ones stay open, the rest fold into a
    <details>; every one is still on the page, escaped."""
    from tests.api.report_checks import page_problems

    warnings = [ReportWarning("finetune", f"w{i} <img src=x onerror=alert({i})> é✓", 1,
                              candidate=i % 16) for i in range(100)]
    page = render_report(ReportData(job_id="j", status="succeeded", warnings=warnings,
                                    warnings_total=130))
    section = _warnings_section(page)
    open_part = section.split("<details", 1)[0]
    shown = open_part.count("<dt>")
    assert 1 <= shown <= 20
    folded = section[len(open_part):]
    assert folded.startswith(f"<details class='more-warnings'><summary>{100 - shown} more "
                             "warning(s)</summary>")
    assert folded.count("<dt>") == 100 - shown
    assert all(f"<dd>w{i} &lt;img src=x onerror=alert({i})&gt; é✓</dd>" in section
               for i in range(100))
    assert "<img" not in page
    assert "30 more warning(s) not shown" in section
    assert page_problems(page) == []


def test_a_partial_mrc_table_says_so_and_numbers_rows_by_their_place_in_the_table() -> None:
    """While the MRC stage runs the page shows the rows scored so far (a sharded stage's arrive
    out of order: "#" is the row's place in the final table), says how many of how many, and
    draws no MRC chart (its bars are numbered 1..n); the complete table has neither note."""
    rows = [{"position": 1, "module": "conv2", "parameters": 10, "mrc": 0.2},
            {"position": 3, "module": "fc2", "parameters": 10, "mrc": 0.1}]
    running = render_report(ReportData(job_id="j", status="running", stage="mrc",
                                       mrc_rows=rows, mrc_complete=False, mrc_total=4))
    assert "Scored so far: 2 of 4 modules" in running
    assert "<td class='row'>2</td><td class='name'>conv2</td>" in running
    assert "<td class='row'>4</td><td class='name'>fc2</td>" in running
    assert "data-figure='mrc'" not in running
    cancelled = render_report(ReportData(job_id="j", status="cancelled", stage="mrc",
                                         mrc_rows=rows, mrc_complete=False))
    assert "Scored before the job was cancelled: 2 modules" in cancelled
    done = render_report(ReportData(job_id="j", status="succeeded", mrc_rows=[
        {**row, "position": i} for i, row in enumerate(rows)]))
    assert "Scored" not in done and "data-figure='mrc'" in done


def test_the_summary_names_a_sweeps_chosen_rate_beside_its_module() -> None:
    # A sweep of fc over lr_grid [0.01, 0.05]: "fine-tuned module fc" named two candidates.
    sweep = {"sweep": {"chosen": 1, "candidates": 2, "module": "fc", "lr": 0.05, "excluded": []}}
    page = render_report(ReportData(job_id="j", status="succeeded", selected_module="fc",
                                    metrics=sweep))
    assert "<dt>chosen learning rate</dt><dd>0.05</dd>" in page
    assert "chosen learning rate" not in render_report(ReportData(
        job_id="j", status="succeeded", selected_module="fc"))


def test_the_summary_dates_the_job_in_utc_and_gives_the_change_and_tolerance() -> None:
    from datetime import datetime, timedelta, timezone

    metrics = {"before": {"clean_accuracy": 80.0, "robust_accuracy": 50.25},
               "after": {"clean_accuracy": 84.5, "robust_accuracy": 50.0}}
    page = render_report(ReportData(
        job_id="j", status="succeeded", selected_module="fc", chosen_alpha=0.4, metrics=metrics,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        started_at=datetime(2026, 1, 2, 1, 5, 0),  # naive, as SQLite returns it: UTC
        robust_tolerance=0.5, splits=Splits(curve="validation")))
    assert ("<dt>created / started / finished</dt><dd>2026-01-02 01:04:05 UTC / "
            "2026-01-02 01:05:00 UTC / –</dd>") in page
    assert "<dt>RiFT − θ_AT (points, test split)</dt><dd>clean +4.5 / robust −0.25</dd>" in page
    assert ("<dt>robust tolerance</dt><dd>0.5 points: the chosen α keeps robust accuracy ≥ "
            "θ_AT&#x27;s less 0.5 on the validation split") in page
    # Without both accuracies, no change; without the setting, no tolerance line.
    bare = render_report(ReportData(job_id="j", status="running"))
    assert "RiFT − θ_AT" not in bare and "robust tolerance" not in bare
    assert "<dd>– / – / –</dd>" in bare


def test_the_tuned_module_and_chosen_alpha_are_named_in_words_not_only_coloured() -> None:
    # Their rows were told apart by a background colour and bold type alone: nothing a screen
    # reader reads out, nor a grey print shows.
    from reporting.charts import sweep_curves

    def outcome(module: str, lr: float, alpha: float) -> dict[str, object]:
        return {"module": module, "lr": lr, "chosen_alpha": alpha,
                "points": [{"alpha": a, "clean_accuracy": 90.0 + a, "robust_accuracy": 70.0}
                           for a in (0.0, 0.5, 1.0)]}

    candidates = [outcome("fc", 0.01, 1.0), outcome("conv1", 0.05, 0.5)]
    rows = [{"module": "fc", "mrc": 0.2}, {"module": "conv1", "mrc": 0.1}]
    page = render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=0.5,
                                    selected_module="conv1", mrc_rows=rows,
                                    curves=sweep_curves(candidates, chosen=1)))
    assert ("<td class='name'>conv1<span class='mark'> (fine-tuned)</span></td>" in page
            and page.count("(fine-tuned)") == 1)
    conv1 = page.split("data-curve='conv1 (lr 0.05)'", 1)[1].split("</table>", 1)[0]
    fc = page.split("data-curve='fc (lr 0.01)'", 1)[1].split("</table>", 1)[0]
    assert "<td>0.5<span class='mark'> (chosen α)</span></td>" in conv1
    assert "<td>1<span class='mark'> (this candidate&#x27;s best α)</span></td>" in fc
    assert page.count("(chosen α)") == 1
    # A running sweep has picked none: no α is the job's yet.
    running = render_report(ReportData(job_id="j", status="running",
                                       curves=sweep_curves(candidates, chosen=None)))
    assert "(chosen α)" not in running and running.count("best α)") == 2
    points = [{"alpha": a, "clean_accuracy": 90.0, "robust_accuracy": 70.0} for a in (0.0, 0.5)]
    one = render_report(ReportData(job_id="j", status="succeeded", chosen_alpha=0.5,
                                   curves=[Curve("fc", points, 0.5)]))
    assert one.count("<span class='mark'> (chosen α)</span>") == 1


def test_a_stopped_jobs_page_says_where_its_log_is_and_how_to_run_it_again() -> None:
    # A failed or cancelled job's page said so and no more: a reader who only has the page did
    # not learn where the stage's log is, nor that a rerun is a new job with its configuration.
    failed = render_report(ReportData(job_id="j1", status="failed", stage="finetune",
                                      error="numerical_error: loss is NaN (field: finetune.lr)"))
    assert ("<dt>what next</dt><dd>The job&#x27;s events (GET /v1/jobs/j1/events, riftctl jobs "
            "events j1) hold each stage&#x27;s log; correct the setting the error names") in failed
    assert "submit a new job with its configuration (GET /v1/jobs/j1, &quot;config&quot;)" in failed
    cancelled = render_report(ReportData(job_id="j1", status="cancelled", stage="mrc"))
    assert "<dt>what next</dt>" in cancelled and "the error names" not in cancelled
    for status in ("queued", "running", "succeeded"):
        assert "what next" not in render_report(ReportData(job_id="j1", status=status))
