"""Time the library's ImageFolder reader with and without the content rules
(``rift.image_content``: a digest and the pixel range of every decoded image, then the rules per
split), alternating the two on one tree of random PNGs, and the rules alone on as many decoded
arrays (best of the repeats: the whole loads are noisy on a shared machine). Prints JSON.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/imagefolder_loading.py --images 5000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import rift.data.imagefolder as reader
from rift.config import DatasetSpec


def _write_tree(root: Path, images: int, side: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    rules = (reader.summarize, reader.check_summaries)

    def without() -> None:
        reader.summarize = lambda pixels, name: None  # type: ignore[assignment,return-value]
        reader.check_summaries = lambda where, summaries, decoded=None: None  # type: ignore[assignment]

    def with_rules() -> None:
        reader.summarize, reader.check_summaries = rules

    times: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _write_tree(root, args.images, args.side, args.classes)
        spec = DatasetSpec(name="imagefolder", path=str(root))
        for _ in range(args.repeat):
            for label, setup in (("without", without), ("with", with_rules)):
                setup()
                started = time.perf_counter()
                reader.load_imagefolder(spec)
                times[label].append(round(time.perf_counter() - started, 3))
    with_rules()
    arrays = np.random.default_rng(1).integers(0, 256, (args.images, args.side, args.side, 3),
                                               dtype=np.uint8)
    alone = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        summaries = [reader.summarize(pixels, str(index)) for index, pixels in enumerate(arrays)]
        reader.check_summaries("bench", summaries)
        alone.append(round(time.perf_counter() - started, 4))
    print(json.dumps({"images": args.images, "side": args.side, "seconds": times,
                      "rules_alone_best_seconds": min(alone)}))


if __name__ == "__main__":
    main()
