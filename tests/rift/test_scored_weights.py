"""Which weights MRC scores (rift/scored_weights.py): every convolution and linear kind, packed
attention projections, each weight tensor once, and the rest named rather than dropped silently."""

from __future__ import annotations

from torch import nn

from rift.scored_weights import scored_parameters, scored_weights, unscored_kinds
from tests.module_factories import (
    AttentionNet,
    BilinearEmbeddingNet,
    CrossAttentionNet,
    OddLayers,
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


def test_a_lazy_layer_before_its_first_call_has_no_row() -> None:
    assert scored_parameters(nn.LazyLinear(3)) == ()
