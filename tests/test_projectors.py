"""Projection heads: 1x1 conv -> BN -> ReLU -> 1x1 conv, no spatial change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mscl.projectors import Projector, ProjectorSet


def test_projector_layers_in_paper_order():
    projector = Projector(12, dim=8)
    layers = list(projector.children())
    assert [type(layer) for layer in layers] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    first, norm, _, last = layers
    assert first.kernel_size == (1, 1) and last.kernel_size == (1, 1)
    assert (first.in_channels, first.out_channels) == (12, 12)  # hidden defaults to in_channels
    assert norm.num_features == 12
    assert (last.in_channels, last.out_channels) == (12, 8)
    assert Projector(12, dim=8, hidden=5)[0].out_channels == 5


def test_projector_keeps_spatial_size():
    projector = Projector(6, dim=4)
    out = projector(torch.randn(2, 6, 7, 5))
    assert out.shape == (2, 4, 7, 5)
    assert Projector(6).eval()(torch.randn(1, 6, 3, 3)).shape == (1, 256, 3, 3)


def test_projector_is_pointwise():
    projector = Projector(3, dim=2).eval()
    x = torch.randn(1, 3, 4, 4)
    y = x.clone()
    y[..., 0, 0] += 1.0
    changed = (projector(x) != projector(y)).any(1)[0]
    assert changed[0, 0] and changed.sum() == 1


def test_projector_set_projects_every_stage():
    projectors = ProjectorSet([4, 8, 16], dim=6)
    features = [torch.randn(2, c, s, s) for c, s in [(4, 16), (8, 8), (16, 4)]]
    outputs = projectors(features)
    assert [tuple(o.shape) for o in outputs] == [(2, 6, 16, 16), (2, 6, 8, 8), (2, 6, 4, 4)]
    with pytest.raises(ValueError, match="got 2 feature maps for 3 projectors"):
        projectors(features[:2])
    with pytest.raises(ValueError, match="in_channels is empty"):
        ProjectorSet([])
