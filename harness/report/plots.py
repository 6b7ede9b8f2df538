"""The figures of the HTML report, each returned as a base64 PNG (inline ``data:`` URI, no network).

The ranking and cost figures are in :mod:`harness.report.plots_ranking`.

matplotlib with the Agg backend (no display); every figure is closed after it is encoded, so a
report over many tasks does not accumulate open figures.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

DPI = 80
#: overlay colours per foreground class (cycled), RGBA.
COLOURS = ((0.95, 0.3, 0.2, 0.45), (0.2, 0.6, 0.95, 0.45), (0.3, 0.85, 0.3, 0.45), (0.95, 0.8, 0.2, 0.45))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def encode(fig) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (and closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def per_case_dice(candidates: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Mapping[str, str]) -> str:
    """One panel per class: each candidate's per-case Dice as a box with the cases as dots."""
    plt = _pyplot()
    names = list(candidates)
    fig, axes = plt.subplots(1, len(labels), figsize=(max(4.0, 0.9 * len(names) + 1.5) * len(labels), 3.6),
                             squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, (value, label) in zip(axes[0], labels.items()):
        data = []
        for name in names:
            values = [d.get(value, math.nan) for d in candidates[name].values()]
            data.append([v for v in values if not math.isnan(v)])
        ax.boxplot([d if d else [math.nan] for d in data], widths=0.5, showfliers=False)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7, color="tab:blue")
        ax.set_title(f"Dice: {label}")
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("per-case Dice (undefined left out)")
    return encode(fig)


def training_curves(folds: Mapping[str, Sequence[dict]], title: str) -> str:
    """Train/validation loss and pseudo-Dice (EMA) per fold of one configuration, against epochs."""
    plt = _pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, (fold, records) in enumerate(folds.items()):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in records]
        ax_loss.plot(epochs, [r.get("train_loss") for r in records], color=colour, label=f"{fold} train")
        if any(r.get("val_loss") is not None for r in records):
            ax_loss.plot(epochs, [r.get("val_loss") for r in records], color=colour, ls="--", label=f"{fold} val")
        ax_dice.plot(epochs, [r.get("pseudo_dice_ema") for r in records], color=colour, label=fold)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("pseudo Dice (EMA)")
    ax_dice.legend(fontsize=7)
    fig.suptitle(title)
    return encode(fig)


def overlay(image_files: Sequence[Path], prediction: Path, labels: Mapping[str, str], title: str) -> str:
    """The middle slice (first array axis) of the first channel, with the predicted classes on top."""
    from selfunet.data.io import read_image

    plt = _pyplot()
    image, _ = read_image(image_files[0])
    pred, _ = read_image(prediction)
    channel, seg = image[0], pred[0]
    z = seg.shape[0] // 2
    if seg.any():  # the middle of the predicted foreground, where there is some
        z = int(np.round(np.mean(np.nonzero(seg)[0])))
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.imshow(channel[z], cmap="gray")
    rgba = np.zeros((*seg.shape[1:], 4))
    for i, value in enumerate(labels):
        rgba[seg[z] == int(value)] = COLOURS[i % len(COLOURS)]
    ax.imshow(rgba)
    ax.set_title(f"{title} (slice {z})", fontsize=9)
    ax.axis("off")
    return encode(fig)
