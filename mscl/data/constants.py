"""Constants of the data pipeline that need no torch (the ``mscl`` command line and ``mscl.config`` read them)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, the default input normalisation (``data.mean``)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet (``data.std``)."""
