"""The checks of θ_AT on a batch of the job's data before any stage (``rift.model_checks``), and
the cached MRC engine's check of its split against the whole model (``segments.segment_matches``):
models that would run to the end with meaningless numbers are refused or handled, legitimate
ones pass."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rift import checkpoints
from rift.attacks import PGD
from rift.cli import main
from rift.config import MRCSpec, RiftConfig
from rift.data import ImageTensors
from rift.demo import DIGITS_DEMO_CONFIG
from rift.errors import ConfigError
from rift.model_checks import check_model_outputs
from rift.models import registry
from rift.mrc import module_robust_criticality
from tests.module_factories import (
    BilinearEmbeddingNet,
    DropoutLeftOn,
    InPlaceActivations,
    ReLUInPlaceNet,
    TokenClassifier,
)

ATTACK = PGD(eps=0.1, step_size=0.025, steps=4)


class Net(nn.Module):
    """A small convolutional classifier whose output ``ending`` post-processes."""

    def __init__(self, ending: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, classes)
        self.ending = ending

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.drop(F.relu(self.conv(x)).mean((2, 3))))
        return logits if self.ending is None else self.ending(self, logits)


def _data(count: int = 40, classes: int = 4) -> ImageTensors:
    generator = torch.Generator().manual_seed(0)
    return ImageTensors(torch.rand(count, 3, 8, 8, generator=generator),
                        torch.randint(0, classes, (count,), generator=generator))


def _check(model: nn.Module) -> list[str]:
    return check_model_outputs(model, _data(), ATTACK, device=torch.device("cpu"), name="net")


def _no_grad(_: nn.Module, logits: Tensor) -> Tensor:
    with torch.no_grad():
        return logits * 1


LEGITIMATE = {
    "logits": None,
    # Log-probabilities: cross-entropy's log_softmax leaves them unchanged.
    "log_softmax": lambda _, z: z.log_softmax(1),
    # Non-negative, rows not summing to 1 (nor to one total), some above 1.
    "relu_logits": lambda _, z: F.relu(z) * 10 + 0.1,
    "dropout_in_train_only": lambda m, z: F.dropout(z, 0.5, training=m.training),
    # A sigmoid inside forward (gating, SiLU) is not a final one.
    "sigmoid_gate": lambda _, z: z * torch.sigmoid(z),
    "sigmoid_then_shift": lambda _, z: torch.sigmoid(z) * 8 - 4,
    # Log-probabilities written by hand: all ≤ 0, each row's logsumexp 0.
    "log_of_softmax": lambda _, z: torch.log(z.softmax(1)),
    "log_softmax_by_hand": lambda _, z: z - z.exp().sum(1, keepdim=True).log(),
    # A squeeze-and-excitation gate: a sigmoid of another shape, broadcast over the features.
    "excitation_gate": lambda m, z: z * torch.sigmoid(z.mean(1, keepdim=True)) - 0.5,
}


@pytest.mark.parametrize("ending", list(LEGITIMATE))
def test_legitimate_models_pass_and_keep_their_state(ending: str) -> None:
    torch.manual_seed(0)
    model = Net(LEGITIMATE[ending]).train()
    model.conv.weight.requires_grad_(False)
    state = torch.random.get_rng_state()
    assert _check(model) == []
    assert model.training and not model.conv.weight.requires_grad
    assert model.head.weight.requires_grad and model.head.weight.grad is None
    assert torch.equal(torch.random.get_rng_state(), state)


REFUSED = {
    "softmax": (lambda _, z: z.softmax(1), "returns probabilities"),
    # Outputs in [0, 1] not summing to 1: the softmax test cannot see them.
    "sigmoid": (lambda _, z: torch.sigmoid(z), "ends forward with sigmoid"),
    "sigmoid_module": (lambda _, z: nn.Sigmoid()(z), "ends forward with sigmoid"),
    "sigmoid_method": (lambda _, z: z.sigmoid(), "ends forward with sigmoid"),
    "expit": (lambda _, z: torch.special.expit(z), "ends forward with expit"),
    "hardsigmoid": (lambda _, z: F.hardsigmoid(z * 10), "ends forward with hardsigmoid"),
    # Probabilities however written, judged by their values.
    "softmax_by_hand": (lambda _, z: z.exp() / z.exp().sum(1, keepdim=True),
                        "returns probabilities"),
    "softmax_clamped": (lambda _, z: z.softmax(1).clamp(1e-8, 1), "returns probabilities"),
    "percentages": (lambda _, z: z.softmax(1) * 100, "returns percentages"),
    "negative_log_probabilities": (lambda _, z: -z.log_softmax(1),
                                   "returns negative log-probabilities"),
    # Operations keeping a sigmoid's shape and [0, 1] range carry its mark.
    "sigmoid_times_one": (lambda _, z: torch.sigmoid(z) * 1, "ends forward with sigmoid"),
    "sigmoid_clamped": (lambda _, z: z.sigmoid().clamp(1e-6, 1 - 1e-6),
                        "ends forward with sigmoid"),
    "dropout_left_on": (lambda _, z: F.dropout(z, 0.5), "dropout or noise stays active"),
    # Examples mixed in eval mode: before, the only batch-dependent layer caught was a
    # BatchNorm module without running statistics.
    "batch_statistics": (lambda m, z: m.head(F.batch_norm(
        F.relu(m.conv(z)), None, None, training=True).mean((2, 3))), "mixes examples"),
    "logits_centred_over_the_batch": (lambda _, z: z - z.mean(0, keepdim=True),
                                      "mixes examples"),
    "softmax_over_the_batch": (lambda _, z: (z * 100).log_softmax(0), "mixes examples"),
    "noise": (lambda _, z: z + torch.randn_like(z), "different outputs"),
    "no_grad": (_no_grad, "torch.no_grad()"),
    "argmax": (lambda _, z: F.one_hot(z.argmax(1), z.shape[1]).float() * 10, "argmax"),
    "rounded_input": (lambda m, z: m.head(F.relu(m.conv(torch.round(z))).mean((2, 3))),
                      "exactly zero for all 32 examples"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_meaningless_models_are_refused_naming_the_fix(case: str) -> None:
    ending, words = REFUSED[case]
    if case in ("rounded_input", "batch_statistics"):
        class Rounded(Net):
            def forward(self, x: Tensor) -> Tensor:
                return ending(self, x)
        model: nn.Module = Rounded()
    else:
        model = Net(ending)
    with pytest.raises(ConfigError) as refused:
        _check(model)
    assert words in refused.value.message and refused.value.field == "architecture"


def test_a_zero_gradient_from_an_all_zero_head_names_the_weights_not_a_step() -> None:
    """An untrained torchvision ViT has its head initialised to zero, so its logits are constant
    and the input gradient is zero; the refusal blamed "a step in its forward (rounding,
    quantisation, argmax...)" and told to use a straight-through estimator. It now names the
    all-zero weights."""
    torch.manual_seed(0)
    model = Net(None)
    nn.init.zeros_(model.head.weight)
    with pytest.raises(ConfigError) as refused:
        _check(model)
    message = refused.value.message
    assert "exactly zero for all 32 examples" in message
    assert "all zero: head.weight" in message and "a step in its forward" not in message


def test_cross_entropy_on_log_probabilities_is_cross_entropy_on_the_logits() -> None:
    """Why a final log_softmax passes: log_softmax(log_softmax(z)) = log_softmax(z), so the
    loss and its gradient are the model's; on probabilities they are not."""
    z = torch.randn(32, 10, dtype=torch.float64) * 5
    labels = torch.randint(0, 10, (32,))
    losses = {}
    for name, form in {"logits": lambda v: v, "log_probabilities": lambda v: v.log_softmax(1),
                       "by_hand": lambda v: torch.log(v.exp() / v.exp().sum(1, keepdim=True)),
                       "probabilities": lambda v: v.softmax(1)}.items():
        logits = z.clone().requires_grad_(True)
        loss = F.cross_entropy(form(logits), labels)
        (grad,) = torch.autograd.grad(loss, logits)
        losses[name] = (float(loss.detach()), grad)
    for name in ("log_probabilities", "by_hand"):
        assert losses[name][0] == pytest.approx(losses["logits"][0], rel=1e-12)
        assert torch.allclose(losses[name][1], losses["logits"][1], atol=1e-12)
    assert abs(losses["probabilities"][0] - losses["logits"][0]) > 0.5


WARNED = {
    # A sigmoid written out by hand, or applied outside torch functions: values only.
    "sigmoid_by_hand": lambda _, z: 1 / (1 + torch.exp(-z)),
    "sigmoid_by_tanh": lambda _, z: torch.tanh(z / 2) / 2 + 0.5,
    # The documented limit: logits that happen to lie in [0, 1] warn too.
    "small_relu_logits": lambda _, z: F.relu(z) * 1e-3,
}


@pytest.mark.parametrize("case", list(WARNED))
def test_outputs_only_in_the_unit_range_are_a_warning_naming_the_fix(case: str) -> None:
    torch.manual_seed(0)
    (warning,) = _check(Net(WARNED[case]))
    assert "lies in [0, 1]" in warning and "return the values before it" in warning
    assert "net" in warning


class Tempered(nn.Module):
    """``Net``'s logits times ``temperature`` on the examples whose first pixel lies below
    ``share`` (all of them at share 1): a temperature left in the model, as a defensively
    distilled network evaluated at T = 1 has, per example so that a share of a batch saturates."""

    def __init__(self, temperature: float, share: float = 1.0) -> None:
        super().__init__()
        self.net, self.temperature, self.share = Net(), temperature, share

    def forward(self, x: Tensor) -> Tensor:
        hot = (x[:, 0, 0, 0] < self.share).float()[:, None]
        return self.net(x) * (1 + (self.temperature - 1) * hot)


def _own_predictions(model: nn.Module) -> ImageTensors:
    """The test data labelled with ``model``'s own predictions: every example right, so a
    saturated softmax gives it a zero gradient."""
    data = _data()
    with torch.no_grad():
        return ImageTensors(data.images, model.eval()(data.images).argmax(1))


def test_some_examples_without_input_gradient_are_a_warning_naming_the_logit_scale() -> None:
    """Logits so large that cross-entropy's softmax is exactly one-hot in float32 give those
    examples a zero input gradient: PGD never moves them and they count as robust. The check
    refused a zero gradient only on every example, so such a model ran with inflated robust
    accuracy and no word (digits θ_AT at T = 100: 74.2 % for 65.9 %)."""
    torch.manual_seed(0)
    model = Tempered(1e5, share=0.25)
    data = _own_predictions(model)
    plain = Tempered(1.0)
    plain.load_state_dict(model.state_dict())
    assert check_model_outputs(plain, data, ATTACK, device=torch.device("cpu"), name="net") == []
    (warning,) = check_model_outputs(model, data, ATTACK, device=torch.device("cpu"),
                                     name="net")
    stuck = int((data.images[:32, 0, 0, 0] < 0.25).sum())
    assert 0 < stuck < 16
    assert f"exactly zero for {stuck} of the 32 test examples" in warning
    assert "may overstate" in warning and "return the logits divided by it" in warning


def test_most_examples_without_input_gradient_are_refused() -> None:
    torch.manual_seed(0)
    model = Tempered(1e5)
    with pytest.raises(ConfigError, match=r"exactly zero for (1[6-9]|2\d|3[01]) of the 32 "
                       r"test examples.*top logit leads every other") as refused:
        check_model_outputs(model, _own_predictions(model), ATTACK,
                            device=torch.device("cpu"), name="net")
    assert refused.value.field == "architecture"


def test_pipeline_refuses_the_digits_model_with_a_temperature_left_in_it(
        digits_checkpoint_info: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits θ_AT with its logits times 100: PGD-10 robust accuracy 74.2 % where the same
    weights give 65.9 % (clean 90.6 %), before any word; now refused before any stage."""
    from rift.models.small_cnn import SmallCNN
    from rift.pipeline import prepare_run

    def tempered_cnn(**options: object) -> nn.Module:
        model = SmallCNN(**options)  # type: ignore[arg-type]
        model.__class__ = type("TemperedCNN", (SmallCNN,), {
            "forward": lambda self, x: SmallCNN.forward(self, x) * 100})
        return model

    monkeypatch.setattr(registry, "_installed_builder",
                        lambda name: tempered_cnn if name == "tempered_cnn" else None)
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw["device"] = "cpu"
    raw["architecture"]["name"] = "tempered_cnn"
    with pytest.raises(ConfigError, match=r"exactly zero for \d+ of the 32 test examples.*"
                       "defensively distilled") as refused:
        prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_info["path"])
    assert refused.value.field == "architecture"


def test_token_ids_cast_from_the_input_are_named_as_the_cause() -> None:
    """``x.long()`` before an embedding runs, but the input has no gradient: before, the
    refusal blamed a .detach() or no_grad block."""
    with pytest.raises(ConfigError) as refused:
        _check(TokenClassifier(cast=True))
    assert "looks its input up in an embedding table ('tokens')" in refused.value.message


def test_an_embedding_read_by_position_is_not_taken_for_token_ids() -> None:
    torch.manual_seed(0)
    assert _check(BilinearEmbeddingNet()) == []


def test_a_forward_writing_into_its_input_is_refused() -> None:
    class Subtracts(Net):
        def forward(self, x: Tensor) -> Tensor:
            x -= 0.5
            return super().forward(x)

    with pytest.raises(ConfigError, match="changes its input tensor in place"):
        _check(Subtracts())


def test_pipeline_refuses_a_softmax_model_before_any_stage(
        digits_checkpoint_info: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rift.models.small_cnn import SmallCNN
    from rift.pipeline import prepare_run

    def softmax_cnn(**options: object) -> nn.Module:
        model = SmallCNN(**options)  # type: ignore[arg-type]
        model.__class__ = type("SoftmaxCNN", (SmallCNN,), {
            "forward": lambda self, x: SmallCNN.forward(self, x).softmax(1)})
        return model

    monkeypatch.setattr(registry, "_installed_builder",
                        lambda name: softmax_cnn if name == "softmax_cnn" else None)
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw["device"] = "cpu"
    assert prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_info["path"])
    raw["architecture"]["name"] = "softmax_cnn"
    with pytest.raises(ConfigError, match="returns probabilities"):
        prepare_run(RiftConfig.model_validate(raw), digits_checkpoint_info["path"])


def test_pipeline_warns_of_outputs_in_the_unit_range_at_the_preflight(
        digits_checkpoint_info: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sigmoid written out by hand on the digits model: the run goes on (the values cannot
    tell it from small logits) with one ``warning`` event naming the fix, before the
    preflight's figures."""
    from rift.models.small_cnn import SmallCNN
    from rift.pipeline import PipelineCallbacks, prepare_run, run_preflight_stage

    def hand_sigmoid_cnn(**options: object) -> nn.Module:
        model = SmallCNN(**options)  # type: ignore[arg-type]
        model.__class__ = type("HandSigmoidCNN", (SmallCNN,), {
            "forward": lambda self, x: 1 / (1 + torch.exp(-SmallCNN.forward(self, x)))})
        return model

    monkeypatch.setattr(registry, "_installed_builder",
                        lambda name: hand_sigmoid_cnn if name == "hand_sigmoid_cnn" else None)
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw.update(device="cpu", preflight={"examples": 64})
    events: list[tuple[str, dict]] = []
    callbacks = PipelineCallbacks(on_event=lambda kind, payload: events.append((kind, payload)))
    run_preflight_stage(prepare_run(RiftConfig.model_validate(raw),
                                    digits_checkpoint_info["path"]), callbacks)
    assert not any("lies in [0, 1]" in payload.get("message", "") for _, payload in events)
    raw["architecture"]["name"] = "hand_sigmoid_cnn"
    events.clear()
    run_preflight_stage(prepare_run(RiftConfig.model_validate(raw),
                                    digits_checkpoint_info["path"]), callbacks)
    warned = [payload for kind, payload in events
              if kind == "warning" and "lies in [0, 1]" in payload["message"]]
    assert len(warned) == 1 and warned[0]["stage"] == "run"
    assert [kind for kind, _ in events].index("preflight") > events.index(("warning", warned[0]))


def _mrc(model: nn.Module, engine: str, warnings: list[str], module_batch: int = 1
         ) -> dict[str, float]:
    torch.manual_seed(1)
    images, labels = torch.rand(32, 3, 8, 8), torch.randint(0, 4, (32,))
    spec = MRCSpec(steps=3, batch_size=16, num_examples=32, engine=engine,
                   module_batch=module_batch)
    report = module_robust_criticality(model.eval(), images, labels, spec,
                                       on_warning=warnings.append)
    assert report.engine == engine
    return {row.name: row.mrc for row in report.modules}


@pytest.mark.parametrize("module_batch", [1, 2])
def test_cached_engine_falls_back_where_an_in_place_operation_breaks_its_split(
        module_batch: int) -> None:
    """Before: conv2's and conv3's rows were computed on a wrong cache (the dropped relu_, the
    += adding into it on every pass) without a word."""
    torch.manual_seed(0)
    model, warnings = InPlaceActivations(), []
    cached = _mrc(model, "cached", warnings, module_batch)
    full = _mrc(model, "full", [])
    assert cached == pytest.approx(full, rel=1e-4, abs=1e-6)
    # Once (with module_batch 2, vmap then also refuses the in-place add: a second warning).
    assert sum("in-place operation" in warning for warning in warnings) == 1


def test_cached_engine_keeps_splits_of_torchvision_style_in_place_relu() -> None:
    torch.manual_seed(0)
    model, warnings = ReLUInPlaceNet(), []
    cached = _mrc(model, "cached", warnings)
    assert cached == pytest.approx(_mrc(model, "full", []), rel=1e-4, abs=1e-6)
    assert warnings == []


def test_cli_refuses_dropout_left_on_in_one_line(
        plugin_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An installed architecture calling F.dropout(x, p) in forward, through `python -m rift
    run`: exit 2, one line naming the setting to change, no stage output. Before: the whole run
    finished on random outputs."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8),
             y=np.arange(48) % 4)
    (tmp_path / "job.json").write_text(json.dumps({
        "architecture": {"name": "dropout_left_on_net", "num_classes": 4},
        "dataset": {"name": "npz", "path": str(tmp_path / "d.npz")}, "device": "cpu"}))
    torch.manual_seed(0)
    checkpoints.save_safetensors(tmp_path / "ck.safetensors", DropoutLeftOn().state_dict())
    code = main(["run", "--checkpoint", str(tmp_path / "ck.safetensors"), "--config",
                 str(tmp_path / "job.json"), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert "error (invalid_config)" in error and "training=self.training" in error
    assert not (tmp_path / "out" / "mrc.json").exists()


class CountsCalls(nn.Module):
    """Deterministic per call, but forward moves a buffer it reads (also in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.head(x.mean((2, 3))) * self.calls


def test_a_forward_updating_a_buffer_it_reads_in_eval_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="updates a buffer it reads"):
        _check(CountsCalls())


def test_a_scored_module_with_all_zero_weights_is_warned_before_any_stage(
        digits_checkpoint_info: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zero-initialised side branch leaves the input gradient intact (the output check passes),
    and its relative ball is {0}: MRC scores it exactly 0 and would choose it by definition."""
    from safetensors.torch import load_file

    from rift.models.small_cnn import SmallCNN
    from rift.pipeline import prepare_run

    class SideBranchCNN(SmallCNN):
        def __init__(self, **options: object) -> None:
            super().__init__(**options)  # type: ignore[arg-type]
            self.side = nn.Linear(64, self.fc.out_features)  # digits: 1×8×8 inputs

        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) + self.side(x.flatten(1))

    monkeypatch.setattr(registry, "_installed_builder",
                        lambda name: SideBranchCNN if name == "side_branch_cnn" else None)
    raw = copy.deepcopy(DIGITS_DEMO_CONFIG)
    raw["device"] = "cpu"
    assert not [w for w in prepare_run(RiftConfig.model_validate(raw),
                                       digits_checkpoint_info["path"]).model_warnings
                if "all zero" in w]
    model = SideBranchCNN(num_classes=10, in_channels=1)
    model.load_state_dict(load_file(str(digits_checkpoint_info["path"])), strict=False)
    nn.init.zeros_(model.side.weight)
    path = tmp_path / "side_branch.pt"
    torch.save(model.state_dict(), path)
    raw["architecture"]["name"] = "side_branch_cnn"
    warned = [w for w in prepare_run(RiftConfig.model_validate(raw), path).model_warnings
              if "all zero" in w]
    assert len(warned) == 1 and warned[0].startswith("module(s) side hold weights"), warned
    assert "finetune.module" in warned[0] and "mrc.exclude" in warned[0]
    raw["finetune"] = {**raw.get("finetune", {}), "module": "fc"}  # no choice is made
    assert not [w for w in prepare_run(RiftConfig.model_validate(raw), path).model_warnings
                if "all zero" in w]


class KeepsStatistics(Net):
    """Counts its calls and keeps a running mean of its features in eval mode too, neither
    read by forward: its outputs repeat, so only its state dict shows the writes."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("feature_mean", torch.zeros(8))

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            self.calls += 1
            self.feature_mean.mul_(0.9).add_(0.1 * F.relu(self.conv(x)).mean((0, 2, 3)))
        return super().forward(x)


def test_a_forward_writing_its_state_dict_in_eval_mode_is_refused_naming_the_entries() -> None:
    """Before, such a model ran to the end, and its weights saved at α = 0 ("returned
    unchanged") held other counter and mean values than its checkpoint."""
    with pytest.raises(ConfigError, match=r"changes its own state dict in forward in eval "
                                          r"mode: calls, feature_mean") as refused:
        _check(KeepsStatistics())
    assert refused.value.field == "architecture"


def test_a_buffer_written_in_training_only_or_kept_out_of_the_state_dict_passes() -> None:
    class TrainingOnly(Net):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))
            self.register_buffer("scratch", torch.zeros(()), persistent=False)
            # NaN as a "not yet seen" marker, left alone in eval mode: unchanged (NaN != NaN).
            self.register_buffer("first_seen", torch.full((2,), float("nan")))

        def forward(self, x: Tensor) -> Tensor:
            self.scratch += 1  # outside the state dict, never read
            if self.training:
                self.calls += 1
            return super().forward(x)

    assert _check(TrainingOnly()) == []


def test_outputs_with_nan_are_refused_as_such_not_as_dropout_left_on() -> None:
    """The log of a zero pixel gives NaN logits. Before: "dropout or noise stays active in eval
    mode" (NaN differs from itself when two passes are compared)."""
    class LogOfPixels(Net):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(torch.log(x - x.amin()))  # the darkest pixel: log(0)

    with pytest.raises(ConfigError, match=r"returns NaN or \+inf in eval mode for \d+ of the "
                                          r"first 32 test examples.*log") as refused:
        _check(LogOfPixels())
    assert "dropout" not in refused.value.message


def test_minus_infinity_for_a_masked_class_passes() -> None:
    assert _check(Net(lambda _, z: z.masked_fill(torch.arange(4) == 3, float("-inf")))) == []
