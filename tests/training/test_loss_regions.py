"""Region-based loss (sigmoid BCE + Dice) and the ignore label: ignored voxels give zero gradient."""

from __future__ import annotations

import pytest
import torch

from selfunet.data.labels import LabelScheme, Region
from selfunet.training.loss import DiceCELoss, RegionBCEDiceLoss, build_loss

REGIONS = [[1, 2, 3], [2, 3], [3]]


def _target(generator: torch.Generator, ignore: int | None) -> torch.Tensor:
    target = torch.randint(0, 4, (2, 1, 6, 8, 8), generator=generator)
    if ignore is not None:
        target[:, :, :3] = ignore  # half the volume unannotated
    return target


def _gradient(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    loss(logits, target).backward()
    return logits.grad


@pytest.mark.parametrize("kind", ["classes", "regions"])
def test_ignored_voxels_get_exactly_zero_gradient_and_do_not_change_the_loss(kind: str) -> None:
    generator = torch.Generator().manual_seed(0)
    ignore = 4
    target = _target(generator, ignore)
    channels = 4 if kind == "classes" else 3
    loss = (DiceCELoss(batch_dice=False, ignore_label=ignore) if kind == "classes"
            else RegionBCEDiceLoss(REGIONS, batch_dice=False, ignore_label=ignore))
    logits = torch.randn(2, channels, 6, 8, 8, generator=generator)
    grad = _gradient(loss, logits, target)
    ignored = (target == ignore).expand_as(grad)
    assert torch.count_nonzero(grad[ignored]) == 0
    assert torch.count_nonzero(grad[~ignored]) > 0
    # change the logits at ignored voxels (and the voxels' target stays ignore): loss unchanged
    changed = logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum()), generator=generator) * 10
    assert torch.allclose(loss(logits, target), loss(changed, target))
    # turning an ignored voxel into an annotated one does change the loss
    annotated = target.clone()
    annotated[0, 0, 0, 0, 0] = 3
    assert not torch.allclose(loss(logits, target), loss(logits, annotated))


def test_region_loss_prefers_the_right_nested_masks() -> None:
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    target[0, 0, 1:3, 1:3, 1:3] = 2
    target[0, 0, 1, 1, 1] = 3
    loss = RegionBCEDiceLoss(REGIONS, batch_dice=True)
    masks, keep = loss.region_targets(target)
    assert keep is None and masks.shape == (1, 3, 4, 4, 4)
    perfect = (masks * 2 - 1) * 20  # logits +-20 from the true masks
    assert float(loss(perfect, target)) < -0.99
    assert float(loss(-perfect, target)) > 1.0


def test_build_loss_follows_the_label_scheme() -> None:
    regions = LabelScheme(regions=[Region(name=str(i), labels=r) for i, r in enumerate(REGIONS)],
                          regions_class_order=[1, 2, 3])
    assert isinstance(build_loss(regions, True, 2).base, RegionBCEDiceLoss)
    plain = build_loss(LabelScheme(ignore_label=4), True, 2).base
    assert isinstance(plain, DiceCELoss) and plain.ignore_label == 4
