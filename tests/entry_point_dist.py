"""A tiny installed distribution that declares ``rift.architectures`` entry points (a tabular net,
and the awkward models of ``tests/module_factories.py``), written into a temporary folder: put
the folder on ``sys.path`` (or ``PYTHONPATH`` for a subprocess) and ``importlib.metadata`` finds
it as it finds any installed package."""

from __future__ import annotations

from pathlib import Path

ARCHITECTURE = "tiny_tabular_net"
MODULE = "rift_test_arch_plugin"
# Installed names of the awkward models in tests/module_factories.py (3×H×W inputs).
AWKWARD_ARCHITECTURES = {"tied_weights_net": "TiedWeights", "odd_layers_net": "OddLayers",
                         "attention_net": "AttentionNet",
                         "cross_attention_net": "CrossAttentionNet",
                         "bilinear_embedding_net": "BilinearEmbeddingNet",
                         "normalized_net": "NormalizedNet",
                         "batch_statistics_net": "batch_statistics_net",
                         "half_precision_net": "half_precision_net",
                         "dropout_left_on_net": "DropoutLeftOn",
                         "token_classifier_net": "TokenClassifier",
                         "extra_state_net": "ExtraStateNet",
                         "view_flatten_net": "ViewFlattenNet",
                         "imagenet_size_net": "FixedInputSizeNet",
                         **{name: name for name in (
                             "dict_output_net", "namedtuple_output_net", "tuple_output_net",
                             "object_output_net",
                             "two_logits_net", "features_first_in_training_net",
                             "weight_norm_net", "spectral_norm_net", "hook_weight_norm_net",
                             "hook_spectral_norm_net", "compiled_net", "data_parallel_net",
                             "compiled_block_net",
                             "reentrant_checkpoint_net", "train_mode_checkpoint_net",
                             "checkpoint_net", "scripted_net", "network_and_transforms_net",
                             "drops_normalization_net")},
                         "plain_conv_net": "PlainConvNet", "lazy_net": "LazyNet",
                         "batchnorm_layouts_net": "BatchNormLayoutsNet",
                         "bad_module_net": "BadModuleNet",
                         "recurrent_net": "RecurrentNet",
                         "checkpointed_positions_net": "CheckpointedPositions",
                         # 1-channel inputs (digits):
                         "gated_branch_net": "GatedBranch",
                         "train_dropped_branch_net": "TrainDroppedBranch"}

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


def awkward(class_name):
    def build_awkward(*, num_classes, in_channels, mean=None, std=None):
        from tests import module_factories

        return getattr(module_factories, class_name)(num_classes)
    return build_awkward
''' + "".join(f"\n{name} = awkward({cls!r})\n" for name, cls in AWKWARD_ARCHITECTURES.items())


def write_entry_point_dist(folder: Path) -> Path:
    """Write the package and its ``.dist-info`` into ``folder``; returns ``folder``."""
    (folder / MODULE).mkdir(parents=True, exist_ok=True)
    (folder / MODULE / "__init__.py").write_text(_SOURCE)
    info = folder / f"{MODULE}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[rift.architectures]\n{ARCHITECTURE} = {MODULE}:build\n"
        + "".join(f"{name} = {MODULE}:{name}\n" for name in AWKWARD_ARCHITECTURES))
    return folder
