"""Time the per-example random starts of robust evaluation: drawn afresh for every attack
(``rift.evaluation.example_noise``) against kept in the stage's table (``RandomStarts``), for a
CIFAR-size test set read in evaluation batches. Prints JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/random_starts.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rift.evaluation import RandomStarts, example_noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    shape, indices = tuple(args.shape), torch.arange(args.examples)
    batches = indices.split(args.batch_size)

    started = time.perf_counter()
    for batch in batches:
        example_noise(batch, shape, 0)
    fresh = time.perf_counter() - started

    starts = RandomStarts(0, args.examples)
    started = time.perf_counter()
    for batch in batches:
        starts.draw(batch, shape)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for batch in batches:
        starts.draw(batch, shape)
    kept = time.perf_counter() - started
    print(json.dumps({
        "benchmark": "random_starts", "examples": args.examples, "shape": list(shape),
        "threads": torch.get_num_threads(), "seconds_drawn_afresh": round(fresh, 3),
        "seconds_first_pass_filling_the_table": round(first, 3),
        "seconds_later_pass_from_the_table": round(kept, 3),
        "ratio_afresh_over_kept": round(fresh / kept, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
