"""From the preprocessed grid back to the original image (docs/explanation/design.md#export).

A prediction is made in plan axis order at the target spacing, on the cropped image. Exporting
undoes the preprocessing in reverse: resample the class probabilities to the cropped original
shape (linear; nearest out of plane when anisotropic), take the argmax, transpose back to array
order and paste into the original shape (outside the crop box is background), then write with
the original header.

Two entry points because two consumers need different things: ensembling averages probabilities
of several models *in the original crop space* (:func:`revert_probabilities`), and export needs
only labels (:func:`revert_to_labels`), which it gets one class at a time against a running
maximum, so the memory does not grow with the number of classes.

Region-based models (:mod:`selfunet.data.labels`) give one sigmoid probability per region instead
of a softmax over classes; given the plan's :class:`~selfunet.data.labels.LabelScheme`, the label
map is then painted (threshold 0.5, ``regions_class_order``) instead of taken by argmax.

Crop-space probabilities are stored with the properties needed to un-crop them
(:func:`save_probabilities`): ensembling and the cascade read them back.
"""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np

from selfunet.artifacts import atomic_write_bytes
from selfunet.data.io import ImageGeometry, write_label
from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ResamplingSettings
from selfunet.preprocessing.preprocess import PreprocessedCase
from selfunet.preprocessing.resample import interpolation_orders, resample_volume


def _crop_shape_plan_order(properties: PreprocessedCase) -> list[int]:
    return [int(properties.shape_after_crop[a]) for a in properties.transpose_forward]


def _spacing_plan_order(properties: PreprocessedCase) -> list[float]:
    return [float(properties.spacing[a]) for a in properties.transpose_forward]


def _check_shape(array: np.ndarray, properties: PreprocessedCase, what: str) -> None:
    if list(array.shape[1:]) != list(properties.shape_after_resampling):
        raise SelfUNetError(
            f"case '{properties.case_id}': {what} of spatial shape {tuple(array.shape[1:])} does not match "
            f"the preprocessed shape {tuple(properties.shape_after_resampling)}; was it predicted with "
            "another configuration?"
        )


def _back_orders(properties: PreprocessedCase, settings: ResamplingSettings) -> tuple[list[int], list[int]]:
    target = _crop_shape_plan_order(properties)
    orders = interpolation_orders(
        properties.target_spacing,
        _spacing_plan_order(properties),
        settings.probabilities_order,
        settings.probabilities_order_out_of_plane,
        settings.anisotropy_threshold,
    )
    return target, orders


def _backward(properties: PreprocessedCase) -> list[int]:
    forward = properties.transpose_forward
    return [forward.index(a) for a in range(len(forward))]


def revert_probabilities(
    probabilities: np.ndarray,
    properties: PreprocessedCase,
    settings: ResamplingSettings = ResamplingSettings(),
) -> np.ndarray:
    """``(K, *preprocessed)`` probabilities -> ``(K, *shape_after_crop)`` in array order, float32.

    The result lives in the original *crop* space, which is the same for every configuration of a
    case, so probabilities of different models can be averaged there before :func:`uncrop`.
    """
    _check_shape(probabilities, properties, "probabilities")
    target, orders = _back_orders(properties, settings)
    backward = _backward(properties)
    out = np.empty((probabilities.shape[0], *properties.shape_after_crop), dtype=np.float32)
    for k in range(probabilities.shape[0]):
        out[k] = resample_volume(probabilities[k], target, orders).transpose(backward)
    return out


def revert_to_labels(
    probabilities: np.ndarray,
    properties: PreprocessedCase,
    settings: ResamplingSettings = ResamplingSettings(),
    scheme: LabelScheme | None = None,
) -> np.ndarray:
    """Argmax of the reverted probabilities (regions: painted), un-cropped into the original shape."""
    if scheme is not None and scheme.has_regions:
        return uncrop(scheme.paint(revert_probabilities(probabilities, properties, settings)), properties)
    _check_shape(probabilities, properties, "probabilities")
    target, orders = _back_orders(properties, settings)
    best = np.full(target, -np.inf, dtype=np.float32)
    labels = np.zeros(target, dtype=np.int16 if probabilities.shape[0] > 255 else np.uint8)
    for k in range(probabilities.shape[0]):
        resampled = resample_volume(probabilities[k], target, orders)
        better = resampled > best
        best[better] = resampled[better]
        labels[better] = k
    return uncrop(labels.transpose(_backward(properties)), properties)


def revert_label_map(
    labels: np.ndarray,
    properties: PreprocessedCase,
    num_classes: int,
    settings: ResamplingSettings = ResamplingSettings(),
) -> np.ndarray:
    """A label map ``(*preprocessed)`` or ``(1, *preprocessed)`` back to the original shape.

    It goes through its one-hot encoding, exactly as probabilities do; -1 counts as background.
    """
    labels = labels[0] if labels.ndim == 4 else labels
    one_hot = np.stack([(labels == k) | ((k == 0) & (labels < 0)) for k in range(num_classes)])
    return revert_to_labels(one_hot.astype(np.float32), properties, settings)


def uncrop(cropped: np.ndarray, properties: PreprocessedCase, fill: float = 0) -> np.ndarray:
    """Paste ``(*shape_after_crop)`` (or ``(K, ...)``) into the original shape, ``fill`` outside."""
    lead = cropped.shape[: cropped.ndim - 3]
    if list(cropped.shape[-3:]) != list(properties.shape_after_crop):
        raise SelfUNetError(
            f"case '{properties.case_id}': array of shape {cropped.shape} does not match the crop "
            f"shape {tuple(properties.shape_after_crop)}."
        )
    full = np.full((*lead, *properties.shape_before_crop), fill, dtype=cropped.dtype)
    box = tuple(slice(a, b) for a, b in properties.crop_bbox)
    full[(..., *box)] = cropped
    return full


def labels_from_cropped_probabilities(probabilities: np.ndarray, properties: PreprocessedCase,
                                      scheme: LabelScheme | None = None) -> np.ndarray:
    """Argmax (regions: painted) of crop-space probabilities (e.g. an ensemble average), un-cropped."""
    return uncrop((scheme or LabelScheme()).to_labels(probabilities), properties)


def write_prediction(
    path: str | Path, labels: np.ndarray, properties: PreprocessedCase | ImageGeometry
) -> None:
    """Write an original-shape label map with the original header (spacing, origin, direction)."""
    geometry = properties.image_geometry if isinstance(properties, PreprocessedCase) else properties
    write_label(path, labels, geometry)


def revert_prediction(
    probabilities: np.ndarray,
    properties: PreprocessedCase,
    settings: ResamplingSettings = ResamplingSettings(),
) -> tuple[np.ndarray, ImageGeometry]:
    """Labels in the original shape plus the original geometry, ready for :func:`write_prediction`."""
    return revert_to_labels(probabilities, properties, settings), properties.image_geometry


def save_probabilities(path: Path, probabilities: np.ndarray, properties: PreprocessedCase) -> None:
    """Crop-space probabilities (float16) plus the properties needed to un-crop them, atomically."""
    buffer = _io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities.astype(np.float16),
                        properties=np.array(properties.model_dump_json()))
    atomic_write_bytes(path, buffer.getvalue())


def load_probabilities(path: Path) -> tuple[np.ndarray, PreprocessedCase]:
    if not path.is_file():
        raise SelfUNetError(f"{path}: probabilities file not found; predict with --save-probabilities.")
    with np.load(path) as archive:
        probabilities = archive["probabilities"].astype(np.float32)
        properties = PreprocessedCase.model_validate_json(str(archive["properties"]))
    return probabilities, properties
