"""MRC: the properties of docs/algorithm.md (non-negativity, the ball, scale invariance) and the cached
engine agreeing with a plain full-forward computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rift.config import MRCSpec
from rift.errors import ConfigError, JobCancelled
from rift.mrc import (
    MRCReport,
    module_robust_criticality,
    perturbable_modules,
    project_onto_ball,
    select_modules,
)
from rift.mrc_reference import plain_module_robust_criticality
from rift.segments import split_at_parameters, trace
from tests.module_factories import (
    AttentionNet,
    BilinearEmbeddingNet,
    CrossAttentionNet,
    OddLayers,
    TiedWeights,
    with_running_statistics,
)


class TwoLayerReLU(nn.Module):
    """f(x) = W2 φ(W1 x), no biases (Theorem A.4's network)."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        super().__init__()
        self.first = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.second = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.first.weight.copy_(w1)
            self.second.weight.copy_(w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x.flatten(1))))


class TinyResidualNet(nn.Module):
    """Conv + BN + a residual block with a skip connection and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        residual = F.relu(self.bn2(self.conv2(out)))
        out = F.relu(out + self.bn3(self.conv3(residual)))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


class UntraceableNet(TinyResidualNet):
    """Data-dependent control flow: torch.fx cannot trace it, so MRC must fall back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent branch
            x = x * 1.0
        return super().forward(x)


@pytest.fixture
def residual_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = with_running_statistics(TinyResidualNet(), 1)
    images = torch.rand(48, 3, 8, 8)
    labels = torch.randint(0, 5, (48,))
    return model, images, labels


def _spec(**overrides: object) -> MRCSpec:
    values: dict[str, object] = {"steps": 4, "batch_size": 16, "num_examples": 48}
    values.update(overrides)
    return MRCSpec(**values)


def test_mrc_is_non_negative_and_weights_are_restored(residual_setup) -> None:
    model, images, labels = residual_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = module_robust_criticality(model, images, labels, _spec())
    assert [row.name for row in report.modules] == perturbable_modules(model)
    assert all(row.mrc >= 0 for row in report.modules)
    assert any(row.mrc > 0 for row in report.modules)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.training


def test_cached_engine_equals_plain_full_forward(residual_setup) -> None:
    model, images, labels = residual_setup
    spec = _spec()
    cached = module_robust_criticality(model, images, labels, spec.model_copy(
        update={"engine": "cached"}))
    full = module_robust_criticality(model, images, labels, spec.model_copy(
        update={"engine": "full"}))
    plain = plain_module_robust_criticality(model, images, labels, spec)
    assert cached.engine == "cached" and full.engine == "full"
    for cached_row, full_row in zip(cached.modules, full.modules, strict=True):
        assert cached_row.mrc == pytest.approx(plain[cached_row.name], rel=1e-4, abs=1e-6)
        assert cached_row.mrc == pytest.approx(full_row.mrc, rel=1e-4, abs=1e-6)
        assert cached_row.robust_accuracy_at_worst == full_row.robust_accuracy_at_worst


def test_untraceable_model_falls_back_to_full_forward_with_same_values(residual_setup) -> None:
    _, images, labels = residual_setup
    torch.manual_seed(0)
    untraceable = with_running_statistics(UntraceableNet(), 1)
    auto = module_robust_criticality(untraceable, images, labels, _spec(engine="auto"))
    assert auto.engine == "full"
    plain = plain_module_robust_criticality(untraceable, images, labels, _spec())
    for row in auto.modules:
        assert row.mrc == pytest.approx(plain[row.name], rel=1e-4, abs=1e-6)
    with pytest.raises(ConfigError, match=r"mrc\.engine|traced"):
        module_robust_criticality(untraceable, images, labels, _spec(engine="cached"))


def test_perturbation_never_leaves_the_ball() -> None:
    generator = torch.Generator().manual_seed(3)
    for p in (2, "inf"):
        for _ in range(20):
            delta = torch.randn(6, 4, generator=generator) * 10
            radius = float(torch.rand(1, generator=generator)) + 0.01
            projected = project_onto_ball(delta, radius, p)
            norm = projected.abs().max() if p == "inf" else projected.norm()
            assert float(norm) <= radius * (1 + 1e-6)
        inside = torch.full((3,), 1e-3)
        assert torch.equal(project_onto_ball(inside, 1.0, p), inside)


def test_ascent_iterates_stay_in_the_ball(residual_setup, monkeypatch) -> None:
    """Record every projected point the ascent reaches and check its distance from θ."""
    import rift.mrc as mrc_module

    model, images, labels = residual_setup
    spec = _spec(eps=0.05, lr=50.0, modules=["conv2"])
    original = model.conv2.weight.detach().clone()
    radius = 0.05 * float(original.norm())
    distances: list[float] = []
    real_projection = mrc_module.project_onto_ball

    def recording_projection(delta, radius_, p):  # the real projection, observed
        projected = real_projection(delta, radius_, p)
        distances.append(float(projected.detach().norm()))
        return projected

    monkeypatch.setattr(mrc_module, "project_onto_ball", recording_projection)
    report = module_robust_criticality(model, images, labels, spec)
    assert len(distances) == spec.steps  # one projection per pass
    assert max(distances) <= radius * (1 + 1e-5)
    assert max(distances) > 0.9 * radius  # a large step reaches the surface
    assert report.modules[0].mrc > 0
    assert torch.equal(model.conv2.weight, original)


def test_every_pass_end_point_is_measured(residual_setup, monkeypatch) -> None:
    """The worst loss is the largest of the losses at the end of each pass (Δ = 0 included):
    re-measure each projected point on its own and compare with what MRC reports."""
    import rift.mrc as mrc_module

    model, images, labels = residual_setup
    spec = _spec(eps=0.2, lr=5.0, modules=["conv3"], steps=5)
    points: list[torch.Tensor] = []
    real_projection = mrc_module.project_onto_ball

    def recording_projection(delta, radius_, p):
        projected = real_projection(delta, radius_, p)
        points.append(projected.detach().clone())
        return projected

    monkeypatch.setattr(mrc_module, "project_onto_ball", recording_projection)
    row = module_robust_criticality(model, images, labels, spec).modules[0]
    monkeypatch.undo()
    original = model.conv3.weight.detach().clone()
    losses = []
    with torch.no_grad():
        baseline = float(F.cross_entropy(model(images), labels))
        for delta in points:
            model.conv3.weight.copy_(original + delta.view_as(original))  # a flat vector
            losses.append(float(F.cross_entropy(model(images), labels)))
        model.conv3.weight.copy_(original)
    assert len(losses) == spec.steps
    assert row.worst_robust_loss == pytest.approx(max([baseline, *losses]), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 10.0])
def test_scale_invariance_theorem_a4(beta: float) -> None:
    """g(x) = (1/β) W2 φ(β W1 x) equals f and has the same MRC for the first layer."""
    generator = torch.Generator().manual_seed(7)
    w1 = torch.randn(16, 12, generator=generator) * 0.5
    w2 = torch.randn(4, 16, generator=generator) * 0.5
    f = TwoLayerReLU(w1, w2).eval()
    g = TwoLayerReLU(beta * w1, w2 / beta).eval()
    x = torch.randn(64, 12, generator=generator)
    y = torch.randint(0, 4, (64,), generator=generator)
    torch.testing.assert_close(f(x), g(x), rtol=1e-5, atol=1e-5)

    # A step large enough to land on the ball's surface: the projected step is then scale
    # equivariant (Δ_g = β Δ_f), so the same lr gives the same MRC.
    surface = MRCSpec(steps=1, lr=1e6, batch_size=64, modules=["first"], ascent="sgd")
    mrc_f = module_robust_criticality(f, x, y, surface).modules[0].mrc
    mrc_g = module_robust_criticality(g, x, y, surface).modules[0].mrc
    assert mrc_f > 0
    assert mrc_g == pytest.approx(mrc_f, rel=1e-4)

    # Many ascent steps: gradients scale by 1/β, so the matching learning rate scales by β²;
    # the iterates of g are then β times those of f and the MRC values agree.
    many = MRCSpec(steps=10, lr=0.5, batch_size=16, modules=["first"], ascent="sgd")
    mrc_f = module_robust_criticality(f, x, y, many).modules[0].mrc
    scaled = many.model_copy(update={"lr": 0.5 * beta**2})
    mrc_g = module_robust_criticality(g, x, y, scaled).modules[0].mrc
    assert mrc_f > 0
    assert mrc_g == pytest.approx(mrc_f, rel=1e-3)


def test_module_selection_patterns_and_subsets(residual_setup) -> None:
    model = residual_setup[0]
    assert select_modules(model, _spec(include=["conv*"])) == ["conv1", "conv2", "conv3"]
    assert select_modules(model, _spec(exclude=["conv*"])) == ["head"]
    assert select_modules(model, _spec(modules=["head", "conv2"])) == ["conv2", "head"]
    with pytest.raises(ConfigError) as error:
        select_modules(model, _spec(modules=["conv9"]))
    assert error.value.field == "mrc.modules" and "conv9" in error.value.message
    # An empty selection names the field that removed the last module (before: always
    # 'mrc.include', also for modules=[] or an exclude that matched everything).
    for spec, field in ((_spec(include=["nothing*"]), "mrc.include"),
                        (_spec(modules=[]), "mrc.modules"),
                        (_spec(include=["conv*"], exclude=["conv*"]), "mrc.exclude")):
        with pytest.raises(ConfigError, match=f"{field} left none") as error:
            select_modules(model, spec)
        assert error.value.field == field
    with pytest.raises(ConfigError) as error:
        select_modules(nn.Sequential(nn.ReLU()), _spec())
    assert error.value.field == "architecture"
    assert "no layer MRC scores" in error.value.message and "it has no parameters" in \
        error.value.message


def test_a_model_with_no_scored_layer_names_what_its_parameters_are() -> None:
    """Before: "the module selection (modules/include/exclude) matches no conv or linear
    module", on a run that selected nothing."""
    class RawWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(12, 4))
            self.table = nn.Embedding(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) @ self.w + self.table.weight.sum(0)

    with pytest.raises(ConfigError) as error:
        select_modules(RawWeights(), _spec())
    assert error.value.field == "architecture"
    assert error.value.message.startswith(
        "the model has no layer MRC scores (a convolution, Linear, Bilinear or attention "
        "projection): its parameters are raw Parameters held by its own code: w; Embedding: "
        "table.weight. RiFT scores layers")


def test_naming_a_module_mrc_does_not_score_says_what_it_is(residual_setup) -> None:
    # Before: "unknown module(s) ['bn1']" for a module the model has.
    model = residual_setup[0]
    with pytest.raises(ConfigError) as error:
        select_modules(model, _spec(modules=["conv1", "bn1", "conv9"]))
    assert error.value.field == "mrc.modules"
    assert error.value.message == (
        "'bn1' is a BatchNorm2d, which MRC does not score (it scores convolutions, linear and "
        "bilinear layers and attention projections: rift/scored_weights.py); unknown module(s) "
        "['conv9']; conv/linear modules of this model are e.g. "
        "['conv1', 'conv2', 'conv3', 'head']")
    container = nn.Sequential()
    container.add_module("block", nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    with pytest.raises(ConfigError, match=r"'block' is a Sequential, which MRC does not score "
                                          r".*; the scored modules inside it are e.g. \['block.0'\]"):
        select_modules(container, _spec(modules=["block"]))


def test_naming_a_pruned_layer_in_mrc_modules_says_it_is_pruned() -> None:
    """Before: "'c' is a Conv2d, which MRC does not score (it scores convolutions ...)"."""
    from torch.nn.utils import prune

    model = nn.Sequential()
    model.add_module("c", nn.Conv2d(3, 4, 1))
    model.add_module("d", nn.Conv2d(4, 4, 1))
    prune.l1_unstructured(model.c, "weight", amount=0.5)
    with pytest.raises(ConfigError, match=r"'c' is pruned with torch.nn.utils.prune: .* no "
                                          r"weight Parameter MRC could perturb .*prune.remove"
                       ) as error:
        select_modules(model, _spec(modules=["c"]))
    assert error.value.field == "mrc.modules"


def test_subset_tables_merge_to_the_whole_table(residual_setup) -> None:
    from rift.mrc import merge_reports

    model, images, labels = residual_setup
    whole = module_robust_criticality(model, images, labels, _spec())
    part_a = module_robust_criticality(model, images, labels, _spec(modules=["conv1", "head"]))
    part_b = module_robust_criticality(model, images, labels, _spec(modules=["conv2", "conv3"]))
    merged = merge_reports([part_b, part_a], perturbable_modules(model))
    assert [row.name for row in merged.modules] == [row.name for row in whole.modules]
    for merged_row, row in zip(merged.modules, whole.modules, strict=True):
        assert merged_row.mrc == pytest.approx(row.mrc, rel=1e-6, abs=1e-9)
    assert merged.lowest().name == whole.lowest().name


def test_cancellation_stops_at_a_batch_boundary(residual_setup) -> None:
    model, images, labels = residual_setup
    calls = {"n": 0}

    def cancel_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(JobCancelled):
        module_robust_criticality(model, images, labels, _spec(), should_cancel=cancel_after_five)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("arch", ["resnet18", "preact_resnet18"])
def test_cached_equals_plain_on_registry_resnets(arch: str) -> None:
    """Residual branches and shortcut convolutions split correctly on the real architectures."""
    from rift.config import ArchitectureSpec
    from rift.models import build_model

    torch.manual_seed(0)
    model = with_running_statistics(build_model(ArchitectureSpec(name=arch, num_classes=10)), 2)
    # 16×16 inputs (the models pool adaptively): the same graph as at 32×32, a quarter the work.
    images, labels = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    modules = ["conv1", "layer2.0.shortcut.0", "layer3.1.conv2", "linear"]
    spec = MRCSpec(steps=2, batch_size=6, modules=modules, lr=10.0)
    cached = module_robust_criticality(model, images, labels, spec)
    plain = plain_module_robust_criticality(model, images, labels, spec)
    assert cached.engine == "cached"
    assert [row.name for row in cached.modules] == modules
    for row in cached.modules:
        assert row.mrc == pytest.approx(plain[row.name], rel=1e-4, abs=1e-6), row.name
    assert any(row.mrc > 0 for row in cached.modules)


def _cached_rows_equal_plain(model: nn.Module, spec: MRCSpec, classes: int = 4
                             ) -> MRCReport:
    torch.manual_seed(1)
    images, labels = torch.rand(12, 3, 8, 8), torch.arange(12) % classes
    cached = module_robust_criticality(model.eval(), images, labels, spec)
    scored = [row.name for row in cached.modules]
    plain = plain_module_robust_criticality(model, images, labels,
                                            spec.model_copy(update={"modules": scored}))
    assert cached.engine == "cached"
    assert list(plain) == scored
    for row in cached.modules:
        assert row.mrc == pytest.approx(plain[row.name], rel=1e-5, abs=2e-5), row.name
    return cached


def test_a_weight_read_in_several_places_is_perturbed_at_every_read() -> None:
    """A tied weight (``b`` holds ``a``'s Parameter), a module called twice and a weight also read
    functionally. Before, the cached engine split at one call only: ``b`` and ``mix`` were scored
    with a prefix cached from the unperturbed weight (``mix`` 1.4012 against 1.4018 in full), and
    ``a``/``b`` were two rows for one Parameter."""
    torch.manual_seed(0)
    model = TiedWeights()
    spec = MRCSpec(steps=3, batch_size=12, num_examples=12, eps=0.5)
    report = _cached_rows_equal_plain(model, spec)
    assert [row.name for row in report.modules] == ["stem", "a", "twice", "mix", "head"]
    traced = trace(model)
    for weight in (model.a.weight, model.twice.weight, model.mix.weight):
        # A real split (not the whole-model fallback) whose prefix never reads the weight.
        segment = split_at_parameters(traced, [weight])
        assert segment is not None
        prefix = segment.prefix
        for node in prefix.graph.nodes:
            if node.op == "call_module":
                held = list(prefix.get_submodule(str(node.target)).parameters())
                assert all(p is not weight for p in held), node.target
            if node.op == "get_attr":
                assert prefix.get_parameter(str(node.target)) is not weight, node.target


def test_attention_projections_are_scored_and_raw_parameters_reported() -> None:
    torch.manual_seed(0)
    report = _cached_rows_equal_plain(AttentionNet(), MRCSpec(steps=2, batch_size=12,
                                                              num_examples=12, eps=0.5))
    assert [row.name for row in report.modules] == ["embed", "attn", "attn.out_proj", "head"]
    assert report.unscored == ["cls_token"]


@pytest.mark.parametrize("p", [2, "inf"])
def test_separate_query_key_value_projections_are_scored_as_one_vector(p: int | str) -> None:
    """The cached engine splits at the attention for its three tensors and agrees with the
    plain computation, which perturbs the three together (one ball, one step)."""
    torch.manual_seed(0)
    report = _cached_rows_equal_plain(CrossAttentionNet(), MRCSpec(
        steps=2, batch_size=6, num_examples=12, eps=0.5, p=p, ascent="normalized"))
    assert [row.name for row in report.modules] == [
        "embed", "context", "attn", "attn.out_proj", "head"]
    attention = dict(zip([row.name for row in report.modules], report.modules,
                         strict=True))["attn"]
    assert attention.parameters == 3 * 8 * 8 - 2 * 8 * (8 - 6)
    assert attention.mrc > 0 and report.unscored == []


def test_separate_projections_score_as_the_packed_tensor_holding_the_same_weights() -> None:
    """With kdim == vdim == embed_dim forced onto separate tensors, the row equals the packed
    attention's row on the same weights: the same vector, ball and steps."""
    torch.manual_seed(0)
    packed = AttentionNet().eval()
    separate = AttentionNet().eval()
    separate.load_state_dict(packed.state_dict())
    attention = separate.attn
    q, k, v = attention.in_proj_weight.detach().chunk(3)
    attention._qkv_same_embed_dim = False
    attention.q_proj_weight = nn.Parameter(q.clone())
    attention.k_proj_weight = nn.Parameter(k.clone())
    attention.v_proj_weight = nn.Parameter(v.clone())
    attention.in_proj_weight = None  # type: ignore[assignment]
    images, labels = torch.rand(12, 3, 8, 8), torch.arange(12) % 4
    spec = MRCSpec(steps=3, batch_size=6, num_examples=12, eps=0.5, modules=["attn"])
    assert torch.allclose(packed(images), separate(images), atol=1e-6)
    rows = [module_robust_criticality(model, images, labels, spec).modules[0]
            for model in (packed, separate)]
    assert rows[0].parameters == rows[1].parameters
    assert rows[1].mrc == pytest.approx(rows[0].mrc, rel=1e-5, abs=1e-6)
    assert rows[0].mrc > 0


def test_bilinear_and_frozen_layers_are_scored_and_left_as_they_were() -> None:
    torch.manual_seed(0)
    model = BilinearEmbeddingNet()
    report = _cached_rows_equal_plain(model, MRCSpec(steps=2, batch_size=12, num_examples=12,
                                                      eps=0.5))
    assert [row.name for row in report.modules] == ["stem", "pair", "head"]
    assert report.unscored == ["positions.weight"]
    assert not model.stem.weight.requires_grad  # the builder's flag, put back


def test_modules_the_output_does_not_depend_on_are_left_out_and_named() -> None:
    """OddLayers' ``aux`` head is never called in eval mode. Before, its ascent raised a bare
    RuntimeError ("element 0 of tensors does not require grad"); scored as 0 it would have been
    chosen for fine-tuning without any effect on the model's predictions."""
    torch.manual_seed(0)
    model = OddLayers()
    report = _cached_rows_equal_plain(model, MRCSpec(steps=2, batch_size=12, num_examples=12))
    assert [row.name for row in report.modules] == ["volume", "up", "sequence", "head"]
    assert report.unreachable == ["aux"]
    with pytest.raises(ConfigError, match="aux") as info:
        module_robust_criticality(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]),
                                  MRCSpec(modules=["aux"]))
    assert info.value.field == "mrc.modules"


def test_naming_a_weight_alias_says_which_module_scores_it() -> None:
    with pytest.raises(ConfigError, match="'b' shares its weight with 'a'"):
        select_modules(TiedWeights(), MRCSpec(modules=["b"]))


def test_non_finite_losses_are_a_numerical_error(residual_setup) -> None:
    """A NaN in the forward (here a bias; in practice extreme normalisation) makes the robust
    loss NaN; MRC says so instead of returning a table of NaNs."""
    from rift.errors import NumericalError

    model, images, labels = residual_setup
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(NumericalError, match=r"mean/std|diverged"):
        module_robust_criticality(model, images, labels, _spec(modules=["conv1"]))


def _out_of_memory_above(module: nn.Module, examples: int) -> torch.utils.hooks.RemovableHandle:
    """Make ``module`` fail as a device out of memory would when it sees more than ``examples``
    examples at once."""
    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if inputs[0].shape[0] > examples:
            raise torch.OutOfMemoryError(f"simulated: {inputs[0].shape[0]} > {examples}")
    return module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("engine", ["cached", "full"])
def test_out_of_memory_computes_each_batch_in_parts_with_the_same_steps(
        residual_setup, engine: str) -> None:
    model, images, labels = residual_setup
    spec = _spec(batch_size=24, engine=engine)
    whole = module_robust_criticality(model, images, labels, spec)
    backoffs: list[tuple[int, int]] = []
    handle = _out_of_memory_above(model.head, 10)
    try:
        parts = module_robust_criticality(model, images, labels, spec,
                                          on_backoff=lambda a, b: backoffs.append((a, b)))
    finally:
        handle.remove()
    # 24 → 12 → 6 once, on the first measurement; every later module keeps parts of 6.
    assert backoffs == [(24, 12), (12, 6)]
    assert parts.baseline_robust_loss == pytest.approx(whole.baseline_robust_loss, rel=1e-6)
    for a, b in zip(parts.modules, whole.modules, strict=True):
        assert a.name == b.name
        assert a.mrc == pytest.approx(b.mrc, rel=1e-4, abs=1e-7), a.name
        assert a.robust_accuracy_at_worst == b.robust_accuracy_at_worst
    assert parts.lowest().name == whole.lowest().name


def test_out_of_memory_at_one_example_is_raised_with_the_weights_restored(
        residual_setup) -> None:
    model, images, labels = residual_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = _out_of_memory_above(model.head, 0)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            module_robust_criticality(model, images, labels, _spec(modules=["conv1"]))
    finally:
        handle.remove()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_adversarial_set_does_not_depend_on_the_batch_size(residual_setup) -> None:
    from rift.attacks import PGD
    from rift.mrc import make_adversarial_set

    model, images, labels = residual_setup
    attack = PGD(eps=0.1, step_size=0.03, steps=3)
    sets = [make_adversarial_set(model, images, labels, attack, batch_size=size,
                                 generator=torch.Generator().manual_seed(7))
            for size in (48, 16, 5)]
    assert torch.allclose(sets[0], sets[1], atol=1e-6) and torch.allclose(sets[0], sets[2],
                                                                          atol=1e-6)
    # On the CPU the starts equal those drawn batch by batch from the same generator.
    generator = torch.Generator().manual_seed(7)
    batch_by_batch = torch.cat([
        attack.perturb(model, images[i:i + 16], labels[i:i + 16], generator=generator)
        for i in range(0, len(images), 16)])
    assert torch.equal(sets[1], batch_by_batch)


def test_making_the_mrc_set_backs_off_on_out_of_memory(digits_checkpoint_path,
                                                       digits_job_config) -> None:
    from rift.config import RiftConfig
    from rift.pipeline import PipelineCallbacks, make_mrc_inputs, prepare_run

    digits_job_config["mrc"].update(num_examples=64, batch_size=64)
    run = prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    expected = make_mrc_inputs(run)
    events: list[tuple[str, dict]] = []
    handle = _out_of_memory_above(run.model, 20)
    try:
        made = make_mrc_inputs(run, PipelineCallbacks(
            on_event=lambda kind, data: events.append((kind, data))))
    finally:
        handle.remove()
    assert torch.allclose(made.adversarial, expected.adversarial, atol=1e-6)
    assert torch.equal(made.labels, expected.labels)
    warnings = [data["message"] for kind, data in events if kind == "warning"]
    assert len(warnings) == 2 and "mrc.batch_size 64; continuing with 32" in warnings[0]


@pytest.mark.parametrize(("stage", "field"), [("finetune", "finetune.batch_size"),
                                              ("interpolate", "evaluation.batch_size"),
                                              ("mrc", "mrc.batch_size")])
def test_out_of_memory_no_back_off_can_absorb_fails_naming_the_batch_size(
        digits_checkpoint_path, digits_job_config, stage: str, field: str) -> None:
    from rift.config import RiftConfig
    from rift.errors import DeviceMemoryError
    from rift.pipeline import (
        prepare_run,
        run_finetune_stage,
        run_interpolation_stage,
        run_mrc_stage,
    )

    digits_job_config["mrc"].update(num_examples=32, batch_size=32, steps=1)
    digits_job_config["finetune"].update(epochs=1, lr_milestones=[])
    run = prepare_run(RiftConfig.model_validate(digits_job_config), digits_checkpoint_path)
    handle = _out_of_memory_above(run.model, 0)  # not even one example fits
    try:
        with pytest.raises(DeviceMemoryError) as raised:
            if stage == "finetune":
                run_finetune_stage(run, "fc")
            elif stage == "interpolate":
                run_interpolation_stage(run, run.original_state)
            else:
                run_mrc_stage(run)
    finally:
        handle.remove()
    assert raised.value.field == field and raised.value.code == "out_of_device_memory"
    assert f"{field} = " in raised.value.message and "simulated" in raised.value.message
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
