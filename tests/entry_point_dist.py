"""A tiny installed distribution that declares a ``rift.architectures`` entry point, written into
a temporary folder: put the folder on ``sys.path`` (or ``PYTHONPATH`` for a subprocess) and
``importlib.metadata`` finds it as it finds any installed package."""

from __future__ import annotations

from pathlib import Path

ARCHITECTURE = "tiny_tabular_net"
MODULE = "rift_test_arch_plugin"

_SOURCE = '''
"""An operator's architecture: two linear layers over flattened inputs."""
from torch import nn


class TinyTabularNet(nn.Module):
    def __init__(self, num_classes, in_channels, mean=None, std=None):
        super().__init__()
        self.body = nn.Linear(in_channels, 8)
        self.out = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.out(self.body(x.flatten(1)).relu())


def build(*, num_classes, in_channels, mean=None, std=None):
    return TinyTabularNet(num_classes, in_channels, mean, std)
'''


def write_entry_point_dist(folder: Path) -> Path:
    """Write the package and its ``.dist-info`` into ``folder``; returns ``folder``."""
    (folder / MODULE).mkdir(parents=True, exist_ok=True)
    (folder / MODULE / "__init__.py").write_text(_SOURCE)
    info = folder / f"{MODULE}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[rift.architectures]\n{ARCHITECTURE} = {MODULE}:build\n")
    return folder
