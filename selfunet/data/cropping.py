"""Cropping a case to its non-zero region (docs/explanation/design.md#fingerprint).

Many datasets (skull-stripped brain MR, cardiac MR with a field-of-view mask, ...) surround the
body with exact zeros. Cropping to the non-zero bounding box before anything else shrinks the
data that every later stage touches, and tells normalization whether statistics should be
computed inside the mask only. Shared by the fingerprint and preprocessing (and by prediction,
which must crop the same way before it can un-crop).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Bbox = list[list[int]]
"""per array axis ``[start, stop)``."""


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero, with enclosed holes filled.

    ``image`` is ``(C, *spatial)``. Holes are filled so that a dark structure inside the body
    (air, a cyst, a zero-valued lesion) is never mistaken for background.
    """
    mask = np.any(image != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> Bbox:
    """``[start, stop)`` per axis of the ``True`` voxels of ``mask``.

    An empty mask yields the whole extent: there is nothing to crop to, and an empty crop would
    break every later stage.
    """
    if not mask.any():
        return [[0, int(n)] for n in mask.shape]
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop_to_bbox(array: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """Crop the LAST ``len(bbox)`` axes of ``array`` (so ``(C, z, y, x)`` and ``(z, y, x)`` both work)."""
    lead = array.ndim - len(bbox)
    if lead < 0:
        raise ValueError(f"bbox has {len(bbox)} axes, the array only {array.ndim}")
    slices = (slice(None),) * lead + tuple(slice(int(a), int(b)) for a, b in bbox)
    return array[slices]


def bbox_shape(bbox: Sequence[Sequence[int]]) -> list[int]:
    return [int(b) - int(a) for a, b in bbox]
