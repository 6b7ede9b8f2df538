"""Per-channel normalization schemes."""

from __future__ import annotations

import numpy as np
import pytest

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ChannelNormalization
from selfunet.preprocessing.normalize import normalize_channel, normalize_image


def _rng_image(shape=(8, 10, 12), loc=100.0, scale=20.0):
    return np.random.default_rng(0).normal(loc, scale, size=shape).astype(np.float32)


def test_ct_clips_then_uses_dataset_statistics():
    image = np.array([-2000.0, -100.0, 0.0, 50.0, 3000.0], dtype=np.float32)
    scheme = ChannelNormalization(scheme="ct", clip_low=-100.0, clip_high=200.0, mean=40.0, std=20.0)
    out = normalize_channel(image, scheme)
    np.testing.assert_allclose(out, (np.clip(image, -100, 200) - 40.0) / 20.0)
    assert out.dtype == np.float32


def test_ct_without_statistics_rejected():
    with pytest.raises(SelfUNetError, match="clip_low"):
        normalize_channel(np.zeros(4, np.float32), ChannelNormalization(scheme="ct"))


def test_zscore_uses_own_statistics():
    image = _rng_image()
    out = normalize_channel(image, ChannelNormalization(scheme="zscore"))
    assert abs(float(out.mean())) < 1e-4
    assert abs(float(out.std()) - 1.0) < 1e-4


def test_zscore_with_nonzero_mask_ignores_and_zeroes_the_outside():
    image = _rng_image()
    mask = np.zeros(image.shape, dtype=bool)
    mask[2:6, 3:8, 2:10] = True
    image[~mask] = 0.0
    out = normalize_channel(image, ChannelNormalization(scheme="zscore", use_nonzero_mask=True), mask)
    assert np.all(out[~mask] == 0)
    assert abs(float(out[mask].mean())) < 1e-4
    assert abs(float(out[mask].std()) - 1.0) < 1e-4


def test_zscore_mask_required_when_asked_for():
    with pytest.raises(SelfUNetError, match="non-zero mask"):
        normalize_channel(_rng_image(), ChannelNormalization(scheme="zscore", use_nonzero_mask=True))


def test_constant_image_becomes_zero_not_nan():
    out = normalize_channel(np.full((3, 3, 3), 7.0, np.float32), ChannelNormalization(scheme="zscore"))
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_none_keeps_values():
    image = _rng_image()
    out = normalize_channel(image, ChannelNormalization(scheme="none"))
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_rescale01_maps_to_unit_range():
    image = _rng_image()
    out = normalize_channel(image, ChannelNormalization(scheme="rescale01"))
    assert float(out.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(out.max()) == pytest.approx(1.0, abs=1e-6)


def test_each_channel_gets_its_own_scheme_and_input_is_untouched():
    image = np.stack([_rng_image(), _rng_image(loc=-500.0)])
    before = image.copy()
    schemes = [
        ChannelNormalization(scheme="zscore"),
        ChannelNormalization(scheme="ct", clip_low=-600.0, clip_high=-400.0, mean=-500.0, std=10.0),
    ]
    out = normalize_image(image, schemes)
    np.testing.assert_array_equal(image, before)
    assert abs(float(out[0].mean())) < 1e-4
    assert float(out[1].min()) >= -10.0 - 1e-5 and float(out[1].max()) <= 10.0 + 1e-5


def test_channel_count_mismatch_rejected():
    with pytest.raises(SelfUNetError, match="channel"):
        normalize_image(np.zeros((2, 3, 3, 3), np.float32), [ChannelNormalization(scheme="none")])
