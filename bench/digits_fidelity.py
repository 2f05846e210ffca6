"""RiFT on real data over several seeds: small_cnn adversarially trained on scikit-learn's digits,
then the demo job (DIGITS_DEMO_CONFIG). Prints JSON with the test accuracies before and after.

    .venv/bin/python bench/digits_fidelity.py --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

from rift.config import RiftConfig
from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint
from rift.pipeline import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            make_digits_checkpoint(root / "at.safetensors", seed=seed, device=args.device)
            config = copy.deepcopy(DIGITS_DEMO_CONFIG)
            config["device"] = args.device
            result = run_pipeline(RiftConfig.model_validate(config), root / "at.safetensors",
                                  root / "out")
        runs.append({"seed": seed, "module": result["selected_module"],
                     "alpha": result["chosen_alpha"], "before": result["before"],
                     "after": result["after"],
                     "clean_gain": result["after"]["clean_accuracy"]
                     - result["before"]["clean_accuracy"],
                     "robust_change": result["after"]["robust_accuracy"]
                     - result["before"]["robust_accuracy"]})
    print(json.dumps({"benchmark": "digits_fidelity", "device": args.device, "runs": runs},
                     indent=2))


if __name__ == "__main__":
    main()
