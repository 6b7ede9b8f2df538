"""Dice + CE loss, ignore mask, batch Dice, deep supervision."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfunet.errors import SelfUNetError
from selfunet.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_target


def _confident_logits(labels: torch.Tensor, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """Logits that put almost all probability on ``labels`` (B, *spatial)."""
    return scale * F.one_hot(labels.clamp(min=0), num_classes).movedim(-1, 1).float()


def _random_labels(shape, num_classes, seed=0) -> torch.Tensor:
    return torch.randint(0, num_classes, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_dice", [True, False])
def test_perfect_prediction_gives_dice_term_minus_one_and_ce_zero(batch_dice):
    labels = _random_labels((2, 8, 8, 8), 3)
    logits = _confident_logits(labels, 3)
    loss = DiceCELoss(batch_dice=batch_dice)
    labels_in, mask = loss._split_target(logits, labels[:, None])
    assert loss.dice_term(logits, labels_in, mask).item() == pytest.approx(-1.0, abs=1e-5)
    assert loss(logits, labels[:, None]).item() == pytest.approx(-1.0, abs=1e-5)


def test_wrong_prediction_scores_worse_than_perfect():
    labels = _random_labels((2, 16, 16), 3)
    loss = DiceCELoss(batch_dice=False)
    perfect = loss(_confident_logits(labels, 3), labels[:, None])
    wrong = loss(_confident_logits((labels + 1) % 3, 3), labels[:, None])
    assert wrong.item() > perfect.item() + 1.0


def test_ignored_voxels_change_nothing():
    labels = _random_labels((2, 12, 12), 3, seed=1)
    logits = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    ignore = torch.zeros_like(labels, dtype=torch.bool)
    ignore[:, :4] = True
    target = torch.where(ignore, torch.full_like(labels, -1), labels)
    loss = DiceCELoss(batch_dice=False)
    base = loss(logits, target[:, None])
    # anything in the ignored region: other logits, other (hidden) labels -> same loss
    logits2 = logits.clone()
    logits2[:, :, :4] = torch.randn(2, 3, 4, 12) * 10
    assert loss(logits2, target[:, None]).item() == pytest.approx(base.item(), abs=1e-6)
    # and equals the loss computed on the kept region alone
    kept = DiceCELoss(batch_dice=False)(logits[:, :, 4:], labels[:, None, 4:])
    assert base.item() == pytest.approx(kept.item(), abs=1e-5)


def test_out_of_range_labels_rejected_with_a_clear_error():
    labels = _random_labels((1, 6, 6), 2)
    target = labels.clone()
    target[0, 0, 0] = -1
    with pytest.raises(SelfUNetError, match="label values"):
        DiceCELoss(batch_dice=False, ignore_label=None)(torch.randn(1, 2, 6, 6), target[:, None])
    target[0, 0, 0] = 2
    with pytest.raises(SelfUNetError, match="2 classes"):
        DiceCELoss(batch_dice=False)(torch.randn(1, 2, 6, 6), target[:, None])


def test_all_voxels_ignored_gives_finite_loss_and_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 1, 4, 4), -1)
    out = DiceCELoss(batch_dice=True)(logits, target)
    assert torch.isfinite(out)
    out.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_batch_dice_differs_from_per_sample_dice_on_an_absent_class():
    # sample 0: class 1 present and predicted exactly; sample 1: class 1 absent but 2 voxels predicted
    labels = torch.zeros(2, 10, 10, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1
    predicted = labels.clone()
    predicted[1, 0, :2] = 1
    logits = _confident_logits(predicted, 2)
    per_sample = DiceCELoss(batch_dice=False)
    batch = DiceCELoss(batch_dice=True)
    lab, mask = per_sample._split_target(logits, labels[:, None])
    # per sample: Dice 1 for sample 0, ~0 for sample 1 -> mean 0.5
    assert per_sample.dice_term(logits, lab, mask).item() == pytest.approx(-0.5, abs=1e-3)
    # batch: 2*16 / (18 + 16)
    assert batch.dice_term(logits, lab, mask).item() == pytest.approx(-32 / 34, abs=1e-3)


def test_background_is_excluded_from_dice():
    # only background in the target and the prediction: every foreground Dice is smooth/smooth = 1
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    logits = _confident_logits(labels, 3)
    loss = DiceCELoss(batch_dice=False)
    lab, mask = loss._split_target(logits, labels[:, None])
    assert loss.dice_term(logits, lab, mask).item() == pytest.approx(-1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (4, [1, 1 / 2, 1 / 4, 0]),
        (5, [1, 1 / 2, 1 / 4, 1 / 8, 0]),
        (6, [1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 0]),
    ],
)
def test_deep_supervision_weights(n, expected):
    total = sum(expected)
    weights = deep_supervision_weights(n)
    assert weights == pytest.approx([e / total for e in expected])
    assert sum(weights) == pytest.approx(1.0)
    assert weights[-1] == 0.0


def test_single_output_weight_is_one():
    assert deep_supervision_weights(1) == [1.0]
    with pytest.raises(SelfUNetError):
        deep_supervision_weights(0)


def test_target_downsampled_by_nearest_keeps_label_values():
    target = _random_labels((2, 1, 8, 16, 16), 4)
    small = downsample_target(target, (4, 8, 8))
    assert small.shape == (2, 1, 4, 8, 8)
    assert small.dtype == target.dtype
    # picks existing voxels (no averaging): one voxel of each 2x2x2 block
    assert torch.equal(small, target[:, :, 1::2, 1::2, 1::2])


def test_deep_supervision_loss_weights_each_output():
    target = _random_labels((2, 1, 16, 16), 3, seed=3)
    outputs = [torch.randn(2, 3, 16 // 2**i, 16 // 2**i, generator=torch.Generator().manual_seed(i))
               for i in range(4)]
    base = DiceCELoss(batch_dice=False)
    weights = deep_supervision_weights(4)
    ds = DeepSupervisionLoss(base, weights)
    expected = sum(w * base(o, downsample_target(target, o.shape[2:])) for w, o in zip(weights, outputs))
    assert ds(outputs, target).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(SelfUNetError, match="outputs"):
        ds(outputs[:3], target)


def test_gradient_flows_to_every_weighted_output():
    target = _random_labels((2, 1, 8, 8, 8), 2, seed=4)
    outputs = [torch.randn(2, 2, 8 // 2**i, 8 // 2**i, 8 // 2**i, requires_grad=True) for i in range(3)]
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(3))(outputs, target)
    loss.backward()
    for o in outputs[:2]:
        assert o.grad is not None and o.grad.abs().sum() > 0
    assert outputs[2].grad is None  # weight 0: no loss at the lowest head


def test_bf16_logits_accepted():
    labels = _random_labels((1, 8, 8), 3)
    logits = torch.randn(1, 3, 8, 8).to(torch.bfloat16).requires_grad_()
    out = DiceCELoss(batch_dice=False)(logits, labels[:, None])
    assert out.dtype == torch.float32
    out.backward()
    assert logits.grad is not None


_REF_LOSS = """
import sys, numpy as np, torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
logits = torch.from_numpy(np.load(sys.argv[1])); target = torch.from_numpy(np.load(sys.argv[2]))
for batch_dice in (True, False):
    loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    print(float(loss(logits, target)))
"""


@pytest.mark.oracle
def test_same_value_as_the_reference_loss(tmp_path, reference_python: str):
    logits = torch.randn(2, 3, 6, 10, 12, generator=torch.Generator().manual_seed(5)) * 3
    target = _random_labels((2, 1, 6, 10, 12), 3, seed=6)
    target[1][target[1] == 2] = 0  # class 2 absent in sample 1: batch and per-sample Dice differ
    np.save(tmp_path / "l.npy", logits.numpy())
    np.save(tmp_path / "t.npy", target.numpy())
    run = subprocess.run([reference_python, "-c", _REF_LOSS, str(tmp_path / "l.npy"), str(tmp_path / "t.npy")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"the reference loss failed: {run.stderr[-2000:]}"
    ref_batch, ref_sample = (float(v) for v in run.stdout.split())
    assert DiceCELoss(batch_dice=True)(logits, target).item() == pytest.approx(ref_batch, abs=1e-5)
    assert DiceCELoss(batch_dice=False)(logits, target).item() == pytest.approx(ref_sample, abs=1e-5)
