"""Training batch ``i`` of a run: draw its augmentation, read what it needs, augment it where the
training device is.

The order matters for speed: the augmentation parameters are drawn first (from ``(seed, i)``
only), so the sampler reads per sample only the box the drawn rotation/scaling needs instead of
the whole read region (:meth:`selfunet.training.augment.Augmenter.read_boxes`). Then:

* training on the CPU: the loader's worker augments the batch too (``augment_here``), so it
  overlaps with the training step;
* training on CUDA: the worker only reads (into page-locked memory where it can), the main
  thread copies the boxes to the GPU without blocking and augments them there (:func:`finish`), so
  the host's work per batch is the read and nothing else.

Either way a batch is a pure function of ``(seed, i)`` (the same parameters on either device), so
resuming and any number of workers give the same batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selfunet.training.augment import AugmentationParams, Augmenter, generator_for
from selfunet.training.sampling import BoxBatch, PatchSampler


@dataclass
class RawBatch:
    """Read but not yet augmented: the boxes and the parameters drawn for them."""

    boxes: BoxBatch
    params: AugmentationParams

    def pin_memory(self) -> RawBatch:
        return RawBatch(self.boxes.pin_memory(), self.params)


@dataclass
class TrainBatchSource:
    """``source(i)`` is training batch ``i``: an augmented (image, label) pair when
    ``augment_here``, else a :class:`RawBatch` for :func:`finish` on the device.

    Picklable (sampler and a CPU augmenter), so process workers can run it.
    """

    sampler: PatchSampler
    augmenter: Augmenter
    """on the CPU: it draws (always) and applies (when ``augment_here``)."""
    seed: int
    augment_here: bool
    allocate: Callable[..., torch.Tensor] | None = None
    """how the read boxes are allocated (page-locked memory for thread workers on CUDA)."""

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | RawBatch:
        generator = generator_for(self.seed, index)
        params = self.augmenter.draw_for(self.sampler.num_channels, self.sampler.batch_size, generator)
        boxes = self.augmenter.read_boxes(params)
        kwargs = {} if self.allocate is None else {"allocate": self.allocate}
        read = self.sampler.sample_boxes(self.seed, index, boxes, **kwargs)
        if self.augment_here:
            return self.augmenter.apply_boxes(read.images, read.labels, read.lowers, params)
        return RawBatch(read, params)


def finish(
    item: tuple[torch.Tensor, torch.Tensor] | RawBatch, augmenter: Augmenter
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) on ``augmenter.device``: a raw batch is copied (non-blocking) and augmented there."""
    if isinstance(item, RawBatch):
        return augmenter.apply_boxes(item.boxes.images, item.boxes.labels, item.boxes.lowers, item.params)
    image, label = item
    device = augmenter.device
    return image.to(device, non_blocking=True), label.to(device, non_blocking=True)


def pinned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked host memory (only where CUDA is available)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)
