"""Training log (JSON lines, one record per epoch), the PNG plot of its curves, and plain progress
lines where no progress bar can be drawn.

The log is append-only while training; on resume, records beyond the checkpoint's epoch are
dropped, so a run killed between a log write and a checkpoint never shows an epoch twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from selfunet.artifacts import atomic_path, atomic_write_text


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            break  # a torn last line from a killed process: everything before it is intact
    return records


def truncate_log(path: Path, keep_epochs_below: int) -> list[dict]:
    records = [r for r in read_log(path) if int(r.get("epoch", -1)) < keep_epochs_below]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def append_log(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def plot_log(records: list[dict], path: Path) -> None:
    """Loss curves, pseudo-Dice (raw and EMA) and learning rate against epochs, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=[3, 1])
    ax_loss.plot(epochs, [r["train_loss"] for r in records], label="train loss", color="tab:blue")
    if any(r.get("val_loss") is not None for r in records):
        ax_loss.plot(epochs, [r.get("val_loss") for r in records], label="val loss", color="tab:red")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    ax_dice.plot(epochs, [r.get("pseudo_dice") for r in records], "g.", label="pseudo Dice")
    ax_dice.plot(epochs, [r.get("pseudo_dice_ema") for r in records], "g-", label="pseudo Dice (EMA)")
    ax_dice.set_ylabel("pseudo Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()
    lines2 = ax_dice.get_legend_handles_labels()
    ax_loss.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right")
    ax_lr.plot(epochs, [r["lr"] for r in records], color="black")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    fig.tight_layout()
    try:
        with atomic_path(path, ending=path.suffix) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)


class PlainProgress:
    """Progress as plain lines every :attr:`interval` seconds when the console is not a terminal.

    Why: rich draws its progress bar only on a terminal; written to a file (a harness job's log,
    ``nohup``, CI) it prints the bar once, at the end, so hours of training look like a hang. The
    line says where the run is, the speed of this process and the time left at that speed.
    """

    interval = 30.0

    def __init__(self, console: Console, name: str, total: int, done: int) -> None:
        self.console, self.name, self.total = console, name, total
        self.active = not console.is_terminal
        self.start_done, self.start = done, time.monotonic()
        self.last = self.start

    def note(self, done: int, status: str) -> None:
        now = time.monotonic()
        if not self.active or (now - self.last < self.interval and done < self.total):
            return
        self.last = now
        rate = (now - self.start) / max(done - self.start_done, 1)
        left = int(rate * (self.total - done))
        eta = f"{left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"{left // 60}m{left % 60:02d}s"
        self.console.print(
            escape(f"{self.name}: iteration {done}/{self.total} ({status}), {rate:.2f} s/iteration, about {eta} left"),
            highlight=False, soft_wrap=True)
