"""Training loss (docs/explanation/design.md#loss): soft Dice + cross-entropy, and its deep-supervision wrapper.

Sign convention: the Dice term is the *negative* mean soft Dice, so it lies in [-1, 0] and a
perfect prediction gives about -1 (and a total loss of about -1, since cross-entropy is then
about 0). Negative Dice keeps "lower is better" for the sum without an arbitrary ``1 -`` offset,
and makes logged loss values comparable with the reference implementation's.

Voxels labelled ``ignore_label`` (default -1: outside the non-zero mask, docs/explanation/design.md#fingerprint, or
padding) are left out of both terms. Note: the reference implementation instead relabels -1 as
background before the loss; pass ``ignore_label=None`` (and relabel -1 -> 0 upstream) to do the
same. The trainer does that and passes the dataset's ``ignore`` label value instead, when it has
one (sparse annotation): those voxels then get exactly zero gradient.

Region-based training (:class:`RegionBCEDiceLoss`) has one sigmoid output per region and turns
the label map into region masks itself, so deep supervision downsamples the label map (nearest)
exactly as for classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfunet.errors import SelfUNetError


class DiceCELoss(nn.Module):
    """Soft Dice over the softmax (foreground classes only) + cross-entropy, weighted 1:1.

    ``batch_dice`` sums intersection and volumes over the whole batch before dividing (one Dice
    per class), which is steadier when a class is small or absent in single samples; otherwise
    each sample gets its own Dice per class and the Dices are averaged.
    """

    def __init__(
        self,
        batch_dice: bool,
        smooth: float = 1e-5,
        ignore_label: int | None = -1,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise SelfUNetError(f"DiceCELoss: smooth must be >= 0, got {smooth}.")
        if dice_weight < 0 or ce_weight < 0:
            raise SelfUNetError(f"DiceCELoss: weights must be >= 0, got dice {dice_weight}, ce {ce_weight}.")
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ignore_label = ignore_label
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight

    def _split_target(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(labels (B, *spatial) with ignored voxels set to 0, mask (B, 1, *spatial) or None)."""
        if target.ndim == logits.ndim:
            if target.shape[1] != 1:
                raise SelfUNetError(f"loss target must have one channel, got shape {tuple(target.shape)}.")
            target = target[:, 0]
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise SelfUNetError(
                f"loss target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}."
            )
        target = target.long()
        keep = None if self.ignore_label is None else target != self.ignore_label
        if keep is not None and not bool(keep.all()):
            target = torch.where(keep, target, torch.zeros_like(target))
        else:
            keep = None
        # one check per batch; an out-of-range label would otherwise be a cryptic CUDA assert
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= logits.shape[1]:
            raise SelfUNetError(
                f"loss target holds label values in [{low}, {high}] but the network predicts "
                f"{logits.shape[1]} classes (0..{logits.shape[1] - 1}; ignore_label={self.ignore_label}); "
                "check the dataset labels and the plan's num_classes."
            )
        return target, None if keep is None else keep.unsqueeze(1)

    def dice_term(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Negative mean soft Dice over foreground classes, in [-1, 0]."""
        probs_all = torch.softmax(logits.float(), dim=1)
        # float one-hot built by scatter: 4 bytes per class and voxel instead of F.one_hot's int64
        onehot = torch.zeros_like(probs_all).scatter_(1, labels.unsqueeze(1), 1.0)[:, 1:]
        probs = probs_all[:, 1:]
        if mask is not None:
            probs = probs * mask
            onehot = onehot * mask
        axes = [0, *range(2, logits.ndim)] if self.batch_dice else list(range(2, logits.ndim))
        intersect = (probs * onehot).sum(axes)
        volumes = probs.sum(axes) + onehot.sum(axes)
        dice = (2 * intersect + self.smooth) / torch.clamp(volumes + self.smooth, min=1e-8)
        return -dice.mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] < 2:
            raise SelfUNetError(f"DiceCELoss needs >= 2 classes (incl. background), got {logits.shape[1]}.")
        labels, mask = self._split_target(logits, target)
        if mask is None:
            ce = F.cross_entropy(logits.float(), labels)
        elif bool(mask.any()):
            ce_labels = torch.where(mask[:, 0], labels, torch.full_like(labels, -100))
            ce = F.cross_entropy(logits.float(), ce_labels, ignore_index=-100)
        else:
            # every voxel ignored: no signal, but keep the graph so backward() still works
            ce = logits.float().sum() * 0.0
        return self.ce_weight * ce + self.dice_weight * self.dice_term(logits, labels, mask)


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """Loss weights per output, full resolution first: 1/2^i, the last (lowest) set to 0, sum 1.

    The heads sit on the decoder stages only, so output i has the resolution of encoder stage i
    and the bottleneck has no head at all. Zeroing the lowest head therefore leaves the two
    lowest resolutions of the network (the bottleneck's and the deepest decoder stage's) without
    loss, which is how we read the papers' "the two lowest resolutions carry no loss". With a
    single output the weight is 1.
    """
    if num_outputs < 1:
        raise SelfUNetError(f"deep supervision needs at least one output, got {num_outputs}.")
    weights = [1.0 / 2**i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, 1, *spatial) label map to ``shape`` (spatial only)."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    resized = F.interpolate(target.float(), size=tuple(shape), mode="nearest-exact")
    return resized.to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over the network's outputs, each against a resized target."""

    def __init__(self, base: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise SelfUNetError(f"deep supervision weights must be >= 0 with a positive sum, got {list(weights)}.")
        self.base = base
        self.weights = [float(w) for w in weights]

    def forward(self, outputs: Sequence[torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        if len(outputs) != len(self.weights):
            raise SelfUNetError(
                f"the network returned {len(outputs)} outputs but {len(self.weights)} deep supervision "
                "weights were given; build the weights with deep_supervision_weights(len(outputs))."
            )
        if target.ndim == outputs[0].ndim - 1:
            target = target.unsqueeze(1)
        total: torch.Tensor | None = None
        for weight, output in zip(self.weights, outputs):
            if weight == 0.0:
                continue
            term = weight * self.base(output, downsample_target(target, output.shape[2:]))
            total = term if total is None else total + term
        assert total is not None  # the constructor guarantees a positive weight
        return total


class RegionBCEDiceLoss(nn.Module):
    """Binary cross-entropy + soft Dice over sigmoid outputs, one per region, weighted 1:1.

    ``regions`` lists the label values of each region (output channel r is region r); regions may
    overlap. There is no background output, so the Dice covers every channel. Voxels labelled
    ``ignore_label`` are masked out of both terms (zero gradient there).
    """

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool, smooth: float = 1e-5,
                 ignore_label: int | None = None, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        if not regions or any(len(r) == 0 for r in regions):
            raise SelfUNetError(f"RegionBCEDiceLoss: every region needs at least one label value, got {regions}.")
        if smooth < 0 or dice_weight < 0 or bce_weight < 0:
            raise SelfUNetError("RegionBCEDiceLoss: smooth and the weights must be >= 0.")
        self.regions = [torch.tensor(sorted(set(int(v) for v in r))) for r in regions]
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ignore_label = ignore_label
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def region_targets(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Label map ``(B, [1,] *spatial)`` -> float region masks ``(B, R, *spatial)`` and the
        keep mask ``(B, 1, *spatial)`` (None when nothing is ignored)."""
        labels = target[:, 0] if target.ndim >= 2 and target.shape[1] == 1 else target
        labels = labels.long()
        masks = torch.stack([torch.isin(labels, r.to(labels.device)) for r in self.regions], dim=1).float()
        keep = None
        if self.ignore_label is not None:
            kept = labels != self.ignore_label
            if not bool(kept.all()):
                keep = kept.unsqueeze(1).float()
        return masks, keep

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.regions):
            raise SelfUNetError(
                f"the network predicts {logits.shape[1]} channel(s) but {len(self.regions)} regions are declared; "
                "check the plan's label_scheme."
            )
        masks, keep = self.region_targets(target)
        if masks.shape[2:] != logits.shape[2:] or masks.shape[0] != logits.shape[0]:
            raise SelfUNetError(
                f"loss target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}."
            )
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
        probs = torch.sigmoid(logits)
        if keep is None:
            bce_term = bce.mean()
        else:
            bce_term = (bce * keep).sum() / torch.clamp(keep.sum() * logits.shape[1], min=1.0)
            probs = probs * keep
            masks = masks * keep
        axes = [0, *range(2, logits.ndim)] if self.batch_dice else list(range(2, logits.ndim))
        intersect = (probs * masks).sum(axes)
        volumes = probs.sum(axes) + masks.sum(axes)
        dice = (2 * intersect + self.smooth) / torch.clamp(volumes + self.smooth, min=1e-8)
        return self.bce_weight * bce_term - self.dice_weight * dice.mean()


def build_loss(label_scheme, batch_dice: bool, num_outputs: int) -> nn.Module:
    """The plan's loss wrapped for deep supervision: Dice + CE for classes, Dice + BCE for regions.

    The trainer relabels -1 (outside the non-zero mask) as background before the loss, like the
    reference; the dataset's ignore label (if any) is what the loss leaves out.
    """
    if label_scheme.has_regions:
        base: nn.Module = RegionBCEDiceLoss([r.labels for r in label_scheme.regions], batch_dice=batch_dice,
                                            ignore_label=label_scheme.ignore_label)
    else:
        ignore = label_scheme.ignore_label
        base = DiceCELoss(batch_dice=batch_dice, ignore_label=-1 if ignore is None else ignore)
    return DeepSupervisionLoss(base, deep_supervision_weights(num_outputs))
