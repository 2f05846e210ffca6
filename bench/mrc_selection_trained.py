"""MRC of a PGD-trained ResNet-18 (the whole-job bench's ``--at-epochs 2`` θ_AT: template data, 512
train / 64 test, PGD-5) with ``mrc.table`` "selection" then "full", in one process; prints one JSON
line per table (CPU seconds, selected module, every row's mrc, max_ascent_loss, passes, exact).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/mrc_selection_trained.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from synthetic import write_template_dataset, write_theta_at  # bench/ is on sys.path

from rift.config import AttackSpec, RiftConfig
from rift.pipeline import prepare_run, run_mrc_stage

with tempfile.TemporaryDirectory() as folder:
    root = Path(folder)
    dataset = write_template_dataset(root / "data.npz", 512, 64, image_size=32)
    write_theta_at(root / "model.safetensors", "resnet18", dataset, AttackSpec(steps=5),
                   at_epochs=2, device="cpu")
    print("trained", flush=True)
    base = {"architecture": {"name": "resnet18", "num_classes": 10},
            "dataset": dataset.model_dump(), "interpolation": {"alpha_step": 0.05},
            "attack": {"steps": 5}, "mrc": {"num_examples": 32, "batch_size": 16, "steps": 10},
            "device": "cpu"}
    for table in ("selection", "full"):
        config = json.loads(json.dumps(base))
        config["mrc"]["table"] = table
        run = prepare_run(RiftConfig.model_validate(config), root / "model.safetensors")
        started = time.process_time()
        mrc = run_mrc_stage(run)
        print(json.dumps({table: {
            "cpu": time.process_time() - started, "selected": mrc.selected_module,
            "rows": {row["name"]: (row["mrc"], row["max_ascent_loss"], row.get("passes"),
                                   row.get("exact")) for row in mrc.rows}}}), flush=True)
