"""Data checks before training and `mscl check-data`: unknown label values, unreadable files, mixed image
sizes, the per-file scan cache, and evaluation over images of several sizes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mscl.cli import main as cli_main
from mscl.config import load_config
from mscl.data import build_dataset
from mscl.trainer import Trainer

CAMVID_ROOT = Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid"
BACKGROUND_FOREGROUND = {"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}, {"id": 1, "name": "foreground", "color": [255, 255, 255]}]}
BACKGROUND_ONLY = {"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}]}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test scans into its own cache folder, never the user's."""
    folder = tmp_path_factory.mktemp("scan-cache")
    monkeypatch.setenv("MSCL_CACHE_DIR", str(folder))
    return folder


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def disc_mask(height: int, width: int, inside: int, outside: int = 0) -> np.ndarray:
    """A mask with a centred disc of value ``inside`` (the 0/255 masks of the reported dataset)."""
    ys, xs = np.mgrid[0:height, 0:width]
    disc = (ys - height / 2) ** 2 + (xs - width / 2) ** 2 < (min(height, width) / 3) ** 2
    return np.where(disc, inside, outside).astype(np.uint8)


def make_folder(root: Path, classes: dict, masks: dict[str, dict[str, np.ndarray]]) -> Path:
    """A folder dataset: ``masks[split][name]`` -> mask; each image is random RGB of the mask's size."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(classes))
    rng = np.random.default_rng(0)
    for split, named in masks.items():
        for name, mask in named.items():
            write_png(root / "images" / split / f"{name}.png", rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8))
            write_png(root / "masks" / split / f"{name}.png", mask)
    return root


def config_for(root: Path, out: Path, *extra: str):
    overrides = [
        "name=check", f"output_dir={out}", "data.name=folder", f"data.root={root}", "data.resize=null",
        "data.batch_size=2", "data.val_batch_size=3", "data.num_workers=0", "data.color_jitter=0.0", "data.hflip=false",
        "model.name=tiny", "loss.preset=ce", "train.steps=1", "train.val_every=1", "train.log_every=1",
        "train.checkpoint_every=1", "train.device=cpu", "train.progress=false", "export.num_pixels=50",
        "export.num_prediction_images=2", "export.num_dense_images=1", "export.project=false",
    ]
    return load_config(None, overrides + list(extra))


def zero_one_255(root: Path) -> Path:
    """The reported dataset: masks use 0 / 255 for background / foreground."""
    train = {f"t{k}": disc_mask(24, 32, inside=255) for k in range(3)}
    val = {f"v{k}": disc_mask(24, 32, inside=255) for k in range(2)}
    return make_folder(root, BACKGROUND_FOREGROUND, {"train": train, "val": val})


# ---------------------------------------------------------------- 1. label values outside the class list


@pytest.mark.parametrize("classes", [BACKGROUND_FOREGROUND, BACKGROUND_ONLY], ids=["two-classes", "background-only"])
def test_undeclared_label_values_stop_training_naming_values_counts_and_files(tmp_path: Path, classes: dict) -> None:
    root = zero_one_255(tmp_path / "data")
    (root / "classes.json").write_text(json.dumps(classes))
    foreground = int((disc_mask(24, 32, inside=255) == 255).sum())
    with pytest.raises(ValueError) as error:
        Trainer(config_for(root, tmp_path / "runs"))
    message = str(error.value)
    assert "\n" not in message
    assert f"split 'train': label values outside the class list: 255 ({3 * foreground:,} px) in 3 of 3 label files" in message
    assert f"split 'val': label values outside the class list: 255 ({2 * foreground:,} px) in 2 of 2 label files" in message
    for split, name in (("train", "t0"), ("train", "t1"), ("train", "t2"), ("val", "v0"), ("val", "v1")):
        assert str(root / "masks" / split / f"{name}.png") in message
    assert f"declare them in {root / 'classes.json'}" in message and "data.unknown_labels: ignore" in message
    assert not (tmp_path / "runs" / "check" / "run.json").exists(), "nothing is written before the data is clean"


def test_error_names_at_most_five_files(tmp_path: Path) -> None:
    train = {f"t{k}": disc_mask(8, 8, inside=7) for k in range(7)}
    root = make_folder(tmp_path / "data", BACKGROUND_FOREGROUND, {"train": train, "val": {"v": disc_mask(8, 8, inside=1)}})
    with pytest.raises(ValueError, match=r"7 of 7 label files \(.*t4\.png and 2 more\)") as error:
        Trainer(config_for(root, tmp_path / "runs"))
    assert "t5.png" not in str(error.value) and "split 'val'" not in str(error.value)


def test_unknown_labels_ignore_trains_and_records_the_raw_histogram(tmp_path: Path) -> None:
    root = zero_one_255(tmp_path / "data")
    foreground = int((disc_mask(24, 32, inside=255) == 255).sum())
    run = Trainer(config_for(root, tmp_path / "runs", "data.unknown_labels=ignore")).fit()
    histogram = json.loads((run / "run.json").read_text())["dataset"]["raw_label_histogram"]
    assert histogram == {
        "train": {"0": 3 * (24 * 32 - foreground), "255": 3 * foreground},
        "val": {"0": 2 * (24 * 32 - foreground), "255": 2 * foreground},
    }


def test_split_without_any_class_pixel_is_an_error_even_when_ignoring(tmp_path: Path, capsys) -> None:
    classes = {**BACKGROUND_FOREGROUND, "ignore_index": 255}
    val = {"v0": np.full((8, 8), 255, np.uint8), "v1": np.full((8, 8), 9, np.uint8)}
    root = make_folder(tmp_path / "data", classes, {"train": {"t": disc_mask(8, 8, inside=1)}, "val": val})
    args = ["check-data", "--data", "folder", "--root", str(root), "--set", "data.unknown_labels=ignore"]
    assert cli_main(args) == 1
    out = capsys.readouterr().out
    assert "split 'val': no pixel of its 2 label files holds a class value (values found: 9 (64 px), 255 (64 px))" in out
    assert re.search(r"^ +255 +void +64 ", out, re.M) and re.search(r"^ +9 +UNKNOWN +64 ", out, re.M)


def test_each_format_declares_its_class_and_void_values(tmp_path: Path) -> None:
    from mscl.data.ade20k import ADE20K_LABEL_VALUES
    from mscl.data.cadis import cadis_label_values
    from mscl.data.camvid import CAMVID_LABEL_VALUES
    from mscl.data.cityscapes import CITYSCAPES_LABEL_VALUES
    from mscl.data.pascal_context import PASCAL_CONTEXT_LABEL_VALUES

    def kinds(labels, values):
        return [labels.kind(v) for v in values]

    assert kinds(CAMVID_LABEL_VALUES, [0, 10, 11, 12, 255]) == ["class", "class", "void", "unknown", "unknown"]
    assert kinds(CITYSCAPES_LABEL_VALUES, [7, 33, 0, 1, 34, 255]) == ["class", "class", "void", "void", "unknown", "unknown"]
    assert len(CITYSCAPES_LABEL_VALUES.void) == 34 - 19
    assert kinds(ADE20K_LABEL_VALUES, [0, 1, 150, 151]) == ["void", "class", "class", "unknown"]
    assert kinds(PASCAL_CONTEXT_LABEL_VALUES, [0, 59, 60]) == ["void", "class", "unknown"]
    assert kinds(cadis_label_values(1), [0, 35, 36]) == ["class", "class", "unknown"]
    assert kinds(cadis_label_values(2), [24, 25, 35, 255]) == ["class", "void", "void", "unknown"]
    # folder: only what the classes file declares is void; a defaulted ignore_index is not a declaration
    make_folder(tmp_path / "a", {**BACKGROUND_ONLY, "void": [254]}, {"train": {"x": disc_mask(8, 8, 1)}})
    make_folder(tmp_path / "b", {**BACKGROUND_ONLY, "ignore_index": 255}, {"train": {"x": disc_mask(8, 8, 1)}})
    assert kinds(build_dataset("folder", tmp_path / "a", "train").label_values, [0, 254, 255]) == ["class", "void", "unknown"]
    assert kinds(build_dataset("folder", tmp_path / "b", "train").label_values, [0, 254, 255]) == ["class", "unknown", "void"]
    make_folder(tmp_path / "c", {**BACKGROUND_ONLY, "void": [0]}, {"train": {"x": disc_mask(8, 8, 1)}})
    with pytest.raises(ValueError, match=r"'void' values \[0\] are also class ids"):
        build_dataset("folder", tmp_path / "c", "train")


def test_camvid_void_is_declared_and_other_ids_are_unknown(tmp_path: Path, capsys) -> None:
    label = np.array([[0, 10, 11, 12]], dtype=np.uint8).repeat(4, axis=0)
    for split in ("train", "val"):
        write_png(tmp_path / split / "f.png", np.zeros((4, 4, 3), np.uint8))
        write_png(tmp_path / f"{split}annot" / "f.png", label)
        (tmp_path / f"{split}.txt").write_text(f"{split}/f.png {split}annot/f.png\n")
    assert cli_main(["check-data", "--data", "camvid", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^ +11 +void +4 ", out, re.M) and re.search(r"^ +12 +UNKNOWN +4 ", out, re.M)
    assert "label values outside the class list: 12 (4 px) in 1 of 1 label files" in out
    assert "classes 0..10, void 11 (the camvid format)" in out


# ---------------------------------------------------------------- 2. truncated / empty files


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_and_empty_files_are_named_before_step_one(tmp_path: Path) -> None:
    masks = {"train": {f"t{k}": disc_mask(40, 40, 1) for k in range(2)}, "val": {f"v{k}": disc_mask(40, 40, 1) for k in range(2)}}
    root = make_folder(tmp_path / "data", BACKGROUND_FOREGROUND, masks)
    truncated = truncate(root / "images" / "val" / "v1.png")
    empty = root / "masks" / "train" / "t0.png"
    empty.write_bytes(b"")
    write_png(root / "masks" / "train" / "t1.png", disc_mask(30, 40, 1))
    with pytest.raises(ValueError) as error:
        Trainer(config_for(root, tmp_path / "runs"))
    message = str(error.value)
    assert message.startswith("data check failed with 3 problems:") and "\n" not in message
    assert f"label file {empty} cannot be read" in message
    assert f"image file {truncated} cannot be read (image file is truncated" in message
    assert f"image {root / 'images/train/t1.png'} is 40x40 but its label {root / 'masks/train/t1.png'} is 40x30" in message


def test_every_load_error_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path, BACKGROUND_FOREGROUND, {"train": {"a": disc_mask(40, 40, 1), "b": disc_mask(40, 40, 1)}})
    truncate(root / "images" / "train" / "a.png")
    (root / "masks" / "train" / "b.png").write_bytes(b"")
    dataset = build_dataset("folder", root, "train")
    with pytest.raises(ValueError, match=re.escape(f"image file {root / 'images/train/a.png'} cannot be read (image file is truncated")):
        dataset[0]
    with pytest.raises(ValueError, match=re.escape(f"label file {root / 'masks/train/b.png'} cannot be read (cannot identify image file")):
        dataset[1]


# ---------------------------------------------------------------- 3. images of different sizes


def mixed_size_folder(root: Path) -> Path:
    train = {"a": disc_mask(32, 48, 1), "b": disc_mask(32, 48, 1), "c": disc_mask(40, 64, 1), "d": disc_mask(40, 64, 1)}
    val = {"v0": disc_mask(32, 48, 1), "v1": disc_mask(40, 64, 1), "v2": disc_mask(32, 48, 1), "v3": disc_mask(24, 24, 1)}
    return make_folder(root, BACKGROUND_FOREGROUND, {"train": train, "val": val})


def test_mixed_train_sizes_without_crop_size_is_an_error_naming_the_key(tmp_path: Path) -> None:
    root = mixed_size_folder(tmp_path / "data")
    with pytest.raises(ValueError) as error:
        Trainer(config_for(root, tmp_path / "runs"))
    message = str(error.value)
    assert "split 'train' has images of 2 sizes (WxH 48x32: 2 images, 64x40: 2 images) and data.crop_size is not set" in message
    assert "set data.crop_size (e.g. [32, 48]" in message and "data.batch_size=1" in message


def test_mixed_sizes_train_with_crop_and_evaluate_every_val_image(tmp_path: Path) -> None:
    root = mixed_size_folder(tmp_path / "data")
    run = Trainer(config_for(root, tmp_path / "runs", "data.crop_size=[32, 32]")).fit()
    per_image = pd.read_csv(run / "eval" / "per_image.csv")
    assert sorted(per_image["image_id"]) == ["v0", "v1", "v2", "v3"]
    confusion = np.load(run / "eval" / "confusion.npy")
    assert confusion.sum() == 32 * 48 * 2 + 40 * 64 + 24 * 24, "every val pixel counted once at its own size"


class ColourModel(nn.Module):
    """Predicts class 1 where the red channel is above its image mean: a fixed, size-agnostic model."""

    def forward(self, images: torch.Tensor):
        red = images[:, :1]
        logits = torch.cat([torch.zeros_like(red), red - red.mean(dim=(2, 3), keepdim=True)], dim=1)
        return SimpleNamespace(logits=logits, features=[])


def test_evaluate_over_mixed_sizes_equals_one_image_at_a_time(tmp_path: Path) -> None:
    from mscl.evaluation import eval_loader, evaluate
    from mscl.metrics import confusion_matrix

    root = mixed_size_folder(tmp_path)
    dataset = build_dataset("folder", root, "val")
    result = evaluate(ColourModel(), eval_loader(dataset, None, batch_size=4, num_workers=0), 2, 255, torch.device("cpu"), progress=False)
    expected = np.zeros((2, 2), dtype=np.int64)
    for index in range(len(dataset)):
        item = dataset[index]
        prediction = ColourModel()(item["image"][None]).logits.argmax(1)[0]
        expected += confusion_matrix(prediction, item["label"], 2, 255).numpy()
    np.testing.assert_array_equal(result.confusion, expected)
    assert [row["image_id"] for row in result.per_image] == ["v0", "v2", "v1", "v3"], "grouped by size, in order inside a size"


# ---------------------------------------------------------------- 5. mscl check-data and the scan cache


def test_check_data_report_and_exit_status(tmp_path: Path, capsys) -> None:
    classes = {**BACKGROUND_FOREGROUND, "ignore_index": 255}
    masks = {"train": {"t0": disc_mask(24, 32, 1), "t1": disc_mask(24, 32, 1, outside=255)}, "val": {"v0": disc_mask(24, 32, 1)}}
    root = make_folder(tmp_path / "data", classes, masks)
    base = ["check-data", "--data", "folder", "--root", str(root), "--set", "data.resize=null"]
    assert cli_main(base) == 0
    out = capsys.readouterr().out
    disc = int((disc_mask(24, 32, 1) == 1).sum())
    assert "split train: 2 images (all used); sizes (WxH): 32x24 (2)" in out
    assert "split val: 1 images (all used); sizes (WxH): 32x24 (1)" in out
    assert re.search(rf"^ +0 +class background +{24 * 32 - disc:,} ", out, re.M)
    assert re.search(rf"^ +1 +class foreground +{2 * disc:,} ", out, re.M)
    assert re.search(rf"^ +255 +void +{24 * 32 - disc:,} ", out, re.M)
    assert "problems: none" in out
    assert cli_main([*base, "--set", "data.max_train_images=1"]) == 0
    assert "split train: 2 images (first 1 used (data.max_train_images))" in capsys.readouterr().out

    truncate(root / "images" / "val" / "v0.png")
    assert cli_main(base) == 1
    out = capsys.readouterr().out
    assert "problems (1):" in out and f"image file {root / 'images/val/v0.png'} cannot be read" in out
    assert cli_main([*base, "--set", "data.unknown_labels=maybe"]) == 2
    assert "data.unknown_labels" in capsys.readouterr().err


def test_scan_cache_reuses_unchanged_files_only(tmp_path: Path, private_cache: Path, monkeypatch) -> None:
    from mscl.data import inspection

    root = make_folder(tmp_path / "data", BACKGROUND_FOREGROUND, {"train": {f"t{k}": disc_mask(16, 16, 1) for k in range(3)}})
    samples = build_dataset("folder", root, "train").samples
    first = inspection.scan_samples(samples, inspection.ScanCache())
    assert list(private_cache.iterdir()) == [private_cache / inspection.CACHE_FILE]
    assert sorted(p.name for p in root.rglob("*") if p.is_file() and p.suffix != ".png") == ["classes.json"]

    decoded: list[Path] = []
    real = inspection.read_label
    monkeypatch.setattr(inspection, "read_label", lambda path: decoded.append(path) or real(path))
    assert inspection.scan_samples(samples, inspection.ScanCache()) == first
    assert decoded == []
    write_png(root / "masks" / "train" / "t1.png", np.full((16, 16), 1, np.uint8))
    second = inspection.scan_samples(samples, inspection.ScanCache())
    assert decoded == [(root / "masks" / "train" / "t1.png").absolute()]
    assert second[1].label.histogram == {1: 256} and second[0] == first[0]


@pytest.mark.camvid
@pytest.mark.skipif(not (CAMVID_ROOT / "train.txt").is_file(), reason=f"CamVid not found at {CAMVID_ROOT}")
def test_camvid_scan_is_clean_and_cached(capsys) -> None:
    args = ["check-data", "--config", "camvid-tiny", "--root", str(CAMVID_ROOT)]
    tic = time.perf_counter()
    assert cli_main(args) == 0
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    assert cli_main(args) == 0
    second = time.perf_counter() - tic
    out = capsys.readouterr().out
    assert "split train: 367 images (all used); sizes (WxH): 480x360 (367)" in out
    assert "split val: 101 images (all used); sizes (WxH): 480x360 (101)" in out
    assert "UNKNOWN" not in out and "problems: none\nwarnings: none" in out
    assert second < max(1.0, first / 5), f"cached scan took {second:.2f} s after a first scan of {first:.2f} s"
