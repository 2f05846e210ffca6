"""What a validator child inherits: the server's preload must cover the modules a check imports,
or every forked check pays those imports again (torch._dynamo, pulled in by the meta-device
BatchNorm of a fit check, cost each check seconds on a 2-core CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, sys
from validator.__main__ import _preload
_preload()
from validator.service import answer, warm_up_request
request = warm_up_request()
before = set(sys.modules)
reply = answer(request)
print(json.dumps({"ok": reply["ok"], "new": sorted(set(sys.modules) - before)}))
"""


def test_a_fit_check_imports_nothing_heavy_the_server_did_not_preload() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"]
    heavy = [name for name in report["new"]
             if name.split(".")[0] in {"torch", "torchvision", "numpy", "sympy", "scipy"}]
    assert heavy == [], heavy
