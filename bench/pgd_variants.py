"""Time one PGD evaluation batch of ResNet-18 on a CPU in the layouts an exact speed-up could use,
side by side in one process: the model as it is, BatchNorm folded into the convolutions
(``torch.fx``'s conv-BN fusion, what ``rift.batchnorm_folding`` uses), channels_last, both; and a
clean forward under ``torch.no_grad`` against ``torch.inference_mode``.

Random weights with random BatchNorm statistics and affine parameters; the variants interleaved
``--repeats`` times (medians of process CPU seconds: the figure to compare on a shared machine).
Prints JSON: per variant the PGD batch's and a clean forward's CPU seconds, the largest logit
difference from the plain model, how many adversarial images differ (by more than 1e-6) and the
robust count.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/pgd_variants.py \\
        --output bench/results/pgd_variants_resnet18_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from rift.attacks import PGD
from rift.config import ArchitectureSpec
from rift.models import build_model


def _channels_last(tensor: Tensor) -> Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(name="resnet18", num_classes=10)).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    shape = (args.examples, 3, args.image_size, args.image_size)
    images, noise = torch.rand(shape), torch.rand(shape)
    labels = torch.randint(0, 10, (args.examples,))
    attack = PGD(8 / 255, 2 / 255, args.steps)
    folded = fuse(model)
    variants: dict[str, tuple[nn.Module, Callable[[Tensor], Tensor]]] = {
        "plain": (model, lambda t: t),
        "folded": (folded, lambda t: t),
        "channels_last": (copy.deepcopy(model).to(memory_format=torch.channels_last),
                          _channels_last),
        "folded_channels_last": (copy.deepcopy(folded).to(memory_format=torch.channels_last),
                                 _channels_last),
    }
    for variant, _ in variants.values():
        for parameter in variant.parameters():
            parameter.requires_grad_(False)
    pgd: dict[str, list[float]] = {name: [] for name in variants}
    clean: dict[str, list[float]] = {name: [] for name in variants}
    inference_mode: list[float] = []
    outputs: dict[str, tuple[Tensor, Tensor]] = {}
    for _ in range(args.repeats):
        for name, (variant, layout) in variants.items():
            started = time.process_time()
            adversarial = attack.perturb(variant, layout(images), labels, noise=layout(noise))
            with torch.no_grad():
                logits = variant(adversarial)
            pgd[name].append(time.process_time() - started)
            outputs[name] = (logits, adversarial)
            started = time.process_time()
            with torch.no_grad():
                for _ in range(5):
                    variant(layout(images))
            clean[name].append((time.process_time() - started) / 5)
        started = time.process_time()
        with torch.inference_mode():
            for _ in range(5):
                model(images)
        inference_mode.append((time.process_time() - started) / 5)
    plain_logits, plain_adversarial = outputs["plain"]
    report = {
        "benchmark": "pgd_variants", "arch": "resnet18", "threads": torch.get_num_threads(),
        "examples": args.examples, "image_size": args.image_size, "steps": args.steps,
        "repeats": args.repeats,
        "variants": {name: {
            "pgd_cpu_seconds": round(statistics.median(pgd[name]), 3),
            "clean_cpu_seconds": round(statistics.median(clean[name]), 4),
            "pgd_speedup": round(statistics.median(pgd["plain"]) / statistics.median(pgd[name]),
                                 3),
            "max_logit_difference": float((logits - plain_logits).abs().max()),
            "adversarial_images_differing": int(
                ((adversarial - plain_adversarial).abs().flatten(1).amax(1) > 1e-6).sum()),
            "robust": int((logits.argmax(1) == labels).sum()),
        } for name, (logits, adversarial) in outputs.items()},
        "clean_inference_mode_cpu_seconds": round(statistics.median(inference_mode), 4),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
