"""Time the library's MRC (fx-cached segments) against the reference code's cost, side by side.

The baseline is ``bench/reference_cost.py``: the reference code's cost model (only the scored weight
requires grad, a deep copy of the model per module, batches reshuffled every pass, a separate
measuring pass after each ascent pass). ``--plain`` adds the older "plain" baseline of
``rift.mrc_reference`` (gradients of every parameter), which is slower than the reference code.

Both compute the same protocol (same adversarial set, same number of ascent passes and loss
measurements) on ResNet-18 with CIFAR-shaped inputs; prints one JSON document with both times,
their ratio, the Spearman correlation of the two module rankings and whether both pick the same
lowest-MRC module. Random weights (with randomised BatchNorm statistics) stand in for a trained
checkpoint: the cost does not depend on the values.

    .venv/bin/python bench/mrc.py                       # CPU-sized protocol (a few minutes)
    .venv/bin/python bench/mrc.py --examples 1024 --steps 10 --batch-size 512   # reference protocol

``--module-batch K [K ...]`` instead times the cached engine one module at a time against
``mrc.module_batch`` = K (``rift.mrc_stacked``), interleaved over ``--repeats`` rounds in one
process, and prints that comparison (median wall and CPU seconds, speed-up, largest MRC difference,
same lowest module):

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/mrc.py --module-batch 2 4 --repeats 3

``--table-selection`` instead times ``mrc.table = "selection"`` (``rift.mrc_selection``: the same
chosen module with fewer passes) against the full table and the reference cost, side by side in
one process, with ``--screen`` settings of the passes every module gets first; ``--digits PATH``
runs it on the trained digits checkpoint (``rift.demo``) with the demo's MRC settings instead of a
random-weight ResNet. Prints passes of each, their ratio, wall and CPU seconds, speed-ups over
the reference cost and whether the chosen module is the full table's:

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/mrc.py --table-selection --screen 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from reference_cost import reference_cost_mrc  # bench/ is on sys.path when run as a script
from scipy.stats import spearmanr

from rift.attacks import PGD
from rift.config import ArchitectureSpec, MRCSpec
from rift.device import resolve_device
from rift.models import build_model
from rift.mrc import MRCReport, make_adversarial_set, module_robust_criticality
from rift.mrc_reference import plain_module_robust_criticality
from rift.mrc_shards import estimate_module_costs


def _randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


CPU_SECONDS: dict[str, float] = {}  # process CPU time of each timed run (the CPU figure to
# compare on a shared machine: other processes' load stretches wall time, not CPU time)


def _timed(function, device: torch.device, name: str = ""):
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), time.process_time()
    value = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    CPU_SECONDS[name] = time.process_time() - cpu
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="autocast precision of the library's cached engine")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--skip-reference", action="store_true",
                        help="time only the library's engines (for long protocols)")
    parser.add_argument("--plain", action="store_true",
                        help="also time rift.mrc_reference (gradients of every parameter)")
    parser.add_argument("--skip-full", action="store_true",
                        help="do not time the library's full-forward engine")
    parser.add_argument("--module-batch", type=int, nargs="+", default=None,
                        help="compare mrc.module_batch = these against 1 (and nothing else)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds of the --module-batch comparison")
    parser.add_argument("--table-selection", action="store_true",
                        help="compare mrc.table 'selection' with 'full' and the reference cost")
    parser.add_argument("--screen", type=int, nargs="+", default=[1, 2],
                        help="screening passes of the --table-selection runs")
    parser.add_argument("--digits", type=Path, default=None,
                        help="--table-selection on this trained digits checkpoint (rift.demo)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.digits is not None:
        _emit(_digits_selection(args), args.output)
        return

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = build_model(ArchitectureSpec(name=args.arch, num_classes=10), in_channels=3,
                        image_size=args.image_size)
    _randomise_batchnorm(model, generator)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    images = torch.rand(args.examples, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 10, (args.examples,), generator=generator)
    images, labels = images.to(device), labels.to(device)
    attack = PGD(eps=8 / 255, step_size=2 / 255, steps=10)
    adversarial = make_adversarial_set(model, images, labels, attack, batch_size=args.batch_size)
    spec = MRCSpec(steps=args.steps, batch_size=args.batch_size, num_examples=args.examples)

    if args.channels_last:
        adversarial = adversarial.contiguous(memory_format=torch.channels_last)

    # Warm-up (allocator, kernels, autotuning) on one module so the first timed engine pays no
    # one-off costs the others do not.
    module_robust_criticality(model, adversarial, labels,
                              spec.model_copy(update={"steps": 1, "modules": ["linear"]}))
    if args.module_batch:
        _emit(_module_batch_comparison(model, adversarial, labels, spec, args, device),
              args.output)
        return
    if args.table_selection:
        _emit({"setting": f"{args.arch}, random weights (randomised BatchNorm statistics), "
                          f"CIFAR-shaped random data",
               **_selection_comparison(model, adversarial, labels, spec, args, device)},
              args.output)
        return
    cached, cached_seconds = _timed(
        lambda: module_robust_criticality(model, adversarial, labels, spec,
                                          precision=args.precision), device, "cached")
    if args.skip_full:
        full_seconds = float("nan")
    else:
        _, full_seconds = _timed(
            lambda: module_robust_criticality(model, adversarial, labels,
                                              spec.model_copy(update={"engine": "full"}),
                                              precision=args.precision), device)
    if args.skip_reference:
        reference, reference_seconds = {r.name: r.mrc for r in cached.modules}, float("nan")
    else:
        reference, reference_seconds = _timed(
            lambda: reference_cost_mrc(model, adversarial, labels, spec, seed=args.seed), device,
            "reference_cost")
    plain_seconds = float("nan")
    if args.plain:
        _, plain_seconds = _timed(
            lambda: plain_module_robust_criticality(model, adversarial, labels, spec), device)

    names = [row.name for row in cached.modules]
    cached_values = [row.mrc for row in cached.modules]
    plain_values = [reference[name] for name in names]
    rho = float(spearmanr(cached_values, plain_values).statistic)
    lowest_cached = names[min(range(len(names)), key=cached_values.__getitem__)]
    lowest_plain = names[min(range(len(names)), key=plain_values.__getitem__)]
    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 3)  # skipped: null in strict JSON

    _emit({
        "benchmark": "mrc",
        "arch": args.arch,
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "modules": len(names),
        "examples": args.examples,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "baseline": "skipped" if args.skip_reference else "reference cost "
        "(bench/reference_cost.py: scored weight only requires grad, deep copy per module, "
        "reshuffled batches, separate measuring pass)",
        "cached_seconds": round(cached_seconds, 3),
        "reference_cost_seconds": number(reference_seconds),
        "ratio_reference_over_cached": number(reference_seconds / cached_seconds),
        "cpu_seconds": {k: round(v, 3) for k, v in CPU_SECONDS.items()},
        "cpu_ratio_reference_over_cached": round(
            CPU_SECONDS["reference_cost"] / CPU_SECONDS["cached"], 3)
        if "reference_cost" in CPU_SECONDS else None,
        "library_full_engine_seconds": number(full_seconds),
        "ratio_full_engine_over_cached": number(full_seconds / cached_seconds),
        "plain_all_gradients_seconds": number(plain_seconds),
        "ratio_plain_over_cached": number(plain_seconds / cached_seconds),
        "spearman_rank_correlation": round(rho, 6),
        "max_abs_mrc_difference": max(abs(a - b) for a, b in zip(cached_values, plain_values,
                                                                   strict=True)),
        "mrc_min_max": [min(cached_values), max(cached_values)],
        "lowest_cached": lowest_cached,
        "lowest_reference": lowest_plain,
        "same_lowest_module": lowest_cached == lowest_plain,
        "flop_model_ratio": round(_flop_model_ratio(model, adversarial, names, spec), 3),
    }, args.output)


def _emit(report: dict, output: Path | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if output is not None:
        output.write_text(text + "\n")


def _device_name(device: torch.device) -> str:
    return (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())


def _module_batch_comparison(model: torch.nn.Module, adversarial: torch.Tensor,
                             labels: torch.Tensor, spec: MRCSpec, args: argparse.Namespace,
                             device: torch.device) -> dict:
    """The cached engine with ``mrc.module_batch`` = 1 and each of ``args.module_batch``, run in
    turn ``args.repeats`` times (interleaved, so load on a shared machine hits all alike)."""
    sizes = [1, *[k for k in args.module_batch if k != 1]]
    wall: dict[int, list[float]] = {k: [] for k in sizes}
    cpu: dict[int, list[float]] = {k: [] for k in sizes}
    tables = {}
    for _ in range(args.repeats):
        for k in sizes:
            report, seconds = _timed(lambda k=k: module_robust_criticality(
                model, adversarial, labels, spec.model_copy(update={"module_batch": k}),
                precision=args.precision), device, f"module_batch_{k}")
            wall[k].append(seconds)
            cpu[k].append(CPU_SECONDS[f"module_batch_{k}"])
            tables[k] = report
    one = tables[1]
    runs = {}
    for k in sizes:
        rows = tables[k].modules
        runs[str(k)] = {
            "median_seconds": round(statistics.median(wall[k]), 3),
            "seconds": [round(x, 3) for x in wall[k]],
            "median_cpu_seconds": round(statistics.median(cpu[k]), 3),
            "speedup_over_one_at_a_time": round(
                statistics.median(wall[1]) / statistics.median(wall[k]), 3),
            "max_abs_mrc_difference": max(abs(a.mrc - b.mrc)
                                          for a, b in zip(rows, one.modules, strict=True)),
            "max_relative_mrc_difference": max(
                abs(a.mrc - b.mrc) / max(abs(b.mrc), 1e-12)
                for a, b in zip(rows, one.modules, strict=True)),
            "same_robust_accuracy_at_worst": all(
                a.robust_accuracy_at_worst == b.robust_accuracy_at_worst
                for a, b in zip(rows, one.modules, strict=True)),
            "lowest": tables[k].lowest().name,
            "same_lowest_module": tables[k].lowest().name == one.lowest().name,
        }
    return {
        "benchmark": "mrc_module_batch",
        "arch": args.arch,
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "modules": len(one.modules),
        "examples": args.examples,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "image_size": args.image_size,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "repeats": args.repeats,
        "what": "the cached engine's MRC stage (adversarial set made beforehand), one module at "
                "a time (module_batch 1) against K consecutive modules per stacked "
                "forward/backward; wall seconds, medians over interleaved repeats",
        "module_batch": runs,
    }


def _selection_comparison(model: torch.nn.Module, adversarial: torch.Tensor,
                          labels: torch.Tensor, spec: MRCSpec, args: argparse.Namespace,
                          device: torch.device) -> dict:
    """The full table, ``mrc.table = "selection"`` with each ``args.screen`` and the reference
    cost, one after another in this process (the same machine load, so the ratios hold); with
    ``args.repeats`` > 1 the rounds are interleaved and each figure is the median."""
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    tables: dict[str, MRCReport] = {}

    def timed(name: str, function: Callable[[], object]) -> None:
        value, seconds = _timed(function, device, name)
        wall.setdefault(name, []).append(seconds)
        cpu.setdefault(name, []).append(CPU_SECONDS[name])
        if isinstance(value, MRCReport):
            tables[name] = value

    for _ in range(args.repeats):
        timed("full", lambda: module_robust_criticality(
            model, adversarial, labels, spec, precision=args.precision))
        if not args.skip_reference:
            timed("reference_cost", lambda: reference_cost_mrc(model, adversarial, labels, spec,
                                                               seed=args.seed))
        for screen in args.screen:
            timed(f"selection_screen_{screen}", lambda screen=screen: module_robust_criticality(
                model, adversarial, labels, spec.model_copy(update={"table": "selection"}),
                precision=args.precision, screen=screen))
    for name in wall:
        CPU_SECONDS[name] = statistics.median(cpu[name])
    full = tables["full"]
    full_seconds = statistics.median(wall["full"])
    reference_seconds = (statistics.median(wall["reference_cost"]) if "reference_cost" in wall
                         else float("nan"))
    passes_full = sum(row.passes or 0 for row in full.modules)
    selections = {}
    for screen in args.screen:
        name = f"selection_screen_{screen}"
        table, seconds = tables[name], statistics.median(wall[name])
        passes = sum(row.passes or 0 for row in table.modules)
        exact = [(a, b) for a, b in zip(table.modules, full.modules, strict=True) if a.exact]
        selections[str(screen)] = {
            "passes_selection": passes,
            "pass_ratio": round(passes / passes_full, 3),
            "seconds": round(seconds, 3),
            "cpu_seconds": round(CPU_SECONDS[name], 3),
            "speedup_vs_full": round(full_seconds / seconds, 3),
            "speedup_vs_reference": _ratio(reference_seconds, seconds),
            "cpu_speedup_vs_reference": _ratio(CPU_SECONDS.get("reference_cost", math.nan),
                                               CPU_SECONDS[name]),
            "exact_rows": len(exact),
            "exact_rows_identical": all(a.mrc == b.mrc and a.max_ascent_loss == b.max_ascent_loss
                                        for a, b in exact),
            "lowest": table.lowest().name,
            "same_modules": table.lowest().name == full.lowest().name,
        }
    values = sorted(row.mrc for row in full.modules)
    return {
        "benchmark": "mrc_table_selection",
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "modules": len(full.modules),
        "examples": len(labels),
        "batch_size": spec.batch_size,
        "steps": spec.steps,
        "precision": args.precision,
        "what": "MRC stage only (adversarial set made beforehand); wall and process CPU "
                "seconds of runs made one after another in one process on a shared machine "
                "(medians over interleaved repeats)",
        "repeats": args.repeats,
        "passes_full": passes_full,
        "full_seconds": round(full_seconds, 3),
        "full_cpu_seconds": round(CPU_SECONDS["full"], 3),
        "reference_cost_seconds": None if math.isnan(reference_seconds)
        else round(reference_seconds, 3),
        "reference_cost_cpu_seconds": None if "reference_cost" not in CPU_SECONDS
        else round(CPU_SECONDS["reference_cost"], 3),
        "speedup_vs_reference_full": _ratio(reference_seconds, full_seconds),
        "cpu_speedup_vs_reference_full": _ratio(CPU_SECONDS.get("reference_cost", math.nan),
                                                CPU_SECONDS["full"]),
        "lowest_full": full.lowest().name,
        "mrc_lowest_two": values[:2],
        "mrc_min_max": [values[0], values[-1]],
        "selection": selections,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    value = numerator / denominator
    return None if math.isnan(value) else round(value, 3)


def _digits_selection(args: argparse.Namespace) -> dict:
    """``_selection_comparison`` on the trained digits checkpoint with the demo job's settings
    (its MRC set made as the pipeline makes it)."""
    from rift.config import RiftConfig
    from rift.demo import DIGITS_DEMO_CONFIG
    from rift.pipeline import make_mrc_inputs, prepare_run

    config = RiftConfig.model_validate({**DIGITS_DEMO_CONFIG, "device": "cpu"})
    run = prepare_run(config, args.digits)
    inputs = make_mrc_inputs(run)
    run.reset_weights()
    model = run.model.eval()
    return {"setting": "digits small_cnn, adversarially trained (rift.demo), the demo job's MRC "
                       "settings", **_selection_comparison(
                           model, inputs.adversarial, inputs.labels, config.mrc, args,
                           torch.device("cpu"))}


def _flop_model_ratio(model: torch.nn.Module, adversarial: torch.Tensor, names: list[str],
                      spec: MRCSpec) -> float:
    """The reference cost over the cached engine's, counted in multiply-accumulates with a
    backward pass costing one forward of the part it runs through: the ceiling of the measured
    ratio where arithmetic dominates (a CPU). Per module, with s its suffix's share of the
    network and b batches per pass: the reference runs b × (full forward + backward down to the
    module) + b × full measuring forward = b(2 + s); the cached engine runs b × (suffix forward +
    backward) + (b − 1) × suffix measuring forward (one batch's measurement is its ascent
    forward) = s(3b − 1)."""
    costs = estimate_module_costs(model, adversarial[:1], names)
    whole = max(costs.values())
    batches = math.ceil(spec.num_examples / spec.batch_size)
    shares = [costs[name] / whole for name in names]
    return (sum(batches * (2 + s) for s in shares)
            / sum(s * (3 * batches - 1) for s in shares))


if __name__ == "__main__":
    main()
