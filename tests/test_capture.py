"""``mscl capture``: run directories from models ``mscl train`` did not make (torchvision DeepLabV3, a timm
``features_only`` encoder with a head, a model returning ``.logits``), read back by ``workbench.runs`` and
opened on every app page next to a trained run; the one-line errors of the command."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fake_run import IMAGE_SIZE, NUM_VAL_IMAGES, write_fake_run  # noqa: E402

from app_pages import common  # noqa: E402
from mscl.capture import capture_run, capture_split  # noqa: E402
from mscl.cli import main  # noqa: E402
from mscl.feature_taps import CaptureError, TappedModel  # noqa: E402
from workbench.runs import MissingArtifactError, RunFormatError, load_run  # noqa: E402

NUM_CLASSES = 4
IGNORE = NUM_CLASSES
CLASS_NAMES = [f"class{c}" for c in range(NUM_CLASSES)]
HEIGHT, WIDTH = 32, 48
NUM_IMAGES = 5
TV_FACTORY = "torchvision.models.segmentation:deeplabv3_mobilenet_v3_large"
TV_KWARGS = json.dumps({"weights": None, "weights_backbone": None, "num_classes": NUM_CLASSES})
TV_STAGES = ["backbone.4", "backbone.7", "backbone.13", "backbone.16"]
PAGE_SCRIPTS = {page.url_path: page.script for page in common.PAGES}


def write_folder_dataset(root: Path, names: list[str], height: int = HEIGHT, width: int = WIDTH, split: str = "val") -> Path:
    """Small images in the folder format: vertical class stripes (shifted per image), a void square, noise."""
    rng = np.random.default_rng(0)
    (root / "images" / split).mkdir(parents=True)
    (root / "masks" / split).mkdir(parents=True)
    palette = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]]
    (root / "classes.json").write_text(json.dumps({
        "name": "fake", "ignore_index": IGNORE,
        "classes": [{"id": c, "name": name, "color": palette[c]} for c, name in enumerate(CLASS_NAMES)],
    }))
    for i, name in enumerate(names):
        columns = (np.arange(width) * NUM_CLASSES // width + i) % NUM_CLASSES
        label = np.tile(columns, (height, 1)).astype(np.uint8)
        label[2:6, 2:6] = IGNORE
        colours = np.vstack([palette, [[0, 0, 0]]])[label]
        image = np.clip(colours + rng.integers(-30, 31, size=colours.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / split / f"{name}.png")
        Image.fromarray(label).save(root / "masks" / split / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), [f"img_{i:02d}" for i in range(NUM_IMAGES)])


def tv_model() -> nn.Module:
    torch.manual_seed(0)
    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()


def split_loader(data_root: Path, batch_size: int = 2) -> DataLoader:
    return DataLoader(capture_split("folder", data_root, "val"), batch_size=batch_size)


def capture(model: nn.Module, data_root: Path, out: Path, stages: list[str], **kwargs) -> Path:
    return capture_run(model, split_loader(data_root), stages, CLASS_NAMES, IGNORE, out, progress=False, **kwargs)


def cli(*args: str) -> int:
    return main(["capture", *args])


class TimmSegmenter(nn.Module):
    """A timm ``features_only`` ResNet-18 with a 1x1 head on its last map; returns logits at stride 32."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = timm.create_model("resnet18", features_only=True, pretrained=False, out_indices=(1, 2, 3, 4))
        self.head = nn.Conv2d(self.encoder.feature_info.channels()[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


@dataclass
class LogitsOutput:
    """Like a Hugging Face segmentation output: logits at a quarter of the input size."""

    logits: torch.Tensor


class LogitsModel(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> LogitsOutput:
        features = self.down(torch.relu(self.stem(x)))
        self.flat(self.pool(features))
        return LogitsOutput(logits=self.head(features))


class TupleModel(LogitsModel):
    """Returns (logits, auxiliary logits): not an output capture can read logits from."""

    def __init__(self) -> None:
        super().__init__(NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = super().forward(x).logits
        return logits, logits


class LargeLabels(Dataset):
    """Images of ``base`` with labels upsampled 2x (nearest): the logits must follow the label size."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.base[index])
        item["label"] = item["label"].repeat_interleave(2, 0).repeat_interleave(2, 1)
        return item

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.base.load_raw(index)


# ------------------------------------------------------------------------------------------------ runs


def test_torchvision_deeplabv3_capture_matches_the_model_and_loads(data_root: Path, tmp_path: Path) -> None:
    model = tv_model()
    run_dir = capture(model, data_root, tmp_path / "tv", TV_STAGES, model_name="deeplabv3_mobilenet_v3_large")
    run = load_run(run_dir)
    assert run.kind == "captured" and run.meta["status"] == "finished"
    assert run.stage_strides == [8, 16, 16, 16]
    assert run.meta["model"]["stage_channels"] == [40, 80, 160, 960]
    assert run.meta["model"]["stage_modules"] == TV_STAGES
    assert run.embedding_stages() == [0, 1, 2, 3] and run.embedding_kinds() == ["backbone"]
    assert [run.embeddings(s, "backbone").shape[1] for s in run.stages] == [40, 80, 160, 960]
    assert run.eval_summary()["num_images"] == NUM_IMAGES and run.class_names == CLASS_NAMES

    # predictions = argmax of the model's "out" logits resized bilinearly to the label size
    dataset = capture_split("folder", data_root, "val")
    extractor = create_feature_extractor(model, return_nodes=TV_STAGES)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    with torch.no_grad():
        for index in range(NUM_IMAGES):
            item = dataset[index]
            logits = F.interpolate(model(item["image"][None])["out"], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
            expected = logits.argmax(1)[0].numpy()
            label = item["label"].numpy()
            valid = label != IGNORE
            np.add.at(confusion, (label[valid], expected[valid]), 1)
            if item["image_id"] in run.prediction_ids():
                np.testing.assert_array_equal(run.prediction(item["image_id"])["prediction"], expected)
            if item["image_id"] in run.dense_ids():
                reference = extractor(item["image"][None])
                dense = run.dense(item["image_id"])
                for s, stage in enumerate(TV_STAGES):
                    np.testing.assert_allclose(dense[f"stage{s}_backbone"], reference[stage][0].numpy().astype(np.float16),
                                               rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(run.confusion(), confusion)


def test_timm_features_only_stages_sample_the_cell_under_each_pixel(data_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TimmSegmenter(NUM_CLASSES).eval()
    stages = ["encoder.layer1", "encoder.layer2", "encoder.layer3", "encoder.layer4"]
    run = load_run(capture(model, data_root, tmp_path / "timm", stages, num_pixels=200))
    assert run.stage_strides == [4, 8, 16, 32]
    assert run.meta["model"]["stage_channels"] == [64, 128, 256, 512]
    pixels = run.pixels()
    assert set(pixels["label"]) == set(range(NUM_CLASSES))
    assert pixels["label"].value_counts().max() <= 200 // NUM_CLASSES
    dataset = capture_split("folder", data_root, "val")
    row = pixels.iloc[len(pixels) // 2]
    with torch.no_grad():
        features = model.encoder(dataset[int(row["image_index"])]["image"][None])
    for s, feature in enumerate(features):
        h, w = feature.shape[-2:]
        expected = feature[0, :, int(row["y"]) * h // HEIGHT, int(row["x"]) * w // WIDTH].numpy().astype(np.float16)
        np.testing.assert_allclose(run.embeddings(s, "backbone")[len(pixels) // 2], expected, rtol=1e-3, atol=1e-3)


def test_logits_attribute_is_resized_to_the_label_size(data_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LogitsModel(NUM_CLASSES).eval()
    loader = DataLoader(LargeLabels(capture_split("folder", data_root, "val")), batch_size=2)
    run_dir = capture_run(model, loader, ["stem", "down"], CLASS_NAMES, IGNORE, tmp_path / "logits", progress=False)
    run = load_run(run_dir)
    image_id = run.prediction_ids()[0]
    sample = run.prediction(image_id)
    assert sample["prediction"].shape == sample["label"].shape == (2 * HEIGHT, 2 * WIDTH)
    assert sample["image"].shape == (2 * HEIGHT, 2 * WIDTH, 3)
    item = loader.dataset[run.prediction_ids().index(image_id)]
    with torch.no_grad():
        logits = model(item["image"][None]).logits
    expected = F.interpolate(logits, size=(2 * HEIGHT, 2 * WIDTH), mode="bilinear", align_corners=False).argmax(1)[0]
    np.testing.assert_array_equal(sample["prediction"], expected.numpy())
    assert run.stage_strides == [4, 8]  # relative to the label size the pixels are sampled at
    assert run.meta["model"]["name"] == "LogitsModel"


def test_checkpoint_round_trip_and_rejections(data_root: Path, tmp_path: Path) -> None:
    weights = tmp_path / "tv.safetensors"
    save_file(tv_model().state_dict(), str(weights))
    common_args = ["--factory", TV_FACTORY, "--kwargs", TV_KWARGS, "--stages", *TV_STAGES, "--data", "folder",
                   "--root", str(data_root), "--out", str(tmp_path), "--seed", "5"]
    assert cli(*common_args, "--checkpoint", str(weights), "--name", "loaded") == 0
    assert cli(*common_args, "--name", "seed5") == 0
    reference = load_run(capture(tv_model(), data_root, tmp_path / "reference", TV_STAGES, seed=5))  # same pixel sample
    loaded, unloaded = load_run(tmp_path / "loaded"), load_run(tmp_path / "seed5")
    np.testing.assert_array_equal(loaded.confusion(), reference.confusion())
    np.testing.assert_array_equal(loaded.embeddings(0, "backbone"), reference.embeddings(0, "backbone"))
    assert not np.allclose(unloaded.embeddings(0, "backbone"), reference.embeddings(0, "backbone"))
    assert loaded.meta["capture"]["checkpoint"] == str(weights) and loaded.eval_summary()["checkpoint"] == str(weights)


def test_readme_python_example_runs(data_root: Path, tmp_path: Path) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Open your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"camvid", "../shared/datasets/camvid"' in code and '"runs/tv-python"' in code
    code = code.replace('"camvid", "../shared/datasets/camvid"', f'"folder", {str(data_root)!r}')
    namespace: dict = {}
    exec(compile(code.replace('"runs/tv-python"', repr(str(tmp_path / "tv-python"))), "README.md", "exec"), namespace)
    run = load_run(namespace["run_dir"])
    assert run.kind == "captured" and run.embedding_stages() == [0, 1, 2, 3]
    assert run.eval_summary()["num_images"] == NUM_IMAGES


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("extra", "message"), [
    (["--factory", "torchvision.models.segmentatio:deeplabv3_mobilenet_v3_large"],
     "--factory: cannot import module 'torchvision.models.segmentatio' (No module named 'torchvision.models.segmentatio')"),
    (["--factory", "torchvision.models.segmentation:deeplabv3_mobilenet_v3_larg"],
     "--factory: 'torchvision.models.segmentation' has no attribute 'deeplabv3_mobilenet_v3_larg'; close matches: "
     "deeplabv3_mobilenet_v3_large"),
    (["--factory", "torchvision.models.segmentation"], "--factory: expected MODULE:FUNCTION"),
    (["--kwargs", "{weights: null}"], "--kwargs: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    (["--kwargs", "[1, 2]"], "--kwargs: must be a JSON object of keyword arguments, got list '[1, 2]'"),
    (["--factory", "torch.nn:Conv2d", "--kwargs", '{"in_channels": 3}'],
     '--kwargs: torch.nn:Conv2d(**{"in_channels": 3}) failed: Conv2d.__init__() missing 2 required positional arguments: '
     "'out_channels' and 'kernel_size'"),
    (["--factory", "mscl.data:build_dataset", "--kwargs", '{"name": "camvid", "root": "/nonexistent", "split": "val"}'],
     '--factory: mscl.data:build_dataset(**{"name": "camvid", "root": "/nonexistent", "split": "val"}) failed with '),
    (["--stages", "backbone.44", "backbone.16"],
     "--stages: the model has no module 'backbone.44'; close matches: backbone.4, backbone.14"),
    (["--stages", "backbone.16", "backbone.4"],
     "--stages: stages go finest first, but 'backbone.4' (stride 8) comes after 'backbone.16' (stride 16); reorder them"),
    (["--kwargs", json.dumps({"weights": None, "weights_backbone": None, "num_classes": 21})],
     "--factory: the model outputs 21 classes but the dataset has 4; build the model with 4 classes "
     "(e.g. --kwargs '{\"num_classes\": 4}')"),
    (["--checkpoint", "missing.safetensors"], "--checkpoint: file missing.safetensors not found"),
    (["--resize", "1", "2", "3"], "--resize: give one scale factor (e.g. 0.5) or a size H W (e.g. 360 480), got [1.0, 2.0, 3.0]"),
    (["--max-images", "0"], "--max-images: must be at least 1, got 0"),
    (["--std", "0.2", "0", "0.2"], "--std: must be positive per channel, got [0.2, 0.0, 0.2]"),
])
def test_cli_errors_are_one_line_naming_the_option(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    extra: list[str], message: str) -> None:
    defaults = {"--factory": [TV_FACTORY], "--kwargs": [TV_KWARGS], "--stages": TV_STAGES}
    args = ["--data", "folder", "--root", str(data_root), "--out", str(tmp_path), "--name", "run", *extra]
    for option, values in defaults.items():
        if option not in extra:
            args += [option, *values]
    assert cli(*args) == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines()[-1].startswith(f"mscl capture: error: {message}"), error
    assert "Traceback" not in error
    assert not (tmp_path / "run" / "run.json").exists()


def test_checkpoint_errors(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pickled, wrong = tmp_path / "pickled.pt", tmp_path / "wrong.pt"
    torch.save({"model": tv_model().state_dict(), "note": Path("x")}, pickled)
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}}, wrong)
    base = ["--factory", TV_FACTORY, "--kwargs", TV_KWARGS, "--stages", *TV_STAGES, "--data", "folder",
            "--root", str(data_root), "--out", str(tmp_path), "--name", "run"]
    assert cli(*base, "--checkpoint", str(pickled)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mscl capture: error: --checkpoint: {pickled} was refused: it holds Python objects besides "
                            "tensors, which mscl never unpickles (") and error.count("\n") == 1
    assert cli(*base, "--checkpoint", str(wrong)) == 2
    error = capsys.readouterr().err
    assert f"--checkpoint: {wrong} does not fit the model: " in error and "1 unexpected (e.g. ['head.weight'])" in error


def test_stage_output_must_be_a_4d_map(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"^--stages: module 'flat' outputs a 2-D tensor of shape \[2, 16\]; a stage must "
                                           r"output one 4-D feature map \[N=2, C, h, w\]"):
        capture(LogitsModel(NUM_CLASSES), data_root, tmp_path / "flat", ["stem", "flat"])
    with pytest.raises(CaptureError, match="^--stages: \\['stem'\\] named more than once"):
        TappedModel(LogitsModel(NUM_CLASSES), ["stem", "stem"], NUM_CLASSES)
    with pytest.raises(CaptureError, match=r"^--factory: the model returns a tuple of 2 items \(a 4-D tensor of shape "
                                           r"\[2, 4, 8, 12\], a 4-D tensor"):
        capture(TupleModel(), data_root, tmp_path / "tuple", ["stem"])
    with pytest.raises(CaptureError, match=r"^--stages: name at least one module of the model, finest first"):
        capture(TupleModel(), data_root, tmp_path / "tuple", [])
    assert not (tmp_path / "flat" / "run.json").exists()


def test_an_existing_run_is_not_overwritten_silently(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    projected: list[tuple[Path, int]] = []
    monkeypatch.setattr("mscl.capture.project_in_child_process", lambda run_dir, seed: projected.append((run_dir, seed)))
    write_fake_run(tmp_path / "trained")
    base = ["--factory", TV_FACTORY, "--kwargs", TV_KWARGS, "--stages", *TV_STAGES, "--data", "folder",
            "--root", str(data_root), "--out", str(tmp_path), "--max-images", "2"]
    assert cli(*base, "--name", "trained") == 2
    assert f"{tmp_path / 'trained'} holds a trained run; capture into another folder" in capsys.readouterr().err
    assert cli(*base, "--name", "tv") == 0
    capsys.readouterr()
    assert cli(*base, "--name", "tv") == 2
    assert "already holds a captured run; pass --overwrite" in capsys.readouterr().err
    assert not projected
    assert cli(*base, "--name", "tv", "--overwrite", "--project") == 0
    assert load_run(tmp_path / "tv").eval_summary()["num_images"] == 2
    assert projected == [(tmp_path / "tv", 0)]


def test_list_modules_prints_shapes_and_strides(data_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli("--factory", TV_FACTORY, "--kwargs", TV_KWARGS, "--list-modules", "--data", "folder", "--root", str(data_root),
               "--batch-size", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"input {HEIGHT} x {WIDTH}; modules with a 4-D output (pick stages finest first):"
    table = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert table["backbone.4"] == ["InvertedResidual", "40", "x", "4", "x", "6", "8"]
    assert table["backbone.16"] == ["Conv2dNormActivation", "960", "x", "2", "x", "3", "16"]
    assert table["classifier.4"][:2] == ["Conv2d", str(NUM_CLASSES)]
    assert list(table).index("backbone.4") < list(table).index("backbone.16")


def test_captured_run_metadata_validation(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    assert load_run(run).kind == "trained"
    (run / "run.json").write_text(json.dumps({**meta, "kind": "imported"}))
    with pytest.raises(RunFormatError, match=r"run.json: key 'kind' must be one of \['trained', 'captured'\]"):
        load_run(run)
    (run / "run.json").write_text(json.dumps({**meta, "kind": "captured"}))
    (run / "metrics" / "train.csv").unlink()
    with pytest.raises(MissingArtifactError, match="captured from a model with `mscl capture`, not trained"):
        load_run(run).train_metrics()


# ------------------------------------------------------------------------------------------------ app


def calibrated_tv_model(data_root: Path) -> nn.Module:
    """DeepLabV3 with its batch-norm statistics set from the data, like a trained model's: with the initial
    statistics the activations of a randomly initialised network fade with depth (about 1e-8 at backbone.16,
    zero once stored as float16), which leaves nothing to compare on the cross-scale page."""
    model = tv_model()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in split_loader(data_root, batch_size=NUM_VAL_IMAGES):
            model(batch["image"])
    return model.eval()


@pytest.fixture(scope="module")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained (fake) ms+cs run and a DeepLabV3 run captured on images with the fake run's classes, image
    ids and size (two models evaluated on one dataset)."""
    root = tmp_path_factory.mktemp("app-runs")
    write_fake_run(root / "trained", seed=1)
    names = [f"val_{i:03d}" for i in range(NUM_VAL_IMAGES)]
    shared = write_folder_dataset(tmp_path_factory.mktemp("shared-data"), names, *IMAGE_SIZE)
    capture(calibrated_tv_model(shared), shared, root / "captured", TV_STAGES, model_name="deeplabv3_mobilenet_v3_large")
    return root


@pytest.mark.parametrize("page", list(PAGE_SCRIPTS))
@pytest.mark.parametrize("order", ["captured-first", "trained-first"])
def test_captured_run_opens_on_every_page_next_to_a_trained_run(app_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  page: str, order: str) -> None:
    runs = [str((app_root / name).resolve()) for name in ("captured", "trained")]
    run_a, run_b = runs if order == "captured-first" else runs[::-1]
    monkeypatch.setenv(common.RUNS_ENV_VAR, str(app_root))
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    app.run()
    app.selectbox(key="run_a").set_value(run_a)
    app.selectbox(key="run_b").set_value(run_b)
    app.run()
    app.switch_page(PAGE_SCRIPTS[page]).run()
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]
    assert app.get("plotly_chart"), f"page {page} drew no figure"
    for warning in app.warning:
        assert "**captured**" in warning.value and "captured from a model with `mscl capture`" in warning.value, warning.value
    if page == "runs":
        assert any("**captured** was captured from a model with `mscl capture`, not trained: it has no training curves"
                   in info.value for info in app.info)
    if page == "sampler":
        assert app.warning, "the sampler page does not say the captured run has no sampler statistics"


# ------------------------------------------------------------------------------------------------ CamVid

CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"


@pytest.mark.slow
@pytest.mark.camvid
@pytest.mark.skipif(not (CAMVID / "val.txt").is_file(), reason="CamVid is not at ../shared/datasets/camvid")
def test_camvid_deeplabv3_mobilenet_capture_command(tmp_path: Path) -> None:
    kwargs = json.dumps({"weights": None, "weights_backbone": None, "num_classes": 11})
    assert cli("--factory", TV_FACTORY, "--kwargs", kwargs, "--stages", *TV_STAGES, "--data", "camvid",
               "--root", str(CAMVID), "--split", "val", "--max-images", "8", "--out", str(tmp_path / "runs"), "--name", "tv") == 0
    run = load_run(tmp_path / "runs" / "tv")
    assert run.kind == "captured" and run.embedding_stages() == [0, 1, 2, 3]
    assert run.stage_strides == [8, 16, 16, 16]
    assert [run.embeddings(s, "backbone").shape[1] for s in run.stages] == [40, 80, 160, 960]
    summary = run.eval_summary()
    assert summary["num_images"] == 8 and summary["split"] == "val" and 0.0 <= summary["miou"] <= 1.0
    assert run.dense_ids() and len(run.prediction_ids()) == 8
