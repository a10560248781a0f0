"""Tests for mscl.models: output contract, stage reporting, gradients, pretrained loading, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mscl.models import (
    SegmentationModel,
    SegOutput,
    available_models,
    build_model,
    load_encoder_weights,
)
from mscl.models.encoders import canonical_key

NUM_CLASSES = 5
SWIN = "swin_tiny_patch4_window7_224"
SMALL_SWIN: dict[str, Any] = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))

# (model, build kwargs, expected stage strides, expected stage channels)
CONFIGS: dict[str, tuple[str, dict[str, Any], tuple[int, ...], tuple[int, ...]]] = {
    "tiny": ("tiny", {}, (4, 8, 16, 32), (16, 32, 64, 96)),
    "deeplabv3-os8": ("deeplabv3", dict(decoder_channels=16), (4, 8, 8, 8), (64, 128, 256, 512)),
    "deeplabv3-os16": (
        "deeplabv3",
        dict(decoder_channels=16, output_stride=16),
        (4, 8, 16, 16),
        (64, 128, 256, 512),
    ),
    "upernet-resnet18": ("upernet", dict(decoder_channels=16), (4, 8, 16, 32), (64, 128, 256, 512)),
    "upernet-convnext": (
        "upernet",
        dict(encoder="convnext_atto", decoder_channels=16),
        (4, 8, 16, 32),
        (40, 80, 160, 320),
    ),
    "upernet-swin": (
        "upernet",
        dict(encoder=SWIN, decoder_channels=16, **SMALL_SWIN),
        (4, 8, 16, 32),
        (16, 32, 64, 128),
    ),
    "hrnet": ("hrnet", {}, (4, 8, 16, 32), (16, 32, 64, 128)),
    "ocrnet": ("ocrnet", dict(mid_channels=16, key_channels=8), (4, 8, 16, 32), (16, 32, 64, 128)),
}


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: these small models run faster so on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(config: str, seed: int = 0, **overrides: Any) -> SegmentationModel:
    name, kwargs, _, _ = CONFIGS[config]
    torch.manual_seed(seed)
    return build_model(name, NUM_CLASSES, **{**kwargs, **overrides})


def test_available_models() -> None:
    assert available_models() == ["tiny", "deeplabv3", "upernet", "hrnet", "ocrnet"]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_output_contract(config: str) -> None:
    _, _, strides, channels = CONFIGS[config]
    model = make(config).eval()
    assert model.num_classes == NUM_CLASSES
    assert model.stage_strides == strides
    assert model.stage_channels == channels
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, NUM_CLASSES, 64, 96)
    assert torch.isfinite(out.logits).all()
    assert len(out.features) == 4
    for feature, stride, channel in zip(out.features, strides, channels):
        assert feature.shape == (2, channel, 64 // stride, 96 // stride)
        assert feature.is_contiguous()
    # Logits are the head output bilinearly upsampled (align_corners=False) to the input size.
    with torch.no_grad():
        head_logits, _ = model.decode(out.features)
    expected = F.interpolate(head_logits, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.logits, expected)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_parameter_gets_a_gradient(config: str) -> None:
    model = make(config).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.logits.square().mean().backward()
    without_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert without_grad == []
    first_encoder_param = next(model.encoder.parameters())
    assert first_encoder_param.grad.abs().sum() > 0


def test_features_carry_gradients_to_encoder() -> None:
    model = make("hrnet").train()
    out = model(torch.randn(2, 3, 64, 64))
    out.features[0].mean().backward()
    stem = model.encoder.model.conv1.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_swin_accepts_other_input_sizes() -> None:
    model = make("upernet-swin").eval()
    with torch.no_grad():
        small = model(torch.randn(1, 3, 64, 64))
        large = model(torch.randn(1, 3, 96, 128))
    assert small.logits.shape == (1, NUM_CLASSES, 64, 64)
    assert large.logits.shape == (1, NUM_CLASSES, 96, 128)
    assert [tuple(f.shape[-2:]) for f in large.features] == [(24, 32), (12, 16), (6, 8), (3, 4)]


def test_deeplabv3_atrous_rates_follow_output_stride() -> None:
    def rates(model: SegmentationModel) -> list[int]:
        aspp = model.decode_head[0]
        return [branch[0].dilation[0] for branch in aspp.convs[1:-1]]

    assert rates(make("deeplabv3-os8")) == [12, 24, 36]
    assert rates(make("deeplabv3-os16")) == [6, 12, 18]


def test_ocrnet_aux_logits_and_object_regions_drive_main_logits() -> None:
    model = make("ocrnet").train()
    out = model(torch.randn(2, 3, 64, 64))
    assert model.last_aux_logits is not None
    assert model.last_aux_logits.shape == (2, NUM_CLASSES, 64, 64)
    # The main logits depend on the auxiliary classifier through the soft object regions.
    out.logits.square().mean().backward()
    aux_classifier = model.decode_head.aux_head[-1].weight
    assert aux_classifier.grad is not None and aux_classifier.grad.abs().sum() > 0


def test_models_without_aux_head_leave_aux_logits_none() -> None:
    model = make("tiny").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert model.last_aux_logits is None


def test_tiny_prediction_uses_coarse_context() -> None:
    model = make("tiny").eval()

    def far_input_influence() -> float:
        x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0), requires_grad=True)
        (grad,) = torch.autograd.grad(model(x).logits[..., :8, :8].sum(), x)
        return grad[..., 64:].abs().sum().item()

    # Columns 64+ are beyond what the stride-4/8/16 stages see from the top-left corner: they reach
    # its prediction only through the stride-32 stage, and not at all once that stage is cut off.
    assert far_input_influence() > 0
    with torch.no_grad():
        model.projections[3][0].weight.zero_()
    assert far_input_influence() == 0


def test_seeded_build_is_deterministic() -> None:
    x = torch.randn(1, 3, 64, 64)
    first, second, other = make("ocrnet", seed=3).eval(), make("ocrnet", seed=3).eval(), make("ocrnet", seed=4)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(first(x).logits, second(x).logits)


# ---------------------------------------------------------------------------------------------- pretrained


def assert_encoders_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert list(a_state) == list(b_state)
    for key in a_state:
        assert torch.equal(a_state[key], b_state[key]), key


def test_pretrained_round_trip_safetensors(tmp_path: Path) -> None:
    source = make("hrnet", seed=1).eval()
    path = tmp_path / "encoder.safetensors"
    save_file(source.encoder.state_dict(), str(path))
    loaded = make("hrnet", seed=2, pretrained=str(path)).eval()
    assert_encoders_equal(source.encoder, loaded.encoder)
    # The head stays freshly initialised, so it differs from the source model's head.
    assert not torch.equal(source.decode_head[-1].weight, loaded.decode_head[-1].weight)


@pytest.mark.parametrize("prefix", ["", "encoder.", "backbone.", "model.", "module.encoder.model."])
def test_pretrained_timm_checkpoint_with_prefixes(tmp_path: Path, prefix: str) -> None:
    torch.manual_seed(5)
    classifier = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save({prefix + key: value for key, value in classifier.state_dict().items()}, path)
    model = make("deeplabv3-os8")
    report = load_encoder_weights(model.encoder, path)
    assert report.missing == ()
    assert sorted(report.unexpected) == [prefix + "fc.bias", prefix + "fc.weight"]
    timm_state = classifier.state_dict()
    encoder_state = model.encoder.state_dict()
    assert len(report.loaded) == len(encoder_state) == len(timm_state) - 2
    for key, value in encoder_state.items():
        assert torch.equal(value, timm_state[key.removeprefix("model.")]), key


def test_pretrained_swin_maps_timm_names_to_feature_wrapper(tmp_path: Path) -> None:
    torch.manual_seed(6)
    classifier = timm.create_model(SWIN, pretrained=False, **SMALL_SWIN)
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    model = make("upernet-swin")
    report = load_encoder_weights(model.encoder, path)
    assert report.missing == ()
    assert sorted(report.unexpected) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    torch.testing.assert_close(
        model.encoder.model.layers_1.blocks[0].attn.qkv.weight,
        classifier.layers[1].blocks[0].attn.qkv.weight,
        rtol=0,
        atol=0,
    )


def test_pretrained_nested_checkpoint_and_partial_match(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make("tiny", seed=1)
    first_stage = {k: v for k, v in source.encoder.state_dict().items() if k.startswith("stages.0.")}
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"backbone." + k: v for k, v in first_stage.items()}, "epoch": 3}, path)
    target = make("tiny", seed=2)
    with caplog.at_level(logging.INFO, logger="mscl.models.encoders"):
        report = load_encoder_weights(target.encoder, path)
    assert len(report.loaded) == len(first_stage)
    weights = [k for k in target.encoder.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(report.missing) == len(weights) - sum(not k.endswith("num_batches_tracked") for k in first_stage)
    assert report.unexpected == ()
    assert f"{len(report.missing)} missing" in caplog.text
    assert torch.equal(target.encoder.stages[0][0][0].weight, source.encoder.stages[0][0][0].weight)


def test_pretrained_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        build_model("tiny", NUM_CLASSES, pretrained=str(path))


def test_pretrained_without_matching_keys_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"decoder.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="no key of .*other.safetensors matches"):
        build_model("tiny", NUM_CLASSES, pretrained=str(path))


def test_pretrained_shape_mismatch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    save_file(make("tiny", widths=(8, 16, 32, 48)).encoder.state_dict(), str(path))
    with pytest.raises(ValueError, match="do not fit encoder tiny"):
        build_model("tiny", NUM_CLASSES, pretrained=str(path))


def test_canonical_key_unifies_wrapper_spellings() -> None:
    assert canonical_key("module.encoder.model.layers_0.blocks.0.norm1.weight") == canonical_key(
        "layers.0.blocks.0.norm1.weight"
    )
    assert canonical_key("backbone.conv1.weight") == "conv1.weight"


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown model 'segformer'.*tiny, deeplabv3, upernet, hrnet, ocrnet"):
        build_model("segformer", NUM_CLASSES)


def test_unknown_timm_encoder_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'resnet_18' for model 'upernet'.*resnet18"):
        build_model("upernet", NUM_CLASSES, encoder="resnet_18")


def test_hrnet_models_list_valid_hrnet_encoders() -> None:
    for name in ("hrnet", "ocrnet"):
        with pytest.raises(ValueError, match=f"for model '{name}'; valid encoders: .*hrnet_w18_small.*hrnet_w48"):
            build_model(name, NUM_CLASSES, encoder="resnet18")


def test_tiny_rejects_timm_encoder() -> None:
    with pytest.raises(ValueError, match="encoder must be None or 'tiny'"):
        build_model("tiny", NUM_CLASSES, encoder="resnet18")


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        build_model("deeplabv3", NUM_CLASSES, output_stride=32)
    with pytest.raises(ValueError, match="fixed by mscl"):
        build_model("upernet", NUM_CLASSES, pretrained=None, features_only=False)
    with pytest.raises(TypeError, match="'swin_tiny_patch4_window7_224' rejected keyword arguments"):
        build_model("deeplabv3", NUM_CLASSES, encoder=SWIN)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_model("tiny", 0)


# ---------------------------------------------------------------------------------------------- paper-size


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "encoder", "strides", "channels"),
    [
        ("deeplabv3", "resnet101", (4, 8, 8, 8), (256, 512, 1024, 2048)),
        ("hrnet", "hrnet_w48", (4, 8, 16, 32), (48, 96, 192, 384)),
        ("ocrnet", "hrnet_w48", (4, 8, 16, 32), (48, 96, 192, 384)),
        ("upernet", SWIN, (4, 8, 16, 32), (96, 192, 384, 768)),
    ],
)
def test_paper_size_models(name: str, encoder: str, strides: tuple[int, ...], channels: tuple[int, ...]) -> None:
    model = build_model(name, NUM_CLASSES, encoder=encoder).eval()
    assert model.stage_strides == strides and model.stage_channels == channels
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, NUM_CLASSES, 64, 64)
    assert [f.shape[1] for f in out.features] == list(channels)
