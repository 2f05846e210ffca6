"""Warnings on what a run measured, not on its settings (those are ``rift.run_warnings``): the run
goes on, but a figure it measured says its result means little. Each is a ``warning`` event.

* **θ_AT not robust under the job's attack** (:func:`not_robust_warning`): a robust accuracy of
  exactly 0 % on θ_AT, from the preflight's sample when the preflight ran, else from the MRC
  baseline on the MRC adversarial set. Not one example withstands the attack: the checkpoint is
  not adversarially trained, or not for this attack (``attack.eps``/``norm``/``steps``), or is fed
  inputs on another scale (``architecture.normalization``). Then MRC scores modules on examples
  the model already gets all wrong (an untrained torchvision mobilenet_v3_small on random data:
  every module's MRC exactly 0), the α rule's bar (robust accuracy at least θ_AT's) is met by
  every α, and the chosen module rests on nothing. Only exactly 0: an adversarially trained
  checkpoint's robust accuracy varies with the data (about 50 % on CIFAR-10, 25 % on CIFAR-100,
  lower on harder sets and stronger attacks), so no fixed small figure above 0 separates "weakly
  robust" from "not robust"; none of n examples surviving is unambiguous.
* **An MRC choice decided by a tie** (:func:`tie_warning`): the chosen module's MRC equals,
  exactly, that of another exact row, or with ``finetune.candidates: k`` the k-th lowest ties
  with a row left out. The selection rule then chose by the ascent's ``max_ascent_loss``, or by
  definition order if that ties too (``rift.mrc.lowest_rows``): not by robust criticality. Rows
  holding lower bounds (``mrc.table: "selection"``, ``exact`` False) do not count.

:func:`mrc_table_warnings` is the check of a finished MRC table, a pure function of the table:
the library's MRC stage (``rift.pipeline.run_mrc_stage``) and the merge of a sharded stage in the
service (``worker.shards.merge_if_complete``, which builds the table without that stage) both
call it, so a table warns alike however it was computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rift.config import RiftConfig
from rift.mrc import lowest_rows, selection_key, selection_order
from rift.run_warnings import RunWarning

#: Modules named in a tie warning; the rest are counted.
NAMED_MODULES = 6


def not_robust_warning(config: RiftConfig, robust_accuracy: float | None, measured_on: str,
                       stage: str) -> RunWarning | None:
    """The warning of θ_AT's ``robust_accuracy`` (percent) of exactly 0, measured on what
    ``measured_on`` says (e.g. "the preflight's 256 test examples"), else None."""
    if robust_accuracy is None or robust_accuracy != 0.0:
        return None
    attack = config.attack
    normalization = config.architecture.normalization or (
        "mean/std given" if config.architecture.mean is not None else "none")
    return RunWarning(stage, (
        f"θ_AT's robust accuracy is 0 % on {measured_on}, under PGD with attack.norm "
        f"{attack.norm}, attack.eps {attack.eps:.4g}, attack.steps {attack.steps}: not one "
        "example withstands the attack, so the checkpoint is not robust under it. It may not "
        "be adversarially trained, or trained for another attack (check attack.eps/norm/steps), "
        f"or fed inputs on another scale (architecture.normalization: {normalization}). MRC "
        "then scores modules on adversarial examples the model already gets all wrong, the α "
        "rule's bar (robust accuracy at least θ_AT's 0 %) is met by every α, and the module "
        "chosen means little"))


def tie_warning(rows: Sequence[Mapping[str, Any]], candidates: int) -> RunWarning | None:
    """The warning of an MRC choice of ``candidates`` modules that a tie decided (module
    docstring), else None. ``rows``: MRC table rows as dicts, in table (definition) order."""
    if not rows:
        return None
    chosen = lowest_rows(rows, candidates)
    last = chosen[-1]  # the k-th lowest: the boundary between tried and left out
    value = float(rows[last]["mrc"])

    def exact_at_value(index: int) -> bool:
        # A row flagged zero_gradient (rift.mrc_zero_gradient) is never chosen: no rival.
        return (rows[index].get("exact") is not False and not rows[index].get("zero_gradient")
                and float(rows[index]["mrc"]) == value)

    left_out = [i for i in selection_order(rows) if i not in chosen and exact_at_value(i)]
    if not left_out:
        return None
    tied = [i for i in range(len(rows)) if exact_at_value(i)]
    names = ", ".join(str(rows[i]["name"]) for i in tied[:NAMED_MODULES])
    more = f" and {len(tied) - NAMED_MODULES} more" if len(tied) > NAMED_MODULES else ""
    winner, runner_up = rows[last], rows[left_out[0]]
    winner_key = selection_key(value, winner.get("max_ascent_loss"))
    runner_up_key = selection_key(value, runner_up.get("max_ascent_loss"))
    if winner_key < runner_up_key:
        broken = (f"the ascent's max_ascent_loss ({_loss_text(winner_key[1])} for "
                  f"{winner['name']} against {_loss_text(runner_up_key[1])} for "
                  f"{runner_up['name']})")
    else:
        broken = ("definition order (they tie on the ascent's max_ascent_loss too: "
                  f"{_loss_text(winner_key[1])})")
    if candidates == 1:
        what = f"{winner['name']} was chosen"
        advice = "name one with finetune.module, or try several with finetune.candidates"
    else:
        what = (f"finetune.candidates is {candidates}: its {_ordinal(candidates)} lowest, "
                f"{winner['name']}, was tried and {len(left_out)} tied module(s) left out")
        advice = (f"raise finetune.candidates to {candidates + len(left_out)} to try them all, "
                  "or name one with finetune.module")
    zero = (": no ascent pass raised their robust loss above θ_AT's" if value == 0.0 else "")
    return RunWarning("mrc", (
        f"the MRC choice is decided by a tie: {len(tied)} modules have MRC exactly "
        f"{value:.6g} ({names}{more}){zero}; {what} by {broken}, not by robust criticality. "
        f"MRC does not tell these modules apart: {advice}"))


def mrc_table_warnings(config: RiftConfig, rows: Sequence[Mapping[str, Any]], *,
                       baseline_robust_accuracy: float, examples: int) -> list[RunWarning]:
    """The warnings of a finished MRC table (module docstring): θ_AT's ``baseline_robust_accuracy``
    on the MRC set of ``examples`` adversarial examples, when no preflight measured θ_AT
    (``preflight.examples: 0``; else the preflight warned on its own figure), and a choice
    decided by a tie, unless ``finetune.module`` names the module (no choice is made)."""
    found: list[RunWarning] = []
    if config.preflight.examples == 0:
        split = "test" if config.mrc.split == "test" else "training"
        not_robust = not_robust_warning(
            config, baseline_robust_accuracy,
            f"the MRC set's {examples} adversarial examples from the {split} split (the MRC "
            "baseline; preflight.examples is 0, so no preflight measured it)", "mrc")
        if not_robust is not None:
            found.append(not_robust)
    if config.finetune.module is None:
        tie = tie_warning(rows, config.finetune.candidates)
        if tie is not None:
            found.append(tie)
    return found


def _loss_text(value: float) -> str:
    return "not recorded" if value == float("inf") else f"{value:.6g}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
