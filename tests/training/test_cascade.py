"""Cascade input construction: the previous stage's segmentation on the full-resolution grid."""

from __future__ import annotations

import numpy as np
import pytest

from selfunet.errors import SelfUNetError
from selfunet.preprocessing.preprocess import GeometryRecord, PreprocessedCase
from selfunet.training.cascade import previous_stage_channels


def _properties(crop_shape, resampled_shape, transpose=(0, 1, 2)) -> PreprocessedCase:
    shape = [s + 4 for s in crop_shape]
    return PreprocessedCase(
        case_id="c", geometry=GeometryRecord(shape=shape, spacing=[1, 1, 1], origin=[0, 0, 0],
                                             direction=[1, 0, 0, 0, 1, 0, 0, 0, 1]),
        shape_before_crop=shape, crop_bbox=[[2, 2 + s] for s in crop_shape], shape_after_crop=list(crop_shape),
        spacing=[1.0, 1.0, 1.0], target_spacing=[1.0, 1.0, 1.0], shape_after_resampling=list(resampled_shape),
        classes_present=[1, 2], transpose_forward=list(transpose),
    )


def test_same_grid_gives_exact_one_hot_of_foreground_classes() -> None:
    labels = np.zeros((6, 8, 10), dtype=np.int64)
    labels[1:3, 2:5, 3:7] = 1
    labels[4, 6, 8] = 2
    channels = previous_stage_channels(labels, _properties((6, 8, 10), (6, 8, 10)), num_classes=3)
    assert channels.shape == (2, 6, 8, 10) and channels.dtype == np.float32
    np.testing.assert_array_equal(channels[0], labels == 1)
    np.testing.assert_array_equal(channels[1], labels == 2)


def test_transpose_and_upsampling_follow_the_plan_grid() -> None:
    labels = np.zeros((4, 6, 8), dtype=np.int64)  # array order; plan order puts axis 2 first
    labels[:, :3, :] = 1
    properties = _properties((4, 6, 8), (16, 8, 12), transpose=(2, 0, 1))
    channels = previous_stage_channels(labels, properties, num_classes=2)
    assert channels.shape == (1, 16, 8, 12)
    # the class occupies the first half of array axis 1, which is plan axis 2 after the transpose
    np.testing.assert_array_equal(channels[0, :, :, :6], 1)
    np.testing.assert_array_equal(channels[0, :, :, 6:], 0)


def test_wrong_crop_shape_is_rejected_with_the_case_named() -> None:
    with pytest.raises(SelfUNetError, match="case 'c'"):
        previous_stage_channels(np.zeros((3, 3, 3)), _properties((6, 8, 10), (6, 8, 10)), num_classes=2)
