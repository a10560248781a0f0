"""Image-to-stage cell geometry (``docs/method.md`` §1): the one rule shared by the sampler's nearest label
downsampling, the export's per-stage embedding reads and the workbench's cross-scale views.

Along one axis, index ``i`` of a grid of length ``source`` falls in cell ``floor(i * target / source)`` of a
grid of length ``target``. Evaluated in integers, so it is exact for any sizes; for ``target < source`` it is
the cell that contains the pixel, for ``target > source`` it is the pixel that ``F.interpolate(mode="nearest")``
reads. Works on Python ints, integer numpy arrays and integer torch tensors alike (only ``*`` and ``//``).
"""

from __future__ import annotations

from typing import TypeVar

IndexT = TypeVar("IndexT")


def cell_index(index: IndexT, source: int, target: int) -> IndexT:
    """``floor(index * target / source)``: the cell of a ``target``-long axis that holds ``index`` of a
    ``source``-long axis (``docs/method.md`` §1, nearest). ``index`` is an int or an integer array/tensor
    with values in ``[0, source)``; the result lies in ``[0, target)``."""
    source, target = int(source), int(target)
    if source < 1 or target < 1:
        raise ValueError(f"cell_index: axis lengths must be >= 1, got source={source}, target={target}")
    return index * target // source  # type: ignore[operator, return-value]


def cell_of(y: IndexT, x: IndexT, source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[IndexT, IndexT]:
    """``(row, col)`` of the ``target_hw`` grid cell that holds pixel ``(y, x)`` of a ``source_hw`` grid."""
    return cell_index(y, source_hw[0], target_hw[0]), cell_index(x, source_hw[1], target_hw[1])
