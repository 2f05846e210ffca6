"""Tests of rift/sweep.py and the sweep in run_pipeline: candidates from the MRC table, and the
α rule applied across all candidates' curves."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rift.config import RiftConfig
from rift.errors import ConfigError, NumericalError
from rift.finetune import Divergence
from rift.pipeline import PipelineCallbacks, run_pipeline
from rift.sweep import (
    Candidate,
    CandidateOutcome,
    ExcludedCandidate,
    candidates_from_mrc,
    choose_across,
    fewer_modules_than_asked,
)
from tests.sweep_configs import alpha_zero_loser

ROWS = [{"name": "a", "mrc": 0.3}, {"name": "b", "mrc": 0.1}, {"name": "c", "mrc": 0.1},
        {"name": "d", "mrc": 0.05}]


def test_candidates_are_the_lowest_mrc_modules_times_the_rates() -> None:
    assert candidates_from_mrc(ROWS, k=3, module=None, lrs=[1e-3, 1e-2]) == [
        Candidate("d", 1e-3), Candidate("d", 1e-2), Candidate("b", 1e-3), Candidate("b", 1e-2),
        Candidate("c", 1e-3), Candidate("c", 1e-2)]
    assert candidates_from_mrc(ROWS, k=3, module="a", lrs=[0.1]) == [Candidate("a", 0.1)]
    with pytest.raises(ConfigError):
        candidates_from_mrc(ROWS, k=1, module=None, lrs=[])


def test_fewer_modules_than_asked_is_explained() -> None:
    # Before: candidates: 64 on a 4-module table, or with finetune.module named, quietly tried
    # 4 (or 1) modules.
    base = {"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}}
    many = RiftConfig.model_validate({**base, "finetune": {"candidates": 64}})
    found = candidates_from_mrc(ROWS, k=64, module=None, lrs=[0.1])
    assert fewer_modules_than_asked(many, found, ROWS) == (
        "finetune.candidates is 64 but 4 module(s) are tried: the MRC table has only 4 module(s)")
    named = RiftConfig.model_validate({**base, "finetune": {"candidates": 3, "module": "a"}})
    message = fewer_modules_than_asked(
        named, candidates_from_mrc(ROWS, k=3, module="a", lrs=[0.1]), ROWS)
    assert message is not None and "finetune.module names 'a'" in message
    # Rows flagged zero_gradient (rift.mrc_zero_gradient) are never chosen: not counted.
    flagged = [*ROWS, {"name": "gated", "mrc": 0.0, "zero_gradient": True}]
    assert fewer_modules_than_asked(
        many, candidates_from_mrc(flagged, k=64, module=None, lrs=[0.1]), flagged) == (
        "finetune.candidates is 64 but 4 module(s) are tried: the MRC table has only 4 "
        "module(s) that can be chosen (1 more flagged zero_gradient: gated)")
    three = RiftConfig.model_validate({**base, "finetune": {"candidates": 3}})
    assert fewer_modules_than_asked(
        three, candidates_from_mrc(ROWS, k=3, module=None, lrs=[0.1]), ROWS) is None


def _outcome(module: str, alpha: float, clean: float, robust: float) -> CandidateOutcome:
    return CandidateOutcome(Candidate(module, 1e-3), alpha, clean, robust, [], 1)


def test_choose_across_follows_the_rule_and_its_tie_breaks() -> None:
    assert choose_across([_outcome("a", 0.5, 80, 50), _outcome("b", 0.9, 81, 49)]) == 1
    assert choose_across([_outcome("a", 0.5, 81, 49), _outcome("b", 0.9, 81, 50)]) == 1
    assert choose_across([_outcome("a", 0.9, 81, 50), _outcome("b", 0.5, 81, 50)]) == 1
    assert choose_across([_outcome("a", 0.5, 81, 50), _outcome("b", 0.5, 81, 50)]) == 0


def test_choose_across_leaves_excluded_candidates_out_and_fails_when_all_are() -> None:
    excluded = ExcludedCandidate(Candidate("a", 10.0), "diverged", "finetune.lr_grid")
    # The excluded candidate keeps its index; the rule picks among the others.
    assert choose_across([excluded, _outcome("b", 0.5, 80, 50), _outcome("c", 0.5, 81, 50)]) == 2
    with pytest.raises(NumericalError, match="every candidate") as raised:
        choose_across([excluded, ExcludedCandidate(Candidate("a", 5.0), "diverged",
                                                   "finetune.lr_grid")])
    assert raised.value.field == "finetune.lr_grid"
    # One refused for a zero gradient (its module does not affect the output): not "diverged".
    gated = ExcludedCandidate(Candidate("gated", 0.1), "fine-tuning 'gated' would change nothing",
                              "finetune.module")
    with pytest.raises(ConfigError, match=re.escape(
            "every candidate of the sweep was excluded: 'a' at lr 10: diverged; 'gated' at lr "
            "0.1: fine-tuning 'gated' would change nothing")) as refused:
        choose_across([excluded, gated])
    assert refused.value.field == "finetune.module"


def test_messages_about_candidates_write_rates_that_round_alike_whole() -> None:
    """Two rates of a grid that ``:g`` writes alike (6 significant digits) were named alike in
    the sweep's failure and the diverged candidates' messages: which one diverged could not be
    told. They read as the curves' names do (``rift.rate_text``)."""
    close = [ExcludedCandidate(Candidate("a", lr), "diverged", "finetune.lr_grid")
             for lr in (0.001, 0.0010000001)]
    with pytest.raises(NumericalError) as raised:
        choose_across(close)
    assert "'a' at lr 0.001;" in str(raised.value)
    assert "'a' at lr 0.0010000001)" in str(raised.value)
    assert "at lr 0.0010000001;" in Divergence(2, 0.0010000001, 1, "finetune.lr_grid").message()


def _diverging_grid(config: dict[str, Any], lr_grid: list[float]) -> RiftConfig:
    """conv1 of the digits model with no momentum and weight decay 1 on batches of 16: each step
    scales the weights by about 1 - lr, so rate 10 overflows in epoch 1, rate 3 in epoch 2,
    and 0.05 stays finite (measured on this model)."""
    config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    config["finetune"].update(module="conv1", epochs=3, lr_milestones=[2], lr_grid=lr_grid,
                              momentum=0.0, weight_decay=1.0, batch_size=16, bn_stats="freeze")
    config["interpolation"]["alpha_step"] = 0.5
    config["evaluation"]["max_examples"] = 120
    config["preflight"] = {"examples": 0}
    return RiftConfig.model_validate(config)


def test_a_sweep_excludes_a_candidate_that_diverges_at_once_and_picks_among_the_rest(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], tmp_path: Path) -> None:
    """Before, the first candidate's divergence failed the whole sweep."""
    config = _diverging_grid(digits_job_config, [10.0, 3.0, 0.05])
    warnings: list[str] = []

    def record(kind: str, payload: dict[str, Any]) -> None:
        if kind == "warning" and payload.get("stage") == "finetune":
            warnings.append(payload["message"])

    result = run_pipeline(config, digits_checkpoint_path, tmp_path,
                          PipelineCallbacks(on_event=record))
    sweep = result["sweep"]
    first, second, third = sweep["candidates"]
    assert sweep["excluded"] == [0] and sweep["chosen"] in (1, 2)
    assert first["excluded"] and first["points"] == [] and first["lr"] == 10.0
    assert "diverged in epoch 1" in first["reason"] and first["field"] == "finetune.lr_grid"
    assert second["points"] and third["points"] and not second.get("excluded")
    assert json.loads((tmp_path / "curves.json").read_text()) == sweep
    assert not (tmp_path / "candidate-00.finetuned.safetensors").exists()
    # The candidate that diverged in epoch 2 kept epoch 1 and said so; the excluded one too.
    assert any("candidate 'conv1' at lr 10 is excluded" in w for w in warnings), warnings
    assert any("'conv1': fine-tuning diverged in epoch 2 at lr 3; kept epoch 1" in w
               and "finetune.lr_grid" in w for w in warnings), warnings
    if sweep["chosen"] == 1:
        assert result["finetune"]["diverged"]["kept_epoch"] == 1


def test_a_sweep_whose_every_candidate_diverges_at_once_fails_naming_the_grid(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], tmp_path: Path) -> None:
    config = _diverging_grid(digits_job_config, [10.0, 7.0])
    with pytest.raises(NumericalError, match="every candidate") as raised:
        run_pipeline(config, digits_checkpoint_path, tmp_path)
    assert raised.value.field == "finetune.lr_grid"


def test_the_sweep_chooses_by_the_rule_over_all_curves(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], tmp_path: Path) -> None:
    digits_job_config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[], candidates=2,
                                         lr_grid=[0.05])
    digits_job_config["interpolation"]["alpha_step"] = 0.5
    digits_job_config["evaluation"]["max_examples"] = 120
    result = run_pipeline(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path,
                          tmp_path / "out")
    sweep = result["sweep"]
    assert [(c["module"], c["lr"]) for c in sweep["candidates"]] == [
        (m, lr) for m in [r["name"] for r in sorted(result["mrc"]["rows"],
                                                    key=lambda r: r["mrc"])[:2]]
        for lr in (0.05,)]
    # The rule over the union of every measured point of every curve, written out here.
    bar = sweep["candidates"][0]["points"][0]["robust_accuracy"]
    points = [(-p["clean_accuracy"], -p["robust_accuracy"], p["alpha"], index)
              for index, c in enumerate(sweep["candidates"]) for p in c["points"]
              if p["robust_accuracy"] is not None and p["robust_accuracy"] >= bar - 1e-9]
    _, _, alpha, index = min(points)
    assert (sweep["chosen"], result["chosen_alpha"]) == (index, alpha)
    assert result["selected_module"] == sweep["candidates"][index]["module"]
    assert json.loads((tmp_path / "out" / "curves.json").read_text()) == sweep
    # mrc.csv, written before the sweep, flags the module tuned in the end (it flagged the
    # least critical one, which the winner need not be).
    with open(tmp_path / "out" / "mrc.csv", newline="") as table:
        flagged = [row["name"] for row in csv.DictReader(table) if row["selected"] == "True"]
    assert flagged == [result["selected_module"]]


def test_mrc_csv_flags_the_sweep_winner_not_the_least_critical_module(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], tmp_path: Path) -> None:
    """Found by the config fuzz: the table was written before the sweep and kept flagging the
    least critical module when another won (here fc is the least critical and conv2 wins)."""
    digits_job_config["dataset"].update(max_train_examples=300, max_test_examples=150)
    digits_job_config["attack"]["steps"] = 0  # the choice by clean accuracy alone
    digits_job_config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    digits_job_config["finetune"].update(epochs=1, lr=0.05, lr_milestones=[], candidates=4)
    digits_job_config["interpolation"].update(alpha_step=1.0, robust_tolerance=100.0)
    digits_job_config["preflight"] = {"examples": 0}
    result = run_pipeline(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path,
                          tmp_path)
    assert result["selected_module"] != result["mrc"]["selected_module"]
    # result.json names both without ambiguity.
    assert (result["tuned_module"], result["lowest_mrc_module"]) == (
        result["selected_module"], result["mrc"]["selected_module"])
    with open(tmp_path / "mrc.csv", newline="") as table:
        flagged = [row["name"] for row in csv.DictReader(table) if row["selected"] == "True"]
    assert flagged == [result["selected_module"]]


def test_a_rate_listed_twice_is_refused_naming_it() -> None:
    from pydantic import ValidationError

    from rift.config import FinetuneSpec

    with pytest.raises(ValidationError, match=r"repeated: \[0\.01\]") as raised:
        FinetuneSpec(lr_grid=[0.01, 0.001, 0.01])
    assert raised.value.errors()[0]["loc"] == ("lr_grid",)
    assert FinetuneSpec(lr_grid=[0.01, 0.001]).lr_grid == [0.01, 0.001]


def test_a_sweep_cut_short_resumes_with_the_candidates_not_yet_done(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rift.errors import JobCancelled
    from rift.pipeline import PipelineCallbacks

    digits_job_config["mrc"].update(steps=1, num_examples=64, batch_size=64)
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[], candidates=2,
                                         lr_grid=[0.05, 0.01])
    digits_job_config["interpolation"]["alpha_step"] = 0.5
    digits_job_config["evaluation"]["max_examples"] = 120
    config = RiftConfig.model_validate(digits_job_config)
    whole = run_pipeline(config, digits_checkpoint_path, tmp_path / "whole")

    # Cut short as the third of the four candidates starts (Ctrl-C, a lost machine...).
    started: list[str] = []

    def record(kind: str, payload: dict[str, Any]) -> None:
        if payload.get("stage") == "candidate":
            started.append(kind)

    def third_started() -> bool:
        return started.count("stage_started") >= 3

    folder = tmp_path / "resumed"
    with pytest.raises(JobCancelled):
        run_pipeline(config, digits_checkpoint_path, folder,
                     PipelineCallbacks(on_event=record, should_cancel=third_started))
    assert sorted(p.name for p in folder.glob("candidate-*.candidate.json")) == [
        "candidate-00.candidate.json", "candidate-01.candidate.json"]
    started.clear()
    resumed = run_pipeline(config, digits_checkpoint_path, folder,
                           PipelineCallbacks(on_event=record))
    assert started == ["stage_skipped", "stage_skipped", "stage_started", "stage_started"]
    # The same answer and files as the sweep that ran straight through.
    assert resumed["sweep"] == whole["sweep"]
    assert resumed["chosen_alpha"] == whole["chosen_alpha"]
    for name in ("tuned.safetensors", "finetuned.safetensors"):
        ours, theirs = load_file(folder / name), load_file(tmp_path / "whole" / name)
        assert ours.keys() == theirs.keys()
        assert all(ours[key].equal(theirs[key]) for key in ours), name
    # Only the winner's candidate θ_FT is kept; every candidate's record stays.
    kept = sorted(p.name for p in folder.glob("candidate-*.finetuned.safetensors"))
    assert kept == [f"candidate-{whole['sweep']['chosen']:02d}.finetuned.safetensors"]
    assert len(list(folder.glob("candidate-*.candidate.json"))) == 4
    # --fresh clears the candidates too.
    from rift.stage_outputs import FolderStorage

    FolderStorage(folder).remove_outputs()
    assert not list(folder.glob("candidate-*"))


def test_a_candidates_events_name_it_and_only_the_sweeps_result_at_alpha_0_warns(
        digits_checkpoint_path: Path, digits_job_config: dict[str, Any], tmp_path: Path) -> None:
    """Before, a candidate whose own curve chose α = 0 warned that the weights were "returned
    unchanged" while another candidate won at α > 0 (the result's weights did change), and a
    candidate's epochs, points and warnings did not say whose they were (in the service the
    candidates run side by side, their events interleaved)."""
    config = alpha_zero_loser(digits_job_config, [1e-6, 0.05])
    events: list[tuple[str, dict[str, Any]]] = []
    record = PipelineCallbacks(on_event=lambda kind, payload: events.append((kind, payload)))
    result = run_pipeline(RiftConfig.model_validate(config), digits_checkpoint_path, tmp_path,
                          record)
    own = [c["chosen_alpha"] for c in result["sweep"]["candidates"]]
    # Which α > 0 wins depends on the test checkpoint's last bits (1.0 on one CPU, 0.5 on another).
    assert own[0] == 0.0 and own[1] > 0 and result["chosen_alpha"] == own[1]
    assert not [p for kind, p in events if kind == "warning" and "unchanged" in p["message"]]
    # Each candidate's epochs and points carry its index (its epochs run at its rate).
    epochs = [p for kind, p in events if kind == "epoch"]
    assert [(p["candidate"], p["lr"]) for p in epochs] == [(0, 1e-6), (1, 0.05)]
    points = [p["candidate"] for kind, p in events if kind == "interpolation_point"]
    assert points == [0, 0, 0, 1, 1, 1]
    assert all("candidate" not in p for _, p in events if p.get("stage") == "mrc")

    # Run again with the losing rate alone: the sweep's result is θ_AT, and it says so once.
    config["finetune"]["lr_grid"] = [1e-6]
    events.clear()
    again = run_pipeline(RiftConfig.model_validate(config), digits_checkpoint_path,
                         tmp_path / "alone", record)
    assert again["chosen_alpha"] == 0.0
    unchanged = [p for kind, p in events if kind == "warning" and "unchanged" in p["message"]]
    assert len(unchanged) == 1 and "candidate" not in unchanged[0]
    assert "finetune.lr_grid" in unchanged[0]["message"]
