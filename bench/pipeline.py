"""Time a whole RiFT job (MRC → fine-tune → interpolate) with the reference protocol's defaults on
CIFAR-shaped synthetic data, and print JSON with the seconds of each stage.

The data are random (uint8 32×32×3 images, random labels) and the weights randomly initialised:
accuracies are meaningless here, only the time is measured. On a GPU:

    .venv/bin/python bench/pipeline.py --train 10000 --test 2000
    .venv/bin/python bench/pipeline.py --train 10000 --test 2000 --precision bf16 --channels-last

``--reference-cost`` instead runs the job twice on the same data and config, stage by stage, and
prints the wall and CPU seconds of both: the library's flow (cached MRC, exact α selection) and the
job at the reference code's cost (MRC with ``bench/reference_cost.py``: a model copy per module,
full forwards, reshuffled batches, a separate measuring pass; the same fine-tuning; the full α
curve). CPU time is the figure to compare on a shared machine. CPU-sized comparisons:

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/pipeline.py --reference-cost --digits
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/pipeline.py --reference-cost \\
        --device cpu --train 256 --test 32 --alpha-step 0.1 --mrc-examples 32 \\
        --mrc-batch-size 16 --mrc-steps 3 --epochs 1 --attack-steps 3

``--huge-pages-ab PAIRS`` runs that comparison in pairs of processes, ``THP_MEM_ALLOC_ENABLE``
unset and ``1`` (torch reads it once, at start), and reports each stage per setting and whether
every process computed the same bits. Without it, both flows run with the shell's setting
(reported as ``thp_mem_alloc_enable``; unset is how the reference code runs).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from reference_cost import reference_cost_mrc  # bench/ is on sys.path when run as a script
from synthetic import job_config, write_template_dataset, write_theta_at

from rift.checkpoints import save_safetensors
from rift.config import ArchitectureSpec, AttackSpec, DatasetSpec, RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.models import build_model
from rift.pipeline import (
    make_mrc_inputs,
    prepare_run,
    run_finetune_stage,
    run_interpolation_stage,
    run_mrc_stage,
    run_pipeline,
)

T = TypeVar("T")


class _Clock:
    """Wall and CPU seconds and minor page faults of named steps. CPU time
    (``time.process_time``, one thread) is the figure to compare on a shared machine: other
    processes' load stretches wall time, not it. Minor page faults are first touches of freshly
    mapped pages (what ``THP_MEM_ALLOC_ENABLE`` changes: one fault per 2 MiB instead of 4 KiB)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.faults: dict[str, int] = {}

    def time(self, name: str, step: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), time.process_time()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        value = step()
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu
        self.faults[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        return value

    def summary(self) -> dict[str, dict[str, Any]]:
        return {"wall_seconds": {k: round(v, 2) for k, v in self.wall.items()}
                | {"total": round(sum(self.wall.values()), 2)},
                "cpu_seconds": {k: round(v, 2) for k, v in self.cpu.items()}
                | {"total": round(sum(self.cpu.values()), 2)},
                "page_faults": self.faults | {"total": sum(self.faults.values())}}


def _digest(value: Any) -> str:
    """SHA-256 of results, to compare runs in separate processes bit for bit: a state dict's
    tensors byte for byte, anything else as JSON (floats written exactly, by repr)."""
    digest = hashlib.sha256()
    if isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
        for key in sorted(value):
            digest.update(key.encode())
            digest.update(value[key].detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(json.dumps(value, sort_keys=True).encode())
    return digest.hexdigest()


def _mrc_digest(rows: list[dict[str, Any]]) -> str:
    """The MRC table without its timings (``seconds`` differ from run to run)."""
    return _digest([{k: v for k, v in row.items() if k != "seconds"} for row in rows])


def _library_flow(config: RiftConfig, checkpoint: Path) -> dict[str, Any]:
    """The job as the library runs it (cached MRC, exact α selection), stage by stage."""
    run, clock = prepare_run(config, checkpoint), _Clock()
    mrc = clock.time("mrc", lambda: run_mrc_stage(run))
    finetuned = clock.time("finetune",
                           lambda: run_finetune_stage(run, mrc.selected_module).state_dict)
    interpolation = clock.time("interpolation", lambda: run_interpolation_stage(run, finetuned))
    return {**clock.summary(), "robust_evaluations": interpolation.robust_evaluations,
            "attacked_examples": interpolation.attacked_examples,
            "mrc_table": config.mrc.table,
            "mrc_passes": sum(int(row.get("passes") or config.mrc.steps) for row in mrc.rows),
            "mrc_exact_rows": sum(1 for row in mrc.rows if row.get("exact", True)),
            "mrc_rows": len(mrc.rows),
            "selected_module": mrc.selected_module, "chosen_alpha": interpolation.chosen_alpha,
            "sha256": {"mrc_table": _mrc_digest(mrc.rows), "theta_ft": _digest(finetuned),
                       "curve": _digest(interpolation.points),
                       "theta_rift": _digest(interpolation.state_dict)}}


def _reference_flow(config: RiftConfig, checkpoint: Path) -> dict[str, Any]:
    """The job at the reference code's cost: reference-cost MRC, the same fine-tuning, the full
    α curve on the unfolded model."""
    run, clock = prepare_run(config, checkpoint), _Clock()

    values: dict[str, float] = {}

    def mrc() -> str:
        inputs = make_mrc_inputs(run)
        values.update(reference_cost_mrc(run.model, inputs.adversarial, inputs.labels,
                                         config.mrc, seed=config.seed))
        return min(values, key=values.__getitem__)

    module = clock.time("mrc", mrc)
    finetuned = clock.time("finetune", lambda: run_finetune_stage(run, module).state_dict)
    # The reference code's evaluation: every α attacked in full, on the model as it is (no
    # BatchNorm folding).
    run.config = config.model_copy(update={
        "interpolation": config.interpolation.model_copy(update={"curve": "full"}),
        "evaluation": config.evaluation.model_copy(update={"fold_batchnorm": "off"})})
    interpolation = clock.time("interpolation", lambda: run_interpolation_stage(run, finetuned))
    return {**clock.summary(), "robust_evaluations": interpolation.robust_evaluations,
            "attacked_examples": interpolation.attacked_examples,
            "selected_module": module, "chosen_alpha": interpolation.chosen_alpha,
            "sha256": {"mrc_table": _digest(values), "theta_ft": _digest(finetuned),
                       "curve": _digest(interpolation.points),
                       "theta_rift": _digest(interpolation.state_dict)}}


def _warm_up(config: RiftConfig, checkpoint: Path) -> None:
    """One untimed forward and backward at the fine-tuning and evaluation batch sizes, so that
    the flow timed first does not also pay the process's one-time costs (thread pools, kernel
    caches, first-touch memory)."""
    run = prepare_run(config, checkpoint)
    images = run.splits.train.images[:1].to(run.device)
    image = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    for batch_size in (config.finetune.batch_size, config.evaluation.batch_size):
        batch = image.expand(batch_size, *image.shape[1:]).clone().requires_grad_(True)
        run.model(batch).sum().backward()


def _compare(config: RiftConfig, checkpoint: Path, job: str, output: Path | None,
             flows: list[str], reference_from: Path | None = None) -> None:
    """Time the flows named in ``flows`` ("library", "reference"); with ``reference_from``, the
    reference flow's figures are read from that earlier output of this bench (the same job run
    in another process, e.g. while the library was being changed) instead of measured here."""
    _warm_up(config, checkpoint)
    report: dict[str, Any] = {
        "benchmark": "pipeline_reference_cost", "job": job, "threads": torch.get_num_threads(),
        # Both flows run in this one process, so both have the same huge-pages setting: the
        # reference flow is timed as the reference code runs only where this is None (unset;
        # torch reads it once, at start; `python -m rift` and the worker set it to "1").
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "config": config.model_dump(mode="json", exclude={"dataset"})}
    if "library" in flows:
        report["library"] = _library_flow(config, checkpoint)
        print(json.dumps({"library": report["library"]}), file=sys.stderr, flush=True)
    if "reference" in flows:
        report["reference_cost"] = _reference_flow(config, checkpoint)
    elif reference_from is not None:
        report["reference_cost"] = json.loads(reference_from.read_text())["reference_cost"]
        report["reference_from"] = str(reference_from)
    _print_report(report, output)


def _merge(library_from: Path, reference_from: Path, output: Path | None) -> None:
    """One report from two earlier ``--flows`` runs of the same job: the library flow's and the
    reference flow's (each file named in the report). Settings one file has and the other lacks
    (fields added to the config between the runs) are listed, not compared."""
    report = json.loads(library_from.read_text())
    reference = json.loads(reference_from.read_text())
    differing, one_sided = _config_differences(report["config"], reference["config"])
    if differing - {"mrc.table", "evaluation.fold_batchnorm"}:
        raise SystemExit(f"not the same job: the runs' configs differ in {sorted(differing)} "
                         "beyond the library flow's own settings")
    report |= {"reference_cost": reference["reference_cost"], "library_from": str(library_from),
               "reference_from": str(reference_from),
               "settings_in_one_run_only": sorted(one_sided)}
    _print_report(report, output)


def _config_differences(first: dict[str, Any], second: dict[str, Any]
                        ) -> tuple[set[str], set[str]]:
    """Dotted names of the settings both configs have with different values, and of those only
    one has."""
    differing: set[str] = set()
    one_sided: set[str] = set()
    for key in first.keys() | second.keys():
        if key not in first or key not in second:
            one_sided.add(key)
        elif isinstance(first[key], dict) and isinstance(second[key], dict):
            inner = _config_differences(first[key], second[key])
            differing |= {f"{key}.{name}" for name in inner[0]}
            one_sided |= {f"{key}.{name}" for name in inner[1]}
        elif first[key] != second[key]:
            differing.add(key)
    return differing, one_sided


def _print_report(report: dict[str, Any], output: Path | None) -> None:
    if "library" in report and "reference_cost" in report:
        library, reference = report["library"], report["reference_cost"]
        for kind in ("cpu_seconds", "wall_seconds"):
            report[f"{kind.split('_')[0]}_ratio_reference_over_library"] = {
                k: round(reference[kind][k] / max(v, 1e-9), 3) for k, v in library[kind].items()}
    text = json.dumps(report, indent=2)
    print(text)
    if output is not None:
        output.write_text(text + "\n")


STAGES = ("mrc", "finetune", "interpolation", "total")


def _huge_pages_ab(pairs: int, output: Path | None) -> None:
    """Run this bench's comparison (the same arguments, less ``--huge-pages-ab`` and
    ``--output``) in ``pairs`` pairs of processes, one with ``THP_MEM_ALLOC_ENABLE`` unset and one
    with it ``1`` (torch reads it once, at start, so one process per setting). The two of a pair
    start together, so the shared machine's load hits both alike; which starts first alternates.
    Reports each stage's CPU seconds and page faults per setting (medians, spread, paired ratios)
    and whether every run computed the same results, bit for bit (SHA-256 of the MRC table, θ_FT,
    the curve and the final weights)."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--huge-pages-ab", "--output"):
            skip = True
        elif not arg.startswith(("--huge-pages-ab=", "--output=")):
            argv.append(arg)
    settings = {"unset": None, "1": "1"}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for pair in range(pairs):
            order = list(settings) if pair % 2 == 0 else list(reversed(settings))
            children = {}
            for name in order:
                env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
                if settings[name] is not None:
                    env["THP_MEM_ALLOC_ENABLE"] = settings[name]
                path = Path(folder) / f"{pair}-{name}.json"
                children[name] = (path, subprocess.Popen(
                    [sys.executable, sys.argv[0], *argv, "--output", str(path)], env=env,
                    stdout=subprocess.DEVNULL))
            load = os.getloadavg()[0]
            for name, (path, child) in children.items():
                if child.wait() != 0:
                    raise SystemExit(f"pair {pair}, THP {name}: exit status {child.returncode}")
                runs.append({"pair": pair, "thp_mem_alloc_enable": settings[name],
                             "started_first": name == order[0],
                             "load_average_at_start": round(load, 2),
                             **json.loads(path.read_text())})
            print(json.dumps({"pair": pair, "done": True}), file=sys.stderr, flush=True)
    text = json.dumps(_huge_pages_summary(runs, argv), indent=2)
    print(text)
    if output is not None:
        output.write_text(text + "\n")


def _huge_pages_summary(runs: list[dict[str, Any]], argv: list[str]) -> dict[str, Any]:
    flows = [flow for flow in ("library", "reference_cost") if flow in runs[0]]
    by_setting = {setting: [r for r in runs if r["thp_mem_alloc_enable"] == setting]
                  for setting in (None, "1")}
    report: dict[str, Any] = {
        "benchmark": "pipeline_huge_pages", "job": runs[0]["job"], "threads": runs[0]["threads"],
        "torch": torch.__version__, "pairs": len(by_setting["1"]),
        "command": " ".join(["bench/pipeline.py", *sys.argv[1:]]),
        "child_command": " ".join(["bench/pipeline.py", *argv]),
        "config": runs[0]["config"]}
    for flow in flows:
        summary: dict[str, Any] = {}
        for stage in STAGES:
            row: dict[str, Any] = {}
            for setting, label in ((None, "unset"), ("1", "thp")):
                cpu = [r[flow]["cpu_seconds"][stage] for r in by_setting[setting]]
                faults = [r[flow]["page_faults"][stage] for r in by_setting[setting]]
                row[f"cpu_seconds_{label}"] = cpu
                row[f"median_cpu_seconds_{label}"] = round(statistics.median(cpu), 2)
                row[f"median_page_faults_{label}"] = int(statistics.median(faults))
            row["median_ratio_unset_over_thp"] = round(
                row["median_cpu_seconds_unset"] / max(row["median_cpu_seconds_thp"], 1e-9), 3)
            # Each pair ran under the same load: its own ratio, and the spread of those.
            paired = [u[flow]["cpu_seconds"][stage] / max(t[flow]["cpu_seconds"][stage], 1e-9)
                      for u, t in zip(by_setting[None], by_setting["1"], strict=True)]
            row["paired_ratios_unset_over_thp"] = [round(x, 3) for x in paired]
            summary[stage] = row
        digests = {json.dumps(r[flow]["sha256"], sort_keys=True) for r in runs}
        summary["identical_results"] = len(digests) == 1
        summary["sha256"] = runs[0][flow]["sha256"]
        summary["selected_module"] = sorted({r[flow]["selected_module"] for r in runs})
        summary["chosen_alpha"] = sorted({r[flow]["chosen_alpha"] for r in runs})
        summary["attacked_examples"] = sorted({r[flow]["attacked_examples"] for r in runs})
        report[flow] = summary
    if len(flows) == 2:
        # The whole job's ratio with both flows under one setting, and as users meet it: the
        # reference code in a plain process (unset) against `python -m rift` or the worker (1).
        library = {s: statistics.median(r["library"]["cpu_seconds"]["total"]
                                        for r in by_setting[s]) for s in (None, "1")}
        reference = {s: statistics.median(r["reference_cost"]["cpu_seconds"]["total"]
                                          for r in by_setting[s]) for s in (None, "1")}
        report["total_cpu_ratio_reference_over_library"] = {
            "both_unset": round(reference[None] / library[None], 3),
            "both_thp": round(reference["1"] / library["1"], 3),
            "reference_unset_library_thp": round(reference[None] / library["1"], 3)}
    report["runs"] = runs
    return report


def _digits_comparison(alpha_step: float, output: Path | None) -> None:
    spec = copy.deepcopy(DIGITS_DEMO_CONFIG)
    spec["device"] = "cpu"
    spec["interpolation"]["alpha_step"] = alpha_step
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "digits.safetensors"
        make_digits_checkpoint(checkpoint, seed=0, device="cpu")
        _compare(RiftConfig.model_validate(spec), checkpoint, "digits demo job, seed 0", output,
                 ["library", "reference"])


def _write_random_job(root: Path, arch: str, train: int, test: int, size: int) -> DatasetSpec:
    """Random uint8 images with random labels and randomly initialised weights (timing only)."""
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz",
             x=rng.integers(0, 256, (train, size, size, 3), dtype=np.uint8),
             y=rng.integers(0, 10, train),
             x_test=rng.integers(0, 256, (test, size, size, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, test))
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(name=arch, num_classes=10))
    save_safetensors(root / "model.safetensors", model.state_dict())
    return DatasetSpec(name="npz", path=str(root / "data.npz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--alpha-step", type=float, default=0.05)
    parser.add_argument("--reference-cost", action="store_true",
                        help="compare the library's flow with the reference code's cost")
    parser.add_argument("--mrc-examples", type=int, default=1024)
    parser.add_argument("--mrc-batch-size", type=int, default=512)
    parser.add_argument("--mrc-steps", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32,
                        help="side of the synthetic images (the ResNets pool adaptively)")
    parser.add_argument("--at-epochs", type=int, default=0,
                        help="PGD-train θ_AT this many epochs on learnable synthetic data first "
                        "(0: random weights on random data, a flat α curve)")
    parser.add_argument("--attack-steps", type=int, default=10,
                        help="PGD steps (adversarial set and robust evaluations)")
    parser.add_argument("--digits", action="store_true",
                        help="with --reference-cost: the digits demo job (real data, an "
                        "adversarially trained small_cnn) instead of synthetic CIFAR-shaped data")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="allow non-deterministic GPU kernels (config.deterministic=false)")
    parser.add_argument("--mrc-table", choices=["full", "selection"], default="full",
                        help="mrc.table of the library's flow (the reference flow always "
                        "scores every module in full)")
    parser.add_argument("--flows", nargs="+", choices=["library", "reference"],
                        default=["library", "reference"],
                        help="with --reference-cost: the flows to time (default both)")
    parser.add_argument("--reference-from", type=Path, default=None,
                        help="with --flows library: take the reference flow's figures from "
                        "this earlier --output of the same job (named in the report)")
    parser.add_argument("--library-from", type=Path, default=None,
                        help="with --reference-from: measure nothing, merge this earlier "
                        "--flows library output with that --flows reference output")
    parser.add_argument("--huge-pages-ab", type=int, default=None, metavar="PAIRS",
                        help="with --reference-cost: run it in PAIRS pairs of processes, "
                        "THP_MEM_ALLOC_ENABLE unset and 1, and compare the two settings")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the JSON report to this file")
    args = parser.parse_args()
    if args.huge_pages_ab is not None:
        if not args.reference_cost:
            parser.error("--huge-pages-ab needs --reference-cost")
        _huge_pages_ab(args.huge_pages_ab, args.output)
        return
    if args.library_from is not None:
        if args.reference_from is None:
            parser.error("--library-from needs --reference-from")
        _merge(args.library_from, args.reference_from, args.output)
        return
    if args.reference_cost and args.digits:
        _digits_comparison(args.alpha_step, args.output)
        return

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        total = args.train + args.test
        if args.at_epochs:
            # A learnable class pattern and a PGD-trained θ_AT: curves that are not flat, so the
            # α selection can stop early as on a real job.
            dataset = write_template_dataset(root / "data.npz", args.train, args.test,
                                             image_size=args.image_size)
            write_theta_at(root / "model.safetensors", args.arch, dataset,
                           AttackSpec(steps=args.attack_steps), at_epochs=args.at_epochs,
                           device=args.device)
        else:
            dataset = _write_random_job(root, args.arch, args.train, args.test, args.image_size)
        config = RiftConfig.model_validate(job_config(
            args.arch, dataset, trained=bool(args.at_epochs), alpha_step=args.alpha_step,
            attack_steps=args.attack_steps, mrc_examples=args.mrc_examples,
            mrc_batch_size=args.mrc_batch_size, mrc_steps=args.mrc_steps, epochs=args.epochs,
            device=args.device, mrc_table=args.mrc_table, precision=args.precision,
            channels_last=args.channels_last, deterministic=not args.nondeterministic))
        if args.reference_cost:
            job = f"{args.arch} CIFAR-shaped synthetic, " + (
                f"PGD-trained {args.at_epochs} epochs" if args.at_epochs else "random weights")
            _compare(config, root / "model.safetensors", job, args.output, args.flows,
                     args.reference_from)
            return
        started = time.perf_counter()
        result = run_pipeline(config, root / "model.safetensors", root / "out")
        seconds = time.perf_counter() - started
    device = result["device"]
    report = {
        "benchmark": "pipeline",
        "arch": args.arch,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "precision": args.precision,
        "channels_last": args.channels_last,
        "deterministic": config.deterministic,
        "examples": total,
        "train_examples_after_validation_split": args.train - round(args.train * 0.1),
        "mrc_examples": result["mrc"]["examples"],
        "mrc_steps": config.mrc.steps,
        "attack_steps": config.attack.steps,
        "finetune_epochs": config.finetune.epochs,
        "alpha_points": len(result["interpolation"]["points"]),
        "mrc_seconds": round(result["mrc"]["seconds"], 2),
        "finetune_seconds": round(result["finetune"]["seconds"], 2),
        "interpolation_seconds": round(result["interpolation"]["seconds"], 2),
        "total_seconds": round(seconds, 2),
        "selected_module": result["selected_module"],
        "robust_evaluations": result["interpolation"]["robust_evaluations"],
        "chosen_alpha": result["chosen_alpha"],
    } | _throughput(result, config, args.train - round(args.train * 0.1), args.test)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


def _throughput(result: dict[str, Any], config: RiftConfig, train: int,
                test: int) -> dict[str, Any]:
    """Images per second of each stage, counted as the work each stage does:

    * MRC: module-examples scored (scored modules × MRC examples; each costs ``mrc.steps``
      ascent passes and a measuring pass), over the whole stage (adversarial set included);
    * fine-tuning: training images seen (epochs × train split), per-epoch validation included;
    * interpolation: test images through the network, clean forwards for every α plus
      ``attack.steps`` + 1 passes per attacked image.
    """
    modules = len(result["mrc"]["rows"])
    examples = int(result["mrc"]["examples"])
    interpolation = result["interpolation"]
    points = len(interpolation["points"])
    attacked = interpolation.get("attacked_examples",
                                 interpolation["robust_evaluations"] * test)
    passes = points * test + attacked * (config.attack.steps + 1)
    return {
        "mrc_modules": modules,
        "mrc_module_examples_per_second": round(
            modules * examples / max(result["mrc"]["seconds"], 1e-9), 1),
        "finetune_train_images_per_second": round(
            config.finetune.epochs * train / max(result["finetune"]["seconds"], 1e-9), 1),
        "interpolation_attacked_examples": attacked,
        "interpolation_image_passes_per_second": round(
            passes / max(interpolation["seconds"], 1e-9), 1),
    }


if __name__ == "__main__":
    main()
