"""Reverting preprocessing: real NIfTI label maps survive preprocess -> revert -> write -> read."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from selfunet.data.io import read_image
from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ChannelNormalization, Configuration, NetworkTopology, Plan, PlannerSettings
from selfunet.preprocessing.preprocess import preprocess_case
from selfunet.preprocessing.revert import (
    labels_from_cropped_probabilities,
    revert_label_map,
    revert_prediction,
    revert_probabilities,
    uncrop,
    write_prediction,
)


def make_plan(target_spacing, transpose_forward, dimension=3) -> tuple[Plan, Configuration]:
    """A minimal hand-made plan: only the fields preprocessing reads matter here."""
    topology = NetworkTopology(
        dimension=dimension,
        features_per_stage=[8, 16],
        kernel_sizes=[[3] * dimension] * 2,
        strides=[[1] * dimension, [2] * dimension],
        convs_per_stage_encoder=[2, 2],
        convs_per_stage_decoder=[2],
    )
    config = Configuration(
        name="3d_fullres" if dimension == 3 else "2d",
        dimension=dimension,
        data_identifier="3d_fullres" if dimension == 3 else "2d",
        spacing=list(target_spacing),
        median_shape=[32, 32, 32],
        patch_size=[32] * dimension,
        batch_size=2,
        normalization=[ChannelNormalization(scheme="zscore", use_nonzero_mask=True)],
        topology=topology,
        batch_dice=False,
        estimated_feature_map_elements=1,
    )
    backward = [list(transpose_forward).index(a) for a in range(3)]
    plan = Plan(
        dataset_name="revert_test",
        num_input_channels=1,
        num_classes=3,
        labels={"0": "background", "1": "a", "2": "b"},
        transpose_forward=list(transpose_forward),
        transpose_backward=backward,
        settings=PlannerSettings(),
        configurations={config.name: config},
    )
    return plan, config


def write_case(folder: Path, shape, spacing) -> tuple[Path, Path]:
    """A body (non-zero ellipsoid inside a zero border) holding two labelled blobs, as NIfTI."""
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    extent = [n * s for n, s in zip(shape, spacing)]
    centre = [e / 2 for e in extent]
    body = sum(((g - c) / (0.42 * e)) ** 2 for g, c, e in zip(grids, centre, extent)) <= 1
    labels = np.zeros(shape, dtype=np.uint8)
    blob1 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, (0.25 * e for e in extent))) <= 1
    offset = [c + 0.1 * e for c, e in zip(centre, extent)]
    blob2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, offset, (0.17 * e for e in extent))) <= 1
    labels[blob1] = 1
    labels[blob2 & body] = 2
    rng = np.random.default_rng(0)
    image = np.where(body, 100 + 10 * rng.standard_normal(shape) + 30 * labels, 0).astype(np.float32)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    paths = []
    for name, array in (("image", image), ("label", labels)):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(tuple(reversed(spacing)))
        itk.SetOrigin((-12.5, 40.0, 7.25))
        itk.SetDirection(direction)
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(itk, str(path))
        paths.append(path)
    return paths[0], paths[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


CASES = [
    # original shape, original spacing (array order), target spacing (plan order), transpose
    pytest.param((48, 56, 52), (1.0, 1.0, 1.0), (0.8, 1.15, 0.9), [0, 1, 2], id="isotropic"),
    pytest.param((14, 96, 88), (4.0, 0.7, 0.7), (2.5, 0.85, 0.6), [0, 1, 2], id="anisotropic-z"),
    pytest.param((80, 72, 14), (0.8, 0.9, 3.6), (3.0, 0.7, 1.0), [2, 0, 1], id="anisotropic-x-transposed"),
]


@pytest.mark.parametrize(("shape", "spacing", "target", "forward"), CASES)
def test_preprocessed_labels_revert_to_the_original(tmp_path, shape, spacing, target, forward):
    image_path, label_path = write_case(tmp_path, shape, spacing)
    image, geometry = read_image(image_path)
    label, label_geometry = read_image(label_path)
    plan, config = make_plan(target, forward)
    _data, seg, props = preprocess_case(image, label[0], geometry, plan, config, "case")
    assert seg is not None
    # the preprocessed grid really differs from the original one (in plane and out of plane)
    crop_plan_order = [props.shape_after_crop[a] for a in forward]
    assert all(n != m for n, m in zip(crop_plan_order, props.shape_after_resampling))
    assert props.crop_bbox != [[0, n] for n in shape]  # cropping happened

    labels, out_geometry = revert_prediction(
        np.stack([(seg[0] == k) | ((k == 0) & (seg[0] < 0)) for k in range(3)]).astype(np.float32), props
    )
    assert labels.shape == tuple(shape)
    for k in (1, 2):
        assert dice(labels == k, label[0] == k) >= 0.99, f"class {k}"
    assert np.array_equal(labels, revert_label_map(seg, props, num_classes=3))

    out = tmp_path / "prediction.nii.gz"
    write_prediction(out, labels, out_geometry)
    reread, reread_geometry = read_image(out)
    np.testing.assert_array_equal(reread[0], labels)
    assert reread_geometry.shape == label_geometry.shape
    np.testing.assert_allclose(reread_geometry.spacing, label_geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(reread_geometry.origin, label_geometry.origin, atol=1e-5)
    np.testing.assert_allclose(reread_geometry.direction, label_geometry.direction, atol=1e-6)
    written = sitk.ReadImage(str(out))
    original = sitk.ReadImage(str(label_path))
    assert written.GetSize() == original.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), rtol=1e-6)


def test_reverted_probabilities_live_in_crop_space_and_sum_to_one(tmp_path):
    image_path, label_path = write_case(tmp_path, (14, 72, 64), (4.0, 0.7, 0.7))
    image, geometry = read_image(image_path)
    label, _ = read_image(label_path)
    plan, config = make_plan((2.5, 0.9, 0.6), [0, 1, 2])
    _, _seg, props = preprocess_case(image, label[0], geometry, plan, config, "case")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, *props.shape_after_resampling)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    reverted = revert_probabilities(probs, props)
    assert reverted.shape == (3, *props.shape_after_crop)
    np.testing.assert_allclose(reverted.sum(axis=0), 1.0, atol=1e-5)
    labels, _ = revert_prediction(probs, props)
    np.testing.assert_array_equal(labels, labels_from_cropped_probabilities(reverted, props))
    outside = np.ones(props.shape_before_crop, dtype=bool)
    outside[tuple(slice(a, b) for a, b in props.crop_bbox)] = False
    assert np.all(labels[outside] == 0)


def test_wrong_prediction_shape_rejected(tmp_path):
    image_path, _label_path = write_case(tmp_path, (20, 24, 22), (1.0, 1.0, 1.0))
    image, geometry = read_image(image_path)
    plan, config = make_plan((1.5, 1.5, 1.5), [0, 1, 2])
    _, _, props = preprocess_case(image, None, geometry, plan, config, "case")
    with pytest.raises(SelfUNetError, match="preprocessed shape"):
        revert_probabilities(np.zeros((3, 5, 5, 5), np.float32), props)
    with pytest.raises(SelfUNetError, match="crop shape"):
        uncrop(np.zeros((2, 2, 2), np.uint8), props)


def _props(tmp_path, shape, spacing, target, forward):
    image_path, _ = write_case(tmp_path, shape, spacing)
    image, geometry = read_image(image_path)
    plan, config = make_plan(target, forward)
    return preprocess_case(image, None, geometry, plan, config, "case")[2]


def _slabs(probs: np.ndarray, cuts: list[int]):
    edges = [0, *cuts, probs.shape[1]]
    for a, b in itertools.pairwise(edges):
        yield a, b, probs[:, a:b].copy()


ROW_CASES = [
    # shape, spacing, target, forward, settings: z up/down-sampled, z unchanged, transposed, cubic
    pytest.param((14, 40, 36), (4.0, 0.7, 0.7), (2.5, 0.9, 0.6), [0, 1, 2], {}, id="z-upsampled-nearest"),
    pytest.param((30, 28, 26), (1.0, 1.0, 1.0), (1.7, 0.8, 1.1), [0, 1, 2], {}, id="z-downsampled-linear"),
    pytest.param((24, 30, 28), (1.0, 0.8, 0.8), (1.0, 1.1, 0.7), [0, 1, 2], {}, id="z-unchanged"),
    pytest.param((26, 24, 12), (0.8, 0.9, 3.6), (3.0, 0.7, 1.0), [2, 0, 1], {}, id="transposed"),
    pytest.param((22, 26, 24), (1.0, 1.0, 1.0), (0.7, 1.3, 0.9), [0, 1, 2], {"probabilities_order": 3},
                 id="cubic-whole"),
]


@pytest.mark.parametrize(("shape", "spacing", "target", "forward", "settings"), ROW_CASES)
def test_reverting_slab_by_slab_equals_reverting_the_whole_volume(tmp_path, shape, spacing, target, forward,
                                                                  settings):
    """Bit for bit, whatever the slab cuts and the chunk size (one row per chunk included)."""
    from selfunet.planning.plan_types import ResamplingSettings
    from selfunet.preprocessing.revert import revert_rows

    props = _props(tmp_path, shape, spacing, target, forward)
    resampling = ResamplingSettings(**settings)
    rng = np.random.default_rng(1)
    probs = rng.random((3, *props.shape_after_resampling), dtype=np.float32)
    whole = revert_probabilities(probs, props, resampling).transpose(0, *[1 + a for a in forward])
    n = probs.shape[1]
    for cuts, chunk_bytes in (([n // 3, n // 3 + 1, n - 2], 1), ([5, 11], 1 << 30), ([], 2000)):
        rows = list(revert_rows(_slabs(probs, [c for c in cuts if 0 < c < n]), props, resampling, chunk_bytes))
        assert [r[0] for r in rows] == [0, *[r[1] for r in rows[:-1]]]
        np.testing.assert_array_equal(np.concatenate([r[2] for r in rows], axis=1), whole)


def test_slabs_out_of_order_rejected(tmp_path):
    from selfunet.preprocessing.revert import revert_rows

    props = _props(tmp_path, (20, 24, 22), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5), [0, 1, 2])
    probs = np.zeros((2, *props.shape_after_resampling), np.float32)
    with pytest.raises(SelfUNetError, match="does not continue"):
        list(revert_rows([(0, 2, probs[:, :2]), (3, 5, probs[:, 3:5])], props))
    with pytest.raises(SelfUNetError, match="stopped early"):
        list(revert_rows([(0, 2, probs[:, :2])], props))
