"""``/v1/jobs`` over HTTP: creating jobs (JSON and multipart) with every mistake answered by a 4xx
naming its field and nothing half-stored, idempotent retries, listing with cursors and filters,
and cancelling a queued job."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from persistence.models import Checkpoint, Dataset, Job
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
def checkpoint_id(api: Api, small_cnn_file: Path) -> str:
    return str(upload_checkpoint(api, small_cnn_file)["id"])


def create(api: Api, body: Any, **headers: str) -> Any:
    return api.client.post("/v1/jobs", json=body, headers=headers)


def job_body(checkpoint_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"checkpoint_id": checkpoint_id, "config": digits_config(),
                            "labels": {"team": "vision"}}
    body.update(overrides)
    return body


def fields(response: Any) -> set[str]:
    return set(error_of(response).get("fields") or [error_of(response)["field"]])


def test_create_job(api: Api, checkpoint_id: str) -> None:
    response = create(api, job_body(checkpoint_id))
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["stage"] is None
    assert job["queue_position"] == 1
    assert job["labels"] == {"team": "vision"}
    assert job["checkpoint_id"] == checkpoint_id
    assert [s["stage"] for s in job["stages"]] == ["mrc", "finetune", "interpolate"]
    assert job["config"]["attack"]["eps"] == 0.1
    assert job["config"]["mrc"]["eps"] == 0.1  # default filled in
    assert api.dispatcher.enqueued == [job["id"]]
    assert api.client.get(job["links"]["self"]).json()["id"] == job["id"]


def test_invalid_spec_values_name_each_field(api: Api, checkpoint_id: str) -> None:
    config = digits_config(attack={"eps": -1, "steps": 2}, finetune={"epochs": 0},
                           mrc={"p": 3}, seed=2**40, unknown_key=True)
    response = create(api, job_body(checkpoint_id, config=config))
    assert response.status_code == 422
    assert {"config.attack.eps", "config.finetune.epochs", "config.mrc.p", "config.seed",
            "config.unknown_key"} <= fields(response)
    locs = [tuple(d["loc"]) for d in response.json()["detail"]]
    assert ("body", "config", "attack", "eps") in locs
    assert api.count(Job) == 0 and api.dispatcher.enqueued == []


@pytest.mark.parametrize(("change", "field"), [
    ({"checkpoint_id": "0" * 32}, "checkpoint_id"),
    ({"checkpoint_id": "../etc"}, "checkpoint_id"),
    ({"dataset_id": "0" * 32, "config": digits_config(dataset={"name": "npz"})}, "dataset_id"),
    ({"config": digits_config(dataset={"name": "imagenet"})}, "config.dataset.name"),
    ({"config": digits_config(dataset={"name": "npz"})}, "config.dataset.name"),
    ({"config": digits_config(dataset={"name": "digits", "path": "/etc"})}, "config.dataset.path"),
    ({"config": digits_config(dataset={"name": "cifar10", "root": "/etc"})}, "config.dataset.root"),
    ({"config": digits_config(dataset={"name": "digits", "download": True})},
     "config.dataset.download"),
    ({"config": digits_config(architecture={"name": "nonet"})}, "config.architecture.name"),
    ({"config": digits_config(finetune={"module": "layer9"})}, "config.finetune.module"),
    ({"config": digits_config(mrc={"modules": ["conv1", "nope"]})}, "config.mrc.modules"),
    # Found by the config fuzz: the library took both and failed once the job ran (a cap of one
    # training example when the data was split; "fc " after the MRC stage, in the CLI).
    ({"config": digits_config(dataset={"name": "digits", "max_train_examples": 1})},
     "config.dataset.max_train_examples"),
    ({"config": digits_config(finetune={"module": "fc "})}, "config.finetune.module"),
    ({"config": digits_config(device="gpu")}, "config.device"),
    ({"config": digits_config(device="cuda:\u00b2")}, "config.device"),
    ({"config": digits_config(device="cuda:99999999999999999999")}, "config.device"),
    ({"config": digits_config(interpolation={"alpha_step": 1e-5})},
     "config.interpolation.alpha_step"),
    ({"config": digits_config(architecture={"name": "small_cnn", "mean": [0.0],
                                            "std": [1e-300]})}, "config.architecture.std"),
    ({"config": digits_config(dataset={"name": "cifar100"})}, "config.architecture.num_classes"),
    ({"labels": {f"k{i}": "v" for i in range(40)}}, "labels"),
    ({"labels": {"bad key": "v"}}, "labels.bad key"),
    ({"labels": {"k": "v" * 300}}, "labels.k"),
    ({"labels": {"k": "a\nb"}}, "labels.k"),
    ({"labels": ["not", "a", "dict"]}, "labels"),
    ({"config": None}, "config"),
])
def test_bad_references_and_values_are_422(
    api: Api, checkpoint_id: str, change: dict[str, Any], field: str
) -> None:
    response = create(api, {**job_body(checkpoint_id), **change})
    assert response.status_code == 422, response.text
    assert field in fields(response), response.json()
    assert api.count(Job) == 0


def test_module_names_given_as_numbers_are_read_as_names(api: Api, checkpoint_id: str) -> None:
    # nn.Sequential names its children "0", "1", ...: a JSON 4 was refused "Input should be a
    # valid string" (field config.mrc.modules.0); it is the module "4", which small_cnn lacks.
    response = create(api, job_body(checkpoint_id, config=digits_config(
        mrc={"modules": ["conv1", 4]})))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.mrc.modules"
    assert "'4'" in error["message"] and "valid string" not in error["message"]
    # A fraction has lost its text (4.10 reads as 4.1): quotes are asked for.
    response = create(api, job_body(checkpoint_id, config=digits_config(
        finetune={"module": 4.10})))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.finetune.module"
    assert "a number may lose digits (4.10 reads as 4.1): quote it" in error["message"]
    assert api.count(Job) == 0


def test_finetune_module_naming_a_module_mrc_does_not_score_is_422(
        api: Api, checkpoint_id: str) -> None:
    """Before: ``finetune.module: "bn1"`` (a BatchNorm, which has parameters) was accepted and
    the job tuned a module the MRC table never ranks; ``mrc.modules: ["bn1"]`` was refused."""
    response = create(api, job_body(checkpoint_id, config=digits_config(
        finetune={"module": "bn1"})))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.finetune.module"
    assert "'bn1' is a BatchNorm2d, which MRC does not score" in error["message"]
    assert "conv1, conv2, conv3, fc" in error["message"]  # what may be named instead
    assert api.count(Job) == 0
    assert create(api, job_body(checkpoint_id, config=digits_config(
        finetune={"module": "conv2"}))).status_code == 201


def test_out_of_range_numbers_are_422_not_infinity(api: Api, checkpoint_id: str) -> None:
    """1e400 is valid JSON that parses to inf; it must be refused, naming the field."""
    body = json.dumps(job_body(checkpoint_id, config=digits_config(
        architecture={"name": "small_cnn", "mean": [0.5], "std": [0.25]})))
    body = body.replace("0.5", "1e400", 1)
    response = api.client.post("/v1/jobs", content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert "config.architecture.mean.0" in fields(response)
    assert api.count(Job) == 0


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_integer_weights_for_a_float_model_are_refused_at_creation(
        api: Api, tmp_path: Path, suffix: str) -> None:
    """Keys and shapes fit, the kind does not: refused before the job, not when it loads them."""
    import torch

    from rift.checkpoints import save_safetensors, save_torch

    state = small_cnn_state()
    state["conv2.weight"] = (state["conv2.weight"] * 100).to(torch.int16)
    path = tmp_path / f"quantised.{suffix}"
    (save_safetensors if suffix == "safetensors" else save_torch)(path, state)
    checkpoint = upload_checkpoint(api, path)
    response = create(api, job_body(str(checkpoint["id"])))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "checkpoint_mismatch" and error["field"] == "checkpoint_id"
    assert "conv2.weight (integer torch.int16; the model's is torch.float32)" in error["message"]
    assert api.count(Job) == 0


def test_checkpoint_that_does_not_fit_lists_the_keys(api: Api, checkpoint_id: str) -> None:
    other_arch = create(api, job_body(checkpoint_id, config=digits_config(
        architecture={"name": "resnet18", "num_classes": 10})))
    assert other_arch.status_code == 422
    error = error_of(other_arch)
    assert error["code"] == "checkpoint_mismatch" and error["field"] == "checkpoint_id"
    assert "linear.weight" in error["missing"] and "fc.weight" in error["unexpected"]
    # The digits small_cnn's keys fit small_cnn: said first (before: the key lists alone).
    assert error["message"].startswith("these weights fit the architecture 'small_cnn', not "
                                       "'resnet18': set architecture.name to 'small_cnn'.")

    classes = create(api, job_body(checkpoint_id, config=digits_config(
        architecture={"name": "small_cnn", "num_classes": 12})))
    assert classes.status_code == 422
    mismatched = {m["key"]: m for m in error_of(classes)["mismatched"]}
    assert mismatched["fc.weight"]["checkpoint_shape"] == [10, 64]
    assert mismatched["fc.weight"]["model_shape"] == [12, 64]
    assert error_of(classes)["missing"] == [] and error_of(classes)["unexpected"] == []

    channels = create(api, job_body(checkpoint_id, config=digits_config(
        architecture={"name": "small_cnn", "num_classes": 10, "in_channels": 3})))
    assert channels.status_code == 422
    assert "conv1.weight" in {m["key"] for m in error_of(channels)["mismatched"]}
    assert api.count(Job) == 0


@pytest.mark.parametrize(("content", "headers", "status"), [
    (b"{not json", {"Content-Type": "application/json"}, 422),
    (b'{"checkpoint_id": "x", "config": {"seed": NaN}}', {"Content-Type": "application/json"},
     422),
    (json.dumps({"checkpoint_id": "a\u0000b", "config": {}}).encode(),
     {"Content-Type": "application/json"}, 422),
    (b'{"checkpoint_id": "\\ud800", "config": {}}', {"Content-Type": "application/json"}, 422),
    (b"[1, 2, 3]", {"Content-Type": "application/json"}, 422),
    (b"", {"Content-Type": "application/json"}, 422),
    (b"\xff\xfe\x00", {"Content-Type": "application/json"}, 422),
    (b"[" * 100_000, {"Content-Type": "application/json"}, 422),
    (b'{"a": "' + b"x" * (2 * 1024 * 1024) + b'"}', {"Content-Type": "application/json"}, 413),
    (b"checkpoint_id=abc", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    (b"hello", {"Content-Type": "text/plain"}, 415),
    (b"hello", {}, 415),
])
def test_malformed_bodies_are_4xx(api: Api, content: bytes, headers: dict[str, str],
                                  status: int) -> None:
    response = api.client.post("/v1/jobs", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert error_of(response)["message"]
    # A body that is not a JSON object at all still names what is at fault.
    assert error_of(response)["field"], response.text
    assert api.count(Job) == 0


def test_multipart_without_boundary_names_the_header(api: Api) -> None:
    response = api.client.post("/v1/jobs", content=b"x",
                               headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400, response.text
    assert error_of(response)["field"] == "Content-Type"
    assert api.count(Job) == 0


@pytest.mark.parametrize(("domain", "field", "code"), [
    # The field is the request's, not pydantic's member tag: the bound at fault.
    ({"lower": [1.0], "upper": [0.0]}, "config.attack.domain.lower", "validation_error"),
    # An object is checked as bounds only: the field is the bound at fault.
    ({"lower": ["a"], "upper": [1.0]}, "config.attack.domain.lower.0", "validation_error"),
    # Digits have one channel: three bounds would only fail on the worker.
    ({"lower": [0.0] * 3, "upper": [1.0] * 3}, "config.attack.domain.lower",
     "domain_size_mismatch"),
])
def test_attack_domain_errors_name_the_field(api: Api, checkpoint_id: str, domain: Any,
                                             field: str, code: str) -> None:
    config = digits_config(attack={"eps": 0.1, "step_size": 0.03, "steps": 2, "domain": domain})
    response = create(api, job_body(checkpoint_id, config=config))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == field and error["code"] == code
    assert not any("[" in name for name in error.get("fields", [])), error
    assert api.count(Job) == 0


@pytest.mark.parametrize(("attack", "says"), [
    ({"eps": 8, "step_size": 2}, "8 grey levels is eps = 8/255 = 0.03137"),
    # digits are 1×8×8 in [0, 1]: the L2 diameter is 8, and from half of it every image can be
    # moved to the mid-grey one.
    ({"norm": "l2", "eps": 8, "step_size": 1}, "L2 diameter of attack.domain (8, half 4)"),
    ({"eps": 0.5, "step_size": 0.1}, "could move every input to the same one"),
])
def test_an_attack_radius_as_wide_as_the_inputs_is_refused_at_creation(
        api: Api, checkpoint_id: str, attack: dict[str, Any], says: str) -> None:
    # Before: eps 8 (meant as 8/255) was accepted and every robust accuracy measured nothing.
    response = create(api, job_body(checkpoint_id, config=digits_config(attack=attack)))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.attack.eps" and says in error["message"], error
    assert api.count(Job) == 0


def test_infinite_number_in_a_plain_body_is_422_not_500(api: Api) -> None:
    """1e400 parses to inf, which the 422 quotes: it must not break rendering the answer."""
    response = api.client.post(f"/v1/jobs/{'0' * 32}/materialize", content=b'{"alpha": 1e400}',
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "alpha"


def test_unknown_routes_and_methods_name_what_is_wrong(api: Api) -> None:
    missing = api.client.get("/v1/nothing-here")
    assert missing.status_code == 404 and error_of(missing)["field"] == "path"
    wrong_method = api.client.put("/v1/jobs")
    assert wrong_method.status_code == 405 and error_of(wrong_method)["field"] == "method"
    assert wrong_method.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    # Every method the path has, not only the first route's (it said "Allow: GET" here).
    on_a_job = api.client.put("/v1/jobs/0123456789abcdef0123456789abcdef")
    assert on_a_job.status_code == 405
    assert on_a_job.headers["allow"] == "GET, HEAD, DELETE, OPTIONS"
    assert "allowed: GET, HEAD, DELETE, OPTIONS" in error_of(on_a_job)["message"]


def test_idempotent_retry(api: Api, checkpoint_id: str) -> None:
    body = job_body(checkpoint_id)
    first = create(api, body, **{"Idempotency-Key": "retry-1"})
    assert first.status_code == 201
    # Same request, keys in another order and a default spelled out: the same job.
    again_body = {"labels": body["labels"], "config": {**body["config"], "seed": 0},
                  "checkpoint_id": checkpoint_id}
    second = create(api, again_body, **{"Idempotency-Key": "retry-1"})
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert api.count(Job) == 1 and api.dispatcher.enqueued == [first.json()["id"]]

    other = create(api, job_body(checkpoint_id, labels={"team": "other"}),
                   **{"Idempotency-Key": "retry-1"})
    assert other.status_code == 409
    assert error_of(other)["field"] == "Idempotency-Key"
    assert error_of(other)["job_id"] == first.json()["id"]

    fresh = create(api, body, **{"Idempotency-Key": "retry-2"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]

    bad_key = create(api, body, **{"Idempotency-Key": "has space"})
    assert bad_key.status_code == 422
    assert bad_key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert api.count(Job) == 2


def test_jobs_on_uploaded_datasets(api: Api, checkpoint_id: str) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((20, 8, 8), np.float32), y=np.arange(20) % 10)
    dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue())}).json()

    wrong_kind = create(api, job_body(checkpoint_id, dataset_id=dataset["id"],
                                      config=digits_config(dataset={"name": "imagefolder"})))
    assert wrong_kind.status_code == 422
    assert error_of(wrong_kind)["field"] == "config.dataset.name"

    response = create(api, job_body(checkpoint_id, dataset_id=dataset["id"],
                                    config=digits_config(dataset={"name": "npz"})))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["dataset_id"] == dataset["id"]
    assert job["config"]["dataset"]["path"] == f"dataset:{dataset['id']}"

    # A 3-channel npz needs a 3-channel model: the 1-channel checkpoint does not fit.
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((20, 8, 8, 3)), y=np.arange(20) % 10)
    rgb = api.client.post("/v1/datasets", files={"file": ("rgb.npz", buffer.getvalue())}).json()
    mismatch = create(api, job_body(checkpoint_id, dataset_id=rgb["id"],
                                    config=digits_config(dataset={"name": "npz"})))
    assert mismatch.status_code == 422
    assert error_of(mismatch)["code"] == "checkpoint_mismatch"

    # A colour ImageFolder tree is read as RGB: the geometry comes from the stored tar.
    from tests.api.test_datasets import png_bytes, tar_bytes

    tree = tar_bytes({f"d/{c}/{i}.png": png_bytes(8, 8) for c in ("a", "b") for i in range(2)})
    folder = api.client.post("/v1/datasets", files={"file": ("d.tgz", tree)}).json()
    rgb_only = create(api, job_body(checkpoint_id, dataset_id=folder["id"],
                                    config=digits_config(dataset={"name": "imagefolder"})))
    assert rgb_only.status_code == 422
    conv1 = next(m for m in error_of(rgb_only)["mismatched"] if m["key"] == "conv1.weight")
    assert conv1["checkpoint_shape"] == [16, 1, 3, 3] and conv1["model_shape"] == [16, 3, 3, 3]


def test_a_model_that_cannot_take_the_uploaded_images_is_422(api: Api, tmp_path: Path) -> None:
    # An mlp for 64 input features has the same weights whatever the width it will be fed, so
    # only a forward pass of the data's shape, made at creation on the meta device, shows that
    # the job on 8×12 images could never start.
    import io

    from rift.checkpoints import save_safetensors
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    architecture = {"name": "mlp", "num_classes": 10, "hidden": [8], "input_features": 64}
    model = build_model(ArchitectureSpec(**architecture), in_channels=1, image_size=8)
    path = tmp_path / "mlp.safetensors"
    save_safetensors(path, {k: v.detach().clone() for k, v in model.state_dict().items()})
    mlp_id = upload_checkpoint(api, path)["id"]
    datasets = {}
    for width in (8, 12):
        buffer = io.BytesIO()
        np.savez(buffer, x=varied_images((20, 8, width), np.float32), y=np.arange(20) % 10)
        datasets[width] = api.client.post(
            "/v1/datasets", files={"file": (f"w{width}.npz", buffer.getvalue())}).json()["id"]
    config = digits_config(architecture=architecture, dataset={"name": "npz"})

    wide = create(api, job_body(mlp_id, dataset_id=datasets[12], config=config))
    assert wide.status_code == 422, wide.text
    error = error_of(wide)
    assert error["field"] == "config.architecture", error
    assert "cannot take the dataset's 1×8×12 (C×H×W) inputs" in error["message"]
    assert api.count(Job) == 0
    square = create(api, job_body(mlp_id, dataset_id=datasets[8], config=config))
    assert square.status_code == 201, square.text


def test_grey_imagefolder_jobs_check_the_channels(api: Api, checkpoint_id: str,
                                                  tmp_path: Path) -> None:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state
    from tests.api.test_datasets import grey_png_bytes, tar_bytes

    tree = tar_bytes({f"d/{c}/{i}.png": grey_png_bytes(8, 8) for c in ("a", "b") for i in range(2)})
    grey = api.client.post("/v1/datasets", files={"file": ("grey.tgz", tree)}).json()
    assert grey["image_shape"] == [1, 8, 8]

    def job(checkpoint: str, **dataset: Any) -> Any:
        return create(api, job_body(checkpoint, dataset_id=grey["id"], config=digits_config(
            dataset={"name": "imagefolder", **dataset})))

    # The 1-channel checkpoint fits a grey tree, resized or not.
    assert job(checkpoint_id).status_code == 201
    assert job(checkpoint_id, image_size=16).status_code == 201

    # Read as RGB, it does not: the mismatch says how the images are read and what to set.
    rgb = job(checkpoint_id, channels=3)
    assert rgb.status_code == 422, rgb.text
    conv1 = next(m for m in error_of(rgb)["mismatched"] if m["key"] == "conv1.weight")
    assert conv1["model_shape"] == [16, 3, 3, 3]
    assert error_of(rgb)["field"] == "checkpoint_id"

    # A 3-channel checkpoint on the grey tree: the 422 names the option that reads it as RGB.
    save_safetensors(tmp_path / "rgb.safetensors", small_cnn_state(in_channels=3))
    three = str(upload_checkpoint(api, tmp_path / "rgb.safetensors")["id"])
    auto = job(three)
    assert auto.status_code == 422, auto.text
    assert error_of(auto)["code"] == "checkpoint_mismatch"
    assert "set config.dataset.channels to 3" in error_of(auto)["message"]
    assert job(three, channels=3).status_code == 201

    # architecture.in_channels unlike the data's: 422 naming it, with the data's count.
    spec = job_body(three, dataset_id=grey["id"], config=digits_config(
        dataset={"name": "imagefolder"},
        architecture={"name": "small_cnn", "num_classes": 10, "in_channels": 3}))
    wrong = create(api, spec)
    assert wrong.status_code == 422, wrong.text
    error = error_of(wrong)
    assert (error["field"], error["code"]) == ("config.architecture.in_channels",
                                               "channel_mismatch")
    assert (error["dataset_channels"], error["architecture_in_channels"]) == (1, 3)
    assert "config.dataset.channels to 3" in error["message"]

    # 'channels' chooses how ImageFolder images are read; other sources refuse it.
    other = create(api, job_body(checkpoint_id, config=digits_config(
        dataset={"name": "digits", "channels": 1})))
    assert other.status_code == 422 and "config.dataset.channels" in fields(other)


def test_default_channels_leave_a_jobs_request_hash_as_it_was() -> None:
    # An Idempotency-Key replayed across the upgrades that added dataset.channels and
    # checkpoint_entry is the same request, not a conflict: at their defaults the fields stay
    # out of the hash.
    from api.job_requests import fingerprint
    from api.schemas import JobSpec
    from persistence.jobs import request_fingerprint

    tree = {"name": "imagefolder", "path": "dataset:" + "0" * 32}
    spec = JobSpec.model_validate({"dataset_id": "0" * 32, "config": digits_config(dataset=tree)})
    config = spec.config.model_dump(mode="json")
    del config["dataset"]["channels"]  # the config as dumped before the fields existed
    del config["checkpoint_entry"]
    before = request_fingerprint({"checkpoint": "c", "dataset_id": "0" * 32, "config": config,
                                  "labels": {}})
    assert fingerprint(spec, "c") == before
    grey = JobSpec.model_validate({"dataset_id": "0" * 32, "config": digits_config(
        dataset={**tree, "channels": 1})})
    assert fingerprint(grey, "c") != before
    ema = JobSpec.model_validate({"dataset_id": "0" * 32, "config": digits_config(
        dataset=tree, checkpoint_entry="ema")})
    assert fingerprint(ema, "c") != before


def test_more_classes_than_the_architecture_is_422_naming_both(api: Api,
                                                                checkpoint_id: str) -> None:
    import io

    buffer = io.BytesIO()
    # Labels 0..11 (12 classes, the largest in the test split) for a 10-class small_cnn.
    np.savez(buffer, x=varied_images((20, 8, 8), np.float32), y=np.arange(20) % 10,
             x_test=varied_images((2, 8, 8), np.float32), y_test=np.array([3, 11]))
    dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue())}).json()
    assert (dataset["num_classes"], dataset["label_max"]) == (12, 11)
    response = create(api, job_body(checkpoint_id, dataset_id=dataset["id"],
                                    config=digits_config(dataset={"name": "npz"})))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.architecture.num_classes"
    assert "12 classes" in error["message"] and "num_classes is 10" in error["message"]
    assert (error["dataset_num_classes"], error["architecture_num_classes"]) == (12, 10)
    assert "start at" not in error["message"]  # labels from 0: no renumbering to suggest
    assert api.count(Job) == 0


def test_labels_counted_from_one_are_explained_at_creation(api: Api, checkpoint_id: str) -> None:
    import io

    buffer = io.BytesIO()
    # Ten classes labelled 1 to 10 count 11 for a 10-class model: renumbering is the fix.
    np.savez(buffer, x=varied_images((20, 8, 8), np.float32), y=np.arange(20) % 10 + 1)
    dataset = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue())}).json()
    response = create(api, job_body(checkpoint_id, dataset_id=dataset["id"],
                                    config=digits_config(dataset={"name": "npz"})))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["field"] == "config.architecture.num_classes"
    # The upload counted the labels: worded as the library words it (rift.dataset_formats).
    assert error["message"].endswith(
        "the labels are class indices and only 10 distinct ones are used (1, 2, 3, 4, 5, 6, 7, "
        "8, …): renumber them 0 to 9 (subtract 1)"), error["message"]
    assert api.count(Job) == 0


def _upload_npz(api: Api, labels: np.ndarray) -> str:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((len(labels), 8, 8), np.float32), y=labels)
    response = api.client.post("/v1/datasets", files={"file": ("d.npz", buffer.getvalue())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _forget_distinct_labels(api: Api, dataset_id: str) -> None:
    """Make the row one recorded before migration 0028, which counted no distinct labels."""
    with api.sessions() as session:
        row = session.get(Dataset, dataset_id)
        assert row is not None and row.num_distinct_labels is not None
        row.num_distinct_labels = row.distinct_labels = None
        session.commit()


def test_labels_that_skip_numbers_are_explained_at_creation(api: Api, checkpoint_id: str) -> None:
    # Three classes labelled 0, 100, 200 count 201: before, the 422 gave the counts alone,
    # which invites widening the network to 201 outputs instead of renumbering.
    dataset_id = _upload_npz(api, np.arange(30) % 3 * 100)
    config = digits_config(dataset={"name": "npz"},
                           architecture={"name": "small_cnn", "num_classes": 3})
    response = create(api, job_body(checkpoint_id, dataset_id=dataset_id, config=config))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("too_few_classes",
                                               "config.architecture.num_classes")
    assert error["message"] == (
        f"dataset {dataset_id} has 201 classes (labels 0 to 200) but architecture.num_classes "
        "is 3; the labels are class indices and only 3 distinct ones are used (0, 100, 200): "
        "renumber them 0 to 2")
    assert api.count(Job) == 0

    _forget_distinct_labels(api, dataset_id)  # a row from before: the counts alone, as before
    response = create(api, job_body(checkpoint_id, dataset_id=dataset_id, config=config))
    assert response.status_code == 422, response.text
    assert error_of(response)["message"] == (
        f"dataset {dataset_id} has 201 classes (labels 0 to 200) but architecture.num_classes "
        "is 3")


def test_labels_from_one_on_a_row_from_before_keep_the_range_hint(api: Api,
                                                                  checkpoint_id: str) -> None:
    dataset_id = _upload_npz(api, np.arange(20) % 10 + 1)
    _forget_distinct_labels(api, dataset_id)
    response = create(api, job_body(checkpoint_id, dataset_id=dataset_id,
                                    config=digits_config(dataset={"name": "npz"})))
    assert response.status_code == 422, response.text
    assert error_of(response)["message"].endswith(
        "labels are class indices counted from 0, and these start at 1: renumber them 0 to 9 "
        "(subtract 1) if no class is below it"), error_of(response)["message"]


def multipart(api: Api, checkpoint: tuple[str, bytes] | None, spec: str | None,
              **headers: str) -> Any:
    files: dict[str, Any] = {}
    if checkpoint is not None:
        files["checkpoint"] = checkpoint
    if spec is not None:
        files["spec"] = (None, spec)
    return api.client.post("/v1/jobs", files=files, headers=headers)


def test_multipart_job_with_checkpoint(api: Api, small_cnn_file: Path) -> None:
    content = small_cnn_file.read_bytes()
    spec = json.dumps({"config": digits_config(), "labels": {"via": "multipart"}})
    response = multipart(api, ("mine.safetensors", content), spec,
                         **{"Idempotency-Key": "mp-1"})
    assert response.status_code == 201, response.text
    job = response.json()
    checkpoint = api.client.get(f"/v1/checkpoints/{job['checkpoint_id']}").json()
    assert checkpoint["filename"] == "mine.safetensors" and checkpoint["size"] == len(content)

    retry = multipart(api, ("mine.safetensors", content), spec, **{"Idempotency-Key": "mp-1"})
    assert retry.status_code == 200 and retry.json()["id"] == job["id"]
    assert api.count(Checkpoint) == 1 and api.count(Job) == 1
    assert len(api.stored_files()) == 1 and api.scratch_files() == []


def test_bad_multipart_jobs_store_nothing(api: Api, small_cnn_file: Path, tmp_path: Path) -> None:
    import torch

    from tests.api.test_checkpoints import CodeRunningPickle

    content = small_cnn_file.read_bytes()
    good_spec = json.dumps({"config": digits_config()})
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": CodeRunningPickle(marker)}, evil)
    cases = [
        (("c.safetensors", content), "{not json", "spec"),
        (("c.safetensors", content), json.dumps({"config": digits_config(attack={"eps": -1})}),
         "spec.config.attack.eps"),
        (("c.safetensors", content), json.dumps({"checkpoint_id": "x",
                                                 "config": digits_config()}), "spec.checkpoint_id"),
        (("c.safetensors", content), None, "spec"),
        (None, good_spec, "checkpoint"),
        (("c.safetensors", content), json.dumps({"config": digits_config(
            architecture={"name": "resnet18"})}), "checkpoint"),
        (("evil.pt", evil.read_bytes()), good_spec, "checkpoint"),
        (("c.safetensors", b"garbage" * 100), good_spec, "checkpoint"),
    ]
    for checkpoint, spec, field in cases:
        response = multipart(api, checkpoint, spec)
        assert response.status_code == 422, (field, response.text)
        assert field in fields(response), (field, response.json())
    raw = api.client.post("/v1/jobs", content=content,
                          headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 415
    assert not marker.exists()
    api.assert_nothing_stored()


def test_broker_down_is_503_and_leaves_no_job(api: Api, checkpoint_id: str,
                                              small_cnn_file: Path) -> None:
    api.dispatcher.broker_down = True
    response = create(api, job_body(checkpoint_id), **{"Idempotency-Key": "k"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "broker_unavailable"
    spec = json.dumps({"config": digits_config()})
    response = multipart(api, ("c.safetensors", small_cnn_file.read_bytes()), spec)
    assert response.status_code == 503
    assert api.count(Job) == 0 and api.count(Checkpoint) == 1  # the one uploaded before
    api.dispatcher.broker_down = False
    retry = create(api, job_body(checkpoint_id), **{"Idempotency-Key": "k"})
    assert retry.status_code == 201


def test_list_pagination_and_filters(api: Api, checkpoint_id: str) -> None:
    ids = []
    for i in range(5):
        labels = {"team": "a" if i % 2 == 0 else "b", "run": str(i)}
        response = create(api, job_body(checkpoint_id, labels=labels))
        ids.append(response.json()["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == ids[::-1]  # newest first, each once

    team_a = api.client.get("/v1/jobs", params={"label": "team:a"}).json()["items"]
    assert [j["id"] for j in team_a] == [ids[4], ids[2], ids[0]]
    both = api.client.get("/v1/jobs", params=[("label", "team:a"), ("label", "run:2")]).json()
    assert [j["id"] for j in both["items"]] == [ids[2]]

    assert api.client.post(f"/v1/jobs/{ids[1]}/cancel").status_code == 200
    cancelled = api.client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    queued = api.client.get("/v1/jobs", params={"status": "queued,running"}).json()["items"]
    assert len(queued) == 4
    assert [j["queue_position"] for j in queued] == [4, 3, 2, 1]


@pytest.mark.parametrize(("params", "field"), [
    ({"status": "done"}, "status"),
    ({"label": "nocolon"}, "label"),
    ({"label": "bad key:v"}, "label"),
    ({"label": "k:a\u0000b"}, "label"),
    ({"limit": 0}, "limit"),
    ({"limit": 1000}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"cursor": "garbage!"}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|a\x00b").decode()},
     "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"not-a-date|abc").decode()}, "cursor"),
    ({"cursor": "x" * 1000}, "cursor"),
    # Valid dates whose offset pushes the instant outside datetime's range.
    ({"cursor": base64.urlsafe_b64encode(b"0001-01-01T00:00:00+05:00|x").decode()}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"9999-12-31T23:00:00-05:00|x").decode()}, "cursor"),
])
def test_bad_list_parameters_are_422(api: Api, params: dict[str, Any], field: str) -> None:
    response = api.client.get("/v1/jobs", params=params)
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == field


def test_cancel_queued_job(api: Api, checkpoint_id: str) -> None:
    first = create(api, job_body(checkpoint_id)).json()
    second = create(api, job_body(checkpoint_id)).json()
    assert second["queue_position"] == 2
    response = api.client.post(f"/v1/jobs/{first['id']}/cancel")
    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert {s["status"] for s in cancelled["stages"]} == {"cancelled"}
    assert api.client.get(f"/v1/jobs/{second['id']}").json()["queue_position"] == 1
    again = api.client.post(f"/v1/jobs/{first['id']}/cancel")
    assert again.status_code == 409 and error_of(again)["code"] == "job_finished"
    with api.sessions() as session:
        status = session.execute(select(Job.status).where(Job.id == first["id"])).scalar_one()
    assert status == "cancelled"


def test_unknown_jobs_are_404(api: Api) -> None:
    for path in ["/v1/jobs/" + "0" * 32, "/v1/jobs/%00", "/v1/jobs/nope/cancel",
                 "/v1/jobs/nope/events", "/v1/jobs/nope/mrc", "/v1/jobs/nope/curves",
                 "/v1/jobs/nope/artifacts", "/v1/jobs/nope/artifacts/tuned.safetensors"]:
        method = api.client.post if path.endswith("cancel") else api.client.get
        response = method(path)
        assert response.status_code == 404, path
        assert error_of(response)["field"] == "job_id"


def test_a_sweep_is_accepted_and_costs_one_fine_tune_and_curve_per_candidate(
        api: Api, checkpoint_id: str) -> None:
    single = create(api, job_body(checkpoint_id))
    sweep = create(api, job_body(checkpoint_id, config=digits_config(
        finetune={"epochs": 1, "candidates": 2, "lr_grid": [0.001, 0.01]})))
    assert (single.status_code, sweep.status_code) == (201, 201), sweep.text
    assert sweep.json()["config"]["finetune"]["candidates"] == 2
    # MRC and the adversarial set are shared; each of the 4 candidates adds its own fine-tune
    # and interpolation curve.
    costs = [single.json()["cost_estimate"], sweep.json()["cost_estimate"]]
    assert costs[1] > costs[0]
    from persistence.cost import estimate_cost
    one = estimate_cost(single.json()["config"], num_modules=4)
    assert costs[1] - costs[0] == 3 * (one.finetune.total + one.interpolation.total)


@pytest.mark.parametrize(("finetune", "field"), [
    ({"candidates": 17}, "config.finetune.candidates"),
    ({"candidates": 4, "lr_grid": [0.001, 0.002, 0.005, 0.01, 0.02]}, "config.finetune.lr_grid"),
    ({"module": "fc", "lr_grid": [0.001] * 17}, "config.finetune.lr_grid"),
])
def test_a_sweep_of_more_than_16_candidates_is_refused_naming_the_field(
        api: Api, checkpoint_id: str, finetune: dict[str, Any], field: str) -> None:
    response = create(api, job_body(checkpoint_id, config=digits_config(finetune=finetune)))
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == field
    assert api.count(Job) == 0


def test_a_job_may_ask_for_a_shorter_time_limit_than_the_service(api: Api,
                                                                  checkpoint_id: str) -> None:
    service_limit = 6 * 3600  # JOB_TIME_LIMIT_SECONDS's default
    shorter = create(api, {**job_body(checkpoint_id), "time_limit_seconds": 90})
    assert shorter.status_code == 201, shorter.text
    assert shorter.json()["time_limit_seconds"] == 90
    assert api.client.get(f"/v1/jobs/{shorter.json()['id']}").json()["time_limit_seconds"] == 90
    default = create(api, job_body(checkpoint_id)).json()
    assert default["time_limit_seconds"] is None  # the service's

    longer = create(api, {**job_body(checkpoint_id), "time_limit_seconds": service_limit + 1})
    assert longer.status_code == 422
    error = error_of(longer)
    assert (error["code"], error["field"]) == ("time_limit_exceeded", "time_limit_seconds")
    assert error["limit"] == service_limit and "JOB_TIME_LIMIT_SECONDS" in error["message"]
    for value in (0, -5, "soon"):
        refused = create(api, {**job_body(checkpoint_id), "time_limit_seconds": value})
        assert refused.status_code == 422, value
        assert refused.json()["detail"][0]["loc"] == ["body", "time_limit_seconds"]
    # Under a second a job could only time out while it starts (1e-9 was accepted).
    for value in (1e-9, 0.5):
        refused = create(api, {**job_body(checkpoint_id), "time_limit_seconds": value})
        assert refused.status_code == 422, value
        error = error_of(refused)
        assert (error["code"], error["field"]) == ("validation_error", "time_limit_seconds")
        assert "greater than or equal to 1" in error["message"], error
    assert api.count(Job) == 2  # nothing recorded for the refused requests

    # The limit is part of the request an Idempotency-Key stands for.
    first = create(api, {**job_body(checkpoint_id), "time_limit_seconds": 60},
                   **{"Idempotency-Key": "limit-1"})
    again = create(api, {**job_body(checkpoint_id), "time_limit_seconds": 60},
                   **{"Idempotency-Key": "limit-1"})
    other = create(api, {**job_body(checkpoint_id), "time_limit_seconds": 120},
                   **{"Idempotency-Key": "limit-1"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)


def test_an_imagefolder_of_several_image_sizes_needs_image_size(api: Api,
                                                               checkpoint_id: str) -> None:
    """Unresized, the job would fail reading the tree (or, with images under 8 px, run on them):
    the upload records that its sizes differ (and its size), and job creation asks for
    ``dataset.image_size`` (which resizes them) by name."""
    from tests.api.test_datasets import grey_png_bytes, npz_bytes, tar_bytes

    members = {f"d/{c}/{i}.png": grey_png_bytes(8, 8) for c in ("a", "b") for i in range(2)}
    members["d/b/wide.png"] = grey_png_bytes(8, 12)
    record = api.client.post("/v1/datasets", files={"file": ("sizes.tgz", tar_bytes(members))})
    assert record.status_code == 201, record.text
    assert record.json()["image_sizes_differ"] is True
    assert api.client.get(f"/v1/datasets/{record.json()['id']}").json()["image_sizes_differ"]

    def job(uploaded: Any = record, **dataset: Any) -> Any:
        return create(api, job_body(checkpoint_id, dataset_id=uploaded.json()["id"],
                                    config=digits_config(dataset={"name": "imagefolder",
                                                                  **dataset})))

    unresized = job()
    assert unresized.status_code == 422, unresized.text
    error = error_of(unresized)
    assert error["field"] == "config.dataset.image_size"
    assert "not all of one size" in error["message"]
    assert api.count(Job) == 0
    assert job(image_size=8).status_code == 201

    one_size = {f"d/{c}/{i}.png": grey_png_bytes(8, 8) for c in ("a", "b") for i in range(2)}
    same = api.client.post("/v1/datasets", files={"file": ("same.tgz", tar_bytes(one_size))})
    assert same.json()["image_sizes_differ"] is False
    npz = api.client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(
        x=varied_images((4, 1, 8, 8), np.float32), y=np.arange(4) % 2))})
    assert npz.status_code == 201, npz.text
    assert npz.json()["image_sizes_differ"] is None  # one array: one size

    # Before: images under 8 px passed the upload (a resize may fix them) and job creation too
    # (small_cnn takes any size), and the job ran on 6×5 images; now creation asks for the resize.
    small = {f"d/{c}/{i}.png": grey_png_bytes(5, 6) for c in ("a", "b") for i in range(2)}
    tiny = api.client.post("/v1/datasets", files={"file": ("small.tgz", tar_bytes(small))})
    assert tiny.status_code == 201, tiny.text
    assert tiny.json()["image_shape"] == [1, 6, 5]
    unresized = job(tiny)
    assert unresized.status_code == 422, unresized.text
    error = error_of(unresized)
    assert (error["field"], error["code"]) == ("config.dataset.image_size", "images_too_small")
    assert error["message"] == (
        f"dataset {tiny.json()['id']}'s images are 6×5 pixels (height × width); the service "
        "takes images of at least 8 pixels a side: set config.dataset.image_size (at least 8) "
        "to resize them")
    assert job(tiny, image_size=8).status_code == 201
