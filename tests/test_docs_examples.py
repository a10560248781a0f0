"""The README's "own training loop" example and the notebook tour run as documented."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from fake_run import write_fake_run
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class FourStageNet(nn.Module):
    """A user's own model, unrelated to mscl.models: logits plus four stage features (strides 4..32)."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        widths = [64, 128, 256, 512]
        self.stages = nn.ModuleList()
        in_channels = 3
        for index, width in enumerate(widths):
            stride = 4 if index == 0 else 2
            self.stages.append(nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=stride, padding=1), nn.ReLU()))
            in_channels = width
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features, x = [], images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        logits = nn.functional.interpolate(self.classifier(features[0]), size=images.shape[-2:], mode="bilinear")
        return logits, features


def readme_loop_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use the losses in your own training loop") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_training_loop_example_runs() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 19, (2, 64, 64), generator=generator)
    labels[:, :8] = 255
    images = torch.randn(2, 3, 64, 64, generator=generator)
    namespace = {"MyNet": FourStageNet, "loader": [(images, labels)] * 3}
    torch.manual_seed(0)
    exec(compile(readme_loop_example(), "README.md", "exec"), namespace)
    out = namespace["out"]
    assert set(out.parts) == {"ms/0", "ms/1", "ms/2", "ms/3", "cs/0-3", "cs/0-2"}
    assert torch.isfinite(out.total) and out.total > 0
    assert all(p.grad is not None for p in namespace["projectors"].parameters())


def test_notebook_tour_builds_every_figure(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tour", REPO / "notebooks/tour.py")
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    run_a = write_fake_run(tmp_path / "a", seed=0, with_projector=False)
    run_b = write_fake_run(tmp_path / "b", seed=0)
    figures = tour.build_tour(run_a, run_b)
    expected = {"training_curves", "val_curves", "feature_spaces", "prototype_similarity", "cka", "pixel_similarity",
                "sampler_histogram", "sampler_timeline", "iou_diff", "confusion_difference", "per_image_diff", "predictions"}
    assert set(figures) == expected
    assert all(len(figure.data) > 0 for figure in figures.values())
    scatter_points = sum(len(trace.x) for trace in figures["feature_spaces"].data)
    assert scatter_points == 2 * 4 * len(tour.projections.aligned_pixel_rows([tour.load_run(run_a), tour.load_run(run_b)])[0])
