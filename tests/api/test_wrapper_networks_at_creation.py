"""A checkpoint holding a network under two key prefixes (a LightningModule's model and its
EMA, ``model.*`` and ``ema_model.*``) at ``POST /v1/jobs``: the fit check's tensors carry no
values, and it read two *different* networks as a network and its copy, so the job was created
and then refused by its worker. It now compares digests of the stored values (a safetensors
file's read by byte ranges of those tensors alone, a PyTorch file's taken as its inspection
checks them) and answers the job's refusal; equal copies are accepted as before. And a stored
safetensors checkpoint's header is read once per API process, not at every job creation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from persistence.settings import Settings
from tests.api.helpers import (
    Api,
    CountingStore,
    RecordingDispatcher,
    digits_config,
    error_of,
    small_cnn_state,
    upload_checkpoint,
)


def _lightning_state(ema_seed: int) -> dict[str, Any]:
    """A LightningModule's state dict: the network under ``model.``, its EMA under
    ``ema_model.`` (the same weights when ``ema_seed`` is 0, another network's otherwise)."""
    network, ema = small_cnn_state(seed=0), small_cnn_state(seed=ema_seed)
    return {**{f"model.{key}": value for key, value in network.items()},
            **{f"ema_model.{key}": value.clone() for key, value in ema.items()}}


def _save(state: dict[str, Any], path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def _assert_two_networks(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "checkpoint_mismatch" and error["field"] == field, error
    assert ("2 networks of this architecture with different values, under the key prefixes "
            "'model.', 'ema_model.'" in error["message"]
            and "save the one you mean on its own" in error["message"]), error


def test_two_networks_under_two_prefixes_are_refused_at_creation(api: Api,
                                                                 tmp_path: Path) -> None:
    two = upload_checkpoint(api, _save(_lightning_state(ema_seed=1), tmp_path / "two.safetensors"))
    refused = api.client.post("/v1/jobs", json={"checkpoint_id": two["id"],
                                                "config": digits_config()})
    _assert_two_networks(refused, "checkpoint_id")
    # Asked again (the fit check's passes are remembered): the same refusal.
    again = api.client.post("/v1/jobs", json={"checkpoint_id": two["id"],
                                              "config": digits_config()})
    _assert_two_networks(again, "checkpoint_id")

    copy = upload_checkpoint(api, _save(_lightning_state(ema_seed=0),
                                        tmp_path / "copy.safetensors"))
    created = api.client.post("/v1/jobs", json={"checkpoint_id": copy["id"],
                                                "config": digits_config()})
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("name", ["lightning.ckpt", "lightning.safetensors"])
def test_a_file_sent_with_the_job_is_checked_alike(api: Api, tmp_path: Path, name: str) -> None:
    spec = json.dumps({"config": digits_config()})
    two = _save(_lightning_state(ema_seed=1), tmp_path / name)
    refused = api.client.post("/v1/jobs", files={"checkpoint": (name, two.read_bytes()),
                                                 "spec": (None, spec)})
    _assert_two_networks(refused, "checkpoint")
    copy = _save(_lightning_state(ema_seed=0), tmp_path / name)
    created = api.client.post("/v1/jobs", files={"checkpoint": (name, copy.read_bytes()),
                                                 "spec": (None, spec)})
    assert created.status_code == 201, created.text
    # A float64 copy of the float32 network is a copy too, as the job (torch.equal) reads it.
    state = _lightning_state(ema_seed=0)
    wide = _save({key: value.double() if key.startswith("ema_model.") and value.is_floating_point()
                  else value for key, value in state.items()}, tmp_path / name)
    created = api.client.post("/v1/jobs", files={"checkpoint": (name, wide.read_bytes()),
                                                 "spec": (None, spec)})
    assert created.status_code == 201, created.text


def test_a_stored_safetensors_header_is_read_once(api_settings: Settings,
                                                  start_api: Callable[..., Api],
                                                  tmp_path: Path) -> None:
    store = CountingStore(api_settings.store_root)
    api = start_api(api_settings, store=store, dispatcher=RecordingDispatcher())
    record = upload_checkpoint(api, _save(_lightning_state(ema_seed=0),
                                          tmp_path / "copy.safetensors"))
    store.ranges.clear()
    first = api.client.post("/v1/jobs", json={"checkpoint_id": record["id"],
                                              "config": digits_config()})
    assert first.status_code == 201, first.text
    # The header's length and the header, then the digests of the network and its copy.
    assert store.ranges[:2] == [(0, 8), (8, store.ranges[1][1])] and len(store.ranges) > 2
    store.ranges.clear()
    second = api.client.post("/v1/jobs", json={"checkpoint_id": record["id"],
                                               "config": digits_config(seed=7)})
    assert second.status_code == 201, second.text
    assert store.ranges == []
