"""The cascade's previous-stage segmentation channels: moved like labels (they stay one-hot),
never intensity-augmented, and perturbed by morphology and component removal with the
reference's probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from selfunet.training.augment import AugmentationConfig, Augmenter, generator_for
from selfunet.training.augment_cascade import (
    CLOSING,
    DILATION,
    EROSION,
    OPENING,
    _ball,
    apply_morphology,
    remove_component,
)

OFF = AugmentationConfig(
    p_rotation=0, p_scaling=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_lowres=0,
    p_gamma=0, p_inverted_gamma=0, p_mirror=0, p_seg_morphology=0, p_seg_component_removal=0,
)


def one_hot_batch(read: tuple[int, ...], b: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [B, 1 + K, *read]: one image channel, then the one-hot of a blocky label map."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes + 1, (b, *(-(-r // 5) for r in read)))
    for axis in range(1, len(read) + 1):
        coarse = coarse.repeat(5, axis)
    labels = torch.from_numpy(coarse[(slice(None), *(slice(0, r) for r in read))].copy())
    onehot = torch.stack([(labels == k).float() for k in range(1, classes + 1)], 1)
    image = torch.cat([torch.randn(b, 1, *read), onehot], 1)
    return image, labels[:, None].to(torch.int8)


@pytest.mark.parametrize("patch", [(12, 24, 24), (6, 40, 40), (32, 28)])
def test_one_hot_channels_stay_one_hot_under_every_transform(patch: tuple[int, ...]) -> None:
    cfg = AugmentationConfig(p_rotation=1.0, p_scaling=1.0, p_noise=1.0, p_blur=1.0, p_brightness=1.0,
                             p_contrast=1.0, p_lowres=1.0, p_gamma=1.0, p_mirror=0.5,
                             p_seg_morphology=1.0, p_seg_component_removal=1.0)
    aug = Augmenter(cfg, patch, len(patch), intensity_channels=1)
    image, label = one_hot_batch(aug.read_patch_size, 4, classes=3)
    out, _ = aug(image, label, generator_for(0, 1))
    onehot = out[:, 1:]
    assert set(onehot.unique().tolist()) <= {0.0, 1.0}
    assert (onehot.sum(1) <= 1).all()
    assert onehot.sum() > 0


def test_one_hot_channels_move_exactly_like_the_label() -> None:
    """Without perturbation the moved one-hot channels are the one-hot of the moved label map."""
    patch = (12, 24, 24)
    aug = Augmenter(dataclasses.replace(OFF, p_rotation=1.0, p_scaling=1.0, p_mirror=0.5), patch, 3,
                    intensity_channels=1)
    image, label = one_hot_batch(aug.read_patch_size, 4, classes=2)
    out_image, out_label = aug(image, label, generator_for(3, 0))
    expected = torch.stack([(out_label[:, 0] == k).float() for k in (1, 2)], 1)
    assert torch.equal(out_image[:, 1:], expected)


def test_morphology_matches_scipy_with_a_ball() -> None:
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((20, 22, 18)) > 0.6)
    for radius in (1.0, 2.5, 4.0):
        ball = _ball(radius, 3).astype(bool)
        expected = {
            DILATION: ndimage.binary_dilation(mask, ball),
            EROSION: ndimage.binary_erosion(mask, ball, border_value=1),
            CLOSING: ndimage.binary_erosion(ndimage.binary_dilation(mask, ball), ball, border_value=1),
            OPENING: ndimage.binary_dilation(ndimage.binary_erosion(mask, ball, border_value=1), ball),
        }
        for op, want in expected.items():
            got = apply_morphology(torch.from_numpy(mask), op, radius).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"op {op} radius {radius}")
    assert _ball(1.0, 3).sum() == 7 and _ball(1.0, 2).sum() == 5  # a ball, not a cube


def test_component_removal_takes_one_small_component() -> None:
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[:20, :20, :20] = True  # 8000 voxels: 30 % of the patch, never removed
    mask[25:27, 25:27, 25:27] = True
    mask[25, 2, 2] = True
    removed = {int(remove_component(mask, pick, 0.15).sum()) for pick in np.linspace(0, 0.99, 9)}
    assert removed == {8, 1}
    big_only = np.zeros_like(mask)
    big_only[:20, :20, :20] = True
    assert remove_component(big_only, 0.5, 0.15) is None
    assert remove_component(np.zeros_like(mask), 0.5, 0.15) is None


def test_perturbation_parameters_have_the_reference_distributions() -> None:
    aug = Augmenter(AugmentationConfig(), (16, 32, 32), 3, intensity_channels=1)
    n, k = 20000, 3
    params = aug.draw(n, 1, torch.Generator().manual_seed(5), seg_channels=k)
    morph = params.seg_morphology
    assert abs(morph.double().mean() - 0.4 * 0.5) < 0.01
    assert abs(morph.any(1).double().mean() - 0.4 * (1 - 0.5**k)) < 0.015
    assert abs(params.seg_component_removal.double().mean() - 0.2 * 0.5) < 0.008
    ops = params.seg_morphology_op[morph].numpy()
    assert np.allclose(np.bincount(ops, minlength=4) / ops.size, 0.25, atol=0.02)
    radius = params.seg_morphology_radius[morph].numpy()
    assert stats.kstest(radius, stats.uniform(1.0, 7.0).cdf).pvalue > 1e-3
    assert all(sorted(row) == list(range(k)) for row in params.seg_morphology_order.tolist()[:100])


def test_perturbation_only_changes_selected_classes_and_keeps_one_hot() -> None:
    patch = (16, 32, 32)
    cfg = dataclasses.replace(OFF, p_seg_morphology=1.0, p_seg_morphology_per_class=0.5)
    aug = Augmenter(cfg, patch, 3, intensity_channels=1)
    image, label = one_hot_batch(patch, 6, classes=3, seed=2)
    params = aug.draw(6, 1, torch.Generator().manual_seed(0), seg_channels=3)
    out, _ = aug.apply(image, label, params)
    assert torch.equal(out[:, :1], image[:, :1])  # the image channel untouched (all intensity off)
    changed = (out[:, 1:] != image[:, 1:]).flatten(2).any(2)
    selected = params.seg_morphology
    # a class changes only if selected, or if a selected class's dilation took voxels from it
    dilated_somewhere = (selected & (params.seg_morphology_op == DILATION)) | (
        selected & (params.seg_morphology_op == CLOSING))
    assert not (changed & ~selected & ~dilated_somewhere.any(1, keepdim=True)).any()
    assert changed.any()
    assert (out[:, 1:].sum(1) <= 1).all()
