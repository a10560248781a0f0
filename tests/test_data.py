"""mscl.data: dataset formats (real CamVid + tiny fixture folders), joint transforms, synthetic scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mscl.data import (
    CONTEXT_PAIRS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SyntheticScenes,
    available_datasets,
    build_dataset,
    build_transforms,
    generate_synthetic_dataset,
    render_scene,
)
from mscl.data.synthetic import CAMEL, FLAG, GRASS, PARKING, ROAD, SAND, SHEEP

CAMVID_ROOT = Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def label_grid(values: list[int], height: int = 4, width: int = 6, dtype=np.uint8) -> np.ndarray:
    """A label whose columns cycle through ``values`` (every value present)."""
    row = np.array([values[k % len(values)] for k in range(width)], dtype=dtype)
    return np.tile(row, (height, 1))


def mapped(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    return np.vectorize(lambda v: table[int(v)])(raw).astype(np.int64)


def denormalise(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image * std + mean) * 255).round().permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- registry


def test_available_datasets_and_unknown_name(tmp_path: Path) -> None:
    expected = {"camvid", "cityscapes", "ade20k", "pascal_context", "cadis", "folder", "synthetic"}
    assert set(available_datasets()) == expected
    with pytest.raises(ValueError, match="unknown dataset 'kitti'.*camvid"):
        build_dataset("kitti", tmp_path, "train")


# ---------------------------------------------------------------- CamVid


@pytest.mark.camvid
@pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason=f"CamVid not found at {CAMVID_ROOT}")
def test_camvid_real_data() -> None:
    train = build_dataset("camvid", CAMVID_ROOT, "train")
    val = build_dataset("camvid", CAMVID_ROOT, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.info.ignore_index == 11 and train.info.num_classes == 11
    assert train.info.class_names[3] == "Road" and train.info.palette[3] == (128, 64, 128)
    saw_void = False
    for index in (0, 50, 100):
        image, label = val.load_raw(index)
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.int64
        assert label.min() >= 0 and label.max() <= 11
        raw = np.array(Image.open(val.samples[index].label_path))
        np.testing.assert_array_equal(label, raw)  # ids 0..11 are kept, void stays 11
        saw_void |= bool((label == 11).any())
    assert saw_void
    item = train[0]
    assert item["image"].shape == (3, 360, 480) and item["image"].dtype == torch.float32
    assert item["label"].shape == (360, 480) and item["label"].dtype == torch.int64
    assert item["image_id"] == "0001TP_006690" and item["index"] == 0


def make_camvid(root: Path, labels: list[np.ndarray]) -> None:
    lines = []
    for k, label in enumerate(labels):
        write_png(root / "train" / f"f{k}.png", random_rgb(*label.shape, seed=k))
        write_png(root / "trainannot" / f"f{k}.png", label)
        lines.append(f"train/f{k}.png trainannot/f{k}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def test_camvid_fixture_maps_unknown_ids_to_void(tmp_path: Path) -> None:
    make_camvid(tmp_path, [label_grid([0, 10, 11, 12, 200])])
    dataset = build_dataset("camvid", tmp_path, "train")
    _, label = dataset.load_raw(0)
    expected = {0: 0, 10: 10, 11: 11, 12: 11, 200: 11}
    np.testing.assert_array_equal(label, mapped(label_grid([0, 10, 11, 12, 200]), expected))


def test_camvid_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("camvid", tmp_path / "nowhere", "train")
    make_camvid(tmp_path, [label_grid([0])])
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_dataset("camvid", tmp_path, "val")
    (tmp_path / "train" / "f0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/f0\.png"):
        build_dataset("camvid", tmp_path, "train")


# ---------------------------------------------------------------- folder


def make_folder(root: Path, classes: dict | str, masks: dict[str, np.ndarray], split: str = "train",
                classes_name: str = "classes.json") -> None:
    text = classes if isinstance(classes, str) else json.dumps(classes)
    root.mkdir(parents=True, exist_ok=True)
    (root / classes_name).write_text(text)
    for k, (name, mask) in enumerate(masks.items()):
        write_png(root / "images" / split / f"{name}.png", random_rgb(mask.shape[0], mask.shape[1], seed=k))
        write_png(root / "masks" / split / f"{name}.png", mask)


THREE_CLASSES = {
    "classes": [
        {"id": 0, "name": "road", "color": [128, 64, 128]},
        {"id": 5, "name": "car", "color": [0, 0, 142]},
        {"id": 9, "name": "sky", "color": [70, 130, 180]},
    ],
    "ignore_index": 255,
}


def test_folder_maps_sparse_ids_to_ranks(tmp_path: Path) -> None:
    raw = label_grid([0, 5, 9, 255, 7])
    make_folder(tmp_path, THREE_CLASSES, {"b": raw, "a": raw})
    dataset = build_dataset("folder", tmp_path, "train")
    assert dataset.info.class_names == ("road", "car", "sky") and dataset.info.ignore_index == 255
    assert dataset.info.palette[1] == (0, 0, 142)
    assert [s.image_id for s in dataset.samples] == ["a", "b"]
    _, label = dataset.load_raw(0)
    np.testing.assert_array_equal(label, mapped(raw, {0: 0, 5: 1, 9: 2, 255: 255, 7: 255}))


def test_folder_yaml_and_16_bit_masks(tmp_path: Path) -> None:
    classes_yaml = (
        "ignore_index: 65535\nclasses:\n"
        "  - {id: 3, name: a, color: [1, 2, 3]}\n  - {id: 300, name: b, color: [4, 5, 6]}\n"
    )
    raw = label_grid([3, 300, 65535, 1000], dtype=np.uint16)
    make_folder(tmp_path, classes_yaml, {"x": raw}, split="val", classes_name="classes.yaml")
    dataset = build_dataset("folder", tmp_path, "val")
    _, label = dataset.load_raw(0)
    np.testing.assert_array_equal(label, mapped(raw, {3: 0, 300: 1, 65535: 65535, 1000: 65535}))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"ignore_index": 255}, "missing key 'classes'"),
        ({"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]}, {"id": 1, "name": "b"}]},
         r"classes\[1\] is missing key 'color'"),
        ({"classes": [{"id": 0, "name": "a", "color": [0, 0, 300]}]}, "'color' must be"),
        ({"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]}, {"id": 0, "name": "b", "color": [0, 0, 0]}]},
         "duplicate class ids"),
        ({"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]}], "ignore_index": 0}, "also a class id"),
    ],
)
def test_folder_malformed_classes_file(tmp_path: Path, document: dict, message: str) -> None:
    make_folder(tmp_path, document, {"x": label_grid([0])})
    with pytest.raises(ValueError, match=message) as error:
        build_dataset("folder", tmp_path, "train")
    assert "classes.json" in str(error.value)


def test_folder_errors_name_the_bad_file(tmp_path: Path) -> None:
    make_folder(tmp_path / "no_classes", THREE_CLASSES, {"x": label_grid([0])})
    (tmp_path / "no_classes" / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes file not found.*no_classes"):
        build_dataset("folder", tmp_path / "no_classes", "train")

    make_folder(tmp_path / "orphan", THREE_CLASSES, {"x": label_grid([0])})
    write_png(tmp_path / "orphan" / "images" / "train" / "lonely.jpg", random_rgb(4, 6))
    with pytest.raises(FileNotFoundError, match=r"lonely\.jpg has no mask.*lonely\.png"):
        build_dataset("folder", tmp_path / "orphan", "train")

    make_folder(tmp_path / "sizes", THREE_CLASSES, {"x": label_grid([0])})
    write_png(tmp_path / "sizes" / "images" / "train" / "x.png", random_rgb(5, 6))
    dataset = build_dataset("folder", tmp_path / "sizes", "train")
    with pytest.raises(ValueError, match=r"images/train/x\.png.*masks/train/x\.png"):
        dataset[0]

    make_folder(tmp_path / "rgb", THREE_CLASSES, {"x": random_rgb(4, 6)})
    dataset = build_dataset("folder", tmp_path / "rgb", "train")
    with pytest.raises(ValueError, match=r"masks/train/x\.png has PIL mode 'RGB'"):
        dataset.load_raw(0)

    with pytest.raises(FileNotFoundError, match=r"images/test"):
        build_dataset("folder", tmp_path / "rgb", "test")


# ---------------------------------------------------------------- Cityscapes / ADE20K / PASCAL-Context / CaDIS


def test_cityscapes_label_ids_to_train_ids(tmp_path: Path) -> None:
    raw = label_grid([7, 26, 0, 33, 8, 34, 255, 23])
    for city, frame in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        write_png(tmp_path / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", random_rgb(4, 6))
        write_png(tmp_path / "gtFine" / "val" / city / f"{frame}_gtFine_labelIds.png", raw)
    dataset = build_dataset("cityscapes", tmp_path, "val")
    assert [s.image_id for s in dataset.samples] == ["aachen_000000_000019", "bonn_000001_000019"]
    assert dataset.info.num_classes == 19 and dataset.info.class_names[13] == "car"
    _, label = dataset.load_raw(1)
    expected = {7: 0, 26: 13, 0: 255, 33: 18, 8: 1, 34: 255, 255: 255, 23: 10}
    np.testing.assert_array_equal(label, mapped(raw, expected))

    (tmp_path / "gtFine" / "val" / "bonn" / "bonn_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="bonn_000001_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "val")


@pytest.mark.parametrize("point_at_challenge_folder", [False, True])
def test_ade20k_shift_and_both_root_layouts(tmp_path: Path, point_at_challenge_folder: bool) -> None:
    base = tmp_path / "ADEChallengeData2016"
    raw = label_grid([0, 1, 150, 13, 200])
    write_png(base / "images" / "validation" / "ADE_val_00000001.jpg", random_rgb(4, 6))
    write_png(base / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    dataset = build_dataset("ade20k", base if point_at_challenge_folder else tmp_path, "val")
    assert dataset.info.num_classes == 150 and dataset.info.class_names[0] == "wall"
    assert len(set(dataset.info.palette)) == 150
    _, label = dataset.load_raw(0)
    np.testing.assert_array_equal(label, mapped(raw, {0: 255, 1: 0, 150: 149, 13: 12, 200: 255}))
    with pytest.raises(FileNotFoundError, match="training"):
        build_dataset("ade20k", tmp_path, "train")


def test_pascal_context_59(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    raw = label_grid([0, 1, 59, 41, 60])
    for image_id in ("2008_000002", "2008_000003"):
        write_png(voc / "JPEGImages" / f"{image_id}.jpg", random_rgb(4, 6))
        write_png(voc / "SegmentationClassContext" / f"{image_id}.png", raw)
    lists = voc / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("2008_000003\n2008_000002\n")
    (lists / "train.txt").write_text("2008_000002\n2008_000009\n")
    dataset = build_dataset("pascal_context", tmp_path, "val")
    assert [s.image_id for s in dataset.samples] == ["2008_000003", "2008_000002"]
    assert dataset.info.num_classes == 59 and dataset.info.class_names[40] == "road"
    _, label = dataset.load_raw(0)
    np.testing.assert_array_equal(label, mapped(raw, {0: 255, 1: 0, 59: 58, 41: 40, 60: 255}))
    with pytest.raises(FileNotFoundError, match="2008_000009.jpg"):
        build_dataset("pascal_context", voc, "train")


def test_cadis_experiments_and_video_splits(tmp_path: Path) -> None:
    raw = label_grid([0, 3, 6, 7, 19, 20, 24, 25, 35, 255], width=10)
    for video in (1, 5, 7, 16):
        write_png(tmp_path / f"Video{video:02d}" / "Images" / f"Video{video}_frame000090.png", random_rgb(4, 10))
        write_png(tmp_path / f"Video{video:02d}" / "Labels" / f"Video{video}_frame000090.png", raw)
    val = build_dataset("cadis", tmp_path, "val")
    assert [s.image_id for s in val.samples] == ["Video5_frame000090", "Video7_frame000090", "Video16_frame000090"]
    assert val.info.class_names == (
        "Pupil", "Surgical Tape", "Hand", "Eye Retractors", "Iris", "Skin", "Cornea", "Instrument"
    )
    _, label = val.load_raw(0)
    exp1 = {0: 0, 3: 3, 6: 6, 7: 7, 19: 7, 20: 7, 24: 7, 25: 7, 35: 7, 255: 255}
    np.testing.assert_array_equal(label, mapped(raw, exp1))

    exp2 = build_dataset("cadis", tmp_path, "any", experiment=2, videos=[1])
    assert exp2.info.num_classes == 17 and len(exp2) == 1
    expected2 = {0: 0, 3: 3, 6: 6, 7: 7, 19: 16, 20: 7, 24: 12, 25: 255, 35: 255, 255: 255}
    np.testing.assert_array_equal(exp2.load_raw(0)[1], mapped(raw, expected2))

    exp3 = build_dataset("cadis", tmp_path, "val", experiment=3)
    expected3 = {0: 0, 3: 3, 6: 6, 7: 7, 19: 19, 20: 20, 24: 24, 25: 255, 35: 255, 255: 255}
    np.testing.assert_array_equal(exp3.load_raw(0)[1], mapped(raw, expected3))

    with pytest.raises(FileNotFoundError, match="Video02"):
        build_dataset("cadis", tmp_path, "test")
    with pytest.raises(ValueError, match="experiment must be one of"):
        build_dataset("cadis", tmp_path, "val", experiment=4)


# ---------------------------------------------------------------- transforms


def test_rescale_keeps_label_values_nearest() -> None:
    label = np.random.default_rng(0).choice([0, 3, 7, 255], size=(23, 31))
    image = random_rgb(23, 31)
    transform = build_transforms(train=True, crop_size=None, scale_range=(0.3, 2.7), hflip=False, color_jitter=0.0)
    sizes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_label = transform(image, label)
        assert out_image.shape[1:] == out_label.shape
        assert set(out_label.unique().tolist()) <= {0, 3, 7, 255}
        sizes.add(tuple(out_label.shape))
    assert len(sizes) > 1


def test_fixed_resize_and_scale_factor() -> None:
    label = label_grid([1, 2], height=20, width=30)
    eval_resize = build_transforms(train=False, resize=(10, 12))
    image_out, label_out = eval_resize(random_rgb(20, 30), label)
    assert image_out.shape == (3, 10, 12) and label_out.shape == (10, 12)
    assert set(label_out.unique().tolist()) <= {1, 2}
    image_out, label_out = build_transforms(train=False, resize=0.5)(random_rgb(20, 30), label)
    assert label_out.shape == (10, 15)
    with pytest.raises(ValueError, match="resize must be a float scale factor"):
        build_transforms(train=False, resize=2)


def test_crop_pads_label_with_ignore_and_image_with_mean() -> None:
    label = np.zeros((10, 12), dtype=np.int64)
    transform = build_transforms(train=True, crop_size=(16, 20), scale_range=None, hflip=False,
                                 color_jitter=0.0, ignore_index=99)
    torch.manual_seed(0)
    image_out, label_out = transform(random_rgb(10, 12), label)
    assert image_out.shape == (3, 16, 20) and label_out.shape == (16, 20)
    padded = label_out == 99
    assert int(padded.sum()) == 16 * 20 - 10 * 12 and int((label_out == 0).sum()) == 120
    # padding colour is the mean, i.e. ~0 after normalisation
    assert image_out[:, padded].abs().max() < 0.02


def test_flip_moves_image_and_label_together() -> None:
    label = np.tile(np.arange(12) % 5, (6, 1))
    image = np.repeat((label * 40).astype(np.uint8)[..., None], 3, axis=2)
    transform = build_transforms(train=True, scale_range=None, hflip=True, color_jitter=0.0)
    flipped_seen = unflipped_seen = False
    for seed in range(10):
        torch.manual_seed(seed)
        image_out, label_out = transform(image, label)
        np.testing.assert_allclose(denormalise(image_out)[..., 0], label_out.numpy() * 40, atol=1)
        flipped = np.array_equal(label_out.numpy(), label[:, ::-1])
        flipped_seen |= flipped
        unflipped_seen |= not flipped and np.array_equal(label_out.numpy(), label)
    assert flipped_seen and unflipped_seen


def test_eval_transform_normalises() -> None:
    mean_colour = np.array([round(m * 255) for m in IMAGENET_MEAN], dtype=np.uint8)
    image = np.tile(mean_colour, (4, 5, 1))
    image_out, label_out = build_transforms(train=False)(image, np.zeros((4, 5), dtype=np.int64))
    assert image_out.dtype == torch.float32 and label_out.dtype == torch.int64
    assert image_out.abs().max() < 0.01


def test_seeded_dataset_is_reproducible_and_worker_independent(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).choice([0, 5, 9], size=(24, 32)).astype(np.uint8)
    make_folder(tmp_path, THREE_CLASSES, {f"im{k}": raw for k in range(4)})
    transform = build_transforms(train=True, crop_size=16, scale_range=(0.5, 1.5))
    dataset = build_dataset("folder", tmp_path, "train", transform=transform, seed=7)
    first, again = dataset[2], dataset[2]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    dataset.set_epoch(1)
    assert not torch.equal(first["image"], dataset[2]["image"])
    reseeded = build_dataset("folder", tmp_path, "train", transform=transform, seed=8)
    assert not torch.equal(first["image"], reseeded[2]["image"])

    dataset.set_epoch(0)
    direct = torch.stack([dataset[i]["image"] for i in range(4)])
    loaded = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert torch.equal(direct, loaded["image"])
    assert loaded["image_id"] == ["im0", "im1", "im2", "im3"]


def test_unseeded_dataset_follows_torch_seed(tmp_path: Path) -> None:
    make_folder(tmp_path, THREE_CLASSES, {"a": label_grid([0, 5], height=20, width=24)})
    transform = build_transforms(train=True, crop_size=12, scale_range=(0.5, 2.0))
    dataset = build_dataset("folder", tmp_path, "train", transform=transform)
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outputs.append(dataset[0]["image"])
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


# ---------------------------------------------------------------- synthetic scenes


def test_synthetic_generation_is_deterministic_and_loadable(tmp_path: Path) -> None:
    first = generate_synthetic_dataset(tmp_path / "a", n_train=3, n_val=2, size=(48, 64), seed=5)
    second = generate_synthetic_dataset(tmp_path / "b", n_train=3, n_val=2, size=(48, 64), seed=5)
    other = generate_synthetic_dataset(tmp_path / "c", n_train=3, n_val=2, size=(48, 64), seed=6)
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert len(files) == 10
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
    assert (first / files[0]).read_bytes() != (other / files[0]).read_bytes()

    dataset = build_dataset("synthetic", first, "val")
    assert dataset.info == SyntheticScenes and len(dataset) == 2
    image, label = dataset.load_raw(0)
    assert image.shape == (48, 64, 3) and label.shape == (48, 64)
    assert set(np.unique(label)) <= set(range(7)) | {255}
    assert json.loads((first / "classes.json").read_text())["context_pairs"] == [[2, 3], [4, 5]]


def test_synthetic_reuse_and_overwrite(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path / "s", n_train=2, n_val=1, size=(32, 32))
    stamp = (out / "classes.json").stat().st_mtime_ns
    assert generate_synthetic_dataset(out, n_train=2, n_val=1, size=(32, 32)) == out
    assert (out / "classes.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_synthetic_dataset(out, n_train=1, n_val=1, size=(32, 32))
    generate_synthetic_dataset(out, n_train=1, n_val=1, size=(32, 32), overwrite=True)
    assert len(list((out / "images" / "train").iterdir())) == 1


@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, np.ndarray]:
    pairs = [render_scene(np.random.default_rng([0, 0, k])) for k in range(60)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_synthetic_class_presence_and_border(scenes: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = scenes
    counts = np.bincount(labels[labels != 255], minlength=7)
    assert (counts > 0).all()
    fraction = counts / counts.sum()
    assert fraction[FLAG] < 0.005 and fraction[FLAG] == fraction.min()  # the rare class
    assert (labels[:, :2, :] == 255).all() and (labels[:, :, -2:] == 255).all()
    assert (labels[:, 2:-2, 2:-2] != 255).all()


def _interior_local_means(images: np.ndarray, labels: np.ndarray, cls: int, radius: int = 2) -> np.ndarray:
    """Mean colour of the (2r+1)^2 window around pixels whose whole window has class ``cls``."""
    from numpy.lib.stride_tricks import sliding_window_view

    size = 2 * radius + 1
    windows_label = sliding_window_view(labels, (size, size), axis=(1, 2))
    inside = (windows_label == cls).all(axis=(-1, -2))
    windows_image = sliding_window_view(images.astype(np.float32), (size, size), axis=(1, 2))
    return windows_image.mean(axis=(-1, -2))[inside]


def _nearest_mean_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Accuracy of the best nearest-class-mean rule telling ``a`` from ``b`` (fit on the data itself)."""
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    correct_a = (np.linalg.norm(a - mean_a, axis=1) < np.linalg.norm(a - mean_b, axis=1)).mean()
    correct_b = (np.linalg.norm(b - mean_b, axis=1) < np.linalg.norm(b - mean_a, axis=1)).mean()
    return float((correct_a + correct_b) / 2)


def test_synthetic_context_pairs_share_local_appearance(scenes: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = scenes
    assert CONTEXT_PAIRS == ((ROAD, PARKING), (SHEEP, CAMEL))
    for first, second in CONTEXT_PAIRS:
        pixels_a, pixels_b = images[labels == first].astype(float), images[labels == second].astype(float)
        assert np.abs(pixels_a.mean(0) - pixels_b.mean(0)).max() < 8
        assert np.abs(pixels_a.std(0) - pixels_b.std(0)).max() < 6
        local_a = _interior_local_means(images, labels, first)
        local_b = _interior_local_means(images, labels, second)
        assert len(local_a) > 500 and len(local_b) > 500
        assert _nearest_mean_accuracy(local_a, local_b) < 0.6  # chance level: local colour does not tell
    # while the locally distinct classes are easy from the same local statistics
    grass, sand = (_interior_local_means(images, labels, c) for c in (GRASS, SAND))
    assert np.abs(grass.mean(0) - sand.mean(0)).max() > 40
    assert _nearest_mean_accuracy(grass, sand) > 0.9
