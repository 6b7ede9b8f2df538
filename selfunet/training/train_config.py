"""Every training hyper-parameter as one typed config (SPEC section 3 defaults).

No subclass per value: the CLI (``selfunet train --epochs 5``) and the harness's task descriptors
set these fields. The config is stored next to the checkpoints, so a resumed run refuses to
continue with different settings by accident.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, Field

from selfunet.artifacts import Artifact

AmpMode = Literal["auto", "off", "bf16", "fp16"]


class TrainConfig(Artifact):
    SCHEMA_VERSION: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "`selfunet train`"

    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_iterations: int = 50
    initial_lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip_norm: float = 12.0
    oversample_foreground: float = 1 / 3
    seed: int = 0
    """seeds weight init, every batch (a pure function of seed and batch index) and augmentation."""
    num_folds: int = 5
    split_seed: int = 12345
    amp: AmpMode = "auto"
    """auto: bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs with AMX/AVX512-BF16, else off."""
    channels_last: bool = False
    """measured slower on CPU (docs/benchmarks.md); worth trying on CUDA."""
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 10
    """epochs between 'latest' checkpoints (also written on SIGTERM/SIGINT and at the end)."""
    pseudo_dice_ema: float = 0.9
    prefetch_batches: int = 3
    loader_workers: int = Field(default=1, validation_alias=AliasChoices("loader_workers", "loader_threads"))
    """background workers computing training batches (``loader_threads`` in older files)."""
    loader_mode: Literal["thread", "process"] = "thread"
    """threads (cheap, share memory) or processes (torch's DataLoader; pin memory on CUDA)."""
    device: str = "auto"
    predict_validation: bool = True
    """after training, predict the fold's validation cases with the full sliding-window scheme."""
    validation_mirroring: bool = True
    """mirror TTA for the out-of-fold (and, in ``selfunet run``, the test) predictions."""
    max_voxels_per_batch: int | None = None
    """small budgets only: fewer samples per batch (down to 2), then a smaller patch, until batch x
    patch voxels fit (``selfunet.training.budgets.fit_to_voxel_budget``); None trains the plan as is."""
    pretrained_weights: str | None = None
    """a checkpoint (or exported state dict) whose layers initialise the network, all but the
    segmentation heads (fine-tuning); None trains from scratch."""
