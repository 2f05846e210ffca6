"""The RiFT job configuration: one pydantic model, shared by the library, the CLI and the REST API.

Defaults follow the protocol in docs/algorithm.md (attack PGD-10 L∞ 8/255 with step 2/255, MRC
with a relative L2 ball of radius 0.1 and 10 normalized ascent passes at lr 1, fine-tuning with SGD
lr 1e-3 for 10 epochs, interpolation over α in steps of 0.05 as in the paper's Algorithm 2);
``protocol: "reference"`` switches to the reference code's choices.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rift.dataset_formats import ImageChannels
from rift.errors import ConfigError
from rift.repeats import repeated
from rift.setting_names import SettingValueError, describe_errors

Norm = Literal["linf", "l2"]
MIN_STD = 1e-4
#: The largest run seed: every seed derived from it (data streams, batches) stays in int64.
MAX_SEED = 2**31 - 1
# A checkpoint entry's key path ("model.state_dict"): long enough for any real nesting.
MAX_CHECKPOINT_ENTRY_CHARS = 256
# 'auto', 'cpu', or an accelerator with an optional small index (ASCII digits only).
DEVICE_PATTERN = r"^(auto|cpu|mps|(cuda|xpu)(:[0-9]{1,2})?)$"
#: The most modules ``mrc.module_batch`` scores at once.
MAX_MODULE_BATCH = 64


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a job spec must not silently fall back to a default.
    # NaN and ±inf are refused in every float: they would only surface later as NaN losses.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for an int or float: "mrc.steps": true ran one ascent pass,
        # "lr_milestones": [true] decayed after epoch 1. Only a setting that takes a boolean
        # takes one.
        values = value if isinstance(value, list) else [value]
        if any(isinstance(item, bool) for item in values) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if not _admits_bool(annotation):
                raise ValueError("true/false is not a value of this setting")
        return value


def _number_as_name(value: Any) -> Any:
    """A whole number given where a module name (or pattern) is meant, as its text: nn.Sequential
    and ModuleList name their children "0", "1", ..., which JSON, YAML and ``--set`` read as
    numbers unless quoted. A fraction is refused, asking for quotes: "4.10" (the child "10" of
    child "4") read as a number is 4.1, whose text names another module. Other values (true/false
    included) are left to the field's check.

    Raises:
        PydanticCustomError: for a float; of type ``string_type``, as a number was before, so
            that ``rift run --set`` still reads the text typed instead (``rift.cli``).
    """
    if isinstance(value, float):
        raise PydanticCustomError(
            "string_type", "module names are text, and a number may lose digits (4.10 reads as "
            "4.1): quote it")
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _admits_bool(annotation: Any) -> bool:
    """Whether ``bool`` appears anywhere in a field's type (``bool``, ``bool | None``, ...)."""
    return annotation is bool or any(_admits_bool(arg) for arg in get_args(annotation))


# Dataset-typical input statistics of [0, 1] images (per channel), offered by name so that a
# checkpoint trained with them is not silently scored on unnormalised inputs.
NAMED_NORMALIZATIONS: dict[str, tuple[list[float], list[float]]] = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "mnist": ([0.1307], [0.3081]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


#: The most classes a network may have (``ArchitectureSpec.num_classes``): labels are class
#: indices, so an upload whose labels need more is refused (``api.ingest``).
MAX_CLASSES = 100_000


class ArchitectureSpec(_Strict):
    """Which network to build. ``mean``/``std`` are applied inside the model, so inputs are [0, 1]."""

    name: str = Field(description="Registry name, e.g. 'resnet18', 'wide_resnet34_10', "
                      "'small_cnn', 'mlp', 'torchvision:resnet50', or an installed "
                      "'rift.architectures' entry point (see `rift architectures`).")
    num_classes: int = Field(10, ge=2, le=MAX_CLASSES)
    in_channels: int | None = Field(None, ge=1, le=16, description="Default: the dataset's.")
    image_size: int | None = Field(None, ge=8, le=1024, description="Default: the dataset's.")
    mean: list[float] | None = Field(None, description="Per-channel input mean; None: no shift.")
    std: list[float] | None = Field(None, description="Per-channel input std; None: no scaling.")
    normalization: Literal["cifar10", "cifar100", "svhn", "mnist", "imagenet"] | None = Field(
        None, description="Dataset-typical mean/std by name; fills 'mean'/'std'.")
    input_features: int | None = Field(
        None, ge=1, le=1_000_000, description="'mlp' only: input size; default: the dataset's "
        "features (C·H·W).")
    hidden: list[int] | None = Field(
        None, min_length=0, max_length=16, description="'mlp' only: hidden layer widths "
        "(default [64, 64]).")

    @model_validator(mode="after")
    def _check_normalisation(self) -> ArchitectureSpec:
        if self.normalization is not None:
            mean, std = NAMED_NORMALIZATIONS[self.normalization]
            if self.mean is None and self.std is None:
                self.mean, self.std = list(mean), list(std)
            elif self.mean != mean or self.std != std:
                raise SettingValueError(f"'normalization' {self.normalization!r} sets mean/std; "
                                        "give it or 'mean'/'std', not both", "normalization")
        if self.hidden is not None and any(not 1 <= width <= 65536 for width in self.hidden):
            raise SettingValueError("every 'hidden' width must be between 1 and 65536", "hidden")
        if (self.mean is None) != (self.std is None):
            raise SettingValueError("give both 'mean' and 'std', or neither",
                                    "std" if self.std is None else "mean")
        if self.std is not None and any(s < MIN_STD for s in self.std):
            raise SettingValueError(f"every 'std' entry must be >= {MIN_STD} (inputs are divided "
                                    "by it)", "std")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise SettingValueError("'mean' and 'std' must have the same length", "std")
        return self

    @field_validator("num_classes", mode="before")
    @classmethod
    def _not_single_logit(cls, value: object) -> object:
        # ge=2 alone said "should be greater than or equal to 2", not what to do about a binary
        # head with one output (rift.models.registry.SINGLE_LOGIT_HINT).
        if value == 1 and not isinstance(value, bool):
            raise ValueError(
                "num_classes 1: a single-logit binary head (sigmoid with BCE loss) gives one "
                "score, not one logit per class, and cross-entropy on one column is 0 for every "
                "input; return torch.cat([torch.zeros_like(z), z], 1) from forward (a softmax "
                "over [0, z] is sigmoid(z), so the model is unchanged) and set num_classes 2")
        return value


#: The JSON schema of ``channels``: one JSON type per branch. Pydantic's own, one enum of
#: ``"auto"``, 1 and 3, mixes a string with integers, which client generators cannot make a type
#: of (openapi-python-client dropped DatasetSpec, and with it the whole job config).
_CHANNELS_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string", "const": "auto"},
                                              {"type": "integer", "enum": [1, 3]}]}


class DatasetSpec(_Strict):
    """Where the images come from. Built-in names read from ``root``; ``npz``/``imagefolder`` from
    ``path``; ``digits`` is scikit-learn's bundled handwritten digits (8×8, 10 classes)."""

    name: Literal["cifar10", "cifar100", "svhn", "mnist", "digits", "npz", "imagefolder"]
    root: str | None = Field(None, description="Data directory for cifar10/cifar100/svhn/mnist.")
    path: str | None = Field(None, description="File (.npz) or folder (ImageFolder tree).")
    download: bool = Field(False, description="Allow torchvision to download into 'root'.")
    image_size: int | None = Field(None, ge=8, le=1024, description="Resize ImageFolder images.")
    channels: Annotated[ImageChannels, WithJsonSchema(_CHANNELS_SCHEMA)] = Field(
        "auto", description="Read ImageFolder images as 1 (grey) or 3 (RGB) channels; 'auto': 1 "
        "when every image of the tree is greyscale (Pillow modes 1, L, LA, I;16, grey "
        "palettes), else 3.")
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    # At least 2: the validation split takes one example or more from the capped pool and
    # training needs one left (a cap of 1 passed here and failed when the data was loaded).
    max_train_examples: int | None = Field(
        None, ge=2, description="Cap on the training pool, validation split included.")
    max_test_examples: int | None = Field(None, ge=1)
    augment: Literal["auto", "none", "crop_flip", "crop"] = Field(
        "auto", description="Training augmentation; 'auto': crop+flip for natural images, "
        "crop only for digits/mnist/svhn.")

    @model_validator(mode="after")
    def _check_location(self) -> DatasetSpec:
        if self.name in ("npz", "imagefolder") and not self.path:
            raise SettingValueError(f"dataset '{self.name}' needs 'path'", "path")
        return self

    @field_validator("image_size")
    @classmethod
    def _resizes_imagefolder_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Other sources ignored it: an npz "resized" to 32 px ran at its stored size.
        name = info.data.get("name")
        if value is not None and name not in (None, "imagefolder"):
            if from_storage(info):
                return None  # a job accepted before the check ran at the stored size
            raise ValueError(f"'image_size' resizes 'imagefolder' images only; '{name}' images "
                             "are used at their stored size")
        return value

    @field_validator("channels")
    @classmethod
    def _chooses_imagefolder_channels_only(cls, value: ImageChannels,
                                           info: ValidationInfo) -> ImageChannels:
        # Other sources have a fixed layout (npz's array shape, a built-in's format).
        name = info.data.get("name")
        if value != "auto" and name not in (None, "imagefolder"):
            raise ValueError(f"'channels' chooses how 'imagefolder' images are read; '{name}' "
                             "images have the channels they are stored with")
        return value


class DomainBounds(_Strict):
    """Per-feature (or per-channel) bounds of valid inputs; one value applies to all."""

    lower: list[float] = Field(min_length=1, max_length=1_000_000)
    upper: list[float] = Field(min_length=1, max_length=1_000_000)

    @model_validator(mode="after")
    def _ordered(self) -> DomainBounds:
        if len(self.lower) != len(self.upper):
            raise SettingValueError("'lower' and 'upper' must have the same length", "upper")
        if any(lo > hi for lo, hi in zip(self.lower, self.upper, strict=True)):
            raise SettingValueError("every 'lower' bound must be <= its 'upper' bound", "lower")
        return self


class AttackSpec(_Strict):
    """PGD. ``eps`` and ``step_size`` are in input units (for [0, 1] images, 8/255 is 8 grey
    levels). ``domain`` is the set adversarial inputs are kept in."""

    domain: Literal["auto", "unit", "none"] | DomainBounds = Field(
        "auto", description="'unit': clamp to [0, 1] (images); 'none': no bounds (feature "
        "vectors); {'lower', 'upper'}: per-feature bounds; 'auto': 'unit' for images, 'none' "
        "for feature vectors (npz of shape (N, F)).")
    norm: Norm = "linf"
    eps: float = Field(8 / 255, ge=0.0, le=64.0)
    step_size: float = Field(2 / 255, gt=0.0, le=64.0)
    steps: int = Field(10, ge=0, le=1000)
    random_start: bool = True


class MRCSpec(_Strict):
    """Module Robust Criticality (docs/algorithm.md, step 1)."""

    eps: float = Field(0.1, gt=0.0, le=10.0, description="Relative radius of the weight ball.")
    # A union, not Literal[2, "inf"]: a Literal matches 2.0 by equality even in a strict parse,
    # so a job's "p": 2.0 was read as 2 where every integer setting refuses 2.0 ("write 2").
    # As an int, 2 follows the integer rules: 2.0 refused in JSON configs, taken in Python.
    p: Annotated[int, Field(ge=2, le=2)] | Literal["inf"] = Field(
        2, description="Order of the norm of the weight ball: the integer 2 (Frobenius) or the "
        "text 'inf' (largest absolute entry). No other order is implemented; float('inf') is "
        "not taken for 'inf'.")
    steps: int = Field(10, ge=1, le=1000, description="Ascent passes over the adversarial set.")
    lr: float = Field(1.0, gt=0.0, le=1e6, description="Gradient-ascent learning rate.")
    batch_size: int = Field(512, ge=1, le=65536)
    num_examples: int = Field(1024, ge=1, le=1_000_000,
                              description="Adversarial examples drawn from the training split.")
    include: list[str] = Field(default_factory=list,
                               description="fnmatch patterns; if given, only matching modules.")
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns to skip.")
    modules: list[str] | None = Field(None, description="Exactly these modules (a subset).")
    engine: Literal["auto", "cached", "full"] = Field(
        "auto", description="'cached' recomputes only the network after the module (needs "
        "torch.fx tracing); 'full' runs the whole network; 'auto' falls back when tracing fails.")
    shards: int = Field(
        1, ge=1, le=256, description="Split the modules into this many shards, each scored by "
        "its own worker task on the same stored adversarial set (1: one task scores them all).")
    ascent: Literal["sgd", "normalized"] = Field(
        "normalized", description="Ascent step per batch. 'sgd': lr · g (the reference code's rule; "
        "not scale invariant). 'normalized': lr · radius · g/||g||_2 for p = 2, lr · radius · "
        "sign(g) for p = 'inf' (a step in units of the ball, so MRC is invariant to Theorem "
        "A.4's rescaling; the default, chosen from bench/ascent.py). See docs/algorithm.md.")
    allow_negative: bool = Field(
        False, description="MRC = largest loss the ascent reached minus the baseline, without "
        "counting Δ = 0 (the reference code's value, can be negative). Default: Δ = 0 counts, "
        "so MRC >= 0.")
    split: Literal["train", "test"] = Field(
        "train", description="Split the adversarial MRC set is drawn from; the reference code "
        "uses the test split.")
    reshuffle: bool = Field(
        False, description="Draw a new batch order of the adversarial set for every ascent "
        "pass (the reference code does); default: the same batches every pass.")
    module_batch: Annotated[int, Field(ge=1, le=MAX_MODULE_BATCH)] | Literal["auto"] = Field(
        1, description="Modules whose ascent passes run together, as K perturbed copies of "
        "each batch in one forward/backward (torch.func.vmap over stacked weights): the same "
        "table up to float rounding, for more memory and some recomputation; halved on "
        "out-of-memory. fp32 only (precision bf16 scores one module at a time). 'auto': 1 on "
        "a CPU (measured: no gain there) or in bf16, 4 on an accelerator (not yet measured on "
        "one). Default 1: one module at a time.")
    table: Literal["full", "selection"] = Field(
        "full", description="'full': every module runs all mrc.steps passes, so every row is its "
        "exact MRC (the default: the whole table is evidence). 'selection': the same chosen "
        "module(s) (the finetune.candidates lowest, and finetune.module if named) with far "
        "fewer passes: every module is screened with one pass, then modules are resumed lowest "
        "first and a module stops as soon as its running MRC (a lower bound: MRC only grows "
        "with passes) is above the k-th lowest complete one. Rows stopped early carry a lower "
        "bound (exact = false, passes < mrc.steps), not their MRC; the chosen rows are exact "
        "and equal to the full table's. Scores one module at a time (mrc.module_batch is "
        "ignored). See rift/mrc_selection.py.")

    @field_validator("module_batch", mode="before")
    @classmethod
    def _auto_or_group_size(cls, value: object) -> object:
        # A union's members each refused a bad value in their own words, and the first error's
        # path carried pydantic's member tag: the API named "config.mrc.module_batch.
        # constrained-int", no field of the request. One check, one message, the field itself.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                               and 1 <= value <= MAX_MODULE_BATCH):
            return value
        hint = ""
        if isinstance(value, str) and value.strip().lower() == "auto":
            hint = "; did you mean 'auto'?"
        elif isinstance(value, float) and value.is_integer():
            hint = f"; write {int(value)}"
        raise ValueError(f"'auto' or a whole number of modules from 1 to {MAX_MODULE_BATCH}"
                         f"{hint}")

    @field_validator("p", mode="wrap")
    @classmethod
    def _norm_order(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        # The union's members each refused a bad value in their own words (as module_batch's
        # did); one error, typed as the member that refused: "int_type" for a 2.0 in strict
        # JSON (the "write 2" hint), else the choice list ("Inf": "did you mean 'inf'?").
        try:
            return handler(value)
        except ValidationError as exc:
            if isinstance(value, bool):  # _no_booleans_for_numbers' own words
                raise
            kinds = {error["type"] for error in exc.errors()}
        if "int_type" in kinds and isinstance(value, float):
            raise PydanticCustomError("int_type", "Input should be 2 or 'inf'") from None
        raise PydanticCustomError("literal_error", "Input should be 2 or 'inf'",
                                  {"expected": "2 or 'inf'"}) from None

    @field_validator("include", "exclude", "modules", mode="before")
    @classmethod
    def _digit_names_as_text(cls, value: Any) -> Any:
        # [0, 4] for the children of an nn.Sequential was refused "Input should be a valid
        # string", saying neither why nor how to quote them.
        return [_number_as_name(item) for item in value] if isinstance(value, list) else value

    @field_validator("modules")
    @classmethod
    def _each_module_once(cls, value: list[str] | None,
                          info: ValidationInfo) -> list[str] | None:
        # A module named twice was listed (and costed) twice for one score.
        if value is not None and len(set(value)) < len(value):
            if from_storage(info):
                return list(dict.fromkeys(value))  # the one score each such job got
            raise ValueError(f"each module may appear once; repeated: {repeated(value)}")
        return value


class FinetuneSpec(_Strict):
    """Fine-tune one module on clean data (docs/algorithm.md, step 2)."""

    module: str | None = Field(None, description="Module to tune; default: lowest MRC.")
    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    batch_size: int = Field(128, ge=1, le=65536)
    lr_milestones: list[int] = Field(
        default_factory=lambda: [5], description="Epochs after which the learning rate is "
        "multiplied by lr_gamma; one at or past 'epochs' never acts (a warning event, except for "
        "the default).")
    lr_gamma: float = Field(0.1, gt=0.0, le=1.0)
    bn_stats: Literal["update", "freeze"] = "update"
    candidates: int = Field(
        1, ge=1, le=64, description="Fine-tune the k lowest-MRC modules, each with its own "
        "interpolation curve; the α rule then picks across all of them (seed, Fig. C.5).")
    lr_grid: list[float] | None = Field(
        None, min_length=1, max_length=16, description="Learning rates to try for every "
        "candidate module (seed, C.3); None: just 'lr'.")

    @field_validator("module", mode="before")
    @classmethod
    def _digit_name_as_text(cls, value: Any) -> Any:
        # 4 for an nn.Sequential's child "4" (only ``--set`` took it, as the text typed).
        return _number_as_name(value)

    @field_validator("module")
    @classmethod
    def _names_a_module(cls, value: str | None, info: ValidationInfo) -> str | None:
        # "" is falsy: the single-module run took it as "not given" (the lowest-MRC module), a
        # sweep as a module name. Either reading would surprise someone; ask for one.
        if value is not None and not value.strip():
            if from_storage(info):
                return None  # as the single run took it (a sweep found no module '' and failed)
            raise ValueError("'module' must name a module, e.g. 'layer4.1.conv2'; leave it out "
                             "(or null) to tune the lowest-MRC module")
        return value

    @field_validator("lr_grid")
    @classmethod
    def _positive_rates(cls, value: list[float] | None,
                        info: ValidationInfo) -> list[float] | None:
        if value is not None and any(not (0.0 < lr <= 10.0) for lr in value):
            raise ValueError("every learning rate must lie in (0, 10]")
        if value is not None and len(set(value)) < len(value):
            if from_storage(info):
                return list(dict.fromkeys(value))  # the twin candidates gave the same result
            # The same (module, lr) twice would fine-tune and attack the same candidate twice.
            raise ValueError(f"each learning rate may appear once; repeated: {repeated(value)}")
        return value
    selection_split: Literal["validation", "test"] = Field(
        "validation", description="'validation': train on the training split less the "
        "validation split and keep the best validation epoch; 'test' (the reference code): "
        "train on all training data and keep the best test epoch.")

    @field_validator("lr_milestones")
    @classmethod
    def _sorted_positive(cls, value: list[int], info: ValidationInfo) -> list[int]:
        # Strictly: [5, 5] decayed twice after epoch 5 (lr_gamma²), a likely typo for [5, 10].
        # A stored job's [5, 5] keeps that meaning (MultiStepLR counts a repeated milestone).
        repeats_allowed = from_storage(info)
        if any(m < 1 for m in value) or any(
                a > b or (a == b and not repeats_allowed) for a, b in itertools.pairwise(value)):
            raise ValueError("milestones must be positive epoch numbers in increasing order, "
                             "each once")
        return value


class InterpolationSpec(_Strict):
    """θ_α = (1 − α) θ_AT + α θ_FT over an α grid (docs/algorithm.md, step 3)."""

    alpha_step: float = Field(0.05, ge=1e-4, le=1.0,
                              description="Grid step; at most 10,001 points (step >= 1e-4).")
    robust_tolerance: float = Field(
        0.0, ge=0.0, le=100.0,
        description="Percentage points of robust accuracy the chosen α may lose vs θ_AT.")
    selection_split: Literal["test", "validation"] = Field(
        "test", description="Split the α curve is measured and chosen on. 'test' follows the "
        "paper's Algorithm 2; 'validation' keeps the test numbers of the chosen α unseen.")
    curve: Literal["full", "selection"] = Field(
        "selection", description="'selection' attacks only the α points that can change the "
        "choice, each only until its verdict is certain (the same α and chosen robust accuracy "
        "as the full grid, far fewer attacked examples; the other points get no robust accuracy, "
        "or only robust_accuracy_at_most); 'full' measures robust accuracy at every α.")


class PreflightSpec(_Strict):
    """θ_AT's accuracy on a sample of the test split before any stage (docs/algorithm.md)."""

    examples: int = Field(256, ge=0, le=100_000,
                          description="Test examples measured; 0 skips the check.")
    margin: float = Field(10.0, ge=0.0, le=100.0,
                          description="Percentage points above chance the clean accuracy must "
                          "reach, else the run fails at once.")


class EvaluationSpec(_Strict):
    batch_size: int = Field(256, ge=1, le=65536)
    max_examples: int | None = Field(
        None, ge=1, description="Cap on the examples each evaluation measures: the first "
        "max_examples of the split the α curve is measured on (interpolation.selection_split) "
        "and, when that is the validation split, of the test split for before/after. The "
        "fine-tuning's epoch choice measures its whole split.")
    fold_batchnorm: Literal["auto", "off"] = Field(
        "auto", description="Evaluations (clean passes and PGD of the interpolation stage) run a "
        "copy of the model with each eval-mode BatchNorm folded into the convolution before it: "
        "the same function up to float rounding, measured 6 % less CPU time for a ResNet-18 "
        "interpolation stage on a CPU. 'auto' (default): on a CPU in fp32, for models torch.fx can trace, "
        "each BatchNorm whose fold is exact for any weights (checked against the model once per "
        "stage); 'off': never, for results bit-identical to "
        "the unfolded model's (a PGD step follows the gradient's sign, so rounding can move an "
        "example's adversarial image).")


# What ``protocol: "reference"`` sets: the public reference code's choices (docs/algorithm.md,
# "Reference protocol"), section → field → value.
REFERENCE_PROTOCOL: dict[str, dict[str, object]] = {
    "mrc": {"ascent": "sgd", "lr": 1.0, "eps": 0.1, "p": 2, "steps": 10, "split": "test",
            "allow_negative": True, "reshuffle": True},
    "finetune": {"selection_split": "test"},
    "interpolation": {"alpha_step": 0.1, "selection_split": "test", "robust_tolerance": 0.1},
}


def dataset_names() -> tuple[str, ...]:
    """The values ``dataset.name`` takes, in the order the schema lists them."""
    return get_args(DatasetSpec.model_fields["name"].annotation)


def unused_settings(tree: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Settings a config as given (JSON, before defaults) sets that the run would not use, as
    (path, why) pairs. Checked where a config is first given (the API's job creation, the CLI),
    not in RiftConfig: a stored config writes out every setting, the unused ones too.

    Now: ``finetune.lr`` beside a ``finetune.lr_grid`` without it (the grid's rates are the ones
    run; the lr was dropped without a word); ``dataset.path`` on a dataset read from ``root``
    or built in, ``dataset.root`` on one read from ``path`` or built in (``--dataset digits
    --data-path mine.npz`` ran on the digits, the file never opened).
    """
    return [*_unused_lr(tree), *_unused_dataset_location(tree)]


def _unused_lr(tree: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    finetune = tree.get("finetune")
    if not isinstance(finetune, Mapping) or "lr" not in finetune:
        return []
    grid, lr = finetune.get("lr_grid"), finetune["lr"]
    if isinstance(grid, list) and lr not in grid:
        return [(("finetune", "lr"), f"'lr_grid' sets the rates that are run and {lr!r} is not "
                 "among them: add it to 'lr_grid', or leave 'lr' out")]
    return []


#: Which datasets read their files from ``path`` and which from ``root`` (the rest are built
#: into a package: ``digits``).
_PATH_DATASETS = ("npz", "imagefolder")
_ROOT_DATASETS = ("cifar10", "cifar100", "svhn", "mnist")


def _unused_dataset_location(tree: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    dataset = tree.get("dataset")
    if not isinstance(dataset, Mapping) or not isinstance(dataset.get("name"), str):
        return []
    name = dataset["name"]
    if name not in (*_PATH_DATASETS, *_ROOT_DATASETS, "digits"):
        return []  # an unknown name: the schema's "did you mean" says the rest
    own = ("'digits' is scikit-learn's, bundled with it" if name == "digits" else
           f"'{name}' reads 'path'" if name in _PATH_DATASETS else f"'{name}' reads 'root'")
    found: list[tuple[tuple[str, ...], str]] = []
    if dataset.get("path") is not None and name not in _PATH_DATASETS:
        found.append((("dataset", "path"), f"'path' is read by the 'npz' and 'imagefolder' "
                      f"datasets only and {own}: for your own data set 'name' to 'npz' or "
                      "'imagefolder', or leave 'path' out"))
    if dataset.get("root") is not None and name not in _ROOT_DATASETS:
        found.append((("dataset", "root"), f"'root' is the folder of the "
                      f"{', '.join(_ROOT_DATASETS)} files and {own}: leave 'root' out"))
    return found


def check_seed(seed: int) -> None:
    """The rule of ``RiftConfig.seed`` for functions that take a seed directly.

    Raises:
        ConfigError: (field ``seed``) outside [0, MAX_SEED].
    """
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be between 0 and {MAX_SEED}; got {seed}", field="seed")


class RiftConfig(_Strict):
    """Everything one RiFT run needs except the checkpoint itself."""

    protocol: Literal["default", "reference"] = Field(
        "default", description="'reference': reproduce the reference code's choices (MRC set "
        "from the test split, negative MRC, batches reshuffled each pass, α step 0.1 with 0.1 "
        "points of robust tolerance, fine-tuning on all training data with the best epoch "
        "picked on test); the fields it sets are listed in docs/algorithm.md.")

    architecture: ArchitectureSpec
    dataset: DatasetSpec
    checkpoint_entry: str | None = Field(
        None, min_length=1, max_length=MAX_CHECKPOINT_ENTRY_CHARS, pattern=r"^[^\x00-\x1f]+$",
        description="Which weights of the checkpoint to tune when it holds several (a model and "
        "its EMA, a student and its teacher): the key path of the entry, e.g. 'ema', "
        "'state_dict_ema' or 'model.state_dict'. Needed only then; a file with one set of "
        "weights may name its entry or leave this out.")
    attack: AttackSpec = Field(default_factory=AttackSpec)
    mrc: MRCSpec = Field(default_factory=MRCSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    interpolation: InterpolationSpec = Field(default_factory=InterpolationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    preflight: PreflightSpec = Field(default_factory=PreflightSpec)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    @model_validator(mode="after")
    def _apply_protocol(self) -> RiftConfig:
        if self.protocol == "reference":
            for section, values in REFERENCE_PROTOCOL.items():
                spec = getattr(self, section)
                # A setting given with another value was silently replaced ("mrc": {"steps": 3}
                # ran 10 passes): the two asks contradict each other, so say so.
                for name, value in values.items():
                    if name in spec.model_fields_set and getattr(spec, name) != value:
                        raise SettingValueError(
                            f"protocol 'reference' sets {section}.{name} to {value!r}; "
                            f"leave {section}.{name} out, or use protocol 'default' to set it",
                            section, name)
                object.__setattr__(self, section, spec.model_copy(update=values))
        return self

    deterministic: bool = Field(
        True, description="Deterministic GPU kernels: the same seed on the same device gives the "
        "same result (slower on GPU; no effect on CPU).")


#: The validation context of a stored spec (:func:`stored_config`).
STORED_SPEC_CONTEXT = "stored_spec"


def from_storage(info: ValidationInfo) -> bool:
    """Whether the settings being checked are a stored job's, read back (:func:`stored_config`),
    rather than a new request's."""
    return isinstance(info.context, Mapping) and bool(info.context.get(STORED_SPEC_CONTEXT))


def stored_config(spec: Mapping[str, Any]) -> RiftConfig:
    """A job's stored config (``jobs.spec``), read as the release that accepted it ran it.

    Checks added since refuse settings that earlier releases accepted, stored and ran: there,
    each such setting takes the meaning it had when the job ran (``dataset.image_size`` on a
    source other than ``imagefolder``: ignored; a module in ``mrc.modules`` or a rate in
    ``finetune.lr_grid`` given twice: once; ``finetune.module`` blank: not given; a repeated
    ``finetune.lr_milestones`` entry: decays twice). Before, a worker refused such a job's
    config: its materializations failed with "ValidationError", and a job queued or running
    across the upgrade failed its stage three times. New requests stay as strict as before
    (:class:`RiftConfig` ``.model_validate``)."""
    return RiftConfig.model_validate(dict(spec), context={STORED_SPEC_CONTEXT: True})


def as_config(config: RiftConfig | Mapping[str, Any]) -> RiftConfig:
    """``config`` as a RiftConfig: a mapping of settings (a dict in a notebook, a job's JSON
    config) is validated as ``RiftConfig.model_validate`` validates it. Before, a dict reached
    the run and failed inside with "'dict' object has no attribute 'seed'".

    Raises:
        ConfigError: the settings are invalid; the message names each setting at fault in the
            CLI's words ("finetune.epoch: unknown setting 'epoch'; did you mean 'epochs'?"),
            ``field`` the first, and pydantic's ``ValidationError`` is its ``__cause__``.
        TypeError: ``config`` is neither, e.g. a config file's path (read it first).
    """
    if isinstance(config, RiftConfig):
        return config
    if isinstance(config, Mapping):
        try:
            return RiftConfig.model_validate(dict(config))
        except ValidationError as exc:
            # pydantic's own text named the key but not the one meant (the CLI did).
            message, field = describe_errors(exc.errors(), RiftConfig)
            raise ConfigError(message, field=field or None) from exc
    hint = (": read the file first, RiftConfig.model_validate_json(Path(...).read_text()), "
            "or use `python -m rift run --config`"
            if isinstance(config, str | bytes) or hasattr(config, "__fspath__") else "")
    raise TypeError(f"config must be a RiftConfig or a dict of settings, not a "
                    f"{type(config).__name__}{hint}")
