"""Prediction slab by slab: the same numbers as the whole-volume computation, in bounded pieces."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from selfunet.data.labels import LabelScheme
from selfunet.errors import SelfUNetError
from selfunet.inference.inference_config import InferenceConfig
from selfunet.inference.sliding_window import predict_probabilities, stream_logits
from selfunet.inference.streaming import (
    ProbabilityFile,
    average_rows,
    crop_rows,
    labels_from_rows,
)
from selfunet.preprocessing.preprocess import GeometryRecord, PreprocessedCase
from selfunet.preprocessing.revert import (
    labels_from_cropped_probabilities,
    load_probabilities,
    revert_probabilities,
    save_probabilities,
)


class CountingNet(torch.nn.Module):
    """A small conv net that counts its forward passes."""

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.LeakyReLU(),
                                        torch.nn.Conv3d(4, classes, 3, padding=1))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.body(x)


def properties(shape_before: list[int], bbox: list[list[int]], pre: list[int], forward: list[int],
               spacing: list[float], target: list[float]) -> PreprocessedCase:
    crop = [b - a for a, b in bbox]
    geometry = GeometryRecord(shape=shape_before, spacing=spacing, origin=[0.0, 0.0, 0.0],
                              direction=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    return PreprocessedCase(case_id="case", geometry=geometry, shape_before_crop=shape_before, crop_bbox=bbox,
                            shape_after_crop=crop, spacing=spacing, target_spacing=target,
                            shape_after_resampling=pre, classes_present=[], transpose_forward=forward)


def test_slabs_arrive_before_the_last_window_and_cover_every_row_once() -> None:
    net = CountingNet()
    image = torch.randn(1, 60, 20, 20)
    seen, calls_at_first = [], None
    for start, stop, (logits,) in stream_logits([net], image, (16, 16, 16), 3, InferenceConfig(mirror_axes=())):
        calls_at_first = net.calls if calls_at_first is None else calls_at_first
        assert logits.shape == (3, stop - start, 20, 20)
        seen.append((start, stop))
    assert seen[0][0] == 0 and seen[-1][1] == 60
    assert all(a[1] == b[0] for a, b in itertools.pairwise(seen))
    assert len(seen) > 3 and calls_at_first < net.calls  # streamed, not all at the end


@pytest.mark.parametrize("forward", [[0, 1, 2], [2, 0, 1]])
def test_streamed_case_equals_whole_volume_labels_and_probabilities(tmp_path: Path, forward: list[int]) -> None:
    """Two folds, padding on one axis, mirroring, a resampled and cropped case; probabilities saved."""
    nets = [CountingNet(seed=0), CountingNet(seed=1)]
    pre = [23, 14, 30]  # plan order; axis 1 is smaller than the patch
    spacing_array = [1.2, 0.9, 1.1]
    spacing_plan = [spacing_array[a] for a in forward]
    crop_plan = [30, 12, 33]
    crop = [0, 0, 0]
    for plan_axis, array_axis in enumerate(forward):
        crop[array_axis] = crop_plan[plan_axis]
    bbox = [[2, 2 + crop[0]], [1, 1 + crop[1]], [0, crop[2]]]
    props = properties([c + 3 for c in crop], bbox, pre, forward, spacing_array,
                       [s * c / p for s, c, p in zip(spacing_plan, crop_plan, pre)])
    image = torch.randn(1, *pre)
    config = InferenceConfig(mirror_axes=(0, 2), windows_per_batch=3)
    whole = predict_probabilities(nets, image, (16, 16, 16), 3, config).numpy()
    reverted = revert_probabilities(whole, props)
    expected = labels_from_cropped_probabilities(reverted, props, LabelScheme())

    rows = crop_rows(nets, image, (16, 16, 16), 3, config, props, props_resampling())
    labels = labels_from_rows(rows, props, LabelScheme(), 3, probabilities_path=tmp_path / "case.npz")
    np.testing.assert_array_equal(labels, expected)
    saved, saved_props = load_probabilities(tmp_path / "case.npz")
    np.testing.assert_allclose(saved, reverted.astype(np.float16).astype(np.float32), atol=1e-3)
    assert saved_props.case_id == "case"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def props_resampling():
    from selfunet.planning.plan_types import ResamplingSettings

    return ResamplingSettings()


def test_streamed_probability_file_reads_like_a_saved_one(tmp_path: Path) -> None:
    props = properties([9, 8, 7], [[0, 9], [0, 8], [0, 7]], [9, 8, 7], [1, 2, 0], [1.0] * 3, [1.0] * 3)
    rng = np.random.default_rng(0)
    array_order = rng.random((4, 9, 8, 7), dtype=np.float32)
    plan_order = array_order.transpose(0, 2, 3, 1)
    writer = ProbabilityFile(tmp_path / "streamed.npz", 4, props)
    for start, stop in ((0, 3), (3, 4), (4, 8)):
        writer.write(start, stop, plan_order[:, start:stop])
    writer.finish()
    save_probabilities(tmp_path / "whole.npz", array_order, props)
    streamed, streamed_props = load_probabilities(tmp_path / "streamed.npz")
    saved, _ = load_probabilities(tmp_path / "whole.npz")
    np.testing.assert_array_equal(streamed, saved)
    assert streamed_props == props


def test_members_average_whatever_their_chunking() -> None:
    rng = np.random.default_rng(0)
    members = [rng.random((3, 10, 4, 5), dtype=np.float32) for _ in range(3)]

    def chunks(values: np.ndarray, cuts: list[int]):
        edges = [0, *cuts, values.shape[1]]
        for a, b in itertools.pairwise(edges):
            yield a, b, values[:, a:b]

    merged = list(average_rows([chunks(members[0], [3, 7]), chunks(members[1], [1, 2, 9]), chunks(members[2], [])]))
    out = np.concatenate([m[2] for m in merged], axis=1)
    np.testing.assert_array_equal(out, (members[0] + members[1] + members[2]) / 3)
    with pytest.raises(SelfUNetError, match="different crop rows"):
        list(average_rows([chunks(members[0], [5]), chunks(members[1][:, :6], [])]))


def test_a_window_voxel_cap_predicts_the_central_windows_only() -> None:
    """Small budgets: step = patch, then the windows nearest the centre; the rest is background."""
    net = CountingNet(classes=2)
    image = torch.randn(1, 64, 16, 16)
    capped = InferenceConfig(mirror_axes=(), windows_per_batch=1, max_window_voxels=2 * 16**3)
    logits = torch.cat([t[0] for _, _, t in stream_logits([net], image, (16, 16, 16), 2, capped)], dim=1)
    assert net.calls == 2  # two of the four non-overlapping windows, not the seven of step 0.5
    covered = logits.abs().sum(dim=(0, 2, 3)) > 0
    assert covered[16:48].all() and not covered[:16].any() and not covered[48:].any()
    net.calls = 0
    whole = InferenceConfig(mirror_axes=(), windows_per_batch=1, max_window_voxels=10**9)
    list(stream_logits([net], image, (16, 16, 16), 2, whole))
    assert net.calls == 7  # under the cap nothing changes
