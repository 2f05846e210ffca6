"""The whole RiFT run: MRC → fine-tune the least critical module → interpolate (docs/algorithm.md).

Each stage is a function that takes the previous stage's output explicitly, so a worker can run
one stage per task and resume after a crash from what was saved. ``run_pipeline`` chains the three
stages for the CLI and saves each stage's output in a folder, skipping stages already saved there.
With ``finetune.candidates`` > 1 or a ``finetune.lr_grid``, the fine-tune and interpolation run once
per candidate and the α rule picks across them (``rift.sweep``); each candidate's outputs are saved
as it finishes, so a sweep resumed in the same folder runs only the candidates not yet done.
A fine-tune that diverges after its first epoch keeps its best finite epoch and says so in a
``warning`` event (``rift.finetune.Divergence``); a sweep candidate that diverges in its first
epoch is excluded from the pick.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rift import __version__ as rift_version
from rift import checkpoints, stage_outputs
from rift.architecture_hint import feature_vectors_hint, with_architecture_hint
from rift.attack_radius import check_attack_radius
from rift.attacks import PGD
from rift.batch_backoff import out_of_memory_names, with_batch_backoff
from rift.batchnorm_folding import FOLD_CHECK_EXAMPLES, BatchNormFolding, folds_on
from rift.cancellation import ShouldCancel, raise_if_cancelled
from rift.channels_last import check_accepts_channels_last, to_channels_last
from rift.checkpoint_layouts import check_normalizers, fit_layout
from rift.checkpoints import CheckpointSource
from rift.config import RiftConfig, as_config
from rift.data import DatasetSplits, ImageTensors, iterate_batches, load_dataset
from rift.dataset_formats import imagefolder_channels_hint, sparse_labels_hint
from rift.device import deterministic_kernels, resolve_device
from rift.errors import (
    CheckpointMismatchError,
    ConfigError,
    FinetuneDiverged,
    ModuleWithoutEffect,
    RiftError,
)
from rift.evaluation import (
    AccuracyReport,
    RandomStarts,
    evaluate_accuracy,
    evaluated_examples,
    seeded_generator,
)
from rift.finetune import EpochMetrics, finetune_module, tied_elsewhere, trainable_module
from rift.finetune_resume import (
    EpochStateStore,
    FinetuneResume,
    device_settings,
    finetune_inputs_digest,
)
from rift.interpolation import (
    LazySelection,
    alpha_grid,
    interpolate_weights,
    measure_full_curve,
    select_alpha_lazily,
)
from rift.manifest import build_manifest
from rift.measured_warnings import mrc_table_warnings, not_robust_warning
from rift.model_checks import check_model_outputs, zero_weight_modules_warning
from rift.models import build_model, check_model_accepts
from rift.models.normalization import applied_normalization
from rift.models.normalization_applied import refuse_ignored_normalization
from rift.models.parametrized import (
    fold_parametrized_weights,
    folding_warning,
    holds_folded_weights,
)
from rift.mrc import (
    ModuleCriticality,
    lowest_rows,
    make_adversarial_set,
    module_robust_criticality,
    mrc_inputs_digest,
    row_from_dict,
    select_modules,
    update_digest,
)
from rift.preflight import (
    PreflightReport,
    collapsed_predictions,
    normalization_warning,
    preflight_check,
    unjudged_warning,
)
from rift.rate_text import rate_text
from rift.robust_tally import RobustTally, percent
from rift.run_warnings import RunWarning, configuration_warnings
from rift.scored_weights import PRUNED, unscored_kinds
from rift.sequential_attack import (
    Attacked,
    attack_until,
    clean_outcomes,
    example_flops,
    likely_failures_first,
    stop_chunk,
)
from rift.stage_outputs import (
    CANDIDATE_JSON,
    CURVES_JSON,
    FINETUNE_JSON,
    FINETUNED,
    MRC_CSV,
    MRC_JSON,
    RESULT_JSON,
    TUNED,
    FolderStorage,
    PrefixedStorage,
    RunIdentity,
    StageStorage,
    StoredEpochState,
    candidate_prefix,
)
from rift.sweep import (
    Candidate,
    CandidateOutcome,
    ExcludedCandidate,
    curves_document,
    fewer_modules_than_asked,
    is_sweep,
    outcome_from_json,
    sweep_candidates,
)

logger = logging.getLogger(__name__)

STAGES = ("mrc", "finetune", "interpolate")
# Datasets up to this size are moved to the accelerator once (uint8 CIFAR-10 is 180 MB, Tiny-ImageNet
# 1.2 GB), so batches are sliced and augmented there instead of copied from host memory every step.
DEVICE_RESIDENT_MAX_BYTES = 4 * 1024**3
StateDict = dict[str, torch.Tensor]


@dataclass
class PipelineCallbacks:
    """How a run reports back. All optional; exceptions raised by callbacks propagate."""

    on_progress: Callable[[str, float, str], None] | None = None  # (stage, fraction, message)
    on_event: Callable[[str, dict[str, Any]], None] | None = None  # (kind, JSON payload)
    should_cancel: ShouldCancel | None = None  # polled at every batch and attack step
    # (event kind, inputs digest) -> the payloads of that kind an earlier attempt of the stage
    # stored under that digest: MRC rows (``module_scored``: ``score_modules``) and α points
    # (``alpha_evaluated``: ``_measure_curve``) not computed again.
    stored_events: Callable[[str, str], Sequence[Mapping[str, Any]]] | None = None
    # Where fine-tuning keeps its state at the end of each epoch, for another attempt of the
    # stage (or candidate) to continue from (``rift.finetune_resume``; a worker's is an object
    # under the job's prefix). Not a function: an object with ``load()`` and ``save(data)``.
    epoch_state: EpochStateStore | None = None

    def __post_init__(self) -> None:
        # A threading.Event given as should_cancel (not its is_set) failed at the first poll,
        # deep in the run, with "'Event' object is not callable".
        for name, what in (("on_progress", "(stage, fraction, message)"),
                           ("on_event", "(kind, payload)"),
                           ("should_cancel", "() returning True to stop, e.g. event.is_set"),
                           ("stored_events", "(kind, inputs digest) returning stored payloads")):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"PipelineCallbacks.{name} must be a function {what}, not a "
                                f"{type(value).__name__}")
        store = self.epoch_state
        if store is not None and not all(callable(getattr(store, method, None))
                                         for method in ("load", "save")):
            raise TypeError(f"PipelineCallbacks.epoch_state must have load() and save(data) "
                            f"methods, not be a {type(store).__name__}")

    @staticmethod
    def of(callbacks: PipelineCallbacks | None) -> PipelineCallbacks:
        """``callbacks``, or none at all for None.

        Raises:
            TypeError: something else, such as a dict of functions or one function (it failed
                later with "'dict' object has no attribute 'progress'").
        """
        if callbacks is None:
            return PipelineCallbacks()
        if not isinstance(callbacks, PipelineCallbacks):
            raise TypeError(
                f"callbacks must be a PipelineCallbacks(on_progress=..., on_event=..., "
                f"should_cancel=...), not a {type(callbacks).__name__}")
        return callbacks

    def progress(self, stage: str, fraction: float, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, min(max(fraction, 0.0), 1.0), message)

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, payload)

    def check_cancel(self) -> None:
        """Stop here if the run was cancelled (see :func:`rift.cancellation.raise_if_cancelled`)."""
        raise_if_cancelled(self.should_cancel)

    def tagged(self, **fields: Any) -> PipelineCallbacks:
        """These callbacks, with ``fields`` added to every event's payload (a sweep candidate's
        index: the candidates of a service sweep run side by side, and their epochs, points and
        warnings could not be told apart in the job's events)."""
        on_event = self.on_event
        if on_event is None:
            return self

        def tag(kind: str, payload: dict[str, Any]) -> None:
            on_event(kind, {**payload, **fields})

        return replace(self, on_event=tag)


@dataclass
class PreparedRun:
    """Everything the stages share: built model holding θ_AT, data, device, attack."""

    config: RiftConfig
    device: torch.device
    splits: DatasetSplits
    model: nn.Module
    original_state: StateDict
    attack: PGD
    # What the model checks found likely but not certain (rift.model_checks), emitted as
    # ``warning`` events with the run's configuration warnings.
    model_warnings: list[str] = field(default_factory=list)
    #: SHA-256 of θ_AT's checkpoint file when the caller knows it (the worker: the upload's; the
    #: CLI: its run identity's), written into every weights file's header (weights_metadata).
    checkpoint_sha256: str | None = None

    def reset_weights(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load ``state`` (default θ_AT) into the model, in place."""
        checkpoints.load_into(self.model, state if state is not None else self.original_state)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """On the way out of a stage, finished or not (a callback that raised, a cancellation):
        the model holds θ_AT again, in eval mode, with no gradients. Before, a fine-tuning cut
        short left its half-trained weights and every parameter's ``.grad`` in ``run.model``."""
        try:
            yield
        finally:
            self.reset_weights()
            self.model.eval()
            for parameter in self.model.parameters():
                parameter.grad = None


def prepare_run(config: RiftConfig | Mapping[str, Any], checkpoint: CheckpointSource
                ) -> PreparedRun:
    """Build the model, load and check the checkpoint, load the data, pick the device.

    ``config`` may be a dict of settings (validated as ``RiftConfig.model_validate``);
    ``checkpoint`` a file or weights in memory (:func:`rift.checkpoints.checkpoint_weights`).
    The caller's random state is left as it was: the model is built under ``config.seed`` on
    a forked generator (reseeding the global one changed what a notebook drew after the run).
    """
    config = as_config(config)
    checkpoint = _user_path(checkpoint)
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        return _prepare_run(config, checkpoint, device)


def _user_path(value: CheckpointSource) -> CheckpointSource:
    """A path as a notebook writes it, ``~`` expanded: ``output_dir="~/runs/a"`` made a folder
    named ``~`` in the working directory (a shell expands it on the command line)."""
    return Path(value).expanduser() if isinstance(value, str | os.PathLike) else value


def _prepare_run(config: RiftConfig, checkpoint: CheckpointSource, device: torch.device
                 ) -> PreparedRun:
    # The checkpoint first: a wrong path was told only after the dataset had loaded.
    state = checkpoints.checkpoint_weights(checkpoint, entry=config.checkpoint_entry)
    splits = load_dataset(config.dataset, config.seed)
    if device.type != "cpu" and splits.nbytes <= DEVICE_RESIDENT_MAX_BYTES:
        splits = splits.to(device)
    if splits.num_classes > config.architecture.num_classes:
        raise ConfigError(
            f"the dataset has {splits.num_classes} classes but architecture.num_classes is "
            f"{config.architecture.num_classes}{_sparse_labels_hint(splits)}",
            field="architecture.num_classes")
    channels, height, width = splits.image_shape
    model = build_model(config.architecture, in_channels=channels, image_size=height,
                        checkpoint_keys=state, image_width=width)
    # Parametrized weights (weight_norm, spectral_norm...) become plain ones (see
    # rift.models.parametrized): before loading when the checkpoint already holds them plain.
    folded_first = holds_folded_weights(model, state)
    folded = fold_parametrized_weights(model) if folded_first else []
    # A training wrapper's layout (robustness's AttackerModel, a Lightning module, a normaliser
    # in front of the network): the network's weights, its normaliser checked against
    # architecture.mean/std (rift.checkpoint_layouts).
    layout = fit_layout(model.state_dict(), state, channels=channels)
    if layout is not None:
        spec = config.architecture
        # What the model applies: a torchvision model's ImageNet default when mean/std are
        # unset; the configuration where an installed builder keeps no such buffers.
        mean, std = applied_normalization(model) or (spec.mean, spec.std)
        check_normalizers(layout, mean, std, configured=spec.mean is not None)
        state = layout.state_dict
    try:
        checkpoints.check_compatible(model, state)
    except CheckpointMismatchError as exc:
        if config.dataset.name == "imagefolder" and config.dataset.channels == "auto":
            # The usual cause with a grey tree: a checkpoint trained on RGB copies of it.
            hint = imagefolder_channels_hint(channels, 3 if channels == 1 else 1,
                                             "dataset.channels")
        elif splits.feature_vectors:
            hint = feature_vectors_hint(exc, channels, "architecture.name")
        else:
            hint = _input_channels_hint(exc, channels)
        if not hint:
            shapes = {key: tuple(value.shape) for key, value in state.items()}
            hinted = with_architecture_hint(exc, config.architecture, shapes, [channels], height)
            if hinted is exc:
                raise
            raise hinted from exc
        raise CheckpointMismatchError(exc.message + hint, exc.missing, exc.unexpected,
                                      exc.mismatched) from exc
    checkpoints.load_into(model, state)
    if not folded_first:
        folded = fold_parametrized_weights(model)
    model.to(device)
    if config.channels_last:
        to_channels_last(model)
        check_accepts_channels_last(model, config.architecture, splits.image_shape,
                                    device=device)
    else:
        check_model_accepts(model, config.architecture, splits.image_shape, device=device)
    # An installed builder given architecture.mean/std that drops them (they are its keyword
    # arguments): the run would record a normalisation it never applied.
    refuse_ignored_normalization(model, config.architecture, splits.image_shape)
    scored = select_modules(model, config.mrc)  # a model with no scored layer, a selection of none
    if config.finetune.module is not None:
        # Before any stage: a name that is no module of the model (a typo, "fc " for "fc")
        # failed only after the MRC stage, as an AttributeError of torch's get_submodule.
        trainable_module(model, config.finetune.module)
    original = {key: value.detach().to("cpu", copy=True) for key, value in
                model.state_dict().items()}
    attack = PGD.from_spec(config.attack, feature_vectors=splits.feature_vectors)
    for name in ("train", "validation", "test"):
        attack.check_inputs(getattr(splits, name).images, f"{name} inputs")
    # After the domain fits the data: a domain narrower than the data is the first thing to fix.
    check_attack_radius(config.attack, feature_vectors=splits.feature_vectors,
                        input_shape=splits.image_shape)
    # On real weights and data (the validator's fit check sees neither): probabilities instead
    # of logits, dropout left on, no input gradient.
    model_warnings = check_model_outputs(model, splits.test, attack, device=device,
                                         name=config.architecture.name)
    zero_weights = (zero_weight_modules_warning(model, scored)
                    if config.finetune.module is None else None)
    if zero_weights is not None:
        model_warnings.append(zero_weights)
    if folded:
        model_warnings.append(folding_warning(folded))
    if layout is not None:
        model_warnings.append(f"the checkpoint is not a plain state dict of the network: "
                              f"{layout.note()}")
    return PreparedRun(config, device, splits, model.eval(), original, attack, model_warnings)


def _input_channels_hint(exc: CheckpointMismatchError, channels: int) -> str:
    """For a mismatch whose only difference in a convolution's weight is its input channels,
    the model's being the data's (the first layer, built for the data): say that the checkpoint
    was trained on images of another channel count, which RiFT does not convert."""
    for key, saved, built in exc.mismatched:
        if (len(saved) >= 3 and len(saved) == len(built) and saved[0] == built[0]
                and saved[2:] == built[2:] and built[1] == channels != saved[1]):
            return (f"; {key} takes {saved[1]}-channel inputs in the checkpoint, and the data's "
                    f"images have {channels} channel(s): the checkpoint was trained on other "
                    f"images; RiFT does not convert channels, give the data with {saved[1]} "
                    "(e.g. an npz x repeated along its channel axis)")
    return ""


def _sparse_labels_hint(splits: DatasetSplits) -> str:
    """For labels that skip numbers: see :func:`rift.dataset_formats.sparse_labels_hint`."""
    used = torch.cat([part.labels for part in (splits.train, splits.validation, splits.test)]
                     ).unique()  # sorted
    labels = [int(label) for label in used]
    return sparse_labels_hint(distinct=len(labels), num_classes=splits.num_classes,
                              smallest=labels[0], largest=labels[-1], labels=labels)


# --------------------------------------------------------------------------- preflight


def run_preflight_stage(run: PreparedRun, callbacks: PipelineCallbacks | None = None
                        ) -> PreflightReport | None:
    """First thing in a run: a ``warning`` event for each risky setting
    (:func:`rift.run_warnings.configuration_warnings`: decisions on too few examples, bf16 on
    the CPU, learning-rate milestones that never act), then θ_AT's clean and robust accuracy on
    a sample of the test split; raises PreflightError when clean accuracy is near chance (on at
    least ``rift.preflight.MIN_JUDGED_EXAMPLES`` examples; a smaller sample is reported with a
    warning, not judged). None when the accuracy check is disabled (``preflight.examples = 0``;
    the warnings still come). Emits a ``preflight`` event with the figures."""
    callbacks = PipelineCallbacks.of(callbacks)
    config = run.config
    for warning in configuration_warnings(config, run.splits, run.device):
        callbacks.event("warning", warning.as_payload())
    for message in run.model_warnings:
        callbacks.event("warning", {"stage": "run", "message": message})
    if config.preflight.examples == 0:
        return None
    run.reset_weights()
    callbacks.progress("preflight", 0.0, "checking the checkpoint on the job's data")
    with deterministic_kernels(config.deterministic), out_of_memory_names(
            "preflight", "evaluation.batch_size", config.evaluation.batch_size):
        report = preflight_check(
            run.model, run.splits.test, run.attack, config.preflight,
            num_classes=config.architecture.num_classes,
            batch_size=config.evaluation.batch_size, device=run.device, seed=config.seed,
            precision=config.precision, normalization_given=config.architecture.mean is not None,
            mean=config.architecture.mean, std=config.architecture.std,
            should_cancel=callbacks.should_cancel)
        collapsed = collapsed_predictions(
            run.model, run.splits.test, config.preflight,
            batch_size=config.evaluation.batch_size, device=run.device, seed=config.seed,
            precision=config.precision)
        normalization = normalization_warning(
            run.model, run.splits.test, config.preflight, mean=config.architecture.mean,
            std=config.architecture.std, clean_accuracy=report.clean_accuracy,
            batch_size=config.evaluation.batch_size, device=run.device, seed=config.seed,
            precision=config.precision)
    unjudged = unjudged_warning(report.examples)
    for finding in (unjudged, collapsed, normalization):
        if finding is not None:
            callbacks.event("warning", {"stage": "preflight", "message": finding})
    not_robust = not_robust_warning(config, report.robust_accuracy,
                                    f"the preflight's {report.examples} test examples",
                                    "preflight")
    if not_robust is not None:
        callbacks.event("warning", not_robust.as_payload())
    callbacks.event("preflight", report.as_dict())
    callbacks.progress("preflight", 1.0, f"clean {report.clean_accuracy:.1f}%")
    return report


# --------------------------------------------------------------------------- step 1: MRC


@dataclass
class MRCStageResult:
    rows: list[dict[str, Any]]
    baseline_robust_loss: float
    baseline_robust_accuracy: float
    selected_module: str
    engine: str
    examples: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MRCStageResult:
        return cls(**dict(data))

    @classmethod
    def merge(cls, parts: list[MRCStageResult], module_order: list[str]) -> MRCStageResult:
        """One table from parts computed for disjoint module subsets on the same adversarial set."""
        if not parts:
            raise ConfigError("nothing to merge", field="mrc")
        order = {name: i for i, name in enumerate(module_order)}
        rows = sorted((row for part in parts for row in part.rows),
                      key=lambda row: order.get(row["name"], len(order)))
        return cls(rows, parts[0].baseline_robust_loss, parts[0].baseline_robust_accuracy,
                   _lowest(rows), parts[0].engine, parts[0].examples,
                   sum(part.seconds for part in parts))


def module_to_tune(config: RiftConfig, mrc: MRCStageResult) -> str:
    """The module a single (non-sweep) run fine-tunes: the one ``finetune.module`` names, else
    the least critical (docs/algorithm.md). ``mrc.csv`` flags it, in the CLI's folder and in a
    job's stored table alike (before, the CLI flagged the least critical one also when another
    was named and tuned)."""
    return config.finetune.module or mrc.selected_module


def _lowest(rows: list[dict[str, Any]]) -> str:
    """The selection rule of ``MRCReport.lowest`` on table rows (docs/algorithm.md, "Selection")."""
    return str(rows[lowest_rows(rows, 1)[0]]["name"])


#: The warning of an evaluation whose batch shrank after running out of memory.
EVALUATION_BACKOFF = ("out of memory at evaluation.batch_size {failed}; continuing with "
                      "{smaller}")


def _backoff_warning(callbacks: PipelineCallbacks, stage: str, message: str
                     ) -> Callable[[int, int], None]:
    """An ``on_backoff(failed, smaller)`` that emits a ``warning`` event of ``stage``:
    ``message`` with ``{failed}`` and ``{smaller}`` filled in."""
    def warn(failed: int, smaller: int) -> None:
        callbacks.event("warning", {"stage": stage,
                                    "message": message.format(failed=failed, smaller=smaller)})
    return warn


def _subset(data: ImageTensors, count: int, seed: int) -> ImageTensors:
    """A seeded random subset of ``count`` examples (all of them when fewer)."""
    if count >= len(data):
        return data
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=generator)[:count]
    return ImageTensors(data.images[index], data.labels[index])


def _as_device_tensors(data: ImageTensors, device: torch.device) -> tuple[torch.Tensor, ...]:
    images, labels = next(iterate_batches(data, len(data), device=device))
    return images, labels


@dataclass
class MRCInputs:
    """The fixed adversarial set MRC scores every module on (made once on θ_AT), on the device."""

    adversarial: torch.Tensor
    labels: torch.Tensor


def make_mrc_inputs(run: PreparedRun, callbacks: PipelineCallbacks | None = None) -> MRCInputs:
    """Draw ``mrc.num_examples`` training examples (seeded) and attack them once on θ_AT."""
    callbacks = PipelineCallbacks.of(callbacks)
    config, spec = run.config, run.config.mrc
    with deterministic_kernels(config.deterministic), out_of_memory_names(
            "mrc", "mrc.batch_size", spec.batch_size):
        run.reset_weights()
        callbacks.progress("mrc", 0.0, "making the adversarial set")
        source = run.splits.test if spec.split == "test" else run.splits.train
        examples = _subset(source, spec.num_examples, config.seed)
        images, labels = _as_device_tensors(examples, run.device)

        def attack_all(batch_size: int) -> torch.Tensor:
            # A fresh generator per try: the random starts are drawn up front, so a smaller
            # batch after out-of-memory makes the same set (up to float rounding).
            return make_adversarial_set(
                run.model, images, labels, run.attack, batch_size=batch_size,
                generator=seeded_generator(run.device, config.seed), precision=config.precision,
                should_cancel=callbacks.should_cancel)

        warn = _backoff_warning(callbacks, "mrc", "out of memory making the adversarial set at "
                                "mrc.batch_size {failed}; continuing with {smaller}")
        adversarial = with_batch_backoff(attack_all, spec.batch_size, on_backoff=warn)
    callbacks.check_cancel()
    return MRCInputs(adversarial, labels)


def score_modules(run: PreparedRun, inputs: MRCInputs, modules: list[str] | None = None,
                  callbacks: PipelineCallbacks | None = None, *,
                  table_warnings: bool = True) -> MRCStageResult:
    """Score modules (all selected by the config, or exactly ``modules``) on ``inputs``; one shard
    of a sharded MRC stage, or the whole stage. ``seconds`` excludes making the inputs.
    ``table_warnings`` False: no ``warning`` event about the table as a whole (settings not
    used, parameters no row covers, no fx trace), which every shard would give alike: a
    sharded stage's job had each one once per shard; one shard gives them."""
    callbacks = PipelineCallbacks.of(callbacks)
    config, started = run.config, time.perf_counter()
    _check_module_list(modules)
    spec = config.mrc if modules is None else config.mrc.model_copy(update={"modules": modules})
    run.reset_weights()
    # Each row carries the digest of what it was computed from, so that another attempt of the
    # stage (a worker stopped or lost midway) can take it instead of computing it again.
    digest = mrc_inputs_digest(inputs.adversarial, inputs.labels, spec, seed=config.seed,
                               precision=config.precision)
    done: dict[str, ModuleCriticality] = {}
    if callbacks.stored_events is not None and spec.table == "full":
        for payload in callbacks.stored_events("module_scored", digest):
            stored = row_from_dict(payload)
            if stored is not None:
                done[stored.name] = stored

    # Where each row goes in the job's table (the order MRCStageResult.merge sorts a sharded
    # table by), and for a one-task stage the table's size: what lets a reader of the events
    # (GET /v1/jobs/{id}/mrc while the stage runs) show the rows scored so far in table order.
    # A shard knows its own modules only; the job's shard records give the whole count.
    order = {name: i for i, name in enumerate(select_modules(run.model, config.mrc))}

    def on_module(row: ModuleCriticality, index: int, total: int) -> None:
        table = {} if modules is not None else {"modules_total": total}
        callbacks.event("module_scored", {**row.as_dict(), "inputs": digest,
                                          "order": order.get(row.name), **table})
        callbacks.progress("mrc", (index + 1) / total, f"scored {row.name}")

    on_backoff = _backoff_warning(callbacks, "mrc", (
        f"out of memory in the MRC ascent at {{failed}} examples per part of a batch; continuing "
        f"with {{smaller}} (the same steps of mrc.batch_size {spec.batch_size}, gradients summed "
        "over the parts)"))

    with deterministic_kernels(config.deterministic), out_of_memory_names(
            "mrc", "mrc.batch_size", spec.batch_size):
        report = module_robust_criticality(
            run.model, inputs.adversarial, inputs.labels, spec, precision=config.precision,
            on_module=on_module, should_cancel=callbacks.should_cancel, seed=config.seed,
            on_backoff=on_backoff,
            on_warning=lambda message: callbacks.event("warning", {"stage": "mrc",
                                                                   "message": message}),
            candidates=config.finetune.candidates,
            keep_exact=[config.finetune.module] if config.finetune.module is not None else [],
            done=done, warn_settings=table_warnings)
    if report.reused:
        callbacks.event("mrc_resumed", {"modules": report.reused, "inputs": digest,
                                        "scored": len(report.modules) - len(report.reused)})
    if report.unreachable:
        warn_unreachable(callbacks, report.unreachable)
    if report.zero_gradient:
        warn_zero_gradient(callbacks, report.zero_gradient)
    if report.unscored and table_warnings:
        kinds = unscored_kinds(run.model, report.unscored)
        callbacks.event("warning", {"stage": "mrc", "message": (
            f"{len(report.unscored)} parameter(s) are outside the MRC table, so they are never "
            "scored nor chosen for fine-tuning (MRC scores the weights of convolution, linear "
            "and attention-projection layers, as the paper does; biases and normalisation "
            "parameters are left out by design): " + "; ".join(
                f"{_UNSCORED_WHY.get(kind, f'parameters of {kind} layers')}: {_names(names)}"
                for kind, names in kinds.items()))})
    if report.engine == "full" and spec.engine == "auto" and table_warnings:
        callbacks.event("warning", {"stage": "mrc", "message": (
            "the model could not be traced with torch.fx, so MRC ran full forward passes "
            "(same values, slower)")})
    rows = [row.as_dict() for row in report.modules]
    return MRCStageResult(rows, report.baseline_robust_loss, report.baseline_robust_accuracy,
                          report.lowest().name, report.engine, len(inputs.labels),
                          time.perf_counter() - started)


def warn_unreachable(callbacks: PipelineCallbacks, names: list[str]) -> None:
    """The ``warning`` event naming selected modules left out of the MRC table because the
    output does not depend on them (by the stage, or by the planning of its shards)."""
    callbacks.event("warning", {"stage": "mrc", "message": (
        f"not scored: {_names(names)}: the model's output in eval mode gets no gradient from "
        "their weights: it does not depend on them (e.g. an auxiliary head used only in "
        "training), or the path to it is cut (a .detach(), torch.no_grad(), or "
        "torch.utils.checkpoint with use_reentrant=True around a part whose input needs no "
        "gradient), so MRC cannot score them nor fine-tuning train them")})


def warn_zero_gradient(callbacks: PipelineCallbacks, names: list[str]) -> None:
    """The ``warning`` event naming the modules whose rows are flagged ``zero_gradient``
    (``rift.mrc_zero_gradient``): scored, never chosen."""
    callbacks.event("warning", {"stage": "mrc", "message": (
        f"not chosen: {_names(names)}: the loss's gradient with respect to their weights is "
        "exactly zero on every batch of the MRC set, so the model's output does not depend on "
        "them (a branch behind a zero gate, a block pruned to zero, a ReLU after it that no "
        "input activates): their MRC of 0 says nothing about robustness and fine-tuning them "
        "would change nothing. Their rows are flagged zero_gradient and the selection takes "
        "the next module; leave them out of the table with mrc.exclude")})


# Why a kind of parameter (``rift.scored_weights.unscored_kinds``) has no row, for the warning.
_UNSCORED_WHY = {"raw Parameter": "raw Parameters held by the model's own code, not a layer's "
                                  "weight (e.g. class tokens, position tables, layer scales)",
                 PRUNED: "parameters of layers pruned with torch.nn.utils.prune, whose weight "
                         "a hook makes from weight_orig × weight_mask at every call (no "
                         "Parameter to perturb or train; to score them, make the pruning "
                         "permanent with prune.remove(module, 'weight') before saving, and "
                         "fine-tuning may then move the pruned entries)"}


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_module_list(modules: list[str] | None) -> None:
    """Raises TypeError for a ``modules`` argument that is not a list of names: a single name
    was read letter by letter ("unknown module(s) ['c', 'o', 'n', 'v', '1']")."""
    if modules is not None and (isinstance(modules, str) or not all(
            isinstance(name, str) for name in modules)):
        raise TypeError(f"modules must be a list of module names, e.g. ['conv1'], not "
                        f"{modules!r}")


def _run_mrc_stage(run: PreparedRun, callbacks: PipelineCallbacks | None,
                   modules: list[str] | None) -> MRCStageResult:
    _check_module_list(modules)  # before the adversarial set is made
    started = time.perf_counter()
    inputs = make_mrc_inputs(run, callbacks)
    result = score_modules(run, inputs, modules, callbacks)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- step 2: fine-tune


@dataclass
class FinetuneStageResult:
    module: str
    epochs: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    state_dict: StateDict = field(repr=False)
    # Where training diverged (``rift.finetune.Divergence.to_json``): its epochs stop before it.
    diverged: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "epochs": self.epochs, "best_epoch": self.best_epoch,
                "seconds": self.seconds, "diverged": self.diverged}


def finetune_splits(splits: DatasetSplits, selection_split: str) -> DatasetSplits:
    """The splits fine-tuning sees. 'test' (the reference protocol): train on the training and
    validation examples together and pick the epoch on the test split."""
    if selection_split != "test":
        return splits
    everything = ImageTensors(torch.cat([splits.train.images, splits.validation.images]),
                              torch.cat([splits.train.labels, splits.validation.labels]))
    return dataclasses.replace(splits, train=everything, validation=splits.test)


def _run_finetune_stage(run: PreparedRun, module: str, callbacks: PipelineCallbacks | None
                        ) -> FinetuneStageResult:
    callbacks = PipelineCallbacks.of(callbacks)
    config, started = run.config, time.perf_counter()
    run.reset_weights()
    total = config.finetune.epochs

    def on_epoch(metrics: EpochMetrics) -> None:
        callbacks.event("epoch", metrics.as_dict())
        callbacks.progress("finetune", metrics.epoch / total,
                           f"epoch {metrics.epoch}/{total}: val {metrics.val_accuracy:.2f}%")

    callbacks.progress("finetune", 0.0, f"fine-tuning {module}")
    trainable_module(run.model, module)  # an unknown name: ConfigError, not get_submodule's
    splits = finetune_splits(run.splits, config.finetune.selection_split)
    resume: FinetuneResume | None = None
    if callbacks.epoch_state is not None:
        digest = finetune_inputs_digest_of(run, module, splits)

        def on_resumed(epochs: int) -> None:
            callbacks.event("finetune_resumed", {"module": module, "epochs": epochs,
                                                 "trained": total - epochs, "inputs": digest})
            callbacks.progress("finetune", epochs / total,
                               f"continuing from epoch {epochs}/{total} (stored)")

        resume = FinetuneResume(callbacks.epoch_state, digest, on_resumed)
    shared = tied_elsewhere(run.model, module)
    if shared:
        held = "; ".join(f"{name} is also held by {', '.join(others)}"
                         for name, others in shared.items())
        callbacks.event("warning", {"stage": "finetune", "message": (
            f"the fine-tuned module {module!r} shares parameters with other modules (tied "
            f"weights): {held}. Fine-tuning moves them there too, so θ_FT changes more than "
            f"{module!r}; the MRC row of a tied weight is under the first module holding it")})
    result = finetune_module(
        run.model, module, splits, config.finetune, device=run.device, seed=config.seed,
        precision=config.precision, eval_batch_size=config.evaluation.batch_size,
        on_epoch=on_epoch, should_cancel=callbacks.should_cancel, resume=resume)
    diverged = result.diverged
    if diverged is not None:  # the run goes on with the best finite epoch; the user is told
        callbacks.event("warning", RunWarning("finetune", (
            f"{module!r}: {diverged.message()}" if is_sweep(config) else diverged.message())
        ).as_payload())
    return FinetuneStageResult(module, [e.as_dict() for e in result.epochs], result.best_epoch,
                               time.perf_counter() - started, result.state_dict,
                               diverged.to_json() if diverged is not None else None)


def finetune_inputs_digest_of(run: PreparedRun, module: str, splits: DatasetSplits) -> str:
    """The digest a fine-tune epoch state is stored and taken under
    (:func:`rift.finetune_resume.finetune_inputs_digest`): θ_AT, the examples ``splits`` trains
    and validates on, the module, the fine-tune settings, the seed, the precision, the evaluation
    batch size, deterministic kernels, the device type and the torch version."""
    config = run.config
    return finetune_inputs_digest(run.original_state, splits, module, [
        config.finetune.model_dump(mode="json"), config.seed, config.precision,
        config.evaluation.batch_size, config.deterministic, *device_settings(run.device)])


# --------------------------------------------------------------------------- step 3: interpolate


@dataclass
class InterpolationStageResult:
    # robust_accuracy None where it was not measured in full; robust_accuracy_at_most bounds a
    # point whose attack stopped once it could no longer change the choice.
    points: list[dict[str, float | None]]
    chosen_alpha: float
    selection_split: str
    before: dict[str, float | None]
    after: dict[str, float | None]
    seconds: float
    state_dict: StateDict = field(repr=False)
    curve: str = "full"
    robust_evaluations: int = 0  # α points attacked at all (fully or stopped early)
    attacked_examples: int = 0  # examples attacked over the whole curve
    gradient_steps: int = 0  # attacked examples × PGD steps

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "state_dict"}


def _evaluation_data(run: PreparedRun, split: str) -> ImageTensors:
    return evaluated_examples(run.splits, split, run.config.evaluation.max_examples)


def _evaluation_models(run: PreparedRun, data: ImageTensors) -> Callable[[], nn.Module]:
    """What PGD evaluations of ``data`` attack: a folded copy of the model with its present
    weights (``evaluation.fold_batchnorm``, ``rift.batchnorm_folding``), or the model itself."""
    config = run.config
    if (config.evaluation.fold_batchnorm == "off" or len(data) == 0
            or not folds_on(run.device, config.precision)):
        return lambda: run.model
    probe, _ = next(iterate_batches(data.head(FOLD_CHECK_EXAMPLES), FOLD_CHECK_EXAMPLES,
                                    device=run.device))
    return BatchNormFolding(run.model, probe).current


def _evaluate(run: PreparedRun, state: Mapping[str, torch.Tensor], data: ImageTensors,
              callbacks: PipelineCallbacks, *, attacked: bool = True) -> AccuracyReport:
    """The one evaluation of weights outside the curve: the stage's ``before``/``after`` when
    α is chosen on another split, and :func:`evaluate_weights` (a materialization's). Counted
    as the curve counts them: clean on the model itself, robust attacking the folded copy (the
    folded copy's clean pass could flip a near-tie example, and a re-evaluation of the chosen
    weights then disagreed with the job's ``after``)."""
    run.reset_weights(state)
    model = _evaluation_models(run, data)() if attacked else run.model

    def evaluate(batch_size: int) -> AccuracyReport:
        return evaluate_accuracy(
            model, data, attack=run.attack if attacked else None, batch_size=batch_size,
            device=run.device, seed=run.config.seed, precision=run.config.precision,
            should_cancel=callbacks.should_cancel, clean_model=run.model)

    warn = _backoff_warning(callbacks, "interpolate", EVALUATION_BACKOFF)

    # Evaluation results do not depend on the batch size, so it may shrink to fit the device.
    return with_batch_backoff(evaluate, run.config.evaluation.batch_size, on_backoff=warn)


def _accuracies(report: AccuracyReport) -> dict[str, float | None]:
    return {"clean_accuracy": report.clean_accuracy, "robust_accuracy": report.robust_accuracy}


def evaluate_weights(run: PreparedRun, state: Mapping[str, torch.Tensor] | None = None, *,
                     split: str = "test", callbacks: PipelineCallbacks | None = None
                     ) -> AccuracyReport:
    """Clean and robust accuracy of ``state`` (default θ_AT) on ``split``'s evaluated examples
    (its first ``evaluation.max_examples``), computed as the interpolation stage computes its
    ``before`` and ``after``: the attack on a BatchNorm-folded copy where
    ``evaluation.fold_batchnorm`` folds (``rift.batchnorm_folding``), per-example random starts,
    the batch size shrunk on out-of-memory, kernels deterministic as configured. A job's
    materializations (``worker.materialize``) evaluate with it, so their numbers are the job's
    (before, they attacked θ_α unfolded). ``run.model`` holds θ_AT again afterwards."""
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', not {split!r}")
    with run.restored(), deterministic_kernels(run.config.deterministic), out_of_memory_names(
            "evaluation", "evaluation.batch_size", run.config.evaluation.batch_size):
        return _evaluate(run, state if state is not None else run.original_state,
                         _evaluation_data(run, split), PipelineCallbacks.of(callbacks))


def curve_inputs_digest(run: PreparedRun, finetuned_state: Mapping[str, torch.Tensor],
                        data: ImageTensors) -> str:
    """SHA-256 of everything an α point's robust count is computed from: θ_AT, θ_FT, the
    evaluated examples, the attack, evaluation and interpolation settings, the seed, the
    precision, the device type and the torch version (a stored ``alpha_evaluated`` count stands
    for one computed again only under an equal digest)."""
    digest = hashlib.sha256()
    for state in (run.original_state, finetuned_state):
        for name in sorted(state):
            digest.update(name.encode())
            update_digest(digest, state[name])
    update_digest(digest, data.images)
    update_digest(digest, data.labels)
    config = run.config
    digest.update(repr((config.attack.model_dump(mode="json"),
                        config.evaluation.model_dump(mode="json"),
                        config.interpolation.model_dump(mode="json"), config.seed,
                        config.precision, run.device.type, torch.__version__)).encode())
    return digest.hexdigest()


def _stored_tally(payload: Mapping[str, Any], total: int) -> tuple[float, RobustTally] | None:
    """An ``alpha_evaluated`` payload as (α, its complete count); None if it is not one."""
    alpha = payload.get("alpha")
    counts = [payload.get(key) for key in ("correct", "attacked", "total", "gradient_steps")]
    if (not isinstance(alpha, int | float) or isinstance(alpha, bool)
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)):
        return None
    try:
        tally = RobustTally(*counts)  # type: ignore[arg-type]
    except ValueError:
        return None
    return (float(alpha), tally) if tally.complete and tally.total == total else None


def _measure_curve(run: PreparedRun, finetuned_state: Mapping[str, torch.Tensor],
                   data: ImageTensors, callbacks: PipelineCallbacks) -> LazySelection:
    """Clean accuracy at every α; robust accuracy in full at every α (``curve: "full"``) or only
    as far as the choice needs (``"selection"``, see ``select_alpha_lazily``).

    Both modes attack θ_α's examples in the same order and chunks (``rift.sequential_attack``):
    θ_AT's in data order, then each α > 0 with its likely failures first, decided from the clean
    pass and θ_AT's robust outcomes and margins. A count that runs to the end is thus the same in
    both."""
    spec, config = run.config.interpolation, run.config
    grid = alpha_grid(spec.alpha_step)
    total = len(data)
    # Progress in units of one clean evaluation; attacking all examples costs about steps + 1.
    attack_cost = run.attack.steps + 1
    budget = len(grid) * (1 + (attack_cost if spec.curve == "full" else 2))
    spent = 0.0
    correct_at: dict[float, torch.Tensor] = {}  # α → each example's clean outcome
    non_finite: dict[float, int] = {}  # α → examples whose clean logits were NaN or infinite
    baseline: list[Attacked] = []
    # Every α is attacked from the same per-example starts: draw each once.
    starts = RandomStarts(config.seed, total)
    models = _evaluation_models(run, data)
    # Counted once, on θ_AT (θ_α has the same shapes): it sets how finely attacks can stop.
    flops = example_flops(run.model, data, device=run.device) if run.device.type == "cpu" else None

    warn = _backoff_warning(callbacks, "interpolate", EVALUATION_BACKOFF)

    def advance(cost: float, message: str) -> None:
        nonlocal spent
        spent += cost
        callbacks.progress("interpolate", min(spent / budget, 0.99), message)

    def clean(alpha: float) -> float:
        callbacks.check_cancel()
        run.reset_weights(interpolate_weights(run.original_state, finetuned_state, alpha))
        # Unfolded: a forward-only pass saves about what folding a copy costs (ResNet-18, 64
        # images on a CPU: ~40 ms of BatchNorm against a 63 ms fold).
        outcomes = with_batch_backoff(lambda batch_size: clean_outcomes(
            run.model, data, batch_size=batch_size, device=run.device,
            precision=config.precision, should_cancel=callbacks.should_cancel),
            config.evaluation.batch_size, on_backoff=warn)
        correct = correct_at[alpha] = outcomes.correct
        if not bool(outcomes.finite.all()):
            non_finite[alpha] = int((~outcomes.finite).sum())
        advance(1, f"clean α = {alpha:g}")
        return percent(int(correct.sum()), total) if total else 0.0

    # A full curve's points are final as each is attacked: each is reported with the digest of
    # what it was computed from, and another attempt of the stage takes the stored ones (not
    # α = 0, whose outcomes order the others' attacks). Under "selection" where a point's attack
    # stops depends on the points before it, so nothing is taken there.
    digest = curve_inputs_digest(run, finetuned_state, data) if spec.curve == "full" else None
    stored: dict[float, RobustTally] = {}
    if digest is not None and callbacks.stored_events is not None:
        for payload in callbacks.stored_events("alpha_evaluated", digest):
            entry = _stored_tally(payload, total)
            if entry is not None and entry[0] in grid[1:]:
                stored[entry[0]] = entry[1]
    taken: list[float] = []

    def robust(alpha: float, at_least: int) -> RobustTally:
        callbacks.check_cancel()
        if baseline and alpha in stored:
            taken.append(alpha)
            advance(attack_cost, f"robust α = {alpha:g} (stored by an earlier attempt)")
            return stored[alpha]
        tally = attack(alpha, at_least)
        if digest is not None:
            callbacks.event("alpha_evaluated", {
                "alpha": alpha, "correct": tally.correct, "attacked": tally.attacked,
                "total": tally.total, "gradient_steps": tally.gradient_steps, "inputs": digest})
        return tally

    def attack(alpha: float, at_least: int) -> RobustTally:
        run.reset_weights(interpolate_weights(run.original_state, finetuned_state, alpha))
        order = likely_failures_first(correct_at[alpha], baseline[0]) if baseline else None
        model = models()
        # Per-example random starts: the chunk changes a count only through float rounding, so it
        # may shrink with the batch size on out-of-memory (both curve modes see the same sizes
        # unless memory differs between their runs).
        attacked = with_batch_backoff(lambda batch_size: attack_until(
            model, data, run.attack, at_least=at_least,
            chunk=stop_chunk(total, batch_size, run.device, flops), device=run.device,
            seed=config.seed,
            order=order, precision=config.precision, should_cancel=callbacks.should_cancel,
            random_starts=starts), config.evaluation.batch_size, on_backoff=warn)
        if not baseline:  # the first attacked point is θ_AT (α = 0), in full
            baseline.append(attacked)
        advance(attack_cost * attacked.tally.attacked / max(total, 1), f"robust α = {alpha:g}")
        return attacked.tally

    if spec.curve == "full":
        measured = measure_full_curve(grid, clean, robust, tolerance=spec.robust_tolerance)
    else:
        measured = select_alpha_lazily(grid, clean, robust, tolerance=spec.robust_tolerance)
    if taken:
        callbacks.event("interpolation_resumed", {"alphas": taken, "inputs": digest})
    if non_finite:
        callbacks.event("warning", {"stage": "interpolate", "message": non_finite_warning(
            non_finite, total, measured.chosen.alpha)})
    for point in measured.curve():
        callbacks.event("interpolation_point", point)
    return measured


def unchanged_weights_warning(config: RiftConfig) -> RunWarning:
    """The warning of a run whose chosen α is 0 (θ_AT returned unchanged), with what to try; a
    sweep's names its settings."""
    if is_sweep(config):
        rates = "finetune.lr_grid" if config.finetune.lr_grid is not None else "finetune.lr"
        advice = (f"no candidate's α > 0 kept the robust accuracy of the original weights, so "
                  f"they are returned unchanged; try smaller rates in {rates}, more "
                  "finetune.candidates or a robust_tolerance")
    else:
        advice = ("no α > 0 kept the robust accuracy of the original weights, so they are "
                  "returned unchanged; try a smaller finetune.lr, another finetune.module or a "
                  "robust_tolerance")
    return RunWarning("interpolate", advice)


def non_finite_warning(non_finite: Mapping[float, int], total: int, chosen: float) -> str:
    """The warning for α points whose clean logits were NaN or infinite on some examples
    (``non_finite``: α → how many of ``total``): those examples count as misclassified, clean
    and robust (``rift.evaluation.correct_predictions``), so such a point is chosen only on the
    examples it does answer, and the user is told either way."""
    shown = ", ".join(f"α = {alpha:g} ({count} of {total} examples)"
                      for alpha, count in sorted(non_finite.items()))
    verdict = (f"the chosen α = {chosen:g} is one of them: its weights give non-finite logits "
               "on some inputs" if chosen in non_finite else f"the chosen α = {chosen:g} is not "
               "one of them")
    return (f"θ_α gave NaN or infinite logits at {shown}; those examples count as "
            f"misclassified (clean and robust), and {verdict}. θ_FT or θ_AT may have diverged "
            "or overflow float32: try a smaller finetune.lr")


def _run_interpolation_stage(run: PreparedRun, finetuned_state: Mapping[str, torch.Tensor],
                             callbacks: PipelineCallbacks | None) -> InterpolationStageResult:
    callbacks = PipelineCallbacks.of(callbacks)
    config, started = run.config, time.perf_counter()
    spec = config.interpolation
    selection_data = _evaluation_data(run, spec.selection_split)
    measured = _measure_curve(run, finetuned_state, selection_data, callbacks)
    points, chosen = measured.curve(), measured.chosen
    baseline_robust = measured.robust[0.0]
    # A sweep candidate's own curve choosing θ_AT is not the run's result, which the rule
    # across all candidates decides: the sweep says it then (``run_sweep``, the service's
    # interpolate stage). Before, every such candidate warned that the weights were returned
    # unchanged, also when another candidate won at α > 0.
    if chosen.alpha == 0.0 and not is_sweep(config):
        callbacks.event("warning", unchanged_weights_warning(config).as_payload())
    tuned = interpolate_weights(run.original_state, finetuned_state, chosen.alpha)
    before: dict[str, float | None]
    after: dict[str, float | None]
    if spec.selection_split == "test":
        before = {"clean_accuracy": points[0]["clean_accuracy"],
                  "robust_accuracy": baseline_robust}
        after = {"clean_accuracy": chosen.clean_accuracy,
                 "robust_accuracy": chosen.robust_accuracy}
    else:
        test = _evaluation_data(run, "test")
        before = _accuracies(_evaluate(run, run.original_state, test, callbacks))
        after = _accuracies(_evaluate(run, tuned, test, callbacks))
    return InterpolationStageResult(
        points, chosen.alpha, spec.selection_split, before, after, time.perf_counter() - started,
        tuned, spec.curve, measured.robust_evaluations, measured.attacked_examples,
        measured.gradient_steps)


# --------------------------------------------------------------------------- public stages


def run_mrc_stage(run: PreparedRun, callbacks: PipelineCallbacks | None = None,
                  modules: list[str] | None = None) -> MRCStageResult:
    """Score modules (all selected by the config, or exactly ``modules``) on a fixed adversarial
    set drawn from the training split and made once on θ_AT (docs/algorithm.md, step 1)."""
    with run.restored(), deterministic_kernels(run.config.deterministic):
        result = _run_mrc_stage(run, callbacks, modules)
    warn_mrc_table(run.config, result, PipelineCallbacks.of(callbacks))
    return result


def warn_mrc_table(config: RiftConfig, mrc: MRCStageResult, callbacks: PipelineCallbacks
                   ) -> None:
    """A ``warning`` event for each finding of :func:`rift.measured_warnings.mrc_table_warnings`
    on the finished table (θ_AT not robust on the MRC set, a choice decided by a tie)."""
    for warning in mrc_table_warnings(config, mrc.rows,
                                      baseline_robust_accuracy=mrc.baseline_robust_accuracy,
                                      examples=mrc.examples):
        callbacks.event("warning", warning.as_payload())


def run_finetune_stage(run: PreparedRun, module: str | MRCStageResult,
                       callbacks: PipelineCallbacks | None = None) -> FinetuneStageResult:
    """Fine-tune only ``module`` on clean data from θ_AT; keep the best validation epoch.
    ``module`` may be the MRC stage's result: then the module :func:`module_to_tune` picks.

    Raises:
        ConfigError: (field ``finetune.module``) the model has no such module.
        TypeError: ``module`` is neither a name nor an MRC result.
    """
    if isinstance(module, MRCStageResult):
        module = module_to_tune(run.config, module)
    if not isinstance(module, str):
        raise TypeError(f"module must be a module name such as 'layer4.1.conv2' (or the MRC "
                        f"stage's result), not a {type(module).__name__}")
    with run.restored(), deterministic_kernels(run.config.deterministic), out_of_memory_names(
            "finetune", "finetune.batch_size", run.config.finetune.batch_size):
        return _run_finetune_stage(run, module, callbacks)


def run_interpolation_stage(run: PreparedRun,
                            finetuned_state: Mapping[str, torch.Tensor] | FinetuneStageResult,
                            callbacks: PipelineCallbacks | None = None
                            ) -> InterpolationStageResult:
    """Measure θ_α = (1 − α) θ_AT + α θ_FT over the α grid and keep the best clean accuracy whose
    robust accuracy is not below θ_AT's (minus the tolerance). Accuracies in percent. With
    ``interpolation.curve == "selection"`` only the points that can change the choice are
    attacked, each only until its verdict is certain (``rift.interpolation.select_alpha_lazily``);
    the others have no robust accuracy, or only an upper bound (``robust_accuracy_at_most``).
    ``finetuned_state`` is θ_FT, or the fine-tuning stage's result holding it.

    Raises:
        ConfigError: θ_FT has other keys, shapes or dtypes than θ_AT.
        TypeError: ``finetuned_state`` is neither a state dict nor a fine-tuning result.
    """
    if isinstance(finetuned_state, FinetuneStageResult):
        finetuned_state = finetuned_state.state_dict
    if not isinstance(finetuned_state, Mapping):
        raise TypeError(f"finetuned_state must be θ_FT's state dict (or the fine-tuning "
                        f"stage's result), not a {type(finetuned_state).__name__}")
    with run.restored(), deterministic_kernels(run.config.deterministic), out_of_memory_names(
            "interpolate", "evaluation.batch_size", run.config.evaluation.batch_size):
        return _run_interpolation_stage(run, finetuned_state, callbacks)


# --------------------------------------------------------------------------- files


MRC_CSV_COLUMNS = ("name", "parameters", "mrc", "worst_robust_loss", "robust_accuracy_at_worst",
                   "robust_accuracy_drop", "seconds", "max_ascent_loss", "passes", "exact",
                   "zero_gradient", "selected")


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and carriage
# return, strips them and may then find one): "formula injection" (OWASP "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text_cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet shows as text: a string starting like a formula gets
    a leading apostrophe (module names come from the uploaded model and can be ``=HYPERLINK(...)``);
    numbers and other strings are left alone."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def mrc_table_csv(rows: list[dict[str, Any]], selected_module: str | None = None) -> str:
    """The MRC table as CSV text, one row per module, the selected one flagged."""
    buffer = io.StringIO()
    # Every text cell quoted: with "\n" as line end, the csv module (before Python 3.12) left a
    # carriage return in a name unquoted, which many readers take for a new row.
    # The header stays bare (plain names, as before): readers that match it as text keep working.
    csv.writer(buffer, lineterminator="\n").writerow(MRC_CSV_COLUMNS)
    writer = csv.DictWriter(buffer, fieldnames=MRC_CSV_COLUMNS, lineterminator="\n",
                            quoting=csv.QUOTE_NONNUMERIC)
    for row in rows:
        writer.writerow({**{k: csv_text_cell(row.get(k)) for k in MRC_CSV_COLUMNS[:-1]},
                         "selected": row["name"] == selected_module})
    return buffer.getvalue()


def weights_metadata(config: RiftConfig, *, checkpoint_sha256: str | None = None
                     ) -> dict[str, str]:
    """The header every weights file of a run carries, so the file alone says what it holds and
    where it came from (what a model registry records beside a version): the config and its
    SHA-256 (of that JSON text), the architecture and number of classes to build before loading
    it, the SHA-256 of θ_AT's checkpoint file when known, this library's version, and the
    checkpoint entry tuned when one was chosen. safetensors headers hold strings only.

    Before, a downloaded ``tuned.safetensors`` held only the config, kind, α and module (no θ_AT
    digest, no version), and a materialized ``tuned@α`` not even the config."""
    config_json = config.model_dump_json()
    metadata = {"config": config_json,
                "config_sha256": hashlib.sha256(config_json.encode("utf-8")).hexdigest(),
                "architecture": config.architecture.name,
                "num_classes": str(config.architecture.num_classes),
                "rift_version": rift_version}
    if checkpoint_sha256 is not None:
        metadata["checkpoint_sha256"] = checkpoint_sha256
    if config.checkpoint_entry is not None:
        metadata["checkpoint_entry"] = config.checkpoint_entry
    return metadata


def build_result(config: RiftConfig, mrc: MRCStageResult, finetune: FinetuneStageResult,
                 interpolation: InterpolationStageResult, device: str,
                 preflight: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document that describes a finished run (``result.json``)."""
    return {
        "preflight": dict(preflight) if preflight is not None else None,
        "config": config.model_dump(mode="json"),
        # The weights of the checkpoint that were tuned (None: its only ones).
        "checkpoint_entry": config.checkpoint_entry,
        "device": device,
        # Two modules a reader could mistake for each other, each under a name that says which
        # it is: the one tuned (a sweep's winner, or ``finetune.module``) and the table's least
        # critical one. ``selected_module`` (here and in ``mrc``) keep their meanings for readers.
        "tuned_module": finetune.module,
        "lowest_mrc_module": mrc.selected_module,
        "selected_module": finetune.module,
        "mrc": mrc.to_json(),
        "finetune": finetune.to_json(),
        "interpolation": interpolation.to_json(),
        "chosen_alpha": interpolation.chosen_alpha,
        "before": interpolation.before,
        "after": interpolation.after,
        "torch_version": torch.__version__,
    }


# --------------------------------------------------------------------------- stage files
# One writer and one reader per stage output, over any ``StageStorage`` (a folder for the CLI,
# the object store for workers), so the two cannot diverge. Names: ``rift.stage_outputs``.


def save_mrc(storage: StageStorage, mrc: MRCStageResult, selected_module: str) -> None:
    """``mrc.csv`` (``selected_module`` flagged) and ``mrc.json``."""
    stage_outputs.write_text(storage, MRC_CSV, mrc_table_csv(mrc.rows, selected_module))
    stage_outputs.write_json(storage, MRC_JSON, mrc.to_json())


def load_mrc(storage: StageStorage) -> MRCStageResult | None:
    """The saved MRC stage, or None. Raises StageOutputError for a file that does not hold one."""
    saved = stage_outputs.read_json(storage, MRC_JSON)
    if saved is None:
        return None
    try:
        return MRCStageResult.from_json(saved)
    except TypeError as exc:  # missing or unknown fields
        raise stage_outputs.unreadable(MRC_JSON, str(exc)) from exc


def save_finetune(storage: StageStorage, finetune: FinetuneStageResult,
                  metadata: Mapping[str, str]) -> None:
    """θ_FT first, then ``finetune.json``: the record exists only when the weights do."""
    stage_outputs.write_weights(storage, FINETUNED, finetune.state_dict,
                                {**metadata, "kind": "finetuned", "module": finetune.module})
    stage_outputs.write_json(storage, FINETUNE_JSON, finetune.to_json())


def load_finetune(storage: StageStorage, *, with_weights: bool = True
                  ) -> FinetuneStageResult | None:
    saved = stage_outputs.read_json(storage, FINETUNE_JSON)
    if saved is None:
        return None
    state: StateDict = {}
    if with_weights:
        weights = stage_outputs.read_weights(storage, FINETUNED)
        if weights is None:
            return None
        state = weights
    try:
        return FinetuneStageResult(saved["module"], saved["epochs"], saved["best_epoch"],
                                   saved["seconds"], state, saved.get("diverged"))
    except KeyError as exc:
        raise stage_outputs.unreadable(FINETUNE_JSON, f"no field {exc}") from exc


def load_finetuned_weights(storage: StageStorage) -> StateDict:
    weights = stage_outputs.read_weights(storage, FINETUNED)
    if weights is None:
        raise ConfigError(f"{FINETUNED} is missing although fine-tuning is recorded as done",
                          field="finetune")
    return weights


def save_interpolation(storage: StageStorage, interpolation: InterpolationStageResult,
                       metadata: Mapping[str, str], module: str, result: Mapping[str, Any]
                       ) -> None:
    """θ_α* as ``tuned.safetensors`` and the run's ``result.json``."""
    stage_outputs.write_weights(storage, TUNED, interpolation.state_dict, {
        **metadata, "kind": "tuned", "alpha": repr(interpolation.chosen_alpha),
        "module": module})
    stage_outputs.write_json(storage, RESULT_JSON, result)


def run_identity(config: RiftConfig, checkpoint: CheckpointSource, run: PreparedRun
                 ) -> RunIdentity:
    """The checkpoint's SHA-256 (of the file, or of the tensors when given weights in memory), a
    fingerprint of the loaded splits (every image and label, so another file with the same name
    or another split seed differs) and the config."""
    checkpoint_sha = (stage_outputs.file_sha256(Path(checkpoint))
                      if isinstance(checkpoint, str | os.PathLike)
                      else stage_outputs.tensors_fingerprint(checkpoints.checkpoint_weights(
                          checkpoint, entry=config.checkpoint_entry, check_finite=False)))
    return RunIdentity(checkpoint_sha, splits_fingerprint(run.splits),
                       config.model_dump(mode="json"))


def splits_fingerprint(splits: DatasetSplits) -> str:
    """SHA-256 over every image and label of the train, validation and test splits: the examples
    a run read, whatever file or download they came from."""
    return stage_outputs.tensors_fingerprint({
        f"{name}.{part}": getattr(getattr(splits, name), part)
        for name in ("train", "validation", "test") for part in ("images", "labels")})


def run_pipeline(config: RiftConfig | Mapping[str, Any], checkpoint: CheckpointSource,
                 output_dir: str | os.PathLike[str], callbacks: PipelineCallbacks | None = None, *,
                 fresh: bool = False) -> dict[str, Any]:
    """Run all three stages, saving each one's output in ``output_dir``; a stage whose output is
    already there is loaded, not recomputed, but only when the folder's ``run.json`` records the
    same checkpoint (SHA-256), dataset (fingerprint of the loaded splits) and config; otherwise
    ConfigError. ``fresh`` deletes earlier stage outputs first (once the checkpoint and data
    have loaded). One run at a time per folder: another run already using ``output_dir`` is a
    ConfigError (field ``output_dir``).

    Writes ``mrc.json``, ``mrc.csv``, ``finetune.json``, ``finetuned.safetensors``,
    ``tuned.safetensors``, ``result.json``, ``run.json`` and, with the MRC stage's outputs, the
    service's ``manifest.json`` (:mod:`rift.manifest`); returns the ``result.json`` document.
    """
    callbacks = PipelineCallbacks.of(callbacks)
    config = as_config(config)
    checkpoint, output_dir = _user_path(checkpoint), Path(output_dir).expanduser()
    # Before the data loads: a folder that cannot be written failed at the first save.
    stage_outputs.check_output_folder(output_dir)
    run = prepare_run(config, checkpoint)
    preflight = run_preflight_stage(run, callbacks)
    storage = FolderStorage(output_dir)
    with storage.lock():
        if fresh:  # after the checks above: a refused run deletes nothing
            storage.remove_outputs()
        identity = run_identity(config, checkpoint, run)
        stage_outputs.check_run_identity(storage, identity)
        run.checkpoint_sha256 = identity.checkpoint_sha256
        # The job's record as the service stores it, so a CLI run can be repeated (or submitted
        # to the service) from it alike: a file dataset's SHA-256 beside the splits' fingerprint.
        dataset_file = (Path(config.dataset.path).expanduser()
                        if config.dataset.name == "npz" and config.dataset.path else None)
        manifest = build_manifest(
            config, checkpoint_sha256=identity.checkpoint_sha256,
            dataset_sha256=(stage_outputs.file_sha256(dataset_file)
                            if dataset_file is not None and dataset_file.is_file() else None),
            splits_sha256=identity.dataset_fingerprint, device=str(run.device))
        return _run_stages(config, run, storage, callbacks, preflight, manifest)


def _run_stages(config: RiftConfig, run: PreparedRun, storage: FolderStorage,
                callbacks: PipelineCallbacks, preflight: PreflightReport | None,
                manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``run_pipeline``'s stages, in a folder it holds: each saved stage loaded, the others run;
    ``manifest`` is saved with the MRC stage's outputs (it describes the run that made them)."""
    metadata = weights_metadata(config, checkpoint_sha256=run.checkpoint_sha256)

    mrc = load_mrc(storage)
    if mrc is not None:
        callbacks.event("stage_skipped", {"stage": "mrc", "reason": "output already saved"})
        warn_mrc_table(config, mrc, callbacks)  # this run's choice rests on it as much
    else:
        callbacks.event("stage_started", {"stage": "mrc"})
        mrc = run_mrc_stage(run, callbacks)
        save_mrc(storage, mrc, module_to_tune(config, mrc))
        stage_outputs.write_json(storage, stage_outputs.MANIFEST_JSON, manifest)
        callbacks.event("stage_finished", {"stage": "mrc", "seconds": mrc.seconds})

    if is_sweep(config):
        return run_sweep(run, mrc, storage, metadata, callbacks,
                         preflight.as_dict() if preflight is not None else None)
    module = module_to_tune(config, mrc)
    finetune = load_finetune(storage)
    if finetune is not None:
        # A run stopped between saving finetune.json and deleting the state left it: nothing
        # resumes from it now (it stayed in the folder until --fresh).
        StoredEpochState(storage).discard()
        callbacks.event("stage_skipped", {"stage": "finetune", "reason": "output already saved"})
    else:
        callbacks.event("stage_started", {"stage": "finetune", "module": module})
        finetune = run_finetune_stage(run, module, _in_folder(callbacks, storage))
        save_finetune(storage, finetune, metadata)
        StoredEpochState(storage).discard()  # finetune.json holds the result from here
        callbacks.event("stage_finished", {"stage": "finetune", "seconds": finetune.seconds})

    callbacks.event("stage_started", {"stage": "interpolate"})
    interpolation = run_interpolation_stage(run, finetune.state_dict, callbacks)
    result = build_result(config, mrc, finetune, interpolation, str(run.device),
                          preflight.as_dict() if preflight is not None else None)
    save_interpolation(storage, interpolation, metadata, module, result)
    callbacks.event("stage_finished", {"stage": "interpolate", "seconds": interpolation.seconds})
    return result


def _in_folder(callbacks: PipelineCallbacks, storage: FolderStorage | PrefixedStorage
               ) -> PipelineCallbacks:
    """``callbacks`` keeping fine-tuning's epoch state in the run folder (unless they name a
    store of their own): a run stopped mid-fine-tune continues from its last epoch."""
    if callbacks.epoch_state is not None:
        return callbacks
    return dataclasses.replace(callbacks, epoch_state=StoredEpochState(storage))


def run_candidate(run: PreparedRun, candidate: Candidate,
                  callbacks: PipelineCallbacks | None = None
                  ) -> tuple[FinetuneStageResult, InterpolationStageResult]:
    """Fine-tune ``candidate.module`` at ``candidate.lr`` and measure its interpolation curve."""
    config = run.config
    run.config = config.model_copy(update={"finetune": config.finetune.model_copy(
        update={"lr": candidate.lr})})
    try:
        finetune = run_finetune_stage(run, candidate.module, callbacks)
        return finetune, run_interpolation_stage(run, finetune.state_dict, callbacks)
    finally:
        run.config = config


def candidate_outcome(candidate: Candidate, finetune: FinetuneStageResult,
                      interpolation: InterpolationStageResult) -> CandidateOutcome:
    """What the rule across candidates compares: the accuracies (selection split) at the α the
    candidate's own curve chose. The same for a sequential sweep and a worker's candidate task."""
    chosen = next(p for p in interpolation.points if p["alpha"] == interpolation.chosen_alpha)
    return CandidateOutcome(
        candidate, interpolation.chosen_alpha, float(chosen["clean_accuracy"] or 0.0),
        float(chosen["robust_accuracy"] or 0.0), interpolation.points, finetune.best_epoch)


def excludable(config: RiftConfig) -> tuple[type[RiftError], ...]:
    """The errors of a sweep candidate's fine-tuning that exclude it instead of failing the
    sweep: a divergence in its first epoch, and, for a module the sweep chose from the MRC
    table, a module whose first step's gradient is exactly zero (``ModuleWithoutEffect``; the
    table flags such modules and the selection passes over them, but fine-tuning sees training
    batches in train mode, not the MRC set). A module ``finetune.module`` names is the user's
    choice: its refusal fails the run."""
    if config.finetune.module is not None:
        return (FinetuneDiverged,)
    return (FinetuneDiverged, ModuleWithoutEffect)


def excluded_candidate(candidate: Candidate, error: RiftError,
                       callbacks: PipelineCallbacks) -> ExcludedCandidate:
    """A candidate whose fine-tuning diverged in its first epoch or was refused for a zero
    gradient (:func:`excludable`), left out of the pick with a ``warning`` event: the others
    still finish the sweep. The same for a sequential sweep and a worker's candidate task."""
    callbacks.event("warning", RunWarning("finetune", (
        f"candidate {candidate.module!r} at lr {rate_text(candidate.lr)} is excluded from the sweep: "
        f"{error.message}")).as_payload())
    return ExcludedCandidate(candidate, error.message, error.field)


def run_sweep(run: PreparedRun, mrc: MRCStageResult, storage: FolderStorage,
              metadata: dict[str, str], callbacks: PipelineCallbacks | None = None,
              preflight: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every candidate in turn; the α rule picks across all curves; writes ``curves.json``,
    the winner's θ_FT and θ_α*, ``mrc.csv`` again with the winner flagged, and ``result.json``
    (with ``"sweep"``); returns the latter.

    Each candidate's outcome, fine-tune record and θ_FT are saved under its prefix
    (``candidate-NN.``) as it finishes, and a candidate saved there (same module and rate) is not
    run again: a sweep cut short resumes where it stopped. Once the winner's outputs are
    written, the other candidates' θ_FT are deleted (their records stay). A candidate whose
    fine-tuning diverged in its first epoch is excluded (recorded with its reason, a ``warning``
    event); the rule picks among the others.

    Raises:
        NumericalError: every candidate diverged in its first epoch (``rift.sweep.choose_across``).
    """
    callbacks = PipelineCallbacks.of(callbacks)
    config = run.config
    candidates = sweep_candidates(config, mrc.rows)
    fewer = fewer_modules_than_asked(config, candidates, mrc.rows)
    if fewer is not None:
        callbacks.event("warning", {"stage": "finetune", "message": fewer})
    outcomes: list[CandidateOutcome | ExcludedCandidate] = []
    curves_of: list[dict[str, Any] | None] = []
    for index, candidate in enumerate(candidates):
        saved_in = PrefixedStorage(storage, candidate_prefix(index))
        saved = _load_candidate(saved_in, candidate)
        # Every event of the candidate names it, as in the service, where candidates run side
        # by side.
        reports = callbacks.tagged(candidate=index)
        if saved is not None:
            StoredEpochState(saved_in).discard()  # one a stop after candidate.json left
            reports.event("stage_skipped", {"stage": "candidate", "module": candidate.module,
                                            "lr": candidate.lr, "reason": "output already saved"})
        else:
            reports.event("stage_started", {"stage": "candidate", "module": candidate.module,
                                            "lr": candidate.lr})
            try:
                finetune, interpolation = run_candidate(run, candidate,
                                                        _in_folder(reports, saved_in))
            except excludable(config) as exc:
                saved = {"outcome": excluded_candidate(candidate, exc, reports).to_json(),
                         "interpolation": None}
            else:
                saved = {"outcome": candidate_outcome(candidate, finetune,
                                                      interpolation).to_json(),
                         "interpolation": interpolation.to_json()}
                # θ_FT and its record first: candidate.json marks a candidate whose files are
                # whole.
                save_finetune(saved_in, finetune, {**metadata, "lr": repr(candidate.lr)})
            stage_outputs.write_json(saved_in, CANDIDATE_JSON, saved)
            StoredEpochState(saved_in).discard()  # candidate.json holds its result from here
        outcomes.append(outcome_from_json(saved["outcome"]))
        curves_of.append(saved["interpolation"])
    curves = curves_document(outcomes)
    winner = curves["chosen"]
    winner_storage = PrefixedStorage(storage, candidate_prefix(winner))
    chosen = load_finetune(winner_storage)
    if chosen is None:
        raise ConfigError(f"the chosen candidate's {FINETUNED} is missing from {storage.folder}; "
                          "use --fresh to run the sweep again", field="output_dir")
    # θ_α* made again from θ_AT and the winner's θ_FT: the tensors its curve measured.
    curve = curves_of[winner]
    assert curve is not None  # choose_across never picks an excluded candidate
    interpolation = InterpolationStageResult(
        **curve, state_dict=interpolate_weights(
            run.original_state, chosen.state_dict, float(curve["chosen_alpha"])))
    if interpolation.chosen_alpha == 0.0:
        callbacks.event("warning", unchanged_weights_warning(config).as_payload())
    stage_outputs.write_weights(storage, FINETUNED, chosen.state_dict,
                                {**metadata, "kind": "finetuned", "module": chosen.module})
    # The table was written before the sweep, flagging the least critical module; the run tunes
    # the winner, which result.json names.
    save_mrc(storage, mrc, chosen.module)
    stage_outputs.write_json(storage, CURVES_JSON, curves)
    result = {**build_result(config, mrc, chosen, interpolation, str(run.device), preflight),
              "sweep": curves}
    save_interpolation(storage, interpolation, {**metadata, "lr": repr(candidates[winner].lr)},
                       chosen.module, result)
    for index in range(len(candidates)):
        if index != winner:
            PrefixedStorage(storage, candidate_prefix(index)).remove(FINETUNED)
    return result


def _load_candidate(storage: PrefixedStorage, candidate: Candidate) -> dict[str, Any] | None:
    """A candidate's saved outcome and curve, when saved for this module and rate."""
    saved = stage_outputs.read_json(storage, CANDIDATE_JSON)
    if saved is None:
        return None
    recorded = saved["outcome"]
    if recorded.get("module") != candidate.module or recorded.get("lr") != candidate.lr:
        return None
    return saved
