"""Patch sampler: shapes, padding, foreground oversampling, reproducibility, 2D slices.

Preprocessed cases are written by hand in the on-disk format (``<case>.npy``, ``_seg.npy``,
``_fg.npz``, ``.json``), independent of the preprocessing code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selfunet.errors import SelfUNetError
from selfunet.training.augment_spatial import read_patch_size
from selfunet.training.sampling import IGNORE_LABEL, PatchSampler


def write_case(folder: Path, case_id: str, image: np.ndarray, seg: np.ndarray, seed: int = 0) -> None:
    """One preprocessed case: foreground coordinates stored per present class (all of them)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{case_id}.npy", image.astype(np.float32))
    np.save(folder / f"{case_id}_seg.npy", seg.astype(np.int8))
    present = [int(c) for c in np.unique(seg) if c > 0]
    np.savez(folder / f"{case_id}_fg.npz", **{f"class_{c}": np.argwhere(seg[0] == c).astype(np.int32) for c in present})
    (folder / f"{case_id}.json").write_text(json.dumps({"case_id": case_id, "classes_present": present}))


def make_case(
    shape: tuple[int, int, int], rng: np.random.Generator, channels: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Random image; label: a box of class 1 and a single voxel of class 2 (a tiny lesion)."""
    image = rng.standard_normal((channels, *shape)).astype(np.float32) + 5.0
    seg = np.zeros((1, *shape), dtype=np.int8)
    z, y, x = shape
    seg[0, z // 4 : z // 2, y // 4 : y // 2, x // 4 : x // 2] = 1
    seg[0, z - 2, y - 3, x - 4] = 2
    seg[0, 0, 0, :2] = IGNORE_LABEL  # some voxels outside the crop mask
    return image, seg


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(12, 40, 36), (9, 30, 44), (14, 50, 50)]):
        write_case(tmp_path, f"case_{i}", *make_case(shape, rng))
    return tmp_path


def expected_patch(folder: Path, case_id: str, corner: np.ndarray, read: tuple[int, ...], dimension: int):
    """The patch at ``corner`` cut from the fully padded arrays (an independent reference)."""
    image = np.load(folder / f"{case_id}.npy")
    seg = np.load(folder / f"{case_id}_seg.npy")
    if dimension == 2:
        image, seg, corner = image[:, corner[0]], seg[:, corner[0]], corner[1:]
    pad = max(read) + 2
    widths = [(0, 0)] + [(pad, pad)] * dimension
    image = np.pad(image, widths, constant_values=0)
    seg = np.pad(seg, widths, constant_values=IGNORE_LABEL)
    sl = (slice(None), *(slice(c + pad, c + pad + r) for c, r in zip(corner, read)))
    return image[sl], seg[sl]


def center(array: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    read = array.shape[-len(patch) :]
    sl = tuple(slice((r - p) // 2, (r - p) // 2 + p) for r, p in zip(read, patch))
    return array[(..., *sl)]


def test_batch_shapes_and_types(folder: Path) -> None:
    sampler = PatchSampler(folder, ["case_0", "case_1", "case_2"], (8, 24, 24), batch_size=3, dimension=3)
    batch = sampler.sample_batch(seed=1, batch_index=0)
    read = sampler.read_patch_size
    assert read == read_patch_size((8, 24, 24))  # the reference's read-patch rule by default
    assert batch.image.shape == (3, 2, *read) and batch.image.dtype == np.float32
    assert batch.label.shape == (3, 1, *read) and batch.label.dtype == np.int8
    assert len(batch.case_ids) == 3


def test_patches_match_source_with_padding_at_borders(folder: Path) -> None:
    """Every sample equals the padded source at its corner: image 0 and label -1 outside."""
    sampler = PatchSampler(folder, ["case_0", "case_1", "case_2"], (8, 24, 24), batch_size=4, dimension=3)
    saw_padding = False
    for index in range(8):
        batch = sampler.sample_batch(seed=3, batch_index=index)
        for i, case_id in enumerate(batch.case_ids):
            image, seg = expected_patch(folder, case_id, batch.lower_corners[i], sampler.read_patch_size, 3)
            np.testing.assert_array_equal(batch.image[i], image)
            np.testing.assert_array_equal(batch.label[i], seg)
            saw_padding |= bool((batch.label[i] == IGNORE_LABEL).sum() > 2)
    assert saw_padding, "the enlarged read patch of these small cases must reach past the image"


def test_case_smaller_than_patch_is_padded_and_fully_covered(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image, seg = make_case((4, 10, 12), rng)
    write_case(tmp_path, "tiny", image, seg)
    sampler = PatchSampler(tmp_path, ["tiny"], (6, 16, 16), batch_size=2, dimension=3, read_patch_size=(6, 16, 16))
    for index in range(5):
        batch = sampler.sample_batch(0, index)
        for i in range(2):
            # the whole case lies inside every patch; everything else is padding (image 0, label -1)
            assert (batch.image[i, 0] != 0).sum() == seg.size
            assert (batch.label[i] != IGNORE_LABEL).sum() == (seg != IGNORE_LABEL).sum()
            assert sorted(batch.image[i, 0][batch.image[i, 0] != 0]) == sorted(image[0].ravel())


def test_forced_samples_contain_foreground_in_final_patch(folder: Path) -> None:
    patch = (8, 24, 24)
    sampler = PatchSampler(folder, ["case_0", "case_1", "case_2"], patch, batch_size=5, dimension=3)
    assert sampler.num_foreground_samples == 2  # round(5/3)
    with_fg = total = 0
    for index in range(60):
        batch = sampler.sample_batch(seed=7, batch_index=index)
        assert list(batch.foreground_forced) == [False] * 3 + [True] * 2
        final = center(batch.label, patch)
        has_fg = (final > 0).reshape(5, -1).any(1)
        assert has_fg[batch.foreground_forced].all()
        with_fg += int(has_fg.sum())
        total += 5
    assert with_fg / total >= 1 / 3


def test_at_least_one_forced_sample_and_oversampling_off(folder: Path) -> None:
    one = PatchSampler(folder, ["case_0"], (8, 24, 24), batch_size=2, dimension=3)
    assert one.num_foreground_samples == 1
    off = PatchSampler(folder, ["case_0"], (8, 24, 24), batch_size=2, dimension=3, oversample_foreground=0.0)
    assert off.num_foreground_samples == 0
    assert not off.sample_batch(0, 0).foreground_forced.any()


def test_tiny_class_still_sampled(folder: Path) -> None:
    """The one-voxel class 2 is picked as often as the big class among forced samples."""
    patch = (8, 24, 24)
    sampler = PatchSampler(folder, ["case_0", "case_1", "case_2"], patch, batch_size=3, dimension=3)
    hits = forced = 0
    for index in range(120):
        batch = sampler.sample_batch(seed=11, batch_index=index)
        final = center(batch.label, patch)
        forced += int(batch.foreground_forced.sum())
        hits += int(((final == 2).reshape(3, -1).any(1) & batch.foreground_forced).sum())
    assert forced == 120
    assert 0.3 * forced <= hits <= 0.7 * forced


def test_case_without_foreground_falls_back_to_random(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image, _ = make_case((10, 30, 30), rng)
    write_case(tmp_path, "empty", image, np.zeros((1, 10, 30, 30), dtype=np.int8))
    sampler = PatchSampler(tmp_path, ["empty"], (8, 24, 24), batch_size=3, dimension=3)
    batch = sampler.sample_batch(0, 0)
    assert not batch.foreground_forced.any()
    assert batch.image.shape[0] == 3


def test_batch_is_pure_function_of_seed_and_index(folder: Path) -> None:
    ids = ["case_0", "case_1", "case_2"]
    a = PatchSampler(folder, ids, (8, 24, 24), batch_size=3, dimension=3)
    b = PatchSampler(folder, ids, (8, 24, 24), batch_size=3, dimension=3)
    later = a.sample_batch(5, 9)
    earlier = a.sample_batch(5, 2)
    for index, reference in ((9, later), (2, earlier)):
        again = b.sample_batch(5, index)
        np.testing.assert_array_equal(again.image, reference.image)
        np.testing.assert_array_equal(again.label, reference.label)
        assert again.case_ids == reference.case_ids
    other = a.sample_batch(5, 3)
    assert not np.array_equal(other.lower_corners, earlier.lower_corners) or other.case_ids != earlier.case_ids


def test_2d_samples_are_slices(folder: Path) -> None:
    patch = (20, 20)
    sampler = PatchSampler(folder, ["case_0", "case_1", "case_2"], patch, batch_size=3, dimension=2)
    read = sampler.read_patch_size
    assert len(read) == 2
    for index in range(10):
        batch = sampler.sample_batch(seed=2, batch_index=index)
        assert batch.image.shape == (3, 2, *read) and batch.label.shape == (3, 1, *read)
        for i, case_id in enumerate(batch.case_ids):
            image, seg = expected_patch(folder, case_id, batch.lower_corners[i], read, 2)
            np.testing.assert_array_equal(batch.image[i], image)
            np.testing.assert_array_equal(batch.label[i], seg)
        forced = batch.foreground_forced
        assert (center(batch.label, patch) > 0).reshape(3, -1).any(1)[forced].all()


def test_missing_case_file_names_file_and_fix(folder: Path) -> None:
    (folder / "case_1_seg.npy").unlink()
    with pytest.raises(SelfUNetError, match=r"case_1_seg\.npy.*selfunet preprocess"):
        PatchSampler(folder, ["case_0", "case_1"], (8, 24, 24), batch_size=2, dimension=3)


def test_patch_dimension_mismatch_rejected(folder: Path) -> None:
    with pytest.raises(SelfUNetError, match="dimension"):
        PatchSampler(folder, ["case_0"], (8, 24), batch_size=2, dimension=3)


def test_wide_label_dtype_kept(tmp_path: Path) -> None:
    """More than 127 classes are stored as int16 by preprocessing; the batch must not wrap them."""
    rng = np.random.default_rng(3)
    image, seg = make_case((6, 20, 20), rng)
    seg = seg.astype(np.int16)
    seg[seg == 1] = 300
    write_case(tmp_path, "many", image, seg)
    np.save(tmp_path / "many_seg.npy", seg)  # write_case stores int8; keep the int16 original
    sampler = PatchSampler(tmp_path, ["many"], (6, 16, 16), batch_size=3, dimension=3)
    batch = sampler.sample_batch(0, 0)
    assert batch.label.dtype == np.int16
    assert (batch.label == 300).any()


@pytest.mark.parametrize("dimension", [3, 2])
def test_boxes_read_the_same_places_as_the_fixed_read(folder: Path, dimension: int) -> None:
    """Per-sample boxes are cut at the same patch locations as ``sample_batch``: each box equals
    the matching region of the fixed read (where it lies inside it), padding included."""
    patch = (8, 24, 24) if dimension == 3 else (24, 24)
    sampler = PatchSampler(folder, ["case_0", "case_1", "case_2"], patch, batch_size=4, dimension=dimension,
                           oversample_foreground=0.5)
    fixed = sampler.sample_batch(seed=3, batch_index=7)
    read = np.asarray(sampler.read_patch_size)
    region_low = -((read - np.asarray(patch)) // 2)
    rng = np.random.default_rng(0)
    boxes = np.zeros((4, dimension, 2), dtype=np.int64)
    for i in range(4):
        low = rng.integers(region_low, 1)
        high = rng.integers(np.asarray(patch), region_low + read + 1)
        boxes[i, :, 0], boxes[i, :, 1] = low, high
    boxes[0, :, 0], boxes[0, :, 1] = 0, patch  # exactly the patch
    got = sampler.sample_boxes(seed=3, batch_index=7, boxes=boxes)
    assert got.case_ids == fixed.case_ids
    assert np.array_equal(got.foreground_forced, fixed.foreground_forced)
    assert got.voxels == sum(3 * int(np.prod(b[:, 1] - b[:, 0])) for b in boxes)  # 2 channels + label
    for i in range(4):
        sl = tuple(slice(int(lo - r), int(hi - r)) for (lo, hi), r in zip(boxes[i], region_low))
        assert got.images[i].dtype == torch.float32 and got.labels[i].dtype == torch.int8
        np.testing.assert_array_equal(got.images[i].numpy(), fixed.image[i][(slice(None), *sl)])
        np.testing.assert_array_equal(got.labels[i].numpy(), fixed.label[i][(slice(None), *sl)])


def test_boxes_use_the_given_allocator(folder: Path) -> None:
    """The seam through which CUDA training reads straight into page-locked memory."""
    calls = []

    def allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        calls.append((shape, dtype))
        return torch.full(shape, 99, dtype=dtype)  # garbage: the sampler must overwrite all of it

    sampler = PatchSampler(folder, ["case_0"], (8, 24, 24), batch_size=2, dimension=3)
    boxes = np.array([[[-30, 38], [0, 24], [0, 24]]] * 2)  # far outside the case along axis 0: padding
    got = sampler.sample_boxes(0, 0, boxes, allocate=allocate)
    assert [c[0] for c in calls] == [(2, 68, 24, 24), (1, 68, 24, 24)] * 2
    for image, label in zip(got.images, got.labels):
        assert not (image == 99).any() and not (label == 99).any()
        assert (label[:, :10] == IGNORE_LABEL).all() and (image[:, :10] == 0).all()


def test_bad_boxes_rejected(folder: Path) -> None:
    sampler = PatchSampler(folder, ["case_0"], (8, 24, 24), batch_size=2, dimension=3)
    with pytest.raises(SelfUNetError, match="boxes"):
        sampler.sample_boxes(0, 0, np.zeros((2, 3, 2), dtype=np.int64))
