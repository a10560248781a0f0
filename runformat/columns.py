"""Column names of the run tables and keys of the run JSON files (docs/run-format.md, table of artifacts).

Writers build their rows from these tuples and the reader requires them, so both sides name a column
in one place.
"""

from __future__ import annotations

TRAIN_COLUMNS = ("step", "epoch", "lr", "loss/total")
"""metrics/train.csv: always present; loss parts (``loss/ce``, ``loss/ms/<s>``, ``loss/cs/<a>-<b>``...) and
``sec_per_step`` follow."""
VAL_COLUMNS = ("step", "epoch", "miou", "pixel_acc", "mean_acc")
PER_CLASS_COLUMNS = ("class_id", "class_name", "iou", "acc", "gt_pixels", "pred_pixels")
PER_IMAGE_COLUMNS = ("image_index", "image_id", "miou", "pixel_acc")
SAMPLER_STEP_COLUMNS = ("step", "stage", "groups", "views", "filtered_groups", "cap_max_views", "cap_total", "n_sampled")
SAMPLER_CLASS_COLUMNS = ("step", "stage", "class_id", "labelled", "sampled")
PREDICTION_INDEX_COLUMNS = ("image_index", "image_id", "file")
PIXEL_COLUMNS = ("pixel", "image_index", "image_id", "y", "x", "label", "prediction")
SUMMARY_KEYS = ("split", "checkpoint", "step", "miou", "pixel_acc", "mean_acc", "num_images")
EMBEDDING_KINDS = ("backbone", "projected")
"""embeddings/stage<s>_<kind>.npy: backbone features of every run, projector outputs of runs with projectors."""
EMBEDDING_META_KEYS = (
    "num_pixels", "stages", "strides", "backbone_dims", "projected_dims", "has_projector", "split", "checkpoint", "seed",
)
RUN_META_KEYS = ("format_version", "name", "status", "loss_preset", "dataset", "model")
DATASET_KEYS = ("name", "class_names", "palette", "ignore_index")
MODEL_KEYS = ("name", "stage_strides", "stage_channels")
CHECKPOINT_STATE_KEYS = ("step", "epoch", "best_miou", "train_seconds", "param_groups")
"""checkpoints/set-<step>/state.json (and last_state.json of format version 1): loop scalars for ``--resume``."""
