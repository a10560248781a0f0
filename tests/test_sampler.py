"""Pixel samplers (docs/method.md §1): the class-balanced rules, the sampler protocol, shared positions and
the image-to-stage cell rule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mscl.distributed import GatheredSampler
from mscl.sampler import (
    ClassBalancedSampler,
    PixelSample,
    PixelSampler,
    SharedPositionSampler,
    StageSamples,
    check_stage_inputs,
    downsample_labels,
    map_positions,
)
from runformat.geometry import cell_index, cell_of

IGNORE = 255


def random_labels(batch: int, size: int, classes: int, seed: int, ignore_fraction: float = 0.2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < ignore_fraction] = IGNORE
    return labels


def features_for(labels: torch.Tensor, dim: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(labels.shape[0], dim, *labels.shape[1:], generator=generator)


def pair_counts(sample: PixelSample) -> Counter:
    return Counter(zip(sample.positions[:, 0].tolist(), sample.labels.tolist()))


def test_every_kept_group_gets_exactly_views_samples():
    labels = random_labels(3, 12, 4, seed=0)
    sampler = ClassBalancedSampler(4, IGNORE, min_views_per_class=1)
    sample = sampler(features_for(labels), labels, torch.Generator().manual_seed(0))
    record = sample.record
    present = {(n, c) for n in range(3) for c in range(4) if (labels[n] == c).any()}
    counts = pair_counts(sample)
    assert set(counts) == present and record.groups == len(present)
    smallest = min(int((labels[n] == c).sum()) for n, c in present)
    assert record.views == smallest and not record.cap_max_views and not record.cap_total
    assert set(counts.values()) == {record.views}
    assert record.sampled_per_class == [record.views * sum(1 for n, k in present if k == c) for c in range(4)]
    assert record.labelled_per_class == [int((labels == c).sum()) for c in range(4)]
    assert len(sample.labels) == len(set(map(tuple, sample.positions.tolist())))  # no pixel twice


def test_max_views_per_class_cap():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 4:] = 1
    sample = ClassBalancedSampler(2, IGNORE, max_views_per_class=3)(features_for(labels), labels)
    assert sample.record.views == 3 and sample.record.cap_max_views and not sample.record.cap_total
    assert set(pair_counts(sample).values()) == {3} and len(sample.labels) == 4 * 3


def test_max_features_total_cap():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 3:] = 1
    labels[:, 6:] = 2
    sampler = ClassBalancedSampler(3, IGNORE, max_views_per_class=100, max_features_total=20)
    sample = sampler(features_for(labels), labels)
    record = sample.record
    assert record.groups == 6 and record.cap_total and not record.cap_max_views
    assert record.views == 20 // 6 and len(sample.labels) == 18
    assert set(pair_counts(sample).values()) == {3}


def test_ignore_index_is_never_sampled():
    labels = random_labels(2, 16, 3, seed=1, ignore_fraction=0.7)
    stage_labels = downsample_labels(labels, (8, 8))
    sample = ClassBalancedSampler(3, IGNORE, min_views_per_class=1)(features_for(stage_labels), labels)
    n, y, x = sample.positions.unbind(1)
    assert len(sample.labels) > 0
    assert (stage_labels[n, y, x] != IGNORE).all() and (sample.labels != IGNORE).all()


def test_groups_below_min_views_are_filtered_and_counted():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 0, :4] = 1  # class 1: 4 pixels < 5
    labels[0, 5, :] = IGNORE
    sample = ClassBalancedSampler(2, IGNORE, min_views_per_class=5)(features_for(labels), labels)
    record = sample.record
    assert record.groups == 1 and record.filtered_groups == 1
    assert record.labelled_per_class == [26, 4] and record.sampled_per_class == [record.views, 0]
    assert (sample.labels == 0).all()


def test_positions_labels_and_embeddings_agree():
    labels = random_labels(2, 20, 5, seed=2)
    features = features_for(torch.zeros(2, 10, 10), dim=4, seed=3)
    sample = ClassBalancedSampler(5, IGNORE, min_views_per_class=2)(features, labels, torch.Generator().manual_seed(1))
    stage_labels = downsample_labels(labels, (10, 10))
    n, y, x = sample.positions.unbind(1)
    assert torch.equal(stage_labels[n, y, x], sample.labels)
    assert torch.equal(sample.embeddings, features.permute(0, 2, 3, 1)[n, y, x])
    assert sample.embeddings.shape == (len(sample.labels), 4)


def test_gradient_flows_to_sampled_pixels_only():
    labels = random_labels(1, 6, 2, seed=4, ignore_fraction=0.0)
    features = features_for(labels, dim=2).requires_grad_()
    sample = ClassBalancedSampler(2, IGNORE, min_views_per_class=1)(features, labels)
    sample.embeddings.sum().backward()
    touched = features.grad[:, 0] != 0
    expected = torch.zeros_like(touched)
    expected[sample.positions[:, 0], sample.positions[:, 1], sample.positions[:, 2]] = True
    assert torch.equal(touched, expected)


def test_same_seed_same_sample_other_seed_other_sample():
    labels = random_labels(2, 16, 3, seed=5)
    features = features_for(labels)
    sampler = ClassBalancedSampler(3, IGNORE, max_views_per_class=6)
    first = sampler(features, labels, torch.Generator().manual_seed(7))
    again = sampler(features, labels, torch.Generator().manual_seed(7))
    other = sampler(features, labels, torch.Generator().manual_seed(8))
    assert torch.equal(first.positions, again.positions) and torch.equal(first.embeddings, again.embeddings)
    assert first.positions.shape == other.positions.shape
    assert not torch.equal(first.positions, other.positions)


def test_nearest_downsampling_matches_index_formula():
    labels = random_labels(2, 12, 6, seed=6)
    for size in [(6, 6), (4, 3), (5, 7)]:
        rows = (torch.arange(size[0]) * 12) // size[0]
        cols = (torch.arange(size[1]) * 12) // size[1]
        assert torch.equal(downsample_labels(labels, size), labels[:, rows][:, :, cols])
    assert downsample_labels(labels, (12, 12)) is labels
    as_interpolate = F.interpolate(labels[:, None].float(), size=(3, 4), mode="nearest")[:, 0].long()
    assert torch.equal(downsample_labels(labels, (3, 4)), as_interpolate)  # integer factors


def test_map_positions_floor_formula():
    positions = torch.tensor([[0, 0, 0], [1, 15, 15], [1, 7, 8], [0, 3, 12]])
    mapped = map_positions(positions, (16, 16), (4, 5))
    expected = torch.tensor([[0, 0, 0], [1, 3, 4], [1, 1, 2], [0, 0, 3]])
    assert torch.equal(mapped, expected)


def test_no_group_left_gives_empty_sample():
    labels = torch.full((2, 8, 8), IGNORE)
    sample = ClassBalancedSampler(3, IGNORE)(features_for(labels, dim=5), labels)
    assert sample.embeddings.shape == (0, 5) and sample.labels.shape == (0,) and sample.positions.shape == (0, 3)
    assert sample.record.groups == 0 and sample.record.views == 0 and sample.record.sampled_per_class == [0, 0, 0]


def test_invalid_labels_and_settings_raise():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ClassBalancedSampler(3, IGNORE)(features_for(labels), labels)
    with pytest.raises(ValueError, match="min_views_per_class"):
        ClassBalancedSampler(3, IGNORE, min_views_per_class=0)
    with pytest.raises(ValueError, match="features must have shape"):
        ClassBalancedSampler(3, IGNORE)(torch.zeros(1, 4, 4), labels)


def stage_maps(batch: int = 2, size: int = 16, dim: int = 3, seed: int = 9) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, size >> s, size >> s, generator=generator) for s in range(3)]


def test_samplers_follow_the_protocol():
    for sampler in (ClassBalancedSampler(3, IGNORE), SharedPositionSampler(3, IGNORE)):
        assert isinstance(sampler, PixelSampler) and isinstance(GatheredSampler(sampler), PixelSampler)
    assert not isinstance(object(), PixelSampler)


def test_class_balanced_sample_stages_draws_each_stage_in_turn():
    labels = random_labels(2, 16, 3, seed=10)
    maps = stage_maps()
    sampler = ClassBalancedSampler(3, IGNORE, min_views_per_class=1, max_views_per_class=4)
    samples = sampler.sample_stages(maps, labels, torch.Generator().manual_seed(3))
    assert isinstance(samples, StageSamples) and sorted(samples.records) == [0, 1, 2]
    generator = torch.Generator().manual_seed(3)
    for s, features in enumerate(maps):
        expected = sampler(features, labels, generator)  # the same generator, consumed stage after stage
        assert torch.equal(samples.embeddings[s], expected.embeddings) and torch.equal(samples.labels[s], expected.labels)
        assert samples.records[s] == expected.record


def test_shared_position_sampler_reads_stage_zero_pixels_at_every_stage():
    labels = random_labels(2, 16, 3, seed=11)
    maps = stage_maps()
    sampler = SharedPositionSampler(3, IGNORE, min_views_per_class=1, max_views_per_class=4)
    samples = sampler.sample_stages(maps, labels, torch.Generator().manual_seed(4))
    assert list(samples.records) == [0]
    positions, stage0_labels, record = ClassBalancedSampler(3, IGNORE, min_views_per_class=1, max_views_per_class=4) \
        .sample_positions(downsample_labels(labels, (16, 16)), torch.Generator().manual_seed(4))
    assert samples.records[0] == record and len(stage0_labels) == record.views * record.groups > 0
    for s, features in enumerate(maps):
        n, y, x = positions[:, 0], positions[:, 1] * features.shape[-2] // 16, positions[:, 2] * features.shape[-1] // 16
        assert torch.equal(samples.embeddings[s], features.permute(0, 2, 3, 1)[n, y, x])
        assert torch.equal(samples.labels[s], stage0_labels)  # stage-0 labels everywhere


def test_stage_inputs_are_checked_with_the_owner_named():
    maps = stage_maps()
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"ClassBalancedSampler: stage 1 embeddings must be \[N,d,h,w\] with N,d = \(2, 3\)"):
        ClassBalancedSampler(3, IGNORE).sample_stages([maps[0], maps[1][:1]], labels)
    with pytest.raises(ValueError, match=r"SharedPositionSampler: labels must be \[N,H,W\] with N=2, got \(16, 16\)"):
        SharedPositionSampler(3, IGNORE).sample_stages(maps, labels[0])
    with pytest.raises(ValueError, match="Owner: stage_embeddings is empty"):
        check_stage_inputs([], labels, "Owner")


def test_gathered_sampler_is_identity_when_not_distributed():
    labels = random_labels(2, 16, 3, seed=12)
    inner = ClassBalancedSampler(3, IGNORE, min_views_per_class=1)
    direct = inner.sample_stages(stage_maps(), labels, torch.Generator().manual_seed(5))
    wrapped = GatheredSampler(inner).sample_stages(stage_maps(), labels, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(direct.embeddings, wrapped.embeddings, strict=True))
    assert direct.records == wrapped.records


def test_cell_rule_is_one_formula_for_ints_numpy_and_torch():
    assert [cell_index(i, 12, 5) for i in range(12)] == [i * 5 // 12 for i in range(12)]
    assert cell_index(11, 12, 5) == 4 and cell_index(0, 7, 3) == 0
    values = np.arange(17)
    assert np.array_equal(cell_index(values, 17, 4), values * 4 // 17)
    assert torch.equal(cell_index(torch.arange(17), 17, 4), torch.as_tensor(values * 4 // 17))
    assert cell_of(15, 8, (16, 16), (4, 5)) == (3, 2)
    with pytest.raises(ValueError, match="cell_index: axis lengths must be >= 1, got source=0, target=3"):
        cell_index(1, 0, 3)
