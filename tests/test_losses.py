"""Supervised InfoNCE (reference and blocked), unit rows, the ms/cs terms and MSCSLoss against a loop-based
docs/method.md §2-3 and against numbers of the previous single-class MSCSLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mscl.distributed import GatheredSampler, gather_labels, gather_with_grad, is_distributed, rank, world_size
from mscl.losses import (
    ContrastiveSum,
    CrossScaleTerm,
    LossOutput,
    MSCSLoss,
    MultiScaleTerm,
    SupervisedInfoNCE,
    supervised_infonce,
    supervised_infonce_reference,
    unit_rows,
)
from mscl.sampler import ClassBalancedSampler, SharedPositionSampler, StageSamples, downsample_labels, map_positions

IMPLEMENTATIONS = [supervised_infonce_reference, supervised_infonce]


def loop_infonce(z, y, z2=None, y2=None, temperature=0.1):
    """method.md §2 written out anchor by anchor and positive by positive (float64).

    ``log(exp(s_ip) / (exp(s_ip) + sum_n exp(s_in)))`` is evaluated as
    ``s_ip - logsumexp([s_ip, s_i1, ..., s_in])`` so that tiny temperatures stay finite.
    """
    anchors = F.normalize(z.double(), dim=1)
    self_form = z2 is None
    candidates = anchors if self_form else F.normalize(z2.double(), dim=1)
    candidate_labels = y if self_form else y2
    per_anchor = []
    for i in range(len(anchors)):
        positives = [j for j in range(len(candidates)) if candidate_labels[j] == y[i] and not (self_form and j == i)]
        negatives = [j for j in range(len(candidates)) if candidate_labels[j] != y[i]]
        if not positives:
            continue
        negative_logits = [anchors[i] @ candidates[n] / temperature for n in negatives]
        terms = []
        for p in positives:
            positive_logit = anchors[i] @ candidates[p] / temperature
            terms.append(positive_logit - torch.logsumexp(torch.stack([positive_logit, *negative_logits]), 0))
        per_anchor.append(-sum(terms) / len(positives))
    return sum(per_anchor) / len(per_anchor)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def make_set(n: int, classes: int, seed: int, dim: int = 6, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=generator, dtype=dtype, requires_grad=True)
    y = torch.randint(0, classes, (n,), generator=generator)
    return z, y


def loss_and_grads(fn, inputs, **kwargs):
    z, y, z2, y2 = inputs
    loss = fn(z, y, z2, y2, **kwargs)
    leaves = [t for t in (z, z2) if t is not None]
    return loss, torch.autograd.grad(loss, leaves)


def assert_close(a, b, tol):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert relative_error(loss_a.detach(), loss_b.detach()) < tol
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        assert relative_error(grad_a, grad_b) < tol


def self_inputs(seed: int):
    z, y = make_set(23, 4, seed)
    y[0] = 7  # a class with one sample: an anchor without positives
    return z, y, None, None


def cross_inputs(seed: int):
    z, y = make_set(19, 5, seed)
    y[:2] = 9  # classes absent from the candidates: anchors without positives
    z2, y2 = make_set(17, 5, seed + 100)
    return z, y, z2, y2


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("make_inputs", [self_inputs, cross_inputs], ids=["self", "cross"])
def test_both_implementations_match_loop_formula(make_inputs, temperature):
    inputs = make_inputs(seed=int(temperature * 100))
    expected = loss_and_grads(loop_infonce, inputs, temperature=temperature)
    assert_close(loss_and_grads(supervised_infonce_reference, inputs, temperature=temperature), expected, 1e-5)
    for block_rows in (None, 4, 7, 100):  # smaller than N, not dividing N, larger than N
        blocked = loss_and_grads(supervised_infonce, inputs, temperature=temperature, block_rows=block_rows)
        assert_close(blocked, expected, 1e-5)


@pytest.mark.parametrize("make_inputs", [self_inputs, cross_inputs], ids=["self", "cross"])
def test_tiny_temperature_uses_stable_row_shift(make_inputs):
    # 2/tau exceeds the exponent range where exp(s - 1/tau) is safe: the row-max shift is used.
    inputs = make_inputs(seed=3)
    expected = loss_and_grads(loop_infonce, inputs, temperature=0.002)
    assert_close(loss_and_grads(supervised_infonce, inputs, temperature=0.002, block_rows=5), expected, 1e-5)
    assert_close(loss_and_grads(supervised_infonce_reference, inputs, temperature=0.002), expected, 1e-5)
    z, y, z2, y2 = inputs
    as_float = (
        z.detach().float().requires_grad_(), y, None if z2 is None else z2.detach().float().requires_grad_(), y2,
    )
    expected32 = loss_and_grads(loop_infonce, as_float, temperature=0.02)
    assert_close(loss_and_grads(supervised_infonce, as_float, temperature=0.02, block_rows=6), expected32, 1e-4)


@pytest.mark.parametrize(("dtype", "temperature"), [(torch.float64, 0.002), (torch.float32, 0.01)])
def test_far_positive_and_negatives_stay_exact(dtype, temperature):
    # Anchor 0: positive at cos -1, negative at cos -0.9. exp(s - 1/tau) underflows for both, so a
    # constant shift would lose the term; the row shift by the largest negative keeps it.
    angle = math.acos(-0.9)
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [math.cos(angle), math.sin(angle)]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 0, 1])
    expected = loss_and_grads(loop_infonce, (z, y, None, None), temperature=temperature)
    assert expected[0].item() > 1.0
    for block_rows in (1, 2):
        actual = loss_and_grads(supervised_infonce, (z, y, None, None), temperature=temperature, block_rows=block_rows)
        assert_close(actual, expected, 1e-5 if dtype == torch.float64 else 1e-4)


def test_anchor_without_positive_is_left_out_of_the_mean():
    z, y, z2, y2 = cross_inputs(seed=5)
    for fn in IMPLEMENTATIONS:
        full = fn(z, y, z2, y2)
        without = fn(z[2:], y[2:], z2, y2)  # rows 0-1 have no positive among the candidates
        assert torch.allclose(full, without, rtol=1e-12, atol=0)


def test_gradient_scales_with_incoming_gradient():
    z, y, _, _ = self_inputs(seed=8)
    (grad_one,) = torch.autograd.grad(supervised_infonce(z, y, block_rows=5), z)
    (grad_three,) = torch.autograd.grad(3.0 * supervised_infonce(z, y, block_rows=5), z)
    assert torch.allclose(grad_three, 3.0 * grad_one, rtol=1e-12, atol=1e-15)
    assert grad_one.abs().max() > 0


def test_no_grad_gives_same_value():
    z, y, z2, y2 = cross_inputs(seed=9)
    with torch.no_grad():
        value = supervised_infonce(z, y, z2, y2, block_rows=3)
    assert value.grad_fn is None
    assert torch.allclose(value, loop_infonce(z, y, z2, y2).detach(), rtol=1e-10)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_bf16_autocast_matches_reference(cross):
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(300, 16, generator=generator)
    weight = torch.randn(16, 32, generator=generator)
    y = torch.randint(0, 6, (300,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = x @ weight
    assert embeddings.dtype == torch.bfloat16

    def split(z):
        return (z[:200], y[:200], z[200:], y[200:]) if cross else (z, y, None, None)

    implementations = [supervised_infonce_reference, lambda *args: supervised_infonce(*args, block_rows=37)]
    results = []
    for fn in implementations:
        # fp32 embeddings inside an autocast region: the loss must not run its products in bf16.
        z32 = embeddings.detach().float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(*split(z32))
        loss.backward()
        # bf16 embeddings: computed in float32 inside, gradient returned in bf16.
        z16 = embeddings.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss16 = fn(*split(z16))
        loss16.backward()
        assert loss.dtype == loss16.dtype == torch.float32 and z16.grad.dtype == torch.bfloat16
        assert torch.isfinite(z16.grad).all()
        results.append((loss.detach(), z32.grad, loss16.detach()))
    exact = supervised_infonce_reference(*split(embeddings.detach().double()))  # float64, checked above
    (ref_loss, ref_grad, ref_loss16), (loss, grad, loss16) = results
    assert relative_error(loss, ref_loss) < 1e-3 and relative_error(grad, ref_grad) < 1e-3
    assert relative_error(loss16, ref_loss16) < 1e-3
    assert relative_error(loss.double(), exact.detach()) < 1e-3


@pytest.mark.parametrize("fn", IMPLEMENTATIONS)
def test_degenerate_inputs_give_finite_zero_with_graph(fn):
    z, _ = make_set(10, 1, seed=12)
    cases = [
        (z, torch.zeros(10, dtype=torch.long), None, None),  # one class: no negatives
        (z, torch.arange(10), None, None),  # every class once: no positives
        (z[:0], torch.zeros(0, dtype=torch.long), None, None),  # empty
        (z[:4], torch.zeros(4, dtype=torch.long), z[4:], torch.ones(6, dtype=torch.long)),  # cross, disjoint
        (z[:4], torch.zeros(4, dtype=torch.long), z[4:4], torch.zeros(0, dtype=torch.long)),  # cross, empty
    ]
    for a, ya, b, yb in cases:
        loss = fn(a, ya, b, yb)
        assert loss.item() == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(grad).all() and grad.abs().max() == 0


def test_one_class_cross_form_is_zero():
    z, _ = make_set(8, 1, seed=13)
    y = torch.zeros(8, dtype=torch.long)
    for fn in IMPLEMENTATIONS:
        loss = fn(z[:3], y[:3], z[3:], y[3:])
        (grad,) = torch.autograd.grad(loss, z)
        assert loss.item() == 0.0 and torch.isfinite(grad).all()


def test_invalid_inputs_raise():
    z, y = make_set(5, 2, seed=14)
    with pytest.raises(ValueError, match="z must be"):
        supervised_infonce(z, y[:4])
    with pytest.raises(ValueError, match="together"):
        supervised_infonce(z, y, z2=z)
    with pytest.raises(ValueError, match="z2 must be"):
        supervised_infonce_reference(z, y, z[:, :3], y)
    with pytest.raises(ValueError, match="temperature"):
        supervised_infonce(z, y, temperature=0.0)
    with pytest.raises(ValueError, match="block_rows"):
        supervised_infonce(z, y, block_rows=0)


# ---------------------------------------------------------------- MSCSLoss


def blocky_labels(batch: int, size: int, classes: int, cell: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, classes, (batch, size // cell, size // cell), generator=generator)
    return cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)


def stage_embeddings(batch: int, size: int, strides=(2, 4, 8, 16), dim: int = 8, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, dim, size // s, size // s, generator=generator, dtype=dtype, requires_grad=True)
        for s in strides
    ]


def small_loss(**kwargs) -> MSCSLoss:
    settings = dict(
        num_classes=4, ignore_index=255, min_views_per_class=2, max_views_per_class=5, max_features_total=40
    )
    settings.update(kwargs)
    return MSCSLoss(**settings)


def test_mscs_parts_and_total_match_loop_formula_on_sampled_points():
    labels = blocky_labels(2, 32, 4, 8, seed=1)
    labels[0, :8, :8] = 255
    embeddings = stage_embeddings(2, 32)
    loss_fn = small_loss(temperature=0.2, ms_weights=(1.0, 0.7, 0.4, 0.1), cs_weights=(1.0, 0.5))
    output = loss_fn(embeddings, labels, torch.Generator().manual_seed(3))
    assert isinstance(output, LossOutput)
    assert list(output.parts) == ["ms/0", "ms/1", "ms/2", "ms/3", "cs/0-3", "cs/0-2"]
    assert sorted(output.records) == [0, 1, 2, 3]

    sampler = ClassBalancedSampler(4, 255, min_views_per_class=2, max_views_per_class=5, max_features_total=40)
    generator = torch.Generator().manual_seed(3)
    samples = [sampler(e, labels, generator) for e in embeddings]
    expected = {f"ms/{s}": loop_infonce(p.embeddings, p.labels, temperature=0.2) for s, p in enumerate(samples)}
    for a, b in [(0, 3), (0, 2)]:
        expected[f"cs/{a}-{b}"] = loop_infonce(
            samples[a].embeddings, samples[a].labels, samples[b].embeddings, samples[b].labels, temperature=0.2
        )
    for name, value in expected.items():
        assert relative_error(output.parts[name].detach(), value.detach()) < 1e-10, name
    weights = {"ms/0": 1.0, "ms/1": 0.7, "ms/2": 0.4, "ms/3": 0.1, "cs/0-3": 1.0, "cs/0-2": 0.5}
    by_hand = sum(weights[name] * value for name, value in expected.items())
    assert relative_error(output.total.detach(), by_hand.detach()) < 1e-10
    assert output.records[0].views * output.records[0].groups == len(samples[0].labels)


def test_mscs_reference_implementation_agrees_with_blocked():
    labels = blocky_labels(2, 32, 4, 8, seed=2)
    embeddings = stage_embeddings(2, 32, seed=2)
    blocked = small_loss()(embeddings, labels, torch.Generator().manual_seed(4))
    reference = small_loss(implementation="reference")(embeddings, labels, torch.Generator().manual_seed(4))
    assert blocked.parts.keys() == reference.parts.keys()
    assert relative_error(blocked.total.detach(), reference.total.detach()) < 1e-10


def test_cs_detach_deepest_blocks_gradient_into_deepest_stage():
    labels = blocky_labels(2, 32, 4, 8, seed=3)
    for detach in (True, False):
        embeddings = stage_embeddings(2, 32, seed=3)
        loss_fn = small_loss(use_ms=False, cs_detach_deepest=detach)
        loss_fn(embeddings, labels, torch.Generator().manual_seed(5)).total.backward()
        deepest = embeddings[-1].grad
        if detach:
            assert deepest is None or deepest.abs().max() == 0
        else:
            assert deepest.abs().max() > 0
        assert embeddings[0].grad.abs().max() > 0 and embeddings[2].grad.abs().max() > 0
        assert embeddings[1].grad is None  # stage 1 is in no cs pair


def test_same_positions_reuses_stage_zero_sample():
    labels = blocky_labels(2, 32, 4, 8, seed=4)
    embeddings = stage_embeddings(2, 32, seed=4)
    output = small_loss(same_positions=True)(embeddings, labels, torch.Generator().manual_seed(6))
    assert list(output.records) == [0]
    sampler = ClassBalancedSampler(4, 255, min_views_per_class=2, max_views_per_class=5, max_features_total=40)
    stage0_labels = downsample_labels(labels, (16, 16))
    positions, sample_labels, _ = sampler.sample_positions(stage0_labels, torch.Generator().manual_seed(6))
    stage3 = map_positions(positions, (16, 16), (2, 2))
    z3 = embeddings[3][stage3[:, 0], :, stage3[:, 1], stage3[:, 2]]
    assert relative_error(output.parts["ms/3"].detach(), loop_infonce(z3, sample_labels).detach()) < 1e-10


@pytest.mark.parametrize("case", ["all_ignored", "one_class", "too_few_pixels"])
def test_mscs_degenerate_batches_give_finite_zero(case):
    labels = torch.full((2, 32, 32), 255, dtype=torch.long)
    if case == "one_class":
        labels[:] = 2
    elif case == "too_few_pixels":
        labels[0, 0, 0] = 1  # one pixel: below min_views_per_class at every stage
    embeddings = stage_embeddings(2, 32, seed=5, dtype=torch.float32)
    output = small_loss()(embeddings, labels, torch.Generator().manual_seed(7))
    assert output.total.item() == 0.0 and output.total.grad_fn is not None
    assert all(value.item() == 0.0 for value in output.parts.values())
    output.total.backward()
    for tensor in embeddings:
        assert tensor.grad is None or torch.isfinite(tensor.grad).all()


def test_mscs_invalid_configuration_raises():
    labels = blocky_labels(1, 32, 4, 8, seed=6)
    three_stages = stage_embeddings(1, 32, strides=(2, 4, 8))
    with pytest.raises(ValueError, match="3 stage embeddings but ms_weights has 4"):
        small_loss()(three_stages, labels)
    with pytest.raises(ValueError, match=r"cs pair \(0, 5\) is out of range"):
        small_loss(cs_pairs=((0, 5),), cs_weights=(1.0,))(stage_embeddings(1, 32), labels)
    with pytest.raises(ValueError, match="same stage"):
        small_loss(ms_weights=(1.0, 0.5), cs_pairs=((0, -1), (0, -2)))(stage_embeddings(1, 32, strides=(2, 4)), labels)
    with pytest.raises(ValueError, match="cs_weights has 1 entries but cs_pairs has 2"):
        small_loss(cs_weights=(1.0,))
    with pytest.raises(ValueError, match="implementation"):
        small_loss(implementation="fast")
    with pytest.raises(ValueError, match="temperature"):
        small_loss(temperature=-1.0)
    with pytest.raises(ValueError, match="enable use_ms"):
        small_loss(use_ms=False, use_cs=False)
    with pytest.raises(ValueError, match="labels must be"):
        small_loss()(stage_embeddings(1, 32), labels[0])


def test_gather_is_identity_when_not_distributed():
    assert not is_distributed() and rank() == 0 and world_size() == 1
    x = torch.randn(5, 3, requires_grad=True)
    assert gather_with_grad(x) is x
    y = torch.arange(5)
    assert gather_labels(y) is y



# ---------------------------------------------------------------- bounded numerics


def as_float32(inputs):
    z, y, z2, y2 = inputs
    return z.detach().float().requires_grad_(), y, None if z2 is None else z2.detach().float().requires_grad_(), y2


@pytest.mark.parametrize("temperature", [1e-3, 1e-4])
@pytest.mark.parametrize("make_inputs", [self_inputs, cross_inputs], ids=["self", "cross"])
@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=["reference", "blocked"])
def test_tiny_temperature_is_finite_and_matches_float64_loop(fn, make_inputs, temperature):
    inputs = make_inputs(seed=4)
    expected = loss_and_grads(loop_infonce, inputs, temperature=temperature)
    assert expected[0].item() > 100.0  # the loss scales with 1/tau: a real test of the exponent range
    for case in (inputs, as_float32(inputs)):
        loss, grads = loss_and_grads(fn, case, temperature=temperature)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
        assert relative_error(loss.detach().double(), expected[0].detach()) < 1e-5
        for grad, reference in zip(grads, expected[1], strict=True):
            assert relative_error(grad.double(), reference) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=["reference", "blocked"])
def test_zero_and_tiny_rows_get_zero_gradient_others_match_loop(fn, dtype):
    z, y, _, _ = self_inputs(seed=6)
    z = z.detach().to(dtype)
    z[0] = 0.0  # a dead projector output
    z[5] = 1e-9  # shorter than ZERO_ROW_NORM: no reliable direction, treated as zero
    z.requires_grad_()
    loss, (grad,) = loss_and_grads(fn, (z, y, None, None))
    reference = z.detach().double().clone()
    reference[5] = 0.0
    expected_loss, (expected_grad,) = loss_and_grads(loop_infonce, (reference.requires_grad_(), y, None, None))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert relative_error(loss.detach().double(), expected_loss.detach()) < 1e-5
    assert grad[0].abs().max() == 0 and grad[5].abs().max() == 0
    others = [i for i in range(len(y)) if i not in (0, 5)]
    assert relative_error(grad[others].double(), expected_grad[others]) < 1e-5
    assert grad.abs().max() < 10.0  # the old F.normalize path gave ~1e11 on row 0


def test_unit_rows_values_and_gradient_formula():
    generator = torch.Generator().manual_seed(15)
    z = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    z[1] = 0.0
    z[2] = z[2] / z[2].norm() * 2e-6  # just above eps
    z.requires_grad_()
    u = unit_rows(z)
    assert torch.equal(u[[0, 2, 3, 4, 5]], F.normalize(z.detach(), dim=1)[[0, 2, 3, 4, 5]])
    assert torch.equal(u[1], torch.zeros(4, dtype=torch.float64))
    g = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad(u, z, g)
    norm = z.detach().norm(dim=1, keepdim=True)
    unit = z.detach() / norm
    expected = (g - unit * (unit * g).sum(1, keepdim=True)) / norm  # (I - u u^T) g / ||z||
    expected[1] = 0.0
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
    assert (grad.norm(dim=1) <= g.norm(dim=1) / 1e-6).all()
    with pytest.raises(ValueError, match="unit_rows: eps must be > 0"):
        unit_rows(z, eps=0.0)


# ---------------------------------------------------------------- parts: loss, terms, composition


class StubSampler:
    """Returns fixed samples and counts its draws."""

    def __init__(self, samples: StageSamples) -> None:
        self.samples = samples
        self.draws = 0

    def sample_stages(self, stage_embeddings, labels, generator=None) -> StageSamples:
        self.draws += 1
        return self.samples


class StubLoss:
    """Records its calls; value = sum(z) + 100 * len(z2) (cross form) so that parts are recognisable."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, z, y, z2=None, y2=None):
        self.calls.append((z, y, z2, y2))
        return z.sum() + (0.0 if z2 is None else 100.0 * len(z2) + z2.sum())


def stub_samples(num_stages: int = 4) -> tuple[StageSamples, list[torch.Tensor]]:
    leaves = [torch.full((s + 2, 3), float(s + 1), requires_grad=True) for s in range(num_stages)]
    samples = StageSamples(
        embeddings=[leaf * 1.0 for leaf in leaves],
        labels=[torch.arange(s + 2) for s in range(num_stages)],
        records={0: None},
    )
    return samples, leaves


def four_stage_inputs():
    return [torch.zeros(1, 3, 8 >> s, 8 >> s) for s in range(4)], torch.zeros(1, 8, 8, dtype=torch.long)


def test_supervised_infonce_module_injects_implementation():
    seen = []

    def fake(z, y, z2=None, y2=None, temperature=0.1):
        seen.append((z2 is None, temperature))
        return torch.tensor(1.5)

    z, y, z2, y2 = cross_inputs(seed=16)
    assert SupervisedInfoNCE(0.3, fake)(z, y, z2, y2).item() == 1.5 and seen == [(False, 0.3)]
    assert SupervisedInfoNCE(0.2, "reference")(z, y) == supervised_infonce_reference(z, y, temperature=0.2)
    assert SupervisedInfoNCE(0.2)(z, y, z2, y2) == supervised_infonce(z, y, z2, y2, temperature=0.2)
    with pytest.raises(ValueError, match=r"SupervisedInfoNCE: implementation must be one of \['blocked', 'reference'\]"):
        SupervisedInfoNCE(implementation="fast")
    with pytest.raises(ValueError, match=r"SupervisedInfoNCE: temperature must be > 0 \(paper: 0.1\), got 0"):
        SupervisedInfoNCE(temperature=0)


def test_multi_scale_term_weights_self_form_per_stage():
    samples, leaves = stub_samples()
    loss, sampler = StubLoss(), StubSampler(samples)
    term = MultiScaleTerm(loss, sampler, weights=(1.0, 0.5, 0.25, 2.0))
    output = term(*four_stage_inputs())
    assert sampler.draws == 1 and output.records == {0: None}
    assert list(output.parts) == ["ms/0", "ms/1", "ms/2", "ms/3"]
    values = [3.0 * (s + 2) * (s + 1) for s in range(4)]  # sum of a (s+2)x3 block of (s+1)
    assert [v.item() for v in output.parts.values()] == values
    assert output.total.item() == pytest.approx(1.0 * values[0] + 0.5 * values[1] + 0.25 * values[2] + 2.0 * values[3])
    assert all(call[2] is None and call[3] is None for call in loss.calls)  # self form only
    output.total.backward()
    assert [leaf.grad[0, 0].item() for leaf in leaves] == [1.0, 0.5, 0.25, 2.0]
    with pytest.raises(ValueError, match=r"MultiScaleTerm: got 4 stage embeddings but weights has 2 entries"):
        MultiScaleTerm(StubLoss(), StubSampler(samples), weights=(1.0, 1.0))(*four_stage_inputs())
    with pytest.raises(ValueError, match="MultiScaleTerm: weights is empty"):
        MultiScaleTerm(StubLoss(), StubSampler(samples), weights=())


def test_cross_scale_term_pairs_names_and_detached_stage():
    samples, leaves = stub_samples()
    loss = StubLoss()
    term = CrossScaleTerm(loss, StubSampler(samples), pairs=((0, -1), (1, 2)), weights=(1.0, 3.0), detach_stages=(-1,))
    output = term(*four_stage_inputs())
    assert list(output.parts) == ["cs/0-3", "cs/1-2"]
    anchors, anchor_labels, candidates, candidate_labels = loss.calls[0]
    assert anchors.shape == (2, 3) and candidates.shape == (5, 3) and torch.equal(candidate_labels, torch.arange(5))
    assert output.parts["cs/0-3"].item() == 6.0 + 500.0 + 60.0
    output.total.backward()
    assert leaves[3].grad is None  # the deepest stage is detached
    assert leaves[0].grad[0, 0].item() == 1.0 and leaves[1].grad[0, 0].item() == 3.0 and leaves[2].grad[0, 0].item() == 3.0
    with pytest.raises(ValueError, match=r"CrossScaleTerm: pair \(0, 4\) is out of range for 4 stages"):
        CrossScaleTerm(StubLoss(), StubSampler(samples), pairs=((0, 4),), weights=(1.0,))(*four_stage_inputs())
    with pytest.raises(ValueError, match="CrossScaleTerm: detach_stages entry -5 is out of range for 4 stages"):
        CrossScaleTerm(StubLoss(), StubSampler(samples), detach_stages=(-5,))(*four_stage_inputs())
    with pytest.raises(ValueError, match="CrossScaleTerm: weights has 1 entries but pairs has 2"):
        CrossScaleTerm(StubLoss(), StubSampler(samples), weights=(1.0,))


def test_contrastive_sum_draws_once_for_all_terms():
    samples, _ = stub_samples()
    sampler = StubSampler(samples)
    loss = StubLoss()
    combined = ContrastiveSum(sampler, [MultiScaleTerm(loss, sampler), CrossScaleTerm(loss, sampler)])
    output = combined(*four_stage_inputs())
    assert sampler.draws == 1
    assert list(output.parts) == ["ms/0", "ms/1", "ms/2", "ms/3", "cs/0-3", "cs/0-2"]
    weights = [1.0, 0.7, 0.4, 0.1, 1.0, 1.0]
    assert output.total.item() == pytest.approx(sum(w * v.item() for w, v in zip(weights, output.parts.values())))
    with pytest.raises(ValueError, match="ContrastiveSum: term 1 \\(CrossScaleTerm\\) has its own sampler"):
        ContrastiveSum(sampler, [MultiScaleTerm(loss, sampler), CrossScaleTerm(loss, StubSampler(samples))])
    with pytest.raises(ValueError, match="ContrastiveSum: two terms produce the part 'ms/0'"):
        ContrastiveSum(sampler, [MultiScaleTerm(loss, sampler), MultiScaleTerm(loss, sampler)])(*four_stage_inputs())


def test_mscs_loss_is_the_paper_composition():
    shared = MSCSLoss(num_classes=3, ignore_index=255, same_positions=True, cs_detach_deepest=True, implementation="reference")
    assert isinstance(shared.sampler, GatheredSampler) and type(shared.sampler.sampler) is SharedPositionSampler
    ms, cs = shared.terms
    assert isinstance(ms, MultiScaleTerm) and isinstance(cs, CrossScaleTerm) and cs.detach_stages == (-1,)
    assert ms.loss is cs.loss and ms.loss.implementation is supervised_infonce_reference
    plain = MSCSLoss(num_classes=3, ignore_index=255, use_cs=False, gather_distributed=False)
    assert type(plain.sampler) is ClassBalancedSampler and [type(t) for t in plain.terms] == [MultiScaleTerm]


# Values of the previous MSCSLoss (a single class with the sampler, the implementation choice and the DDP
# gather inline) on `golden_scene`, float64, generator seed 9: parts, total and the squared norm of the
# gradient of each stage's embeddings. The composed loss gives the same numbers bit for bit.
PREVIOUS_MSCS = {
    "default": (
        {},
        {
            "ms/0": 7.508262054369, "ms/1": 5.7461187116, "ms/2": 4.59540262728,
            "ms/3": 4.79959161558, "cs/0-3": 4.427317340819, "cs/0-2": 5.429024902176,
        },
        23.705007607955,
        [0.873027931586, 1.176256679212, 0.731234280789, 0.975208042752],
    ),
    "same_positions": (
        {"same_positions": True},
        {
            "ms/0": 7.508262054369, "ms/1": 6.737842543358, "ms/2": 6.419355893909,
            "ms/3": 10.569502610985, "cs/0-3": 6.809296182038, "cs/0-2": 7.000240661623,
        },
        29.658981297043,
        [0.575172739809, 0.259142600784, 0.364287220742, 0.301552988734],
    ),
    "cs_detach_deepest": (
        {"cs_detach_deepest": True},
        {
            "ms/0": 7.508262054369, "ms/1": 5.7461187116, "ms/2": 4.59540262728,
            "ms/3": 4.79959161558, "cs/0-3": 4.427317340819, "cs/0-2": 5.429024902176,
        },
        23.705007607955,
        [0.873027931586, 1.176256679212, 0.731234280789, 0.408960706859],
    ),
    "reference": (
        {"implementation": "reference", "use_ms": False},
        {
            "cs/0-3": 4.427317340819, "cs/0-2": 5.429024902176,
        },
        9.856342242995,
        [0.643379520337, 0.0, 0.217631505286, 0.46790833562],
    ),
    "tau": (
        {"temperature": 0.01, "use_cs": False},
        {
            "ms/0": 66.745066010324, "ms/1": 51.42739723969, "ms/2": 41.020159820109,
            "ms/3": 47.595507711766,
        },
        123.911858777327,
        [46.614072392925, 198.891478417929, 54.325838509774, 41.914698993516],
    ),
}


def golden_scene() -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(21)
    cells = torch.randint(0, 3, (2, 4, 4), generator=generator)
    labels = cells.repeat_interleave(16, 1).repeat_interleave(16, 2)
    labels[1, :6] = 255
    embeddings = [
        torch.randn(2, 8, 64 // s, 64 // s, generator=generator, dtype=torch.float64, requires_grad=True)
        for s in (4, 8, 16, 32)
    ]
    return embeddings, labels


@pytest.mark.parametrize("case", sorted(PREVIOUS_MSCS))
def test_mscs_loss_reproduces_previous_numbers(case):
    settings, parts, total, grad_squares = PREVIOUS_MSCS[case]
    embeddings, labels = golden_scene()
    loss_fn = MSCSLoss(num_classes=3, ignore_index=255, min_views_per_class=1, max_features_total=60, **settings)
    output = loss_fn(embeddings, labels, torch.Generator().manual_seed(9))
    assert list(output.parts) == list(parts)
    for name, value in parts.items():
        assert output.parts[name].item() == pytest.approx(value, rel=1e-6, abs=1e-11), name
    assert output.total.item() == pytest.approx(total, rel=1e-6)
    output.total.backward()
    for embedding, expected in zip(embeddings, grad_squares, strict=True):
        actual = 0.0 if embedding.grad is None else embedding.grad.square().sum().item()
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-11)
