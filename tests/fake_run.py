"""Write a small, complete run directory (docs/run-format.md) with numpy/pandas and ``runformat`` only.

Used by the workbench and app tests. Embeddings are constructed so that class separability grows
with depth: stage 0 is pure noise (not separable), the last stage is well separated; projected
embeddings of all stages share their class centres (one common space), backbone stages do not.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from runformat import FORMAT_VERSION, RunStatus, layout
from runformat.atomic import write_json, write_text
from runformat.columns import (
    PER_CLASS_COLUMNS,
    PER_IMAGE_COLUMNS,
    PIXEL_COLUMNS,
    PREDICTION_INDEX_COLUMNS,
    SAMPLER_CLASS_COLUMNS,
    SAMPLER_STEP_COLUMNS,
    VAL_COLUMNS,
)

IMAGE_SIZE = (32, 32)
NUM_VAL_IMAGES = 6
PIXELS_PER_IMAGE = 40
NUM_PREDICTION_IMAGES = 3
NUM_DENSE_IMAGES = 2
PROJECTED_DIM = 8
LOGGED_STEPS = tuple(range(0, 200, 10))
VAL_STEPS = (50, 100, 150, 199)


def fake_strides(stages: int) -> list[int]:
    """Stage strides of the fake model (4, 8, 16, 32, then 32)."""
    return [4 * 2 ** min(s, 3) for s in range(stages)]


def fake_backbone_dims(stages: int) -> list[int]:
    """Backbone widths of the fake model (8, 16, 24, ...)."""
    return [8 * (s + 1) for s in range(stages)]


def fake_separation(stage: int, stages: int) -> float:
    """Distance of class centres from the origin (relative to unit noise) at ``stage``."""
    return 0.0 if stage == 0 else 6.0 * stage / max(stages - 1, 1)


def _label_map(rng: np.random.Generator, num_classes: int, ignore_index: int) -> np.ndarray:
    """Vertical stripes, one per class in random order, with a small ignore square."""
    height, width = IMAGE_SIZE
    order = rng.permutation(num_classes)
    columns = np.arange(width) * num_classes // width
    label = np.tile(order[columns], (height, 1)).astype(np.int64)
    top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
    label[top:top + 4, left:left + 4] = ignore_index
    return label


def _prediction_map(rng: np.random.Generator, label: np.ndarray, num_classes: int,
                    ignore_index: int) -> np.ndarray:
    """The label with ~10% of pixels replaced by a random class (ignore pixels get a class too)."""
    prediction = label.copy()
    flip = rng.random(label.shape) < 0.1
    prediction[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
    unknown = prediction == ignore_index
    prediction[unknown] = rng.integers(0, num_classes, size=int(unknown.sum()))
    return prediction


def _features(rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray, separation: float,
              num_classes: int) -> np.ndarray:
    """Class centre * separation + unit Gaussian noise (ignore pixels: noise only)."""
    noise = rng.normal(size=(labels.size, centres.shape[1]))
    valid = labels < num_classes
    noise[valid] += separation * centres[labels[valid]]
    return noise


def _confusion(labels: list[np.ndarray], predictions: list[np.ndarray], num_classes: int) -> np.ndarray:
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for label, prediction in zip(labels, predictions):
        valid = label < num_classes
        np.add.at(conf, (label[valid], prediction[valid]), 1)
    return conf


def _iou(conf: np.ndarray) -> np.ndarray:
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    return np.divide(tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A minimal valid safetensors file (float32 tensors only)."""
    header: dict[str, dict] = {}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header_bytes = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(blobs))


def _write_config(path: Path, num_classes: int, stages: int, loss_preset: str) -> None:
    weights = ", ".join(str(w) for w in (1.0, 0.7, 0.4, 0.1)[:stages])
    write_text(
        path,
        "seed: 0\n"
        "dataset:\n  name: fake\n  root: ../shared/datasets/fake\n"
        f"  num_classes: {num_classes}\n"
        "model:\n  name: tiny\n  encoder: null\n"
        "loss:\n"
        f"  preset: {loss_preset}\n  temperature: 0.1\n  ms_weights: [{weights}]\n"
        "  cs_pairs: [[0, -1], [0, -2]]\n"
        "train:\n  steps: 200\n  batch_size: 2\n  lr: 0.01\n"
    )


def write_fake_run(path: str | Path, *, seed: int = 0, num_classes: int = 4, stages: int = 4,
                   with_projector: bool = True, missing: Iterable[str] = (), format_version: int = FORMAT_VERSION) -> Path:
    """Write a complete fake run directory at ``path`` and return it.

    ``with_projector=False`` writes a cross-entropy run (loss preset ``ce``: no projected embeddings,
    no contrastive loss columns, no sampler tables). ``missing`` lists run-relative paths (files or
    folders) to delete afterwards, to test error handling. ``format_version=1`` keeps the checkpoint in
    the three separate files of version 1 instead of a checkpoint set.
    """
    if format_version not in layout.READABLE_FORMAT_VERSIONS:
        raise ValueError(f"write_fake_run: format_version must be one of {layout.READABLE_FORMAT_VERSIONS}")
    if num_classes < 2 or stages < 2:
        raise ValueError("write_fake_run needs num_classes >= 2 and stages >= 2")
    rng = np.random.default_rng(seed)
    run = Path(path)
    run.mkdir(parents=True, exist_ok=True)
    ignore_index = num_classes
    class_names = [f"class{c}" for c in range(num_classes)]
    palette = [[int(v) for v in rng.integers(0, 256, size=3)] for _ in range(num_classes)]
    strides = fake_strides(stages)
    backbone_dims = fake_backbone_dims(stages)
    loss_preset = "ms+cs" if with_projector else "ce"
    height, width = IMAGE_SIZE

    write_json(run / layout.RUN_JSON, {
        "format_version": format_version,
        "name": f"fake-{loss_preset}-{seed}",
        "status": RunStatus.FINISHED,
        "created": "2024-01-01T00:00:00+00:00",
        "updated": "2024-01-01T01:00:00+00:00",
        "mscl_version": "0.1.0",
        "loss_preset": loss_preset,
        "dataset": {"name": "fake", "class_names": class_names, "palette": palette,
                    "ignore_index": ignore_index, "num_train": 10, "num_val": NUM_VAL_IMAGES},
        "model": {"name": "tiny", "encoder": "none", "stage_strides": strides,
                  "stage_channels": backbone_dims, "projector_dim": PROJECTED_DIM if with_projector else None,
                  "num_parameters": 1234},
        "timing": {"train_seconds": 60.0, "steps": 200, "sec_per_step": 0.3},
        "world_size": 1,
    })
    _write_config(run / layout.CONFIG_YAML, num_classes, stages, loss_preset)

    # metrics
    (run / layout.TRAIN_METRICS).parent.mkdir(exist_ok=True)
    steps = np.array(LOGGED_STEPS)
    decay = np.exp(-steps / (80.0 + 40.0 * rng.random()))
    train = {"step": steps, "epoch": steps // 50, "lr": 0.01 * (1 - steps / 200.0),
             "loss/ce": 1.5 * decay + 0.2}
    contrastive = np.zeros(len(steps))
    if with_projector:
        for s in range(stages):
            train[f"loss/ms/{s}"] = (2.0 + s) * decay + 0.5
            contrastive += (1.0, 0.7, 0.4, 0.1, 0.1)[min(s, 4)] * train[f"loss/ms/{s}"]
        for low in (stages - 1, stages - 2):
            train[f"loss/cs/0-{low}"] = 3.0 * decay + 0.6
            contrastive += train[f"loss/cs/0-{low}"]
        train["loss/contrastive"] = contrastive
    train["loss/total"] = train["loss/ce"] + 0.1 * contrastive
    train["sec_per_step"] = 0.3 + 0.01 * rng.random(len(steps))
    pd.DataFrame(train).to_csv(run / layout.TRAIN_METRICS, index=False)
    val_steps = np.array(VAL_STEPS)
    val_values = (val_steps, val_steps // 50, 0.3 + (0.08 + 0.04 * rng.random()) * np.arange(len(val_steps)),
                  0.6 + 0.05 * np.arange(len(val_steps)), 0.4 + 0.08 * np.arange(len(val_steps)))
    pd.DataFrame(dict(zip(VAL_COLUMNS, val_values))).to_csv(run / layout.VAL_METRICS, index=False)

    # validation images, predictions, evaluation
    image_ids = [f"val_{i:03d}" for i in range(NUM_VAL_IMAGES)]
    labels = [_label_map(rng, num_classes, ignore_index) for _ in image_ids]
    predictions = [_prediction_map(rng, label, num_classes, ignore_index) for label in labels]
    colours = np.vstack([np.asarray(palette, dtype=np.int64), [[0, 0, 0]]])
    images = [np.clip(colours[label] + rng.integers(-20, 21, size=(height, width, 3)), 0, 255).astype(np.uint8)
              for label in labels]

    (run / layout.PREDICTIONS_DIR).mkdir(exist_ok=True)
    index_rows = []
    for i in range(NUM_PREDICTION_IMAGES):
        np.savez(run / layout.prediction_file(f"{image_ids[i]}.npz"), image=images[i],
                 label=labels[i].astype(np.int16), prediction=predictions[i].astype(np.int16))
        index_rows.append(dict(zip(PREDICTION_INDEX_COLUMNS, (i, image_ids[i], f"{image_ids[i]}.npz"))))
    pd.DataFrame(index_rows).to_csv(run / layout.PREDICTION_INDEX, index=False)

    (run / layout.EVAL_DIR).mkdir(exist_ok=True)
    conf = _confusion(labels, predictions, num_classes)
    np.save(run / layout.CONFUSION, conf)
    iou = _iou(conf)
    acc = np.diag(conf) / np.maximum(conf.sum(1), 1)
    per_class = (np.arange(num_classes), class_names, iou, acc, conf.sum(1), conf.sum(0))
    pd.DataFrame(dict(zip(PER_CLASS_COLUMNS, per_class))).to_csv(run / layout.PER_CLASS, index=False)
    per_image = []
    for i, (label, prediction) in enumerate(zip(labels, predictions)):
        image_conf = _confusion([label], [prediction], num_classes)
        valid = label < num_classes
        per_image.append(dict(zip(PER_IMAGE_COLUMNS, (i, image_ids[i], float(np.nanmean(_iou(image_conf))),
                                                      float((label[valid] == prediction[valid]).mean())))))
    pd.DataFrame(per_image).to_csv(run / layout.PER_IMAGE, index=False)
    write_json(run / layout.EVAL_SUMMARY, {
        "split": "val", "checkpoint": "best", "step": 199, "miou": float(np.nanmean(iou)),
        "pixel_acc": float(np.diag(conf).sum() / conf.sum()), "mean_acc": float(acc.mean()),
        "num_images": NUM_VAL_IMAGES})

    # sampler statistics (contrastive runs only)
    if with_projector:
        (run / layout.SAMPLER_STEPS).parent.mkdir(exist_ok=True)
        step_rows, class_rows = [], []
        for step in LOGGED_STEPS:
            for s in range(stages):
                groups = int(rng.integers(4, 9))
                views = int(rng.integers(5, 50))
                labelled = rng.integers(100, 1000, size=num_classes)
                sampled = rng.multinomial(groups * views, np.full(num_classes, 1.0 / num_classes))
                step_values = (step, s, groups, views, int(rng.integers(0, 3)), bool(rng.random() < 0.25),
                               bool(rng.random() < 0.5), groups * views)
                step_rows.append(dict(zip(SAMPLER_STEP_COLUMNS, step_values)))
                class_rows.extend(dict(zip(SAMPLER_CLASS_COLUMNS, (step, s, c, int(labelled[c]), int(sampled[c]))))
                                  for c in range(num_classes))
        pd.DataFrame(step_rows).to_parquet(run / layout.SAMPLER_STEPS, index=False)
        pd.DataFrame(class_rows).to_parquet(run / layout.SAMPLER_CLASS_COUNTS, index=False)

    # embeddings of sampled pixels
    (run / layout.DENSE_DIR).mkdir(parents=True, exist_ok=True)
    pixel_rows = []
    for i, (label, prediction) in enumerate(zip(labels, predictions)):
        flat = rng.choice(height * width, size=PIXELS_PER_IMAGE, replace=False)
        ys, xs = np.unravel_index(np.sort(flat), (height, width))
        for y, x in zip(ys, xs):
            pixel_rows.append({"image_index": i, "image_id": image_ids[i], "y": int(y), "x": int(x),
                               "label": int(label[y, x]), "prediction": int(prediction[y, x])})
    pixels = pd.DataFrame(pixel_rows)
    pixels.insert(0, "pixel", np.arange(len(pixels)))
    pixels[list(PIXEL_COLUMNS)].to_parquet(run / layout.PIXELS, index=False)
    pixel_labels = pixels["label"].to_numpy()

    kinds = {"backbone": backbone_dims}
    if with_projector:
        kinds["projected"] = [PROJECTED_DIM] * stages
    # backbone stages have their own class centres; projected stages share one embedding space
    shared_centres = rng.normal(size=(num_classes, PROJECTED_DIM))
    centres = {(kind, s): shared_centres if kind == "projected" else rng.normal(size=(num_classes, dims[s]))
               for kind, dims in kinds.items() for s in range(stages)}
    for kind in kinds:
        for s in range(stages):
            features = _features(rng, pixel_labels, centres[kind, s], fake_separation(s, stages), num_classes)
            np.save(run / layout.embedding_file(s, kind), features.astype(np.float16))
    for i in range(NUM_DENSE_IMAGES):
        arrays: dict[str, np.ndarray] = {"image": images[i], "label": labels[i].astype(np.int16)}
        for s, stride in enumerate(strides):
            small = labels[i][stride // 2::stride, stride // 2::stride]
            for kind in kinds:
                features = _features(rng, small.reshape(-1), centres[kind, s], fake_separation(s, stages),
                                     num_classes)
                arrays[f"stage{s}_{kind}"] = features.T.reshape(-1, *small.shape).astype(np.float16)
        np.savez(run / layout.dense_file(image_ids[i]), **arrays)
    write_json(run / layout.EMBEDDING_META, {
        "num_pixels": len(pixels), "stages": list(range(stages)), "strides": strides,
        "backbone_dims": backbone_dims, "projected_dims": kinds.get("projected", []),
        "has_projector": with_projector, "split": "val", "checkpoint": "best", "step": 199, "seed": seed})

    # checkpoints
    weights = {"head.weight": rng.normal(size=(num_classes, backbone_dims[-1])).astype(np.float32)}
    scalars = {"step": 200, "epoch": 4, "best_miou": 0.6, "train_seconds": 60.0, "param_groups": []}
    if format_version == 1:
        (run / layout.CHECKPOINTS_DIR).mkdir(exist_ok=True)
        _write_safetensors(run / layout.LEGACY_STATE_TENSORS, {"optimizer.step": np.zeros(1)})
        write_json(run / layout.LEGACY_STATE_SCALARS, scalars)
    else:
        folder = run / layout.checkpoint_set(200)
        folder.mkdir(parents=True)
        _write_safetensors(folder / layout.SET_WEIGHTS, weights)
        _write_safetensors(folder / layout.SET_TENSORS, {"optimizer.step": np.zeros(1)})
        write_json(folder / layout.SET_SCALARS, scalars)
    _write_safetensors(run / layout.LAST_WEIGHTS, weights)
    _write_safetensors(run / layout.BEST_WEIGHTS, weights)

    for artifact in missing:
        target = run / artifact
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            raise ValueError(f"write_fake_run: cannot drop {artifact!r}, it was not written")
    return run
