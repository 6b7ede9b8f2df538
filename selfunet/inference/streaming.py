"""One case, slab by slab, from the network to the written label map (and probabilities if asked).

Why: a whole-body CT at 1.5 mm with a hundred classes holds tens of gigabytes of float32 class
scores; resampling them back to the original grid holds several times more. Nothing here ever
holds all classes for the whole volume. The sliding window hands over finished slabs of rows
(:func:`~selfunet.inference.sliding_window.stream_probabilities`), each slab is resampled to
the crop space of the original image as soon as the rows it reads are there
(:func:`~selfunet.preprocessing.revert.revert_rows`), and each chunk of crop-space rows becomes
label rows right away. What stays for the whole case is the input, the label map, and, only with
``--save-probabilities``, a float16 file on disk that is packed into the ``.npz`` at the end.

The numbers are those of the whole-volume computation: the same windows, batches and sums; the
same resampling passes; ensembles average members' crop-space rows in the same order.
docs/explanation/prediction-memory.md has the account of what is kept when.
"""

from __future__ import annotations

import mmap
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from selfunet.artifacts import atomic_path, temp_path
from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError
from selfunet.inference.inference_config import InferenceConfig
from selfunet.inference.sliding_window import stream_probabilities
from selfunet.planning.plan_types import ResamplingSettings
from selfunet.preprocessing.preprocess import PreprocessedCase
from selfunet.preprocessing.revert import revert_rows, uncrop

Rows = Iterator[tuple[int, int, np.ndarray]]
"""``(start, stop, (K, stop - start, *crop[1:]))`` float32 chunks of crop-space rows, plan axis order."""

#: bytes copied at a time when a streamed probability file is packed into its ``.npz``.
_COPY_BYTES = 16 * 2**20


def crop_rows(networks: Sequence[torch.nn.Module], data: np.ndarray | torch.Tensor, patch_size: Sequence[int],
              num_outputs: int, config: InferenceConfig, properties: PreprocessedCase,
              resampling: ResamplingSettings, activation: str = "softmax") -> Rows:
    """Crop-space probability rows of one preprocessed case, averaged over ``networks`` (folds)."""
    image = torch.as_tensor(data)

    def slabs() -> Iterator[tuple[int, int, np.ndarray]]:
        for start, stop, probabilities in stream_probabilities(networks, image, patch_size, num_outputs, config,
                                                               activation):
            yield start, stop, probabilities.cpu().numpy()

    return revert_rows(slabs(), properties, resampling)


def average_rows(members: Sequence[Rows]) -> Rows:
    """The mean of several members' crop-space rows (an ensemble), whatever their chunking.

    Each member advances only as far as the slowest one needs, so at most about two chunks per
    member are held. Sums run in member order, then one division: the whole-volume order.
    """
    if len(members) == 1:
        yield from members[0]
        return
    pending: list[tuple[int, np.ndarray] | None] = [None] * len(members)
    done = 0
    while True:
        for m, stream in enumerate(members):
            while pending[m] is None or pending[m][0] + pending[m][1].shape[1] <= done:
                chunk = next(stream, None)
                if chunk is None:
                    break
                pending[m] = (chunk[0], chunk[2])  # the member's previous chunk is used up
        ends = [p[0] + p[1].shape[1] if p is not None else done for p in pending]
        end = min(ends)
        if end <= done:
            if any(e != ends[0] for e in ends):
                raise SelfUNetError("ensemble members ended at different crop rows; were they predicted for "
                                    "different cases?")
            return
        total = None
        for start, values in pending:  # type: ignore[misc]
            part = values[:, done - start:end - start]
            total = part.copy() if total is None else total + part
        total /= len(members)
        yield done, end, total
        done = end


def whole_rows(array_order: np.ndarray, forward: Sequence[int]) -> Rows:
    """A crop-space array (K, *array order) as one chunk of rows in the plan order ``forward``."""
    yield 0, array_order.shape[1 + forward[0]], np.ascontiguousarray(
        array_order.transpose(0, *[1 + a for a in forward]))


def collect_rows(rows: Rows, num_outputs: int, properties: PreprocessedCase) -> np.ndarray:
    """Every chunk put together: crop-space probabilities ``(K, *shape_after_crop)`` in array order."""
    forward = properties.transpose_forward
    plan_shape = [properties.shape_after_crop[a] for a in forward]
    out = np.empty((num_outputs, *plan_shape), dtype=np.float32)
    for start, stop, values in rows:
        out[:, start:stop] = values
    backward = [forward.index(a) for a in range(len(forward))]
    return out.transpose(0, *[1 + a for a in backward])


class ProbabilityFile:
    """Crop-space probabilities written chunk by chunk into a float16 file beside ``path``, then
    packed into ``path`` (the ``.npz`` of :func:`~selfunet.preprocessing.revert.save_probabilities`).

    The file is written through a memory map whose pages are handed back to the kernel after each
    chunk, so the resident memory stays one chunk, not all classes of the whole crop.
    """

    def __init__(self, path: Path, num_outputs: int, properties: PreprocessedCase) -> None:
        self.path = Path(path)
        self.properties = properties
        self.shape = (num_outputs, *[int(n) for n in properties.shape_after_crop])
        self.forward = list(properties.transpose_forward)
        self.raw = temp_path(self.path, ".raw")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.raw, "w+b")  # noqa: SIM115 - closed in finish/discard
        nbytes = int(np.prod(self.shape)) * 2
        self._handle.truncate(nbytes)
        self._map = mmap.mmap(self._handle.fileno(), max(nbytes, 1))
        self._array = np.ndarray(self.shape, dtype=np.float16, buffer=self._map)

    def write(self, start: int, stop: int, plan_rows: np.ndarray) -> None:
        axis = self.forward[0]  # the array axis that is plan axis 0
        backward = [self.forward.index(a) for a in range(len(self.forward))]
        index = [slice(None)] * 4
        index[1 + axis] = slice(start, stop)
        self._array[tuple(index)] = plan_rows.transpose(0, *[1 + a for a in backward])
        self._map.flush()
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)  # written back: drop the pages from this process

    def finish(self) -> None:
        """Pack into ``path``: ``probabilities`` (float16) and ``properties``, compressed, atomically."""
        del self._array
        self._map.close()
        self._handle.close()
        try:
            with atomic_path(self.path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED,
                                                                allowZip64=True) as archive:
                with archive.open("probabilities.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_1_0(
                        member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                 "fortran_order": False, "shape": self.shape})
                    with open(self.raw, "rb") as source:
                        while block := source.read(_COPY_BYTES):
                            member.write(block)
                with archive.open("properties.npy", "w") as member:
                    np.lib.format.write_array(member, np.array(self.properties.model_dump_json()),
                                              allow_pickle=False)
        finally:
            self.raw.unlink(missing_ok=True)

    def discard(self) -> None:
        if hasattr(self, "_array"):
            del self._array
            self._map.close()
            self._handle.close()
        self.raw.unlink(missing_ok=True)


def labels_from_rows(rows: Rows, properties: PreprocessedCase, scheme: LabelScheme, num_outputs: int,
                     probabilities_path: Path | None = None) -> np.ndarray:
    """The label map of the original image (argmax; regions painted) from crop-space rows, and
    the probabilities written to ``probabilities_path`` on the way when given."""
    return uncrop(crop_labels_from_rows(rows, properties, scheme, num_outputs, probabilities_path), properties)


def crop_labels_from_rows(rows: Rows, properties: PreprocessedCase, scheme: LabelScheme, num_outputs: int,
                          probabilities_path: Path | None = None) -> np.ndarray:
    """Crop-space labels (array order) from rows, e.g. what a cascade's next stage reads."""
    forward = properties.transpose_forward
    plan_shape = [int(properties.shape_after_crop[a]) for a in forward]
    if scheme.has_regions:
        dtype = np.uint8 if max(scheme.regions_class_order, default=0) < 256 else np.int16
    else:
        dtype = np.uint8 if num_outputs <= 256 else np.int16
    labels = np.zeros(plan_shape, dtype=dtype)
    writer = ProbabilityFile(probabilities_path, num_outputs, properties) if probabilities_path else None
    try:
        covered = 0
        for start, stop, values in rows:
            labels[start:stop] = scheme.to_labels(values)
            if writer is not None:
                writer.write(start, stop, values)
            covered = stop
        if covered != plan_shape[0]:
            raise SelfUNetError(f"case '{properties.case_id}': prediction stopped at crop row {covered} of "
                                f"{plan_shape[0]}.")
        if writer is not None:
            writer.finish()
            writer = None
    finally:
        if writer is not None:
            writer.discard()
    backward = [forward.index(a) for a in range(len(forward))]
    return np.ascontiguousarray(labels.transpose(backward))
