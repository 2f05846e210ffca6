"""The paper's sweeps: fine-tune several candidate modules and learning rates, one interpolation
curve each, and let the α rule pick across all of them (seed C.3 and Figure C.5).

``finetune.candidates = k`` takes the k lowest-MRC modules (or the module the user named), and
``finetune.lr_grid`` the learning rates; every (module, lr) pair is one *candidate*: a fine-tune
from θ_AT and its interpolation curve. α = 0 is θ_AT for every candidate, so all curves share the
same robust bar, and the rule over the union of the curves is the rule applied to each curve's
own choice: best clean accuracy, then higher robust accuracy, then smaller α, then the earlier
candidate (lower MRC, then the order of ``lr_grid``).

A candidate whose fine-tuning diverged in its first epoch (``rift.errors.FinetuneDiverged``: no
finite epoch to keep) is *excluded* (:class:`ExcludedCandidate`): it keeps its place in the list
with the reason, and the rule picks among the others. Only when every candidate is excluded does
the sweep fail (:func:`choose_across`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rift.config import RiftConfig
from rift.errors import ConfigError, NumericalError
from rift.mrc import lowest_rows
from rift.rate_text import rate_text


@dataclass(frozen=True)
class Candidate:
    module: str
    lr: float


@dataclass
class CandidateOutcome:
    """One fine-tune + interpolation: the curve and the point its own curve chose."""

    candidate: Candidate
    chosen_alpha: float
    clean_accuracy: float
    robust_accuracy: float
    points: list[dict[str, float | None]]
    best_epoch: int
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"module": self.candidate.module, "lr": self.candidate.lr,
                "chosen_alpha": self.chosen_alpha, "clean_accuracy": self.clean_accuracy,
                "robust_accuracy": self.robust_accuracy, "best_epoch": self.best_epoch,
                "points": self.points}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateOutcome:
        """The outcome :meth:`to_json` wrote (without weights)."""
        return cls(Candidate(str(data["module"]), float(data["lr"])),
                   float(data["chosen_alpha"]), float(data["clean_accuracy"]),
                   float(data["robust_accuracy"]), list(data["points"]), int(data["best_epoch"]))


@dataclass(frozen=True)
class ExcludedCandidate:
    """A candidate left out of the pick: its fine-tuning diverged in the first epoch, so it has
    no θ_FT and no curve. ``reason`` is the error's message, ``field`` the setting it names."""

    candidate: Candidate
    reason: str
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"module": self.candidate.module, "lr": self.candidate.lr, "excluded": True,
                "reason": self.reason, "field": self.field, "points": []}


def outcome_from_json(data: Mapping[str, Any]) -> CandidateOutcome | ExcludedCandidate:
    """What :meth:`CandidateOutcome.to_json` or :meth:`ExcludedCandidate.to_json` wrote."""
    if data.get("excluded"):
        return ExcludedCandidate(Candidate(str(data["module"]), float(data["lr"])),
                                 str(data["reason"]), data.get("field"))
    return CandidateOutcome.from_json(data)


def candidates_from_mrc(rows: Sequence[Mapping[str, Any]], *, k: int, module: str | None,
                        lrs: Sequence[float]) -> list[Candidate]:
    """The (module, lr) pairs to try: ``module`` if named, else the ``k`` lowest-MRC modules
    (ordered as the selection rule orders them, remaining ties in table order), each with every
    rate of ``lrs``."""
    if not lrs:
        raise ConfigError("no learning rate to try", field="finetune.lr_grid")
    if module is not None:
        modules = [module]
    else:
        if not rows:
            raise ConfigError("the MRC table is empty", field="mrc")
        # The selection rule's order (MRC, then the ascent's own maximum), then table order;
        # never a row holding a lower bound (mrc.table = "selection").
        modules = [str(rows[i]["name"]) for i in lowest_rows(rows, k)]
    return [Candidate(name, float(lr)) for name in modules for lr in lrs]


def sweep_candidates(config: RiftConfig, rows: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """The job's candidates: :func:`candidates_from_mrc` with the config's ``finetune``
    settings (``lr_grid``, else the one ``lr``)."""
    finetune = config.finetune
    return candidates_from_mrc(rows, k=finetune.candidates, module=finetune.module,
                               lrs=finetune.lr_grid or [finetune.lr])


def fewer_modules_than_asked(config: RiftConfig, candidates: Sequence[Candidate],
                             rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Why fewer modules are tried than ``finetune.candidates`` asks for, or None: the run goes
    on with them, but the user asked for more and should be told."""
    wanted = config.finetune.candidates
    tried = len({candidate.module for candidate in candidates})
    if tried >= wanted:
        return None
    flagged = [str(row["name"]) for row in rows if row.get("zero_gradient")]
    never = (f" that can be chosen ({len(flagged)} more flagged zero_gradient: "
             f"{', '.join(flagged)})" if flagged else "")
    reason = (f"finetune.module names {config.finetune.module!r}, which is tuned alone"
              if config.finetune.module is not None
              else f"the MRC table has only {len(rows) - len(flagged)} module(s){never}")
    return f"finetune.candidates is {wanted} but {tried} module(s) are tried: {reason}"


def is_sweep(config: RiftConfig) -> bool:
    """Whether the job fine-tunes more than one (module, lr) candidate."""
    return config.finetune.candidates > 1 or config.finetune.lr_grid is not None


def curves_document(outcomes: Sequence[CandidateOutcome | ExcludedCandidate]) -> dict[str, Any]:
    """``curves.json`` and ``result.json["sweep"]``: every candidate's curve side by side (an
    excluded one with ``"excluded": true`` and its reason) and the index :func:`choose_across`
    picks."""
    return {"chosen": choose_across(outcomes), "candidates": [o.to_json() for o in outcomes],
            "excluded": [i for i, o in enumerate(outcomes) if isinstance(o, ExcludedCandidate)]}


def choose_across(outcomes: Sequence[CandidateOutcome | ExcludedCandidate]) -> int:
    """Index of the winning candidate under the α rule over all curves (see module docstring),
    excluded candidates left out.

    Raises:
        ConfigError: (field ``finetune.candidates``) no candidate at all.
        ConfigError: (field ``finetune.module``) every candidate was excluded, one of them
            refused for a zero gradient (each reason given).
        NumericalError: every candidate diverged (field ``finetune.lr_grid``, or
            ``finetune.lr`` for a sweep over modules at one rate: the setting to lower).
    """
    if not outcomes:
        raise ConfigError("no candidate was fine-tuned", field="finetune.candidates")
    finished = {i: o for i, o in enumerate(outcomes) if isinstance(o, CandidateOutcome)}
    if not finished:
        excluded = [o for o in outcomes if isinstance(o, ExcludedCandidate)]
        refused = [o for o in excluded if o.field == "finetune.module"]
        if refused:  # not (all) a divergence: a module refused for a zero gradient
            raise ConfigError(
                "every candidate of the sweep was excluded: " + "; ".join(
                    f"{o.candidate.module!r} at lr {o.candidate.lr:g}: {o.reason}"
                    for o in excluded), field="finetune.module")
        field = excluded[0].field or "finetune.lr_grid"
        shown = "; ".join(f"{o.candidate.module!r} at lr {rate_text(o.candidate.lr)}" for o in excluded)
        raise NumericalError(
            f"fine-tuning diverged in the first epoch for every candidate of the sweep "
            f"({shown}): no candidate has a finite θ_FT; use smaller rates in {field}",
            field=field)
    return min(finished, key=lambda i: (
        -finished[i].clean_accuracy, -finished[i].robust_accuracy, finished[i].chosen_alpha, i))
