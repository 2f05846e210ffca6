"""Tests of rift.sequential_attack on a small real model: a stopped count is a prefix of the full
one, the full count is evaluate_accuracy's, and random starts belong to examples, not batches."""

from __future__ import annotations

import torch
from torch import nn

from rift.attacks import PGD
from rift.data import ImageTensors
from rift.evaluation import RandomStarts, evaluate_accuracy, example_noise
from rift.robust_tally import RobustTally
from rift.sequential_attack import (
    Attacked,
    attack_until,
    clean_correct,
    example_flops,
    likely_failures_first,
    stop_chunk,
)

CPU = torch.device("cpu")
ATTACK = PGD(eps=0.1, step_size=0.05, steps=3)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def _data(n: int = 64) -> ImageTensors:
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (n,), generator=generator)
    # A class-dependent brightness the model can pick up, so that some examples stay correct.
    images = (torch.rand(n, 3, 8, 8, generator=generator) * 0.5 + 0.4 * labels.view(-1, 1, 1, 1))
    return ImageTensors(images, labels)


def test_a_full_count_equals_evaluate_accuracy_and_a_stopped_one_is_its_prefix() -> None:
    model, data = _model(), _data()
    whole = attack_until(model, data, ATTACK, at_least=0, chunk=8, device=CPU, seed=5)
    full = whole.tally
    report = evaluate_accuracy(model, data, attack=ATTACK, batch_size=8, device=CPU, seed=5)
    assert full.complete and full.accuracy == report.robust_accuracy
    assert full.gradient_steps == len(data) * ATTACK.steps
    assert 0 < full.correct < len(data)  # the attack neither always fails nor always wins
    # Asking for more than the full count stops once that is certain, well before the end.
    bar = full.correct + 20
    cut = attack_until(model, data, ATTACK, at_least=bar, chunk=8, device=CPU, seed=5)
    stopped = cut.tally
    assert not stopped.complete and stopped.cannot_reach(bar)
    assert stopped.attacked % 8 == 0 and stopped.at_most >= full.correct
    assert torch.equal(cut.robust[:stopped.attacked], whole.robust[:stopped.attacked])
    assert torch.equal(cut.margin[:stopped.attacked], whole.margin[:stopped.attacked])
    assert not cut.robust[stopped.attacked:].any() and cut.margin[stopped.attacked:].isnan().all()
    assert torch.equal(whole.robust, whole.margin > 0)


def test_an_example_starts_from_the_same_point_in_any_batch() -> None:
    whole = example_noise(torch.arange(10), (3, 4, 4), seed=1)
    alone = example_noise(torch.tensor([7, 2]), (3, 4, 4), seed=1)
    assert torch.equal(alone, whole[[7, 2]])
    assert not torch.equal(example_noise(torch.arange(10), (3, 4, 4), seed=2), whole)


def test_kept_random_starts_are_the_draws_of_example_noise(monkeypatch) -> None:
    import rift.evaluation

    drawn: list[int] = []
    original = rift.evaluation.example_noise

    def counting(indices: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        drawn.extend(indices.tolist())
        return original(indices, shape, seed)

    monkeypatch.setattr(rift.evaluation, "example_noise", counting)
    starts = RandomStarts(seed=4, total=20)
    expected = original(torch.arange(20), (3, 4, 4), seed=4)
    for indices in (torch.tensor([3, 9, 1]), torch.tensor([9, 0, 3, 19]), torch.arange(20)):
        assert torch.equal(starts.draw(indices, (3, 4, 4)), expected[indices])
    assert sorted(drawn) == list(range(20))  # each example drawn once over the three calls
    # Over the byte budget nothing is kept, and the values are the same.
    small = RandomStarts(seed=4, total=20, max_bytes=100)
    drawn.clear()
    for _ in range(2):
        assert torch.equal(small.draw(torch.tensor([5, 2]), (3, 4, 4)), expected[[5, 2]])
    assert drawn == [5, 2, 5, 2]


def test_a_count_with_kept_starts_equals_one_drawn_afresh() -> None:
    model, data = _model(), _data()
    fresh = attack_until(model, data, ATTACK, at_least=0, chunk=8, device=CPU, seed=5)
    starts = RandomStarts(seed=5, total=len(data))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    attack_until(model, data, ATTACK, at_least=0, chunk=8, device=CPU, seed=5, order=order,
                 random_starts=starts)  # fills the table in another order
    kept = attack_until(model, data, ATTACK, at_least=0, chunk=8, device=CPU, seed=5,
                        random_starts=starts)
    assert torch.equal(kept.robust, fresh.robust) and torch.equal(kept.margin, fresh.margin)


def test_likely_failures_come_first_then_thin_baseline_margins() -> None:
    clean = torch.tensor([True, False, True, True, False])
    margin = torch.tensor([2.0, 0.5, -0.5, 0.1, -3.0])
    baseline = Attacked(RobustTally(3, 5, 5), margin > 0, margin)
    # Misclassified clean (4, 1), then broken at θ_AT (2), then the rest, thinnest margin first.
    assert likely_failures_first(clean, baseline).tolist() == [4, 1, 2, 3, 0]


def test_clean_correct_is_the_argmax() -> None:
    model, data = _model(), _data()
    correct = clean_correct(model, data, batch_size=16, device=CPU)
    with torch.no_grad():
        expected = model.eval()(data.images).argmax(1) == data.labels
    assert torch.equal(correct, expected)


def test_a_stop_chunk_keeps_a_bounded_overshoot() -> None:
    assert stop_chunk(4_000, 512) == 125 and stop_chunk(10_000, 256) == 256
    # A floor on small sets (a call has a fixed cost), still within the set and the batch size.
    assert stop_chunk(449, 512) == 64 and stop_chunk(449, 16) == 16
    assert stop_chunk(5, 512) == 5 and stop_chunk(0, 512) == 1
    # On an accelerator a call costs about the same for a few examples as for a batch: whole
    # batches (still within the set).
    gpu = torch.device("cuda", 0)
    assert stop_chunk(2_000, 512, gpu) == 512 and stop_chunk(449, 256, gpu) == 256
    assert stop_chunk(100, 512, gpu) == 100
    assert stop_chunk(2_000, 512, CPU) == stop_chunk(2_000, 512) == 64


def test_a_heavy_model_gets_a_finer_chunk_on_a_cpu_only() -> None:
    # ResNet-18 on 32×32 images is 1.1 GFLOP: chunks of 16 on a CPU; a small model keeps 64.
    assert stop_chunk(64, 256, CPU, 1.11e9) == 16 and stop_chunk(449, 512, CPU, 1.11e9) == 16
    assert stop_chunk(2_000, 512, CPU, 1.11e9) == 63  # 1/32 of the set above the floor
    assert stop_chunk(449, 512, CPU, 3e5) == stop_chunk(449, 512, CPU) == 64
    assert stop_chunk(64, 256, CPU, 1e12) == 2  # never below 1/32 of the set, nor below 1
    assert stop_chunk(10, 256, CPU, 1e12) == 1
    assert stop_chunk(2_000, 512, torch.device("cuda", 0), 1.11e9) == 512  # accelerators: batches
    assert stop_chunk(64, 4, CPU, 1.11e9) == 4  # never above the batch size


def test_example_flops_counts_one_examples_forward() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.ReLU(), nn.Linear(10, 2))
    model.train()
    flops = example_flops(model, _data(), device=CPU)
    assert flops == 2 * (3 * 8 * 8 * 10 + 10 * 2)  # a multiply and an add per weight
    assert model.training  # the mode it had
    conv = _model()
    # The convolution's 8·3·3·3 weights at each of the 8×8 positions, and the linear layer.
    assert example_flops(conv, _data(), device=CPU) == 2 * (8 * 27 * 64 + 8 * 2)
    assert example_flops(conv, _data(0), device=CPU) is None
    assert example_flops(nn.Sequential(nn.Flatten()), _data(), device=CPU) is None


class _CannotBeCounted(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("an operation the FLOP counter cannot run")


def test_a_model_the_counter_cannot_run_keeps_the_default_floor() -> None:
    model = _CannotBeCounted().train()
    assert example_flops(model, _data(), device=CPU) is None
    assert model.training
    assert stop_chunk(449, 512, CPU, None) == 64
