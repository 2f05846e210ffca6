"""Per-epoch resume of fine-tuning (``rift.finetune_resume``): a run stopped after some epochs and
continued from its stored state ends with the tensors, metrics and best epoch of a run never
stopped; a state stored under other inputs is not continued from."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import rift.finetune_resume
from rift.config import FinetuneSpec
from rift.data import DatasetSplits, ImageTensors
from rift.errors import JobCancelled
from rift.finetune import FinetuneResult, finetune_module
from rift.finetune_resume import (
    EpochState,
    FinetuneResume,
    decode_epoch_state,
    encode_epoch_state,
    finetune_inputs_digest,
    resumable_on,
)

CPU = torch.device("cpu")
EPOCHS = 5


class MemoryStore:
    """An epoch-state store in memory that counts its saves."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.saves = 0

    def load(self) -> bytes | None:
        return self.data

    def save(self, data: bytes) -> None:
        self.data, self.saves = data, self.saves + 1


def _synthetic(n: int, seed: int) -> ImageTensors:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.rand(n, 1, 8, 8, generator=generator) * 0.5
    for i in range(n):
        images[i, 0, 2 * int(labels[i]):2 * int(labels[i]) + 2, :] += 0.5
    return ImageTensors(images.clamp(0, 1), labels)


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    # Augmented: the shuffling generator draws crops and flips too, so its state must resume.
    return DatasetSplits(train=_synthetic(96, 1), validation=_synthetic(40, 2),
                         test=_synthetic(40, 3), num_classes=4, image_shape=(1, 8, 8),
                         name="synthetic", augment="crop_flip")


def _model() -> nn.Module:
    # Dropout draws from the global RNG and BatchNorm's statistics move with every batch: both
    # must come back as they were for the resumed epochs to be the same.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(6 * 64, 4))


def _spec() -> FinetuneSpec:
    # A milestone after the stop: the resumed scheduler must still decay at epoch 3.
    return FinetuneSpec(epochs=EPOCHS, lr=0.05, batch_size=16, lr_milestones=[3],
                        momentum=0.9, weight_decay=5e-4)


def _run(splits: DatasetSplits, resume: FinetuneResume | None = None,
         stop_after_saves: int | None = None) -> FinetuneResult:
    store = resume.store if resume is not None else None

    def should_cancel() -> bool:
        return (stop_after_saves is not None and isinstance(store, MemoryStore)
                and store.saves >= stop_after_saves)

    return finetune_module(_model(), "0", splits, _spec(), device=CPU, seed=3,
                           eval_batch_size=32, should_cancel=should_cancel, resume=resume)


def _timeless(result: FinetuneResult) -> list[dict[str, float | int]]:
    return [{k: v for k, v in e.as_dict().items() if k != "seconds"} for e in result.epochs]


def _assert_same(result: FinetuneResult, straight: FinetuneResult) -> None:
    assert _timeless(result) == _timeless(straight)
    assert result.best_epoch == straight.best_epoch
    assert result.state_dict.keys() == straight.state_dict.keys()
    assert all(torch.equal(result.state_dict[key], value)
               for key, value in straight.state_dict.items())


def test_a_fine_tune_stopped_after_two_epochs_resumes_to_the_uninterrupted_result(
        splits: DatasetSplits) -> None:
    straight = _run(splits)
    store = MemoryStore()
    resume = FinetuneResume(store, "inputs")
    with pytest.raises(JobCancelled):  # stopped in epoch 3, its first batch
        _run(splits, resume, stop_after_saves=2)
    stored = decode_epoch_state(store.data or b"")
    assert stored is not None and stored.epoch == 2
    resumed = _run(splits, resume)
    assert resumed.resumed_epochs == 2
    _assert_same(resumed, straight)
    assert store.saves == 2 + (EPOCHS - 1 - 2)  # epochs 3 and 4; none after the last
    # The epochs taken from the state are the stopped run's own, times included.
    assert [e.as_dict() for e in resumed.epochs[:2]] == stored.history


def test_a_state_under_other_inputs_is_not_resumed_from(splits: DatasetSplits) -> None:
    straight = _run(splits)
    store = MemoryStore()
    with pytest.raises(JobCancelled):
        _run(splits, FinetuneResume(store, "inputs-a"), stop_after_saves=2)
    assert store.data is not None
    result = _run(splits, FinetuneResume(store, "inputs-b"))
    assert result.resumed_epochs == 0  # trained from epoch 1, as if nothing were stored
    _assert_same(result, straight)
    last = decode_epoch_state(store.data)
    assert last is not None and (last.inputs, last.epoch) == ("inputs-b", EPOCHS - 1)


def test_a_device_whose_random_state_is_not_saved_neither_stores_nor_resumes(
        splits: DatasetSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    """On ``mps`` or ``xpu`` the state would lack the device generator dropout draws from, so a
    resumed run would differ from an uninterrupted one, silently: fine-tuning there starts over
    instead. Played on the CPU by taking it off the list of devices whose state is saved."""
    assert resumable_on(CPU) and resumable_on(torch.device("cuda"))
    assert not resumable_on(torch.device("mps")) and not resumable_on(torch.device("xpu"))
    store = MemoryStore()
    with pytest.raises(JobCancelled):
        _run(splits, FinetuneResume(store, "inputs"), stop_after_saves=2)
    monkeypatch.setattr(rift.finetune_resume, "RESUMABLE_DEVICE_TYPES", ("cuda",))
    saved = store.data
    result = _run(splits, FinetuneResume(store, "inputs"))
    assert result.resumed_epochs == 0 and store.data == saved  # not read, not written
    _assert_same(result, _run(splits))


def test_a_damaged_state_is_not_resumed_from(splits: DatasetSplits) -> None:
    store = MemoryStore()
    store.data = b"not a safetensors file"
    result = _run(splits, FinetuneResume(store, "inputs"))
    assert result.resumed_epochs == 0


def test_the_epoch_state_round_trips_through_its_bytes() -> None:
    weight = torch.randn(3, 2)
    state = EpochState(
        inputs="abc", epoch=2, history=[{"epoch": 1, "lr": 0.1, "train_loss": 1 / 3}],
        best_epoch=1, best_accuracy=12.5,
        model={"parameter:0.weight": weight, "buffer:1.num_batches_tracked": torch.tensor(7)},
        best={"0.weight": weight, "1.running_mean": torch.zeros(2, dtype=torch.float64)},
        optimizer={"state": {0: {"momentum_buffer": torch.ones(3, 2)}, 1: {"step": None}},
                   "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]},
        scheduler={"milestones": {3: 1}, "last_epoch": 2, "_last_lr": [0.01]},
        generator=torch.Generator().manual_seed(4).get_state(), rng=torch.get_rng_state())
    back = decode_epoch_state(encode_epoch_state(state))
    assert back is not None
    assert (back.inputs, back.epoch, back.history, back.best_epoch, back.best_accuracy) == (
        state.inputs, state.epoch, state.history, state.best_epoch, state.best_accuracy)
    assert back.scheduler == {"last_epoch": 2, "_last_lr": [0.01]}  # milestones: the spec's
    assert back.cuda_rng is None
    for group in ("model", "best"):
        ours, theirs = getattr(state, group), getattr(back, group)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype
                   for k in ours)
    assert back.optimizer["param_groups"] == state.optimizer["param_groups"]
    assert torch.equal(back.optimizer["state"][0]["momentum_buffer"], torch.ones(3, 2))
    assert back.optimizer["state"][1] == {"step": None}
    assert torch.equal(back.generator, state.generator) and torch.equal(back.rng, state.rng)
    assert decode_epoch_state(b"\x00" * 16) is None


def test_the_inputs_digest_changes_with_each_input(splits: DatasetSplits) -> None:
    weights = {"w": torch.ones(2)}
    base = finetune_inputs_digest(weights, splits, "0", [{"lr": 0.05}, 3, "fp32", "cpu"])
    other_data = replace(splits, train=ImageTensors(splits.train.images.flip(0),
                                                    splits.train.labels))
    assert len({base,
                finetune_inputs_digest(weights, splits, "0", [{"lr": 0.05}, 3, "fp32", "cpu"]),
                }) == 1
    assert base not in {
        finetune_inputs_digest({"w": torch.zeros(2)}, splits, "0",
                               [{"lr": 0.05}, 3, "fp32", "cpu"]),
        finetune_inputs_digest(weights, other_data, "0", [{"lr": 0.05}, 3, "fp32", "cpu"]),
        finetune_inputs_digest(weights, replace(splits, augment="none"), "0",
                               [{"lr": 0.05}, 3, "fp32", "cpu"]),
        finetune_inputs_digest(weights, splits, "1", [{"lr": 0.05}, 3, "fp32", "cpu"]),
        finetune_inputs_digest(weights, splits, "0", [{"lr": 0.04}, 3, "fp32", "cpu"]),
        finetune_inputs_digest(weights, splits, "0", [{"lr": 0.05}, 4, "fp32", "cpu"]),
        finetune_inputs_digest(weights, splits, "0", [{"lr": 0.05}, 3, "bf16", "cpu"]),
        finetune_inputs_digest(weights, splits, "0", [{"lr": 0.05}, 3, "fp32", "cuda"]),
    }
