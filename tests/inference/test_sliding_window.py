"""Sliding-window inference: window grid, Gaussian weighting, padding, TTA, folds, 2D-on-3D, AMP.

Exactness checks use networks whose correct answer is known without the code under test: a
1x1(x1) convolution is pointwise, so every window agrees with a direct forward pass of the whole
image and any weighted average of them must equal it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from selfunet.errors import SelfUNetError
from selfunet.inference.sliding_window import (
    InferenceConfig,
    compute_window_starts,
    gaussian_importance_map,
    predict_probabilities,
    predict_sliding_window,
)

NO_TTA = InferenceConfig(mirror_axes=())


def _pointwise_net(in_ch: int, classes: int, dim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    conv = (nn.Conv3d if dim == 3 else nn.Conv2d)(in_ch, classes, kernel_size=1)
    return conv.eval()


def _context_net(in_ch: int, classes: int, dim: int, seed: int) -> nn.Module:
    """Non-symmetric 3x3(x3) kernels: its output changes when the input is mirrored."""
    torch.manual_seed(seed)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    return nn.Sequential(
        conv(in_ch, 4, kernel_size=3, padding=1), nn.LeakyReLU(0.01), conv(4, classes, kernel_size=3, padding=1)
    ).eval()


class _CountingNet(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


# ---------------------------------------------------------------------------------------- window grid


@pytest.mark.parametrize(
    ("size", "patch"), [(8, 8), (9, 8), (20, 8), (27, 8), (30, 8), (100, 48), (161, 64), (13, 5), (7, 1)]
)
def test_window_starts_cover_every_voxel_and_hit_both_ends(size: int, patch: int) -> None:
    (starts,) = compute_window_starts([size], [patch], 0.5)
    assert starts[0] == 0
    assert starts[-1] == size - patch
    assert starts == sorted(set(starts))
    covered = np.zeros(size, dtype=bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()
    expected_n = math.ceil((size - patch) / (patch * 0.5)) + 1
    assert len(starts) == min(expected_n, size - patch + 1)
    # evenly spaced: no gap larger than the target step (rounded up)
    assert all(b - a <= math.ceil(patch * 0.5) for a, b in itertools.pairwise(starts))


def test_window_starts_are_mirror_symmetric_per_axis() -> None:
    for size, patch in [(27, 8), (31, 6), (50, 48), (123, 40), (30, 8), (14, 8)]:
        (starts,) = compute_window_starts([size], [patch], 0.5)
        assert sorted(size - patch - s for s in starts) == starts


def test_window_starts_only_odd_middle_window_may_break_symmetry() -> None:
    (starts,) = compute_window_starts([29], [8], 0.5)  # 7 windows over an odd span of 21
    assert len(starts) == 7
    mirrored = [21 - s for s in reversed(starts)]
    assert [i for i, (a, b) in enumerate(zip(starts, mirrored)) if a != b] == [3]


def test_window_starts_reject_image_smaller_than_patch() -> None:
    with pytest.raises(SelfUNetError, match="pad"):
        compute_window_starts([5, 20], [8, 8])


# ----------------------------------------------------------------------------------------- gaussian


@pytest.mark.parametrize("patch", [(16, 16, 16), (7, 12, 9), (32, 20)])
def test_gaussian_map_is_normalised_positive_and_mirror_symmetric(patch: tuple[int, ...]) -> None:
    g = gaussian_importance_map(patch, 1 / 8)
    assert tuple(g.shape) == patch
    assert g.dtype == torch.float32
    assert float(g.max()) == pytest.approx(1.0)
    assert float(g.min()) > 0
    for axis in range(len(patch)):
        torch.testing.assert_close(g, torch.flip(g, [axis]))
    # the peak is at the centre and weights fall off towards the corner
    centre = tuple(p // 2 for p in patch)
    assert float(g[centre]) >= float(g[tuple(0 for _ in patch)]) * 100


def test_gaussian_map_has_sigma_of_the_given_fraction() -> None:
    g = gaussian_importance_map([33], 1 / 8)  # centre at 16, sigma = 4.125
    sigma = 33 / 8
    assert float(g[16]) == pytest.approx(1.0)
    assert float(g[20]) == pytest.approx(math.exp(-0.5 * (4 / sigma) ** 2), rel=1e-5)


def test_gaussian_map_never_zero_even_for_tiny_sigma() -> None:
    g = gaussian_importance_map([64, 64], 1 / 200)
    assert float(g.min()) > 0


# ------------------------------------------------------------------------------------- exactness


def test_large_volume_matches_direct_forward_for_pointwise_network() -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 20, 27, 30)  # patch 8^3 -> 4, 6, 7 windows per axis
    net = _pointwise_net(2, 3, dim=3, seed=1)
    config = InferenceConfig(windows_per_batch=5)
    pred = predict_sliding_window(net, image, (8, 8, 8), 3, config)
    with torch.no_grad():
        direct = net(image[None])[0]
    assert pred.shape == (3, 20, 27, 30)
    assert pred.dtype == torch.float32
    assert pred.device.type == "cpu"
    torch.testing.assert_close(pred, direct, rtol=1e-5, atol=1e-5)


def test_windows_are_averaged_with_gaussian_weights() -> None:
    """Each window outputs its own mean intensity everywhere; the result must be the
    Gaussian-weighted average of the windows covering a voxel (reference computed by loops)."""

    class WindowMean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3), keepdim=True).expand(-1, -1, *x.shape[2:])

    torch.manual_seed(0)
    image = torch.rand(1, 14, 19)
    patch = (8, 6)
    pred = predict_sliding_window(WindowMean(), image, patch, 1, NO_TTA)

    g = gaussian_importance_map(patch, 1 / 8).double().numpy()
    num = np.zeros((14, 19))
    den = np.zeros((14, 19))
    for s0, s1 in itertools.product(*compute_window_starts((14, 19), patch, 0.5)):
        window = image[0, s0 : s0 + 8, s1 : s1 + 6].double().numpy()
        num[s0 : s0 + 8, s1 : s1 + 6] += g * window.mean()
        den[s0 : s0 + 8, s1 : s1 + 6] += g
    np.testing.assert_allclose(pred[0].numpy(), num / den, rtol=1e-5)
    # and that differs from an unweighted average, so the weighting is actually exercised
    assert not np.allclose(pred[0].numpy(), _unweighted(image[0].double().numpy(), patch), rtol=1e-3)


def _unweighted(image: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    num = np.zeros_like(image)
    den = np.zeros_like(image)
    for s0, s1 in itertools.product(*compute_window_starts(image.shape, patch, 0.5)):
        num[s0 : s0 + patch[0], s1 : s1 + patch[1]] += image[s0 : s0 + patch[0], s1 : s1 + patch[1]].mean()
        den[s0 : s0 + patch[0], s1 : s1 + patch[1]] += 1
    return num / den


def test_volume_smaller_than_patch_is_padded_and_cropped_back() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 5, 13, 7)  # axes 0 and 2 smaller than the patch, axis 1 larger
    net = _pointwise_net(1, 2, dim=3, seed=2)
    pred = predict_sliding_window(net, image, (8, 8, 8), 2, InferenceConfig())
    with torch.no_grad():
        direct = net(image[None])[0]
    assert pred.shape == (2, 5, 13, 7)
    assert pred.is_contiguous()
    torch.testing.assert_close(pred, direct, rtol=1e-5, atol=1e-5)


def test_padding_is_zero_valued() -> None:
    """A network with context sees zeros beyond a small image, as a zero-padded direct pass does."""
    torch.manual_seed(0)
    image = torch.randn(1, 6, 6)
    net = _context_net(1, 2, dim=2, seed=3)
    pred = predict_sliding_window(net, image, (10, 10), 2, NO_TTA)
    with torch.no_grad():
        direct = net(torch.nn.functional.pad(image, (2, 2, 2, 2))[None])[0, :, 2:8, 2:8]
    torch.testing.assert_close(pred, direct, rtol=1e-5, atol=1e-5)


def test_result_does_not_depend_on_windows_per_batch() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 18, 21, 12)
    net = _context_net(1, 2, dim=3, seed=4)
    one = predict_sliding_window(net, image, (8, 8, 8), 2, InferenceConfig(windows_per_batch=1, mirror_axes=(1,)))
    seven = predict_sliding_window(net, image, (8, 8, 8), 2, InferenceConfig(windows_per_batch=7, mirror_axes=(1,)))
    torch.testing.assert_close(one, seven, rtol=1e-5, atol=1e-5)


def test_numpy_input_accepted() -> None:
    image = np.random.default_rng(0).normal(size=(1, 9, 10)).astype(np.float64)
    net = _pointwise_net(1, 2, dim=2, seed=5)
    pred = predict_sliding_window(net, image, (8, 8), 2, NO_TTA)
    with torch.no_grad():
        direct = net(torch.as_tensor(image, dtype=torch.float32)[None])[0]
    torch.testing.assert_close(pred, direct, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- TTA


@pytest.mark.parametrize("flip_dims", [(1,), (2, 3), (1, 2, 3)])
def test_mirror_tta_makes_prediction_mirror_equivariant(flip_dims: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 12, 19, 10)  # spans 4, 11, 2 -> 2, 4, 2 windows: a symmetric grid
    net = _context_net(1, 3, dim=3, seed=6)
    patch = (8, 8, 8)
    flipped = torch.flip(image, flip_dims)

    tta = InferenceConfig(windows_per_batch=3)
    pred = predict_sliding_window(net, image, patch, 3, tta)
    pred_of_flipped = predict_sliding_window(net, flipped, patch, 3, tta)
    torch.testing.assert_close(pred_of_flipped, torch.flip(pred, flip_dims), rtol=1e-5, atol=1e-5)

    plain = predict_sliding_window(net, image, patch, 3, NO_TTA)
    plain_of_flipped = predict_sliding_window(net, flipped, patch, 3, NO_TTA)
    assert (plain_of_flipped - torch.flip(plain, flip_dims)).abs().max() > 1e-2


def test_mirror_tta_runs_every_subset_of_axes() -> None:
    net = _CountingNet(_pointwise_net(1, 2, dim=3, seed=7))
    predict_sliding_window(net, torch.randn(1, 8, 8, 8), (8, 8, 8), 2, InferenceConfig(mirror_axes=(0, 2)))
    assert net.batch_sizes == [1] * 4
    net.batch_sizes.clear()
    predict_sliding_window(net, torch.randn(1, 8, 8, 8), (8, 8, 8), 2, InferenceConfig())
    assert net.batch_sizes == [1] * 8


def test_mirror_axis_outside_patch_rejected() -> None:
    with pytest.raises(SelfUNetError, match="mirror_axes"):
        predict_sliding_window(
            _pointwise_net(1, 2, 2, 0), torch.zeros(1, 8, 8), (8, 8), 2, InferenceConfig(mirror_axes=(2,))
        )


# ------------------------------------------------------------------------------------------ folds


def test_fold_probabilities_are_averaged_softmax() -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 12, 17, 10)
    nets = [_pointwise_net(2, 3, dim=3, seed=s) for s in (10, 11, 12)]
    probs = predict_probabilities(nets, image, (8, 8, 8), 3, InferenceConfig(mirror_axes=(1,)))
    with torch.no_grad():
        expected = sum(torch.softmax(n(image[None])[0], dim=0) for n in nets) / 3
    assert probs.shape == (3, 12, 17, 10)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(0), torch.ones(12, 17, 10))
    # averaging probabilities is not averaging logits
    with torch.no_grad():
        from_logits = torch.softmax(sum(n(image[None])[0] for n in nets) / 3, dim=0)
    assert (probs - from_logits).abs().max() > 1e-3


def test_no_networks_rejected() -> None:
    with pytest.raises(SelfUNetError, match="no networks"):
        predict_probabilities([], torch.zeros(1, 8, 8), (8, 8), 2)


# ------------------------------------------------------------------------------------- 2D on 3D


def test_2d_network_on_3d_volume_predicts_slice_by_slice() -> None:
    torch.manual_seed(0)
    volume = torch.randn(2, 5, 13, 11)
    net = _CountingNet(_context_net(2, 3, dim=2, seed=8))
    config = InferenceConfig(windows_per_batch=4)
    pred = predict_sliding_window(net, volume, (8, 8), 3, config)
    assert pred.shape == (3, 5, 13, 11)
    # windows of all slices share batches: ceil(slices x windows per slice / 4) batches, 4 mirror passes each
    per_slice_windows = math.prod(len(s) for s in compute_window_starts((13, 11), (8, 8), 0.5))
    assert per_slice_windows == 6
    assert len(net.batch_sizes) == math.ceil(5 * per_slice_windows / 4) * 4
    assert net.batch_sizes.count(4) == len(net.batch_sizes) - 4  # only the last batch is partial
    for z in range(5):
        per_slice = predict_sliding_window(net.inner, volume[:, z], (8, 8), 3, config)
        torch.testing.assert_close(pred[:, z], per_slice, rtol=1e-5, atol=1e-5)


def test_2d_network_on_3d_volume_smaller_in_plane_than_patch() -> None:
    torch.manual_seed(0)
    volume = torch.randn(1, 3, 6, 20)
    net = _pointwise_net(1, 2, dim=2, seed=9)
    pred = predict_sliding_window(net, volume, (8, 8), 2, InferenceConfig())
    with torch.no_grad():
        direct = net(volume.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)
    torch.testing.assert_close(pred, direct, rtol=1e-5, atol=1e-5)


def test_patch_with_wrong_number_of_axes_rejected() -> None:
    with pytest.raises(SelfUNetError, match="patch"):
        predict_sliding_window(_pointwise_net(1, 2, 2, 0), torch.zeros(1, 8, 8, 8, 8), (8, 8), 2)


def test_wrong_number_of_classes_rejected() -> None:
    with pytest.raises(SelfUNetError, match="num_classes"):
        predict_sliding_window(_pointwise_net(1, 2, 2, 0), torch.zeros(1, 8, 8), (8, 8), 3, NO_TTA)


# -------------------------------------------------------------------------------- AMP, state, config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs_on_cpu_and_returns_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 12, 12, 12)
    net = _context_net(1, 2, dim=3, seed=10)
    full = predict_sliding_window(net, image, (8, 8, 8), 2, InferenceConfig(mirror_axes=(0,)))
    half = predict_sliding_window(net, image, (8, 8, 8), 2, InferenceConfig(mirror_axes=(0,), amp_dtype=dtype))
    assert half.dtype == torch.float32
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05)


def test_network_mode_and_deep_supervision_restored() -> None:
    class DeepSupervised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.deep_supervision = True

        def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
            y = self.conv(x)
            return [y, y[:, :, ::2, ::2]] if self.deep_supervision else y

    net = DeepSupervised().train()
    pred = predict_sliding_window(net, torch.randn(1, 10, 9), (8, 8), 2, NO_TTA)
    assert pred.shape == (2, 10, 9)
    assert net.training is True
    assert net.deep_supervision is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_fraction": 0.0},
        {"step_fraction": 1.5},
        {"windows_per_batch": 0},
        {"mirror_axes": (0, 0)},
        {"amp_dtype": torch.float64},
        {"gaussian_sigma_fraction": 0.0},
    ],
)
def test_bad_inference_config_rejected(kwargs: dict) -> None:
    with pytest.raises(SelfUNetError, match="InferenceConfig"):
        InferenceConfig(**kwargs)
