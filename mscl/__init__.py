"""MSCL: multi-scale and cross-scale contrastive learning for semantic segmentation (Pissas et al., ECCV 2022)."""

__version__ = "0.1.0"

__all__ = ["MSCSLoss", "supervised_infonce", "__version__"]


def __getattr__(name: str) -> object:
    """The losses load on first use, so that the ``mscl`` command line starts without importing torch."""
    if name in ("MSCSLoss", "supervised_infonce"):
        from mscl import losses

        return getattr(losses, name)
    raise AttributeError(f"module 'mscl' has no attribute {name!r}")
