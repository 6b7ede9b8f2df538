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

Prediction does not revert whole volumes: :func:`revert_rows` takes slabs of rows as the sliding
window finishes them and hands over crop-space rows, with the same numbers (the whole-volume
functions stay for arrays that are whole anyway). docs/explanation/prediction-memory.md.
"""

from __future__ import annotations

import io as _io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from selfunet.artifacts import atomic_write_bytes
from selfunet.data.io import ImageGeometry, write_label
from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ResamplingSettings
from selfunet.preprocessing.preprocess import PreprocessedCase
from selfunet.preprocessing.resample import _apply_axis, _axis_matrix, interpolation_orders, resample_volume

#: the largest crop-space chunk :func:`revert_rows` hands over at once (all classes, float32).
CHUNK_BYTES = 64 * 2**20


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


def revert_rows(
    slabs: Iterable[tuple[int, int, np.ndarray]],
    properties: PreprocessedCase,
    settings: ResamplingSettings = ResamplingSettings(),
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Slabs of preprocessed probabilities in, crop-space rows out, both in plan axis order.

    ``slabs`` yields ``(start, stop, (K, stop - start, *preprocessed[1:]))`` covering the
    preprocessed rows in order (as :func:`selfunet.inference.sliding_window.stream_probabilities`
    does); this yields ``(start, stop, (K, stop - start, *crop[1:]))`` float32 covering the crop
    rows (plan order) in order, each chunk at most about ``chunk_bytes``.

    The numbers are those of :func:`revert_probabilities` (before its transpose), bit for bit:
    every axis is resampled in the same order as :func:`resample_volume` does, the pass along
    axis 0 uses the rows of the same sparse matrix (each output row reads the one or two input
    rows it always reads: they are kept across slabs as a halo), and the passes along the other
    axes work on each row alone. A cubic (order 3) pass along axis 0 prefilters the whole axis and
    cannot be split: only then are all slabs gathered first (no preset plans it).
    """
    target, orders = _back_orders(properties, settings)
    pre = [int(n) for n in properties.shape_after_resampling]
    todo = [a for a in range(3) if pre[a] != target[a]]
    todo.sort(key=lambda a: target[a] / pre[a])  # resample_volume's order of passes
    if 0 in todo and orders[0] == 3:
        yield from _revert_rows_whole(slabs, properties, target, orders)
        return
    if 0 in todo:
        matrix = _axis_matrix(pre[0], target[0], orders[0])
        first_row = np.array([matrix.indices[matrix.indptr[o]:matrix.indptr[o + 1]].min() for o in range(target[0])])
        last_row = np.array([matrix.indices[matrix.indptr[o]:matrix.indptr[o + 1]].max() for o in range(target[0])])
    else:
        matrix = None
        first_row = last_row = np.arange(target[0])
    buffer: np.ndarray | None = None
    buffer_start = expected = emitted = 0
    for start, stop, slab in slabs:
        slab = np.asarray(slab, dtype=np.float32)
        if start != expected or list(slab.shape[2:]) != pre[1:] or slab.shape[1] != stop - start:
            raise SelfUNetError(
                f"case '{properties.case_id}': slab of rows {start}..{stop} with shape {tuple(slab.shape)} does not "
                f"continue rows 0..{expected} of the preprocessed shape {tuple(pre)}."
            )
        expected = stop
        if buffer is None or buffer.shape[1] == 0:
            buffer, buffer_start = slab, start
        else:
            buffer = np.concatenate([buffer, slab], axis=1)
        rows_per_chunk = max(1, chunk_bytes // (4 * slab.shape[0] * target[1] * target[2]))
        while emitted < target[0] and last_row[emitted] < stop:
            end = emitted + 1
            while end < target[0] and end - emitted < rows_per_chunk and last_row[end] < stop:
                end += 1
            lo, hi = int(first_row[emitted]), int(last_row[end - 1]) + 1
            rows = buffer[:, lo - buffer_start : hi - buffer_start]
            out = np.empty((slab.shape[0], end - emitted, *target[1:]), dtype=np.float32)
            for k in range(slab.shape[0]):
                out[k] = _resample_rows(rows[k], lo, (emitted, end), pre, target, orders, todo, matrix)
            yield emitted, end, out
            emitted = end
        keep_from = min(int(first_row[emitted]) if emitted < target[0] else stop, stop)
        buffer, buffer_start = buffer[:, keep_from - buffer_start :].copy(), keep_from
    if expected != pre[0] or emitted != target[0]:
        raise SelfUNetError(
            f"case '{properties.case_id}': the slabs ended at row {expected} of {pre[0]}; the prediction stopped early."
        )


def _resample_rows(rows: np.ndarray, first: int, out_rows: tuple[int, int], pre: list[int], target: list[int],
                   orders: list[int], todo: list[int], matrix) -> np.ndarray:
    """Output rows ``out_rows`` of ``resample_volume(volume, target, orders)`` from the input rows
    ``first..first + len(rows)`` of ``volume`` (which hold every row those output rows read)."""
    out = rows
    for axis in todo:
        if axis == 0:
            out = _apply_axis(out, 0, matrix[out_rows[0]:out_rows[1], first:first + out.shape[0]])
            continue
        if orders[axis] == 3 and out.shape[axis] > 1:
            out = ndimage.spline_filter1d(out, order=3, axis=axis, output=np.float32, mode="mirror")
        out = _apply_axis(out, axis, _axis_matrix(out.shape[axis], int(target[axis]), int(orders[axis])))
    if 0 not in todo:
        out = out[out_rows[0] - first : out_rows[1] - first]
    return out


def _revert_rows_whole(slabs: Iterable[tuple[int, int, np.ndarray]], properties: PreprocessedCase,
                       target: list[int], orders: list[int]) -> Iterator[tuple[int, int, np.ndarray]]:
    parts = [np.asarray(slab, dtype=np.float32) for _, _, slab in slabs]
    whole = np.concatenate(parts, axis=1)
    del parts
    _check_shape(whole, properties, "probabilities")
    out = np.empty((whole.shape[0], *target), dtype=np.float32)
    for k in range(whole.shape[0]):
        out[k] = resample_volume(whole[k], target, orders)
    yield 0, target[0], out


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
