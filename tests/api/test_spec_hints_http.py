"""The job spec's hints over real HTTP, both ways a job is created (JSON and multipart): the
schema-level cases are in ``test_spec_messages.py``; this checks the route answers with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api.helpers import Api, digits_config, error_of, upload_checkpoint

#: Three mistakes a new user makes at once: another tool's name, an abbreviated choice and a
#: fractional batch size (before: no suggestion, no suggestion, "at least 8").
MISTAKES: dict[str, Any] = {
    "finetune": {"epochs": 1, "learning_rate": 0.01, "batch_size": 3.5},
    "interpolation": {"alpha_step": 0.5, "selection_split": "val"},
}
EXPECTED = {
    "config.finetune.learning_rate": "unknown setting 'learning_rate'; did you mean 'lr'?",
    "config.finetune.batch_size": "Input should be a valid integer; got the number 3.5",
    "config.interpolation.selection_split": "did you mean 'validation'?",
}


def _check(answer: dict[str, Any], prefix: str = "") -> None:
    assert sorted(answer["fields"]) == sorted(prefix + field for field in EXPECTED), answer
    for field, words in EXPECTED.items():
        assert f"{prefix}{field}: " in answer["message"] and words in answer["message"], answer


def test_a_new_users_mistakes_are_each_named_with_what_was_meant(
        api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    config = {**digits_config(), **MISTAKES}
    created = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                "config": config})
    assert created.status_code == 422, created.text
    _check(error_of(created))

    with small_cnn_file.open("rb") as handle:
        multipart = api.client.post("/v1/jobs", files={"checkpoint": (small_cnn_file.name, handle)},
                                    data={"spec": json.dumps({"config": config})})
    assert multipart.status_code == 422, multipart.text
    _check(error_of(multipart), "spec.")  # the multipart form's field holding the spec
    assert api.count_jobs() == 0
