"""The validator's CPU time on an ImageFolder tar, with and without the decoded pixel sample
(``validator/image_sample.py``): "headers" is the pass the validator made before the sample
(every member and every image header, ``scan_tar`` without a sampler), "with sample" the whole
``inspect_dataset_file`` of now. CPU seconds of this process (``time.process_time``), best of
``--repeat`` runs, as the validator's ``VALIDATION_CPU_SECONDS`` counts them.

    PYTHONPATH=$PWD python bench/imagefolder_validation.py --images 5000 --side 28
    PYTHONPATH=$PWD python bench/imagefolder_validation.py --images 1000 --side 224 --format JPEG
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from validator.dataset import inspect_dataset_file, scan_tar
from validator.image_sample import PixelSampler


def write_tar(path: Path, images: int, side: int, image_format: str, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    mode_shape = (side, side) if image_format == "PNG" else (side, side, 3)
    suffix = "png" if image_format == "PNG" else "jpg"
    with tarfile.open(path, "w") as archive:
        for i in range(images):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, mode_shape, dtype=np.uint8)).save(
                buffer, format=image_format)
            info = tarfile.TarInfo(f"data/train/class{i % classes}/{i}.{suffix}")
            info.size = buffer.tell()
            archive.addfile(info, io.BytesIO(buffer.getvalue()))


def best_cpu_seconds(runs: list[Callable[[], None]], repeat: int) -> list[float]:
    """Each of ``runs``' best CPU time over ``repeat`` rounds; the runs alternate within a round,
    so load from other processes on a shared machine falls on both alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            start = time.process_time()
            run()
            best[i] = min(best[i], time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--format", default="PNG", choices=["PNG", "JPEG"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.tar"
        write_tar(path, args.images, args.side, args.format)

        def headers() -> None:
            with open(path, "rb") as handle:
                scan_tar(handle, "data.tar", 10**12, full=True)

        def sampled() -> None:
            inspect_dataset_file(str(path), "data.tar", 10**12)

        before, after = best_cpu_seconds([headers, sampled], args.repeat)
        sampler = PixelSampler()
        with open(path, "rb") as handle:
            scan_tar(handle, "data.tar", 10**12, full=True, sample=sampler)
        final = sum(sampler.final(image) for image in sampler.decoded)
    print(f"{args.images} {args.side}×{args.side} {args.format} images: decoded "
          f"{len(sampler.decoded)} ({final} in the final sample)")
    print(f"headers only: {before:.3f} s CPU ({before / args.images * 1e6:.0f} µs an image)")
    print(f"with sample:  {after:.3f} s CPU ({after / args.images * 1e6:.0f} µs an image); "
          f"+{after - before:.3f} s, {(after - before) / len(sampler.decoded) * 1e3:.2f} ms a "
          "decoded image")


if __name__ == "__main__":
    main()
