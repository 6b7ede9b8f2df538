"""Training mini-batches: random patches with foreground oversampling (docs/explanation/design.md#sampling).

A batch is a pure function of ``(seed, batch_index)``: every random number comes from
``np.random.default_rng([seed, batch_index])`` and the sampler keeps no state between calls.
Training therefore resumes exactly, and background workers may compute batches in any order.

Reads are memory-mapped (``np.load(mmap_mode="r")``): only the voxels of the patch are copied,
so the working set stays flat however large the dataset. The maps (and the stored foreground
voxels) of recently used cases stay open per process, keyed by the files' identity (inode, size,
mtime), so a batch does not reopen two files per sample and a rewritten file is never read stale.
Where a patch leaves the image, the image is padded with 0 (the value of the normalised
background outside the non-zero mask) and the label with -1, the value preprocessing also gives
voxels outside the non-zero mask. The
trainer turns -1 into background (0) before the loss, as the reference does: such voxels train as
background, they are not ignored.

Two ways to read a batch: :meth:`PatchSampler.sample_batch` reads a fixed ``read_patch_size``
(by default the reference's rule, :func:`selfunet.training.augment_spatial.read_patch_size`) around
each patch, centred where the final patch should be; :meth:`PatchSampler.sample_boxes` reads, per
sample, the box the sample's drawn augmentation needs (relative to the same patch location), so a
sample that is not rotated or scaled reads only its patch. Both choose cases and locations from the
same random numbers, so a batch's patches lie at the same places either way.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfunet.errors import SelfUNetError
from selfunet.training.augment_config import AugmentationConfig
from selfunet.training.augment_spatial import read_patch_size as reference_read_patch_size

log = logging.getLogger(__name__)

@functools.lru_cache(maxsize=512)
def _open_array(path: str, identity: tuple[int, int, int]) -> np.ndarray:
    return np.load(path, mmap_mode="r")


@functools.lru_cache(maxsize=512)
def _stored_voxels(path: str, identity: tuple[int, int, int], key: str) -> np.ndarray:
    with np.load(path) as stored:
        return stored[key]


def _identity(path: str) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def open_array(path: Path) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``, kept open while the file is unchanged (see module doc)."""
    return _open_array(str(path), _identity(str(path)))


def stored_voxels(path: Path, key: str) -> np.ndarray:
    """One array of an ``.npz`` (the foreground voxels of a class), cached while the file is unchanged."""
    return _stored_voxels(str(path), _identity(str(path)), key)


#: label value of voxels outside the image (padding) and outside the non-zero crop mask.
IGNORE_LABEL = -1


@dataclass
class Batch:
    """One mini-batch as read from disk, before augmentation."""

    image: np.ndarray
    """float32 [B, C, *read_patch]."""
    label: np.ndarray
    """int8 [B, 1, *read_patch] (int16 if preprocessing stored >127 classes); -1 outside the image."""
    case_ids: list[str]
    lower_corners: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    """[B, 3] lower corner of each read patch in the case's voxel grid (plan order); for 2D
    configurations entry 0 is the slice index."""
    foreground_forced: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """[B] whether the sample was centred on a foreground voxel."""


@dataclass
class BoxBatch:
    """One mini-batch read as per-sample boxes (:meth:`PatchSampler.sample_boxes`)."""

    images: list[torch.Tensor]
    """float32 [C, *box_b] per sample."""
    labels: list[torch.Tensor]
    """int8 (or wider) [1, *box_b] per sample; -1 outside the image."""
    lowers: np.ndarray
    """[B, d] lower corner of each box relative to its patch's lower corner."""
    case_ids: list[str]
    patch_corners: np.ndarray
    """[B, 3] lower corner of each final patch in the case's voxel grid (2D: entry 0 = slice)."""
    foreground_forced: np.ndarray

    @property
    def voxels(self) -> int:
        """Voxels read (all channels and the label), for benchmarks."""
        return sum(int(i.numel()) + int(lab.numel()) for i, lab in zip(self.images, self.labels))

    def pin_memory(self) -> BoxBatch:
        """Page-locked copies, so host-to-GPU copies can be asynchronous (torch's loader calls this)."""
        return BoxBatch([i.pin_memory() for i in self.images], [lab.pin_memory() for lab in self.labels],
                        self.lowers, self.case_ids, self.patch_corners, self.foreground_forced)


def _allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


@dataclass(frozen=True)
class _Case:
    case_id: str
    shape: tuple[int, ...]
    """spatial shape (3 axes)."""
    channels: int
    classes: tuple[int, ...]
    """foreground classes with stored voxel coordinates."""
    label_dtype: np.dtype


class PatchSampler:
    """Random training patches from one preprocessed data folder."""

    def __init__(
        self,
        folder: Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        dimension: int,
        oversample_foreground: float = 1 / 3,
        read_patch_size: Sequence[int] | None = None,
        exclude_classes: Sequence[int] = (),
    ) -> None:
        self.folder = Path(folder)
        #: classes never used as foreground centres (the dataset's ignore label)
        self.exclude_classes = frozenset(int(c) for c in exclude_classes)
        if dimension not in (2, 3):
            raise SelfUNetError(f"sampler: dimension must be 2 or 3, got {dimension}.")
        if len(patch_size) != dimension or min(patch_size) < 1:
            raise SelfUNetError(f"sampler: patch size {list(patch_size)} does not fit dimension {dimension}.")
        if batch_size < 1:
            raise SelfUNetError(f"sampler: batch size must be at least 1, got {batch_size}.")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise SelfUNetError(f"sampler: oversample_foreground={oversample_foreground} must be in [0, 1].")
        if not case_ids:
            raise SelfUNetError(f"sampler: no training cases given for {self.folder}.")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dimension = dimension
        self.batch_size = int(batch_size)
        self.oversample_foreground = float(oversample_foreground)
        if read_patch_size is None:
            read_patch_size = reference_read_patch_size(self.patch_size, AugmentationConfig())
        self.read_patch_size = tuple(int(p) for p in read_patch_size)
        if len(self.read_patch_size) != dimension or any(
            r < p for r, p in zip(self.read_patch_size, self.patch_size)
        ):
            raise SelfUNetError(
                f"sampler: read patch size {list(self.read_patch_size)} must have {dimension} entries, "
                f"each at least the patch size {list(self.patch_size)}."
            )
        self.cases = [self._inspect(str(c)) for c in case_ids]
        # int8 per the format; wider only where preprocessing stored more than 127 classes
        self.label_dtype = np.result_type(np.int8, *(c.label_dtype for c in self.cases))

    # ------------------------------------------------------------------ setup
    def _inspect(self, case_id: str) -> _Case:
        """Shape, channels and classes of a case, validated once (headers only, no voxel data)."""
        image_path = self.folder / f"{case_id}.npy"
        seg_path = self.folder / f"{case_id}_seg.npy"
        fg_path = self.folder / f"{case_id}_fg.npz"
        meta_path = self.folder / f"{case_id}.json"
        for path in (meta_path, image_path, seg_path):
            if not path.is_file():
                raise SelfUNetError(
                    f"case {case_id}: {path} is missing; run `selfunet preprocess` for this configuration."
                )
        try:
            image = np.load(image_path, mmap_mode="r")
            seg = np.load(seg_path, mmap_mode="r")
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise SelfUNetError(
                f"case {case_id}: cannot read its preprocessed files in {self.folder} ({exc}); delete "
                f"them and rerun `selfunet preprocess`."
            ) from exc
        if image.ndim != 4 or seg.shape != (1, *image.shape[1:]):
            raise SelfUNetError(
                f"case {case_id}: image {image.shape} and segmentation {seg.shape} in {self.folder} are not "
                f"(C, z, y, x) and (1, z, y, x) of the same size; rerun `selfunet preprocess`."
            )
        classes: tuple[int, ...] = ()
        if fg_path.is_file():
            try:
                with zipfile.ZipFile(fg_path) as archive:
                    keys = [n.removesuffix(".npy") for n in archive.namelist()]
            except (OSError, zipfile.BadZipFile) as exc:
                raise SelfUNetError(f"case {case_id}: {fg_path} is unreadable ({exc}); rerun preprocessing.") from exc
            stored = sorted(int(k.removeprefix("class_")) for k in keys if k.startswith("class_"))
            present = meta.get("classes_present") if isinstance(meta, dict) else None
            classes = tuple(c for c in stored if (present is None or c in present) and c not in self.exclude_classes)
        elif isinstance(meta, dict) and meta.get("classes_present"):
            raise SelfUNetError(
                f"case {case_id}: {fg_path} is missing although the case has foreground; rerun preprocessing."
            )
        if seg.dtype.kind != "i":
            raise SelfUNetError(
                f"case {case_id}: {seg_path} holds {seg.dtype}, not signed integer labels; rerun preprocessing."
            )
        return _Case(case_id, tuple(int(s) for s in image.shape[1:]), int(image.shape[0]), classes, seg.dtype)

    @property
    def num_channels(self) -> int:
        return self.cases[0].channels

    @property
    def num_foreground_samples(self) -> int:
        """How many samples of each batch (the last ones) are centred on foreground."""
        if self.oversample_foreground <= 0:
            return 0
        return min(self.batch_size, max(1, round(self.batch_size * self.oversample_foreground)))

    # ------------------------------------------------------------------ sampling
    def _locate(self, rng: np.random.Generator) -> list[tuple[_Case, np.ndarray, bool]]:
        """Case, patch lower corner (3 entries) and foreground flag of every sample of a batch."""
        channels = self.num_channels
        first_fg = self.batch_size - self.num_foreground_samples
        located = []
        for i in range(self.batch_size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            if case.channels != channels:
                raise SelfUNetError(
                    f"case {case.case_id} has {case.channels} channels, {self.cases[0].case_id} has "
                    f"{channels}; all cases of a preprocessed folder must have the same channels."
                )
            voxel = self._foreground_voxel(case, rng) if i >= first_fg else None
            located.append((case, self._patch_corner(case.shape, voxel, rng), voxel is not None))
        return located

    def _box_corner(self, patch_corner: np.ndarray, lower: np.ndarray) -> np.ndarray:
        corner = patch_corner.copy()
        corner[3 - self.dimension :] += lower
        return corner

    def sample_batch(self, seed: int, batch_index: int) -> Batch:
        """Batch ``batch_index`` of the run seeded ``seed`` at the fixed read patch size; the same
        arguments give the same batch."""
        rng = np.random.default_rng([int(seed), int(batch_index)])
        b, read = self.batch_size, self.read_patch_size
        image = np.zeros((b, self.num_channels, *read), dtype=np.float32)
        label = np.full((b, 1, *read), IGNORE_LABEL, dtype=self.label_dtype)
        corners = np.zeros((b, 3), dtype=np.int64)
        lower = -((np.asarray(read) - np.asarray(self.patch_size)) // 2)
        located = self._locate(rng)
        for i, (case, patch_corner, _) in enumerate(located):
            corners[i] = self._box_corner(patch_corner, lower)
            self._read(case, corners[i], read, image[i], label[i])
        forced = np.array([f for _, _, f in located], dtype=bool)
        return Batch(image, label, [c.case_id for c, _, _ in located], corners, forced)

    def sample_boxes(
        self, seed: int, batch_index: int, boxes: np.ndarray, allocate: Callable[..., torch.Tensor] = _allocate
    ) -> BoxBatch:
        """Batch ``batch_index`` read as per-sample ``boxes`` [B, d, 2] (lower inclusive, upper
        exclusive, relative to each patch's lower corner; e.g. ``Augmenter.read_boxes``). Cases and
        patch locations are those of :meth:`sample_batch` with the same arguments. ``allocate(shape,
        dtype)`` makes the output tensors (e.g. in page-locked memory on CUDA machines)."""
        boxes = np.asarray(boxes, dtype=np.int64)
        if boxes.shape != (self.batch_size, self.dimension, 2) or (boxes[..., 1] <= boxes[..., 0]).any():
            raise SelfUNetError(
                f"sampler: boxes of shape {boxes.shape} must be [{self.batch_size}, {self.dimension}, 2] "
                f"with lower < upper."
            )
        rng = np.random.default_rng([int(seed), int(batch_index)])
        label_dtype = torch.from_numpy(np.zeros(0, dtype=self.label_dtype)).dtype
        images, labels, corners = [], [], np.zeros((self.batch_size, 3), dtype=np.int64)
        located = self._locate(rng)
        for i, (case, patch_corner, _) in enumerate(located):
            size = tuple(int(s) for s in boxes[i, :, 1] - boxes[i, :, 0])
            image = allocate((self.num_channels, *size), torch.float32)
            label = allocate((1, *size), label_dtype)
            self._read(case, self._box_corner(patch_corner, boxes[i, :, 0]), size, image.numpy(), label.numpy(),
                       prefilled=False)
            images.append(image)
            labels.append(label)
            corners[i] = patch_corner
        forced = np.array([f for _, _, f in located], dtype=bool)
        return BoxBatch(images, labels, boxes[:, :, 0].copy(), [c.case_id for c, _, _ in located], corners, forced)

    def _foreground_voxel(self, case: _Case, rng: np.random.Generator) -> np.ndarray | None:
        """A random stored voxel of a random present class, or None when the case has none."""
        if not case.classes:
            return None
        cls = case.classes[int(rng.integers(len(case.classes)))]
        coords = stored_voxels(self.folder / f"{case.case_id}_fg.npz", f"class_{cls}")
        if coords.shape[0] == 0:
            return None
        return np.asarray(coords[int(rng.integers(coords.shape[0]))], dtype=np.int64)

    def _patch_corner(self, shape: tuple[int, ...], voxel: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Lower corner of the final patch (3 entries; for 2D entry 0 is the slice).

        The patch is kept inside the image where the image is large enough, and placed at a random
        offset that still covers the whole image where it is smaller, as the reference
        implementation does; the read margin around it may leave the image (padded). A foreground
        voxel becomes the patch centre, then the same bounds apply, which keeps the voxel inside the
        patch.
        """
        corner = np.zeros(3, dtype=np.int64)
        if self.dimension == 2:
            corner[0] = voxel[0] if voxel is not None else rng.integers(shape[0])
            spatial, offset = shape[1:], 1
        else:
            spatial, offset = shape, 0
        for axis, (size, patch) in enumerate(zip(spatial, self.patch_size)):
            low, high = min(0, size - patch), max(0, size - patch)
            if voxel is None:
                start = int(rng.integers(low, high + 1))
            else:
                start = int(np.clip(voxel[axis + offset] - patch // 2, low, high))
            corner[axis + offset] = start
        return corner

    def _read(
        self, case: _Case, corner: np.ndarray, size: Sequence[int], image_out: np.ndarray, label_out: np.ndarray,
        prefilled: bool = True,
    ) -> None:
        """Copy the part of the box (``size`` at ``corner``) inside the case into the outputs; where
        the box leaves the case, the outputs must hold the padding (0, and the ignore label): they
        already do when ``prefilled``, else they are filled here, and only then (a box inside the
        case is written once, not cleared first)."""
        image = open_array(self.folder / f"{case.case_id}.npy")
        seg = open_array(self.folder / f"{case.case_id}_seg.npy")
        if self.dimension == 2:
            source_prefix: tuple[int | slice, ...] = (slice(None), int(corner[0]))
            lows, shape = corner[1:], case.shape[1:]
        else:
            source_prefix = (slice(None),)
            lows, shape = corner, case.shape
        src, dst = [], []
        for low, extent, read in zip(lows, shape, size):
            a, b = max(int(low), 0), min(int(low) + int(read), extent)
            src.append(slice(a, b))
            dst.append(slice(a - int(low), b - int(low)))
        misses = any(s.start >= s.stop for s in src)  # the patch misses the image on some axis
        inside = all(d.start == 0 and d.stop == int(r) for d, r in zip(dst, size))
        if not prefilled and not inside:
            image_out.fill(0)
            label_out.fill(IGNORE_LABEL)
        if misses:
            return  # all padding
        image_out[(slice(None), *dst)] = image[(*source_prefix, *src)]
        label_out[(slice(None), *dst)] = seg[(*source_prefix, *src)]
