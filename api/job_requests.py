"""Turning a ``POST /v1/jobs`` request into a validated job: strict JSON parsing, the dataset
rules, and the checks that need the model (checkpoint fit, module names), all before anything is
written, so every mistake is a 4xx naming its field.

Uploaded datasets are referenced by ``dataset_id``; the job's stored config then carries the
placeholder path ``dataset:<id>`` (RiftConfig requires a path for 'npz'/'imagefolder'), which the
worker replaces with the folder it unpacks the archive into. The service never reads a path a
client sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from api.checkpoint_validation import (
    CheckpointTensors,
    StoredTensorsCache,
    stored_checkpoint_tensors,
)
from api.dataset_validation import Geometry, dataset_geometry, uploaded_dataset_geometry
from api.errors import InvalidInput, WordedValidationError, from_rift_error
from api.schemas import JobSpec
from api.services.ownership import Owned, find_owned
from api.spec_limits import service_bound_errors
from api.spec_messages import refine_errors
from api.validation import Validator
from persistence.jobs import request_fingerprint
from persistence.models import Checkpoint, Dataset
from persistence.storage import ObjectNotFound, ObjectStore
from rift.attack_radius import check_attack_radius, resolve_domain
from rift.config import DatasetSpec, DomainBounds, RiftConfig, unused_settings
from rift.dataset_formats import (
    SERVICE_MIN_IMAGE_SIDE,
    imagefolder_channels_hint,
    sparse_labels_hint,
)
from rift.errors import CheckpointEntryError, CheckpointMismatchError, ConfigError, RiftError
from rift.inputs_in_domain import (
    SHOWN_CHANNELS,
    channels_outside_domain,
    outside_domain_message,
)

ModelT = TypeVar("ModelT", bound=BaseModel)

DATASET_PATH_PREFIX = "dataset:"
#: Fit checks run for one job at most: each but the last names the keys whose value digests it
#: needs (a network's and its possible copies'), which grow from one round to the next only
#: when three or more prefixes hold the network.
MAX_FIT_ROUNDS = 3
#: The value digests of the named keys (``api.checkpoint_validation.safetensors_digests``).
DigestReader = Callable[[list[str]], dict[str, str]]
#: The job field that names which weights of a checkpoint to tune.
CHECKPOINT_ENTRY_FIELD = "config.checkpoint_entry"
UPLOADED_KINDS = ("npz", "imagefolder")
# Classes of the built-in datasets: a model with fewer outputs cannot be trained on them.
BUILTIN_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10, "digits": 10}


def unknown_checkpoint(checkpoint_id: str) -> InvalidInput:
    """The 422 for a job naming a checkpoint the caller's project does not have."""
    return InvalidInput(f"no checkpoint with id '{checkpoint_id}' (upload one with POST "
                        "/v1/checkpoints)", field="checkpoint_id", code="unknown_checkpoint")


def unknown_dataset(dataset_id: str) -> InvalidInput:
    """The 422 for a job naming a dataset the caller's project does not have."""
    if dataset_id in BUILTIN_CLASSES:
        # `riftctl jobs create --dataset digits`: GET /v1/datasets/digits answers, so a
        # built-in looks like an id; it is chosen by the config alone.
        return InvalidInput(f"'{dataset_id}' is a built-in dataset, not an upload: name it in "
                            f"config.dataset.name and send no dataset_id", field="dataset_id",
                            code="unknown_dataset")
    return InvalidInput(f"no dataset with id '{dataset_id}' (upload one with POST "
                        "/v1/datasets, or use a built-in name in config.dataset.name)",
                        field="dataset_id", code="unknown_dataset")


def dataset_placeholder(dataset_id: str) -> str:
    """The ``config.dataset.path`` stored for a job on the uploaded dataset ``dataset_id``."""
    return f"{DATASET_PATH_PREFIX}{dataset_id}"


def _prefill_dataset_path(body: Any) -> None:
    # RiftConfig insists on a path for uploaded kinds; the client names the upload instead (a
    # missing dataset_id is reported by resolve_dataset, with what to do about it).
    if not isinstance(body, dict):
        return
    config = body.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if isinstance(dataset, dict) and dataset.get("name") in UPLOADED_KINDS and "path" not in dataset:
        dataset_id = body.get("dataset_id")
        dataset["path"] = dataset_placeholder(dataset_id if isinstance(dataset_id, str) else "")


def validate_body(body: Any, model: type[ModelT], loc: tuple[Any, ...]) -> ModelT:
    """Validate parsed JSON against ``model`` in strict mode (``"epochs": "10"`` is refused, not
    read as 10), with the service's bounds of a job config and its unused settings; errors are
    422s whose ``loc`` starts with ``loc``, all of them in one answer."""
    _prefill_dataset_path(body)
    early: list[dict[str, Any]] = []
    if isinstance(body, dict) and isinstance(body.get("config"), dict):
        early.extend(service_bound_errors(body["config"], (*loc, "config")))
        early.extend({"type": "value_error", "loc": (*loc, "config", *path), "msg": why}
                     for path, why in unused_settings(body["config"]))
    try:
        # Strict in JSON mode: JSON strings still become enums and paths, arrays tuples.
        validated = model.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as exc:
        # The schema's errors beside the service's: an answer with the bound alone ("epochs":
        # 500) hid a mistyped key of the same spec until the bound was met.
        named = {tuple(error["loc"]) for error in early}
        errors = [
            {**error, "loc": (*loc, *error["loc"])}
            for error in refine_errors(
                exc.errors(include_url=False), model)
        ]
        raise WordedValidationError(
            early + [error for error in errors if tuple(error["loc"]) not in named]) from None
    if early:
        raise WordedValidationError(early)
    return validated


def fingerprint(spec: JobSpec, checkpoint_ref: str) -> str:
    """Hash of what defines the job (defaults filled in), for Idempotency-Key comparisons;
    ``checkpoint_ref`` is the checkpoint id, or ``sha256:<hex>`` of an uploaded file."""
    config = spec.config.model_dump(mode="json")
    if config["dataset"]["channels"] == "auto":  # absent otherwise: earlier jobs keep their hash
        del config["dataset"]["channels"]
    if config.get("checkpoint_entry") is None:  # likewise
        config.pop("checkpoint_entry", None)
    defining: dict[str, Any] = {
        "checkpoint": checkpoint_ref,
        "dataset_id": spec.dataset_id,
        "config": config,
        "labels": spec.labels,
    }
    if spec.time_limit_seconds is not None:  # absent otherwise: earlier jobs keep their hash
        defining["time_limit_seconds"] = spec.time_limit_seconds
    return request_fingerprint(defining)


@dataclass(frozen=True)
class ResolvedDataset:
    """The dataset a job will read: the uploaded row (if any) and the geometry its model is
    built for (sizes None when they cannot be known in advance)."""

    row: Dataset | None
    geometry: Geometry


def resolve_dataset(session: Session, store: ObjectStore, spec: JobSpec,
                    project_id: str) -> ResolvedDataset:
    """Check the dataset rules and find the image geometry (an uploaded dataset must be
    ``project_id``'s: another project's is unknown).

    Raises:
        InvalidInput: (422) unknown ``dataset_id``, a kind that does not match it, a client path,
            an uploaded kind without ``dataset_id``, or more classes in the dataset than
            ``architecture.num_classes``; each names its field.
    """
    dataset = spec.config.dataset
    if spec.dataset_id is None:
        if dataset.name in UPLOADED_KINDS:
            raise InvalidInput(
                f"dataset '{dataset.name}' is read from an upload: POST the archive to "
                "/v1/datasets and pass its id as 'dataset_id'", field="config.dataset.name")
        if dataset.path is not None:
            raise InvalidInput(
                "'path' is not accepted: the service reads no client paths; upload the dataset "
                "(POST /v1/datasets) and pass 'dataset_id'", field="config.dataset.path")
    if dataset.root is not None:
        raise InvalidInput(
            "'root' is not accepted: built-in datasets are read from the workers' DATA_ROOT",
            field="config.dataset.root")
    if dataset.download:
        raise InvalidInput(
            "'download' is not accepted: workers never download datasets; built-in datasets must "
            "be placed in the workers' DATA_ROOT, others uploaded with POST /v1/datasets",
            field="config.dataset.download")
    if spec.dataset_id is None:
        classes = BUILTIN_CLASSES.get(dataset.name)
        if classes is not None and spec.config.architecture.num_classes < classes:
            raise InvalidInput(
                f"dataset '{dataset.name}' has {classes} classes but architecture.num_classes "
                f"is {spec.config.architecture.num_classes}",
                field="config.architecture.num_classes")
        return ResolvedDataset(None, dataset_geometry(dataset))

    row = find_owned(session, Dataset, project_id, spec.dataset_id)
    session.commit()
    if row is None:
        raise unknown_dataset(spec.dataset_id)
    if dataset.name != row.kind:
        raise InvalidInput(
            f"dataset {row.id} is an '{row.kind}' upload: set config.dataset.name to "
            f"'{row.kind}'", field="config.dataset.name")
    if dataset.path != dataset_placeholder(row.id):
        raise InvalidInput("leave out 'path': the service sets it from 'dataset_id'",
                           field="config.dataset.path")
    _check_classes(row, spec.config.architecture.num_classes)
    if row.image_sizes_differ and not dataset.image_size:
        # Unresized, every image must have the first's size: the job would fail reading them.
        first = f" (the first is {row.image_height}×{row.image_width})" if row.image_height else ""
        raise InvalidInput(
            f"dataset {row.id}'s images are not all of one size{first}: set "
            "config.dataset.image_size to resize them all to one square size",
            field="config.dataset.image_size")
    try:
        geometry = uploaded_dataset_geometry(store, row, dataset)
    except ObjectNotFound:
        _unless_deleted_meanwhile(session, Dataset, project_id, row.id)
        raise
    except RiftError as exc:
        raise from_rift_error(exc, field="dataset_id") from exc
    _check_image_side(row, geometry)
    return ResolvedDataset(row, geometry)


def _check_image_side(row: Dataset, geometry: Geometry) -> None:
    # An ImageFolder upload may hold images under the service's 8 px (an npz may not: its size
    # is final), since config.dataset.image_size can resize them; unresized, the library reads
    # them as they are, and small_cnn or a ResNet then runs on 5×5 images without complaint.
    height, width = geometry.image_size, geometry.image_width or geometry.image_size
    if height is None or width is None or min(height, width) >= SERVICE_MIN_IMAGE_SIDE:
        return
    raise InvalidInput(
        f"dataset {row.id}'s images are {height}×{width} pixels (height × width); the service "
        f"takes images of at least {SERVICE_MIN_IMAGE_SIDE} pixels a side: set "
        f"config.dataset.image_size (at least {SERVICE_MIN_IMAGE_SIDE}) to resize them",
        field="config.dataset.image_size", code="images_too_small",
        details={"image_height": height, "image_width": width,
                 "minimum_side": SERVICE_MIN_IMAGE_SIDE})


def _check_classes(row: Dataset, num_classes: int) -> None:
    # Labels are class indices: a label >= num_classes would fail on the worker, mid-job.
    if row.num_classes is not None and row.num_classes > num_classes:
        raise InvalidInput(
            f"dataset {row.id} has {row.num_classes} classes (labels {row.label_min} to "
            f"{row.label_max}) but architecture.num_classes is {num_classes}"
            f"{_labels_hint(row)}",
            field="config.architecture.num_classes", code="too_few_classes",
            details={"dataset_num_classes": row.num_classes,
                     "architecture_num_classes": num_classes})


def _labels_hint(row: Dataset) -> str:
    # Labels that skip numbers (0, 100, 200 count 201 classes): the fix is to renumber them, not
    # to widen the network; worded as the library words it, from the labels the upload counted.
    if (row.num_distinct_labels is not None and row.num_classes is not None
            and row.label_min is not None and row.label_max is not None):
        return sparse_labels_hint(
            distinct=row.num_distinct_labels, num_classes=row.num_classes,
            smallest=row.label_min, largest=row.label_max, labels=row.distinct_labels)
    return _label_offset_hint(row)


def _label_offset_hint(row: Dataset) -> str:
    # A row recorded before migration 0028 knows only the labels' range. Labels 1 to 10 count
    # 11 classes: the fix is to renumber them, not to widen the network.
    if not row.label_min or row.label_max is None:
        return ""
    return (f"; labels are class indices counted from 0, and these start at {row.label_min}: "
            f"renumber them 0 to {row.label_max - row.label_min} (subtract {row.label_min}) "
            "if no class is below it")


def _check_domain_size(config: RiftConfig, geometry: Geometry) -> None:
    # Bounds are per channel (images) or per feature (vectors), or one for all; another count
    # would only fail on the worker, at the first attack.
    domain = config.attack.domain
    size = geometry.num_features if geometry.num_features is not None else geometry.channels
    if isinstance(domain, DomainBounds) and size is not None and len(domain.lower) not in (1, size):
        raise InvalidInput(
            f"attack.domain has {len(domain.lower)} bounds but the inputs have {size} "
            f"{'features' if geometry.num_features is not None else 'channels'}; give 1 or "
            f"{size}", field="config.attack.domain.lower", code="domain_size_mismatch")


def _check_domain_holds_values(config: RiftConfig, geometry: Geometry,
                               row: Dataset | None) -> None:
    # Inputs outside attack.domain ("unit" on features in [-3, 5], bounds narrower than the
    # data) failed the job's first stage (rift.attacks checks the loaded inputs); refused here
    # by the same rule and words, from the range the upload recorded. A row recorded before
    # migration 0029 has none: its jobs keep the run-time check alone.
    if row is None or row.value_min is None or row.value_max is None:
        return
    if not _reads_every_example(config.dataset, row):
        return
    bounds = resolve_domain(config.attack.domain, feature_vectors=geometry.num_features is not None)
    if bounds is None:
        return
    if row.channel_value_min is not None and row.channel_value_max is not None:
        outside = channels_outside_domain(bounds, row.channel_value_min, row.channel_value_max)
    else:  # past 1,000 features only the overall range is recorded
        outside = channels_outside_domain(bounds, [row.value_min], [row.value_max],
                                          together=True)
    if outside:
        raise InvalidInput(
            outside_domain_message(f"inputs of dataset {row.id} (x and x_test)", outside),
            field="config.attack.domain", code="inputs_outside_domain",
            details={"channels_outside": len(outside),
                     "outside": [part.to_json() for part in outside[:SHOWN_CHANNELS]]})


def _reads_every_example(spec: DatasetSpec, row: Dataset) -> bool:
    # A job capped below the file's examples reads a subset, and the library checks only that:
    # the whole file's range could refuse a job that would run.
    caps = [cap for cap in (spec.max_train_examples, spec.max_test_examples) if cap is not None]
    return not caps or (row.num_examples is not None and min(caps) >= row.num_examples)


def _check_attack_radius(config: RiftConfig, geometry: Geometry) -> None:
    # An eps as wide as the inputs' domain (8 meant as 8/255) runs, and every robust accuracy
    # of the job then measures nothing; the library refuses it too, but only when the job runs.
    features = geometry.num_features is not None
    shape: tuple[int, ...] | None = None
    if features:
        shape = (geometry.num_features or 0, 1, 1)
    elif geometry.channels is not None and geometry.image_size is not None:
        shape = (geometry.channels, geometry.image_size,
                 geometry.image_width or geometry.image_size)
    try:
        check_attack_radius(config.attack, feature_vectors=features, input_shape=shape)
    except ConfigError as exc:
        raise from_rift_error(exc) from exc


def _channels_hint(geometry: Geometry, wanted: int) -> str:
    if not geometry.channels_choosable or geometry.channels is None or wanted not in (1, 3):
        return ""
    return imagefolder_channels_hint(geometry.channels, wanted, "config.dataset.channels")


def _check_in_channels(config: RiftConfig, geometry: Geometry) -> None:
    # A model built for other channels than the data's fails on the worker at its first input.
    wanted = config.architecture.in_channels
    if wanted is None or geometry.channels is None or wanted == geometry.channels:
        return
    raise InvalidInput(
        f"architecture.in_channels is {wanted} but the dataset's images have "
        f"{geometry.channels} channel(s){_channels_hint(geometry, wanted)}",
        field="config.architecture.in_channels",
        code="channel_mismatch",
        details={"dataset_channels": geometry.channels, "architecture_in_channels": wanted})


@dataclass(frozen=True)
class JobFit:
    """What job creation's fit check leaves: the checkpoint's tensors with the digests it read,
    and the model's forward FLOPs on one input of the data's geometry (None: not counted)."""

    tensors: CheckpointTensors
    example_flops: float | None


def check_job_fits(validator: Validator, config: RiftConfig, tensors: CheckpointTensors,
                   geometry: Geometry, checkpoint_field: str,
                   digest_reader: DigestReader | None = None, *,
                   dataset: Dataset | None = None) -> JobFit:
    """Check in the validator process that the checkpoint fits the job's model (built on the
    meta device for ``geometry``), that the model takes inputs of that geometry, and that the
    spec's module names exist; then that ``architecture.in_channels``, when set, is the images'
    channel count. Where the check needs to know whether the network under one key prefix is a
    copy of the one under another (``rift.checkpoint_layouts``), ``digest_reader`` digests the
    values of the keys it names (a safetensors file's, read by ranges) and the check runs again
    with them; without one, or past :data:`MAX_FIT_ROUNDS`, the job's own load decides.
    Returns ``tensors`` with the digests read, and the FLOPs the last answer counted.
    ``dataset``: the uploaded dataset's row, whose recorded values ``attack.domain`` must hold.

    Raises:
        ApiError: (422) attack.domain bounds that do not match the inputs, or that the
            dataset's recorded values lie outside (code ``inputs_outside_domain``); checkpoint
            mismatch (field ``checkpoint_field``, with the missing, unexpected and mismatched
            keys), unknown architecture or module names;
            ``architecture.in_channels`` unlike the data's (code ``channel_mismatch``); (503) the
            validator could not run.
    """
    _check_domain_size(config, geometry)
    # As the library orders them: a domain narrower than the data is the first thing to fix.
    _check_domain_holds_values(config, geometry, dataset)
    _check_attack_radius(config, geometry)
    digests = dict(tensors.digests)
    final = digest_reader is None
    try:
        for round_number in range(MAX_FIT_ROUNDS):
            final = final or round_number == MAX_FIT_ROUNDS - 1
            answer = validator.check_fit(
                config, tensors.shapes, dtypes=tensors.dtypes, normalizers=tensors.normalizers,
                digests=digests, final=final, in_channels=geometry.channels,
                image_size=geometry.image_size, num_features=geometry.num_features,
                image_width=geometry.image_width)
            wanted = [key for key in answer.unknown_values if key not in digests]
            if final or not wanted:
                break
            assert digest_reader is not None
            read = digest_reader(wanted)
            # None can be read (a stored range of the wrong length): the next round answers
            # with those values taken as equal, and the job's own load tells.
            final = not read
            digests.update(read)
    except ConfigError as exc:
        # A model built for other channels cannot take the data either: the specific 422 first.
        _check_in_channels(config, geometry)
        raise from_rift_error(exc) from exc
    except RiftError as exc:
        error = from_rift_error(exc, field=checkpoint_field)
        if isinstance(exc, CheckpointMismatchError):
            # The usual cause with a grey tree: a checkpoint trained on RGB copies of it.
            error.message += _channels_hint(geometry, 3 if geometry.channels == 1 else 1)
        raise error from exc
    # After the checkpoint: a checkpoint that does not fit the model is the first thing to fix.
    _check_in_channels(config, geometry)
    return JobFit(replace(tensors, digests=digests), answer.example_flops)


def checkpoint_tensors(
    session: Session, store: ObjectStore, checkpoint_id: str, scratch_dir: Path,
    validator: Validator, project_id: str, entry: str | None = None,
    cache: StoredTensorsCache | None = None,
) -> tuple[Checkpoint, CheckpointTensors]:
    """The uploaded checkpoint ``checkpoint_id`` (``project_id``'s) and its keys' shapes and
    dtypes (those of its weights entry ``entry`` when given); a safetensors file's from
    ``cache`` when it holds them (kept there once read).

    Raises:
        InvalidInput: (422, field ``checkpoint_id``) no such checkpoint, or a stored PyTorch file
            the validator refuses; (field ``config.checkpoint_entry``) an entry it does not have.
    """
    row = find_owned(session, Checkpoint, project_id, checkpoint_id)
    session.commit()
    if row is None:
        raise unknown_checkpoint(checkpoint_id)
    cached = cache.get(row.id, row.sha256) if cache is not None and entry is None else None
    if cached is not None:
        return row, cached
    try:
        tensors = stored_checkpoint_tensors(store, row.storage_key, row.format, scratch_dir,
                                            validator, entry)
    except ObjectNotFound:
        _unless_deleted_meanwhile(session, Checkpoint, project_id, checkpoint_id)
        raise
    except CheckpointEntryError as exc:
        raise from_rift_error(exc, field=CHECKPOINT_ENTRY_FIELD) from exc
    except RiftError as exc:
        raise from_rift_error(exc, field="checkpoint_id") from exc
    if cache is not None and row.format == "safetensors":
        # A PyTorch file is inspected again each time: only the validator reads its pickle.
        cache.put(row.id, row.sha256, tensors)
    return row, tensors


def _unless_deleted_meanwhile(session: Session, model: type[Owned],
                              project_id: str, resource_id: str) -> None:
    """After the stored file of a checkpoint or dataset found a moment ago was missing: the 422
    ``unknown_checkpoint`` / ``unknown_dataset`` a request sent after its concurrent DELETE
    gets, when that is what happened (rows go first, then files). Returns if the row is still
    there: the store lost the file (503 ``object_missing``)."""
    gone = find_owned(session, model, project_id, resource_id, fresh=True) is None
    session.commit()
    if gone:
        raise (unknown_checkpoint if model is Checkpoint else unknown_dataset)(resource_id)


def check_checkpoint_entry(entries: list[str], entry: str | None) -> None:
    """Require a choice of weights where the checkpoint holds several (a model and its EMA).

    Raises:
        InvalidInput: (422, field ``config.checkpoint_entry``, ``details.entries``) none named.
    """
    if entry is None and len(entries) > 1:
        shown = ", ".join(repr(name) for name in entries)
        raise InvalidInput(
            f"the checkpoint holds different weights under {shown} (a model and its EMA, a "
            "student and its teacher): set config.checkpoint_entry to the one to tune",
            field=CHECKPOINT_ENTRY_FIELD, code=CheckpointEntryError.code,
            details={"entries": entries})
