"""``selfunet train``: one configuration, one fold (docs/explanation/design.md#training).

Design decisions that make resume exact and the loop simple:

* every training batch is a pure function of ``(seed, batch index)`` (sampling and augmentation
  both seed from it), so no sampler state needs saving and prefetching order cannot change
  results;
* checkpoints record the epoch and the iteration inside it; a SIGTERM/SIGINT/SIGHUP saves ``latest``
  at the current iteration (or validation batch) and exits, ``--resume`` continues at the very next batch;
* the JSON-lines log is truncated on resume to the checkpoint's epoch, so no epoch appears twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from selfunet.artifacts import atomic_write_json, remove_stale_temps
from selfunet.errors import SelfUNetError
from selfunet.planning.plan_types import Configuration, Plan
from selfunet.runtime import (
    checkpoint_problem,
    load_checkpoint,
    precision_reason,
    resolve_amp,
    resolve_device,
    save_checkpoint,
    stop_on_signals,
    stop_requested,
)
from selfunet.training.train_config import RESUMABLE_FIELDS, TrainConfig
from selfunet.training.training_log import PlainProgress, append_log, plot_log, read_log, truncate_log
from selfunet.workdir import WorkDir

log = logging.getLogger(__name__)

CHECKPOINT_LATEST = "checkpoint_latest.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_FINAL = "checkpoint_final.pt"


class TrainingInterrupted(SelfUNetError):
    """Raised after a SIGTERM/SIGINT once the latest checkpoint is safely written."""


@dataclass
class LoopState:
    epoch: int = 0
    iteration: int = 0
    """iterations already done inside ``epoch``."""
    loss_sum: float = 0.0
    ema: float | None = None
    best_ema: float = -math.inf
    extra: dict = field(default_factory=dict)


def poly_lr(initial_lr: float, epoch: int, epochs: int, exponent: float) -> float:
    return initial_lr * (1 - epoch / epochs) ** exponent


def _center_crop(tensor: torch.Tensor, patch: list[int]) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    for size, target in zip(tensor.shape[2:], patch):
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return tensor[tuple(slices)]


def _flat(config: TrainConfig) -> dict[str, object]:
    values = config.model_dump(mode="json")
    augmentation = values.pop("augmentation")
    return {**values, **{f"augmentation.{k}": v for k, v in augmentation.items()}}


def settings_changed(saved: TrainConfig, now: TrainConfig) -> list[str]:
    """``"field=saved (now value)"`` for each setting that changes what a resumed run computes."""
    old, new = _flat(saved), _flat(now)
    return [f"{key}={old[key]!r} (now {new[key]!r})" for key in old
            if key not in RESUMABLE_FIELDS and old[key] != new.get(key)]


def config_to_resume(work: Path, configuration: str, fold: int, overrides: dict) -> TrainConfig | None:
    """The config a resumed fold continues with: the checkpoint's, with ``overrides`` (the options
    given on the command line; augmentation ones nested under ``augmentation``) on top. None when
    the fold has no latest checkpoint (a fresh start). A changed setting that alters the results
    is refused later, by :meth:`Trainer.run`, naming the setting."""
    latest = WorkDir(work).training(configuration, fold) / CHECKPOINT_LATEST
    if not latest.is_file():
        return None
    saved = load_checkpoint(latest)["train_config"]
    merged = {**saved, **{k: v for k, v in overrides.items() if k != "augmentation"}}
    merged["augmentation"] = {**saved.get("augmentation", {}), **overrides.get("augmentation", {})}
    return TrainConfig.from_dict(merged, source=f"{latest} with the command line's options")


class Trainer:
    """Trains one configuration on one fold; see the module docstring for the resume contract."""

    def __init__(self, work: Path, configuration: str, fold: int, config: TrainConfig,
                 console: Console | None = None) -> None:
        from selfunet.training.splits import get_fold, load_or_create_splits

        self.work = WorkDir(work)
        self.console = console or Console(stderr=True)
        self.plan = Plan.load(self.work.plan)
        if configuration not in self.plan.configurations:
            raise SelfUNetError(
                f"configuration '{configuration}' is not in {self.work.plan}; "
                f"choose one of {sorted(self.plan.configurations)}."
            )
        self.configuration: Configuration = self.plan.configurations[configuration]
        if config.max_voxels_per_batch is not None:
            self._fit_to_voxel_budget(config.max_voxels_per_batch)
        self.config = config
        self.fold = fold
        self.out = self.work.training(configuration, fold)
        self.data_folder = self.work.preprocessed(self.configuration.data_identifier)
        if self.configuration.previous_stage is not None:
            from selfunet.training.cascade import prepare_cascade_data

            self.data_folder = prepare_cascade_data(work, self.plan, self.configuration, self.console)
        case_ids = sorted(p.name[: -len(".json")] for p in self.data_folder.glob("*.json")
                          if not p.name.startswith(("dataset", ".")))
        if not case_ids:
            raise SelfUNetError(
                f"{self.data_folder} holds no preprocessed cases: run "
                f"`selfunet preprocess {self.work.root} -c {configuration}` first."
            )
        splits = load_or_create_splits(self.work.splits, case_ids, config.num_folds, config.split_seed)
        split = get_fold(splits, fold)
        self.train_ids, self.val_ids = list(split.train), list(split.val)
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)

    def _fit_to_voxel_budget(self, max_voxels: int) -> None:
        """Shrink batch and patch for a small budget, for training only.

        The checkpoints keep the planned configuration, so validation and test predictions slide
        the planned window (the network is fully convolutional): a smaller window would need more
        overlapping windows per image and cost more than the planned one, not less.
        """
        from selfunet.training.budgets import fit_to_voxel_budget

        fitted = fit_to_voxel_budget(self.configuration, max_voxels)
        if fitted is self.configuration:
            return
        log.info("budget: %s trains with batch %d x patch %s instead of %d x %s (at most %d voxels per batch)",
                 fitted.name, fitted.batch_size, fitted.patch_size, self.configuration.batch_size,
                 self.configuration.patch_size, max_voxels)
        self.configuration = fitted

    # -- construction -------------------------------------------------------------------------
    def _build(self) -> None:
        from selfunet.training.augment import Augmenter
        from selfunet.training.batches import TrainBatchSource, pinned
        from selfunet.training.loss import build_loss
        from selfunet.training.network import build_network
        from selfunet.training.sampling import PatchSampler

        cfg = self.config
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        self.network = build_network(
            self.configuration.topology, self.plan.input_channels(self.configuration.name), self.plan.num_outputs,
            deep_supervision=True,
        )
        if cfg.pretrained_weights:
            from selfunet.training.pretrained import load_pretrained_weights

            load_pretrained_weights(self.network, Path(cfg.pretrained_weights))
        self.network = self.network.to(self.device)
        if cfg.channels_last:
            fmt = torch.channels_last_3d if self.configuration.dimension == 3 else torch.channels_last
            self.network = self.network.to(memory_format=fmt)
        self.memory_format = (
            (torch.channels_last_3d if self.configuration.dimension == 3 else torch.channels_last)
            if cfg.channels_last else torch.contiguous_format
        )
        self.model = torch.compile(self.network) if cfg.compile else self.network
        self.optimizer = torch.optim.SGD(
            self.network.parameters(), lr=cfg.initial_lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, nesterov=True,
        )
        # fp16 has too few exponent bits for small gradients: scale the loss (bf16 and fp32 need not)
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        num_outputs = len(self.configuration.topology.features_per_stage) - 1
        self.loss = build_loss(self.plan.label_scheme, self.configuration.batch_dice, num_outputs)
        patch = list(self.configuration.patch_size)
        self.patch = patch
        # channels normalized inside the non-zero mask go back to 0 outside it after augmentation
        mask_channels = [i for i, n in enumerate(self.configuration.normalization) if n.use_nonzero_mask]
        augmentation = dict(config=cfg.augmentation, patch_size=patch, dimension=self.configuration.dimension,
                            intensity_channels=self.plan.num_input_channels, mask_channels=mask_channels)
        self.augmenter = Augmenter(device=self.device, **augmentation)
        ignore = self.plan.label_scheme.ignore_label  # never a foreground centre
        common = dict(
            patch_size=patch, batch_size=self.configuration.batch_size,
            dimension=self.configuration.dimension, oversample_foreground=cfg.oversample_foreground,
            exclude_classes=[] if ignore is None else [ignore],
        )
        self.train_sampler = PatchSampler(self.data_folder, self.train_ids,
                                          read_patch_size=self.augmenter.read_patch_size, **common)
        # the loader's workers draw, read only what the draw needs, and augment too when training on
        # the CPU; on CUDA they read into page-locked memory and the GPU augments (batches.py)
        on_host = self.device.type == "cpu"
        pin = self.device.type == "cuda"
        self.batch_source = TrainBatchSource(
            self.train_sampler, Augmenter(device="cpu", **augmentation), cfg.seed, augment_here=on_host,
            allocate=pinned if pin and cfg.loader_mode == "thread" else None,
        )
        self.pin_memory = pin
        # validation batches are read at the patch size itself: no augmentation, no enlargement.
        self.val_sampler = PatchSampler(self.data_folder, self.val_ids or self.train_ids,
                                        read_patch_size=patch, **common)

    # -- batches --------------------------------------------------------------------------------
    def _device_batch(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        from selfunet.training.batches import finish

        image, label = finish(item, self.augmenter)
        # like the reference: voxels outside the non-zero mask (and padding) train as background
        return image.contiguous(memory_format=self.memory_format), label.long().clamp_min_(0)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- one step ---------------------------------------------------------------------------------
    def _train_step(self, image: torch.Tensor, label: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.model(image)
            loss = self.loss([o.float() for o in outputs], label)
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        return float(loss.detach())

    @torch.no_grad()
    def _validate(self) -> tuple[float, list[float]] | None:
        """Loss and per-class (per-region) pseudo-Dice (pooled TP/FP/FN) over fixed validation patches;
        voxels of the ignore label count nowhere. None when a stop signal came in between (answered
        within one validation batch)."""
        self.model.eval()
        scheme = self.plan.label_scheme
        groups = ([r.labels for r in scheme.regions] if scheme.has_regions
                  else [[c] for c in range(1, self.plan.num_classes)])
        num_fg = len(groups)
        log.debug("validating: %d batches", self.config.validation_iterations)
        tp = np.zeros(num_fg)
        fp = np.zeros(num_fg)
        fn = np.zeros(num_fg)
        losses = []
        for j in range(self.config.validation_iterations):
            if stop_requested() is not None:
                self.model.train()
                return None
            batch = self.val_sampler.sample_batch(self.config.seed + 7919, j)
            image = _center_crop(torch.from_numpy(np.ascontiguousarray(batch.image)), self.patch)
            label = _center_crop(torch.from_numpy(np.ascontiguousarray(batch.label)), self.patch)
            image = image.to(self.device).contiguous(memory_format=self.memory_format)
            label = label.to(self.device).long().clamp_min_(0)
            with self._autocast():
                outputs = self.model(image)
                losses.append(float(self.loss([o.float() for o in outputs], label)))
            valid = label >= 0
            if scheme.ignore_label is not None:
                valid &= label != scheme.ignore_label
            if scheme.has_regions:
                predicted = [(outputs[0][:, i:i + 1] > 0) for i in range(num_fg)]  # sigmoid > 0.5
            else:
                argmax = outputs[0].argmax(1, keepdim=True)
                predicted = [argmax == values[0] for values in groups]
            for i, values in enumerate(groups):
                p = predicted[i] & valid
                r = torch.isin(label, torch.tensor(values, device=label.device)) & valid
                tp[i] += float((p & r).sum())
                fp[i] += float((p & ~r).sum())
                fn[i] += float((~p & r).sum())
        self.model.train()
        denominator = 2 * tp + fp + fn
        dice = [float(2 * t / d) if d > 0 else float("nan") for t, d in zip(tp, denominator)]
        return float(np.mean(losses)) if losses else float("nan"), dice

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_payload(self, state: LoopState) -> dict:
        return {
            "format": "selfunet-checkpoint-1",
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            # plain values only: checkpoints are read with weights_only=True (runtime.load_checkpoint)
            "epoch": int(state.epoch),
            "iteration": int(state.iteration),
            "loss_sum": float(state.loss_sum),
            "ema": None if state.ema is None else float(state.ema),
            "best_ema": float(state.best_ema),
            "torch_rng": torch.get_rng_state(),
            "train_config": self.config.model_dump(mode="json"),
            "configuration": str(self.configuration.name),
            "plan": self.plan.model_dump(mode="json"),
            "fold": int(self.fold),
        }

    def _restore(self, payload: dict) -> LoopState:
        saved = TrainConfig.from_dict(payload["train_config"], source="checkpoint")
        changed = settings_changed(saved, self.config)
        if changed:
            raise SelfUNetError(
                f"{self.out / CHECKPOINT_LATEST} was made with {'; '.join(changed)}; resume with the same "
                "settings (or without those options) or start over with --restart."
            )
        self.network.load_state_dict(payload["network"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.grad_scaler.load_state_dict(payload["grad_scaler"])
        torch.set_rng_state(payload["torch_rng"])
        return LoopState(epoch=payload["epoch"], iteration=payload["iteration"], loss_sum=payload["loss_sum"],
                         ema=payload["ema"], best_ema=payload["best_ema"])

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, resume: bool = False, restart: bool = False) -> Path:
        """Train the fold to ``checkpoint_final.pt`` and return its path: prepare (resume or
        start), then one epoch after another, each closed by its bookkeeping."""
        final = self.out / CHECKPOINT_FINAL
        state = self._prepare_fold(resume, restart)
        if state is None:
            return final
        cfg = self.config
        precision = precision_reason(self.amp_dtype, cfg.amp, self.device)
        self.console.print(escape(f"precision: {precision}"), highlight=False)
        iterations = cfg.iterations_per_epoch
        from selfunet.training.loader import open_loader

        loader = open_loader(
            self.batch_source, start_index=state.epoch * iterations + state.iteration,
            prefetch=cfg.prefetch_batches, num_workers=cfg.loader_workers, mode=cfg.loader_mode,
            pin_memory=self.pin_memory,
        )
        plain = PlainProgress(self.console, f"{self.configuration.name} fold {self.fold}", cfg.epochs * iterations,
                              state.epoch * iterations + state.iteration)
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            console=self.console, transient=False, disable=plain.active,  # plain lines instead of a bar
        )
        self.network.train()
        with stop_on_signals(), loader, progress:
            bar = progress.add_task(
                f"{self.configuration.name} fold {self.fold}", total=cfg.epochs * iterations,
                completed=state.epoch * iterations + state.iteration, status="",
            )

            def show(status: str) -> None:
                progress.update(bar, advance=1, status=status)
                plain.note(state.epoch * iterations + state.iteration, status)

            while state.epoch < cfg.epochs:
                epoch_start = time.perf_counter()
                lr = self._train_epoch(state, loader, show)
                self._end_epoch(state, lr, time.perf_counter() - epoch_start)
        save_checkpoint(final, self._checkpoint_payload(state))
        atomic_write_json(self.out / "training_summary.json", {
            "configuration": self.configuration.name, "fold": self.fold, "epochs": cfg.epochs,
            "final_pseudo_dice_ema": state.ema, "best_pseudo_dice_ema": state.best_ema,
            "train_cases": self.train_ids, "validation_cases": self.val_ids,
            "device": str(self.device), "amp": str(self.amp_dtype),
            "precision": precision,
        })
        return final

    def _prepare_fold(self, resume: bool, restart: bool) -> LoopState | None:
        """Decide where this fold starts: ``None`` when it is already complete; else the network
        built and the state to continue from (a fresh one, or the latest checkpoint's). A torn
        final checkpoint is set aside, never trusted; an unfinished run is never overwritten
        without ``--resume`` or ``--restart``."""
        latest, final = self.out / CHECKPOINT_LATEST, self.out / CHECKPOINT_FINAL
        if restart:
            for name in (CHECKPOINT_LATEST, CHECKPOINT_BEST, CHECKPOINT_FINAL, "log.jsonl", "progress.png"):
                (self.out / name).unlink(missing_ok=True)
        elif final.is_file() and resume and (problem := checkpoint_problem(final)):
            moved = final.with_name(f"{final.name}.invalid-{time.strftime('%Y%m%d-%H%M%S')}")
            final.replace(moved)  # e.g. torn by a full disk: never trusted, kept for inspection
            log.warning("%s is %s: moved to %s; resuming from %s", final, problem, moved.name, latest.name)
        if final.is_file() and resume and not restart:
            self.console.print(escape(f"{final} exists: training of this fold is complete."), highlight=False)
            return None
        elif latest.is_file() and not resume:
            raise SelfUNetError(
                f"{latest} exists: add --resume to continue that run, or --restart to start over."
            )
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.out)  # half-written checkpoint/plot of a killed run (never a live writer's)
        self._build()
        state = LoopState()
        log_path = self.out / "log.jsonl"
        if resume and latest.is_file():
            state = self._restore(load_checkpoint(latest))
            truncate_log(log_path, state.epoch)
            self.console.print(f"resuming at epoch {state.epoch}, iteration {state.iteration}")
        elif log_path.exists():
            log_path.unlink()
        self.config.save(self.out / "train_config.json")
        return state

    def _train_epoch(self, state: LoopState, loader, show) -> float:
        """The training iterations of ``state.epoch`` that are not done yet (a resumed epoch goes
        on where it stopped); returns the epoch's learning rate. A stop signal checkpoints and
        raises :class:`TrainingInterrupted` after the iteration in flight."""
        cfg = self.config
        lr = poly_lr(cfg.initial_lr, state.epoch, cfg.epochs, cfg.poly_exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for it in range(state.iteration, cfg.iterations_per_epoch):
            image, label = self._device_batch(next(loader))
            state.loss_sum += self._train_step(image, label)
            state.iteration = it + 1
            show(f"epoch {state.epoch + 1}/{cfg.epochs} loss {state.loss_sum / state.iteration:.4f} "
                 f"lr {lr:.2e} pseudo-Dice {state.ema if state.ema is not None else float('nan'):.3f}")
            if stop_requested() is not None:
                self._stop(state, self.out / CHECKPOINT_LATEST)
        return lr

    def _end_epoch(self, state: LoopState, lr: float, seconds: float) -> None:
        """Validation, the pseudo-Dice EMA, the log line and plot, and the checkpoints (best when
        the EMA improves; latest every ``checkpoint_every`` epochs and at the end)."""
        cfg = self.config
        latest = self.out / CHECKPOINT_LATEST
        validated = self._validate()
        if validated is None:  # a stop signal during validation
            self._stop(state, latest)
        val_loss, dice = validated  # type: ignore[misc]
        finite = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(finite)) if finite else 0.0
        state.ema = mean_dice if state.ema is None else (
            cfg.pseudo_dice_ema * state.ema + (1 - cfg.pseudo_dice_ema) * mean_dice)
        record = {
            "epoch": state.epoch, "train_loss": state.loss_sum / cfg.iterations_per_epoch, "val_loss": val_loss,
            "pseudo_dice_per_class": dice, "pseudo_dice": mean_dice, "pseudo_dice_ema": state.ema,
            "lr": lr, "epoch_seconds": seconds,
        }
        log_path = self.out / "log.jsonl"
        append_log(log_path, record)
        plot_log(read_log(log_path), self.out / "progress.png")
        state.epoch += 1
        state.iteration = 0
        state.loss_sum = 0.0
        if state.ema > state.best_ema:
            state.best_ema = state.ema
            save_checkpoint(self.out / CHECKPOINT_BEST, self._checkpoint_payload(state))
        if state.epoch % cfg.checkpoint_every == 0 or state.epoch == cfg.epochs:
            save_checkpoint(latest, self._checkpoint_payload(state))
        log.info("epoch %d: loss %.4f, val loss %.4f, pseudo-Dice %s (EMA %.4f)", state.epoch - 1,
                 record["train_loss"], val_loss, [round(d, 4) for d in dice], state.ema)

    def _stop(self, state: LoopState, latest: Path) -> None:
        signum = stop_requested()
        save_checkpoint(latest, self._checkpoint_payload(state))
        name = signal.Signals(signum).name if signum is not None else "a signal"
        raise TrainingInterrupted(
            f"stopped by signal {signum} ({name}) at epoch {state.epoch}, iteration {state.iteration}; the latest "
            f"checkpoint is in {latest}: continue with --resume."
        )
