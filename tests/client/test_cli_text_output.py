"""``riftctl``'s text output prints the user's and the service's words as they are: square
brackets in a URL, an error message or a record (``[/prefix]``, ``labels.x.[key]``, a file named
``[v2].pt``) are text, not style tags (each used to end in rich's MarkupError traceback)."""

from __future__ import annotations

from pathlib import Path

from rift_client import RiftClient
from tests.client.conftest import RunningApi
from tests.client.helpers import ScriptedReply, ScriptedServer, run_riftctl
from tests.preloaded_launcher import Launcher


def test_a_url_refused_in_text_mode_is_one_line_not_a_markup_traceback(tmp_path: Path) -> None:
    # The installed console script in a fresh interpreter (no launcher), as a user runs it: the
    # other riftctl tests fork it from the test process's launcher.
    result = run_riftctl(["jobs", "list"], url="notaurl", api_key="rift_test", home=tmp_path)
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "[/prefix]" in result.stderr


def test_brackets_in_an_error_answer_and_in_a_table_are_printed_as_text(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    error = {"error": {"code": "validation_error", "field": "labels.é.[key]",
                       "message": "labels.é.[key]: String should match pattern '[/x]'"}}
    record = {"id": "ck_1", "filename": "[/v2] [bold]model.pt", "size": 10, "sha256": "0" * 64,
              "format": "torch", "num_tensors": 1, "num_parameters": 4,
              "created_at": "2026-01-01T00:00:00Z"}
    server = ScriptedServer([ScriptedReply(422, error),
                             ScriptedReply(200, {"items": [record], "next_cursor": None})])
    try:
        refused = run_riftctl(["jobs", "get", "job_1"], url=server.url, api_key="rift_test",
                              home=tmp_path, launcher=cli_launcher)
        listed = run_riftctl(["checkpoints", "list"], url=server.url, api_key="rift_test",
                             home=tmp_path, launcher=cli_launcher)
    finally:
        server.stop()
    assert refused.exit_code == 3 and "Traceback" not in refused.stderr
    assert "labels.é.[key]" in refused.stderr and "'[/x]'" in refused.stderr
    assert listed.exit_code == 0, listed.stderr
    assert "[/v2] [bold]model.pt" in listed.stdout


def test_a_config_file_json_cannot_take_as_meant_is_a_usage_error(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    repeated = tmp_path / "config.json"
    # Before: sent as {"finetune": {"lr": 0.2}}, the first value silently dropped.
    repeated.write_text('{"finetune": {"lr": 0.1, "lr": 0.2}}')
    yaml = tmp_path / "config.yaml"
    yaml.write_text("finetune:\n  lr: 0.1\n")
    for path, says in ((repeated, "'lr' is given more than once"),
                       (yaml, "YAML is not read, convert it to JSON")):
        result = run_riftctl(["jobs", "create", "--checkpoint", "ck_1", "--config", str(path)],
                             url="http://127.0.0.1:9", api_key="rift_test", home=tmp_path,
                             launcher=cli_launcher)
        assert result.exit_code == 2 and "Traceback" not in result.stderr
        assert says in " ".join(result.stderr.replace("│", " ").split()), result.stderr


def test_a_label_given_twice_with_two_values_is_a_usage_error(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    config = tmp_path / "config.json"
    config.write_text("{}")
    # Before: sent as {"team": "b"}, the first value silently dropped.
    result = run_riftctl(["jobs", "create", "--checkpoint", "ck_1", "--config", str(config),
                          "--label", "team=a", "--label", "team=b"],
                         url="http://127.0.0.1:9", api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "'team' is given twice" in " ".join(result.stderr.replace("│", " ").split())


def test_a_whole_job_request_as_config_says_what_the_file_should_hold(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    body = tmp_path / "job.json"
    body.write_text('{"checkpoint_id": "ck_1", "config": {"architecture": {"name": "mlp"}}}')
    # Before: sent as the config; the service answered "unknown setting" for each key.
    result = run_riftctl(["jobs", "create", "--checkpoint", "ck_1", "--config", str(body)],
                         url="http://127.0.0.1:9", api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "put only its 'config' object in the file" in " ".join(
        result.stderr.replace("│", " ").split())


def test_a_sweeps_candidates_say_where_each_theta_ft_is(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    def candidate(index: int, finetuned: dict | None) -> dict:
        return {"index": index, "module": f"layer{index}", "lr": 0.01, "status": "done",
                "attempts": 1, "chosen": index == 0, "chosen_alpha": 0.5,
                "clean_accuracy": 80.0, "robust_accuracy": 40.0, "best_epoch": 1, "points": [],
                "finetuned": finetuned}

    kept = {"available": True, "artifact": "finetuned.safetensors", "url": "/v1/x",
            "size": 1, "sha256": "0" * 64, "deleted": False, "reason": None}
    gone = {**kept, "available": False, "artifact": None, "url": None, "deleted": True,
            "reason": "deleted once the sweep picked candidate 0"}
    curves = {"job_id": "job_1", "status": "succeeded", "selected_module": "layer0",
              "epochs": [], "interpolation": [], "chosen_alpha": 0.5, "metrics": None,
              "candidates": [candidate(0, kept), candidate(1, gone), candidate(2, None)],
              "chosen_candidate": 0}
    server = ScriptedServer([ScriptedReply(200, curves)])
    try:
        shown = run_riftctl(["jobs", "curves", "job_1"], url=server.url, api_key="rift_test",
                            home=tmp_path, launcher=cli_launcher)
    finally:
        server.stop()
    assert shown.exit_code == 0, shown.stderr
    rows = {f"layer{i}": next(line for line in shown.stdout.splitlines() if f" layer{i} " in line)
            for i in range(3)}
    assert "θ_FT" in shown.stdout
    assert "finetuned.safetensors" in rows["layer0"]
    assert "deleted" in rows["layer1"] and rows["layer2"].rstrip("│ ").endswith("–")


def test_empty_results_are_a_line_not_headers_or_silence(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    """A job that failed before MRC scored a module printed the MRC table's headers alone, and a
    webhook that had sent nothing printed nothing at all."""
    server = ScriptedServer([
        ScriptedReply(200, {"job_id": "job_1", "status": "failed", "selected_module": None,
                            "rows": []}),
        ScriptedReply(200, {"job_id": "job_1", "status": "running", "selected_module": None,
                            "rows": []}),
        ScriptedReply(200, {"items": [], "next_cursor": None})])
    try:
        failed = run_riftctl(["jobs", "mrc", "job_1"], url=server.url, api_key="rift_test",
                             home=tmp_path, launcher=cli_launcher)
        running = run_riftctl(["jobs", "mrc", "job_1"], url=server.url, api_key="rift_test",
                              home=tmp_path, launcher=cli_launcher)
        hooks = run_riftctl(["webhooks", "deliveries", "wh_1"], url=server.url,
                            api_key="rift_test", home=tmp_path, launcher=cli_launcher)
    finally:
        server.stop()
    assert failed.exit_code == running.exit_code == hooks.exit_code == 0
    assert failed.stdout.splitlines() == ["job job_1: failed, selected module –", "no MRC rows"]
    assert " ".join(running.stdout.split()).endswith(
        "no MRC rows yet: each module's row appears here as it is scored")
    assert hooks.stdout.strip() == "no deliveries yet for webhook wh_1"


def _mrc_row(position: int, module: str) -> dict[str, object]:
    return {"position": position, "module": module, "parameters": 10, "mrc": 0.5,
            "worst_robust_loss": 1.5, "selected": False}


def test_a_partial_mrc_table_says_how_many_of_how_many_are_scored(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    """While the MRC stage runs, `jobs mrc` shows the rows scored so far and says so (the table
    used to be empty until the stage ended); a job stopped in it says why no more will come."""
    partial = {"job_id": "job_1", "selected_module": None, "complete": False,
               "rows": [_mrc_row(0, "conv1"), _mrc_row(2, "fc1")], "modules_scored": 2}
    server = ScriptedServer([
        ScriptedReply(200, {**partial, "status": "running", "modules_total": 4}),
        ScriptedReply(200, {**partial, "status": "cancelled", "modules_total": None})])
    try:
        running = run_riftctl(["jobs", "mrc", "job_1"], url=server.url, api_key="rift_test",
                              home=tmp_path, launcher=cli_launcher)
        cancelled = run_riftctl(["jobs", "mrc", "job_1"], url=server.url, api_key="rift_test",
                                home=tmp_path, launcher=cli_launcher)
    finally:
        server.stop()
    assert running.exit_code == cancelled.exit_code == 0, running.stderr + cancelled.stderr
    lines = running.stdout.splitlines()
    assert lines[1] == "partial: 2 of 4 scored (the MRC stage is running)"
    assert "conv1" in running.stdout and "fc1" in running.stdout
    assert cancelled.stdout.splitlines()[1] == (
        "partial: 2 scored (the job was cancelled before the MRC stage ended)")


def test_a_sweeps_chosen_rate_is_shown_beside_its_module(
        tmp_path: Path, cli_launcher: Launcher | None) -> None:
    # Before: "module fc" alone, though a sweep of fc over lr_grid [0.01, 0.05] has two
    # candidates tuning fc; which rate made the result was only in --output json.
    job = {"id": "job_1", "status": "succeeded", "checkpoint_id": "ck_1",
           "selected_module": "fc", "chosen_alpha": 0.5, "created_at": "2026-11-26T17:49:00Z",
           "updated_at": "2026-11-26T17:49:02Z", "finished_at": "2026-11-26T17:49:02Z",
           "metrics": {"sweep": {"chosen": 1, "candidates": 2, "module": "fc", "lr": 0.05,
                                 "excluded": []}}}
    single = {**job, "id": "job_2", "metrics": {}}

    def candidate(index: int, lr: float) -> dict:
        return {"index": index, "module": "fc", "lr": lr, "status": "done", "attempts": 1,
                "chosen": index == 1, "chosen_alpha": 0.5, "clean_accuracy": 80.0,
                "robust_accuracy": 40.0, "best_epoch": 1, "points": [], "finetuned": None}

    curves = {"job_id": "job_1", "status": "succeeded", "selected_module": "fc",
              "epochs": [], "interpolation": [], "chosen_alpha": 0.5, "metrics": None,
              "candidates": [candidate(0, 0.05000001), candidate(1, 0.05)],
              "chosen_candidate": 1}
    server = ScriptedServer([ScriptedReply(200, job), ScriptedReply(200, single),
                             ScriptedReply(200, curves), ScriptedReply(200, job)])
    try:
        shown = [run_riftctl(args, url=server.url, api_key="rift_test", home=tmp_path,
                             launcher=cli_launcher)
                 for args in (["jobs", "get", "job_1"], ["jobs", "get", "job_2"],
                              ["jobs", "curves", "job_1"], ["jobs", "wait", "job_1"])]
    finally:
        server.stop()
    assert all(result.exit_code == 0 for result in shown), [r.stderr for r in shown]
    assert "  chosen lr: 0.05" in shown[0].stdout.splitlines()
    assert "chosen lr" not in shown[1].stdout  # one candidate: its rate is finetune.lr
    assert shown[2].stdout.splitlines()[0] == (
        "job job_1: succeeded, module fc, lr 0.05, chosen α 0.5")
    # Two rates alike to 6 significant digits (":g") are told apart in the candidates' table.
    assert " 0.05000001 " in shown[2].stdout
    assert shown[3].stdout.strip() == "job job_1 succeeded (module fc, lr 0.05, α = 0.5)"


def test_control_characters_of_the_services_text_are_printed_as_escapes(
        tmp_path: Path, queued_api: RunningApi, api_key: str | None, rift: RiftClient,
        cli_launcher: Launcher | None) -> None:
    # A teammate's webhook description (any text the API takes) printed raw: ESC sequences
    # cleared the reader's screen or set its title, U+009B is a one-character CSI, U+202E
    # showed the rest reversed. rich removes BEL, BS, VT, FF and CR only.
    hostile = "ok\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eevil"
    hook = rift.create_webhook("http://127.0.0.1:9/hook", description=hostile)
    for command in (["webhooks", "list"], ["webhooks", "get", hook.id]):
        result = run_riftctl(command, url=queued_api.url, api_key=api_key, home=tmp_path,
                             launcher=cli_launcher)
        assert result.exit_code == 0, result.stderr
        assert not any(c in result.stdout for c in "\x1b\x07\x9b\u202e"), repr(result.stdout)
        flat = "".join(result.stdout.replace("│", " ").split())
        assert "ok\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202eevil" in flat, repr(result.stdout)
