"""Sliding-window inference (docs/explanation/design.md#inference).

A network trained on patches sees a whole case as overlapping patch-sized windows (step = half a
patch). Each window's logits are weighted by a Gaussian centred on the window before they are
summed, because a fully convolutional network is least reliable near a window border where it
lacks context; dividing by the summed weights turns the sum into a weighted average. Test-time
augmentation (TTA) mirrors every window along every subset of the mirror axes and averages the
mirrored-back logits. Folds are averaged as softmax probabilities.

Memory: a large CT volume times K classes in float32 is tens of gigabytes, so the sums are never
kept for the whole volume. Windows are visited in row order (spatial axis 0, the slowest) and
:func:`stream_logits` hands over each slab of rows as soon as no window left to run touches it;
only the rows under the windows in flight (about one patch height) are kept, on
``accumulate_device`` (CPU by default), and only a batch of windows at a time travels to the
compute device. The weight sum does not depend on the data, so it is kept once per window grid
(not per class, and for 2D-on-3D not per slice). docs/explanation/prediction-memory.md follows a
slab to the written label map.

Exactness: the window grid and the Gaussian are both mirror-symmetric (one rare exception in
:func:`compute_window_starts`), so for any network, predicting a mirrored image with TTA on that
axis gives exactly the mirrored prediction. This is
why :func:`compute_window_starts` rounds mirror-symmetrically and the Gaussian is centred at
``(p - 1) / 2`` rather than at ``p // 2``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from selfunet.errors import SelfUNetError
from selfunet.inference import cpu_backend
from selfunet.inference.inference_config import InferenceConfig
from selfunet.runtime import check_stop

log = logging.getLogger(__name__)

#: the most bytes of network output one batch of windows may hold (float32, all classes): with a
#: hundred classes a 128^3 window alone is 0.8 GB, so such plans predict one window at a time.
BATCH_OUTPUT_BYTES = 256 * 2**20
#: the most bytes of finished rows (float32, all classes) handed over at once.
HANDOVER_BYTES = 128 * 2**20

Window = tuple[slice | int, ...]
"""Index into the spatial axes of the (padded) image: an ``int`` picks a slice (2D-on-3D)."""


def gaussian_importance_map(patch_size: Sequence[int], sigma_fraction: float = 1.0 / 8.0) -> torch.Tensor:
    """Gaussian weight of every voxel of a window, max 1, strictly positive.

    Separable (a product of 1D Gaussians), centred at ``(p - 1) / 2`` so the map is exactly
    mirror-symmetric. Zeros (underflow for a tiny sigma) are raised to the smallest non-zero
    value: a voxel covered only by window borders must still get a non-zero weight sum.
    """
    if len(patch_size) == 0 or any(int(p) < 1 for p in patch_size):
        raise SelfUNetError(f"gaussian_importance_map: patch_size={list(patch_size)} must be positive sizes")
    if sigma_fraction <= 0:
        raise SelfUNetError(f"gaussian_importance_map: sigma_fraction={sigma_fraction} must be > 0")
    gmap = torch.ones((), dtype=torch.float64)
    for p in patch_size:
        p = int(p)
        coords = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        sigma = p * sigma_fraction
        g = torch.exp(-0.5 * (coords / sigma) ** 2)
        gmap = gmap.unsqueeze(-1) * g
    gmap = (gmap / gmap.max()).to(torch.float32)
    positive = gmap[gmap > 0]
    floor = positive.min() if positive.numel() else torch.tensor(1.0)
    return torch.clamp(gmap, min=float(floor))


def compute_window_starts(
    image_shape: Sequence[int], patch_size: Sequence[int], step_fraction: float = 0.5
) -> list[list[int]]:
    """Per axis, the window starts: evenly spaced, first 0, last ``size - patch``.

    Number of windows per axis = ceil((size - patch) / (patch * step_fraction)) + 1, so
    neighbouring windows overlap by at least ``1 - step_fraction`` of a patch. Starts are rounded
    half-up in the first half of the axis and mirrored into the second half, so the grid is
    symmetric under flipping the axis (see module docstring) -- except, unavoidably, for the
    middle window of an odd count when ``size - patch`` is odd.
    """
    if len(image_shape) != len(patch_size):
        raise SelfUNetError(
            f"compute_window_starts: image shape {list(image_shape)} and patch {list(patch_size)} "
            "have different numbers of axes"
        )
    if not 0.0 < step_fraction <= 1.0:
        raise SelfUNetError(f"compute_window_starts: step_fraction={step_fraction} must be in (0, 1]")
    starts: list[list[int]] = []
    for axis, (size, patch) in enumerate(zip(image_shape, patch_size)):
        size, patch = int(size), int(patch)
        if size < patch:
            raise SelfUNetError(
                f"compute_window_starts: axis {axis} has size {size} < patch {patch}; pad the image "
                "to at least the patch size first (predict_sliding_window does)"
            )
        span = size - patch
        n = math.ceil(span / (patch * step_fraction)) + 1
        if n == 1:
            starts.append([0])
            continue
        step = span / (n - 1)
        axis_starts = [0] * n
        for i in range(n // 2):
            axis_starts[i] = math.floor(i * step + 0.5)
            axis_starts[n - 1 - i] = span - axis_starts[i]
        if n % 2:  # the middle window; symmetric only when span is even
            axis_starts[n // 2] = math.floor(span / 2 + 0.5)
        starts.append(sorted(set(axis_starts)))
    return starts


def _steps_in_inference_mode(generator_function):
    """Run every step of a generator in inference mode, never across a ``yield``.

    Holding ``torch.inference_mode()`` open across ``yield`` leaks it into the caller, and two
    such generators interleaved (the members of an ensemble) break each other: the first to
    finish turns the mode off under the other, whose in-place sums on inference tensors then
    fail. Entered and left within each step, the mode is the generator's own business."""

    @functools.wraps(generator_function)
    def wrapper(*args, **kwargs):
        steps = generator_function(*args, **kwargs)
        while True:
            with torch.inference_mode():
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item

    return wrapper


@_steps_in_inference_mode
def stream_logits(
    networks: Sequence[nn.Module],
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    config: InferenceConfig | None = None,
) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """Logits of every network, one finished slab of rows (spatial axis 0) at a time.

    Yields ``(start, stop, [logits [K, stop - start, *spatial[1:]] per network])`` covering the
    image's rows in order. ``image`` is ``[C, *spatial]``. A patch with one axis fewer than the
    image (a 2D network on a 3D volume) is applied slice by slice along spatial axis 0, windows of
    several slices sharing a forward pass. Axes smaller than the patch are zero-padded (centred)
    and cropped back.

    Why slabs: windows are visited in row order, so once every window starting above a row has
    been added, that row's sums are final. Only the rows still covered by windows in flight (about
    one patch height) are kept per network, whatever the image's height: memory grows with
    classes x patch height x slice area, not classes x volume. The windows, their batches and
    the order of every sum are those of the whole-volume computation, so the numbers are the same.
    Several networks (folds) advance together, batch by batch, so their slabs finish together.
    """
    config = config or InferenceConfig()
    image = torch.as_tensor(image)
    if image.ndim < 2:
        raise SelfUNetError(f"predict_sliding_window: image of shape {list(image.shape)} must be [C, *spatial]")
    if len(networks) == 0:
        raise SelfUNetError("predict_probabilities: no networks given (did the checkpoint list come out empty?)")
    patch = [int(p) for p in patch_size]
    spatial = list(image.shape[1:])
    if len(patch) == len(spatial):
        slice_axis = False
    elif len(patch) == len(spatial) - 1:
        slice_axis = True
    else:
        raise SelfUNetError(
            f"predict_sliding_window: patch {patch} does not fit image [C, *spatial]={list(image.shape)}; "
            "the patch needs as many axes as the image's spatial axes (or one fewer for a 2D network "
            "on a 3D volume)"
        )
    mirror_axes = _resolve_mirror_axes(config.mirror_axes, len(patch))
    device = _compute_device(networks[0], config.device)
    acc_device = torch.device(config.accumulate_device)

    # Pad the window axes (not the slice axis) up to the patch, centred like the training crops.
    window_shape = spatial[1:] if slice_axis else spatial
    pad_before = [max(p - s, 0) // 2 for s, p in zip(window_shape, patch)]
    pad_after = [max(p - s, 0) - b for s, p, b in zip(window_shape, patch, pad_before)]
    if any(pad_before) or any(pad_after):
        torch_pad: list[int] = []
        for b, a in zip(reversed(pad_before), reversed(pad_after)):
            torch_pad += [b, a]
        image = torch.nn.functional.pad(image, torch_pad, mode="constant", value=0.0)
    padded = list(image.shape[1:])
    padded_window_shape = padded[1:] if slice_axis else padded

    starts = compute_window_starts(padded_window_shape, patch, config.step_fraction)
    grid = [tuple(slice(s, s + p) for s, p in zip(combo, patch)) for combo in itertools.product(*starts)]
    windows: list[Window] = [(z, *w) for z in range(padded[0]) for w in grid] if slice_axis else list(grid)

    gaussian = gaussian_importance_map(patch, config.gaussian_sigma_fraction)
    gaussian_acc = gaussian.to(acc_device)
    max_windows = None if config.max_window_voxels is None else max(1, config.max_window_voxels // math.prod(patch))
    if max_windows is not None and len(windows) > max_windows:
        windows = _bounded_windows(padded, patch, slice_axis, max_windows)
        log.info("sliding window: %d of the grid's windows at most (max_window_voxels=%d): %d predicted",
                 max_windows, config.max_window_voxels, len(windows))
        # weights of the windows kept, per voxel; a voxel no window covers keeps logits 0 (background)
        weight_sum = torch.zeros(padded, dtype=torch.float32, device=acc_device)
        for w in windows:
            weight_sum[w] += gaussian_acc
        weight_sum[weight_sum == 0] = 1.0
        slice_weights = False
    else:
        weight_sum = torch.zeros(padded_window_shape, dtype=torch.float32, device=acc_device)
        for w in grid:
            weight_sum[w] += gaussian_acc
        slice_weights = slice_axis
    gaussian_dev = gaussian.to(device)

    def rows(w: Window) -> tuple[int, int]:
        first = w[0]
        return (first, first + 1) if isinstance(first, int) else (first.start, first.stop)

    # a batch's outputs (and their mirrored and weighted copies) grow with the classes: cap them
    per_batch = max(1, min(config.windows_per_batch, BATCH_OUTPUT_BYTES // (4 * num_classes * math.prod(patch))))
    batches = [windows[i : i + per_batch] for i in range(0, len(windows), per_batch)]
    # rows [first start of a batch, last stop of that batch) are the most ever live at once
    capacity = max(rows(b[-1])[1] - rows(b[0])[0] for b in batches)
    sums = [torch.zeros([num_classes, capacity, *padded[1:]], dtype=torch.float32, device=acc_device)
            for _ in networks]
    base = 0  # padded row of sums[:, 0]
    # rows of the padded image -> rows of the image, and the crop of the other axes
    row_offset = 0 if slice_axis else pad_before[0]
    rest_crop = [slice(b, b + s) for b, s in zip(pad_before[int(not slice_axis):], window_shape[int(not slice_axis):])]
    padded_any = any(pad_before) or any(pad_after)

    log.debug(
        "sliding window: image %s (padded %s), patch %s, %d windows, mirror axes %s, %d network(s), %d live rows",
        spatial, padded, patch, len(windows), mirror_axes, len(networks), capacity,
    )
    with contextlib.ExitStack() as stack:
        for net in networks:
            stack.enter_context(_eval_without_deep_supervision(net))
        # torch or, on a CPU where it is faster, the same network compiled by OpenVINO
        runners = cpu_backend.for_inference(networks, patch, device, config.amp_dtype, config.backend)
        # finished rows are handed over a few at a time: their logits, probabilities and reverted
        # copies then stay small next to the sums in flight, whatever the number of classes
        row_bytes = 4 * num_classes * math.prod(padded[1:])
        rows_per_yield = max(1, HANDOVER_BYTES // row_bytes)

        def finish(done: int) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
            """Hand over rows [base, done), which no window left to run touches."""
            nonlocal base
            while base < done:
                n = min(done - base, capacity)  # more only where no window covers rows (a capped grid)
                for lo in range(0, n, rows_per_yield):
                    hi = min(lo + rows_per_yield, n)
                    weights = weight_sum if slice_weights else weight_sum[base + lo : base + hi]
                    # rows of the image (the padding rows of axis 0 are dropped)
                    first, last = max(base + lo - row_offset, 0), min(base + hi - row_offset, spatial[0])
                    if last > first:
                        keep = (slice(None), slice(first + row_offset - base - lo, last + row_offset - base - lo),
                                *rest_crop)
                        logits = [(acc[:, lo:hi] / weights)[keep] for acc in sums]
                        yield first, last, [t.contiguous() if padded_any else t for t in logits]
                for acc in sums:  # move the live rows to the front, block by block (no copy of them all)
                    for start in range(0, capacity - n, n):
                        stop = min(start + n, capacity - n)
                        acc[:, start:stop] = acc[:, start + n : stop + n]
                    acc[:, capacity - n :] = 0
                base += n

        for index, batch in enumerate(_progress(batches, config.progress)):
            check_stop("during a sliding-window prediction")  # a stop request is answered within one batch
            yield from finish(rows(batch[0])[0])
            x = torch.stack([image[(slice(None), *w)] for w in batch]).to(device, torch.float32)
            for net, acc in zip(runners, sums):
                out = _predict_mirrored(net, x, mirror_axes, config.amp_dtype, device)
                if out.shape[1] != num_classes or list(out.shape[2:]) != patch:
                    raise SelfUNetError(
                        f"predict_sliding_window: the network returned {list(out.shape)} for input "
                        f"{list(x.shape)}; expected [N, {num_classes}, *{patch}] (num_classes wrong, or not "
                        "fully convolutional at this patch size?)"
                    )
                # weighted in place unless the network handed back (a view of) its input, which the
                # next network still reads, or an expanded view
                own = out.is_contiguous() and out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
                out = (out.mul_(gaussian_dev) if own else out * gaussian_dev).to(acc_device)
                for i, w in enumerate(batch):
                    first = w[0] - base if isinstance(w[0], int) else slice(w[0].start - base, w[0].stop - base)
                    acc[(slice(None), first, *w[1:])] += out[i]
            yield from finish(rows(batches[index + 1][0])[0] if index + 1 < len(batches) else padded[0])


def _bounded_windows(padded: list[int], patch: list[int], slice_axis: bool, max_windows: int) -> list[Window]:
    """At most ``max_windows`` windows (small budgets): the grid without overlap (step = patch),
    and where even that has more, the windows nearest the centre of the image, in row order."""
    window_axes = padded[1:] if slice_axis else padded
    starts = compute_window_starts(window_axes, patch, 1.0)
    grid = [tuple(slice(s, s + p) for s, p in zip(combo, patch)) for combo in itertools.product(*starts)]
    windows: list[Window] = [(z, *w) for z in range(padded[0]) for w in grid] if slice_axis else list(grid)
    if len(windows) <= max_windows:
        return windows

    def distance(w: Window) -> float:
        centres = [(i + 0.5) if isinstance(i, int) else (i.start + i.stop) / 2 for i in w]
        return sum(((c - n / 2) / n) ** 2 for c, n in zip(centres, padded))

    nearest = sorted(range(len(windows)), key=lambda i: (distance(windows[i]), i))[:max_windows]
    return [windows[i] for i in sorted(nearest)]


def predict_sliding_window(
    network: nn.Module,
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    config: InferenceConfig | None = None,
) -> torch.Tensor:
    """Logits ``[K, *spatial]`` (float32, on ``config.accumulate_device``) of one whole case.

    The slabs of :func:`stream_logits` put together; prediction of real cases consumes the slabs
    as they come (:mod:`selfunet.inference.streaming`) and never holds this array.
    """
    config = config or InferenceConfig()
    image = torch.as_tensor(image)
    out: torch.Tensor | None = None
    for start, stop, (logits,) in stream_logits([network], image, patch_size, num_classes, config):
        if out is None:
            out = torch.empty([num_classes, *image.shape[1:]], dtype=torch.float32, device=logits.device)
        out[:, start:stop] = logits
    if out is None:  # pragma: no cover - every padded image has a row
        raise SelfUNetError(f"predict_sliding_window: image of shape {list(image.shape)} has no rows")
    return out


def average_probabilities(logits: Sequence[torch.Tensor], activation: str = "softmax") -> torch.Tensor:
    """Softmax (regions: sigmoid) of each network's logits, averaged: the fold ensemble.

    Averaging probabilities, not logits, is the method's rule: a fold that is confidently wrong
    cannot outvote the others by an unbounded margin.
    """
    if activation not in ("softmax", "sigmoid"):
        raise SelfUNetError(f"predict_probabilities: activation must be softmax or sigmoid, got {activation!r}.")

    def probabilities(values: torch.Tensor) -> torch.Tensor:
        return torch.softmax(values, dim=0) if activation == "softmax" else torch.sigmoid(values)

    total = probabilities(logits[0])
    for values in logits[1:]:
        total += probabilities(values)
    total /= len(logits)
    return total


@_steps_in_inference_mode
def stream_probabilities(
    networks: Sequence[nn.Module],
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    config: InferenceConfig | None = None,
    activation: str = "softmax",
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, probabilities [K, stop - start, ...])`` slabs averaged over ``networks``."""
    if activation not in ("softmax", "sigmoid"):
        raise SelfUNetError(f"predict_probabilities: activation must be softmax or sigmoid, got {activation!r}.")
    for start, stop, logits in stream_logits(networks, image, patch_size, num_classes, config):
        yield start, stop, average_probabilities(logits, activation)


def predict_probabilities(
    networks: Sequence[nn.Module],
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    config: InferenceConfig | None = None,
    activation: str = "softmax",
) -> torch.Tensor:
    """Softmax (or, for region-based models, sigmoid) probabilities ``[K, *spatial]`` averaged over
    several networks (folds, members), for the whole case at once."""
    if len(networks) == 0:
        raise SelfUNetError("predict_probabilities: no networks given (did the checkpoint list come out empty?)")
    image = torch.as_tensor(image)
    out: torch.Tensor | None = None
    for start, stop, probabilities in stream_probabilities(networks, image, patch_size, num_classes, config,
                                                           activation):
        if out is None:
            out = torch.empty([num_classes, *image.shape[1:]], dtype=torch.float32, device=probabilities.device)
        out[:, start:stop] = probabilities
    if out is None:  # pragma: no cover - every padded image has a row
        raise SelfUNetError(f"predict_probabilities: image of shape {list(image.shape)} has no rows")
    return out


# --------------------------------------------------------------------------------------------- helpers


def _resolve_mirror_axes(mirror_axes: tuple[int, ...] | None, ndim: int) -> tuple[int, ...]:
    if mirror_axes is None:
        return tuple(range(ndim))
    bad = [a for a in mirror_axes if a >= ndim]
    if bad:
        raise SelfUNetError(
            f"InferenceConfig.mirror_axes={mirror_axes}: axes {bad} do not exist for a {ndim}D patch; "
            f"use axes among {tuple(range(ndim))}"
        )
    return tuple(mirror_axes)


def _compute_device(network: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(itertools.chain(network.parameters(), network.buffers()), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_without_deep_supervision(network: nn.Module) -> Iterator[None]:
    """Eval mode and a single full-resolution output for the duration; restore both afterwards."""
    was_training = network.training
    had_ds = hasattr(network, "deep_supervision")
    old_ds = getattr(network, "deep_supervision", None)
    network.eval()
    if had_ds:
        network.deep_supervision = False
    try:
        yield
    finally:
        network.train(was_training)
        if had_ds:
            network.deep_supervision = old_ds


def _predict_mirrored(
    network: nn.Module,
    x: torch.Tensor,
    mirror_axes: tuple[int, ...],
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> torch.Tensor:
    """Average of the network's logits over every subset of ``mirror_axes`` (2^n passes)."""
    subsets = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    if len(subsets) == 1:
        return _forward(network, x, amp_dtype, device)
    # clone: the sum is updated in place and a network may return (a view of) its input
    total = _forward(network, x, amp_dtype, device).clone()
    for subset in subsets[1:]:  # subsets[0] is the empty subset, done above
        dims = [a + 2 for a in subset]
        total += torch.flip(_forward(network, torch.flip(x, dims), amp_dtype, device), dims)
    return total.div_(len(subsets))


def _forward(network: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        y = network(x)
    if isinstance(y, (list, tuple)):
        raise SelfUNetError(
            "predict_sliding_window: the network returned several outputs (deep supervision?); "
            "give it a `deep_supervision` attribute that turns them off"
        )
    return y.float()


def _progress(chunks: list[list[Window]], progress: bool) -> Iterator[list[Window]]:
    if not progress:
        yield from chunks
        return
    columns = (
        TextColumn("sliding window"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} batches"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("predict", total=len(chunks))
        for chunk in chunks:
            yield chunk
            bar.advance(task)
