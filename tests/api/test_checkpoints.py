"""``/v1/checkpoints`` over HTTP: valid uploads are stored with their SHA-256; every bad upload is a
4xx naming what is wrong, and leaves no row, no object and no scratch file behind."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from persistence.models import Checkpoint
from tests.api.helpers import (
    MIB,
    Api,
    digits_config,
    error_of,
    small_cnn_state,
    upload_checkpoint,
)

pytestmark = pytest.mark.service


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CodeRunningPickle:
    """Unpickling this runs a shell command that creates ``marker`` (if it ever runs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_upload_safetensors_is_stored_with_its_sha256(api: Api, small_cnn_file: Path) -> None:
    with small_cnn_file.open("rb") as handle:
        response = api.client.post("/v1/checkpoints", files={"file": ("mine.safetensors", handle)})
    assert response.status_code == 201, response.text
    record = response.json()
    assert response.headers["location"] == f"/v1/checkpoints/{record['id']}"
    assert record["filename"] == "mine.safetensors"
    assert record["format"] == "safetensors"
    assert record["size"] == small_cnn_file.stat().st_size
    assert record["sha256"] == sha256_of(small_cnn_file)
    state = small_cnn_state()
    assert record["num_tensors"] == len(state)
    assert record["num_parameters"] == sum(t.numel() for t in state.values())

    again = api.client.get(f"/v1/checkpoints/{record['id']}")
    assert again.status_code == 200
    assert again.json() == record
    stored = api.stored_files()
    assert len(stored) == 1 and stored[0].read_bytes() == small_cnn_file.read_bytes()
    assert api.scratch_files() == []


def test_upload_raw_body_and_torch_format(api: Api, small_cnn_torch_file: Path) -> None:
    response = api.client.post(
        "/v1/checkpoints", params={"filename": "../../etc/ckpt.pt"},
        content=small_cnn_torch_file.read_bytes(),
        headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["format"] == "torch"
    assert record["filename"] == "ckpt.pt"  # only the last path segment is kept
    assert record["sha256"] == sha256_of(small_cnn_torch_file)
    assert record["num_tensors"] == len(small_cnn_state())


def test_rfc6266_extended_file_names_are_kept(api: Api, small_cnn_file: Path) -> None:
    # Before: filename*= was dropped by the header parser, and the upload was named "upload".
    content = small_cnn_file.read_bytes()
    raw = api.client.post("/v1/checkpoints", content=content, headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": "attachment; filename=\"fallback.safetensors\"; "
                               "filename*=UTF-8''%C3%A9t%C3%A9.safetensors"})
    assert raw.status_code == 201, raw.text
    assert raw.json()["filename"] == "\u00e9t\u00e9.safetensors"
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename*=utf-8''%E2%82%AC.safetensors\r\n\r\n" + content + b"\r\n--b0undary--\r\n")
    part = api.client.post("/v1/checkpoints", content=body, headers={
        "Content-Type": "multipart/form-data; boundary=b0undary"})
    assert part.status_code == 201, part.text
    assert part.json()["filename"] == "\u20ac.safetensors"


@pytest.mark.parametrize("charset", ["idna", "undefined", "punycode", "unicode_escape", "utf-7",
                                     "hex", "no-such-charset"])
def test_an_extended_file_name_in_another_charset_falls_back_to_the_plain_name(
        api: Api, small_cnn_file: Path, charset: str) -> None:
    # Before: the charset went to Python's codec registry as sent, and 'idna' or 'undefined'
    # raised there (a 500, or a dropped connection mid-body); 'unicode_escape' read "\x41" as "A".
    content = small_cnn_file.read_bytes()
    value = f"filename=\"plain.safetensors\"; filename*={charset}''%5Cx41%FF.safetensors"
    raw = api.client.post("/v1/checkpoints", content=content, headers={
        "Content-Type": "application/octet-stream", "Content-Disposition": f"attachment; {value}"})
    assert raw.status_code == 201, raw.text
    assert raw.json()["filename"] == "plain.safetensors"
    body = (f"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; {value}\r\n\r\n"
            .encode() + content + b"\r\n--b0undary--\r\n")
    part = api.client.post("/v1/checkpoints", content=body, headers={
        "Content-Type": "multipart/form-data; boundary=b0undary"})
    assert part.status_code == 201, part.text
    assert part.json()["filename"] == "plain.safetensors"


@pytest.mark.parametrize("route", ["/v1/checkpoints", "/v1/datasets"])
def test_a_form_encoded_body_is_not_taken_for_the_file(api: Api, small_cnn_file: Path,
                                                       route: str) -> None:
    # `curl -d @file` sends this (with the file's line breaks stripped). Before: the form body
    # was read as the raw file, so the answer blamed the file's bytes (422), or kept them.
    response = api.client.post(route, content=small_cnn_file.read_bytes(),
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415, response.text
    error = error_of(response)
    assert error["field"] == "Content-Type" and "--data-binary" in error["message"]
    api.assert_nothing_stored()


def test_a_forged_numpy_dtype_is_refused(api: Api, tmp_path: Path) -> None:
    # An object array whose pickled dtype lost its flags held raw bytes as object pointers:
    # accepted before, and reading an element crashed the reader (second security review).
    import torch

    from tests.rift.test_pickled_arrays import ForgedArray, ForgedDtype

    path = tmp_path / "forged.pt"
    torch.save({"state_dict": {"w": torch.ones(4)}, "args": ForgedArray(ForgedDtype("O8", 0))},
               path)
    response = api.client.post("/v1/checkpoints", files={"file": ("forged.pt", path.read_bytes())})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_checkpoint" and error["field"] == "file"
    assert "a forged dtype" in error["message"]
    api.assert_nothing_stored()


@pytest.mark.parametrize("container", ["zip", "raw_pickle"])
def test_pickle_with_code_is_refused_without_running_it(
    api: Api, tmp_path: Path, container: str
) -> None:
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"conv1.weight": torch.zeros(1), "evil": CodeRunningPickle(marker)}
    if container == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    response = api.client.post("/v1/checkpoints", files={"file": ("evil.pt", path.read_bytes())})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_checkpoint"
    assert error["field"] == "file"
    assert "weights_only" in error["message"] or "refused" in error["message"]
    assert not marker.exists()
    api.assert_nothing_stored()


def test_corrupt_files_are_refused_with_the_reason(api: Api, small_cnn_file: Path) -> None:
    data = small_cnn_file.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    cases = {
        "truncated.safetensors": (data[: len(data) - 100], "truncated"),
        "garbage.bin": (b"this is not a checkpoint at all" * 10, "neither safetensors"),
        "empty.safetensors": (b"", "empty"),
        "badjson.safetensors": (data[:8] + b"{" + b"x" * (header_length - 1) + data[8 + header_length:],
                                "JSON"),
        "zip.pt": (b"PK\x03\x04" + b"\x00" * 100, "PyTorch"),
    }
    for name, (content, reason) in cases.items():
        response = api.client.post("/v1/checkpoints", files={"file": (name, content)})
        assert response.status_code == 422, (name, response.text)
        error = error_of(response)
        assert error["code"] == "invalid_checkpoint", name
        assert error["field"] == "file"
        assert reason.lower() in error["message"].lower(), (name, error["message"])
        assert name in error["message"] or "checkpoint" in error["message"]
    api.assert_nothing_stored()


def test_non_finite_weights_are_refused_naming_the_key(api: Api, tmp_path: Path) -> None:
    import torch

    from rift.checkpoints import save_safetensors

    state = small_cnn_state()
    state["conv2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_safetensors(path, state)
    response = api.client.post("/v1/checkpoints", files={"file": ("nan.safetensors",
                                                                  path.read_bytes())})
    assert response.status_code == 422
    assert "conv2.weight" in error_of(response)["message"]
    assert torch.isnan(state["conv2.weight"]).any()
    api.assert_nothing_stored()


def test_over_size_upload_is_413_naming_the_limit(api: Api) -> None:
    limit = api.settings.max_checkpoint_bytes
    big = os.urandom(limit + MIB)

    multipart = api.client.post("/v1/checkpoints", files={"file": ("big.safetensors", big)})
    assert multipart.status_code == 413
    error = error_of(multipart)
    assert error["code"] == "payload_too_large"
    assert str(limit) in error["message"] and error["limit_bytes"] == limit

    raw = api.client.post("/v1/checkpoints", content=big,
                          headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 413 and str(limit) in error_of(raw)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must stop the stream itself
        for start in range(0, len(big), 256 * 1024):
            yield big[start : start + 256 * 1024]

    streamed = api.client.post("/v1/checkpoints", content=chunks(),
                               headers={"Content-Type": "application/octet-stream"})
    assert streamed.status_code == 413 and str(limit) in error_of(streamed)["message"]
    api.assert_nothing_stored()


def test_malformed_requests_are_4xx(api: Api, small_cnn_file: Path) -> None:
    content = small_cnn_file.read_bytes()
    missing = api.client.post("/v1/checkpoints", files={"other": ("x", content)})
    assert missing.status_code == 422 and error_of(missing)["field"] == "other"

    empty_form = api.client.post("/v1/checkpoints", content=b"--XyZ--\r\n", headers={
        "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert empty_form.status_code == 422 and error_of(empty_form)["field"] == "file"

    boundary = "XyZ"
    truncated = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"a.safetensors\"\r\n\r\n").encode() + content[:1000]
    broken = api.client.post("/v1/checkpoints", content=truncated, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert broken.status_code == 400
    assert "multipart" in error_of(broken)["message"]

    no_boundary = api.client.post("/v1/checkpoints", content=b"abc",
                                  headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400

    twice = api.client.post("/v1/checkpoints", files=[("file", ("a", content)),
                                                      ("file", ("b", content))])
    assert twice.status_code == 422 and "twice" in error_of(twice)["message"]
    api.assert_nothing_stored()


def test_unknown_checkpoint_is_404(api: Api) -> None:
    for checkpoint_id in ["0" * 32, "nope", "%00", "a" * 200]:
        response = api.client.get(f"/v1/checkpoints/{checkpoint_id}")
        assert response.status_code == 404, checkpoint_id
        assert error_of(response)["field"] == "checkpoint_id"


def test_upload_then_count(api: Api, small_cnn_file: Path) -> None:
    upload_checkpoint(api, small_cnn_file)
    upload_checkpoint(api, small_cnn_file)
    assert api.count(Checkpoint) == 2
    assert len(api.stored_files()) == 2


def test_training_script_checkpoints_are_stored_and_fit_a_job(api: Api, tmp_path: Path) -> None:
    """A whole pickled model beside the script's arguments and a numpy accuracy (refused whole
    before) is read without running its code, and its weights pass the fit check of a job."""
    import argparse

    import numpy as np
    import torch

    from rift.config import ArchitectureSpec
    from rift.models import build_model

    model = build_model(ArchitectureSpec(name="small_cnn", num_classes=10), in_channels=1,
                        image_size=8)
    path = tmp_path / "trained.pt"
    torch.save({"net": torch.nn.DataParallel(model), "args": argparse.Namespace(lr=0.1),
                "best_acc": np.float64(0.93), "epoch": 99}, path)
    record = upload_checkpoint(api, path)
    assert record["format"] == "torch"
    job = api.client.post("/v1/jobs", json={"checkpoint_id": record["id"],
                                            "config": digits_config()})
    assert job.status_code == 201, job.text


class _EasyDict(dict):  # type: ignore[type-arg]
    """Like easydict.EasyDict (not installed): never imported where the upload is read."""


def test_a_model_and_its_ema_are_entries_a_job_chooses_from(api: Api, small_cnn_file: Path,
                                                             tmp_path: Path) -> None:
    import json

    import torch

    state = small_cnn_state()
    ema = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "ema.pt"
    torch.save({"state_dict": state, "state_dict_ema": ema, "args": _EasyDict(lr=0.1)}, path)
    record = upload_checkpoint(api, path)
    entries = ["state_dict", "state_dict_ema"]
    assert record["entries"] == entries and record["num_tensors"] == len(state)

    def job(**config: object) -> dict[str, object]:
        return {"checkpoint_id": record["id"], "config": digits_config(**config)}

    for config, words in [({}, "'state_dict', 'state_dict_ema'"),
                          ({"checkpoint_entry": "teacher"}, "no entry 'teacher'")]:
        response = api.client.post("/v1/jobs", json=job(**config))
        assert response.status_code == 422, response.text
        error = error_of(response)
        assert error["field"] == "config.checkpoint_entry" and error["code"] == "checkpoint_entry"
        assert error["entries"] == entries and words in error["message"]
    created = api.client.post("/v1/jobs", json=job(checkpoint_entry="state_dict_ema"))
    assert created.status_code == 201, created.text
    assert created.json()["config"]["checkpoint_entry"] == "state_dict_ema"
    # With the file sent along (multipart), the same answer, and the file is not kept.
    spec = json.dumps({"config": digits_config()})
    response = api.client.post("/v1/jobs", files={"checkpoint": ("ema.pt", path.read_bytes()),
                                                  "spec": (None, spec)})
    assert error_of(response)["field"] == "config.checkpoint_entry"
    assert api.count(Checkpoint) == 1
    # A safetensors file is one flat set of weights: naming an entry is a mistake.
    flat = upload_checkpoint(api, small_cnn_file)
    assert flat["entries"] == []
    response = api.client.post("/v1/jobs", json={"checkpoint_id": flat["id"], "config":
                                                 digits_config(checkpoint_entry="ema")})
    assert error_of(response)["field"] == "config.checkpoint_entry", response.text
