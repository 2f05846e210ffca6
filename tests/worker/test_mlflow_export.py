"""Export of a job to a real MLflow tracking store (SQLite with the model registry, artifacts in
a local folder), read back through MlflowClient."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.mlflow_export import JobExport, MlflowTarget, export_to_mlflow, flatten

pytest.importorskip("mlflow", reason="the optional 'mlflow' extra is not installed")


def _export(tmp_path: Path, job_id: str) -> JobExport:
    folder = tmp_path / job_id  # as gather_job downloads them: under their artifact names
    folder.mkdir()
    weights = folder / "tuned.safetensors"
    weights.write_bytes(b"weights of " + job_id.encode())
    csv = folder / "mrc.csv"
    csv.write_text("name,mrc\nfc,0.1\n")
    return JobExport(
        job_id=job_id, checkpoint_sha256=hashlib.sha256(b"theta_at").hexdigest(),
        config={"finetune": {"lr": 0.01, "lr_milestones": [3]}, "seed": 0},
        selected_module="fc", chosen_alpha=0.5,
        metrics={"before": {"clean_accuracy": 90.0, "robust_accuracy": 60.0},
                 "after": {"clean_accuracy": 92.0, "robust_accuracy": 60.5}},
        mrc_rows=[{"module": "conv1", "mrc": 2.0, "robust_accuracy_drop": 10.0},
                  {"module": "fc", "mrc": 0.1, "robust_accuracy_drop": 1.0}],
        epochs=[{"epoch": 1, "train_loss": 1.0, "train_accuracy": 80.0, "val_accuracy": 79.0},
                {"epoch": 2, "train_loss": 0.5, "train_accuracy": 85.0, "val_accuracy": 81.0}],
        points=[{"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 60.0},
                {"alpha": 0.5, "clean_accuracy": 92.0, "robust_accuracy": 60.5}],
        files={"tuned.safetensors": weights, "mrc.csv": csv})


def test_export_logs_the_run_and_registers_a_model_version(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = MlflowTarget(uri, "rift-test", "rift-tuned", (tmp_path / "artifacts").as_uri())
    first = export_to_mlflow(target, _export(tmp_path, "job1"))
    second = export_to_mlflow(target, _export(tmp_path, "job2"))
    assert (first.model_version, second.model_version) == ("1", "2")

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["finetune.lr"] == "0.01"
    assert run.data.params["finetune.lr_milestones"] == "[3]"
    assert run.data.params["chosen_alpha"] == "0.5"
    assert run.data.metrics["after.clean_accuracy"] == 92.0
    assert run.data.metrics["mrc.fc"] == 0.1
    assert run.data.tags["rift.job_id"] == "job1"
    history = client.get_metric_history(first.run_id, "interpolation.clean_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 90.0), (5000, 92.0)]
    assert [m.value for m in sorted(client.get_metric_history(first.run_id, "finetune.val_accuracy"),
                                    key=lambda m: m.step)] == [79.0, 81.0]
    logged = {f.path for f in client.list_artifacts(first.run_id)}
    assert {"mrc.csv", "mrc_table.json", "curves.json", "weights"} <= logged
    assert [f.path for f in client.list_artifacts(first.run_id, "weights")] == [
        "weights/tuned.safetensors"]

    version = client.get_model_version("rift-tuned", "1")
    assert version.run_id == first.run_id
    assert version.tags["job_id"] == "job1"
    assert version.tags["checkpoint_sha256"] == hashlib.sha256(b"theta_at").hexdigest()
    assert version.source.endswith("/weights")
    # The registered source holds the exact bytes of the tuned weights.
    local = Path(client.download_artifacts(first.run_id, "weights/tuned.safetensors", str(tmp_path)))
    assert local.read_bytes() == b"weights of job1"


def test_flatten_names_nested_keys_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": "1", "a.c.d": "[1, 2]", "e": "None"}


def test_module_names_mlflow_refuses_as_keys_still_export_one_metric_each(tmp_path: Path) -> None:
    # Module names come from the uploaded model. A trailing or doubled slash, or one over 250
    # characters, made MLflow refuse the metric key: the run FAILED, no model version; two names
    # sanitised alike ("a:b", "a\tb") were one metric.
    from mlflow.tracking import MlflowClient

    names = ["fc", "blocks/0/", "a//b", "x/./y", "../up", "m" * 300, "a:b", "a\tb", "日本.ß", "\ud800"]
    export = _export(tmp_path, "odd")
    export.mrc_rows = [{"module": name, "mrc": float(i), "robust_accuracy_drop": 1.0}
                       for i, name in enumerate(names)]
    export.selected_module = "s" * 9000  # a tag value over MLflow's documented 8000
    export.config = {**export.config, "mrc": {"modules": names * 100}}  # a param over 6000
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = MlflowTarget(uri, "rift odd ü", "rift tuned ü", (tmp_path / "artifacts").as_uri())
    result = export_to_mlflow(target, export)

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    mrc = {key: value for key, value in run.data.metrics.items() if key.startswith("mrc.")}
    assert sorted(mrc.values()) == [float(i) for i in range(len(names))]  # one key per module
    assert all(len(key) <= 250 for key in mrc)
    assert run.data.metrics["mrc.fc"] == 0.0 and run.data.metrics["mrc.日本.ß"] == 8.0
    assert client.get_model_version("rift tuned ü", result.model_version).run_id == result.run_id


def test_an_overlong_module_name_keeps_its_tail_in_the_metric_key() -> None:
    from worker.mlflow_export import metric_key

    key = metric_key("mrc", "backbone." + "x" * 300 + ".attn.qkv")
    assert len(key) == 250 and key.startswith("mrc.x") and ".attn.qkv-" in key
    assert metric_key("mrc", "layer1.0.conv1") == "mrc.layer1.0.conv1"  # names MLflow takes: as is


def test_every_alpha_of_the_finest_grid_gets_its_own_step() -> None:
    """α × 1000 put α = 0.0005 (an alpha_step of 0.0005, which the config allows) at step 0,
    over α = 0: MLflow's curve showed two values at one step."""
    from rift.interpolation import alpha_grid
    from worker.mlflow_export import _metrics

    for step in (0.0005, 1e-4, 0.00015):
        grid = alpha_grid(step)
        export = JobExport(job_id="j", checkpoint_sha256="", config={}, selected_module="fc",
                           chosen_alpha=0.0, metrics={}, mrc_rows=[], epochs=[],
                           points=[{"alpha": a, "clean_accuracy": 1.0, "robust_accuracy": None}
                                   for a in grid])
        steps = [m.step for m in _metrics(export) if m.key == "interpolation.clean_accuracy"]
        assert len(set(steps)) == len(grid), step


def test_an_mrc_row_stopped_early_is_exported_under_bound_names() -> None:
    """A row mrc.table = "selection" stopped early holds a lower bound of its MRC and the drop
    where its ascent stopped: the drop was logged as the module's robust_accuracy_drop."""
    from worker.mlflow_export import _metrics

    export = JobExport(
        job_id="j", checkpoint_sha256="", config={}, selected_module="fc", chosen_alpha=0.0,
        metrics={}, epochs=[], points=[],
        mrc_rows=[{"module": "conv1", "mrc": 1.0, "robust_accuracy_drop": 31.25, "exact": False},
                  {"module": "fc", "mrc": 0.2, "robust_accuracy_drop": 18.75, "exact": True}])
    logged = {m.key: m.value for m in _metrics(export)}
    assert logged == {"mrc_at_least.conv1": 1.0, "robust_accuracy_drop_at_stop.conv1": 31.25,
                      "mrc.fc": 0.2, "robust_accuracy_drop.fc": 18.75}


def test_an_mrc_row_flagged_zero_gradient_is_not_exported_as_an_mrc() -> None:
    """A row whose weight gradient was zero on every MRC batch has MRC 0 by construction and is
    never chosen: logged as mrc.<module>, it read as the lowest MRC, the module to tune."""
    from worker.mlflow_export import _metrics

    export = JobExport(
        job_id="j", checkpoint_sha256="", config={}, selected_module="fc", chosen_alpha=0.0,
        metrics={}, epochs=[], points=[],
        mrc_rows=[{"module": "branch", "mrc": 0.0, "robust_accuracy_drop": 0.0,
                   "exact": True, "zero_gradient": True},
                  {"module": "fc", "mrc": 0.2, "robust_accuracy_drop": 18.75, "exact": True,
                   "zero_gradient": None}])
    logged = {m.key: m.value for m in _metrics(export)}
    assert logged == {"mrc_zero_gradient.branch": 0.0, "robust_accuracy_drop.branch": 0.0,
                      "mrc.fc": 0.2, "robust_accuracy_drop.fc": 18.75}


def test_exporting_a_job_again_gives_its_run_and_version_back(tmp_path: Path) -> None:
    """A redelivered finishing task (or a retried export) created a second run and registered
    version 2 of the same weights. The run also carries the project and the job's labels."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "rift's \\tuned \"ü\""  # quotes and a backslash: a filter string must not hold it
    target = MlflowTarget(uri, "rift-test", name, (tmp_path / "artifacts").as_uri())
    export = _export(tmp_path, "job1")
    export.project_id = "p" * 32
    export.labels = {"team": "vision ü", "run:kind": "nightly"}
    export.weights_metadata = {"config_sha256": "c" * 64, "rift_version": "0.1.0",
                               "architecture": "small_cnn", "num_classes": "10"}
    first = export_to_mlflow(target, export)
    again = export_to_mlflow(target, export)
    assert again == first
    other = export_to_mlflow(target, _export(tmp_path, "job2"))
    assert (first.model_version, other.model_version) == ("1", "2")
    assert export_to_mlflow(target, export) == first

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("rift-test").experiment_id],
                              filter_string="tags.`rift.job_id` = 'job1'")
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert sorted(str(v.version) for v in client.search_model_versions()
                  if v.name == name) == ["1", "2"]
    tags = runs[0].data.tags
    assert tags["rift.project_id"] == "p" * 32 and tags["rift.job_id"] == "job1"
    assert tags["rift.label.team"] == "vision ü" and tags["rift.label.run_kind"] == "nightly"
    version = client.get_model_version(name, "1").tags
    assert version["project_id"] == "p" * 32 and version["config_sha256"] == "c" * 64
    assert (version["rift_version"], version["architecture"], version["num_classes"]) == (
        "0.1.0", "small_cnn", "10")


def test_an_unreachable_tracking_server_is_tried_the_retries_asked(tmp_path: Path) -> None:
    """MLflow's default retried each request 7 times with exponential back-off: the worker sat
    246 s after each job before the export gave up. The target's limit applies now: a server
    that drops every connection sees 1 + http_max_retries of them, then the export raises."""
    import socket
    import threading

    from mlflow.exceptions import MlflowException

    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(MlflowException):
            export_to_mlflow(MlflowTarget(uri, "e", "m", http_max_retries=1,
                                          http_timeout_seconds=5), _export(tmp_path, "down"))
    finally:
        server.close()
    assert len(accepted) == 2


def test_a_sweeps_chosen_rate_is_a_param_and_tags_its_run_and_version(tmp_path: Path) -> None:
    # A sweep's flattened config names the whole lr_grid and a finetune.lr (default 0.001) it
    # did not run: before, nothing in MLflow said which rate made the registered weights.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = MlflowTarget(uri, "rift-test", "rift-tuned", (tmp_path / "artifacts").as_uri())
    sweep = _export(tmp_path, "sweep1")
    sweep.config = {"finetune": {"lr": 0.001, "lr_grid": [0.01, 0.05], "candidates": 2}}
    sweep.metrics = {**sweep.metrics, "sweep": {"chosen": 3, "candidates": 4, "module": "fc",
                                                "lr": 0.05, "excluded": []}}
    exported = export_to_mlflow(target, sweep)
    single = export_to_mlflow(target, _export(tmp_path, "single1"))

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(exported.run_id)
    assert run.data.params["selected_lr"] == "0.05"
    assert run.data.tags["rift.selected_lr"] == "0.05"
    assert client.get_model_version("rift-tuned", exported.model_version).tags[
        "selected_lr"] == "0.05"
    # One candidate: its rate is finetune.lr, nothing more to say.
    assert "selected_lr" not in client.get_run(single.run_id).data.params
    assert "selected_lr" not in client.get_model_version("rift-tuned",
                                                         single.model_version).tags


def test_every_candidate_curve_of_a_sweep_is_logged_beside_the_winners(tmp_path: Path) -> None:
    """Only the winner's α curve was logged as metrics: comparing a sweep's candidates in
    MLflow's UI (the paper's Fig. C.5) needed the run's result.json by hand."""
    import json

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    target = MlflowTarget(uri, "rift-test", "rift-tuned", (tmp_path / "artifacts").as_uri())
    sweep = _export(tmp_path, "sweep2")
    sweep.candidates = [
        {"index": 0, "module": "fc", "lr": 0.01, "excluded": False,
         "points": [{"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 60.0},
                    {"alpha": 0.5, "clean_accuracy": 91.0, "robust_accuracy": None}]},
        {"index": 1, "module": "conv1", "lr": 0.0010000001, "excluded": True, "points": []},
        {"index": 2, "module": "fc", "lr": 0.05, "excluded": False,
         "points": [{"alpha": 0.0, "clean_accuracy": 90.0, "robust_accuracy": 60.0},
                    {"alpha": 1.0, "clean_accuracy": 93.0, "robust_accuracy": 59.0}]}]
    run_id = export_to_mlflow(target, sweep).run_id

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    assert history("sweep.candidate_00.clean_accuracy") == [(0, 90.0), (5000, 91.0)]
    assert history("sweep.candidate_00.robust_accuracy") == [(0, 60.0)]  # not attacked: left out
    assert history("sweep.candidate_02.robust_accuracy") == [(0, 60.0), (10000, 59.0)]
    assert history("sweep.candidate_01.lr") == [(0, 0.0010000001)]
    assert history("sweep.candidate_01.clean_accuracy") == []
    logged = json.loads(Path(client.download_artifacts(run_id, "curves.json",
                                                       str(tmp_path))).read_text())
    assert [(c["index"], c["module"], c["lr"], c["excluded"]) for c in logged["candidates"]] == [
        (0, "fc", 0.01, False), (1, "conv1", 0.0010000001, True), (2, "fc", 0.05, False)]
