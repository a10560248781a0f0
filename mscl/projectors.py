"""Per-stage projection heads into the common embedding space (method.md, "Idea").

Each stage gets ``1x1 conv -> BN -> ReLU -> 1x1 conv`` to ``dim`` channels (paper: 256) with no
spatial change; the projectors are used only during training.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class Projector(nn.Sequential):
    """``1x1 conv -> BatchNorm -> ReLU -> 1x1 conv`` from ``in_channels`` to ``dim`` channels.

    ``hidden`` (the width after the first conv) defaults to ``in_channels``.
    """

    def __init__(self, in_channels: int, dim: int = 256, hidden: int | None = None) -> None:
        hidden_channels = in_channels if hidden is None else hidden
        for name, value in (("in_channels", in_channels), ("dim", dim), ("hidden", hidden_channels)):
            if value < 1:
                raise ValueError(f"Projector: {name} must be >= 1, got {value}")
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, dim, kernel_size=1),
        )


class ProjectorSet(nn.Module):
    """One :class:`Projector` per encoder stage (finest first), all to the same ``dim``."""

    def __init__(self, in_channels: Sequence[int], dim: int = 256) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("ProjectorSet: in_channels is empty; give one channel count per stage")
        self.projectors = nn.ModuleList(Projector(channels, dim) for channels in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Project ``features[s] [N,C_s,h_s,w_s]`` to ``[N,dim,h_s,w_s]`` for every stage."""
        if len(features) != len(self.projectors):
            raise ValueError(
                f"ProjectorSet: got {len(features)} feature maps for {len(self.projectors)} projectors"
            )
        return [projector(feature) for projector, feature in zip(self.projectors, features)]
