"""Which weights MRC scores (rift/scored_weights.py): every convolution and linear kind, packed
attention projections, each weight tensor once, and the rest named rather than dropped silently."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from rift.config import ArchitectureSpec
from rift.models import build_model
from rift.scored_weights import scored_parameters, scored_weights, unscored_kinds
from tests.module_factories import (
    AttentionNet,
    BilinearEmbeddingNet,
    CrossAttentionNet,
    OddLayers,
    PlainConvNet,
    TiedWeights,
)


def test_every_convolution_kind_and_a_bias_free_linear_is_scored() -> None:
    # Before: only Conv2d and Linear were scored, so this model's table was ['head', 'aux'] and
    # its three convolutions were silently left out.
    scored = scored_weights(OddLayers())
    assert scored.modules == ["volume", "up", "sequence", "head", "aux"]
    assert scored.unscored == [] and scored.aliases == {}


def test_a_shared_weight_is_one_row_under_its_first_holder() -> None:
    model = TiedWeights()
    scored = scored_weights(model)
    assert scored.modules == ["stem", "a", "twice", "mix", "head"]
    assert scored.aliases == {"b": "a"}
    assert scored_parameters(model.b) == (model.a.weight,)


def test_packed_attention_projections_are_scored_and_raw_parameters_are_named() -> None:
    model = AttentionNet()
    scored = scored_weights(model)
    # in_proj_weight is a raw Parameter of the attention module, out_proj a Linear subclass.
    assert scored.modules == ["embed", "attn", "attn.out_proj", "head"]
    assert scored_parameters(model.attn) == (model.attn.in_proj_weight,)
    # Biases of scored modules and LayerNorm parameters are outside the table by design.
    assert scored.unscored == ["cls_token"]


def test_separate_query_key_value_projections_are_one_row_like_the_packed_tensor() -> None:
    # Before: an attention with kdim != embed_dim had no row and its projections were only named
    # in a warning.
    model = CrossAttentionNet()
    scored = scored_weights(model)
    assert scored.modules == ["embed", "context", "attn", "attn.out_proj", "head"]
    attention = model.attn
    assert scored_parameters(attention) == (attention.q_proj_weight, attention.k_proj_weight,
                                            attention.v_proj_weight)
    assert scored.unscored == []


def test_bilinear_is_scored_and_an_embedding_table_is_named_by_its_layer() -> None:
    model = BilinearEmbeddingNet()
    scored = scored_weights(model)
    assert scored.modules == ["stem", "pair", "head"]  # the frozen stem too
    assert scored.unscored == ["positions.weight"]
    assert unscored_kinds(model, scored.unscored) == {"Embedding": ["positions.weight"]}
    assert unscored_kinds(AttentionNet(), ["cls_token"]) == {"raw Parameter": ["cls_token"]}


def test_a_pruned_layer_is_named_as_pruned_not_as_a_convolution_mrc_skips() -> None:
    """``torch.nn.utils.prune`` leaves ``weight`` a plain tensor made by a hook from
    ``weight_orig`` and ``weight_mask``: no row. Before, the warning listed c2.weight_orig and
    c2.bias as "parameters of Conv2d layers", beside "MRC scores the weights of convolution"."""
    model = PlainConvNet()
    prune.l1_unstructured(model.conv2, "weight", amount=0.5)
    prune.random_unstructured(model.conv2, "weight", amount=0.2)  # a PruningContainer
    scored = scored_weights(model)
    assert scored.modules == ["conv1", "head"]
    assert unscored_kinds(model, scored.unscored) == {
        "pruned layer": ["conv2.bias", "conv2.weight_orig"]}


def test_a_lazy_layer_before_its_first_call_has_no_row() -> None:
    assert scored_parameters(nn.LazyLinear(3)) == ()


# One or two of each torchvision family, built on the meta device (no memory, ~3 s in all).
_TORCHVISION = {
    "alexnet": [], "convnext_tiny": ["layer_scale"] * 18, "densenet121": [],
    "efficientnet_b0": [], "googlenet": [], "mnasnet0_5": [], "mobilenet_v3_small": [],
    "regnet_y_400mf": [], "resnet18": [], "shufflenet_v2_x0_5": [], "squeezenet1_1": [],
    "swin_t": ["relative_position_bias_table"] * 12, "swin_v2_t": ["logit_scale"] * 12,
    "vgg11_bn": [], "vit_b_16": ["class_token", "pos_embedding"],
}


@pytest.mark.parametrize(("name", "raw"), _TORCHVISION.items())
def test_torchvision_rows_are_every_layer_weight_once_and_the_rest_is_raw(
        name: str, raw: list[str]) -> None:
    """Every convolution, linear layer and attention of the model is one row under its own
    name; what is left are the raw Parameters each architecture is known to hold (ViT's class
    token and position table, Swin's bias tables and logit scales, ConvNeXt's layer scales)."""
    with torch.device("meta"):
        model = build_model(ArchitectureSpec(name=f"torchvision:{name}", num_classes=3),
                            image_size=224)
    layers = [module_name for module_name, module in model.named_modules()
              if isinstance(module, nn.Conv2d | nn.Linear | nn.MultiheadAttention)]
    scored = scored_weights(model)
    assert scored.modules == layers and scored.aliases == {}
    kinds = unscored_kinds(model, scored.unscored)
    assert [unscored.rpartition(".")[2] for unscored in kinds.get("raw Parameter", [])] == raw
    assert set(kinds) <= {"raw Parameter"}
