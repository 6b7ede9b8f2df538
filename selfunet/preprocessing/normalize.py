"""Per-channel intensity normalization (docs/explanation/design.md#normalization).

The planner decides one :class:`~selfunet.planning.plan_types.ChannelNormalization` per input channel;
this module only applies it. Normalization runs on the cropped image *before* resampling, so the
statistics describe the voxels as they were acquired, not interpolated ones.

All arithmetic is done in float32 in place on a copy of each channel: a float64 temporary of a
large CT volume would double the peak memory of a preprocessing worker for no useful precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import ChannelNormalization

#: floor of every divisor, so a constant image becomes all zeros instead of NaN/inf.
EPS = 1e-8


def normalize_channel(
    channel: np.ndarray, scheme: ChannelNormalization, mask: np.ndarray | None = None
) -> np.ndarray:
    """Return ``channel`` (spatial array) normalized by ``scheme`` as a new float32 array.

    ``mask`` is the non-zero mask of the case (``True`` inside the body); it is only used by
    z-score with ``use_nonzero_mask``, where statistics come from inside the mask and the outside
    is set to 0 (so the background that cropping could not remove does not dominate the stats).
    """
    out = np.array(channel, dtype=np.float32, copy=True)
    if scheme.scheme == "none":
        return out
    if scheme.scheme == "ct":
        missing = [f for f in ("clip_low", "clip_high", "mean", "std") if getattr(scheme, f) is None]
        if missing:
            raise SelfUNetError(
                f"CT normalization needs {', '.join(missing)} in the plan's normalization entry; "
                "rerun `selfunet plan WORK` (it copies them from the fingerprint)."
            )
        np.clip(out, scheme.clip_low, scheme.clip_high, out=out)
        out -= np.float32(scheme.mean)
        out /= np.float32(max(float(scheme.std), EPS))  # type: ignore[arg-type]
        return out
    if scheme.scheme == "zscore":
        if scheme.use_nonzero_mask:
            if mask is None:
                raise SelfUNetError(
                    "z-score normalization with use_nonzero_mask needs the non-zero mask of the case."
                )
            if mask.shape != out.shape:
                raise SelfUNetError(
                    f"non-zero mask shape {mask.shape} does not match the image channel {out.shape}."
                )
            inside = out[mask]
            if inside.size == 0:
                out[...] = 0
                return out
            mean = float(inside.mean(dtype=np.float64))
            std = float(inside.std(dtype=np.float64))
            out -= np.float32(mean)
            out /= np.float32(max(std, EPS))
            out[~mask] = 0
            return out
        mean = float(out.mean(dtype=np.float64))
        std = float(out.std(dtype=np.float64))
        out -= np.float32(mean)
        out /= np.float32(max(std, EPS))
        return out
    if scheme.scheme == "rescale01":
        if out.size == 0:
            return out
        low, high = float(out.min()), float(out.max())
        out -= np.float32(low)
        out /= np.float32(max(high - low, EPS))
        return out
    raise SelfUNetError(f"unknown normalization scheme '{scheme.scheme}'.")  # pragma: no cover


def normalize_image(
    image: np.ndarray, schemes: Sequence[ChannelNormalization], mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalize every channel of ``image`` ``(C, *spatial)`` with its own scheme (float32)."""
    if image.shape[0] != len(schemes):
        raise SelfUNetError(
            f"the image has {image.shape[0]} channel(s) but the plan normalizes {len(schemes)}; "
            "the plan was made for another dataset: rerun `selfunet plan WORK`."
        )
    out = np.empty(image.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        out[c] = normalize_channel(image[c], scheme, mask)
    return out
