"""Which weights MRC scores (rift/scored_weights.py): every convolution and linear kind, packed
attention projections, each weight tensor once, and the rest named rather than dropped silently."""

from __future__ import annotations

from torch import nn

from rift.scored_weights import scored_weight, scored_weights
from tests.module_factories import AttentionNet, OddLayers, TiedWeights


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
    assert scored_weight(model.b) is scored_weight(model.a)


def test_packed_attention_projections_are_scored_and_raw_parameters_are_named() -> None:
    model = AttentionNet()
    scored = scored_weights(model)
    # in_proj_weight is a raw Parameter of the attention module, out_proj a Linear subclass.
    assert scored.modules == ["embed", "attn", "attn.out_proj", "head"]
    assert scored_weight(model.attn) is model.attn.in_proj_weight
    # Biases of scored modules and LayerNorm parameters are outside the table by design.
    assert scored.unscored == ["cls_token"]


def test_separate_query_key_value_projections_are_named_as_unscored() -> None:
    attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    assert scored_weight(attention) is None
    scored = scored_weights(nn.Sequential(attention))
    assert scored.modules == ["0.out_proj"]
    assert scored.unscored == ["0.q_proj_weight", "0.k_proj_weight", "0.v_proj_weight",
                               "0.in_proj_bias"]
