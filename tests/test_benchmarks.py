"""The benchmarks in bench/ still run and print the JSON the README quotes (tiny sizes: what is
checked is that they work and what their answers must satisfy, never their timings).

Each runs as its own process, as ``python bench/SCRIPT.py`` would, forked from this test process's
worker launcher (``tests/preloaded_launcher.py``: torch and the library imported once) instead of
importing them again each time; ``RIFT_TEST_FORK_WORKERS=0`` starts a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.preloaded_launcher import Launcher

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT_S = 600


def _run_bench(script: str, *args: str, tmp_path: Path,
               launcher: Launcher | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    output = tmp_path / "report.json"
    path = PROJECT_ROOT / "bench" / script
    argv = [str(path), *args, "--output", str(output)]
    if launcher is not None:
        completed = launcher.run(argv, env, PROJECT_ROOT, script=path, timeout=BENCH_TIMEOUT_S)
    else:
        completed = subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, env=env,
                                   capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout)
    assert json.loads(output.read_text()) == printed
    return printed


@pytest.mark.slow
def test_the_whole_job_comparison_runs_on_a_trained_synthetic_resnet(
    tmp_path: Path, optional_worker_launcher: Launcher | None,
) -> None:
    report = _run_bench(
        "pipeline.py", "--reference-cost", "--device", "cpu", "--train", "64", "--test", "16",
        "--alpha-step", "0.5", "--mrc-examples", "8", "--mrc-batch-size", "8", "--mrc-steps",
        "1", "--epochs", "1", "--attack-steps", "1", "--at-epochs", "1", "--image-size", "8",
        tmp_path=tmp_path, launcher=optional_worker_launcher)
    assert report["benchmark"] == "pipeline_reference_cost"
    assert "PGD-trained 1 epochs" in report["job"]
    library, reference = report["library"], report["reference_cost"]
    # The reference flow attacks every α of the grid (0, 0.5, 1); the library at most that.
    assert reference["robust_evaluations"] == 3
    assert 1 <= library["robust_evaluations"] <= 3
    for flow in (library, reference):
        assert set(flow["cpu_seconds"]) == {"mrc", "finetune", "interpolation", "total"}
        assert set(flow["page_faults"]) == set(flow["cpu_seconds"])
        assert set(flow["sha256"]) == {"mrc_table", "theta_ft", "curve", "theta_rift"}
    assert set(report["cpu_ratio_reference_over_library"]) == set(library["cpu_seconds"])
    assert "thp_mem_alloc_enable" in report  # which huge-pages setting both flows ran with


@pytest.mark.slow
def test_the_huge_pages_comparison_runs_each_setting_in_its_own_process(
    tmp_path: Path, optional_worker_launcher: Launcher | None,
) -> None:
    report = _run_bench(
        "pipeline.py", "--reference-cost", "--device", "cpu", "--train", "48", "--test", "8",
        "--alpha-step", "0.5", "--mrc-examples", "4", "--mrc-batch-size", "4", "--mrc-steps",
        "1", "--epochs", "1", "--attack-steps", "1", "--image-size", "8", "--huge-pages-ab", "1",
        tmp_path=tmp_path, launcher=optional_worker_launcher)
    assert report["benchmark"] == "pipeline_huge_pages" and report["pairs"] == 1
    # One child process per setting, each reporting what torch read at its start.
    assert sorted(str(run["thp_mem_alloc_enable"]) for run in report["runs"]) == ["1", "None"]
    assert "--huge-pages-ab" not in report["child_command"]
    for flow in ("library", "reference_cost"):
        # Huge pages change where tensors live, not what is computed: the same bits.
        assert report[flow]["identical_results"] is True
        assert report[flow]["mrc"]["cpu_seconds_unset"] and report[flow]["mrc"]["cpu_seconds_thp"]
    assert set(report["total_cpu_ratio_reference_over_library"]) == {
        "both_unset", "both_thp", "reference_unset_library_thp"}


@pytest.mark.slow
def test_the_fine_tune_comparison_ends_every_arm_with_the_same_weights(
    tmp_path: Path, optional_worker_launcher: Launcher | None,
) -> None:
    report = _run_bench("finetune.py", "--train", "40", "--epochs", "2", "--repeats", "1",
                        "--image-size", "8", tmp_path=tmp_path,
                        launcher=optional_worker_launcher)
    arms = {"library", "library_nan_fill", "reference_loop"}
    assert report["benchmark"] == "finetune_speed" and set(report["cpu_seconds"]) == arms
    # The library's stage, the NaN fill left on and the plain loop compute the same θ_FT.
    assert report["same_weights"] == dict.fromkeys(arms, True)


@pytest.mark.slow
def test_the_batchnorm_folding_comparison_gives_the_same_curve(
        tmp_path: Path, optional_worker_launcher: Launcher | None) -> None:
    report = _run_bench("evaluation_speed.py", "--train", "32", "--test", "16", "--at-epochs",
                        "0", "--attack-steps", "1", "--alpha-step", "0.5", "--repeats", "1",
                        tmp_path=tmp_path, launcher=optional_worker_launcher)
    assert report["benchmark"] == "evaluation_fold_batchnorm"
    assert set(report["settings"]) == {"off", "auto"}
    assert report["same_chosen_alpha"] and report["same_attacked_examples"]
    assert len(report["settings"]["auto"]["points"]) == 3
    assert report["cpu_speedup_folded"] > 0


@pytest.mark.slow
def test_the_pgd_layout_comparison_times_every_variant(
        tmp_path: Path, optional_worker_launcher: Launcher | None) -> None:
    report = _run_bench("pgd_variants.py", "--examples", "4", "--image-size", "8", "--steps",
                        "1", "--repeats", "1", tmp_path=tmp_path,
                        launcher=optional_worker_launcher)
    assert set(report["variants"]) == {"plain", "folded", "channels_last",
                                       "folded_channels_last"}
    plain = report["variants"]["plain"]
    assert plain["max_logit_difference"] == 0 and plain["adversarial_images_differing"] == 0
    for variant in report["variants"].values():  # the same function up to rounding
        assert variant["max_logit_difference"] < 1e-3


@pytest.mark.slow
def test_the_alpha_selection_count_chooses_the_full_grids_alpha(
    tmp_path: Path, optional_worker_launcher: Launcher | None, digits_checkpoint_path: Path,
) -> None:
    # θ_AT of seed 0 is the session's digits checkpoint (make_digits_checkpoint, seed 0, CPU:
    # what the script would train itself, shared with the other tests instead of made again).
    report = _run_bench("interpolation.py", "--skip-resnet", "--seeds", "0", "--alpha-step",
                        "0.25", "--digits-checkpoint", str(digits_checkpoint_path),
                        tmp_path=tmp_path, launcher=optional_worker_launcher)
    for key in ("pgd_evaluations_full", "pgd_evaluations_selection", "ratio", "same_alpha"):
        assert key in report
    assert report["same_alpha"] is True and report["same_chosen_robust_accuracy"] is True
    assert report["pgd_examples_selection"] <= report["pgd_examples_full"]


@pytest.mark.slow
def test_the_mrc_table_selection_comparison_chooses_the_full_tables_module(
        tmp_path: Path, optional_worker_launcher: Launcher | None) -> None:
    # --skip-reference: what is checked is the selection against the full table; the reference
    # cost's MRC (a model copy per module, the slowest of the three here) is run by the
    # whole-job comparison above.
    report = _run_bench("mrc.py", "--device", "cpu", "--table-selection", "--screen", "1",
                        "--examples", "8", "--batch-size", "8", "--steps", "3",
                        "--image-size", "8", "--repeats", "1", "--skip-reference",
                        tmp_path=tmp_path, launcher=optional_worker_launcher)
    assert report["benchmark"] == "mrc_table_selection"
    assert report["passes_full"] == 3 * report["modules"]
    selection = report["selection"]["1"]
    assert selection["same_modules"] and selection["exact_rows_identical"]
    assert selection["passes_selection"] < report["passes_full"]


@pytest.mark.slow
def test_the_trained_mrc_selection_comparison_takes_sizes_and_prints_one_report(
        tmp_path: Path, optional_worker_launcher: Launcher | None) -> None:
    # The README's run trains a ResNet-18 for minutes; the size flags make it seconds.
    report = _run_bench("mrc_selection_trained.py", "--train", "48", "--test", "8",
                        "--image-size", "8", "--at-epochs", "1", "--attack-steps", "1",
                        "--examples", "8", "--batch-size", "8", "--steps", "3",
                        tmp_path=tmp_path, launcher=optional_worker_launcher)
    assert report["benchmark"] == "mrc_selection_resnet18_trained"
    assert report["passes_full"] == 3 * len(report["full"]["rows"])
    assert report["passes_selection"] < report["passes_full"]
    assert report["same_selected_module"] and report["exact_rows_identical"]


@pytest.mark.slow
def test_the_sharded_mrc_bench_merges_the_same_table_for_each_worker_count(
        tmp_path: Path, optional_worker_launcher: Launcher | None) -> None:
    # Forked workers: three spawned interpreters importing torch were most of this test's time
    # (what is checked here is the merge, not the start-up the bench times by default).
    report = _run_bench("mrc_workers.py", "--workers", "1", "2", "--examples", "4",
                        "--batch-size", "4", "--steps", "1", "--image-size", "8",
                        "--start-method", "fork", tmp_path=tmp_path,
                        launcher=optional_worker_launcher)
    assert report["benchmark"] == "mrc_workers" and report["image_size"] == 8
    assert report["start_method"] == "fork"
    assert [run["workers"] for run in report["runs"]] == [1, 2]
    # Two shards score every module once between them; the merge is the one-worker table.
    assert [sum(run["shard_modules"]) for run in report["runs"]] == [21, 21]
    assert report["same_table_for_every_worker_count"] is True


@pytest.mark.service
def test_the_validator_memory_comparison_finds_one_server_per_host_when_shared(
    tmp_path: Path, optional_worker_launcher: Launcher | None,
) -> None:
    # Short settling waits: a second API worker still starting leaves its uploads to the first
    # (one private server: allowed below), a check's child still exiting adds to the PSS only.
    report = _run_bench("validator_memory.py", "--workers", "2", "--uploads", "4",
                        "--concurrency", "4", "--settle-seconds", "0.2", tmp_path=tmp_path,
                        launcher=optional_worker_launcher)
    private, shared = report["private"], report["shared"]
    assert private["accepted"] == shared["accepted"] == 4
    assert shared["validator_servers"] == 1
    assert 1 <= private["validator_servers"] <= 2  # a worker that took no upload starts none
    assert shared["pss_mb"] > 0


@pytest.mark.slow
def test_the_api_load_bench_finds_constant_statements_and_index_plans(
        tmp_path: Path, optional_worker_launcher: Launcher | None) -> None:
    """bench/api_load.py at a tiny size (its HTTP server phase left out): every route answers,
    a route takes about as many statements for a big project as for a small one (no N+1; an
    empty page skips its labels query), the active-job count is an index-only scan, and the
    stored-bytes ledger sums to the reference count."""
    report = _run_bench(
        "api_load.py", "--projects", "3", "--jobs", "90", "--big-share", "0.5", "--repeat", "1",
        "--skip-concurrent", tmp_path=tmp_path, launcher=optional_worker_launcher)
    big, small = report["routes"]["big"]["routes"], report["routes"]["small"]["routes"]
    assert all(route["status"] == 200 for route in [*big.values(), *small.values()])
    for name, route in small.items():
        assert abs(big[name]["statements"] - route["statements"]) <= 1, name
    assert report["plans"]["count_active_jobs_big"]["nodes"][1] == (
        "Index Only Scan on jobs using ix_jobs_project_id_status_created_at_id")
    # The quota's count: the ledger's sum, in one statement, equal to the reference's.
    quota = report["quota"]
    assert quota["ledger"]["stored_bytes"] == quota["reference"]["stored_bytes"] > 0
    assert quota["ledger"]["statements"] == 1 < quota["reference"]["statements"]


def test_the_validator_memory_scan_skips_a_process_that_exits_between_its_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A check's child (of the bench or of anything else on the host) that exits after its
    command line was read left no ``stat`` to read: the scan skips it instead of failing the
    whole measurement (it did, in a suite beside other engineers' runs)."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))  # the script's own sibling imports
    import importlib

    validator_memory = importlib.import_module("validator_memory")
    proc = tmp_path / "proc"
    smaps = "00400000-ffffffff ---p 00000000 00:00 0 [rollup]\nRss: 2048 kB\nPss: 1024 kB\n"
    for pid, with_stat in ((100, True), (200, False)):
        entry = proc / str(pid)
        entry.mkdir(parents=True)
        (entry / "cmdline").write_bytes(b"python\0-m\0validator\0--socket\0/s/validator.sock\0")
        (entry / "smaps_rollup").write_text(smaps)
        if with_stat:  # the command name may hold spaces and parentheses
            (entry / "stat").write_text(f"{pid} (py thon) S 1 {pid} {pid} 0 -1\n")
    (proc / "self").mkdir()  # not a process id
    found = validator_memory.validator_processes(proc)
    assert list(found) == [100]
    assert (found[100]["parent"], found[100]["socket"]) == (1, "/s/validator.sock")
    assert (found[100]["rss_kb"], found[100]["pss_kb"]) == (2048, 1024)


def test_the_service_overhead_bench_runs_its_resnet_job_on_an_uploaded_copy_of_the_same_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--job resnet18-small``: the direct run reads the npz the bench wrote; the service gets
    the same job on an upload of it (no client path, which the service refuses), a request
    its job parsing accepts (the service's own bounds included)."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "bench"))  # the script's own sibling imports
    import importlib

    import numpy as np

    from api.job_requests import validate_body
    from api.schemas import JobCreate
    from rift.config import RiftConfig

    service_overhead = importlib.import_module("service_overhead")
    sizes = service_overhead.SyntheticSizes(train=16, test=8, mrc_examples=8)
    job = service_overhead.make_job("resnet18-small", tmp_path, sizes)
    direct = RiftConfig.model_validate(job.config)
    assert (direct.architecture.name, direct.dataset.path) == ("resnet18", str(job.dataset))
    assert job.checkpoint.is_file()
    with np.load(job.dataset) as data:
        assert data["x"].shape == (16, 32, 32, 3) and len(data["x_test"]) == 8
    body = {"checkpoint_id": "ckpt_bench", "dataset_id": "ds_bench",
            "config": job.service_config()}
    accepted = validate_body(body, JobCreate, ("body",))
    assert accepted.config.dataset.path == "dataset:ds_bench"
    assert accepted.config.model_dump(exclude={"dataset"}) == direct.model_dump(
        exclude={"dataset"})
    assert "path" in job.config["dataset"]  # service_config left the direct run's config alone
