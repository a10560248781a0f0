"""MSCL: multi-scale and cross-scale contrastive learning for semantic segmentation (Pissas et al., ECCV 2022)."""

__version__ = "0.1.0"

from mscl.losses import MSCSLoss, supervised_infonce  # noqa: E402

__all__ = ["MSCSLoss", "supervised_infonce", "__version__"]
