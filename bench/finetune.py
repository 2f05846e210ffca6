"""The fine-tune stage's cost, side by side in one process: the library's stage, the same stage
with PyTorch's NaN fill of new tensors left on (what ``rift.device.deterministic_kernels`` did
before), and a plain loop written the way the reference code fine-tunes (train mode, SGD on the
module's own parameters, an evaluation after each epoch, a deep copy of the best state), fed the
same batches. Prints JSON (and writes it with ``--output``).

Repeats are interleaved (the order of the arms rotates every repeat) and timed in CPU seconds of
this process, so that the load of a shared machine falls on every arm alike. Every arm must end
with the same θ_FT bit for bit; the report says whether it did.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/finetune.py --repeats 3 \\
        --output bench/results/finetune_speed_resnet18_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from synthetic import write_template_dataset, write_theta_at  # bench/ is on sys.path

import rift.pipeline
from rift.config import AttackSpec, RiftConfig
from rift.data import iterate_batches
from rift.device import deterministic_kernels
from rift.finetune import trainable_module
from rift.pipeline import PreparedRun, finetune_splits, prepare_run, run_finetune_stage

StateDict = dict[str, torch.Tensor]


def library(run: PreparedRun, module: str) -> StateDict:
    return run_finetune_stage(run, module).state_dict


@contextlib.contextmanager
def _filling(enabled: bool) -> Iterator[None]:
    """``deterministic_kernels`` as it was: new tensors filled with NaN in the block."""
    with deterministic_kernels(enabled):
        torch.utils.deterministic.fill_uninitialized_memory = True
        try:
            yield
        finally:
            torch.utils.deterministic.fill_uninitialized_memory = False


def library_nan_fill(run: PreparedRun, module: str) -> StateDict:
    rift.pipeline.deterministic_kernels = _filling  # type: ignore[assignment]
    try:
        return run_finetune_stage(run, module).state_dict
    finally:
        rift.pipeline.deterministic_kernels = deterministic_kernels


def reference_loop(run: PreparedRun, module: str) -> StateDict:
    """The reference code's fine-tuning, plainly: no checks, no events, no deterministic mode
    (it never asks for one). The batches, rates and seed are the library's, so θ_FT must match
    (for sizes where the library drops no final batch of one, which this loop does not do)."""
    config, model, device = run.config, run.model, run.device
    spec = config.finetune
    splits = finetune_splits(run.splits, spec.selection_split)
    run.reset_weights()
    parameters = list(trainable_module(model, module).parameters(recurse=False))
    chosen = {id(p) for p in parameters}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
    optimizer = torch.optim.SGD(parameters, lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(spec.lr_milestones),
                                                     spec.lr_gamma)
    generator = torch.Generator().manual_seed(config.seed)
    best, best_state = -1.0, model.state_dict()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        for _ in range(spec.epochs):
            model.train()
            for images, labels in iterate_batches(splits.train, spec.batch_size, device=device,
                                                  shuffle=True, generator=generator,
                                                  augment=splits.augment):
                loss = F.cross_entropy(model(images).float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for images, labels in iterate_batches(splits.validation,
                                                      config.evaluation.batch_size,
                                                      device=device):
                    correct += int((model(images).argmax(1) == labels).sum())
            accuracy = 100.0 * correct / len(splits.validation)
            if accuracy > best:
                best, best_state = accuracy, copy.deepcopy(model.state_dict())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.load_state_dict(best_state)
    model.eval()
    return {k: v.cpu() for k, v in best_state.items()}


ARMS: dict[str, Callable[[PreparedRun, str], StateDict]] = {
    "library": library, "library_nan_fill": library_nan_fill, "reference_loop": reference_loop}


def _digest(state: StateDict) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _same(first: StateDict, second: StateDict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--module", default="conv1")
    parser.add_argument("--image-size", type=int, default=32,
                        help="side of the synthetic images (the ResNets pool adaptively)")
    parser.add_argument("--at-epochs", type=int, default=0,
                        help="PGD-train θ_AT this many epochs first (0: random weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="the arms to time (default all)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = write_template_dataset(root / "data.npz", args.train, 64,
                                         image_size=args.image_size)
        write_theta_at(root / "model.safetensors", args.arch, dataset, AttackSpec(steps=3),
                       at_epochs=args.at_epochs, device="cpu")
        config = RiftConfig.model_validate({
            "architecture": {"name": args.arch, "num_classes": 10},
            "dataset": dataset.model_dump(), "preflight": {"examples": 0},
            "finetune": {"epochs": args.epochs,
                         "lr_milestones": [max(1, args.epochs // 2)]},
            "device": "cpu", "deterministic": True})
        run = prepare_run(config, root / "model.safetensors")
        library(run, args.module)  # warm-up: thread pools, allocator, first-touch memory
        seconds: dict[str, list[float]] = {name: [] for name in args.arms}
        faults: dict[str, list[int]] = {name: [] for name in args.arms}
        weights: dict[str, StateDict] = {}
        names = list(args.arms)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                started = time.process_time()
                faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                weights[name] = ARMS[name](run, args.module)
                seconds[name].append(round(time.process_time() - started, 2))
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    report: dict[str, Any] = {
        "benchmark": "finetune_speed", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "arch": args.arch, "module": args.module,
        "train_examples": len(run.splits.train), "validation_examples": len(run.splits.validation),
        "image_size": args.image_size, "epochs": args.epochs,
        "batch_size": config.finetune.batch_size,
        "at_epochs": args.at_epochs, "repeats": args.repeats,
        "cpu_seconds": seconds, "cpu_seconds_median": median,
        # Minor page faults: pages of freshly mapped blocks touched for the first time.
        "page_faults": faults,
        **({"ratio_reference_loop_over_library": round(
            median["reference_loop"] / median["library"], 3),
            "ratio_nan_fill_over_library": round(
                median["library_nan_fill"] / median["library"], 3)}
           if set(ARMS) <= set(median) else {}),
        "same_weights": {name: _same(weights[names[0]], weights[name]) for name in names},
        # θ_FT's digest, to compare runs in separate processes (an allocator setting, say).
        "theta_ft_sha256": _digest(weights[names[0]]),
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "command": " ".join(["bench/finetune.py", *sys.argv[1:]]),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
