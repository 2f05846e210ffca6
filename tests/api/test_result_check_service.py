"""A finished job checked through HTTP only, as a user who does not trust its numbers would: every
figure the service shows (``GET /v1/jobs/{id}``, ``/mrc``, ``/curves``, ``result.json``) agrees
with the others, and the downloaded weights give them again under the independent checker of
``tests/independent_checks.py`` (no rift attack, evaluation, interpolation or MRC code) on a real
Celery worker (Postgres, Redis, local store), the checkpoint uploaded as a DataParallel training
script saves it (a torch file, every key under ``module.``)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import Api, run_job, upload_checkpoint
from tests.independent_checks import (
    PlainPGD,
    WeightsExpectation,
    check_curve,
    check_mrc_table,
    check_weights,
    clean_correct,
    percent_of,
    read_safetensors,
    read_user_checkpoint,
    robust_correct,
    without_wrapper_prefix,
)
from tests.service_fixtures import WorkerProcess

pytestmark = [pytest.mark.service, pytest.mark.slow]


def test_a_jobs_numbers_check_out_from_its_downloads(
        start_worker: Callable[..., WorkerProcess], celery_api: Api, tmp_path: Path,
        digits_checkpoint_path: Path, quick_config: dict[str, Any]) -> None:
    import torch

    from rift.config import RiftConfig
    from rift.data import load_dataset
    from rift.models import build_model

    worker, api = start_worker(), celery_api
    config = copy.deepcopy(quick_config)
    config["dataset"].update(max_train_examples=300, max_test_examples=120)
    config["attack"]["random_start"] = False  # exact agreement with a plain PGD
    config["preflight"] = {"examples": 0}
    # Uploaded as a DataParallel training script saves it: a torch file, keys under "module.".
    upload_path = tmp_path / "digits_dp.pt"
    theta_at = read_user_checkpoint(digits_checkpoint_path)
    torch.save({"epoch": 6, "state_dict": {f"module.{key}": value
                                           for key, value in theta_at.items()}}, upload_path)
    checkpoint = upload_checkpoint(api, upload_path)
    job = run_job(api, checkpoint["id"], config, (worker,))
    job_id = job["id"]

    listing = {a["name"]: a for a in
               api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    files = {name: api.client.get(listing[name]["url"]).content
             for name in ("tuned.safetensors", "finetuned.safetensors", "result.json")}
    result = json.loads(files["result.json"])
    tuned, _ = read_safetensors(files["tuned.safetensors"])
    finetuned, _ = read_safetensors(files["finetuned.safetensors"])
    mrc = api.client.get(f"/v1/jobs/{job_id}/mrc").json()
    curves = api.client.get(f"/v1/jobs/{job_id}/curves").json()

    # 5. One story everywhere: the job, its tables and result.json.
    alpha, module = job["chosen_alpha"], job["selected_module"]
    assert (result["chosen_alpha"], result["selected_module"]) == (alpha, module)
    assert curves["chosen_alpha"] == alpha and mrc["selected_module"] == module
    assert job["metrics"]["before"] == result["before"]
    assert job["metrics"]["after"] == result["after"]
    assert job["metrics"]["selection_split"] == result["interpolation"]["selection_split"]
    fields = ("alpha", "clean_accuracy", "robust_accuracy", "robust_accuracy_at_most")
    assert [{k: p[k] for k in fields} for p in curves["interpolation"]] == [
        {k: p[k] for k in fields} for p in result["interpolation"]["points"]]
    assert [p["alpha"] for p in curves["interpolation"] if p["chosen"]] == [alpha]
    assert [e["val_accuracy"] for e in curves["epochs"]] == [
        e["val_accuracy"] for e in result["finetune"]["epochs"]]
    rows = result["mrc"]["rows"]
    assert [(r["module"], r["mrc"], r["worst_robust_loss"], r["max_ascent_loss"])
            for r in mrc["rows"]] == [(r["name"], r["mrc"], r["worst_robust_loss"],
                                       r["max_ascent_loss"]) for r in rows]
    assert [r["module"] for r in mrc["rows"] if r["selected"]] == [module]
    # 3. The MRC table from what the job shows: MRC = worst − the baseline in its metrics.
    assert job["metrics"]["baseline_robust_loss"] == result["mrc"]["baseline_robust_loss"]
    for row in mrc["rows"]:
        assert math.isclose(row["mrc"], row["worst_robust_loss"]
                            - job["metrics"]["baseline_robust_loss"], rel_tol=1e-9, abs_tol=1e-12)
    # The MRC table flags the module fine-tuned; the lowest is in the metrics (the same module
    # here, as finetune.module names none).
    assert job["metrics"]["lowest_mrc_module"] == result["mrc"]["selected_module"] == module
    check_mrc_table(result["mrc"], job["metrics"]["lowest_mrc_module"])

    # 1. The downloaded weights against the uploaded checkpoint.
    spec = RiftConfig.model_validate(job["config"])
    splits = load_dataset(spec.dataset, spec.seed)
    channels, height, _ = splits.image_shape

    def model_of(state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        model = build_model(spec.architecture, in_channels=channels, image_size=height).eval()
        if state is not None:
            model.load_state_dict(state, strict=True)
        return model

    upload = read_user_checkpoint(upload_path)
    assert set(tuned) == {key.removeprefix("module.") for key in upload}  # documented: no prefix
    batches = math.ceil(len(splits.train) / spec.finetune.batch_size)
    check_weights(model_of(), upload, tuned, finetuned, WeightsExpectation(
        module, alpha, spec.finetune.bn_stats, batches, result["finetune"]["best_epoch"]))

    # 2. The accuracies again, on the test split (the α split here), first max_examples of it.
    test = splits.test.head(spec.evaluation.max_examples or len(splits.test))
    attack = PlainPGD(spec.attack.eps, spec.attack.step_size, spec.attack.steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (OMP_NUM_THREADS=1): the same reduction order
    try:
        for state, reported in ((without_wrapper_prefix(upload), job["metrics"]["before"]),
                                (tuned, job["metrics"]["after"])):
            model = model_of(state)
            assert reported["clean_accuracy"] == percent_of(
                clean_correct(model, test.images, test.labels))
            assert reported["robust_accuracy"] == percent_of(
                robust_correct(model, test.images, test.labels, attack))
    finally:
        torch.set_num_threads(threads)
    check_curve(curves["interpolation"], alpha, tolerance=spec.interpolation.robust_tolerance,
                total=len(test), before=job["metrics"]["before"])
    # 4. The fine-tuning's epoch was kept on the validation split.
    best = result["finetune"]["best_epoch"]
    assert curves["epochs"][best - 1]["val_accuracy"] == percent_of(clean_correct(
        model_of(finetuned), splits.validation.images, splits.validation.labels))
