"""``POST /v1/jobs`` refuses an explicit ``attack.domain`` that an uploaded npz's values lie
outside (``api.job_requests``, from the range the upload recorded), with the library's rule and
words (``rift.inputs_in_domain``); before, the job was accepted and failed its first stage."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persistence.models import Dataset, Job
from tests.api.helpers import (
    Api,
    digits_config,
    error_of,
    small_cnn_state,
    upload_checkpoint,
    varied_images,
)

pytestmark = pytest.mark.service


@pytest.fixture
def rgb_checkpoint_id(api: Api, tmp_path: Path) -> str:
    """small_cnn for 3×8×8 images: the jobs below pass every check of the model."""
    from rift.checkpoints import save_safetensors

    path = tmp_path / "rgb.safetensors"
    save_safetensors(path, small_cnn_state(in_channels=3))
    return str(upload_checkpoint(api, path)["id"])


def _rgb_images() -> np.ndarray:
    """30 float images of 3×8×8 in [0, 1], channel 1 in [0.1, 0.5] but for one pixel of 0.9
    (in x_test)."""
    images = varied_images((30, 3, 8, 8), np.float32)
    green = images[:, 1]
    images[:, 1] = 0.1 + 0.4 * (green - green.min()) / (green.max() - green.min())
    images[29, 1, 0, 0] = 0.9
    return images


def _upload(api: Api, **arrays: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    response = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _upload_rgb(api: Api) -> str:
    images = _rgb_images()
    return _upload(api, x=images[:24], y=np.arange(24) % 3, x_test=images[24:],
                   y_test=np.arange(6) % 3)


def _create(api: Api, checkpoint_id: str, dataset_id: str, domain: Any,
            **dataset: Any) -> Any:
    config = digits_config(dataset={"name": "npz", **dataset},
                           attack={"eps": 0.03, "step_size": 0.01, "steps": 2, "domain": domain})
    return api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint_id,
                                             "dataset_id": dataset_id, "config": config})


NARROW_CHANNEL_1 = {"lower": [0.0, 0.0, 0.0], "upper": [1.0, 0.5, 1.0]}


def test_bounds_the_uploaded_values_lie_outside_are_refused_naming_the_channel(
        api: Api, rgb_checkpoint_id: str) -> None:
    import torch

    from rift.attacks import PGD

    dataset_id = _upload_rgb(api)
    response = _create(api, rgb_checkpoint_id, dataset_id, NARROW_CHANNEL_1)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("inputs_outside_domain", "config.attack.domain")
    what = f"inputs of dataset {dataset_id} (x and x_test)"
    assert error["message"] == (
        f"the {what} lie outside attack.domain (channel/feature 1: [0.1, 0.9] vs [0, 0.5]); "
        "every attack step clamps into the domain, which would move clean inputs by more than "
        "eps. Widen the bounds or use 'none'")
    assert (error["channels_outside"], error["outside"]) == (1, [{
        "channel": 1, "min": pytest.approx(0.1), "max": pytest.approx(0.9), "lower": 0.0,
        "upper": 0.5}])
    # The library's words for the same inputs when the job runs (rift.attacks).
    with pytest.raises(Exception) as library:
        PGD(0.03, 0.01, 2, bounds=((0.0, 0.0, 0.0), (1.0, 0.5, 1.0))).check_inputs(
            torch.from_numpy(_rgb_images()), what)
    assert str(library.value) == error["message"]
    # One bound for every channel: every channel reaches past 0.6.
    response = _create(api, rgb_checkpoint_id, dataset_id, {"lower": [0.0], "upper": [0.6]})
    assert response.status_code == 422, response.text
    assert error_of(response)["channels_outside"] == 3
    assert api.count(Job) == 0


@pytest.mark.parametrize("domain", [
    # Channel 1's own range: its float32 values fit bounds written as 0.1 and 0.9.
    {"lower": [0.0, 0.1, 0.0], "upper": [1.0, 0.9, 1.0]},
    {"lower": [-1.0], "upper": [2.0]}, "unit", "auto", "none"])
def test_a_domain_that_holds_the_values_is_accepted(api: Api, rgb_checkpoint_id: str,
                                                    domain: Any) -> None:
    response = _create(api, rgb_checkpoint_id, _upload_rgb(api), domain)
    assert response.status_code == 201, response.text


def test_a_dataset_recorded_before_its_range_was_is_left_to_the_run_time_check(
        api: Api, rgb_checkpoint_id: str) -> None:
    dataset_id = _upload_rgb(api)
    with api.sessions() as session:  # a row from before migration 0029
        row = session.get(Dataset, dataset_id)
        assert row is not None and row.channel_value_max is not None
        row.value_min = row.value_max = row.channel_value_min = row.channel_value_max = None
        session.commit()
    response = _create(api, rgb_checkpoint_id, dataset_id, NARROW_CHANNEL_1)
    assert response.status_code == 201, response.text


def test_a_job_reading_a_capped_subset_is_left_to_the_run_time_check(
        api: Api, rgb_checkpoint_id: str) -> None:
    # The library checks the examples the caps keep, which may leave the outlying ones out.
    dataset_id = _upload_rgb(api)
    response = _create(api, rgb_checkpoint_id, dataset_id, NARROW_CHANNEL_1,
                       max_test_examples=3)
    assert response.status_code == 201, response.text
    response = _create(api, rgb_checkpoint_id, dataset_id, NARROW_CHANNEL_1,
                       max_test_examples=30)  # every example kept: checked
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(("features", "says"), [
    (6, "channel/feature 0: [-2, 3] vs [0, 1]"),
    # Past 1,000 features only the overall range is recorded: refused all the same.
    (1001, "every channel/feature together: [-2, 3] vs [0, 1]"),
])
def test_unit_on_feature_vectors_outside_it_is_refused(api: Api, small_cnn_file: Path,
                                                       features: int, says: str) -> None:
    rng = np.random.default_rng(0)
    values = np.stack([rng.permutation(np.linspace(-2.0, 3.0, 40)) for _ in range(features)],
                      axis=1)  # every feature in [-2, 3]
    dataset_id = _upload(api, x=values, y=np.arange(40) % 2)
    # The refusal comes before the model's checks: the digits checkpoint serves.
    checkpoint_id = str(upload_checkpoint(api, small_cnn_file)["id"])
    response = _create(api, checkpoint_id, dataset_id, "unit")
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.attack.domain" and says in error["message"], error
